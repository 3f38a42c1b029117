//! The blobstore layer: SPDK blobstore semantics behind one async trait.
//!
//! [`BlobStore`] mirrors SPDK's blob API (`spdk-blob-api.md` in the design notes): metadata
//! operations (create, open, close, delete, resize, sync_md, xattrs, super blob, iterate,
//! unload) are serialized as on SPDK's metadata thread; data I/O goes through a per-thread
//! [`IoChannel`] and may run on many threads at once. Offsets and lengths of blob I/O are in
//! io units. Metadata changes are volatile until `sync_md` (or `close`).
//!
//! Backends: `native` (pure Rust over a [`crate::device::Device`], writing SPDK's on-disk
//! format) and, with the `spdk` feature, real SPDK.

use std::future::Future;

mod error;
pub use error::{Error, Result};

pub mod native;
#[cfg(feature = "replay")]
pub mod replay;
#[cfg(feature = "spdk")]
pub mod spdk;

/// A blob id: `0x1_0000_0000 | root md index`, as in SPDK.
pub type BlobId = u64;

/// "No blob" (SPDK's `SPDK_BLOBID_INVALID`).
pub const INVALID_BLOB_ID: BlobId = u64::MAX;

/// Default cluster size (1 MiB), as SPDK's `spdk_bs_opts_init`.
pub const DEFAULT_CLUSTER_SIZE: u32 = 1 << 20;

/// The 16-byte application tag in the super block. All zero = untyped.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Bstype(pub [u8; 16]);

impl Bstype {
    /// Tag from a string of at most 16 bytes, zero-padded.
    pub fn new(s: &str) -> Result<Self> {
        let b = s.as_bytes();
        if b.len() > 16 {
            return Err(Error::invalid(format!(
                "bstype {s:?} is longer than 16 bytes"
            )));
        }
        let mut t = [0u8; 16];
        t[..b.len()].copy_from_slice(b);
        Ok(Bstype(t))
    }

    /// True for the all-zero tag, which a loader treats as "accept any".
    pub fn is_zero(&self) -> bool {
        self.0 == [0; 16]
    }

    /// Printable form: the bytes up to the first NUL, lossy UTF-8.
    pub fn as_text(&self) -> String {
        let end = self.0.iter().position(|&b| b == 0).unwrap_or(16);
        String::from_utf8_lossy(&self.0[..end]).into_owned()
    }
}

impl std::fmt::Debug for Bstype {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Bstype({:?})", self.as_text())
    }
}

/// How freed clusters of a blob are cleared (the `md_ro_flags` clear-method bits).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ClearMethod {
    #[default]
    Default,
    None,
    Unmap,
    WriteZeroes,
}

/// Options of [`BlobStore`] initialisation (SPDK `spdk_bs_opts`).
#[derive(Debug, Clone)]
pub struct InitOpts {
    /// Bytes per cluster: a multiple of 4096, at least the md page size.
    pub cluster_size: u32,
    /// Md pages in the metadata region; `None` = one per cluster (SPDK's "auto").
    pub num_md_pages: Option<u32>,
    /// Application tag.
    pub bstype: Bstype,
    /// Md page size; `None` = max(4096, io unit size).
    pub md_page_size: Option<u32>,
    /// Io unit size: a power of two, a multiple of the device block size; `None` = the
    /// device block size (what SPDK uses: its bdev's block length).
    pub io_unit_size: Option<u32>,
    /// How init clears the data area.
    pub clear_method: ClearMethod,
}

impl Default for InitOpts {
    fn default() -> Self {
        InitOpts {
            cluster_size: DEFAULT_CLUSTER_SIZE,
            num_md_pages: None,
            bstype: Bstype::default(),
            md_page_size: None,
            io_unit_size: None,
            clear_method: ClearMethod::Unmap,
        }
    }
}

/// Options of loading an existing blobstore.
#[derive(Debug, Clone, Default)]
pub struct LoadOpts {
    /// Expected tag; all zero accepts any store.
    pub bstype: Bstype,
    /// Rebuild the masks from metadata even if the store is clean.
    pub force_recover: bool,
}

