//! The SPDK backend (`--features spdk`): blobstore operations on a malloc bdev and on an aio
//! bdev over a file, and interoperability with the native backend in both directions — an
//! image formatted and filled by one backend opens under the other with every blob, xattr
//! and byte intact.
//!
//! Without the `spdk` feature, or when SPDK cannot start here (not linked, no memory, ...),
//! every test prints `skipped: <why>` and passes.

#[cfg(not(feature = "spdk"))]
#[test]
fn spdk_backend() {
    println!("skipped: built without the `spdk` feature (cargo test --features spdk)");
}

#[cfg(feature = "spdk")]
mod with_spdk {
    use std::future::Future;
    use std::path::{Path, PathBuf};
    use std::sync::{Arc, Mutex};
    use std::task::{Context, Poll, Wake, Waker};

    use blobcask::blobstore::native::NativeBlobStore;
    use blobcask::blobstore::spdk::{SpdkBlobStore, SpdkConfig, SpdkEnvOpts, SpdkStart};
    use blobcask::blobstore::{
        Blob, BlobIo, BlobStore, Bstype, CreateOpts, InitOpts, IoChannel, LoadOpts,
    };
    use blobcask::device::FileDevice;

    const MIB: u64 = 1 << 20;
    const UNIT: usize = 4096;

    /// Whether SPDK runs in this process; `Err` says why not.
    fn spdk() -> Result<(), String> {
        blobcask_tests::backend::spdk_available()
    }

    macro_rules! need_spdk {
        () => {
            if let Err(why) = spdk() {
                println!("skipped: {why}");
                return;
            }
        };
    }

    fn block_on<F: Future>(f: F) -> F::Output {
        struct Unpark(std::thread::Thread);
        impl Wake for Unpark {
            fn wake(self: Arc<Self>) {
                self.0.unpark();
            }
        }
        let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
        let mut cx = Context::from_waker(&waker);
        let mut f = std::pin::pin!(f);
        loop {
            if let Poll::Ready(v) = f.as_mut().poll(&mut cx) {
                return v;
            }
            std::thread::park();
        }
    }

    fn tmp(name: &str) -> PathBuf {
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("spdk_backend");
        std::fs::create_dir_all(&dir).expect("tmp dir");
        let p = dir.join(name);
        let _ = std::fs::remove_file(&p);
        p
    }

    fn sparse_file(path: &Path, size: u64) {
        let f = std::fs::File::create(path).expect("create image");
        f.set_len(size).expect("size image");
    }

    fn pattern(seed: u64, len: usize) -> Vec<u8> {
        (0..len)
            .map(|i| ((i as u64).wrapping_mul(31).wrapping_add(seed * 7919) % 251) as u8)
            .collect()
    }

    /// What `fill` wrote, to check against what a store reads back.
    #[derive(Debug, Clone)]
    struct Expect {
        id: u64,
        clusters: u64,
        thin: bool,
        xattrs: Vec<(String, Vec<u8>)>,
        /// (offset in io units, bytes)
        data: Vec<(u64, Vec<u8>)>,
        /// Io-unit ranges never written (must read as zeroes on thin blobs).
        zero: Vec<(u64, u64)>,
    }

    #[derive(Debug, Clone)]
    struct Model {
        blobs: Vec<Expect>,
        super_blob: u64,
        free_clusters: u64,
        total_clusters: u64,
    }

