//! The write side of snapshots and clones, as SPDK v25.09 does them (`blobstore.c`
//! `spdk_bs_create_snapshot`, `spdk_bs_create_clone`, esnap clones in `bs_create_blob`, and
//! the copy on first write of `bs_allocate_and_copy_cluster`): the same metadata in the same
//! order, so a replay of SPDK's operations produces SPDK's image byte for byte.
//!
//! Also `spdk_bs_inflate_blob`, `spdk_bs_blob_decouple_parent`, the delete of a snapshot with
//! one clone (`update_clone_on_snapshot_deletion`) and the load-time repair of a snapshot
//! operation a crash cut short (`bs_load_iter`).
//!
//! Where we differ: a snapshot of an open blob is refused (`Busy`; SPDK freezes its I/O),
//! as is the delete of a snapshot whose one clone is open; inflate and decouple refuse a
//! read-only blob; decoupling from a snapshot that is itself an esnap clone is unsupported.
//! When a snapshot hands its extent page to a clone grown past it, we rewrite the page to
//! the clone's size (SPDK keeps the shorter page, and the clone then loads shorter).
//! The load-time repair frees the clusters of a deleted half-made snapshot that its clone
//! does not share (SPDK drops its whole map, leaking them until the next recovery).

use std::sync::Arc;

use super::blobmd::{
    BlobMd, Parent, Xattr, FLAG_EXTERNAL_SNAPSHOT, FLAG_INTERNAL_XATTR, FLAG_READ_ONLY,
    FLAG_THIN_PROV, MD_RO_CLEAR_MASK, XATTR_EXTERNAL_SNAPSHOT_ID, XATTR_SNAPSHOT,
    XATTR_SNAPSHOT_IN_PROGRESS, XATTR_SNAPSHOT_PENDING_REMOVAL,
};
use super::datamap::{Backing, BlobShared, DataMap};
use super::descriptor::{CLUSTERS_PER_EXTENT_PAGE, TYPE_XATTR_INTERNAL};
use super::esnap::show_id;
use super::mdpage::{walk, MdPage, NO_NEXT};
use super::store::{read_md_page, Inner, OpenBlob};
use super::{read_external, source, Source};
use crate::blobstore::error::{Error, Result};
use crate::blobstore::{BlobId, CreateOpts};
use crate::device::Device;

/// Set an internal xattr (replacing its value in place, as `blob_set_xattr`).
fn set_internal(md: &mut BlobMd, name: &[u8], value: &[u8]) {
    match md.internal_xattrs.iter_mut().find(|(k, _)| k == name) {
        Some((_, v)) => *v = value.to_vec(),
        None => md.internal_xattrs.push((name.to_vec(), value.to_vec())),
    }
    md.invalid_flags |= FLAG_INTERNAL_XATTR;
}

/// Remove an internal xattr; the last one clears the flag (`blob_remove_xattr`).
fn remove_internal(md: &mut BlobMd, name: &[u8]) {
    md.internal_xattrs.retain(|(k, _)| k != name);
    if md.internal_xattrs.is_empty() {
        md.invalid_flags &= !FLAG_INTERNAL_XATTR;
    }
}

fn user_xattrs(xattrs: &[(String, Vec<u8>)]) -> Vec<(String, Vec<u8>)> {
    xattrs.to_vec()
}

impl<D: Device> Inner<D> {
    /// Take an open blob's state out of the table (put it back with [`Self::put`]).
    fn take(&self, id: BlobId) -> Result<OpenBlob> {
        self.st.lock().open.remove(&id).ok_or(Error::BadHandle)
    }

    fn put(&self, ob: OpenBlob) {
        self.st.lock().open.insert(ob.shared.id, ob);
    }

