//! Native blobstore: a pure-Rust implementation of SPDK's blobstore over a
//! [`crate::device::Device`], reading and writing SPDK's on-disk format (super block
//! version 3, documented in `docs/blobstore-format.md` at the repository root).
//!
//! Modules, one per on-disk structure (each with its byte table): [`superblock`], [`mask`],
//! [`mdpage`], [`descriptor`], [`layout`]; the blob metadata model [`blobmd`]; the store
//! ([`NativeBlobStore`]) and its data path ([`NativeChannel`]).
//!
//! # Snapshots, clones and esnap clones
//! Stores SPDK made with `spdk_bs_create_snapshot`, `spdk_bs_create_clone`,
//! `spdk_blob_set_read_only` and esnap clones load and read as SPDK reads them. A thin blob
//! with internal xattr `SNAP` (the parent's id, u64) reads an unallocated cluster from its
//! parent snapshot, recursively, and zeroes past a parent's end or at the end of the chain; a
//! blob with invalid flag `EXTERNAL_SNAPSHOT` reads it from the device an [`esnap`] resolver
//! gives for its `EXTSNAP` id (without one, such reads fail with `EsnapUnavailable`). As
//! SPDK, opening a clone opens its parents, which stay open until the clone's last close.
//! Recovery marks every blob's own clusters. The write side (copy on first write, snapshot,
//! clone, esnap clone, inflate, decouple, delete of a snapshot with one clone, the load-time
//! repair of a cut-short snapshot operation) is in `clone`. An unmap of a clone's cluster
//! unmaps the range but keeps the cluster (SPDK releases clusters only of blobs backed by
//! zeroes).
//!
//! # Behaviour chosen to match SPDK byte for byte
//! Every choice below is what SPDK does; following it makes our images identical to SPDK's
//! for the same operations (checked against the golden fixtures by `replay`).
//! - Allocation: a new blob's root and every chain page take the lowest free md index; extent
//!   pages the lowest free md index ≥ 1; clusters the lowest free cluster, in blob-cluster
//!   order (thick resize and thin first write alike).
//! - Serialization: FLAGS, user xattrs, internal xattrs, then the extent table or RLE runs,
//!   with SPDK's packing rules (see [`blobmd`]); pages are zero-padded.
//! - Init zeroes the super block, masks and md region, unmaps the data area (a file image
//!   keeps its bytes), writes the super block `clean = 0`, and writes no masks.
//! - Masks and the clean super block are written only at unload (and after recovery, which
//!   writes the masks only). `set_super` rewrites the super block keeping its clean flag.
//! - Freed clusters are unmapped (not zeroed), freed chain pages, deleted roots and truncated
//!   extent pages are zeroed.
//!
//! # Where we differ from SPDK (none changes the final image of a clean sequence)
//! - We flush the device at every ordering point (see [`store`]).
//! - On shrink, truncated extent pages are not rewritten with zero entries before the root
//!   commit; they are zeroed after it, and the retained last extent page is rewritten after
//!   the commit. Readers accept an extent page holding more entries than the blob's size.
//! - A thin allocation runs a full persist where SPDK rewrites only an existing extent page;
//!   the extra root write carries identical bytes unless the blob had unsynced changes.
//! - Recovery marks only the clusters inside each blob's size.

pub mod blobmd;
mod clone;
pub mod datamap;
pub mod descriptor;
pub mod esnap;
#[cfg(any(test, feature = "fuzzing"))]
pub mod fuzz;
mod gate;
pub mod layout;
pub mod mask;
pub mod mdpage;
pub mod rebuild;
pub mod store;
pub mod superblock;

use std::future::Future;
use std::sync::Arc;

pub use store::NativeBlobStore;

use crate::blobstore::error::{Error, Result};
use crate::blobstore::{
    Blob, BlobId, BlobIo, BlobStore, Bstype, CreateOpts, IoChannel, INVALID_BLOB_ID,
};
use crate::device::AlignedBuf;
use crate::device::{Device, IoRequest};
use datamap::{Backing, BlobShared, DataMap};
use esnap::{show_id, ExternalDevice};

/// An open blob of a [`NativeBlobStore`].
#[derive(Clone, Debug)]
pub struct NativeBlob {
    pub(crate) shared: Arc<BlobShared>,
}

