//! `chunk_bench`: fio-like chunk workloads on the chunk store and, in the same run, on the
//! baselines a storage node uses today: the raw device (one file written full of zeroes
//! first, `O_DIRECT`), one file per chunk with `pwrite` (+ `fdatasync` per write under
//! `--sync`), and one file per chunk opened `O_DIRECT`.
//!
//! The chunk store's image is written full of zeroes before the store is made on it (unless
//! `--sparse-image`): like a block device, writes then never allocate file system blocks, so
//! no `fdatasync` commits the file system's journal for the store. `--fresh` writes new
//! chunks (created empty, not filled first): the files then allocate a block per write.
//! Each line ends with what one operation cost: the device's writes and flushes (from
//! `/proc/diskstats`, the whole disk, so other load on it counts too) and, for the chunk
//! store, its own counters.
//!
//! ```text
//! chunk_bench --dir /mnt/x --rw randwrite --bs 4K --chunk-size 1M --chunks 16 --threads 1 --sync
//! ```

use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use blobcask::chunk::{ChunkOptions, ChunkStore};
use blobcask::device::AlignedBuf;
use blobcask::{Db, DeviceSpec, Options, SyncPolicy};
use clap::Parser;
use hdrhistogram::Histogram;
use rand::{Rng, SeedableRng};

type Res<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

#[derive(Parser, Clone)]
#[command(about = "Chunk workloads: the chunk store against raw-device and per-file baselines")]
struct Args {
    /// Directory for the image files (a local filesystem).
    #[arg(long)]
    dir: PathBuf,
    /// randwrite, randread or write (sequential, each thread its own chunks).
    #[arg(long, default_value = "randwrite")]
    rw: String,
    /// Bytes per I/O.
    #[arg(long, default_value = "4K", value_parser = parse_size)]
    bs: u64,
    #[arg(long = "chunk-size", alias = "chunk_size", default_value = "1M", value_parser = parse_size)]
    chunk_size: u64,
    #[arg(long, default_value = "16")]
    chunks: u64,
    #[arg(long, default_value = "1")]
    threads: usize,
    /// Every write durable when it returns.
    #[arg(long)]
    sync: bool,
    /// I/Os per engine (over all threads).
    #[arg(long, default_value = "2000")]
    ops: u64,
    /// Engines, comma separated: chunk, raw, files, odirect.
    #[arg(long, default_value = "chunk,raw,files,odirect")]
    engines: String,
    /// Random writes into new chunks (created empty; nothing is filled first).
    #[arg(long)]
    fresh: bool,
    /// Leave the chunk store's image file sparse (its writes then allocate file blocks).
    #[arg(long)]
    sparse_image: bool,
    /// Chunk writes through `ChunkStore::write` (copies the caller's bytes) rather than
    /// `write_owned` (the aligned buffer itself goes to the device, as for raw and odirect).
    #[arg(long)]
    chunk_copy: bool,
    /// Under `--sync`, the KV's `SyncPolicy::GroupCommit` with this delay (µs) instead of
    /// `Always`: concurrent durable writes share a flush.
    #[arg(long)]
    group_commit_us: Option<u64>,
    /// KV shards of the chunk store's `Db` (default: the store's default, one per core).
    #[arg(long)]
    kv_shards: Option<usize>,
}

/// Writes and flushes completed by the block device holding `dir` (`/proc/diskstats`).
fn disk_counts(dir: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt as _;
    let dev = std::fs::metadata(dir).ok()?.dev();
    let (maj, min) = (libc::major(dev), libc::minor(dev));
    let text = std::fs::read_to_string("/proc/diskstats").ok()?;
    text.lines().find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        if f.len() < 19 || f[0].parse::<u32>().ok()? != maj || f[1].parse::<u32>().ok()? != min {
            return None;
        }
        Some((f[7].parse().ok()?, f[18].parse().ok()?))
    })
}

/// Fill `path` with `len` zero bytes and make them durable (a device's blocks all exist).
fn zero_file(path: &Path, len: u64) -> Res<()> {
    let f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .custom_flags(libc::O_DIRECT)
        .open(path)?;
    let zeros = AlignedBuf::zeroed(8 << 20);
    let mut at = 0;
    while at < len {
        let n = (len - at).min(zeros.len() as u64) as usize;
        f.write_all_at(&zeros[..n], at)?;
        at += n as u64;
    }
    f.sync_all()?;
    Ok(())
}

fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (n, m) = match s.chars().last() {
        Some('K' | 'k') => (&s[..s.len() - 1], 1u64 << 10),
        Some('M' | 'm') => (&s[..s.len() - 1], 1 << 20),
        Some('G' | 'g') => (&s[..s.len() - 1], 1 << 30),
        _ => (s, 1),
    };
    n.parse::<u64>()
        .map(|v| v * m)
        .map_err(|e| format!("{s}: {e}"))
}

/// One engine under test: chunk `c` at byte `off`.
trait Target: Sync {
    fn write(&self, c: u64, off: u64, buf: &[u8]) -> Res<()>;
    fn read(&self, c: u64, off: u64, buf: &mut [u8]) -> Res<()>;
    fn sync(&self) -> Res<()>;
    /// Write an aligned buffer the engine may take (and gives back).
    fn write_owned(&self, c: u64, off: u64, buf: AlignedBuf) -> Res<AlignedBuf> {
        self.write(c, off, &buf)?;
        Ok(buf)
    }
    /// The chunk store's counters (others: none).
    fn counters(&self) -> Option<blobcask::chunk::ChunkCounters> {
        None
    }
}

struct Chunks {
    db: Db,
    cs: ChunkStore,
    ids: Vec<u64>,
    durable: bool,
    /// Use the copying `write` instead of `write_owned`.
    copy: bool,
}

impl Target for Chunks {
    fn write(&self, c: u64, off: u64, buf: &[u8]) -> Res<()> {
        Ok(self
            .cs
            .write_with(self.ids[c as usize], off, buf, self.durable)?)
    }
    fn read(&self, c: u64, off: u64, buf: &mut [u8]) -> Res<()> {
        let v = self.cs.read(self.ids[c as usize], off, buf.len() as u64)?;
        buf[..v.len()].copy_from_slice(&v);
        Ok(())
    }
    fn sync(&self) -> Res<()> {
        Ok(self.cs.sync()?)
    }
    fn counters(&self) -> Option<blobcask::chunk::ChunkCounters> {
        self.cs.counters().ok()
    }
    fn write_owned(&self, c: u64, off: u64, buf: AlignedBuf) -> Res<AlignedBuf> {
        if self.copy {
            self.write(c, off, &buf)?;
            return Ok(buf);
        }
        Ok(self.cs.write_owned(self.ids[c as usize], off, buf).wait()?)
    }
}

/// The raw device: one file, chunk `c` at `c × chunk_size`.
struct Raw {
    f: File,
    chunk: u64,
    durable: bool,
}

impl Target for Raw {
    fn write(&self, c: u64, off: u64, buf: &[u8]) -> Res<()> {
        self.f.write_all_at(buf, c * self.chunk + off)?;
        if self.durable {
            self.f.sync_data()?;
        }
        Ok(())
    }
    fn read(&self, c: u64, off: u64, buf: &mut [u8]) -> Res<()> {
        Ok(self.f.read_exact_at(buf, c * self.chunk + off)?)
    }
    fn sync(&self) -> Res<()> {
        Ok(self.f.sync_data()?)
    }
}

/// One file per chunk.
struct Files {
    files: Vec<File>,
    durable: bool,
}

impl Target for Files {
    fn write(&self, c: u64, off: u64, buf: &[u8]) -> Res<()> {
        let f = &self.files[c as usize];
        f.write_all_at(buf, off)?;
        if self.durable {
            f.sync_data()?;
        }
        Ok(())
    }
    fn read(&self, c: u64, off: u64, buf: &mut [u8]) -> Res<()> {
        Ok(self.files[c as usize].read_exact_at(buf, off)?)
    }
    fn sync(&self) -> Res<()> {
        for f in &self.files {
            f.sync_data()?;
        }
        Ok(())
    }
}

fn open_file(p: &Path, len: u64, direct: bool) -> Res<File> {
    let mut o = OpenOptions::new();
    o.read(true).write(true).create(true).truncate(false);
    if direct {
        o.custom_flags(libc::O_DIRECT);
    }
    let f = o.open(p)?;
    f.set_len(len)?;
    Ok(f)
}

