//! Damaged allocation masks on a cleanly closed store: one bit of the used-md-page, used-cluster
//! or used-blob-id mask cleared for something live, or set for something free. A cleared bit
//! must never turn into silent loss: open either refuses with a `Corruption` naming the mask
//! (writing nothing) or serves every key and never allocates over live data; `check` names the
//! mask; `repair` brings every key back. A stray set bit is a leak: reported, harmless.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use blobcask::blobstore::native::layout::Layout;
use blobcask::blobstore::native::NativeBlobStore;
use blobcask::blobstore::{Blob as _, BlobStore as _, LoadOpts};
use blobcask::device::MemoryDevice;
use blobcask::{Db, DeviceSpec, Error, Options};
use sha2::{Digest, Sha256};

type Model = BTreeMap<Vec<u8>, Vec<u8>>;

const KEYS: usize = 200;
/// Bytes before the bits of a mask page: type (1) and length (4).
const MASK_HEADER: usize = 5;

use blobcask_tests::damage::key;

fn options(path: &Path) -> Options {
    blobcask_tests::damage::options(DeviceSpec::Path(path.to_path_buf()))
}

fn put_round(db: &Db, model: &mut Model, round: usize, n: usize) {
    for i in 0..n {
        if (i + round).is_multiple_of(5) && round > 0 {
            db.delete(&key(i)).unwrap();
            model.remove(&key(i));
        } else {
            let v = format!("v{round}-{i}-{}", "y".repeat(i % 500)).into_bytes();
            db.put(&key(i), &v).unwrap();
            model.insert(key(i), v);
        }
    }
}

/// A cleanly closed store with several data blobs, a merge output, hints and snapshots.
fn sample(dir: &Path) -> (Vec<u8>, Model) {
    let p = dir.join("sample.img");
    let mut o = options(&p);
    o.create = true;
    let db = Db::open(o).unwrap();
    let mut model = Model::new();
    for round in 0..3 {
        put_round(&db, &mut model, round, KEYS);
        if round == 1 {
            db.merge().unwrap();
        }
    }
    db.close().unwrap();
    (std::fs::read(&p).unwrap(), model)
}

/// What the store holds: layout, live blobs (id, role, device clusters), used md pages.
struct Map {
    layout: Layout,
    blobs: Vec<(u64, String, Vec<u32>)>,
    md_pages: Vec<u32>,
    clusters: Vec<u32>,
}

fn map(image: &[u8]) -> Map {
    let dev = MemoryDevice::from_bytes(image.to_vec(), 4096).unwrap();
    let s = pollster::block_on(NativeBlobStore::load(dev, LoadOpts::default())).unwrap();
    let mut blobs = Vec::new();
    for id in s.block_on(s.blob_ids()).unwrap() {
        let b = s.block_on(s.open(id)).unwrap();
        let role = s.block_on(s.get_xattr(&b, "bc.role")).unwrap();
        let role = String::from_utf8_lossy(&role.unwrap_or_default()).into_owned();
        blobs.push((b.id(), role, s.cluster_map(&b)));
        s.block_on(s.close(b)).unwrap();
    }
    Map {
        layout: s.layout().clone(),
        blobs,
        md_pages: s.used_md_pages(),
        clusters: s.used_clusters(),
    }
}

#[derive(Clone, Copy, Debug)]
enum Kind {
    MdPages,
    Clusters,
    BlobIds,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::MdPages => "used-md-page mask",
            Kind::Clusters => "used-cluster mask",
            Kind::BlobIds => "used-blob-id mask",
        }
    }
}

fn flip_bit(image: &[u8], l: &Layout, kind: Kind, i: u32) -> Vec<u8> {
    let start = match kind {
        Kind::MdPages => l.page_mask_start,
        Kind::Clusters => l.cluster_mask_start,
        Kind::BlobIds => l.blobid_mask_start,
    };
    let mut v = image.to_vec();
    v[l.page_offset(start) as usize + MASK_HEADER + i as usize / 8] ^= 1 << (i % 8);
    v
}

fn sha(p: &Path) -> Vec<u8> {
    Sha256::digest(std::fs::read(p).unwrap()).to_vec()
}

/// Every key reads as the model says and `keys` lists exactly the model's keys.
fn assert_serves(db: &Db, model: &Model, what: &str) {
    for i in 0..KEYS * 2 {
        let k = key(i);
        assert_eq!(
            db.get(&k).unwrap().as_ref(),
            model.get(&k),
            "{what}: key {i}"
        );
    }
    let mut keys = db.keys().unwrap();
    keys.sort();
    assert_eq!(keys, model.keys().cloned().collect::<Vec<_>>(), "{what}");
}

