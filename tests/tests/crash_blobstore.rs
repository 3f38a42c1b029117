//! Blobstore-level exhaustive crash sweep: a canonical sequence of metadata and data operations
//! (init, create thick/thin, xattrs, resize up and down, sync_md, thin first writes, delete,
//! unload) is crashed after every device I/O, and every crash image is checked under several
//! damage variants: the store loads, fsck finds no leak or double allocation, every blob whose
//! creation completed is there, every completed `sync_md` is visible (or a newer in-flight one),
//! and every flushed data write reads back exactly.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use blobcask::blobstore::native::NativeBlobStore;
use blobcask::blobstore::{
    Blob as _, BlobId, BlobStore, CreateOpts, InitOpts, IoChannel, LoadOpts,
};
use blobcask::device::SimDevice;
use blobcask_tests::fsck;
use blobcask_tests::harness::Damage;
use blobcask_tests::seed;

type Store = NativeBlobStore<Arc<SimDevice>>;

const DEV: u64 = 2 << 20;
const CLUSTER: u32 = 64 << 10;
const UPC: u64 = 16; // io units (4 KiB) per cluster

/// What must hold for one blob (by label) after a crash.
#[derive(Clone, Debug, Default)]
struct BlobExpect {
    id: Option<BlobId>,
    /// None = may or may not exist.
    exists: Option<bool>,
    sizes: Vec<u64>,
    xattr: Vec<Vec<u8>>,
    /// (io unit offset, bytes) that must read back.
    data: Vec<(u64, Vec<u8>)>,
}

#[derive(Clone, Debug, Default)]
struct Model {
    init_done: bool,
    blobs: BTreeMap<&'static str, BlobExpect>,
    /// A create was in flight: one blob we do not know may exist.
    unknown_ok: bool,
    unloaded: bool,
}

fn pattern(tag: u64, units: u64) -> Vec<u8> {
    let mut r = seed::mix(tag, 7);
    (0..units * 4096)
        .map(|_| {
            r = seed::mix(r, 1);
            r as u8
        })
        .collect()
}

fn bs<T>(r: blobcask::blobstore::Result<T>, what: &str) -> Result<T, String> {
    r.map_err(|e| format!("{what}: {e}"))
}

