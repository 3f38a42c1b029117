//! The backends the generic engine suites ([`crate::suite`]) run on, and [`Rig`], which
//! opens a `Db` on one behind a [`KillSwitch`] and kills it.
//!
//! - [`NativeMem`]: the native blobstore on a memory device (runs everywhere, so CI checks
//!   that every suite can fail).
//! - `SpdkMalloc` and `SpdkAio` (feature `spdk`): real SPDK on a malloc bdev and on an aio
//!   bdev over a file. A kill abandons the SPDK blobstore without unloading it and the next
//!   open loads the same bdev in a new blobstore instance, so SPDK's dirty-load recovery runs
//!   under the engine's own recovery.

use std::sync::Arc;

use blobcask::blobstore::BlobStore;
use blobcask::device::{AnyDevice, IoPath, MemoryDevice};
use blobcask::{Db, Options, Result};

use crate::killswitch::{KillSwitch, Switch};

/// Where a suite's store lives. One backend is one device; `load` may be called again after
/// a kill or a close.
pub trait Backend: Send + Sync + 'static {
    type Store: BlobStore;
    fn name(&self) -> String;
    fn io_path(&self) -> IoPath;
    /// Load the blobstore on the device, formatting it if it holds none and `opts.create`.
    fn load(&self, opts: &Options) -> Result<Self::Store>;
    /// Forget the store last loaded, without unloading it (its switch has been killed).
    fn forget(&self);
}

/// A `Db` on a backend, with the kill switch of the store it runs on.
pub type RigDb<B> = Db<KillSwitch<<B as Backend>::Store>>;

/// Opens stores on one backend and kills them.
pub struct Rig<B: Backend> {
    pub backend: B,
    switch: Arc<Switch>,
}

impl<B: Backend> Rig<B> {
    pub fn new(backend: B) -> Self {
        Rig {
            backend,
            switch: Switch::new(),
        }
    }

    /// Open the store on the backend's device behind a fresh switch.
    pub fn open(&mut self, opts: Options) -> Result<RigDb<B>> {
        self.open_armed(opts, None)
    }

    /// Open with the switch armed to kill at the `n`-th device write from the start of
    /// recovery (so the kill may land inside `Db::open`).
    pub fn open_armed(&mut self, opts: Options, n: Option<u64>) -> Result<RigDb<B>> {
        let store = self.backend.load(&opts)?;
        self.switch = Switch::new();
        if let Some(n) = n {
            self.switch.arm(n);
        }
        let store = KillSwitch::new(store, Arc::clone(&self.switch));
        Db::open_on(store, opts, self.backend.io_path())
    }

    /// The switch of the store opened last.
    pub fn switch(&self) -> &Arc<Switch> {
        &self.switch
    }

    /// kill -9 now: nothing more reaches the device, and `db` goes away without a clean
    /// close (its close fails; that must neither hang nor panic).
    pub fn kill(&mut self, db: RigDb<B>) {
        self.kill_store();
        drop(db);
    }

    /// Kill the store opened last, whatever became of its `Db` (an open that failed).
    pub fn kill_store(&mut self) {
        self.switch.kill();
        self.backend.forget();
    }

    /// Kill, then open again with `opts`.
    pub fn kill_and_reopen(&mut self, db: RigDb<B>, opts: Options) -> RigDb<B> {
        let name = self.backend.name();
        self.kill(db);
        self.open(opts)
            .unwrap_or_else(|e| panic!("{name}: reopen after kill: {e}"))
    }
}

/// The native blobstore on a memory device.
pub struct NativeMem {
    dev: Arc<MemoryDevice>,
}

impl NativeMem {
    pub fn new(size: u64) -> Self {
        NativeMem {
            dev: Arc::new(MemoryDevice::new(size, 4096).expect("memory device")),
        }
    }

    /// A device of 512-byte blocks holding an empty blobstore of 512-byte io units (as SPDK
    /// makes on such a device; 64 KiB clusters, what the suites use), so the engine runs on
    /// 512-byte io units.
    pub fn io512(size: u64) -> Self {
        use blobcask::blobstore::native::NativeBlobStore;
        use blobcask::blobstore::{BlobStore, Bstype, InitOpts};
        let dev = Arc::new(MemoryDevice::new(size, 512).expect("memory device"));
        let s = pollster::block_on(NativeBlobStore::init(
            Arc::clone(&dev),
            InitOpts {
                cluster_size: 64 << 10,
                bstype: Bstype::new("BLOBCASK").expect("bstype"),
                io_unit_size: Some(512),
                ..InitOpts::default()
            },
        ))
        .expect("init a 512-byte io unit store");
        assert_eq!(s.io_unit_size(), 512);
        pollster::block_on(s.unload()).expect("unload");
        drop(s);
        NativeMem { dev }
    }
}

