#!/usr/bin/env bash
# Installs the Python peer, the real MONAI Label server, into its own virtualenv (it pulls the newest
# torch, so it must not share .venv): ~/.cache/ferrolabel/venv-monailabel-peer. Prints its python.
# Used by the peer conformance run and the load benchmark (see README).
set -euo pipefail
cache="${FERROLABEL_CACHE:-$HOME/.cache/ferrolabel}"
venv="$cache/venv-monailabel-peer"
pins="monailabel==0.8.5 monai==1.4.0 pydicom==2.4.4 dicomweb-client==0.59.1 pynetdicom==2.0.2"
if [ "$(cat "$venv/.pins" 2>/dev/null)" != "$pins" ]; then
  python3 -m venv "$venv"
  # shellcheck disable=SC2086
  "$venv/bin/pip" install --quiet --cache-dir "$cache/pip" $pins
  echo "$pins" > "$venv/.pins"
fi
echo "$venv/bin/python"
