"""Datastore benchmark: label saves and listings per second on SQLite and on PostgreSQL with 1, 2
and 4 servers behind haproxy, and listing/saving in a large datastore against MONAI Label's JSON
datastore. One run prints the figures and writes JSON.

1. Throughput. `--clients` client processes, each with one keep-alive connection to haproxy, for
   `--seconds` each phase: `PUT /datastore/label?image=<its own image>&tag=final` (multipart
   `label` + `params`, as 3D Slicer saves) then `GET /datastore/?output=all` (Slicer's listing).
   Configurations: 1 server on SQLite; 1, 2 and 4 servers on one PostgreSQL database, all on the
   same studies and session folders. All go through haproxy, so the ratios compare backends and
   server counts, not the proxy hop. Images and labels are 4x4x4 NIfTI (a few hundred bytes), so
   the figures are the datastore's (database, revision files, fsyncs, JSON mirror), not the disk's
   bandwidth.
2. Scale. A datastore of `--scale-images` images (copies of one tiny image) on SQLite and on
   PostgreSQL: the first open (the folder scan that registers them), a reopen, the listing
   (`?output=all` and `?output=stats`) and sequential label saves, each on another image. MONAI
   Label's `LocalDatastore` (monailabel 0.8.5, in process) at `--peer-images` images: its open,
   listing and `save_label`, measured in the same run (bench/monai_datastore_peer.py), plus
   ferrolabel on SQLite at the same size.

PostgreSQL (Debian's package, a throwaway cluster run as the `postgres` user) and haproxy are
started here (bench/team.py). A binary without `--datastore-url` gets its PostgreSQL rows
marked skipped; a configuration that fails is recorded with its error and the run goes on.
The servers, PostgreSQL, haproxy and the clients share this machine's CPUs and disk: on a
2-core machine N servers cannot scale, so read the PG-N ratios with `machine.cpus` and the
`load_1min_before` of each row. Not part of CI.

Usage: bench_datastore.py [--quick] [--clients 8] [--seconds 15] [--scale-images 100000]
                          [--peer-images 10000] [--peer-python PY] [--skip-pg] [--out FILE]
"""
import argparse
import gzip
import http.client
import json
import multiprocessing as mp
import os
import platform
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, HERE)
import team  # noqa: E402

BOUNDARY = "----------lImIt_of_THE_fIle_eW_$"


def tiny_nifti(path, value):
    """A 4x4x4 uint8 NIfTI-1 (gzip), identity affine, every voxel `value`: image and label share the grid."""
    hdr = bytearray(348)
    struct.pack_into("<i", hdr, 0, 348)
    struct.pack_into("<8h", hdr, 40, 3, 4, 4, 4, 1, 1, 1, 1)  # dim
    struct.pack_into("<hh", hdr, 70, 2, 8)  # datatype uint8, bitpix
    struct.pack_into("<8f", hdr, 76, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0)  # pixdim (qfac 1)
    struct.pack_into("<f", hdr, 108, 352.0)  # vox_offset
    struct.pack_into("<f", hdr, 112, 1.0)  # scl_slope
    struct.pack_into("<hh", hdr, 252, 0, 1)  # qform_code 0, sform_code 1 (scanner)
    for row, off in enumerate((280, 296, 312)):  # srow_x/y/z: identity
        struct.pack_into("<4f", hdr, off, *[1.0 if c == row else 0.0 for c in range(4)])
    hdr[344:348] = b"n+1\0"
    with open(path, "wb") as f:
        f.write(gzip.compress(bytes(hdr) + b"\0" * 4 + bytes([value]) * 64, mtime=0))


def fsync_ms(folder, n=20):
    """Median time of a 4 KiB write + fsync in `folder`: the floor under every durable save."""
    path, times = os.path.join(folder, "fsync-probe"), []
    with open(path, "wb") as f:
        for _ in range(n):
            t = time.perf_counter()
            f.write(b"x" * 4096)
            f.flush()
            os.fsync(f.fileno())
            times.append(time.perf_counter() - t)
    os.remove(path)
    return round(1000 * statistics.median(times), 3)


