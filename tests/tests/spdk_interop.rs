//! Interoperability with real SPDK (`--features spdk`), blob by blob and key by key:
//!
//! - images the native backend wrote through the engine — closed cleanly, after a merge, and
//!   dirty after a kill — load under SPDK with every blob as the native backend itself loads
//!   it: ids, sizes, flags, xattrs and the bytes of every io unit of every cluster;
//! - snapshots, a snapshot of a snapshot and a clone the native backend made load under SPDK
//!   the same way, their reads through each backing chain included;
//! - stores the engine made on SPDK (an aio bdev over an image file) and unloaded reopen
//!   natively with every key and value as the model says.
//!
//! Each side loads its own copy of the image, so neither sees the other's recovery writes.
//! The comparison itself ([`dump`], [`diff`]) needs no SPDK: its tests below check that it
//! catches a flipped data byte and an altered xattr. Without SPDK the SPDK tests print
//! `skipped: <why>` and pass (CI sets `BLOBCASK_REQUIRE_SPDK` where SPDK is built, which turns
//! a skip into a failure).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use blobcask::blobstore::native::NativeBlobStore;
use blobcask::blobstore::{Blob, BlobStore, IoChannel, LoadOpts};
use blobcask::device::FileDevice;
use blobcask::{Db, DeviceSpec, Options, SyncPolicy};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use sha2::{Digest, Sha256};

const MIB: u64 = 1 << 20;
const IMAGE: u64 = 48 * MIB;

/// What a loaded store holds; the data of a blob as one digest per io unit.
#[derive(Debug, Clone, PartialEq)]
struct Image {
    io_unit: u32,
    cluster_size: u32,
    super_blob: Option<u64>,
    total_clusters: u64,
    free_clusters: u64,
    blobs: BTreeMap<u64, BlobImage>,
}

#[derive(Debug, Clone, PartialEq)]
struct BlobImage {
    clusters: u64,
    io_units: u64,
    thin: bool,
    read_only: bool,
    xattrs: Vec<(String, Vec<u8>)>,
    units: Vec<[u8; 32]>,
}

impl Image {
    fn io_units(&self) -> usize {
        self.blobs.values().map(|b| b.units.len()).sum()
    }
}

/// Read everything `s` holds: every blob's metadata and every io unit of every cluster.
async fn dump<S: BlobStore>(s: &S) -> Image {
    let io_unit = s.io_unit_size();
    let cluster_size = s.cluster_size();
    let per_cluster = u64::from(cluster_size / io_unit);
    let ch = s.channel().expect("channel");
    let mut ids = s.blob_ids().await.expect("blob ids");
    ids.sort_unstable();
    let mut blobs = BTreeMap::new();
    let mut buf = vec![0u8; cluster_size as usize];
    for id in ids {
        let b = s.open(id).await.expect("open blob");
        let mut xattrs = Vec::new();
        for name in s.xattr_names(&b).await.expect("xattr names") {
            let v = s.get_xattr(&b, &name).await.expect("get xattr");
            xattrs.push((name, v.unwrap_or_default()));
        }
        let mut units = Vec::new();
        for c in 0..b.num_clusters() {
            ch.read(&b, c * per_cluster, &mut buf)
                .await
                .unwrap_or_else(|e| panic!("read blob {id:#x} cluster {c}: {e}"));
            units.extend(
                buf.chunks(io_unit as usize)
                    .map(|u| <[u8; 32]>::from(Sha256::digest(u))),
            );
        }
        blobs.insert(
            id,
            BlobImage {
                clusters: b.num_clusters(),
                io_units: b.num_io_units(),
                thin: b.is_thin(),
                read_only: b.is_read_only(),
                xattrs,
                units,
            },
        );
        s.close(b).await.expect("close blob");
    }
    drop(ch);
    Image {
        io_unit,
        cluster_size,
        super_blob: s.super_blob(),
        total_clusters: s.total_data_clusters(),
        free_clusters: s.free_clusters(),
        blobs,
    }
}

