//! The API without SPDK: [`Env::start`] and [`Blobstore::start`] report why SPDK is
//! unavailable, and no other value can exist (the handle types are uninhabited).

use crate::{
    BlobCreateOpts, BsInitOpts, BsLoadOpts, Config, EnvOpts, Error, IoReq, Result, StartMode,
};

fn reason() -> Error {
    Error::Unavailable(if cfg!(feature = "spdk") {
        "ffi-shim was built with the `spdk` feature, but spdk-sys found no SPDK on the \
         pkg-config path at build time (set PKG_CONFIG_PATH or SPDK_DIR and rebuild)"
            .into()
    } else {
        "built without the `spdk` cargo feature".into()
    })
}

#[derive(Debug, Clone, Copy)]
enum Never {}

/// The SPDK environment (uninhabited in this build).
#[derive(Debug)]
pub struct Env(Never);

/// A blobstore (uninhabited in this build).
#[derive(Debug, Clone)]
pub struct Blobstore(Never);

/// An open blob (uninhabited in this build).
#[derive(Debug, Clone)]
pub struct Blob(Never);

/// An I/O channel (uninhabited in this build).
#[derive(Debug)]
pub struct Channel(Never);

/// Run a future to completion on the calling thread.
pub fn block_on<F: std::future::Future>(f: F) -> F::Output {
    pollster::block_on(f)
}

impl Env {
    /// Always fails: no SPDK in this build.
    pub fn start(_opts: &EnvOpts) -> Result<&'static Env> {
        Err(reason())
    }
    /// Always `None`.
    pub fn get() -> Option<&'static Env> {
        None
    }
    /// SPDK's version string.
    pub fn version(&self) -> &str {
        match self.0 {}
    }
    /// Run a JSON config.
    pub async fn load_config(&self, _config: &Config) -> Result<()> {
        match self.0 {}
    }
    /// Block size and count of a bdev.
    pub fn bdev_geometry(&self, _name: &str) -> Option<(u32, u64)> {
        match self.0 {}
    }
    /// Zero every block of a bdev.
    pub async fn zero_bdev(&self, _name: &str) -> Result<()> {
        match self.0 {}
    }
}

