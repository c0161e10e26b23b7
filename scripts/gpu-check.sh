#!/usr/bin/env bash
# The one prepared device check (docs/gpu.md; not part of CI). Runs on the lent GPU machine as it is:
# python3 with torch 2.11 (+ numpy), no Rust, no network. Needs the device build carried along:
#   here:   scripts/build-device.sh                      (target/device/carry/ferrolabel, stripped)
#   there:  run(command="bash scripts/gpu-check.sh", carry=["target/device/carry"], timeout_s=600)
# Prints one JSON line per step and a summary line; writes them to $OUT/gpu-check.jsonl (on the device
# $OUT comes back). Steps:
#   1. seeded full-size weights (`ferrolabel dev make-weights`) in a copy of the bundle's configs;
#   2. the shared CT at both resolutions on $GPU_CHECK_DEVICE (cuda: fp16 autocast, as the bundle's
#      evaluator) and on the CPU in fp32: per-stage seconds, peak RSS, peak GPU memory, label agreement
#      (docs/bundle.md §7: >= 99.9%);
#   3. the 512x512x400 scan (made from the shared CT by bench/bench_bigscan.py) at highres: targets
#      <= 3 s and <= 8 GB of GPU memory on the GPU, <= 4 GB peak RSS on the CPU;
#   4. one AMP training step with the loss scaler (`ferrolabel dev train-worker`, one crop, one epoch).
# Rehearsal without a GPU (same binary, same steps): GPU_CHECK_DEVICE=cpu PYTHON=<a python with torch
# 2.11> bash scripts/gpu-check.sh. GPU_CHECK_THREADS limits libtorch's threads (default: all cores);
# GPU_CHECK_RESOLUTIONS (default "false true": lowres and highres on the CT) and GPU_CHECK_BIGSCAN_HIGHRES
# (default true) shorten a rehearsal on a busy CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
dev="${GPU_CHECK_DEVICE:-cuda}"
py="${PYTHON:-python3}"
bin="${FERROLABEL_DEVICE_BIN:-$PWD/target/device/carry/ferrolabel}"
out="${OUT:-$PWD/target/gpu-check}"
work="${GPU_CHECK_WORK:-${TMPDIR:-/tmp}/ferrolabel-gpu-check}"
threads=()
[ -n "${GPU_CHECK_THREADS:-}" ] && threads=(--threads "$GPU_CHECK_THREADS")
torch_dir="$("$py" -c 'import os, torch; print(os.path.dirname(torch.__file__))')"
export LD_LIBRARY_PATH="$torch_dir/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export PYTHONUNBUFFERED=1
mkdir -p "$out" "$work"
report="$out/gpu-check.jsonl"
: > "$report"
emit() { echo "$1" | tee -a "$report"; }
measure() { "$py" bench/bench_bigscan.py measure -- "$@"; }
t_start=$(date +%s)

# 0. what runs where
emit "$("$py" - "$bin" "$dev" <<'PY'
import json, os, subprocess, sys
import torch
bin_, dev = sys.argv[1], sys.argv[2]
gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
print(json.dumps({"step": "env", "torch": torch.__version__, "cuda": torch.version.cuda, "gpu": gpu,
                  "device": dev, "binary_mib": round(os.path.getsize(bin_) / 2**20, 1),
                  "cpus": os.cpu_count()}))
PY
)"

# 1. seeded weights of the real architecture
bundle="$work/bundle"
rm -rf "$bundle"
mkdir -p "$bundle/models"
cp -r apps/wholebody/model/wholeBody_ct_segmentation/configs "$bundle/"
"$bin" dev make-weights --bundle "$bundle" --seed 0 > /dev/null
ct=data/totalseg/example_ct.nii.gz