/// Options of [`BlobStore::create`] (SPDK `spdk_blob_opts`).
#[derive(Debug, Clone)]
pub struct CreateOpts {
    pub num_clusters: u64,
    pub thin_provision: bool,
    /// Extent pages (SPDK's default) instead of run-length extents.
    pub use_extent_table: bool,
    pub clear_method: ClearMethod,
    /// User xattrs set before the first persist. Empty values are rejected, as by SPDK.
    pub xattrs: Vec<(String, Vec<u8>)>,
}

impl Default for CreateOpts {
    fn default() -> Self {
        CreateOpts {
            num_clusters: 0,
            thin_provision: false,
            use_extent_table: true,
            clear_method: ClearMethod::Default,
            xattrs: Vec::new(),
        }
    }
}

/// An open blob. Cheap to clone; every successful [`BlobStore::open`] needs one
/// [`BlobStore::close`].
pub trait Blob: Clone + Send + Sync + 'static {
    fn id(&self) -> BlobId;
    /// Size in clusters (including unallocated clusters of a thin blob).
    fn num_clusters(&self) -> u64;
    /// Size in io units.
    fn num_io_units(&self) -> u64;
    /// Clusters actually backed by device clusters.
    fn num_allocated_clusters(&self) -> u64;
    fn is_thin(&self) -> bool;
    fn is_read_only(&self) -> bool;
}

/// A blobstore. Metadata methods may be called from any thread; the backend serializes them.
pub trait BlobStore: Send + Sync + 'static {
    type Blob: Blob;
    type Channel: IoChannel<Blob = Self::Blob>;

    fn io_unit_size(&self) -> u32;
    fn cluster_size(&self) -> u32;
    fn md_page_size(&self) -> u32;
    fn bstype(&self) -> Bstype;
    fn free_clusters(&self) -> u64;
    fn total_data_clusters(&self) -> u64;
    /// The super blob id set by [`BlobStore::set_super`], if any.
    fn super_blob(&self) -> Option<BlobId>;

    /// Run `f` to completion on the calling thread, driving the backend's event loop if it
    /// has one (SPDK threads are polled here).
    fn block_on<F: Future>(&self, f: F) -> F::Output;

    /// Whether the backend's futures complete without [`BlobStore::block_on`] driving an event
    /// loop (the native one: they complete in place or from the device's own reactor), so
    /// they may be awaited on any executor. SPDK's need its thread polled.
    fn drives_itself(&self) -> bool {
        false
    }

    /// A ticket for [`BlobStore::flush_to`] when the backend shares device flushes among
    /// its callers (the native one, `device::FlushCombiner`): the number of the first flush
    /// not started yet, which covers every write completed now. `None` when it does not
    /// (SPDK): flush through a channel.
    fn flush_ticket(&self) -> Option<u64> {
        None
    }

    /// Return once the flush numbered `ticket` (from [`BlobStore::flush_ticket`]) finished,
    /// running it if no flush runs; needs no channel. Only for backends with tickets.
    fn flush_to(&self, ticket: u64) -> impl Future<Output = Result<()>> + Send {
        async move {
            Err(Error::Unsupported(format!(
                "flush ticket {ticket}: this blobstore shares no flushes"
            )))
        }
    }

    /// Create (and persist) a blob; it is not left open.
    fn create(&self, opts: CreateOpts) -> impl Future<Output = Result<BlobId>> + Send;
    /// Open a blob; opening an open blob returns the same handle with one more reference.
    fn open(&self, id: BlobId) -> impl Future<Output = Result<Self::Blob>> + Send;
    /// Persist dirty metadata and drop one reference.
    fn close(&self, blob: Self::Blob) -> impl Future<Output = Result<()>> + Send;
    /// Delete a blob that nobody has open; its clusters become free.
    fn delete(&self, id: BlobId) -> impl Future<Output = Result<()>> + Send;
    /// Every blob id, in md-index order.
    fn blob_ids(&self) -> impl Future<Output = Result<Vec<BlobId>>> + Send;
    /// Record `id` (or [`INVALID_BLOB_ID`]) as the super blob, durably.
    fn set_super(&self, id: BlobId) -> impl Future<Output = Result<()>> + Send;
    /// Change the size in clusters (in memory until `sync_md`). Thick blobs claim clusters now.
    fn resize(&self, blob: &Self::Blob, clusters: u64) -> impl Future<Output = Result<()>> + Send;
    /// Persist the blob's metadata with SPDK's crash-safe ordering.
    fn sync_md(&self, blob: &Self::Blob) -> impl Future<Output = Result<()>> + Send;
    /// Mark the blob read-only from the next `sync_md` on.
    fn set_read_only(&self, blob: &Self::Blob) -> impl Future<Output = Result<()>> + Send;
    /// Set (or replace) a user xattr, in memory until `sync_md`.
    fn set_xattr(
        &self,
        blob: &Self::Blob,
        name: &str,
        value: &[u8],
    ) -> impl Future<Output = Result<()>> + Send;
    /// Remove a user xattr (`NotFound` if absent).
    fn remove_xattr(
        &self,
        blob: &Self::Blob,
        name: &str,
    ) -> impl Future<Output = Result<()>> + Send;
    /// A user xattr's value, `None` if absent.
    fn get_xattr(
        &self,
        blob: &Self::Blob,
        name: &str,
    ) -> impl Future<Output = Result<Option<Vec<u8>>>> + Send;
    /// Names of the user xattrs, in on-disk order.
    fn xattr_names(&self, blob: &Self::Blob) -> impl Future<Output = Result<Vec<String>>> + Send;
    /// The device cluster behind every cluster of an open blob (0 = unallocated), where the
    /// backend can tell (the native one); the engine's catalog records it for `repair`.
    fn device_clusters(&self, _blob: &Self::Blob) -> Option<Vec<u32>> {
        None
    }
    /// The store was loaded from a clean shutdown, where the backend can tell (the native
    /// one): the engine's catalog written by that shutdown then lists exactly its blobs.
    fn loaded_clean(&self) -> bool {
        false
    }
    /// An I/O channel for the calling thread.
    fn channel(&self) -> Result<Self::Channel>;
    /// Write the masks and a clean super block. Fails `Busy` while blobs are open; the store
    /// refuses every operation afterwards.
    fn unload(&self) -> impl Future<Output = Result<()>> + Send;
}

