"""Soak benchmark: holds N clients on a ferrolabel server for a set time and watches its memory.

Each of `--clients` threads loops GET /info/ + GET /datastore/?output=all + PUT /datastore/label
(its own tag, the label file overwritten, one more revision each time) until `--duration` is
up, while `--infers` threads keep POSTing /infer (kept under the server's infer queue so that
no 429 counts as an error). The server's RSS (VmRSS from /proc/<pid>/status) is sampled every
`--sample` seconds.

Reported: requests, throughput, p50/p99 latency (per kind and over the non-infer requests),
errors (must be 0), infers completed, and RSS at start (median of the first quarter after
`--warmup`), at the end (median of the last quarter), their difference and the largest
sample. The bound checked: end RSS <= start RSS * (1 + --rss-growth-pct/100) +
--rss-slack-mb. Exit status 1 if errors or the bound fails. Writes bench-out/soak.json.

Usage: bench_soak.py [--clients 8] [--duration 600] [--infers 1] [--out FILE]
Needs the release binary and the golden small bundle (FERROLABEL_GOLDEN, made by scripts/test.sh).
"""
import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(REPO, "tests", "conformance"))
os.environ.setdefault("FERROLABEL_BIN", os.path.join(REPO, "target", "release", "ferrolabel"))

from bench_load import MODEL, label_body, request  # noqa: E402


def rss_mb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


def pct(v, q):
    v = sorted(v)
    return v[min(len(v) - 1, int(q * len(v)))] if v else float("nan")


def soak(server, clients, infers, duration, warmup, sample_s):
    label = open(os.path.join(REPO, "data", "totalseg", "example_seg.nii.gz"), "rb").read()
    body, headers = label_body(label)
    lat = {"info": [], "listing": [], "label_save": [], "infer": []}
    errors = []
    lock = threading.Lock()
    t_start = time.time()
    t_end = t_start + duration
    samples = []  # (seconds since start, RSS MiB)

    def record(kind, fn):
        try:
            st, dt = fn()
            with lock:
                lat[kind].append(dt)
                if st != 200:
                    errors.append((kind, st))
        except Exception as e:  # noqa: BLE001
            with lock:
                errors.append((kind, repr(e)))

    def infer_loop():
        form = "params=" + json.dumps({"highres": False})
        while time.time() < t_end:
            record("infer", lambda: request(server.port, "POST", f"/infer/{MODEL}?image=ct_small&output=json",
                                            form, {"Content-Type": "application/x-www-form-urlencoded"}))

    def client(i):
        steps = [("info", "GET", "/info/", None, None),
                 ("listing", "GET", "/datastore/?output=all", None, None),
                 ("label_save", "PUT", f"/datastore/label?image=ct_other&tag=soak{i}", body, headers)]
        while time.time() < t_end:
            for kind, method, path, b, h in steps:
                record(kind, lambda: request(server.port, method, path, b, h))

    def sampler():
        while time.time() < t_end:
            samples.append((time.time() - t_start, rss_mb(server.proc.pid)))
            time.sleep(sample_s)
        samples.append((time.time() - t_start, rss_mb(server.proc.pid)))

    rss_idle = rss_mb(server.proc.pid)
    threads = [threading.Thread(target=sampler)]
    threads += [threading.Thread(target=infer_loop) for _ in range(infers)]
    threads += [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.time() - t_start
    steady = [r for s, r in samples if s >= warmup]
    q = max(1, len(steady) // 4)
    start, end = statistics.median(steady[:q]), statistics.median(steady[-q:])
    non_infer = [v for k in ("info", "listing", "label_save") for v in lat[k]]
    return {
        "clients": clients, "infer_clients": infers, "duration_s": wall, "warmup_s": warmup,
        "requests": len(non_infer), "infers_completed": len(lat["infer"]),
        "throughput_rps": len(non_infer) / wall, "errors": len(errors), "error_samples": errors[:5],
        "p50_ms": 1000 * pct(non_infer, 0.50), "p99_ms": 1000 * pct(non_infer, 0.99),
        "per_kind": {k: {"count": len(v), "p50_ms": 1000 * pct(v, 0.5), "p99_ms": 1000 * pct(v, 0.99)}
                     for k, v in lat.items()},
        "rss_idle_mb": rss_idle, "rss_start_mb": start, "rss_end_mb": end, "rss_growth_mb": end - start,
        "rss_max_mb": max(r for _, r in samples), "rss_samples": [(round(s, 1), round(r, 1)) for s, r in samples],
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--infers", type=int, default=1)
    ap.add_argument("--duration", type=float, default=600)
    ap.add_argument("--warmup", type=float, default=None, help="seconds before RSS counts (default 10%%)")
    ap.add_argument("--sample", type=float, default=1.0)
    ap.add_argument("--rss-growth-pct", type=float, default=10.0)
    ap.add_argument("--rss-slack-mb", type=float, default=64.0)
    ap.add_argument("--out", default=os.path.join(REPO, "bench-out", "soak.json"))
    a = ap.parse_args()
    warmup = a.warmup if a.warmup is not None else 0.1 * a.duration
    import conftest
    conftest.PEER = "ferrolabel"
    tmp = tempfile.mkdtemp(prefix="ferrolabel-soak-")
    server = conftest.Server(tmp)
    try:
        r = soak(server, a.clients, a.infers, a.duration, warmup, a.sample)
    finally:
        server.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    bound = r["rss_start_mb"] * (1 + a.rss_growth_pct / 100) + a.rss_slack_mb
    r["rss_bound_mb"] = bound
    r["rss_bound_rule"] = f"end <= start * {1 + a.rss_growth_pct / 100:.2f} + {a.rss_slack_mb:.0f} MiB"
    r["rss_within_bound"] = r["rss_end_mb"] <= bound
    pk = r["per_kind"]
    print(f"soak: {r['clients']} clients + {r['infer_clients']} infer for {r['duration_s']:.0f} s: "
          f"{r['requests']} requests ({r['throughput_rps']:.1f} req/s), {r['infers_completed']} infers, "
          f"errors {r['errors']}")
    print(f"soak: p50 {r['p50_ms']:.1f} ms, p99 {r['p99_ms']:.1f} ms (info p99 {pk['info']['p99_ms']:.1f}, "
          f"listing p99 {pk['listing']['p99_ms']:.1f}, label save p99 {pk['label_save']['p99_ms']:.1f}, "
          f"infer p50 {pk['infer']['p50_ms']:.0f})")
    print(f"soak: RSS idle {r['rss_idle_mb']:.0f} MiB, start {r['rss_start_mb']:.0f} MiB, end {r['rss_end_mb']:.0f} MiB "
          f"(growth {r['rss_growth_mb']:+.1f} MiB, max {r['rss_max_mb']:.0f} MiB); bound {r['rss_bound_rule']} = "
          f"{bound:.0f} MiB: {'ok' if r['rss_within_bound'] else 'EXCEEDED'}")
    os.makedirs(os.path.dirname(a.out), exist_ok=True)
    with open(a.out, "w") as fh:
        json.dump(r, fh, indent=1)
    print(f"wrote {a.out}")
    if r["errors"] or not r["rss_within_bound"]:
        sys.exit(1)


if __name__ == "__main__":
    main()