/// The canonical workload; updates `m` before (what may be) and after (what must be) each step.
fn workload(dev: Arc<SimDevice>, m: &mut Model) -> Result<(), String> {
    let store: Store = bs(
        pollster::block_on(Store::init(
            dev,
            InitOpts {
                cluster_size: CLUSTER,
                ..InitOpts::default()
            },
        )),
        "init",
    )?;
    m.init_done = true;
    let ch = bs(store.channel(), "channel")?;

    // 1. create A: thick, 2 clusters, xattr.
    m.unknown_ok = true;
    let a_id = bs(
        pollster::block_on(store.create(CreateOpts {
            num_clusters: 2,
            xattrs: vec![("name".into(), b"v1".to_vec())],
            ..CreateOpts::default()
        })),
        "create A",
    )?;
    m.unknown_ok = false;
    m.blobs.insert(
        "A",
        BlobExpect {
            id: Some(a_id),
            exists: Some(true),
            sizes: vec![2],
            xattr: vec![b"v1".to_vec()],
            data: vec![],
        },
    );
    let a = bs(pollster::block_on(store.open(a_id)), "open A")?;

    // 2. data across a cluster boundary of A, flushed.
    let p1 = pattern(1, 16);
    bs(pollster::block_on(ch.write(&a, 8, &p1)), "write A")?;
    bs(pollster::block_on(ch.flush()), "flush")?;
    m.blobs.get_mut("A").unwrap().data.push((8, p1));

    // 3. thin B, resized to 4 clusters.
    m.unknown_ok = true;
    let b_id = bs(
        pollster::block_on(store.create(CreateOpts {
            thin_provision: true,
            xattrs: vec![("name".into(), b"b1".to_vec())],
            ..CreateOpts::default()
        })),
        "create B",
    )?;
    m.unknown_ok = false;
    m.blobs.insert(
        "B",
        BlobExpect {
            id: Some(b_id),
            exists: Some(true),
            sizes: vec![0, 4],
            xattr: vec![b"b1".to_vec()],
            data: vec![],
        },
    );
    let b = bs(pollster::block_on(store.open(b_id)), "open B")?;
    bs(pollster::block_on(store.resize(&b, 4)), "resize B")?;
    bs(pollster::block_on(store.sync_md(&b)), "sync B")?;
    m.blobs.get_mut("B").unwrap().sizes = vec![4];

    // 4. thin first write into cluster 2 of B.
    let p2 = pattern(2, 2);
    bs(
        pollster::block_on(ch.write(&b, 2 * UPC + 3, &p2)),
        "write B",
    )?;
    bs(pollster::block_on(ch.flush()), "flush")?;
    m.blobs.get_mut("B").unwrap().data.push((2 * UPC + 3, p2));

    // 5. grow A and change its xattr, one sync.
    {
        let e = m.blobs.get_mut("A").unwrap();
        e.sizes = vec![2, 5];
        e.xattr = vec![b"v1".to_vec(), b"v2".to_vec()];
    }
    bs(pollster::block_on(store.resize(&a, 5)), "resize A")?;
    bs(
        pollster::block_on(store.set_xattr(&a, "name", b"v2")),
        "xattr A",
    )?;
    bs(pollster::block_on(store.sync_md(&a)), "sync A")?;
    {
        let e = m.blobs.get_mut("A").unwrap();
        e.sizes = vec![5];
        e.xattr = vec![b"v2".to_vec()];
    }

    // 6. data in the new cluster 4 of A.
    let p3 = pattern(3, 4);
    bs(pollster::block_on(ch.write(&a, 4 * UPC, &p3)), "write A")?;
    bs(pollster::block_on(ch.flush()), "flush")?;
    m.blobs.get_mut("A").unwrap().data.push((4 * UPC, p3));

    // 7. C, thick, 3 clusters.
    m.unknown_ok = true;
    let c_id = bs(
        pollster::block_on(store.create(CreateOpts {
            num_clusters: 3,
            ..CreateOpts::default()
        })),
        "create C",
    )?;
    m.unknown_ok = false;
    m.blobs.insert(
        "C",
        BlobExpect {
            id: Some(c_id),
            exists: Some(true),
            sizes: vec![3],
            xattr: vec![],
            data: vec![],
        },
    );

    // 8. thin first write into cluster 0 of B.
    let p4 = pattern(4, 1);
    bs(pollster::block_on(ch.write(&b, 0, &p4)), "write B")?;
    bs(pollster::block_on(ch.flush()), "flush")?;
    m.blobs.get_mut("B").unwrap().data.push((0, p4));

    // 9. delete C.
    m.blobs.get_mut("C").unwrap().exists = None;
    bs(pollster::block_on(store.delete(c_id)), "delete C")?;
    m.blobs.get_mut("C").unwrap().exists = Some(false);

    // 10. shrink A to 3 (cluster 4's data goes away).
    {
        let e = m.blobs.get_mut("A").unwrap();
        e.sizes = vec![5, 3];
        e.data.retain(|(o, _)| *o < 3 * UPC);
    }
    bs(pollster::block_on(store.resize(&a, 3)), "shrink A")?;
    bs(pollster::block_on(store.sync_md(&a)), "sync A")?;
    m.blobs.get_mut("A").unwrap().sizes = vec![3];

    // 11. B's xattrs grow past one md page (a chain page).
    m.blobs.get_mut("B").unwrap().xattr = vec![b"b1".to_vec(), b"b2".to_vec()];
    bs(
        pollster::block_on(store.set_xattr(&b, "name", b"b2")),
        "xattr B",
    )?;
    bs(
        pollster::block_on(store.set_xattr(&b, "big", &[0x5A; 3000])),
        "xattr B",
    )?;
    bs(
        pollster::block_on(store.set_xattr(&b, "big2", &[0xA5; 3000])),
        "xattr B",
    )?;
    bs(pollster::block_on(store.sync_md(&b)), "sync B")?;
    m.blobs.get_mut("B").unwrap().xattr = vec![b"b2".to_vec()];

    // 12. close and unload.
    bs(pollster::block_on(store.close(a)), "close A")?;
    bs(pollster::block_on(store.close(b)), "close B")?;
    drop(ch);
    bs(pollster::block_on(store.unload()), "unload")?;
    m.unloaded = true;
    Ok(())
}

fn check(image: &[u8], m: &Model) -> Result<(), String> {
    let loaded = pollster::block_on(Store::load(
        Arc::new(SimDevice::from_image(image.to_vec(), 4096, 0).unwrap()),
        LoadOpts::default(),
    ));
    let store = match loaded {
        Ok(s) => s,
        Err(e) if !m.init_done => {
            // Crashed inside init: any clean error is fine.
            let _ = e;
            return Ok(());
        }
        Err(e) => return Err(format!("load failed: {e}")),
    };
    let rep = fsck::check(image)?;
    if m.unloaded && !rep.clean {
        return Err("unload completed but the super block is not clean".into());
    }
    let ids = bs(store.block_on(store.blob_ids()), "blob_ids")?;
    let known: Vec<BlobId> = m.blobs.values().filter_map(|e| e.id).collect();
    let unknown = ids.iter().filter(|i| !known.contains(i)).count();
    if unknown > usize::from(m.unknown_ok) {
        return Err(format!("{unknown} unexpected blobs in {ids:x?}"));
    }
    let ch = bs(store.channel(), "channel")?;
    for (label, e) in &m.blobs {
        let Some(id) = e.id else { continue };
        let present = ids.contains(&id);
        if let Some(want) = e.exists {
            if present != want {
                return Err(format!(
                    "blob {label} ({id:#x}): present {present}, expected {want}"
                ));
            }
        }
        if !present {
            continue;
        }
        let blob = bs(store.block_on(store.open(id)), "open")?;
        let n = blob.num_clusters();
        if !e.sizes.contains(&n) {
            return Err(format!(
                "blob {label}: {n} clusters, expected one of {:?}",
                e.sizes
            ));
        }
        let x = bs(store.block_on(store.get_xattr(&blob, "name")), "get_xattr")?;
        if !e.xattr.is_empty() && !x.as_ref().is_some_and(|v| e.xattr.contains(v)) {
            return Err(format!(
                "blob {label}: xattr name = {x:?}, expected one of {:?}",
                e.xattr
            ));
        }
        for (off, want) in &e.data {
            let mut got = vec![0u8; want.len()];
            bs(store.block_on(ch.read(&blob, *off, &mut got)), "read")?;
            if &got != want {
                return Err(format!("blob {label}: flushed data at unit {off} differs"));
            }
        }
        bs(store.block_on(store.close(blob)), "close")?;
    }
    Ok(())
}

