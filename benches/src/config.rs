//! Command-line flags, named and spelled as RocksDB's `db_bench` (`--flag=value`).

use std::path::PathBuf;

use clap::Parser;

/// Parse RocksDB-style booleans: `1`/`0`, `true`/`false`, `yes`/`no`.
fn parse_bool(s: &str) -> Result<bool, String> {
    match s.to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Ok(true),
        "0" | "false" | "no" | "off" => Ok(false),
        _ => Err(format!("expected 0/1 or true/false, got {s:?}")),
    }
}

/// Parse a byte size: plain bytes or with a K/M/G/T suffix (powers of 1024).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (num, mul) = match s.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let mul = match c.to_ascii_uppercase() {
                'K' => 1u64 << 10,
                'M' => 1 << 20,
                'G' => 1 << 30,
                'T' => 1 << 40,
                _ => return Err(format!("unknown size suffix in {s:?}")),
            };
            (&s[..i], mul)
        }
        _ => (s, 1),
    };
    let n: u64 = num
        .trim()
        .parse()
        .map_err(|e| format!("bad size {s:?}: {e}"))?;
    n.checked_mul(mul)
        .ok_or_else(|| format!("size {s:?} overflows"))
}

/// Which engine the workloads run on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum EngineKind {
    Blobcask,
    Rocksdb,
    Sled,
    Fjall,
    Redb,
    /// A sharded in-process hash map: the harness's own overhead.
    Hashmap,
}

impl EngineKind {
    pub fn name(self) -> &'static str {
        match self {
            EngineKind::Blobcask => "blobcask",
            EngineKind::Rocksdb => "rocksdb",
            EngineKind::Sled => "sled",
            EngineKind::Fjall => "fjall",
            EngineKind::Redb => "redb",
            EngineKind::Hashmap => "hashmap",
        }
    }
}

/// blobcask's storage backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// Pure-Rust blobstore over an O_DIRECT io_uring file or block device.
    Native,
    /// Real SPDK (needs the `spdk` feature).
    Spdk,
    /// A RAM device (no durability; reopen is skipped).
    Memory,
}

