"""Benchmark: ferrolabel infer (fp32-exact and bf16) vs MONAI's bundle pipeline on the same image, weights,
device and thread count. Prints each stage's time, peak RSS, the ratios and the label agreements, and writes
JSON.

Usage: bench_infer.py [--image IMG] [--bundle DIR] [--trained-bundle DIR] [--highres true|false]
                      [--threads N] [--repeat K] [--precisions fp32,bf16] [--bigscan] [--out FILE]

Without --bundle it makes a bundle folder with seeded random weights of the real architecture (timing and
memory do not depend on the weights' values; the agreement of bf16 with fp32 does: random weights have
nearly tied logits, so that figure is a floor). --trained-bundle DIR runs the same three programs again on
a trained network (scripts/make_trained_fixture.py makes one: the bundle's SegResNet trained at 3 mm by
ferrolabel's trainer, so use it with --highres false) and reports the agreements for both weights. The
runs are interleaved (fp32, bf16, MONAI, then again with --repeat), so that a neighbour's load on a shared
machine hits all three alike; each program's fastest run is reported. Peak RSS is each child process's
ru_maxrss from wait4, for all programs alike.

--bigscan adds the 512x512x400 scan (bench/bench_bigscan.py makes it and runs it, MONAI under a memory
watchdog) at the same resolution.
"""
import argparse
import json
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
STAGES = ["load", "preprocess", "network", "postprocess", "write", "total"]


def run_rss(cmd):
    """(last JSON line, peak RSS bytes from wait4, wall seconds)."""
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out = p.stdout.read()
    err = p.stderr.read()
    _, status, ru = os.wait4(p.pid, 0)
    wall = time.perf_counter() - t0
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"failed: {' '.join(cmd)}\n{err.decode()[-2000:]}")
    last = [l for l in out.decode().splitlines() if l.startswith("{")][-1]
    return json.loads(last), ru.ru_maxrss * 1024, wall


def make_bundle(path):
    sys.path.insert(0, os.path.join(REPO, "tests", "golden"))
    import make_golden
    nets = {"high": make_golden.make_net(32, 3), "low": make_golden.make_net(32, 4)}
    make_golden.write_bundle(path, 32, nets)


def load_labels(path):
    import nibabel as nib
    import numpy as np
    return np.asanyarray(nib.load(path).dataobj).astype(np.int64)


def agreement(a, b):
    return float((a == b).mean())


def shared_ct(a, bundle, work):
    """fp32, bf16 and MONAI on `a.image` with `bundle`'s weights, interleaved `a.repeat` times; the fastest
    run of each, with the label agreements."""
    os.makedirs(work, exist_ok=True)
    precisions = a.precisions.split(",")
    best = {}
    for rep in range(a.repeat):
        for prog in precisions + ["monai"]:
            if prog == "monai":
                cmd = [sys.executable, os.path.join(HERE, "monai_peer.py"), bundle, a.image, work, a.highres,
                       str(a.threads)]
            else:
                cmd = [a.bin, "infer", "--bundle", bundle, "--image", a.image,
                       "--output", os.path.join(work, f"ferrolabel_{prog}.nii.gz"), "--highres", a.highres,
                       "--threads", str(a.threads), "--precision", prog, "--json"]
            r, rss, wall = run_rss(cmd)
            print(f"  run {rep + 1}/{a.repeat} {prog}: network {r['seconds']['network']:.1f}s "
                  f"total {r['seconds']['total']:.1f}s peak {rss / 2**20:.0f}MB", flush=True)
            row = {"seconds": r["seconds"], "peak_rss_bytes": rss, "wall": wall,
                   "network_shape": r.get("network_shape"), "windows": r.get("windows")}
            if prog not in best or row["seconds"]["network"] < best[prog]["seconds"]["network"]:
                best[prog] = row
    stem = os.path.basename(a.image).replace(".nii.gz", "").replace(".nii", "")
    labels = {"monai": load_labels(os.path.join(work, stem, f"{stem}_trans.nii.gz"))}
    for p in precisions:
        labels[p] = load_labels(os.path.join(work, f"ferrolabel_{p}.nii.gz"))
    m = best["monai"]
    for p in precisions:
        best[p]["label_agreement_with_monai"] = agreement(labels[p], labels["monai"])
        if p != "fp32" and "fp32" in labels:
            best[p]["label_agreement_with_fp32"] = agreement(labels[p], labels["fp32"])
        best[p]["network_over_monai"] = best[p]["seconds"]["network"] / m["seconds"]["network"]
        best[p]["total_over_monai"] = best[p]["seconds"]["total"] / m["seconds"]["total"]
        best[p]["peak_rss_over_monai"] = best[p]["peak_rss_bytes"] / m["peak_rss_bytes"]
    return best


