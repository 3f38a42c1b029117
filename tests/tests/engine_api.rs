//! Every public method of `Db` and its errors, on a memory device.

use std::sync::Arc;
use std::time::Duration;

use blobcask::device::{AnyDevice, CrashMode, MemoryDevice, SimDevice};
use blobcask::{Db, DeviceSpec, Error, Options, SyncPolicy, WriteBatch};

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
fn put_get_delete_contains() {
    let dev = mem();
    let db = Db::open(opts(&dev)).unwrap();
    assert_eq!(db.get(b"a").unwrap(), None);
    db.put(b"a", b"1").unwrap();
    db.put(b"b", b"").unwrap();
    assert_eq!(db.get(b"a").unwrap().as_deref(), Some(&b"1"[..]));
    assert_eq!(db.get(b"b").unwrap().as_deref(), Some(&b""[..]));
    assert!(db.contains(b"a").unwrap());
    db.put(b"a", b"2").unwrap();
    assert_eq!(db.get(b"a").unwrap().as_deref(), Some(&b"2"[..]));
    db.delete(b"a").unwrap();
    db.delete(b"never").unwrap();
    assert_eq!(db.get(b"a").unwrap(), None);
    assert!(!db.contains(b"a").unwrap());
    let mut keys = db.keys().unwrap();
    keys.sort();
    assert_eq!(keys, vec![b"b".to_vec()]);
    let n = db.fold(0usize, |n, _, _| n + 1).unwrap();
    assert_eq!(n, 1);
    db.sync().unwrap();
    let st = db.stats().unwrap();
    assert_eq!(st.keys, 1);
    assert!(st.user_bytes > 0 && st.device_bytes > 0);
    db.close().unwrap();
}

