"""Golden fixtures for ferrolabel's engine, made with real MONAI 1.4.0 (pinned, see
scripts/requirements-torch.txt) and the torch 2.13.0 that tch links.

Usage: make_golden.py OUT_DIR

Writes, under OUT_DIR:
  manifest.json                 versions, thread count, and one entry per case
  bundle_small/                 a bundle folder (configs + models/model.pt + models/model_lowres.pt)
                                with SegResNet(init_filters=8); highres and lowres weights differ
  bundle_full/                  the same with the real architecture (init_filters=32)
  weights/*.pt|*.safetensors    the seeded weights (bare state_dict; {"model": ...}; safetensors)
  unit_full.safetensors         one 96^3 window: input and logits of the full network
  cases/<name>.nii.gz           case inputs
  cases/<name>.safetensors      every stage of MONAI's pipeline for that case: the blended logits of
                                the cases smaller than one window, the first 8 channels of them
                                for ct_lowres_full (8 overlapping windows)

Weights: torch.manual_seed, default init, then every GroupNorm weight ~ U(0.5, 1.5), bias ~ N(0, 0.1)
and the final conv bias ~ N(0, 0.5) from a seeded generator, so an engine that ignored the affine
parameters would fail; the final conv weight is multiplied by FINAL_WEIGHT_SCALE so the logits vary
over space more than the bias does: the label maps then hold dozens of distinct labels (not the
handful a default init argmaxes to) and few voxels are near-ties (top-2 probability gap < 1e-4),
so label agreement is not trivial. The manifest records each case's label count.

Every case also stores MONAI's top-2 probability gap on the network grid ("gap") and carried back
to the input grid by the same nearest inversion as the labels ("gap_inv"), so tests can require
that every mismatching voxel is a near-tie.

`monai.bundle run` is run in a subprocess pinned to the same THREADS as this script (and as the
Rust tests), so its output is comparable voxel for voxel.
"""
import json
import os
import shutil
import sys

import numpy as np
import torch
import nibabel as nib
import monai
from monai.data import MetaTensor
from monai.networks.nets import SegResNet
from monai.inferers import SlidingWindowInferer
from monai.transforms import (Compose, LoadImaged, EnsureTyped, EnsureChannelFirstd, Orientationd, Spacingd,
                              NormalizeIntensityd, ScaleIntensityd, Activationsd, AsDiscreted, Invertd)
from safetensors.numpy import save_file

THREADS = 2
torch.set_num_threads(THREADS)
FINAL_WEIGHT_SCALE = 5.0
HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
CONFIGS = os.path.join(REPO, "apps", "wholebody", "model", "wholeBody_ct_segmentation", "configs")
DATA = os.path.join(REPO, "data", "totalseg")


def make_net(init_filters, seed):
    torch.manual_seed(seed)
    net = SegResNet(spatial_dims=3, in_channels=1, out_channels=105, init_filters=init_filters,
                    blocks_down=[1, 2, 2, 4], blocks_up=[1, 1, 1], dropout_prob=0.2)
    g = torch.Generator().manual_seed(seed + 1000)
    with torch.no_grad():
        for name, p in net.named_parameters():
            if p.dim() == 1 and name.endswith("weight"):
                p.copy_(torch.rand(p.shape, generator=g) + 0.5)
            elif p.dim() == 1 and name.startswith("conv_final.2"):
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)
            elif p.dim() == 1:
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
        net.conv_final[2].conv.weight.mul_(FINAL_WEIGHT_SCALE)
    return net.eval()


def write_bundle(out, init_filters, nets):
    os.makedirs(os.path.join(out, "configs"), exist_ok=True)
    os.makedirs(os.path.join(out, "models"), exist_ok=True)
    with open(os.path.join(CONFIGS, "inference.json")) as f:
        inf = json.load(f)
    inf["network_def"]["init_filters"] = init_filters
    with open(os.path.join(out, "configs", "inference.json"), "w") as f:
        json.dump(inf, f, indent=4)
    shutil.copy(os.path.join(CONFIGS, "metadata.json"), os.path.join(out, "configs", "metadata.json"))
    torch.save(nets["high"].state_dict(), os.path.join(out, "models", "model.pt"))
    torch.save(nets["low"].state_dict(), os.path.join(out, "models", "model_lowres.pt"))


