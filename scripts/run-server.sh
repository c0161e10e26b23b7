#!/usr/bin/env bash
# Starts ferrolabel on the sample studies (data/totalseg, copied into work/studies on first use)
# with the embedded SQLite datastore. Extra arguments go to `ferrolabel start_server`
# (e.g. --port 8000 --host 0.0.0.0 --device cuda).
#
# Weights: the app's bundle folder apps/wholebody/model/wholeBody_ct_segmentation ships no
# weights (see README, "Installing weights"). Without them the server still starts; /info/ says
# so and /infer answers 503. FERROLABEL_DEMO_WEIGHTS=1 instead serves a copy of the bundle with
# seeded random weights (a demo of the workflow, NOT a model).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-torch.sh
cargo build --release -p ferrolabel
studies="${FERROLABEL_STUDIES:-$PWD/work/studies}"
if [ ! -d "$studies" ]; then
  mkdir -p "$studies"
  cp data/totalseg/example_ct.nii.gz "$studies/example_ct.nii.gz"
  cp data/totalseg/example_ct_sm.nii.gz "$studies/example_ct_small.nii.gz"
fi
conf=()
if [ "${FERROLABEL_DEMO_WEIGHTS:-0}" = "1" ]; then
  demo="$PWD/work/demo-bundle"
  if [ ! -f "$demo/models/model.pt" ]; then
    mkdir -p "$demo"
    cp -r apps/wholebody/model/wholeBody_ct_segmentation/configs "$demo/"
    target/release/ferrolabel dev make-weights --bundle "$demo" --seed 0
  fi
  conf=(--conf bundle_dir "$demo")
fi
echo "ferrolabel: serving $studies on http://127.0.0.1:${PORT:-8000} (3D Slicer: MONAI Label server URL)" >&2
exec target/release/ferrolabel start_server --app apps/wholebody --studies "$studies" \
  --port "${PORT:-8000}" "${conf[@]}" "$@"
