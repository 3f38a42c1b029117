//! Automatic merges, and poisoning after a failed write or flush. Concurrent readers, writers
//! and merges against a model run in the generic suite (`src/suite.rs`) on every backend.

use std::sync::Arc;

use blobcask::device::{AnyDevice, MemoryDevice, SimDevice};
use blobcask::{Db, DeviceSpec, Error, Options, SyncPolicy};

fn opts(spec: DeviceSpec) -> Options {
    let mut o = Options::new(spec);
    o.cluster_size = 64 << 10;
    o.shards = 3;
    o.max_blob_size = 256 << 10;
    o.max_key_size = 32;
    o.max_value_size = 4 << 10;
    o.cache_bytes = 256 << 10;
    o.sync = SyncPolicy::Never;
    o.merge.auto = false;
    o
}

/// Values name their key and version, so a reader can tell a wrong value from an old one.
#[test]
fn automatic_merge_triggers_on_fragmentation() {
    let dev = Arc::new(MemoryDevice::new(64 << 20, 4096).unwrap());
    let mut o = opts(DeviceSpec::Device(AnyDevice::from(dev)));
    o.merge.auto = true;
    o.merge.check_interval = std::time::Duration::from_millis(20);
    o.shards = 1;
    let db = Db::open(o).unwrap();
    for _ in 0..4 {
        for i in 0..100u32 {
            db.put(format!("k{i}").as_bytes(), &[1u8; 2000]).unwrap();
        }
    }
    let t0 = std::time::Instant::now();
    while db.stats().unwrap().merges == 0 {
        assert!(t0.elapsed().as_secs() < 5, "no automatic merge");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    assert_eq!(db.get(b"k5").unwrap().unwrap(), vec![1u8; 2000]);
    db.close().unwrap();
}

#[test]
fn a_failed_write_poisons_until_reopen() {
    let dev = Arc::new(SimDevice::new(16 << 20, 4096, 9).unwrap());
    let mut o = opts(DeviceSpec::Sim(dev.clone()));
    o.sync = SyncPolicy::Always;
    let db = Db::open(o).unwrap();
    db.put(b"a", b"1").unwrap();
    dev.fail_next_write(false);
    assert!(db.put(b"b", b"2").is_err());
    assert!(matches!(db.put(b"c", b"3"), Err(Error::Poisoned)));
    assert!(matches!(db.delete(b"a"), Err(Error::Poisoned)));
    assert_eq!(db.get(b"a").unwrap().unwrap(), b"1", "reads still work");
    let _ = db.close();
    let mut o = opts(DeviceSpec::Sim(dev.clone()));
    o.sync = SyncPolicy::Always;
    let db = Db::open(o).unwrap();
    assert_eq!(db.get(b"a").unwrap().unwrap(), b"1");
    db.put(b"c", b"3").unwrap();
    db.close().unwrap();
}

#[test]
fn a_failed_flush_poisons() {
    let dev = Arc::new(SimDevice::new(16 << 20, 4096, 10).unwrap());
    let mut o = opts(DeviceSpec::Sim(dev.clone()));
    o.sync = SyncPolicy::Always;
    let db = Db::open(o).unwrap();
    db.put(b"a", b"1").unwrap();
    dev.fail_next_flush(false);
    assert!(db.put(b"b", b"2").is_err());
    assert!(matches!(db.sync(), Err(Error::Poisoned)));
    let _ = db.close();
}
