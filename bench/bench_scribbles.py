"""Benchmark: one scribbles correction on a 128^3 ROI (docs/scribbles.md), through the server and
the official client as Slicer calls it, and Histogram+GraphCut side by side with MONAI Label's
own scribbles task (monailabel.scribbles.infer.HistogramBasedGraphCut) on the same inputs.

Usage: bench_scribbles.py [--image IMG] [--bundle DIR] [--repeats N] [--threads N] [--out FILE]

The repository's CT (data/totalseg/example_ct.nii.gz, 122 x 101 x 112 at 3 mm) is smaller than
128^3, so it is resampled to 1.5 mm (244 x 202 x 224, the bundle's highres spacing) and the ROI
is the central 128^3 box. The current label is a soft-tissue blob (-100..200 HU inside a ball),
the scribbles are strokes inside and outside it. Without --bundle a bundle with seeded random
weights of the real architecture is made (timing does not depend on the weights' values).

Figures: Model+GraphCut cold (probabilities computed) and warm (cached probabilities; the
server's parts: load, probabilities, graph cut = graph build + max-flow, merge, encode), and
Histogram+GraphCut: ferrolabel vs MONAI Label (MONAI's default pix_dim 2.5 x 2.5 x 5 mm and the
image's own 1.5 mm, where no resampling happens and the masks can be compared voxel by voxel).
"""
import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
BIN = os.environ.get("FERROLABEL_BIN", os.path.join(REPO, "target", "release", "ferrolabel"))
EDGE = 128


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_bundle(path):
    sys.path.insert(0, os.path.join(REPO, "tests", "golden"))
    import make_golden
    nets = {"high": make_golden.make_net(32, 3), "low": make_golden.make_net(32, 4)}
    make_golden.write_bundle(path, 32, nets)


