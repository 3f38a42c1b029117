//! Streaming iteration (`Db::iter`, `iter_prefix`, `iter_range`, `iter_keys`, `fold`):
//! - every live pair exactly once, nothing deleted, the newest value, values of every size
//!   (empty, and larger than one read window) — from the device and from the write-behind
//!   buffer alike;
//! - prefix and range selection return exactly the matching keys;
//! - a merge in the middle of an iteration (on the iterating thread) neither loses nor repeats
//!   a key, and is not held up by the iterator;
//! - writers beside an iterator: keys untouched by them come exactly once with their value;
//! - a damaged record is an error item, never a value, and the others still come;
//! - a closed store ends the iteration with `Error::Closed`;
//! - a read-only open iterates and leaves the image byte-identical.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ops::Bound;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use blobcask::{Db, DeviceSpec, Error, MergeOptions, Options, SyncPolicy};
use blobcask_tests::harness;
use rand::{Rng, SeedableRng};

type Model = BTreeMap<Vec<u8>, Vec<u8>>;

fn key(i: usize) -> Vec<u8> {
    format!("k{:02}:{i:06}", i % 7).into_bytes()
}

fn value(rng: &mut rand_chacha::ChaCha8Rng, i: usize, len: usize) -> Vec<u8> {
    let mut v: Vec<u8> = (0..len).map(|_| rng.gen()).collect();
    if len >= 8 {
        v[..8].copy_from_slice(&(i as u64).to_le_bytes());
    }
    v
}

fn memory_options(max_blob: u64) -> Options {
    Options {
        device: DeviceSpec::Memory { size: 256 << 20 },
        shards: 2,
        cluster_size: 16 << 10,
        max_blob_size: max_blob,
        max_value_size: (max_blob / 2) as usize,
        merge: MergeOptions {
            auto: false,
            ..MergeOptions::default()
        },
        ..Options::default()
    }
}

/// Puts, overwrites, deletes and a batch; returns what the store must hold.
fn fill(db: &Db, n: usize, seed: u64) -> Model {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let mut model = Model::new();
    for i in 0..n {
        let len = match i % 50 {
            0 => 0,
            1 => rng.gen_range(4096..20_000),
            _ => rng.gen_range(1..300),
        };
        let v = value(&mut rng, i, len);
        db.put(&key(i), &v).unwrap();
        model.insert(key(i), v);
    }
    for i in (0..n).step_by(3) {
        let len = rng.gen_range(1..200);
        let v = value(&mut rng, i, len);
        db.put(&key(i), &v).unwrap();
        model.insert(key(i), v);
    }
    for i in (0..n).step_by(10) {
        db.delete(&key(i)).unwrap();
        model.remove(&key(i));
    }
    let mut batch = blobcask::WriteBatch::new();
    for i in (1..n).step_by(97) {
        let v = value(&mut rng, i, 64);
        batch.put(&key(i), &v);
        model.insert(key(i), v);
    }
    db.write_batch(batch).unwrap();
    model
}

/// Collect an iteration, failing on an error item or a repeated key.
fn collect(it: impl Iterator<Item = blobcask::Result<(Vec<u8>, Vec<u8>)>>) -> Model {
    let mut out = Model::new();
    for item in it {
        let (k, v) = item.expect("iteration item");
        assert!(out.insert(k.clone(), v).is_none(), "key {k:?} came twice");
    }
    out
}

#[test]
fn iter_yields_every_live_pair_once_with_its_newest_value() {
    let db = Db::open(memory_options(8 << 20)).unwrap();
    let mut model = fill(&db, 3000, 1);
    // Larger than one read window.
    let big: Vec<u8> = (0..(3 << 20)).map(|i: u32| (i % 251) as u8).collect();
    db.put(b"big", &big).unwrap();
    model.insert(b"big".to_vec(), big);

    // Right after the writes: the newest records are still in the write-behind buffer.
    assert_eq!(collect(db.iter().unwrap()), model);
    db.sync().unwrap();
    assert_eq!(collect(db.iter().unwrap()), model);

    let mut keys: Vec<Vec<u8>> = db.iter_keys().unwrap().map(Result::unwrap).collect();
    keys.sort();
    assert_eq!(keys, model.keys().cloned().collect::<Vec<_>>());
    let (n, bytes) = db
        .fold((0usize, 0usize), |(n, b), k, v| {
            (n + 1, b + k.len() + v.len())
        })
        .unwrap();
    assert_eq!(n, model.len());
    assert_eq!(
        bytes,
        model.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>()
    );
    db.close().unwrap();
}

#[test]
fn prefix_and_range_select_exactly_the_matching_keys() {
    let db = Db::open(memory_options(256 << 10)).unwrap();
    let model = fill(&db, 2000, 2);

    let want: Model = model
        .iter()
        .filter(|(k, _)| k.starts_with(b"k03:"))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    assert!(!want.is_empty());
    assert_eq!(collect(db.iter_prefix(b"k03:").unwrap()), want);
    assert_eq!(collect(db.iter_prefix(b"nothing").unwrap()), Model::new());
    assert_eq!(collect(db.iter_prefix(b"").unwrap()), model);

    let (lo, hi) = (b"k02:000500".as_slice(), b"k05:000100".as_slice());
    for (from, to) in [
        (Bound::Included(lo), Bound::Excluded(hi)),
        (Bound::Excluded(lo), Bound::Included(hi)),
        (Bound::Unbounded, Bound::Excluded(hi)),
        (Bound::Included(lo), Bound::Unbounded),
    ] {
        let want: Model = model
            .range::<[u8], _>((from, to))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        assert_eq!(collect(db.iter_range(from, to).unwrap()), want);
    }
    db.close().unwrap();
}