    /// Create a varied set of blobs through the `BlobStore` trait, then unload.
    async fn fill<S: BlobStore>(s: &S) -> Model {
        let upc = u64::from(s.cluster_size()) / UNIT as u64;
        let ch = s.channel().expect("channel");
        let mut blobs = Vec::new();

        // Thick, extent table, three clusters, a variety of xattrs.
        let xattrs = vec![
            ("name".to_string(), b"alpha".to_vec()),
            ("binary".to_string(), (0..=255u8).collect()),
            ("long".to_string(), pattern(3, 3000)),
            ("unicode.ключ".to_string(), "значение".as_bytes().to_vec()),
        ];
        let a = s
            .create(CreateOpts {
                num_clusters: 3,
                xattrs: xattrs.clone(),
                ..CreateOpts::default()
            })
            .await
            .expect("create A");
        let ab = s.open(a).await.expect("open A");
        let a0 = pattern(1, 16 * UNIT);
        let a1 = pattern(2, UNIT);
        ch.write(&ab, 0, &a0).await.expect("write A0");
        ch.write(&ab, 3 * upc - 1, &a1).await.expect("write A1");
        s.close(ab).await.expect("close A");
        blobs.push(Expect {
            id: a,
            clusters: 3,
            thin: false,
            xattrs,
            data: vec![(0, a0), (3 * upc - 1, a1)],
            zero: vec![],
        });

        // Thin, 16 clusters, two clusters written with one batch.
        let b = s
            .create(CreateOpts {
                num_clusters: 16,
                thin_provision: true,
                xattrs: vec![("name".into(), b"thin".to_vec())],
                ..CreateOpts::default()
            })
            .await
            .expect("create B");
        let bb = s.open(b).await.expect("open B");
        let b0 = pattern(4, 2 * UNIT);
        let b1 = pattern(5, 3 * UNIT);
        {
            let mut reqs = [
                BlobIo::Write {
                    blob: &bb,
                    offset: 5 * upc,
                    buf: &b0,
                },
                BlobIo::Write {
                    blob: &bb,
                    offset: 11 * upc + 7,
                    buf: &b1,
                },
            ];
            ch.submit(&mut reqs).await.expect("batch write B");
        }
        assert_eq!(bb.num_allocated_clusters(), 2);
        s.close(bb).await.expect("close B");
        blobs.push(Expect {
            id: b,
            clusters: 16,
            thin: true,
            xattrs: vec![("name".into(), b"thin".to_vec())],
            data: vec![(5 * upc, b0), (11 * upc + 7, b1)],
            zero: vec![(0, 5 * upc), (6 * upc, 5 * upc)],
        });

        // Thick with run-length extents, grown from 1 to 4 clusters, an xattr added,
        // removed and replaced after creation.
        let c = s
            .create(CreateOpts {
                num_clusters: 1,
                use_extent_table: false,
                ..CreateOpts::default()
            })
            .await
            .expect("create C");
        let cb = s.open(c).await.expect("open C");
        s.resize(&cb, 4).await.expect("resize C");
        s.set_xattr(&cb, "gone", b"x").await.expect("xattr");
        s.set_xattr(&cb, "kept", b"v1").await.expect("xattr");
        s.set_xattr(&cb, "kept", b"v2").await.expect("xattr");
        s.remove_xattr(&cb, "gone").await.expect("remove xattr");
        s.sync_md(&cb).await.expect("sync C");
        let c0 = pattern(6, 4 * UNIT);
        ch.write(&cb, 4 * upc - 4, &c0).await.expect("write C");
        s.close(cb).await.expect("close C");
        blobs.push(Expect {
            id: c,
            clusters: 4,
            thin: false,
            xattrs: vec![("kept".into(), b"v2".to_vec())],
            data: vec![(4 * upc - 4, c0)],
            zero: vec![],
        });

        // Empty blob with one xattr; and a blob created then deleted.
        let d = s
            .create(CreateOpts {
                xattrs: vec![("role".into(), b"empty".to_vec())],
                ..CreateOpts::default()
            })
            .await
            .expect("create D");
        blobs.push(Expect {
            id: d,
            clusters: 0,
            thin: false,
            xattrs: vec![("role".into(), b"empty".to_vec())],
            data: vec![],
            zero: vec![],
        });
        let e = s
            .create(CreateOpts {
                num_clusters: 2,
                ..CreateOpts::default()
            })
            .await
            .expect("create E");
        s.delete(e).await.expect("delete E");

        s.set_super(a).await.expect("set super");
        drop(ch);
        let model = Model {
            blobs,
            super_blob: a,
            free_clusters: s.free_clusters(),
            total_clusters: s.total_data_clusters(),
        };
        s.unload().await.expect("unload");
        model
    }

    /// Check every blob, xattr and byte of `m` through the `BlobStore` trait.
    async fn verify<S: BlobStore>(s: &S, m: &Model) {
        assert_eq!(s.super_blob(), Some(m.super_blob), "super blob");
        assert_eq!(s.total_data_clusters(), m.total_clusters, "total clusters");
        assert_eq!(s.free_clusters(), m.free_clusters, "free clusters");
        let mut ids = s.blob_ids().await.expect("blob ids");
        ids.sort_unstable();
        let mut want: Vec<u64> = m.blobs.iter().map(|b| b.id).collect();
        want.sort_unstable();
        assert_eq!(ids, want, "blob ids");
        let ch = s.channel().expect("channel");
        for e in &m.blobs {
            let b = s.open(e.id).await.expect("open");
            assert_eq!(b.num_clusters(), e.clusters, "clusters of {:#x}", e.id);
            assert_eq!(b.is_thin(), e.thin, "thin flag of {:#x}", e.id);
            let names = s.xattr_names(&b).await.expect("names");
            let want_names: Vec<String> = e.xattrs.iter().map(|(n, _)| n.clone()).collect();
            assert_eq!(names, want_names, "xattr names of {:#x}", e.id);
            for (n, v) in &e.xattrs {
                let got = s.get_xattr(&b, n).await.expect("get xattr");
                assert_eq!(got.as_deref(), Some(&v[..]), "xattr {n} of {:#x}", e.id);
            }
            for (off, data) in &e.data {
                let mut buf = vec![0u8; data.len()];
                ch.read(&b, *off, &mut buf).await.expect("read");
                assert!(buf == *data, "data of {:#x} at unit {off}", e.id);
            }
            for &(off, len) in &e.zero {
                let mut buf = vec![0xEEu8; len as usize * UNIT];
                ch.read(&b, off, &mut buf).await.expect("read zero range");
                assert!(
                    buf.iter().all(|&x| x == 0),
                    "zeroes of {:#x} at {off}",
                    e.id
                );
            }
            s.close(b).await.expect("close");
        }
    }

