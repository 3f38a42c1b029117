#!/usr/bin/env bash
# The test command of the README: formatting, lints, then every test of the workspace.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
cargo test --workspace
# Say why the SPDK suites did nothing (they pass as skipped without SPDK); already built above.
cargo test -q -p blobcask-tests --test spdk_backend --test spdk_engine -- --nocapture 2>&1 | grep -E "^skipped|test result"
