//! Checkpoints: blobstore snapshots of every engine blob, committed by one marker blob.
//! A checkpoint reads the state of the store when it was made, across later overwrites,
//! deletes, merges and other checkpoints; deleting one frees what only it held; a crash at
//! every device I/O of a creation leaves no checkpoint or a complete one, and the live store
//! intact.

use std::collections::BTreeMap;
use std::sync::Arc;

use blobcask::device::SimDevice;
use blobcask::{Db, DeviceSpec, Error, Options};

fn opts(dev: &Arc<SimDevice>) -> Options {
    let mut o = Options::new(DeviceSpec::Sim(dev.clone()));
    o.cluster_size = 64 << 10;
    o.shards = 2;
    o.max_blob_size = 128 << 10;
    o.max_value_size = 8 << 10;
    o.cache_bytes = 0;
    o.merge.auto = false;
    o.create = true;
    o
}

fn sim() -> Arc<SimDevice> {
    Arc::new(SimDevice::new(16 << 20, 4096, 7).unwrap())
}

type State = BTreeMap<Vec<u8>, Vec<u8>>;

fn write(db: &Db, gen: u32, n: u32, len: usize) -> State {
    let mut m = State::new();
    for i in 0..n {
        let k = format!("key{i:04}").into_bytes();
        let mut v = format!("g{gen}:{i}|").into_bytes();
        v.resize(len, b'a' + (gen % 26) as u8);
        db.put(&k, &v).unwrap();
        m.insert(k, v);
    }
    m
}

fn contents(db: &Db) -> State {
    db.iter().unwrap().map(|r| r.unwrap()).collect()
}

fn assert_reads(db: &Db, want: &State) {
    assert_eq!(&contents(db), want);
    for (k, v) in want {
        assert_eq!(db.get(k).unwrap().as_ref(), Some(v));
    }
}

/// `blobcask check` of the device's image finds nothing wrong.
fn assert_checks_clean(dev: &Arc<SimDevice>) {
    let img = dev.current_image();
    let rep = blobcask::fsck::check(|| Ok(SimDevice::from_image(img.clone(), 4096, 0)?)).unwrap();
    assert!(rep.is_clean(), "{:?}", rep.problems);
}

/// Every blob that carries `bc.ckpt` belongs to a listed checkpoint (no leftovers).
fn assert_no_leftovers(dev: &Arc<SimDevice>) {
    use blobcask::blobstore::native::NativeBlobStore;
    use blobcask::blobstore::{BlobStore, LoadOpts};

    let listed: usize = Db::list_checkpoints(opts(dev))
        .unwrap()
        .iter()
        .map(|c| c.blobs.len())
        .sum();
    let img = SimDevice::from_image(dev.current_image(), 4096, 0).unwrap();
    let bs = pollster::block_on(NativeBlobStore::load(img, LoadOpts::default())).unwrap();
    let mut tagged = 0;
    for id in pollster::block_on(bs.blob_ids()).unwrap() {
        let b = pollster::block_on(bs.open(id)).unwrap();
        if pollster::block_on(bs.get_xattr(&b, "bc.ckpt"))
            .unwrap()
            .is_some()
        {
            tagged += 1;
        }
        pollster::block_on(bs.close(b)).unwrap();
    }
    assert_eq!(tagged, listed, "snapshot blobs no checkpoint lists");
}

#[test]
fn checkpoint_reads_its_state_across_overwrites_merge_and_reopen() {
    let dev = sim();
    let db = Db::open(opts(&dev)).unwrap();
    let v1 = write(&db, 1, 120, 700);
    db.close().unwrap();

    let c = Db::create_checkpoint(opts(&dev), "first").unwrap();
    assert_eq!(c.name, "first");
    assert!(!c.blobs.is_empty());
    assert_eq!(c.shards, 2);
    let dup = Db::create_checkpoint(opts(&dev), "first").unwrap_err();
    assert!(dup.to_string().contains("exists"), "{dup}");

    // The live store goes on: overwrite, delete, merge.
    let db = Db::open(opts(&dev)).unwrap();
    assert_reads(&db, &v1);
    let mut v2 = write(&db, 2, 120, 900);
    for i in 0..30 {
        let k = format!("key{i:04}").into_bytes();
        db.delete(&k).unwrap();
        v2.remove(&k);
    }
    db.merge().unwrap();
    assert_reads(&db, &v2);
    db.close().unwrap();

    let list = Db::list_checkpoints(opts(&dev)).unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0], c);

    let ck = Db::open_checkpoint(opts(&dev), "first").unwrap();
    assert_reads(&ck, &v1);
    assert!(matches!(ck.put(b"x", b"y"), Err(Error::ReadOnly(_))));
    assert!(matches!(ck.delete(b"key0001"), Err(Error::ReadOnly(_))));
    ck.close().unwrap();

    assert!(matches!(
        Db::open_checkpoint(opts(&dev), "nope"),
        Err(Error::NotFound(_))
    ));
    let db = Db::open(opts(&dev)).unwrap();
    assert_reads(&db, &v2);
    db.close().unwrap();
    assert_checks_clean(&dev);
}