def seed(studies, n, src):
    """`n` images img000000.nii.gz... in `studies`, copies of the tiny `src` (seconds for 100,000)."""
    os.makedirs(studies, exist_ok=True)
    data = open(src, "rb").read()
    for i in range(n):
        with open(os.path.join(studies, f"img{i:06d}.nii.gz"), "wb") as f:
            f.write(data)


def label_body(data):
    body = (f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"params\"\r\n\r\n{{\"client_id\": \"bench\"}}\r\n"
            f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"label\"; filename=\"/tmp/label.nii.gz\"\r\n"
            f"Content-Type: application/octet-stream\r\n\r\n").encode() + data + f"\r\n--{BOUNDARY}--\r\n\r\n".encode()
    return body, {"Content-Type": f"multipart/form-data; boundary={BOUNDARY}", "Content-Length": str(len(body))}


class Conn:
    """One keep-alive HTTP connection that reconnects after an error."""

    def __init__(self, port):
        self.port, self.c = port, None

    def call(self, method, path, body=None, headers=None):
        if self.c is None:
            self.c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=600)
        try:
            self.c.request(method, path, body=body, headers=headers or {})
            r = self.c.getresponse()
            data = r.read()
            return r.status, data
        except Exception:
            self.c.close()
            self.c = None
            raise


def summary(times):
    if not times:
        return {"n": 0}
    ms = sorted(t * 1000 for t in times)
    return {"n": len(ms), "mean_ms": round(statistics.mean(ms), 3), "p50_ms": round(statistics.median(ms), 3),
            "p99_ms": round(ms[min(len(ms) - 1, int(0.99 * len(ms)))], 3), "max_ms": round(ms[-1], 3)}


def op_request(op, client, label):
    if op == "save":
        body, headers = label_body(label)
        return "PUT", f"/datastore/label?image=img{client:06d}&tag=final", body, headers
    return "GET", "/datastore/?output=all", None, None


def client_proc(port, op, client, label, start_at, end_at, out):
    """One client: waits for `start_at`, then repeats `op` until `end_at`; puts (ok, errors, latencies)."""
    conn = Conn(port)
    method, path, body, headers = op_request(op, client, label)
    lat, errors = [], []
    while time.time() < start_at:
        time.sleep(0.001)
    while time.time() < end_at:
        t0 = time.perf_counter()
        try:
            status, data = conn.call(method, path, body, headers)
        except Exception as e:  # noqa: BLE001
            errors.append(repr(e)[:200])
            continue
        if status == 200:
            lat.append(time.perf_counter() - t0)
        else:
            errors.append(f"{status} {data[:200]!r}")
    out.put((lat, errors))


def run_phase(port, op, clients, seconds, label):
    out = mp.Queue()
    start_at = time.time() + 0.5
    procs = [mp.Process(target=client_proc, args=(port, op, c, label, start_at, start_at + seconds, out))
             for c in range(clients)]
    for p in procs:
        p.start()
    got = [out.get() for _ in procs]
    for p in procs:
        p.join()
    lat = [t for g in got for t in g[0]]
    errors = [e for g in got for e in g[1]]
    return {"ok": len(lat), "per_s": round(len(lat) / seconds, 2), "errors": len(errors),
            "error_samples": errors[:5], "latency": summary(lat)}


