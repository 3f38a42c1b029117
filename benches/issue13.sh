#!/usr/bin/env bash
# Issue 13's table from one run: blobcask and its peers over the same db_bench workloads, the
# raw device in the same run, every figure beside RocksDB's (ratio = engine / RocksDB).
#
#   benches/issue13.sh                      # 1 M keys x 100 B values (the issue's size)
#   benches/issue13.sh --num=100000         # a tenth (or NUM=100000)
#   ENGINES="blobcask rocksdb" benches/issue13.sh
#
# Knobs (environment): NUM (1000000), ENGINES ("blobcask rocksdb redb fjall sled"),
# READS (NUM: reads of each read benchmark), SYNC_WRITES (4000), SYNC_THREADS (8),
# BIG_CACHE (1G), RAW_BYTES (1G: region of the raw-device figures), RAW_OPS (20000),
# WORK (scratch directory, default under /tmp, on the file system measured), OUT (the table,
# default $WORK/table.md; also printed), CARGO_TARGET_DIR.
#
# Phases, each engine in turn (so drift on a shared machine hits all alike):
#   defaults  fillrandom, readrandom right after it, overwrite, readmissing, reopen
#   cache     fillrandom, then readrandom with every store given the same BIG_CACHE cache
#   raw       the raw image: 4 KiB O_DIRECT io_uring random reads at QD 1 and 32
#   big       data 4x the cache: --cache_size = NUM x (key + value) / 4 for every store;
#             fillrandom, readrandom, multireadrandom (--batch_size=32), then the store is
#             reopened for readrandom with 1 thread and again with 2 threads
#   sync      overwrite --sync=1 of SYNC_WRITES keys over NUM/10, 1 thread and SYNC_THREADS
set -euo pipefail
cd "$(dirname "$0")/.."

for a in "$@"; do
  case $a in
    --num=*) NUM=${a#--num=} ;;
    *) echo "usage: $0 [--num=N]" >&2; exit 2 ;;
  esac
done
NUM=${NUM:-1000000}
ENGINES=${ENGINES:-"blobcask rocksdb redb fjall sled"}
READS=${READS:-$NUM}
SYNC_WRITES=${SYNC_WRITES:-4000}
SYNC_THREADS=${SYNC_THREADS:-8}
BIG_CACHE=${BIG_CACHE:-1G}
RAW_BYTES=${RAW_BYTES:-1G}
RAW_OPS=${RAW_OPS:-20000}
KEY_SIZE=16
VALUE_SIZE=100
# A quarter of the user bytes: blobcask caches 4 KiB log pages (records with their headers,
# + 64 B per page), so less than a quarter of its log fits.
SMALL_CACHE=$((NUM * (KEY_SIZE + VALUE_SIZE) / 4))
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$PWD/target}
command -v jq >/dev/null || { echo "issue13.sh needs jq" >&2; exit 2; }

features=()
for e in $ENGINES; do
  case $e in
    blobcask) ;;
    rocksdb|sled|fjall|redb) features+=("$e") ;;
    *) echo "unknown engine $e" >&2; exit 2 ;;
  esac
done
case " $ENGINES " in *" blobcask "*) ;; *) echo "ENGINES must include blobcask" >&2; exit 2 ;; esac
feat=$(IFS=,; echo "${features[*]:-}")
# RocksDB is the bundled build of the `rocksdb` crate, never a system library.
unset ROCKSDB_LIB_DIR ROCKSDB_STATIC
echo "== build (features: ${feat:-none})" >&2
cargo build -q -p blobcask-bench --release --bin db_bench ${feat:+--features "$feat"}
BIN=$CARGO_TARGET_DIR/release/db_bench

WORK=${WORK:-$(mktemp -d "${TMPDIR:-/tmp}/blobcask-issue13.XXXXXX")}
OUT=${OUT:-$WORK/table.md}
mkdir -p "$WORK/json"
LOG=$WORK/log.txt
echo "== scratch: $WORK (log: $LOG)" >&2
t_start=$(date +%s)