/// `db_bench` flags.
#[derive(Debug, Clone, Parser, serde::Serialize)]
#[command(
    name = "db_bench",
    version,
    about = "db_bench-compatible benchmark for blobcask and its peers",
    long_about = "Runs RocksDB db_bench workloads in order on one store. Benchmarks: fillseq, \
fillrandom, overwrite, readrandom, multireadrandom, readmissing, readseq, \
readrandomwriterandom, readwhilewriting, deleterandom, stats, reopen, merge (blobcask) / compact (peers), \
rawdevice (the device's own limits), rawread (its random-read IOPS at queue depth 1 and 32) \
and blobraw (blob layer vs raw device)."
)]
pub struct Config {
    /// Comma-separated list of benchmarks, run in order on the same store.
    #[arg(
        long = "benchmarks",
        default_value = "fillseq,fillrandom,overwrite,readrandom,readmissing,readseq,stats"
    )]
    pub benchmarks: String,
    /// Number of key/values in the database (the key space is [0, num)).
    #[arg(long = "num", default_value_t = 1_000_000)]
    pub num: u64,
    /// Number of reads (-1 = num). Split across the threads.
    #[arg(long = "reads", default_value_t = -1, allow_hyphen_values = true)]
    pub reads: i64,
    /// Number of writes of overwrite/deleterandom (-1 = num). Split across the threads.
    #[arg(long = "writes", default_value_t = -1, allow_hyphen_values = true)]
    pub writes: i64,
    /// Key size in bytes (keys are zero-padded decimal, as LevelDB's db_bench).
    #[arg(long = "key_size", default_value_t = 16)]
    pub key_size: usize,
    /// Value size in bytes (random, incompressible).
    #[arg(long = "value_size", default_value_t = 100)]
    pub value_size: usize,
    /// Number of concurrent client threads.
    #[arg(long = "threads", default_value_t = 1)]
    pub threads: usize,
    /// Percentage of reads in readrandomwriterandom.
    #[arg(long = "readwritepercent", default_value_t = 90)]
    pub readwritepercent: u32,
    /// 1 = every write is durable before it is acknowledged.
    #[arg(long = "sync", default_value = "0", value_parser = parse_bool, num_args = 0..=1, default_missing_value = "1")]
    pub sync: bool,
    /// blobcask with --sync=1: group-commit window in microseconds (-1 = the engine's
    /// default policy, 0 = `SyncPolicy::Always`: a flush per write, shared by queued writers).
    #[arg(long = "group_commit_us", default_value_t = -1, allow_hyphen_values = true)]
    pub group_commit_us: i64,
    /// Open the store at --db instead of creating it.
    #[arg(long = "use_existing_db", default_value = "0", value_parser = parse_bool, num_args = 0..=1, default_missing_value = "1")]
    pub use_existing_db: bool,
    /// Device path / image file (blobcask) or directory (peers). Default: a temporary one.
    #[arg(long = "db")]
    pub db: Option<PathBuf>,
    /// Random seed (0 = from the clock).
    #[arg(long = "seed", default_value_t = 0)]
    pub seed: u64,
    /// Print latency percentiles (p50/p99/p99.9/max) per benchmark.
    #[arg(long = "histogram", default_value = "0", value_parser = parse_bool, num_args = 0..=1, default_missing_value = "1")]
    pub histogram: bool,
    /// Engine under test.
    #[arg(long = "engine", value_enum, default_value = "blobcask")]
    pub engine: EngineKind,
    /// blobcask backend.
    #[arg(long = "backend", value_enum, default_value = "native")]
    pub backend: Backend,
    /// blobcask shards (0 = the engine's default).
    #[arg(long = "shards", default_value_t = 0)]
    pub shards: usize,
    /// Device / image size (K/M/G suffixes; 0 = sized from --num and --value_size).
    #[arg(long = "device_size", default_value = "0", value_parser = parse_size)]
    pub device_size: u64,
    /// Allocate a new image file whole (as a deployed store would be; the engine's own default
    /// is a sparse image). `--preallocate=0` measures the sparse default.
    #[arg(long = "preallocate", default_value = "1", value_parser = parse_bool, num_args = 0..=1, default_missing_value = "1")]
    pub preallocate: bool,
    /// Read cache bytes: blobcask's read cache, RocksDB's block cache, sled/fjall/redb cache
    /// (K/M/G suffixes; -1 = the engine's default; 0 = off / smallest).
    #[arg(long = "cache_size", default_value = "-1", allow_hyphen_values = true)]
    pub cache_size: String,
    /// RocksDB: bits per key of a bloom filter (-1 = none, RocksDB's default).
    #[arg(long = "bloom_bits", default_value_t = -1, allow_hyphen_values = true)]
    pub bloom_bits: i32,
    /// Keys per `multi_get` of multireadrandom.
    #[arg(long = "batch_size", default_value_t = 32)]
    pub batch_size: usize,
    /// RocksDB: `use_direct_reads` (and direct I/O for flush/compaction).
    #[arg(long = "use_direct_reads", default_value = "0", value_parser = parse_bool, num_args = 0..=1, default_missing_value = "1")]
    pub use_direct_reads: bool,
    /// blobcask blob size at which the active blob rotates (0 = default).
    #[arg(long = "max_blob_size", default_value = "0", value_parser = parse_size)]
    pub max_blob_size: u64,
    /// Write results as JSON to this file.
    #[arg(long = "json")]
    pub json: Option<PathBuf>,
    /// Measure a close + reopen (recovery) after the last benchmark (1) or not (0).
    #[arg(long = "reopen", default_value = "1", value_parser = parse_bool, num_args = 0..=1, default_missing_value = "1")]
    pub reopen: bool,
    /// rawdevice/blobraw: bytes of the device region exercised (0 = min(device, 1 GiB)).
    #[arg(long = "raw_bytes", default_value = "0", value_parser = parse_size)]
    pub raw_bytes: u64,
    /// rawdevice/blobraw: random 4 KiB I/Os per measurement.
    #[arg(long = "raw_ops", default_value_t = 20_000)]
    pub raw_ops: u64,
    /// blobraw: alternating raw/blob rounds per figure (the median is reported).
    #[arg(long = "raw_rounds", default_value_t = 3)]
    pub raw_rounds: usize,
    /// rawdevice: the engine's queue depth for random reads (0 = max(threads, 32)).
    #[arg(long = "raw_qd", default_value_t = 0)]
    pub raw_qd: usize,
    /// Print a Markdown table of ratios from the `<phase>.<engine>.json` reports in this
    /// directory (written by benches/compare.sh) and exit.
    #[arg(long = "compare")]
    pub compare: Option<PathBuf>,
    /// No progress bar.
    #[arg(long = "quiet", default_value = "0", value_parser = parse_bool, num_args = 0..=1, default_missing_value = "1")]
    pub quiet: bool,
}