/// Every difference between two images, one line each (empty when they are the same).
fn diff(a: &Image, b: &Image) -> Vec<String> {
    let mut out = Vec::new();
    let mut field = |what: &str, x: String, y: String| {
        if x != y {
            out.push(format!("{what}: {x} vs {y}"));
        }
    };
    field("io unit", a.io_unit.to_string(), b.io_unit.to_string());
    field(
        "cluster size",
        a.cluster_size.to_string(),
        b.cluster_size.to_string(),
    );
    field(
        "super blob",
        format!("{:?}", a.super_blob),
        format!("{:?}", b.super_blob),
    );
    field(
        "data clusters",
        a.total_clusters.to_string(),
        b.total_clusters.to_string(),
    );
    field(
        "free clusters",
        a.free_clusters.to_string(),
        b.free_clusters.to_string(),
    );
    for (id, x) in &a.blobs {
        let Some(y) = b.blobs.get(id) else {
            out.push(format!("blob {id:#x}: only in the first"));
            continue;
        };
        let mut field = |what: &str, x: String, y: String| {
            if x != y {
                out.push(format!("blob {id:#x} {what}: {x} vs {y}"));
            }
        };
        field("clusters", x.clusters.to_string(), y.clusters.to_string());
        field("io units", x.io_units.to_string(), y.io_units.to_string());
        field("thin", x.thin.to_string(), y.thin.to_string());
        field(
            "read-only",
            x.read_only.to_string(),
            y.read_only.to_string(),
        );
        field(
            "xattrs",
            format!("{:?}", x.xattrs),
            format!("{:?}", y.xattrs),
        );
        for (i, (u, v)) in x.units.iter().zip(&y.units).enumerate() {
            if u != v {
                out.push(format!("blob {id:#x} io unit {i}: data differs"));
            }
        }
    }
    for id in b.blobs.keys().filter(|id| !a.blobs.contains_key(id)) {
        out.push(format!("blob {id:#x}: only in the second"));
    }
    out
}

fn tmp(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("spdk_interop");
    std::fs::create_dir_all(&dir).expect("tmp dir");
    let p = dir.join(name);
    let _ = std::fs::remove_file(&p);
    p
}

/// A copy of `image` next to it, for one loader to recover on its own.
fn copy_of(image: &Path, suffix: &str) -> PathBuf {
    let mut name = image.file_name().expect("file name").to_os_string();
    name.push(format!(".{suffix}"));
    let copy = image.with_file_name(name);
    std::fs::copy(image, &copy).expect("copy image");
    copy
}

/// The native backend's view of a copy of `image`.
fn native_dump(image: &Path) -> Image {
    let copy = copy_of(image, "native");
    let img = pollster::block_on(async {
        let dev = FileDevice::open(&copy).expect("open image copy");
        let s = NativeBlobStore::load(dev, LoadOpts::default())
            .await
            .expect("native load");
        let img = dump(&s).await;
        s.unload().await.expect("native unload");
        img
    });
    std::fs::remove_file(&copy).expect("remove copy");
    img
}

/// The engine's options for the images here: small clusters and blobs, so that the stores
/// have many blobs, rotations and partly written clusters.
fn engine_opts(image: Option<&Path>, create: bool, sync: SyncPolicy) -> Options {
    let mut o = Options::new(match image {
        Some(p) => DeviceSpec::Path(p.to_path_buf()),
        None => DeviceSpec::Memory { size: 0 },
    });
    o.create = create;
    o.device_size = IMAGE;
    o.cluster_size = 64 << 10;
    o.shards = 2;
    o.max_blob_size = 256 << 10;
    o.max_value_size = 16 << 10;
    o.sync = sync;
    o.merge.auto = false;
    o.bstype = "BLOBCASK".into();
    o
}

type Model = HashMap<Vec<u8>, Vec<u8>>;