# 2. the shared CT, device vs CPU fp32, both resolutions
for hr in ${GPU_CHECK_RESOLUTIONS:-false true}; do
  for d in "$dev" cpu; do
    emit "$(measure "$bin" infer --bundle "$bundle" --image "$ct" --output "$work/ct_${d}_${hr}.nii.gz" \
      --highres "$hr" --device "$d" "${threads[@]}" --json | "$py" -c \
      "import json,sys; r=json.load(sys.stdin); r['step']='ct'; r['ok']=r['error'] is None; print(json.dumps(r))")"
  done
  emit "$("$py" bench/bench_bigscan.py compare "$work/ct_${dev}_${hr}.nii.gz" "$work/ct_cpu_${hr}.nii.gz" \
    | "$py" -c "import json,sys; r=json.load(sys.stdin); print(json.dumps({'step': 'agreement', 'highres': '$hr' == 'true', 'device': '$dev', 'vs': 'cpu fp32', 'agreement': r['agreement'], 'ok': r['agreement'] >= 0.999}))")"
done

# 3. the 512x512x400 scan at highres
scan="$work/ct_512x512x400.nii.gz"
"$py" bench/bench_bigscan.py make --out "$scan" > /dev/null
big_hr="${GPU_CHECK_BIGSCAN_HIGHRES:-true}"
emit "$(measure "$bin" infer --bundle "$bundle" --image "$scan" --output "$work/bigscan_${dev}.nii.gz" \
  --highres "$big_hr" --device "$dev" "${threads[@]}" --json | "$py" -c "
import json, sys
r = json.load(sys.stdin)
s = r.get('seconds', {})
r['step'] = 'bigscan'
r['pipeline_seconds'] = s.get('preprocess', 0) + s.get('network', 0) + s.get('postprocess', 0)
if '$dev' == 'cpu':
    r['ok'] = r['error'] is None and r['peak_rss_bytes'] <= 4 * 2**30
else:
    r['ok'] = r['error'] is None and (r.get('gpu_peak_bytes') or 0) <= 8 * 2**30 and r['pipeline_seconds'] <= 3.0
print(json.dumps(r))")"

# 4. one AMP training step with the loss scaler (label: the device's labels of the CT, highres if made)
"$py" - "$work" "$dev" "$ct" "$bundle" "${GPU_CHECK_THREADS:-}" > "$work/train.json" <<'PY'
import json, os, sys
work, dev, ct, bundle, threads = sys.argv[1:6]
nd = dict(json.load(open(os.path.join(bundle, "configs", "inference.json")))["network_def"])
net = {"in_channels": nd["in_channels"], "out_channels": nd["out_channels"], "init_filters": nd["init_filters"],
       "blocks_down": nd["blocks_down"], "blocks_up": nd["blocks_up"], "dropout_prob": nd.get("dropout_prob"),
       "norm_groups": 8}
label = os.path.join(work, f"ct_{dev}_true.nii.gz")
if not os.path.exists(label):
    label = os.path.join(work, f"ct_{dev}_false.nii.gz")
pair = {"id": "ct", "image": os.path.abspath(ct), "label": label}
job = {"network": net, "device": dev, "init_weights": os.path.join(bundle, "models", "model.pt"),
       "output": os.path.join(work, "trained.pt"), "train": [pair], "val": [],
       "config": {"max_epochs": 1, "batch_size": 1, "val_interval": 1, "amp": True, "cache_size": 1,
                  "val_roi": [96, 96, 96]}}
print(json.dumps({"job": job, "threads": int(threads) if threads else None}))
PY
emit "$(measure "$bin" dev train-worker "$work/train.json" | "$py" -c "
import json, sys
r = json.load(sys.stdin)
print(json.dumps({'step': 'train', 'device': '$dev', 'amp': True, 'iterations': r.get('iterations'),
                  'loss': r.get('loss'), 'step_seconds': r.get('step_seconds'), 'peak_rss_bytes': r.get('peak_rss_bytes'),
                  'gpu_peak_bytes': r.get('gpu_peak_bytes'), 'wall': r.get('wall'),
                  'error': r.get('error'), 'ok': r.get('error') is None and r.get('iterations') == 1 and r.get('loss') is not None and r['loss'] == r['loss']}))")"

# summary
emit "$("$py" - "$report" "$(( $(date +%s) - t_start ))" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
checks = [r for r in rows if "ok" in r]
print(json.dumps({"step": "summary", "seconds": int(sys.argv[2]), "checks": len(checks),
                  "failed": [r["step"] + (f" highres={r['highres']}" if "highres" in r else "") for r in checks if not r["ok"]]}))
PY
)"
