#!/usr/bin/env bash
# Issue 17's chunk table: every line runs the chunk store and its baselines side by side
# (`chunk_bench`), with the machine's load before each line. DIR must be on a local file system.
set -euo pipefail
DIR=${DIR:-/tmp/cb17}
B=${B:-${CARGO_TARGET_DIR:-target}/release/chunk_bench}  # cargo build --release -p blobcask-bench --bin chunk_bench
mkdir -p "$DIR"
line() {
    echo "# $(date -u +%H:%M:%S) $(uptime | sed 's/.*load/load/') :: $*"
    "$B" --dir "$DIR" "$@" | tail -n +3
}
line --rw randwrite --bs 4K --chunk-size 1M --chunks 16 --threads 1 --sync --ops 2000
line --rw randwrite --bs 4K --chunk-size 1M --chunks 16 --threads 1 --sync --ops 2000 --fresh
line --rw randwrite --bs 4K --chunk-size 1M --chunks 16 --threads 4 --sync --ops 4000
line --rw randwrite --bs 4K --chunk-size 1M --chunks 16 --threads 4 --sync --ops 4000 --fresh
line --rw randwrite --bs 64K --chunk-size 16M --chunks 4 --threads 1 --sync --ops 500
line --rw randwrite --bs 4K --chunk-size 1M --chunks 16 --threads 1 --ops 5000
line --rw randread --bs 4K --chunk-size 64M --chunks 2 --threads 1 --ops 5000 --engines chunk,raw,odirect
line --rw write --bs 1M --chunk-size 64M --chunks 16 --threads 1 --ops 1024 --engines chunk,raw,odirect
line --rw write --bs 1M --chunk-size 64M --chunks 16 --threads 1 --ops 1024 --engines chunk --chunk-copy
rm -rf "$DIR"
