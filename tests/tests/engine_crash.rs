//! Reopen after a simulated crash on the sim device: synced writes exactly, unsynced ones a
//! per-shard prefix, batches all-or-nothing, no resurrected deletes, crash inside merge.
//! Every failure prints its seed.

use std::sync::Arc;

use blobcask::device::SimDevice;
use blobcask::{Db, DeviceSpec, Options, SyncPolicy, WriteBatch};
use blobcask_tests::suite::{shard_of, state, value, Model, SHARDS};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn opts(dev: &Arc<SimDevice>, sync: SyncPolicy) -> Options {
    let mut o = Options::new(DeviceSpec::Sim(dev.clone()));
    o.cluster_size = 64 << 10;
    o.shards = SHARDS;
    o.max_blob_size = 192 << 10;
    o.max_key_size = 32;
    o.max_value_size = 8 << 10;
    o.cache_bytes = 0;
    o.sync = sync;
    o.merge.auto = false;
    o
}

fn sim(seed: u64) -> Arc<SimDevice> {
    Arc::new(SimDevice::new(8 << 20, 4096, seed).unwrap())
}

fn crash_and_reopen(dev: &Arc<SimDevice>, db: Db, sync: SyncPolicy) -> (Arc<SimDevice>, Db) {
    let next = Arc::new(dev.crash().unwrap());
    drop(db); // its close fails on the dead device; that must not hang or panic
    let db = Db::open(opts(&next, sync)).unwrap();
    (next, db)
}

#[test]
fn synced_writes_survive_exactly() {
    for seed in 0..5u64 {
        let dev = sim(seed);
        let db = Db::open(opts(&dev, SyncPolicy::Always)).unwrap();
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut model = Model::new();
        for n in 0..300u32 {
            let k = format!("k{}", rng.gen_range(0..40)).into_bytes();
            match rng.gen_range(0..10) {
                0..=5 => {
                    let v = value(&mut rng, &k, n);
                    db.put(&k, &v).unwrap();
                    model.insert(k, v);
                }
                6..=7 => {
                    db.delete(&k).unwrap();
                    model.remove(&k);
                }
                _ => {
                    let mut b = WriteBatch::new();
                    for j in 0..rng.gen_range(1..6) {
                        let k = format!("k{}", rng.gen_range(0..40)).into_bytes();
                        if j % 3 == 2 {
                            b.delete(&k);
                            model.remove(&k);
                        } else {
                            let v = value(&mut rng, &k, n);
                            b.put(&k, &v);
                            model.insert(k, v);
                        }
                    }
                    db.write_batch(b).unwrap();
                }
            }
        }
        let (dev2, db) = crash_and_reopen(&dev, db, SyncPolicy::Always);
        assert_eq!(state(&db), model, "seed {seed}");
        // And once more, after a clean close of the recovered store.
        db.close().unwrap();
        let db = Db::open(opts(&dev2, SyncPolicy::Always)).unwrap();
        assert_eq!(state(&db), model, "seed {seed} after clean reopen");
        db.close().unwrap();
    }
}

/// One acknowledged operation, as the shard log sees it.
#[derive(Clone)]
enum Logged {
    Put(Vec<u8>, Vec<u8>),
    Del(Vec<u8>),
}

#[test]
fn unsynced_writes_recover_as_a_per_shard_prefix() {
    for seed in 100..106u64 {
        let dev = sim(seed);
        let db = Db::open(opts(&dev, SyncPolicy::Never)).unwrap();
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut logs: Vec<Vec<Logged>> = vec![Vec::new(); SHARDS];
        let mut synced_at = [0usize; SHARDS];
        for n in 0..250u32 {
            let k = format!("k{}", rng.gen_range(0..30)).into_bytes();
            let s = shard_of(&k);
            if rng.gen_range(0..4) == 0 {
                db.delete(&k).unwrap();
                logs[s].push(Logged::Del(k));
            } else {
                let v = value(&mut rng, &k, n);
                db.put(&k, &v).unwrap();
                logs[s].push(Logged::Put(k, v));
            }
            if n == 120 {
                db.sync().unwrap();
                for (s, l) in logs.iter().enumerate() {
                    synced_at[s] = l.len();
                }
            }
        }
        let (_dev2, db) = crash_and_reopen(&dev, db, SyncPolicy::Never);
        let got = state(&db);
        for s in 0..SHARDS {
            let mine: Model = got
                .iter()
                .filter(|(k, _)| shard_of(k) == s)
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            let mut m = Model::new();
            let mut ok = synced_at[s] == 0 && mine.is_empty();
            for (i, op) in logs[s].iter().enumerate() {
                match op {
                    Logged::Put(k, v) => {
                        m.insert(k.clone(), v.clone());
                    }
                    Logged::Del(k) => {
                        m.remove(k);
                    }
                }
                if i + 1 >= synced_at[s] && m == mine {
                    ok = true;
                    break;
                }
            }
            assert!(ok, "seed {seed}: shard {s} is not a prefix of its log");
        }
        db.close().unwrap();
    }
}