/// `check`'s problems for `image`.
fn check(image: &[u8]) -> Vec<String> {
    blobcask::fsck::check(|| Ok(MemoryDevice::from_bytes(image.to_vec(), 4096)?))
        .unwrap()
        .problems
}

/// `repair`'s salvage finds every key with its newest value.
fn assert_repair_brings_back(image: &[u8], model: &Model, what: &str) -> Vec<String> {
    let dev = MemoryDevice::from_bytes(image.to_vec(), 4096).unwrap();
    let rep = blobcask::fsck::salvage(dev).unwrap();
    assert_eq!(&rep.live, model, "{what}: repair salvages every key");
    assert!(rep.lost.is_empty() && rep.suspect.is_empty(), "{what}");
    rep.restored
}

fn cli() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let p = exe.parent()?.parent()?.join("blobcask");
    p.exists().then_some(p)
}

/// The store must refuse to open (both ways) with a `Corruption` naming the mask bit,
/// writing nothing; `check` (library and CLI) names it too; `repair` brings every key back.
fn assert_refused(dir: &Path, image: &[u8], model: &Model, kind: Kind, i: u32, what: &str) {
    let img = dir.join("case.img");
    std::fs::write(&img, image).unwrap();
    let before = sha(&img);
    let want = format!("{} bit {i} is clear", kind.name());
    for ro in [true, false] {
        let res = if ro {
            Db::open_read_only(options(&img))
        } else {
            Db::open(options(&img))
        };
        match res {
            Err(Error::Corruption { detail, .. }) => {
                assert!(detail.contains(&want), "{what}: {detail}")
            }
            Err(e) => panic!("{what}: open failed with {e}, not a Corruption naming the mask"),
            Ok(db) => {
                let _ = db.close();
                panic!("{what}: opened (read-only: {ro}) over a damaged mask");
            }
        }
        assert_eq!(
            sha(&img),
            before,
            "{what}: a failed open wrote to the device"
        );
    }
    let problems = check(image);
    assert!(
        problems.iter().any(|p| p.contains(&want)),
        "{what}: check says {problems:?}"
    );
    if let Some(bin) = cli() {
        let s = img.to_str().unwrap();
        let k = String::from_utf8(model.keys().next().unwrap().clone()).unwrap();
        let get = Command::new(&bin).args(["get", s, &k]).output().unwrap();
        assert_eq!(get.status.code(), Some(2), "{what}: get of a live key");
        let chk = Command::new(&bin).args(["check", s]).output().unwrap();
        assert_eq!(chk.status.code(), Some(1), "{what}: check exit");
        assert!(
            String::from_utf8_lossy(&chk.stdout).contains(&want),
            "{what}"
        );
        assert_eq!(sha(&img), before, "{what}: read-only commands wrote");
    }
    let restored = assert_repair_brings_back(image, model, what);
    if let Kind::BlobIds = kind {
        let said = format!("hidden by a clear used-blob-id mask bit {i}");
        assert!(
            restored.iter().any(|r| r.contains(&said)),
            "{what}: {restored:?}"
        );
    }
}

/// The store opens, serves the model, and writing (new blobs, a merge) never lands on live
/// data: after a clean close and a reopen every old and new key reads back; `check` passes
/// (but for a leak the masks keep: a stray bit on a page or cluster nothing uses).
fn assert_opens_and_allocates_safely(dir: &Path, image: &[u8], model: &Model, what: &str) {
    let img = dir.join("case.img");
    std::fs::write(&img, image).unwrap();
    let db = Db::open(options(&img)).unwrap_or_else(|e| panic!("{what}: {e}"));
    assert_serves(&db, model, what);
    let mut model = model.clone();
    for round in 3..6 {
        for i in KEYS..KEYS * 2 {
            let v = format!("n{round}-{i}-{}", "z".repeat(i % 700)).into_bytes();
            db.put(&key(i), &v).unwrap();
            model.insert(key(i), v);
        }
        db.merge().unwrap();
    }
    db.close().unwrap();
    let db = Db::open_read_only(options(&img)).unwrap();
    assert_serves(&db, &model, what);
    db.close().unwrap();
    let after = std::fs::read(&img).unwrap();
    let left = check(&after);
    assert!(
        left.iter().all(|p| p.contains("(leak)")),
        "{what}: {left:?}"
    );
}