impl Blobstore {
    /// Always fails: no SPDK in this build.
    pub async fn start(
        _env_opts: &EnvOpts,
        _config: &Config,
        _bdev: &str,
        _mode: StartMode,
    ) -> Result<Blobstore> {
        Err(reason())
    }
    /// Format a blobstore.
    pub async fn init(env: &'static Env, _bdev: &str, _opts: &BsInitOpts) -> Result<Blobstore> {
        match env.0 {}
    }
    /// Load a blobstore.
    pub async fn load(env: &'static Env, _bdev: &str, _opts: &BsLoadOpts) -> Result<Blobstore> {
        match env.0 {}
    }
    /// The environment.
    pub fn env(&self) -> &'static Env {
        match self.0 {}
    }
    /// The bdev name.
    pub fn bdev_name(&self) -> &str {
        match self.0 {}
    }
    /// Io unit size.
    pub fn io_unit_size(&self) -> u32 {
        match self.0 {}
    }
    /// Cluster size.
    pub fn cluster_size(&self) -> u32 {
        match self.0 {}
    }
    /// Md page size.
    pub fn page_size(&self) -> u32 {
        match self.0 {}
    }
    /// The tag.
    pub fn bstype(&self) -> [u8; 16] {
        match self.0 {}
    }
    /// The super blob.
    pub fn super_blob(&self) -> Option<u64> {
        match self.0 {}
    }
    /// Free clusters.
    pub fn free_clusters(&self) -> Result<u64> {
        match self.0 {}
    }
    /// Total data clusters.
    pub fn total_data_clusters(&self) -> Result<u64> {
        match self.0 {}
    }
    /// Create a blob.
    pub async fn create_blob(&self, _opts: &BlobCreateOpts) -> Result<u64> {
        match self.0 {}
    }
    /// Open a blob.
    pub async fn open_blob(&self, _id: u64) -> Result<Blob> {
        match self.0 {}
    }
    /// Close a blob.
    pub async fn close_blob(&self, _blob: &Blob) -> Result<()> {
        match self.0 {}
    }
    /// Delete a blob.
    pub async fn delete_blob(&self, _id: u64) -> Result<()> {
        match self.0 {}
    }
    /// All blob ids.
    pub async fn blob_ids(&self) -> Result<Vec<u64>> {
        match self.0 {}
    }
    /// Set the super blob.
    pub async fn set_super(&self, _id: u64) -> Result<()> {
        match self.0 {}
    }
    /// Grow to the bdev's size.
    pub async fn grow_live(&self) -> Result<()> {
        match self.0 {}
    }
    /// Resize.
    pub async fn resize(&self, _blob: &Blob, _clusters: u64) -> Result<()> {
        match self.0 {}
    }
    /// Sync metadata.
    pub async fn sync_md(&self, _blob: &Blob) -> Result<()> {
        match self.0 {}
    }
    /// Mark read-only.
    pub fn set_read_only(&self, _blob: &Blob) -> Result<()> {
        match self.0 {}
    }
    /// Set an xattr.
    pub fn set_xattr(&self, _blob: &Blob, _name: &str, _value: &[u8]) -> Result<()> {
        match self.0 {}
    }
    /// Remove an xattr.
    pub fn remove_xattr(&self, _blob: &Blob, _name: &str) -> Result<()> {
        match self.0 {}
    }
    /// Get an xattr.
    pub fn get_xattr(&self, _blob: &Blob, _name: &str) -> Result<Option<Vec<u8>>> {
        match self.0 {}
    }
    /// Xattr names.
    pub fn xattr_names(&self, _blob: &Blob) -> Result<Vec<String>> {
        match self.0 {}
    }
    /// An I/O channel.
    pub fn channel(&self) -> Result<Channel> {
        match self.0 {}
    }
    /// Unload.
    pub async fn unload(&self) -> Result<()> {
        match self.0 {}
    }
    /// Forget without unloading.
    pub fn abandon(&self) {
        match self.0 {}
    }
}

impl Blob {
    /// The id.
    pub fn id(&self) -> u64 {
        match self.0 {}
    }
    /// Size in clusters.
    pub fn num_clusters(&self) -> u64 {
        match self.0 {}
    }
    /// Size in io units.
    pub fn num_io_units(&self) -> u64 {
        match self.0 {}
    }
    /// Allocated clusters.
    pub fn num_allocated_clusters(&self) -> u64 {
        match self.0 {}
    }
    /// Thin?
    pub fn is_thin(&self) -> bool {
        match self.0 {}
    }
    /// Read-only?
    pub fn is_read_only(&self) -> bool {
        match self.0 {}
    }
}

impl Channel {
    /// Read.
    pub async fn read(&self, _blob: &Blob, _offset: u64, _buf: &mut [u8]) -> Result<()> {
        match self.0 {}
    }
    /// Write.
    pub async fn write(&self, _blob: &Blob, _offset: u64, _buf: &[u8]) -> Result<()> {
        match self.0 {}
    }
    /// Batch.
    pub async fn submit(&self, _reqs: &mut [IoReq<'_>]) -> Result<()> {
        match self.0 {}
    }
    /// Unmap.
    pub async fn unmap(&self, _blob: &Blob, _offset: u64, _len: u64) -> Result<()> {
        match self.0 {}
    }
    /// Write zeroes.
    pub async fn write_zeroes(&self, _blob: &Blob, _offset: u64, _len: u64) -> Result<()> {
        match self.0 {}
    }
    /// Flush.
    pub async fn flush(&self) -> Result<()> {
        match self.0 {}
    }
}

// The real handles release SPDK resources on drop; keep the same shape here so code that
// drops them explicitly reads the same in both builds.
impl Drop for Blobstore {
    fn drop(&mut self) {
        match self.0 {}
    }
}

impl Drop for Blob {
    fn drop(&mut self) {
        match self.0 {}
    }
}

impl Drop for Channel {
    fn drop(&mut self) {
        match self.0 {}
    }
}
