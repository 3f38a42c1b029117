//! The db_bench workloads, written once against [`Engine`].

use std::io::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use rand::{Rng, RngCore, SeedableRng};

use crate::config::Config;
use crate::engine::Engine;
use crate::BenchResult;

/// Latency percentiles in microseconds.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Latency {
    pub p50_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub max_us: f64,
    pub mean_us: f64,
}

/// The outcome of one benchmark.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Outcome {
    pub name: String,
    pub ops: u64,
    pub threads: usize,
    pub seconds: f64,
    /// Per-thread micros per op, as db_bench prints it (elapsed * threads / ops).
    pub micros_per_op: f64,
    pub ops_per_sec: f64,
    /// User payload bytes moved (keys + values).
    pub bytes: u64,
    pub mb_per_sec: f64,
    /// Extra text db_bench prints after the rate, e.g. "(5000 of 10000 found)".
    pub message: String,
    pub latency: Option<Latency>,
    /// Bytes this process sent to storage during the benchmark (/proc/self/io write_bytes).
    pub device_write_bytes: Option<u64>,
    /// CPU time of the whole process (user + system, every thread) per op, in microseconds.
    pub cpu_micros_per_op: Option<f64>,
}

impl Outcome {
    /// The db_bench line: `name : X micros/op Y ops/sec; Z MB/s`.
    pub fn line(&self) -> String {
        let mut s = format!(
            "{:<12} : {:>11.3} micros/op {:.0} ops/sec;",
            self.name, self.micros_per_op, self.ops_per_sec
        );
        if self.bytes > 0 {
            s.push_str(&format!(" {:6.1} MB/s", self.mb_per_sec));
        }
        if !self.message.is_empty() {
            s.push(' ');
            s.push_str(&self.message);
        }
        s
    }

    /// The histogram line.
    /// The CPU line: process CPU time (user + system, all threads) per op.
    pub fn cpu_line(&self) -> Option<String> {
        self.cpu_micros_per_op
            .map(|c| format!("{:<12}   cpu us/op: {c:.2} (process user + system)", ""))
    }

    pub fn latency_line(&self) -> Option<String> {
        self.latency.as_ref().map(|l| {
            format!(
                "{:<12}   latency us: mean {:.2} p50 {:.2} p99 {:.2} p99.9 {:.2} max {:.2}",
                "", l.mean_us, l.p50_us, l.p99_us, l.p999_us, l.max_us
            )
        })
    }
}

/// db_bench key `i`: zero-padded decimal in exactly `key_size` bytes (longer numbers keep
/// their low digits).
pub fn make_key(i: u64, key_size: usize, out: &mut Vec<u8>) {
    out.clear();
    let digits = format!("{i}");
    let d = digits.as_bytes();
    if d.len() >= key_size {
        out.extend_from_slice(&d[d.len() - key_size..]);
    } else {
        out.resize(key_size - d.len(), b'0');
        out.extend_from_slice(d);
    }
}

/// A key that is never written: the last byte replaced by '.' (db_bench appends one).
pub fn make_missing_key(i: u64, key_size: usize, out: &mut Vec<u8>) {
    make_key(i, key_size, out);
    if let Some(last) = out.last_mut() {
        *last = b'.';
    } else {
        out.push(b'.');
    }
}

/// Random, incompressible value bytes: slices of a 1 MiB random pool (db_bench's
/// `RandomGenerator`, without the compressibility).
pub struct ValueGen {
    pool: Vec<u8>,
    pos: usize,
}

impl ValueGen {
    pub fn new(seed: u64, value_size: usize) -> Self {
        let len = (1usize << 20).max(value_size * 2);
        let mut pool = vec![0u8; len];
        rand_chacha::ChaCha8Rng::seed_from_u64(seed).fill_bytes(&mut pool);
        ValueGen { pool, pos: 0 }
    }

