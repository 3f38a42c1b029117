//! `NativeBlobStore`: SPDK's blobstore semantics and on-disk format over a [`Device`].
//!
//! Concurrency: every metadata operation holds the `Gate` for its whole duration (SPDK's md
//! thread); the in-memory metadata lives in a `parking_lot` mutex that is only held between
//! awaits. Data I/O reads each blob's [`DataMap`] snapshot lock-free and takes the gate only
//! to allocate (or release) a thin cluster.
//!
//! Durability: SPDK never flushes; we flush the device at every ordering point:
//! after marking the super block dirty (before any other md write), after writing new chain
//! pages and extent pages (before the root), after the root (before retiring old pages or
//! releasing anything), after zeroing a deleted blob's root (before releasing its resources),
//! after the masks (before the clean super block) and after the clean super block.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use arc_swap::ArcSwap;
use parking_lot::Mutex;

use super::blobmd::{
    blob_id, parse_chain, parse_extent_page, recovery_type_ok, root_index, slots_for, BlobMd,
    FLAG_EXTENT_TABLE, FLAG_READ_ONLY, FLAG_THIN_PROV, MAX_BLOB_CLUSTERS, MD_RO_CLEAR_MASK,
};
use super::blobmd::{Parent, Xattr, FLAG_INTERNAL_XATTR};
use super::datamap::{Backing, BlobShared, DataMap};
use super::descriptor::CLUSTERS_PER_EXTENT_PAGE;
use super::esnap::{show_id, EsnapResolver};
use super::gate::Gate;
use super::layout::Layout;
use super::mask::{Mask, MaskKind};
use super::mdpage::{walk, MdPage, NO_NEXT, PAGE_STRUCT_SIZE};
use super::superblock::{SuperBlock, SUPER_BLOCK_SIZE};
use crate::blobstore::error::{Error, Result};
use crate::blobstore::{BlobId, Bstype, ClearMethod, CreateOpts, InitOpts, LoadOpts};
use crate::device::{Device, FlushCombiner};

/// Bytes written per request when zeroing large ranges.
const ZERO_CHUNK: u64 = 1 << 20;

/// Deepest snapshot chain we follow (a longer one is taken for a loop in damaged metadata).
const MAX_CHAIN: usize = 4096;

pub(crate) struct Inner<D> {
    pub dev: D,
    /// The geometry; replaced (never mutated) by `grow`, under the gate.
    pub layout: ArcSwap<Layout>,
    pub gate: Gate,
    pub st: Mutex<MdState>,
    /// The super block said `clean = 1` at load: the masks came from the disk (or were
    /// rebuilt because they disagreed) and the engine's catalog of that close is exact.
    pub loaded_clean: bool,
    /// Maps esnap ids to external devices for blobs opened from now on.
    pub esnap: Mutex<Option<Arc<dyn EsnapResolver>>>,
    /// Every flush of `dev` goes through it: concurrent callers (shards, merge, metadata)
    /// share one device flush.
    pub flusher: FlushCombiner,
}

pub(crate) struct MdState {
    /// The super block as on disk (plus pending `super_blob`).
    pub sb: SuperBlock,
    /// The super block on disk says `clean = 1`: mark it dirty before any md write.
    pub disk_clean: bool,
    pub md_pages: Mask,
    pub clusters: Mask,
    pub blobids: Mask,
    pub open: HashMap<BlobId, OpenBlob>,
    pub closed: bool,
    /// A metadata write failed part-way: the in-memory masks may claim what the disk no
    /// longer holds, so unload must leave the store dirty for recovery to rebuild them.
    pub md_failed: bool,
}

pub(crate) struct OpenBlob {
    pub shared: Arc<BlobShared>,
    pub md: BlobMd,
    /// What the device holds for this blob.
    pub clean: CleanState,
    pub dirty: bool,
    pub refs: u32,
    /// Metadata read-only as persisted (sync is then a no-op, changes are refused).
    pub md_ro: bool,
    /// Clusters dropped from the map, freed once a persist no longer references them.
    pub released_clusters: Vec<u32>,
    /// Extent pages dropped by a shrink, zeroed and freed after the next root commit.
    pub released_eps: Vec<u32>,
}

impl OpenBlob {
    /// A blob whose metadata exists only in memory so far (nothing of it on the device).
    fn unpersisted(shared: Arc<BlobShared>, md: BlobMd) -> Self {
        OpenBlob {
            shared,
            md,
            clean: CleanState::default(),
            dirty: true,
            refs: 0,
            md_ro: false,
            released_clusters: Vec::new(),
            released_eps: Vec::new(),
        }
    }
}

#[derive(Default, Clone)]
pub(crate) struct CleanState {
    /// Md indexes of the chain on disk, root first; empty before the first persist.
    pub chain: Vec<u32>,
    pub clusters: Vec<u32>,
    pub extent_pages: Vec<u32>,
}

fn clear_bits(m: ClearMethod) -> u64 {
    match m {
        ClearMethod::Default => 0,
        ClearMethod::None => 1,
        ClearMethod::Unmap => 2,
        ClearMethod::WriteZeroes => 3,
    }
}

/// A pure-Rust blobstore writing SPDK's on-disk format.
pub struct NativeBlobStore<D: Device> {
    pub(crate) inner: Arc<Inner<D>>,
}

impl<D: Device> Clone for NativeBlobStore<D> {
    fn clone(&self) -> Self {
        NativeBlobStore {
            inner: self.inner.clone(),
        }
    }
}

/// What one persist writes, computed under the state lock.
struct PersistPlan {
    need_dirty: bool,
    grow: bool,
    root: (u64, Vec<u8>),
    chain_pages: Vec<(u64, Vec<u8>)>,
    /// Extent pages at md indexes the disk root does not reference yet.
    new_extent_pages: Vec<(u64, Vec<u8>)>,
    /// Extent pages the disk root references, with new contents.
    extent_pages: Vec<(u64, Vec<u8>)>,
    new_chain: Vec<u32>,
    old_pages: Vec<u32>,
    released_eps: Vec<u32>,
    released_clusters: Vec<u32>,
    clear: u64,
}

impl<D: Device> NativeBlobStore<D> {
    /// Format `dev` (SPDK `spdk_bs_init`, `docs/blobstore-format.md`): zero bytes
    /// `0 .. num_md_pages * md_page_size`, clear the rest per `opts.clear_method` (unmap by
    /// default, which on a file image without hole punching leaves the old bytes, as SPDK's
    /// aio bdev does), then write the super block with `clean = 0`. The masks are not written:
    /// like SPDK, the first load of a never-unloaded store recovers them.
    pub async fn init(dev: D, opts: InitOpts) -> Result<Self> {
        let layout = Layout::for_init(dev.size(), dev.block_size(), &opts)?;
        let md_end = u64::from(layout.num_md_pages()) * u64::from(layout.md_page_size);
        write_zeroes(&dev, 0, md_end).await?;
        let bs = u64::from(dev.block_size());
        let data_end = dev.size() / bs * bs;
        if data_end > md_end {
            match opts.clear_method {
                ClearMethod::Default | ClearMethod::Unmap => {
                    dev.unmap(md_end, data_end - md_end).await?
                }
                ClearMethod::WriteZeroes => write_zeroes(&dev, md_end, data_end - md_end).await?,
                ClearMethod::None => {}
            }
        }
        let sb = layout.init_super(opts.bstype);
        dev.write(0, &sb.encode()).await?;
        dev.flush().await?;
        let mut clusters = Mask::new(layout.total_clusters);
        for c in 0..layout.num_md_clusters {
            clusters.set(c);
        }
        let st = MdState {
            sb,
            disk_clean: false,
            md_pages: Mask::new(layout.md_len),
            clusters,
            blobids: Mask::new(layout.md_len),
            open: HashMap::new(),
            closed: false,
            md_failed: false,
        };
        Ok(Self::from_parts(dev, layout, st, false))
    }

    fn from_parts(dev: D, layout: Layout, st: MdState, loaded_clean: bool) -> Self {
        NativeBlobStore {
            inner: Arc::new(Inner {
                dev,
                layout: ArcSwap::from_pointee(layout),
                gate: Gate::default(),
                st: Mutex::new(st),
                loaded_clean,
                esnap: Mutex::new(None),
                flusher: FlushCombiner::new(),
            }),
        }
    }

