//! Random crash points: seeded workloads (puts, deletes, batches, rotation, merge, hint and
//! snapshot writes at close, reopen) crashed at a random device I/O. The surviving image keeps
//! every flushed write and a random subset of the unflushed ones, in random order, torn at
//! 4 KiB; the reopened store must satisfy the oracle and fsck.

use std::time::{Duration, Instant};

use blobcask::SyncPolicy;
use blobcask_tests::harness::{self, Mix};
use blobcask_tests::oracle::Oracle;
use blobcask_tests::seed;
use rand::Rng;

/// Crash points per workload; workloads = `WORKLOADS * TORTURE_SCALE`.
const POINTS: u64 = 20;
const WORKLOADS: u64 = 100;

fn policy(r: u32) -> SyncPolicy {
    match r % 8 {
        0..=4 => SyncPolicy::Always,
        5 => SyncPolicy::GroupCommit {
            max_delay: Duration::from_micros(50),
        },
        _ => SyncPolicy::Never,
    }
}

fn case(seed: u64) {
    let mut rng = seed::rng(seed);
    let sync = policy(rng.gen());
    let shards = rng.gen_range(1..=2);
    let mix = Mix {
        steps: rng.gen_range(20..70),
        ..Mix::default()
    };
    let steps = harness::generate(&mut rng, &mix);
    let universe = harness::universe(mix.keys);

    // Dry run: the workload must pass without faults; it also counts the I/Os.
    let dev = harness::device(harness::template(shards), seed);
    let db = harness::open(&dev, sync, shards).expect("open the template");
    let mut oracle = Oracle::new(shards);
    let run = harness::drive(db, &dev, &mut oracle, &steps, sync, &universe)
        .unwrap_or_else(|e| panic!("seed {seed:#x}: dry run: {e}"));
    assert!(
        run.error.is_none(),
        "seed {seed:#x}: dry run failed without faults: {:?}",
        run.error
    );
    harness::close_and_check(run.db.unwrap(), &dev, &mut oracle, sync, &universe)
        .unwrap_or_else(|e| panic!("seed {seed:#x}: dry run close: {e}"));
    let total = dev.io_counts().total();

    let verbose = std::env::var("TORTURE_VERBOSE").is_ok();
    // Replay one crash: `CRASH_POINT=j` runs only point j, `CRASH_AT=n` moves it to I/O n.
    let env = |k: &str| std::env::var(k).ok().and_then(|v| seed::parse_seed(&v));
    for j in 0..POINTS {
        let tj = Instant::now();
        let at = rng.gen_range(0..total);
        if env("CRASH_POINT").is_some_and(|p| p != j) {
            continue;
        }
        let at = env("CRASH_AT").unwrap_or(at);
        let dev = harness::device(harness::template(shards), seed::mix(seed, j));
        dev.stop_after(at);
        let mut oracle = Oracle::new(shards);
        let db = harness::open(&dev, sync, shards);
        let ctx = format!("seed {seed:#x} crash point {j} (after I/O #{at} of {total}, {sync:?})");
        let db = match db {
            Ok(db) => {
                let run = harness::drive(db, &dev, &mut oracle, &steps, sync, &universe)
                    .unwrap_or_else(|e| panic!("{ctx}: {e}"));
                run.db
            }
            Err(_) => None,
        };
        let t_drive = tj.elapsed();
        let image = dev.crash_image();
        drop(db);
        let t_drop = tj.elapsed();
        let (dev2, db2) = harness::reopen_and_verify(
            image,
            seed::mix(seed, j + 100),
            &mut oracle,
            sync,
            &universe,
        )
        .unwrap_or_else(|e| panic!("{ctx}: {e}"));
        if j % 4 == 0 {
            harness::close_and_check(db2, &dev2, &mut oracle, sync, &universe)
                .unwrap_or_else(|e| panic!("{ctx}: after recovery: {e}"));
        }
        if verbose {
            eprintln!(
                "{ctx}: drive {t_drive:?} drop {t_drop:?} total {:?}",
                tj.elapsed()
            );
        }
    }
}

#[test]
fn random_crash_points() {
    let t0 = Instant::now();
    let n = seed::run_seeded("crash_random", "random_crash_points", WORKLOADS, case);
    seed::report("random_crash_points", n * POINTS, t0);
}

/// Canary: the pipeline must catch a lost write. Puts under `SyncPolicy::Never` are recorded
/// as durable, the crash keeps nothing unflushed, and the oracle has to object.
#[test]
fn canary_lost_writes_are_detected() {
    let universe = harness::universe(4);
    let dev = harness::device(harness::template(1), 7);
    let db = harness::open(&dev, SyncPolicy::Never, 1).unwrap();
    let mut oracle = Oracle::new(1);
    for (i, k) in universe.iter().enumerate() {
        let v = format!("canary-{i}").into_bytes();
        db.put(k, &v).unwrap();
        oracle.acked(&[blobcask_tests::oracle::Op::Put(k.clone(), v)], true);
    }
    dev.set_crash_mode(blobcask::device::CrashMode::DropAll);
    let image = dev.crash_image();
    drop(db);
    let r = harness::reopen_and_verify(image, 7, &mut oracle, SyncPolicy::Never, &universe);
    assert!(
        r.is_err(),
        "the oracle accepted a store that lost 'durable' writes"
    );
}
