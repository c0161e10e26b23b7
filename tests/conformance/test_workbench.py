"""The annotation workbench with the official client: the quantitative report against numpy,
batch inference (fills `original` labels, can be cancelled, interactive infers go first),
epistemic active learning and Dice scoring.

The client has no call for scoring or batch inference; those go through `requests`, as any
REST client would. Every test here checks a ferrolabel feature beyond MONAI Label's defaults
(its sample apps ship no `epistemic` strategy under that name and no report), so the module is
skipped against the peer server.
"""
import os
import tempfile
import time

import nibabel as nib
import numpy as np
import pytest
import requests

from conftest import SMALL_CT

pytestmark = pytest.mark.ferrolabel_only

MODEL = "wholeBody_ct_segmentation"
# fast Monte Carlo options: 2 passes, 6 mm grid, 32^3 windows
MC = {"samples": 2, "spacing": 6, "sw_roi": 32, "seed": 1}


def post(server, path, body=None, **kw):
    return requests.post(server.url + path, json=body if body is not None else {}, timeout=900, **kw)


def wait_until(server, path, pred, what, timeout=900):
    t0 = time.time()
    while True:
        r = requests.get(server.url + path, timeout=60)
        if pred(r):
            return r
        assert time.time() - t0 < timeout, f"timed out waiting for {what}: {r.status_code} {r.text}"
        time.sleep(0.1)


def variant(path, fn):
    """A copy of the small CT with its voxels changed by fn (same grid and header)."""
    img = nib.load(SMALL_CT)
    data = fn(np.asarray(img.dataobj).astype(np.float32))
    out = nib.Nifti1Image(data, img.affine, img.header)
    out.set_data_dtype(np.float32)
    out.header.set_slope_inter(1.0, 0.0)
    nib.save(out, path)
    return path


@pytest.fixture(scope="module")
def uploaded(client):
    """Two more images, uploaded with the client: a brighter CT and a flipped one."""
    tmp = tempfile.mkdtemp(prefix="ferrolabel-wb-")
    a = variant(os.path.join(tmp, "bright.nii.gz"), lambda d: d * 1.3 + 50.0)
    b = variant(os.path.join(tmp, "flipped.nii.gz"), lambda d: d[::-1, :, :].copy())
    client.upload_image(a, image_id="ct_bright")
    client.upload_image(b, image_id="ct_flipped")
    return ["ct_bright", "ct_flipped"]


def reference_report(label_path, image_path):
    """Per-label voxels, ml, mean and population std of the image, computed with numpy."""
    lab = np.asarray(nib.load(label_path).dataobj).astype(np.int64)
    img = nib.load(image_path)
    hu = img.get_fdata(dtype=np.float64)
    assert lab.shape == hu.shape
    voxel_ml = abs(np.linalg.det(img.affine[:3, :3])) / 1000.0
    out = {}
    for v in np.unique(lab):
        if v == 0:
            continue
        m = lab == v
        border = m[0].any() or m[-1].any() or m[:, 0].any() or m[:, -1].any() or m[:, :, 0].any() or m[:, :, -1].any()
        out[int(v)] = dict(voxels=int(m.sum()), ml=m.sum() * voxel_ml, mean=hu[m].mean(), std=hu[m].std(),
                           border=bool(border))
    return out


# One tolerance for the report, here and in server/tests/workbench.rs: ferrolabel holds voxels
# as float32 (exact for int16 and float32 files) and sums values and squares in float64; numpy
# sums in float64 in another order (and its std is two-pass), which differs by ~1e-12 relative.
# 1e-6 relative (absolute below 1) leaves that a wide margin, yet fails a float32 accumulation:
# summing the squares of 10^3..10^5 voxels of the shared CT in float32 moves the std by
# 6e-6..3e-5 relative (measured with numpy).
REPORT_TOL = 1e-6


def close(a, b, tol=REPORT_TOL):
    return abs(a - b) <= tol * max(abs(b), 1.0)


