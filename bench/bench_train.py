"""Benchmark: one training run of ferrolabel vs MONAI's own `train.json` (the bundle's
`SupervisedTrainer`) on the same data, network, crop size, batch size, device and thread count.
Prints the time per training iteration (median over the measured iterations, the first one
excluded as warm-up) and the peak RSS of each process, with the ratios, and writes JSON.

Usage: bench_train.py [--pairs N] [--iterations K] [--batch B] [--highres true|false]
                      [--threads T] [--init-filters F] [--out FILE]

Data: the shared 30-slice CT (data/totalseg/example_ct_sm.nii.gz) with its TotalSegmentator v2
reference mapped onto the bundle's labels, repeated N times (train.json keeps its last 10 pairs
for validation, so MONAI's run gets N + 10 files). Both start from random weights of the full
architecture (init_filters 32 unless told), train mode, DiceCE, AdamW 1e-4, random 96^3 crops,
fp32 on the CPU (MONAI's amp=True only acts on CUDA). Validation is outside the measured
window for both (val_interval beyond the run). Peak RSS = ru_maxrss from wait4, alike for both.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
BUNDLE = os.path.join(REPO, "apps", "wholebody", "model", "wholeBody_ct_segmentation")

MONAI_DRIVER = r'''
import json, sys, time, torch
from monai.bundle import ConfigParser
from ignite.engine import Events
cfg_path, dataset_dir, out_dir, highres, iters, batch, threads, filters = sys.argv[1:9]
torch.set_num_threads(int(threads))
p = ConfigParser()
p.read_config(cfg_path)
p["bundle_root"] = out_dir
p["dataset_dir"] = dataset_dir
p["displayable_configs"]["highres"] = highres == "true"
p["batch_size"] = int(batch)
p["val_interval"] = 10 ** 6
p["device"] = "$torch.device('cpu')"
p["network_def"]["init_filters"] = int(filters)
p["train"]["dataset"]["num_workers"] = 0
p["train"]["dataloader"]["num_workers"] = 0
p["train"]["handlers"] = p["train"]["handlers"][1:2]
trainer = p.get_parsed_content("train#trainer")
stamps = []
@trainer.on(Events.ITERATION_COMPLETED)
def _t(engine):
    stamps.append(time.perf_counter())
    if len(stamps) > int(iters):
        engine.terminate()
t0 = time.perf_counter()
trainer.run()
print(json.dumps({"t0": t0, "stamps": stamps}))
'''


def wait_rss(p):
    _, status, ru = os.wait4(p.pid, 0)
    return status, ru.ru_maxrss * 1024


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--pairs", type=int, default=4)
    ap.add_argument("--iterations", type=int, default=4)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--highres", default="false")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--init-filters", type=int, default=32)
    ap.add_argument("--out", default=os.path.join(REPO, "bench-out", "train.json"))
    ap.add_argument("--bin", default=os.path.join(REPO, "target", "release", "ferrolabel"))
    a = ap.parse_args()
    os.makedirs(os.path.dirname(a.out), exist_ok=True)
    work = tempfile.mkdtemp(prefix="bench-train-")
    image = os.path.join(REPO, "data", "totalseg", "example_ct_sm.nii.gz")
    label = os.path.join(work, "seg_v1.nii.gz")
    subprocess.run([sys.executable, os.path.join(REPO, "tests", "reference", "train_reference.py"), "map-v2",
                    os.path.join(REPO, "data", "totalseg", "example_seg.nii.gz"),
                    os.path.join(REPO, "data", "totalseg", "totalseg_v2_classes.json"),
                    os.path.join(BUNDLE, "configs", "metadata.json"), label], check=True)
    data = os.path.join(work, "data")
    os.makedirs(os.path.join(data, "imagesTr"))
    os.makedirs(os.path.join(data, "labelsTr"))
    for i in range(a.pairs + 10):
        os.symlink(image, os.path.join(data, "imagesTr", f"case_{i:03d}.nii.gz"))
        os.symlink(label, os.path.join(data, "labelsTr", f"case_{i:03d}.nii.gz"))
    steps_per_epoch = -(-a.pairs // a.batch)
    epochs = -(-(a.iterations + 1) // steps_per_epoch)

    # ferrolabel: the worker the server starts for POST /train/
    network = {"in_channels": 1, "out_channels": 105, "init_filters": a.init_filters, "blocks_down": [1, 2, 2, 4],
               "blocks_up": [1, 1, 1], "dropout_prob": 0.2, "norm_groups": 8}
    pixdim = [1.5] * 3 if a.highres == "true" else [3.0] * 3
    job = {"job": {"network": network, "device": "cpu", "init_weights": None,
                   "output": os.path.join(work, "ours", "model.pt"),
                   "train": [{"id": f"case_{i}", "image": image, "label": label} for i in range(a.pairs)],
                   "val": [], "max_voxels": None,
                   "config": {"max_epochs": epochs, "batch_size": a.batch, "val_interval": 10 ** 6, "lr": 1e-4,
                              "weight_decay": 1e-5, "roi": [96, 96, 96], "val_roi": [160, 160, 160],
                              "sw_overlap": 0.25, "amp": False, "seed": 123, "cache_size": 4,
                              "prepare": {"pixdim": pixdim, "margin": 10, "k_divisible": 96, "sigma": 0.4,
                                          "classes": 105}}},
           "threads": a.threads}
    job_path = os.path.join(work, "job.json")
    json.dump(job, open(job_path, "w"))
    t0 = time.perf_counter()
    ours_err = open(os.path.join(work, "ours.stderr"), "w+")
    p = subprocess.Popen([a.bin, "dev", "train-worker", job_path], stdout=subprocess.PIPE, stderr=ours_err, text=True)
    ours_steps = []
    for line in p.stdout:
        try:
            ev = json.loads(line)
        except ValueError:
            continue
        if ev.get("event") == "iteration":
            ours_steps.append(ev["seconds"])
            if len(ours_steps) > a.iterations:
                p.kill()
                break
    p.stdout.close()
    status, ours_rss = wait_rss(p)
    ours_err.seek(0)
    err = ours_err.read()
    ours_wall = time.perf_counter() - t0
    if len(ours_steps) <= a.iterations:
        sys.exit(f"ferrolabel worker failed ({status}): {err[-2000:]}")

    # MONAI: train.json through its ConfigParser, iterations timed by an ignite handler
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    peer_err = open(os.path.join(work, "monai.stderr"), "w+")
    t0 = time.perf_counter()
    p = subprocess.Popen([sys.executable, "-c", MONAI_DRIVER, os.path.join(BUNDLE, "configs", "train.json"), data,
                          os.path.join(work, "monai"), a.highres, str(a.iterations), str(a.batch), str(a.threads),
                          str(a.init_filters)], stdout=subprocess.PIPE, stderr=peer_err, text=True, env=env)
    out = p.stdout.read()
    status, peer_rss = wait_rss(p)
    peer_err.seek(0)
    err = peer_err.read()
    peer_wall = time.perf_counter() - t0
    lines = [l for l in out.splitlines() if l.startswith("{")]
    if not lines:
        sys.exit(f"MONAI run failed: {err[-3000:]}")
    r = json.loads(lines[-1])
    stamps = [r["t0"]] + r["stamps"]
    peer_steps = [b - a_ for a_, b in zip(stamps, stamps[1:])]

    ours_it = statistics.median(ours_steps[1:])
    peer_it = statistics.median(peer_steps[1:])
    result = {
        "data": f"{a.pairs} x example_ct_sm ({'1.5' if a.highres == 'true' else '3.0'} mm), crop 96^3",
        "batch": a.batch, "threads": a.threads, "init_filters": a.init_filters, "measured_iterations": a.iterations,
        "ferrolabel": {"iteration_s": ours_it, "iterations_s": ours_steps, "peak_rss_bytes": ours_rss,
                       "wall_s": ours_wall},
        "monai": {"iteration_s": peer_it, "iterations_s": peer_steps, "peak_rss_bytes": peer_rss,
                  "wall_s": peer_wall},
        "ratio_iteration": ours_it / peer_it,
        "ratio_peak_rss": ours_rss / peer_rss,
    }
    json.dump(result, open(a.out, "w"), indent=1)
    mib = 1 << 20
    print(f"{'':12} {'ferrolabel':>12} {'MONAI':>12} {'ratio':>7}")
    print(f"{'s/iteration':12} {ours_it:12.2f} {peer_it:12.2f} {ours_it / peer_it:7.2f}")
    print(f"{'peak RSS MiB':12} {ours_rss / mib:12.0f} {peer_rss / mib:12.0f} {ours_rss / peer_rss:7.2f}")
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
