# Reads `cargo test` output; prints each test binary's own time ("finished in") and counts, and
# appends them to the phase log given as -v phases=FILE (tab-separated, like scripts/phases.sh).
/^ *Running / {
  name = $0
  sub(/^ *Running /, "", name)
  bin = name
  sub(/.*deps\//, "", bin); sub(/-[0-9a-f]+\)$/, "", bin)
  sub(/ \(.*$/, "", name)
  cur = bin ": " name
}
/^ *Doc-tests / { cur = "doc-tests " $2 }
/^test result: / {
  secs = $0; sub(/.*finished in /, "", secs); sub(/s$/, "", secs)
  passed = $0; sub(/.*ok\. |.*FAILED\. /, "", passed); sub(/ passed.*/, "", passed)
  if (cur ~ /^doc-tests / && passed == 0) next
  printf "  %-60s %8.1f s  %s passed\n", cur, secs, passed
  if (phases != "") printf "  cargo test %s\t%d\t%s passed\n", cur, secs + 0.5, passed >> phases
}
