//! What the generic suite (`engine_suite.rs`, `src/suite.rs`) does not cover of `Db`'s API:
//! option checks, use after close, stats, write-behind, and recovery from merge hints.

use std::sync::Arc;
use std::time::Duration;

use blobcask::device::{AnyDevice, CrashMode, MemoryDevice, SimDevice};
use blobcask::{Db, DeviceSpec, Error, Options, SyncPolicy};

fn opts(dev: &Arc<MemoryDevice>) -> Options {
    let mut o = Options::new(DeviceSpec::Device(AnyDevice::from(dev.clone())));
    o.cluster_size = 64 << 10;
    o.shards = 2;
    o.max_blob_size = 1 << 20;
    o.max_key_size = 64;
    o.max_value_size = 64 << 10;
    o.cache_bytes = 1 << 20;
    o.sync = SyncPolicy::Always;
    o.merge.auto = false;
    o
}

fn mem() -> Arc<MemoryDevice> {
    Arc::new(MemoryDevice::new(64 << 20, 4096).unwrap())
}

#[test]
fn bad_options_are_rejected() {
    let dev = mem();
    let mut o = opts(&dev);
    o.shards = 0;
    assert!(matches!(Db::open(o), Err(Error::InvalidArgument(_))));
    let mut o = opts(&dev);
    o.max_key_size = 1 << 20;
    assert!(matches!(Db::open(o), Err(Error::InvalidArgument(_))));
    let mut o = opts(&dev);
    o.create = false;
    assert!(matches!(Db::open(o), Err(Error::NotABlobstore(_))));
}

#[test]
fn closed_store_refuses_everything() {
    let dev = mem();
    let db = Db::open(opts(&dev)).unwrap();
    let other = db.clone();
    db.put(b"a", b"1").unwrap();
    db.close().unwrap();
    assert!(matches!(other.put(b"a", b"1"), Err(Error::Closed)));
    assert!(matches!(other.get(b"a"), Err(Error::Closed)));
    assert!(matches!(other.stats(), Err(Error::Closed)));
    assert!(matches!(other.clone().close(), Err(Error::Closed)));
}

#[test]
fn db_is_send_sync_and_cheap_to_clone() {
    fn assert_send_sync<T: Send + Sync + Clone + 'static>() {}
    assert_send_sync::<Db>();
}

#[test]
fn unsynced_writes_are_readable_at_once_and_written_behind_when_idle() {
    let dev = Arc::new(SimDevice::new(16 << 20, 4096, 5).unwrap());
    let mut o = Options::new(DeviceSpec::Sim(dev.clone()));
    o.cluster_size = 64 << 10;
    o.shards = 1;
    o.sync = SyncPolicy::Never;
    o.merge.auto = false;
    let db = Db::open(o).unwrap();
    db.put(b"a", b"buffered").unwrap();
    assert_eq!(db.get(b"a").unwrap().unwrap(), b"buffered");
    std::thread::sleep(Duration::from_millis(100));
    // Every write that reached the device survives a crash that keeps unflushed writes.
    dev.set_crash_mode(CrashMode::KeepAll);
    let next = Arc::new(dev.crash().unwrap());
    drop(db);
    let mut o = Options::new(DeviceSpec::Sim(next));
    o.cluster_size = 64 << 10;
    o.merge.auto = false;
    let db = Db::open(o).unwrap();
    assert_eq!(db.get(b"a").unwrap().unwrap(), b"buffered");
    db.close().unwrap();
}

#[test]
fn stats_describe_blobs_and_groups() {
    let dev = mem();
    let db = Db::open(opts(&dev)).unwrap();
    for i in 0..100u32 {
        db.put(format!("k{i}").as_bytes(), &[1u8; 100]).unwrap();
    }
    for i in 0..50u32 {
        db.put(format!("k{i}").as_bytes(), &[2u8; 100]).unwrap();
    }
    let st = db.stats().unwrap();
    assert_eq!(st.keys, 100);
    assert_eq!(st.shards.len(), 2);
    assert!(!st.blobs.is_empty());
    let live: u64 = st.blobs.iter().map(|b| b.live_bytes).sum();
    let dead: u64 = st.blobs.iter().map(|b| b.dead_bytes).sum();
    assert_eq!(live, st.live_bytes);
    assert!(dead > 0 && live > 0);
    assert!(st.keydir_bytes_per_key > 0.0 && st.keydir_bytes_per_key < 200.0);
    assert!(st.write_amplification >= 1.0);
    assert_eq!(st.group_ops, 150);
    assert_eq!(st.group_size_histogram.iter().sum::<u64>(), st.groups);
    assert_eq!(st.io_path, "memory");
    db.close().unwrap();
}

