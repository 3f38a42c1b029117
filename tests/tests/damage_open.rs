//! Damage × every way of opening a store: a sample store's metadata pages, super block, mask
//! pages and a few records are damaged one at a time, and the store is opened read-write,
//! read-only and through the read-only CLI commands. Each attempt must give a typed error or
//! exactly the oracle's data (never a wrong value or a missing key), and a failed open or a
//! read-only command must leave the image byte-identical.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use blobcask::blobstore::native::NativeBlobStore;
use blobcask::blobstore::LoadOpts;
use blobcask::device::{FileDevice, FileOptions, SimDevice};
use blobcask::{Db, DeviceSpec, Error};
use sha2::{Digest, Sha256};

type Model = BTreeMap<Vec<u8>, Vec<u8>>;

const KEYS: usize = 240;

use blobcask_tests::damage::{key, options};

/// Writes, overwrites, deletes, a merge and more writes; returns what the store must hold.
fn fill(db: &Db) -> Model {
    let mut model = Model::new();
    for round in 0..3 {
        for i in 0..KEYS {
            if (i + round) % 7 == 0 && round > 0 {
                db.delete(&key(i)).unwrap();
                model.remove(&key(i));
            } else if i % (round + 1) == 0 {
                let v = format!("value-{round}-{i}-{}", "x".repeat(i % 300)).into_bytes();
                db.put(&key(i), &v).unwrap();
                model.insert(key(i), v);
            }
        }
        if round == 1 {
            db.merge().unwrap();
        }
    }
    db.sync().unwrap();
    model
}

/// A cleanly closed sample store image and its model.
fn sample(dir: &Path) -> (Vec<u8>, Model) {
    let p = dir.join("sample.img");
    let mut o = options(DeviceSpec::Path(p.clone()));
    o.create = true;
    let db = Db::open(o).unwrap();
    let model = fill(&db);
    db.close().unwrap();
    (std::fs::read(&p).unwrap(), model)
}

fn sha(p: &Path) -> Vec<u8> {
    Sha256::digest(std::fs::read(p).unwrap()).to_vec()
}

/// Geometry and used md pages of an image.
fn layout_of(p: &Path) -> (blobcask::blobstore::native::layout::Layout, Vec<u32>) {
    let dev = FileDevice::open_with(
        p,
        &FileOptions {
            read_only: true,
            ..FileOptions::default()
        },
    )
    .unwrap();
    let bs = pollster::block_on(NativeBlobStore::load(dev, LoadOpts::default())).unwrap();
    (bs.layout().clone(), bs.used_md_pages())
}

#[derive(Default, Debug)]
struct Counts {
    cases: usize,
    attempts: usize,
    errors: usize,
    served: usize,
    wrong: usize,
    changed: usize,
}

/// Compare everything a store serves with the model: each read is the newest value or an error.
fn verify_db(db: &Db, model: &Model, c: &mut Counts, what: &str) {
    for i in 0..KEYS {
        let k = key(i);
        match db.get(&k) {
            Ok(got) => {
                c.served += 1;
                if got.as_ref() != model.get(&k) {
                    c.wrong += 1;
                    eprintln!("{what}: {} wrong: {:?}", i, got.map(|v| v.len()));
                }
            }
            Err(_) => c.errors += 1,
        }
    }
    match db.keys() {
        Ok(mut keys) => {
            keys.sort();
            let want: Vec<Vec<u8>> = model.keys().cloned().collect();
            if keys != want {
                c.wrong += 1;
                eprintln!("{what}: keys differ ({} vs {})", keys.len(), want.len());
            }
        }
        Err(_) => c.errors += 1,
    }
}

fn cli() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let p = exe.parent()?.parent()?.join("blobcask");
    p.exists().then_some(p)
}

