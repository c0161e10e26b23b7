"""Reference for `models/tests/epistemic.rs`: the epistemic score of ferrolabel's Monte Carlo
dropout from the raw per-pass network outputs that the Rust test saved, computed here in
float64 with torch, and MONAI's gaussian importance map for the blend across windows.

usage: epistemic_reference.py DIR   (DIR holds logits.npy [windows, passes, classes, r, r, r]
and meta.json {"starts": [[x, y, z], ...], "pads": [[before, after] x 3], "size": [x, y, z]});
prints {"entropy": mean voxel entropy in nats, "passes": ..., "windows": ...} as JSON.
"""
import json
import os
import sys

import numpy as np
import torch
from monai.data.utils import compute_importance_map


def main(d):
    logits = torch.from_numpy(np.load(os.path.join(d, "logits.npy"))).double()
    meta = json.load(open(os.path.join(d, "meta.json")))
    n_win, n_pass, _, r0, r1, r2 = logits.shape
    assert n_win == len(meta["starts"])
    pads, size = meta["pads"], meta["size"]
    work = [size[i] + pads[i][0] + pads[i][1] for i in range(3)]
    weight = compute_importance_map((r0, r1, r2), mode="gaussian", sigma_scale=0.125, device="cpu").double()
    acc = torch.zeros(work, dtype=torch.float64)
    wsum = torch.zeros(work, dtype=torch.float64)
    for w, (a, b, c) in enumerate(meta["starts"]):
        # mean of the softmax over the passes, then the entropy of that mean
        p = torch.stack([torch.softmax(logits[w, t], dim=0) for t in range(n_pass)]).mean(dim=0)
        h = torch.special.entr(p).sum(dim=0)
        acc[a:a + r0, b:b + r1, c:c + r2] += h * weight
        wsum[a:a + r0, b:b + r1, c:c + r2] += weight
    blended = acc / wsum
    crop = blended[pads[0][0]:pads[0][0] + size[0], pads[1][0]:pads[1][0] + size[1], pads[2][0]:pads[2][0] + size[2]]
    print(json.dumps({"entropy": crop.mean().item(), "passes": n_pass, "windows": n_win}))


if __name__ == "__main__":
    main(sys.argv[1])