    /// Give the new clusters of a clone their parent's data before the metadata names them:
    /// a parent snapshot's cluster, the external snapshot's bytes, or zeroes past a parent's
    /// end (SPDK copies those too); nothing where the chain ends in zeroes.
    pub(crate) async fn copy_into_clone(
        &self,
        shared: &BlobShared,
        fresh: &[(u64, u32, Option<usize>)],
    ) -> Result<()> {
        if matches!(**shared.backing.load(), Backing::Zeroes) || fresh.is_empty() {
            return Ok(());
        }
        let layout = self.layout.load_full();
        let cs = u64::from(layout.cluster_size);
        let mut buf = vec![0u8; cs as usize];
        let mut copied = false;
        for &(ci, c, _) in fresh {
            match source(shared, ci) {
                Source::Zeroes => continue,
                Source::PastEnd => buf.fill(0),
                Source::Cluster(src) => self.dev.read(layout.cluster_offset(src), &mut buf).await?,
                Source::External(d) => read_external(d.as_ref(), ci * cs, &mut buf).await?,
                Source::Missing(b, id) => {
                    return Err(Error::EsnapUnavailable {
                        blob: b,
                        esnap_id: show_id(&id),
                    })
                }
            }
            self.dev.write(layout.cluster_offset(c), &buf).await?;
            copied = true;
        }
        if copied {
            self.flush_dev().await?;
        }
        Ok(())
    }

    /// `spdk_bs_create_snapshot`: a new read-only blob takes `id`'s clusters (and its
    /// parent), and `id` becomes an empty thin clone of it. Refused while `id` is open
    /// (SPDK freezes its I/O instead) unless the caller froze it (`frozen`), and for a
    /// read-only blob.
    pub(crate) async fn create_snapshot(
        &self,
        id: BlobId,
        xattrs: &[(String, Vec<u8>)],
        frozen: bool,
    ) -> Result<BlobId> {
        let _g = self.gate.lock().await;
        self.check_open()?;
        if !frozen && self.st.lock().open.contains_key(&id) {
            return Err(Error::Busy(format!("blob {id:#x} is open")));
        }
        let orig = self.open_locked(id).await?;
        let r = self.snapshot_of(&orig, xattrs).await;
        if r.is_err() {
            self.st.lock().md_failed = true;
        }
        let c = self.close_locked(&orig).await;
        let new = r?;
        c?;
        Ok(new)
    }

    async fn snapshot_of(
        &self,
        orig: &Arc<BlobShared>,
        xattrs: &[(String, Vec<u8>)],
    ) -> Result<BlobId> {
        let id = orig.id;
        let (n, ext) = {
            let st = self.st.lock();
            let ob = st.open.get(&id).ok_or(Error::BadHandle)?;
            if ob.md.data_ro() || ob.md_ro {
                return Err(Error::invalid(format!(
                    "blob {id:#x} is read-only; a snapshot needs a writable blob"
                )));
            }
            (ob.md.num_clusters(), ob.md.extent_table)
        };
        let opts = CreateOpts {
            num_clusters: n,
            thin_provision: true,
            use_extent_table: ext,
            xattrs: user_xattrs(xattrs),
            ..CreateOpts::default()
        };
        let internal: Vec<Xattr> = vec![(
            XATTR_SNAPSHOT_IN_PROGRESS.to_vec(),
            id.to_le_bytes().to_vec(),
        )];
        let new_id = self.create_locked(opts, internal, 0).await?;
        let snap = self.open_locked(new_id).await?;
        // The snapshot takes the original's flags, parent, clusters and extent pages (the
        // extent pages stay where they are, still carrying the original's id, as SPDK's).
        {
            let mut o = self.take(id)?;
            let mut s = match self.take(new_id) {
                Ok(s) => s,
                Err(e) => {
                    self.put(o);
                    return Err(e);
                }
            };
            s.md.invalid_flags = o.md.invalid_flags;
            match o.md.parent() {
                Ok(Parent::External(eid)) => {
                    set_internal(&mut s.md, XATTR_EXTERNAL_SNAPSHOT_ID, &eid)
                }
                Ok(Parent::Snapshot(p)) => {
                    set_internal(&mut s.md, XATTR_SNAPSHOT, &p.to_le_bytes())
                }
                _ => {}
            }
            std::mem::swap(&mut s.md.clusters, &mut o.md.clusters);
            std::mem::swap(&mut s.md.extent_pages, &mut o.md.extent_pages);
            s.clean.clusters = s.md.clusters.clone();
            s.clean.extent_pages = s.md.extent_pages.clone();
            o.clean.clusters = o.md.clusters.clone();
            o.clean.extent_pages = o.md.extent_pages.clone();
            s.md.md_ro_flags |= o.md.md_ro_flags & MD_RO_CLEAR_MASK;
            s.dirty = true;
            s.shared.backing.store(o.shared.backing.load_full());
            s.shared
                .map
                .store(Arc::new(DataMap::build(&s.md, s.md.data_ro())));
            self.put(o);
            self.put(s);
        }
        self.persist_locked(new_id).await?;
        // The original becomes a thin clone of the snapshot.
        {
            let mut guard = self.st.lock();
            let st = &mut *guard;
            let sn = st
                .open
                .get_mut(&new_id)
                .map(|so| {
                    // The snapshot stays open for as long as its clone is.
                    so.refs += 1;
                    so.shared.clone()
                })
                .ok_or(Error::BadHandle)?;
            let o = st.open.get_mut(&id).ok_or(Error::BadHandle)?;
            set_internal(&mut o.md, XATTR_SNAPSHOT, &new_id.to_le_bytes());
            if o.md.invalid_flags & FLAG_EXTERNAL_SNAPSHOT != 0 {
                o.md.invalid_flags &= !FLAG_EXTERNAL_SNAPSHOT;
                remove_internal(&mut o.md, XATTR_EXTERNAL_SNAPSHOT_ID);
            }
            o.md.invalid_flags |= FLAG_THIN_PROV;
            o.dirty = true;
            o.shared
                .map
                .store(Arc::new(DataMap::build(&o.md, o.md.data_ro())));
            o.shared.backing.store(Arc::new(Backing::Snapshot(sn)));
        }
        self.persist_locked(id).await?;
        {
            let mut st = self.st.lock();
            let s = st.open.get_mut(&new_id).ok_or(Error::BadHandle)?;
            remove_internal(&mut s.md, XATTR_SNAPSHOT_IN_PROGRESS);
            s.md.data_ro_flags |= FLAG_READ_ONLY;
            s.dirty = true;
        }
        self.persist_locked(new_id).await?;
        self.close_locked(&snap).await?;
        Ok(new_id)
    }

