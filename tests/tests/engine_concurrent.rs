//! Concurrent readers and writers on several threads against a model; merge under load;
//! poisoning after a failed write.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use blobcask::device::{AnyDevice, MemoryDevice, SimDevice};
use blobcask::{Db, DeviceSpec, Error, Options, SyncPolicy, WriteBatch};

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
fn val(t: u32, k: u32, ver: u32) -> Vec<u8> {
    let mut v = format!("{t}:{k}:{ver}:").into_bytes();
    v.resize(64 + (ver as usize * 37) % 900, b'x');
    v
}

fn parse(v: &[u8]) -> (u32, u32, u32) {
    let s = std::str::from_utf8(v).unwrap();
    let mut it = s.split(':');
    let a = it.next().unwrap().parse().unwrap();
    let b = it.next().unwrap().parse().unwrap();
    let c = it.next().unwrap().parse().unwrap();
    (a, b, c)
}

fn run_load(db: &Db, with_merges: bool) {
    const WRITERS: u32 = 3;
    const KEYS: u32 = 150;
    const OPS: u32 = 800;
    let stop = AtomicBool::new(false);
    let models: Vec<HashMap<u32, Option<u32>>> = std::thread::scope(|s| {
        let readers: Vec<_> = (0..2)
            .map(|r| {
                let db = db.clone();
                let stop = &stop;
                s.spawn(move || {
                    let mut n = 0u32;
                    while !stop.load(Ordering::Relaxed) {
                        let t = n % WRITERS;
                        let k = (n * 7 + r) % KEYS;
                        if let Some(v) = db.get(format!("{t}-{k}").as_bytes()).unwrap() {
                            let (vt, vk, _) = parse(&v);
                            assert_eq!((vt, vk), (t, k), "a read returned another key's value");
                        }
                        n += 1;
                        // Two cores shared with the writers: don't starve them.
                        std::thread::yield_now();
                    }
                })
            })
            .collect();
        let merger = with_merges.then(|| {
            let db = db.clone();
            let stop = &stop;
            s.spawn(move || {
                let mut merges = 0;
                while !stop.load(Ordering::Relaxed) {
                    db.merge().unwrap();
                    merges += 1;
                    std::thread::sleep(std::time::Duration::from_millis(5));
                }
                merges
            })
        });
        let writers: Vec<_> = (0..WRITERS)
            .map(|t| {
                let db = db.clone();
                s.spawn(move || {
                    let mut model: HashMap<u32, Option<u32>> = HashMap::new();
                    let mut x = t.wrapping_mul(2654435761) | 1;
                    for ver in 0..OPS {
                        x ^= x << 13;
                        x ^= x >> 17;
                        x ^= x << 5;
                        let k = x % KEYS;
                        let key = format!("{t}-{k}");
                        match x % 10 {
                            0 => {
                                db.delete(key.as_bytes()).unwrap();
                                model.insert(k, None);
                            }
                            1 => {
                                let k2 = (k + 1) % KEYS;
                                let mut b = WriteBatch::new();
                                b.put(key.as_bytes(), &val(t, k, ver));
                                b.put(format!("{t}-{k2}").as_bytes(), &val(t, k2, ver));
                                db.write_batch(b).unwrap();
                                model.insert(k, Some(ver));
                                model.insert(k2, Some(ver));
                            }
                            _ => {
                                db.put(key.as_bytes(), &val(t, k, ver)).unwrap();
                                model.insert(k, Some(ver));
                            }
                        }
                        // Read-your-writes.
                        let got = db.get(key.as_bytes()).unwrap();
                        assert_eq!(got.map(|v| parse(&v).2), model[&k]);
                    }
                    model
                })
            })
            .collect();
        let models = writers.into_iter().map(|h| h.join().unwrap()).collect();
        stop.store(true, Ordering::Relaxed);
        for r in readers {
            r.join().unwrap();
        }
        if let Some(m) = merger {
            assert!(m.join().unwrap() > 0);
        }
        models
    });
    for (t, model) in models.iter().enumerate() {
        for (k, ver) in model {
            let got = db.get(format!("{t}-{k}").as_bytes()).unwrap();
            assert_eq!(got.map(|v| parse(&v).2), *ver, "key {t}-{k}");
        }
    }
}

#[test]
fn concurrent_readers_and_writers_match_the_model() {
    let dev = Arc::new(MemoryDevice::new(64 << 20, 4096).unwrap());
    let db = Db::open(opts(DeviceSpec::Device(AnyDevice::from(dev.clone())))).unwrap();
    run_load(&db, false);
    let st = db.stats().unwrap();
    assert!(st.groups > 0 && st.keydir_bytes > 0);
    db.close().unwrap();
}

#[test]
fn merge_under_concurrent_load() {
    let dev = Arc::new(MemoryDevice::new(64 << 20, 4096).unwrap());
    let db = Db::open(opts(DeviceSpec::Device(AnyDevice::from(dev.clone())))).unwrap();
    run_load(&db, true);
    let before = db.fold(Vec::new(), |mut v, k, x| {
        v.push((k.to_vec(), x.to_vec()));
        v
    });
    let mut before = before.unwrap();
    before.sort();
    assert!(db.stats().unwrap().merges > 0);
    db.close().unwrap();
    let db = Db::open(opts(DeviceSpec::Device(AnyDevice::from(dev)))).unwrap();
    let mut after = db
        .fold(Vec::new(), |mut v, k, x| {
            v.push((k.to_vec(), x.to_vec()));
            v
        })
        .unwrap();
    after.sort();
    assert_eq!(before, after);
    db.close().unwrap();
}

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