def test_report_agrees_with_numpy(server, client):
    t0 = time.time()
    label_file, params = client.infer(MODEL, "ct_other", {"highres": False, "save_label": True})
    wall = time.time() - t0
    report = params["report"]
    ref = reference_report(label_file, SMALL_CT)
    assert ref, "the segmentation has structures"
    by_label = {e["label"]: (name, e) for name, e in report["structures"].items()}
    assert set(by_label) == set(ref)
    names = {v: k for k, v in params["label_names"].items()}
    for v, r in ref.items():
        name, e = by_label[v]
        assert name == names[v]
        assert e["voxels"] == r["voxels"]
        assert close(e["volume_ml"], r["ml"]), (name, e, r)
        assert close(e["mean_hu"], r["mean"]), (name, e, r)
        assert close(e["std_hu"], r["std"]), (name, e, r)
        assert e["touches_border"] == r["border"], (name, e, r)
    lat = params["latencies"]
    print(f"\nreport {lat['report'] * 1000:.2f} ms of infer total {lat['total']:.2f} s "
          f"({100 * lat['report'] / lat['total']:.3f}%), wall {wall:.2f} s")

    # the same report for the stored label
    r = requests.get(server.url + "/datastore/label/report", params={"label": "ct_other", "tag": "original"})
    assert r.status_code == 200, r.text
    assert r.json()["structures"] == report["structures"]


def test_batch_infer_fills_original_labels(server, client, uploaded):
    ds = client.datastore()
    unlabeled = sorted(i for i, o in ds["objects"].items() if "final" not in o["labels"])
    r = post(server, f"/batch/infer/{MODEL}?images=unlabeled&run_sync=true",
             {"highres": False, "label_tag": "batch"})
    assert r.status_code == 200, r.text
    result = r.json()
    assert sorted(result) == unlabeled
    ds = client.datastore()
    for i in unlabeled:
        assert result[i]["tag"] == "batch"
        info = ds["objects"][i]["labels"]["batch"]["info"]
        assert info["model"] == MODEL
        assert "report" in info["params"]

    # the default tag is `original`, as MONAI Label's batch infer saves it
    r = post(server, f"/batch/infer/{MODEL}?run_sync=true", {"highres": False, "images": ["ct_bright"]})
    assert r.status_code == 200, r.text
    path = client.download_label("ct_bright", "original")
    assert nib.load(path).shape == nib.load(SMALL_CT).shape


def test_batch_infer_cancel_and_interactive_priority(server, client, uploaded, tmp_path):
    # a small crop of the CT: one low-resolution window per interactive infer
    crop = nib.load(SMALL_CT)
    crop = nib.Nifti1Image(np.asarray(crop.dataobj)[40:80, 30:70, 5:25].copy(), crop.affine, crop.header)
    nib.save(crop, str(tmp_path / "crop.nii.gz"))
    client.upload_image(str(tmp_path / "crop.nii.gz"), image_id="ct_crop")

    images = client.datastore()["objects"].keys()
    # highres: 12 sliding windows per image
    r = post(server, f"/batch/infer/{MODEL}?images=all", {"highres": True, "label_tag": "prio"})
    assert r.status_code == 200, r.text
    task = r.json()
    assert task["status"] == "RUNNING" and task["progress"]["total"] == len(images)
    assert post(server, f"/batch/infer/{MODEL}", {}).status_code == 429

    wait_until(server, "/batch/infer", lambda r: r.json().get("progress", {}).get("current"), "the batch to start")
    # interactive infers until one is queued while the batch's image has two or more windows to
    # go; the engine's record of it (params.engine, counted in background windows, not seconds)
    # shows it waited for at most one of them; a first-in-first-out engine would make it wait
    # for all `background_windows_left`
    rec = None
    for _ in range(50):
        _, params = client.infer(MODEL, "ct_crop", {"highres": False})
        assert params["windows"] == 1
        # whenever it arrived, at most one batch window ran before it
        assert params["engine"]["waited_windows"] <= 1, params["engine"]
        if params["engine"]["background_windows_left"] >= 2:
            rec = params["engine"]
            break
        now = requests.get(server.url + "/batch/infer").json()
        assert now["status"] == "RUNNING", f"the batch ended before an infer arrived during its windows: {now}"
    assert rec is not None, "no interactive infer arrived while the batch had windows to run"
    assert rec["waited_windows"] <= 1, rec
    assert rec["between_windows"] is True, rec
    assert rec["started_at"] - rec["queued_at"] == rec["waited_windows"], rec
    print(f"\ninteractive infer during a batch: queued with {rec['background_windows_left']} batch windows "
          f"to go, started after {rec['waited_windows']} of them")

    r = requests.delete(server.url + "/batch/infer")
    assert r.status_code == 200 and r.json()["status"] == "STOPPED"
    wait_until(server, "/batch/infer", lambda r: "Batch_infer task stopped" in r.json()["details"], "the stop")
    assert requests.get(server.url + "/batch/infer", params={"check_if_running": "true"}).status_code == 404
    stats = requests.get(server.url + "/datastore/", params={"output": "stats"}).json()
    assert stats["label_tags"].get("prio", 0) < len(images), stats


