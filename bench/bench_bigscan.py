"""Benchmark: a whole-body scan (512x512x400 at 0.8x0.8x1.0 mm) through `ferrolabel infer` and, guarded
by a memory watchdog, MONAI's bundle pipeline (bench/monai_peer.py): time per stage and peak RSS.

Usage:
  bench_bigscan.py make [--out PATH]      make the scan (numpy + torch only: it runs on the GPU machine too)
  bench_bigscan.py measure -- CMD...      run CMD, print its last JSON line + peak RSS and GPU memory (gpu-check)
  bench_bigscan.py run [--bin BIN] [--bundle DIR] [--threads N] [--out FILE] [--precisions fp32,bf16]
                       [--resolutions high,low] [--no-monai] [--monai-cap-gb 14]
  bench_bigscan.py compare A B            voxel agreement of two label NIfTIs (numpy only), one JSON line

The scan is the shared CT (data/totalseg/example_ct.nii.gz, 3 mm) resampled trilinearly to 0.8x0.8x1.0 mm
and padded with air (-1024 HU) to 512x512x400, centred; int16, written to target/bigscan/ (not committed).

bench/bench_infer.py calls `run_bigscan(...)` for its big-scan rows.

MONAI's peer keeps the whole 105-channel float32 probability volume (8.4 GB at 1.5 mm for this scan) and
more, so it runs under a watchdog: its RSS is read every 50 ms and the process is killed once it passes the
cap (default 14 GB of this shared 24 GB machine); its oom_score_adj is 1000 so that the kernel would pick
it, not a neighbour, if memory ran out between two reads. Its peak (or the kill) is reported.
"""
import argparse
import gzip
import json
import os
import struct
import subprocess
import sys
import threading
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
CT = os.path.join(REPO, "data", "totalseg", "example_ct.nii.gz")
SCAN = os.path.join(REPO, "target", "bigscan", "ct_512x512x400.nii.gz")
SHAPE = (512, 512, 400)
SPACING = (0.8, 0.8, 1.0)
DTYPES = {2: np.uint8, 4: np.int16, 8: np.int32, 16: np.float32, 64: np.float64, 256: np.int8, 512: np.uint16}


def read_nifti(path):
    """(array [x, y, z], affine 4x4) of a single-file NIfTI-1 (.nii / .nii.gz); sform, else pixdim."""
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        raw = f.read()
    endian = "<" if struct.unpack("<i", raw[:4])[0] == 348 else ">"
    dim = struct.unpack(endian + "8h", raw[40:56])
    code = struct.unpack(endian + "h", raw[70:72])[0]
    pixdim = struct.unpack(endian + "8f", raw[76:108])
    offset = int(struct.unpack(endian + "f", raw[108:112])[0])
    slope, inter = struct.unpack(endian + "2f", raw[112:120])
    sform = struct.unpack(endian + "h", raw[254:256])[0]
    shape = tuple(dim[1:1 + dim[0]])
    dt = np.dtype(DTYPES[code]).newbyteorder(endian)
    data = np.frombuffer(raw, dtype=dt, count=int(np.prod(shape)), offset=offset).reshape(shape, order="F")
    if slope not in (0.0, 1.0) and np.isfinite(slope) or (np.isfinite(inter) and inter != 0.0 and slope != 0.0):
        data = data * np.float64(slope) + np.float64(inter)
    if sform > 0:
        rows = struct.unpack(endian + "12f", raw[280:328])
        affine = np.vstack([np.array(rows, dtype=np.float64).reshape(3, 4), [0, 0, 0, 1]])
    else:
        affine = np.diag([pixdim[1], pixdim[2], pixdim[3], 1.0])
    return data, affine


