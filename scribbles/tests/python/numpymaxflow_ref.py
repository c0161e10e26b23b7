"""Reference cut by numpymaxflow (the max-flow MONAI Label's scribbles use) for maxflow_numpymaxflow.rs.

Reads from the directory given as argument: params.json ({"cases": [{"name", "dims": [nx, ny, nz],
"lamda", "sigma"}]}), and per case <name>.image.f32 (nx*ny*nz values, x fastest) and <name>.prob.f32
(the background then the foreground probability, each x fastest). Writes <name>.labels.u8 (1 = foreground,
x fastest).
"""

import json
import sys
from pathlib import Path

import numpy as np
import numpymaxflow

d = Path(sys.argv[1])
params = json.loads((d / "params.json").read_text())
for case in params["cases"]:
    name, dims = case["name"], case["dims"]
    n = int(np.prod(dims))
    image = np.fromfile(d / f"{name}.image.f32", dtype="<f4").reshape(dims, order="F")
    prob = np.fromfile(d / f"{name}.prob.f32", dtype="<f4")
    assert prob.size == 2 * n
    prob = np.stack([prob[:n].reshape(dims, order="F"), prob[n:].reshape(dims, order="F")])
    # [C, X, Y, Z] like MONAI Label passes them; 6-connected (its default)
    labels = numpymaxflow.maxflow(np.ascontiguousarray(image[None]), np.ascontiguousarray(prob),
                                  case["lamda"], case["sigma"], 6)
    assert labels.shape == (1, *dims), labels.shape
    labels = labels[0]
    labels.astype(np.uint8).ravel(order="F").tofile(d / f"{name}.labels.u8")
print("numpymaxflow", len(params["cases"]), "cases")
