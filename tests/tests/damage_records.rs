//! Damage to data records: 1, 10 and 100 bytes flipped in records at many offsets (newest
//! versions of keys and tombstones included), on a store closed cleanly (keydir snapshots and
//! merge hints intact), the same with every hint and snapshot destroyed, and a crashed store
//! whose hints are destroyed too (recovery then rests on the records' durable claims alone).
//!
//! For every case, under the default recovery mode:
//! - no panic, no hang; open either succeeds or fails with a typed damage error;
//! - **no silent wrong value**: every `get` returns the key's newest acknowledged value (the
//!   oracle's) or an error; never an older value, never a deleted key;
//! - **no silent omission**: a live key missing from `keys()` is an error case;
//! - `check` reports a problem whenever open refused or a read failed;
//! - `repair`'s salvage is exact for every key it does not list as lost or suspect.
//!
//! The one thing the engine cannot tell from a torn write is damage to the last records of a
//! crashed store's log that no later record vouches for (nothing durable says they were
//! flushed): those cases may lose exactly the keys written there, and are counted apart.
//!
//! `BLOBCASK_DAMAGE_CASES` sets the targets per (store, flip size) (default 16).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Instant;

use blobcask::blobstore::native::NativeBlobStore;
use blobcask::blobstore::{BlobStore, LoadOpts};
use blobcask::device::SimDevice;
use blobcask::record::Kind;
use blobcask::scan::{self, Evidence};
use blobcask::{Db, Error, RecoveryMode, SyncPolicy};
use blobcask_tests::harness;
use blobcask_tests::seed;
use rand::seq::SliceRandom;
use rand::Rng;

const SHARDS: usize = 2;
const KEYS: usize = 48;

type Model = BTreeMap<Vec<u8>, Option<Vec<u8>>>;

/// One record found in a base image.
#[derive(Debug, Clone)]
struct Rec {
    /// Device byte offset of the record.
    dev: u64,
    len: u64,
    /// Blob id and offset in the blob.
    blob: u64,
    offset: u64,
    kind: Kind,
    key: Vec<u8>,
    seq: u64,
    /// Nothing durable vouches for this record (see the module doc).
    unproven: bool,
}

struct Base {
    name: &'static str,
    image: Vec<u8>,
    records: Vec<Rec>,
}

fn key(i: usize) -> Vec<u8> {
    format!("key{i:03}").into_bytes()
}

/// Puts, overwrites and deletes in rounds, a merge half way (hints), every write synced.
fn workload(db: &Db, rng: &mut rand_chacha::ChaCha8Rng, model: &mut Model, rounds: usize) {
    for round in 0..rounds {
        for i in 0..KEYS {
            let k = key(i);
            if round > 0 && rng.gen_ratio(1, 4) {
                db.delete(&k).expect("delete");
                model.insert(k, None);
            } else if round == 0 || rng.gen_ratio(2, 3) {
                let n = rng.gen_range(8..1500);
                let v: Vec<u8> = (0..n).map(|j| (i + j + round) as u8).collect();
                db.put(&k, &v).expect("put");
                model.insert(k, Some(v));
            }
        }
        if round == 1 {
            db.merge().expect("merge");
        }
    }
}