    pub fn next(&mut self, len: usize) -> &[u8] {
        if self.pos + len > self.pool.len() {
            self.pos = 0;
        }
        let s = self.pos;
        self.pos += len.max(1) % 4093 + 1;
        &self.pool[s..s + len]
    }
}

/// The bytes this process has sent to storage so far (`/proc/self/io` `write_bytes`).
pub fn proc_write_bytes() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/io").ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix("write_bytes:"))
        .and_then(|v| v.trim().parse().ok())
}

/// CPU time this process has used (user + system, every thread, exited ones included), in
/// microseconds, from `/proc/self/stat` (clock ticks of 10 ms, Linux's `USER_HZ`).
pub fn proc_cpu_micros() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let rest = s.get(s.rfind(')')? + 2..)?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    Some(ticks * 10_000)
}

/// Resident set size in bytes.
pub fn rss_bytes() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kb| kb * 1024)
}

/// What a worker tells the runner about its share.
#[derive(Default)]
struct ThreadResult {
    ops: u64,
    bytes: u64,
    found: u64,
    hist: Option<Histogram<u64>>,
}

/// Shared by the workers of one benchmark.
struct Ctx<'a> {
    cfg: &'a Config,
    engine: &'a dyn Engine,
    seed: u64,
    progress: Option<ProgressBar>,
    done: AtomicU64,
    stop: AtomicBool,
}

impl Ctx<'_> {
    fn tick(&self, n: u64) {
        if let Some(p) = &self.progress {
            p.inc(n);
        }
        self.done.fetch_add(n, Ordering::Relaxed);
    }
}

/// Per-op timing (only with --histogram).
struct Timer {
    hist: Option<Histogram<u64>>,
}

impl Timer {
    fn new(on: bool) -> Self {
        Timer {
            hist: on.then(|| {
                Histogram::new_with_bounds(1, 60_000_000_000, 3)
                    .unwrap_or_else(|_| Histogram::new(3).unwrap_or_else(|_| unreachable!()))
            }),
        }
    }

    #[inline]
    fn start(&self) -> Option<Instant> {
        self.hist.as_ref().map(|_| Instant::now())
    }

    #[inline]
    fn stop(&mut self, t: Option<Instant>) {
        if let (Some(h), Some(t)) = (self.hist.as_mut(), t) {
            h.saturating_record(t.elapsed().as_nanos().max(1) as u64);
        }
    }
}

const TICK: u64 = 1024;

fn rng_for(seed: u64, name: &str, thread: usize) -> rand_chacha::ChaCha8Rng {
    let mut h: u64 = seed ^ 0x9e37_79b9_7f4a_7c15;
    for b in name.bytes() {
        h = (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3);
    }
    rand_chacha::ChaCha8Rng::seed_from_u64(h.wrapping_add(thread as u64 * 0x2545_f491_4f6c_dd1d))
}

/// Split `total` ops across `threads`: thread `t` gets ops [start, end).
fn share(total: u64, threads: usize, t: usize) -> (u64, u64) {
    let t = t as u64;
    let n = threads as u64;
    (total * t / n, total * (t + 1) / n)
}

/// Kinds of key choice / op mix of a worker.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    FillSeq,
    FillRandom,
    Overwrite,
    ReadRandom,
    /// Random keys read `--batch_size` at a time through `multi_get`.
    MultiReadRandom,
    ReadMissing,
    ReadRandomWriteRandom,
    DeleteRandom,
}

