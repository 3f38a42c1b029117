//! Small stores on a [`SimDevice`], seeded workloads, and the driver that runs a workload
//! against a store while keeping the [`Oracle`] in step.
//!
//! Stores are tiny on purpose (2 MiB device, 64 KiB clusters, 128 KiB data blobs, a few dozen
//! keys), so a workload rotates blobs, grows leases, merges and writes hints within a few
//! hundred device I/Os, and thousands of crash points fit in the default test run.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use blobcask::device::{CrashMode, SimDevice};
use blobcask::{Db, DeviceSpec, Error, MergeOptions, Options, SyncPolicy};
use rand::Rng;
use rand_chacha::ChaCha8Rng;

use crate::oracle::{self, to_batch, Key, Op, Oracle};

pub const DEV_SIZE: u64 = 2 << 20;
pub const CLUSTER: u32 = 64 << 10;
pub const BLOCK: u32 = 4096;
pub const MAX_BLOB: u64 = 128 << 10;
pub const MAX_VALUE: usize = 16 << 10;

/// Options of every test store: small blobs, no automatic merge, no read cache (reads hit the
/// device, so corruption is seen).
pub fn options(dev: Arc<SimDevice>, sync: SyncPolicy, shards: usize) -> Options {
    Options {
        device: DeviceSpec::Sim(dev),
        create: false,
        cluster_size: CLUSTER,
        shards,
        max_blob_size: MAX_BLOB,
        sync,
        merge: MergeOptions {
            auto: false,
            check_interval: Duration::from_secs(3600),
            ..MergeOptions::default()
        },
        max_key_size: 64,
        max_value_size: MAX_VALUE,
        cache_bytes: 0,
        ..Options::default()
    }
}

/// A freshly formatted, cleanly closed store image with `shards` shards.
pub fn template(shards: usize) -> Vec<u8> {
    template_of(DEV_SIZE, shards)
}

/// [`template`] on a device of `size` bytes (made once per size and shard count).
pub fn template_of(size: u64, shards: usize) -> Vec<u8> {
    type Images = std::sync::Mutex<Vec<((u64, usize), Vec<u8>)>>;
    static T: OnceLock<Images> = OnceLock::new();
    let cache = T.get_or_init(Default::default);
    let mut c = cache.lock().unwrap();
    if let Some((_, img)) = c.iter().find(|(k, _)| *k == (size, shards)) {
        return img.clone();
    }
    let dev = Arc::new(SimDevice::new(size, BLOCK, 0).unwrap());
    let mut o = options(dev.clone(), SyncPolicy::Always, shards);
    o.create = true;
    let db = Db::open(o).expect("format a test store");
    db.close().expect("close the new store");
    let img = dev.durable_image();
    c.push(((size, shards), img.clone()));
    img
}

/// A sim device holding `image`.
pub fn device(image: Vec<u8>, seed: u64) -> Arc<SimDevice> {
    Arc::new(SimDevice::from_image(image, BLOCK, seed).unwrap())
}

/// Open a store on `dev` (never formats: a store that fails to open is a failure).
pub fn open(dev: &Arc<SimDevice>, sync: SyncPolicy, shards: usize) -> Result<Db, Error> {
    Db::open(options(dev.clone(), sync, shards))
}

/// One step of a workload.
#[derive(Clone, Debug)]
pub enum Step {
    Put(Key, Vec<u8>),
    Delete(Key),
    Batch(Vec<Op>),
    Get(Key),
    Sync,
    Merge,
    /// Close cleanly (keydir snapshots are written) and reopen.
    Reopen,
}

/// Shape of a generated workload.
#[derive(Clone, Debug)]
pub struct Mix {
    pub steps: usize,
    pub keys: usize,
    /// Percentages of each step kind; the rest are puts.
    pub delete: u32,
    pub batch: u32,
    pub get: u32,
    pub sync: u32,
    pub merge: u32,
    pub reopen: u32,
    /// Largest value (most values are small).
    pub big_value: usize,
}

impl Default for Mix {
    fn default() -> Self {
        Mix {
            steps: 60,
            keys: 24,
            delete: 15,
            batch: 8,
            get: 10,
            sync: 5,
            merge: 3,
            reopen: 2,
            big_value: 6000,
        }
    }
}

