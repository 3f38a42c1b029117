//! The engine's integration and crash suites, generic over the backend: every function takes
//! a maker of fresh backends (`mk(device_bytes)`) and runs on whatever it returns. The
//! [`engine_suite!`](crate::engine_suite) macro turns the list into `#[test]`s; it runs on
//! the native backend in `tests/engine_suite.rs` and on SPDK malloc and aio bdevs in
//! `tests/spdk_engine.rs`.
//!
//! Crashes here are process kills ([`crate::killswitch`]): every write the store completed
//! stays on the device. Power loss (lost caches, torn writes) needs the sim device and is
//! covered by the native-only `crash_*` suites.

use std::collections::HashMap;
use std::time::Duration;

use blobcask::blobstore::BlobStore;
use blobcask::keydir::hash_key;
use blobcask::{Db, Error, Options, SyncPolicy, WriteBatch};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::backend::{Backend, Rig, RigDb};

const MIB: u64 = 1 << 20;
/// Shards of every suite store.
pub const SHARDS: usize = 2;

/// Expected contents: key to value.
pub type Model = HashMap<Vec<u8>, Vec<u8>>;

/// The suites' options: small clusters and blobs so rotation and merge happen often.
pub fn opts(sync: SyncPolicy) -> Options {
    let mut o = Options::new(blobcask::DeviceSpec::Memory { size: 0 });
    o.cluster_size = 64 << 10;
    o.shards = SHARDS;
    o.max_blob_size = 256 << 10;
    o.max_key_size = 64;
    o.max_value_size = 64 << 10;
    o.cache_bytes = 1 << 20;
    o.sync = sync;
    o.merge.auto = false;
    o
}

/// Everything the store holds.
pub fn state<S: BlobStore>(db: &Db<S>) -> Model {
    db.fold(Model::new(), |mut m, k, v| {
        m.insert(k.to_vec(), v.to_vec());
        m
    })
    .expect("fold")
}

/// The shard of `k` in a [`SHARDS`]-shard store.
pub fn shard_of(k: &[u8]) -> usize {
    (hash_key(k) % SHARDS as u64) as usize
}

/// A value naming its key and version, of a random length.
pub fn value(rng: &mut ChaCha8Rng, key: &[u8], n: u32) -> Vec<u8> {
    let len = rng.gen_range(0..3000);
    let mut v = key.to_vec();
    v.extend_from_slice(&n.to_le_bytes());
    v.resize(len.max(v.len()), n as u8);
    v
}

fn rig<B: Backend>(mk: &impl Fn(u64) -> B, size: u64) -> Rig<B> {
    Rig::new(mk(size))
}

fn open<B: Backend>(r: &mut Rig<B>, o: Options) -> RigDb<B> {
    let name = r.backend.name();
    r.open(o).unwrap_or_else(|e| panic!("{name}: open: {e}"))
}

// ---- API --------------------------------------------------------------------------------

pub fn put_get_delete_contains<B: Backend>(mk: impl Fn(u64) -> B) {
    let mut r = rig(&mk, 32 * MIB);
    let db = open(&mut r, opts(SyncPolicy::Always));
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
    assert_eq!(db.keys().unwrap(), vec![b"b".to_vec()]);
    db.sync().unwrap();
    let st = db.stats().unwrap();
    assert_eq!(st.keys, 1);
    assert!(st.user_bytes > 0 && st.device_bytes > 0);
    db.close().unwrap();
}

pub fn limits_give_clear_errors<B: Backend>(mk: impl Fn(u64) -> B) {
    let mut r = rig(&mk, 32 * MIB);
    let db = open(&mut r, opts(SyncPolicy::Always));
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
    assert!(matches!(db.put(b"", b"v"), Err(Error::InvalidArgument(_))));
    let mut b = WriteBatch::new();
    b.put(b"ok", b"v").put(&[b'x'; 65], b"v");
    assert!(matches!(db.write_batch(b), Err(Error::KeyTooLarge { .. })));
    assert_eq!(db.get(b"ok").unwrap(), None);
    db.close().unwrap();
}

