//! Exhaustive crash sweep of small canonical workloads: each is crashed after every device I/O
//! (so at every write and flush boundary, inside rotation, lease growth, merge, snapshot and
//! hint writes, close and reopen), and each crash point is recovered under four damage
//! variants (random subset + tearing, nothing unflushed, everything unflushed, random without
//! tearing). Every recovered store must satisfy the oracle and fsck.

use std::time::Instant;

use blobcask::SyncPolicy;
use blobcask_tests::harness::{self, Damage, Step};
use blobcask_tests::oracle::{Op, Oracle};
use blobcask_tests::seed;

fn k(i: usize) -> Vec<u8> {
    format!("key{i:03}").into_bytes()
}

fn v(i: usize, len: usize) -> Vec<u8> {
    let mut b = format!("v{i}|").into_bytes();
    b.resize(len.max(b.len()), b'a' + (i % 26) as u8);
    b
}

fn put(i: usize, key: usize, len: usize) -> Step {
    Step::Put(k(key), v(i, len))
}

/// Puts big enough to rotate the 128 KiB data blob, overwrites and deletes; one shard.
fn rotation() -> Vec<Step> {
    let mut s = Vec::new();
    for i in 0..26 {
        s.push(put(i, i % 5, if i % 3 == 0 { 9000 } else { 300 }));
        if i % 7 == 6 {
            s.push(Step::Delete(k(i % 5)));
        }
    }
    s.push(Step::Get(k(1)));
    s
}

/// Cross-shard batches, deletes and a merge over sealed blobs; two shards.
fn batch_merge() -> Vec<Step> {
    let mut s = Vec::new();
    for i in 0..12 {
        s.push(put(i, i % 6, 5000));
    }
    s.push(Step::Batch(vec![
        Op::Put(k(0), v(100, 50)),
        Op::Put(k(1), v(101, 50)),
        Op::Delete(k(2)),
        Op::Put(k(7), v(102, 70)),
    ]));
    s.push(Step::Delete(k(3)));
    s.push(Step::Merge);
    s.push(put(200, 4, 100));
    s.push(Step::Batch(vec![
        Op::Delete(k(0)),
        Op::Put(k(5), v(201, 10)),
    ]));
    s
}

/// `SyncPolicy::Never`: unsynced writes may be lost, as a prefix; syncs are the only promise.
fn unsynced() -> Vec<Step> {
    let mut s = Vec::new();
    for i in 0..8 {
        s.push(put(i, i % 4, 700));
    }
    s.push(Step::Sync);
    for i in 8..16 {
        s.push(put(i, i % 5, 2500));
    }
    s.push(Step::Delete(k(1)));
    s.push(Step::Sync);
    s.push(put(30, 1, 10));
    s.push(Step::Batch(vec![
        Op::Put(k(2), v(31, 10)),
        Op::Delete(k(3)),
    ]));
    s
}

/// Clean close (keydir snapshots) and reopen, a merge (hint blobs), and reopen again.
fn close_reopen() -> Vec<Step> {
    let mut s = Vec::new();
    for i in 0..10 {
        s.push(put(i, i % 6, 6000));
    }
    s.push(Step::Reopen);
    s.push(Step::Delete(k(0)));
    s.push(put(20, 1, 50));
    s.push(Step::Merge);
    s.push(Step::Reopen);
    s.push(put(21, 2, 50));
    s
}

fn sweep(name: &str, steps: Vec<Step>, sync: SyncPolicy, shards: usize) -> u64 {
    let universe = harness::universe(8);
    let total = {
        let dev = harness::device(harness::template(shards), 0);
        let db = harness::open(&dev, sync, shards).unwrap();
        let mut o = Oracle::new(shards);
        let run = harness::drive(db, &dev, &mut o, &steps, sync, &universe).unwrap();
        assert!(run.error.is_none(), "{name}: {:?}", run.error);
        harness::close_and_check(run.db.unwrap(), &dev, &mut o, sync, &universe).unwrap();
        dev.io_counts().total()
    };
    let s = seed::forced_seed().unwrap_or(0);
    let only: Option<u64> = std::env::var("POINT").ok().and_then(|p| p.parse().ok());
    let mut cases = 0;
    for n in 0..=total {
        if only.is_some_and(|p| p != n) {
            continue;
        }
        let dev = harness::device(harness::template(shards), seed::mix(s, n));
        dev.stop_after(n);
        let mut oracle = Oracle::new(shards);
        let db = harness::open(&dev, sync, shards).ok();
        let db = match db {
            Some(db) => {
                harness::drive(db, &dev, &mut oracle, &steps, sync, &universe)
                    .unwrap_or_else(|e| panic!("{name}: crash after I/O #{n}: {e}"))
                    .db
            }
            None => None,
        };
        let mut variants = vec![
            Damage::Random(seed::mix(s, n + 1000)),
            Damage::Untorn(seed::mix(s, n + 2000)),
            Damage::DropAll,
            Damage::KeepAll,
        ];
        // Nightly: more random damage draws per crash point.
        for extra in 1..seed::scale() {
            variants.push(Damage::Random(seed::mix(s, n * 1000 + extra)));
        }
        let images: Vec<_> = variants.iter().map(|d| (d, d.image(&dev))).collect();
        drop(db);
        for (d, img) in images {
            cases += 1;
            let mut o = oracle.clone();
            if let Err(e) = harness::reopen_and_verify(img, n, &mut o, sync, &universe) {
                panic!(
                    "{name}: crash after I/O #{n} of {total}, damage {d:?}: {e}\n  replay: \
                     SEED={s} POINT={n} cargo test -p blobcask-tests --test crash_sweep {name}"
                );
            }
        }
    }
    cases
}

#[test]
fn sweep_rotation() {
    let t0 = Instant::now();
    let n = sweep("sweep_rotation", rotation(), SyncPolicy::Always, 1);
    seed::report("sweep_rotation", n, t0);
}

#[test]
fn sweep_batch_merge() {
    let t0 = Instant::now();
    let n = sweep("sweep_batch_merge", batch_merge(), SyncPolicy::Always, 2);
    seed::report("sweep_batch_merge", n, t0);
}

#[test]
fn sweep_unsynced() {
    let t0 = Instant::now();
    let n = sweep("sweep_unsynced", unsynced(), SyncPolicy::Never, 2);
    seed::report("sweep_unsynced", n, t0);
}

#[test]
fn sweep_close_reopen() {
    let t0 = Instant::now();
    let n = sweep("sweep_close_reopen", close_reopen(), SyncPolicy::Always, 2);
    seed::report("sweep_close_reopen", n, t0);
}
