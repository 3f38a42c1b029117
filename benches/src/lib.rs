//! `db_bench` for blobcask: RocksDB's db_bench workloads and flags, written once against the
//! [`engine::Engine`] trait, with an adapter per engine (blobcask and, behind cargo features,
//! RocksDB, sled, fjall and redb), plus the device's own limits (`rawdevice`) and the blob
//! layer against the raw device (`blobraw`), so every figure can be read as a ratio from one
//! run.

use std::path::{Path, PathBuf};
use std::time::Instant;

pub mod blobcask_engine;
pub mod compare;
pub mod config;
pub mod engine;
#[cfg(any(
    feature = "rocksdb",
    feature = "sled",
    feature = "fjall",
    feature = "redb"
))]
pub mod peers;
pub mod raw;
pub mod workload;

pub use config::{Backend, Config, EngineKind};
pub use engine::{Engine, EngineStats};
pub use workload::{say, Outcome};

/// Errors of the tool: anything printable.
pub type BenchError = Box<dyn std::error::Error + Send + Sync>;
/// `Result` with [`BenchError`].
pub type BenchResult<T> = Result<T, BenchError>;

/// Figures of the whole run besides the per-benchmark lines.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Summary {
    /// Seconds to close and reopen the loaded store (recovery).
    pub reopen_seconds: Option<f64>,
    pub keys: Option<u64>,
    pub keydir_bytes_per_key: Option<f64>,
    /// Device bytes used / live user bytes.
    pub space_amplification: Option<f64>,
    /// Device bytes written / user bytes written (from /proc/self/io, or the engine).
    pub write_amplification: Option<f64>,
    /// Engine-counted write amplification, where the engine reports one.
    pub engine_write_amplification: Option<f64>,
    pub rss_bytes: Option<u64>,
}

/// Everything a run measured.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Report {
    pub engine: String,
    pub config: Config,
    pub seed: u64,
    pub results: Vec<Outcome>,
    pub raw: Vec<raw::RawFigure>,
    pub summary: Summary,
}

/// Where the store lives, and the temporary directory that owns it (if any).
struct Place {
    path: PathBuf,
    _tmp: Option<tempfile::TempDir>,
}

fn place(cfg: &Config) -> BenchResult<Place> {
    if let Some(p) = &cfg.db {
        return Ok(Place {
            path: p.clone(),
            _tmp: None,
        });
    }
    let tmp = tempfile::Builder::new().prefix("db_bench.").tempdir()?;
    let path = match cfg.engine {
        EngineKind::Blobcask => tmp.path().join("blobcask.img"),
        other => tmp.path().join(other.name()),
    };
    Ok(Place {
        path,
        _tmp: Some(tmp),
    })
}

/// A scratch file for rawdevice/blobraw that is not the open store: beside the store, on
/// the same file system.
fn scratch_path(store: &Path) -> PathBuf {
    if store.is_dir() {
        return store.join("rawdevice.img");
    }
    let mut s = store.as_os_str().to_owned();
    s.push(".rawdevice");
    PathBuf::from(s)
}

const KV_BENCHMARKS: &[&str] = &[
    "fillseq",
    "fillrandom",
    "overwrite",
    "fillsync",
    "readrandom",
    "multireadrandom",
    "readmissing",
    "readseq",
    "readrandomwriterandom",
    "readwhilewriting",
    "deleterandom",
];

const STORE_BENCHMARKS: &[&str] = &["stats", "reopen", "compact", "merge"];

const RAW_BENCHMARKS: &[&str] = &["rawdevice", "rawread", "blobraw"];