#[test]
fn batches_are_all_or_nothing_after_a_crash() {
    for seed in 200..206u64 {
        let dev = sim(seed);
        let db = Db::open(opts(&dev, SyncPolicy::Never)).unwrap();
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let nb = 40;
        for b in 0..nb {
            let mut wb = WriteBatch::new();
            for i in 0..rng.gen_range(2..8) {
                wb.put(format!("b{b}-{i}").as_bytes(), &vec![b as u8; 700]);
            }
            wb.put(format!("b{b}-end").as_bytes(), b"end");
            db.write_batch(wb).unwrap();
        }
        let (_d, db) = crash_and_reopen(&dev, db, SyncPolicy::Never);
        let got = state(&db);
        for b in 0..nb {
            let have = got.contains_key(format!("b{b}-end").as_bytes());
            for i in 0..2 {
                assert_eq!(
                    got.contains_key(format!("b{b}-{i}").as_bytes()),
                    have,
                    "seed {seed}: batch {b} is torn"
                );
            }
        }
        db.close().unwrap();
    }
}

/// A cross-shard batch whose commit record survived a crash in one shard but not in another
/// is recovered whole; it must stay whole once that other shard's log is no longer scanned
/// (here: the shard holding the commit is written and closed with a fresh keydir snapshot; the
/// other is not written at all, and its older snapshot and a scan of its log are what the next
/// open reads). It used to lose the members of the shard without the commit record.
#[test]
fn a_batch_recovered_from_another_shards_commit_stays_whole() {
    let keys: Vec<Vec<u8>> = (0..8).map(|i| format!("key{i}").into_bytes()).collect();
    for seed in 400..440u64 {
        let dev = sim(seed);
        // Every shard has a keydir snapshot of no blob now: the batches go to new blobs, which
        // the next open scans, leaving that snapshot in place.
        Db::open(opts(&dev, SyncPolicy::Never))
            .unwrap()
            .close()
            .unwrap();
        let db = Db::open(opts(&dev, SyncPolicy::Never)).unwrap();
        for b in 0..6u8 {
            let mut wb = WriteBatch::new();
            for k in &keys {
                wb.put(k, &[b'b', b'0' + b]);
            }
            db.write_batch(wb).unwrap();
        }
        let (dev, db) = crash_and_reopen(&dev, db, SyncPolicy::Never);
        let recovered = state(&db);
        let first = &recovered[&keys[0]];
        for k in &keys {
            assert_eq!(&recovered[k], first, "seed {seed}: batch torn at open");
        }
        // Write to one shard only, so that only it writes a new snapshot at close.
        let writer = (seed % SHARDS as u64) as usize;
        let extra = (0..)
            .map(|i| format!("extra{i}").into_bytes())
            .find(|k| shard_of(k) == writer)
            .unwrap();
        db.put(&extra, b"x").unwrap();
        db.close().unwrap();
        let db = Db::open(opts(&dev, SyncPolicy::Never)).unwrap();
        let mut after = state(&db);
        assert_eq!(
            after.remove(&extra).as_deref(),
            Some(&b"x"[..]),
            "seed {seed}"
        );
        assert_eq!(
            recovered, after,
            "seed {seed}: a clean reopen changed the store"
        );
        db.close().unwrap();
    }
}

