"""The Python peer for bench_infer.py: the bundle's inference pipeline with real MONAI 1.4.0
(the same transforms, inferer and post-processing as configs/inference.json), timed per stage.
Prints one JSON line."""
import json
import os
import sys
import time

t_start = time.perf_counter()
import numpy as np
import torch
from monai.networks.nets import SegResNet
from monai.inferers import SlidingWindowInferer
from monai.transforms import (Compose, LoadImaged, EnsureTyped, EnsureChannelFirstd, Orientationd, Spacingd,
                              NormalizeIntensityd, ScaleIntensityd, Activationsd, AsDiscreted, Invertd, SaveImaged)
from monai.handlers import CheckpointLoader  # noqa: F401  (the bundle's loader; we load the same way below)


def main():
    bundle, image, out_dir, highres, threads = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4] == "true", int(sys.argv[5])
    torch.set_num_threads(threads)
    device = torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    with open(os.path.join(bundle, "configs", "inference.json")) as f:
        nd = dict(json.load(f)["network_def"])
    nd.pop("_target_", None)
    t0 = time.perf_counter()
    net = SegResNet(**nd).to(device)
    sd = torch.load(os.path.join(bundle, "models", "model.pt" if highres else "model_lowres.pt"), map_location=device)
    net.load_state_dict(sd.get("model", sd) if isinstance(sd, dict) and "model" in sd else sd, strict=True)
    net.eval()
    pixdim = [1.5] * 3 if highres else [3.0] * 3
    pre = Compose([LoadImaged(keys="image"), EnsureTyped(keys="image"), EnsureChannelFirstd(keys="image"),
                   Orientationd(keys="image", axcodes="RAS"), Spacingd(keys="image", pixdim=pixdim, mode="bilinear"),
                   NormalizeIntensityd(keys="image", nonzero=True), ScaleIntensityd(keys="image", minv=-1.0, maxv=1.0)])
    t_load = time.perf_counter() - t0
    t0 = time.perf_counter()
    d = pre({"image": image})
    t_pre = time.perf_counter() - t0
    inferer = SlidingWindowInferer(roi_size=[96, 96, 96], sw_batch_size=1, overlap=0.25, padding_mode="replicate",
                                   mode="gaussian", device=device)
    t0 = time.perf_counter()
    with torch.no_grad(), torch.autocast("cuda", enabled=device.type == "cuda"):
        logits = inferer(d["image"].unsqueeze(0).to(device), net)
    if device.type == "cuda":
        torch.cuda.synchronize()
    t_net = time.perf_counter() - t0
    t0 = time.perf_counter()
    post = Compose([Activationsd(keys="pred", softmax=True), AsDiscreted(keys="pred", argmax=True),
                    Invertd(keys="pred", transform=pre, orig_keys="image", nearest_interp=True, to_tensor=True)])
    item = post({"image": d["image"], "pred": logits[0]})
    t_post = time.perf_counter() - t0
    t0 = time.perf_counter()
    SaveImaged(keys="pred", output_dir=out_dir, output_ext=".nii.gz", output_dtype=np.float32, output_postfix="trans",
               separate_folder=True)(item)
    t_write = time.perf_counter() - t0
    print(json.dumps({"seconds": {"load": t_load, "preprocess": t_pre, "network": t_net, "postprocess": t_post,
                                  "write": t_write, "total": time.perf_counter() - t_start},
                      "network_shape": list(d["image"].shape[1:])}))


if __name__ == "__main__":
    main()
