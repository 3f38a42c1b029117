#!/usr/bin/env bash
# The library's public API against the checked-in listing `engine/public-api.txt`.
#
#   bash ci/public-api.sh            # fail on a difference, printing it
#   bash ci/public-api.sh --write    # regenerate the listing after a deliberate API change
#
# Until a release exists for `cargo semver-checks` to compare against, this is the check: every
# change to what embedders can name shows as a diff of this file, reviewed with its CHANGELOG
# line. The listing comes from rustdoc's JSON output (unstable on a stable toolchain, hence
# RUSTC_BOOTSTRAP, as cargo semver-checks does too). A toolchain whose JSON format differs from
# the listing's skips the comparison with a note instead of failing on spelling differences.
set -euo pipefail
cd "$(dirname "$0")/.."
target="${CARGO_TARGET_DIR:-target}"
RUSTC_BOOTSTRAP=1 RUSTDOCFLAGS="-Z unstable-options --output-format json" \
    cargo doc --quiet --no-deps -p blobcask
now="$(mktemp)"
python3 ci/public_api.py "$target/doc/blobcask.json" >"$now"
if [ "${1:-}" = --write ]; then
    mv "$now" engine/public-api.txt
    echo "wrote engine/public-api.txt ($(wc -l <engine/public-api.txt) lines)"
    exit 0
fi
format_of() { head -1 "$1" | grep -o 'JSON format [0-9]*' || true; }
if [ "$(format_of "$now")" != "$(format_of engine/public-api.txt)" ]; then
    echo "note: rustdoc JSON format differs from the listing's; not compared"
    echo "  listing: $(head -1 engine/public-api.txt)"
    echo "  now:     $(head -1 "$now")"
    exit 0
fi
if ! diff -u engine/public-api.txt "$now"; then
    echo "the public API changed: if deliberate, run 'bash ci/public-api.sh --write'" \
        "and add a CHANGELOG line" >&2
    exit 1
fi
echo "public API unchanged ($(($(wc -l <"$now") - 1)) items)"
