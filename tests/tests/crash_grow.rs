//! `NativeBlobStore::grow` (SPDK's live grow) under crashes: a store made on a 2 MiB device
//! sits on a 4 MiB one, is grown, fills clusters only the new size has, and unloads. A crash
//! after every device I/O of that (under several damage variants) must leave a store that
//! loads at the old size or the new one (the new one once `grow` returned), with consistent
//! masks, every old blob's data intact, and — grown again and unloaded — the new size.

use std::sync::Arc;
use std::time::Instant;

use blobcask::blobstore::native::superblock::SuperBlock;
use blobcask::blobstore::native::NativeBlobStore;
use blobcask::blobstore::{
    Blob as _, BlobId, BlobStore, CreateOpts, InitOpts, IoChannel, LoadOpts,
};
use blobcask::device::{MemoryDevice, SimDevice};
use blobcask_tests::fsck;
use blobcask_tests::harness::Damage;
use blobcask_tests::seed;

type Store = NativeBlobStore<Arc<SimDevice>>;

const OLD: u64 = 2 << 20;
const NEW: u64 = 4 << 20;
const CLUSTER: u32 = 64 << 10;
const UPC: u64 = 16; // io units (4 KiB) per cluster

fn pattern(tag: u64, units: u64) -> Vec<u8> {
    let mut r = seed::mix(tag, 11);
    (0..units * 4096)
        .map(|_| {
            r = seed::mix(r, 1);
            r as u8
        })
        .collect()
}

/// The old store: thick A (3 clusters) and thin B (one written cluster), unloaded, on a
/// device twice its size. Returns the image and the two blob ids.
fn old_store() -> (Vec<u8>, BlobId, BlobId) {
    let dev = Arc::new(MemoryDevice::new(OLD, 4096).unwrap());
    let s = pollster::block_on(NativeBlobStore::init(
        Arc::clone(&dev),
        InitOpts {
            cluster_size: CLUSTER,
            ..InitOpts::default()
        },
    ))
    .unwrap();
    let ch = s.channel().unwrap();
    let (a, b) = s.block_on(async {
        let a = s
            .create(CreateOpts {
                num_clusters: 3,
                ..CreateOpts::default()
            })
            .await
            .unwrap();
        let b = s
            .create(CreateOpts {
                num_clusters: 8,
                thin_provision: true,
                ..CreateOpts::default()
            })
            .await
            .unwrap();
        let (ha, hb) = (s.open(a).await.unwrap(), s.open(b).await.unwrap());
        ch.write(&ha, 0, &pattern(1, 3 * UPC)).await.unwrap();
        ch.write(&hb, 5 * UPC, &pattern(2, UPC)).await.unwrap();
        s.close(ha).await.unwrap();
        s.close(hb).await.unwrap();
        (a, b)
    });
    drop(ch);
    pollster::block_on(s.unload()).unwrap();
    drop(s);
    let mut img = dev.to_bytes();
    img.resize(NEW as usize, 0);
    (img, a, b)
}

#[derive(Debug, Default)]
struct Model {
    grown: bool,
    /// Blob C (made in the new space) was created; its flushed data.
    c: Option<(BlobId, bool)>,
    unloaded: bool,
}

/// Load, grow, create thick C bigger than the old free space, write it, flush, unload.
fn workload(dev: Arc<SimDevice>, m: &mut Model) -> Result<(), String> {
    fn e(w: &'static str) -> impl Fn(blobcask::blobstore::Error) -> String {
        move |x| format!("{w}: {x}")
    }
    let s = pollster::block_on(Store::load(dev, LoadOpts::default())).map_err(e("load"))?;
    let old_free = s.free_clusters();
    pollster::block_on(s.grow(NEW)).map_err(e("grow"))?;
    m.grown = true;
    let ch = s.channel().map_err(e("channel"))?;
    let n = old_free + 4;
    let c = pollster::block_on(s.create(CreateOpts {
        num_clusters: n,
        ..CreateOpts::default()
    }))
    .map_err(e("create C"))?;
    m.c = Some((c, false));
    let h = pollster::block_on(s.open(c)).map_err(e("open C"))?;
    pollster::block_on(ch.write(&h, (n - 1) * UPC, &pattern(3, UPC))).map_err(e("write C"))?;
    pollster::block_on(ch.flush()).map_err(e("flush"))?;
    m.c = Some((c, true));
    pollster::block_on(s.close(h)).map_err(e("close C"))?;
    drop(ch);
    pollster::block_on(s.unload()).map_err(e("unload"))?;
    m.unloaded = true;
    Ok(())
}

