//! I/O error loops (SQLite style): fail the N-th read, write or flush of a seeded workload
//! (counted from the device's first I/O, so open is included), N = 1, 2, ... until the workload
//! completes without reaching it; once transient, once persistent. Whatever fails:
//! - no read returns a wrong value;
//! - after a failed write, sync or merge the store refuses writes with `Poisoned`;
//! - after the faults clear, a reopen of the crash image satisfies the oracle and fsck.

use std::time::Instant;

use blobcask::device::ErrorAt;
use blobcask::{Error, SyncPolicy};
use blobcask_tests::harness::{self, Mix, Step};
use blobcask_tests::oracle::{Op, Oracle};
use blobcask_tests::seed;
use rand::Rng;

#[derive(Clone, Copy, Debug)]
enum Kind {
    Read,
    Write,
    Flush,
}

/// Injection points per (kind, persistence) in the default tier.
const POINTS: u64 = 250;

fn arm(dev: &blobcask::device::SimDevice, kind: Kind, at: ErrorAt) {
    dev.update_plan(|p| match kind {
        Kind::Read => p.read_error = Some(at),
        Kind::Write => p.write_error = Some(at),
        Kind::Flush => p.flush_error = Some(at),
    });
}

fn count(dev: &blobcask::device::SimDevice, kind: Kind) -> u64 {
    let c = dev.io_counts();
    match kind {
        Kind::Read => c.reads,
        Kind::Write => c.writes,
        Kind::Flush => c.flushes,
    }
}

/// One injection point; returns whether the injected error was reached.
fn point(w: u64, steps: &[Step], sync: SyncPolicy, kind: Kind, at: ErrorAt) -> bool {
    let shards = 2;
    let universe = harness::universe(Mix::default().keys);
    let ctx = format!("workload seed {w:#x}, {kind:?} error {at:?}, {sync:?}");
    let dev = harness::device(harness::template(shards), w ^ at.nth);
    arm(&dev, kind, at);
    let mut oracle = Oracle::new(shards);
    let db = harness::open(&dev, sync, shards).ok();
    let db = match db {
        Some(db) => {
            let run = harness::drive(db, &dev, &mut oracle, steps, sync, &universe)
                .unwrap_or_else(|e| panic!("{ctx}: {e}"));
            if std::env::var("TORTURE_VERBOSE").is_ok() {
                eprintln!("{ctx}: run ended {:?} after {} steps", run.error, run.done);
            }
            if let (Some(db), Some((i, e))) = (&run.db, &run.error) {
                let writes = matches!(
                    steps[*i],
                    Step::Put(..) | Step::Delete(_) | Step::Batch(_) | Step::Sync | Step::Merge
                );
                if writes && !matches!(e, Error::Full) {
                    // Writes are refused until reopen.
                    let k = universe[0].clone();
                    let r = db.put(&k, b"after-failure");
                    if !matches!(r, Err(Error::Poisoned)) {
                        panic!("{ctx}: step {i} failed with {e} but a later put gave {r:?}");
                    }
                    oracle.failed(&[Op::Put(k, b"after-failure".to_vec())]);
                }
            }
            run.db
        }
        None => None,
    };
    let reached = count(&dev, kind) >= at.nth;
    if std::env::var("TORTURE_VERBOSE").is_ok() {
        eprintln!("{ctx}: reached {reached}");
    }
    // Close what can be closed (a transient error may let close succeed), then "crash".
    if let Some(db) = db {
        let r = db.close();
        if std::env::var("TORTURE_VERBOSE").is_ok() {
            eprintln!("{ctx}: close {r:?}");
        }
        if r.is_ok() {
            oracle.synced();
        }
    }
    dev.update_plan(|p| {
        p.read_error = None;
        p.write_error = None;
        p.flush_error = None;
    });
    let image = dev.crash_image();
    harness::reopen_and_verify(image, w, &mut oracle, sync, &universe)
        .unwrap_or_else(|e| panic!("{ctx}: {e}"));
    reached
}

fn sweep(kind: Kind, persistent: bool) -> u64 {
    let name = format!(
        "io_{kind:?}_{}",
        if persistent {
            "persistent"
        } else {
            "transient"
        }
    )
    .to_lowercase();
    let mut done = 0u64;
    let target = POINTS * seed::scale();
    let mut w_index = 0u64;
    while done < target {
        let w = match seed::forced_seed() {
            Some(s) if w_index == 0 => s,
            Some(_) => break,
            None => seed::mix(
                seed::mix(0x10, kind as u64 * 2 + u64::from(persistent)),
                w_index,
            ),
        };
        w_index += 1;
        let mut rng = seed::rng(w);
        let sync = if rng.gen_ratio(3, 4) {
            SyncPolicy::Always
        } else {
            SyncPolicy::Never
        };
        let mix = Mix {
            steps: 40,
            reopen: 3,
            ..Mix::default()
        };
        let steps = harness::generate(&mut rng, &mix);
        for nth in 1.. {
            let at = if persistent {
                ErrorAt::persistent(nth)
            } else {
                ErrorAt::transient(nth)
            };
            let r = std::panic::catch_unwind(|| point(w, &steps, sync, kind, at));
            match r {
                Ok(true) => done += 1,
                Ok(false) => break,
                Err(p) => {
                    eprintln!(
                        "\n*** {name} FAILED at workload seed {w:#x}; replay with:\n    SEED={w:#x} \
                         cargo test -p blobcask-tests --test fault_io -- {name}\n"
                    );
                    std::panic::resume_unwind(p);
                }
            }
            if done >= target {
                break;
            }
        }
    }
    done
}

macro_rules! io_loop {
    ($name:ident, $kind:expr, $persistent:expr) => {
        #[test]
        fn $name() {
            let t0 = Instant::now();
            let n = sweep($kind, $persistent);
            seed::report(stringify!($name), n, t0);
        }
    };
}

io_loop!(io_read_transient, Kind::Read, false);
io_loop!(io_read_persistent, Kind::Read, true);
io_loop!(io_write_transient, Kind::Write, false);
io_loop!(io_write_persistent, Kind::Write, true);
io_loop!(io_flush_transient, Kind::Flush, false);
io_loop!(io_flush_persistent, Kind::Flush, true);