/// Run the read-only CLI commands; each must leave the image unchanged and print only truth.
fn verify_cli(bin: &Path, img: &Path, model: &Model, c: &mut Counts, what: &str) {
    let s = img.to_str().unwrap();
    let before = sha(img);
    let mut run = |args: &[&str]| {
        let o = Command::new(bin).args(args).output().unwrap();
        c.attempts += 1;
        if sha(img) != before {
            c.changed += 1;
            eprintln!("{what}: `blobcask {args:?}` changed the image");
        }
        o
    };
    for i in [0usize, 1, 7, 14, 100, 239] {
        let k = key(i);
        let o = run(&["get", s, std::str::from_utf8(&k).unwrap()]);
        match (o.status.code(), model.get(&k)) {
            (Some(0), Some(v)) if o.stdout == [v.as_slice(), b"\n"].concat() => c.served += 1,
            (Some(1), None) => c.served += 1,
            (Some(2), _) => c.errors += 1,
            (code, _) => {
                c.wrong += 1;
                eprintln!("{what}: get {i} exit {code:?}");
            }
        }
    }
    let o = run(&["keys", s]);
    if o.status.success() {
        let want: String = model
            .keys()
            .map(|k| format!("{}\n", String::from_utf8_lossy(k)))
            .collect();
        if o.stdout != want.as_bytes() {
            c.wrong += 1;
            eprintln!("{what}: keys differ");
        }
    } else {
        c.errors += 1;
    }
    let o = run(&["dump", s]);
    if o.status.success() {
        let n = String::from_utf8_lossy(&o.stdout).lines().count();
        if n != model.len() {
            c.wrong += 1;
            eprintln!("{what}: dump has {n} lines, want {}", model.len());
        }
    } else {
        c.errors += 1;
    }
    for args in [
        vec!["stats", s],
        vec!["check", s],
        vec!["blobs", s],
        vec!["blob", s, "0x100000000"],
    ] {
        let o = run(&args);
        assert!(
            o.status.code().is_some(),
            "{what}: `blobcask {args:?}` died by a signal"
        );
    }
}

/// Open `image` every way; `name` describes the damage.
fn try_all_paths(dir: &Path, image: &[u8], model: &Model, c: &mut Counts, name: &str) {
    c.cases += 1;
    let img = dir.join("case.img");
    std::fs::write(&img, image).unwrap();
    let before = sha(&img);

    // Read-only open: never writes, success or not.
    c.attempts += 1;
    match Db::open_read_only(options(DeviceSpec::Path(img.clone()))) {
        Ok(db) => {
            verify_db(&db, model, c, name);
            let ro = |r: Result<(), Error>| matches!(r, Err(Error::ReadOnly(_)));
            let mut batch = blobcask::WriteBatch::new();
            batch.put(b"k", b"v");
            assert!(ro(db.put(b"k", b"v")) && ro(db.delete(&key(0))));
            assert!(ro(db.write_batch(batch)) && ro(db.sync()) && ro(db.merge()));
            db.close().unwrap();
        }
        Err(_) => c.errors += 1,
    }
    if sha(&img) != before {
        c.changed += 1;
        eprintln!("{name}: read-only open changed the image");
    }

    if let Some(bin) = cli() {
        verify_cli(&bin, &img, model, c, name);
    }

    // Read-write open: a failure leaves the image as it was.
    c.attempts += 1;
    match Db::open(options(DeviceSpec::Path(img.clone()))) {
        Ok(db) => {
            verify_db(&db, model, c, name);
            let _ = db.close();
        }
        Err(e) => {
            c.errors += 1;
            if sha(&img) != before {
                c.changed += 1;
                eprintln!("{name}: failed open ({e}) changed the image");
            }
        }
    }
}

fn flip(image: &[u8], off: u64, n: usize) -> Vec<u8> {
    let mut v = image.to_vec();
    for i in 0..n {
        v[off as usize + i * 13] ^= 0x5A;
    }
    v
}