    /// Persist a blob whose metadata is read-only (SPDK lifts `md_ro` for these steps).
    async fn persist_ro(&self, id: BlobId) -> Result<()> {
        let was = {
            let mut st = self.st.lock();
            let ob = st.open.get_mut(&id).ok_or(Error::BadHandle)?;
            std::mem::replace(&mut ob.md_ro, false)
        };
        let r = self.persist_locked(id).await;
        if let Some(ob) = self.st.lock().open.get_mut(&id) {
            ob.md_ro = was;
        }
        r
    }

    /// The first part of deleting snapshot `snap` whose only clone is `clone` (SPDK's
    /// `update_clone_on_snapshot_deletion`): mark the snapshot `SNAPRM`, give the clone every
    /// cluster (and extent page) it lacks, switch the clone to the snapshot's parent, then
    /// drop the shared clusters from the snapshot. The caller then deletes the snapshot,
    /// freeing only what the clone did not take. The caller holds the gate; refused while
    /// the clone is open.
    /// Returns the snapshot's metadata and chain as left for the delete (its on-device
    /// extent pages still list the clusters the clone took).
    pub(crate) async fn merge_into_clone(
        &self,
        snap: BlobId,
        clone: BlobId,
    ) -> Result<(BlobMd, Vec<u32>)> {
        if self.st.lock().open.contains_key(&clone) {
            return Err(Error::Busy(format!(
                "blob {clone:#x}, the clone of snapshot {snap:#x}, is open"
            )));
        }
        let ch = self.open_locked(clone).await?;
        let r = self.merge_steps(snap, clone).await;
        let c = self.close_locked(&ch).await;
        let out = r?;
        c?;
        Ok(out)
    }

