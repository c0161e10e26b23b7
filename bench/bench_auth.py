"""Cost of authentication: login (argon2id password check) and the bearer-token check.

Starts the release binary with auth on (a users file made by `ferrolabel auth add-user`, no
weights needed), then over fresh connections on 127.0.0.1:
  * `--logins` x POST /auth/token (the argon2id check),
  * `--requests` x GET /auth/token/valid (token-checked) and GET /auth/ (open, no check),
and prints mean and p50 of each, plus the token check's extra cost (valid minus open). Writes JSON.
`--tls` serves HTTPS (a self-signed certificate made with `openssl`) and measures the same calls over
fresh TLS connections (handshake included).

Usage: bench_auth.py [--logins 10] [--requests 200] [--tls] [--out bench-out/auth.json]
"""
import argparse
import http.client
import json
import ssl
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(REPO, "tests", "conformance"))
BIN = os.environ.get("FERROLABEL_BIN", os.path.join(REPO, "target", "release", "ferrolabel"))


def free_port():
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


TLS = False


def call(port, method, path, body=None, headers=None):
    if TLS:
        conn = http.client.HTTPSConnection("127.0.0.1", port, timeout=60,
                                           context=ssl._create_unverified_context())
    else:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    t0 = time.perf_counter()
    conn.request(method, path, body=body, headers=headers or {})
    r = conn.getresponse()
    data = r.read()
    dt = time.perf_counter() - t0
    conn.close()
    return r.status, data, dt


def summary(times):
    ms = [t * 1000 for t in times]
    return {"n": len(ms), "mean_ms": round(statistics.mean(ms), 3), "p50_ms": round(statistics.median(ms), 3)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--logins", type=int, default=10)
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--tls", action="store_true", help="serve and measure HTTPS")
    ap.add_argument("--out", default=None, help="default bench-out/auth.json (auth-tls.json with --tls)")
    a = ap.parse_args()
    global TLS
    TLS = a.tls
    a.out = a.out or os.path.join(REPO, "bench-out", "auth-tls.json" if a.tls else "auth.json")
    tmp = tempfile.mkdtemp(prefix="ferrolabel-bench-auth-")
    tls_args = []
    if a.tls:
        cert, key = os.path.join(tmp, "cert.pem"), os.path.join(tmp, "key.pem")
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                        "-subj", "/CN=127.0.0.1", "-keyout", key, "-out", cert], check=True, capture_output=True)
        tls_args = ["--ssl-certfile", cert, "--ssl-keyfile", key]
    users = os.path.join(tmp, "users.json")
    subprocess.run([BIN, "auth", "add-user", "--users", users, "--username", "ann", "--role", "annotator"],
                   input="ann-password\n", text=True, check=True, capture_output=True)
    port = free_port()
    log = open(os.path.join(tmp, "server.log"), "wb")
    proc = subprocess.Popen([BIN, "start_server", "--app", os.path.join(REPO, "apps", "wholebody"),
                             "--studies", os.path.join(tmp, "studies"), "--host", "127.0.0.1", "--port", str(port),
                             "--auth-enable", "true", "--auth-users", users] + tls_args, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 120
        while True:
            try:
                if call(port, "GET", "/auth/")[0] == 200:
                    break
            except OSError:
                pass
            if proc.poll() is not None or time.time() > deadline:
                raise SystemExit(f"server did not start: {open(log.name).read()[-2000:]}")
            time.sleep(0.2)
        form = urllib.parse.urlencode({"username": "ann", "password": "ann-password"})
        hdr = {"Content-Type": "application/x-www-form-urlencoded"}
        logins, token = [], None
        for _ in range(a.logins):
            status, data, dt = call(port, "POST", "/auth/token", form, hdr)
            assert status == 200, data
            token = json.loads(data)["access_token"]
            logins.append(dt)
        auth = {"Authorization": f"Bearer {token}"}
        valid, open_ = [], []
        for _ in range(a.requests):
            status, data, dt = call(port, "GET", "/auth/token/valid", headers=auth)
            assert status == 200, data
            valid.append(dt)
            status, data, dt = call(port, "GET", "/auth/")
            assert status == 200, data
            open_.append(dt)
    finally:
        proc.terminate()
        proc.wait(30)
    out = {"scheme": "https" if a.tls else "http", "login": summary(logins),
           "token_checked": summary(valid), "open": summary(open_)}
    out["token_check_extra_ms"] = round(out["token_checked"]["p50_ms"] - out["open"]["p50_ms"], 3)
    print(f"login (argon2id)            mean {out['login']['mean_ms']:8.2f} ms   p50 {out['login']['p50_ms']:8.2f} ms  ({a.logins} logins)")
    print(f"GET /auth/token/valid       mean {out['token_checked']['mean_ms']:8.2f} ms   p50 {out['token_checked']['p50_ms']:8.2f} ms  ({a.requests} requests)")
    print(f"GET /auth/ (open)           mean {out['open']['mean_ms']:8.2f} ms   p50 {out['open']['p50_ms']:8.2f} ms")
    print(f"token check, extra (p50)    {out['token_check_extra_ms']:.3f} ms")
    os.makedirs(os.path.dirname(a.out), exist_ok=True)
    with open(a.out, "w") as f:
        json.dump(out, f, indent=2)
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
