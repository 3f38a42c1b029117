//! Compound faults: a crash, or an I/O error, during the recovery of a crashed image. Recovery
//! itself writes (dirty-load mask rebuild, merge roll-back/forward, sealing and shrinking blobs,
//! the super blob's epoch); a crash at any of those I/Os, or a failed read/write/flush, must
//! leave an image whose next recovery still satisfies the oracle of the first crash.

use std::time::Instant;

use blobcask::device::ErrorAt;
use blobcask::SyncPolicy;
use blobcask_tests::harness::{self, Mix};
use blobcask_tests::oracle::Oracle;
use blobcask_tests::seed;
use rand::Rng;

/// A crashed image of a seeded workload and the oracle that describes it.
fn first_crash(s: u64) -> (Vec<u8>, Oracle, SyncPolicy, usize, Vec<Vec<u8>>) {
    let mut rng = seed::rng(s);
    let sync = if rng.gen_ratio(2, 3) {
        SyncPolicy::Always
    } else {
        SyncPolicy::Never
    };
    let shards = rng.gen_range(1..=2);
    let mix = Mix {
        steps: rng.gen_range(20..60),
        ..Mix::default()
    };
    let steps = harness::generate(&mut rng, &mix);
    let universe = harness::universe(mix.keys);
    let dev = harness::device(harness::template(shards), s);
    dev.stop_after(rng.gen_range(20..400));
    let mut oracle = Oracle::new(shards);
    let db = harness::open(&dev, sync, shards).ok();
    let db = db.and_then(|db| {
        harness::drive(db, &dev, &mut oracle, &steps, sync, &universe)
            .unwrap_or_else(|e| panic!("seed {s:#x}: {e}"))
            .db
    });
    let image = dev.crash_image();
    drop(db);
    (image, oracle, sync, shards, universe)
}

fn case(s: u64) {
    let (image, oracle, sync, shards, universe) = first_crash(s);
    let mut rng = seed::rng(seed::mix(s, 1));
    // How many I/Os a full recovery of this image takes.
    let recovery_ios = {
        let dev = harness::device(image.clone(), s);
        match harness::open(&dev, sync, shards) {
            Ok(db) => {
                let n = dev.io_counts().total();
                drop(db);
                n
            }
            Err(e) => panic!("seed {s:#x}: the first crash image does not open: {e}"),
        }
    };
    for j in 0..4u64 {
        let dev = harness::device(image.clone(), seed::mix(s, j + 10));
        let what = if j % 2 == 0 {
            let at = rng.gen_range(0..recovery_ios.max(1));
            dev.stop_after(at);
            format!("crash after I/O #{at} of {recovery_ios} of recovery")
        } else {
            let nth = rng.gen_range(1..=8);
            let at = if rng.gen() {
                ErrorAt::persistent(nth)
            } else {
                ErrorAt::transient(nth)
            };
            let kind = rng.gen_range(0..3);
            dev.update_plan(|p| match kind {
                0 => p.read_error = Some(at),
                1 => p.write_error = Some(at),
                _ => p.flush_error = Some(at),
            });
            format!(
                "{} error {at:?} during recovery",
                ["read", "write", "flush"][kind]
            )
        };
        let db = harness::open(&dev, sync, shards).ok();
        let image2 = dev.crash_image();
        drop(db);
        let mut o = oracle.clone();
        harness::reopen_and_verify(image2, s ^ j, &mut o, sync, &universe)
            .unwrap_or_else(|e| panic!("seed {s:#x}: {what}, then reopen: {e}"));
    }
}

#[test]
fn crash_or_error_during_recovery() {
    let t0 = Instant::now();
    let n = seed::run_seeded("crash_compound", "crash_or_error_during_recovery", 60, case);
    seed::report("crash_or_error_during_recovery", n * 4, t0);
}