#[test]
fn deletes_never_come_back_across_merges_and_crashes() {
    for seed in 300..303u64 {
        let dev = sim(seed);
        let mut db = Db::open(opts(&dev, SyncPolicy::Always)).unwrap();
        let mut dev = dev;
        let mut model = Model::new();
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        for round in 0..4u32 {
            for i in 0..60u32 {
                let k = format!("k{i}").into_bytes();
                let v = value(&mut rng, &k, round * 100 + i);
                db.put(&k, &v).unwrap();
                model.insert(k, v);
            }
            for i in (round..60).step_by(5) {
                let k = format!("k{i}").into_bytes();
                db.delete(&k).unwrap();
                model.remove(&k);
            }
            if round % 2 == 1 {
                db.merge().unwrap();
            }
            let (d, d2) = crash_and_reopen(&dev, db, SyncPolicy::Always);
            dev = d;
            db = d2;
            assert_eq!(state(&db), model, "seed {seed} round {round}");
            db.merge().unwrap();
            assert_eq!(state(&db), model, "seed {seed} round {round} after merge");
        }
        db.close().unwrap();
    }
}

#[test]
fn a_crash_anywhere_inside_merge_leaves_pre_or_post_merge_state() {
    // Learn how many I/Os the merge takes, then crash after each of a spread of them.
    let build = |seed: u64| {
        let dev = sim(seed);
        let db = Db::open(opts(&dev, SyncPolicy::Always)).unwrap();
        let mut model = Model::new();
        for round in 0..5u32 {
            for i in 0..50u32 {
                let k = format!("k{i}").into_bytes();
                let v = vec![(round * 7 + i) as u8; 900];
                db.put(&k, &v).unwrap();
                model.insert(k, v);
            }
        }
        for i in 0..50u32 {
            if i % 3 == 0 {
                let k = format!("k{i}").into_bytes();
                db.delete(&k).unwrap();
                model.remove(&k);
            }
        }
        (dev, db, model)
    };
    let (dev, db, _) = build(1);
    let before = dev.io_counts().total();
    db.merge().unwrap();
    let merge_ios = dev.io_counts().total() - before;
    db.close().unwrap();
    assert!(merge_ios > 5, "merge did {merge_ios} I/Os");
    let step = (merge_ios / 25).max(1);
    let mut n = 0;
    while n <= merge_ios + 2 {
        let seed = 1000 + n;
        let (dev, db, model) = build(seed);
        let start = dev.io_counts().total();
        dev.stop_after(start + n);
        let _ = db.merge();
        let (_d, db) = crash_and_reopen(&dev, db, SyncPolicy::Always);
        assert_eq!(state(&db), model, "seed {seed}: crash after {n} merge I/Os");
        db.close().unwrap();
        n += step;
    }
}