    /// Load a store (SPDK `spdk_bs_load`): validate the super block, then read the masks
    /// (clean store) or rebuild them in memory from the md region (dirty store, legacy store
    /// without blob-id mask, or `force_recover`). Loading writes nothing: a clean store stays
    /// `clean = 1` on disk until the first metadata change, a dirty one keeps its stale masks
    /// (the next load rebuilds them again, and a clean unload replaces them). A non-zero md
    /// page that fails its CRC is damage: the load fails naming it, rather than dropping the
    /// blob and freeing its clusters as SPDK does (see [`Self::load_salvage`]).
    pub async fn load(dev: D, opts: LoadOpts) -> Result<Self> {
        Self::load_with(dev, opts, false).await
    }

    /// Load with SPDK's recovery behaviour, for `repair`: md pages that fail their CRC are
    /// skipped, so a blob whose root is damaged is dropped and its clusters read as free.
    pub async fn load_salvage(dev: D, opts: LoadOpts) -> Result<Self> {
        Self::load_with(dev, opts, true).await
    }

    async fn load_with(dev: D, opts: LoadOpts, salvage: bool) -> Result<Self> {
        if dev.size() < SUPER_BLOCK_SIZE as u64 {
            return Err(Error::NotABlobstore(
                "device smaller than a super block".into(),
            ));
        }
        let mut b = vec![0u8; SUPER_BLOCK_SIZE];
        dev.read(0, &mut b).await?;
        let sb = SuperBlock::decode(&b)?;
        if !opts.bstype.is_zero() && opts.bstype != sb.bstype {
            return Err(Error::BstypeMismatch {
                expected: opts.bstype.as_text(),
                found: sb.bstype.as_text(),
            });
        }
        let layout = Layout::from_super(&sb, dev.size(), dev.block_size())?;
        let (md_pages, mut clusters, blobids) =
            if sb.is_clean() && layout.blobid_mask_len != 0 && !opts.force_recover {
                let m = read_masks(&dev, &layout).await?;
                if m.2.ones().all(|i| m.0.get(i)) {
                    m
                } else {
                    // A blob root the md-page mask calls free would be handed out again by
                    // the next create, over a live blob: trust the md pages instead.
                    log::warn!("blobstore: the clean masks disagree; rebuilding them in memory");
                    recover_with(&dev, &layout, salvage).await?
                }
            } else {
                recover_with(&dev, &layout, salvage).await?
            };
        for c in 0..layout.num_md_clusters {
            clusters.set(c);
        }
        let loaded_clean = sb.is_clean();
        let st = MdState {
            disk_clean: sb.is_clean(),
            sb,
            md_pages,
            clusters,
            blobids,
            open: HashMap::new(),
            closed: false,
            md_failed: false,
        };
        let store = Self::from_parts(dev, layout, st, loaded_clean);
        if !loaded_clean && !salvage {
            // A crash may have interrupted a snapshot's creation or deletion (SPDK's load
            // repairs those; only a dirty store can hold one).
            if let Err(e) = store.inner.finish_interrupted().await {
                log::warn!("blobstore: could not finish an interrupted snapshot operation: {e}");
            }
        }
        Ok(store)
    }

    /// Grow the store to `new_size` bytes of its device (SPDK `spdk_bs_grow_live`, after the
    /// device or image file got bigger; `new_size` at most the device's size). Only the super
    /// block is written — `clean = 0`, the new `size` and `used_cluster_mask_len` — and the
    /// cluster mask grows in memory; the clean unload writes it out, and a crash before that
    /// leaves a dirty store whose recovery rebuilds the masks at the new size. A size equal
    /// to the store's is a no-op; a smaller one, or one whose cluster mask would not fit the
    /// pages reserved for it at init, fails [`Error::NoSpace`] and writes nothing.
    pub async fn grow(&self, new_size: u64) -> Result<()> {
        self.inner.grow(new_size).await
    }

    /// See `Inner::restore_blob_md`: `repair`'s way back for a blob whose md page is lost.
    pub async fn restore_blob_md(
        &self,
        id: BlobId,
        xattrs: Vec<(String, Vec<u8>)>,
        clusters: Vec<u32>,
    ) -> Result<()> {
        self.inner.restore_blob_md(id, xattrs, clusters).await
    }

    /// Give the store a way to find the external device of esnap clones (SPDK's
    /// `esnap_bs_dev_create`). It applies to blobs opened afterwards; without one, an esnap
    /// clone opens but its reads that need the external device fail.
    pub fn set_esnap_resolver(&self, resolver: Option<Arc<dyn EsnapResolver>>) {
        *self.inner.esnap.lock() = resolver;
    }

    /// An open blob's internal xattrs (SPDK's `SNAP`, `EXTSNAP`, ...), in on-disk order.
    pub fn internal_xattrs(&self, blob: &super::NativeBlob) -> Result<Vec<(String, Vec<u8>)>> {
        self.inner.with_blob(&blob.shared, |_, ob| {
            Ok(ob
                .md
                .internal_xattrs
                .iter()
                .map(|(k, v)| (String::from_utf8_lossy(k).into_owned(), v.clone()))
                .collect())
        })
    }

    /// The device under the store.
    pub fn device(&self) -> &D {
        &self.inner.dev
    }

    /// The store's geometry.
    pub fn layout(&self) -> Layout {
        Layout::clone(&self.inner.layout.load())
    }

    /// Give the device back (after `unload`, or to simulate a crash: dropping a store without
    /// unloading is exactly a crash). Fails `Busy` while channels or other clones exist.
    pub fn into_device(self) -> Result<D> {
        match Arc::try_unwrap(self.inner) {
            Ok(inner) => Ok(inner.dev),
            Err(_) => Err(Error::Busy("store still has channels or clones".into())),
        }
    }

    /// Cluster mask bits set (md clusters included), for checks.
    pub fn used_clusters(&self) -> Vec<u32> {
        self.inner.st.lock().clusters.ones().collect()
    }

    /// Md page mask bits set, for checks.
    pub fn used_md_pages(&self) -> Vec<u32> {
        self.inner.st.lock().md_pages.ones().collect()
    }

    /// Blob-id mask bits set, for checks.
    pub fn used_blob_ids(&self) -> Vec<u32> {
        self.inner.st.lock().blobids.ones().collect()
    }

    /// The three masks as the device holds them (md pages, clusters, blob ids), whatever the
    /// load did with them; `None` on a store without a blob-id mask. For checks: a load that
    /// found them inconsistent rebuilt them in memory, hiding what is on disk.
    pub async fn disk_masks(&self) -> Result<Option<[Vec<u32>; 3]>> {
        let l = self.inner.layout.load_full();
        if l.blobid_mask_len == 0 {
            return Ok(None);
        }
        let (m, c, b) = read_masks(&self.inner.dev, &l).await?;
        Ok(Some([
            m.ones().collect(),
            c.ones().collect(),
            b.ones().collect(),
        ]))
    }

    /// The device cluster behind every blob cluster (0 = unallocated), for checks and tools.
    pub fn cluster_map(&self, blob: &super::NativeBlob) -> Vec<u32> {
        let m = blob.shared.map.load();
        (0..m.len()).map(|i| m.get(i)).collect()
    }
}

impl<D: Device> Inner<D> {
    /// Flush the device, sharing the flush with concurrent callers: every write completed
    /// before this call is durable when it returns.
    pub(crate) async fn flush_dev(&self) -> crate::device::Result<()> {
        self.flusher.flush(|| self.dev.flush()).await
    }

    /// A ticket for [`Inner::flush_to`]: the number of the first flush not started yet.
    pub(crate) fn flush_ticket(&self) -> u64 {
        self.flusher.ticket()
    }

    /// Return once the flush numbered `ticket` finished (running it if none runs).
    pub(crate) async fn flush_to(&self, ticket: u64) -> crate::device::Result<()> {
        self.flusher.wait(ticket, || self.dev.flush()).await
    }

    pub(crate) fn check_open(&self) -> Result<()> {
        if self.st.lock().closed {
            Err(Error::Closed)
        } else {
            Ok(())
        }
    }

