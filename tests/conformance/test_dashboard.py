"""The dashboard at `/ui/` (docs/dashboard.md) in a real browser: Debian's headless Chromium
driven by selenium loads the page from the release binary running with `--auth-enable`, logs in
through its form, and every number it shows is checked against the JSON API's answer (and,
where the test made the data itself, against what it did): images and labels per tag and per
annotator, label revisions, tasks, the model in use, training statistics, a label's report and
the audit log. A screenshot goes to target/test-output/dashboard.png.

Also: `GET /audit/` is for admins (403 for an annotator or a plain user, 401 without a token),
the dashboard's files are served with their content types, and a non-admin sees no audit log.

ferrolabel only (MONAI Label has no dashboard).
"""
import json
import os
import shutil
import subprocess
import tempfile

import nibabel as nib
import numpy as np
import pytest
import requests
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select, WebDriverWait

from conftest import BIN, GOLDEN, REPO, SMALL_CT, Deployment

pytestmark = pytest.mark.ferrolabel_only

MODEL = "wholeBody_ct_segmentation"
USERS = {"alice": ("alice-pw", "annotator"), "bob": ("bob-pw", "annotator"),
         "boss": ("boss-pw", "admin"), "viewer": ("viewer-pw", "user")}
OUT_DIR = os.path.join(REPO, "target", "test-output")
CHROMIUM = os.environ.get("FERROLABEL_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("FERROLABEL_CHROMEDRIVER", "/usr/bin/chromedriver")
# the statistics a finished training leaves in the bundle (models/train_stats.json): the server
# reads them for /info/ and /train/curve, as after a restart (a real training takes minutes)
TRAIN_STATS = {
    "epoch": 3, "total_epochs": 3, "best_metric": 0.4321, "total_time": "0:02:10", "status": "DONE",
    "eval": {"best_metric": 0.4321, "best_metric_epoch": 2, "key_metric_name": "val_mean_dice"},
    "history": [
        {"epoch": 1, "loss": 2.5, "val_dice": 0.21, "best_metric": 0.21, "best_epoch": 1, "seconds": 40.0},
        {"epoch": 2, "loss": 1.9, "val_dice": 0.4321, "best_metric": 0.4321, "best_epoch": 2, "seconds": 41.0},
        {"epoch": 3, "loss": 1.7, "val_dice": 0.40, "best_metric": 0.4321, "best_epoch": 2, "seconds": 42.0},
    ],
}


class DashServer:
    """The release binary with authentication on (plain HTTP), four users, a private bundle."""

    def __init__(self, tmp):
        self.tmp = tmp
        self.studies = os.path.join(tmp, "studies")
        os.makedirs(self.studies)
        shutil.copy(SMALL_CT, os.path.join(self.studies, "ct_small.nii.gz"))
        shutil.copy(SMALL_CT, os.path.join(self.studies, "ct_other.nii.gz"))
        self.bundle = os.path.join(tmp, "bundle")
        shutil.copytree(os.path.join(GOLDEN, "bundle_small"), self.bundle)
        with open(os.path.join(self.bundle, "models", "train_stats.json"), "w") as f:
            json.dump(TRAIN_STATS, f)
        users = os.path.join(tmp, "users.json")
        for name, (pw, role) in USERS.items():
            subprocess.run([BIN, "auth", "add-user", "--users", users, "--username", name, "--role", role],
                           input=pw + "\n", text=True, check=True, capture_output=True)
        # one server, or the team deployment of FERROLABEL_CLUSTER=1 (conftest.Deployment)
        self.deployment = Deployment(tmp, self.studies, self.bundle,
                                     extra=["--auth-enable", "true", "--auth-users", users])
        self.port, self.url = self.deployment.port, self.deployment.url
        self.tokens = {name: self.login(name) for name in USERS}

    def login(self, name):
        r = requests.post(self.url + "/auth/token", data={"username": name, "password": USERS[name][0]})
        assert r.status_code == 200, r.text
        return r.json()["access_token"]

    def call(self, method, path, user="boss", **kw):
        headers = {"Authorization": "Bearer " + self.tokens[user]} if user else {}
        return requests.request(method, self.url + path, headers=headers, timeout=120, **kw)

    def get(self, path, user="boss"):
        r = self.call("GET", path, user)
        assert r.status_code == 200, f"GET {path}: {r.status_code} {r.text[:300]}"
        return r.json()

    def stop(self):
        self.deployment.stop()


def save_label(server, user, image, tag, path):
    with open(path, "rb") as f:
        r = server.call("PUT", f"/datastore/label?image={image}&tag={tag}", user,
                        files={"label": ("label.nii.gz", f)}, data={"params": json.dumps({"model": MODEL})})
    return r.status_code


@pytest.fixture(scope="module")
def server():
    tmp = tempfile.mkdtemp(prefix="ferrolabel-dash-")
    s = DashServer(tmp)
    # the data: an image uploaded by alice, labels by alice (two revisions) and bob, a refused
    # label save by a plain user, a finished scoring task
    img = nib.load(SMALL_CT)
    label = np.zeros(img.shape, np.uint8)
    label[10:20, 10:20, 5:10] = 1
    label[30:40, 30:45, 5:15] = 5
    lab = os.path.join(tmp, "label.nii.gz")
    nib.save(nib.Nifti1Image(label, img.affine), lab)
    with open(SMALL_CT, "rb") as f:
        r = s.call("PUT", "/datastore/?image=ct_alice", "alice", files={"file": ("ct_alice.nii.gz", f)})
    assert r.status_code == 200, r.text
    assert save_label(s, "alice", "ct_small", "final", lab) == 200
    assert save_label(s, "alice", "ct_small", "final", lab) == 200
    assert save_label(s, "bob", "ct_other", "final", lab) == 200
    assert save_label(s, "bob", "ct_small", "original", lab) == 200
    assert save_label(s, "viewer", "ct_other", "original", lab) == 403
    r = s.call("POST", "/scoring/sum?run_sync=true", "alice")
    assert r.status_code == 200, r.text
    yield s
    s.stop()
    shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture(scope="module")
def browser():
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1400,3000"):
        opts.add_argument(arg)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    yield driver
    driver.quit()


def wait_state(driver, state, timeout=30):
    """Waits for the page's `data-state` (`login`, `ready`); fails at once on `error`."""
    body = driver.find_element(By.TAG_NAME, "body")
    WebDriverWait(driver, timeout).until(lambda d: body.get_attribute("data-state") in (state, "error"))
    assert body.get_attribute("data-state") == state, driver.find_element(By.ID, "error").text


def browser_login(driver, server, name, password=None):
    driver.get(server.url + "/ui/")
    wait_state(driver, "login")
    assert driver.find_element(By.ID, "login").is_displayed()
    assert not driver.find_element(By.ID, "main").is_displayed()
    driver.find_element(By.ID, "login-username").send_keys(name)
    driver.find_element(By.ID, "login-password").send_keys(password or USERS[name][0])
    driver.find_element(By.ID, "login-submit").click()


def rows(driver, table_id, key):
    """{data-<key> of each row: {data-field: text}} of a table."""
    out = {}
    for tr in driver.find_elements(By.CSS_SELECTOR, f"#{table_id} tbody tr[data-{key}]"):
        cells = {td.get_attribute("data-field"): td.text for td in tr.find_elements(By.CSS_SELECTOR, "td[data-field]")}
        out[tr.get_attribute(f"data-{key}")] = cells
    return out


def text(driver, element_id):
    return driver.find_element(By.ID, element_id).text


def expected_counts(server):
    """Per tag and per annotator, from the API's answers (the dashboard's rules, docs/dashboard.md)."""
    ds = server.get("/datastore/?output=all")
    revisions = server.get("/datastore/revisions?limit=1000")
    latest = {}
    for r in revisions:  # newest first
        latest.setdefault((r["image"], r["tag"]), r["author"])
    tags, people = {}, {}

    def person(name):
        return people.setdefault(name or "(unknown)", {"images": 0, "labels": 0, "revisions": 0})

    for image_id, obj in ds["objects"].items():
        info = obj["image"]["info"]
        person(info.get("user") or info.get("client_id"))["images"] += 1
        for tag, entry in obj["labels"].items():
            tags[tag] = tags.get(tag, 0) + 1
            person(latest.get((image_id, tag)) or entry["info"].get("user") or entry["info"].get("client_id"))["labels"] += 1
    for r in revisions:
        person(r["author"])["revisions"] += 1
    return ds, revisions, tags, people


def test_dashboard_shows_what_the_api_answers(server, browser):
    d = browser
    # a wrong password is refused on the form
    browser_login(d, server, "boss", password="wrong")
    WebDriverWait(d, 10).until(lambda d: d.find_element(By.ID, "login-error").is_displayed())
    assert "Incorrect username or password" in text(d, "login-error")
    # the admin logs in
    d.find_element(By.ID, "login-password").clear()
    d.find_element(By.ID, "login-password").send_keys(USERS["boss"][0])
    d.find_element(By.ID, "login-submit").click()
    wait_state(d, "ready")
    assert not d.find_element(By.ID, "login").is_displayed()
    assert text(d, "user-name") == "boss"

    ds, revisions, tags, people = expected_counts(server)
    stats = server.get("/datastore/?output=stats")
    # images and labels: what the test made, and what the API says
    assert tags == {"final": 2, "original": 1}
    assert people == {"(unknown)": {"images": 2, "labels": 0, "revisions": 0},
                      "alice": {"images": 1, "labels": 1, "revisions": 2},
                      "bob": {"images": 0, "labels": 2, "revisions": 2}}
    assert int(text(d, "stat-images")) == len(ds["objects"]) == stats["total"] == 3
    assert int(text(d, "stat-labels")) == sum(tags.values())
    assert int(text(d, "stat-completed")) == stats["completed"] == 2
    shown_tags = rows(d, "by-tag", "tag")
    assert {t: int(v["labels"]) for t, v in shown_tags.items()} == tags
    assert {t: n for t, n in stats["label_tags"].items()} == tags
    shown_people = rows(d, "by-annotator", "annotator")
    assert {p: {k: int(v) for k, v in c.items()} for p, c in shown_people.items()} == people
    # one line per series in the charts, ending at the series' total
    for chart, expected in (("chart-tags", tags),
                            ("chart-annotators", {p: c["images"] + c["labels"] for p, c in people.items()})):
        paths = d.find_elements(By.CSS_SELECTOR, f"#{chart} svg path[data-series]")
        assert {p.get_attribute("data-series"): int(p.get_attribute("data-total")) for p in paths} == expected

    # label revisions
    assert len(revisions) == 4
    assert int(text(d, "stat-revisions")) == len(revisions)
    first = d.find_element(By.CSS_SELECTOR, "#revisions tbody tr")
    newest = revisions[0]
    assert (first.get_attribute("data-image"), first.get_attribute("data-tag"), int(first.get_attribute("data-rev"))) \
        == (newest["image"], newest["tag"], newest["rev"]) == ("ct_small", "original", 1)
    alice_rev2 = d.find_element(By.CSS_SELECTOR, '#revisions tr[data-image="ct_small"][data-tag="final"][data-rev="2"]')
    assert alice_rev2.find_element(By.CSS_SELECTOR, '[data-field="parent_rev"]').text == "1"
    assert alice_rev2.find_element(By.CSS_SELECTOR, '[data-field="author"]').text == "alice"

    # tasks
    tasks = server.get("/tasks/")
    assert int(d.find_element(By.ID, "tasks-total").text) == len(tasks)
    by_state = {}
    for t in tasks:
        by_state[t["state"]] = by_state.get(t["state"], 0) + 1
    shown = {b.get_attribute("data-state"): int(b.text) for b in d.find_elements(By.CSS_SELECTOR, "#tasks-counts b[data-state]")}
    assert shown == by_state
    assert by_state.get("done", 0) >= 1, "the scoring task"
    kinds = {r["kind"] for r in rows(d, "tasks", "task").values()}
    assert kinds == {t["kind"] for t in tasks}
    assert int(text(d, "stat-tasks-active")) == sum(
        1 for t in tasks if t["kind"] != "periodic" and t["state"] in ("queued", "running"))

    # the model in use
    info = server.get("/info/")
    assert text(d, "app-name") == info["name"] and text(d, "app-version") == info["version"]
    models = rows(d, "models", "model")
    assert set(models) == set(info["models"])
    assert models[MODEL]["version"] == info["models"][MODEL]["version"] == "0.2.5"
    assert models[MODEL]["weights"] == "loaded" and info["models"][MODEL]["weights_available"]
    assert int(models[MODEL]["labels"]) == len(info["models"][MODEL]["labels"]) == 104

    # training: the statistics of /info/ and the curve of /train/curve
    ts = info["train_stats"][MODEL]
    train = rows(d, "train-stats", "model")[MODEL]
    assert (int(train["epoch"]), int(train["total_epochs"]), float(train["best_metric"]), int(train["best_epoch"])) \
        == (ts["epoch"], ts["total_epochs"], round(ts["best_metric"], 4), ts["eval"]["best_metric_epoch"]) == (3, 3, 0.4321, 2)
    assert server.call("GET", "/train/curve").status_code == 200
    img = d.find_element(By.ID, "train-curve-img")
    assert d.execute_script("return arguments[0].complete && arguments[0].naturalWidth", img) > 0

    # a label's report: the first label is shown; pick another, compare with the API
    Select(d.find_element(By.ID, "report-select")).select_by_value("ct_other|final")
    WebDriverWait(d, 10).until(lambda d: d.find_element(By.ID, "report").get_attribute("data-label") == "ct_other")
    wait_state(d, "ready")
    report = server.get("/datastore/label/report?label=ct_other&tag=final")
    shown = rows(d, "report", "structure")
    assert set(shown) == set(report["structures"]) == {"spleen", "liver"}
    for name, s in report["structures"].items():
        assert int(shown[name]["voxels"]) == s["voxels"]
        assert float(shown[name]["volume_ml"]) == round(s["volume_ml"], 2)
        assert float(shown[name]["mean_hu"]) == round(s["mean_hu"], 1)
    assert float(shown["spleen"]["volume_ml"]) == 13.5  # 500 voxels of 27 mm³

    # the audit log (admins)
    assert d.find_element(By.ID, "audit-section").is_displayed()
    audit = server.get("/audit/?limit=50")
    shown = d.find_elements(By.CSS_SELECTOR, "#audit tbody tr[data-id]")
    assert [int(r.get_attribute("data-id")) for r in shown] == [e["id"] for e in audit]
    seen = {(r.find_element(By.CSS_SELECTOR, '[data-field="username"]').text,
             r.find_element(By.CSS_SELECTOR, '[data-field="action"]').text,
             r.find_element(By.CSS_SELECTOR, '[data-field="image"]').text,
             r.find_element(By.CSS_SELECTOR, '[data-field="status"]').text) for r in shown}
    assert ("viewer", "label.save", "ct_other", "403") in seen
    assert ("alice", "image.upload", "ct_alice", "200") in seen
    assert ("bob", "label.save", "ct_small", "200") in seen

    os.makedirs(OUT_DIR, exist_ok=True)
    height = d.execute_script("return document.documentElement.scrollHeight")
    d.set_window_size(1400, max(height, 800))
    assert d.save_screenshot(os.path.join(OUT_DIR, "dashboard.png"))

    # an annotator sees no audit log (and the API refuses it: see the next test)
    d.find_element(By.ID, "logout").click()
    wait_state(d, "login")
    browser_login(d, server, "alice")
    wait_state(d, "ready")
    assert text(d, "user-name") == "alice"
    assert not d.find_element(By.ID, "audit-section").is_displayed()
    assert int(text(d, "stat-images")) == 3


def test_audit_log_is_for_admins(server):
    for user in ("alice", "viewer"):
        r = server.call("GET", "/audit/", user)
        assert r.status_code == 403, (user, r.status_code, r.text)
        assert r.json() == {"detail": 'Role "monailabel-admin" is required to perform this action'}
    r = server.call("GET", "/audit/", None)
    assert r.status_code == 401
    r = server.call("GET", "/audit/?limit=2")
    assert r.status_code == 200 and len(r.json()) == 2
    assert r.json()[0]["id"] > r.json()[1]["id"], "newest first"
    assert server.call("GET", "/audit/?limit=0").status_code == 422
    assert server.call("GET", "/audit/?limit=x").status_code == 422
    # the revisions are for anyone who may read the datastore
    assert server.call("GET", "/datastore/revisions?limit=1", "viewer").status_code == 200


def test_dashboard_files(server):
    for path, ctype in (("/ui/", "text/html"), ("/ui", "text/html"), ("/ui/dashboard.js", "text/javascript"),
                        ("/ui/dashboard.css", "text/css")):
        r = requests.get(server.url + path)  # public: no token
        assert r.status_code == 200 and r.headers["content-type"].startswith(ctype), path
    r = requests.get(server.url + "/ui/nope.js")
    assert r.status_code == 404 and r.json() == {"detail": "Not Found"}
    assert "/ui/dashboard.js" in requests.get(server.url + "/ui/").text