/// One request of a batch submitted with [`IoChannel::submit`].
#[derive(Debug)]
pub enum BlobIo<'a, B> {
    Read {
        blob: &'a B,
        offset: u64,
        buf: &'a mut [u8],
    },
    Write {
        blob: &'a B,
        offset: u64,
        buf: &'a [u8],
    },
}

/// Data I/O on one thread. Offsets and lengths are in io units (buffer lengths in bytes are
/// multiples of the io unit size).
pub trait IoChannel: Send + 'static {
    type Blob: Blob;

    fn read(
        &self,
        blob: &Self::Blob,
        offset: u64,
        buf: &mut [u8],
    ) -> impl Future<Output = Result<()>> + Send;
    /// Read into an owned buffer, handed back with the outcome; dropping the future early is
    /// safe (see [`crate::device::Device::read_owned`]). Only a store that
    /// [drives itself](BlobStore::drives_itself) needs to complete it off `block_on`.
    fn read_owned(
        &self,
        blob: &Self::Blob,
        offset: u64,
        buf: crate::device::AlignedBuf,
    ) -> impl Future<Output = (crate::device::AlignedBuf, Result<()>)> + Send;
    /// Write; the first write to an unallocated cluster of a thin blob allocates it and
    /// persists the cluster map before the data write.
    fn write(
        &self,
        blob: &Self::Blob,
        offset: u64,
        buf: &[u8],
    ) -> impl Future<Output = Result<()>> + Send;
    /// Submit several requests at once (queue depth = `reqs.len()`).
    fn submit(
        &self,
        reqs: &mut [BlobIo<'_, Self::Blob>],
    ) -> impl Future<Output = Result<()>> + Send;
    /// Unmap `len` io units; on a thin blob whole clusters are released.
    fn unmap(
        &self,
        blob: &Self::Blob,
        offset: u64,
        len: u64,
    ) -> impl Future<Output = Result<()>> + Send;
    /// Write zeroes over `len` io units.
    fn write_zeroes(
        &self,
        blob: &Self::Blob,
        offset: u64,
        len: u64,
    ) -> impl Future<Output = Result<()>> + Send;
    /// Make completed data writes durable (device flush). SPDK never flushes on its own; a
    /// device with a volatile cache needs this at every durability point.
    fn flush(&self) -> impl Future<Output = Result<()>> + Send;
}
