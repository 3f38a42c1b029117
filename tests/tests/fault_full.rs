//! A full device during put, rotation, merge and hint (snapshot) write: the write fails with a
//! clean `Full`, the store stays readable with every acknowledged value, and writes resume
//! after deletes and a merge. Also the sim's ENOSPC (`full_at`) under a put: a clean error,
//! and a reopen satisfies the oracle.

use std::sync::Arc;
use std::time::Instant;

use blobcask::device::SimDevice;
use blobcask::{Db, Error, SyncPolicy};
use blobcask_tests::harness;
use blobcask_tests::oracle::{self, Key, Op, Oracle};
use blobcask_tests::seed;
use rand::Rng;

fn check_reads(db: &Db, o: &Oracle, universe: &[Key], ctx: &str) {
    for k in universe {
        let got = db
            .get(k)
            .unwrap_or_else(|e| panic!("{ctx}: get {} failed: {e}", oracle::show(k)));
        o.check_read(k, got.as_deref())
            .unwrap_or_else(|e| panic!("{ctx}: {e}"));
    }
}

/// Fill the store with puts until `Full`; returns the number of acknowledged puts.
fn fill(
    db: &Db,
    o: &mut Oracle,
    universe: &[Key],
    rng: &mut rand_chacha::ChaCha8Rng,
    ctx: &str,
) -> usize {
    for i in 0..10_000 {
        let k = universe[rng.gen_range(0..universe.len())].clone();
        let v = harness::value(rng, &k, i, 12_000);
        let v = if v.len() < 4000 {
            [v.clone(), vec![7; 6000]].concat()
        } else {
            v
        };
        match db.put(&k, &v) {
            Ok(()) => o.acked(&[Op::Put(k, v)], true),
            Err(Error::Full) => return i,
            Err(e) => panic!("{ctx}: put {i} failed with {e} instead of Full"),
        }
    }
    panic!("{ctx}: the store never filled up");
}

fn case(s: u64, require_resume: bool) {
    let mut rng = seed::rng(s);
    let shards = rng.gen_range(1..=2);
    let universe = harness::universe(rng.gen_range(40..120));
    let ctx = format!("seed {s:#x}");
    let dev = harness::device(harness::template(shards), s);
    let db = harness::open(&dev, SyncPolicy::Always, shards).unwrap();
    let mut o = Oracle::new(shards);

    // 1. put (and rotation: new data blobs) until Full.
    let n = fill(&db, &mut o, &universe, &mut rng, &ctx);
    assert!(n > 10, "{ctx}: full after {n} puts");
    check_reads(&db, &o, &universe, &format!("{ctx} after Full"));
    // Full is not poisoning: a tiny write may still fit, or fail Full again.
    match db.put(&universe[0], b"x") {
        Ok(()) => o.acked(&[Op::Put(universe[0].clone(), b"x".to_vec())], true),
        Err(Error::Full) => {}
        Err(e) => panic!("{ctx}: a small put after Full gave {e}"),
    }

    // 2. delete most keys, then merge: space comes back.
    for k in universe.iter().skip(2) {
        match db.delete(k) {
            Ok(()) => o.acked(&[Op::Delete(k.clone())], true),
            Err(Error::Full) => o.failed(&[Op::Delete(k.clone())]),
            Err(e) => panic!("{ctx}: delete failed with {e}"),
        }
    }
    let merged = db.merge();
    match &merged {
        Ok(()) => o.synced(),
        Err(Error::Full) => {}
        Err(e) => panic!("{ctx}: merge on a full store failed with {e} instead of Full"),
    }
    check_reads(
        &db,
        &o,
        &universe,
        &format!("{ctx} after merge ({merged:?})"),
    );

    // 3. writes resume (strictly so in `full_device_writes_resume_after_deletes_and_merge`).
    for i in 0..20 {
        let k = universe[i % universe.len()].clone();
        let v = format!("resumed-{i}").into_bytes();
        match db.put(&k, &v) {
            Ok(()) => o.acked(&[Op::Put(k, v)], true),
            Err(e) if require_resume => {
                panic!("{ctx}: put {i} after deletes + merge ({merged:?}) failed: {e}")
            }
            Err(Error::Full | Error::Poisoned) => {
                o.failed(&[Op::Put(k, v)]);
                break;
            }
            Err(e) => panic!("{ctx}: put {i} after deletes + merge failed with {e}"),
        }
    }

    // 4. fill again, then close: the snapshot write may hit Full; the close must still leave
    //    an image that reopens with every acknowledged write.
    if db.put(&universe[1], b"probe").is_ok() {
        o.acked(&[Op::Put(universe[1].clone(), b"probe".to_vec())], true);
        let _ = fill(&db, &mut o, &universe, &mut rng, &ctx);
    }
    let closed = db.close();
    if closed.is_ok() {
        o.synced();
    }
    let image = dev.durable_image();
    let (_d, db) = harness::reopen_and_verify(image, s, &mut o, SyncPolicy::Always, &universe)
        .unwrap_or_else(|e| {
            panic!("{ctx}: reopen after a close on a full store ({closed:?}): {e}")
        });
    drop(db);
}

/// Full during puts, rotation, merge and the close-time snapshot write: clean errors, every
/// acknowledged value readable, and the image after close reopens with the oracle.
#[test]
fn full_device_put_rotation_merge_close() {
    let t0 = Instant::now();
    let n = seed::run_seeded(
        "fault_full",
        "full_device_put_rotation_merge_close",
        6,
        |s| case(s, false),
    );
    seed::report("full_device_put_rotation_merge_close", n, t0);
}

/// On a store filled by puts, deletes + `merge` give space back and writes resume. (Found
/// failing by this suite: the merge output needed a free cluster, failed `Full` and poisoned
/// the store; the engine now keeps a merge reserve and a `Full` merge no longer poisons.)
#[test]
fn full_device_writes_resume_after_deletes_and_merge() {
    seed::run_seeded(
        "fault_full",
        "full_device_writes_resume_after_deletes_and_merge",
        6,
        |s| case(s, true),
    );
}

/// The device itself refuses writes past a byte (ENOSPC from below the blobstore).
#[test]
fn device_enospc_is_a_clean_error() {
    let t0 = Instant::now();
    let n = seed::run_seeded("fault_full", "device_enospc_is_a_clean_error", 20, |s| {
        let mut rng = seed::rng(s);
        let shards = 2;
        let universe = harness::universe(30);
        let dev: Arc<SimDevice> = harness::device(harness::template(shards), s);
        let limit = rng.gen_range(1u64..64) * (64 << 10);
        dev.set_full_at(Some(limit));
        let mut o = Oracle::new(shards);
        if let Ok(db) = harness::open(&dev, SyncPolicy::Always, shards) {
            for i in 0..200 {
                let k = universe[rng.gen_range(0..universe.len())].clone();
                let v = harness::value(&mut rng, &k, i, 9000);
                match db.put(&k, &v) {
                    Ok(()) => o.acked(&[Op::Put(k, v)], true),
                    Err(_) => {
                        o.failed(&[Op::Put(k, v)]);
                        break;
                    }
                }
            }
            check_reads(&db, &o, &universe, &format!("seed {s:#x} after ENOSPC"));
            drop(db);
        }
        dev.set_full_at(None);
        let image = dev.crash_image();
        harness::reopen_and_verify(image, s, &mut o, SyncPolicy::Always, &universe)
            .unwrap_or_else(|e| panic!("seed {s:#x}: {e}"));
    });
    seed::report("device_enospc_is_a_clean_error", n, t0);
}