    /// Operations beyond `fill`/`verify`: errors, read-only, unmap and write-zeroes,
    /// flush, unload refusal while a blob is open.
    async fn edge_cases<S: BlobStore>(s: &S) {
        let ch = s.channel().expect("channel");
        let id = s
            .create(CreateOpts {
                num_clusters: 2,
                ..CreateOpts::default()
            })
            .await
            .expect("create");
        let b = s.open(id).await.expect("open");
        let b2 = s.open(id).await.expect("second open");
        assert_eq!(b2.id(), id);
        s.close(b2).await.expect("close second ref");
        let data = pattern(9, 8 * UNIT);
        ch.write(&b, 0, &data).await.expect("write");
        ch.flush().await.expect("flush");
        ch.write_zeroes(&b, 2, 2).await.expect("write zeroes");
        let mut buf = vec![0u8; 8 * UNIT];
        ch.read(&b, 0, &mut buf).await.expect("read");
        assert_eq!(&buf[..2 * UNIT], &data[..2 * UNIT]);
        assert!(buf[2 * UNIT..4 * UNIT].iter().all(|&x| x == 0));
        assert_eq!(&buf[4 * UNIT..], &data[4 * UNIT..]);
        ch.unmap(&b, 6, 1).await.expect("unmap");
        // Past the end of the blob: an error, not a panic.
        let units = b.num_io_units();
        let mut one = vec![0u8; UNIT];
        assert!(ch.read(&b, units, &mut one).await.is_err(), "read past end");
        // Misaligned buffer length.
        let mut odd = vec![0u8; 100];
        assert!(ch.read(&b, 0, &mut odd).await.is_err(), "partial io unit");
        assert!(s.get_xattr(&b, "absent").await.expect("get").is_none());
        assert!(s.remove_xattr(&b, "absent").await.is_err());
        assert!(s.unload().await.is_err(), "unload with an open blob");
        s.set_read_only(&b).await.expect("set read only");
        s.sync_md(&b).await.expect("sync");
        assert!(b.is_read_only());
        assert!(
            ch.write(&b, 0, &data).await.is_err(),
            "write to read-only blob"
        );
        s.close(b).await.expect("close");
        assert!(s.open(0x1_0000_0000 + 999_999).await.is_err(), "unknown id");
        s.delete(id).await.expect("delete");
    }

    fn init_opts() -> InitOpts {
        InitOpts {
            bstype: Bstype::new("BLOBCASKTEST").expect("bstype"),
            ..InitOpts::default()
        }
    }

    fn load_opts() -> LoadOpts {
        LoadOpts {
            bstype: Bstype::new("BLOBCASKTEST").expect("bstype"),
            force_recover: false,
        }
    }

    fn spdk_store(cfg: &SpdkConfig, bdev: &str, mode: SpdkStart) -> SpdkBlobStore {
        match SpdkBlobStore::start_with(&SpdkEnvOpts::default(), cfg, bdev, mode) {
            Ok(s) => s,
            Err(e) => panic!("SPDK store on {bdev}: {e}"),
        }
    }

    fn spdk_roundtrip(cfg: SpdkConfig, bdev: &str) {
        let s = spdk_store(&cfg, bdev, SpdkStart::Init(init_opts()));
        assert_eq!(s.io_unit_size(), 4096);
        assert_eq!(s.bstype().as_text(), "BLOBCASKTEST");
        s.block_on(edge_cases(&s));
        let m = s.block_on(fill(&s));
        drop(s);
        let s = spdk_store(&cfg, bdev, SpdkStart::Load(load_opts()));
        s.block_on(verify(&s, &m));
        // A wrong tag is refused.
        s.block_on(s.unload()).expect("unload");
        drop(s);
        let other = LoadOpts {
            bstype: Bstype::new("SOMEONEELSE").expect("bstype"),
            force_recover: false,
        };
        let r =
            SpdkBlobStore::start_with(&SpdkEnvOpts::default(), &cfg, bdev, SpdkStart::Load(other));
        assert!(r.is_err(), "load with a foreign bstype must fail");
    }

    #[test]
    fn malloc_bdev_blobstore_ops() {
        need_spdk!();
        spdk_roundtrip(
            SpdkConfig::malloc("TestMalloc0", 64 * MIB, 4096),
            "TestMalloc0",
        );
        SpdkBlobStore::load_config(&SpdkConfig::malloc_delete("TestMalloc0"))
            .expect("malloc delete");
        println!("SPDK {:?}: malloc bdev ok", SpdkBlobStore::spdk_version());
    }

    #[test]
    fn aio_bdev_blobstore_ops() {
        need_spdk!();
        let path = tmp("aio-ops.img");
        sparse_file(&path, 64 * MIB);
        spdk_roundtrip(SpdkConfig::aio("TestAio0", &path, 4096), "TestAio0");
        SpdkBlobStore::load_config(&SpdkConfig::aio_delete("TestAio0")).expect("aio delete");
    }

