//! The SPDK backend: [`BlobStore`] over real SPDK through `ffi-shim` (feature `spdk`).
//!
//! SPDK runs in-process. [`SpdkBlobStore::start`] brings up the SPDK environment once per
//! process (hugepages if the machine has them, otherwise DPDK's `no_huge` mode with 1 GiB),
//! creates the bdevs of a JSON config in SPDK's `save_config` format (malloc, aio, uring,
//! NVMe), and formats or loads the blobstore on the named bdev. Metadata calls run on SPDK's
//! metadata thread; each [`SpdkChannel`] has an SPDK thread of its own. [`BlobStore::block_on`]
//! polls SPDK on the calling thread while it waits (no hop to another thread); a reactor
//! thread inside ffi-shim polls whenever no caller does, so any executor works, just slower.
//!
//! The on-disk format is SPDK's, byte for byte, so a device written by the native backend
//! loads here and the reverse.
//!
//! If this build has no SPDK (ffi-shim found none at build time), `start` returns
//! [`Error::Unsupported`] saying why.

use std::future::Future;
use std::io;

use ffi_shim::libc_errno as errno;

pub use ffi_shim::{Config as SpdkConfig, EnvOpts as SpdkEnvOpts, LogLevel as SpdkLogLevel};

use super::{
    Blob, BlobId, BlobIo, BlobStore, Bstype, ClearMethod, CreateOpts, InitOpts, IoChannel, LoadOpts,
};
use crate::blobstore::error::{Error, Result};
use crate::device::AlignedBuf;

/// Format or load.
#[derive(Debug, Clone)]
pub enum SpdkStart {
    /// Format the bdev (`spdk_bs_init`); everything on it is lost.
    Init(InitOpts),
    /// Load the blobstore on the bdev (`spdk_bs_load`), recovering it if it is dirty.
    Load(LoadOpts),
}

/// Whether this build links SPDK (it may still fail to start, e.g. without memory).
pub const SPDK_LINKED: bool = ffi_shim::SPDK_PRESENT;

/// A blobstore on an SPDK bdev.
#[derive(Debug, Clone)]
pub struct SpdkBlobStore {
    bs: ffi_shim::Blobstore,
}

/// An open blob of an [`SpdkBlobStore`].
#[derive(Debug, Clone)]
pub struct SpdkBlob(ffi_shim::Blob);

/// An I/O channel of an [`SpdkBlobStore`] (one SPDK thread).
#[derive(Debug)]
pub struct SpdkChannel(ffi_shim::Channel);

/// Translate an ffi-shim error into the blobstore's; SPDK's errnos go through the one
/// mapping, [`Error::from_errno`].
fn map_err(e: ffi_shim::Error) -> Error {
    match e {
        ffi_shim::Error::Unavailable(why) => Error::Unsupported(format!("SPDK backend: {why}")),
        ffi_shim::Error::InvalidArgument(s) => Error::InvalidArgument(s),
        ffi_shim::Error::NotOpen(_) => Error::BadHandle,
        ffi_shim::Error::Unloaded => Error::Closed,
        ffi_shim::Error::Spdk { op, rc } => Error::from_errno(op, rc),
        other => Error::Spdk {
            op: other.to_string(),
            source: io::Error::from_raw_os_error(-other.errno()),
        },
    }
}

fn bs_clear(c: ClearMethod) -> ffi_shim::BsClearMethod {
    match c {
        ClearMethod::Default | ClearMethod::Unmap => ffi_shim::BsClearMethod::Unmap,
        ClearMethod::WriteZeroes => ffi_shim::BsClearMethod::WriteZeroes,
        ClearMethod::None => ffi_shim::BsClearMethod::None,
    }
}

fn blob_clear(c: ClearMethod) -> ffi_shim::BlobClearMethod {
    match c {
        ClearMethod::Default => ffi_shim::BlobClearMethod::Default,
        ClearMethod::Unmap => ffi_shim::BlobClearMethod::Unmap,
        ClearMethod::WriteZeroes => ffi_shim::BlobClearMethod::WriteZeroes,
        ClearMethod::None => ffi_shim::BlobClearMethod::None,
    }
}

