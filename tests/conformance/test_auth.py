"""Auth mode (docs/protocol.md §9, docs/auth.md) driven by the official monailabel client: it
detects auth with `GET /auth/`, logs in with `POST /auth/token` (OAuth2 password form), checks the token with
`GET /auth/token/valid` and then works with `Authorization: Bearer <token>`. The server runs
over HTTPS with a self-signed certificate made by `openssl` (the client uses an unverified TLS
context); without `openssl` it runs over plain HTTP, except under CI=true where it fails. In
cluster mode (FERROLABEL_CLUSTER=1, conftest.Deployment) it runs over plain HTTP through haproxy
in front of two servers, so a token issued by one server is checked by the other.

ferrolabel only: MONAI Label's own auth mode needs a Keycloak realm (and, as shipped, refuses
every token, docs/protocol.md §9)."""
import http.client
import json
import os
import shutil
import ssl
import subprocess
import tempfile
import urllib.parse

import nibabel as nib
import pytest
from monailabel.client import MONAILabelClient
from monailabel.client.client import MONAILabelClientException

from conftest import BIN, CLUSTER, GOLDEN, SMALL_CT, Deployment

pytestmark = pytest.mark.ferrolabel_only

MODEL = "wholeBody_ct_segmentation"
USERS = {"ann": ("ann-pw", "annotator"), "boss": ("boss-pw", "admin"), "viewer": ("viewer-pw", "user")}


def add_user(users_file, name, password, role):
    subprocess.run([BIN, "auth", "add-user", "--users", users_file, "--username", name, "--role", role],
                   input=password + "\n", text=True, check=True, capture_output=True)


class AuthServer:
    def __init__(self, tmp):
        self.studies = os.path.join(tmp, "studies")
        os.makedirs(self.studies)
        shutil.copy(SMALL_CT, os.path.join(self.studies, "ct_small.nii.gz"))
        shutil.copy(SMALL_CT, os.path.join(self.studies, "ct_other.nii.gz"))
        bundle = os.path.join(GOLDEN, "bundle_small")
        assert os.path.exists(os.path.join(bundle, "models", "model.pt")), \
            f"golden bundle missing at {bundle}: run scripts/test.sh"
        users = os.path.join(tmp, "users.json")
        for name, (pw, role) in USERS.items():
            add_user(users, name, pw, role)
        extra = ["--auth-enable", "true", "--auth-users", users]
        self.scheme = "http"
        self.cert = None
        # in cluster mode (conftest.Deployment) haproxy speaks plain HTTP to the client: HTTPS is
        # the single-server run's
        if not CLUSTER and shutil.which("openssl"):
            cert, key = os.path.join(tmp, "cert.pem"), os.path.join(tmp, "key.pem")
            subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                            "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                            "-keyout", key, "-out", cert],
                           check=True, capture_output=True)
            extra += ["--ssl_certfile", cert, "--ssl_keyfile", key]
            self.scheme = "https"
            self.cert = cert
        elif not CLUSTER and os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            # CI must test the HTTPS flow, never silently the plain one
            raise RuntimeError("test_auth.py needs `openssl` to make the TLS certificate "
                               "(apt-get install openssl); under CI=true it does not fall back to HTTP")
        self.deployment = Deployment(tmp, self.studies, bundle, extra=extra, scheme=self.scheme)
        self.port, self.url = self.deployment.port, self.deployment.url
        assert self.raw("GET", "/auth/")[0] == 200

    def audit_log_cmd(self):
        """`ferrolabel auth audit-log` for this server's database."""
        cmd = [BIN, "auth", "audit-log", "--studies", self.studies]
        if CLUSTER:
            cmd += ["--datastore-url", self.deployment.database_url]
        return cmd

    def raw(self, method, path, headers=None, body=None):
        if self.scheme == "https":
            conn = http.client.HTTPSConnection("127.0.0.1", self.port, timeout=300,
                                               context=ssl._create_unverified_context())
        else:
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=300)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            r = conn.getresponse()
            return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
        finally:
            conn.close()

    def stop(self):
        self.deployment.stop()


@pytest.fixture(scope="module")
def server():
    tmp = tempfile.mkdtemp(prefix="ferrolabel-auth-")
    s = AuthServer(tmp)
    yield s
    s.stop()
    shutil.rmtree(tmp, ignore_errors=True)


def logged_in(server, name):
    """A client logged in the way the Slicer plugin does it."""
    c = MONAILabelClient(server.url, tmpdir=tempfile.mkdtemp(prefix="ferrolabel-client-"), client_id="conformance")
    assert c.auth_enabled()
    assert not c.auth_valid_token(), "no token yet"
    token = c.auth_token(name, USERS[name][0])
    assert set(token) == {"access_token", "token_type"}
    c.update_auth(token)
    assert c.auth_valid_token()
    return c


