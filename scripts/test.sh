#!/usr/bin/env bash
# The whole test suite: installs the Python side (torch 2.13.0, MONAI 1.4.0, the monailabel
# client) if needed, makes the golden fixtures with real MONAI if they are missing or stale,
# then runs every Rust test (unit, golden fidelity, HTTP integration) and the conformance
# suite that drives the real binary with the official monailabel client.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-torch.sh
export FERROLABEL_PYTHON="$PWD/.venv/bin/python"
golden="${FERROLABEL_GOLDEN:-$PWD/target/golden}"
export FERROLABEL_GOLDEN="$golden"
stamp="$(cat tests/golden/make_golden.py scripts/requirements-torch.txt apps/wholebody/model/wholeBody_ct_segmentation/configs/*.json | sha256sum | cut -c1-16)"
if [ "$(cat "$golden/.stamp" 2>/dev/null)" != "$stamp" ]; then
  echo "test.sh: making golden fixtures with MONAI in $golden (a few minutes)" >&2
  rm -rf "$golden"
  "$FERROLABEL_PYTHON" tests/golden/make_golden.py "$golden" >&2
  echo "$stamp" > "$golden/.stamp"
fi
# golden tests compare against fixtures made with 2 threads; run test binaries one at a time
# so that thread counts and memory stay what the fixtures and the 2-core machine expect
cargo test --workspace --release -- --test-threads=1
# the conformance suite: the release binary driven by the official monailabel client
FERROLABEL_BIN="$PWD/target/release/ferrolabel" "$FERROLABEL_PYTHON" -m pytest tests/conformance -q -p no:cacheprovider
# every fuzz target briefly, from the committed seeds (scripts/fuzz.sh with no argument runs the
# README's 1,000,000 executions per target); about 5 minutes cold (cargo-fuzz install and the
# sanitizer build of fuzz/), under a minute warm
bash scripts/fuzz.sh "${FERROLABEL_FUZZ_RUNS:-20000}"
