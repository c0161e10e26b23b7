"""Training with the official client (`train_start`, `train_status`, `train_stop`): start on a
`final` label, poll to completion, `check_if_running`, 429 on a second start, `train_stats` in
`/info/`, the next infer uses the new weights (array-equal to `ferrolabel infer` with the new
checkpoint, different from before), and a stop mid-run that ends the worker within 10 s.

The server trains a private copy of the small golden bundle, so other modules keep their
weights. ferrolabel-only: MONAI Label's bundle trainer runs the bundle's 4000-epoch train.json
in a subprocess and is not comparable in a test.
"""
import os
import shutil
import subprocess
import sys
import tempfile
import time

import nibabel as nib
import numpy as np
import pytest
from monailabel.client import MONAILabelClient
from monailabel.client.client import MONAILabelClientException

from conftest import BIN, GOLDEN, REPO, SMALL_CT, Server

pytestmark = pytest.mark.ferrolabel_only

MODEL = "wholeBody_ct_segmentation"
SMALL = {"highres": False, "val_interval": 1, "train_batch_size": 1, "roi_size": 32, "val_roi_size": 64}


@pytest.fixture(scope="module")
def trainer():
    tmp = tempfile.mkdtemp(prefix="ferrolabel-conf-train-")
    bundle = os.path.join(tmp, "bundle")
    shutil.copytree(os.path.join(GOLDEN, "bundle_small"), bundle)
    s = Server(tmp, bundle=bundle)
    client = MONAILabelClient(s.url, tmpdir=tmp, client_id="conformance")
    label = os.path.join(tmp, "seg_v1.nii.gz")
    subprocess.run([sys.executable, os.path.join(REPO, "tests", "reference", "train_reference.py"), "map-v2",
                    os.path.join(REPO, "data", "totalseg", "example_seg.nii.gz"),
                    os.path.join(REPO, "data", "totalseg", "totalseg_v2_classes.json"),
                    os.path.join(bundle, "configs", "metadata.json"), label], check=True)
    client.save_label("ct_small", label, tag="final")
    yield s, client, tmp
    s.stop()
    shutil.rmtree(tmp, ignore_errors=True)


def infer_array(client):
    path, _ = client.infer(MODEL, "ct_small", {"highres": False})
    return np.asarray(nib.load(path).dataobj)


def wait_done(client, timeout=600):
    t0 = time.time()
    while True:
        status = client.train_status()
        if status["status"] != "RUNNING":
            return status
        assert time.time() - t0 < timeout, "training did not finish"
        time.sleep(0.5)


def test_train_to_completion_then_infer_uses_the_new_weights(trainer):
    s, client, tmp = trainer
    assert client.train_status(check_if_running=True) is False
    before = infer_array(client)
    task = client.train_start(MODEL, dict(SMALL, max_epochs=2, init_LR=0.01))
    assert task["status"] == "RUNNING" and task["id"]
    assert task["request"]["client_id"] == "conformance"
    assert client.train_status(check_if_running=True) is True
    with pytest.raises(MONAILabelClientException) as e:
        client.train_start(MODEL, dict(SMALL, max_epochs=1))
    assert "429" in str(e.value)
    done = wait_done(client)
    assert done["status"] == "DONE", done
    assert done["result"]["epochs"] == 2
    assert client.train_status(check_if_running=True) is False

    stats = client.info()["train_stats"][MODEL]
    assert stats["epoch"] == 2 and stats["total_epochs"] == 2 and "total_time" in stats
    assert 0.0 <= stats["best_metric"] <= 1.0

    after = infer_array(client)
    assert not np.array_equal(before, after), "infer still uses the old weights"
    out = os.path.join(tmp, "cli.nii.gz")
    subprocess.run([BIN, "infer", "--bundle", s.bundle, "--image", SMALL_CT, "--output", out,
                    "--highres", "false", "--threads", "2"], check=True)
    assert np.array_equal(after, np.asarray(nib.load(out).dataobj))


def test_stop_mid_run(trainer):
    s, client, tmp = trainer
    client.train_start(MODEL, dict(SMALL, max_epochs=100000))
    t0 = time.time()
    while (client.train_status().get("progress") or {}).get("done", 0) < 1:
        assert time.time() - t0 < 300, "no progress"
        time.sleep(0.2)
    stopped = client.train_stop()
    assert stopped["status"] == "STOPPED" and stopped["end_ts"]
    t0 = time.time()
    while client.train_status(check_if_running=True):
        assert time.time() - t0 < 10, "still running 10 s after the stop"
        time.sleep(0.1)
    assert client.train_status()["status"] == "STOPPED"
    assert client.train_stop() is None
    left = sorted(os.listdir(os.path.join(s.bundle, "models")))
    assert all(not n.startswith(".") for n in left), left