    async fn read_page(&self, i: u32) -> Result<Vec<u8>> {
        read_md_page(&self.dev, &self.layout.load_full(), i).await
    }

    /// Write the super block with `clean = 0` and flush (SPDK's mark-dirty step 0).
    async fn mark_dirty(&self) -> Result<()> {
        let bytes = {
            let mut st = self.st.lock();
            st.sb.clean = 0;
            if st.sb.size == 0 {
                st.sb.size = self.layout.load().size;
            }
            st.sb.encode()
        };
        self.dev.write(0, &bytes).await?;
        self.flush_dev().await?;
        self.st.lock().disk_clean = false;
        Ok(())
    }

    pub(crate) async fn mark_dirty_if_needed(&self) -> Result<()> {
        let need = self.st.lock().disk_clean;
        if need {
            self.mark_dirty().await?;
        }
        Ok(())
    }

    /// Read and validate a blob's metadata: chain, descriptors, extent pages. Returns the
    /// metadata and the chain's md indexes.
    pub(crate) async fn read_blob(&self, id: BlobId) -> Result<(BlobMd, Vec<u32>)> {
        let l = &*self.layout.load_full();
        let root = root_index(id)
            .filter(|&i| i < l.md_len)
            .ok_or_else(|| Error::NotFound(format!("blob {id:#x}")))?;
        if !self.st.lock().blobids.get(root) {
            return Err(Error::NotFound(format!("blob {id:#x}")));
        }
        let corrupt = |d: String| Error::Corruption {
            blob: id,
            offset: 0,
            detail: d,
        };
        let mut chain = vec![root];
        let mut pages = Vec::new();
        let mut idx = root;
        loop {
            self.md_page_marked(id, idx)?;
            let b = self.read_page(idx).await?;
            let p = MdPage::decode(&b, l.md_offset(idx)).map_err(|e| corrupt(format!("{e}")))?;
            let seq = pages.len() as u32;
            if p.id != id || p.sequence_num != seq {
                if seq == 0 {
                    // A valid page of another blob: the id's used bit is stray (a leak, or
                    // damage). Forget it in memory so the next clean unload drops it.
                    self.st.lock().blobids.clear(root);
                    log::warn!("blobstore: blob id {id:#x} is marked used but has no root page");
                    return Err(Error::NotFound(format!(
                        "blob {id:#x}: root owned by {:#x}",
                        p.id
                    )));
                }
                return Err(corrupt(format!(
                    "chain page {idx} belongs to {:#x}/{}",
                    p.id, p.sequence_num
                )));
            }
            let next = p.next;
            pages.push(p);
            if next == NO_NEXT {
                break;
            }
            if next >= l.md_len || chain.contains(&next) {
                return Err(corrupt(format!("chain next {next} is invalid")));
            }
            chain.push(next);
            idx = next;
        }
        let parsed = parse_chain(id, &pages, l.total_clusters, l.md_len, false)?;
        let mut md = parsed.md;
        if md.extent_table {
            let n = parsed.table_clusters;
            let per = u64::from(CLUSTERS_PER_EXTENT_PAGE);
            let mut clusters = Vec::with_capacity(n as usize);
            for (slot, &ep) in md.extent_pages.iter().enumerate() {
                let want = (n - slot as u64 * per).min(per) as usize;
                if ep == 0 {
                    clusters.resize(clusters.len() + want, 0);
                    continue;
                }
                self.md_page_marked(id, ep)?;
                let b = self.read_page(ep).await?;
                let p = MdPage::decode(&b, l.md_offset(ep)).map_err(|e| corrupt(format!("{e}")))?;
                clusters.extend(parse_extent_page(id, &p, slot, want, l.total_clusters)?);
            }
            md.clusters = clusters;
            if !md.is_thin() && md.clusters.contains(&0) {
                return Err(corrupt("unallocated cluster in a thick blob".into()));
            }
        }
        let st = self.st.lock();
        for &c in md.clusters.iter().filter(|&&c| c != 0) {
            if c < l.num_md_clusters {
                return Err(corrupt(format!("cluster {c} is a metadata cluster")));
            }
            if !st.clusters.get(c) {
                // The next allocation would hand this cluster out again, over live data.
                return Err(corrupt(format!(
                    "used-cluster mask bit {c} is clear for device cluster {c} of live blob \
                     {id:#x} (damaged mask; `blobcask repair` rebuilds it)"
                )));
            }
        }
        Ok((md, chain))
    }

    /// A live blob's md page must be marked used, or the next md allocation takes it.
    fn md_page_marked(&self, id: BlobId, idx: u32) -> Result<()> {
        if self.st.lock().md_pages.get(idx) {
            return Ok(());
        }
        Err(Error::Corruption {
            blob: id,
            offset: self.layout.load().md_offset(idx),
            detail: format!(
                "used-md-page mask bit {idx} is clear for md page {idx} of live blob {id:#x} \
                 (damaged mask; `blobcask repair` rebuilds it)"
            ),
        })
    }

    /// Persist a blob's metadata (with our flushes). Caller holds the gate.
    pub(crate) async fn persist_locked(&self, id: BlobId) -> Result<()> {
        let Some(plan) = self.plan_persist(id)? else {
            return Ok(());
        };
        match self.persist_io(&plan).await {
            Ok(()) => {
                self.finish_persist(id, plan);
                Ok(())
            }
            Err(e) => {
                // The root may or may not have reached the disk: keep the new chain pages
                // claimed (a leak until the next recovery) and free nothing the old root
                // may still reference.
                let mut st = self.st.lock();
                st.md_failed = true;
                if let Some(ob) = st.open.get_mut(&id) {
                    ob.released_clusters.extend(plan.released_clusters);
                    ob.released_eps.extend(plan.released_eps);
                }
                Err(e)
            }
        }
    }

    fn plan_persist(&self, id: BlobId) -> Result<Option<PersistPlan>> {
        let l = &*self.layout.load_full();
        let mut guard = self.st.lock();
        let st = &mut *guard;
        let ob = st.open.get_mut(&id).ok_or(Error::BadHandle)?;
        if !ob.dirty {
            return Ok(None);
        }
        if ob.md_ro {
            ob.dirty = false;
            return Ok(None);
        }
        let areas = ob.md.serialize()?;
        let root = root_index(id).ok_or(Error::BadHandle)?;
        let mut chain = vec![root];
        for _ in 1..areas.len() {
            // Chain pages: lowest free md index, as SPDK. The old chain is still marked used,
            // so the new pages never overwrite it.
            match st.md_pages.first_clear_from(0) {
                Some(i) => {
                    st.md_pages.set(i);
                    chain.push(i);
                }
                None => {
                    for &i in &chain[1..] {
                        st.md_pages.clear(i);
                    }
                    return Err(Error::NoMdSpace(format!(
                        "no free md page for blob {id:#x}'s chain"
                    )));
                }
            }
        }
        let ps = l.md_page_size as usize;
        let mut pages: Vec<(u64, Vec<u8>)> = areas
            .into_iter()
            .enumerate()
            .map(|(k, a)| {
                let p = MdPage {
                    id,
                    sequence_num: k as u32,
                    next: chain.get(k + 1).copied().unwrap_or(NO_NEXT),
                    descriptors: a,
                };
                (l.md_offset(chain[k]), p.encode(ps))
            })
            .collect();
        let root_page = pages.remove(0);
        let mut eps = Vec::new();
        let mut new_eps = Vec::new();
        if ob.md.extent_table {
            for (slot, &ep) in ob.md.extent_pages.iter().enumerate() {
                if ep == 0 {
                    continue;
                }
                let page = || (l.md_offset(ep), ob.md.extent_page(slot).encode(ps));
                if ob.clean.extent_pages.get(slot) != Some(&ep) {
                    new_eps.push(page());
                } else if BlobMd::slot_entries(&ob.md.clusters, slot)
                    != BlobMd::slot_entries(&ob.clean.clusters, slot)
                {
                    eps.push(page());
                }
            }
        }
        let old_pages = ob
            .clean
            .chain
            .get(1..)
            .map(|s| s.to_vec())
            .unwrap_or_default();
        Ok(Some(PersistPlan {
            need_dirty: st.disk_clean,
            grow: ob.md.clusters.len() >= ob.clean.clusters.len(),
            root: root_page,
            chain_pages: pages,
            new_extent_pages: new_eps,
            extent_pages: eps,
            new_chain: chain,
            old_pages,
            released_eps: std::mem::take(&mut ob.released_eps),
            released_clusters: std::mem::take(&mut ob.released_clusters),
            clear: ob.md.md_ro_flags & MD_RO_CLEAR_MASK,
        }))
    }

