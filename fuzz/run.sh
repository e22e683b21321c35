#!/usr/bin/env bash
# Runs every fuzz target for SECONDS seconds each (default 60), one after the other, and prints
# per target how long it ran, how many inputs it executed and whether it found anything.
#
#   fuzz/run.sh [SECONDS] [TARGET...]
#
# Works on the stable toolchain (`cargo fuzz run -s none`); installs cargo-fuzz when missing.
# The seed corpus in fuzz/corpus/<target>/ is only read: new inputs go to fuzz/work/ (or
# $FUZZ_WORK), crashes to fuzz/artifacts/<target>/. $FUZZ_TARGET_DIR sets the build directory
# (default fuzz/target). Exits non-zero when a target found something.
set -euo pipefail

seconds="${1:-60}"
shift || true
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$here"
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    targets=(marker request sse response)
fi
work="${FUZZ_WORK:-$here/work}"
target_dir="${FUZZ_TARGET_DIR:-$here/target}"

if ! cargo fuzz --version >/dev/null 2>&1; then
    cargo install cargo-fuzz --locked
fi

# One build for every target, so that the time limits measure fuzzing only.
cargo fuzz build -s none --target-dir "$target_dir"

failed=0
summary=()
for target in "${targets[@]}"; do
    mkdir -p "$work/corpus/$target" "$work/logs" "$here/artifacts/$target"
    log="$work/logs/$target.log"
    start=$(date +%s)
    status=0
    # The first corpus directory receives new inputs; the seeds are read from the second.
    cargo fuzz run -s none --target-dir "$target_dir" "$target" \
        "$work/corpus/$target" "$here/corpus/$target" -- \
        -max_total_time="$seconds" -print_final_stats=1 -timeout=30 -rss_limit_mb=4096 \
        >"$log" 2>&1 || status=$?
    elapsed=$(( $(date +%s) - start ))
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
    crash=$(grep -o 'Test unit written to [^ ]*' "$log" | tail -n 1 | sed 's/Test unit written to //' || true)
    if [ "$status" -eq 0 ]; then
        result="no finding"
    else
        failed=1
        reason=$(grep -m 1 -A 1 "panicked at" "$log" | tail -n 1 | cut -c 1-300 || true)
        reason=${reason:-$(grep -m 1 -E "ERROR: libFuzzer|deadly signal" "$log" || true)}
        result="FOUND: ${crash:-see $log} (${reason:-exit $status})"
    fi
    line="$target: ran ${elapsed}s, ${runs:-?} executions, $result"
    echo "$line"
    summary+=("$line")
done

echo
echo "summary (log per target in $work/logs):"
printf '  %s\n' "${summary[@]}"
exit "$failed"