def test_auth_endpoints(server):
    status, _, body = server.raw("GET", "/auth/")
    assert status == 200
    assert json.loads(body) == {"enabled": True, "client_id": "monailabel-app", "realm": "ferrolabel"}
    c = MONAILabelClient(server.url)
    with pytest.raises(MONAILabelClientException) as e:
        c.auth_token("ann", "wrong")
    assert e.value.status_code == 401
    c = logged_in(server, "ann")
    status, _, body = server.raw("GET", "/auth/token/valid", headers=c._headers)
    assert status == 200
    assert json.loads(body)["username"] == "ann"
    assert json.loads(body)["roles"] == ["monailabel-user", "monailabel-annotator"]


def test_without_a_token_every_call_is_401(server):
    c = MONAILabelClient(server.url, tmpdir=tempfile.mkdtemp())
    assert c.auth_enabled()
    for call in (c.info, c.datastore, lambda: c.next_sample("random", {})):
        with pytest.raises(MONAILabelClientException) as e:
            call()
        assert e.value.status_code == 401
    status, hdrs, body = server.raw("GET", "/info/")
    assert status == 401 and hdrs["www-authenticate"] == "Bearer"
    assert json.loads(body) == {"detail": "Not authenticated"}
    status, _, body = server.raw("GET", "/info/", headers={"Authorization": "Bearer " + "0" * 64})
    assert status == 401 and json.loads(body) == {"detail": "Could not validate credentials"}


def test_annotator_works_through_the_slicer_flow(server, monkeypatch):
    c = logged_in(server, "ann")
    info = c.info()
    assert MODEL in info["models"]
    sample = c.next_sample("first", {})
    assert sample["id"] in ("ct_small", "ct_other")
    result, params = c.infer(MODEL, "ct_small", {"highres": False, "result_extension": ".nii.gz",
                                                 "result_dtype": "uint8"})
    assert nib.load(result).shape == nib.load(SMALL_CT).shape
    r = c.save_label("ct_small", result, params={"label_info": [{"name": "spleen", "idx": 1}], "model": MODEL})
    assert r == {"image": "ct_small", "label": "ct_small"}
    ds = c.datastore()
    assert "final" in ds["objects"]["ct_small"]["labels"]
    label = c.download_label("ct_small", "final")
    assert open(label, "rb").read() == open(result, "rb").read()
    tmp = tempfile.mkdtemp()
    up = os.path.join(tmp, "uploaded_by_ann.nii.gz")
    shutil.copy(SMALL_CT, up)
    assert c.upload_image(up, "uploaded_by_ann") == {"image": "uploaded_by_ann"}
    ds = c.datastore()
    assert ds["objects"]["uploaded_by_ann"]["image"]["info"]["user"] == "ann"
    # create_session goes through `requests`, which (unlike the rest of the client) verifies the
    # certificate: trust ours
    if server.cert:
        monkeypatch.setenv("REQUESTS_CA_BUNDLE", server.cert)
    # a fresh client, as Slicer makes one per call: the client's multipart calls write their
    # content-type into its stored auth headers, which then break the next `requests` upload
    c = logged_in(server, "ann")
    s = c.create_session(SMALL_CT)
    assert c.get_session(s["session_id"])["name"] == s["session_id"]
    c.remove_session(s["session_id"])


def test_roles(server):
    ann = logged_in(server, "ann")
    viewer = logged_in(server, "viewer")
    boss = logged_in(server, "boss")
    # a plain user may read and infer but not write labels
    assert viewer.info()["models"]
    with pytest.raises(MONAILabelClientException) as e:
        viewer.save_label("ct_other", SMALL_CT, params={})
    assert "Status: 403" in e.value.msg
    # an annotator deleting an image gets 403, the admin may
    q = "/datastore/image?id=" + urllib.parse.quote_plus("uploaded_by_ann")
    status, _, body = server.raw("DELETE", q, headers=ann._headers)
    assert status == 403
    assert json.loads(body) == {"detail": 'Role "monailabel-admin" is required to perform this action'}
    status, _, _ = server.raw("DELETE", q, headers=boss._headers)
    assert status == 200
    assert "uploaded_by_ann" not in boss.datastore()["objects"]
    # logs are for admins
    assert server.raw("GET", "/logs/?text=true", headers=ann._headers)[0] == 403
    assert server.raw("GET", "/logs/?text=true", headers=boss._headers)[0] == 200


