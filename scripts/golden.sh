#!/usr/bin/env bash
# Makes sure the golden fixtures (made by real MONAI, about 6 minutes on 2 cores) exist for the
# current stamp of everything they depend on, and prints their folder on stdout.
# They are cached outside the clone (FERROLABEL_CACHE, default ~/.cache/ferrolabel), keyed by the
# stamp; target/golden links to the current ones, so a fresh clone reuses them when nothing
# changed. FERROLABEL_GOLDEN names another folder instead. Safe to run twice at once (a lock):
# .ci/run starts it in the background while it lints and builds, scripts/test.sh then finds the
# fixtures made (or waits for them).
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/phases.sh
. scripts/phases.sh
cache="${FERROLABEL_CACHE:-$HOME/.cache/ferrolabel}"
py="${FERROLABEL_PYTHON:-$PWD/.venv/bin/python}"
# the stamp: what make_golden.py reads (the bundle's inference.json and metadata.json, not the
# training configs) and the Python packages that compute them
conf=apps/wholebody/model/wholeBody_ct_segmentation/configs
stamp="$(cat tests/golden/make_golden.py scripts/requirements-torch.txt "$conf/inference.json" "$conf/metadata.json" | sha256sum | cut -c1-16)"
mkdir -p target "$cache/golden"
exec 9>"$cache/golden.lock"
flock 9
if [ -n "${FERROLABEL_GOLDEN:-}" ]; then
  golden="$FERROLABEL_GOLDEN"
else
  golden="$cache/golden/$stamp"
  if [ -d target/golden ] && [ ! -L target/golden ]; then
    # fixtures made in place by hand (make_golden.py target/golden): move them into the cache
    old="$(cat target/golden/.stamp 2>/dev/null || echo unstamped)"
    rm -rf "${cache:?}/golden/$old"
    mv target/golden "$cache/golden/$old"
  fi
  ln -sfn "$golden" target/golden
fi
make_golden() {
  rm -rf "$golden"
  "$py" tests/golden/make_golden.py "$golden" >&2
  echo "$stamp" >"$golden/.stamp"
  # keep the three newest fixture sets
  ls -1t "$cache/golden" | tail -n +4 | while read -r old; do rm -rf "${cache:?}/golden/$old"; done
}
if [ "$(cat "$golden/.stamp" 2>/dev/null)" != "$stamp" ]; then
  echo "golden.sh: making golden fixtures with MONAI in $golden (a few minutes)" >&2
  phase "golden fixtures (MONAI 1.4.0)" make_golden
else
  echo "golden.sh: golden fixtures up to date in $golden" >&2
fi
echo "$golden"