fn setup(a: &Args, engine: &str) -> Res<Box<dyn Target>> {
    let total = a.chunks * a.chunk_size;
    Ok(match engine {
        "chunk" => {
            let path = a.dir.join("chunk_bench.img");
            let _ = std::fs::remove_file(&path);
            let size = total * 3 / 2 + (512 << 20);
            if !a.sparse_image {
                // An all-zero image is formatted by `create` like a new one.
                zero_file(&path, size)?;
            }
            let mut o = Options::new(DeviceSpec::Path(path));
            o.create = true;
            o.device_size = size;
            if let Some(n) = a.kv_shards {
                o.shards = n;
            }
            o.sync = if let (true, Some(us)) = (a.sync, a.group_commit_us) {
                SyncPolicy::GroupCommit {
                    max_delay: Duration::from_micros(us),
                }
            } else if a.sync {
                SyncPolicy::Always
            } else {
                SyncPolicy::Never
            };
            let db = Db::open(o)?;
            let cs = ChunkStore::open(
                &db,
                ChunkOptions {
                    workers: a.threads.max(1),
                    durable: a.sync,
                    grow_clusters: 16,
                    max_blob_clusters: 1024,
                    ..ChunkOptions::default()
                },
            )?;
            let ids = (0..a.chunks)
                .map(|_| cs.create(a.chunk_size))
                .collect::<Result<Vec<_>, _>>()?;
            Box::new(Chunks {
                db,
                cs,
                ids,
                durable: a.sync,
                copy: a.chunk_copy,
            })
        }
        "raw" => Box::new(Raw {
            f: {
                let p = a.dir.join("chunk_bench.raw");
                zero_file(&p, total)?;
                open_file(&p, total, true)?
            },
            chunk: a.chunk_size,
            durable: a.sync,
        }),
        "files" | "odirect" => {
            let dir = a.dir.join(format!("chunk_bench.{engine}"));
            std::fs::create_dir_all(&dir)?;
            let files = (0..a.chunks)
                .map(|i| {
                    open_file(
                        &dir.join(format!("c{i}")),
                        a.chunk_size,
                        engine == "odirect",
                    )
                })
                .collect::<Res<Vec<_>>>()?;
            Box::new(Files {
                files,
                durable: a.sync,
            })
        }
        e => return Err(format!("unknown engine {e}").into()),
    })
}

fn teardown(a: &Args, engine: &str, t: Box<dyn Target>) -> Res<()> {
    drop(t);
    let _ = std::fs::remove_file(a.dir.join("chunk_bench.img"));
    let _ = std::fs::remove_file(a.dir.join("chunk_bench.raw"));
    let _ = std::fs::remove_dir_all(a.dir.join(format!("chunk_bench.{engine}")));
    Ok(())
}

struct Outcome {
    iops: f64,
    mbps: f64,
    p50: u64,
    p99: u64,
    /// What one operation cost (device writes and flushes; the chunk store's counters).
    per_op: String,
}