def test_audit_log_names_who_did_what(server):
    out = subprocess.run(server.audit_log_cmd(),
                         check=True, capture_output=True, text=True).stdout
    rows = [json.loads(line) for line in out.splitlines()]
    seen = {(r["username"], r["action"], r["image_id"], r["status"]) for r in rows}
    assert ("ann", "label.save", "ct_small", 200) in seen
    assert ("ann", "image.upload", "uploaded_by_ann", 200) in seen
    assert ("ann", "image.delete", "uploaded_by_ann", 403) in seen
    assert ("boss", "image.delete", "uploaded_by_ann", 200) in seen
    assert ("viewer", "label.save", "ct_other", 403) in seen
    assert all(r["ts_ms"] > 1_600_000_000_000 for r in rows)


def path_variants(path):
    """Paths a lax reader takes for `path`: one character percent-encoded (both cases of hex),
    every character encoded, doubled / leading / trailing slashes, `.` and `..` segments (plain
    and encoded), `;` parameters. Mirrors server/tests/auth/paths.rs."""
    out = set()
    for i, ch in enumerate(path):
        for esc in ("%%%02X" % ord(ch), "%%%02x" % ord(ch)):
            out.add(path[:i] + esc + path[i + 1:])
    out.add("".join(c if c == "/" else "%%%02x" % ord(c) for c in path))
    trimmed = path.rstrip("/")
    out |= {trimmed + "/", trimmed + "//", "/" + path, trimmed + "/.", trimmed + "/x/..", trimmed + ";p=1"}
    if trimmed:
        out.add(trimmed)
    for i, ch in enumerate(path):
        if ch == "/":
            for ins in ("/", "/.", "/x/..", "/x/%2e%2e", "/x/%2E.", "/%2e"):
                out.add(path[:i] + ins + path[i:])
            if i > 0:
                out.add(path[:i] + ";p=1" + path[i:])
    out.discard(path)
    return sorted(out)


def audit_rows(server):
    out = subprocess.run(server.audit_log_cmd(),
                         check=True, capture_output=True, text=True).stdout
    return [json.loads(line) for line in out.splitlines()]


def test_non_canonical_paths_get_the_canonical_answer_or_400(server):
    """Issue 10 §1: `/%64atastore/image` was routed to `/datastore/image` but checked (and
    audited) as an unknown path. Every variant must answer like the canonical path or be refused
    (400, or the router's 404) without changing anything; every routed write is audited once."""
    clients = {name: logged_in(server, name) for name in USERS}
    boss = clients["boss"]
    victim = "victim_paths"
    up = os.path.join(tempfile.mkdtemp(), victim + ".nii.gz")
    shutil.copy(SMALL_CT, up)

    def ensure_victim():
        """Re-uploads the victim if an allowed delete took it; the audit entry that makes."""
        if victim in boss.datastore()["objects"]:
            return []
        assert boss.upload_image(up, victim) == {"image": victim}
        return [("boss", "image.upload", 200)]

    rows = [  # (method, path, query, audit action)
        ("DELETE", "/datastore/image", "id=" + victim, "image.delete"),
        ("DELETE", "/datastore/", "id=" + victim, "image.delete"),
        ("DELETE", "/datastore/label", "id=" + victim + "&tag=final", "label.delete"),
        ("GET", "/logs/", "lines=1", None),
        ("GET", "/model/" + MODEL, "", None),
        ("GET", "/model/info/" + MODEL, "", None),
        ("POST", "/batch/infer/no_such_model", "", None),
        ("POST", "/train/no_such_model", "", None),
        ("GET", "/datastore/dataset", "", None),
        ("GET", "/info/", "", None),
    ]
    total = len(audit_rows(server))
    for method, path, query, action in rows:
        start = total
        expected = []
        for name, c in clients.items():
            canonical = None
            for p in [path] + path_variants(path):
                if action:
                    expected += ensure_victim()
                target = p + ("?" + query if query else "")
                # only the token: the client keeps the content type of its last upload in _headers
                auth = {"Authorization": c._headers["Authorization"]}
                status, _, body = server.raw(method, target, headers=auth)
                what = f"{name} {method} {target}: {status} {body[:200]!r}"
                routed = canonical is None or status == canonical
                if canonical is None:
                    canonical = status
                elif status == 400:
                    # a target not starting with '/' is refused by the HTTP parser, without JSON
                    assert not p.startswith("/") or json.loads(body)["detail"], what
                elif status != canonical:
                    assert status == 404 and json.loads(body) == {"detail": "Not Found"}, what
                if action and not 200 <= status < 300:
                    assert victim in boss.datastore()["objects"], what + ": the image is gone"
                if action and routed:
                    expected.append((name, action, status))
        if action:
            logged = [(r["username"], r["action"], r["status"]) for r in audit_rows(server)[start:]]
            assert logged == expected, f"{method} {path}: one audit entry per routed write"
            total = start + len(logged)
    assert len(audit_rows(server)) == total, "the reads left audit entries"
