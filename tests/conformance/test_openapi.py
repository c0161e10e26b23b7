"""The OpenAPI description (`/openapi.json`) and Swagger UI (`/docs`) of the live server
(docs/api.md).

* the description validates (`openapi-spec-validator`, OpenAPI 3.1);
* `schemathesis` generates requests from it against the live server: no answer is a 5xx, and
  every answer matches the description (status code, content type, headers, body schema);
* the operations that start heavy work are left out of random generation (below) and called
  here with a few cheap, known inputs whose answers are checked against the description;
* `/docs` renders in headless Chromium and shows the operations (screenshot under
  target/test-output/).

ferrolabel only: MONAI Label's FastAPI description is its own.
"""
import json
import os
import subprocess
import sys
import time
import urllib.request

import pytest

from conftest import REPO

pytestmark = pytest.mark.ferrolabel_only

OUT = os.path.join(REPO, "target", "test-output")

# Left out of random generation: each starts heavy work on valid input (a network run, a
# training worker, a batch over the datastore, a scoring pass with Monte Carlo dropout), which
# would make the run slow and its length depend on what the generator hits. They are called
# in test_heavy_operations_answer_as_described with cheap inputs instead.
HEAVY = [
    "post_infer_model",
    "post_train",
    "post_train_model",
    "post_batch_infer_model",
    "post_scoring",
    "post_scoring_method",
]

# what schemathesis checks on every answer
CHECKS = [
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_headers_conformance",
    "response_schema_conformance",
]


def fetch(server, path):
    with urllib.request.urlopen(server.url + path, timeout=30) as r:
        return r.status, r.headers.get("Content-Type", ""), r.read()


@pytest.fixture(scope="module")
def spec(server):
    status, ctype, body = fetch(server, "/openapi.json")
    assert status == 200 and ctype.startswith("application/json")
    return json.loads(body)


def test_spec_validates(spec):
    from openapi_spec_validator import validate

    assert spec["openapi"].startswith("3.1")
    validate(spec)
    ops = [(m, p) for p, item in spec["paths"].items() for m in item if m in ("get", "put", "post", "delete", "head")]
    assert len(ops) > 40, ops
    # /auth/* is described although this server runs without auth (there it is 404)
    assert "--auth-enable" in spec["paths"]["/auth/token"]["post"]["description"]
    # the left-out operations exist under these ids (a renamed one would silently be fuzzed)
    ids = {op["operationId"] for item in spec["paths"].values() for op in item.values()
           if isinstance(op, dict) and "operationId" in op}
    assert set(HEAVY) <= ids, set(HEAVY) - ids


def test_schemathesis_finds_no_5xx_and_no_schema_mismatch(server, tmp_path):
    cmd = [os.path.join(os.path.dirname(sys.executable), "schemathesis"), "run", server.url + "/openapi.json",
           "--checks", ",".join(CHECKS),
           # a few examples per operation keep the file within its time budget; fixed seed and
           # deterministic generation: the same requests on every run
           "--max-examples", "8", "--seed", "16", "--generation-deterministic",
           "--phases", "examples,coverage,fuzzing",
           "--workers", "1", "--request-timeout", "30", "--no-color", "--continue-on-failure",
           "--suppress-health-check", "all", "--warnings", "off"]
    for op in HEAVY:
        cmd += ["--exclude-operation-id", op]
    t0 = time.time()
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    out = run.stdout + run.stderr
    os.makedirs(OUT, exist_ok=True)
    with open(os.path.join(OUT, "schemathesis.txt"), "w") as f:
        f.write(out)
    print(f"schemathesis: {time.time() - t0:.1f} s")
    assert run.returncode == 0, out[-8000:]
    # it did test the operations (not a run that skipped everything)
    assert "operations" in out.lower(), out[-3000:]


def test_heavy_operations_answer_as_described(server, spec):
    import schemathesis

    schema = schemathesis.openapi.from_dict(spec)
    schema.config.update(base_url=server.url)
    cases = [
        # unknown model / method: refused before any work
        ("/infer/{model}", "POST", {"model": "no-such-model"}, {"image": "ct_small"}),
        ("/infer/{model}", "POST", {"model": "wholeBody_ct_segmentation"}, {"output": "bogus"}),
        ("/infer/{model}", "POST", {"model": "wholeBody_ct_segmentation"}, {"image": "no-such-image"}),
        ("/train/{model}", "POST", {"model": "no-such-model"}, {}),
        # no image has a final label: 422 before a worker starts
        ("/train/{model}", "POST", {"model": "wholeBody_ct_segmentation"}, {}),
        ("/train/", "POST", {}, {}),
        ("/batch/infer/{model}", "POST", {"model": "wholeBody_ct_segmentation"}, {"images": "bogus"}),
        ("/batch/infer/{model}", "POST", {"model": "no-such-model"}, {}),
        ("/scoring/{method}", "POST", {"method": "no-such-method"}, {}),
        # sum: counts voxels of final/original labels (none here): a quick task
        ("/scoring/{method}", "POST", {"method": "sum"}, {"run_sync": "true"}),
    ]
    statuses = []
    for path, method, path_params, query in cases:
        op = schema[path][method]
        case = op.Case(path_parameters=path_params, query=query)
        response = case.call()
        assert response.status_code < 500, (path, path_params, query, response.text)
        case.validate_response(response, checks=[getattr(schemathesis.checks, c) for c in CHECKS])
        statuses.append(response.status_code)
    assert 404 in statuses and 422 in statuses and 200 in statuses, statuses


def test_docs_render_in_headless_chromium(server):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait

    # the page's files come from the binary itself (no CDN)
    status, ctype, page = fetch(server, "/docs")
    assert status == 200 and ctype.startswith("text/html")
    assert b"http" not in page, page
    for asset in ("/docs/swagger-ui-bundle.js", "/docs/swagger-ui.css", "/docs/swagger-init.js"):
        assert fetch(server, asset)[0] == 200, asset

    opts = webdriver.ChromeOptions()
    opts.binary_location = "/usr/bin/chromium"
    for a in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
              "--window-size=1280,2000"):
        opts.add_argument(a)
    driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=opts)
    try:
        driver.get(server.url + "/docs")
        wait = WebDriverWait(driver, 60)
        info = wait.until(EC.presence_of_element_located(
            (By.CSS_SELECTOR, '.opblock-summary-path[data-path="/info/"]')))
        assert info.text.strip().startswith("/info/"), info.text
        paths = {e.get_attribute("data-path") for e in driver.find_elements(By.CSS_SELECTOR, ".opblock-summary-path")}
        for p in ("/infer/{model}", "/datastore/label", "/auth/token", "/openapi.json"):
            assert p in paths, sorted(paths)
        assert "ferrolabel" in driver.find_element(By.CSS_SELECTOR, ".info .title").text
        os.makedirs(OUT, exist_ok=True)
        shot = os.path.join(OUT, "openapi-docs.png")
        driver.save_screenshot(shot)
        assert os.path.getsize(shot) > 10_000
    finally:
        driver.quit()