pub fn batches_and_reopen_after_clean_close<B: Backend>(mk: impl Fn(u64) -> B) {
    let mut r = rig(&mk, 32 * MIB);
    let db = open(&mut r, opts(SyncPolicy::Always));
    let mut b = WriteBatch::new();
    for i in 0..100u32 {
        b.put(format!("k{i}").as_bytes(), &i.to_le_bytes());
    }
    b.delete(b"k5");
    db.write_batch(b).unwrap();
    db.put(b"solo", b"x").unwrap();
    db.delete(b"k7").unwrap();
    db.close().unwrap();

    let db = open(&mut r, opts(SyncPolicy::Always));
    assert!(
        db.stats().unwrap().recovery_used_hints,
        "clean close leaves snapshots"
    );
    assert_eq!(db.get(b"k5").unwrap(), None);
    assert_eq!(db.get(b"k7").unwrap(), None);
    assert_eq!(db.get(b"k9").unwrap().unwrap(), 9u32.to_le_bytes());
    assert_eq!(db.get(b"solo").unwrap().unwrap(), b"x");
    assert_eq!(db.keys().unwrap().len(), 99);
    db.close().unwrap();
}

pub fn async_variants_complete<B: Backend>(mk: impl Fn(u64) -> B) {
    let mut r = rig(&mk, 32 * MIB);
    let db = open(&mut r, opts(SyncPolicy::Always));
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

/// Cold and warm reads agree however they are made: `get`, `get_with`, `get_async` and
/// `multi_get` (one submission for its misses), after a reopen (empty cache) and again warm.
pub fn every_read_path_agrees_cold_and_warm<B: Backend>(mk: impl Fn(u64) -> B) {
    let mut r = rig(&mk, 32 * MIB);
    let db = open(&mut r, opts(SyncPolicy::Never));
    let mut rng = ChaCha8Rng::seed_from_u64(13);
    let keys: Vec<Vec<u8>> = (0..300u32)
        .map(|i| format!("k{i:05}").into_bytes())
        .collect();
    for (i, k) in keys.iter().enumerate() {
        db.put(k, &value(&mut rng, k, i as u32)).unwrap();
    }
    for k in keys.iter().step_by(7) {
        db.delete(k).unwrap();
    }
    let model = state(&db);
    db.close().unwrap();
    let db = open(&mut r, opts(SyncPolicy::Never));
    let mut asked = keys.clone();
    asked.push(b"never-written".to_vec());
    asked.push(keys[3].clone());
    for pass in ["cold", "warm"] {
        let got = db.multi_get(&asked).unwrap();
        for (k, v) in asked.iter().zip(&got) {
            assert_eq!(v.as_ref(), model.get(k), "{pass} multi_get of {k:?}");
            assert_eq!(
                db.get_with(k, <[u8]>::to_vec).unwrap().as_ref(),
                model.get(k)
            );
            let a = pollster::block_on(db.get_async(k)).unwrap();
            assert_eq!(a.as_ref(), model.get(k), "{pass} get_async of {k:?}");
        }
    }
    db.close().unwrap();
}

pub fn merge_keeps_live_data_and_frees_space<B: Backend>(mk: impl Fn(u64) -> B) {
    let mut r = rig(&mk, 32 * MIB);
    let db = open(&mut r, opts(SyncPolicy::Never));
    for round in 0..8u32 {
        for i in 0..200u32 {
            db.put(format!("k{i}").as_bytes(), &[round as u8; 500])
                .unwrap();
        }
    }
    for i in 0..50u32 {
        db.delete(format!("k{i}").as_bytes()).unwrap();
    }
    db.sync().unwrap();
    let before = db.stats().unwrap();
    db.merge().unwrap();
    let after = db.stats().unwrap();
    assert!(after.merges >= 1);
    assert!(after.dead_bytes < before.dead_bytes);
    assert!(after.free_clusters > before.free_clusters);
    for i in 0..200u32 {
        let v = db.get(format!("k{i}").as_bytes()).unwrap();
        assert_eq!(v, (i >= 50).then(|| vec![7u8; 500]), "k{i}");
    }
    db.close().unwrap();
    let db = open(&mut r, opts(SyncPolicy::Always));
    assert_eq!(db.get(b"k10").unwrap(), None);
    assert_eq!(db.get(b"k60").unwrap().unwrap(), vec![7u8; 500]);
    assert_eq!(db.keys().unwrap().len(), 150);
    db.close().unwrap();
}

pub fn a_full_device_says_full_and_keeps_serving_reads<B: Backend>(mk: impl Fn(u64) -> B) {
    let mut r = rig(&mk, 8 * MIB);
    let db = open(&mut r, opts(SyncPolicy::Always));
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
    assert_eq!(db.stats().unwrap().keys, u64::from(n));
    db.close().unwrap();
    // Nothing acknowledged was lost by running out of space.
    let db = open(&mut r, opts(SyncPolicy::Always));
    assert_eq!(db.keys().unwrap().len(), n as usize);
    assert_eq!(db.get(b"k100").unwrap().unwrap(), vec![100u8; 4000]);
    db.close().unwrap();
}

pub fn group_commit_from_many_threads<B: Backend>(mk: impl Fn(u64) -> B) {
    let mut r = rig(&mk, 32 * MIB);
    let db = open(
        &mut r,
        opts(SyncPolicy::GroupCommit {
            max_delay: Duration::from_micros(100),
        }),
    );
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
    assert_eq!(st.group_ops, 800);
    assert!(st.groups > 0 && st.groups <= 800);
    db.close().unwrap();
}

/// Values name their writer, key and version, so a reader can tell a wrong value from an
/// old one.
fn tagged(t: u32, k: u32, ver: u32) -> Vec<u8> {
    let mut v = format!("{t}:{k}:{ver}:").into_bytes();
    v.resize(64 + (ver as usize * 37) % 900, b'x');
    v
}

fn untag(v: &[u8]) -> (u32, u32, u32) {
    let s = std::str::from_utf8(v).expect("tagged value");
    let mut it = s.split(':').map(|x| x.parse::<u32>().expect("tag"));
    let mut next = || it.next().expect("tag field");
    (next(), next(), next())
}

pub fn concurrent_writers_readers_and_merges_match_the_model<B: Backend>(mk: impl Fn(u64) -> B) {
    use std::sync::atomic::{AtomicBool, Ordering};
    const WRITERS: u32 = 3;
    const KEYS: u32 = 100;
    const OPS: u32 = 500;
    let mut r = rig(&mk, 64 * MIB);
    let db = open(&mut r, opts(SyncPolicy::Never));
    let stop = AtomicBool::new(false);
    let merging = AtomicBool::new(false);
    let models: Vec<HashMap<u32, Option<u32>>> = std::thread::scope(|s| {
        let reader = {
            let db = db.clone();
            let stop = &stop;
            s.spawn(move || {
                let mut n = 0u32;
                while !stop.load(Ordering::Relaxed) {
                    let (t, k) = (n % WRITERS, (n * 7) % KEYS);
                    if let Some(v) = db.get(format!("{t}-{k}").as_bytes()).unwrap() {
                        let (vt, vk, _) = untag(&v);
                        assert_eq!((vt, vk), (t, k), "a read returned another key's value");
                    }
                    n += 1;
                    std::thread::yield_now();
                }
            })
        };
        let merger = {
            let db = db.clone();
            let (stop, merging) = (&stop, &merging);
            s.spawn(move || loop {
                merging.store(true, Ordering::Release);
                db.merge().unwrap();
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(10));
            })
        };
        // The writers start once the first merge has, so merges overlap the load however
        // the threads are scheduled.
        while !merging.load(Ordering::Acquire) {
            std::thread::yield_now();
        }
        let writers: Vec<_> = (0..WRITERS)
            .map(|t| {
                let db = db.clone();
                s.spawn(move || {
                    let mut model = HashMap::new();
                    let mut rng = ChaCha8Rng::seed_from_u64(u64::from(t));
                    for ver in 0..OPS {
                        let k = rng.gen_range(0..KEYS);
                        let key = format!("{t}-{k}");
                        match rng.gen_range(0..10) {
                            0 => {
                                db.delete(key.as_bytes()).unwrap();
                                model.insert(k, None);
                            }
                            1 => {
                                let k2 = (k + 1) % KEYS;
                                let mut b = WriteBatch::new();
                                b.put(key.as_bytes(), &tagged(t, k, ver));
                                b.put(format!("{t}-{k2}").as_bytes(), &tagged(t, k2, ver));
                                db.write_batch(b).unwrap();
                                model.insert(k, Some(ver));
                                model.insert(k2, Some(ver));
                            }
                            _ => {
                                db.put(key.as_bytes(), &tagged(t, k, ver)).unwrap();
                                model.insert(k, Some(ver));
                            }
                        }
                        let got = db.get(key.as_bytes()).unwrap();
                        assert_eq!(got.map(|v| untag(&v).2), model[&k], "read-your-writes");
                    }
                    model
                })
            })
            .collect();
        let models = writers.into_iter().map(|h| h.join().unwrap()).collect();
        stop.store(true, Ordering::Relaxed);
        reader.join().unwrap();
        merger.join().unwrap();
        models
    });
    let check = |db: &RigDb<B>, when: &str| {
        for (t, model) in models.iter().enumerate() {
            for (k, ver) in model {
                let got = db.get(format!("{t}-{k}").as_bytes()).unwrap();
                assert_eq!(got.map(|v| untag(&v).2), *ver, "key {t}-{k} {when}");
            }
        }
    };
    check(&db, "after the load");
    db.close().unwrap();
    let db = open(&mut r, opts(SyncPolicy::Never));
    check(&db, "after reopen");
    db.close().unwrap();
}

