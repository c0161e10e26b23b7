#!/usr/bin/env bash
# One prepared device check for a session that is lent a GPU machine (not part of CI): builds the
# release binary, makes the golden fixtures if missing, then runs `ferrolabel infer --device cuda`
# (fp16 autocast) and `--device cpu` on the shared CT with the full-size golden weights, and prints
# the voxel agreement (docs/bundle.md §7 AMP tolerance: >= 99.9%) and both timings as JSON.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-torch.sh
cargo build --release -p ferrolabel
golden="${FERROLABEL_GOLDEN:-$PWD/target/golden}"
[ -f "$golden/manifest.json" ] || .venv/bin/python tests/golden/make_golden.py "$golden"
out="${OUT:-$PWD/bench-out}/gpu"
mkdir -p "$out"
for hr in false true; do
  for dev in cuda cpu; do
    target/release/ferrolabel infer --bundle "$golden/bundle_full" --image data/totalseg/example_ct.nii.gz \
      --output "$out/labels_${dev}_${hr}.nii.gz" --highres "$hr" --device "$dev" --json > "$out/${dev}_${hr}.json"
  done
  .venv/bin/python - "$out" "$hr" <<'PY'
import json, sys
import nibabel as nib, numpy as np
out, hr = sys.argv[1], sys.argv[2]
a = np.asanyarray(nib.load(f"{out}/labels_cuda_{hr}.nii.gz").dataobj)
b = np.asanyarray(nib.load(f"{out}/labels_cpu_{hr}.nii.gz").dataobj)
agree = float((a == b).mean())
t = {d: json.load(open(f"{out}/{d}_{hr}.json"))["seconds"] for d in ("cuda", "cpu")}
print(json.dumps({"highres": hr, "agreement_cuda_amp_vs_cpu_fp32": agree, "seconds": t}))
assert agree >= 0.999, agree
PY
done
