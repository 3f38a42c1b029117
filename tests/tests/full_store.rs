//! A full store always comes back: fill it with 1000-byte values until `Full`, delete 50, 80 or
//! 95 % of the keys, merge, write again until `Full`, reopen — on 1, 2, 4 and 8 shards and on
//! the smallest store a new store may have. An oracle checks every key after each step and
//! after the reopen. Also: a shard count the device cannot hold is refused before anything is
//! written, and dead space in an active blob gets merged.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use blobcask::{Db, DeviceSpec, Error, Options, SyncPolicy};

const MIB: u64 = 1 << 20;
const VALUE: usize = 1000;

fn options(path: &Path, size: u64, cluster: u32, shards: usize) -> Options {
    let mut o = Options::new(DeviceSpec::Path(path.to_path_buf()));
    o.create = true;
    o.device_size = size;
    o.cluster_size = cluster;
    o.shards = shards;
    o.sync = SyncPolicy::Never;
    o.merge.auto = false;
    o.cache_bytes = 0;
    o
}

fn key(i: u32) -> Vec<u8> {
    format!("key{i:07}").into_bytes()
}

fn value(i: u32, gen: u32) -> Vec<u8> {
    let mut v = format!("{i}:{gen}:").into_bytes();
    v.resize(VALUE, (i as u8) ^ (gen as u8));
    v
}

/// Every key ever written: its newest value, or `None` once deleted.
type Oracle = BTreeMap<Vec<u8>, Option<Vec<u8>>>;

fn check(db: &Db, oracle: &Oracle, ctx: &str) {
    let mut live = 0;
    for (k, want) in oracle {
        let got = db
            .get(k)
            .unwrap_or_else(|e| panic!("{ctx}: get {:?}: {e}", String::from_utf8_lossy(k)));
        assert!(
            got == *want,
            "{ctx}: {} holds {:?} bytes, the oracle says {:?}",
            String::from_utf8_lossy(k),
            got.map(|v| v.len()),
            want.as_ref().map(Vec::len)
        );
        live += usize::from(want.is_some());
    }
    assert_eq!(db.keys().unwrap().len(), live, "{ctx}: keys() count");
}

/// Put new keys from `*next` on until `Full`; returns how many were acknowledged.
fn fill(db: &Db, oracle: &mut Oracle, next: &mut u32, gen: u32, ctx: &str) -> usize {
    let mut n = 0;
    loop {
        let i = *next;
        match db.put(&key(i), &value(i, gen)) {
            Ok(()) => {
                oracle.insert(key(i), Some(value(i, gen)));
                *next += 1;
                n += 1;
            }
            Err(Error::Full) => break,
            Err(e) => panic!("{ctx}: put {i} failed with {e} instead of Full"),
        }
        assert!(n < 1_000_000, "{ctx}: the store never filled up");
    }
    // The failed put stored nothing.
    assert_eq!(
        db.get(&key(*next)).unwrap(),
        None,
        "{ctx}: a failed put is readable"
    );
    n
}