/// Many threads writing under `SyncPolicy::Always` on a device whose flushes take time (so
/// shards share flushes and a shard's next group is written while the last one's flush runs),
/// crashed while they write: every acknowledged write survives; the one write each thread had
/// in flight may or may not.
#[test]
fn synced_writes_from_many_threads_survive_a_crash() {
    use std::collections::HashMap;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    const THREADS: usize = 8;
    // A value's write number (after the key) and length, for messages.
    fn tag(v: &[u8]) -> (u32, usize) {
        let at = v.iter().position(|&b| b == b'k').unwrap_or(0) + 1;
        let digits = v[at..].iter().take_while(|b| b.is_ascii_digit()).count();
        let n = v[at + digits..at + digits + 4]
            .try_into()
            .map(u32::from_le_bytes)
            .unwrap_or(0);
        (n, v.len())
    }
    for seed in 200..203u64 {
        let dev = sim(seed);
        dev.update_plan(|p| p.flush_latency = Duration::from_micros(500));
        let db = Arc::new(Db::open(opts(&dev, SyncPolicy::Always)).unwrap());
        let acked = Arc::new(AtomicUsize::new(0));
        let writers: Vec<_> = (0..THREADS)
            .map(|t| {
                let (db, acked) = (db.clone(), acked.clone());
                std::thread::spawn(move || {
                    let mut rng = ChaCha8Rng::seed_from_u64(seed * 100 + t as u64);
                    // Per key: the last acknowledged value (None = deleted or never
                    // written), and the operation in flight when the device died.
                    let mut last: HashMap<Vec<u8>, Option<Vec<u8>>> = HashMap::new();
                    let mut in_flight = None;
                    for n in 0..400u32 {
                        let k = format!("t{t}k{}", rng.gen_range(0..12)).into_bytes();
                        let v = (rng.gen_range(0..8) != 0).then(|| {
                            let mut v = k.clone();
                            v.extend_from_slice(&n.to_le_bytes());
                            v.resize(rng.gen_range(16..300).max(v.len()), n as u8);
                            v
                        });
                        let r = match &v {
                            Some(v) => db.put(&k, v),
                            None => db.delete(&k),
                        };
                        if r.is_err() {
                            in_flight = Some((k, v));
                            break;
                        }
                        last.insert(k, v);
                        acked.fetch_add(1, Ordering::Relaxed);
                    }
                    (last, in_flight)
                })
            })
            .collect();
        // Crash once the writers are well under way.
        while acked.load(Ordering::Relaxed) < 300 {
            std::thread::sleep(Duration::from_millis(1));
        }
        let next = Arc::new(dev.crash().unwrap());
        let results: Vec<_> = writers.into_iter().map(|w| w.join().unwrap()).collect();
        drop(db);
        let db = Db::open(opts(&next, SyncPolicy::Always)).unwrap();
        let got = state(&db);
        let mut expected_keys = 0;
        for (last, in_flight) in results {
            for (k, v) in last {
                let now = got.get(&k);
                let ok_flight = in_flight
                    .as_ref()
                    .is_some_and(|(fk, fv)| *fk == k && now == fv.as_ref());
                assert!(
                    now == v.as_ref() || ok_flight,
                    "seed {seed}: key {} lost its acknowledged value: has {:?}, acked {:?}, \
                     in flight {:?}",
                    String::from_utf8_lossy(&k),
                    now.map(|v| tag(v)),
                    v.as_deref().map(tag),
                    in_flight.as_ref().map(|(k, v)| (
                        String::from_utf8_lossy(k).into_owned(),
                        v.as_deref().map(tag)
                    ))
                );
                expected_keys += 1;
            }
        }
        assert!(expected_keys > 0);
        db.close().unwrap();
    }
}

/// A clean close while many threads write synced (slow flushes, so groups wait for theirs
/// when the close comes): after a reopen every acknowledged write is there, the keydir
/// snapshot close wrote included.
#[test]
fn a_close_under_synced_writers_keeps_every_acknowledged_write() {
    use std::collections::HashMap;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    for seed in 210..213u64 {
        let dev = sim(seed);
        dev.update_plan(|p| p.flush_latency = Duration::from_micros(500));
        let db = Db::open(opts(&dev, SyncPolicy::Always)).unwrap();
        let acked = Arc::new(AtomicUsize::new(0));
        let writers: Vec<_> = (0..8)
            .map(|t| {
                let (db, acked) = (db.clone(), acked.clone());
                std::thread::spawn(move || {
                    let mut last: HashMap<Vec<u8>, Vec<u8>> = HashMap::new();
                    let mut in_flight = None;
                    for n in 0..400u32 {
                        let k = format!("t{t}k{}", n % 10).into_bytes();
                        let mut v = k.clone();
                        v.extend_from_slice(&n.to_le_bytes());
                        if db.put(&k, &v).is_err() {
                            in_flight = Some((k, v));
                            break;
                        }
                        last.insert(k, v);
                        acked.fetch_add(1, Ordering::Relaxed);
                    }
                    (last, in_flight)
                })
            })
            .collect();
        while acked.load(Ordering::Relaxed) < 300 {
            std::thread::sleep(Duration::from_millis(1));
        }
        db.close().unwrap();
        let results: Vec<_> = writers.into_iter().map(|w| w.join().unwrap()).collect();
        dev.update_plan(|p| p.flush_latency = Duration::ZERO);
        let db = Db::open(opts(&dev, SyncPolicy::Always)).unwrap();
        let got = state(&db);
        for (last, in_flight) in results {
            for (k, v) in last {
                let now = got.get(&k);
                let flight = in_flight
                    .as_ref()
                    .is_some_and(|(fk, fv)| *fk == k && now == Some(fv));
                assert!(
                    now == Some(&v) || flight,
                    "seed {seed}: key {} lost its acknowledged value",
                    String::from_utf8_lossy(&k)
                );
            }
        }
        db.close().unwrap();
    }
}