#[test]
fn limits_give_clear_errors() {
    let dev = mem();
    let db = Db::open(opts(&dev)).unwrap();
    let k = vec![b'k'; 64];
    db.put(&k, &vec![7u8; 64 << 10]).unwrap();
    assert_eq!(db.get(&k).unwrap().unwrap().len(), 64 << 10);
    assert!(matches!(
        db.put(&[b'k'; 65], b"v"),
        Err(Error::KeyTooLarge { len: 65, max: 64 })
    ));
    assert!(matches!(
        db.put(b"k", &vec![0u8; (64 << 10) + 1]),
        Err(Error::ValueTooLarge { .. })
    ));
    assert!(matches!(
        db.get(&[b'k'; 65]),
        Err(Error::KeyTooLarge { .. })
    ));
    assert!(matches!(db.put(b"", b"v"), Err(Error::InvalidArgument(_))));
    let mut b = WriteBatch::new();
    b.put(b"ok", b"v").put(&[b'x'; 65], b"v");
    assert!(matches!(db.write_batch(b), Err(Error::KeyTooLarge { .. })));
    assert_eq!(db.get(b"ok").unwrap(), None);
    db.close().unwrap();
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
fn batches_and_reopen_after_clean_close() {
    let dev = mem();
    let db = Db::open(opts(&dev)).unwrap();
    let mut b = WriteBatch::new();
    for i in 0..100u32 {
        b.put(format!("k{i}").as_bytes(), &i.to_le_bytes());
    }
    b.delete(b"k5");
    db.write_batch(b).unwrap();
    db.put(b"solo", b"x").unwrap();
    db.delete(b"k7").unwrap();
    db.close().unwrap();

    let db = Db::open(opts(&dev)).unwrap();
    let st = db.stats().unwrap();
    assert!(st.recovery_used_hints, "clean close leaves snapshots");
    assert_eq!(db.get(b"k5").unwrap(), None);
    assert_eq!(db.get(b"k7").unwrap(), None);
    assert_eq!(db.get(b"k9").unwrap().unwrap(), 9u32.to_le_bytes());
    assert_eq!(db.get(b"solo").unwrap().unwrap(), b"x");
    assert_eq!(db.keys().unwrap().len(), 99);
    db.close().unwrap();
}

#[test]
fn async_variants_complete() {
    let dev = mem();
    let db = Db::open(opts(&dev)).unwrap();
    pollster::block_on(async {
        db.put_async(b"a", b"1").await.unwrap();
        assert_eq!(db.get_async(b"a").await.unwrap().unwrap(), b"1");
        let mut b = WriteBatch::new();
        b.put(b"x", b"1").put(b"y", b"2").put(b"z", b"3");
        db.write_batch_async(b).await.unwrap();
        db.delete_async(b"a").await.unwrap();
        db.sync_async().await.unwrap();
    });
    assert_eq!(db.get(b"a").unwrap(), None);
    assert_eq!(db.get(b"y").unwrap().unwrap(), b"2");
    db.close().unwrap();
}

#[test]
fn merge_on_demand_keeps_live_data_and_frees_space() {
    let dev = mem();
    let mut o = opts(&dev);
    o.max_blob_size = 256 << 10;
    let db = Db::open(o).unwrap();
    for round in 0..8u32 {
        for i in 0..200u32 {
            db.put(format!("k{i}").as_bytes(), &[round as u8; 500])
                .unwrap();
        }
    }
    for i in 0..50u32 {
        db.delete(format!("k{i}").as_bytes()).unwrap();
    }
    let before = db.stats().unwrap();
    db.merge().unwrap();
    let after = db.stats().unwrap();
    assert!(after.merges >= 1);
    assert!(
        after.dead_bytes < before.dead_bytes,
        "{} -> {}",
        before.dead_bytes,
        after.dead_bytes
    );
    assert!(after.free_clusters > before.free_clusters);
    for i in 0..200u32 {
        let v = db.get(format!("k{i}").as_bytes()).unwrap();
        if i < 50 {
            assert_eq!(v, None);
        } else {
            assert_eq!(v.unwrap(), vec![7u8; 500]);
        }
    }
    db.close().unwrap();
    let db = Db::open(opts(&dev)).unwrap();
    assert_eq!(db.get(b"k10").unwrap(), None);
    assert_eq!(db.get(b"k60").unwrap().unwrap(), vec![7u8; 500]);
    assert_eq!(db.keys().unwrap().len(), 150);
    db.close().unwrap();
}

#[test]
fn group_commit_policy_works() {
    let dev = mem();
    let mut o = opts(&dev);
    o.sync = SyncPolicy::GroupCommit {
        max_delay: Duration::from_micros(100),
    };
    let db = Db::open(o).unwrap();
    std::thread::scope(|s| {
        for t in 0..4u32 {
            let db = db.clone();
            s.spawn(move || {
                for i in 0..200u32 {
                    db.put(format!("{t}-{i}").as_bytes(), b"v").unwrap();
                }
            });
        }
    });
    let st = db.stats().unwrap();
    assert_eq!(st.keys, 800);
    assert!(st.mean_group_size >= 1.0);
    db.close().unwrap();
}

#[test]
fn db_is_send_sync_and_cheap_to_clone() {
    fn assert_send_sync<T: Send + Sync + Clone + 'static>() {}
    assert_send_sync::<Db>();
}

#[test]
fn a_full_device_says_full_and_keeps_serving_reads() {
    let dev = Arc::new(MemoryDevice::new(8 << 20, 4096).unwrap());
    let db = Db::open(opts(&dev)).unwrap();
    let mut n = 0u32;
    let err = loop {
        match db.put(format!("k{n}").as_bytes(), &[n as u8; 4000]) {
            Ok(()) => n += 1,
            Err(e) => break e,
        }
        assert!(n < 10_000, "never filled up");
    };
    assert!(matches!(err, Error::Full), "{err:?}");
    assert!(n > 100);
    assert_eq!(db.get(b"k3").unwrap().unwrap(), vec![3u8; 4000]);
    let st = db.stats().unwrap();
    assert_eq!(st.keys, u64::from(n));
    let _ = db.close();
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