    async fn persist_io(&self, plan: &PersistPlan) -> Result<()> {
        let l = &*self.layout.load_full();
        if plan.need_dirty {
            self.mark_dirty().await?;
        }
        // New chain pages and new extent pages are unreachable from the disk root: write
        // them first. Extent pages the root already references are rewritten in place: a
        // grown map before the root (the old root reads only its own, shorter prefix of
        // them), a shrunk one after it (the new root reads a prefix of the old, longer
        // page). SPDK instead rewrites truncated extent pages with zero entries before the
        // commit (step 1); we do not.
        let mut pre: Vec<&(u64, Vec<u8>)> = plan.chain_pages.iter().collect();
        pre.extend(plan.new_extent_pages.iter());
        if plan.grow {
            pre.extend(plan.extent_pages.iter());
        }
        if !pre.is_empty() {
            write_all(&self.dev, &pre).await?;
            self.flush_dev().await?;
        }
        self.dev.write(plan.root.0, &plan.root.1).await?;
        self.flush_dev().await?;
        let mut post: Vec<&(u64, Vec<u8>)> = Vec::new();
        if !plan.grow {
            post.extend(plan.extent_pages.iter());
        }
        let zero = vec![0u8; l.md_page_size as usize];
        let zeros: Vec<(u64, Vec<u8>)> = plan
            .old_pages
            .iter()
            .chain(plan.released_eps.iter())
            .map(|&i| (l.md_offset(i), zero.clone()))
            .collect();
        post.extend(zeros.iter());
        if !post.is_empty() {
            write_all(&self.dev, &post).await?;
        }
        self.clear_clusters(&plan.released_clusters, plan.clear)
            .await
    }

    /// Clear freed clusters by the blob's clear method (default and unmap: device unmap,
    /// which a file image without hole punching ignores, like SPDK's aio bdev).
    async fn clear_clusters(&self, clusters: &[u32], clear: u64) -> Result<()> {
        let cs = u64::from(self.layout.load().cluster_size);
        for &c in clusters {
            let off = self.layout.load().cluster_offset(c);
            match clear {
                1 => {}
                3 => write_zeroes(&self.dev, off, cs).await?,
                _ => self.dev.unmap(off, cs).await?,
            }
        }
        Ok(())
    }

    fn finish_persist(&self, id: BlobId, plan: PersistPlan) {
        let mut st = self.st.lock();
        for &i in plan.old_pages.iter().chain(plan.released_eps.iter()) {
            st.md_pages.clear(i);
        }
        for &c in &plan.released_clusters {
            st.clusters.clear(c);
        }
        if let Some(ob) = st.open.get_mut(&id) {
            ob.clean = CleanState {
                chain: plan.new_chain,
                clusters: ob.md.clusters.clone(),
                extent_pages: ob.md.extent_pages.clone(),
            };
            ob.dirty = false;
            let ro = ob.md.md_ro();
            if ro != ob.md_ro {
                ob.md_ro = ro;
                let m = ob.shared.map.load();
                let mut n = DataMap::clone(&m);
                n.read_only = ob.md.data_ro();
                ob.shared.map.store(Arc::new(n));
            }
        }
    }

    /// Thin allocation for the data path: the lowest free cluster for every listed
    /// unallocated blob cluster (and, in extent-table mode, the lowest free md index ≥ 1 for
    /// a missing extent page), then a persist, then the new map is published. Metadata is
    /// durable before the caller writes data. Where SPDK rewrites only the extent page in
    /// place, we run a full persist; the root it rewrites is byte-identical unless the blob
    /// had other unsynced changes, which it then makes durable early.
    pub(crate) async fn allocate(&self, shared: &Arc<BlobShared>, cis: &[u64]) -> Result<()> {
        let _g = self.gate.lock().await;
        self.check_open()?;
        let id = shared.id;
        // Clusters this call claims: (blob cluster, device cluster, new extent page slot).
        let mut fresh: Vec<(u64, u32, Option<usize>)> = Vec::new();
        let ups = {
            let mut guard = self.st.lock();
            let st = &mut *guard;
            let ob = st
                .open
                .get_mut(&id)
                .filter(|o| Arc::ptr_eq(&o.shared, shared))
                .ok_or(Error::BadHandle)?;
            if ob.md_ro {
                return Err(Error::ReadOnly(format!("blob {id:#x}")));
            }
            // All or nothing: check the space first.
            let mut todo: Vec<u64> = Vec::new();
            let mut slots: Vec<usize> = Vec::new();
            // Clusters claimed by an earlier allocation whose persist failed: publish them
            // once a persist succeeds.
            let mut ups = Vec::new();
            let published = shared.map.load();
            for &ci in cis {
                let Some(&cur) = ob.md.clusters.get(ci as usize) else {
                    return Err(Error::invalid(format!("cluster {ci} past the blob end")));
                };
                if cur != 0 && published.get(ci) == 0 && !ups.contains(&(ci, cur)) {
                    ups.push((ci, cur));
                }
                if cur == 0 && !todo.contains(&ci) {
                    todo.push(ci);
                    let slot = (ci / u64::from(CLUSTERS_PER_EXTENT_PAGE)) as usize;
                    if ob.md.extent_table
                        && ob.md.extent_pages.get(slot) == Some(&0)
                        && !slots.contains(&slot)
                    {
                        slots.push(slot);
                    }
                }
            }
            let free_c = st.clusters.len() - st.clusters.count_ones();
            let free_md =
                st.md_pages.len() - st.md_pages.count_ones() - u32::from(!st.md_pages.get(0));
            if todo.len() as u64 > u64::from(free_c) || slots.len() as u64 > u64::from(free_md) {
                return Err(Error::NoSpace);
            }
            for ci in todo {
                let slot = (ci / u64::from(CLUSTERS_PER_EXTENT_PAGE)) as usize;
                let need_ep = ob.md.extent_table && ob.md.extent_pages.get(slot) == Some(&0);
                let c = st.clusters.first_clear_from(0).ok_or(Error::NoSpace)?;
                if need_ep {
                    let m = st.md_pages.first_clear_from(1).ok_or(Error::NoSpace)?;
                    st.md_pages.set(m);
                    ob.md.extent_pages[slot] = m;
                }
                st.clusters.set(c);
                ob.md.clusters[ci as usize] = c;
                ups.push((ci, c));
                fresh.push((ci, c, need_ep.then_some(slot)));
            }
            if !ups.is_empty() {
                ob.dirty = true;
            }
            ups
        };
        if ups.is_empty() {
            return Ok(());
        }
        // A clone's new cluster first gets its parent's data, durably, before the metadata
        // names it (SPDK's copy on write).
        if let Err(e) = self.copy_into_clone(shared, &fresh).await {
            let mut guard = self.st.lock();
            let st = &mut *guard;
            if let Some(ob) = st.open.get_mut(&id) {
                for &(ci, c, slot) in &fresh {
                    ob.md.clusters[ci as usize] = 0;
                    st.clusters.clear(c);
                    if let Some(slot) = slot {
                        st.md_pages.clear(ob.md.extent_pages[slot]);
                        ob.md.extent_pages[slot] = 0;
                    }
                }
            }
            return Err(e);
        }
        self.persist_locked(id).await?;
        let m = shared.map.load();
        shared.map.store(Arc::new(m.with_updates(&ups)));
        Ok(())
    }

