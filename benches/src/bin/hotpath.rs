//! Allocations per `put` and per `get` on blobcask's hot path, counted by a global allocator.
//!
//! A store is opened with the engine's defaults (on a memory device and on an image file),
//! warmed up (every key written, then read once), and then a fixed number of puts
//! (overwrites of random keys) and gets (of random present keys) are counted. Every thread
//! of the process counts, so work a put hands to a background thread (group commit, write
//! behind) is part of its figure. `get` is counted twice: with the default read cache
//! (after the warm-up every key is in it) and with the cache off (every get reads the
//! device). Under the default sync policy (group commit) every put on an idle store is a
//! device write and a flush, so the file figures take a while (about a millisecond a put).
//!
//! ```sh
//! cargo run --release -p blobcask-bench --bin hotpath -- --ops=20000
//! ```

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicU64, Ordering};

use blobcask::device::{AnyDevice, MemoryDevice};
use blobcask::{Db, DeviceSpec, Options};
use blobcask_bench::workload::{make_key, ValueGen};
use blobcask_bench::BenchResult;
use clap::Parser;
use rand::{Rng, SeedableRng};

/// The system allocator, counting allocations (a `realloc` counts as one) and the bytes
/// they ask for.
struct Counting;

static ALLOCS: AtomicU64 = AtomicU64::new(0);
static BYTES: AtomicU64 = AtomicU64::new(0);

fn count(bytes: usize) {
    ALLOCS.fetch_add(1, Ordering::Relaxed);
    BYTES.fetch_add(bytes as u64, Ordering::Relaxed);
}

// SAFETY: every method forwards to `System` with the caller's arguments unchanged, so the
// `GlobalAlloc` contract holds as it does for `System`; counting touches only atomics.
// A global allocator is an unsafe trait: this one only counts and forwards to the system's.
#[allow(unsafe_code)]
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count(layout.size());
        // SAFETY: the caller upholds `alloc`'s contract (non-zero size), passed on as is.
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count(layout.size());
        // SAFETY: as for `alloc`.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count(new_size);
        // SAFETY: `ptr` was allocated by this allocator (i.e. by `System`) with `layout`.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` was allocated by this allocator (i.e. by `System`) with `layout`.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

#[derive(Parser)]
#[command(
    name = "hotpath",
    version,
    about = "allocations per put and per get of blobcask"
)]
struct Args {
    /// Operations counted per figure.
    #[arg(long, default_value_t = 20_000)]
    ops: u64,
    /// Distinct keys (written and read once before counting).
    #[arg(long, default_value_t = 5_000)]
    keys: u64,
    #[arg(long, default_value_t = 16)]
    key_size: usize,
    #[arg(long, default_value_t = 100)]
    value_size: usize,
}

/// One counted figure.
struct Figure {
    device: &'static str,
    op: &'static str,
    allocs: f64,
    bytes: f64,
}

fn counted(ops: u64, mut f: impl FnMut() -> BenchResult<()>) -> BenchResult<(f64, f64)> {
    let (a0, b0) = (
        ALLOCS.load(Ordering::Relaxed),
        BYTES.load(Ordering::Relaxed),
    );
    f()?;
    let (a1, b1) = (
        ALLOCS.load(Ordering::Relaxed),
        BYTES.load(Ordering::Relaxed),
    );
    let n = ops.max(1) as f64;
    Ok(((a1 - a0) as f64 / n, (b1 - b0) as f64 / n))
}

/// Warm `db` up and count `args.ops` puts, then `args.ops` gets.
fn measure(args: &Args, db: &Db, device: &'static str, cache: bool) -> BenchResult<Vec<Figure>> {
    let mut key = Vec::with_capacity(args.key_size);
    let mut vals = ValueGen::new(7, args.value_size);
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(11);
    let keys = args.keys.max(1);
    for i in 0..keys {
        make_key(i, args.key_size, &mut key);
        db.put(&key, vals.next(args.value_size))?;
    }
    db.sync()?;
    for i in 0..keys {
        make_key(i, args.key_size, &mut key);
        db.get(&key)?.ok_or("a written key is missing")?;
    }
    // The keys and values are prepared outside the counted loops.
    let picks: Vec<Vec<u8>> = (0..args.ops)
        .map(|_| {
            let mut k = Vec::with_capacity(args.key_size);
            make_key(rng.gen_range(0..keys), args.key_size, &mut k);
            k
        })
        .collect();
    let mut out = Vec::new();
    if cache {
        let (allocs, bytes) = counted(args.ops, || {
            for k in &picks {
                db.put(k, vals.next(args.value_size))?;
            }
            Ok(())
        })?;
        out.push(Figure {
            device,
            op: "put",
            allocs,
            bytes,
        });
        db.sync()?;
        // Read every key once more: the overwrites left the cache without them.
        for k in &picks {
            db.get(k)?;
        }
    }
    let (allocs, bytes) = counted(args.ops, || {
        for k in &picks {
            db.get(k)?.ok_or("a written key is missing")?;
        }
        Ok(())
    })?;
    out.push(Figure {
        device,
        op: if cache {
            "get (default cache, hit)"
        } else {
            "get (cache off, device read)"
        },
        allocs,
        bytes,
    });
    Ok(out)
}

fn run(args: &Args) -> BenchResult<Vec<Figure>> {
    let mut figs = Vec::new();
    let dir = tempfile::Builder::new().prefix("hotpath.").tempdir()?;
    for cache in [true, false] {
        let mem = std::sync::Arc::new(MemoryDevice::new(512 << 20, 4096)?);
        let mut o = Options::new(DeviceSpec::Device(AnyDevice::Memory(mem)));
        o.device_size = 512 << 20;
        if !cache {
            o.cache_bytes = 0;
        }
        let db = Db::open(o)?;
        figs.extend(measure(args, &db, "memory", cache)?);
        db.close()?;

        let img = dir.path().join(format!("hotpath-{cache}.img"));
        let mut o = Options::new(DeviceSpec::Path(img.clone()));
        o.device_size = 512 << 20;
        if !cache {
            o.cache_bytes = 0;
        }
        let db = Db::open(o)?;
        figs.extend(measure(args, &db, "file", cache)?);
        db.close()?;
        std::fs::remove_file(&img)?;
    }
    Ok(figs)
}

fn main() {
    let args = Args::parse();
    match run(&args) {
        Ok(figs) => {
            println!(
                "{} ops per figure, {} keys of {} B, values of {} B, store defaults",
                args.ops, args.keys, args.key_size, args.value_size
            );
            println!();
            println!("| device | op | allocations/op | allocated bytes/op |");
            println!("|---|---|---:|---:|");
            for f in figs {
                println!(
                    "| {} | {} | {:.2} | {:.0} |",
                    f.device, f.op, f.allocs, f.bytes
                );
            }
        }
        Err(e) => {
            eprintln!("hotpath: {e}");
            std::process::exit(1);
        }
    }
}