/// Run every benchmark of `cfg` in order and print the db_bench report to stdout.
pub fn run(cfg: &Config) -> BenchResult<Report> {
    if let Some(dir) = &cfg.compare {
        print!("{}", compare::markdown(dir)?);
        return Ok(Report {
            engine: String::new(),
            config: cfg.clone(),
            seed: 0,
            results: Vec::new(),
            raw: Vec::new(),
            summary: Summary::default(),
        });
    }
    let names = cfg.benchmark_list();
    for n in &names {
        let n = n.as_str();
        if !KV_BENCHMARKS.contains(&n)
            && !STORE_BENCHMARKS.contains(&n)
            && !RAW_BENCHMARKS.contains(&n)
        {
            return Err(format!("unknown benchmark {n:?}").into());
        }
    }
    let seed = cfg.effective_seed();
    let pl = place(cfg)?;
    print_header(cfg, &pl.path, seed);

    let mut report = Report {
        engine: cfg.engine.name().to_string(),
        config: cfg.clone(),
        seed,
        results: Vec::new(),
        raw: Vec::new(),
        summary: Summary::default(),
    };

    let mut engine: Option<Box<dyn Engine>> = None;
    let mut ever_opened = false;
    let mut user_written = 0u64;
    let mut device_written = 0u64;
    let mut wrote = false;

    for name in &names {
        let name = name.as_str();
        if RAW_BENCHMARKS.contains(&name) {
            // The store's own file only while no store lives in it; else a scratch file.
            let fresh = !ever_opened && !cfg.use_existing_db && cfg.engine == EngineKind::Blobcask;
            let target = if fresh {
                pl.path.clone()
            } else {
                scratch_path(&pl.path)
            };
            let figs = match name {
                "rawdevice" => raw::rawdevice(cfg, &target)?,
                "rawread" => raw::rawread(cfg, &target)?,
                _ => raw::blobraw(cfg, &target)?,
            };
            if target != pl.path && target.is_file() {
                let _ = std::fs::remove_file(&target);
            }
            report.raw.extend(figs);
            continue;
        }
        if engine.is_none() {
            let create = !cfg.use_existing_db && !ever_opened;
            let t = Instant::now();
            let e = engine::open_engine(cfg, &pl.path, create)?;
            if !create {
                say(&format!(
                    "open         : {:.3} s ({})",
                    t.elapsed().as_secs_f64(),
                    e.name()
                ));
            }
            engine = Some(e);
            ever_opened = true;
        }
        let Some(e) = engine.as_deref() else {
            unreachable!("engine opened above")
        };
        match name {
            "stats" => print_stats(e, &pl.path)?,
            "reopen" => {
                let Some(e) = engine.take() else { continue };
                let (e, secs) = reopen(cfg, e, &pl.path)?;
                report.summary.reopen_seconds = secs.or(report.summary.reopen_seconds);
                engine = Some(e);
            }
            "compact" | "merge" => {
                let wb = workload::proc_write_bytes();
                let t = Instant::now();
                e.compact()?;
                let secs = t.elapsed().as_secs_f64();
                let dw = match (wb, workload::proc_write_bytes()) {
                    (Some(a), Some(b)) => b.saturating_sub(a),
                    _ => 0,
                };
                device_written += dw;
                say(&format!(
                    "{name:<12} : {secs:.3} s, {:.1} MB written",
                    dw as f64 / 1048576.0
                ));
            }
            _ => {
                let Some(r) = workload::run_named(cfg, e, seed, name) else {
                    unreachable!("checked above")
                };
                // Unsynced runs are not flushed inside the rate (db_bench does not either);
                // the final sync after the last benchmark is outside every rate.
                let mut out = r?;
                if is_write(name) {
                    wrote = true;
                    user_written += out.bytes;
                    device_written += out.device_write_bytes.unwrap_or(0);
                } else if name == "readwhilewriting" || name == "readrandomwriterandom" {
                    wrote = true;
                    device_written += out.device_write_bytes.unwrap_or(0);
                }
                if name == "deleterandom" {
                    out.bytes = 0;
                }
                say(&out.line());
                if let Some(l) = out.cpu_line() {
                    say(&l);
                }
                if let Some(l) = out.latency_line() {
                    say(&l);
                }
                report.results.push(out);
            }
        }
    }

    if let Some(e) = engine.take() {
        // Durability of what the run wrote is part of the cost, but outside every rate.
        e.sync()?;
        let st = e.stats().unwrap_or_default();
        let used = st
            .used_bytes
            .or_else(|| (cfg.engine != EngineKind::Blobcask).then(|| engine::disk_usage(&pl.path)));
        let live = st
            .live_bytes
            .or_else(|| st.keys.map(|k| k * (cfg.key_size + cfg.value_size) as u64));
        report.summary.keys = st.keys;
        report.summary.keydir_bytes_per_key = st.keydir_bytes_per_key;
        report.summary.engine_write_amplification = st.write_amplification;
        report.summary.space_amplification = match (used, live) {
            (Some(u), Some(l)) if l > 0 => Some(u as f64 / l as f64),
            _ => None,
        };
        if wrote && user_written > 0 && device_written > 0 {
            report.summary.write_amplification = Some(device_written as f64 / user_written as f64);
        }
        report.summary.rss_bytes = workload::rss_bytes();
        let e = if cfg.reopen && wrote && !names.iter().any(|n| n == "reopen") {
            let (e, secs) = reopen(cfg, e, &pl.path)?;
            report.summary.reopen_seconds = secs;
            e
        } else {
            e
        };
        print_summary(&report.summary);
        e.close()?;
    }

    if let Some(j) = &cfg.json {
        std::fs::write(j, serde_json::to_string_pretty(&report)?)?;
        say(&format!("json         : {}", j.display()));
    }
    Ok(report)
}