fn start_mode(mode: &SpdkStart) -> ffi_shim::StartMode {
    match mode {
        SpdkStart::Init(o) => ffi_shim::StartMode::Init(ffi_shim::BsInitOpts {
            cluster_size: o.cluster_size,
            num_md_pages: o.num_md_pages.unwrap_or(0),
            bstype: o.bstype.0,
            clear_method: bs_clear(o.clear_method),
            md_page_size: o.md_page_size.unwrap_or(0),
        }),
        SpdkStart::Load(o) => ffi_shim::StartMode::Load(ffi_shim::BsLoadOpts {
            bstype: o.bstype.0,
            force_recover: o.force_recover,
        }),
    }
}

impl SpdkBlobStore {
    /// Start SPDK with default environment options (see [`SpdkBlobStore::start_with`]).
    ///
    /// `config` is JSON text (starting with `{`) or the path of a JSON file in SPDK's
    /// `save_config` format; its bdevs are created unless `bdev` exists already (a store
    /// reopened in the same process).
    pub fn start(config: &str, bdev: &str, mode: SpdkStart) -> Result<SpdkBlobStore> {
        Self::start_with(
            &SpdkEnvOpts::default(),
            &SpdkConfig::parse(config),
            bdev,
            mode,
        )
    }

    /// Start SPDK with explicit environment options. The environment is process-wide: the
    /// options of the first successful start win.
    pub fn start_with(
        env: &SpdkEnvOpts,
        config: &SpdkConfig,
        bdev: &str,
        mode: SpdkStart,
    ) -> Result<SpdkBlobStore> {
        let bstype = match &mode {
            SpdkStart::Load(o) => Some(o.bstype),
            SpdkStart::Init(_) => None,
        };
        let r = ffi_shim::block_on(ffi_shim::Blobstore::start(
            env,
            config,
            bdev,
            start_mode(&mode),
        ));
        match r {
            Ok(bs) => Ok(SpdkBlobStore { bs }),
            Err(ffi_shim::Error::Spdk { rc, .. }) if rc == -errno::ENXIO && bstype.is_some() => {
                Err(Error::BstypeMismatch {
                    expected: bstype.map(|b| b.as_text()).unwrap_or_default(),
                    found: "another tag".into(),
                })
            }
            Err(e) => Err(map_err(e)),
        }
    }

    /// Load the blobstore on `bdev`; if the bdev holds none and `init` is given, format it
    /// with those options. The counterpart of `Db::open`'s create logic for SPDK bdevs.
    pub fn open_or_init(
        env: &SpdkEnvOpts,
        config: &SpdkConfig,
        bdev: &str,
        load: LoadOpts,
        init: Option<InitOpts>,
    ) -> Result<SpdkBlobStore> {
        match Self::start_with(env, config, bdev, SpdkStart::Load(load)) {
            Err(Error::NotABlobstore(why)) => match init {
                Some(o) => Self::start_with(env, config, bdev, SpdkStart::Init(o)),
                None => Err(Error::NotABlobstore(format!(
                    "bdev {bdev} holds no blobstore (set create to format it): {why}"
                ))),
            },
            r => r,
        }
    }

    /// The SPDK version this process runs (`None` before a successful start).
    pub fn spdk_version() -> Option<String> {
        ffi_shim::Env::get().map(|e| e.version().to_owned())
    }

    /// Grow the store to its bdev's current size (`spdk_bs_grow_live`); what
    /// `NativeBlobStore::grow` does natively.
    pub async fn grow_live(&self) -> Result<()> {
        self.bs.grow_live().await.map_err(map_err)
    }

    /// The bdev under the store.
    pub fn bdev_name(&self) -> &str {
        self.bs.bdev_name()
    }