    #[test]
    fn uring_bdev_blobstore_ops() {
        need_spdk!();
        let path = tmp("uring-ops.img");
        sparse_file(&path, 64 * MIB);
        spdk_roundtrip(SpdkConfig::uring("TestUring0", &path, 4096), "TestUring0");
        SpdkBlobStore::load_config(&SpdkConfig::uring_delete("TestUring0")).expect("uring delete");
    }

    #[test]
    fn native_image_opens_under_spdk() {
        need_spdk!();
        let path = tmp("native-to-spdk.img");
        let dev = FileDevice::create(&path, 64 * MIB, 4096).expect("native image");
        let m = block_on(async {
            let s = NativeBlobStore::init(dev, init_opts())
                .await
                .expect("native init");
            fill(&s).await
        });
        let cfg = SpdkConfig::aio("NativeToSpdk", &path, 4096);
        let s = spdk_store(&cfg, "NativeToSpdk", SpdkStart::Load(load_opts()));
        s.block_on(verify(&s, &m));
        s.block_on(s.unload()).expect("unload");
        drop(s);
        SpdkBlobStore::load_config(&SpdkConfig::aio_delete("NativeToSpdk")).expect("aio delete");
    }

    #[test]
    fn spdk_image_opens_under_native() {
        need_spdk!();
        let path = tmp("spdk-to-native.img");
        sparse_file(&path, 64 * MIB);
        let cfg = SpdkConfig::aio("SpdkToNative", &path, 4096);
        let s = spdk_store(&cfg, "SpdkToNative", SpdkStart::Init(init_opts()));
        let m = s.block_on(fill(&s));
        drop(s);
        // Close SPDK's file descriptor before the native backend opens the image.
        SpdkBlobStore::load_config(&SpdkConfig::aio_delete("SpdkToNative")).expect("aio delete");
        let dev = FileDevice::open(&path).expect("open image");
        block_on(async {
            let s = NativeBlobStore::load(dev, load_opts())
                .await
                .expect("native load");
            verify(&s, &m).await;
            s.unload().await.expect("native unload");
        });
    }