fn run_one(a: &Args, engine: &str) -> Res<Outcome> {
    let t = setup(a, engine)?;
    let bs = a.bs as usize;
    let per_chunk = a.chunk_size / a.bs;
    if a.rw == "randread" && a.fresh {
        return Err("--fresh is for writes (a fresh chunk has nothing to read)".into());
    }
    if a.rw != "write" && !a.fresh {
        // Fill every chunk first (sequential 1 MiB writes), then make it durable: random
        // I/O then overwrites allocated space in every engine.
        let step = (1u64 << 20).min(a.chunk_size) as usize;
        let mut buf = AlignedBuf::zeroed(step);
        rand::rngs::StdRng::seed_from_u64(1).fill(&mut buf[..]);
        for c in 0..a.chunks {
            for off in (0..a.chunk_size).step_by(step) {
                t.write(c, off, &buf)?;
            }
        }
        t.sync()?;
    }
    let next = AtomicU64::new(0);
    let c0 = t.counters();
    let d0 = disk_counts(&a.dir);
    let t0 = Instant::now();
    let hists: Vec<Res<Histogram<u64>>> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..a.threads.max(1))
            .map(|th| {
                let t = &t;
                let next = &next;
                s.spawn(move || -> Res<Histogram<u64>> {
                    let mut h = Histogram::<u64>::new(3)?;
                    let mut rng = rand::rngs::StdRng::seed_from_u64(th as u64 + 7);
                    let mut buf = AlignedBuf::zeroed(bs);
                    rng.fill(&mut buf[..]);
                    let mut buf = Some(buf);
                    let mut seq = 0u64;
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i >= a.ops {
                            break;
                        }
                        let start = Instant::now();
                        match a.rw.as_str() {
                            "randwrite" => {
                                let c = rng.gen_range(0..a.chunks);
                                let off = rng.gen_range(0..per_chunk) * a.bs;
                                let b = buf.take().ok_or("buffer lost")?;
                                buf = Some(t.write_owned(c, off, b)?);
                            }
                            "randread" => {
                                let c = rng.gen_range(0..a.chunks);
                                let b = buf.as_mut().ok_or("buffer lost")?;
                                t.read(c, rng.gen_range(0..per_chunk) * a.bs, b)?;
                            }
                            "write" => {
                                // Thread `th` writes chunks th, th + threads, ... in order.
                                let n = a.threads.max(1) as u64;
                                let c = (th as u64 + n * (seq / per_chunk)) % a.chunks;
                                let b = buf.take().ok_or("buffer lost")?;
                                buf = Some(t.write_owned(c, (seq % per_chunk) * a.bs, b)?);
                                seq += 1;
                            }
                            rw => return Err(format!("unknown --rw {rw}").into()),
                        }
                        h.record(start.elapsed().as_micros() as u64)?;
                    }
                    Ok(h)
                })
            })
            .collect();
        hs.into_iter()
            .map(|h| h.join().unwrap_or_else(|_| Err("thread panicked".into())))
            .collect()
    });
    if a.rw != "randread" {
        t.sync()?;
    }
    let secs = t0.elapsed().as_secs_f64().max(1e-9);
    let ops_done = a.ops.max(1) as f64;
    let disk = match (d0, disk_counts(&a.dir)) {
        (Some(b), Some(e)) => format!(
            "dev {:.2} w {:.2} fl",
            (e.0 - b.0) as f64 / ops_done,
            (e.1 - b.1) as f64 / ops_done
        ),
        _ => String::new(),
    };
    let chunk = match (c0, t.counters()) {
        (Some(b), Some(e)) => format!(
            "; data {:.2} w {:.2} r, kv {:.2} commits ({:.2} multi-key) {:.2} reads {:.2} syncs, {} grows",
            (e.data_writes - b.data_writes) as f64 / ops_done,
            (e.data_reads - b.data_reads) as f64 / ops_done,
            (e.commits - b.commits) as f64 / ops_done,
            (e.multi_key_commits - b.multi_key_commits) as f64 / ops_done,
            (e.meta_reads - b.meta_reads) as f64 / ops_done,
            (e.syncs - b.syncs) as f64 / ops_done,
            e.grows - b.grows,
        ),
        _ => String::new(),
    };
    let mut all = Histogram::<u64>::new(3)?;
    for h in hists {
        all.add(h?)?;
    }
    teardown(a, engine, t)?;
    let ops = all.len() as f64;
    Ok(Outcome {
        iops: ops / secs,
        mbps: ops * a.bs as f64 / secs / 1e6,
        p50: all.value_at_quantile(0.5),
        p99: all.value_at_quantile(0.99),
        per_op: format!("{disk}{chunk}"),
    })
}

impl Drop for Chunks {
    fn drop(&mut self) {
        let _ = self.cs.close();
        let _ = self.db.clone().close();
    }
}

fn main() -> std::process::ExitCode {
    let a = Args::parse();
    println!(
        "| engine | rw | bs | chunk size | chunks | threads | sync | fresh | IOPS | MB/s | p50 µs | p99 µs | per op |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    let mut code = std::process::ExitCode::SUCCESS;
    for e in a.engines.split(',') {
        match run_one(&a, e) {
            Ok(o) => println!(
                "| {e} | {} | {} | {} | {} | {} | {} | {} | {:.0} | {:.1} | {} | {} | {} |",
                a.rw,
                a.bs,
                a.chunk_size,
                a.chunks,
                a.threads,
                a.sync,
                a.fresh,
                o.iops,
                o.mbps,
                o.p50,
                o.p99,
                o.per_op
            ),
            Err(err) => {
                eprintln!("{e}: {err}");
                code = std::process::ExitCode::from(2);
            }
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    code
}
