#!/usr/bin/env bash
# Fuzzes ferrolabel's untrusted-input parsers with cargo-fuzz (libFuzzer + AddressSanitizer):
# nifti (plain NIfTI reader), nifti_gz (gzip path), multipart (form bodies), params (params
# JSON, echo, id/tag/file-name validation), dicom_series (the DICOM series assembler, from
# memory and streamed from disk, which must agree) and dicom_zip (the zip reader of DICOM uploads,
# then the assembler). Targets live in fuzz/ (own workspace, no libtorch);
# committed seeds in fuzz/seeds/<target>, the growing corpus in fuzz/corpus/<target> (ignored).
#
#   scripts/fuzz.sh [RUNS | SECONDSs] [TARGET...]
#     scripts/fuzz.sh                 1,000,000 executions of every target (the README figures)
#     scripts/fuzz.sh 20000           20,000 executions each (what scripts/test.sh runs)
#     scripts/fuzz.sh 300s nifti      five minutes of the nifti target
#     scripts/fuzz.sh build           only install cargo-fuzz and build the targets (scripts/test.sh
#                                     runs this in the background while the Rust tests run)
#
# Fails on any crash, hang (-timeout), allocation over -malloc_limit_mb or RSS over
# -rss_limit_mb; the input is saved in fuzz/artifacts/<target>/. Installs cargo-fuzz into
# ~/.cache/ferrolabel/cargo-fuzz if missing. cargo-fuzz needs nightly-only rustc flags: the
# installed toolchain is used with RUSTC_BOOTSTRAP=1. Writes bench-out/fuzz.json.
set -euo pipefail
cd "$(dirname "$0")/.."
length="${1:-1000000}"
shift || true
targets=("$@")
[ ${#targets[@]} -eq 0 ] && targets=(nifti nifti_gz multipart params dicom_series dicom_zip)

fuzz_root="$HOME/.cache/ferrolabel/cargo-fuzz"
export PATH="$fuzz_root/bin:$PATH"
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "fuzz.sh: installing cargo-fuzz 0.13.2 into $fuzz_root" >&2
  cargo install cargo-fuzz --version 0.13.2 --locked --root "$fuzz_root" >&2
fi
export RUSTC_BOOTSTRAP=1
# the build must not see the main workspace's libtorch settings
unset LIBTORCH LIBTORCH_USE_PYTORCH || true

# FERROLABEL_FUZZ_SEED: libFuzzer's -seed (scripts/test.sh fixes one, so that CI explores the same
# inputs on every run and a red fuzz phase is a regression, not a new find; unset: a random seed)
seed=()
[ -n "${FERROLABEL_FUZZ_SEED:-}" ] && seed=(-seed="$FERROLABEL_FUZZ_SEED")

case "$length" in
  *s) limit=(-max_total_time="${length%s}") ;;
  *) limit=(-runs="$length") ;;
esac

(cd fuzz && cargo fuzz build -O --debug-assertions) >&2
[ "$length" = build ] && exit 0
mkdir -p bench-out
results=()
for t in "${targets[@]}"; do
  mkdir -p "fuzz/corpus/$t" "fuzz/artifacts/$t"
  log="$(mktemp)"
  start=$(date +%s%N)
  # the DICOM targets decode images (dicom_series also writes its files to disk and assembles
  # them twice per run): slower per run, they get an eighth (dicom_series) and a half
  # (dicom_zip) of the runs, which keeps them within about 30 s together at 20,000
  tlimit=("${limit[@]}")
  if [[ "$length" != *s ]]; then
    case "$t" in
      dicom_series) tlimit=(-runs="$(( (length + 7) / 8 ))") ;;
      dicom_zip) tlimit=(-runs="$(( (length + 1) / 2 ))") ;;
    esac
  fi
  echo "fuzz.sh: $t (${tlimit[*]})" >&2
  if ! (cd fuzz && cargo fuzz run -O --debug-assertions "$t" "corpus/$t" "seeds/$t" -- \
      "${tlimit[@]}" "${seed[@]}" -max_len=8192 -timeout=10 -malloc_limit_mb=256 -rss_limit_mb=1024 \
      -print_final_stats=1 -close_fd_mask=3) >"$log" 2>&1; then
    # the cause (panic message, sanitizer report) comes before libFuzzer's closing lines
    grep -m1 -A40 -E "panicked at|==[0-9]+==ERROR|ERROR: libFuzzer|deadly signal" "$log" >&2 \
      || tail -60 "$log" >&2
    grep -m1 "INFO: Seed:" "$log" >&2 || true
    # the failing input, so that a CI log alone reproduces it:
    #   base64 -d > crash && cd fuzz && cargo fuzz run -O --debug-assertions TARGET ../crash
    for a in "fuzz/artifacts/$t"/*; do
      [ -f "$a" ] || continue
      echo "fuzz.sh: $a ($(stat -c %s "$a") bytes), base64:" >&2
      base64 -w 0 "$a" >&2
      echo >&2
    done
    echo "fuzz.sh: $t FAILED (input saved under fuzz/artifacts/$t/)" >&2
    exit 1
  fi
  end=$(date +%s%N)
  execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' | tail -1)
  rss=$(grep -o 'stat::peak_rss_mb: *[0-9]*' "$log" | grep -o '[0-9]*$' | tail -1)
  cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1 | grep -o '[0-9]*$' || echo 0)
  secs=$(( (end - start) / 1000000 ))e-3
  corpus=$(ls "fuzz/corpus/$t" | wc -l)
  printf 'fuzz.sh: %-10s %10s execs in %7.1f s, peak RSS %s MB, coverage %s edges, corpus %s, no crash\n' \
    "$t" "$execs" "$secs" "$rss" "$cov" "$corpus" >&2
  results+=("{\"target\": \"$t\", \"execs\": $execs, \"seconds\": $secs, \"peak_rss_mb\": $rss, \"coverage_edges\": ${cov:-0}, \"corpus\": $corpus}")
  rm -f "$log"
done
(IFS=,; echo "[${results[*]}]") > bench-out/fuzz.json
echo "fuzz.sh: all targets clean; bench-out/fuzz.json" >&2
