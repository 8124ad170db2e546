#!/usr/bin/env bash
# The fuzz smoke of the test suite: builds every fuzz target and runs each for a short
# time (CHORUS_FUZZ_SMOKE_SECS, 15 s by default) from its seeds and corpus, failing on the
# first crash, leak, timeout or out-of-memory. One job at a time.
#
# Where no nightly toolchain or cargo-fuzz can be installed it says so loudly and exits 0,
# unless CHORUS_FUZZ_REQUIRED=1, when it fails instead.
set -euo pipefail
FUZZ_DIR="$(cd "$(dirname "$0")" && pwd)"
cd "$FUZZ_DIR"
# shellcheck source=toolchain.sh
source ./toolchain.sh

SECS="${CHORUS_FUZZ_SMOKE_SECS:-15}"

if ! ensure_fuzz_tools; then
  [[ "${CHORUS_FUZZ_REQUIRED:-0}" == 1 ]] && exit 1
  exit 0
fi

echo "==> building the fuzz targets ($FUZZ_TOOLCHAIN, release + debug assertions, ASan)"
fuzz_build

mkdir -p logs
failed=()
for target in $(fuzz_targets); do
  mkdir -p "corpus/$target"
  # shellcheck disable=SC2046 # the seed list splits on purpose
  if cargo +"$FUZZ_TOOLCHAIN" fuzz run --fuzz-dir "$FUZZ_DIR" -O -a "$target" \
    "corpus/$target" $(fuzz_seeds "$target") -- \
    -max_total_time="$SECS" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
    >"logs/$target.smoke.log" 2>&1; then
    stats=$(grep -E '^stat::number_of_executed_units' "logs/$target.smoke.log" | awk '{print $2}')
    echo "ok      $target (${stats:-?} executions in ${SECS} s)"
  else
    echo "FAILED  $target: see fuzz/logs/$target.smoke.log and fuzz/artifacts/$target/"
    tail -40 "logs/$target.smoke.log"
    failed+=("$target")
  fi
done

if ((${#failed[@]})); then
  echo "fuzz smoke: ${#failed[@]} target(s) failed: ${failed[*]}" >&2
  exit 1
fi
echo "fuzz smoke: every target ran ${SECS} s without a finding"