#[test]
fn blobstore_crash_sweep() {
    let t0 = Instant::now();
    let total = {
        let dev = Arc::new(SimDevice::new(DEV, 4096, 0).unwrap());
        let mut m = Model::default();
        workload(dev.clone(), &mut m).expect("workload without faults");
        check(&dev.durable_image(), &m).expect("clean image");
        dev.io_counts().total()
    };
    let mut cases = 0u64;
    let s = seed::forced_seed().unwrap_or(0);
    for n in 0..=total {
        let dev = Arc::new(SimDevice::new(DEV, 4096, seed::mix(s, n)).unwrap());
        dev.stop_after(n);
        let mut m = Model::default();
        let _ = workload(dev.clone(), &mut m);
        let mut variants = vec![
            Damage::Random(seed::mix(s, n + 1000)),
            Damage::Random(seed::mix(s, n + 2000)),
            Damage::Untorn(seed::mix(s, n + 3000)),
            Damage::DropAll,
            Damage::KeepAll,
        ];
        // Nightly: more random damage draws per crash point.
        for extra in 1..seed::scale() {
            variants.push(Damage::Random(seed::mix(s, n * 1000 + extra)));
        }
        for v in variants {
            let img = v.image(&dev);
            cases += 1;
            if let Err(e) = check(&img, &m) {
                panic!(
                    "crash after I/O #{n} of {total}, damage {v:?}: {e}\n  model: {m:?}\n  \
                     replay: SEED={s} cargo test -p blobcask-tests --test crash_blobstore"
                );
            }
        }
    }
    seed::report("blobstore_crash_sweep", cases, t0);
}

/// Random crash points of the same workload with more random damage draws each (40 points x 4
/// draws in the default tier, times `TORTURE_SCALE` nightly).
#[test]
fn blobstore_crash_random_damage() {
    let t0 = Instant::now();
    let total = {
        let dev = Arc::new(SimDevice::new(DEV, 4096, 0).unwrap());
        let mut m = Model::default();
        workload(dev.clone(), &mut m).expect("workload without faults");
        dev.io_counts().total()
    };
    let cases = seed::run_seeded(
        "crash_blobstore",
        "blobstore_crash_random_damage",
        40,
        |s| {
            let mut rng = seed::rng(s);
            let n = rand::Rng::gen_range(&mut rng, 0..=total);
            let dev = Arc::new(SimDevice::new(DEV, 4096, s).unwrap());
            dev.stop_after(n);
            let mut m = Model::default();
            let _ = workload(dev.clone(), &mut m);
            for k in 0..4 {
                let img = dev.crash_image_with_seed(seed::mix(s, k));
                if let Err(e) = check(&img, &m) {
                    panic!("crash after I/O #{n} of {total}, image draw {k}: {e}\n  model: {m:?}");
                }
            }
        },
    );
    seed::report("blobstore_crash_random_damage", cases * 4, t0);
}

/// Was a bug (native `store.rs`, `Inner::delete`): the root page is zeroed and flushed before
/// the in-memory claims are dropped; if that flush failed, the claims stayed and `unload` wrote
/// a *clean* super block whose masks still named the blob, whose root was zero. A failed
/// metadata write now makes unload leave the store dirty, so the next load rebuilds the masks.
#[test]
fn failed_delete_flush_then_unload_keeps_masks_consistent() {
    let dev = Arc::new(SimDevice::new(DEV, 4096, 0).unwrap());
    let store: Store = pollster::block_on(Store::init(
        dev.clone(),
        InitOpts {
            cluster_size: CLUSTER,
            ..InitOpts::default()
        },
    ))
    .unwrap();
    let id = store
        .block_on(store.create(CreateOpts {
            num_clusters: 1,
            ..CreateOpts::default()
        }))
        .unwrap();
    dev.fail_next_flush(false);
    assert!(store.block_on(store.delete(id)).is_err());
    store.block_on(store.unload()).unwrap();
    fsck::check(&dev.durable_image()).expect("masks consistent after a failed delete + unload");
}
