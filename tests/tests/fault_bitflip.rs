//! Bit flips and latent sector errors in data records, hint/snapshot blobs, md pages and the
//! masks of a store image. Rules:
//! - never a wrong value: every value a read returns is one that was written for that key,
//!   and after damage to records it is the newest one (or an error);
//! - a rotten hint or snapshot is rejected as a whole and open heals by scanning: the store
//!   then reads back exactly as before the flip;
//! - everything else is a clean error (`Corruption`, `Io`, a refused open), never a panic.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Range;
use std::sync::Arc;
use std::time::Instant;

use blobcask::blobstore::native::NativeBlobStore;
use blobcask::blobstore::{BlobStore, LoadOpts};
use blobcask::device::SimDevice;
use blobcask::{Error, SyncPolicy};
use blobcask_tests::harness::{self, Mix, Step};
use blobcask_tests::oracle::{self, Key, Oracle, State};
use blobcask_tests::seed;
use rand::Rng;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Region {
    Records,
    Hints,
    MdPages,
    Masks,
}

/// A store image to damage, what it holds, and every value ever written per key.
struct Base {
    image: Vec<u8>,
    state: State,
    history: BTreeMap<Key, BTreeSet<Vec<u8>>>,
    regions: Vec<(Region, Range<u64>)>,
    shards: usize,
    universe: Vec<Key>,
}

/// Byte ranges of each region in a clean image, from public blobstore APIs.
fn regions(image: &[u8]) -> Vec<(Region, Range<u64>)> {
    let dev = Arc::new(SimDevice::from_image(image.to_vec(), 4096, 0).unwrap());
    let store = pollster::block_on(NativeBlobStore::load(dev, LoadOpts::default())).unwrap();
    let l = store.layout().clone();
    // Aim at bytes in use: md pages in use, and blob clusters up to their last non-zero byte
    // (a flip in zero padding proves nothing).
    let used = |r: Range<u64>| -> Option<Range<u64>> {
        let b = &image[r.start as usize..r.end as usize];
        let last = b.iter().rposition(|&x| x != 0)? as u64;
        Some(r.start..r.start + last + 1)
    };
    let mut out: Vec<(Region, Range<u64>)> = store
        .used_md_pages()
        .into_iter()
        .filter_map(|p| used(l.md_offset(p)..l.md_offset(p + 1)))
        .map(|r| (Region::MdPages, r))
        .collect();
    out.extend([(
        Region::Masks,
        l.page_offset(l.page_mask_start)
            ..l.page_offset(l.blobid_mask_start + l.blobid_mask_len.max(1)),
    )]);
    for id in store.block_on(store.blob_ids()).unwrap() {
        let blob = store.block_on(store.open(id)).unwrap();
        let role = store
            .block_on(store.get_xattr(&blob, "bc.role"))
            .unwrap()
            .unwrap_or_default();
        let region = match role.as_slice() {
            b"data" => Some(Region::Records),
            b"hint" | b"snapshot" => Some(Region::Hints),
            _ => None,
        };
        if let Some(r) = region {
            for c in store.cluster_map(&blob) {
                if c != 0 {
                    let o = l.cluster_offset(c);
                    if let Some(u) = used(o..o + u64::from(l.cluster_size)) {
                        out.push((r, u));
                    }
                }
            }
        }
        store.block_on(store.close(blob)).unwrap();
    }
    out
}