# run PHASE ENGINE KEEP FLAGS...: one db_bench invocation on $WORK/db.ENGINE with --num=NUM
# (RUN_NUM if set); KEEP=1 leaves the store for the next invocation, else it is removed after.
run() {
  local phase=$1 engine=$2 keep=$3
  shift 3
  local db=$WORK/db.$engine
  echo "== $phase / $engine: $*" | tee -a "$LOG" >&2
  # A failed invocation leaves its cells empty ("–") and the run goes on.
  "$BIN" --engine="$engine" --db="$db" --seed=1313 --quiet --reopen=0 \
    --key_size=$KEY_SIZE --value_size=$VALUE_SIZE --num="${RUN_NUM:-$NUM}" \
    --json="$WORK/json/$phase.$engine.json" "$@" >>"$LOG" 2>&1 ||
    echo "!! $phase / $engine failed (see $LOG)" | tee -a "$LOG" >&2
  [ "$keep" = 1 ] || rm -rf "$db"
}

for e in $ENGINES; do
  rm -rf "$WORK/db.$e"
  run defaults "$e" 0 --benchmarks=fillrandom,readrandom,overwrite,readmissing,reopen \
    --reads="$READS"
done
for e in $ENGINES; do
  run cache "$e" 0 --benchmarks=fillrandom,readrandom --reads="$READS" --cache_size="$BIG_CACHE"
done
run raw blobcask 0 --benchmarks=rawread --raw_bytes="$RAW_BYTES" --raw_ops="$RAW_OPS"
for e in $ENGINES; do
  run big "$e" 1 --benchmarks=fillrandom,readrandom,multireadrandom --batch_size=32 \
    --reads="$READS" --cache_size="$SMALL_CACHE"
  run big-t1 "$e" 1 --use_existing_db --benchmarks=readrandom --threads=1 --reads="$READS" \
    --cache_size="$SMALL_CACHE"
  run big-t2 "$e" 0 --use_existing_db --benchmarks=readrandom --threads=2 --reads="$READS" \
    --cache_size="$SMALL_CACHE"
done
for e in $ENGINES; do
  for t in 1 "$SYNC_THREADS"; do
    RUN_NUM=$((NUM / 10)) run "sync-t$t" "$e" 0 --benchmarks=overwrite --sync=1 --threads="$t" \
      --writes="$SYNC_WRITES"
  done
done
secs=$(($(date +%s) - t_start))

# ---- the table -------------------------------------------------------------------------

# ops PHASE ENGINE BENCH: ops/sec of BENCH in PHASE (empty when absent).
ops() {
  jq -r --arg b "$3" '[.results[] | select(.name == $b) | .ops_per_sec][0] // empty' \
    "$WORK/json/$1.$2.json" 2>/dev/null || true
}
reopen_s() {
  jq -r '.summary.reopen_seconds // empty' "$WORK/json/$1.$2.json" 2>/dev/null || true
}
rawf() {
  jq -r --arg n "$1" '[.raw[] | select(.name == $n) | .raw][0] // empty' \
    "$WORK/json/raw.blobcask.json" 2>/dev/null || true
}
# human N: 1234567 -> 1.23M, 12345 -> 12.3k
human() {
  awk -v x="$1" 'BEGIN { if (x >= 1e6) printf "%.2fM", x / 1e6; else if (x >= 1e4) printf "%.1fk", x / 1e3;
    else if (x >= 100) printf "%.0f", x; else printf "%.3g", x }'
}
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2fx", a / b; else print "–" }'; }

has_rocks=0
case " $ENGINES " in *" rocksdb "*) has_rocks=1 ;; esac