// ---- crash and recovery -----------------------------------------------------------------

/// One operation of a random workload, applied to a model.
enum Op {
    Put(Vec<u8>, Vec<u8>),
    Del(Vec<u8>),
    Batch(WriteBatch, Vec<(Vec<u8>, Option<Vec<u8>>)>),
}

fn random_op(rng: &mut ChaCha8Rng, n: u32) -> Op {
    let key = |rng: &mut ChaCha8Rng| format!("k{}", rng.gen_range(0..40)).into_bytes();
    match rng.gen_range(0..10) {
        0..=5 => {
            let k = key(rng);
            let v = value(rng, &k, n);
            Op::Put(k, v)
        }
        6..=7 => Op::Del(key(rng)),
        _ => {
            let mut b = WriteBatch::new();
            let mut eff = Vec::new();
            for j in 0..rng.gen_range(1..6) {
                let k = key(rng);
                if j % 3 == 2 {
                    b.delete(&k);
                    eff.push((k, None));
                } else {
                    let v = value(rng, &k, n);
                    b.put(&k, &v);
                    eff.push((k, Some(v)));
                }
            }
            Op::Batch(b, eff)
        }
    }
}

fn apply(m: &mut Model, op: &Op) {
    let mut one = |k: &Vec<u8>, v: Option<&Vec<u8>>| match v {
        Some(v) => {
            m.insert(k.clone(), v.clone());
        }
        None => {
            m.remove(k);
        }
    };
    match op {
        Op::Put(k, v) => one(k, Some(v)),
        Op::Del(k) => one(k, None),
        Op::Batch(_, eff) => eff.iter().for_each(|(k, v)| one(k, v.as_ref())),
    }
}