fn worker(
    ctx: &Ctx<'_>,
    kind: Kind,
    t: usize,
    threads: usize,
    total: u64,
) -> BenchResult<ThreadResult> {
    if kind == Kind::MultiReadRandom {
        return multi_worker(ctx, t, threads, total);
    }
    let cfg = ctx.cfg;
    let (start, end) = share(total, threads, t);
    let mut rng = rng_for(ctx.seed, kind_name(kind), t);
    let mut vals = ValueGen::new(ctx.seed.wrapping_add(t as u64 + 1), cfg.value_size);
    let mut key = Vec::with_capacity(cfg.key_size + 1);
    let mut timer = Timer::new(cfg.histogram);
    let mut r = ThreadResult::default();
    let num = cfg.num.max(1);
    let mut pending = 0;
    for i in start..end {
        if ctx.stop.load(Ordering::Relaxed) {
            break;
        }
        let ts = timer.start();
        match kind {
            Kind::FillSeq => {
                make_key(i, cfg.key_size, &mut key);
                ctx.engine.put(&key, vals.next(cfg.value_size))?;
                r.bytes += (cfg.key_size + cfg.value_size) as u64;
            }
            Kind::FillRandom | Kind::Overwrite => {
                make_key(rng.gen_range(0..num), cfg.key_size, &mut key);
                ctx.engine.put(&key, vals.next(cfg.value_size))?;
                r.bytes += (cfg.key_size + cfg.value_size) as u64;
            }
            Kind::ReadRandom => {
                make_key(rng.gen_range(0..num), cfg.key_size, &mut key);
                if let Some(v) = ctx.engine.get(&key)? {
                    r.found += 1;
                    r.bytes += (key.len() + v.len()) as u64;
                }
            }
            Kind::ReadMissing => {
                make_missing_key(rng.gen_range(0..num), cfg.key_size, &mut key);
                if ctx.engine.get(&key)?.is_some() {
                    r.found += 1;
                }
            }
            Kind::ReadRandomWriteRandom => {
                make_key(rng.gen_range(0..num), cfg.key_size, &mut key);
                if rng.gen_range(0..100) < cfg.readwritepercent {
                    if let Some(v) = ctx.engine.get(&key)? {
                        r.found += 1;
                        r.bytes += (key.len() + v.len()) as u64;
                    }
                } else {
                    ctx.engine.put(&key, vals.next(cfg.value_size))?;
                    r.bytes += (cfg.key_size + cfg.value_size) as u64;
                }
            }
            Kind::DeleteRandom => {
                make_key(rng.gen_range(0..num), cfg.key_size, &mut key);
                ctx.engine.delete(&key)?;
            }
            // Batched: `multi_worker` runs it (see above).
            Kind::MultiReadRandom => {}
        }
        timer.stop(ts);
        r.ops += 1;
        pending += 1;
        if pending == TICK {
            ctx.tick(pending);
            pending = 0;
        }
    }
    ctx.tick(pending);
    r.hist = timer.hist;
    Ok(r)
}

/// multireadrandom: the thread's share of `total` keys, drawn at random from `[0, num)` and
/// read `--batch_size` per `multi_get` (the last batch may be shorter). An op is a key, as
/// in RocksDB's db_bench; with `--histogram` the latency is a batch's.
fn multi_worker(ctx: &Ctx<'_>, t: usize, threads: usize, total: u64) -> BenchResult<ThreadResult> {
    let cfg = ctx.cfg;
    let (start, end) = share(total, threads, t);
    let mut rng = rng_for(ctx.seed, kind_name(Kind::MultiReadRandom), t);
    let batch = cfg.batch_size.max(1);
    let mut keys: Vec<Vec<u8>> = (0..batch)
        .map(|_| Vec::with_capacity(cfg.key_size + 1))
        .collect();
    let mut timer = Timer::new(cfg.histogram);
    let mut r = ThreadResult::default();
    let num = cfg.num.max(1);
    let mut left = end - start;
    while left > 0 && !ctx.stop.load(Ordering::Relaxed) {
        let n = usize::try_from(left).map_or(batch, |l| l.min(batch));
        for k in &mut keys[..n] {
            make_key(rng.gen_range(0..num), cfg.key_size, k);
        }
        let ts = timer.start();
        let values = ctx.engine.multi_get(&keys[..n])?;
        timer.stop(ts);
        if values.len() != n {
            return Err(format!("multi_get of {n} keys returned {} values", values.len()).into());
        }
        for (k, v) in keys.iter().zip(&values) {
            if let Some(v) = v {
                r.found += 1;
                r.bytes += (k.len() + v.len()) as u64;
            }
        }
        r.ops += n as u64;
        left -= n as u64;
        ctx.tick(n as u64);
    }
    r.hist = timer.hist;
    Ok(r)
}