def test_epistemic_next_sample_is_the_highest_score(server, client, uploaded):
    r = post(server, "/scoring/epistemic?run_sync=true", dict(MC, images="all"))
    assert r.status_code == 200, r.text
    scores = {i: v["epistemic_entropy"] for i, v in r.json().items()}
    ds = client.datastore()
    unlabeled = [i for i, o in ds["objects"].items() if "final" not in o["labels"]]
    for i, s in scores.items():
        assert ds["objects"][i]["image"]["info"]["epistemic_entropy"] == s
    best = sorted(unlabeled, key=lambda i: (-scores[i], i))[0]
    sample = client.next_sample("epistemic", {})
    assert sample["id"] == best
    assert sample["epistemic_entropy"] == scores[best]
    assert len(set(scores.values())) > 1

    # the same seed, the same scores
    again = post(server, "/scoring/epistemic?run_sync=true", dict(MC, images="all")).json()
    assert {i: v["epistemic_entropy"] for i, v in again.items()} == scores


def test_dice_scoring_on_a_known_pair(server, client, uploaded, tmp_path):
    img = nib.load(SMALL_CT)
    shape = img.shape
    y = np.zeros(shape, np.uint8)
    p = np.zeros(shape, np.uint8)
    y[20:60, 20:60, 5:20] = 5
    p[30:70, 20:60, 5:20] = 5
    y[80:90, 10:20, 2:6] = 7
    p[80:90, 10:20, 2:4] = 7
    p[100:104, 50:54, 10:12] = 9

    def save(arr, name):
        path = str(tmp_path / name)
        nib.save(nib.Nifti1Image(arr, img.affine), path)
        return path

    client.save_label("ct_flipped", save(y, "y.nii.gz"), tag="final")
    client.save_label("ct_flipped", save(p, "p.nii.gz"), tag="original")

    per = []
    for c in sorted((set(np.unique(y)) | set(np.unique(p))) - {0}):
        a, b = y == c, p == c
        per.append(2.0 * np.logical_and(a, b).sum() / (a.sum() + b.sum()))
    expected = float(np.mean(per))

    r = post(server, "/scoring/dice?run_sync=true")
    assert r.status_code == 200, r.text
    assert abs(r.json()["ct_flipped"] - expected) < 1e-9, (r.json(), expected)
    info = client.datastore()["objects"]["ct_flipped"]["image"]["info"]
    assert abs(info["dice"] - expected) < 1e-9

    r = post(server, "/scoring/sum?run_sync=true")
    assert r.status_code == 200, r.text
    assert r.json()["ct_flipped"]["final"]["sum"] == int((y > 0).sum())
    status = requests.get(server.url + "/scoring/").json()
    assert status["status"] == "DONE"