#[test]
fn chained_checkpoints_and_delete_frees_space() {
    let dev = sim();
    let db = Db::open(opts(&dev)).unwrap();
    let v1 = write(&db, 1, 100, 1500);
    let free0 = db.stats().unwrap().free_clusters;
    db.close().unwrap();
    Db::create_checkpoint(opts(&dev), "a").unwrap();

    let db = Db::open(opts(&dev)).unwrap();
    let v2 = write(&db, 2, 100, 1500);
    db.merge().unwrap();
    db.close().unwrap();
    Db::create_checkpoint(opts(&dev), "b").unwrap();

    let db = Db::open(opts(&dev)).unwrap();
    let v3 = write(&db, 3, 100, 1500);
    db.merge().unwrap();
    let held = db.stats().unwrap().free_clusters;
    db.close().unwrap();
    assert!(held < free0, "checkpoints hold the overwritten data");

    let names: Vec<String> = Db::list_checkpoints(opts(&dev))
        .unwrap()
        .into_iter()
        .map(|c| c.name)
        .collect();
    assert_eq!(names, ["a", "b"]);

    // Delete the older one first: the newer one (its clone) keeps what it shares.
    Db::delete_checkpoint(opts(&dev), "a").unwrap();
    let ck = Db::open_checkpoint(opts(&dev), "b").unwrap();
    assert_reads(&ck, &v2);
    ck.close().unwrap();
    assert!(matches!(
        Db::open_checkpoint(opts(&dev), "a"),
        Err(Error::NotFound(_))
    ));
    let db = Db::open(opts(&dev)).unwrap();
    let after_a = db.stats().unwrap().free_clusters;
    assert!(
        after_a > held,
        "deleting a frees its clusters: {held} -> {after_a}"
    );
    assert_reads(&db, &v3);
    db.close().unwrap();
    assert_checks_clean(&dev);

    Db::delete_checkpoint(opts(&dev), "b").unwrap();
    assert!(Db::list_checkpoints(opts(&dev)).unwrap().is_empty());
    let db = Db::open(opts(&dev)).unwrap();
    let after_b = db.stats().unwrap().free_clusters;
    assert!(
        after_b > after_a,
        "deleting b frees its clusters: {after_a} -> {after_b}"
    );
    assert_reads(&db, &v3);
    db.close().unwrap();
    let _ = v1;
}

#[test]
fn crash_at_every_io_of_a_creation_leaves_none_or_a_complete_one() {
    let dev = sim();
    let db = Db::open(opts(&dev)).unwrap();
    let v1 = write(&db, 1, 60, 1200);
    db.close().unwrap();
    Db::create_checkpoint(opts(&dev), "old").unwrap();
    let db = Db::open(opts(&dev)).unwrap();
    let v2 = write(&db, 2, 60, 1000);
    db.close().unwrap();
    let image = dev.durable_image();

    let mut completed = 0;
    let mut n = 0u64;
    loop {
        let d = Arc::new(SimDevice::from_image(image.clone(), 4096, n).unwrap());
        d.stop_after(n);
        let made = Db::create_checkpoint(opts(&d), "new").is_ok();
        let next = Arc::new(d.crash().unwrap());
        let db = Db::open(opts(&next))
            .unwrap_or_else(|e| panic!("crash after I/O {n}: live open failed: {e}"));
        assert_reads(&db, &v2);
        db.close().unwrap();
        let names: Vec<String> = Db::list_checkpoints(opts(&next))
            .unwrap()
            .into_iter()
            .map(|c| c.name)
            .collect();
        assert!(
            names == ["new", "old"] || names == ["old"],
            "crash after I/O {n}: {names:?}"
        );
        if made {
            assert_eq!(names, ["new", "old"], "an acknowledged checkpoint survives");
        }
        if names.len() == 2 {
            completed += 1;
            let ck = Db::open_checkpoint(opts(&next), "new").unwrap();
            assert_reads(&ck, &v2);
            ck.close().unwrap();
        }
        let ck = Db::open_checkpoint(opts(&next), "old").unwrap();
        assert_reads(&ck, &v1);
        ck.close().unwrap();
        assert_no_leftovers(&next);
        if made {
            break;
        }
        n += 1;
        assert!(n < 5000, "creation never completed");
    }
    assert!(completed >= 1);
    eprintln!("swept {n} crash points");
}