    /// Release whole allocated clusters of a thin blob (unmap): the map entries become 0 at
    /// once, the clusters are freed (and unmapped) after the persist that drops them.
    pub(crate) async fn release(&self, shared: &Arc<BlobShared>, cis: &[u64]) -> Result<()> {
        let _g = self.gate.lock().await;
        self.check_open()?;
        let id = shared.id;
        {
            let mut guard = self.st.lock();
            let ob = guard
                .open
                .get_mut(&id)
                .filter(|o| Arc::ptr_eq(&o.shared, shared))
                .ok_or(Error::BadHandle)?;
            let mut ups = Vec::new();
            for &ci in cis {
                if let Some(c) = ob.md.clusters.get_mut(ci as usize) {
                    if *c != 0 {
                        ob.released_clusters.push(*c);
                        *c = 0;
                        ups.push((ci, 0));
                    }
                }
            }
            if ups.is_empty() {
                return Ok(());
            }
            ob.dirty = true;
            let m = ob.shared.map.load();
            ob.shared.map.store(Arc::new(m.with_updates(&ups)));
        }
        self.persist_locked(id).await
    }

    /// Change a blob's size in memory. Thick blobs claim the lowest free clusters now (and
    /// extent pages at the lowest free md index ≥ 1, slot by slot, as SPDK does); a shrink
    /// frees clusters and extent pages only at the next persist.
    fn resize_md(st: &mut MdState, ob: &mut OpenBlob, n: u64) -> Result<()> {
        if n > MAX_BLOB_CLUSTERS {
            return Err(Error::invalid(format!(
                "{n} clusters is more than the supported {MAX_BLOB_CLUSTERS}"
            )));
        }
        let cur = ob.md.clusters.len() as u64;
        let per = u64::from(CLUSTERS_PER_EXTENT_PAGE);
        let ext = ob.md.extent_table;
        if n > cur {
            let slots = slots_for(n);
            if !ob.md.is_thin() {
                let need = n - cur;
                let free = u64::from(st.clusters.len() - st.clusters.count_ones());
                if need > free {
                    return Err(Error::NoSpace);
                }
                let need_eps = if ext {
                    (ob.md.extent_pages.iter().filter(|&&e| e == 0).count() + slots
                        - ob.md.extent_pages.len().min(slots)) as u32
                } else {
                    0
                };
                let free_md =
                    st.md_pages.len() - st.md_pages.count_ones() - u32::from(!st.md_pages.get(0));
                if need_eps > free_md {
                    return Err(Error::NoSpace);
                }
                if ext {
                    ob.md.extent_pages.resize(slots, 0);
                }
                let mut from = 0;
                for i in cur..n {
                    let Some(c) = st.clusters.first_clear_from(from) else {
                        return Err(Error::NoSpace);
                    };
                    st.clusters.set(c);
                    from = c;
                    ob.md.clusters.push(c);
                    let slot = (i / per) as usize;
                    if ext && ob.md.extent_pages[slot] == 0 {
                        let m = st.md_pages.first_clear_from(1).ok_or(Error::NoSpace)?;
                        st.md_pages.set(m);
                        ob.md.extent_pages[slot] = m;
                    }
                }
            } else {
                ob.md.clusters.resize(n as usize, 0);
                if ext {
                    ob.md.extent_pages.resize(slots, 0);
                }
            }
        } else if n < cur {
            let gone: Vec<u32> = ob
                .md
                .clusters
                .drain(n as usize..)
                .filter(|&c| c != 0)
                .collect();
            ob.released_clusters.extend(gone);
            if ext {
                let gone: Vec<u32> = ob
                    .md
                    .extent_pages
                    .drain(slots_for(n)..)
                    .filter(|&e| e != 0)
                    .collect();
                ob.released_eps.extend(gone);
            }
        } else {
            return Ok(());
        }
        ob.dirty = true;
        let ro = ob.shared.map.load().read_only;
        ob.shared.map.store(Arc::new(DataMap::build(&ob.md, ro)));
        Ok(())
    }

    pub(crate) async fn create(&self, opts: CreateOpts) -> Result<BlobId> {
        let _g = self.gate.lock().await;
        self.check_open()?;
        self.create_locked(opts, Vec::new(), 0).await
    }

    /// Create and persist a blob with internal xattrs (after the user ones, as SPDK) and
    /// extra invalid flags. Caller holds the gate.
    pub(crate) async fn create_locked(
        &self,
        opts: CreateOpts,
        internal: Vec<Xattr>,
        extra_flags: u64,
    ) -> Result<BlobId> {
        for (name, value) in &opts.xattrs {
            if value.is_empty() {
                return Err(Error::invalid(format!("xattr {name:?} has an empty value")));
            }
            check_xattr_size(name, value)?;
        }
        let id = {
            let mut guard = self.st.lock();
            let st = &mut *guard;
            let idx = st
                .md_pages
                .first_clear_from(0)
                .ok_or_else(|| Error::NoMdSpace("no free md page for a new blob".into()))?;
            let id = blob_id(idx);
            let md = BlobMd {
                id,
                invalid_flags: if opts.thin_provision {
                    FLAG_THIN_PROV
                } else {
                    0
                } | if opts.use_extent_table {
                    FLAG_EXTENT_TABLE
                } else {
                    0
                } | if internal.is_empty() {
                    0
                } else {
                    FLAG_INTERNAL_XATTR
                } | extra_flags,
                data_ro_flags: 0,
                md_ro_flags: clear_bits(opts.clear_method),
                xattrs: opts
                    .xattrs
                    .iter()
                    .map(|(n, v)| (n.as_bytes().to_vec(), v.clone()))
                    .collect(),
                internal_xattrs: internal,
                extent_table: opts.use_extent_table,
                clusters: Vec::new(),
                extent_pages: Vec::new(),
            };
            let shared = BlobShared::new(
                id,
                DataMap::build(&md, false),
                self.layout.load().units_per_cluster(),
            );
            let mut ob = OpenBlob::unpersisted(shared, md);
            st.md_pages.set(idx);
            st.blobids.set(idx);
            if let Err(e) = Self::resize_md(st, &mut ob, opts.num_clusters) {
                Self::forget(st, &mut ob);
                return Err(e);
            }
            ob.dirty = true;
            st.open.insert(id, ob);
            id
        };
        let r = self.persist_locked(id).await;
        let mut guard = self.st.lock();
        let st = &mut *guard;
        if let Some(mut ob) = st.open.remove(&id) {
            ob.shared.open.store(false, Ordering::Release);
            if r.is_err() {
                Self::forget(st, &mut ob);
            }
        }
        r.map(|_| id)
    }

    /// Write a fresh root md page for blob `id` holding `xattrs` and mapping `clusters`
    /// (thick, run-length extents). Only `repair` uses this, to bring back a blob whose md
    /// page is lost; refused unless the root's md page and every cluster are free here.
    pub(crate) async fn restore_blob_md(
        &self,
        id: BlobId,
        xattrs: Vec<(String, Vec<u8>)>,
        clusters: Vec<u32>,
    ) -> Result<()> {
        let _g = self.gate.lock().await;
        self.check_open()?;
        let l = &*self.layout.load_full();
        let idx = root_index(id)
            .filter(|&i| i < l.md_len)
            .ok_or_else(|| Error::invalid(format!("{id:#x} is not a blob id of this store")))?;
        {
            let mut guard = self.st.lock();
            let st = &mut *guard;
            if st.md_pages.get(idx) || st.blobids.get(idx) {
                return Err(Error::Busy(format!("md page {idx} is in use")));
            }
            let mut seen = std::collections::HashSet::new();
            for &c in &clusters {
                if c < l.num_md_clusters
                    || c >= l.total_clusters
                    || st.clusters.get(c)
                    || !seen.insert(c)
                {
                    return Err(Error::Busy(format!(
                        "cluster {c} of blob {id:#x} is not free; not restoring it"
                    )));
                }
            }
            let md = BlobMd {
                id,
                invalid_flags: 0,
                data_ro_flags: 0,
                md_ro_flags: 0,
                xattrs: xattrs
                    .into_iter()
                    .map(|(n, v)| (n.into_bytes(), v))
                    .collect(),
                internal_xattrs: Vec::new(),
                extent_table: false,
                clusters,
                extent_pages: Vec::new(),
            };
            for &c in &md.clusters {
                st.clusters.set(c);
            }
            st.md_pages.set(idx);
            st.blobids.set(idx);
            let shared = BlobShared::new(
                id,
                DataMap::build(&md, false),
                self.layout.load().units_per_cluster(),
            );
            st.open.insert(id, OpenBlob::unpersisted(shared, md));
        }
        let r = self.persist_locked(id).await;
        let mut guard = self.st.lock();
        let st = &mut *guard;
        if let Some(mut ob) = st.open.remove(&id) {
            ob.shared.open.store(false, Ordering::Release);
            if r.is_err() {
                Self::forget(st, &mut ob);
            }
        }
        r
    }