#[test]
fn damaged_images_open_with_an_error_or_the_truth_and_failed_opens_write_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (image, model) = sample(dir.path());
    let base = dir.path().join("sample.img");
    let (l, md_pages) = layout_of(&base);
    if cli().is_none() {
        eprintln!("skipped the CLI paths: the blobcask binary is not built next to this test");
    }
    let mut c = Counts::default();
    try_all_paths(dir.path(), &image, &model, &mut c, "intact");
    assert_eq!(c.errors, 0, "an intact store opens every way");

    let mut cases: Vec<(String, u64)> = Vec::new();
    for &p in &md_pages {
        cases.push((format!("md page {p}"), l.md_offset(p) + 40));
    }
    cases.push(("super block".into(), 24));
    for (name, page) in [
        ("md-page mask", l.page_mask_start),
        ("cluster mask", l.cluster_mask_start),
        ("blob-id mask", l.blobid_mask_start),
    ] {
        cases.push((name.into(), l.page_offset(page) + 8));
    }
    let data0 = l.cluster_offset(l.num_md_clusters);
    for k in 0..6u64 {
        cases.push((format!("data byte {k}"), data0 + k * 40_961 + 100));
    }
    for (name, off) in cases {
        for n in [1, 10, 100] {
            try_all_paths(
                dir.path(),
                &flip(&image, off, n),
                &model,
                &mut c,
                &format!("{name} x{n}"),
            );
        }
    }
    eprintln!(
        "damage sweep: {} cases, {} open attempts, {} errors returned, {} reads served, \
         {} wrong values, {} images changed",
        c.cases, c.attempts, c.errors, c.served, c.wrong, c.changed
    );
    assert_eq!(c.wrong, 0, "a damaged store never serves a wrong value");
    assert_eq!(
        c.changed, 0,
        "failed opens and read-only commands write nothing"
    );
}

/// A crash leaves the store dirty; a damaged md page then must fail the load, not vanish.
#[test]
fn crash_plus_damaged_md_page_frees_nothing() {
    let dev = Arc::new(SimDevice::new(16 << 20, 4096, 3).unwrap());
    let mut o = options(DeviceSpec::Sim(dev.clone()));
    o.create = true;
    let db = Db::open(o).unwrap();
    let model = fill(&db);
    let crashed = dev.durable_image();
    drop(db);
    // A read-only open of the crashed (dirty) store recovers in memory only.
    let sim = Arc::new(SimDevice::from_image(crashed.clone(), 4096, 3).unwrap());
    let mut o = options(DeviceSpec::Sim(sim.clone()));
    o.read_only = true;
    let db = Db::open(o).unwrap();
    let mut c = Counts::default();
    verify_db(&db, &model, &mut c, "read-only after a crash");
    assert_eq!((c.wrong, c.errors), (0, 0));
    db.close().unwrap();
    let n = sim.io_counts();
    assert_eq!(
        (n.writes, n.flushes, n.unmaps),
        (0, 0, 0),
        "a read-only open wrote"
    );
    let probe = pollster::block_on(NativeBlobStore::load(sim, LoadOpts::default())).unwrap();
    let (l, pages) = (probe.layout().clone(), probe.used_md_pages());
    drop(probe);
    let (mut failed, mut named) = (0, 0);
    for &p in &pages {
        let damaged = flip(&crashed, l.md_offset(p) + 40, 1);
        let sim = Arc::new(SimDevice::from_image(damaged.clone(), 4096, 3).unwrap());
        match Db::open(options(DeviceSpec::Sim(sim.clone()))) {
            Ok(db) => {
                let mut c = Counts::default();
                verify_db(&db, &model, &mut c, &format!("md page {p}"));
                assert_eq!(c.wrong, 0, "md page {p}: a dirty load served wrong data");
                drop(db);
            }
            Err(e) => {
                failed += 1;
                let Error::Corruption { detail, .. } = &e else {
                    panic!("md page {p}: {e:?}");
                };
                named += usize::from(detail.contains("per the catalog"));
                let n = sim.io_counts();
                assert_eq!(
                    (n.writes, n.flushes, n.unmaps),
                    (0, 0, 0),
                    "md page {p}: the failed open wrote to the device"
                );
            }
        }
        // fsck over the damaged image: the loss is reported, never a clean bill.
        let rep =
            blobcask::fsck::check(|| Ok(SimDevice::from_image(damaged.clone(), 4096, 3).unwrap()))
                .unwrap();
        assert!(
            !rep.is_clean(),
            "md page {p}: check calls a damaged store clean"
        );
    }
    eprintln!(
        "crash + damaged md page: {} pages, {failed} opens refused, {named} naming the blob \
         from the catalog written after the merge",
        pages.len()
    );
    assert!(failed > 0 && named > 0);
}