def make_inputs(image, work):
    """The CT at 1.5 mm, the ROI, a current label and Slicer's scribbles upload."""
    import nibabel as nib
    import numpy as np
    import torch
    src = nib.load(image)
    data = np.asanyarray(src.dataobj).astype(np.float32)
    shape = [s * 2 for s in data.shape]
    up = torch.nn.functional.interpolate(torch.from_numpy(data)[None, None], size=shape, mode="trilinear",
                                         align_corners=False)[0, 0].numpy()
    aff = src.affine.copy()
    aff[:3, :3] = src.affine[:3, :3] / 2.0
    # keep the world position of the volume's corner (half-voxel shift of the finer grid)
    aff[:3, 3] = src.affine[:3, 3] + src.affine[:3, :3] @ np.array([-0.25, -0.25, -0.25])
    ct = os.path.join(work, "studies", "ct_1p5mm.nii.gz")
    os.makedirs(os.path.dirname(ct), exist_ok=True)
    nib.save(nib.Nifti1Image(up.astype(np.int16), aff), ct)
    c = [n // 2 for n in shape]
    roi = [v for a in range(3) for v in (c[a] - EDGE // 2, c[a] + EDGE // 2)]
    box = tuple(slice(roi[2 * a], roi[2 * a + 1]) for a in range(3))
    ii, jj, kk = np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")
    ball = (ii - c[0]) ** 2 + (jj - c[1]) ** 2 + (kk - c[2]) ** 2 < (EDGE // 3) ** 2
    soft = (up > -100) & (up < 200)
    label = np.zeros(shape, np.uint8)
    label[ball & soft] = 1  # "liver" = segment 1
    bg_id, fg_id = 2, 3
    rng = np.random.default_rng(0)
    sub_up, sub_lab = up[box], label[box]
    for value, want in ((fg_id, (sub_up > -100) & (sub_up < 200)), (bg_id, (sub_up < -400) | (sub_up > 300))):
        idx = np.argwhere(want)
        pick = idx[rng.choice(len(idx), size=min(len(idx), 3000), replace=False)]
        sub_lab[tuple(pick.T)] = value
    label[box] = sub_lab
    scribbles = os.path.join(work, "scribbles.nii.gz")
    nib.save(nib.Nifti1Image(label, aff), scribbles)
    label_info = [{"name": "liver", "id": 1}, {"name": "background_scribbles", "id": bg_id},
                  {"name": "foreground_scribbles", "id": fg_id}]
    return ct, scribbles, roi, label_info, shape


def start_server(studies, bundle, threads, work):
    port = free_port()
    log = open(os.path.join(work, "server.log"), "wb")
    proc = subprocess.Popen([BIN, "start_server", "--app", os.path.join(REPO, "apps", "wholebody"),
                             "--studies", studies, "--conf", "bundle_dir", bundle, "--host", "127.0.0.1",
                             "--port", str(port), "--threads", str(threads)], stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while True:
        try:
            with urllib.request.urlopen(url + "/info/", timeout=2) as r:
                if r.status == 200:
                    return proc, url
        except OSError:
            pass
        if proc.poll() is not None or time.time() > deadline:
            raise SystemExit(f"server did not start: {open(log.name).read()[-2000:]}")
        time.sleep(0.2)


def ours(client, method, roi, label_info, scribbles):
    params = {"roi": roi, "label_info": label_info, "selected_label_name": "liver", "lamda": 1.0, "sigma": 0.1,
              "result_extension": ".nii.gz", "result_dtype": "uint8"}
    t0 = time.perf_counter()
    result, out = client.infer(method, "ct_1p5mm", params, label_in=scribbles)
    wall = time.perf_counter() - t0
    return wall, out, result


def scipy_softmax_shim():
    """monailabel.scribbles imports scipy.special.softmax, and scipy is not in the venv: give it a
    numpy softmax (the same formula) when scipy is missing."""
    try:
        import scipy.special  # noqa: F401
        return False
    except ImportError:
        import types
        import numpy as np

        def softmax(x, axis=None):
            x = np.asarray(x)
            e = np.exp(x - np.max(x, axis=axis, keepdims=True))
            return e / e.sum(axis=axis, keepdims=True)
        special = types.ModuleType("scipy.special")
        special.softmax = softmax
        scipy = types.ModuleType("scipy")
        scipy.special = special
        sys.modules["scipy"], sys.modules["scipy.special"] = scipy, special
        return True


def monai_histogram(ct, scribbles, roi, label_info, pix_dim):
    """MONAI Label's Histogram+GraphCut: the transforms its HistogramBasedGraphCut task runs, in
    its order and with its defaults (the task class itself needs MONAI Label's server packages,
    which the venv does not have), up to the graph cut's labels on the task's grid (its last
    steps, restoring the input spacing and writing the file, are not timed)."""
    scipy_softmax_shim()
    from monai.transforms import Compose, EnsureChannelFirstd, LoadImaged, ScaleIntensityRanged, Spacingd
    from monailabel.scribbles.transforms import (AddBackgroundScribblesFromROId, ApplyGraphCutOptimisationd,
                                                 MakeISegUnaryd, MakeLikelihoodFromScribblesHistogramd)
    ids = {e["name"]: e["id"] for e in label_info}
    bg, fg = ids["background_scribbles"], ids["foreground_scribbles"]
    chain = Compose([
        LoadImaged(keys=["image", "label"]),
        EnsureChannelFirstd(keys=["image", "label"]),
        AddBackgroundScribblesFromROId(scribbles="label", scribbles_bg_label=bg, scribbles_fg_label=fg),
        Spacingd(keys=["image", "label"], pixdim=pix_dim, mode=["bilinear", "nearest"]),
        ScaleIntensityRanged(keys="image", a_min=-300, a_max=200, b_min=0.0, b_max=1.0, clip=True),
        MakeLikelihoodFromScribblesHistogramd(image="image", scribbles="label", post_proc_label="prob",
                                              scribbles_bg_label=bg, scribbles_fg_label=fg, num_bins=64,
                                              normalise=True),
        MakeISegUnaryd(image="image", logits="prob", scribbles="label", unary="unary",
                       scribbles_bg_label=bg, scribbles_fg_label=fg),
        ApplyGraphCutOptimisationd(unary="unary", pairwise="image", post_proc_label="pred", lamda=1.0, sigma=0.1),
    ])
    t0 = time.perf_counter()
    d = chain({"image": ct, "label": scribbles, "roi": roi, "label_info": label_info})
    wall = time.perf_counter() - t0
    import numpy as np
    pred = np.asarray(d["pred"]).astype(np.uint8)
    return wall, pred.reshape(pred.shape[-3:])


def load(path):
    import nibabel as nib
    import numpy as np
    return np.asanyarray(nib.load(path).dataobj).astype(np.uint8)


def dice(a, b):
    s = a.sum() + b.sum()
    return float(2 * (a & b).sum() / s) if s else 1.0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--image", default=os.path.join(REPO, "data", "totalseg", "example_ct.nii.gz"))
    ap.add_argument("--bundle")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--out", default=os.path.join(REPO, "bench-out", "scribbles.json"))
    a = ap.parse_args()
    import numpy as np
    import torch
    torch.set_num_threads(a.threads)
    os.makedirs(os.path.dirname(a.out), exist_ok=True)
    bundle = a.bundle or os.path.join(os.path.dirname(a.out), "bundle_random")
    if not a.bundle and not os.path.exists(os.path.join(bundle, "models", "model.pt")):
        make_bundle(bundle)
    work = tempfile.mkdtemp(prefix="ferrolabel-bench-scribbles-")
    ct, scribbles, roi, label_info, shape = make_inputs(a.image, work)
    from monailabel.client import MONAILabelClient
    proc, url = start_server(os.path.join(work, "studies"), bundle, a.threads, work)
    client = MONAILabelClient(url, tmpdir=work, client_id="bench")
    try:
        cold_wall, cold, _ = ours(client, "Model+GraphCut", roi, label_info, scribbles)
        warm = [ours(client, "Model+GraphCut", roi, label_info, scribbles) for _ in range(a.repeats)]
        hist = [ours(client, "Histogram+GraphCut", roi, label_info, scribbles) for _ in range(a.repeats)]
    finally:
        proc.terminate()
        proc.wait(30)
    assert cold["scribbles"]["probability_cached"] is False
    assert all(w[1]["scribbles"]["probability_cached"] for w in warm)

    def parts(runs):
        keys = runs[0][1]["latencies"]["parts"].keys()
        return {k: statistics.median(r[1]["latencies"]["parts"][k] for r in runs) for k in keys}

    monai = {}
    ours_hist = load(hist[-1][2])
    box = tuple(slice(roi[2 * i], roi[2 * i + 1]) for i in range(3))
    for pix in ((2.5, 2.5, 5.0), (1.5, 1.5, 1.5)):
        wall, theirs = monai_histogram(ct, scribbles, roi, label_info, pix)
        agree = None
        if theirs.shape == ours_hist.shape:
            agree = {"dice_in_roi": dice(theirs[box] == 1, ours_hist[box] == 1),
                     "voxel_agreement_in_roi": float((theirs[box] == ours_hist[box]).mean())}
        monai[f"pix_dim_{pix[0]}x{pix[1]}x{pix[2]}"] = {"wall": wall, "shape": list(theirs.shape), "agreement": agree}

    result = {
        "image": a.image, "resampled_shape": shape, "roi": roi, "roi_voxels": EDGE ** 3, "threads": a.threads,
        "model_graphcut": {
            "cold": {"wall": cold_wall, "parts": cold["latencies"]["parts"], "windows": cold["scribbles"]["windows"]},
            "warm": {"wall_median": statistics.median(w[0] for w in warm), "parts_median": parts(warm),
                     "changed_voxels": warm[-1][1]["scribbles"]["changed_voxels"]},
        },
        "histogram_graphcut": {
            "ferrolabel": {"wall_median": statistics.median(h[0] for h in hist), "parts_median": parts(hist)},
            "monai_label": monai,
        },
    }
    w = result["model_graphcut"]["warm"]
    print(f"Model+GraphCut on a {EDGE}^3 ROI of a {shape[0]}x{shape[1]}x{shape[2]} CT, {a.threads} threads")
    print(f"  cold (probabilities computed, {cold['scribbles']['windows']} windows): {cold_wall:7.3f} s wall")
    print(f"  warm (cached probabilities):  {w['wall_median']:7.3f} s wall (median of {a.repeats})")
    for k, v in w["parts_median"].items():
        print(f"    {k:14s} {v:7.3f} s")
    h = result["histogram_graphcut"]
    print(f"Histogram+GraphCut: ferrolabel {h['ferrolabel']['wall_median']:7.3f} s wall (median)")
    for k, v in h["ferrolabel"]["parts_median"].items():
        print(f"    {k:14s} {v:7.3f} s")
    for k, v in monai.items():
        agree = v["agreement"]
        extra = "" if agree is None else f", Dice in ROI vs ferrolabel {agree['dice_in_roi']:.4f}"
        print(f"  MONAI Label ({k}): {v['wall']:7.3f} s wall{extra}")
    with open(a.out, "w") as f:
        json.dump(result, f, indent=1)
    print(f"wrote {a.out}")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