impl Backend for NativeMem {
    type Store = blobcask::blobstore::native::NativeBlobStore<AnyDevice>;

    fn name(&self) -> String {
        "native/memory".into()
    }
    fn io_path(&self) -> IoPath {
        IoPath::Memory
    }
    fn load(&self, opts: &Options) -> Result<Self::Store> {
        blobcask::native_store(AnyDevice::from(Arc::clone(&self.dev)), false, opts)
    }
    fn forget(&self) {
        // The native store holds nothing it would write on drop; the switch stops the rest.
    }
}

/// Set (to anything but `0`) where SPDK was built, as CI does: an SPDK suite that cannot
/// start SPDK then fails instead of printing `skipped`.
pub const REQUIRE_SPDK_ENV: &str = "BLOBCASK_REQUIRE_SPDK";

/// Passes on why SPDK is unavailable, as the reason of a skip; panics instead when
/// [`REQUIRE_SPDK_ENV`] is set.
pub fn skip_reason(why: String) -> String {
    let required = std::env::var_os(REQUIRE_SPDK_ENV).is_some_and(|v| !v.is_empty() && v != "0");
    assert!(!required, "{REQUIRE_SPDK_ENV} is set, yet {why}");
    why
}

/// The native blobstore on an image file (what the SPDK interop tests hand to SPDK).
pub struct NativeFile {
    path: std::path::PathBuf,
}

impl NativeFile {
    /// A sparse, zeroed image of `size` bytes at `path` (replacing any file there).
    pub fn new(path: impl Into<std::path::PathBuf>, size: u64) -> std::io::Result<Self> {
        let path = path.into();
        std::fs::File::create(&path)?.set_len(size)?;
        Ok(NativeFile { path })
    }

    pub fn path(&self) -> &std::path::Path {
        &self.path
    }
}

impl Backend for NativeFile {
    type Store = blobcask::blobstore::native::NativeBlobStore<AnyDevice>;

    fn name(&self) -> String {
        format!("native/file {}", self.path.display())
    }
    fn io_path(&self) -> IoPath {
        IoPath::Pread
    }
    fn load(&self, opts: &Options) -> Result<Self::Store> {
        let dev = blobcask::device::FileDevice::open(&self.path)?;
        blobcask::native_store(AnyDevice::from(dev), false, opts)
    }
    fn forget(&self) {
        // As for memory: the switch already stops every write; the file keeps what got out.
    }
}

#[cfg(feature = "spdk")]
pub use with_spdk::{spdk_available, SpdkAio, SpdkMalloc};

#[cfg(feature = "spdk")]
mod with_spdk {
    use std::path::PathBuf;
    use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
    use std::sync::{Mutex, OnceLock};

    use blobcask::blobstore::native::superblock::SuperBlock;
    use blobcask::blobstore::spdk::{SpdkBlobStore, SpdkConfig, SpdkEnvOpts, SpdkStart};
    use blobcask::blobstore::{BlobStore, InitOpts};
    use blobcask::device::IoPath;
    use blobcask::{Options, Result};

    use super::Backend;

    /// Whether SPDK runs in this process; `Err` says why not (see
    /// [`skip_reason`](super::skip_reason)). Starts it once.
    pub fn spdk_available() -> std::result::Result<(), String> {
        static UP: OnceLock<std::result::Result<(), String>> = OnceLock::new();
        let up = UP.get_or_init(|| {
            if !blobcask::blobstore::spdk::SPDK_LINKED {
                return Err("this build found no SPDK (set PKG_CONFIG_PATH to SPDK's \
                            lib/pkgconfig and rebuild)"
                    .into());
            }
            let cfg = SpdkConfig::malloc("SuiteProbe", 16 << 20, 4096);
            let s = SpdkBlobStore::start_with(
                &SpdkEnvOpts::default(),
                &cfg,
                "SuiteProbe",
                SpdkStart::Init(InitOpts::default()),
            )
            .map_err(|e| format!("SPDK cannot start here: {e}"))?;
            s.block_on(s.unload())
                .map_err(|e| format!("SPDK probe unload: {e}"))?;
            SpdkBlobStore::load_config(&SpdkConfig::malloc_delete("SuiteProbe"))
                .map_err(|e| format!("SPDK probe bdev delete: {e}"))?;
            Ok(())
        });
        up.clone().map_err(super::skip_reason)
    }

    fn unique(prefix: &str) -> String {
        static N: AtomicU32 = AtomicU32::new(0);
        format!("{prefix}{}", N.fetch_add(1, Ordering::Relaxed))
    }

    /// One bdev and the store last loaded on it.
    struct Bdev {
        name: String,
        config: SpdkConfig,
        loaded: Mutex<Option<SpdkBlobStore>>,
        abandoned: AtomicBool,
    }