    /// Every golden image made by real SPDK loads through this backend too, with the blob ids
    /// and xattrs its manifest lists (the data reads are covered by the native fixture
    /// tests against the same manifests).
    #[test]
    fn golden_fixtures_load_under_spdk() {
        need_spdk!();
        let fixtures = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/spdk");
        static SERIAL: Mutex<()> = Mutex::new(());
        let _g = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
        for name in [
            "empty-clean",
            "basic",
            "thin-extent",
            "dirty",
            "v2509",
            "io512",
        ] {
            let img = fixtures.join(format!("{name}.img"));
            let Ok(bytes) = std::fs::read(&img) else {
                println!("skipped fixture {name}: {} not readable", img.display());
                continue;
            };
            let manifest: serde_json::Value = serde_json::from_str(
                &std::fs::read_to_string(fixtures.join(format!("{name}.json"))).expect("json"),
            )
            .expect("manifest");
            let path = tmp(&format!("golden-{name}.img"));
            std::fs::write(&path, &bytes).expect("copy image");
            let bdev = format!("Golden_{}", name.replace('-', "_"));
            let block = manifest["spdk"]["aio_block_size"].as_u64().unwrap_or(4096) as u32;
            let cfg = SpdkConfig::aio(&bdev, &path, block);
            let s = spdk_store(&cfg, &bdev, SpdkStart::Load(LoadOpts::default()));
            s.block_on(async {
                let mut ids = s.blob_ids().await.expect("ids");
                ids.sort_unstable();
                let mut want: Vec<u64> = manifest["blobs"]
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .filter_map(|b| {
                                b["id"].as_u64().or_else(|| b["id"].as_str()?.parse().ok())
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                want.sort_unstable();
                assert_eq!(ids, want, "{name}: blob ids");
                for b in manifest["blobs"].as_array().into_iter().flatten() {
                    let id = b["id"]
                        .as_u64()
                        .or_else(|| b["id"].as_str()?.parse().ok())
                        .expect("id");
                    let blob = s.open(id).await.expect("open");
                    let want_clusters = b["num_clusters"].as_u64().expect("num_clusters");
                    assert_eq!(
                        blob.num_clusters(),
                        want_clusters,
                        "{name}: {id:#x} clusters"
                    );
                    let names = s.xattr_names(&blob).await.expect("names");
                    let want_names: Vec<String> = b["xattrs"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(|x| x["name"].as_str().map(str::to_owned))
                        .collect();
                    assert_eq!(names, want_names, "{name}: {id:#x} xattr names");
                    s.close(blob).await.expect("close");
                }
                s.unload().await.expect("unload");
            });
            drop(s);
            SpdkBlobStore::load_config(&SpdkConfig::aio_delete(&bdev)).expect("aio delete");
        }
    }

    fn db_opts(path: Option<&Path>, create: bool) -> blobcask::Options {
        blobcask::Options {
            device: match path {
                Some(p) => blobcask::DeviceSpec::Path(p.to_path_buf()),
                None => blobcask::DeviceSpec::Memory { size: 0 },
            },
            create,
            device_size: 128 * MIB,
            shards: 2,
            max_blob_size: 4 * MIB,
            max_value_size: 64 * 1024,
            sync: blobcask::SyncPolicy::Never,
            bstype: "BLOBCASK".into(),
            ..blobcask::Options::default()
        }
    }

    fn key(i: u32) -> Vec<u8> {
        format!("key-{i:06}").into_bytes()
    }

    fn value(i: u32, round: u32) -> Vec<u8> {
        let mut v = format!("value-{i}-{round}-").into_bytes();
        v.extend(pattern(u64::from(i), 50 + (i as usize % 300)));
        v
    }

    /// The key-value layer across backends: a store written by the native engine opens on
    /// an SPDK aio bdev over the same image with every key readable, is updated there, and
    /// reopens natively with the SPDK-made changes.
    #[test]
    fn db_native_to_spdk_and_back() {
        need_spdk!();
        let path = tmp("db-interop.img");
        let n = 3000u32;
        let db = blobcask::Db::open(db_opts(Some(&path), true)).expect("native open");
        for i in 0..n {
            db.put(&key(i), &value(i, 0)).expect("put");
        }
        for i in (0..n).step_by(7) {
            db.delete(&key(i)).expect("delete");
        }
        db.close().expect("native close");

        let cfg = SpdkConfig::aio("DbInterop", &path, 4096);
        let cfg_json = match &cfg {
            SpdkConfig::Json(j) => j.clone(),
            SpdkConfig::File(p) => p.display().to_string(),
        };
        let db = blobcask::Db::open_spdk(&cfg_json, "DbInterop", db_opts(None, false))
            .expect("spdk open");
        for i in 0..n {
            let want = (i % 7 != 0).then(|| value(i, 0));
            assert_eq!(db.get(&key(i)).expect("get"), want, "key {i} under SPDK");
        }
        for i in (0..n).step_by(5) {
            db.put(&key(i), &value(i, 1)).expect("spdk put");
        }
        db.close().expect("spdk close");
        SpdkBlobStore::load_config(&SpdkConfig::aio_delete("DbInterop")).expect("aio delete");

        let db = blobcask::Db::open(db_opts(Some(&path), false)).expect("native reopen");
        for i in 0..n {
            let want = if i % 5 == 0 {
                Some(value(i, 1))
            } else if i % 7 == 0 {
                None
            } else {
                Some(value(i, 0))
            };
            assert_eq!(
                db.get(&key(i)).expect("get"),
                want,
                "key {i} back on native"
            );
        }
        db.close().expect("close");
    }

    const KILL_CHILD_ENV: &str = "BLOBCASK_SPDK_KILL_CHILD";

    fn kill_opts(create: bool) -> blobcask::Options {
        blobcask::Options {
            sync: blobcask::SyncPolicy::Always,
            cluster_size: 64 << 10,
            max_blob_size: 256 << 10,
            max_value_size: 16 << 10,
            ..db_opts(None, create)
        }
    }

    /// A killed SPDK process leaves its DPDK runtime directory behind.
    fn ffi_shim_cleanup(pid: u32) {
        let d = PathBuf::from(format!("/var/run/dpdk/spdk_pid{pid}"));
        if d.is_dir() {
            let _ = std::fs::remove_dir_all(d);
        }
    }

    fn kill_key(round: u32, i: u32) -> Vec<u8> {
        format!("r{round}-k{i:07}").into_bytes()
    }

    /// The child of `sigkill_while_writing_on_aio_bdev`: runs only when re-executed.
    #[test]
    fn spdk_kill_child() {
        use std::io::Write;
        let Ok(spec) = std::env::var(KILL_CHILD_ENV) else {
            return;
        };
        let (path, round) = spec.split_once('|').expect("path|round");
        let round: u32 = round.parse().expect("round");
        let cfg = SpdkConfig::aio("KillChild", Path::new(path), 4096);
        let SpdkConfig::Json(json) = cfg else {
            unreachable!()
        };
        let db = blobcask::Db::open_spdk(&json, "KillChild", kill_opts(false)).expect("child open");
        let out = std::io::stdout();
        for i in 0.. {
            db.put(&kill_key(round, i), &value(i, round))
                .expect("child put");
            let mut o = out.lock();
            writeln!(o, "ack {i}").expect("stdout");
            o.flush().expect("stdout");
        }
    }

    /// Crash recovery on SPDK: a child process writes through the SPDK backend (aio bdev,
    /// `SyncPolicy::Always`) and is SIGKILLed mid-stream; the store then loads dirty (SPDK
    /// recovers the masks) and every acknowledged put is there with its value — under SPDK
    /// and under the native backend.
    #[test]
    fn sigkill_while_writing_on_aio_bdev() {
        use std::io::{BufRead, BufReader};
        use std::process::{Command, Stdio};
        use std::time::{Duration, Instant};
        if std::env::var(KILL_CHILD_ENV).is_ok() {
            return;
        }
        need_spdk!();
        let path = tmp("kill.img");
        blobcask::Db::open(blobcask::Options {
            device: blobcask::DeviceSpec::Path(path.clone()),
            device_size: 32 * MIB,
            ..kill_opts(true)
        })
        .expect("format")
        .close()
        .expect("close");
        let exe = std::env::current_exe().expect("exe");
        let mut acked: Vec<(u32, u32)> = Vec::new();
        for round in 0..3u32 {
            let mut child = Command::new(&exe)
                .args([
                    "--exact",
                    "with_spdk::spdk_kill_child",
                    "--nocapture",
                    "--test-threads=1",
                ])
                .env(KILL_CHILD_ENV, format!("{}|{round}", path.display()))
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .expect("spawn child");
            let stdout = child.stdout.take().expect("stdout");
            let kill_after = Duration::from_millis(200 + 250 * u64::from(round));
            let (tx, rx) = std::sync::mpsc::channel();
            let reader = std::thread::spawn(move || {
                for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                    if let Some(i) = line
                        .strip_prefix("ack ")
                        .and_then(|v| v.parse::<u32>().ok())
                    {
                        if tx.send(i).is_err() {
                            break;
                        }
                    }
                }
            });
            let mut first: Option<Instant> = None;
            let mut n = 0u32;
            let deadline = Instant::now() + Duration::from_secs(60);
            while Instant::now() < deadline {
                match rx.recv_timeout(Duration::from_millis(20)) {
                    Ok(i) => {
                        acked.push((round, i));
                        n += 1;
                        first.get_or_insert_with(Instant::now);
                    }
                    Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
                    Err(_) => break,
                }
                if first.is_some_and(|t| t.elapsed() >= kill_after) {
                    break;
                }
            }
            child.kill().expect("SIGKILL");
            let _ = child.wait();
            ffi_shim_cleanup(child.id());
            // Acks already in the pipe were acknowledged before the kill.
            while let Ok(i) = rx.recv_timeout(Duration::from_millis(200)) {
                acked.push((round, i));
                n += 1;
            }
            let _ = reader.join();
            assert!(n > 0, "round {round}: the child acknowledged nothing");
        }

        let cfg = SpdkConfig::aio("KillCheck", &path, 4096);
        let SpdkConfig::Json(json) = cfg else {
            unreachable!()
        };
        let db = blobcask::Db::open_spdk(&json, "KillCheck", kill_opts(false))
            .expect("open after crash under SPDK");
        for &(r, i) in &acked {
            assert_eq!(
                db.get(&kill_key(r, i)).expect("get"),
                Some(value(i, r)),
                "acknowledged put r{r} i{i} under SPDK"
            );
        }
        db.close().expect("close");
        SpdkBlobStore::load_config(&SpdkConfig::aio_delete("KillCheck")).expect("aio delete");
        let db = blobcask::Db::open(blobcask::Options {
            device: blobcask::DeviceSpec::Path(path.clone()),
            ..kill_opts(false)
        })
        .expect("native open after crash");
        for &(r, i) in &acked {
            assert_eq!(db.get(&kill_key(r, i)).expect("get"), Some(value(i, r)));
        }
        db.close().expect("close");
        println!(
            "{} acknowledged puts over 3 SIGKILLed SPDK processes survived",
            acked.len()
        );
    }

    /// Several OS threads, each with its own channel and blob, doing I/O and metadata calls
    /// at once (each drives the SPDK thread it submitted to; the reactor polls the rest).
    #[test]
    fn concurrent_channels_on_malloc_bdev() {
        need_spdk!();
        let cfg = SpdkConfig::malloc("Concurrent0", 128 * MIB, 4096);
        let s = Arc::new(spdk_store(
            &cfg,
            "Concurrent0",
            SpdkStart::Init(init_opts()),
        ));
        let workers: Vec<_> = (0..4u64)
            .map(|w| {
                let s = Arc::clone(&s);
                std::thread::spawn(move || {
                    s.block_on(async {
                        let id = s
                            .create(CreateOpts {
                                num_clusters: 1,
                                thin_provision: w % 2 == 1,
                                ..CreateOpts::default()
                            })
                            .await
                            .expect("create");
                        let b = s.open(id).await.expect("open");
                        let ch = s.channel().expect("channel");
                        for round in 0..50u64 {
                            if round % 10 == 9 {
                                let n = b.num_clusters() + 1;
                                s.resize(&b, n).await.expect("resize");
                                s.sync_md(&b).await.expect("sync");
                            }
                            let data = pattern(w * 1000 + round, 2 * UNIT);
                            let off = (round * 2) % 250;
                            ch.write(&b, off, &data).await.expect("write");
                            let mut back = vec![0u8; 2 * UNIT];
                            ch.read(&b, off, &mut back).await.expect("read");
                            assert!(back == data, "worker {w} round {round}");
                        }
                        s.close(b).await.expect("close");
                        s.delete(id).await.expect("delete");
                    });
                })
            })
            .collect();
        for w in workers {
            w.join().expect("worker");
        }
        s.block_on(s.unload()).expect("unload");
        drop(s);
        SpdkBlobStore::load_config(&SpdkConfig::malloc_delete("Concurrent0"))
            .expect("malloc delete");
    }

    /// A store on a malloc bdev: create, fill, close, reopen in the same process.
    #[test]
    fn db_on_malloc_bdev() {
        need_spdk!();
        let cfg = SpdkConfig::malloc("DbMalloc0", 128 * MIB, 4096);
        let SpdkConfig::Json(json) = cfg else {
            unreachable!("malloc config is JSON")
        };
        let db = blobcask::Db::open_spdk(&json, "DbMalloc0", db_opts(None, true)).expect("open");
        for i in 0..2000 {
            db.put(&key(i), &value(i, 0)).expect("put");
        }
        db.sync().expect("sync");
        db.close().expect("close");
        let db = blobcask::Db::open_spdk(&json, "DbMalloc0", db_opts(None, false)).expect("reopen");
        for i in 0..2000 {
            assert_eq!(db.get(&key(i)).expect("get"), Some(value(i, 0)), "key {i}");
        }
        db.close().expect("close");
        SpdkBlobStore::load_config(&SpdkConfig::malloc_delete("DbMalloc0")).expect("malloc delete");
    }

    /// The read path on SPDK, where each reading OS thread drives the SPDK thread of the
    /// pooled channel it holds: several readers at once beside a writer, reader threads that
    /// come and go, and a close while readers are still reading (their reads end in an error,
    /// never a hang or a wrong value). The cache is off, so the reads go to the bdev.
    #[test]
    fn db_readers_on_malloc_bdev() {
        need_spdk!();
        const N: u32 = 3000;
        let cfg = SpdkConfig::malloc("DbReaders0", 128 * MIB, 4096);
        let SpdkConfig::Json(json) = cfg else {
            unreachable!("malloc config is JSON")
        };
        let mut o = db_opts(None, true);
        o.cache_bytes = 0;
        let db = blobcask::Db::open_spdk(&json, "DbReaders0", o).expect("open");
        for i in 0..N {
            db.put(&key(i), &value(i, 0)).expect("put");
        }
        db.sync().expect("sync");
        let ok = |i: u32, v: &Option<Vec<u8>>| {
            v.as_deref() == Some(&value(i, 0)[..]) || v.as_deref() == Some(&value(i, 1)[..])
        };

        // Four readers (get and multi_get) at once, a writer beside them.
        std::thread::scope(|sc| {
            let writer = sc.spawn(|| {
                for i in (0..N).step_by(3) {
                    db.put(&key(i), &value(i, 1)).expect("overwrite");
                }
            });
            let readers: Vec<_> = (0..4u32)
                .map(|t| {
                    let db = &db;
                    sc.spawn(move || {
                        for r in 0..400u32 {
                            let i = (r * 7919 + t * 104_729) % N;
                            let v = db.get(&key(i)).expect("get");
                            assert!(ok(i, &v), "reader {t}: key {i}");
                            if r % 8 == 0 {
                                let ks: Vec<u32> = (0..24).map(|j| (i + j * 37) % N).collect();
                                let keys: Vec<Vec<u8>> = ks.iter().map(|&k| key(k)).collect();
                                let vals = db.multi_get(&keys).expect("multi_get");
                                for (k, v) in ks.iter().zip(&vals) {
                                    assert!(ok(*k, v), "reader {t}: multi_get key {k}");
                                }
                            }
                        }
                    })
                })
                .collect();
            for r in readers {
                r.join().expect("reader");
            }
            writer.join().expect("writer");
        });

        // Short-lived reader threads: each takes a channel, reads and exits.
        for t in 0..16u32 {
            let db = db.clone();
            std::thread::spawn(move || {
                for r in 0..25u32 {
                    let i = (t * 131 + r * 17) % N;
                    let v = db.get(&key(i)).expect("get");
                    assert!(v.is_some(), "short reader {t}: key {i}");
                }
            })
            .join()
            .expect("short-lived reader");
        }
        for i in 0..N {
            let v = db.get(&key(i)).expect("get after the readers left");
            assert!(ok(i, &v), "key {i}");
        }

        // Close while readers read.
        let started = Arc::new(std::sync::Barrier::new(4));
        let readers: Vec<_> = (0..3u32)
            .map(|t| {
                let db = db.clone();
                let started = Arc::clone(&started);
                std::thread::spawn(move || {
                    started.wait();
                    let mut n = 0u32;
                    loop {
                        let i = (n * 7 + t * 1000) % N;
                        match db.get(&key(i)) {
                            Ok(v) => assert!(ok(i, &v), "reader {t}: key {i} during close"),
                            Err(_) => break,
                        }
                        n += 1;
                    }
                    assert!(
                        matches!(db.get(&key(0)), Err(blobcask::Error::Closed)),
                        "reader {t}: a read after close"
                    );
                    n
                })
            })
            .collect();
        started.wait();
        std::thread::sleep(std::time::Duration::from_millis(30));
        db.close().expect("close while readers read");
        for r in readers {
            r.join().expect("reader during close");
        }

        // The store closed cleanly: it reopens with every key.
        let db =
            blobcask::Db::open_spdk(&json, "DbReaders0", db_opts(None, false)).expect("reopen");
        for i in 0..N {
            let v = db.get(&key(i)).expect("get after reopen");
            assert!(ok(i, &v), "key {i} after reopen");
        }
        db.close().expect("close");
        SpdkBlobStore::load_config(&SpdkConfig::malloc_delete("DbReaders0"))
            .expect("malloc delete");
    }

    /// Blob-level throughput through the `BlobStore` trait on both backends over the same
    /// image file: 128 KiB sequential writes and 4 KiB random reads, in batches of 32
    /// (`IoChannel::submit`, so queue depth 32 per batch). Run with
    /// `cargo test -p blobcask-tests --features spdk --release --test spdk_backend -- --ignored --nocapture`.
    #[test]
    #[ignore = "benchmark"]
    fn blob_io_throughput_native_vs_spdk() {
        need_spdk!();
        let size: u64 = std::env::var("BLOBCASK_BENCH_MIB")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(1024)
            * MIB;
        let path = tmp("bench.img");
        let dev = FileDevice::create(&path, size, 4096).expect("image");
        let native = block_on(async {
            let s = NativeBlobStore::init(dev, InitOpts::default())
                .await
                .expect("init");
            let r = bench(&s).await;
            s.unload().await.expect("unload");
            r
        });
        println!("native (io_uring, O_DIRECT): {native}");
        let cfg = SpdkConfig::aio("BenchAio", &path, 4096);
        let s = spdk_store(&cfg, "BenchAio", SpdkStart::Load(LoadOpts::default()));
        let spdk = s.block_on(bench(&s));
        s.block_on(s.unload()).expect("unload");
        drop(s);
        SpdkBlobStore::load_config(&SpdkConfig::aio_delete("BenchAio")).expect("aio delete");
        println!("spdk   (aio bdev, same file): {spdk}");
    }

    async fn bench<S: BlobStore>(s: &S) -> String {
        use std::time::{Duration, Instant};
        const QD: usize = 32;
        let cluster = u64::from(s.cluster_size());
        let clusters = s.free_clusters() * 3 / 4;
        let id = s
            .create(CreateOpts {
                num_clusters: clusters,
                ..CreateOpts::default()
            })
            .await
            .expect("create");
        let b = s.open(id).await.expect("open");
        let ch = s.channel().expect("channel");
        let units = clusters * cluster / UNIT as u64;

        // Sequential 128 KiB writes over the whole blob.
        let chunk = 128 * 1024;
        let chunk_units = (chunk / UNIT) as u64;
        let bufs: Vec<Vec<u8>> = (0..QD).map(|i| pattern(i as u64, chunk)).collect();
        let t = Instant::now();
        let mut off = 0;
        while off + chunk_units * QD as u64 <= units {
            let mut reqs: Vec<BlobIo<'_, S::Blob>> = bufs
                .iter()
                .enumerate()
                .map(|(i, buf)| BlobIo::Write {
                    blob: &b,
                    offset: off + i as u64 * chunk_units,
                    buf,
                })
                .collect();
            ch.submit(&mut reqs).await.expect("write batch");
            off += chunk_units * QD as u64;
        }
        ch.flush().await.expect("flush");
        let wsecs = t.elapsed().as_secs_f64();
        let wmb = (off * UNIT as u64) as f64 / wsecs / 1e6;

        // Random 4 KiB reads for about three seconds.
        let mut rbufs: Vec<Vec<u8>> = (0..QD).map(|_| vec![0u8; UNIT]).collect();
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        let t = Instant::now();
        let mut reads = 0u64;
        while t.elapsed() < Duration::from_secs(3) {
            let mut reqs: Vec<BlobIo<'_, S::Blob>> = rbufs
                .iter_mut()
                .map(|buf| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    BlobIo::Read {
                        blob: &b,
                        offset: x % off.max(1),
                        buf,
                    }
                })
                .collect();
            ch.submit(&mut reqs).await.expect("read batch");
            reads += QD as u64;
        }
        let iops = reads as f64 / t.elapsed().as_secs_f64();
        s.close(b).await.expect("close");
        drop(ch);
        s.delete(id).await.expect("delete");
        format!(
            "seq write 128 KiB x{QD}: {wmb:.0} MB/s ({} MiB in {wsecs:.2} s); \
             rand read 4 KiB x{QD}: {:.0}k IOPS",
            off * UNIT as u64 / MIB,
            iops / 1e3
        )
    }
}
