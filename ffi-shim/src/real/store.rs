//! The blobstore and blob handles. Every call here runs on the metadata thread.

use std::collections::HashMap;
use std::ffi::{c_char, c_void, CStr, CString};
use std::sync::atomic::{AtomicPtr, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use super::channel::{ChanInner, Channel};
use super::completion::{Done, Record};
use super::ffi;
use super::reactor::{check, Env};
use crate::{BlobCreateOpts, BsInitOpts, BsLoadOpts, Config, EnvOpts, Error, Result, StartMode};

/// An address SPDK gave us, carried between threads as a plain number. Rust never
/// dereferences it; only SPDK does, on the thread that owns the object.
pub(crate) type Addr = usize;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

struct OpenBlob {
    ptr: Addr,
    refs: u32,
    meta: Arc<BlobMeta>,
}

/// What the hot paths ask of an open blob, kept here so that they need no trip to the
/// metadata thread: whether the handle is still open, and its size (updated by every resize
/// through this store, the only way its size changes).
pub(crate) struct BlobMeta {
    /// [`CLOSING`] once the last close began, plus the I/Os submitted on the handle and not
    /// yet released: the last close waits for them, so no I/O reaches a freed blob.
    io: AtomicU64,
    clusters: AtomicU64,
}

const CLOSING: u64 = 1 << 63;

impl BlobMeta {
    fn new() -> Arc<BlobMeta> {
        Arc::new(BlobMeta {
            io: AtomicU64::new(0),
            clusters: AtomicU64::new(0),
        })
    }

    fn is_open(&self) -> bool {
        self.io.load(Ordering::Acquire) & CLOSING == 0
    }

    /// Count one I/O on the handle until the guard drops; `None` once it is closing.
    pub(crate) fn enter(self: &Arc<Self>) -> Option<IoGuard> {
        if self.io.fetch_add(1, Ordering::AcqRel) & CLOSING != 0 {
            self.io.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        Some(IoGuard(Arc::clone(self)))
    }
}

/// One I/O counted on an open blob (see [`BlobMeta::enter`]).
pub(crate) struct IoGuard(Arc<BlobMeta>);

impl Drop for IoGuard {
    fn drop(&mut self) {
        self.0.io.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A future that is ready on its second poll: lets `block_on` drive SPDK once in between.
struct YieldNow(bool);

impl std::future::Future for YieldNow {
    type Output = ();
    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<()> {
        if self.0 {
            return std::task::Poll::Ready(());
        }
        self.0 = true;
        cx.waker().wake_by_ref();
        std::task::Poll::Pending
    }
}

pub(crate) struct StoreInner {
    pub env: &'static Env,
    /// `struct spdk_blob_store *`; null once unloaded.
    pub bs: AtomicPtr<c_void>,
    pub bdev: String,
    pub io_unit: u32,
    pub cluster: u32,
    pub page: u32,
    pub bstype: [u8; 16],
    super_id: Mutex<Option<u64>>,
    /// A second read-write descriptor of the bdev, used only for flushes. Null if the bdev
    /// could not be opened twice.
    pub flush_desc: AtomicPtr<c_void>,
    pub channels: Mutex<Vec<Weak<ChanInner>>>,
    open: Mutex<HashMap<u64, OpenBlob>>,
}

impl StoreInner {
    pub fn bs(&self) -> Result<Addr> {
        let p = self.bs.load(Ordering::Acquire);
        if p.is_null() {
            Err(Error::Unloaded)
        } else {
            Ok(p as Addr)
        }
    }

    /// The SPDK handle of an open blob.
    pub fn blob_ptr(&self, blob: &Blob) -> Result<Addr> {
        self.bs()?;
        if blob.meta.is_open() {
            Ok(blob.ptr)
        } else {
            Err(Error::NotOpen(blob.id))
        }
    }

    /// Refresh the cached size of open blob `p` (after open and after a resize).
    fn refresh_size(&self, p: Addr, meta: &BlobMeta) {
        let n = self.md_call(move || {
            // SAFETY: on the metadata thread with an open handle.
            unsafe { spdk_sys::spdk_blob_get_num_clusters(p as *mut spdk_sys::spdk_blob) }
        });
        if let Ok(n) = n {
            meta.clusters.store(n, Ordering::Release);
        }
    }

    /// Submit `start(rec)` on the metadata thread and await the callback.
    async fn md_op(&self, start: impl FnOnce(*mut c_void) + Send + 'static) -> Done {
        let rec = Record::new();
        let r = Arc::clone(&rec);
        self.env.run(self.env.md(), move || start(r.into_cb_arg()));
        rec.wait().await
    }

    /// Run a synchronous metadata call.
    fn md_call<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> Result<T> {
        self.env
            .call(self.env.md(), f)
            .ok_or_else(|| Error::Unavailable("the SPDK reactor has stopped".into()))
    }
}

impl Drop for StoreInner {
    fn drop(&mut self) {
        let desc = self.flush_desc.swap(std::ptr::null_mut(), Ordering::AcqRel) as Addr;
        let bs = self.bs.swap(std::ptr::null_mut(), Ordering::AcqRel) as Addr;
        if desc == 0 && bs == 0 {
            return;
        }
        let bdev = self.bdev.clone();
        if bs != 0 {
            log::warn!("ffi-shim: blobstore on {bdev} dropped without unload; unloading it now");
        }
        self.env.run(self.env.md(), move || {
            if desc != 0 {
                // SAFETY: on the metadata thread, which opened the descriptor; closed once.
                unsafe { ffi::shim_bdev_close(desc as *mut c_void) };
            }
            if bs != 0 {
                let rec = Record::new();
                // SAFETY: on the metadata thread; every channel of this store was released
                // before (channels hold the store alive). Nobody awaits the record; its
                // reference is handed over once and dropped by the callback.
                unsafe { ffi::shim_bs_unload(bs as *mut c_void, rec.into_cb_arg()) };
            }
        });
    }
}

/// A loaded blobstore. Cheap to clone; all clones are the same store.
#[derive(Clone)]
pub struct Blobstore {
    inner: Arc<StoreInner>,
}

/// An open blob. Cheap to clone; clones are the same SPDK handle and share one open
/// reference: every successful [`Blobstore::open_blob`] needs one [`Blobstore::close_blob`].
#[derive(Clone)]
pub struct Blob {
    id: u64,
    ptr: Addr,
    meta: Arc<BlobMeta>,
    store: Arc<StoreInner>,
}

impl std::fmt::Debug for Blob {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Blob({:#x})", self.id)
    }
}

impl std::fmt::Debug for Blobstore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Blobstore({})", self.inner.bdev)
    }
}

/// Owned xattr arrays for `spdk_bs_create_blob_ext`, alive until its callback.
struct XattrArrays {
    _names: Vec<CString>,
    _values: Vec<Vec<u8>>,
    name_ptrs: Vec<*const c_char>,
    value_ptrs: Vec<*const c_void>,
    lens: Vec<usize>,
}

// SAFETY: the raw pointers point into the owned vectors of the same struct, which move
// with it; nothing else refers to that memory.
unsafe impl Send for XattrArrays {}

impl Blobstore {
    /// Start SPDK (if needed), create the bdevs of `config` unless `bdev` exists already,
    /// then format (`Init`) or load (`Load`) the blobstore on `bdev`.
    pub async fn start(
        env_opts: &EnvOpts,
        config: &Config,
        bdev: &str,
        mode: StartMode,
    ) -> Result<Blobstore> {
        let mut env_opts = env_opts.clone();
        if env_opts.no_pci.is_none() {
            let nvme = config
                .text()
                .map(|t| t.contains("bdev_nvme_attach_controller"))
                .unwrap_or(false);
            env_opts.no_pci = Some(!nvme);
        }
        let env = Env::start(&env_opts)?;
        if env.bdev_geometry(bdev).is_none() {
            env.load_config(config).await?;
            if env.bdev_geometry(bdev).is_none() {
                return Err(Error::InvalidArgument(format!(
                    "the SPDK config does not create bdev {bdev:?}"
                )));
            }
        }
        match mode {
            StartMode::Init(o) => Blobstore::init(env, bdev, &o).await,
            StartMode::Load(o) => Blobstore::load(env, bdev, &o).await,
        }
    }

    /// Format a new blobstore on bdev `bdev` (`spdk_bs_init`).
    pub async fn init(env: &'static Env, bdev: &str, opts: &BsInitOpts) -> Result<Blobstore> {
        let opts = opts.clone();
        let done = open_dev(env, bdev, move |dev, rec| {
            // SAFETY: on the metadata thread; `dev` is a fresh bs_dev the store takes over;
            // the bstype array is copied into the options before the call returns.
            unsafe {
                ffi::shim_bs_init(
                    dev,
                    opts.cluster_size,
                    opts.num_md_pages,
                    opts.bstype.as_ptr() as *const c_char,
                    opts.clear_method as i32,
                    opts.md_page_size,
                    rec,
                )
            }
        })
        .await?;
        check("spdk_bs_init", done.rc)?;
        Blobstore::finish(env, bdev, done.ptr).await
    }

    /// Load the blobstore on bdev `bdev` (`spdk_bs_load`), recovering it if it is dirty.
    pub async fn load(env: &'static Env, bdev: &str, opts: &BsLoadOpts) -> Result<Blobstore> {
        let opts = opts.clone();
        let done = open_dev(env, bdev, move |dev, rec| {
            // SAFETY: as in init.
            unsafe {
                ffi::shim_bs_load(
                    dev,
                    opts.bstype.as_ptr() as *const c_char,
                    i32::from(opts.force_recover),
                    rec,
                )
            }
        })
        .await?;
        check("spdk_bs_load", done.rc)?;
        Blobstore::finish(env, bdev, done.ptr).await
    }

    async fn finish(env: &'static Env, bdev: &str, bs: Addr) -> Result<Blobstore> {
        let name = CString::new(bdev)
            .map_err(|_| Error::InvalidArgument("bdev name holds a NUL byte".into()))?;
        let (io_unit, cluster, page, bstype, desc) = env
            .call(env.md(), move || {
                let p = bs as *mut spdk_sys::spdk_blob_store;
                let mut t = [0u8; 16];
                let mut desc: *mut c_void = std::ptr::null_mut();
                // SAFETY: on the metadata thread with a live store; `t` has the 16 bytes
                // the shim copies; `name` outlives the open call.
                unsafe {
                    ffi::shim_bs_get_bstype(bs as *mut c_void, t.as_mut_ptr() as *mut c_char);
                    if ffi::shim_bdev_open(name.as_ptr(), &mut desc) != 0 {
                        desc = std::ptr::null_mut();
                    }
                    (
                        spdk_sys::spdk_bs_get_io_unit_size(p),
                        spdk_sys::spdk_bs_get_cluster_size(p),
                        spdk_sys::spdk_bs_get_page_size(p),
                        t,
                        desc as Addr,
                    )
                }
            })
            .ok_or_else(|| Error::Unavailable("the SPDK reactor has stopped".into()))?;
        if desc == 0 {
            log::warn!("ffi-shim: cannot open bdev {bdev} for flushes; flush will be a no-op");
        }
        let inner = Arc::new(StoreInner {
            env,
            bs: AtomicPtr::new(bs as *mut c_void),
            bdev: bdev.to_owned(),
            io_unit: u32::try_from(io_unit).unwrap_or(u32::MAX),
            cluster: u32::try_from(cluster).unwrap_or(u32::MAX),
            page: u32::try_from(page).unwrap_or(u32::MAX),
            bstype,
            super_id: Mutex::new(None),
            flush_desc: AtomicPtr::new(desc as *mut c_void),
            channels: Mutex::new(Vec::new()),
            open: Mutex::new(HashMap::new()),
        });
        let store = Blobstore { inner };
        let done = store
            .inner
            .md_op(move |rec| {
                // SAFETY: on the metadata thread with a live store.
                unsafe { ffi::shim_bs_get_super(bs as *mut c_void, rec) }
            })
            .await;
        *lock(&store.inner.super_id) = (done.rc == 0).then_some(done.value);
        Ok(store)
    }

    /// The environment this store runs in.
    pub fn env(&self) -> &'static Env {
        self.inner.env
    }

    /// The bdev under the store.
    pub fn bdev_name(&self) -> &str {
        &self.inner.bdev
    }

    /// Bytes per io unit (unit of blob I/O offsets and lengths).
    pub fn io_unit_size(&self) -> u32 {
        self.inner.io_unit
    }

    /// Bytes per cluster.
    pub fn cluster_size(&self) -> u32 {
        self.inner.cluster
    }

    /// Bytes per metadata page.
    pub fn page_size(&self) -> u32 {
        self.inner.page
    }

    /// The store's application tag.
    pub fn bstype(&self) -> [u8; 16] {
        self.inner.bstype
    }

    /// The super blob id, if one is set.
    pub fn super_blob(&self) -> Option<u64> {
        *lock(&self.inner.super_id)
    }

    /// Free clusters.
    pub fn free_clusters(&self) -> Result<u64> {
        let bs = self.inner.bs()?;
        // SAFETY: on the metadata thread with a live store.
        self.inner.md_call(move || unsafe {
            spdk_sys::spdk_bs_free_cluster_count(bs as *mut spdk_sys::spdk_blob_store)
        })
    }

    /// Data clusters in total.
    pub fn total_data_clusters(&self) -> Result<u64> {
        let bs = self.inner.bs()?;
        // SAFETY: on the metadata thread with a live store.
        self.inner.md_call(move || unsafe {
            spdk_sys::spdk_bs_total_data_cluster_count(bs as *mut spdk_sys::spdk_blob_store)
        })
    }

    /// Create and persist a blob (not left open).
    pub async fn create_blob(&self, opts: &BlobCreateOpts) -> Result<u64> {
        let bs = self.inner.bs()?;
        let mut names = Vec::with_capacity(opts.xattrs.len());
        let mut values = Vec::with_capacity(opts.xattrs.len());
        for (n, v) in &opts.xattrs {
            names.push(
                CString::new(n.as_str())
                    .map_err(|_| Error::InvalidArgument(format!("xattr name {n:?} holds NUL")))?,
            );
            if v.len() > usize::from(u16::MAX) {
                return Err(Error::InvalidArgument(format!(
                    "xattr {n:?} value of {} bytes exceeds 65535",
                    v.len()
                )));
            }
            values.push(v.clone());
        }
        let arrays = XattrArrays {
            name_ptrs: names.iter().map(|c| c.as_ptr()).collect(),
            value_ptrs: values.iter().map(|v| v.as_ptr() as *const c_void).collect(),
            lens: values.iter().map(Vec::len).collect(),
            _names: names,
            _values: values,
        };
        let (np, vp, lp, n) = (
            arrays.name_ptrs.as_ptr() as Addr,
            arrays.value_ptrs.as_ptr() as Addr,
            arrays.lens.as_ptr() as Addr,
            arrays.lens.len(),
        );
        let (clusters, thin, extent, clear) = (
            opts.num_clusters,
            i32::from(opts.thin_provision),
            i32::from(opts.use_extent_table),
            opts.clear_method as i32,
        );
        let rec = Record::new();
        rec.keep(Box::new(arrays));
        let r = Arc::clone(&rec);
        self.inner.env.run(self.inner.env.md(), move || {
            // SAFETY: on the metadata thread; the arrays are kept alive by the record until
            // the callback (and SPDK reads them during the call anyway).
            unsafe {
                ffi::shim_create_blob(
                    bs as *mut c_void,
                    clusters,
                    thin,
                    extent,
                    clear,
                    n,
                    np as *const *const c_char,
                    vp as *const *const c_void,
                    lp as *const usize,
                    r.into_cb_arg(),
                )
            }
        });
        let done = rec.wait().await;
        check("spdk_bs_create_blob_ext", done.rc)?;
        Ok(done.value)
    }

    /// Open blob `id`. Opening an open blob returns the same handle with one more reference.
    pub async fn open_blob(&self, id: u64) -> Result<Blob> {
        let bs = self.inner.bs()?;
        let done = self
            .inner
            .md_op(move |rec| {
                // SAFETY: on the metadata thread with a live store.
                unsafe { ffi::shim_open_blob(bs as *mut c_void, id, rec) }
            })
            .await;
        check("spdk_bs_open_blob", done.rc)?;
        let (meta, fresh) = {
            let mut open = lock(&self.inner.open);
            let e = open.entry(id).or_insert_with(|| OpenBlob {
                ptr: done.ptr,
                refs: 0,
                meta: BlobMeta::new(),
            });
            if e.ptr != done.ptr {
                e.meta.io.fetch_or(CLOSING, Ordering::AcqRel);
                e.meta = BlobMeta::new();
                e.ptr = done.ptr;
                e.refs = 0;
            }
            e.refs += 1;
            (Arc::clone(&e.meta), e.refs == 1)
        };
        if fresh {
            self.inner.refresh_size(done.ptr, &meta);
        }
        Ok(Blob {
            id,
            ptr: done.ptr,
            meta,
            store: Arc::clone(&self.inner),
        })
    }

    /// Persist dirty metadata and drop one open reference.
    pub async fn close_blob(&self, blob: &Blob) -> Result<()> {
        let p = self.inner.blob_ptr(blob)?;
        let last = lock(&self.inner.open)
            .get(&blob.id)
            .is_some_and(|o| o.ptr == p && o.refs == 1);
        if last {
            // No new I/O from here on; wait for what is in flight.
            blob.meta.io.fetch_or(CLOSING, Ordering::AcqRel);
            while blob.meta.io.load(Ordering::Acquire) & !CLOSING != 0 {
                YieldNow(false).await;
            }
        }
        let done = self
            .inner
            .md_op(move |rec| {
                // SAFETY: on the metadata thread; `p` is an open handle.
                unsafe { ffi::shim_close_blob(p as *mut c_void, rec) }
            })
            .await;
        if done.rc != 0 && last {
            // SPDK kept the blob open: so do we.
            blob.meta.io.fetch_and(!CLOSING, Ordering::AcqRel);
        }
        check("spdk_blob_close", done.rc)?;
        let mut open = lock(&self.inner.open);
        if let Some(o) = open.get_mut(&blob.id) {
            o.refs = o.refs.saturating_sub(1);
            if o.refs == 0 {
                o.meta.io.fetch_or(CLOSING, Ordering::AcqRel);
                open.remove(&blob.id);
            }
        }
        Ok(())
    }

    /// Delete a blob nobody has open.
    pub async fn delete_blob(&self, id: u64) -> Result<()> {
        let bs = self.inner.bs()?;
        let done = self
            .inner
            .md_op(move |rec| {
                // SAFETY: on the metadata thread with a live store.
                unsafe { ffi::shim_delete_blob(bs as *mut c_void, id, rec) }
            })
            .await;
        check("spdk_bs_delete_blob", done.rc)
    }

    /// Every blob id, in md-index order (`spdk_bs_iter_first/next`).
    pub async fn blob_ids(&self) -> Result<Vec<u64>> {
        let bs = self.inner.bs()?;
        let done = self
            .inner
            .md_op(move |rec| {
                // SAFETY: on the metadata thread with a live store.
                unsafe { ffi::shim_blob_ids(bs as *mut c_void, rec) }
            })
            .await;
        check("spdk_bs_iter", done.rc)?;
        let n = usize::try_from(done.value).unwrap_or(0);
        let p = done.ptr as *mut u64;
        if p.is_null() || n == 0 {
            if !p.is_null() {
                // SAFETY: the shim hands us ownership of a malloc'd array.
                unsafe { ffi::shim_free(p as *mut c_void) };
            }
            return Ok(Vec::new());
        }
        // SAFETY: the shim completed with a malloc'd array of `n` ids that is ours now.
        let ids = unsafe { std::slice::from_raw_parts(p, n) }.to_vec();
        // SAFETY: freed once, with the allocator that made it.
        unsafe { ffi::shim_free(p as *mut c_void) };
        Ok(ids)
    }

    /// Record `id` as the super blob, durably.
    pub async fn set_super(&self, id: u64) -> Result<()> {
        let bs = self.inner.bs()?;
        let done = self
            .inner
            .md_op(move |rec| {
                // SAFETY: on the metadata thread with a live store.
                unsafe { ffi::shim_bs_set_super(bs as *mut c_void, id, rec) }
            })
            .await;
        check("spdk_bs_set_super", done.rc)?;
        // SAFETY: plain call returning a constant.
        let invalid = unsafe { ffi::shim_blobid_invalid() };
        *lock(&self.inner.super_id) = (id != invalid).then_some(id);
        Ok(())
    }

    /// Grow the store to its bdev's current size (`spdk_bs_grow_live`).
    pub async fn grow_live(&self) -> Result<()> {
        let bs = self.inner.bs()?;
        let done = self
            .inner
            .md_op(move |rec| {
                // SAFETY: on the metadata thread with a live store.
                unsafe { ffi::shim_bs_grow_live(bs as *mut c_void, rec) }
            })
            .await;
        check("spdk_bs_grow_live", done.rc)
    }

    /// Resize to `clusters` (in memory until sync).
    pub async fn resize(&self, blob: &Blob, clusters: u64) -> Result<()> {
        let p = self.inner.blob_ptr(blob)?;
        let done = self
            .inner
            .md_op(move |rec| {
                // SAFETY: on the metadata thread; `p` is an open handle.
                unsafe { ffi::shim_resize_blob(p as *mut c_void, clusters, rec) }
            })
            .await;
        self.inner.refresh_size(p, &blob.meta);
        check("spdk_blob_resize", done.rc)
    }

    /// Persist the blob's metadata.
    pub async fn sync_md(&self, blob: &Blob) -> Result<()> {
        let p = self.inner.blob_ptr(blob)?;
        let done = self
            .inner
            .md_op(move |rec| {
                // SAFETY: on the metadata thread; `p` is an open handle.
                unsafe { ffi::shim_sync_md(p as *mut c_void, rec) }
            })
            .await;
        check("spdk_blob_sync_md", done.rc)
    }

    /// Mark the blob read-only from the next sync on.
    pub fn set_read_only(&self, blob: &Blob) -> Result<()> {
        let p = self.inner.blob_ptr(blob)?;
        // SAFETY: on the metadata thread; `p` is an open handle.
        let rc = self.inner.md_call(move || unsafe {
            spdk_sys::spdk_blob_set_read_only(p as *mut spdk_sys::spdk_blob)
        })?;
        check("spdk_blob_set_read_only", rc)
    }

    /// Set (or replace) an xattr, in memory until sync.
    pub fn set_xattr(&self, blob: &Blob, name: &str, value: &[u8]) -> Result<()> {
        let p = self.inner.blob_ptr(blob)?;
        let len = u16::try_from(value.len()).map_err(|_| {
            Error::InvalidArgument(format!(
                "xattr value of {} bytes exceeds 65535",
                value.len()
            ))
        })?;
        let name = cstring(name)?;
        let value = value.to_vec();
        // SAFETY: on the metadata thread; SPDK copies name and value before returning.
        let rc = self.inner.md_call(move || unsafe {
            spdk_sys::spdk_blob_set_xattr(
                p as *mut spdk_sys::spdk_blob,
                name.as_ptr(),
                value.as_ptr() as *const c_void,
                len,
            )
        })?;
        check("spdk_blob_set_xattr", rc)
    }

    /// Remove an xattr (`-ENOENT` if absent).
    pub fn remove_xattr(&self, blob: &Blob, name: &str) -> Result<()> {
        let p = self.inner.blob_ptr(blob)?;
        let name = cstring(name)?;
        // SAFETY: on the metadata thread; `name` outlives the call.
        let rc = self.inner.md_call(move || unsafe {
            spdk_sys::spdk_blob_remove_xattr(p as *mut spdk_sys::spdk_blob, name.as_ptr())
        })?;
        check("spdk_blob_remove_xattr", rc)
    }

    /// An xattr's value, `None` if absent.
    pub fn get_xattr(&self, blob: &Blob, name: &str) -> Result<Option<Vec<u8>>> {
        let p = self.inner.blob_ptr(blob)?;
        let name = cstring(name)?;
        let r = self.inner.md_call(move || {
            let mut v: *const c_void = std::ptr::null();
            let mut len: usize = 0;
            // SAFETY: on the metadata thread; SPDK points `v` into the blob's memory, which
            // stays valid until the xattr changes or the blob closes — both happen only on
            // this thread, after the copy below.
            let rc = unsafe {
                spdk_sys::spdk_blob_get_xattr_value(
                    p as *mut spdk_sys::spdk_blob,
                    name.as_ptr(),
                    &mut v,
                    &mut len,
                )
            };
            if rc != 0 {
                return Err(rc);
            }
            if v.is_null() || len == 0 {
                return Ok(Vec::new());
            }
            // SAFETY: see above; `len` bytes at `v`.
            Ok(unsafe { std::slice::from_raw_parts(v as *const u8, len) }.to_vec())
        })?;
        match r {
            Ok(v) => Ok(Some(v)),
            Err(rc) if rc == -crate::libc_errno::ENOENT => Ok(None),
            Err(rc) => Err(Error::Spdk {
                op: "spdk_blob_get_xattr_value",
                rc,
            }),
        }
    }

    /// Names of the user xattrs, in on-disk order.
    pub fn xattr_names(&self, blob: &Blob) -> Result<Vec<String>> {
        let p = self.inner.blob_ptr(blob)?;
        let r = self.inner.md_call(move || {
            let mut names: *mut spdk_sys::spdk_xattr_names = std::ptr::null_mut();
            // SAFETY: on the metadata thread; the list is freed below.
            let rc = unsafe {
                spdk_sys::spdk_blob_get_xattr_names(p as *mut spdk_sys::spdk_blob, &mut names)
            };
            if rc != 0 {
                return Err(rc);
            }
            let mut out = Vec::new();
            // SAFETY: `names` is the list SPDK just made; its name pointers borrow the
            // blob's memory, copied here before the list is freed.
            unsafe {
                let n = spdk_sys::spdk_xattr_names_get_count(names);
                for i in 0..n {
                    let s = spdk_sys::spdk_xattr_names_get_name(names, i);
                    if !s.is_null() {
                        out.push(CStr::from_ptr(s).to_string_lossy().into_owned());
                    }
                }
                spdk_sys::spdk_xattr_names_free(names);
            }
            Ok(out)
        })?;
        r.map_err(|rc| Error::Spdk {
            op: "spdk_blob_get_xattr_names",
            rc,
        })
    }

    /// An I/O channel with an SPDK thread of its own.
    pub fn channel(&self) -> Result<Channel> {
        Channel::new(Arc::clone(&self.inner))
    }

    /// Write the masks and a clean super block (`spdk_bs_unload`). Fails `-EBUSY` while
    /// blobs are open. Releases every I/O channel of the store first; channels used
    /// afterwards fail with [`Error::Unloaded`].
    pub async fn unload(&self) -> Result<()> {
        let bs = self.inner.bs()?;
        let open = lock(&self.inner.open).len();
        if open > 0 {
            return Err(Error::Spdk {
                op: "spdk_bs_unload (blobs still open)",
                rc: -crate::libc_errno::EBUSY,
            });
        }
        let chans: Vec<Arc<ChanInner>> = lock(&self.inner.channels)
            .drain(..)
            .filter_map(|w| w.upgrade())
            .collect();
        for c in chans {
            c.release().await;
        }
        let desc = self
            .inner
            .flush_desc
            .swap(std::ptr::null_mut(), Ordering::AcqRel) as Addr;
        if desc != 0 {
            self.inner.md_call(move || {
                // SAFETY: on the metadata thread, which opened it; closed once (the swap
                // above took the only copy of the descriptor).
                unsafe { ffi::shim_bdev_close(desc as *mut c_void) }
            })?;
        }
        if self
            .inner
            .bs
            .compare_exchange(
                bs as *mut c_void,
                std::ptr::null_mut(),
                Ordering::AcqRel,
                Ordering::Acquire,
            )
            .is_err()
        {
            return Err(Error::Unloaded);
        }
        let done = self
            .inner
            .md_op(move |rec| {
                // SAFETY: on the metadata thread; no channel and no open blob remains.
                unsafe { ffi::shim_bs_unload(bs as *mut c_void, rec) }
            })
            .await;
        if done.rc == -crate::libc_errno::EBUSY {
            self.inner.bs.store(bs as *mut c_void, Ordering::Release);
        }
        check("spdk_bs_unload", done.rc)
    }

    /// Forget the store without unloading it, as a process killed now would: the SPDK
    /// blobstore and its descriptors are leaked on purpose, nothing more is written through
    /// this handle (every later call fails with [`Error::Unloaded`]), and the bdev keeps
    /// what the last completed I/O left there. Loading the bdev again runs SPDK's dirty
    /// recovery. For crash tests; the caller must let in-flight I/O finish first.
    pub fn abandon(&self) {
        // Leaked, not freed: channels and blob handles of this store may still point into it.
        self.inner.bs.store(std::ptr::null_mut(), Ordering::Release);
        self.inner
            .flush_desc
            .store(std::ptr::null_mut(), Ordering::Release);
    }
}

impl Blob {
    /// The blob id.
    pub fn id(&self) -> u64 {
        self.id
    }

    fn query<T: Send + 'static + Default>(&self, f: fn(*mut spdk_sys::spdk_blob) -> T) -> T {
        let Ok(p) = self.store.blob_ptr(self) else {
            return T::default();
        };
        self.store
            .md_call(move || f(p as *mut spdk_sys::spdk_blob))
            .unwrap_or_default()
    }

    /// Size in clusters (0 if closed). Answered without the metadata thread.
    pub fn num_clusters(&self) -> u64 {
        if self.store.blob_ptr(self).is_err() {
            return 0;
        }
        self.meta.clusters.load(Ordering::Acquire)
    }

    /// Size in io units (0 if closed). Answered without the metadata thread.
    pub fn num_io_units(&self) -> u64 {
        let per_cluster = u64::from(self.store.cluster / self.store.io_unit.max(1));
        self.num_clusters() * per_cluster
    }

    /// Clusters backed by the device (0 if closed).
    pub fn num_allocated_clusters(&self) -> u64 {
        // SAFETY: runs on the metadata thread with an open handle (query checks it).
        self.query(|p| unsafe { spdk_sys::spdk_blob_get_num_allocated_clusters(p) })
    }

    /// Thin provisioned?
    pub fn is_thin(&self) -> bool {
        // SAFETY: as above.
        self.query(|p| unsafe { spdk_sys::spdk_blob_is_thin_provisioned(p) })
    }

    /// Read-only?
    pub fn is_read_only(&self) -> bool {
        // SAFETY: as above.
        self.query(|p| unsafe { spdk_sys::spdk_blob_is_read_only(p) })
    }

    pub(crate) fn meta(&self) -> &Arc<BlobMeta> {
        &self.meta
    }

    pub(crate) fn store(&self) -> &Arc<StoreInner> {
        &self.store
    }
}

fn cstring(s: &str) -> Result<CString> {
    CString::new(s).map_err(|_| Error::InvalidArgument(format!("{s:?} holds a NUL byte")))
}

/// Create a bs_dev over `bdev` on the metadata thread and hand it to `start` with a record.
/// The returned [`Done`] is `start`'s completion, unchecked.
async fn open_dev(
    env: &'static Env,
    bdev: &str,
    start: impl FnOnce(*mut c_void, *mut c_void) + Send + 'static,
) -> Result<Done> {
    let name = cstring(bdev)?;
    let (rc, dev) = env
        .call(env.md(), move || {
            let mut dev: *mut c_void = std::ptr::null_mut();
            // SAFETY: on the metadata thread; `name` outlives the call.
            let rc = unsafe { ffi::shim_bs_dev_create(name.as_ptr(), &mut dev) };
            (rc, dev as Addr)
        })
        .ok_or_else(|| Error::Unavailable("the SPDK reactor has stopped".into()))?;
    check("spdk_bdev_create_bs_dev_ext", rc)?;
    let rec = Record::new();
    let r = Arc::clone(&rec);
    env.run(env.md(), move || start(dev as *mut c_void, r.into_cb_arg()));
    Ok(rec.wait().await)
}
