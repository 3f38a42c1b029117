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