    /// Forget the store without unloading it, as a killed process would (for crash tests):
    /// the bdev keeps what the last completed I/O wrote, and loading it again runs SPDK's
    /// recovery. Every later call on this store fails with [`Error::Closed`]. Let in-flight
    /// I/O finish first.
    pub fn abandon(&self) {
        self.bs.abandon();
    }

    /// Run the RPCs of a JSON config in the running SPDK (create or delete bdevs).
    pub fn load_config(config: &SpdkConfig) -> Result<()> {
        let env =
            ffi_shim::Env::get().ok_or_else(|| Error::Unsupported("SPDK is not running".into()))?;
        ffi_shim::block_on(env.load_config(config)).map_err(map_err)
    }

    /// Write zeroes over the whole of bdev `name` in the running SPDK (tests reuse bdevs
    /// this way: a bdev still held by an abandoned store cannot be deleted).
    pub fn zero_bdev(name: &str) -> Result<()> {
        let env =
            ffi_shim::Env::get().ok_or_else(|| Error::Unsupported("SPDK is not running".into()))?;
        ffi_shim::block_on(env.zero_bdev(name)).map_err(map_err)
    }
}

impl Blob for SpdkBlob {
    fn id(&self) -> BlobId {
        self.0.id()
    }
    fn num_clusters(&self) -> u64 {
        self.0.num_clusters()
    }
    fn num_io_units(&self) -> u64 {
        self.0.num_io_units()
    }
    fn num_allocated_clusters(&self) -> u64 {
        self.0.num_allocated_clusters()
    }
    fn is_thin(&self) -> bool {
        self.0.is_thin()
    }
    fn is_read_only(&self) -> bool {
        self.0.is_read_only()
    }
}

impl BlobStore for SpdkBlobStore {
    type Blob = SpdkBlob;
    type Channel = SpdkChannel;

    fn io_unit_size(&self) -> u32 {
        self.bs.io_unit_size()
    }
    fn cluster_size(&self) -> u32 {
        self.bs.cluster_size()
    }
    fn md_page_size(&self) -> u32 {
        self.bs.page_size()
    }
    fn bstype(&self) -> Bstype {
        Bstype(self.bs.bstype())
    }
    fn free_clusters(&self) -> u64 {
        self.bs.free_clusters().unwrap_or(0)
    }
    fn total_data_clusters(&self) -> u64 {
        self.bs.total_data_clusters().unwrap_or(0)
    }
    fn super_blob(&self) -> Option<BlobId> {
        self.bs.super_blob()
    }

    fn block_on<F: Future>(&self, f: F) -> F::Output {
        ffi_shim::block_on(f)
    }

    async fn create(&self, opts: CreateOpts) -> Result<BlobId> {
        if let Some((n, _)) = opts.xattrs.iter().find(|(_, v)| v.is_empty()) {
            return Err(Error::invalid(format!("xattr {n:?} has an empty value")));
        }
        let o = ffi_shim::BlobCreateOpts {
            num_clusters: opts.num_clusters,
            thin_provision: opts.thin_provision,
            use_extent_table: opts.use_extent_table,
            clear_method: blob_clear(opts.clear_method),
            xattrs: opts.xattrs,
        };
        self.bs.create_blob(&o).await.map_err(map_err)
    }

    async fn open(&self, id: BlobId) -> Result<SpdkBlob> {
        self.bs.open_blob(id).await.map(SpdkBlob).map_err(map_err)
    }

    async fn close(&self, blob: SpdkBlob) -> Result<()> {
        self.bs.close_blob(&blob.0).await.map_err(map_err)
    }

    async fn delete(&self, id: BlobId) -> Result<()> {
        self.bs.delete_blob(id).await.map_err(map_err)
    }

    async fn blob_ids(&self) -> Result<Vec<BlobId>> {
        self.bs.blob_ids().await.map_err(map_err)
    }

    async fn set_super(&self, id: BlobId) -> Result<()> {
        self.bs.set_super(id).await.map_err(map_err)
    }