    impl Bdev {
        fn load(&self, opts: &Options) -> Result<SpdkBlobStore> {
            let s = blobcask::db::spdk_store(&self.config, &self.name, opts)?;
            *self.loaded.lock().unwrap_or_else(|p| p.into_inner()) = Some(s.clone());
            Ok(s)
        }

        fn forget(&self) {
            if let Some(s) = self.loaded.lock().unwrap_or_else(|p| p.into_inner()).take() {
                s.abandon();
                self.abandoned.store(true, Ordering::Release);
            }
        }
    }

    /// Malloc bdevs of dropped backends, by size, for the next backend of that size.
    ///
    /// SPDK's `no_huge` memory (1 GiB) holds a few dozen malloc bdevs, and a suite makes
    /// many more. A bdev cannot be deleted while a store abandoned on it (a kill) still
    /// holds it open, so a bdev is zeroed and reused instead: the suites then hold only as
    /// many as they run at once.
    static FREE_MALLOC: Mutex<Vec<(u64, String)>> = Mutex::new(Vec::new());

    /// A malloc bdev (SPDK's RAM disk) of its own, blank when handed out.
    pub struct SpdkMalloc(Bdev, u64);

    impl SpdkMalloc {
        pub fn new(size: u64) -> Self {
            let reused = {
                let mut free = FREE_MALLOC.lock().unwrap_or_else(|p| p.into_inner());
                free.iter()
                    .position(|(s, _)| *s == size)
                    .map(|i| free.swap_remove(i).1)
            };
            let name = match reused {
                Some(name) => {
                    SpdkBlobStore::zero_bdev(&name)
                        .unwrap_or_else(|e| panic!("zeroing malloc bdev {name}: {e}"));
                    name
                }
                None => unique("SuiteMalloc"),
            };
            SpdkMalloc(
                Bdev {
                    config: SpdkConfig::malloc(&name, size, 4096),
                    name,
                    loaded: Mutex::new(None),
                    abandoned: AtomicBool::new(false),
                },
                size,
            )
        }
    }

    impl Drop for SpdkMalloc {
        fn drop(&mut self) {
            // After a failed test a store may still be in use on the bdev: never reuse it then.
            if std::thread::panicking() {
                return;
            }
            // A store still loaded would unload itself when dropped, writing into the bdev
            // after its next user zeroed it; closed stores ignore this.
            if let Some(s) = self
                .0
                .loaded
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .take()
            {
                s.abandon();
            }
            FREE_MALLOC
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push((self.1, self.0.name.clone()));
        }
    }

    impl Backend for SpdkMalloc {
        type Store = SpdkBlobStore;
        fn name(&self) -> String {
            format!("spdk/malloc {}", self.0.name)
        }
        fn io_path(&self) -> IoPath {
            IoPath::Spdk
        }
        fn load(&self, opts: &Options) -> Result<SpdkBlobStore> {
            self.0.load(opts)
        }
        fn forget(&self) {
            self.0.forget();
        }
    }

    /// An aio bdev over a sparse image file of its own.
    pub struct SpdkAio(Bdev, PathBuf);

    impl SpdkAio {
        pub fn new(size: u64) -> Self {
            let name = unique("SuiteAio");
            let dir = std::env::temp_dir().join(format!("blobcask-suite-{}", std::process::id()));
            std::fs::create_dir_all(&dir).expect("image dir");
            let path = dir.join(format!("{name}.img"));
            let f = std::fs::File::create(&path).expect("image file");
            f.set_len(size).expect("image size");
            SpdkAio(
                Bdev {
                    config: SpdkConfig::aio(&name, &path, 4096),
                    name,
                    loaded: Mutex::new(None),
                    abandoned: AtomicBool::new(false),
                },
                path,
            )
        }
    }

    impl Backend for SpdkAio {
        type Store = SpdkBlobStore;
        fn name(&self) -> String {
            format!("spdk/aio {} over {}", self.0.name, self.1.display())
        }
        fn io_path(&self) -> IoPath {
            IoPath::Spdk
        }
        fn load(&self, opts: &Options) -> Result<SpdkBlobStore> {
            if self.0.abandoned.swap(false, Ordering::AcqRel) {
                // What a killed process leaves: SPDK marks the super block dirty while a
                // store is loaded, so this load must take SPDK's recovery path.
                let bytes = std::fs::read(&self.1).expect("read image");
                let sb = SuperBlock::decode(&bytes[..4096]).expect("super block");
                assert!(
                    !sb.is_clean(),
                    "an abandoned SPDK store left a clean super block"
                );
            }
            self.0.load(opts)
        }
        fn forget(&self) {
            self.0.forget();
        }
    }

    impl Drop for SpdkAio {
        fn drop(&mut self) {
            // The bdev stays (an abandoned store may still hold it); the file can go.
            let _ = std::fs::remove_file(&self.1);
        }
    }
}