/// Every record of every data blob of `image`, located on the device.
fn records(image: &[u8], model: &Model) -> Vec<Rec> {
    let dev = Arc::new(SimDevice::from_image(image.to_vec(), harness::BLOCK, 0).unwrap());
    let store = pollster::block_on(NativeBlobStore::load(
        dev,
        LoadOpts {
            force_recover: true,
            ..LoadOpts::default()
        },
    ))
    .unwrap();
    let l = store.layout().clone();
    let cs = u64::from(l.cluster_size);
    let mut out = Vec::new();
    for id in store.block_on(store.blob_ids()).unwrap() {
        let blob = store.block_on(store.open(id)).unwrap();
        let x = |n: &str| store.block_on(store.get_xattr(&blob, n)).unwrap();
        if x("bc.role").as_deref() != Some(b"data") {
            store.block_on(store.close(blob)).unwrap();
            continue;
        }
        let salt = u64::from_le_bytes(x("bc.salt").unwrap().try_into().unwrap());
        let vouched = x("bc.len").is_some() || x("bc.merge").as_deref() == Some(b"done");
        let map = store.cluster_map(&blob);
        let mut bytes = Vec::new();
        for &c in &map {
            let o = l.cluster_offset(c) as usize;
            bytes.extend_from_slice(&image[o..o + cs as usize]);
        }
        let mut found = Vec::new();
        let mut src = scan::Source::from_bytes(&bytes);
        let s = scan::scan_log(
            &mut src,
            salt,
            Evidence::default(),
            RecoveryMode::TolerateTornTail,
            |off, r| {
                found.push((
                    off,
                    r.header.record_len() as u64,
                    r.header.kind(),
                    r.key.to_vec(),
                    r.header.seq,
                ));
            },
        )
        .unwrap();
        for (off, len, kind, k, seq) in found {
            if kind == Kind::Commit || !model.contains_key(&k) {
                continue;
            }
            let c = map[(off / cs) as usize];
            out.push(Rec {
                dev: l.cluster_offset(c) + off % cs,
                len,
                blob: id,
                offset: off,
                kind,
                key: k,
                seq,
                unproven: !vouched && off >= s.proven,
            });
        }
        store.block_on(store.close(blob)).unwrap();
    }
    out
}

/// Zero the first page of every hint and snapshot blob: they fail their crcs.
fn destroy_hints(image: &mut [u8]) {
    let dev = Arc::new(SimDevice::from_image(image.to_vec(), harness::BLOCK, 0).unwrap());
    let store = pollster::block_on(NativeBlobStore::load(dev, LoadOpts::default())).unwrap();
    let l = store.layout().clone();
    for id in store.block_on(store.blob_ids()).unwrap() {
        let blob = store.block_on(store.open(id)).unwrap();
        let role = store.block_on(store.get_xattr(&blob, "bc.role")).unwrap();
        if matches!(role.as_deref(), Some(b"hint" | b"snapshot")) {
            for c in store.cluster_map(&blob).into_iter().filter(|&c| c != 0) {
                let o = l.cluster_offset(c) as usize;
                image[o..o + 4096].fill(0);
            }
        }
        store.block_on(store.close(blob)).unwrap();
    }
}

fn bases(seed: u64) -> (Vec<Base>, Model) {
    let mut rng = seed::rng(seed);
    let dev = harness::device(harness::template(SHARDS), seed);
    let db = harness::open(&dev, SyncPolicy::Always, SHARDS).unwrap();
    let mut model = Model::new();
    workload(&db, &mut rng, &mut model, 4);
    // Crashed: what is durable while the store is still open.
    let mut crashed = dev.durable_image();
    destroy_hints(&mut crashed);
    db.close().unwrap();
    let closed = dev.durable_image();
    let mut hintless = closed.clone();
    destroy_hints(&mut hintless);
    let mk = |name, image: Vec<u8>| Base {
        name,
        records: records(&image, &model),
        image,
    };
    let out = vec![
        mk("closed, hints intact", closed),
        mk("closed, hints destroyed", hintless),
        mk("crashed, hints destroyed", crashed),
    ];
    (out, model)
}

#[derive(Default, Debug)]
struct Counts {
    cases: u64,
    open_refused: u64,
    read_errors: u64,
    exact: u64,
    wrong_values: u64,
    torn_tail_cases: u64,
    merges_refused: u64,
    repair_lost: u64,
    repair_suspect: u64,
}

/// Targets: newest puts, tombstones, older records, in turn.
fn targets(b: &Base, model: &Model, n: usize, rng: &mut rand_chacha::ChaCha8Rng) -> Vec<Rec> {
    let mut newest: BTreeMap<&[u8], u64> = BTreeMap::new();
    for r in &b.records {
        let e = newest.entry(&r.key).or_default();
        *e = (*e).max(r.seq);
    }
    let is_newest = |r: &Rec| newest.get(r.key.as_slice()) == Some(&r.seq);
    let mut groups: Vec<Vec<&Rec>> = vec![
        b.records
            .iter()
            .filter(|r| is_newest(r) && r.kind == Kind::Put && model[&r.key].is_some())
            .collect(),
        b.records
            .iter()
            .filter(|r| r.kind == Kind::Delete)
            .collect(),
        b.records.iter().filter(|r| !is_newest(r)).collect(),
    ];
    for g in &mut groups {
        g.shuffle(rng);
    }
    let mut out = Vec::new();
    let mut i = 0;
    while out.len() < n && groups.iter().any(|g| !g.is_empty()) {
        if let Some(r) = groups[i % 3].pop() {
            out.push(r.clone());
        }
        i += 1;
    }
    out
}

