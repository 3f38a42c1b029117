//! Continuing the active blob after a reopen: a kill at any device write of the process that
//! continues it (dropping the old snapshot, zeroing the tail, appending) loses nothing
//! acknowledged, and a tail torn by an earlier kill never shows up behind the new records.

use blobcask::{Db, Error, SyncPolicy};
use blobcask_tests::backend::{NativeMem, Rig};
use blobcask_tests::suite::{opts, state, value, Model};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

const MIB: u64 = 1 << 20;

/// Put or delete random keys; `Err` at the first failed write, with the model it would make.
fn ops<S: blobcask::blobstore::BlobStore>(
    db: &Db<S>,
    rng: &mut ChaCha8Rng,
    model: &mut Model,
    n: u32,
    base: u32,
) -> Result<(), (Error, Model)> {
    for i in 0..n {
        let k = format!("k{}", rng.gen_range(0..40)).into_bytes();
        let mut next = model.clone();
        let res = if rng.gen_range(0..5) == 0 {
            next.remove(&k);
            db.delete(&k)
        } else {
            let v = value(rng, &k, base + i);
            next.insert(k.clone(), v.clone());
            db.put(&k, &v)
        };
        match res {
            Ok(()) => *model = next,
            Err(e) => return Err((e, next)),
        }
    }
    Ok(())
}

#[test]
fn a_kill_anywhere_while_continuing_the_active_blob_loses_nothing() {
    let mut cases = 0;
    for seed in 0..6u64 {
        // How many device writes the continuing process makes, to spread the kills over.
        let writes = {
            let mut r = Rig::new(NativeMem::new(16 * MIB));
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            let mut model = Model::new();
            let db = r.open(opts(SyncPolicy::Always)).unwrap();
            ops(&db, &mut rng, &mut model, 60, 0).unwrap();
            let db = r.kill_and_reopen(db, opts(SyncPolicy::Always));
            ops(&db, &mut rng, &mut model, 10, 500).unwrap();
            db.close().unwrap();
            let db = r.open(opts(SyncPolicy::Always)).unwrap();
            let before = r.switch().writes();
            ops(&db, &mut rng, &mut model, 30, 1000).unwrap();
            let n = r.switch().writes() - before;
            db.close().unwrap();
            n
        };
        for at in (0..=writes).step_by((writes as usize / 10).max(1)) {
            let mut r = Rig::new(NativeMem::new(16 * MIB));
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            let mut model = Model::new();
            let db = r.open(opts(SyncPolicy::Always)).unwrap();
            // A first life killed mid-write leaves a torn tail in the active blob.
            r.switch().arm(rng.gen_range(20..80));
            let first = ops(&db, &mut rng, &mut model, 60, 0);
            let mut db = r.kill_and_reopen(db, opts(SyncPolicy::Always));
            let got = state(&db);
            if let Err((_, with)) = &first {
                assert!(got == model || got == *with, "seed {seed}: first recovery");
            } else {
                assert_eq!(got, model, "seed {seed}: first recovery");
            }
            model = got;
            // The second life continues the blob and closes cleanly (a keydir snapshot
            // records the blob's length); the third continues it again and is killed at
            // write `at`.
            ops(&db, &mut rng, &mut model, 10, 500).unwrap();
            db.close().unwrap();
            db = r.open(opts(SyncPolicy::Always)).unwrap();
            assert!(
                db.stats().unwrap().recovery_used_hints,
                "seed {seed}: no snapshot"
            );
            r.switch().arm(at);
            let second = ops(&db, &mut rng, &mut model, 30, 1000);
            db = r.kill_and_reopen(db, opts(SyncPolicy::Always));
            let got = state(&db);
            match &second {
                Err((_, with)) => assert!(
                    got == model || got == *with,
                    "seed {seed}, kill at {at} of {writes}: lost or invented a write"
                ),
                Ok(()) => assert_eq!(got, model, "seed {seed}, kill at {at}: after all acked"),
            }
            // A last life writes on, closes, and a clean reopen agrees.
            let mut model = got;
            ops(&db, &mut rng, &mut model, 20, 2000).unwrap();
            db.close().unwrap();
            let db = r.open(opts(SyncPolicy::Always)).unwrap();
            assert_eq!(state(&db), model, "seed {seed}, kill at {at}: clean reopen");
            db.close().unwrap();
            cases += 1;
        }
    }
    println!("{cases} kill points while continuing an active blob");
}

/// Short-lived writers (open, write a little, close) keep continuing the same blobs: the
/// store does not grow a blob per process.
#[test]
fn reopening_writers_continue_their_blobs() {
    let mut r = Rig::new(NativeMem::new(16 * MIB));
    let mut model = Model::new();
    for i in 0..200u32 {
        let db = r.open(opts(SyncPolicy::Always)).unwrap();
        let k = format!("k{i}").into_bytes();
        db.put(&k, b"v").unwrap();
        model.insert(k, b"v".to_vec());
        db.close().unwrap();
    }
    let db = r.open(opts(SyncPolicy::Always)).unwrap();
    assert_eq!(state(&db), model);
    let blobs = db.stats().unwrap().blobs.len();
    assert!(blobs <= 2, "200 writers left {blobs} data blobs");
    db.close().unwrap();
}