fn kind_name(k: Kind) -> &'static str {
    match k {
        Kind::FillSeq => "fillseq",
        Kind::FillRandom => "fillrandom",
        Kind::Overwrite => "overwrite",
        Kind::ReadRandom => "readrandom",
        Kind::MultiReadRandom => "multireadrandom",
        Kind::ReadMissing => "readmissing",
        Kind::ReadRandomWriteRandom => "readrandomwriterandom",
        Kind::DeleteRandom => "deleterandom",
    }
}

fn progress_bar(cfg: &Config, name: &str, total: u64) -> Option<ProgressBar> {
    if cfg.quiet || total < 200_000 {
        return None;
    }
    let pb = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
    if let Ok(style) = ProgressStyle::with_template(
        "{prefix:>12} [{elapsed_precise}] {wide_bar} {pos}/{len} ({per_sec}, eta {eta})",
    ) {
        pb.set_style(style);
    }
    pb.set_prefix(name.to_string());
    Some(pb)
}

fn merge_results(
    name: &str,
    threads: usize,
    elapsed: Duration,
    results: Vec<ThreadResult>,
    write_before: Option<u64>,
) -> Outcome {
    let mut ops = 0;
    let mut bytes = 0;
    let mut hist: Option<Histogram<u64>> = None;
    for r in results {
        ops += r.ops;
        bytes += r.bytes;
        if let Some(h) = r.hist {
            match hist.as_mut() {
                Some(acc) => {
                    let _ = acc.add(&h);
                }
                None => hist = Some(h),
            }
        }
    }
    let secs = elapsed.as_secs_f64().max(1e-9);
    let latency = hist.filter(|h| !h.is_empty()).map(|h| Latency {
        p50_us: h.value_at_quantile(0.5) as f64 / 1e3,
        p99_us: h.value_at_quantile(0.99) as f64 / 1e3,
        p999_us: h.value_at_quantile(0.999) as f64 / 1e3,
        max_us: h.max() as f64 / 1e3,
        mean_us: h.mean() / 1e3,
    });
    Outcome {
        name: name.to_string(),
        ops,
        threads,
        seconds: secs,
        micros_per_op: if ops > 0 {
            secs * 1e6 * threads as f64 / ops as f64
        } else {
            0.0
        },
        ops_per_sec: ops as f64 / secs,
        bytes,
        mb_per_sec: bytes as f64 / secs / 1048576.0,
        message: String::new(),
        latency,
        device_write_bytes: match (write_before, proc_write_bytes()) {
            (Some(a), Some(b)) => Some(b.saturating_sub(a)),
            _ => None,
        },
        cpu_micros_per_op: None,
    }
}

