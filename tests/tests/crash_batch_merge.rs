//! A write batch bigger than a blob seals blobs while its records are not yet in the keydir.
//! A merge running meanwhile must not take those records for dead: it used to merge such a
//! blob as if they were, so the batch then published locations in a deleted blob, later
//! merges dropped the older values, and after a kill the keys were gone altogether (the
//! CLI's `load`, which commits 256-record batches while auto merge runs).

use std::sync::Arc;
use std::time::{Duration, Instant};

use blobcask::{SyncPolicy, WriteBatch};
use blobcask_tests::backend::{NativeMem, Rig};
use blobcask_tests::killswitch::Switch;
use blobcask_tests::suite::{opts, state, Model};

const MIB: u64 = 1 << 20;

fn options(auto: bool) -> blobcask::Options {
    let mut o = opts(SyncPolicy::Always);
    o.shards = 1;
    o.merge.auto = auto;
    o.merge.check_interval = Duration::from_millis(1);
    o.merge.small_blobs_trigger = 0;
    o
}

/// One batch overwriting every key, several blobs (256 KiB each) long.
fn batch(keys: &[Vec<u8>], round: u32, model: &mut Model) -> WriteBatch {
    let mut b = WriteBatch::new();
    for (i, k) in keys.iter().enumerate() {
        let v = format!("r{round}k{i}-")
            .into_bytes()
            .repeat(1 + (i % 4) * 800);
        b.put(k, &v);
        model.insert(k.clone(), v);
    }
    b
}

/// Hold the writer until a merge ran beside it (its device writes stopped moving), or
/// long enough that none will.
fn let_a_merge_run(switch: &Switch) {
    let t0 = Instant::now();
    let start = switch.writes();
    let mut last = (start, Instant::now());
    while t0.elapsed() < Duration::from_millis(400) {
        std::thread::sleep(Duration::from_millis(5));
        let w = switch.writes();
        if w != last.0 {
            last = (w, Instant::now());
        } else if w != start && last.1.elapsed() > Duration::from_millis(60) {
            return;
        }
    }
}

#[test]
fn a_merge_beside_a_batch_that_spans_blobs_loses_nothing() {
    let keys: Vec<Vec<u8>> = (0..40).map(|i| format!("key{i:02}").into_bytes()).collect();
    // Device writes one such batch makes, to spread the pause over.
    let writes = {
        let mut r = Rig::new(NativeMem::new(16 * MIB));
        let db = r.open(options(false)).unwrap();
        let mut model = Model::new();
        db.write_batch(batch(&keys, 0, &mut model)).unwrap();
        db.close().unwrap();
        let db = r.open(options(false)).unwrap();
        let before = r.switch().writes();
        db.write_batch(batch(&keys, 1, &mut model)).unwrap();
        let n = r.switch().writes() - before;
        db.close().unwrap();
        n
    };
    assert!(
        writes > 4,
        "the batch must span blobs ({writes} device writes)"
    );
    for at in 1..writes {
        let mut r = Rig::new(NativeMem::new(16 * MIB));
        let mut model = Model::new();
        let db = r.open(options(false)).unwrap();
        db.write_batch(batch(&keys, 0, &mut model)).unwrap();
        db.close().unwrap();
        let db = r.open(options(true)).unwrap();
        let sw: Arc<Switch> = Arc::clone(r.switch());
        let hook_sw = Arc::clone(&sw);
        sw.on_write(
            sw.writes() + at,
            Box::new(move || let_a_merge_run(&hook_sw)),
        );
        db.write_batch(batch(&keys, 1, &mut model)).unwrap();
        assert_eq!(state(&db), model, "pause at write {at}: after the batch");
        // Merges that trust the keydir now run over whatever the batch left.
        db.merge().unwrap();
        assert_eq!(state(&db), model, "pause at write {at}: after a merge");
        let db = r.kill_and_reopen(db, options(false));
        assert_eq!(state(&db), model, "pause at write {at}: after a kill");
        db.close().unwrap();
    }
}