/// Flip `n` bytes in and just after `r` (non-zero xor, distinct positions); returns the image
/// and the device offsets flipped.
fn damage(
    image: &[u8],
    r: &Rec,
    n: usize,
    rng: &mut rand_chacha::ChaCha8Rng,
) -> (Vec<u8>, Vec<u64>) {
    let mut img = image.to_vec();
    let span = r.len.max(n as u64);
    let mut at: Vec<u64> = (0..span).map(|o| r.dev + o).collect();
    at.shuffle(rng);
    at.truncate(n);
    for &o in &at {
        img[o as usize] ^= rng.gen_range(1..=255u8);
    }
    (img, at)
}

/// Keys no tool can name after `flipped`: every record of theirs has its header or key hit.
fn unnameable(b: &Base, flipped: &[u64]) -> BTreeSet<Vec<u8>> {
    let hit = |x: &Rec| {
        let name = blobcask::record::HEADER_LEN as u64 + 8 + x.key.len() as u64;
        flipped.iter().any(|&o| o >= x.dev && o < x.dev + name)
    };
    let keys: BTreeSet<&Vec<u8>> = b
        .records
        .iter()
        .filter(|x| hit(x))
        .map(|x| &x.key)
        .collect();
    keys.into_iter()
        .filter(|k| b.records.iter().filter(|x| &x.key == *k).all(hit))
        .cloned()
        .collect()
}