/// The key universe of a workload with `n` keys.
pub fn universe(n: usize) -> Vec<Key> {
    (0..n).map(|i| format!("key{i:03}").into_bytes()).collect()
}

/// A value that names its key and write, so a stale or foreign value is recognisable.
pub fn value(rng: &mut ChaCha8Rng, key: &[u8], n: usize, big: usize) -> Vec<u8> {
    let len = if rng.gen_ratio(1, 6) {
        rng.gen_range(1000..=big.max(1001))
    } else {
        rng.gen_range(0..200)
    };
    let tag = format!("{}#{n}|", String::from_utf8_lossy(key));
    let mut v = tag.into_bytes();
    let fill = rng.gen::<u8>();
    while v.len() < len {
        v.push(fill.wrapping_add(v.len() as u8));
    }
    v
}

/// A seeded workload.
pub fn generate(rng: &mut ChaCha8Rng, mix: &Mix) -> Vec<Step> {
    let keys = universe(mix.keys);
    let mut out = Vec::with_capacity(mix.steps);
    for n in 0..mix.steps {
        let k = keys[rng.gen_range(0..keys.len())].clone();
        let r = rng.gen_range(0..100u32);
        let mut t = mix.delete;
        let step = if r < t {
            Step::Delete(k)
        } else if r < {
            t += mix.batch;
            t
        } {
            let m = rng.gen_range(1..=4);
            let ops = (0..m)
                .map(|j| {
                    let k = keys[rng.gen_range(0..keys.len())].clone();
                    if rng.gen_ratio(1, 4) {
                        Op::Delete(k)
                    } else {
                        let v = value(rng, &k, n * 8 + j, mix.big_value / 2);
                        Op::Put(k, v)
                    }
                })
                .collect();
            Step::Batch(ops)
        } else if r < {
            t += mix.get;
            t
        } {
            Step::Get(k)
        } else if r < {
            t += mix.sync;
            t
        } {
            Step::Sync
        } else if r < {
            t += mix.merge;
            t
        } {
            Step::Merge
        } else if r < {
            t += mix.reopen;
            t
        } {
            Step::Reopen
        } else {
            let v = value(rng, &k, n * 8, mix.big_value);
            Step::Put(k, v)
        };
        out.push(step);
    }
    out
}

/// How a driven workload ended.
#[derive(Debug)]
pub struct Run {
    /// The store, if still open (absent after a failed reopen).
    pub db: Option<Db>,
    /// Steps completed.
    pub done: usize,
    /// The first error, with the step that got it.
    pub error: Option<(usize, Error)>,
}

/// A checker failure: the message carries everything needed to understand it.
pub type Check = Result<(), String>;

/// Drive `steps` against `db`, keeping `oracle` in step, stopping at the first error.
/// Reads are checked against the oracle as they happen (a wrong value is a failure).
pub fn drive(
    mut db: Db,
    dev: &Arc<SimDevice>,
    oracle: &mut Oracle,
    steps: &[Step],
    sync: SyncPolicy,
    universe: &[Key],
) -> Result<Run, String> {
    let durable = matches!(sync, SyncPolicy::Always | SyncPolicy::GroupCommit { .. });
    for (i, step) in steps.iter().enumerate() {
        let res = match step {
            Step::Put(k, v) => {
                let op = [Op::Put(k.clone(), v.clone())];
                note(oracle, &op, durable, db.put(k, v))
            }
            Step::Delete(k) => {
                let op = [Op::Delete(k.clone())];
                note(oracle, &op, durable, db.delete(k))
            }
            Step::Batch(ops) => note(oracle, ops, durable, db.write_batch(to_batch(ops))),
            Step::Get(k) => match db.get(k) {
                Ok(v) => {
                    oracle
                        .check_read(k, v.as_deref())
                        .map_err(|e| format!("step {i}: {e}"))?;
                    Ok(())
                }
                Err(e) => Err(e),
            },
            Step::Sync => db.sync().inspect(|_| oracle.synced()),
            Step::Merge => db.merge().inspect(|_| oracle.synced()),
            Step::Reopen => match db.close() {
                Ok(()) => {
                    oracle.synced();
                    match open(dev, sync, oracle.shards()) {
                        Ok(d) => match oracle::try_read_all(&d, universe) {
                            Ok(st) => {
                                oracle
                                    .verify_clean(&st)
                                    .map_err(|e| format!("step {i} (clean reopen): {e}"))?;
                                db = d;
                                Ok(())
                            }
                            Err(oracle::ReadError::Store(e)) => {
                                return Ok(Run {
                                    db: Some(d),
                                    done: i,
                                    error: Some((i, e)),
                                })
                            }
                            Err(e) => return Err(format!("step {i} (clean reopen): {e}")),
                        },
                        Err(e) => {
                            return Ok(Run {
                                db: None,
                                done: i,
                                error: Some((i, e)),
                            })
                        }
                    }
                }
                Err(e) => {
                    return Ok(Run {
                        db: None,
                        done: i,
                        error: Some((i, e)),
                    })
                }
            },
        };
        if let Err(e) = res {
            return Ok(Run {
                db: Some(db),
                done: i,
                error: Some((i, e)),
            });
        }
    }
    Ok(Run {
        db: Some(db),
        done: steps.len(),
        error: None,
    })
}