    async fn merge_steps(&self, snap: BlobId, clone: BlobId) -> Result<(BlobMd, Vec<u32>)> {
        {
            let mut st = self.st.lock();
            let s = st.open.get_mut(&snap).ok_or(Error::BadHandle)?;
            set_internal(
                &mut s.md,
                XATTR_SNAPSHOT_PENDING_REMOVAL,
                &clone.to_le_bytes(),
            );
            s.dirty = true;
        }
        self.persist_ro(snap).await?;
        {
            let mut s = self.take(snap)?;
            let mut c = match self.take(clone) {
                Ok(c) => c,
                Err(e) => {
                    self.put(s);
                    return Err(e);
                }
            };
            let n = s.md.clusters.len().min(c.md.clusters.len());
            for i in 0..n {
                if c.md.clusters[i] == 0 {
                    c.md.clusters[i] = s.md.clusters[i];
                }
            }
            let ne = s.md.extent_pages.len().min(c.md.extent_pages.len());
            for slot in 0..ne {
                let ep = s.md.extent_pages[slot];
                if ep != 0 && c.md.extent_pages[slot] == 0 {
                    // The clone takes the snapshot's extent page as it is on the device (it
                    // lists exactly the clusters the clone now has in that slot). Where the
                    // clone is larger and the page holds fewer entries than the clone's
                    // slot, SPDK leaves it so and the clone loads shorter; we rewrite it.
                    c.md.extent_pages[slot] = ep;
                    let per = CLUSTERS_PER_EXTENT_PAGE as usize;
                    let (a, b) = (slot * per, ((slot + 1) * per).min(n));
                    let clone_end = ((slot + 1) * per).min(c.md.clusters.len());
                    if clone_end == b {
                        if let Some(e) = c.clean.extent_pages.get_mut(slot) {
                            *e = ep;
                        }
                        if c.clean.clusters.len() >= b {
                            c.clean.clusters[a..b].copy_from_slice(&c.md.clusters[a..b]);
                        }
                    }
                }
            }
            match s.md.parent() {
                Ok(Parent::External(eid)) => {
                    set_internal(&mut c.md, XATTR_EXTERNAL_SNAPSHOT_ID, &eid);
                    c.md.invalid_flags |= FLAG_EXTERNAL_SNAPSHOT;
                }
                Ok(Parent::Snapshot(p)) => {
                    set_internal(&mut c.md, XATTR_SNAPSHOT, &p.to_le_bytes())
                }
                _ => remove_internal(&mut c.md, XATTR_SNAPSHOT),
            }
            c.dirty = true;
            // The clone takes over the snapshot's hold on its own parent; the snapshot is no
            // longer held by the clone.
            c.shared.backing.store(s.shared.backing.load_full());
            s.shared.backing.store(Arc::new(Backing::Zeroes));
            c.shared
                .map
                .store(Arc::new(DataMap::build(&c.md, c.md.data_ro())));
            s.refs = s.refs.saturating_sub(1);
            self.put(c);
            self.put(s);
        }
        // The clone may be a snapshot itself (read-only metadata): SPDK lifts that too.
        self.persist_ro(clone).await?;
        {
            let mut st = self.st.lock();
            let cm = st
                .open
                .get(&clone)
                .map(|c| c.md.clone())
                .ok_or(Error::BadHandle)?;
            let s = st.open.get_mut(&snap).ok_or(Error::BadHandle)?;
            for (i, c) in s.md.clusters.iter_mut().enumerate() {
                if cm.clusters.get(i) == Some(c) {
                    *c = 0;
                }
            }
            for (i, e) in s.md.extent_pages.iter_mut().enumerate() {
                if cm.extent_pages.get(i) == Some(e) {
                    *e = 0;
                }
            }
            // SPDK rewrites no extent page here (the snapshot's are zeroed by its delete).
            s.clean.clusters = s.md.clusters.clone();
            s.clean.extent_pages = s.md.extent_pages.clone();
            s.md.invalid_flags |= FLAG_THIN_PROV;
            s.dirty = true;
        }
        self.persist_ro(snap).await?;
        let mut st = self.st.lock();
        let s = st.open.get(&snap).ok_or(Error::BadHandle)?;
        let out = (s.md.clone(), s.clean.chain.clone());
        if s.refs == 0 {
            s.shared
                .open
                .store(false, std::sync::atomic::Ordering::Release);
            st.open.remove(&snap);
        }
        Ok(out)
    }

    /// `spdk_bs_inflate_blob` (`all`) and `spdk_bs_blob_decouple_parent`: give blob `id`
    /// its own copy of every cluster (inflate: all of them, and it becomes thick with no
    /// parent) or of its parent's own clusters (decouple: it becomes a clone of its
    /// grandparent, or has no parent). Clusters are allocated one at a time in blob order,
    /// each a copy on write with its own metadata update, as SPDK does.
    pub(crate) async fn inflate(&self, id: BlobId, all: bool) -> Result<()> {
        let shared = self.open(id).await?;
        let r = self.inflate_open(&shared, all).await;
        let c = self.close(&shared).await;
        r?;
        c
    }

