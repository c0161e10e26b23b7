"""Load benchmark: N clients, each `--iterations` x (GET /info/ + GET /datastore/?output=all +
PUT /datastore/label), while `--infers` threads keep POSTing /infer. Prints errors and p50/p99
latency of the non-infer requests, for ferrolabel and, with --peer-python, the real MONAI Label
server in the same run. Writes JSON.

Usage: bench_load.py [--clients 8] [--iterations 50] [--infers 2] [--peer-python PY] [--out FILE]

Everything targets 127.0.0.1 on a free port; loops are bounded in count and in time (--deadline).
"""
import argparse
import http.client
import json
import os
import shutil
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(REPO, "tests", "conformance"))
os.environ.setdefault("FERROLABEL_BIN", os.path.join(REPO, "target", "release", "ferrolabel"))
MODEL = "wholeBody_ct_segmentation"


def request(port, method, path, body=None, headers=None, timeout=600):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    t0 = time.perf_counter()
    conn.request(method, path, body=body, headers=headers or {})
    r = conn.getresponse()
    r.read()
    conn.close()
    return r.status, time.perf_counter() - t0


def label_body(data):
    b = "----------lImIt_of_THE_fIle_eW_$"
    body = (f"--{b}\r\nContent-Disposition: form-data; name=\"params\"\r\n\r\n{{\"client_id\": \"load\"}}\r\n"
            f"--{b}\r\nContent-Disposition: form-data; name=\"label\"; filename=\"/tmp/label.nii.gz\"\r\n"
            f"Content-Type: application/octet-stream\r\n\r\n").encode() + data + f"\r\n--{b}--\r\n\r\n".encode()
    return body, {"Content-Type": f"multipart/form-data; boundary={b}", "Content-Length": str(len(body))}


def run_load(server, clients, iterations, infers, deadline):
    label = open(os.path.join(REPO, "data", "totalseg", "example_seg.nii.gz"), "rb").read()
    body, headers = label_body(label)
    lat = {"info": [], "listing": [], "label_save": []}
    errors = []
    lock = threading.Lock()
    stop = threading.Event()
    t_end = time.time() + deadline
    infer_lat = []

    def infer_loop():
        form = "params=" + json.dumps({"highres": False})
        while not stop.is_set() and time.time() < t_end:
            try:
                st, dt = request(server.port, "POST", f"/infer/{MODEL}?image=ct_small&output=json", form,
                                 {"Content-Type": "application/x-www-form-urlencoded"})
                with lock:
                    infer_lat.append(dt)
                    if st != 200:
                        errors.append(("infer", st))
            except Exception as e:  # noqa: BLE001
                with lock:
                    errors.append(("infer", repr(e)))

    def client(i):
        for _ in range(iterations):
            if time.time() > t_end:
                with lock:
                    errors.append(("deadline", i))
                return
            for kind, method, path, b, h in [
                ("info", "GET", "/info/", None, None),
                ("listing", "GET", "/datastore/?output=all", None, None),
                ("label_save", "PUT", f"/datastore/label?image=ct_other&tag=load{i}", body, headers),
            ]:
                try:
                    st, dt = request(server.port, method, path, b, h)
                    with lock:
                        lat[kind].append(dt)
                        if st != 200:
                            errors.append((kind, st))
                except Exception as e:  # noqa: BLE001
                    with lock:
                        errors.append((kind, repr(e)))

    inf = [threading.Thread(target=infer_loop) for _ in range(infers)]
    for t in inf:
        t.start()
    time.sleep(1.0)  # let the infers start first
    t0 = time.perf_counter()
    cl = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for t in cl:
        t.start()
    for t in cl:
        t.join()
    wall = time.perf_counter() - t0
    stop.set()
    for t in inf:
        t.join()
    allv = sorted(v for vs in lat.values() for v in vs)

    def pct(v, q):
        return v[min(len(v) - 1, int(q * len(v)))] if v else float("nan")

    return {"requests": len(allv), "errors": len(errors), "error_samples": errors[:5], "wall_s": wall,
            "throughput_rps": len(allv) / wall, "p50_ms": 1000 * pct(allv, 0.50), "p99_ms": 1000 * pct(allv, 0.99),
            "per_kind_p99_ms": {k: 1000 * pct(sorted(v), 0.99) for k, v in lat.items()},
            "infers_completed": len(infer_lat)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--iterations", type=int, default=50)
    ap.add_argument("--infers", type=int, default=2)
    ap.add_argument("--deadline", type=float, default=900)
    ap.add_argument("--peer-python")
    ap.add_argument("--out", default=os.path.join(REPO, "bench-out", "load.json"))
    a = ap.parse_args()
    import conftest
    results = {}
    peers = [("ferrolabel", None)] + ([("monailabel", a.peer_python)] if a.peer_python else [])
    for name, py in peers:
        conftest.PEER = name
        if py:
            os.environ["FERROLABEL_PEER_PYTHON"] = py
        tmp = tempfile.mkdtemp(prefix=f"ferrolabel-load-{name}-")
        server = conftest.Server(tmp)
        try:
            results[name] = run_load(server, a.clients, a.iterations, a.infers, a.deadline)
        finally:
            server.stop()
            shutil.rmtree(tmp, ignore_errors=True)
        r = results[name]
        print(f"{name:11s} requests {r['requests']:5d} errors {r['errors']:3d} p50 {r['p50_ms']:8.1f} ms "
              f"p99 {r['p99_ms']:9.1f} ms  {r['throughput_rps']:7.1f} req/s  infers done {r['infers_completed']}")
    if "monailabel" in results:
        f, m = results["ferrolabel"], results["monailabel"]
        results["ratios"] = {"p99_ours_over_peer": f["p99_ms"] / m["p99_ms"],
                             "p50_ours_over_peer": f["p50_ms"] / m["p50_ms"]}
        print(f"p99 ratio (ferrolabel / MONAI Label): {results['ratios']['p99_ours_over_peer']:.4f}")
    os.makedirs(os.path.dirname(a.out), exist_ok=True)
    with open(a.out, "w") as fh:
        json.dump(results, fh, indent=1)
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