fn run<S: BlobStore>(db: &Db<S>, op: &Op) -> blobcask::Result<()> {
    match op {
        Op::Put(k, v) => db.put(k, v),
        Op::Del(k) => db.delete(k),
        Op::Batch(b, _) => db.write_batch(b.clone()),
    }
}

/// With `Always`, every acknowledged write survives a kill at any device write, and the one
/// write the kill interrupted is there entirely or not at all.
pub fn synced_writes_survive_a_kill_exactly<B: Backend>(mk: impl Fn(u64) -> B) {
    for seed in 0..8u64 {
        let mut r = rig(&mk, 16 * MIB);
        let db = open(&mut r, opts(SyncPolicy::Always));
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        r.switch().arm(rng.gen_range(5..400));
        let mut model = Model::new();
        let mut interrupted = None;
        for n in 0..400u32 {
            let op = random_op(&mut rng, n);
            match run(&db, &op) {
                Ok(()) => apply(&mut model, &op),
                Err(_) => {
                    let mut with = model.clone();
                    apply(&mut with, &op);
                    interrupted = Some(with);
                    break;
                }
            }
        }
        assert!(r.switch().is_dead(), "seed {seed}: the kill never came");
        let db = r.kill_and_reopen(db, opts(SyncPolicy::Always));
        let got = state(&db);
        assert!(
            got == model || interrupted.as_ref() == Some(&got),
            "{} seed {seed}: recovered state is neither before nor after the interrupted write",
            r.backend.name()
        );
        db.close().unwrap();
        let db = open(&mut r, opts(SyncPolicy::Always));
        assert_eq!(
            state(&db),
            got,
            "seed {seed}: clean reopen changed the state"
        );
        db.close().unwrap();
    }
}