    async fn inflate_open(&self, shared: &Arc<BlobShared>, mut all: bool) -> Result<()> {
        let id = shared.id;
        let (parent, thin, ro) = {
            let st = self.st.lock();
            let ob = st.open.get(&id).ok_or(Error::BadHandle)?;
            (ob.md.parent()?, ob.md.is_thin(), ob.md_ro)
        };
        match parent {
            Parent::None if !all => {
                return Err(Error::invalid(format!(
                    "blob {id:#x} has no parent to decouple from"
                )))
            }
            Parent::External(_) => all = true,
            _ => {}
        }
        if ro {
            return Err(Error::ReadOnly(format!("blob {id:#x}")));
        }
        if !thin {
            return Ok(());
        }
        let backing = shared.backing.load_full();
        if let Backing::Snapshot(p) = &*backing {
            let grand = p.backing.load();
            if !all && matches!(**grand, Backing::External(..) | Backing::MissingExternal(_)) {
                // SPDK fails this after copying; we refuse before changing anything.
                return Err(Error::Unsupported(format!(
                    "decoupling blob {id:#x} from a snapshot that is an esnap clone"
                )));
            }
        }
        let map = shared.map.load_full();
        let needs = |ci: u64| {
            map.get(ci) == 0
                && match &*backing {
                    Backing::Zeroes => all,
                    Backing::Snapshot(p) => all || p.map.load().get(ci) != 0,
                    Backing::External(..) | Backing::MissingExternal(_) => true,
                }
        };
        let todo: Vec<u64> = (0..map.len()).filter(|&ci| needs(ci)).collect();
        {
            let st = self.st.lock();
            if todo.len() as u64 > u64::from(st.clusters.len() - st.clusters.count_ones()) {
                return Err(Error::NoSpace);
            }
        }
        for ci in todo {
            if let Source::Missing(b, eid) = source(shared, ci) {
                return Err(Error::EsnapUnavailable {
                    blob: b,
                    esnap_id: show_id(&eid),
                });
            }
            self.allocate(shared, &[ci]).await?;
        }
        let _g = self.gate.lock().await;
        self.check_open()?;
        {
            let mut guard = self.st.lock();
            let st = &mut *guard;
            let old = shared.backing.load_full();
            let ob = st.open.get_mut(&id).ok_or(Error::BadHandle)?;
            let new_backing = if all {
                if ob.md.invalid_flags & FLAG_EXTERNAL_SNAPSHOT != 0 {
                    remove_internal(&mut ob.md, XATTR_EXTERNAL_SNAPSHOT_ID);
                    ob.md.invalid_flags &= !FLAG_EXTERNAL_SNAPSHOT;
                }
                remove_internal(&mut ob.md, XATTR_SNAPSHOT);
                ob.md.invalid_flags &= !FLAG_THIN_PROV;
                Backing::Zeroes
            } else {
                let grand = match &*old {
                    Backing::Snapshot(p) => p.backing.load_full(),
                    _ => Arc::new(Backing::Zeroes),
                };
                match &*grand {
                    Backing::Snapshot(g) => {
                        set_internal(&mut ob.md, XATTR_SNAPSHOT, &g.id.to_le_bytes());
                        Backing::Snapshot(g.clone())
                    }
                    Backing::Zeroes => {
                        remove_internal(&mut ob.md, XATTR_SNAPSHOT);
                        Backing::Zeroes
                    }
                    _ => {
                        return Err(Error::Unsupported(format!(
                            "decoupling blob {id:#x} from a snapshot that is an esnap clone"
                        )))
                    }
                }
            };
            ob.dirty = true;
            ob.shared
                .map
                .store(Arc::new(DataMap::build(&ob.md, ob.md.data_ro())));
            // Hold the new parent before dropping the hold on the old one.
            if let Backing::Snapshot(g) = &new_backing {
                if let Some(go) = st.open.get_mut(&g.id) {
                    go.refs += 1;
                }
            }
            shared.backing.store(Arc::new(new_backing));
            if let Backing::Snapshot(p) = &*old {
                Self::drop_ref(st, p);
            }
        }
        self.persist_locked(id).await
    }

