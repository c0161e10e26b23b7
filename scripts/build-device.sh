#!/usr/bin/env bash
# Builds the device variant of `ferrolabel` for the lent GPU machine (docs/gpu.md): that machine
# has PyTorch 2.11.0+cu130 in its python3, CUDA 13, no network and no Rust toolchain, and takes
# at most 64 MiB along with the working tree. So, here:
#   1. torch==2.11.0 from PyPI into its own virtualenv in the cache (headers + libtorch 2.11, the
#      CUDA 13 build the device runs; ~4 GB with its nvidia-* dependencies, installed once);
#   2. a copy of the workspace in target/device/ws with tch / torch-sys 0.24 (the tch release that
#      links libtorch 2.11; the code builds unchanged against both) and no rpath to this
#      machine's libtorch (the device's torch/lib is found at run time via LD_LIBRARY_PATH);
#   3. `cargo build --release -p ferrolabel` in its own target dir (target/device/target), so the
#      main build's artefacts are never touched;
#   4. strip it to target/device/carry/ferrolabel and check the carry (binary + the bundle configs
#      + the sample CT + the working tree) fits the 64 MiB the device takes.
# Prints the carry's size; the binary needs `LD_LIBRARY_PATH=<torch>/lib` (scripts/gpu-check.sh
# sets it from the python3 it finds).
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
cache="${FERROLABEL_CACHE:-$HOME/.cache/ferrolabel}"
py="${PYTHON:-python3}"
pyver="$("$py" -c 'import sys; print(f"{sys.version_info[0]}{sys.version_info[1]}")')"
venv="$cache/venv-torch2.11.0-py$pyver"
dev="$here/target/device"
ws="$dev/ws"

# 1. torch 2.11.0 (only numpy beside it: what the device has)
if ! "$venv/bin/python" -c 'import torch; assert torch.__version__.startswith("2.11.0")' 2>/dev/null; then
  echo "build-device: installing torch==2.11.0 into $venv" >&2
  "$py" -m venv "$venv"
  "$venv/bin/pip" install --quiet --cache-dir "$cache/pip" torch==2.11.0 numpy
fi
libtorch="$("$venv/bin/python" -c 'import os, torch; print(os.path.dirname(torch.__file__))')"

# 2. the workspace copy (tracked and untracked-not-ignored files of the crates and what they
#    include), tch 0.24, no rpath
mkdir -p "$ws"
(cd "$here" && git ls-files -co --exclude-standard -- Cargo.toml Cargo.lock build imaging checkpoint \
  models datastore apps server forms dicom dicomweb testkit scribbles deploy data/totalseg/*.csv \
  | tar -cf - -T -) | tar -xf - -C "$ws"
sed -i -e 's/^tch = "0\.26"/tch = "0.24"/' -e 's/^torch-sys = "0\.26"/torch-sys = "0.24"/' "$ws/Cargo.toml"
grep -q '^tch = "0.24"' "$ws/Cargo.toml" || { echo "build-device: could not pin tch 0.24" >&2; exit 1; }
# the build script keeps libtorch_cuda linked (--no-as-needed) but bakes no rpath
sed -i '/-Wl,-rpath,/d' "$ws/build/rpath.rs"
! grep -q 'rpath,{}' "$ws/build/rpath.rs"

# 3. build
cd "$ws"
export LIBTORCH="$libtorch" LIBTORCH_CXX11_ABI=1
export CARGO_TARGET_DIR="$dev/target"
cargo update --quiet -p tch --precise 0.24.0 2>/dev/null || cargo update --quiet -p tch
cargo build --release -p ferrolabel

# 4. strip, check, lay out the carry
carry="$dev/carry"
mkdir -p "$carry"
strip -o "$carry/ferrolabel" "$dev/target/release/ferrolabel"
if readelf -d "$carry/ferrolabel" | grep -qE 'RPATH|RUNPATH'; then
  echo "build-device: the binary still has an rpath" >&2
  exit 1
fi
readelf -d "$carry/ferrolabel" | grep -q 'libtorch_cuda.so' \
  || { echo "build-device: libtorch_cuda is not linked (no GPU at run time)" >&2; exit 1; }
tree_bytes="$(cd "$here" && git ls-files -co --exclude-standard -z | du -cb --files0-from=- | tail -1 | cut -f1)"
bin_bytes="$(stat -c %s "$carry/ferrolabel")"
total=$((tree_bytes + bin_bytes))
echo "build-device: $carry/ferrolabel $((bin_bytes / 1048576)) MiB; working tree $((tree_bytes / 1048576)) MiB; travels $((total / 1048576)) MiB of 64"
[ "$total" -le $((64 * 1048576)) ] || { echo "build-device: over the 64 MiB carry limit" >&2; exit 1; }