    /// Drop every in-memory claim of a blob that never reached the disk.
    fn forget(st: &mut MdState, ob: &mut OpenBlob) {
        let root = ob.md.id as u32;
        st.md_pages.clear(root);
        st.blobids.clear(root);
        for &c in ob.md.clusters.iter().chain(ob.released_clusters.iter()) {
            if c != 0 {
                st.clusters.clear(c);
            }
        }
        for &e in ob.md.extent_pages.iter().chain(ob.released_eps.iter()) {
            if e != 0 {
                st.md_pages.clear(e);
            }
        }
    }

    pub(crate) async fn open(&self, id: BlobId) -> Result<Arc<BlobShared>> {
        let _g = self.gate.lock().await;
        self.check_open()?;
        self.open_locked(id).await
    }

    /// Open a blob (and its parent chain); the caller holds the gate.
    pub(crate) async fn open_locked(&self, id: BlobId) -> Result<Arc<BlobShared>> {
        if let Some(ob) = self.st.lock().open.get_mut(&id) {
            ob.refs += 1;
            return Ok(ob.shared.clone());
        }
        // Read the blob and each parent snapshot not open yet, down the chain, before taking
        // any reference: a failure leaves nothing open. As SPDK, a clone holds its parent
        // open until it is closed itself.
        let mut todo: Vec<(BlobMd, Vec<u32>)> = Vec::new();
        let mut cur = id;
        let base = loop {
            if let Some(ob) = self.st.lock().open.get(&cur) {
                break Backing::Snapshot(ob.shared.clone());
            }
            let (md, chain) = self.read_blob(cur).await?;
            let parent = md.parent()?;
            todo.push((md, chain));
            match parent {
                Parent::None => break Backing::Zeroes,
                Parent::External(eid) => break self.external(cur, eid)?,
                Parent::Snapshot(p) => {
                    if todo.iter().any(|(m, _)| m.id == p) || todo.len() >= MAX_CHAIN {
                        return Err(Error::Corruption {
                            blob: id,
                            offset: 0,
                            detail: format!("snapshot chain loops or is deeper than {MAX_CHAIN}"),
                        });
                    }
                    cur = p;
                }
            }
        };
        let mut st = self.st.lock();
        if let Backing::Snapshot(p) = &base {
            if let Some(ob) = st.open.get_mut(&p.id) {
                ob.refs += 1;
            }
        }
        let mut backing = base;
        let mut top = None;
        for (md, chain) in todo.into_iter().rev() {
            let shared = BlobShared::with_backing(
                md.id,
                DataMap::build(&md, md.data_ro()),
                self.layout.load().units_per_cluster(),
                backing,
            );
            let ob = OpenBlob {
                shared: shared.clone(),
                clean: CleanState {
                    chain,
                    clusters: md.clusters.clone(),
                    extent_pages: md.extent_pages.clone(),
                },
                md_ro: md.md_ro(),
                md,
                dirty: false,
                refs: 1,
                released_clusters: Vec::new(),
                released_eps: Vec::new(),
            };
            st.open.insert(ob.shared.id, ob);
            backing = Backing::Snapshot(shared.clone());
            top = Some(shared);
        }
        top.ok_or(Error::BadHandle)
    }

    /// The backing of esnap clone `id`: the resolver's device for `eid`, or a marker that
    /// makes reads needing it fail.
    fn external(&self, id: BlobId, eid: Vec<u8>) -> Result<Backing> {
        let resolver = self.esnap.lock().clone();
        let Some(dev) = resolver.and_then(|r| r.resolve(&eid)) else {
            return Ok(Backing::MissingExternal(eid));
        };
        let bs = dev.block_len();
        if bs == 0 || !self.layout.load().io_unit_size.is_multiple_of(bs) {
            return Err(Error::invalid(format!(
                "external snapshot {} of blob {id:#x}: its {bs}-byte blocks do not divide the \
                 {}-byte io unit",
                show_id(&eid),
                self.layout.load().io_unit_size
            )));
        }
        Ok(Backing::External(eid, dev))
    }

    /// Run `f` on an open blob's state (caller holds the gate).
    pub(crate) fn with_blob<T>(
        &self,
        shared: &Arc<BlobShared>,
        f: impl FnOnce(&mut MdState, &mut OpenBlob) -> Result<T>,
    ) -> Result<T> {
        let mut guard = self.st.lock();
        let st = &mut *guard;
        if st.closed {
            return Err(Error::Closed);
        }
        let mut ob = match st.open.remove(&shared.id) {
            Some(ob) if Arc::ptr_eq(&ob.shared, shared) => ob,
            Some(ob) => {
                st.open.insert(shared.id, ob);
                return Err(Error::BadHandle);
            }
            None => return Err(Error::BadHandle),
        };
        let r = f(st, &mut ob);
        st.open.insert(shared.id, ob);
        r
    }

    pub(crate) async fn close(&self, shared: &Arc<BlobShared>) -> Result<()> {
        let _g = self.gate.lock().await;
        self.close_locked(shared).await
    }

    /// Persist and drop one reference; the caller holds the gate.
    pub(crate) async fn close_locked(&self, shared: &Arc<BlobShared>) -> Result<()> {
        self.with_blob(shared, |_, _| Ok(()))?;
        self.persist_locked(shared.id).await?;
        let mut st = self.st.lock();
        Self::drop_ref(&mut st, shared);
        Ok(())
    }

    /// Drop one reference to an open blob; the last one closes it and drops its hold on
    /// the parent snapshot, down the chain.
    pub(crate) fn drop_ref(st: &mut MdState, shared: &Arc<BlobShared>) {
        let mut cur = Some(shared.clone());
        while let Some(s) = cur.take() {
            if let Some(ob) = st.open.get_mut(&s.id) {
                ob.refs = ob.refs.saturating_sub(1);
                if ob.refs == 0 {
                    st.open.remove(&s.id);
                    s.open.store(false, Ordering::Release);
                    if let Backing::Snapshot(p) = &**s.backing.load() {
                        cur = Some(p.clone());
                    }
                }
            }
        }
    }

    pub(crate) async fn sync_md(&self, shared: &Arc<BlobShared>) -> Result<()> {
        let _g = self.gate.lock().await;
        self.with_blob(shared, |_, _| Ok(()))?;
        self.persist_locked(shared.id).await
    }

    pub(crate) async fn resize(&self, shared: &Arc<BlobShared>, n: u64) -> Result<()> {
        let _g = self.gate.lock().await;
        self.with_blob(shared, |st, ob| {
            if ob.md_ro {
                return Err(Error::ReadOnly(format!("blob {:#x}", ob.md.id)));
            }
            Self::resize_md(st, ob, n)
        })
    }

    pub(crate) async fn set_read_only(&self, shared: &Arc<BlobShared>) -> Result<()> {
        let _g = self.gate.lock().await;
        self.with_blob(shared, |_, ob| {
            if ob.md.data_ro_flags & FLAG_READ_ONLY == 0 {
                ob.md.data_ro_flags |= FLAG_READ_ONLY;
                ob.dirty = true;
            }
            Ok(())
        })
    }

    pub(crate) async fn set_xattr(
        &self,
        shared: &Arc<BlobShared>,
        name: &str,
        value: &[u8],
    ) -> Result<()> {
        check_xattr_size(name, value)?;
        let _g = self.gate.lock().await;
        self.with_blob(shared, |_, ob| {
            if ob.md_ro {
                return Err(Error::ReadOnly(format!("blob {:#x}", ob.md.id)));
            }
            let n = name.as_bytes();
            match ob.md.xattrs.iter_mut().find(|(k, _)| k == n) {
                Some((_, v)) => *v = value.to_vec(),
                None => ob.md.xattrs.push((n.to_vec(), value.to_vec())),
            }
            ob.dirty = true;
            Ok(())
        })
    }