    /// Whether blob `id` may have internal xattrs: its root page holds one, or continues
    /// on chain pages (false when the root does not decode: the blob's own open reports
    /// that). Not the `INTERNAL_XATTR` flag: a snapshot being made carries `SNAPTMP` with
    /// the original's flags, which may lack it.
    async fn root_has_internal_xattrs(&self, id: BlobId) -> bool {
        let Some(root) = super::blobmd::root_index(id) else {
            return false;
        };
        let layout = self.layout.load_full();
        let Ok(b) = read_md_page(&self.dev, &layout, root).await else {
            return false;
        };
        let Ok(page) = MdPage::decode(&b, layout.md_offset(root)) else {
            return false;
        };
        if page.next != NO_NEXT {
            return true;
        }
        walk(&page.descriptors)
            .map(|ds| ds.iter().any(|d| d.ty == TYPE_XATTR_INTERNAL))
            .unwrap_or(false)
    }

    /// SPDK's load-time repair (`bs_load_iter`): a snapshot still marked `SNAPTMP` (its
    /// creation was cut short) or `SNAPRM` (its deletion was) is kept, finished as a
    /// read-only snapshot, when the blob named in the mark is its clone by now; otherwise
    /// it is deleted, leaving the clusters it shares with that blob to the blob.
    pub(crate) async fn finish_interrupted(&self) -> Result<()> {
        let _g = self.gate.lock().await;
        let ids: Vec<BlobId> = self
            .st
            .lock()
            .blobids
            .ones()
            .map(super::blobmd::blob_id)
            .collect();
        for id in ids {
            // Only a blob with internal xattrs can carry a mark; looking at the root first
            // spares reading every extent page of every other blob.
            if !self.root_has_internal_xattrs(id).await {
                continue;
            }
            let Ok((md, chain)) = self.read_blob(id).await else {
                continue;
            };
            let mark = md
                .internal_xattr(XATTR_SNAPSHOT_PENDING_REMOVAL)
                .or_else(|| md.internal_xattr(XATTR_SNAPSHOT_IN_PROGRESS));
            let Some(Ok(v)) = mark.map(<[u8; 8]>::try_from) else {
                continue;
            };
            let other = u64::from_le_bytes(v);
            let theirs = self.read_blob(other).await.ok().map(|(m, _)| m);
            let keep = theirs
                .as_ref()
                .is_some_and(|m| matches!(m.parent(), Ok(Parent::Snapshot(p)) if p == id));
            log::warn!(
                "blobstore: snapshot {id:#x} was cut short by a crash; {}",
                if keep { "finishing it" } else { "deleting it" }
            );
            if keep {
                let h = self.open_locked(id).await?;
                {
                    let mut st = self.st.lock();
                    if let Some(s) = st.open.get_mut(&id) {
                        remove_internal(&mut s.md, XATTR_SNAPSHOT_PENDING_REMOVAL);
                        remove_internal(&mut s.md, XATTR_SNAPSHOT_IN_PROGRESS);
                        s.md.data_ro_flags |= FLAG_READ_ONLY;
                        s.dirty = true;
                    }
                }
                let r = self.persist_ro(id).await;
                self.close_locked(&h).await?;
                r?;
            } else {
                let mut md = md;
                if let Some(t) = &theirs {
                    for (i, c) in md.clusters.iter_mut().enumerate() {
                        if t.clusters.get(i) == Some(c) {
                            *c = 0;
                        }
                    }
                    for (i, e) in md.extent_pages.iter_mut().enumerate() {
                        if t.extent_pages.get(i) == Some(e) {
                            *e = 0;
                        }
                    }
                }
                self.mark_dirty_if_needed().await?;
                if let Err(e) = self.delete_io(&md, &chain).await {
                    self.st.lock().md_failed = true;
                    return Err(e);
                }
            }
        }
        Ok(())
    }

