#!/usr/bin/env bash
# A fuzzing campaign: runs the named targets (all by default) one after another, one job
# each (the machine is shared), each until CHORUS_FUZZ_SECS seconds (600) or
# CHORUS_FUZZ_RUNS executions (10 million), whichever comes first. The corpus grows in
# fuzz/corpus/<target>/, findings land in fuzz/artifacts/<target>/, and each run's log (with
# libFuzzer's final stats) in fuzz/logs/. A summary line per target goes to stdout, for
# docs/reliability.md.
#
#   fuzz/run.sh                      every target, 10 minutes each
#   CHORUS_FUZZ_SECS=1800 fuzz/run.sh estimate rtcp_feedback
set -euo pipefail
FUZZ_DIR="$(cd "$(dirname "$0")" && pwd)"
cd "$FUZZ_DIR"
# shellcheck source=toolchain.sh
source ./toolchain.sh

SECS="${CHORUS_FUZZ_SECS:-600}"
RUNS="${CHORUS_FUZZ_RUNS:-10000000}"

ensure_fuzz_tools || exit 1
fuzz_build

targets=("$@")
((${#targets[@]})) || mapfile -t targets < <(fuzz_targets)
mkdir -p logs
status=0
for target in "${targets[@]}"; do
  mkdir -p "corpus/$target"
  log="logs/$target.$(date -u +%Y%m%dT%H%M%SZ).log"
  start=$(date +%s)
  # shellcheck disable=SC2046 # the seed list splits on purpose
  if cargo +"$FUZZ_TOOLCHAIN" fuzz run --fuzz-dir "$FUZZ_DIR" -O -a "$target" \
    "corpus/$target" $(fuzz_seeds "$target") -- \
    -max_total_time="$SECS" -runs="$RUNS" -timeout=10 -rss_limit_mb=2048 \
    -print_final_stats=1 >"$log" 2>&1; then
    result=ok
  else
    result=FINDING
    status=1
  fi
  secs=$(($(date +%s) - start))
  execs=$(awk '/^stat::number_of_executed_units/ {print $2}' "$log")
  rate=$(awk '/^stat::average_exec_per_sec/ {print $2}' "$log")
  cov=$(grep -oE 'cov: [0-9]+ ft: [0-9]+' "$log" | tail -1)
  units=$(find "corpus/$target" -type f | wc -l)
  echo "$target: $result, ${execs:-?} executions in ${secs} s (${rate:-?}/s), ${cov:-cov ?}, corpus $units, log fuzz/$log"
done
exit $status