/// `ops` puts (overwrites included) and deletes over a few hundred keys; returns what the
/// store must hold afterwards.
fn workload<S: BlobStore>(db: &Db<S>, seed: u64, ops: u32, model: &mut Model) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    for n in 0..ops {
        let k = format!("key-{:05}", rng.gen_range(0..600u32)).into_bytes();
        if rng.gen_range(0..100) < 15 {
            db.delete(&k).expect("delete");
            model.remove(&k);
        } else {
            let len = rng.gen_range(1..6000usize);
            let mut v = format!("{seed}/{n}/").into_bytes();
            v.extend((0..len).map(|_| rng.gen::<u8>()));
            db.put(&k, &v).expect("put");
            model.insert(k, v);
        }
    }
}

fn state<S: BlobStore>(db: &Db<S>) -> Model {
    db.fold(Model::new(), |mut m, k, v| {
        m.insert(k.to_vec(), v.to_vec());
        m
    })
    .expect("fold")
}

/// A native image written through the engine and closed cleanly; returns its model.
fn native_clean_image(path: &Path, seed: u64, merge: bool) -> Model {
    native_clean_image_with(path, seed, merge, 4096)
}

/// [`native_clean_image`] of a store with `io_unit`-byte io units.
fn native_clean_image_with(path: &Path, seed: u64, merge: bool, io_unit: u32) -> Model {
    let mut opts = engine_opts(Some(path), true, SyncPolicy::Never);
    opts.io_unit_size = io_unit;
    let db = Db::open(opts).expect("native open");
    let mut model = Model::new();
    workload(&db, seed, 2500, &mut model);
    if merge {
        db.merge().expect("merge");
        workload(&db, seed + 1, 300, &mut model);
    }
    assert_eq!(state(&db), model, "native store before close");
    db.close().expect("native close");
    model
}

/// The byte offset of `needle` in `image`, if it is there.
fn find_in_image(image: &Path, needle: &[u8]) -> Option<u64> {
    let bytes = std::fs::read(image).expect("read image");
    bytes
        .windows(needle.len())
        .position(|w| w == needle)
        .map(|p| p as u64)
}

#[test]
fn diff_of_an_image_with_itself_is_empty_and_sees_every_io_unit() {
    let path = tmp("self.img");
    native_clean_image(&path, 7, false);
    let a = native_dump(&path);
    assert!(a.blobs.len() >= 4, "a store of {} blobs", a.blobs.len());
    let units: u64 =
        a.blobs.values().map(|b| b.clusters).sum::<u64>() * u64::from(a.cluster_size / a.io_unit);
    assert_eq!(a.io_units() as u64, units, "one digest per io unit");
    assert_eq!(diff(&a, &native_dump(&path)), Vec::<String>::new());
}

/// The comparison can fail: one flipped data byte on the device is one mismatching io unit.
#[test]
fn diff_finds_one_flipped_data_byte() {
    let path = tmp("flip.img");
    let db = Db::open(engine_opts(Some(&path), true, SyncPolicy::Never)).expect("native open");
    let marker = b"interop-marker: this value is unique in the image".to_vec();
    db.put(b"marked", &marker).expect("put marker");
    let mut model = Model::new();
    workload(&db, 11, 500, &mut model);
    db.close().expect("close");
    let before = native_dump(&path);

    let at = find_in_image(&path, &marker).expect("the marker is on the device");
    let altered = copy_of(&path, "altered");
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&altered)
            .expect("open copy");
        let mut b = [0u8; 1];
        f.read_exact_at(&mut b, at + 5).expect("read byte");
        b[0] ^= 0x40;
        f.write_all_at(&b, at + 5).expect("flip byte");
    }
    let after = native_dump(&altered);
    let d = diff(&before, &after);
    assert_eq!(d.len(), 1, "{d:#?}");
    assert!(d[0].contains("data differs"), "{d:#?}");

    // Metadata differences are seen too.
    let mut other = before.clone();
    let blob = other
        .blobs
        .values_mut()
        .find(|b| !b.xattrs.is_empty())
        .expect("a blob with xattrs");
    blob.xattrs[0].1.push(0);
    let d = diff(&before, &other);
    assert_eq!(d.len(), 1, "{d:#?}");
    assert!(d[0].contains("xattrs"), "{d:#?}");
    std::fs::remove_file(&altered).expect("remove copy");
}