    async fn resize(&self, blob: &SpdkBlob, clusters: u64) -> Result<()> {
        self.bs.resize(&blob.0, clusters).await.map_err(map_err)
    }

    async fn sync_md(&self, blob: &SpdkBlob) -> Result<()> {
        self.bs.sync_md(&blob.0).await.map_err(map_err)
    }

    async fn set_read_only(&self, blob: &SpdkBlob) -> Result<()> {
        self.bs.set_read_only(&blob.0).map_err(map_err)
    }

    async fn set_xattr(&self, blob: &SpdkBlob, name: &str, value: &[u8]) -> Result<()> {
        self.bs.set_xattr(&blob.0, name, value).map_err(map_err)
    }

    async fn remove_xattr(&self, blob: &SpdkBlob, name: &str) -> Result<()> {
        self.bs.remove_xattr(&blob.0, name).map_err(|e| match e {
            ffi_shim::Error::Spdk { rc, .. } if rc == -errno::ENOENT => {
                Error::NotFound(format!("xattr {name:?}"))
            }
            e => map_err(e),
        })
    }

    async fn get_xattr(&self, blob: &SpdkBlob, name: &str) -> Result<Option<Vec<u8>>> {
        self.bs.get_xattr(&blob.0, name).map_err(map_err)
    }

    async fn xattr_names(&self, blob: &SpdkBlob) -> Result<Vec<String>> {
        self.bs.xattr_names(&blob.0).map_err(map_err)
    }

    fn channel(&self) -> Result<SpdkChannel> {
        self.bs.channel().map(SpdkChannel).map_err(map_err)
    }

    async fn unload(&self) -> Result<()> {
        self.bs.unload().await.map_err(map_err)
    }
}

impl IoChannel for SpdkChannel {
    type Blob = SpdkBlob;

    /// SPDK's completions need its thread polled by `block_on`; the engine reads SPDK stores
    /// there (the store does not [drive itself](BlobStore::drives_itself)).
    fn read_owned(
        &self,
        _blob: &SpdkBlob,
        _offset: u64,
        buf: AlignedBuf,
    ) -> impl Future<Output = (AlignedBuf, Result<()>)> + Send {
        std::future::ready((
            buf,
            Err(Error::Unsupported(
                "owned-buffer reads on SPDK run through block_on".into(),
            )),
        ))
    }

    async fn read(&self, blob: &SpdkBlob, offset: u64, buf: &mut [u8]) -> Result<()> {
        self.0.read(&blob.0, offset, buf).await.map_err(map_err)
    }

    async fn write(&self, blob: &SpdkBlob, offset: u64, buf: &[u8]) -> Result<()> {
        self.0.write(&blob.0, offset, buf).await.map_err(map_err)
    }

    async fn submit(&self, reqs: &mut [BlobIo<'_, SpdkBlob>]) -> Result<()> {
        let mut v: Vec<ffi_shim::IoReq<'_>> = reqs
            .iter_mut()
            .map(|r| match r {
                BlobIo::Read { blob, offset, buf } => ffi_shim::IoReq::Read {
                    blob: &blob.0,
                    offset: *offset,
                    buf,
                },
                BlobIo::Write { blob, offset, buf } => ffi_shim::IoReq::Write {
                    blob: &blob.0,
                    offset: *offset,
                    buf,
                },
            })
            .collect();
        self.0.submit(&mut v).await.map_err(map_err)
    }

    async fn unmap(&self, blob: &SpdkBlob, offset: u64, len: u64) -> Result<()> {
        self.0.unmap(&blob.0, offset, len).await.map_err(map_err)
    }

    async fn write_zeroes(&self, blob: &SpdkBlob, offset: u64, len: u64) -> Result<()> {
        self.0
            .write_zeroes(&blob.0, offset, len)
            .await
            .map_err(map_err)
    }

    async fn flush(&self) -> Result<()> {
        self.0.flush().await.map_err(map_err)
    }
}
