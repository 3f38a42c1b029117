#!/usr/bin/env bash
# Run blobcask and its peers over the same db_bench workloads in one go, then write a
# Markdown table of ratios (blobcask / peer) to $OUT (default benches/RESULTS.md).
#
#   benches/compare.sh                       # blobcask + rocksdb, 1M keys
#   ENGINES="blobcask rocksdb sled fjall redb" NUM=2000000 benches/compare.sh
#   PHASES="write hot" benches/compare.sh    # a subset
#
# Knobs (environment): ENGINES, NUM, PHASES (write hot direct fillseq4k sync keydir),
# READ_THREADS (1), READS (NUM), DIRECT_READS (NUM/10), SYNC_WRITES (20000), SYNC_THREADS (8), KEYDIR_NUM (NUM),
# HOT_CACHE (4G), WORK (a scratch dir on the file system to measure; default under /tmp),
# OUT, EXTRA (flags added to every run), CARGO_TARGET_DIR.
# Peers need the bench crate's features; this script builds with the ones ENGINES names.
# Phases interleave engines (phase by phase), so drift on a shared machine hits all alike.
set -euo pipefail
cd "$(dirname "$0")/.."

ENGINES=${ENGINES:-"blobcask rocksdb"}
NUM=${NUM:-1000000}
PHASES=${PHASES:-"write hot direct fillseq4k sync keydir"}
READ_THREADS=${READ_THREADS:-1}
READS=${READS:-$NUM}
DIRECT_READS=${DIRECT_READS:-$((NUM / 10))}
SYNC_WRITES=${SYNC_WRITES:-20000}
SYNC_THREADS=${SYNC_THREADS:-8}
KEYDIR_NUM=${KEYDIR_NUM:-$NUM}
HOT_CACHE=${HOT_CACHE:-4G}
OUT=${OUT:-benches/RESULTS.md}
EXTRA=${EXTRA:-}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$PWD/target}

features=()
for e in $ENGINES; do
  case $e in
    blobcask) ;;
    rocksdb|sled|fjall|redb) features+=("$e") ;;
    *) echo "unknown engine $e" >&2; exit 2 ;;
  esac
done
feat=$(IFS=,; echo "${features[*]:-}")
# RocksDB is the bundled build; a system library (ROCKSDB_LIB_DIR) is not the baseline.
unset ROCKSDB_LIB_DIR ROCKSDB_STATIC
echo "== build (features: ${feat:-none})" >&2
cargo build -q -p blobcask-bench --release ${feat:+--features "$feat"}
BIN=$CARGO_TARGET_DIR/release/db_bench

WORK=${WORK:-$(mktemp -d "${TMPDIR:-/tmp}/blobcask-compare.XXXXXX")}
mkdir -p "$WORK/json"
LOG=$WORK/log.txt
echo "== scratch: $WORK (log: $LOG)" >&2

# run PHASE LABEL ENGINE FLAGS...
run() {
  local phase=$1 label=$2 engine=$3
  shift 3
  local db=$WORK/db.$label
  rm -rf "$db"
  echo "== $phase / $label: --engine=$engine $*" | tee -a "$LOG" >&2
  # shellcheck disable=SC2086
  "$BIN" --engine="$engine" --db="$db" --seed=301 --quiet \
    --json="$WORK/json/$phase.$label.json" "$@" $EXTRA | tee -a "$LOG"
  rm -rf "$db"
}

for phase in $PHASES; do
  for e in $ENGINES; do
    case $phase in
      write)
        # fillrandom and overwrite, 100-byte values, no sync.
        run write "$e" "$e" --benchmarks=fillrandom,overwrite --num="$NUM" --reopen=0 ;;
      hot)
        # Everything cacheable: RocksDB block cache + page cache, blobcask's read cache. The
        # first two readrandom passes warm the caches (95 % of the keys seen); the third
        # ("readrandom #3") is the hot rate.
        run hot "$e" "$e" --benchmarks=fillseq,readrandom,readrandom,readrandom --num="$NUM" \
          --reads="$READS" --cache_size="$HOT_CACHE" --threads="$READ_THREADS" --reopen=0 ;;
      direct)
        # No caching: RocksDB direct reads + a tiny block cache; blobcask cache off.
        case $e in
          blobcask) run direct "$e" "$e" --benchmarks=rawdevice,fillseq,readrandom \
                      --num="$NUM" --reads="$DIRECT_READS" --cache_size=0 --threads="$READ_THREADS" --reopen=0 ;;
          rocksdb) run direct "$e" "$e" --benchmarks=fillseq,readrandom --num="$NUM" \
                      --reads="$DIRECT_READS" --use_direct_reads=1 --cache_size=1M --threads="$READ_THREADS" \
                      --reopen=0 ;;
          *) run direct "$e" "$e" --benchmarks=fillseq,readrandom --num="$NUM" \
                      --reads="$DIRECT_READS" --cache_size=1M --threads="$READ_THREADS" --reopen=0 ;;
        esac ;;
      fillseq4k)
        # 4 KiB values against the device's sequential write bandwidth.
        extra=()
        [ "$e" = blobcask ] && extra=(--benchmarks=rawdevice,fillseq) || extra=(--benchmarks=fillseq)
        run fillseq4k "$e" "$e" "${extra[@]}" --value_size=4096 --num=$((NUM / 10)) --reopen=0 ;;
      sync)
        # Durable overwrites, 1 thread vs SYNC_THREADS threads.
        for t in 1 "$SYNC_THREADS"; do
          run sync "$e-t$t" "$e" --benchmarks=overwrite --sync=1 --threads="$t" \
            --num=100000 --writes="$SYNC_WRITES" --reopen=0
        done ;;
      keydir)
        # Memory per key and reopen (recovery) time of a loaded store.
        run keydir "$e" "$e" --benchmarks=fillrandom,stats --num="$KEYDIR_NUM" --reopen=1 ;;
      *) echo "unknown phase $phase" >&2; exit 2 ;;
    esac
  done
done

{
  echo "# blobcask vs peers ($(date -u +%Y-%m-%dT%H:%MZ))"
  echo
  echo "One run of \`benches/compare.sh\` on $(nproc) cores: ENGINES=\"$ENGINES\" NUM=$NUM"
  echo "PHASES=\"$PHASES\" READ_THREADS=$READ_THREADS READS=$READS DIRECT_READS=$DIRECT_READS"
  echo "SYNC_WRITES=$SYNC_WRITES EXTRA=\"$EXTRA\". Ratios are"
  echo "blobcask / peer of ops/sec (above 1 = blobcask faster)."
  echo
  "$BIN" --compare="$WORK/json"
} > "$OUT"
echo "== wrote $OUT" >&2