impl Config {
    /// Parsed benchmark names, trimmed, empty ones dropped.
    pub fn benchmark_list(&self) -> Vec<String> {
        self.benchmarks
            .split(',')
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect()
    }

    pub fn reads(&self) -> u64 {
        if self.reads < 0 {
            self.num
        } else {
            self.reads as u64
        }
    }

    pub fn writes(&self) -> u64 {
        if self.writes < 0 {
            self.num
        } else {
            self.writes as u64
        }
    }

    pub fn threads(&self) -> usize {
        self.threads.max(1)
    }

    /// The cache size: `None` = engine default.
    pub fn cache_bytes(&self) -> Result<Option<u64>, String> {
        let s = self.cache_size.trim();
        if s.starts_with('-') {
            return Ok(None);
        }
        parse_size(s).map(Some)
    }

    /// The seed actually used.
    pub fn effective_seed(&self) -> u64 {
        if self.seed != 0 {
            return self.seed;
        }
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0x5eed)
            | 1
    }

    /// Device size to create: the flag, or room for the data set several times over.
    pub fn device_bytes(&self) -> u64 {
        if self.device_size > 0 {
            return self.device_size;
        }
        let rec = (self.key_size + self.value_size + 32) as u64;
        let need = self.num.saturating_mul(rec).saturating_mul(4);
        let min = 256u64 << 20;
        let sz = need.max(min);
        // Round up to 64 MiB.
        sz.div_ceil(64 << 20) * (64 << 20)
    }

    /// A config for tests and library users: defaults of every flag.
    pub fn defaults() -> Self {
        Config::parse_from(["db_bench"])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rocksdb_style_flags_parse() {
        let c = Config::parse_from([
            "db_bench",
            "--benchmarks=fillseq,readrandom",
            "--num=1000",
            "--reads=-1",
            "--sync=1",
            "--histogram",
            "--key_size=20",
            "--device_size=2G",
            "--cache_size=0",
            "--engine=hashmap",
            "--batch_size=8",
        ]);
        assert_eq!(c.benchmark_list(), vec!["fillseq", "readrandom"]);
        assert_eq!(c.num, 1000);
        assert_eq!(c.reads(), 1000);
        assert!(c.sync && c.histogram);
        assert_eq!(c.key_size, 20);
        assert_eq!(c.device_size, 2 << 30);
        assert_eq!(c.cache_bytes().unwrap(), Some(0));
        assert_eq!(c.engine, EngineKind::Hashmap);
        assert_eq!(c.batch_size, 8);
        assert_eq!(Config::defaults().batch_size, 32);
        assert_eq!(Config::defaults().bloom_bits, -1);
    }

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert_eq!(parse_size("128K").unwrap(), 128 << 10);
        assert_eq!(parse_size("1g").unwrap(), 1 << 30);
        assert!(parse_size("1x").is_err());
    }
}