fn note(oracle: &mut Oracle, ops: &[Op], durable: bool, r: Result<(), Error>) -> Result<(), Error> {
    match &r {
        Ok(()) => oracle.acked(ops, durable),
        Err(_) => oracle.failed(ops),
    }
    r
}

/// Reopen `image` on a fresh device and check it against the oracle and fsck; returns the
/// reopened store's device and store for more work.
pub fn reopen_and_verify(
    image: Vec<u8>,
    seed: u64,
    oracle: &mut Oracle,
    sync: SyncPolicy,
    universe: &[Key],
) -> Result<(Arc<SimDevice>, Db), String> {
    crate::fsck::check(&image).map_err(|e| format!("fsck of the crash image: {e}"))?;
    let dev = device(image, seed);
    let db = open(&dev, sync, oracle.shards()).map_err(|e| format!("reopen failed: {e}"))?;
    let st = oracle::read_all(&db, universe)?;
    oracle.verify(&st)?;
    Ok((dev, db))
}

/// Close `db` cleanly and fsck the clean image; the oracle must match exactly.
pub fn close_and_check(
    db: Db,
    dev: &Arc<SimDevice>,
    oracle: &mut Oracle,
    sync: SyncPolicy,
    universe: &[Key],
) -> Check {
    db.close().map_err(|e| format!("clean close failed: {e}"))?;
    let img = dev.durable_image();
    let rep = crate::fsck::check(&img).map_err(|e| format!("fsck after clean close: {e}"))?;
    if !rep.clean {
        return Err("super block not clean after a clean close".into());
    }
    let dev2 = device(img, 1);
    let db = open(&dev2, sync, oracle.shards()).map_err(|e| format!("reopen: {e}"))?;
    let st = oracle::read_all(&db, universe)?;
    oracle.verify_clean(&st)?;
    drop(db);
    Ok(())
}

/// Crash-image damage variants a sweep applies at each crash point.
#[derive(Clone, Copy, Debug)]
pub enum Damage {
    /// Random subset of unflushed writes, random order, torn multi-page writes.
    Random(u64),
    /// Only flushed writes survive.
    DropAll,
    /// Every unflushed write survives.
    KeepAll,
    /// Random subset, no tearing.
    Untorn(u64),
}

impl Damage {
    pub fn image(self, dev: &SimDevice) -> Vec<u8> {
        let plan = dev.fault_plan();
        let img = match self {
            Damage::Random(s) => dev.crash_image_with_seed(s),
            Damage::DropAll => {
                dev.set_crash_mode(CrashMode::DropAll);
                dev.crash_image()
            }
            Damage::KeepAll => {
                dev.set_crash_mode(CrashMode::KeepAll);
                dev.crash_image()
            }
            Damage::Untorn(s) => {
                dev.update_plan(|p| p.torn_writes = false);
                dev.crash_image_with_seed(s)
            }
        };
        dev.set_fault_plan(plan);
        img
    }
}
