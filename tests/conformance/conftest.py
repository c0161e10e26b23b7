"""Fixtures for the conformance suite: a real server on 127.0.0.1 driven by the official
`monailabel` client (0.8.5).

By default the server is ferrolabel (the release binary, FERROLABEL_BIN, default
target/release/ferrolabel). With FERROLABEL_PEER=monailabel the same suite runs against the
real MONAI Label server (`monailabel start_server`, from the interpreter in
FERROLABEL_PEER_PYTHON), to prove that it tests the protocol and not ferrolabel's quirks; tests
that check ferrolabel-only promises are marked `ferrolabel_only`.
"""
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
PEER = os.environ.get("FERROLABEL_PEER", "ferrolabel")
GOLDEN = os.environ.get("FERROLABEL_GOLDEN", os.path.join(REPO, "target", "golden"))
BIN = os.environ.get("FERROLABEL_BIN", os.path.join(REPO, "target", "release", "ferrolabel"))
SMALL_CT = os.path.join(REPO, "data", "totalseg", "example_ct_sm.nii.gz")


def pytest_configure(config):
    config.addinivalue_line("markers", "ferrolabel_only: a promise of ferrolabel beyond MONAI Label's behaviour")


def pytest_collection_modifyitems(config, items):
    if PEER != "ferrolabel":
        skip = pytest.mark.skip(reason="ferrolabel-only behaviour")
        for item in items:
            if "ferrolabel_only" in item.keywords:
                item.add_marker(skip)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, tmp, bundle=None):
        self.tmp = tmp
        self.studies = os.path.join(tmp, "studies")
        os.makedirs(self.studies)
        shutil.copy(SMALL_CT, os.path.join(self.studies, "ct_small.nii.gz"))
        shutil.copy(SMALL_CT, os.path.join(self.studies, "ct_other.nii.gz"))
        self.bundle = bundle or os.path.join(GOLDEN, "bundle_small")
        assert os.path.exists(os.path.join(self.bundle, "models", "model.pt")), \
            f"golden bundle missing at {self.bundle}: run scripts/test.sh"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = open(os.path.join(tmp, "server.log"), "wb")
        if PEER == "ferrolabel":
            cmd = [BIN, "start_server", "--app", os.path.join(REPO, "apps", "wholebody"), "--studies", self.studies,
                   "--conf", "bundle_dir", self.bundle, "--host", "127.0.0.1", "--port", str(self.port),
                   "--threads", "2"]
            env = dict(os.environ, MONAI_LABEL_SESSION_PATH=os.path.join(tmp, "sessions"))
        else:
            py = os.environ["FERROLABEL_PEER_PYTHON"]
            app = os.path.join(tmp, "app")
            # the monailabel wheel installs its sample apps under <venv>/monailabel/sample-apps
            venv = os.path.dirname(os.path.dirname(py))
            shutil.copytree(os.path.join(venv, "monailabel", "sample-apps", "monaibundle"), app)
            model_dir = os.path.join(app, "model", "wholeBody_ct_segmentation")
            shutil.copytree(self.bundle, model_dir)
            cmd = [py, "-m", "monailabel.main", "start_server", "--app", app, "--studies", self.studies,
                   "--conf", "models", "wholeBody_ct_segmentation",
                   # use the local bundle folder; never ask the model zoo (no network)
                   "--conf", "zoo_source", "github", "--conf", "sam2", "false", "--host", "127.0.0.1", "--port", str(self.port)]
            env = dict(os.environ, MONAI_LABEL_DATASTORE_AUTO_RELOAD="false",
                       MONAI_LABEL_SESSION_PATH=os.path.join(tmp, "sessions"))
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, env=env)
        deadline = time.time() + 120
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited: {open(os.path.join(tmp, 'server.log')).read()[-3000:]}")
            try:
                with urllib.request.urlopen(self.url + "/info/", timeout=2) as r:
                    if r.status == 200:
                        return
            except Exception:
                time.sleep(0.2)
        raise RuntimeError("server did not start")

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


@pytest.fixture(scope="module")
def server():
    tmp = tempfile.mkdtemp(prefix="ferrolabel-conf-")
    s = Server(tmp)
    yield s
    s.stop()
    shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture(scope="module")
def client(server):
    from monailabel.client import MONAILabelClient
    tmpdir = tempfile.mkdtemp(prefix="ferrolabel-client-")
    return MONAILabelClient(server.url, tmpdir=tmpdir, client_id="conformance")
