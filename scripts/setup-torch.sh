#!/usr/bin/env bash
# Installs the Python side that ferrolabel builds and tests against, from PyPI only:
#   torch==2.13.0 (the libtorch that tch 0.26 links), monai==1.4.0 + nibabel (golden fixtures),
#   and the official monailabel client (conformance tests).
# The virtualenv lives in a cache outside the clone (FERROLABEL_CACHE, default ~/.cache/ferrolabel)
# and is linked into the repository as .venv, so a fresh clone reuses it in seconds. A changed
# requirements file is applied incrementally to the same virtualenv.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
cache="${FERROLABEL_CACHE:-$HOME/.cache/ferrolabel}"
py="${PYTHON:-python3}"
req="$here/scripts/requirements-torch.txt"
# test-only packages (no golden fixture depends on them)
req_test="$here/scripts/requirements-test.txt"
pyver="$("$py" -c 'import sys; print(f"{sys.version_info[0]}{sys.version_info[1]}")')"
venv="$cache/venv-torch2.13.0-py$pyver"
want="$(cat "$req" "$req_test" | sha256sum | cut -c1-16)"
mkdir -p "$cache"
if [ ! -x "$venv/bin/python" ]; then
  echo "setup-torch: creating $venv" >&2
  "$py" -m venv "$venv"
  "$venv/bin/pip" install --quiet --cache-dir "$cache/pip" --upgrade pip
fi
if [ "$(cat "$venv/.requirements" 2>/dev/null)" != "$want" ]; then
  echo "setup-torch: installing $req into $venv" >&2
  "$venv/bin/pip" install --quiet --cache-dir "$cache/pip" -r "$req" -r "$req_test"
  # the official client only: its own dependency list pulls a full server stack
  "$venv/bin/pip" install --quiet --cache-dir "$cache/pip" --no-deps monailabel==0.8.5
  echo "$want" > "$venv/.requirements"
fi
# a stable path to the libtorch inside the wheel, for torch-sys (LIBTORCH in .cargo/config.toml)
ln -sfn "$("$venv/bin/python" -c 'import os, torch; print(os.path.dirname(torch.__file__))')" "$venv/libtorch"
ln -sfn "$venv" "$here/.venv"
"$here/.venv/bin/python" -c 'import torch, monai; print("setup-torch: torch", torch.__version__, "monai", monai.__version__)' >&2
