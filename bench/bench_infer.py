"""Benchmark: ferrolabel infer vs MONAI's bundle pipeline on the same image, weights, device and
thread count. Prints each stage's time, peak RSS and the ratios, and writes JSON.

Usage: bench_infer.py [--image IMG] [--bundle DIR] [--highres true|false] [--threads N] [--out FILE]

Without --bundle it makes a bundle folder with seeded random weights of the real architecture
(timing and memory do not depend on the weights' values). Peak RSS is each child process's
ru_maxrss from wait4, for both programs alike.
"""
import argparse
import json
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)


def run(cmd, env=None):
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    out, err = p.stdout.read(), p.stderr.read()
    _, status, ru = os.wait4(p.pid, 0)
    wall = time.perf_counter() - t0
    if status != 0:
        sys.exit(f"failed: {' '.join(cmd)}\n{err.decode()[-2000:]}")
    last = [l for l in out.decode().splitlines() if l.startswith("{")][-1]
    return json.loads(last), ru.ru_maxrss * 1024, wall


def make_bundle(path):
    import torch
    sys.path.insert(0, os.path.join(REPO, "tests", "golden"))
    import make_golden
    nets = {"high": make_golden.make_net(32, 3), "low": make_golden.make_net(32, 4)}
    make_golden.write_bundle(path, 32, nets)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--image", default=os.path.join(REPO, "data", "totalseg", "example_ct.nii.gz"))
    ap.add_argument("--bundle")
    ap.add_argument("--highres", default="true")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--out", default=os.path.join(REPO, "bench-out", "infer.json"))
    ap.add_argument("--bin", default=os.path.join(REPO, "target", "release", "ferrolabel"))
    a = ap.parse_args()
    os.makedirs(os.path.dirname(a.out), exist_ok=True)
    bundle = a.bundle or os.path.join(os.path.dirname(a.out), "bundle_random")
    if not a.bundle and not os.path.exists(os.path.join(bundle, "models", "model.pt")):
        make_bundle(bundle)
    work = os.path.join(os.path.dirname(a.out), "work")
    os.makedirs(work, exist_ok=True)
    ours_out = os.path.join(work, "ferrolabel_labels.nii.gz")
    ours, ours_rss, ours_wall = run([a.bin, "infer", "--bundle", bundle, "--image", a.image, "--output", ours_out,
                                     "--highres", a.highres, "--threads", str(a.threads), "--json"])
    peer, peer_rss, peer_wall = run([sys.executable, os.path.join(HERE, "monai_peer.py"), bundle, a.image, work,
                                     a.highres, str(a.threads)])
    import nibabel as nib
    import numpy as np
    stem = os.path.basename(a.image).replace(".nii.gz", "").replace(".nii", "")
    theirs = np.asanyarray(nib.load(os.path.join(work, stem, f"{stem}_trans.nii.gz")).dataobj)
    mine = np.asanyarray(nib.load(ours_out).dataobj)
    agree = float((theirs.astype(np.int64) == mine.astype(np.int64)).mean())
    o, p = ours["seconds"], peer["seconds"]
    o_non_net = o["total"] - o["network"]
    result = {
        "image": a.image, "highres": a.highres == "true", "threads": a.threads,
        "network_shape": ours["network_shape"], "windows": ours["windows"],
        "ferrolabel": {"seconds": o, "peak_rss_bytes": ours_rss, "wall": ours_wall},
        "monai": {"seconds": p, "peak_rss_bytes": peer_rss, "wall": peer_wall},
        "ratios": {
            "peak_rss_ours_over_monai": ours_rss / peer_rss,
            "network_ours_over_monai": o["network"] / p["network"],
            "total_ours_over_monai": o["total"] / p["total"],
            "ours_non_network_fraction": o_non_net / o["total"],
        },
        "label_agreement": agree,
    }
    print(f"{'stage':12s} {'ferrolabel':>11s} {'MONAI':>9s} {'ratio':>7s}")
    for k in ["load", "preprocess", "network", "postprocess", "write", "total"]:
        ratio = o[k] / p[k] if p[k] > 0 else float("nan")
        print(f"{k:12s} {o[k]:10.2f}s {p[k]:8.2f}s {ratio:7.2f}")
    print(f"{'peak RSS':12s} {ours_rss / 2**20:9.0f}MB {peer_rss / 2**20:7.0f}MB {ours_rss / peer_rss:7.2f}")
    print(f"non-network share of our total: {100 * result['ratios']['ours_non_network_fraction']:.1f}%")
    print(f"label agreement with MONAI: {100 * agree:.4f}%")
    with open(a.out, "w") as f:
        json.dump(result, f, indent=1)
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