    pub(crate) async fn remove_xattr(&self, shared: &Arc<BlobShared>, name: &str) -> Result<()> {
        let _g = self.gate.lock().await;
        self.with_blob(shared, |_, ob| {
            if ob.md_ro {
                return Err(Error::ReadOnly(format!("blob {:#x}", ob.md.id)));
            }
            let n = name.as_bytes();
            let before = ob.md.xattrs.len();
            ob.md.xattrs.retain(|(k, _)| k != n);
            if ob.md.xattrs.len() == before {
                return Err(Error::NotFound(format!("xattr {name:?}")));
            }
            ob.dirty = true;
            Ok(())
        })
    }

    pub(crate) fn get_xattr(
        &self,
        shared: &Arc<BlobShared>,
        name: &str,
    ) -> Result<Option<Vec<u8>>> {
        self.with_blob(shared, |_, ob| {
            Ok(ob
                .md
                .xattrs
                .iter()
                .find(|(k, _)| k == name.as_bytes())
                .map(|(_, v)| v.clone()))
        })
    }

    pub(crate) fn xattr_names(&self, shared: &Arc<BlobShared>) -> Result<Vec<String>> {
        self.with_blob(shared, |_, ob| {
            Ok(ob
                .md
                .xattrs
                .iter()
                .map(|(k, _)| String::from_utf8_lossy(k).into_owned())
                .collect())
        })
    }

    /// Delete a closed blob: mark dirty, zero its root (the commit point) and flush, then zero
    /// its other chain pages and extent pages, clear its clusters by its clear method, and
    /// release everything in memory.
    pub(crate) async fn delete(&self, id: BlobId) -> Result<()> {
        let _g = self.gate.lock().await;
        self.check_open()?;
        if self.st.lock().open.contains_key(&id) {
            return Err(Error::Busy(format!("blob {id:#x} is open")));
        }
        let (mut md, mut chain) = self.read_blob(id).await?;
        // A snapshot with one clone first hands its clusters to the clone (SPDK's rule; with
        // more clones it cannot go). Only read-only blobs can be snapshots, so other deletes
        // skip the scan of every blob's metadata.
        if md.data_ro() {
            let clones = self.clones_of(id).await?;
            match clones.as_slice() {
                [] => {}
                [clone] => match self.merge_into_clone(id, *clone).await {
                    Ok(left) => (md, chain) = left,
                    Err(e) => {
                        self.st.lock().md_failed = true;
                        return Err(e);
                    }
                },
                _ => {
                    return Err(Error::Busy(format!(
                        "snapshot {id:#x} has {} clones",
                        clones.len()
                    )))
                }
            }
        }
        self.mark_dirty_if_needed().await?;
        let res = self.delete_io(&md, &chain).await;
        if res.is_err() {
            self.st.lock().md_failed = true;
        }
        res
    }

    /// Every blob whose parent snapshot is `id` (reads every blob's metadata).
    pub(crate) async fn clones_of(&self, id: BlobId) -> Result<Vec<BlobId>> {
        let ids: Vec<BlobId> = self.st.lock().blobids.ones().map(blob_id).collect();
        let mut out = Vec::new();
        for other in ids.into_iter().filter(|&o| o != id) {
            let open = self.st.lock().open.get(&other).map(|ob| ob.md.parent());
            let parent = match open {
                Some(p) => p,
                None => self.read_blob(other).await?.0.parent(),
            };
            if parent? == Parent::Snapshot(id) {
                out.push(other);
            }
        }
        Ok(out)
    }

    /// The device side of a delete, then the release of its claims.
    pub(crate) async fn delete_io(&self, md: &BlobMd, chain: &[u32]) -> Result<()> {
        let l = &*self.layout.load_full();
        let zero = vec![0u8; l.md_page_size as usize];
        self.dev.write(l.md_offset(chain[0]), &zero).await?;
        self.flush_dev().await?;
        let eps: Vec<u32> = md
            .extent_pages
            .iter()
            .copied()
            .filter(|&e| e != 0)
            .collect();
        let rest: Vec<(u64, Vec<u8>)> = chain[1..]
            .iter()
            .chain(eps.iter())
            .map(|&i| (l.md_offset(i), zero.clone()))
            .collect();
        write_all(&self.dev, &rest.iter().collect::<Vec<_>>()).await?;
        let clusters: Vec<u32> = md.clusters.iter().copied().filter(|&c| c != 0).collect();
        self.clear_clusters(&clusters, md.md_ro_flags & MD_RO_CLEAR_MASK)
            .await?;
        let mut st = self.st.lock();
        for &i in chain.iter().chain(eps.iter()) {
            st.md_pages.clear(i);
        }
        st.blobids.clear(chain[0]);
        for &c in &clusters {
            st.clusters.clear(c);
        }
        Ok(())
    }

    pub(crate) async fn set_super(&self, id: BlobId) -> Result<()> {
        let _g = self.gate.lock().await;
        self.check_open()?;
        // SPDK rewrites the super block with the new id and the clean flag as it is on disk.
        let bytes = {
            let mut st = self.st.lock();
            st.sb.super_blob = id;
            st.sb.encode()
        };
        self.dev.write(0, &bytes).await?;
        self.flush_dev().await.map_err(Error::from)
    }

    pub(crate) async fn grow(&self, new_size: u64) -> Result<()> {
        let _g = self.gate.lock().await;
        self.check_open()?;
        let l = self.layout.load_full();
        let dev_size = self.dev.size();
        if new_size > dev_size {
            return Err(Error::invalid(format!(
                "cannot grow the store to {new_size} bytes: the device holds {dev_size}"
            )));
        }
        // SPDK's checks, in its order.
        let total = new_size / u64::from(l.cluster_size);
        let mask_len = super::layout::pages_for(total, l.md_page_size);
        let max_mask = l.blobid_mask_start.saturating_sub(l.cluster_mask_start);
        if new_size == l.size {
            return Ok(());
        }
        let capacity = self.st.lock().clusters.len();
        if new_size < l.size
            || total < u64::from(capacity)
            || total > u64::from(u32::MAX)
            || mask_len > max_mask
        {
            return Err(Error::NoSpace);
        }
        let mut sb = self.st.lock().sb.clone();
        sb.clean = 0;
        sb.size = new_size;
        sb.used_cluster_mask_len = mask_len;
        self.dev.write(0, &sb.encode()).await?;
        self.flush_dev().await?;
        let new_layout = Layout {
            size: new_size,
            total_clusters: total as u32,
            cluster_mask_len: mask_len,
            ..Layout::clone(&l)
        };
        let mut st = self.st.lock();
        st.sb = sb;
        st.disk_clean = false;
        st.clusters.grow(total as u32);
        self.layout.store(Arc::new(new_layout));
        Ok(())
    }

    /// Clean unload: md-page mask, blob-id mask, cluster mask, flush, then the super
    /// block with `clean = 1`, flush.
    pub(crate) async fn unload(&self) -> Result<()> {
        let _g = self.gate.lock().await;
        self.check_open()?;
        let (m, c, b) = {
            let mut st = self.st.lock();
            if !st.open.is_empty() {
                return Err(Error::Busy(format!("{} blobs are open", st.open.len())));
            }
            if st.md_failed {
                // Masks from memory could name a blob whose root is already gone: stay
                // dirty, so the next load rebuilds them from what the md pages say.
                log::warn!("blobstore: an earlier metadata write failed; unloading dirty");
                st.closed = true;
                return Ok(());
            }
            (st.md_pages.clone(), st.clusters.clone(), st.blobids.clone())
        };
        write_masks(&self.dev, &self.layout.load_full(), &m, &c, &b).await?;
        self.flush_dev().await?;
        let bytes = {
            let mut st = self.st.lock();
            st.sb.clean = 1;
            if st.sb.size == 0 {
                st.sb.size = self.layout.load().size;
            }
            st.sb.encode()
        };
        self.dev.write(0, &bytes).await?;
        self.flush_dev().await?;
        let mut st = self.st.lock();
        st.disk_clean = true;
        st.closed = true;
        Ok(())
    }
}

fn check_xattr_size(name: &str, value: &[u8]) -> Result<()> {
    let len = 9 + name.len() + value.len();
    if len > super::mdpage::DESC_AREA || value.len() > 0xFFFF || name.len() > 0xFFFF {
        return Err(Error::NoMdSpace(format!(
            "xattr {name:?} needs {len} bytes, more than one md page holds"
        )));
    }
    Ok(())
}