/// What a blob reads where it has no cluster of its own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BlobParent {
    /// Zeroes (or nothing: a thick blob).
    None,
    /// A thin clone of this snapshot.
    Snapshot(BlobId),
    /// An esnap clone of the external snapshot with this id; `available` when the store's
    /// resolver gave a device for it.
    External { id: Vec<u8>, available: bool },
}

impl NativeBlob {
    /// The blob's parent (its backing), as resolved when it was opened.
    pub fn parent(&self) -> BlobParent {
        match &**self.shared.backing.load() {
            Backing::Zeroes => BlobParent::None,
            Backing::Snapshot(p) => BlobParent::Snapshot(p.id),
            Backing::External(id, _) => BlobParent::External {
                id: id.clone(),
                available: true,
            },
            Backing::MissingExternal(id) => BlobParent::External {
                id: id.clone(),
                available: false,
            },
        }
    }
}

impl Blob for NativeBlob {
    fn id(&self) -> BlobId {
        self.shared.id
    }
    fn num_clusters(&self) -> u64 {
        self.shared.map.load().len()
    }
    fn num_io_units(&self) -> u64 {
        self.num_clusters() * self.shared.units_per_cluster
    }
    fn num_allocated_clusters(&self) -> u64 {
        self.shared.map.load().allocated()
    }
    fn is_thin(&self) -> bool {
        self.shared.map.load().thin
    }
    fn is_read_only(&self) -> bool {
        self.shared.map.load().read_only
    }
}

impl<D: Device> BlobStore for NativeBlobStore<D> {
    type Blob = NativeBlob;
    type Channel = NativeChannel<D>;

    fn io_unit_size(&self) -> u32 {
        self.inner.layout.load().io_unit_size
    }
    fn cluster_size(&self) -> u32 {
        self.inner.layout.load().cluster_size
    }
    fn md_page_size(&self) -> u32 {
        self.inner.layout.load().md_page_size
    }
    fn bstype(&self) -> Bstype {
        self.inner.st.lock().sb.bstype
    }
    fn free_clusters(&self) -> u64 {
        let st = self.inner.st.lock();
        u64::from(st.clusters.len() - st.clusters.count_ones())
    }
    fn total_data_clusters(&self) -> u64 {
        u64::from(self.inner.layout.load().total_data_clusters())
    }
    fn super_blob(&self) -> Option<BlobId> {
        let s = self.inner.st.lock().sb.super_blob;
        (s != INVALID_BLOB_ID).then_some(s)
    }

    fn block_on<F: Future>(&self, f: F) -> F::Output {
        pollster::block_on(f)
    }

    fn drives_itself(&self) -> bool {
        true
    }

    fn flush_ticket(&self) -> Option<u64> {
        Some(self.inner.flush_ticket())
    }

    async fn flush_to(&self, ticket: u64) -> Result<()> {
        self.inner.flush_to(ticket).await.map_err(Error::from)
    }

    async fn create(&self, opts: CreateOpts) -> Result<BlobId> {
        self.inner.create(opts).await
    }
    async fn open(&self, id: BlobId) -> Result<NativeBlob> {
        Ok(NativeBlob {
            shared: self.inner.open(id).await?,
        })
    }
    async fn close(&self, blob: NativeBlob) -> Result<()> {
        self.inner.close(&blob.shared).await
    }
    async fn delete(&self, id: BlobId) -> Result<()> {
        self.inner.delete(id).await
    }
    fn device_clusters(&self, blob: &NativeBlob) -> Option<Vec<u32>> {
        Some(self.cluster_map(blob))
    }
    fn loaded_clean(&self) -> bool {
        self.inner.loaded_clean
    }
    async fn blob_ids(&self) -> Result<Vec<BlobId>> {
        self.inner.check_open()?;
        Ok(self
            .inner
            .st
            .lock()
            .blobids
            .ones()
            .map(blobmd::blob_id)
            .collect())
    }
    async fn set_super(&self, id: BlobId) -> Result<()> {
        self.inner.set_super(id).await
    }
    async fn resize(&self, blob: &NativeBlob, clusters: u64) -> Result<()> {
        self.inner.resize(&blob.shared, clusters).await
    }
    async fn sync_md(&self, blob: &NativeBlob) -> Result<()> {
        self.inner.sync_md(&blob.shared).await
    }
    async fn set_read_only(&self, blob: &NativeBlob) -> Result<()> {
        self.inner.set_read_only(&blob.shared).await
    }
    async fn set_xattr(&self, blob: &NativeBlob, name: &str, value: &[u8]) -> Result<()> {
        self.inner.set_xattr(&blob.shared, name, value).await
    }
    async fn remove_xattr(&self, blob: &NativeBlob, name: &str) -> Result<()> {
        self.inner.remove_xattr(&blob.shared, name).await
    }
    async fn get_xattr(&self, blob: &NativeBlob, name: &str) -> Result<Option<Vec<u8>>> {
        self.inner.get_xattr(&blob.shared, name)
    }
    async fn xattr_names(&self, blob: &NativeBlob) -> Result<Vec<String>> {
        self.inner.xattr_names(&blob.shared)
    }
    fn channel(&self) -> Result<NativeChannel<D>> {
        self.inner.check_open()?;
        Ok(NativeChannel {
            inner: self.inner.clone(),
        })
    }
    async fn unload(&self) -> Result<()> {
        self.inner.unload().await
    }
}