def print_table(title, rows):
    print(title)
    names = list(rows)
    print(f"{'stage':12s}" + "".join(f"{n:>12s}" for n in names))
    for k in STAGES:
        print(f"{k:12s}" + "".join(f"{rows[n]['seconds'].get(k, float('nan')):11.2f}s" for n in names))
    print(f"{'peak RSS':12s}" + "".join(f"{rows[n]['peak_rss_bytes'] / 2**20:10.0f}MB" for n in names))
    for n in names:
        r = rows[n]
        if "network_over_monai" in r:
            extra = ""
            if "label_agreement_with_fp32" in r:
                extra = f", labels vs fp32 {100 * r['label_agreement_with_fp32']:.4f}%"
            print(f"{n}: network {r['network_over_monai']:.2f}x MONAI's, total {r['total_over_monai']:.2f}x, "
                  f"peak RSS {r['peak_rss_over_monai']:.2f}x, labels vs MONAI "
                  f"{100 * r['label_agreement_with_monai']:.4f}%{extra}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--image", default=os.path.join(REPO, "data", "totalseg", "example_ct.nii.gz"))
    ap.add_argument("--bundle")
    ap.add_argument("--trained-bundle", help="also run on this trained bundle (make_trained_fixture.py)")
    ap.add_argument("--highres", default="true")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--precisions", default="fp32,bf16")
    ap.add_argument("--bigscan", action="store_true", help="also the 512x512x400 scan (bench_bigscan.py)")
    ap.add_argument("--monai-cap-gb", type=float, default=14.0, help="MONAI's RSS cap on the big scan")
    ap.add_argument("--out", default=os.path.join(REPO, "bench-out", "infer.json"))
    ap.add_argument("--bin", default=os.path.join(REPO, "target", "release", "ferrolabel"))
    a = ap.parse_args()
    os.makedirs(os.path.dirname(a.out), exist_ok=True)
    bundle = a.bundle or os.path.join(os.path.dirname(a.out), "bundle_random")
    if not a.bundle and not os.path.exists(os.path.join(bundle, "models", "model.pt")):
        make_bundle(bundle)
    work = os.path.join(os.path.dirname(a.out), "work")
    os.makedirs(work, exist_ok=True)
    print(f"shared CT {a.image}, highres {a.highres}, {a.threads} threads", flush=True)
    ct = shared_ct(a, bundle, work)
    result = {"image": a.image, "highres": a.highres == "true", "threads": a.threads,
              "weights": "seeded random" if not a.bundle else a.bundle, "shared_ct": ct}
    if a.trained_bundle:
        print(f"shared CT, trained weights {a.trained_bundle}", flush=True)
        result["trained_bundle"] = a.trained_bundle
        result["shared_ct_trained"] = shared_ct(a, a.trained_bundle, os.path.join(work, "trained"))
    if a.bigscan:
        sys.path.insert(0, HERE)
        import bench_bigscan
        print("512x512x400 scan", flush=True)
        res = "high" if a.highres == "true" else "low"
        big = bench_bigscan.run_bigscan(a.bin, bundle, a.threads, os.path.join(work, "bigscan"),
                                        resolutions=(res,), precisions=tuple(a.precisions.split(",")),
                                        monai=True, monai_cap_gb=a.monai_cap_gb)
        result["bigscan"] = big
    print_table(f"\nshared CT ({ct['fp32']['network_shape']} network grid, {ct['fp32']['windows']} windows)", ct)
    if a.trained_bundle:
        print_table("\nshared CT, trained weights", result["shared_ct_trained"])
        print("\nbf16 labels vs fp32 labels:")
        for name, key in [("random weights", "shared_ct"), ("trained weights", "shared_ct_trained")]:
            r = result[key].get("bf16", {})
            if "label_agreement_with_fp32" in r:
                print(f"  {name:16s} {100 * r['label_agreement_with_fp32']:.4f}%")
    if a.bigscan:
        print("\n512x512x400 scan")
        print(f"{'program':11s} {'prec':5s} {'network':>8s} {'total':>8s} {'peak RSS':>9s}  agreement / error")
        net = {}
        for row in result["bigscan"]["rows"]:
            s = row.get("seconds", {})
            net[(row["program"], row["precision"])] = s.get("network")
            agree = row.get("label_agreement_with_fp32", row.get("label_agreement_with_ferrolabel_fp32"))
            note = row.get("error") or (f"{100 * agree:.4f}%" if agree is not None else "")
            print(f"{row['program']:11s} {row['precision']:5s} {s.get('network', float('nan')):7.1f}s "
                  f"{s.get('total', float('nan')):7.1f}s {(row.get('peak_rss_bytes') or 0) / 2**30:7.2f}GB  {note}")
        m = net.get(("monai", "fp32"))
        if m:
            for p in a.precisions.split(","):
                if net.get(("ferrolabel", p)):
                    print(f"{p}: network {net[('ferrolabel', p)] / m:.2f}x MONAI's")
    with open(a.out, "w") as f:
        json.dump(result, f, indent=1)
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
