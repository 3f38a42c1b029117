//! The read cache and `multi_get`: what was just written is read from memory, the cache never
//! serves bytes the log does not hold (even while readers race the writer rewriting the page
//! at the log's end), it resists a scan, and `multi_get` answers like a loop of `get`s.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use blobcask::device::SimDevice;
use blobcask::{Db, DeviceSpec, Options, SyncPolicy};

fn opts(dev: &Arc<SimDevice>, cache_bytes: usize, sync: SyncPolicy) -> Options {
    let mut o = Options::new(DeviceSpec::Sim(dev.clone()));
    o.cluster_size = 64 << 10;
    o.shards = 2;
    o.max_blob_size = 4 << 20;
    o.max_value_size = 64 << 10;
    o.cache_bytes = cache_bytes;
    o.sync = sync;
    o.merge.auto = false;
    o
}

fn sim() -> Arc<SimDevice> {
    Arc::new(SimDevice::new(128 << 20, 4096, 7).unwrap())
}

fn key(i: u32) -> Vec<u8> {
    format!("key{i:08}").into_bytes()
}

fn value(i: u32, round: u32) -> Vec<u8> {
    let n = 20 + (i as usize * 7 + round as usize) % 300;
    (0..n)
        .map(|j| (i as usize + j + round as usize) as u8)
        .collect()
}

#[test]
fn what_was_just_written_is_read_without_a_device_read() {
    for sync in [
        SyncPolicy::Never,
        SyncPolicy::Always,
        SyncPolicy::GroupCommit {
            max_delay: Duration::ZERO,
        },
    ] {
        let dev = sim();
        let db = Db::open(opts(&dev, 8 << 20, sync)).unwrap();
        for i in 0..3000 {
            db.put(&key(i), &value(i, 0)).unwrap();
        }
        db.sync().unwrap();
        let before = dev.io_counts().reads;
        for i in 0..3000 {
            assert_eq!(db.get(&key(i)).unwrap(), Some(value(i, 0)), "{sync:?}");
        }
        assert_eq!(
            dev.io_counts().reads,
            before,
            "{sync:?}: a get went to the device"
        );
        let st = db.stats().unwrap();
        assert!(st.cache_hits >= 3000 && st.cache_misses == 0, "{st:?}");
        assert!(st.cache_bytes > 0 && st.cache_bytes <= st.cache_capacity);
        db.close().unwrap();
    }
}

#[test]
fn without_a_cache_every_get_of_a_written_record_reads_the_device() {
    let dev = sim();
    let db = Db::open(opts(&dev, 0, SyncPolicy::Always)).unwrap();
    for i in 0..200 {
        db.put(&key(i), &value(i, 0)).unwrap();
    }
    let before = dev.io_counts().reads;
    for i in 0..200 {
        assert_eq!(db.get(&key(i)).unwrap(), Some(value(i, 0)));
    }
    // All but the records in each shard's last page, which the write-behind buffer keeps.
    let reads = dev.io_counts().reads - before;
    assert!(reads >= 150, "{reads} device reads");
}

#[test]
fn a_miss_caches_whole_pages_so_neighbours_hit() {
    let dev = sim();
    let o = || opts(&dev, 8 << 20, SyncPolicy::Always);
    let db = Db::open(o()).unwrap();
    for i in 0..2000 {
        db.put(&key(i), &value(i, 0)).unwrap();
    }
    db.close().unwrap();
    // A reopened store starts with an empty cache.
    let db = Db::open(o()).unwrap();
    let before = dev.io_counts().reads;
    for i in 0..2000 {
        assert_eq!(db.get(&key(i)).unwrap(), Some(value(i, 0)));
    }
    let reads = dev.io_counts().reads - before;
    // ~200 B records: a 4 KiB page holds ~20 of them; each page is read once.
    assert!(reads < 400, "{reads} device reads for 2000 gets");
    let before = dev.io_counts().reads;
    for i in 0..2000 {
        assert_eq!(db.get(&key(i)).unwrap(), Some(value(i, 0)));
    }
    assert_eq!(dev.io_counts().reads, before, "second pass hits everywhere");
    db.close().unwrap();
}