/// The rule for a checkpoint of a running store: every write acknowledged before the call is
/// in it, none started after it returned is, and each sequential writer's writes in it form
/// a prefix (the cut holds every shard at once).
#[test]
fn live_checkpoint_under_concurrent_writes() {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

    let dev = sim();
    let db = Db::open(opts(&dev)).unwrap();
    let v0 = write(&db, 0, 40, 500);
    let stop = Arc::new(AtomicBool::new(false));
    let acked: Arc<Vec<AtomicU64>> = Arc::new((0..2).map(|_| AtomicU64::new(0)).collect());
    let writers: Vec<_> = (0..2usize)
        .map(|t| {
            let (db, stop, acked) = (db.clone(), stop.clone(), acked.clone());
            std::thread::spawn(move || {
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) && i < 3000 {
                    db.put(format!("w{t}-{i:05}").as_bytes(), &[b'x'; 300])
                        .unwrap();
                    i += 1;
                    acked[t].store(i, Ordering::Release);
                }
            })
        })
        .collect();
    while acked.iter().any(|a| a.load(Ordering::Acquire) < 50) {
        std::thread::yield_now();
    }
    let before: Vec<u64> = acked.iter().map(|a| a.load(Ordering::Acquire)).collect();
    let c = db.checkpoint("live").unwrap();
    let after: Vec<u64> = acked.iter().map(|a| a.load(Ordering::Acquire)).collect();
    // Merge and overwrite while the checkpoint exists.
    let v1 = write(&db, 1, 40, 800);
    db.merge().unwrap();
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.join().unwrap();
    }
    assert!(db.checkpoint("live").is_err(), "names are unique");
    db.close().unwrap();
    assert_eq!(Db::list_checkpoints(opts(&dev)).unwrap(), [c]);
    assert_checks_clean(&dev);

    let ck = Db::open_checkpoint(opts(&dev), "live").unwrap();
    for (k, v) in &v0 {
        assert_eq!(ck.get(k).unwrap().as_ref(), Some(v));
    }
    for t in 0..2 {
        let n = ck.iter_prefix(format!("w{t}-").as_bytes()).unwrap().count() as u64;
        assert!(
            n >= before[t] && n <= after[t] + 1,
            "writer {t}: {n} of {before:?}..{after:?}"
        );
        for i in 0..n {
            assert!(
                ck.contains(format!("w{t}-{i:05}").as_bytes()).unwrap(),
                "prefix"
            );
        }
    }
    ck.close().unwrap();

    let db = Db::open(opts(&dev)).unwrap();
    for (k, v) in &v1 {
        assert_eq!(db.get(k).unwrap().as_ref(), Some(v));
    }
    db.close().unwrap();
    Db::delete_checkpoint(opts(&dev), "live").unwrap();
    assert!(Db::list_checkpoints(opts(&dev)).unwrap().is_empty());
}

#[test]
fn crash_at_every_io_of_a_live_checkpoint() {
    let dev = sim();
    let db = Db::open(opts(&dev)).unwrap();
    write(&db, 1, 60, 1200);
    db.close().unwrap();
    let image = dev.durable_image();

    let mut n = 0u64;
    loop {
        let d = Arc::new(SimDevice::from_image(image.clone(), 4096, n).unwrap());
        let db = Db::open(opts(&d)).unwrap();
        let v2 = write(&db, 2, 30, 1000);
        db.sync().unwrap();
        let want: State = contents(&db);
        d.stop_after(d.io_counts().total() + n);
        let made = db.checkpoint("c").is_ok();
        let next = Arc::new(d.crash().unwrap());
        drop(db);
        let db = Db::open(opts(&next))
            .unwrap_or_else(|e| panic!("crash after I/O {n}: live open failed: {e}"));
        assert_reads(&db, &want);
        db.close().unwrap();
        let names: Vec<String> = Db::list_checkpoints(opts(&next))
            .unwrap()
            .into_iter()
            .map(|c| c.name)
            .collect();
        if made {
            assert_eq!(names, ["c"], "an acknowledged checkpoint survives");
        }
        if !names.is_empty() {
            assert_eq!(names, ["c"]);
            let ck = Db::open_checkpoint(opts(&next), "c").unwrap();
            assert_reads(&ck, &want);
            ck.close().unwrap();
        }
        assert_no_leftovers(&next);
        let _ = v2;
        if made {
            break;
        }
        n += 1;
        assert!(n < 5000, "creation never completed");
    }
    eprintln!("swept {n} crash points");
}