/// Run `kind` on `threads` workers over `total` ops.
fn run_kind(
    cfg: &Config,
    engine: &dyn Engine,
    seed: u64,
    name: &str,
    kind: Kind,
    total: u64,
) -> BenchResult<Outcome> {
    let threads = cfg.threads();
    let ctx = Ctx {
        cfg,
        engine,
        seed,
        progress: progress_bar(cfg, name, total),
        done: AtomicU64::new(0),
        stop: AtomicBool::new(false),
    };
    let wb = proc_write_bytes();
    let cpu = proc_cpu_micros();
    let start = Instant::now();
    let results = run_threads(
        threads,
        |t| worker(&ctx, kind, t, threads, total),
        &ctx.stop,
    )?;
    let cpu = cpu.zip(proc_cpu_micros()).map(|(a, b)| b.saturating_sub(a));
    // A synced benchmark is done when its writes are durable; db_bench does not flush
    // unsynced ones either.
    let elapsed = start.elapsed();
    if let Some(p) = &ctx.progress {
        p.finish_and_clear();
    }
    let found: u64 = results.iter().map(|r| r.found).sum();
    let ops: u64 = results.iter().map(|r| r.ops).sum();
    let mut out = merge_results(name, threads, elapsed, results, wb);
    out.cpu_micros_per_op = cpu
        .filter(|_| out.ops > 0)
        .map(|c| c as f64 / out.ops as f64);
    if matches!(
        kind,
        Kind::ReadRandom | Kind::MultiReadRandom | Kind::ReadMissing | Kind::ReadRandomWriteRandom
    ) {
        out.message = if kind == Kind::ReadRandomWriteRandom {
            format!("( reads:{}% found:{found} )", cfg.readwritepercent)
        } else {
            format!("({found} of {ops} found)")
        };
    }
    Ok(out)
}

/// Run `f(t)` for t in 0..threads on scoped threads; the first error stops the others.
fn run_threads<F>(threads: usize, f: F, stop: &AtomicBool) -> BenchResult<Vec<ThreadResult>>
where
    F: Fn(usize) -> BenchResult<ThreadResult> + Sync,
{
    if threads == 1 {
        return Ok(vec![f(0)?]);
    }
    let f = &f;
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                s.spawn(move || {
                    let r = f(t);
                    if r.is_err() {
                        stop.store(true, Ordering::Relaxed);
                    }
                    r
                })
            })
            .collect();
        let mut out = Vec::with_capacity(threads);
        let mut first_err = None;
        for h in handles {
            match h.join() {
                Ok(Ok(r)) => out.push(r),
                Ok(Err(e)) => {
                    first_err.get_or_insert(e);
                }
                Err(_) => {
                    first_err.get_or_insert_with(|| "a benchmark thread panicked".into());
                }
            }
        }
        match first_err {
            Some(e) => Err(e),
            None => Ok(out),
        }
    })
}

/// readseq: one pass over every live pair (in the engine's order).
fn readseq(cfg: &Config, engine: &dyn Engine) -> BenchResult<Outcome> {
    let wb = proc_write_bytes();
    let pb = progress_bar(cfg, "readseq", cfg.num);
    let mut timer = Timer::new(cfg.histogram);
    let mut bytes = 0u64;
    let mut since = 0u64;
    let start = Instant::now();
    let mut last = start;
    let n = engine.scan(&mut |k, v| {
        bytes += (k.len() + v.len()) as u64;
        if timer.hist.is_some() {
            let now = Instant::now();
            timer.stop(Some(last));
            last = now;
        }
        since += 1;
        if since == TICK {
            if let Some(p) = &pb {
                p.inc(since);
            }
            since = 0;
        }
        true
    })?;
    let elapsed = start.elapsed();
    if let Some(p) = &pb {
        p.finish_and_clear();
    }
    let r = ThreadResult {
        ops: n,
        bytes,
        found: n,
        hist: timer.hist,
    };
    Ok(merge_results("readseq", 1, elapsed, vec![r], wb))
}

