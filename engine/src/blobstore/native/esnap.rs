//! External snapshots (SPDK's esnap clones): a thin blob whose unallocated clusters read from
//! a device outside the blobstore, named by the opaque id stored in the blob's `EXTSNAP`
//! internal xattr. The caller maps ids to devices with an [`EsnapResolver`]
//! ([`super::NativeBlobStore::set_esnap_resolver`]); a blob whose id maps to nothing still
//! opens, and its reads that need the external device fail with
//! [`Error::EsnapUnavailable`](crate::blobstore::Error::EsnapUnavailable).

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use crate::device::{self, Device};

/// A future reading from an external device.
pub type ReadFuture<'a> = Pin<Box<dyn Future<Output = device::Result<()>> + Send + 'a>>;

/// A read-only device behind esnap clones. Reads are at the blob's own byte offsets, in
/// multiples of the store's io unit (a multiple of [`ExternalDevice::block_len`]).
/// (Method names differ from [`Device`]'s so that both traits can be in scope.)
pub trait ExternalDevice: Send + Sync + 'static {
    fn block_len(&self) -> u32;
    /// Bytes; the blob reads zeroes past it.
    fn size_bytes(&self) -> u64;
    fn read_at<'a>(&'a self, offset: u64, buf: &'a mut [u8]) -> ReadFuture<'a>;
}

impl<D: Device> ExternalDevice for D {
    fn block_len(&self) -> u32 {
        Device::block_size(self)
    }
    fn size_bytes(&self) -> u64 {
        Device::size(self)
    }
    fn read_at<'a>(&'a self, offset: u64, buf: &'a mut [u8]) -> ReadFuture<'a> {
        Box::pin(Device::read(self, offset, buf))
    }
}

/// Maps an esnap id (the `EXTSNAP` bytes) to its device, `None` when unknown.
pub trait EsnapResolver: Send + Sync + 'static {
    fn resolve(&self, esnap_id: &[u8]) -> Option<Arc<dyn ExternalDevice>>;
}

impl<F> EsnapResolver for F
where
    F: Fn(&[u8]) -> Option<Arc<dyn ExternalDevice>> + Send + Sync + 'static,
{
    fn resolve(&self, esnap_id: &[u8]) -> Option<Arc<dyn ExternalDevice>> {
        self(esnap_id)
    }
}

/// A fixed map of esnap ids to devices.
#[derive(Default, Clone)]
pub struct EsnapMap(HashMap<Vec<u8>, Arc<dyn ExternalDevice>>);

impl EsnapMap {
    pub fn new() -> Self {
        Self::default()
    }

    /// Map `id` to `dev` (replacing an earlier mapping).
    pub fn insert(&mut self, id: impl Into<Vec<u8>>, dev: Arc<dyn ExternalDevice>) {
        self.0.insert(id.into(), dev);
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl EsnapResolver for EsnapMap {
    fn resolve(&self, esnap_id: &[u8]) -> Option<Arc<dyn ExternalDevice>> {
        self.0.get(esnap_id).cloned()
    }
}

/// An esnap id for people: the text when it is printable UTF-8 (lvol stores a UUID string),
/// else hex.
pub fn show_id(id: &[u8]) -> String {
    match std::str::from_utf8(id) {
        Ok(s) if !s.is_empty() && s.chars().all(|c| !c.is_control()) => s.to_owned(),
        _ => {
            let hex: String = id.iter().map(|b| format!("{b:02x}")).collect();
            format!("0x{hex}")
        }
    }
}