fn read<S: BlobStore>(s: &S, id: BlobId, off: u64, units: u64) -> Result<Vec<u8>, String> {
    s.block_on(async {
        let h = s.open(id).await.map_err(|e| format!("open {id:#x}: {e}"))?;
        let ch = s.channel().map_err(|e| e.to_string())?;
        let mut buf = vec![0u8; (units * 4096) as usize];
        ch.read(&h, off, &mut buf)
            .await
            .map_err(|e| e.to_string())?;
        s.close(h).await.map_err(|e| e.to_string())?;
        Ok(buf)
    })
}

fn check(image: &[u8], m: &Model, a: BlobId, b: BlobId) -> Result<(), String> {
    let sb = SuperBlock::decode(image).map_err(|e| format!("super block: {e}"))?;
    if sb.size != OLD && sb.size != NEW {
        return Err(format!("store size {}", sb.size));
    }
    if m.grown && sb.size != NEW {
        return Err("grow returned, yet the store has the old size".into());
    }
    let rep = fsck::check(image)?;
    if m.unloaded && !rep.clean {
        return Err("unload completed but the super block is not clean".into());
    }
    let dev = Arc::new(SimDevice::from_image(image.to_vec(), 4096, 0).unwrap());
    let s = pollster::block_on(Store::load(Arc::clone(&dev), LoadOpts::default()))
        .map_err(|e| format!("load: {e}"))?;
    let want_total = sb.size / u64::from(CLUSTER) - s.layout().num_md_clusters as u64;
    if s.total_data_clusters() != want_total {
        return Err(format!(
            "{} data clusters at size {}",
            s.total_data_clusters(),
            sb.size
        ));
    }
    if read(&s, a, 0, 3 * UPC)? != pattern(1, 3 * UPC) {
        return Err("blob A's data differs".into());
    }
    if read(&s, b, 5 * UPC, UPC)? != pattern(2, UPC) {
        return Err("blob B's data differs".into());
    }
    let ids = s.block_on(s.blob_ids()).map_err(|e| e.to_string())?;
    match m.c {
        Some((c, flushed)) if ids.contains(&c) => {
            let h = s.block_on(s.open(c)).map_err(|e| e.to_string())?;
            let n = h.num_clusters();
            s.block_on(s.close(h)).map_err(|e| e.to_string())?;
            if flushed && read(&s, c, (n - 1) * UPC, UPC)? != pattern(3, UPC) {
                return Err("blob C's flushed data differs".into());
            }
        }
        Some((c, _)) => return Err(format!("blob C ({c:#x}) was created but is gone")),
        None if ids.len() > 3 => return Err(format!("unexpected blobs {ids:x?}")),
        None => {}
    }
    // Finishing the grow after the crash works and sticks.
    pollster::block_on(s.grow(NEW)).map_err(|e| format!("grow after the crash: {e}"))?;
    pollster::block_on(s.unload()).map_err(|e| format!("unload: {e}"))?;
    drop(s);
    let after = dev.durable_image();
    let sb = SuperBlock::decode(&after).map_err(|e| e.to_string())?;
    if sb.size != NEW || !sb.is_clean() {
        return Err(format!(
            "after grow + unload: size {} clean {}",
            sb.size, sb.clean
        ));
    }
    fsck::check(&after).map(|_| ())
}