fn base(seed: u64) -> Base {
    let mut rng = seed::rng(seed);
    let shards = rng.gen_range(1..=2);
    let mix = Mix {
        steps: 50,
        keys: 16,
        reopen: 0,
        sync: 0,
        ..Mix::default()
    };
    let mut steps = harness::generate(&mut rng, &mix);
    // A merge half way writes hint blobs; the close at the end writes keydir snapshots.
    steps.insert(25, Step::Merge);
    let universe = harness::universe(mix.keys);
    let dev = harness::device(harness::template(shards), seed);
    let db = harness::open(&dev, SyncPolicy::Always, shards).unwrap();
    let mut o = Oracle::new(shards);
    let run = harness::drive(db, &dev, &mut o, &steps, SyncPolicy::Always, &universe).unwrap();
    assert!(run.error.is_none(), "seed {seed:#x}: {:?}", run.error);
    let state = o.live().clone();
    run.db.unwrap().close().unwrap();
    let mut history: BTreeMap<Key, BTreeSet<Vec<u8>>> = BTreeMap::new();
    for s in &steps {
        let ops = match s {
            Step::Put(k, v) => vec![(k.clone(), v.clone())],
            Step::Batch(ops) => ops
                .iter()
                .filter_map(|op| match op {
                    oracle::Op::Put(k, v) => Some((k.clone(), v.clone())),
                    _ => None,
                })
                .collect(),
            _ => vec![],
        };
        for (k, v) in ops {
            history.entry(k).or_default().insert(v);
        }
    }
    let image = dev.durable_image();
    Base {
        regions: regions(&image),
        image,
        state,
        history,
        shards,
        universe,
    }
}

/// Damage a copy of the base image and check what the store does with it.
fn case(b: &Base, rng: &mut rand_chacha::ChaCha8Rng, ctx: &str) -> String {
    let region = [
        Region::Records,
        Region::Hints,
        Region::MdPages,
        Region::Masks,
    ][rng.gen_range(0..4)];
    let ranges: Vec<&Range<u64>> = b
        .regions
        .iter()
        .filter(|(r, _)| *r == region)
        .map(|(_, r)| r)
        .collect();
    if ranges.is_empty() {
        return format!("{region:?}: no such region");
    }
    let range = ranges[rng.gen_range(0..ranges.len())].clone();
    let dev = harness::device(b.image.clone(), rng.gen());
    let latent = rng.gen_ratio(1, 4);
    let what = if latent {
        let start = rng.gen_range(range.clone()) / 4096 * 4096;
        dev.add_bad_range(start..start + 4096);
        format!("latent sector error at {start} in {region:?}")
    } else {
        let n = rng.gen_range(1..=3);
        let flips = dev.flip_random_bits(range.clone(), n).unwrap();
        format!("bit flips {flips:?} in {region:?}")
    };
    let ctx = format!("{ctx}: {what}");
    let db = match harness::open(&dev, SyncPolicy::Always, b.shards) {
        Ok(db) => db,
        Err(e) => {
            // A refused open must be a clean, typed error; never for a rotten hint alone
            // (open falls back to scanning) unless the sector cannot be read at all.
            if region == Region::Hints && !latent {
                panic!("{ctx}: open failed instead of healing from a scan: {e}");
            }
            return format!("{region:?}: open refused (clean error)");
        }
    };
    let mut exact = true;
    for k in &b.universe {
        match db.get(k) {
            Ok(Some(v)) => {
                if b.state.get(k) != Some(&v) {
                    exact = false;
                    // Damaged records are reported, never read around: no older value.
                    if region == Region::Records {
                        panic!(
                            "{ctx}: get {} returned an older value after damage to records",
                            oracle::show(k)
                        );
                    }
                    if !b.history.get(k).is_some_and(|h| h.contains(&v)) {
                        panic!(
                            "{ctx}: get {} returned a value never written for it: {}",
                            oracle::show(k),
                            oracle::show(&v)
                        );
                    }
                }
            }
            Ok(None) => {
                let missing = b.state.contains_key(k);
                if missing && region == Region::Records {
                    panic!(
                        "{ctx}: get {} finds nothing after damage to records",
                        oracle::show(k)
                    );
                }
                exact &= !missing;
            }
            Err(Error::Corruption { .. } | Error::Device(_)) => exact = false,
            Err(e) => panic!(
                "{ctx}: get {} failed with an unexpected error: {e}",
                oracle::show(k)
            ),
        }
    }
    if region == Region::Hints && !latent && !exact {
        panic!("{ctx}: a rotten hint was not healed by a scan (reads differ from before)");
    }
    // The damaged store stays usable for writes (or refuses them cleanly).
    let _ = db.put(&b.universe[0], b"after-damage");
    let _ = db.close();
    if exact {
        format!("{region:?}: opened, reads exact")
    } else {
        format!("{region:?}: opened, damage reported or older values")
    }
}