def throughput(name, n_servers, pg, a, image, label):
    """One configuration: `n_servers` servers (SQLite if `pg` is None) behind haproxy."""
    tmp = tempfile.mkdtemp(prefix=f"ferrolabel-bench-ds-{name}-")
    studies, sessions = os.path.join(tmp, "studies"), os.path.join(tmp, "sessions")
    seed(studies, max(a.tp_images, a.clients), image)
    url = pg.create_db(name.lower().replace("-", "_")) if pg else None
    servers, hap = [], None
    try:
        for i in range(n_servers):
            servers.append(team.Ferrolabel(studies, sessions, os.path.join(tmp, f"server{i + 1}.log"), url))
        hap = team.Haproxy([s.port for s in servers], tmp)
        warm = Conn(hap.port)
        for c in range(a.clients):  # every client's image has a label before timing
            method, path, body, headers = op_request("save", c, label)
            status, data = warm.call(method, path, body, headers)
            assert status == 200, data
        for _ in range(2 * n_servers):
            assert warm.call("GET", "/datastore/?output=all")[0] == 200
        res = {"servers": n_servers, "backend": "postgres" if pg else "sqlite",
               "ready_s": [round(s.ready_s, 3) for s in servers], "load_1min_before": os.getloadavg()[0]}
        res["save"] = run_phase(hap.port, "save", a.clients, a.seconds, label)
        res["listing"] = run_phase(hap.port, "listing", a.clients, a.seconds, label)
        res["listing_bytes"] = len(warm.call("GET", "/datastore/?output=all")[1])
        res["served_per_server"] = hap.served()
        return res
    finally:
        if hap:
            hap.stop()
        for s in servers:
            s.stop()
        shutil.rmtree(tmp, ignore_errors=True)