    /// `spdk_bs_create_clone`: a new thin blob reading from read-only blob `snap`.
    pub(crate) async fn create_clone(
        &self,
        snap: BlobId,
        xattrs: &[(String, Vec<u8>)],
    ) -> Result<BlobId> {
        let _g = self.gate.lock().await;
        self.check_open()?;
        let s = self.open_locked(snap).await?;
        let info = {
            let st = self.st.lock();
            st.open.get(&snap).map(|ob| {
                (
                    ob.md.data_ro() && ob.md.md_ro(),
                    ob.md.num_clusters(),
                    ob.md.extent_table,
                )
            })
        };
        let r = match info {
            Some((true, n, ext)) => {
                let opts = CreateOpts {
                    num_clusters: n,
                    thin_provision: true,
                    use_extent_table: ext,
                    xattrs: user_xattrs(xattrs),
                    ..CreateOpts::default()
                };
                let internal = vec![(XATTR_SNAPSHOT.to_vec(), snap.to_le_bytes().to_vec())];
                self.create_locked(opts, internal, 0).await
            }
            Some(_) => Err(Error::invalid(format!(
                "blob {snap:#x} is not read-only; clones are made of snapshots"
            ))),
            None => Err(Error::BadHandle),
        };
        let c = self.close_locked(&s).await;
        let id = r?;
        c?;
        Ok(id)
    }

    /// An esnap clone (`bs_create_blob` with `esnap_id`): thin, invalid flag
    /// `EXTERNAL_SNAPSHOT`, the id in internal xattr `EXTSNAP`.
    pub(crate) async fn create_esnap_clone(
        &self,
        opts: CreateOpts,
        esnap_id: &[u8],
    ) -> Result<BlobId> {
        if esnap_id.is_empty() || esnap_id.len() > usize::from(u16::MAX) {
            return Err(Error::invalid(format!(
                "an esnap id of {} bytes",
                esnap_id.len()
            )));
        }
        let _g = self.gate.lock().await;
        self.check_open()?;
        let opts = CreateOpts {
            thin_provision: true,
            ..opts
        };
        let internal = vec![(XATTR_EXTERNAL_SNAPSHOT_ID.to_vec(), esnap_id.to_vec())];
        self.create_locked(opts, internal, FLAG_EXTERNAL_SNAPSHOT)
            .await
    }
}

impl<D: Device> super::NativeBlobStore<D> {
    /// Snapshot blob `id` (SPDK `spdk_bs_create_snapshot`): returns the new read-only
    /// snapshot, which takes `id`'s clusters; `id` becomes its thin clone. `xattrs` are the
    /// snapshot's user xattrs. `id` must be closed and writable.
    pub async fn create_snapshot(
        &self,
        id: BlobId,
        xattrs: &[(String, Vec<u8>)],
    ) -> Result<BlobId> {
        self.inner.create_snapshot(id, xattrs, false).await
    }

    /// [`Self::create_snapshot`] of a blob that may be open, for a caller that froze its
    /// writes (SPDK freezes the blob's I/O itself): no write to `id` may be in flight or
    /// start until this returns, or it could land in a cluster the snapshot took after the
    /// clone copied it. Open handles switch to the clone's map at once; reads in flight are
    /// unaffected (the data does not move).
    pub async fn create_snapshot_frozen(
        &self,
        id: BlobId,
        xattrs: &[(String, Vec<u8>)],
    ) -> Result<BlobId> {
        self.inner.create_snapshot(id, xattrs, true).await
    }

    /// SPDK `spdk_bs_inflate_blob`: blob `id` gets its own copy of every cluster and no
    /// parent; it becomes thick. `id` may be open.
    pub async fn inflate(&self, id: BlobId) -> Result<()> {
        self.inner.inflate(id, true).await
    }

    /// SPDK `spdk_bs_blob_decouple_parent`: blob `id` copies its parent's own clusters and
    /// becomes a clone of its grandparent (or has no parent); it stays thin.
    pub async fn decouple_parent(&self, id: BlobId) -> Result<()> {
        self.inner.inflate(id, false).await
    }

    /// A thin clone of read-only blob `snapshot` (SPDK `spdk_bs_create_clone`).
    pub async fn create_clone(
        &self,
        snapshot: BlobId,
        xattrs: &[(String, Vec<u8>)],
    ) -> Result<BlobId> {
        self.inner.create_clone(snapshot, xattrs).await
    }

    /// A thin clone of the external snapshot named `esnap_id` (SPDK `spdk_bs_create_blob_ext`
    /// with `esnap_id`); its reads need a device from the store's esnap resolver.
    pub async fn create_esnap_clone(&self, opts: CreateOpts, esnap_id: &[u8]) -> Result<BlobId> {
        self.inner.create_esnap_clone(opts, esnap_id).await
    }
}