fn one_case(b: &Base, model: &Model, r: &Rec, dmg: (Vec<u8>, Vec<u64>), ctx: &str, c: &mut Counts) {
    let (img, flipped) = dmg;
    c.cases += 1;
    // Keys whose every record lost its name: the report's damaged range is all there is.
    let unnameable = unnameable(b, &flipped);
    // Keys a torn-tail reading may legitimately lose: records at or after the damage in an
    // unproven tail of the same blob.
    let tolerated: BTreeSet<&[u8]> = if r.unproven {
        c.torn_tail_cases += 1;
        b.records
            .iter()
            .filter(|x| x.blob == r.blob && x.offset >= r.offset)
            .map(|x| x.key.as_slice())
            .collect()
    } else {
        BTreeSet::new()
    };
    let dev = harness::device(img.clone(), 7);
    let mut failed = false;
    match harness::open(&dev, SyncPolicy::Always, SHARDS) {
        Err(e @ (Error::DamagedLog { .. } | Error::Corruption { .. })) => {
            c.open_refused += 1;
            failed = true;
            if let Error::DamagedLog { offset, len, .. } = e {
                assert!(
                    offset <= r.offset + r.len.max(100) && offset + len >= r.offset,
                    "{ctx}: open names {offset}+{len}, the damage is at {}",
                    r.offset
                );
            }
        }
        Err(e) => panic!("{ctx}: open failed with an untyped damage error: {e}"),
        Ok(db) => {
            let listed: BTreeSet<Vec<u8>> = db.keys().unwrap_or_default().into_iter().collect();
            for (k, want) in model {
                match db.get(k) {
                    Ok(got) if &got == want => c.exact += 1,
                    Ok(_) if tolerated.contains(k.as_slice()) => {}
                    Ok(got) => {
                        c.wrong_values += 1;
                        panic!(
                            "{ctx}: get {} returned {:?} bytes, the newest is {:?} bytes",
                            String::from_utf8_lossy(k),
                            got.map(|v| v.len()),
                            want.as_ref().map(Vec::len)
                        );
                    }
                    Err(Error::Corruption { .. }) => {
                        c.read_errors += 1;
                        failed = true;
                    }
                    Err(e) => panic!("{ctx}: get failed with an unexpected error: {e}"),
                }
                if want.is_some() && !listed.contains(k) && !tolerated.contains(k.as_slice()) {
                    panic!(
                        "{ctx}: keys() silently omits live key {}",
                        String::from_utf8_lossy(k)
                    );
                }
            }
            // A merge over the damaged blob must not drop what lies behind the damage: it
            // fails (or has nothing to do), and every read stays exact or an error.
            if db.merge().is_err() {
                c.merges_refused += 1;
            }
            for (k, want) in model {
                match db.get(k) {
                    Ok(got) if &got == want || tolerated.contains(k.as_slice()) => {}
                    Ok(_) => panic!(
                        "{ctx}: after a merge, get {} returns a wrong value",
                        String::from_utf8_lossy(k)
                    ),
                    Err(_) => {}
                }
            }
            drop(db);
        }
    }
    let check = blobcask::fsck::check(|| Ok(harness::device(img.clone(), 1)))
        .unwrap_or_else(|e| panic!("{ctx}: check failed to run: {e}"));
    if failed {
        assert!(
            !check.is_clean(),
            "{ctx}: open or a read failed but check says clean"
        );
    }
    let rep = blobcask::fsck::salvage(harness::device(img, 2))
        .unwrap_or_else(|e| panic!("{ctx}: salvage failed: {e}"));
    c.repair_lost += rep.lost.len() as u64;
    c.repair_suspect += rep.suspect.len() as u64;
    // With its keydir snapshots intact, repair is as exact as open: each key has its newest
    // value or is reported lost; nothing is merely suspect.
    if b.name == "closed, hints intact" {
        for (k, want) in model {
            assert!(
                rep.lost.contains(k) || rep.live.get(k) == want.as_ref(),
                "{ctx}: with intact snapshots repair gets {} wrong",
                String::from_utf8_lossy(k)
            );
        }
    }
    for (k, want) in model {
        let flagged = rep.lost.contains(k) || rep.suspect.contains(k);
        if flagged || tolerated.contains(k.as_slice()) || unnameable.contains(k) {
            continue;
        }
        assert!(
            rep.live.get(k) == want.as_ref(),
            "{ctx}: repair restores {} wrongly ({:?} bytes, the newest is {:?}) and does not \
             report it; report: {}",
            String::from_utf8_lossy(k),
            rep.live.get(k).map(Vec::len),
            want.as_ref().map(Vec::len),
            blobcask::salvage::report_json(&rep)
        );
    }
}

