#!/usr/bin/env bash
# The test command of the README: formatting, lints and every test of the workspace; then,
# when SPDK can be had (ci/spdk-env.sh), lints and every test again with `--features spdk`,
# where the SPDK suites must really run: BLOBCASK_REQUIRE_SPDK makes a suite that cannot
# start SPDK fail instead of printing `skipped`, and a `skipped` line fails the run too.
#
#   bash ci/test.sh                          # SPDK from PKG_CONFIG_PATH or ../shared/spdk
#   BLOBCASK_SPDK=off bash ci/test.sh        # without SPDK
#   BLOBCASK_SPDK=required bash ci/test.sh   # fail when no SPDK can be found
#
# Each `cargo test` writes its whole output to a log (its path is printed); the console gets
# the result of every test binary, the failures, and the totals.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=ci/spdk-env.sh
. ci/spdk-env.sh

logs="$(mktemp -d "${TMPDIR:-/tmp}/blobcask-ci.XXXXXX")"
passed=0
failed=0
section() { printf '\n==== %s (%s)\n' "$1" "$(date -u +%H:%M:%S)"; }

# `run_tests NAME ARGS...`: cargo test ARGS with the output in $logs/NAME.log.
run_tests() {
    local name=$1 status=0 counts
    shift
    echo "cargo test $* (log: $logs/$name.log)"
    cargo test "$@" >"$logs/$name.log" 2>&1 || status=$?
    # One line per test binary: its name and its result.
    awk '/^ *Running /  { bin = $NF; gsub(/[()]/, "", bin); sub(/.*\//, "", bin)
                          sub(/-[0-9a-f]+$/, "", bin); if ($2 == "unittests") bin = bin " (unit)" }
         /^ *Doc-tests / { bin = "doc-tests " $2 }
         /^test result:/ { sub(/; finished in.*/, ""); printf "  %-40s %s\n", bin, $0 }' \
        "$logs/$name.log"
    grep -E '^---- |panicked at|^error(\[|:)' "$logs/$name.log" | head -40 || true
    counts=$(awk '/^test result:/ { for (i = 1; i < NF; i++) {
                    if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
                  END { printf "%d %d", p, f }' "$logs/$name.log")
    passed=$((passed + ${counts% *}))
    failed=$((failed + ${counts#* }))
    echo "$name: ${counts% *} passed, ${counts#* } failed"
    if [ "$status" -ne 0 ]; then
        tail -40 "$logs/$name.log"
        echo "$name: cargo test failed (exit $status)"
        echo "total: $passed passed, $failed failed"
        exit "$status"
    fi
}

section "fmt"
cargo fmt --all -- --check
echo "formatted"

section "SPDK"
find_spdk "$PWD"
if [ -z "$SPDK_PREFIX_PC" ]; then
    echo "SPDK suites will be skipped: $SPDK_WHY_NOT"
    if [ "${BLOBCASK_SPDK:-auto}" = required ]; then
        echo "BLOBCASK_SPDK=required" >&2
        exit 1
    fi
fi

section "clippy (default features)"
cargo clippy --quiet --workspace --all-targets -- -D warnings
echo "no warnings"

section "docs"
RUSTDOCFLAGS="-D warnings" cargo doc --quiet --no-deps -p blobcask -p blobcask-capi -p blobcask-raft
echo "no warnings"

section "public API"
bash ci/public-api.sh

section "library alone"
# An embedder's build: the library (default features) has none of the tool's dependencies.
cargo clippy --quiet -p blobcask --all-targets -- -D warnings
if cargo tree -p blobcask -e normal --prefix none |
    grep -E '^(clap|indicatif|rustyline|serde_json|sha2|hex) '; then
    echo "the library pulls in the tool's dependencies" >&2
    exit 1
fi
echo "no tool dependencies"

section "package"
# The library crates as they would be published (each is built from its packaged files).
cargo package --quiet -p spdk-sys -p ffi-shim -p blobcask -p blobcask-cli
echo "packaged"

section "tests (default features)"
run_tests default --workspace

if [ -z "$SPDK_PREFIX_PC" ]; then
    section "SPDK suites: skipped"
    echo "why: $SPDK_WHY_NOT"
    # What the suites themselves print (they pass as skipped; already built above).
    cargo test -q -p blobcask-tests --test spdk_backend --test spdk_engine --test spdk_interop \
        -- --nocapture 2>&1 | grep -oE 'skipped: .*' | sort | uniq -c || true
    echo "total: $passed passed, $failed failed"
    exit 0
fi

section "clippy (--features spdk)"
cargo clippy --quiet --workspace --all-targets --features spdk -- -D warnings
echo "no warnings"

section "tests (--features spdk)"
export BLOBCASK_REQUIRE_SPDK=1
run_tests spdk-workspace --workspace --exclude blobcask-tests --features spdk
# The suites crate with its output, so that a `skipped` line shows.
run_tests spdk-suites -p blobcask-tests --features spdk -- --nocapture
if grep -E 'skipped: ' "$logs/spdk-suites.log"; then
    echo "SPDK was built, yet a suite printed \`skipped\`" >&2
    echo "total: $passed passed, $((failed + 1)) failed"
    exit 1
fi
echo "total: $passed passed, $failed failed"
