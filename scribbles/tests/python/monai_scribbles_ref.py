"""MONAI Label 0.8.5's Histogram+GraphCut on raw volumes, for histogram_monai.rs.

Runs the steps of monailabel.scribbles.infer.HistogramBasedGraphCut after loading (LoadImaged +
EnsureChannelFirstd give float32 [1, X, Y, Z] arrays; the test volumes are already at the task's
spacing, so its Spacingd is left out):
  AddBackgroundScribblesFromROId -> ScaleIntensityRanged (MONAI's own transform)
  -> MakeLikelihoodFromScribblesHistogramd(normalise=True) -> MakeISegUnaryd -> ApplyGraphCutOptimisationd.
The numerical work is MONAI Label's own monailabel.scribbles.utils (make_likelihood_image_histogram,
make_iseg_unary, maxflow -> numpymaxflow). monailabel.scribbles.transforms itself needs scipy, which the
project does not install, so the few lines of glue of its transforms are restated here (marked GLUE):
the ROI handling of AddBackgroundScribblesFromROId and _normalise_logits (scipy.special.softmax, restated
with numpy as scipy computes it: exp(x - max) / sum).

Reads params.json ({"cases": [{"name", "dims", "roi" (null or [i0, i1, j0, j1, k0, k1]), "bg", "fg",
"num_bins", "lamda", "sigma", "window": [a_min, a_max], "likelihood": "histogram" (default) or
"probability"}]}), <name>.image.f32, <name>.scribbles.u8 and for "probability" <name>.prob.f32 (the
foreground probability) (x fastest); writes <name>.labels.u8 (x fastest, whole grid).
"""

import json
import sys
from pathlib import Path

import numpy as np
import torch
from monai.transforms import ScaleIntensityRange

from monailabel.scribbles.utils import make_iseg_unary, make_likelihood_image_histogram, maxflow


def add_background_scribbles_from_roi(scribbles, roi, bg, fg):
    # GLUE: AddBackgroundScribblesFromROId.__call__
    if roi:
        mask = np.ones_like(scribbles).astype(bool)
        mask[:, roi[0] : roi[1], roi[2] : roi[3], roi[4] : roi[5]] = 0
        scribbles[mask] = bg
        if not np.any(scribbles == fg):
            offset = 5
            cx = int((roi[0] + roi[1]) / 2)
            cy = int((roi[2] + roi[3]) / 2)
            cz = int((roi[4] + roi[5]) / 2)
            scribbles[:, cx - offset : cx + offset, cy - offset : cy + offset, cz - offset : cz + offset] = fg
    return scribbles


def normalise_logits(data, axis=0):
    # GLUE: InteractiveSegmentationTransform._normalise_logits with scipy.special.softmax
    if not np.allclose(np.sum(data, axis=axis), 1.0):
        shifted = np.exp(data - np.amax(data, axis=axis, keepdims=True))
        data = shifted / np.sum(shifted, axis=axis, keepdims=True)
    return data


def run(d, case):
    name, dims = case["name"], case["dims"]
    image = np.fromfile(d / f"{name}.image.f32", dtype="<f4").reshape(dims, order="F")[None].copy()
    scribbles = np.fromfile(d / f"{name}.scribbles.u8", dtype=np.uint8).reshape(dims, order="F")
    scribbles = scribbles[None].astype(np.float32)  # LoadImaged loads labels as float32 too
    bg, fg = case["bg"], case["fg"]

    scribbles = add_background_scribbles_from_roi(scribbles, case["roi"], bg, fg)
    a_min, a_max = case["window"]
    scale = ScaleIntensityRange(a_min=a_min, a_max=a_max, b_min=0.0, b_max=1.0, clip=True)
    image = np.asarray(scale(torch.from_numpy(image)), dtype=np.float32)

    if case.get("likelihood", "histogram") == "histogram":
        prob = make_likelihood_image_histogram(image, scribbles, bg, fg, num_bins=case["num_bins"])
        prob = normalise_logits(prob)  # MakeLikelihoodFromScribblesHistogramd(normalise=True)
    else:
        # a model's foreground probability as the likelihood (MONAI Label's ISeg use of these steps)
        p_fg = np.fromfile(d / f"{name}.prob.f32", dtype="<f4").reshape(dims, order="F")[None]
        prob = np.concatenate([1.0 - p_fg, p_fg], axis=0)
    prob = normalise_logits(prob)  # MakeISegUnaryd
    unary = make_iseg_unary(prob, scribbles, scribbles_bg_label=bg, scribbles_fg_label=fg)
    labels = maxflow(image, unary, lamda=case["lamda"], sigma=case["sigma"])
    assert labels.shape == (1, *dims), labels.shape
    labels[0].astype(np.uint8).ravel(order="F").tofile(d / f"{name}.labels.u8")


d = Path(sys.argv[1])
params = json.loads((d / "params.json").read_text())
for case in params["cases"]:
    run(d, case)
print("monai label histogram+graphcut", len(params["cases"]), "cases")
