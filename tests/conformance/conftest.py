"""Fixtures for the conformance suite: a real server on 127.0.0.1 driven by the official
`monailabel` client (0.8.5).

By default the server is ferrolabel (the release binary, FERROLABEL_BIN, default
target/release/ferrolabel). With FERROLABEL_PEER=monailabel the same suite runs against the
real MONAI Label server (`monailabel start_server`, from the interpreter in
FERROLABEL_PEER_PYTHON), to prove that it tests the protocol and not ferrolabel's quirks; tests
that check ferrolabel-only promises are marked `ferrolabel_only`.

With FERROLABEL_CLUSTER=1 every ferrolabel the suite starts ([`Deployment`]) is a team deployment on
loopback instead of one process: a fresh database on a throwaway PostgreSQL (one per pytest run,
bench/team.py's `TempPostgres`, the Python twin of testkit/src/postgres.rs), 2 `start_server
--no-jobs` and 1 `ferrolabel worker` on the same studies folder, session folder and
`--datastore-url`, behind haproxy (deploy/team/haproxy.cfg, round robin): `url` is haproxy's, so
consecutive requests land on different servers and the jobs run in the worker.
"""
import atexit
import importlib.util
import itertools
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
PEER = os.environ.get("FERROLABEL_PEER", "ferrolabel")
GOLDEN = os.environ.get("FERROLABEL_GOLDEN", os.path.join(REPO, "target", "golden"))
BIN = os.environ.get("FERROLABEL_BIN", os.path.join(REPO, "target", "release", "ferrolabel"))
SMALL_CT = os.path.join(REPO, "data", "totalseg", "example_ct_sm.nii.gz")
CLUSTER = os.environ.get("FERROLABEL_CLUSTER", "").lower() in ("1", "true", "yes")


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


def _team():
    """bench/team.py (throwaway PostgreSQL and haproxy for a team deployment on loopback)."""
    spec = importlib.util.spec_from_file_location("ferrolabel_bench_team", os.path.join(REPO, "bench", "team.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


_PG = []
_DB_NUMBERS = itertools.count()


def cluster_database():
    """A fresh database on this pytest run's throwaway PostgreSQL (started at first use, stopped
    at exit)."""
    if not _PG:
        pg = _team().TempPostgres()
        atexit.register(pg.stop)
        _PG.append(pg)
    return _PG[0].create_db(f"conf_{os.getpid()}_{next(_DB_NUMBERS)}")


def _stop(proc):
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class Deployment:
    """ferrolabel serving `studies` with the bundle `bundle`: one `start_server` on SQLite, or with
    FERROLABEL_CLUSTER=1 a database on the run's PostgreSQL, 2 `start_server --no-jobs` and 1
    `ferrolabel worker` (same studies, sessions and database) behind haproxy. `extra`: more
    start_server arguments; `env`: more environment; `scheme`: how to poll readiness (an HTTPS
    server must be single: haproxy here speaks plain HTTP). Logs: server.log (the first server),
    server2.log, worker.log, haproxy.log in `tmp`."""

    def __init__(self, tmp, studies, bundle, extra=(), env=None, scheme="http", threads=2):
        self.tmp = tmp
        self.procs = []
        self.haproxy = None
        self.env = dict(os.environ, MONAI_LABEL_SESSION_PATH=os.path.join(tmp, "sessions"), **(env or {}))
        self.env.pop("FERROLABEL_DATASTORE_URL", None)
        app = os.path.join(REPO, "apps", "wholebody")
        if os.path.realpath(bundle).startswith(os.path.realpath(GOLDEN) + os.sep):
            # the server keeps model versions in its bundle (models/versions/, docs/models.md):
            # never in the shared golden fixtures, a private copy
            private = os.path.join(tmp, "bundle")
            shutil.copytree(bundle, private)
            bundle = private
        common = ["--app", app, "--studies", studies, "--conf", "bundle_dir", bundle, "--threads", str(threads)]
        self.cluster = CLUSTER
        try:
            if not CLUSTER:
                self.port = self._server(common, extra, "server.log", scheme)
            else:
                assert scheme == "http", "cluster mode puts haproxy (plain HTTP) in front"
                self.database_url = cluster_database()
                db = ["--datastore-url", self.database_url]
                # the first server runs the migrations before the others connect
                ports = [self._server(common + db + ["--no-jobs=true"], extra, "server.log", scheme)]
                ports.append(self._server(common + db + ["--no-jobs=true"], extra, "server2.log", scheme))
                self._spawn([BIN, "worker", *common, *db], "worker.log")
                self.haproxy = _team().Haproxy(ports, self.tmp, wait_info=False)
                self.port = self.haproxy.port
                self.backends = ports
                time.sleep(0.5)
                for proc, log in self.procs:
                    assert proc.poll() is None, self._tail(log)
        except BaseException:
            self.stop()
            raise
        self.url = f"{scheme}://127.0.0.1:{self.port}"

    def _tail(self, log):
        with open(os.path.join(self.tmp, log), errors="replace") as f:
            return f"{log}: " + f.read()[-3000:]

    def _spawn(self, cmd, log):
        out = open(os.path.join(self.tmp, log), "ab")
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=self.env)
        out.close()
        self.procs.append((proc, log))
        return proc

    def _server(self, args, extra, log, scheme):
        port = free_port()
        proc = self._spawn([BIN, "start_server", *args, "--host", "127.0.0.1", "--port", str(port), *extra], log)
        ctx = None
        if scheme == "https":
            import ssl
            ctx = ssl._create_unverified_context()
        deadline = time.time() + 120
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"server exited: {self._tail(log)}")
            try:
                with urllib.request.urlopen(f"{scheme}://127.0.0.1:{port}/info/", timeout=2, context=ctx) as r:
                    if r.status == 200:
                        return port
            except urllib.error.HTTPError as e:
                if e.code == 401:  # authentication is on: up
                    return port
            except Exception:
                pass
            if time.time() > deadline:
                raise RuntimeError(f"server did not start: {self._tail(log)}")
            time.sleep(0.2)

    def stop(self):
        if self.haproxy is not None:
            self.haproxy.stop()
        for proc, _ in self.procs:
            _stop(proc)


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
        if PEER == "ferrolabel":
            self.deployment = Deployment(tmp, self.studies, self.bundle)
            self.url, self.port = self.deployment.url, self.deployment.port
            return
        self.deployment = None
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = open(os.path.join(tmp, "server.log"), "wb")
        # the MONAI Label peer
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
        if self.deployment is not None:
            self.deployment.stop()
            return
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