#[test]
fn a_cleared_blob_id_bit_of_a_live_blob_refuses_open_and_repair_brings_every_key_back() {
    let dir = tempfile::tempdir().unwrap();
    let (image, model) = sample(dir.path());
    let m = map(&image);
    let mut cases = 0;
    for (id, role, _) in &m.blobs {
        if !["data", "hint", "snapshot"].contains(&role.as_str()) {
            continue;
        }
        let i = (*id & 0xFFFF_FFFF) as u32;
        let what = format!("blob-id bit {i} ({role} blob {id:#x})");
        let damaged = flip_bit(&image, &m.layout, Kind::BlobIds, i);
        assert_refused(dir.path(), &damaged, &model, Kind::BlobIds, i, &what);
        cases += 1;
    }
    assert!(cases >= 4, "the sample has data, hint and snapshot blobs");
    eprintln!("cleared blob-id bits: {cases} cases, all refused and repaired");
}

#[test]
fn a_cleared_cluster_bit_of_a_live_blob_refuses_open_and_repair_brings_every_key_back() {
    let dir = tempfile::tempdir().unwrap();
    let (image, model) = sample(dir.path());
    let m = map(&image);
    let mut cases = 0;
    for (id, role, clusters) in &m.blobs {
        // The first and last cluster of every blob that has any.
        let picks: Vec<u32> = clusters.iter().copied().filter(|&c| c != 0).collect();
        for c in [picks.first(), picks.last()].into_iter().flatten() {
            let what = format!("cluster bit {c} ({role} blob {id:#x})");
            let damaged = flip_bit(&image, &m.layout, Kind::Clusters, *c);
            assert_refused(dir.path(), &damaged, &model, Kind::Clusters, *c, &what);
            cases += 1;
        }
    }
    assert!(cases >= 6);
    eprintln!("cleared cluster bits: {cases} cases, all refused and repaired");
}

#[test]
fn a_cleared_md_page_bit_is_refused_or_rebuilt_and_never_reused() {
    let dir = tempfile::tempdir().unwrap();
    let (image, model) = sample(dir.path());
    let m = map(&image);
    let (mut refused, mut rebuilt) = (0, 0);
    for &p in &m.md_pages {
        let what = format!("md-page bit {p}");
        let damaged = flip_bit(&image, &m.layout, Kind::MdPages, p);
        let problems = check(&damaged);
        assert!(
            problems
                .iter()
                .any(|x| x.contains("used-md-page mask bits clear")),
            "{what}: check says {problems:?}"
        );
        let img = dir.path().join("case.img");
        std::fs::write(&img, &damaged).unwrap();
        match Db::open_read_only(options(&img)) {
            Ok(db) => {
                // A root page the mask calls free: the load rebuilt the masks in memory.
                db.close().unwrap();
                assert_opens_and_allocates_safely(dir.path(), &damaged, &model, &what);
                rebuilt += 1;
            }
            Err(_) => {
                assert_refused(dir.path(), &damaged, &model, Kind::MdPages, p, &what);
                refused += 1;
            }
        }
    }
    assert!(refused + rebuilt == m.md_pages.len() && rebuilt > 0);
    eprintln!("cleared md-page bits: {refused} refused, {rebuilt} rebuilt in memory");
}

#[test]
fn a_stray_set_bit_in_any_mask_is_a_reported_leak_that_breaks_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (image, model) = sample(dir.path());
    let m = map(&image);
    let free_md = (0..m.layout.md_len)
        .find(|i| !m.md_pages.contains(i))
        .unwrap();
    let free_cluster = (0..m.layout.total_clusters)
        .rev()
        .find(|c| !m.clusters.contains(c))
        .unwrap();
    // (A blob-id bit on a chain page of another blob: `native::tests`.)
    let cases = vec![
        (Kind::BlobIds, free_md, "used-blob-id mask bit"),
        (Kind::MdPages, free_md, "used-md-page mask marks"),
        (Kind::Clusters, free_cluster, "used-cluster mask marks"),
    ];
    for (kind, i, want) in cases {
        let what = format!("stray {} bit {i}", kind.name());
        let damaged = flip_bit(&image, &m.layout, kind, i);
        let problems = check(&damaged);
        assert!(
            problems.iter().any(|x| x.contains(want)),
            "{what}: check says {problems:?}"
        );
        assert_opens_and_allocates_safely(dir.path(), &damaged, &model, &what);
    }
}
