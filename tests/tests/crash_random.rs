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
use rand_chacha::ChaCha8Rng;

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

/// A seeded workload: its sync policy, shard count, steps and key universe.
struct Workload {
    sync: SyncPolicy,
    shards: usize,
    steps: Vec<harness::Step>,
    universe: Vec<Vec<u8>>,
}

fn workload(rng: &mut ChaCha8Rng) -> Workload {
    let sync = policy(rng.gen());
    let shards = rng.gen_range(1..=2);
    let mix = Mix {
        steps: rng.gen_range(20..70),
        ..Mix::default()
    };
    let steps = harness::generate(rng, &mix);
    let universe = harness::universe(mix.keys);
    Workload {
        sync,
        shards,
        steps,
        universe,
    }
}

fn case(seed: u64) {
    let mut rng = seed::rng(seed);
    let w = workload(&mut rng);

    // Dry run: the workload must pass without faults; it also counts the I/Os.
    let dev = harness::device(harness::template(w.shards), seed);
    let db = harness::open(&dev, w.sync, w.shards).expect("open the template");
    let mut oracle = Oracle::new(w.shards);
    let run = harness::drive(db, &dev, &mut oracle, &w.steps, w.sync, &w.universe)
        .unwrap_or_else(|e| panic!("seed {seed:#x}: dry run: {e}"));
    assert!(
        run.error.is_none(),
        "seed {seed:#x}: dry run failed without faults: {:?}",
        run.error
    );
    harness::close_and_check(run.db.unwrap(), &dev, &mut oracle, w.sync, &w.universe)
        .unwrap_or_else(|e| panic!("seed {seed:#x}: dry run close: {e}"));
    let total = dev.io_counts().total();

    // Replay one crash: `CRASH_POINT=j` runs only point j, `CRASH_AT=n` moves it to I/O n.
    let env = |k: &str| std::env::var(k).ok().and_then(|v| seed::parse_seed(&v));
    for j in 0..POINTS {
        let at = rng.gen_range(0..total);
        if env("CRASH_POINT").is_some_and(|p| p != j) {
            continue;
        }
        let at = env("CRASH_AT").unwrap_or(at);
        crash_point(seed, &w, j, at, Some(total));
    }
}

/// Crash point `j` of the workload of `seed`: crash after device I/O `at`, reopen the crash
/// image and check it against the oracle (and, every fourth point, close and fsck).
fn crash_point(seed: u64, w: &Workload, j: u64, at: u64, total: Option<u64>) {
    let verbose = std::env::var("TORTURE_VERBOSE").is_ok();
    let sync = w.sync;
    let tj = Instant::now();
    let dev = harness::device(harness::template(w.shards), seed::mix(seed, j));
    dev.stop_after(at);
    let mut oracle = Oracle::new(w.shards);
    let db = harness::open(&dev, sync, w.shards);
    let of = total.map(|t| format!(" of {t}")).unwrap_or_default();
    let ctx = format!("seed {seed:#x} crash point {j} (after I/O #{at}{of}, {sync:?})");
    let db = match db {
        Ok(db) => {
            let run = harness::drive(db, &dev, &mut oracle, &w.steps, sync, &w.universe)
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
        &w.universe,
    )
    .unwrap_or_else(|e| panic!("{ctx}: {e}"));
    if j.is_multiple_of(4) {
        harness::close_and_check(db2, &dev2, &mut oracle, sync, &w.universe)
            .unwrap_or_else(|e| panic!("{ctx}: after recovery: {e}"));
    }
    if verbose {
        eprintln!(
            "{ctx}: drive {t_drive:?} drop {t_drop:?} total {:?}",
            tj.elapsed()
        );
    }
}

/// A crash while a merge step copies into an output an earlier step already committed
/// (`bc.merge = done`): the copies past the committed length were never flushed, and the
/// torn ones must read as a torn tail, not as damage to the output's durable log.
#[test]
fn crash_in_a_later_merge_step_is_a_torn_tail() {
    let seed = 0x18d9_3134_3927_08d9;
    let w = workload(&mut seed::rng(seed));
    crash_point(seed, &w, 5, 290, None);
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