#[cfg(not(feature = "spdk"))]
#[test]
fn spdk_interop() {
    println!("skipped: built without the `spdk` feature (cargo test --features spdk)");
}

#[cfg(feature = "spdk")]
mod with_spdk {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    use blobcask::blobstore::native::superblock::SuperBlock;
    use blobcask::blobstore::spdk::{SpdkBlobStore, SpdkConfig, SpdkEnvOpts, SpdkStart};
    use blobcask_tests::backend::{spdk_available, NativeFile, Rig};

    macro_rules! need_spdk {
        () => {
            if let Err(why) = spdk_available() {
                println!("skipped: {why}");
                return;
            }
        };
    }

    fn bdev_name(prefix: &str) -> String {
        static N: AtomicU32 = AtomicU32::new(0);
        format!("Interop{prefix}{}", N.fetch_add(1, Ordering::Relaxed))
    }

    /// Real SPDK's view of a copy of `image` (an aio bdev over it, deleted afterwards; its
    /// block size is the store's io unit, as SPDK's io unit is its bdev's block).
    fn spdk_dump(image: &Path) -> Image {
        let copy = copy_of(image, "spdk");
        let bdev = bdev_name("Dump");
        let bytes = std::fs::read(image).expect("read image");
        let sb = SuperBlock::decode(&bytes[..4096]).expect("super block");
        let cfg = SpdkConfig::aio(&bdev, &copy, sb.io_unit_size.max(512));
        let s = SpdkBlobStore::start_with(
            &SpdkEnvOpts::default(),
            &cfg,
            &bdev,
            SpdkStart::Load(LoadOpts::default()),
        )
        .unwrap_or_else(|e| panic!("SPDK load of {}: {e}", image.display()));
        let img = s.block_on(dump(&s));
        s.block_on(s.unload()).expect("SPDK unload");
        drop(s);
        SpdkBlobStore::load_config(&SpdkConfig::aio_delete(&bdev)).expect("aio delete");
        std::fs::remove_file(&copy).expect("remove copy");
        img
    }

    fn assert_same_under_both(image: &Path) -> Image {
        let native = native_dump(image);
        let spdk = spdk_dump(image);
        let d = diff(&native, &spdk);
        assert!(
            d.is_empty(),
            "{}: native vs SPDK, {} differences:\n{}",
            image.display(),
            d.len(),
            d.join("\n")
        );
        println!(
            "{}: {} blobs, {} io units identical under native and SPDK",
            image.file_name().unwrap_or_default().to_string_lossy(),
            native.blobs.len(),
            native.io_units()
        );
        native
    }

    #[test]
    fn native_clean_image_loads_identically_under_spdk() {
        need_spdk!();
        let path = tmp("clean.img");
        native_clean_image(&path, 1, false);
        let img = assert_same_under_both(&path);
        assert!(img.blobs.len() >= 4, "a store of {} blobs", img.blobs.len());
    }

    /// A store of 512-byte io units made by blobcask (format `--io-unit 512`): SPDK, on an
    /// aio bdev of 512-byte blocks, sees every blob and io unit as the native backend does.
    #[test]
    fn native_io512_image_loads_identically_under_spdk() {
        need_spdk!();
        let path = tmp("io512.img");
        native_clean_image_with(&path, 9, true, 512);
        let img = assert_same_under_both(&path);
        assert_eq!(img.io_unit, 512);
        assert!(img.blobs.len() >= 4, "a store of {} blobs", img.blobs.len());
    }

