"""Trains the bundle's network with ferrolabel's own trainer, to get a model with real decision margins.

bf16 inference is judged by how often its labels equal fp32's. On seeded random weights the 105 logits
of a voxel are nearly tied, so that figure is a floor; a trained network decides most voxels by a wide
margin, as a real model does. This script makes such a network: the bundle's SegResNet at init_filters 8
(--init-filters; the same depth, blocks and 105 classes as the bundle's 32), trained from scratch at 3 mm
(the low-resolution model) on the repository's 30-slice CT (data/totalseg/example_ct_sm.nii.gz) with its
TotalSegmentator v2 segmentation mapped onto the bundle's 104 labels by name, by `ferrolabel dev
train-worker` (the process the server's POST /train/ starts), with the settings models/tests/train_learns.rs shows to learn: 80^3 crops, batch 1,
AdamW at lr 1e-2, one crop per epoch, validation (Dice on the training image) after the last epoch.
At init_filters 32 these settings do not learn: 60 epochs (29 min on 2 loaded cores) took the loss from
6.68 to 1.47 with every voxel labelled background.

Writes a bundle folder (configs copied from apps/wholebody; models/model_lowres.pt is the trained
network, models/model.pt a copy of it so that the folder opens, but only `--highres false` runs it at the
resolution it learnt) and prints the loss curve and the final Dice. Then:

    .venv/bin/python bench/bench_infer.py --highres false --trained-bundle bench-out/bundle_trained

Usage: make_trained_fixture.py [--out DIR] [--bin FERROLABEL] [--epochs N] [--roi N] [--lr X]
                               [--init-filters N] [--threads N] [--seed N]
(60 epochs by default: about 10 to 15 minutes on 2 loaded cores at init_filters 8.)
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
BUNDLE = os.path.join(REPO, "apps", "wholebody", "model", "wholeBody_ct_segmentation")
DATA = os.path.join(REPO, "data", "totalseg")


def map_labels(out):
    """TotalSegmentator v2 label map -> the bundle's channel numbers, by structure name (0 if absent)."""
    import nibabel as nib
    import numpy as np
    v2 = json.load(open(os.path.join(DATA, "totalseg_v2_classes.json")))["labels"]
    meta = json.load(open(os.path.join(BUNDLE, "configs", "metadata.json")))
    channels = meta["network_data_format"]["outputs"]["pred"]["channel_def"]
    by_name = {name.lower(): int(k) for k, name in channels.items()}
    table = np.zeros(256, dtype=np.uint8)
    for k, name in v2.items():
        table[int(k)] = by_name.get(name.lower(), 0)
    seg = nib.load(os.path.join(DATA, "example_seg.nii.gz"))
    mapped = table[np.asarray(seg.dataobj).astype(np.int64)]
    nib.save(nib.Nifti1Image(mapped, seg.affine), out)
    return int((np.unique(mapped) > 0).sum())


def network_def(init_filters):
    nd = json.load(open(os.path.join(BUNDLE, "configs", "inference.json")))["network_def"]
    return {
        "in_channels": nd["in_channels"], "out_channels": nd["out_channels"], "init_filters": init_filters,
        "blocks_down": nd["blocks_down"], "blocks_up": nd["blocks_up"], "dropout_prob": nd.get("dropout_prob"),
        "norm_groups": 8,
    }


def write_bundle(out, init_filters):
    shutil.copytree(os.path.join(BUNDLE, "configs"), os.path.join(out, "configs"), dirs_exist_ok=True)
    if init_filters != 32:
        for name in ("inference.json", "train.json"):
            path = os.path.join(out, "configs", name)
            cfg = json.load(open(path))
            cfg["network_def"]["init_filters"] = init_filters
            json.dump(cfg, open(path, "w"), indent=4)
    os.makedirs(os.path.join(out, "models"), exist_ok=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=os.path.join(REPO, "bench-out", "bundle_trained"))
    ap.add_argument("--bin", default=os.path.join(REPO, "target", "release", "ferrolabel"))
    ap.add_argument("--epochs", type=int, default=60)
    ap.add_argument("--roi", type=int, default=80)
    ap.add_argument("--lr", type=float, default=1e-2)
    ap.add_argument("--init-filters", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=123)
    a = ap.parse_args()

    work = os.path.join(a.out, "train")
    os.makedirs(work, exist_ok=True)
    write_bundle(a.out, a.init_filters)
    label = os.path.join(work, "example_seg_bundle_labels.nii.gz")
    n = map_labels(label)
    print(f"labels mapped onto the bundle's channels: {n} structures present", flush=True)
    model = os.path.join(a.out, "models", "model_lowres.pt")
    pair = {"id": "example_ct_sm", "image": os.path.join(DATA, "example_ct_sm.nii.gz"), "label": label}
    request = {
        "threads": a.threads,
        "job": {
            "network": network_def(a.init_filters),
            "device": "cpu",
            "init_weights": None,
            "output": model,
            "train": [pair],
            "val": [],
            "config": {
                "max_epochs": a.epochs, "batch_size": 1, "val_interval": a.epochs, "lr": a.lr,
                "roi": [a.roi] * 3, "val_roi": [96, 96, 96], "amp": False, "seed": a.seed,
                "prepare": {"pixdim": [3.0, 3.0, 3.0], "margin": 10, "k_divisible": 96, "sigma": 0.4,
                            "classes": network_def(a.init_filters)["out_channels"]},
            },
        },
    }
    req_path = os.path.join(work, "request.json")
    json.dump(request, open(req_path, "w"), indent=1)
    t0 = time.perf_counter()
    p = subprocess.Popen([a.bin, "dev", "train-worker", req_path], stdout=subprocess.PIPE, text=True)
    losses, dice = [], None
    for line in p.stdout:
        try:
            ev = json.loads(line)
        except ValueError:
            continue
        if isinstance(ev, dict) and ev.get("event") == "epoch":
            rec = ev
            losses.append(rec["loss"])
            if rec.get("val_dice") is not None:
                dice = rec["val_dice"]
            print(f"epoch {rec.get('epoch')}: loss {rec['loss']:.4f}"
                  + (f" val dice {rec['val_dice']:.4f}" if rec.get("val_dice") is not None else "")
                  + f" ({time.perf_counter() - t0:.0f} s)", flush=True)
    if p.wait() != 0 or not os.path.exists(model):
        sys.exit(f"training failed (exit {p.returncode}); request {req_path}")
    shutil.copyfile(model, os.path.join(a.out, "models", "model.pt"))
    summary = {"epochs": a.epochs, "roi": a.roi, "lr": a.lr, "init_filters": a.init_filters,
               "seconds": time.perf_counter() - t0, "first_loss": losses[0] if losses else None,
               "last_loss": losses[-1] if losses else None, "val_mean_dice": dice}
    json.dump(summary, open(os.path.join(work, "summary.json"), "w"), indent=1)
    print(json.dumps(summary))
    print(f"trained bundle in {a.out}")


if __name__ == "__main__":
    main()