fn is_write(name: &str) -> bool {
    matches!(name, "fillseq" | "fillrandom" | "overwrite" | "fillsync")
}

fn reopen(
    cfg: &Config,
    e: Box<dyn Engine>,
    path: &Path,
) -> BenchResult<(Box<dyn Engine>, Option<f64>)> {
    if !e.reopenable() {
        say("reopen       : skipped (the store does not survive a close on this backend)");
        return Ok((e, None));
    }
    let t0 = Instant::now();
    e.close()?;
    let closed = t0.elapsed().as_secs_f64();
    let t = Instant::now();
    let e = engine::open_engine(cfg, path, false)?;
    let secs = t.elapsed().as_secs_f64();
    let keys = e.stats().ok().and_then(|s| s.keys);
    say(&format!(
        "reopen       : {secs:.3} s recovery (close {closed:.3} s){}",
        keys.map(|k| format!(", {k} keys")).unwrap_or_default()
    ));
    Ok((e, Some(secs)))
}

fn print_header(cfg: &Config, path: &Path, seed: u64) {
    say(&format!(
        "Keys:       {} bytes each (zero-padded decimal)",
        cfg.key_size
    ));
    say(&format!(
        "Values:     {} bytes each (random, incompressible)",
        cfg.value_size
    ));
    say(&format!("Entries:    {}", cfg.num));
    say(&format!(
        "RawSize:    {:.1} MB (estimated)",
        (cfg.num as f64) * (cfg.key_size + cfg.value_size) as f64 / 1048576.0
    ));
    let eng = match cfg.engine {
        EngineKind::Blobcask => format!("blobcask (backend {:?})", cfg.backend).to_lowercase(),
        other => other.name().to_string(),
    };
    say(&format!("Engine:     {eng}"));
    say(&format!("DB path:    {}", path.display()));
    say(&format!(
        "Threads:    {}  Sync: {}  Seed: {seed}",
        cfg.threads(),
        u8::from(cfg.sync)
    ));
    say("------------------------------------------------");
}

fn print_stats(e: &dyn Engine, path: &Path) -> BenchResult<()> {
    let st = e.stats()?;
    say(&format!("stats        : {}", e.name()));
    if let Some(k) = st.keys {
        say(&format!("  keys                 {k}"));
    }
    if let Some(b) = st.keydir_bytes_per_key {
        say(&format!("  keydir bytes/key     {b:.1} beyond the key"));
    }
    let used = st.used_bytes.unwrap_or_else(|| engine::disk_usage(path));
    say(&format!("  bytes used           {used}"));
    if let Some(l) = st.live_bytes {
        say(&format!("  live bytes           {l}"));
    }
    if let Some(w) = st.write_amplification {
        say(&format!("  write amplification  {w:.2}"));
    }
    for l in &st.lines {
        say(&format!("  {l}"));
    }
    if let Some(r) = workload::rss_bytes() {
        say(&format!(
            "  rss                  {:.1} MB",
            r as f64 / 1048576.0
        ));
    }
    Ok(())
}

fn print_summary(s: &Summary) {
    let f = |v: Option<f64>, unit: &str| {
        v.map(|x| format!("{x:.3}{unit}"))
            .unwrap_or_else(|| "n/a".to_string())
    };
    say("------------------------------------------------");
    say(&format!(
        "keydir bytes/key     : {} (beyond the key)",
        f(s.keydir_bytes_per_key, "")
    ));
    say(&format!(
        "space amplification  : {}",
        f(s.space_amplification, "")
    ));
    say(&format!(
        "write amplification  : {} (device bytes written / user bytes written{})",
        f(s.write_amplification, ""),
        s.engine_write_amplification
            .map(|w| format!("; engine counts {w:.3}"))
            .unwrap_or_default()
    ));
    if let Some(r) = s.rss_bytes {
        say(&format!(
            "rss                  : {:.1} MB",
            r as f64 / 1048576.0
        ));
    }
}