    /// Grow, both ways: a store on an image extended from 48 to 64 MiB, grown by SPDK
    /// (`spdk_bs_grow_live` on an aio bdev over the longer file) and by blobcask
    /// (`NativeBlobStore::grow`), each then unloaded: the two images are byte-identical, and
    /// SPDK loads blobcask's at the new size with every blob as the native backend sees it.
    #[test]
    fn grow_by_blobcask_is_byte_identical_to_spdks_grow_live() {
        need_spdk!();
        grow_both_ways(4096);
        grow_both_ways(512);
    }

    fn grow_both_ways(io_unit: u32) {
        const GROWN: u64 = 64 * MIB;
        let native = tmp(&format!("grow-native-{io_unit}.img"));
        native_clean_image_with(&native, 21, false, io_unit);
        let spdk = copy_of(&native, "spdk-grow");
        for p in [&native, &spdk] {
            std::fs::OpenOptions::new()
                .write(true)
                .open(p)
                .and_then(|f| f.set_len(GROWN))
                .expect("extend image");
        }
        let bdev = bdev_name("Grow");
        let s = SpdkBlobStore::start_with(
            &SpdkEnvOpts::default(),
            &SpdkConfig::aio(&bdev, &spdk, io_unit),
            &bdev,
            SpdkStart::Load(LoadOpts::default()),
        )
        .expect("SPDK load");
        assert_eq!(s.io_unit_size(), io_unit);
        let before = s.total_data_clusters();
        s.block_on(s.grow_live()).expect("spdk_bs_grow_live");
        let after = s.total_data_clusters();
        assert_eq!(after - before, (GROWN - IMAGE) / (64 << 10), "SPDK's grow");
        s.block_on(s.unload()).expect("SPDK unload");
        drop(s);
        SpdkBlobStore::load_config(&SpdkConfig::aio_delete(&bdev)).expect("aio delete");

        pollster::block_on(async {
            let dev = FileDevice::open(&native).expect("open image");
            let s = NativeBlobStore::load(dev, LoadOpts::default())
                .await
                .expect("native load");
            s.grow(GROWN).await.expect("native grow");
            assert_eq!(s.total_data_clusters(), after, "native grow");
            s.unload().await.expect("native unload");
        });
        let (a, b) = (
            std::fs::read(&spdk).expect("read"),
            std::fs::read(&native).expect("read"),
        );
        if let Some(d) = blobcask::blobstore::replay::first_difference(&a, &b) {
            panic!("{io_unit}-byte io units: SPDK's grow vs blobcask's: {d}");
        }
        let img = assert_same_under_both(&native);
        assert_eq!(img.total_clusters, after);
        std::fs::remove_file(&spdk).expect("remove copy");
    }

    #[test]
    fn native_merged_image_loads_identically_under_spdk() {
        need_spdk!();
        let path = tmp("merged.img");
        native_clean_image(&path, 2, true);
        assert_same_under_both(&path);
    }

    /// Killed mid-stream: the super block is dirty, so both sides rebuild their masks from
    /// the metadata the native backend had written, and must agree on every blob.
    #[test]
    fn native_image_dirty_after_a_kill_loads_identically_under_spdk() {
        need_spdk!();
        let path = tmp("dirty.img");
        let mut rig = Rig::new(NativeFile::new(&path, IMAGE).expect("image"));
        let db = rig
            .open(engine_opts(None, true, SyncPolicy::Never))
            .expect("open");
        let mut model = Model::new();
        workload(&db, 3, 1500, &mut model);
        db.merge().expect("merge");
        // Die somewhere inside the next writes.
        rig.switch().arm(40);
        let mut rng = ChaCha8Rng::seed_from_u64(4);
        for i in 0..2000u32 {
            let v = vec![rng.gen::<u8>(); 1 + (i as usize * 37) % 5000];
            if db.put(format!("late-{i}").as_bytes(), &v).is_err() {
                break;
            }
        }
        assert!(rig.switch().is_dead(), "the kill never came");
        rig.kill(db);
        let bytes = std::fs::read(rig.backend.path()).expect("read image");
        let sb = SuperBlock::decode(&bytes[..4096]).expect("super block");
        assert!(
            !sb.is_clean(),
            "a killed native store left a clean super block"
        );
        assert_same_under_both(&path);
    }

