#!/usr/bin/env bash
# Run fuzz targets with libFuzzer: `fuzz/run.sh SECONDS [TARGET...]` (default: all targets).
# New inputs go to fuzz/corpus-work/TARGET (not checked in); the checked-in seeds in
# fuzz/corpus/TARGET are read. Needs a nightly toolchain and `cargo install cargo-fuzz`.
# Exits non-zero on the first target that crashes; the input is in fuzz/artifacts/TARGET/.
set -euo pipefail
cd "$(dirname "$0")"
secs=${1:?usage: fuzz/run.sh SECONDS [TARGET...]}
shift
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(http_framing resp_framing pool_header ring_core wal_recovery)
toolchain=+nightly
for t in "${targets[@]}"; do
  mkdir -p "corpus-work/$t"
  echo "== fuzz $t for ${secs}s"
  log=$(mktemp)
  status=0
  cargo $toolchain fuzz run "$t" "corpus-work/$t" "corpus/$t" -- \
    -max_total_time="$secs" -print_final_stats=1 -rss_limit_mb=4096 >"$log" 2>&1 || status=$?
  # libFuzzer's progress lines are noise here; keep the totals and any failure.
  grep -E "^(Done|stat::number_of_executed_units|stat::peak_rss_mb)|panicked|SUMMARY|ERROR|^error" "$log" || true
  if [ "$status" -ne 0 ]; then
    tail -n 40 "$log"
    echo "fuzz target $t failed (exit $status)"
    exit 1
  fi
  rm -f "$log"
done