#[test]
fn damaged_records_never_serve_a_wrong_value() {
    let t0 = Instant::now();
    let per: usize = std::env::var("BLOBCASK_DAMAGE_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(16);
    let seed = seed::forced_seed().unwrap_or(0xda3a6e);
    let (bases, model) = bases(seed);
    let mut c = Counts::default();
    let mut rng = seed::rng(seed ^ 1);
    for b in &bases {
        assert!(!b.records.is_empty(), "{}: no records found", b.name);
        for n in [1usize, 10, 100] {
            for r in targets(b, &model, per, &mut rng) {
                let img = damage(&b.image, &r, n, &mut rng);
                let ctx = format!(
                    "SEED={seed:#x} {} / {n} bytes at blob {:#x} offset {} ({:?} of {}, seq {})",
                    b.name,
                    r.blob,
                    r.offset,
                    r.kind,
                    String::from_utf8_lossy(&r.key),
                    r.seq
                );
                one_case(b, &model, &r, img, &ctx, &mut c);
            }
        }
    }
    println!(
        "damage_records: {} cases, open refused {}, read errors {}, exact reads {}, wrong \
         values {}, torn-tail cases {}, merges refused {}, repair: {} keys lost, {} suspect \
         ({:.1?})",
        c.cases,
        c.open_refused,
        c.read_errors,
        c.exact,
        c.wrong_values,
        c.torn_tail_cases,
        c.merges_refused,
        c.repair_lost,
        c.repair_suspect,
        t0.elapsed()
    );
    assert_eq!(c.wrong_values, 0);
    assert!(
        c.open_refused + c.read_errors > 0,
        "no case detected anything"
    );
}

/// Salvage mode keeps every valid record after the damage and reports the range it skipped.
#[test]
fn salvage_mode_keeps_what_follows_the_damage() {
    let (bases, model) = bases(0x5a1);
    let b = &bases[1];
    // The mid-log record with the most newest versions of other keys behind it.
    let newest_after = |r: &Rec| {
        b.records
            .iter()
            .filter(|x| x.blob == r.blob && x.offset > r.offset && x.key != r.key)
            .filter(|x| b.records.iter().all(|y| y.key != x.key || y.seq <= x.seq))
            .count()
    };
    let r = b
        .records
        .iter()
        .filter(|r| !r.unproven)
        .max_by_key(|r| newest_after(r))
        .expect("a record in mid-log")
        .clone();
    let mut rng = seed::rng(3);
    let (img, _) = damage(&b.image, &r, 1, &mut rng);
    let dev = harness::device(img.clone(), 1);
    match harness::open(&dev, SyncPolicy::Always, SHARDS) {
        Err(Error::DamagedLog { .. }) => {}
        other => panic!(
            "the default mode opened a damaged log: {:?}",
            other.map(|_| ())
        ),
    }
    let dev = harness::device(img, 1);
    let mut o = harness::options(dev, SyncPolicy::Always, SHARDS);
    o.recovery = RecoveryMode::Salvage;
    let db = Db::open(o).expect("salvage opens");
    let damage = db.damage().unwrap();
    assert_eq!(damage.len(), 1, "{damage:?}");
    assert_eq!(damage[0].blob, r.blob);
    // Every record after the damage in that blob is kept: keys written only there are read.
    let after: Vec<&Rec> = b
        .records
        .iter()
        .filter(|x| x.blob == r.blob && x.offset > r.offset)
        .collect();
    let mut newest_after = 0;
    for x in &after {
        let newest = b
            .records
            .iter()
            .filter(|y| y.key == x.key)
            .all(|y| y.seq <= x.seq);
        if newest && x.key != r.key {
            newest_after += 1;
            assert_eq!(
                db.get(&x.key).unwrap(),
                model[&x.key],
                "salvage lost a record behind the damage"
            );
        }
    }
    assert!(
        newest_after > 0,
        "no newest record after the damage to check"
    );
    db.close().unwrap();
}

/// Crash-normal states are not damage: after a crash with unflushed writes in flight (torn
/// multi-page writes, any subset landed), `check` reports no problem and open succeeds in the
/// default mode.
#[test]
fn crash_images_are_not_reported_as_damage() {
    let mut rng = seed::rng(0xc7a5);
    let mut torn = 0;
    for round in 0..6u64 {
        let dev = harness::device(harness::template(SHARDS), round);
        let db = harness::open(&dev, SyncPolicy::Never, SHARDS).unwrap();
        let mut model = Model::new();
        workload(&db, &mut rng, &mut model, 2);
        db.sync().unwrap();
        // Writes in flight at the crash: part of them may land, torn.
        for i in 0..KEYS {
            let v = vec![round as u8; rng.gen_range(10..3000)];
            db.put(&key(i), &v).unwrap();
        }
        // The shard writes its write-behind buffer out (unflushed) after 2 ms idle.
        std::thread::sleep(std::time::Duration::from_millis(30));
        let img = dev.crash_image_with_seed(round * 7 + 1);
        drop(db);
        let rep = blobcask::fsck::check(|| Ok(harness::device(img.clone(), 1))).unwrap();
        torn += rep.notes.iter().filter(|n| n.contains("torn tail")).count();
        assert!(
            rep.is_clean(),
            "round {round}: a crash image is reported as damaged: {:?}",
            rep.problems
        );
        let dev = harness::device(img, 3);
        let db = harness::open(&dev, SyncPolicy::Always, SHARDS).unwrap_or_else(|e| {
            panic!("round {round}: the default mode refuses a crash image: {e}")
        });
        drop(db);
    }
    println!("crash images: 6 checked clean, {torn} torn tails noted");
}