    /// Snapshots and clones made by blobcask load under SPDK: a thin blob A written, snapshot
    /// S1 of it, A written again (copy on first write, and a cluster past S1's data), snapshot
    /// S2 of A, A written once more, clone C of S1 written into and set read-only, and a thick
    /// read-only blob T. SPDK sees every blob with the same flags and xattrs, and its reads of
    /// every io unit — through A -> S2 -> S1 and C -> S1 — are the bytes blobcask reads, which
    /// are the model's. (The SPDK backend does not wrap parent queries: the chains are checked
    /// natively and through the reads.)
    #[test]
    fn native_snapshots_and_clones_load_identically_under_spdk() {
        use blobcask::blobstore::native::BlobParent;
        use blobcask::blobstore::{CreateOpts, InitOpts};

        need_spdk!();
        const UNIT: usize = 4096;
        const CLUSTER: usize = 64 << 10;
        const UNITS: u64 = (CLUSTER / UNIT) as u64;
        let path = tmp("snapshots.img");
        let mut rng = ChaCha8Rng::seed_from_u64(14);
        let mut model: HashMap<u64, Vec<u8>> = HashMap::new();
        let (a, s1, s2, c, t) = pollster::block_on(async {
            let dev = FileDevice::create(&path, IMAGE, 4096).expect("image");
            let s = NativeBlobStore::init(
                dev,
                InitOpts {
                    cluster_size: CLUSTER as u32,
                    ..InitOpts::default()
                },
            )
            .await
            .expect("native init");
            let ch = s.channel().expect("channel");
            // Writes `units` random io units at `unit` of blob `id`, in the model too.
            macro_rules! put {
                ($id:expr, $unit:expr, $units:expr) => {{
                    let (id, unit): (u64, u64) = ($id, $unit);
                    let data: Vec<u8> = (0..$units * UNIT).map(|_| rng.gen()).collect();
                    let m = model.get_mut(&id).expect("modelled blob");
                    m[unit as usize * UNIT..][..data.len()].copy_from_slice(&data);
                    let b = s.open(id).await.expect("open");
                    ch.write(&b, unit, &data).await.expect("write");
                    s.close(b).await.expect("close");
                }};
            }
            let xattr = |v: &str| vec![("name".to_owned(), v.as_bytes().to_vec())];
            let a = s
                .create(CreateOpts {
                    num_clusters: 6,
                    thin_provision: true,
                    xattrs: xattr("a"),
                    ..CreateOpts::default()
                })
                .await
                .expect("create A");
            model.insert(a, vec![0; 6 * CLUSTER]);
            put!(a, 0, 20); // cluster 0 and part of 1
            put!(a, 3 * UNITS + 5, 2);
            let s1 = s.create_snapshot(a, &xattr("s1")).await.expect("snap 1");
            model.insert(s1, model[&a].clone());
            put!(a, UNITS + 7, 1); // copy on first write
            put!(a, 4 * UNITS, 3); // S1 has zeroes here
            let s2 = s.create_snapshot(a, &[]).await.expect("snap 2");
            model.insert(s2, model[&a].clone());
            put!(a, 3 * UNITS + 6, 1); // a copy from two levels down
            put!(a, 5 * UNITS + 15, 1);
            let c = s.create_clone(s1, &xattr("c")).await.expect("clone");
            model.insert(c, model[&s1].clone());
            put!(c, 2, 1);
            put!(c, 2 * UNITS, UNITS as usize); // a whole cluster: no copy
            let t = s
                .create(CreateOpts {
                    num_clusters: 2,
                    ..CreateOpts::default()
                })
                .await
                .expect("create T");
            model.insert(t, vec![0; 2 * CLUSTER]);
            put!(t, 9, 12);
            for id in [c, t] {
                let b = s.open(id).await.expect("open");
                s.set_read_only(&b).await.expect("set read-only");
                s.close(b).await.expect("close");
            }
            for (id, parent) in [
                (a, BlobParent::Snapshot(s2)),
                (s2, BlobParent::Snapshot(s1)),
                (s1, BlobParent::None),
                (c, BlobParent::Snapshot(s1)),
                (t, BlobParent::None),
            ] {
                let b = s.open(id).await.expect("open");
                assert_eq!(b.parent(), parent, "parent of {id:#x}");
                s.close(b).await.expect("close");
            }
            drop(ch);
            s.unload().await.expect("native unload");
            (a, s1, s2, c, t)
        });

        let native = assert_same_under_both(&path);
        assert_eq!(native.blobs.len(), 5, "{:?}", native.blobs.keys());
        for (id, thin, ro, name) in [
            (a, true, false, Some("a")),
            (s1, true, true, Some("s1")),
            (s2, true, true, None),
            (c, true, true, Some("c")),
            (t, false, true, None),
        ] {
            let b = &native.blobs[&id];
            assert_eq!((b.thin, b.read_only), (thin, ro), "flags of {id:#x}");
            let want: Vec<(String, Vec<u8>)> = name
                .map(|n| ("name".to_owned(), n.as_bytes().to_vec()))
                .into_iter()
                .collect();
            assert_eq!(b.xattrs, want, "xattrs of {id:#x}");
            let units: Vec<[u8; 32]> = model[&id]
                .chunks(UNIT)
                .map(|u| <[u8; 32]>::from(Sha256::digest(u)))
                .collect();
            assert!(b.units == units, "bytes of {id:#x} differ from the model");
        }
        std::fs::remove_file(&path).expect("remove image");
    }