#[test]
fn grow_crash_sweep() {
    let t0 = Instant::now();
    let (img, a, b) = old_store();
    let total = {
        let dev = Arc::new(SimDevice::from_image(img.clone(), 4096, 0).unwrap());
        let mut m = Model::default();
        workload(Arc::clone(&dev), &mut m).expect("workload without faults");
        assert!(m.unloaded);
        check(&dev.durable_image(), &m, a, b).expect("clean image");
        dev.io_counts().total()
    };
    let mut cases = 0u64;
    let s = seed::forced_seed().unwrap_or(0);
    for n in 0..=total {
        let dev = Arc::new(SimDevice::from_image(img.clone(), 4096, seed::mix(s, n)).unwrap());
        dev.stop_after(n);
        let mut m = Model::default();
        let _ = workload(Arc::clone(&dev), &mut m);
        let mut variants = vec![
            Damage::Random(seed::mix(s, n + 1000)),
            Damage::Untorn(seed::mix(s, n + 3000)),
            Damage::DropAll,
            Damage::KeepAll,
        ];
        // Nightly: more random damage draws per crash point.
        for extra in 1..seed::scale() {
            variants.push(Damage::Random(seed::mix(s, n * 1000 + extra)));
        }
        for v in variants {
            cases += 1;
            let image = v.image(&dev);
            if let Err(e) = check(&image, &m, a, b) {
                panic!(
                    "crash after I/O #{n} of {total}, damage {v:?}: {e}\n  model: {m:?}\n  \
                     replay: SEED={s} cargo test -p blobcask-tests --test crash_grow"
                );
            }
        }
    }
    seed::report("grow_crash_sweep", cases, t0);
}

/// What grow refuses, it refuses without writing: a smaller size, a size past the device, a
/// cluster mask that would not fit its reserved pages. The same size is a no-op.
#[test]
fn grow_refusals_write_nothing() {
    use blobcask::blobstore::Error;
    let (img, _, _) = old_store();
    let dev = Arc::new(SimDevice::from_image(img.clone(), 4096, 0).unwrap());
    let s = pollster::block_on(Store::load(Arc::clone(&dev), LoadOpts::default())).unwrap();
    assert!(matches!(
        pollster::block_on(s.grow(OLD / 2)),
        Err(Error::NoSpace)
    ));
    assert!(pollster::block_on(s.grow(NEW + 4096)).is_err());
    pollster::block_on(s.grow(OLD)).unwrap();
    let io = dev.io_counts();
    assert_eq!((io.writes, io.flushes, io.unmaps), (0, 0, 0), "{io:?}");
    assert_eq!(dev.current_image(), img);
    drop(s);

    // 4 KiB clusters and a one-page cluster mask: at most 32,728 clusters fit it.
    let mem = Arc::new(MemoryDevice::new(1 << 20, 4096).unwrap());
    let s = pollster::block_on(NativeBlobStore::init(
        Arc::clone(&mem),
        InitOpts {
            cluster_size: 4096,
            num_md_pages: Some(16),
            ..InitOpts::default()
        },
    ))
    .unwrap();
    pollster::block_on(s.unload()).unwrap();
    drop(s);
    // On a sparse image file of 200 MiB.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("big.img");
    std::fs::write(&path, mem.to_bytes()).unwrap();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .and_then(|f| f.set_len(200 << 20))
        .unwrap();
    let head = || std::fs::read(&path).unwrap()[..1 << 20].to_vec();
    let before = head();
    let dev = blobcask::device::FileDevice::open(&path).unwrap();
    let s = pollster::block_on(NativeBlobStore::load(dev, LoadOpts::default())).unwrap();
    assert_eq!(s.layout().cluster_mask_len, 1);
    assert!(matches!(
        pollster::block_on(s.grow(200 << 20)),
        Err(Error::NoSpace)
    ));
    assert!(head() == before, "a refused grow wrote");
    // Within the page it grows.
    pollster::block_on(s.grow(100 << 20)).unwrap();
    assert_eq!(
        s.total_data_clusters(),
        (100 << 20) / 4096 - u64::from(s.layout().num_md_clusters)
    );
    pollster::block_on(s.unload()).unwrap();
    let sb = SuperBlock::decode(&head()).unwrap();
    assert_eq!(
        (sb.size, sb.used_cluster_mask_len, sb.clean),
        (100 << 20, 1, 1)
    );
}