def scale(name, n_images, pg, a, image, label):
    """A `n_images` datastore on one server: open, reopen, listing and sequential saves."""
    tmp = tempfile.mkdtemp(prefix=f"ferrolabel-bench-ds-{name}-")
    studies, sessions = os.path.join(tmp, "studies"), os.path.join(tmp, "sessions")
    t0 = time.perf_counter()
    seed(studies, n_images, image)
    seed_s = time.perf_counter() - t0
    url = pg.create_db(name.lower().replace("-", "_")) if pg else None
    res = {"backend": "postgres" if pg else "sqlite", "images": n_images, "seed_files_s": round(seed_s, 3),
           "load_1min_before": os.getloadavg()[0]}
    try:
        s = team.Ferrolabel(studies, sessions, os.path.join(tmp, "server.log"), url)
        try:
            res["first_open_s"] = round(s.ready_s, 3)
            conn = Conn(s.port)
            status, data = conn.call("GET", "/datastore/?output=stats")
            assert status == 200 and json.loads(data)["total"] == n_images, data[:300]
            for key, path in (("listing_all", "/datastore/?output=all"), ("listing_stats", "/datastore/?output=stats")):
                times = []
                for _ in range(a.scale_listings):
                    t = time.perf_counter()
                    status, data = conn.call("GET", path)
                    times.append(time.perf_counter() - t)
                    assert status == 200, data[:300]
                res[key] = summary(times)
                res[key + "_bytes"] = len(data)
            body, headers = label_body(label)
            times = []
            step = max(1, n_images // max(1, a.scale_saves))
            for i in range(a.scale_saves):
                t = time.perf_counter()
                status, data = conn.call("PUT", f"/datastore/label?image=img{(i * step) % n_images:06d}&tag=final",
                                         body, headers)
                times.append(time.perf_counter() - t)
                assert status == 200, data[:300]
            res["save"] = summary(times)
        finally:
            s.stop()
        s = team.Ferrolabel(studies, sessions, os.path.join(tmp, "server.log"), url)
        res["reopen_s"] = round(s.ready_s, 3)
        s.stop()
        return res
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def empty_ready(pg, a, image):
    """Spawn-to-ready of a server on a 1-image datastore: the part of `first_open_s` that is not the scan."""
    tmp = tempfile.mkdtemp(prefix="ferrolabel-bench-ds-empty-")
    try:
        seed(os.path.join(tmp, "studies"), 1, image)
        url = pg.create_db(f"empty_{int(time.time() * 1000)}") if pg else None
        s = team.Ferrolabel(os.path.join(tmp, "studies"), os.path.join(tmp, "sessions"),
                            os.path.join(tmp, "server.log"), url)
        s.stop()
        return round(s.ready_s, 3)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def peer(a, image, label):
    """MONAI Label's LocalDatastore at `--peer-images` (bench/monai_datastore_peer.py)."""
    tmp = tempfile.mkdtemp(prefix="ferrolabel-bench-ds-monai-")
    try:
        studies = os.path.join(tmp, "studies")
        seed(studies, a.peer_images, image)
        r = subprocess.run([a.peer_python, os.path.join(HERE, "monai_datastore_peer.py"), studies, label,
                            str(a.scale_saves), str(a.scale_listings)], capture_output=True, text=True)
        if r.returncode != 0:
            return {"error": r.stderr[-2000:]}
        out = json.loads(r.stdout.strip().splitlines()[-1])
        out["python"] = a.peer_python
        return out
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def ratio(x, y):
    return round(x / y, 3) if x and y else None


def attempt(name, fn, *args):
    """Runs one configuration; a failure is recorded (and printed) instead of ending the run."""
    try:
        return fn(*args)
    except Exception as e:  # noqa: BLE001
        print(f"{name}: FAILED: {str(e).strip().splitlines()[-1][-400:] if str(e).strip() else repr(e)}", flush=True)
        return {"error": str(e)[-3000:]}


def throughput_part(a, pg, pg_skip, counts, image, label_bytes):
    tp = {}
    configs = [("SQLite-1", 1, None)] + ([] if pg_skip else [(f"PG-{n}", n, pg) for n in counts])
    for name, n, db in configs:
        tp[name] = r = attempt(name, throughput, name, n, db, a, image, label_bytes)
        if "error" not in r:
            print(f"{name:9s} saves {r['save']['per_s']:8.1f}/s (p50 {r['save']['latency'].get('p50_ms')} ms, "
                  f"{r['save']['errors']} errors)  listings {r['listing']['per_s']:8.1f}/s "
                  f"(p50 {r['listing']['latency'].get('p50_ms')} ms, {r['listing']['errors']} errors)  "
                  f"served {r['served_per_server']}", flush=True)
    ok = {k: v for k, v in tp.items() if "error" not in v}
    ratios, base, pg1 = {}, ok.get("SQLite-1"), ok.get("PG-1")
    for name, r in ok.items():
        if not name.startswith("PG-"):
            continue
        x = ratios[name] = {}
        for ref_name, ref in (("sqlite1", base), ("pg1", pg1)):
            for kind in ("save", "listing"):
                x[f"{kind}_vs_{ref_name}"] = ratio(r[kind]["per_s"], ref[kind]["per_s"]) if ref else None
        print(f"{name:9s} vs SQLite-1: saves x{x['save_vs_sqlite1']}, listings x{x['listing_vs_sqlite1']};  "
              f"vs PG-1: saves x{x['save_vs_pg1']}, listings x{x['listing_vs_pg1']}")
    return tp, ratios


def scale_part(a, pg, pg_skip, image, label, label_bytes):
    sc = {"empty_ready_s": {"sqlite": attempt("empty sqlite", empty_ready, None, a, image)}}
    if pg:
        sc["empty_ready_s"]["postgres"] = attempt("empty postgres", empty_ready, pg, a, image)
    rows = [(f"sqlite_{a.scale_images}", a.scale_images, None)]
    rows += [] if pg_skip else [(f"postgres_{a.scale_images}", a.scale_images, pg)]
    rows += [(f"sqlite_{a.peer_images}", a.peer_images, None)]
    for name, n, db in rows:
        sc[name] = r = attempt(name, scale, name, n, db, a, image, label_bytes)
        if "error" not in r:
            print(f"{name:16s} first open {r['first_open_s']:7.2f} s  reopen {r['reopen_s']:6.2f} s  "
                  f"listing(all) p50 {r['listing_all']['p50_ms']:9.1f} ms ({r['listing_all_bytes']} B)  "
                  f"listing(stats) p50 {r['listing_stats']['p50_ms']:7.1f} ms  save p50 "
                  f"{r['save']['p50_ms']:8.1f} ms mean {r['save']['mean_ms']:8.1f} ms", flush=True)
    load = os.getloadavg()[0]
    m = sc[f"monailabel_local_{a.peer_images}"] = peer(a, image, label)
    m["load_1min_before"] = load
    if "error" in m:
        print(f"MONAI Label LocalDatastore failed: {m['error'][-500:]}")
        return sc
    print(f"{'monailabel_' + str(a.peer_images):16s} first open {m['first_open_s']:7.2f} s  reopen "
          f"{m['reopen_s']:6.2f} s  listing(json) p50 {m['listing']['p50_ms']:9.1f} ms "
          f"({m['listing_bytes']} B)  save_label p50 {m['save']['p50_ms']:8.1f} ms mean {m['save']['mean_ms']:8.1f} ms")
    rat = sc["ratios"] = {}
    for name, _, _ in rows:
        r = sc[name]
        if "error" in r:
            continue
        x = rat[f"{name}_vs_monailabel_{a.peer_images}"] = {
            "save_p50_peer_over_ours": ratio(m["save"]["p50_ms"], r["save"]["p50_ms"]),
            "listing_p50_peer_over_ours": ratio(m["listing"]["p50_ms"], r["listing_all"]["p50_ms"])}
        print(f"{name} vs MONAI Label at {a.peer_images} (its p50 / ours, >1: ferrolabel faster): save "
              f"x{x['save_p50_peer_over_ours']}, listing x{x['listing_p50_peer_over_ours']}")
    return sc


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="small counts: a smoke run of every part")
    ap.add_argument("--clients", type=int)
    ap.add_argument("--seconds", type=float)
    ap.add_argument("--tp-images", type=int, default=100, help="images in the throughput datastore")
    ap.add_argument("--servers", default="1,2,4", help="PostgreSQL server counts")
    ap.add_argument("--scale-images", type=int)
    ap.add_argument("--peer-images", type=int)
    ap.add_argument("--scale-saves", type=int)
    ap.add_argument("--scale-listings", type=int)
    ap.add_argument("--peer-python", default=os.path.join(REPO, ".venv", "bin", "python"))
    ap.add_argument("--skip-pg", action="store_true")
    ap.add_argument("--skip-throughput", action="store_true")
    ap.add_argument("--skip-scale", action="store_true")
    ap.add_argument("--out", default=os.path.join(REPO, "bench-out", "datastore.json"))
    a = ap.parse_args()
    q = a.quick
    a.clients = a.clients or (4 if q else 8)
    a.seconds = a.seconds or (3.0 if q else 15.0)
    a.scale_images = a.scale_images or (2000 if q else 100_000)
    a.peer_images = a.peer_images or (500 if q else 10_000)
    a.scale_saves = a.scale_saves or (5 if q else 20)
    a.scale_listings = a.scale_listings or (3 if q else 5)
    counts = [int(n) for n in a.servers.split(",")]

    tmp = tempfile.mkdtemp(prefix="ferrolabel-bench-ds-files-")
    image, label = os.path.join(tmp, "image.nii.gz"), os.path.join(tmp, "label.nii.gz")
    tiny_nifti(image, 0)
    tiny_nifti(label, 1)
    label_bytes = open(label, "rb").read()
    pg, pg_skip = None, None
    if a.skip_pg:
        pg_skip = "--skip-pg"
    elif not team.supports("--datastore-url"):
        pg_skip = f"{team.BIN} has no --datastore-url"
    results = {"command": " ".join([os.path.basename(sys.executable)] + sys.argv),
               "params": {k: v for k, v in vars(a).items() if k != "out"},
               "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                           "load_at_start": os.getloadavg(), "fsync_4k_p50_ms": fsync_ms(tmp)},
               "file_bytes": {"image": os.path.getsize(image), "label": len(label_bytes)}}
    if pg_skip:
        results["postgres_skipped"] = pg_skip
        print(f"PostgreSQL rows skipped: {pg_skip}")
    try:
        if not pg_skip:
            pg = team.TempPostgres()
            results["postgres_version"] = pg.version()
        if not a.skip_throughput:
            results["throughput"], results["throughput_ratios"] = throughput_part(a, pg, pg_skip, counts, image,
                                                                                   label_bytes)
        if not a.skip_scale:
            results["scale"] = scale_part(a, pg, pg_skip, image, label, label_bytes)
    finally:
        if pg:
            pg.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    results["machine"]["load_at_end"] = os.getloadavg()
    os.makedirs(os.path.dirname(a.out), exist_ok=True)
    with open(a.out, "w") as f:
        json.dump(results, f, indent=1)
    print(f"wrote {a.out}")


if __name__ == "__main__":
    mp.set_start_method("fork")
    main()