#[test]
fn recovery_after_merge_and_crash_uses_the_merge_hint() {
    let dev = Arc::new(SimDevice::new(16 << 20, 4096, 77).unwrap());
    let mk = |d: &Arc<SimDevice>| {
        let mut o = Options::new(DeviceSpec::Sim(d.clone()));
        o.cluster_size = 64 << 10;
        o.shards = 1;
        o.sync = SyncPolicy::Always;
        o.merge.auto = false;
        o
    };
    let db = Db::open(mk(&dev)).unwrap();
    for round in 0..2u32 {
        for i in 0..200u32 {
            let v = (i + round).to_le_bytes();
            db.put(format!("k{i}").as_bytes(), &v).unwrap();
        }
    }
    db.merge().unwrap();
    assert_eq!(db.stats().unwrap().merges, 1);
    let next = Arc::new(dev.crash().unwrap());
    drop(db);
    let db = Db::open(mk(&next)).unwrap();
    let st = db.stats().unwrap();
    assert!(st.recovery_used_hints);
    assert_eq!(st.keys, 200);
    assert_eq!(db.get(b"k7").unwrap().unwrap(), 8u32.to_le_bytes());
    db.close().unwrap();
}

/// A new image file is sparse up to `device_size`; `preallocate` allocates it whole.
#[test]
fn a_new_image_is_sparse_unless_preallocated() {
    use std::os::unix::fs::MetadataExt;
    let dir = tempfile::tempdir().unwrap();
    let sparse = dir.path().join("sparse.img");
    let db = Db::open(Options::at(&sparse).device_size(256 << 20).shards(2)).unwrap();
    db.put(b"k", b"v").unwrap();
    db.close().unwrap();
    let meta = std::fs::metadata(&sparse).unwrap();
    assert_eq!(meta.len(), 256 << 20);
    assert!(
        meta.blocks() * 512 < 64 << 20,
        "a fresh store took {} bytes",
        meta.blocks() * 512
    );
    let db = Db::open(Options::at(&sparse)).unwrap();
    assert_eq!(db.get(b"k").unwrap().as_deref(), Some(&b"v"[..]));
    db.close().unwrap();

    let full = dir.path().join("full.img");
    let opts = Options::at(&full)
        .device_size(64 << 20)
        .shards(2)
        .preallocate(true);
    Db::open(opts).unwrap().close().unwrap();
    let meta = std::fs::metadata(&full).unwrap();
    assert!(
        meta.blocks() * 512 >= 64 << 20,
        "{} bytes",
        meta.blocks() * 512
    );
}

/// `Options` is `Clone`: a clone reopens the same store, and two stores never share one
/// device at once — by path the file lock refuses the second, by a shared device handle
/// the handle's claim does.
#[test]
fn cloned_options_reopen_the_store_but_never_twice_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.img");
    let opts = Options::at(&path).device_size(64 << 20).shards(2);
    let db = Db::open(opts.clone()).unwrap();
    db.put(b"a", b"1").unwrap();
    assert!(matches!(Db::open(opts.clone()), Err(Error::Locked(_))));
    db.close().unwrap();
    let db = Db::open(opts.clone()).unwrap();
    assert_eq!(db.get(b"a").unwrap().as_deref(), Some(&b"1"[..]));
    db.close().unwrap();

    let shared = Options::new(DeviceSpec::Device(AnyDevice::open_path(&path).unwrap()));
    let db = Db::open(shared.clone()).unwrap();
    let second = Db::open(shared.clone());
    assert!(
        matches!(second, Err(Error::Locked(_))),
        "{:?}",
        second.err()
    );
    assert!(matches!(
        Db::create_checkpoint(shared.clone(), "c"),
        Err(Error::Locked(_))
    ));
    db.put(b"b", b"2").unwrap();
    drop(db);
    // The claim went with the last handle of the first store.
    let db = Db::open(shared).unwrap();
    assert_eq!(db.get(b"b").unwrap().as_deref(), Some(&b"2"[..]));
    db.close().unwrap();
}