def write_nifti(path, data, affine, level=1):
    """Writes `data` ([x, y, z], int16/uint8/float32) with `affine` (diagonal) as NIfTI-1, sform and qform."""
    code = {np.dtype(np.int16): 4, np.dtype(np.uint8): 2, np.dtype(np.float32): 16}[data.dtype]
    hdr = bytearray(352)
    struct.pack_into("<i", hdr, 0, 348)
    struct.pack_into("<8h", hdr, 40, 3, *data.shape, 1, 1, 1, 1)
    struct.pack_into("<2h", hdr, 70, code, data.dtype.itemsize * 8)
    struct.pack_into("<8f", hdr, 76, 1.0, *np.abs(np.diag(affine)[:3]), 0, 0, 0, 0)
    struct.pack_into("<3f", hdr, 108, 352.0, 1.0, 0.0)
    hdr[123] = 10  # xyzt_units: mm, s
    struct.pack_into("<2h", hdr, 252, 1, 1)  # qform_code, sform_code
    struct.pack_into("<6f", hdr, 256, 0, 0, 0, *affine[:3, 3])  # quaternion b, c, d = 0 (axis-aligned)
    struct.pack_into("<12f", hdr, 280, *affine[:3].reshape(-1))
    hdr[344:348] = b"n+1\0"
    body = np.asfortranarray(data).tobytes(order="F")
    opener = (lambda p: gzip.open(p, "wb", compresslevel=level)) if path.endswith(".gz") else (lambda p: open(p, "wb"))
    tmp = path + ".part"
    with opener(tmp) as f:
        f.write(bytes(hdr))
        f.write(body)
    os.replace(tmp, path)


def make_scan(out=SCAN, source=CT):
    """The 512x512x400 scan at 0.8x0.8x1.0 mm from the shared CT (trilinear, air outside), centred. Idempotent."""
    if os.path.exists(out):
        return out
    import torch
    import torch.nn.functional as F
    src, a_in = read_nifti(source)
    n_in = np.array(src.shape, dtype=np.float64)
    centre = a_in @ np.append((n_in - 1) / 2, 1.0)
    a_out = np.diag([*SPACING, 1.0])
    a_out[:3, 3] = centre[:3] - np.array(SPACING) * (np.array(SHAPE) - 1) / 2
    to_src = np.linalg.solve(a_in, a_out)  # output index -> source index
    # grid_sample's 5D input is [N, C, D, H, W] = [1, 1, x, y, z]; its grid's last axis is (z, y, x)
    vol = torch.from_numpy(np.ascontiguousarray(src, dtype=np.float32) + 1024.0)[None, None]
    out_arr = np.empty(SHAPE, dtype=np.int16)
    ii, jj = np.meshgrid(np.arange(SHAPE[0]), np.arange(SHAPE[1]), indexing="ij")
    for k0 in range(0, SHAPE[2], 25):
        kk = np.arange(k0, min(k0 + 25, SHAPE[2]))
        idx = np.stack(np.broadcast_arrays(ii[..., None], jj[..., None], kk[None, None, :], 1.0), -1)
        s = idx @ to_src.T  # [x, y, k, 4] source indices
        g = 2.0 * s[..., :3] / (n_in - 1) - 1.0
        grid = torch.from_numpy(g[..., ::-1].astype(np.float32).copy())[None]
        v = F.grid_sample(vol, grid, mode="bilinear", padding_mode="zeros", align_corners=True)[0, 0]
        out_arr[:, :, kk] = np.rint(v.numpy() - 1024.0).astype(np.int16)
    os.makedirs(os.path.dirname(out), exist_ok=True)
    write_nifti(out, out_arr, a_out)
    return out


def agreement(a_path, b_path):
    a, _ = read_nifti(a_path)
    b, _ = read_nifti(b_path)
    if a.shape != b.shape:
        raise SystemExit(f"shapes differ: {a.shape} vs {b.shape}")
    return float((a.astype(np.int64) == b.astype(np.int64)).mean())