    /// A store the engine made on SPDK (aio bdev) and unloaded: reopened natively, it holds
    /// exactly the model, key by key.
    #[test]
    fn spdk_made_store_reopens_natively_with_every_key() {
        need_spdk!();
        let path = tmp("spdk-made.img");
        std::fs::File::create(&path)
            .and_then(|f| f.set_len(IMAGE))
            .expect("image");
        let bdev = bdev_name("Engine");
        let SpdkConfig::Json(json) = SpdkConfig::aio(&bdev, &path, 4096) else {
            unreachable!("aio config is JSON")
        };
        let mut model = Model::new();
        let db = Db::open_spdk(&json, &bdev, engine_opts(None, true, SyncPolicy::Never))
            .expect("open on SPDK");
        workload(&db, 5, 2000, &mut model);
        db.merge().expect("merge on SPDK");
        workload(&db, 6, 800, &mut model);
        assert_eq!(state(&db), model, "store on SPDK");
        db.close().expect("close on SPDK");
        // SPDK's descriptor closes before the native backend opens the file.
        SpdkBlobStore::load_config(&SpdkConfig::aio_delete(&bdev)).expect("aio delete");

        let sb = SuperBlock::decode(&std::fs::read(&path).expect("read image")[..4096])
            .expect("super block");
        assert!(sb.is_clean(), "SPDK's unload left a dirty super block");
        let img = assert_same_under_both(&path);
        assert!(img.blobs.len() >= 4, "a store of {} blobs", img.blobs.len());

        let db = Db::open(engine_opts(Some(&path), false, SyncPolicy::Never)).expect("native");
        for (k, v) in &model {
            assert_eq!(
                db.get(k).expect("get").as_ref(),
                Some(v),
                "{}",
                String::from_utf8_lossy(k)
            );
        }
        assert_eq!(state(&db), model, "every key, natively");
        db.close().expect("native close");
    }
}
