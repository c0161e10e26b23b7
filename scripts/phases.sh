# Phase timing for .ci/run and scripts/test.sh (sourced, not run).
#   phase NAME CMD...   runs CMD, prints "phase: NAME ... N s" and appends to $FERROLABEL_PHASES
#   phase_summary       prints every recorded phase and the total since the first one
# The log is shared with child scripts through FERROLABEL_PHASES, so .ci/run's summary includes
# the phases that scripts/test.sh times.
if [ -z "${FERROLABEL_PHASES:-}" ]; then
  FERROLABEL_PHASES="$(mktemp -t ferrolabel-phases.XXXXXX)"
  export FERROLABEL_PHASES
  date +%s >"$FERROLABEL_PHASES.start"
fi

phase() {
  local name="$1"
  shift
  local t0 t1 rc=0
  t0=$(date +%s)
  echo "phase: $name ..." >&2
  "$@" || rc=$?
  t1=$(date +%s)
  printf '%s\t%d\t%s\n' "$name" "$((t1 - t0))" "$([ $rc -eq 0 ] && echo ok || echo "FAILED ($rc)")" >>"$FERROLABEL_PHASES"
  printf 'phase: %s: %d s%s\n' "$name" "$((t1 - t0))" "$([ $rc -eq 0 ] || echo " FAILED (exit $rc)")" >&2
  return $rc
}

phase_summary() {
  local start now
  start=$(cat "$FERROLABEL_PHASES.start" 2>/dev/null || date +%s)
  now=$(date +%s)
  {
    echo "---- phase times ----"
    awk -F'\t' '{ printf "%-72s %6d s  %s\n", $1, $2, $3 }' "$FERROLABEL_PHASES"
    printf '%-72s %6d s  (%d min %d s)\n' "total (wall clock)" "$((now - start))" "$(((now - start) / 60))" "$(((now - start) % 60))"
  } >&2
}