pub(crate) async fn read_md_page<D: Device>(dev: &D, l: &Layout, i: u32) -> Result<Vec<u8>> {
    let mut b = vec![0u8; l.md_page_size as usize];
    dev.read(l.md_offset(i), &mut b).await?;
    b.truncate(PAGE_STRUCT_SIZE);
    Ok(b)
}

async fn write_all<D: Device>(dev: &D, writes: &[&(u64, Vec<u8>)]) -> Result<()> {
    let mut reqs: Vec<crate::device::IoRequest<'_>> = writes
        .iter()
        .map(|w| crate::device::IoRequest::Write {
            offset: w.0,
            buf: &w.1,
        })
        .collect();
    if reqs.is_empty() {
        return Ok(());
    }
    dev.submit(&mut reqs).await.map_err(Error::from)
}

/// Write zero buffers over `len` bytes at `off` (block-aligned).
pub(crate) async fn write_zeroes<D: Device>(dev: &D, off: u64, len: u64) -> Result<()> {
    let zero = vec![0u8; ZERO_CHUNK.min(len) as usize];
    let mut done = 0;
    while done < len {
        let n = (len - done).min(ZERO_CHUNK);
        dev.write(off + done, &zero[..n as usize]).await?;
        done += n;
    }
    Ok(())
}

async fn read_masks<D: Device>(dev: &D, l: &Layout) -> Result<(Mask, Mask, Mask)> {
    let region =
        |start: u32, len: u32| (l.page_offset(start), len as usize * l.md_page_size as usize);
    let mut out = Vec::new();
    for (kind, start, len, bits) in [
        (
            MaskKind::MdPages,
            l.page_mask_start,
            l.page_mask_len,
            l.md_len,
        ),
        (
            MaskKind::Clusters,
            l.cluster_mask_start,
            l.cluster_mask_len,
            l.total_clusters,
        ),
        (
            MaskKind::BlobIds,
            l.blobid_mask_start,
            l.blobid_mask_len,
            l.md_len,
        ),
    ] {
        let (off, n) = region(start, len);
        let mut b = vec![0u8; n];
        dev.read(off, &mut b).await?;
        out.push(Mask::decode(kind, &b, bits, false, off)?);
    }
    let b = out.pop().unwrap_or_else(|| Mask::new(l.md_len));
    let c = out.pop().unwrap_or_else(|| Mask::new(l.total_clusters));
    let m = out.pop().unwrap_or_else(|| Mask::new(l.md_len));
    Ok((m, c, b))
}

/// Write the md-page mask, the blob-id mask (unless the store predates it) and the cluster
/// mask, in SPDK's order.
async fn write_masks<D: Device>(dev: &D, l: &Layout, m: &Mask, c: &Mask, b: &Mask) -> Result<()> {
    let ps = l.md_page_size as usize;
    dev.write(
        l.page_offset(l.page_mask_start),
        &m.encode(MaskKind::MdPages, l.page_mask_len as usize * ps),
    )
    .await?;
    if l.blobid_mask_len != 0 {
        dev.write(
            l.page_offset(l.blobid_mask_start),
            &b.encode(MaskKind::BlobIds, l.blobid_mask_len as usize * ps),
        )
        .await?;
    }
    dev.write(
        l.page_offset(l.cluster_mask_start),
        &c.encode(MaskKind::Clusters, l.cluster_mask_len as usize * ps),
    )
    .await
    .map_err(Error::from)
}

/// Rebuild the three masks from the md region. Roots are pages with a valid CRC,
/// sequence 0 and `id == 0x1_0000_0000 | index`; their chains (stopping at a bad CRC) and
/// extent pages are marked, and so are the clusters they reference. Differences from SPDK:
/// only clusters inside the blob's size are marked (an extent page may hold more entries after
/// a crash in the middle of a resize), and descriptor lengths are bounds-checked.
/// Unless `salvage`, a non-zero md page with a bad CRC fails the recovery instead.
pub(crate) async fn recover_with<D: Device>(
    dev: &D,
    l: &Layout,
    salvage: bool,
) -> Result<(Mask, Mask, Mask)> {
    let mut md_pages = Mask::new(l.md_len);
    let mut blobids = Mask::new(l.md_len);
    let mut clusters = Mask::new(l.total_clusters);
    const BATCH: u32 = 64;
    let ps = l.md_page_size as usize;
    let mut base = 0u32;
    while base < l.md_len {
        let n = BATCH.min(l.md_len - base);
        let mut buf = vec![0u8; n as usize * ps];
        dev.read(l.md_offset(base), &mut buf).await?;
        for k in 0..n {
            let i = base + k;
            if md_pages.get(i) {
                continue;
            }
            let b = &buf[k as usize * ps..k as usize * ps + PAGE_STRUCT_SIZE];
            if !MdPage::crc_ok(b) {
                if !salvage && b.iter().any(|&x| x != 0) {
                    return Err(damaged_page(l, i));
                }
                continue;
            }
            let root = MdPage::decode(b, l.md_offset(i))?;
            if root.sequence_num != 0 || root.id != blob_id(i) {
                continue;
            }
            let marks = (&mut md_pages, &mut blobids, &mut clusters);
            recover_blob(dev, l, i, root, salvage, marks).await?;
        }
        base += n;
    }
    for c in 0..l.num_md_clusters {
        clusters.set(c);
    }
    Ok((md_pages, clusters, blobids))
}

async fn recover_blob<D: Device>(
    dev: &D,
    l: &Layout,
    i: u32,
    root: MdPage,
    salvage: bool,
    (md_pages, blobids, clusters): (&mut Mask, &mut Mask, &mut Mask),
) -> Result<()> {
    let id = root.id;
    md_pages.set(i);
    blobids.set(i);
    let mut next = root.next;
    let mut chain = vec![root];
    let mut steps = 0;
    while next != NO_NEXT && next < l.md_len && steps < l.md_len {
        steps += 1;
        let b = read_md_page(dev, l, next).await?;
        if !MdPage::crc_ok(&b) {
            if !salvage {
                return Err(damaged_page(l, next));
            }
            break;
        }
        let p = MdPage::decode(&b, l.md_offset(next))?;
        if p.sequence_num == 0 && p.id != blob_id(next) {
            break;
        }
        md_pages.set(next);
        next = p.next;
        chain.push(p);
    }
    for p in &chain {
        for d in walk(&p.descriptors)? {
            if !recovery_type_ok(d.ty) {
                return Err(Error::Corruption {
                    blob: id,
                    offset: 0,
                    detail: format!("recovery found descriptor type {}", d.ty),
                });
            }
        }
    }
    let parsed = parse_chain(id, &chain, l.total_clusters, l.md_len, true)?;
    let md = parsed.md;
    if md.extent_table {
        let per = u64::from(CLUSTERS_PER_EXTENT_PAGE);
        for (slot, &ep) in md.extent_pages.iter().enumerate() {
            if ep == 0 {
                continue;
            }
            let want = (parsed.table_clusters - slot as u64 * per).min(per) as usize;
            let b = read_md_page(dev, l, ep).await?;
            let p = MdPage::decode(&b, l.md_offset(ep))?;
            for c in parse_extent_page(id, &p, slot, want, l.total_clusters)? {
                if c != 0 {
                    clusters.set(c);
                }
            }
            md_pages.set(ep);
        }
    } else {
        for &c in md.clusters.iter().filter(|&&c| c != 0) {
            clusters.set(c);
        }
    }
    Ok(())
}

/// A metadata page that fails its CRC, found by a dirty load: never treated as free space.
fn damaged_page(l: &Layout, i: u32) -> Error {
    Error::Corruption {
        blob: blob_id(i),
        offset: l.md_offset(i),
        detail: format!(
            "md page {i} fails its CRC (metadata of blob {:#x} if it is a root page); \
             refusing to recover the masks without it (run `blobcask repair`)",
            blob_id(i)
        ),
    }
}

/// Bstype of a store, for callers that only have the raw super block.
pub fn bstype_of(sb: &SuperBlock) -> Bstype {
    sb.bstype
}