def rss_bytes(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def run_guarded(cmd, cap_bytes=None, env=None):
    """Runs `cmd`; returns (last JSON line of its stdout or None, peak RSS bytes (wait4's ru_maxrss, or the
    RSS it was killed at), wall s, error or None). With `cap_bytes` a watchdog SIGKILLs it once its RSS
    passes the cap."""
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    bufs = {}
    readers = [threading.Thread(target=lambda k, f: bufs.__setitem__(k, f.read()), args=(k, f), daemon=True)
               for k, f in (("out", p.stdout), ("err", p.stderr))]
    for t in readers:
        t.start()
    stop, killed = threading.Event(), {}
    if cap_bytes:
        try:
            with open(f"/proc/{p.pid}/oom_score_adj", "w") as f:
                f.write("1000")
        except OSError:
            pass

        def watch():
            while not stop.is_set():
                r = rss_bytes(p.pid)
                if r > cap_bytes:
                    os.kill(p.pid, 9)
                    killed["rss"] = r
                    return
                time.sleep(0.05)

        threading.Thread(target=watch, daemon=True).start()
    _, status, ru = os.wait4(p.pid, 0)
    stop.set()
    p.returncode = os.waitstatus_to_exitcode(status)
    for t in readers:
        t.join()
    wall = time.perf_counter() - t0
    if killed:
        return None, killed["rss"], wall, (f"killed by the watchdog at {killed['rss'] / 2**30:.1f} GB RSS "
                                           f"(cap {cap_bytes / 2**30:.0f} GB)")
    peak = ru.ru_maxrss * 1024
    if p.returncode != 0:
        return None, peak, wall, f"exit {p.returncode}: {bufs.get('err', b'').decode()[-1500:]}"
    lines = [l for l in bufs.get("out", b"").decode().splitlines() if l.startswith("{")]
    return (json.loads(lines[-1]) if lines else None), peak, wall, None


def measure(cmd):
    """Runs `cmd` (a ferrolabel command printing JSON lines) and returns its last JSON line plus peak RSS,
    wall seconds, the peak of the GPU's used memory above what was used before it started (NVML, when
    the machine has a GPU and nvidia-ml-py), and, for a training worker's events, the step count, the last
    loss and the step's seconds. Never raises for a failed command: "error" says what happened."""
    gpu = {}
    stop = threading.Event()
    try:
        import pynvml
        pynvml.nvmlInit()
        handle = pynvml.nvmlDeviceGetHandleByIndex(0)
        base = pynvml.nvmlDeviceGetMemoryInfo(handle).used
        gpu["peak"] = 0

        def sample():
            while not stop.is_set():
                gpu["peak"] = max(gpu["peak"], pynvml.nvmlDeviceGetMemoryInfo(handle).used - base)
                time.sleep(0.01)

        threading.Thread(target=sample, daemon=True).start()
    except Exception:  # no GPU, no NVML: the CPU rehearsal
        pass
    t0 = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True)
    wall = time.perf_counter() - t0
    stop.set()
    time.sleep(0.02)
    import resource
    lines = [json.loads(l) for l in p.stdout.decode().splitlines() if l.startswith("{")]
    r = dict(lines[-1]) if lines else {}
    r.setdefault("peak_rss_bytes", resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024)
    r.update({"wall": wall, "gpu_peak_bytes": gpu.get("peak"), "error": None})
    its = [e for e in lines if e.get("event") == "iteration"]
    if its:
        r.update({"iterations": len(its), "loss": its[-1]["loss"], "step_seconds": its[-1]["seconds"]})
    if p.returncode != 0:
        r["error"] = f"exit {p.returncode}: {p.stderr.decode()[-1500:]}"
    return r


def supports_precision(binary):
    h = subprocess.run([binary, "infer", "--help"], capture_output=True, text=True).stdout
    return "--precision" in h


