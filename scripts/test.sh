#!/usr/bin/env bash
# The whole test suite: installs the Python side (torch 2.13.0, MONAI 1.4.0, the monailabel
# client) if needed, makes the golden fixtures with real MONAI if they are missing or stale,
# then runs every Rust test (unit, golden fidelity, HTTP integration), the conformance suite
# that drives the real binary with the official monailabel client, and the fuzz targets.
# Prints each phase's time (scripts/phases.sh); .ci/run prints the summary.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/phases.sh
. scripts/phases.sh
own_summary=0
[ -z "${FERROLABEL_PHASES_OWNER:-}" ] && own_summary=1 && export FERROLABEL_PHASES_OWNER=test.sh

phase "setup: torch/MONAI virtualenv" bash scripts/setup-torch.sh
export FERROLABEL_PYTHON="$PWD/.venv/bin/python"

# one build of every test binary and the server binary, reused by everything below
phase "build: cargo test --no-run (release)" cargo test --workspace --release --no-run
# the golden fixtures made by real MONAI (scripts/golden.sh: cached outside the clone by a stamp
# of what they depend on; .ci/run makes them in the background during the lints and the build,
# and this waits for that run through the script's lock)
FERROLABEL_GOLDEN="$(bash scripts/golden.sh)"
export FERROLABEL_GOLDEN
# the fuzz targets' sanitizer build (its own workspace and target dir, ~4 min of compiling cold) runs
# in the background while the Rust tests run: they leave a core idle much of the time (servers and
# clients waiting on each other); the fuzz phase at the end waits for it
fuzz_build_log=target/fuzz-build.log
bash scripts/fuzz.sh build >"$fuzz_build_log" 2>&1 &
fuzz_build_pid=$!
trap 'kill "$fuzz_build_pid" 2>/dev/null || true' EXIT
# golden tests compare against fixtures made with 2 threads; run test binaries one at a time
# so that thread counts and memory stay what the fixtures and the 2-core machine expect
mkdir -p target
run_cargo_tests() {
  set -o pipefail
  cargo test --workspace --release -- --test-threads=1 2>&1 | tee target/cargo-test.log
}
rc=0
phase "cargo test (all crates)" run_cargo_tests || rc=$?
echo "---- cargo test binaries ----" >&2
awk -v phases="$FERROLABEL_PHASES" -f scripts/test-times.awk target/cargo-test.log >&2
[ $rc -eq 0 ] || exit $rc

# the conformance suite: the release binary driven by the official monailabel client
export FERROLABEL_BIN="$PWD/target/release/ferrolabel"
for f in tests/conformance/test_*.py; do
  phase "conformance $(basename "$f")" "$FERROLABEL_PYTHON" -m pytest "$f" -q -p no:cacheprovider --durations=5
done
# the same suite again against a team deployment (FERROLABEL_CLUSTER=1, conftest.Deployment): a
# throwaway PostgreSQL, 2 `start_server --no-jobs` and 1 `ferrolabel worker` behind haproxy.
# Not here: the workbench's interactive-priority test (it measures one engine interleaving a batch
# with /infer: in cluster mode the batch runs in the worker, another engine) and the two highres
# inferences of the NRRD test (an interactive /infer runs whole on the server that received it: the
# same engine code as the single-server pass, ~40 s; lowres inference, sessions and saves still go
# through the balancer)
for f in tests/conformance/test_*.py; do
  phase "conformance (cluster) $(basename "$f")" env FERROLABEL_CLUSTER=1 "$FERROLABEL_PYTHON" -m pytest "$f" \
    -q -p no:cacheprovider --durations=5 \
    --deselect tests/conformance/test_workbench.py::test_batch_infer_cancel_and_interactive_priority \
    --deselect tests/conformance/test_slicer_flow.py::test_infer_highres_nrrd_as_slicer_asks
done

# every fuzz target briefly, from the committed seeds (scripts/fuzz.sh with no argument runs the
# README's 1,000,000 executions per target); under a minute once the background build is done
wait_fuzz_build() {
  wait "$fuzz_build_pid" || { cat "$fuzz_build_log" >&2; return 1; }
}
phase "fuzz: finish the background build" wait_fuzz_build
# with a fixed seed: the same inputs every run (a new find belongs to the long, random-seeded runs)
phase "fuzz (${FERROLABEL_FUZZ_RUNS:-20000} runs per target)" \
  env FERROLABEL_FUZZ_SEED="${FERROLABEL_FUZZ_SEED:-20261201}" bash scripts/fuzz.sh "${FERROLABEL_FUZZ_RUNS:-20000}"
[ $own_summary -eq 1 ] && phase_summary
exit 0