/// Fill, delete `pct` % of the keys, merge, fill again, reopen; the oracle checks every key
/// after each step.
fn full_cycle(size: u64, cluster: u32, shards: usize, pct: u32) {
    let ctx = format!(
        "{} KiB store, {} KiB clusters, {shards} shards, {pct} % deleted",
        size >> 10,
        cluster >> 10
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.img");
    let db =
        Db::open(options(&path, size, cluster, shards)).unwrap_or_else(|e| panic!("{ctx}: {e}"));
    let mut oracle = Oracle::new();
    let mut next = 0u32;

    let filled = fill(
        &db,
        &mut oracle,
        &mut next,
        0,
        &format!("{ctx}, first fill"),
    );
    assert!(
        filled as u64 * VALUE as u64 >= size / 4,
        "{ctx}: only {filled} values fit"
    );
    db.sync().unwrap();
    check(&db, &oracle, &format!("{ctx}, filled"));

    // Deletes work on a full store (they may use what puts leave free).
    let mut deleted = 0usize;
    for i in 0..next {
        if (i.wrapping_mul(2_654_435_761) >> 7) % 100 < pct {
            let mut res = db.delete(&key(i));
            if matches!(res, Err(Error::Full)) {
                // The room set aside for tombstones ran out: a merge makes room.
                db.merge()
                    .unwrap_or_else(|e| panic!("{ctx}: merge during deletes: {e}"));
                res = db.delete(&key(i));
            }
            if let Err(e) = res {
                let st = db.stats().unwrap();
                panic!(
                    "{ctx}: delete {i} of {deleted}: {e}; {} free clusters, blobs {:?}",
                    st.free_clusters,
                    st.blobs
                        .iter()
                        .map(|b| (b.shard, b.role, b.size, b.live_bytes))
                        .collect::<Vec<_>>()
                );
            }
            oracle.insert(key(i), None);
            deleted += 1;
        }
    }
    db.sync().unwrap();
    check(&db, &oracle, &format!("{ctx}, deleted {deleted}"));

    db.merge().unwrap_or_else(|e| panic!("{ctx}: merge: {e}"));
    check(&db, &oracle, &format!("{ctx}, merged"));
    let st = db.stats().unwrap();
    assert!(
        st.dead_bytes * 4 <= st.live_bytes.max(1) + (cluster as u64) * shards as u64 * 4,
        "{ctx}: merge left {} dead bytes for {} live",
        st.dead_bytes,
        st.live_bytes
    );

    // Writes resume: most of what was deleted fits again.
    let again = fill(
        &db,
        &mut oracle,
        &mut next,
        1,
        &format!("{ctx}, second fill"),
    );
    assert!(
        again * 2 >= deleted,
        "{ctx}: {deleted} deleted, only {again} new values fit after the merge"
    );
    db.sync().unwrap();
    check(&db, &oracle, &format!("{ctx}, refilled"));
    db.close().unwrap();

    let mut o = options(&path, size, cluster, shards);
    o.create = false;
    let db = Db::open(o).unwrap_or_else(|e| panic!("{ctx}: reopen: {e}"));
    check(&db, &oracle, &format!("{ctx}, reopened"));
    // And the reopened full store merges and takes writes after deletes too.
    for i in (0..next).step_by(2) {
        db.delete(&key(i)).unwrap();
        oracle.insert(key(i), None);
    }
    db.merge()
        .unwrap_or_else(|e| panic!("{ctx}: merge after reopen: {e}"));
    fill(
        &db,
        &mut oracle,
        &mut next,
        2,
        &format!("{ctx}, fill after reopen"),
    );
    check(&db, &oracle, &format!("{ctx}, after reopen"));
    db.close().unwrap();
}

/// Store size of the shard sweep (MiB): small by default, `BLOBCASK_FULL_STORE_MIB=64` for
/// a heavier run.
fn sweep_size() -> u64 {
    std::env::var("BLOBCASK_FULL_STORE_MIB")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(8)
        * MIB
}

#[test]
fn full_stores_come_back_on_1_2_4_8_shards() {
    for shards in [1, 2, 4, 8] {
        for pct in [50, 80, 95] {
            full_cycle(sweep_size(), 64 << 10, shards, pct);
        }
    }
}

/// The store: 32 MiB of 1 MiB clusters, 1000-byte values, 80 % deleted.
#[test]
fn a_full_32_mib_store_merges_after_80_percent_deleted() {
    full_cycle(32 * MIB, 1 << 20, 1, 80);
}

#[test]
fn the_smallest_store_comes_back_too() {
    for (shards, cluster) in [(1, 1u32 << 20), (2, 1 << 20), (8, 64 << 10)] {
        let o = options(Path::new("unused"), 0, cluster, shards);
        let min = o.min_device_size();
        o.check_new_store(min).unwrap();
        assert!(
            o.check_new_store(min - u64::from(cluster)).is_err(),
            "{shards} shards: {min} is not the smallest size"
        );
        full_cycle(min, cluster, shards, 80);
    }
}

#[test]
fn a_shard_count_the_device_cannot_hold_is_refused_before_anything_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("small.img");
    let err = Db::open(options(&path, 16 * MIB, 1 << 20, 8)).unwrap_err();
    match &err {
        Error::InvalidArgument(m) => assert!(m.contains("at least") && m.contains("MiB"), "{m}"),
        other => panic!("8 shards on 16 MiB: {other:?}"),
    }
    assert!(
        !path.exists(),
        "a refused open left {} behind",
        path.display()
    );
    // A memory device is refused as well (no blobcask super blob is written).
    let mut o = options(&path, 0, 1 << 20, 8);
    o.device = DeviceSpec::Memory { size: 16 * MIB };
    assert!(matches!(Db::open(o), Err(Error::InvalidArgument(_))));
}