# row LABEL KIND ARGS: KIND=ops (PHASE BENCH), reopen (PHASE), div (PHASE_A BENCH_A PHASE_B
# BENCH_B: A / B per engine).
row() {
  local label=$1 kind=$2
  shift 2
  local line="| $label |" base=""
  if [ $has_rocks = 1 ]; then base=$(value "$kind" rocksdb "$@") || true; fi
  for e in $ENGINES; do
    local v
    v=$(value "$kind" "$e" "$@") || true
    if [ -z "$v" ]; then
      line+=" – |"
    elif [ "$kind" = div ]; then
      line+=" $(awk -v x="$v" 'BEGIN { printf "%.2fx", x }') |"
    elif [ "$kind" = reopen ]; then
      # Time: the ratio is RocksDB's time over the engine's (above 1 = faster).
      line+=" $(awk -v x="$v" 'BEGIN { printf "%.3f s", x }')"
      [ -n "$base" ] && [ "$e" != rocksdb ] && line+=" ($(ratio "$base" "$v"))"
      line+=" |"
    else
      line+=" $(human "$v")"
      [ -n "$base" ] && [ "$e" != rocksdb ] && line+=" ($(ratio "$v" "$base"))"
      line+=" |"
    fi
  done
  echo "$line"
}
value() {
  local kind=$1 e=$2
  shift 2
  case $kind in
    ops) ops "$1" "$e" "$2" ;;
    reopen) reopen_s "$1" "$e" ;;
    div)
      local a b
      a=$(ops "$1" "$e" "$2")
      b=$(ops "$3" "$e" "$4")
      if [ -n "$a" ] && [ -n "$b" ]; then
        awk -v a="$a" -v b="$b" 'BEGIN { if (b > 0) print a / b }'
      fi
      ;;
  esac
}

qd1=$(rawf "randread 4K QD1")
qd32=$(rawf "randread 4K QD32")
mrr=$(ops big blobcask multireadrandom)
{
  echo "# Issue 13: blobcask vs peers, one run ($(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores)"
  echo
  echo "\`NUM=$NUM ENGINES=\"$ENGINES\" benches/issue13.sh\`: keys $KEY_SIZE B, values $VALUE_SIZE B"
  echo "(random), 1 thread unless stated, ops/sec; (ratio) = engine / RocksDB (for reopen:"
  echo "RocksDB's time / the engine's). Reads: $READS per benchmark. Run time: ${secs} s."
  echo
  printf '| workload |'; for e in $ENGINES; do printf ' %s |' "$e"; done; echo
  printf '|---|'; for _ in $ENGINES; do printf -- '---:|'; done; echo
  row "fillrandom" ops defaults fillrandom
  row "overwrite" ops defaults overwrite
  row "readrandom right after fillrandom (defaults)" ops defaults readrandom
  row "readrandom, every store given a $BIG_CACHE cache" ops cache readrandom
  row "readmissing" ops defaults readmissing
  row "reopen of $NUM keys" reopen defaults
  row "readrandom, data 4x the cache" ops big readrandom
  row "multireadrandom (batch 32), data 4x the cache" ops big multireadrandom
  row "readrandom 1 thread, data 4x the cache (reopened)" ops big-t1 readrandom
  row "readrandom 2 threads, data 4x the cache (reopened)" ops big-t2 readrandom
  row "readrandom 2 threads / 1 thread" div big-t2 readrandom big-t1 readrandom
  row "overwrite --sync=1, 1 thread" ops sync-t1 overwrite
  row "overwrite --sync=1, $SYNC_THREADS threads" ops "sync-t$SYNC_THREADS" overwrite
  row "synced overwrite $SYNC_THREADS threads / 1 thread" div "sync-t$SYNC_THREADS" overwrite sync-t1 overwrite
  echo
  echo "Raw device, same run (the image's file system, 4 KiB random reads, O_DIRECT, io_uring,"
  echo "over $RAW_BYTES written first): QD1 $(human "${qd1:-0}") IOPS, QD32 $(human "${qd32:-0}") IOPS."
  if [ -n "$mrr" ] && [ -n "$qd32" ]; then
    echo "blobcask multireadrandom (batch 32, 1 thread) / raw QD32 = $(awk -v a="$mrr" -v b="$qd32" \
      'BEGIN { printf "%.2f", a / b }') (target ≥ 0.80)."
  fi
  echo
  echo "\"Data 4x the cache\": every store's cache is NUM x (key + value) / 4 = $SMALL_CACHE bytes."
  echo "blobcask caches 4 KiB pages of its log (records with headers, + 64 B a page), so less"
  echo "than a quarter of its log fits and its reads past it go to the device; the peers read"
  echo "files through the OS page cache, which this run does not limit."
} | tee "$OUT"
echo "== wrote $OUT; log $LOG; ${secs} s" >&2