/// Data I/O of a [`NativeBlobStore`]: requests are split at cluster boundaries and submitted
/// to the device as one batch.
pub struct NativeChannel<D: Device> {
    inner: Arc<store::Inner<D>>,
}

/// One piece of a request inside one cluster: blob cluster, first io unit in it, io units.
type Piece = (u64, u64, u64);

/// Where one unallocated cluster of a blob reads from, down its backing chain.
pub(crate) enum Source {
    /// The chain ends in zeroes.
    Zeroes,
    /// Past the end of a parent snapshot: zeroes, but SPDK copies them on first write.
    PastEnd,
    /// A device cluster of an ancestor snapshot.
    Cluster(u32),
    External(Arc<dyn ExternalDevice>),
    /// An esnap clone (this id) whose external device is unknown.
    Missing(u64, Vec<u8>),
}

/// A read from an external snapshot: device, byte offset, buffer.
type ExtRead<'a> = (Arc<dyn ExternalDevice>, u64, &'a mut [u8]);

/// Follow `shared`'s backing for blob cluster `ci` (which `shared` does not hold): each
/// parent snapshot in turn, until one holds the cluster, a parent is smaller than `ci`
/// (zeroes, as SPDK reads past a parent's end), or the chain ends.
pub(crate) fn source(shared: &BlobShared, ci: u64) -> Source {
    let mut id = shared.id;
    let mut b = shared.backing.load_full();
    loop {
        let next = match &*b {
            Backing::Zeroes => return Source::Zeroes,
            Backing::External(_, d) => return Source::External(d.clone()),
            Backing::MissingExternal(eid) => return Source::Missing(id, eid.clone()),
            Backing::Snapshot(p) => {
                let m = p.map.load();
                if ci >= m.len() {
                    return Source::PastEnd;
                }
                match m.get(ci) {
                    0 => {
                        id = p.id;
                        p.backing.load_full()
                    }
                    c => return Source::Cluster(c),
                }
            }
        };
        b = next;
    }
}

fn pieces(offset: u64, len: u64, upc: u64) -> Vec<Piece> {
    let mut out = Vec::new();
    let mut o = offset;
    let end = offset + len;
    while o < end {
        let ci = o / upc;
        let u = o % upc;
        let n = (upc - u).min(end - o);
        out.push((ci, u, n));
        o += n;
    }
    out
}

impl<D: Device> NativeChannel<D> {
    fn units(&self, blob: &NativeBlob, bytes: usize) -> Result<u64> {
        if !blob.shared.is_open() {
            return Err(Error::BadHandle);
        }
        let ius = u64::from(self.inner.layout.load().io_unit_size);
        if !(bytes as u64).is_multiple_of(ius) {
            return Err(Error::invalid(format!(
                "buffer of {bytes} bytes is not a multiple of the {ius}-byte io unit"
            )));
        }
        Ok(bytes as u64 / ius)
    }

    fn check_range(map: &DataMap, upc: u64, offset: u64, len: u64) -> Result<()> {
        match offset.checked_add(len) {
            Some(e) if e <= map.len() * upc => Ok(()),
            _ => Err(Error::invalid(format!(
                "I/O at {offset}+{len} io units runs past the blob end ({})",
                map.len() * upc
            ))),
        }
    }