/// Md root pages of data blobs in `image`, with their blob ids.
fn data_roots(image: &[u8]) -> Vec<(u32, u64)> {
    use blobcask::blobstore::BlobStore;
    let dev = blobcask::device::MemoryDevice::from_bytes(image.to_vec(), 4096).unwrap();
    let bs = pollster::block_on(NativeBlobStore::load(dev, LoadOpts::default())).unwrap();
    let mut out = Vec::new();
    for id in bs.block_on(bs.blob_ids()).unwrap() {
        let b = bs.block_on(bs.open(id)).unwrap();
        if bs.block_on(bs.get_xattr(&b, "bc.role")).unwrap().as_deref() == Some(b"data") {
            out.push((id as u32, id));
        }
        bs.block_on(bs.close(b)).unwrap();
    }
    out
}

fn salvage(image: &[u8]) -> blobcask::fsck::SalvageReport {
    let dev = blobcask::device::MemoryDevice::from_bytes(image.to_vec(), 4096).unwrap();
    blobcask::fsck::salvage(dev).unwrap()
}

/// Run `blobcask repair --output` on `img` and read every key of the result.
fn cli_repair_matches(bin: &Path, dir: &Path, img: &Path, model: &Model) {
    let out = dir.join("repaired.img");
    let _ = std::fs::remove_file(&out);
    let o = Command::new(bin)
        .args([
            "repair",
            img.to_str().unwrap(),
            "--output",
            out.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "repair failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let db = Db::open_read_only(options(DeviceSpec::Path(out))).unwrap();
    let mut c = Counts::default();
    verify_db(&db, model, &mut c, "repaired");
    assert_eq!((c.wrong, c.errors), (0, 0), "repair brought back every key");
    db.close().unwrap();
}

#[test]
fn a_damaged_data_blob_md_page_is_named_and_repair_restores_it() {
    let dir = tempfile::tempdir().unwrap();
    let (image, model) = sample(dir.path());
    let (l, _) = layout_of(&dir.path().join("sample.img"));
    let roots = data_roots(&image);
    assert!(roots.len() >= 2, "the sample has several data blobs");
    let img = dir.path().join("case.img");
    for &(page, id) in roots.iter().take(3) {
        let damaged = flip(&image, l.md_offset(page) + 40, 1);
        std::fs::write(&img, &damaged).unwrap();
        let before = sha(&img);
        for read_only in [false, true] {
            let mut o = options(DeviceSpec::Path(img.clone()));
            o.read_only = read_only;
            match Db::open(o) {
                Err(Error::Corruption { blob, detail, .. }) => {
                    assert_eq!(blob, id, "{detail}");
                    assert!(
                        detail.contains("data blob of shard") && detail.contains("seq"),
                        "the error says what the blob held: {detail}"
                    );
                }
                other => panic!("blob {id:#x}: {:?}", other.map(|_| ())),
            }
            assert_eq!(sha(&img), before, "a failed open writes nothing");
        }
        let rep = salvage(&damaged);
        assert!(
            rep.restored.iter().any(|r| r.starts_with("restored")),
            "{:?}",
            rep.restored
        );
        assert_eq!(rep.live, model, "repair finds every key of blob {id:#x}");
        if let Some(bin) = cli() {
            cli_repair_matches(&bin, dir.path(), &img, &model);
        }
    }
}

#[test]
fn a_damaged_super_block_is_rebuilt_by_repair() {
    let dir = tempfile::tempdir().unwrap();
    let (image, model) = sample(dir.path());
    let img = dir.path().join("case.img");
    for (off, n) in [(24u64, 1usize), (0, 1), (40, 10)] {
        let damaged = flip(&image, off, n);
        std::fs::write(&img, &damaged).unwrap();
        let before = sha(&img);
        assert!(Db::open(options(DeviceSpec::Path(img.clone()))).is_err());
        assert!(Db::open_read_only(options(DeviceSpec::Path(img.clone()))).is_err());
        assert_eq!(sha(&img), before, "a failed open writes nothing");
        let rep = salvage(&damaged);
        assert!(
            rep.restored.iter().any(|r| r.contains("super block")),
            "{:?}",
            rep.restored
        );
        assert_eq!(rep.live, model, "every key is back after the rebuild");
        if let Some(bin) = cli() {
            cli_repair_matches(&bin, dir.path(), &img, &model);
        }
    }
}