#[test]
fn readers_racing_the_writer_at_the_log_end_never_see_stale_bytes() {
    // One shard, a flush per put: every put rewrites the page holding the log's end while
    // readers read the records just published. The cache holds a few pages only, so readers
    // miss, read pages from the device and insert them, racing the writer's newer copies.
    let dev = sim();
    let mut o = opts(&dev, 2 * 4160, SyncPolicy::Always);
    o.shards = 1;
    let db = Db::open(o).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let published = Arc::new(AtomicU32::new(0));
    let reads = Arc::new(AtomicU64::new(0));
    let mut readers = Vec::new();
    for _ in 0..3 {
        let (db, stop, published, reads) =
            (db.clone(), stop.clone(), published.clone(), reads.clone());
        readers.push(std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let top = published.load(Ordering::Acquire);
                for back in (0..top.min(64)).step_by(3) {
                    let i = top - 1 - back;
                    assert_eq!(db.get(&key(i)).unwrap(), Some(value(i, 0)), "key {i}");
                    reads.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    for i in 0..1500u32 {
        db.put(&key(i), &value(i, 0)).unwrap();
        published.store(i + 1, Ordering::Release);
        // Keep the readers in step with the writer (at most a few seconds in all).
        let t0 = std::time::Instant::now();
        while reads.load(Ordering::Relaxed) < u64::from(i)
            && t0.elapsed() < Duration::from_millis(5)
        {
            std::thread::yield_now();
        }
    }
    stop.store(true, Ordering::Relaxed);
    for r in readers {
        r.join().unwrap();
    }
    assert!(reads.load(Ordering::Relaxed) >= 1500);
    for i in 0..1500 {
        assert_eq!(db.get(&key(i)).unwrap(), Some(value(i, 0)));
    }
    db.close().unwrap();
}

#[test]
fn overwrites_and_deletes_are_never_answered_from_an_old_page() {
    let dev = sim();
    let db = Db::open(opts(&dev, 4 << 20, SyncPolicy::Never)).unwrap();
    let mut model: HashMap<u32, Option<u32>> = HashMap::new();
    for round in 0..6u32 {
        for i in 0..800u32 {
            if (i + round) % 5 == 0 {
                db.delete(&key(i)).unwrap();
                model.insert(i, None);
            } else {
                db.put(&key(i), &value(i, round)).unwrap();
                model.insert(i, Some(round));
            }
        }
        if round == 3 {
            db.merge().unwrap();
        }
        for (&i, &r) in &model {
            assert_eq!(db.get(&key(i)).unwrap(), r.map(|r| value(i, r)), "{i}");
        }
    }
    db.close().unwrap();
}

#[test]
fn multi_get_answers_like_a_loop_of_gets() {
    let dev = sim();
    let o = || opts(&dev, 1 << 20, SyncPolicy::Always);
    let db = Db::open(o()).unwrap();
    for i in 0..500 {
        db.put(&key(i), &value(i, 0)).unwrap();
    }
    db.delete(&key(7)).unwrap();
    db.close().unwrap();
    let db = Db::open(o()).unwrap();
    // Warm a few, leave the rest on the device; absent, deleted and repeated keys too.
    for i in 0..20 {
        db.get(&key(i)).unwrap();
    }
    let keys: Vec<Vec<u8>> = [3, 7, 450, 9999, 3, 120, 499, 0, 260]
        .iter()
        .map(|&i| key(i))
        .collect();
    let got = db.multi_get(&keys).unwrap();
    let want: Vec<Option<Vec<u8>>> = keys.iter().map(|k| db.get(k).unwrap()).collect();
    assert_eq!(got, want);
    assert_eq!(got[1], None);
    assert_eq!(got[3], None);
    assert_eq!(got[2], Some(value(450, 0)));
    assert!(db.multi_get::<&[u8]>(&[]).unwrap().is_empty());
    assert!(
        db.multi_get(&[b"".as_slice()]).is_err(),
        "an empty key is refused"
    );
    db.close().unwrap();
}

#[test]
fn get_with_hands_over_the_value_in_place() {
    let dev = sim();
    let db = Db::open(opts(&dev, 1 << 20, SyncPolicy::Always)).unwrap();
    db.put(b"k", b"hello").unwrap();
    assert_eq!(db.get_with(b"k", |v| v.len()).unwrap(), Some(5));
    assert_eq!(db.get_with(b"nope", |v| v.len()).unwrap(), None);
    let sum = db.fold(0usize, |acc, _k, v| acc + v.len()).unwrap();
    assert_eq!(sum, 5);
    db.close().unwrap();
}

#[test]
fn a_scan_does_not_push_out_the_pages_read_again_and_again() {
    // A cache of ~64 pages per shard; a hot set of ~8 pages per shard read repeatedly, then one
    // pass over ~40x the cache: by `fold`, and by `get`s of every key once, in random order.
    // The hot set is still served from memory afterwards.
    let dev = sim();
    let o = || opts(&dev, 2 * 64 * 4160, SyncPolicy::Never);
    let db = Db::open(o()).unwrap();
    let big = |i: u32| vec![(i % 256) as u8; 1000];
    let n = 22_000u32;
    for i in 0..n {
        db.put(&key(i), &big(i)).unwrap();
    }
    db.close().unwrap();
    let db = Db::open(o()).unwrap();
    let hot: Vec<u32> = (0..16).map(|i| i * 5).collect();
    let read_hot = |db: &Db| {
        for _ in 0..20 {
            for &i in &hot {
                assert_eq!(db.get(&key(i)).unwrap(), Some(big(i)));
            }
        }
    };
    let hot_hits = |db: &Db| {
        let before = db.stats().unwrap().cache_hits;
        for &i in &hot {
            assert_eq!(db.get(&key(i)).unwrap(), Some(big(i)));
        }
        db.stats().unwrap().cache_hits - before
    };
    read_hot(&db);
    let bytes = db.fold(0u64, |acc, _k, v| acc + v.len() as u64).unwrap();
    assert_eq!(bytes, u64::from(n) * 1000);
    assert_eq!(hot_hits(&db), hot.len() as u64, "after a fold");

    read_hot(&db);
    // A one-pass random-order read: a multiplicative permutation of 0..n.
    for j in 0..u64::from(n) {
        let i = (j * 7919 % u64::from(n)) as u32;
        assert_eq!(db.get(&key(i)).unwrap(), Some(big(i)));
    }
    let hits = hot_hits(&db);
    assert!(
        hits * 10 >= hot.len() as u64 * 8,
        "only {hits} of {} hot reads hit after a one-pass read of everything",
        hot.len()
    );
    db.close().unwrap();
}