    /// Allocate every unallocated cluster a write of `len` units at `offset` touches.
    async fn prepare_write(&self, blob: &NativeBlob, offset: u64, len: u64) -> Result<()> {
        let upc = blob.shared.units_per_cluster;
        let map = blob.shared.map.load_full();
        Self::check_range(&map, upc, offset, len)?;
        if map.read_only {
            return Err(Error::ReadOnly(format!("blob {:#x}", blob.shared.id)));
        }
        let missing: Vec<u64> = pieces(offset, len, upc)
            .into_iter()
            .map(|p| p.0)
            .filter(|&ci| map.get(ci) == 0)
            .collect();
        if !missing.is_empty() {
            // An esnap clone without its device cannot copy: fail before claiming anything.
            for &ci in &missing {
                if let Source::Missing(b, id) = source(&blob.shared, ci) {
                    return Err(Error::EsnapUnavailable {
                        blob: b,
                        esnap_id: show_id(&id),
                    });
                }
            }
            self.inner.allocate(&blob.shared, &missing).await?;
        }
        Ok(())
    }

    fn dev_offset(&self, c: u32, unit: u64) -> u64 {
        self.inner.layout.load().cluster_offset(c)
            + unit * u64::from(self.inner.layout.load().io_unit_size)
    }

    /// Device requests for one blob request. A read of an unallocated cluster goes down the
    /// blob's backing: to an ancestor snapshot's cluster, to the external snapshot (`ext`),
    /// or zeroes.
    fn build<'a>(
        &self,
        req: &'a mut BlobIo<'_, NativeBlob>,
        out: &mut Vec<IoRequest<'a>>,
        ext: &mut Vec<ExtRead<'a>>,
    ) -> Result<()> {
        let ius = self.inner.layout.load().io_unit_size as usize;
        match req {
            BlobIo::Read { blob, offset, buf } => {
                let upc = blob.shared.units_per_cluster;
                let map = blob.shared.map.load();
                let len = self.units(blob, buf.len())?;
                Self::check_range(&map, upc, *offset, len)?;
                let mut rest: &'a mut [u8] = buf;
                for (ci, u, n) in pieces(*offset, len, upc) {
                    let (a, b) = rest.split_at_mut(n as usize * ius);
                    rest = b;
                    let c = match map.get(ci) {
                        0 => match source(&blob.shared, ci) {
                            Source::Zeroes | Source::PastEnd => {
                                a.fill(0);
                                continue;
                            }
                            Source::Cluster(c) => c,
                            Source::External(d) => {
                                let cs = u64::from(self.inner.layout.load().cluster_size);
                                ext.push((d, ci * cs + u * ius as u64, a));
                                continue;
                            }
                            Source::Missing(clone, id) => {
                                return Err(Error::EsnapUnavailable {
                                    blob: clone,
                                    esnap_id: show_id(&id),
                                })
                            }
                        },
                        c => c,
                    };
                    out.push(IoRequest::Read {
                        offset: self.dev_offset(c, u),
                        buf: a,
                    });
                }
            }
            BlobIo::Write { blob, offset, buf } => {
                let upc = blob.shared.units_per_cluster;
                let map = blob.shared.map.load();
                let len = self.units(blob, buf.len())?;
                Self::check_range(&map, upc, *offset, len)?;
                let mut rest: &'a [u8] = buf;
                for (ci, u, n) in pieces(*offset, len, upc) {
                    let (a, b) = rest.split_at(n as usize * ius);
                    rest = b;
                    match map.get(ci) {
                        0 => {
                            return Err(Error::invalid(format!(
                                "cluster {ci} of blob {:#x} is unallocated",
                                blob.shared.id
                            )))
                        }
                        c => out.push(IoRequest::Write {
                            offset: self.dev_offset(c, u),
                            buf: a,
                        }),
                    }
                }
            }
        }
        Ok(())
    }

    async fn run(&self, reqs: &mut [BlobIo<'_, NativeBlob>]) -> Result<()> {
        for r in reqs.iter() {
            if let BlobIo::Write { blob, offset, buf } = r {
                let len = self.units(blob, buf.len())?;
                self.prepare_write(blob, *offset, len).await?;
            }
        }
        let mut dev_reqs = Vec::new();
        let mut ext = Vec::new();
        for r in reqs.iter_mut() {
            self.build(r, &mut dev_reqs, &mut ext)?;
        }
        if !dev_reqs.is_empty() {
            self.inner.dev.submit(&mut dev_reqs).await?;
        }
        for (d, off, buf) in ext {
            read_external(d.as_ref(), off, buf).await?;
        }
        Ok(())
    }
}