/// readwhilewriting: `threads` readers plus one writer that overwrites random keys until the
/// readers are done. The reported rate is the readers'.
fn readwhilewriting(cfg: &Config, engine: &dyn Engine, seed: u64) -> BenchResult<Outcome> {
    let threads = cfg.threads();
    let total = cfg.reads();
    let ctx = Ctx {
        cfg,
        engine,
        seed,
        progress: progress_bar(cfg, "readwhilewriting", total),
        done: AtomicU64::new(0),
        stop: AtomicBool::new(false),
    };
    let readers_done = AtomicBool::new(false);
    let writes = AtomicU64::new(0);
    let wb = proc_write_bytes();
    let start = Instant::now();
    let (results, werr) = std::thread::scope(|s| {
        let writer = s.spawn(|| -> BenchResult<()> {
            let mut rng = rng_for(seed, "readwhilewriting-w", 0);
            let mut vals = ValueGen::new(seed ^ 0xabcdef, cfg.value_size);
            let mut key = Vec::new();
            let num = cfg.num.max(1);
            while !readers_done.load(Ordering::Relaxed) && !ctx.stop.load(Ordering::Relaxed) {
                make_key(rng.gen_range(0..num), cfg.key_size, &mut key);
                engine.put(&key, vals.next(cfg.value_size))?;
                writes.fetch_add(1, Ordering::Relaxed);
            }
            Ok(())
        });
        let r = run_threads(
            threads,
            |t| worker(&ctx, Kind::ReadRandom, t, threads, total),
            &ctx.stop,
        );
        readers_done.store(true, Ordering::Relaxed);
        let w = writer
            .join()
            .unwrap_or_else(|_| Err("the writer thread panicked".into()));
        (r, w)
    });
    let elapsed = start.elapsed();
    if let Some(p) = &ctx.progress {
        p.finish_and_clear();
    }
    werr?;
    let results = results?;
    let found: u64 = results.iter().map(|r| r.found).sum();
    let ops: u64 = results.iter().map(|r| r.ops).sum();
    let mut out = merge_results("readwhilewriting", threads, elapsed, results, wb);
    let w = writes.load(Ordering::Relaxed);
    out.message = format!(
        "({found} of {ops} found; writer {:.0} writes/sec)",
        w as f64 / elapsed.as_secs_f64().max(1e-9)
    );
    Ok(out)
}

/// Run one of the key-value benchmarks by its db_bench name. `None` = not a key-value
/// benchmark (the caller handles stats/reopen/rawdevice/...).
pub fn run_named(
    cfg: &Config,
    engine: &dyn Engine,
    seed: u64,
    name: &str,
) -> Option<BenchResult<Outcome>> {
    let r = match name {
        "fillseq" => run_kind(cfg, engine, seed, name, Kind::FillSeq, cfg.num),
        "fillrandom" => run_kind(cfg, engine, seed, name, Kind::FillRandom, cfg.num),
        "overwrite" => run_kind(cfg, engine, seed, name, Kind::Overwrite, cfg.writes()),
        "fillsync" => run_kind(cfg, engine, seed, name, Kind::FillRandom, cfg.num / 1000),
        "readrandom" => run_kind(cfg, engine, seed, name, Kind::ReadRandom, cfg.reads()),
        "multireadrandom" => run_kind(cfg, engine, seed, name, Kind::MultiReadRandom, cfg.reads()),
        "readmissing" => run_kind(cfg, engine, seed, name, Kind::ReadMissing, cfg.reads()),
        "readrandomwriterandom" => run_kind(
            cfg,
            engine,
            seed,
            name,
            Kind::ReadRandomWriteRandom,
            cfg.reads(),
        ),
        "deleterandom" => run_kind(cfg, engine, seed, name, Kind::DeleteRandom, cfg.writes()),
        "readseq" => readseq(cfg, engine),
        "readwhilewriting" => readwhilewriting(cfg, engine, seed),
        _ => return None,
    };
    Some(r)
}

/// Print to stdout and flush (progress bars go to stderr).
pub fn say(s: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{s}");
    let _ = out.flush();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_zero_padded_decimal() {
        let mut k = Vec::new();
        make_key(42, 16, &mut k);
        assert_eq!(k, b"0000000000000042");
        make_key(123456, 4, &mut k);
        assert_eq!(k, b"3456");
        make_missing_key(42, 16, &mut k);
        assert_eq!(k, b"000000000000004.");
    }

    #[test]
    fn shares_cover_the_range() {
        let mut n = 0;
        for t in 0..3 {
            let (a, b) = share(10, 3, t);
            n += b - a;
        }
        assert_eq!(n, 10);
    }
}