def preprocessing(pixdim):
    return Compose([
        LoadImaged(keys="image"), EnsureTyped(keys="image"), EnsureChannelFirstd(keys="image"),
        Orientationd(keys="image", axcodes="RAS"), Spacingd(keys="image", pixdim=pixdim, mode="bilinear"),
        NormalizeIntensityd(keys="image", nonzero=True), ScaleIntensityd(keys="image", minv=-1.0, maxv=1.0)])


def run_case(name, path, net, highres, out_dir, keep_logits, keep_channels=0):
    pixdim = [1.5, 1.5, 1.5] if highres else [3.0, 3.0, 3.0]
    pre = preprocessing(pixdim)
    d = {"image": path}
    arrays, affines = {}, {}
    keys = {"Orientationd": "orient", "Spacingd": "spacing", "NormalizeIntensityd": "normalize",
            "ScaleIntensityd": "scale"}
    for t in pre.transforms:
        d = t(d)
        k = keys.get(type(t).__name__)
        if k:
            arrays[k] = d["image"][0].numpy().astype(np.float32)
            affines[k] = np.asarray(d["image"].affine, dtype=np.float64).tolist()
    inferer = SlidingWindowInferer(roi_size=[96, 96, 96], sw_batch_size=1, overlap=0.25, padding_mode="replicate",
                                   mode="gaussian", device=torch.device("cpu"))
    with torch.no_grad():
        logits = inferer(d["image"].unsqueeze(0), net)
    probs = torch.softmax(logits[0].as_tensor(), 0)
    top2 = torch.topk(probs, 2, dim=0).values
    gap = top2[0] - top2[1]
    arrays["gap"] = gap.numpy().astype(np.float32)
    arrays["labels_net"] = torch.argmax(probs, 0).numpy().astype(np.uint8)
    if keep_logits:
        arrays["logits"] = logits[0].numpy().astype(np.float32)
    if keep_channels:
        # the first channels only: a volume blended from several windows, at a bounded size
        arrays["logits_head"] = logits[0, :keep_channels].numpy().astype(np.float32)
    post = Compose([Activationsd(keys="pred", softmax=True), AsDiscreted(keys="pred", argmax=True),
                    Invertd(keys=["pred", "gap"], transform=pre, orig_keys="image", nearest_interp=True,
                            to_tensor=True)])
    item = post({"image": d["image"], "pred": logits[0], "gap": MetaTensor(gap.unsqueeze(0))})
    arrays["labels_inv"] = item["pred"][0].numpy().astype(np.uint8)
    arrays["gap_inv"] = item["gap"][0].numpy().astype(np.float32)
    save_file({k: np.ascontiguousarray(v) for k, v in arrays.items()}, os.path.join(out_dir, f"{name}.safetensors"))
    return {"name": name, "input": os.path.relpath(path, os.path.dirname(out_dir)), "highres": highres,
            "affines": affines, "shapes": {k: list(v.shape) for k, v in arrays.items()},
            "labels_affine": np.asarray(item["pred"].affine, dtype=np.float64).tolist(),
            "distinct_labels": int(np.unique(arrays["labels_net"]).size),
            "largest_label_share": float(np.bincount(arrays["labels_net"].ravel()).max() / arrays["labels_net"].size),
            "near_ties": int((arrays["gap"] < 1e-4).sum())}