def run_bigscan(binary, bundle, threads, work, resolutions=("high", "low"), precisions=("fp32", "bf16"),
                monai=True, monai_cap_gb=14.0, scan=SCAN):
    """Runs the big scan through ferrolabel (each resolution x precision the binary supports) and, guarded, MONAI.
    Returns {"scan": ..., "rows": [{"program", "highres", "precision", "seconds", "peak_rss_bytes", "windows",
    "network_shape", "error", "label_agreement_with_fp32"}]}. `bundle` must hold models/model.pt and
    model_lowres.pt (bench_infer.py's random bundle will do)."""
    make_scan(scan)
    os.makedirs(work, exist_ok=True)
    rows = []
    has_prec = supports_precision(binary)
    for res in resolutions:
        hr = "true" if res == "high" else "false"
        fp32_out = None
        for prec in precisions:
            if prec != "fp32" and not has_prec:
                rows.append({"program": "ferrolabel", "highres": hr == "true", "precision": prec,
                             "error": "this binary has no --precision"})
                continue
            out = os.path.join(work, f"ferrolabel_{res}_{prec}.nii.gz")
            cmd = [binary, "infer", "--bundle", bundle, "--image", scan, "--output", out, "--highres", hr,
                   "--threads", str(threads), "--json"]
            if has_prec:
                cmd += ["--precision", prec]
            r, peak, wall, err = run_guarded(cmd)
            row = {"program": "ferrolabel", "highres": hr == "true", "precision": prec, "peak_rss_bytes": peak,
                   "wall": wall, "error": err}
            if r:
                row.update({"seconds": r["seconds"], "windows": r["windows"], "network_shape": r["network_shape"]})
            if prec == "fp32" and not err:
                fp32_out = out
            elif fp32_out and not err:
                row["label_agreement_with_fp32"] = agreement(fp32_out, out)
            rows.append(row)
            print(json.dumps(row), flush=True)
        if monai:
            mwork = os.path.join(work, f"monai_{res}")
            cmd = [sys.executable, os.path.join(HERE, "monai_peer.py"), bundle, scan, mwork, hr, str(threads)]
            r, peak, wall, err = run_guarded(cmd, cap_bytes=int(monai_cap_gb * 2**30))
            row = {"program": "monai", "highres": hr == "true", "precision": "fp32", "peak_rss_bytes": peak,
                   "wall": wall, "error": err}
            if r:
                row.update({"seconds": r["seconds"], "network_shape": r["network_shape"]})
                stem = os.path.basename(scan).replace(".nii.gz", "")
                theirs = os.path.join(mwork, stem, f"{stem}_trans.nii.gz")
                if fp32_out and os.path.exists(theirs):
                    row["label_agreement_with_ferrolabel_fp32"] = agreement(fp32_out, theirs)
            rows.append(row)
            print(json.dumps(row), flush=True)
    return {"scan": scan, "shape": SHAPE, "spacing_mm": SPACING, "threads": threads, "rows": rows}


def main():
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("make")
    m.add_argument("--out", default=SCAN)
    me = sub.add_parser("measure", help="run a command, print its last JSON line + peak RSS / GPU memory")
    me.add_argument("command", nargs=argparse.REMAINDER)
    c = sub.add_parser("compare")
    c.add_argument("a")
    c.add_argument("b")
    r = sub.add_parser("run")
    r.add_argument("--bin", default=os.path.join(REPO, "target", "release", "ferrolabel"))
    r.add_argument("--bundle")
    r.add_argument("--threads", type=int, default=os.cpu_count())
    r.add_argument("--out", default=os.path.join(REPO, "bench-out", "bigscan.json"))
    r.add_argument("--resolutions", default="high,low")
    r.add_argument("--precisions", default="fp32,bf16")
    r.add_argument("--no-monai", action="store_true")
    r.add_argument("--monai-cap-gb", type=float, default=14.0)
    a = ap.parse_args()
    if a.cmd == "make":
        t0 = time.perf_counter()
        print(make_scan(a.out), f"{time.perf_counter() - t0:.1f}s")
    elif a.cmd == "measure":
        cmd = a.command[1:] if a.command[:1] == ["--"] else a.command
        print(json.dumps(measure(cmd)))
    elif a.cmd == "compare":
        print(json.dumps({"agreement": agreement(a.a, a.b)}))
    else:
        os.makedirs(os.path.dirname(a.out), exist_ok=True)
        bundle = a.bundle
        if not bundle:
            sys.path.insert(0, HERE)
            import bench_infer
            bundle = os.path.join(os.path.dirname(a.out), "bundle_random")
            if not os.path.exists(os.path.join(bundle, "models", "model.pt")):
                bench_infer.make_bundle(bundle)
        result = run_bigscan(a.bin, bundle, a.threads, os.path.join(os.path.dirname(a.out), "bigscan_work"),
                             a.resolutions.split(","), a.precisions.split(","), not a.no_monai, a.monai_cap_gb)
        print(f"{'program':11s} {'res':4s} {'prec':5s} {'total':>8s} {'network':>8s} {'peak RSS':>10s}")
        for row in result["rows"]:
            s = row.get("seconds", {})
            peak = row.get("peak_rss_bytes") or 0
            print(f"{row['program']:11s} {'high' if row['highres'] else 'low':4s} {row['precision']:5s} "
                  f"{s.get('total', float('nan')):7.1f}s {s.get('network', float('nan')):7.1f}s "
                  f"{peak / 2**30:8.2f}GB {row.get('error') or ''}")
        with open(a.out, "w") as f:
            json.dump(result, f, indent=1)
        print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