#[test]
fn a_store_not_closed_cleanly_is_refused_offline() {
    let dev = sim();
    let db = Db::open(opts(&dev)).unwrap();
    write(&db, 1, 20, 300);
    db.sync().unwrap();
    let next = Arc::new(dev.crash().unwrap());
    drop(db);
    let e = Db::create_checkpoint(opts(&next), "c").unwrap_err();
    assert!(matches!(e, Error::InvalidArgument(_)), "{e}");
    // The live store takes checkpoints at any time.
    let db = Db::open(opts(&next)).unwrap();
    db.checkpoint("c").unwrap();
    db.close().unwrap();
    assert_eq!(Db::list_checkpoints(opts(&next)).unwrap().len(), 1);
    assert_no_leftovers(&next);
}

/// A checkpoint freezes the chunk store too: its chunk metadata and the chunk blobs' pages (a
/// snapshot each) read as they were, across later overwrites, removes, creates and compaction;
/// writes to it are refused; deleting it leaves the live chunks as they are. A live checkpoint
/// waits for the chunk store to close (its workers write the blobs it snapshots).
#[test]
fn a_checkpoint_freezes_the_chunks_too() {
    use blobcask::chunk::{ChunkError, ChunkOptions, ChunkStore};
    let copts = || ChunkOptions {
        workers: 2,
        grow_clusters: 2,
        max_blob_clusters: 8,
        ..ChunkOptions::default()
    };
    let fill = |seed: u8, len: usize| -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(7).wrapping_add(seed))
            .collect()
    };
    let read_all = |cs: &ChunkStore, id| cs.read(id, 0, u64::MAX).unwrap();
    let dev = sim();
    let db = Db::open(opts(&dev)).unwrap();
    let cs = ChunkStore::open(&db, copts()).unwrap();
    let (a, b) = (cs.create(0).unwrap(), cs.create(0).unwrap());
    cs.write(a, 0, &fill(1, 300_000)).unwrap();
    cs.write(b, 5000, &fill(2, 70_000)).unwrap();
    let old_a = read_all(&cs, a);
    let old_b = read_all(&cs, b);
    cs.close().unwrap();
    db.close().unwrap();
    Db::create_checkpoint(opts(&dev), "before").unwrap();

    let db = Db::open(opts(&dev)).unwrap();
    let cs = ChunkStore::open(&db, copts()).unwrap();
    for off in (0..300_000).step_by(40_000) {
        cs.write(a, off, &fill(9, 20_000)).unwrap();
    }
    cs.remove(b).unwrap();
    let c = cs.create(0).unwrap();
    cs.write(c, 0, &fill(3, 100_000)).unwrap();
    cs.compact().unwrap();
    let new_a = read_all(&cs, a);
    let new_c = read_all(&cs, c);
    assert_ne!(new_a, old_a);
    assert!(matches!(db.checkpoint("live"), Err(Error::Busy(_))));
    cs.close().unwrap();
    db.checkpoint("after").unwrap();
    db.close().unwrap();

    let ck = Db::open_checkpoint(opts(&dev), "before").unwrap();
    let cs = ChunkStore::open(&ck, copts()).unwrap();
    assert_eq!(cs.list().unwrap(), vec![a, b]);
    assert_eq!(read_all(&cs, a), old_a);
    assert_eq!(read_all(&cs, b), old_b);
    assert!(matches!(cs.write(a, 0, b"x"), Err(ChunkError::ReadOnly)));
    cs.close().unwrap();
    ck.close().unwrap();

    let ck = Db::open_checkpoint(opts(&dev), "after").unwrap();
    let cs = ChunkStore::open(&ck, copts()).unwrap();
    assert_eq!(cs.list().unwrap(), vec![a, c]);
    assert_eq!(read_all(&cs, a), new_a);
    assert_eq!(read_all(&cs, c), new_c);
    cs.close().unwrap();
    ck.close().unwrap();

    assert_checks_clean(&dev);
    Db::delete_checkpoint(opts(&dev), "before").unwrap();
    let db = Db::open(opts(&dev)).unwrap();
    let rep = blobcask::chunk::check(&db).unwrap();
    assert!(rep.problems.is_empty(), "{:?}", rep.problems);
    let cs = ChunkStore::open(&db, copts()).unwrap();
    assert_eq!(read_all(&cs, a), new_a);
    assert_eq!(read_all(&cs, c), new_c);
    cs.write(c, 50_000, &fill(4, 10_000)).unwrap();
    cs.close().unwrap();
    db.close().unwrap();
    Db::delete_checkpoint(opts(&dev), "after").unwrap();
    assert_checks_clean(&dev);
    assert_no_leftovers(&dev);
}
