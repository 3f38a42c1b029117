#!/usr/bin/env bash
# Nightly torture tier: the crash, fault and fuzz-corpus suites of `tests/` at 100x the
# default case counts, on a fresh seed base (printed; replay a failure with the SEED it prints,
# or the whole run with TORTURE_BASE=<base>).
#
#   ci/torture.sh                 # TORTURE_SCALE=100, random base
#   TORTURE_SCALE=10 ci/torture.sh
#   TORTURE_BASE=0x1234 ci/torture.sh
set -euo pipefail
cd "$(dirname "$0")/.."

export TORTURE_SCALE="${TORTURE_SCALE:-100}"
export TORTURE_BASE="${TORTURE_BASE:-$(od -An -N8 -tu8 /dev/urandom | tr -d ' ')}"
echo "torture: TORTURE_SCALE=$TORTURE_SCALE TORTURE_BASE=$TORTURE_BASE"

suites=(crash_blobstore crash_grow crash_sweep crash_random crash_compound fault_io fault_bitflip
        fault_full process_kill fuzz_corpus)
args=()
for s in "${suites[@]}"; do args+=(--test "$s"); done
log="$(mktemp)"
status=0
# Faster code for the long tier; debug assertions (overflow checks) stay on.
CARGO_PROFILE_TEST_OPT_LEVEL="${CARGO_PROFILE_TEST_OPT_LEVEL:-2}" \
    cargo test -p blobcask-tests "${args[@]}" --no-fail-fast -- --nocapture >"$log" 2>&1 || status=$?
grep -E 'cases|kills|FAILED|replay|SEED=|panicked|test result' "$log" || true
if [ "$status" -ne 0 ]; then
    echo "torture: FAILED (TORTURE_BASE=$TORTURE_BASE; full log in $log)"
    exit "$status"
fi
echo "torture: OK"