impl<D: Device> IoChannel for NativeChannel<D> {
    type Blob = NativeBlob;

    async fn read_owned(
        &self,
        blob: &NativeBlob,
        offset: u64,
        buf: AlignedBuf,
    ) -> (AlignedBuf, Result<()>) {
        let mut buf = buf;
        // One allocated cluster holds the whole range: one device read, queued without
        // blocking. Anything else (a range across clusters, a thin hole) reads in place.
        let upc = blob.shared.units_per_cluster;
        let single = match self.units(blob, buf.len()) {
            Ok(len) => {
                let map = blob.shared.map.load();
                let ps = pieces(offset, len, upc);
                match (Self::check_range(&map, upc, offset, len), ps.as_slice()) {
                    (Ok(()), [(ci, u, _)]) if map.get(*ci) != 0 => {
                        Some(self.dev_offset(map.get(*ci), *u))
                    }
                    _ => None,
                }
            }
            Err(_) => None,
        };
        match single {
            Some(at) => {
                let (buf, r) = self.inner.dev.read_owned(at, buf).await;
                (buf, r.map_err(Error::from))
            }
            None => {
                let r = self.read(blob, offset, &mut buf).await;
                (buf, r)
            }
        }
    }

    async fn read(&self, blob: &NativeBlob, offset: u64, buf: &mut [u8]) -> Result<()> {
        self.run(&mut [BlobIo::Read { blob, offset, buf }]).await
    }

    async fn write(&self, blob: &NativeBlob, offset: u64, buf: &[u8]) -> Result<()> {
        self.run(&mut [BlobIo::Write { blob, offset, buf }]).await
    }

    async fn submit(&self, reqs: &mut [BlobIo<'_, NativeBlob>]) -> Result<()> {
        self.run(reqs).await
    }

    async fn unmap(&self, blob: &NativeBlob, offset: u64, len: u64) -> Result<()> {
        self.units(blob, 0)?;
        let upc = blob.shared.units_per_cluster;
        let map = blob.shared.map.load_full();
        Self::check_range(&map, upc, offset, len)?;
        if map.read_only {
            return Err(Error::ReadOnly(format!("blob {:#x}", blob.shared.id)));
        }
        let ius = u64::from(self.inner.layout.load().io_unit_size);
        let mut whole = Vec::new();
        for (ci, u, n) in pieces(offset, len, upc) {
            let c = map.get(ci);
            if c == 0 {
                continue;
            }
            // As SPDK: only a thin blob backed by zeroes gives whole clusters back; in a
            // clone that would expose the parent's data, so the range is only unmapped.
            let zeroes = matches!(**blob.shared.backing.load(), Backing::Zeroes);
            if map.thin && zeroes && u == 0 && n == upc {
                whole.push(ci);
            } else {
                self.inner.dev.unmap(self.dev_offset(c, u), n * ius).await?;
            }
        }
        if !whole.is_empty() {
            self.inner.release(&blob.shared, &whole).await?;
        }
        Ok(())
    }

    async fn write_zeroes(&self, blob: &NativeBlob, offset: u64, len: u64) -> Result<()> {
        let upc = blob.shared.units_per_cluster;
        let ius = self.inner.layout.load().io_unit_size as usize;
        let zero = vec![0u8; upc.min(len.max(1)) as usize * ius];
        for (ci, u, n) in pieces(offset, len, upc) {
            let o = ci * upc + u;
            self.write(blob, o, &zero[..n as usize * ius]).await?;
        }
        Ok(())
    }

    async fn flush(&self) -> Result<()> {
        self.inner.flush_dev().await.map_err(Error::from)
    }
}

/// Read `buf` at `off` of an external snapshot; what lies past its end reads as zeroes.
pub(crate) async fn read_external(d: &dyn ExternalDevice, off: u64, buf: &mut [u8]) -> Result<()> {
    let have = d.size_bytes().saturating_sub(off).min(buf.len() as u64) as usize;
    let (inside, past) = buf.split_at_mut(have);
    past.fill(0);
    if !inside.is_empty() {
        d.read_at(off, inside).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests;