/// With `Never`, what survives a kill is, per shard, a prefix of the acknowledged writes at
/// least as long as the last `sync`.
pub fn unsynced_writes_recover_as_a_per_shard_prefix<B: Backend>(mk: impl Fn(u64) -> B) {
    for seed in 100..104u64 {
        let mut r = rig(&mk, 16 * MIB);
        let db = open(&mut r, opts(SyncPolicy::Never));
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut logs: Vec<Vec<Op>> = (0..SHARDS).map(|_| Vec::new()).collect();
        let mut synced_at = [0usize; SHARDS];
        for n in 0..250u32 {
            let k = format!("k{}", rng.gen_range(0..30)).into_bytes();
            let op = if rng.gen_range(0..4) == 0 {
                Op::Del(k.clone())
            } else {
                let v = value(&mut rng, &k, n);
                Op::Put(k.clone(), v)
            };
            run(&db, &op).unwrap();
            logs[shard_of(&k)].push(op);
            if n == 120 {
                db.sync().unwrap();
                for (s, l) in logs.iter().enumerate() {
                    synced_at[s] = l.len();
                }
            }
        }
        let db = r.kill_and_reopen(db, opts(SyncPolicy::Never));
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
                apply(&mut m, op);
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

/// A batch killed anywhere is all there or not there at all, across shards.
pub fn batches_are_all_or_nothing_after_a_kill<B: Backend>(mk: impl Fn(u64) -> B) {
    for seed in 200..206u64 {
        let mut r = rig(&mk, 16 * MIB);
        let db = open(&mut r, opts(SyncPolicy::Never));
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        r.switch().arm(rng.gen_range(3..60));
        let nb = 40;
        let mut acked = 0;
        for b in 0..nb {
            let mut wb = WriteBatch::new();
            for i in 0..rng.gen_range(2..8) {
                wb.put(format!("b{b}-{i}").as_bytes(), &vec![b as u8; 700]);
            }
            wb.put(format!("b{b}-end").as_bytes(), b"end");
            if db.write_batch(wb).is_err() {
                break;
            }
            acked += 1;
            if b % 8 == 7 {
                let _ = db.sync();
            }
        }
        let db = r.kill_and_reopen(db, opts(SyncPolicy::Never));
        let got = state(&db);
        for b in 0..nb {
            let have = got.contains_key(format!("b{b}-end").as_bytes());
            for i in 0..2 {
                assert_eq!(
                    got.contains_key(format!("b{b}-{i}").as_bytes()),
                    have,
                    "seed {seed}: batch {b} is torn ({acked} acknowledged)"
                );
            }
        }
        db.close().unwrap();
    }
}

/// A cross-shard batch cut by a kill between its shards' commit records is recovered whole on
/// the commit record that survived, and stays whole after a clean close and reopen in which
/// the shard without one was not written (that shard adopts the batch at open; it used to lose
/// its members once the other shard's log was read from its keydir snapshot).
pub fn a_batch_cut_between_its_commits_stays_whole_after_reopen<B: Backend>(mk: impl Fn(u64) -> B) {
    let keys: Vec<Vec<u8>> = (0..6).map(|i| format!("key{i}").into_bytes()).collect();
    let batch = || {
        let mut wb = WriteBatch::new();
        for k in &keys {
            wb.put(k, &[7u8; 100]);
        }
        wb
    };
    // A store whose shards have keydir snapshots of no blob: the batch goes to new blobs,
    // which the next open scans, and those snapshots stay.
    let fresh = || {
        let mut r = rig(&mk, 16 * MIB);
        open(&mut r, opts(SyncPolicy::Never)).close().unwrap();
        let db = open(&mut r, opts(SyncPolicy::Never));
        (r, db)
    };
    let writes = {
        let (r, db) = fresh();
        let before = r.switch().writes();
        db.write_batch(batch()).unwrap();
        let n = r.switch().writes() - before;
        db.close().unwrap();
        n
    };
    for at in 1..=writes {
        for writer in 0..SHARDS {
            let name = format!("kill at write {at} of {writes}, shard {writer} written after");
            let (mut r, db) = fresh();
            r.switch().arm(at);
            let _ = db.write_batch(batch());
            let db = r.kill_and_reopen(db, opts(SyncPolicy::Never));
            let got = state(&db);
            assert!(
                got.is_empty() || keys.iter().all(|k| got.get(k) == Some(&vec![7u8; 100])),
                "{name}: the batch came back torn"
            );
            let extra = (0..)
                .map(|i| format!("extra{i}").into_bytes())
                .find(|k| shard_of(k) == writer)
                .unwrap();
            db.put(&extra, b"x").unwrap();
            db.close().unwrap();
            let db = open(&mut r, opts(SyncPolicy::Never));
            let mut after = state(&db);
            assert_eq!(after.remove(&extra), Some(b"x".to_vec()), "{name}");
            assert_eq!(after, got, "{name}: a clean reopen changed the store");
            db.close().unwrap();
        }
    }
}

/// The chunk store on this backend: writes at any offset read back; after a kill each chunk
/// holds what its acknowledged (durable) writes made, or that plus the write the kill cut
/// (whole), never a mix; `chunk::check` finds nothing wrong; a clean reopen changes nothing.
pub fn chunks_survive_kills_and_reopens<B: Backend>(mk: impl Fn(u64) -> B) {
    use blobcask::chunk::{self, ChunkOptions, ChunkStore};
    let copts = ChunkOptions {
        workers: 2,
        grow_clusters: 2,
        max_blob_clusters: 8,
        ..ChunkOptions::default()
    };
    let read_all = |cs: &ChunkStore<_>, id| cs.read(id, 0, u64::MAX).unwrap();
    for seed in 0..4u64 {
        let mut r = rig(&mk, 32 * MIB);
        let name = format!("{} seed {seed}", r.backend.name());
        let db = open(&mut r, opts(SyncPolicy::Never));
        let cs = ChunkStore::open(&db, copts.clone()).unwrap();
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let ids: Vec<_> = (0..3).map(|_| cs.create(0).unwrap()).collect();
        let mut model: Vec<Vec<u8>> = vec![Vec::new(); ids.len()];
        let mut cut = None;
        r.switch().arm(rng.gen_range(10..250));
        for n in 0..80u32 {
            let c = rng.gen_range(0..ids.len());
            let off = rng.gen_range(0..2 * MIB) as usize;
            let len = rng.gen_range(1..70_000usize);
            let data: Vec<u8> = (0..len)
                .map(|i| (i as u8).wrapping_mul(31) ^ n as u8)
                .collect();
            let mut now = model[c].clone();
            if now.len() < off + len {
                now.resize(off + len, 0);
            }
            now[off..off + len].copy_from_slice(&data);
            if cs.write(ids[c], off as u64, &data).is_err() {
                cut = Some((c, now));
                break;
            }
            model[c] = now;
            if n % 10 == 9 {
                assert_eq!(read_all(&cs, ids[c]), model[c], "{name}: read back");
            }
        }
        r.kill_store();
        drop(cs);
        drop(db);
        let db = open(&mut r, opts(SyncPolicy::Never));
        let cs = ChunkStore::open(&db, copts.clone()).unwrap();
        for (i, id) in ids.iter().enumerate() {
            let got = read_all(&cs, *id);
            let cut_here = cut.as_ref().is_some_and(|(c, now)| *c == i && *now == got);
            assert!(
                got == model[i] || cut_here,
                "{name}: chunk {i} after the kill: {} bytes, acknowledged {}",
                got.len(),
                model[i].len()
            );
            model[i] = got;
        }
        cs.close().unwrap();
        let rep = chunk::check(&db).unwrap();
        assert!(rep.problems.is_empty(), "{name}: {:?}", rep.problems);
        db.close().unwrap();
        let db = open(&mut r, opts(SyncPolicy::Never));
        let cs = ChunkStore::open(&db, copts.clone()).unwrap();
        for (i, id) in ids.iter().enumerate() {
            assert_eq!(
                read_all(&cs, *id),
                model[i],
                "{name}: chunk {i} after a clean reopen"
            );
        }
        cs.close().unwrap();
        db.close().unwrap();
    }
}

/// Deleted keys stay deleted through merges, kills and recoveries.
pub fn deletes_never_come_back_across_merges_and_kills<B: Backend>(mk: impl Fn(u64) -> B) {
    for seed in 300..302u64 {
        let mut r = rig(&mk, 16 * MIB);
        let mut db = open(&mut r, opts(SyncPolicy::Always));
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
            db = r.kill_and_reopen(db, opts(SyncPolicy::Always));
            assert_eq!(state(&db), model, "seed {seed} round {round}");
            db.merge().unwrap();
            assert_eq!(state(&db), model, "seed {seed} round {round} after merge");
        }
        db.close().unwrap();
    }
}

/// Several sealed blobs (a merge takes them one step at a time), with tombstones in later
/// blobs that hide values in earlier ones: a step that dropped a tombstone too early would
/// bring a deleted key back.
fn merge_workload<S: BlobStore>(db: &Db<S>) -> Model {
    let mut model = Model::new();
    for round in 0..10u32 {
        for i in 0..50u32 {
            let k = format!("k{i}").into_bytes();
            if round >= 3 && i % 4 == 0 {
                continue;
            }
            let v = vec![(round * 7 + i) as u8; 900];
            db.put(&k, &v).unwrap();
            model.insert(k, v);
        }
        if round == 2 {
            for i in (0..50u32).step_by(4) {
                let k = format!("k{i}").into_bytes();
                db.delete(&k).unwrap();
                model.remove(&k);
            }
        }
    }
    for i in (0..50u32).step_by(3) {
        let k = format!("k{i}").into_bytes();
        db.delete(&k).unwrap();
        model.remove(&k);
    }
    model
}

/// A kill at any device write of a merge — between its blob-by-blob steps or inside one —
/// leaves the contents unchanged (every step is pre- or post-state, never a deleted key back),
/// and the store merges again afterwards.
pub fn a_kill_anywhere_inside_merge_loses_nothing<B: Backend>(mk: impl Fn(u64) -> B) {
    let merge_writes = {
        let mut r = rig(&mk, 16 * MIB);
        let db = open(&mut r, opts(SyncPolicy::Always));
        merge_workload(&db);
        let before = r.switch().writes();
        db.merge().unwrap();
        let n = r.switch().writes() - before;
        let steps = db.stats().unwrap().merges;
        assert!(
            steps >= 3,
            "the merge took {steps} steps, not one per sealed blob"
        );
        db.close().unwrap();
        n
    };
    assert!(merge_writes > 3, "merge did {merge_writes} device writes");
    let step = (merge_writes / 24).max(1);
    let mut n = 0;
    while n <= merge_writes {
        let mut r = rig(&mk, 16 * MIB);
        let db = open(&mut r, opts(SyncPolicy::Always));
        let model = merge_workload(&db);
        r.switch().arm(n);
        let _ = db.merge();
        let db = r.kill_and_reopen(db, opts(SyncPolicy::Always));
        assert_eq!(
            state(&db),
            model,
            "kill after {n} of {merge_writes} merge writes"
        );
        db.merge().unwrap();
        assert_eq!(state(&db), model, "merge after recovering from kill {n}");
        db.close().unwrap();
        let db = open(&mut r, opts(SyncPolicy::Always));
        assert_eq!(state(&db), model, "clean reopen after kill {n}");
        db.close().unwrap();
        n += step;
    }
}

/// A kill during recovery itself (the reopen after a kill) loses nothing either.
pub fn a_kill_during_recovery_loses_nothing<B: Backend>(mk: impl Fn(u64) -> B) {
    let mut killed_inside_open = 0;
    for at in [0u64, 1, 2, 3, 5, 8, 13, 21] {
        let mut r = rig(&mk, 16 * MIB);
        let db = open(&mut r, opts(SyncPolicy::Always));
        let model = merge_workload(&db);
        r.kill(db);
        match r.open_armed(opts(SyncPolicy::Always), Some(at)) {
            Ok(db) => r.kill(db),
            Err(_) => {
                killed_inside_open += 1;
                r.kill_store();
            }
        }
        let db = open(&mut r, opts(SyncPolicy::Always));
        assert_eq!(state(&db), model, "kill at recovery write {at}");
        db.close().unwrap();
    }
    assert!(killed_inside_open > 0, "no kill landed inside recovery");
}

/// Turn the suite into `#[test]`s: `engine_suite!(skip, mk)` where `skip` is an
/// `Option<String>` saying why the backend is unavailable and `mk` builds a fresh backend
/// from a device size in bytes.
#[macro_export]
macro_rules! engine_suite {
    ($skip:expr, $mk:expr) => {
        $crate::engine_suite!(@each $skip, $mk;
            put_get_delete_contains,
            limits_give_clear_errors,
            batches_and_reopen_after_clean_close,
            async_variants_complete,
            every_read_path_agrees_cold_and_warm,
            merge_keeps_live_data_and_frees_space,
            a_full_device_says_full_and_keeps_serving_reads,
            group_commit_from_many_threads,
            concurrent_writers_readers_and_merges_match_the_model,
            synced_writes_survive_a_kill_exactly,
            unsynced_writes_recover_as_a_per_shard_prefix,
            batches_are_all_or_nothing_after_a_kill,
            a_batch_cut_between_its_commits_stays_whole_after_reopen,
            chunks_survive_kills_and_reopens,
            deletes_never_come_back_across_merges_and_kills,
            a_kill_anywhere_inside_merge_loses_nothing,
            a_kill_during_recovery_loses_nothing
        );
    };
    (@each $skip:expr, $mk:expr; $($t:ident),*) => {
        $(
            #[test]
            fn $t() {
                if let Some(why) = $skip {
                    println!("skipped: {why}");
                    return;
                }
                $crate::suite::$t($mk);
            }
        )*
    };
}