/// Overwrites that never fill the active blob still get merged once its dead fraction passes
/// the trigger: the shard seals it and the worker merges it.
#[test]
fn dead_space_in_the_active_blob_gets_merged() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.img");
    let opts = |auto: bool| {
        let mut o = options(&path, 256 * MIB, 64 << 10, 1);
        o.max_blob_size = 8 * MIB;
        o.max_value_size = 64 << 10;
        o.merge.auto = auto;
        o.merge.check_interval = Duration::from_millis(10);
        o.merge.frag_trigger_pct = 50;
        o
    };
    // Written with merges off, so that no merge can seal the blob half way (which would leave
    // the rest in a new active blob too small to be worth sealing); the reopen continues it.
    let db = Db::open(opts(false)).unwrap();
    let mut oracle = Oracle::new();
    // 400 keys overwritten 6 times: ~2.4 MB, well inside one 8 MiB blob, 5/6 of it dead.
    for gen in 0..6u32 {
        for i in 0..400u32 {
            db.put(&key(i), &value(i, gen)).unwrap();
            oracle.insert(key(i), Some(value(i, gen)));
        }
    }
    db.close().unwrap();
    let db = Db::open(opts(true)).unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let st = db.stats().unwrap();
        if st.merges > 0 && st.dead_bytes * 2 < st.live_bytes {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the active blob's dead space was never merged: {} dead, {} live, {} merges",
            st.dead_bytes,
            st.live_bytes,
            st.merges
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    check(&db, &oracle, "after the merge");
    db.close().unwrap();
}

/// Small values written in batches (as `blobcask load` does) with merges, closed between
/// phases so that keydir snapshots and merge hints are written: neither may take the
/// room deletes and merge need, so the store must come back.
fn small_values_in_batches(size: u64, shards: usize) {
    let ctx = format!("{} MiB, {shards} shards, 100-byte values", size / MIB);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("small.img");
    let open = || {
        // Merges run when the test asks, between batches: an automatic merge racing a batch
        // for the last clusters can poison the store (see the README's Space section).
        Db::open(options(&path, size, 64 << 10, shards))
            .unwrap_or_else(|e| panic!("{ctx}: open: {e}"))
    };
    let small = |i: u32, gen: u32| format!("{i}:{gen}:{}", "v".repeat(90)).into_bytes();
    let mut oracle = Oracle::new();
    let db = open();
    let mut next = 0u32;
    'fill: loop {
        let mut b = blobcask::WriteBatch::new();
        let ids: Vec<u32> = (next..next + 256).collect();
        for &i in &ids {
            b.put(&key(i), &small(i, 0));
        }
        match db.write_batch(b) {
            Ok(()) => {
                for &i in &ids {
                    oracle.insert(key(i), Some(small(i, 0)));
                }
                next += 256;
            }
            Err(Error::Full) => {
                // What a merge can reclaim (overwritten keys: none here) is reclaimed first.
                db.merge()
                    .unwrap_or_else(|e| panic!("{ctx}: merge when full: {e}"));
                break 'fill;
            }
            Err(e) => panic!("{ctx}: fill: {e}"),
        }
    }
    assert!(next > 0, "{ctx}: nothing fitted");
    db.close().unwrap();

    // Delete 80 % in batches; a `Full` delete is cured by a merge, which must then succeed.
    let db = open();
    let doomed: Vec<u32> = (0..next).filter(|i| i % 5 != 0).collect();
    for chunk in doomed.chunks(256) {
        let mut b = blobcask::WriteBatch::new();
        for &i in chunk {
            b.delete(&key(i));
        }
        let mut tries = 0;
        loop {
            match db.write_batch(b.clone()) {
                Ok(()) => break,
                Err(Error::Full) if tries < 3 => {
                    tries += 1;
                    db.merge()
                        .unwrap_or_else(|e| panic!("{ctx}: merge after a full delete: {e}"));
                }
                Err(e) => panic!("{ctx}: delete: {e}"),
            }
        }
        for &i in chunk {
            oracle.insert(key(i), None);
        }
    }
    db.close().unwrap();
    let db = open();
    db.merge().unwrap_or_else(|e| panic!("{ctx}: merge: {e}"));
    check(&db, &oracle, &format!("{ctx}: after delete and merge"));
    let before = next;
    fill(&db, &mut oracle, &mut next, 1, &ctx);
    assert!(
        next > before,
        "{ctx}: no put fits after deleting 80 % and merging"
    );
    db.close().unwrap();
    let db = open();
    check(&db, &oracle, &format!("{ctx}: after reopen"));
    db.close().unwrap();
}

#[test]
fn small_values_written_in_batches_leave_room_to_delete_and_merge() {
    small_values_in_batches(16 * MIB, 2);
    small_values_in_batches(32 * MIB, 4);
}