def synthetic(name, out_dir, shape, affine, dtype, slope=None, inter=None, seed=0):
    rng = np.random.default_rng(seed)
    ii, jj, kk = np.meshgrid(*[np.arange(s) for s in shape], indexing="ij")
    c = [s / 2.0 for s in shape]
    body = ((ii - c[0]) / (0.45 * shape[0])) ** 2 + ((jj - c[1]) / (0.42 * shape[1])) ** 2 < 1.0
    hu = np.full(shape, -1000.0)
    hu[body] = 40 + rng.normal(0, 30, body.sum())
    bone = ((ii - c[0]) / (0.1 * shape[0])) ** 2 + ((jj - 0.65 * shape[1]) / (0.1 * shape[1])) ** 2 < 1.0
    hu[bone] = 700 + rng.normal(0, 50, bone.sum())
    hu[: max(2, shape[0] // 10), : max(2, shape[1] // 10), :] = 0.0  # exact zeros (excluded by nonzero)
    if slope is not None:
        raw = np.round((hu - inter) / slope).astype(dtype)
    else:
        raw = np.round(hu).astype(dtype)
    img = nib.Nifti1Image(raw, affine)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    if slope is not None:
        img.header.set_slope_inter(slope, inter)
    path = os.path.join(out_dir, f"{name}.nii.gz")
    nib.save(img, path)
    return path


def main():
    out = os.path.abspath(sys.argv[1] if len(sys.argv) > 1 else os.path.join(REPO, "target", "golden"))
    cases_dir = os.path.join(out, "cases")
    os.makedirs(cases_dir, exist_ok=True)
    os.makedirs(os.path.join(out, "weights"), exist_ok=True)
    assert not monai.config.USE_COMPILED
    small = {"high": make_net(8, 1), "low": make_net(8, 2)}
    full = {"high": make_net(32, 3), "low": make_net(32, 4)}
    write_bundle(os.path.join(out, "bundle_small"), 8, small)
    write_bundle(os.path.join(out, "bundle_full"), 32, full)
    sd = full["high"].state_dict()
    torch.save(sd, os.path.join(out, "weights", "full_bare.pt"))
    torch.save({"model": sd, "epoch": 7}, os.path.join(out, "weights", "full_wrapped.pt"))
    save_file({k: v.numpy() for k, v in sd.items()}, os.path.join(out, "weights", "full.safetensors"))
    bad = dict(sd)
    bad.pop("up_layers.1.0.norm2.bias")
    torch.save(bad, os.path.join(out, "weights", "missing_key.pt"))
    bad = dict(sd)
    bad["extra.weight"] = torch.zeros(3)
    torch.save(bad, os.path.join(out, "weights", "extra_key.pt"))
    bad = dict(sd)
    bad["conv_final.2.conv.bias"] = torch.zeros(104)
    torch.save(bad, os.path.join(out, "weights", "bad_shape.pt"))

    # one 96^3 window through the full network
    g = torch.Generator().manual_seed(5)
    x = torch.rand((1, 1, 96, 96, 96), generator=g) * 2 - 1
    with torch.no_grad():
        y = full["high"](x)
    save_file({"input": x.numpy(), "logits": y.numpy()}, os.path.join(out, "unit_full.safetensors"))

    cases = []
    ct = os.path.join(DATA, "example_ct.nii.gz")
    cases.append(run_case("ct_lowres_full", ct, full["low"], False, cases_dir, keep_logits=False, keep_channels=8))
    cases.append(run_case("ct_highres_small", ct, small["high"], True, cases_dir, keep_logits=False))
    lps = np.diag([-0.9, -0.9, 2.5, 1.0])
    lps[:3, 3] = [60.0, 40.0, -100.0]
    p = synthetic("lps_u16", cases_dir, (110, 100, 50), lps, np.uint16, slope=1.0, inter=-1024.0, seed=1)
    cases.append(run_case("lps_u16", p, small["high"], True, cases_dir, keep_logits=True))
    perm = np.array([[0.0, 0.0, 1.2, -30.0], [0.0, -1.1, 0.0, 50.0], [2.0, 0.0, 0.0, -80.0], [0, 0, 0, 1]])
    p = synthetic("permuted", cases_dir, (40, 90, 80), perm, np.int16, seed=2)
    cases.append(run_case("permuted", p, small["high"], True, cases_dir, keep_logits=True))
    sm = np.diag([2.0, 2.0, 2.0, 1.0])
    p = synthetic("small_lowres", cases_dir, (40, 120, 50), sm, np.int16, seed=3)
    cases.append(run_case("small_lowres", p, small["low"], False, cases_dir, keep_logits=True))
    th = np.deg2rad(10.0)
    rot = np.array([[np.cos(th), -np.sin(th), 0], [np.sin(th), np.cos(th), 0], [0, 0, 1]])
    obl = np.eye(4)
    obl[:3, :3] = rot @ np.diag([1.2, 1.2, 3.0])
    obl[:3, 3] = [-40.0, -30.0, 10.0]
    p = synthetic("oblique", cases_dir, (70, 60, 30), obl, np.int16, seed=4)
    cases.append(run_case("oblique", p, small["high"], True, cases_dir, keep_logits=True))
    half = np.diag([0.75, 0.75, 0.75, 1.0])
    p = synthetic("half_ties", cases_dir, (40, 44, 40), half, np.int16, seed=5)
    cases.append(run_case("half_ties", p, small["high"], True, cases_dir, keep_logits=True))

    # the bundle's own entry point on the shared CT, lowres, full network
    bundle_full = os.path.join(out, "bundle_full")
    imgs = os.path.join(bundle_full, "sampledata", "imagesTs")
    os.makedirs(imgs, exist_ok=True)
    shutil.copy(ct, os.path.join(imgs, "example_ct.nii.gz"))
    # `python -m monai.bundle run ...`, with torch pinned to THREADS (environment for the OpenMP and MKL
    # pools, torch.set_num_threads for the intra-op pool, checked after the run)
    import subprocess
    pinned = ("import sys, runpy, torch; n = int(sys.argv[1]); torch.set_num_threads(n); "
              "sys.argv = ['monai.bundle'] + sys.argv[2:]; "
              "runpy.run_module('monai.bundle', run_name='__main__', alter_sys=True); "
              "assert torch.get_num_threads() == n, torch.get_num_threads()")
    env = dict(os.environ, OMP_NUM_THREADS=str(THREADS), MKL_NUM_THREADS=str(THREADS))
    subprocess.run([sys.executable, "-c", pinned, str(THREADS), "run", "--config_file",
                    os.path.join(bundle_full, "configs", "inference.json"), "--bundle_root", bundle_full,
                    "--dataset_dir", os.path.join(bundle_full, "sampledata"), "--displayable_configs#highres", "False"],
                   check=True, cwd=bundle_full, env=env)
    bundle_run = os.path.join(bundle_full, "eval", "example_ct", "example_ct_trans.nii.gz")
    assert os.path.exists(bundle_run), bundle_run
    # the bundle's entry point and this script's own pipeline on the same case (informational)
    from safetensors.numpy import load_file
    ours = load_file(os.path.join(cases_dir, "ct_lowres_full.safetensors"))["labels_inv"]
    theirs = np.asarray(nib.load(bundle_run).dataobj).reshape(ours.shape)
    same = float((ours == theirs).mean())
    print(f"monai.bundle run vs this script's ct_lowres_full: {same * 100:.4f}% of voxels agree")

    manifest = {"bundle_run_lowres": os.path.relpath(bundle_run, out), "bundle_run_case": "ct_lowres_full",
                "bundle_run_agreement": same, "torch": torch.__version__, "monai": monai.__version__,
                "nibabel": nib.__version__, "numpy": np.__version__, "threads": THREADS,
                "final_weight_scale": FINAL_WEIGHT_SCALE, "cases": cases}
    with open(os.path.join(out, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=1)
    print(f"golden fixtures written to {out}")


if __name__ == "__main__":
    main()