#[test]
fn bit_flips_and_latent_errors() {
    let t0 = Instant::now();
    let bases = 10u64;
    let per = 100u64;
    let mut cases = 0;
    let mut outcomes: BTreeMap<String, u64> = BTreeMap::new();
    for i in 0..bases * seed::scale() {
        let s = seed::forced_seed().unwrap_or(seed::mix(0xB17, i));
        let b = base(s);
        let mut rng = seed::rng(seed::mix(s, 1));
        for j in 0..per {
            let ctx = format!("base seed {s:#x} case {j}");
            let r =
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| case(&b, &mut rng, &ctx)));
            if let Err(p) = r {
                eprintln!(
                    "\n*** bit_flips_and_latent_errors FAILED ({ctx}); replay with:\n    \
                     SEED={s:#x} cargo test -p blobcask-tests --test fault_bitflip\n"
                );
                std::panic::resume_unwind(p);
            }
            if let Ok(o) = r {
                *outcomes.entry(o).or_default() += 1;
            }
            cases += 1;
        }
        if seed::forced_seed().is_some() {
            break;
        }
    }
    seed::report("bit_flips_and_latent_errors", cases, t0);
    for (o, n) in &outcomes {
        eprintln!("  {n:4}  {o}");
    }
}

/// A store with data, cleanly closed, and a device holding it with `damage` applied.
fn precious(damage: &str) -> (std::sync::Arc<blobcask::device::SimDevice>, Vec<Key>) {
    let universe = harness::universe(4);
    let dev = harness::device(harness::template(1), 3);
    let db = harness::open(&dev, SyncPolicy::Always, 1).unwrap();
    for k in &universe {
        db.put(k, b"precious").unwrap();
    }
    db.close().unwrap();
    let dev = harness::device(dev.durable_image(), 4);
    match damage {
        "read" => dev.fail_next_read(false),
        _ => dev.flip_bit(3, 1).unwrap(),
    }
    (dev, universe)
}

/// `create: true` must never reformat an existing store: that silently drops every
/// acknowledged write. Whatever open does, the data must still be there (or open fails).
fn create_keeps(damage: &str) {
    let (dev, universe) = precious(damage);
    let mut o = harness::options(dev.clone(), SyncPolicy::Always, 1);
    o.create = true;
    if let Ok(db) = blobcask::Db::open(o) {
        for k in &universe {
            let got = db.get(k);
            assert!(
                matches!(&got, Ok(Some(v)) if v == b"precious"),
                "{damage}: open with create=true succeeded but {} reads {got:?}",
                oracle::show(k)
            );
        }
    }
    // And once the fault is gone, the store opens with its data.
    dev.clear_faults();
    if damage == "read" {
        let db = harness::open(&dev, SyncPolicy::Always, 1).unwrap();
        assert_eq!(
            db.get(&universe[0]).unwrap().as_deref(),
            Some(&b"precious"[..])
        );
    }
}

/// Was a data-loss bug (fixed in `Db::open`): a transient EIO on the probe read of the super
/// block made `create: true` format the device.
#[test]
fn create_never_formats_after_a_failed_probe_read() {
    create_keeps("read");
}

/// Was a data-loss bug (fixed in `Db::open`: only a new or zeroed device is formatted): a bit
/// flip in the super block signature made `create: true` format the device.
#[test]
fn create_never_formats_a_store_with_a_rotten_signature() {
    create_keeps("signature");
}