#[test]
fn a_merge_in_the_middle_of_an_iteration_neither_loses_nor_repeats_a_key() {
    // Small blobs and many overwrites: the merge rewrites and deletes most of the blobs the
    // iterator has yet to read.
    let db = Db::open(memory_options(64 << 10)).unwrap();
    // More live bytes per shard than one refill reads (4 MiB), so the merge lands while
    // blobs of the current shard are still to be read.
    let mut model = fill(&db, 3000, 3);
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(33);
    for _ in 0..2 {
        for i in 0..3000 {
            if i % 10 != 0 {
                let v = value(&mut rng, i, 4000);
                db.put(&key(i), &v).unwrap();
                model.insert(key(i), v);
            }
        }
    }
    let blobs_before = db.stats().unwrap().blobs.len();

    let mut it = db.iter().unwrap();
    let mut seen = Model::new();
    for _ in 0..150 {
        let (k, v) = it.next().unwrap().unwrap();
        assert!(seen.insert(k, v).is_none());
    }
    // On the iterating thread: an iterator that pinned its blobs would hang here.
    db.merge().unwrap();
    let blobs_after = db.stats().unwrap().blobs.len();
    assert!(
        blobs_after < blobs_before,
        "the merge freed no blob ({blobs_before} -> {blobs_after})"
    );
    for item in it {
        let (k, v) = item.unwrap();
        assert!(seen.insert(k.clone(), v).is_none(), "key {k:?} came twice");
    }
    assert_eq!(seen, model);
    db.close().unwrap();
}

#[test]
fn keys_untouched_by_concurrent_writers_come_exactly_once() {
    let db = Db::open(memory_options(128 << 10)).unwrap();
    let stable = fill(&db, 1500, 4);
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (db, stop) = (db.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut written: HashMap<Vec<u8>, HashSet<Vec<u8>>> = HashMap::new();
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let k = format!("hot:{}", i % 200).into_bytes();
                let v = i.to_le_bytes().repeat(1 + (i % 20) as usize);
                db.put(&k, &v).unwrap();
                written.entry(k).or_default().insert(v);
                if i.is_multiple_of(50) {
                    db.merge().unwrap();
                }
                i += 1;
            }
            written
        })
    };
    let mut got: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
    for _ in 0..5 {
        got = db.iter().unwrap().map(Result::unwrap).collect();
    }
    stop.store(true, Ordering::Relaxed);
    let written = writer.join().unwrap();

    let mut seen = HashSet::new();
    for (k, v) in &got {
        assert!(seen.insert(k.clone()), "key {k:?} came twice");
        if k.starts_with(b"hot:") {
            assert!(written[k].contains(v), "a value never written to {k:?}");
        } else {
            assert_eq!(stable.get(k), Some(v), "wrong value for {k:?}");
        }
    }
    for k in stable.keys() {
        assert!(seen.contains(k), "stable key {k:?} missing");
    }
    db.close().unwrap();
}

#[test]
fn a_damaged_record_is_an_error_item_and_the_others_still_come() {
    let dev = harness::device(harness::template(2), 7);
    let db = harness::open(&dev, SyncPolicy::Always, 2).unwrap();
    let mut model = Model::new();
    for i in 0..400 {
        let v = format!("value-{i:04}-").repeat(8).into_bytes();
        db.put(&key(i), &v).unwrap();
        model.insert(key(i), v);
    }
    db.sync().unwrap();
    // Damage the value of one record that lies well below the log end (on the device, not
    // in the write-behind buffer).
    let victim = key(10);
    let needle = model[&victim].clone();
    let image = dev.current_image();
    let at = image
        .windows(needle.len())
        .position(|w| w == needle.as_slice())
        .expect("the victim's value is on the device") as u64;
    dev.flip_bit(at + 20, 3).unwrap();

    let mut errors = 0;
    let mut ok = Model::new();
    for item in db.iter().unwrap() {
        match item {
            Ok((k, v)) => {
                assert_ne!(k, victim, "the damaged record was served");
                assert_eq!(model.get(&k), Some(&v));
                ok.insert(k, v);
            }
            Err(Error::Corruption { .. }) => errors += 1,
            Err(e) => panic!("unexpected error {e}"),
        }
    }
    assert_eq!(errors, 1);
    assert_eq!(ok.len(), model.len() - 1);
    assert!(matches!(
        db.fold(0, |n, _, _| n + 1),
        Err(Error::Corruption { .. })
    ));
    drop(db);
}

#[test]
fn a_closed_store_ends_the_iteration_with_closed() {
    let db = Db::open(memory_options(1 << 20)).unwrap();
    fill(&db, 500, 5);
    let other = db.clone();
    let mut it = db.iter().unwrap();
    assert!(it.next().unwrap().is_ok());
    other.close().unwrap();
    let mut rest = it.by_ref().skip_while(Result::is_ok);
    assert!(matches!(rest.next(), Some(Err(Error::Closed))));
    assert!(rest.next().is_none());
    assert!(matches!(db.iter(), Err(Error::Closed)));
}

#[test]
fn a_read_only_open_iterates_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.img");
    let opts = || Options {
        device: DeviceSpec::Path(path.clone()),
        device_size: 64 << 20,
        ..memory_options(256 << 10)
    };
    let db = Db::open(opts()).unwrap();
    let model = fill(&db, 1500, 6);
    db.close().unwrap();
    let before = std::fs::read(&path).unwrap();

    let ro = Db::open_read_only(opts()).unwrap();
    assert_eq!(collect(ro.iter().unwrap()), model);
    ro.close().unwrap();
    assert!(std::fs::read(&path).unwrap() == before, "the image changed");
}
