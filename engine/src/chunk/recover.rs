//! Restore at open, the chunk list, and `check`: everything that reads the chunk metadata
//! as a whole.
//!
//! Restore finds the chunk blobs (`bc.role = chunk`; in a checkpoint, its snapshots of them)
//! among the blobstore's blobs, then scans the KV's chunk keys once: every page a committed segment references is marked used in the
//! bitmap of the worker that owns its blob; every other page is free. Nothing else is read,
//! so the time is proportional to the metadata (and the blob count), not to the device.

use std::collections::{BTreeMap, HashMap};

use super::alloc::{Alloc, MarkError};
use super::meta::{self, ChunkHeader, Key, PageRef, Segment, PAGE, SEG_PAGES};
use super::{ChunkId, Result, ROLE_CHUNK, X_CHUNK_NO};
use crate::blobs::role_of;
use crate::blobstore::{Blob as _, BlobId, BlobIo, BlobStore, IoChannel as _};
use crate::db::Db;
use crate::device::AlignedBuf;

pub(crate) struct Restored<S: BlobStore> {
    pub blobs: HashMap<u32, S::Blob>,
    pub allocs: Vec<Alloc>,
    pub next_id: ChunkId,
    pub problems: Vec<String>,
    /// Segment keys of chunks that have no header: a crash kept a write but lost the
    /// create before it (different KV shards). Their pages count as free; a writable open
    /// deletes the keys before anything else runs.
    pub orphans: Vec<(ChunkId, u32)>,
    pub chunks: u64,
    pub pages: u64,
    /// (chunk, chunk page, location) of every page marked used; only for `check`.
    pub refs: Vec<(ChunkId, u64, PageRef)>,
    /// Every chunk's header, its size raised to what its segments record (`Segment::end`).
    pub headers: BTreeMap<ChunkId, ChunkHeader>,
    /// The segments of those chunks (orphans left out), to warm the workers' caches.
    pub segs: Vec<(ChunkId, u32, Segment)>,
}

/// Open every chunk blob, or in a checkpoint `view` its chunk blobs' snapshots (each handle
/// is closed by [`close_blobs`]).
fn open_blobs<S: BlobStore>(
    store: &S,
    view: Option<&[BlobId]>,
    problems: &mut Vec<String>,
) -> Result<HashMap<u32, S::Blob>> {
    let mut out = HashMap::new();
    for id in store.block_on(store.blob_ids())? {
        if Some(id) == store.super_blob() || view.is_some_and(|v| !v.contains(&id)) {
            continue;
        }
        let blob = match store.block_on(store.open(id)) {
            Ok(b) => b,
            // A stray blob-id bit: nothing of ours (the KV's `check` reports it).
            Err(crate::blobstore::Error::NotFound(_)) => continue,
            Err(e) => return Err(e.into()),
        };
        let role = role_of(store, &blob, view.is_some());
        let no = store.block_on(store.get_xattr(&blob, X_CHUNK_NO));
        match (role, no) {
            (Ok(Some(r)), Ok(no)) if r == ROLE_CHUNK => {
                match no.as_deref().and_then(|b| <[u8; 4]>::try_from(b).ok()) {
                    Some(no) => {
                        let no = u32::from_le_bytes(no);
                        if let Some(dup) = out.insert(no, blob) {
                            problems.push(format!(
                                "two chunk blobs carry number {no} ({:#x} and {id:#x})",
                                dup.id()
                            ));
                            let _ = store.block_on(store.close(dup));
                        }
                    }
                    None => {
                        problems.push(format!("chunk blob {id:#x} has no valid {X_CHUNK_NO}"));
                        let _ = store.block_on(store.close(blob));
                    }
                }
            }
            _ => {
                let _ = store.block_on(store.close(blob));
            }
        }
    }
    Ok(out)
}

pub(crate) fn close_blobs<'a, S: BlobStore>(
    store: &S,
    blobs: impl IntoIterator<Item = &'a S::Blob>,
) {
    for b in blobs {
        if let Err(e) = store.block_on(store.close(b.clone())) {
            log::warn!("blobcask: closing chunk blob {:#x}: {e}", b.id());
        }
    }
}

/// Rebuild every worker's bitmaps from the committed metadata.
pub(crate) fn restore<S: BlobStore>(db: &Db<S>, workers: usize) -> Result<Restored<S>> {
    restore_with(db, workers, false)
}

/// [`restore`], also listing every page reference it marked used (`Restored::refs`) when
/// `keep_refs` (for `check`, which reads them all).
fn restore_with<S: BlobStore>(db: &Db<S>, workers: usize, keep_refs: bool) -> Result<Restored<S>> {
    let store = db.blobstore();
    let mut problems = Vec::new();
    let blobs = open_blobs(store, db.checkpoint_view(), &mut problems)?;
    let ipp = PAGE / u64::from(store.io_unit_size());
    let mut allocs: Vec<Alloc> = (0..workers).map(|_| Alloc::default()).collect();
    for (&no, b) in &blobs {
        allocs[no as usize % workers].add_blob(no, b.num_io_units() / ipp);
    }
    let mut headers: BTreeMap<ChunkId, ChunkHeader> = BTreeMap::new();
    let mut segs: Vec<(ChunkId, u32, Segment)> = Vec::new();
    let mut next = 1;
    let scanned = (|| -> Result<()> {
        for item in db.iter_prefix(meta::META_PREFIX)? {
            let (k, v) = item?;
            match meta::parse_key(&k) {
                Some(Key::Chunk(id)) => match ChunkHeader::decode(&v) {
                    Ok(h) => {
                        headers.insert(id, h);
                    }
                    Err(e) => problems.push(format!("chunk {id}: {e}")),
                },
                Some(Key::Seg(id, s)) => match Segment::decode(&v) {
                    Ok(seg) => segs.push((id, s, seg)),
                    Err(e) => problems.push(format!("chunk {id} segment {s}: {e}")),
                },
                Some(Key::Next) => {
                    if let Ok(b) = <[u8; 8]>::try_from(v.as_slice()) {
                        next = next.max(u64::from_le_bytes(b));
                    }
                }
                None => problems.push(format!("unknown chunk metadata key {k:02x?}")),
            }
        }
        Ok(())
    })();
    if let Err(e) = scanned {
        close_blobs(store, blobs.values());
        return Err(e);
    }
    // A write that grew its chunk within one segment recorded the size there only.
    for (id, s, seg) in &segs {
        if let Some(h) = headers.get_mut(id) {
            h.size = h.size.max(seg.reach(*s));
        }
    }
    let mut pages = 0;
    let mut refs = Vec::new();
    let mut orphans = Vec::new();
    for (id, s, seg) in &segs {
        let Some(h) = headers.get(id) else {
            orphans.push((*id, *s));
            continue;
        };
        let base = u64::from(*s) * SEG_PAGES as u64;
        for (i, r) in seg.pages.iter().enumerate() {
            if r.is_hole() {
                continue;
            }
            let cp = base + i as u64;
            let at = format!(
                "chunk {id} page {cp} (chunk blob {}, page {})",
                r.blob, r.page
            );
            if cp * PAGE >= h.size {
                problems.push(format!("{at} lies past the chunk's size {}", h.size));
            }
            match allocs[r.blob as usize % workers].mark_used(r.blob, r.page) {
                Ok(()) => {
                    pages += 1;
                    if keep_refs {
                        refs.push((*id, cp, *r));
                    }
                }
                Err(MarkError::Twice) => problems.push(format!("{at} is referenced twice")),
                Err(MarkError::OutOfRange) => problems.push(if blobs.contains_key(&r.blob) {
                    format!("{at} lies past the end of its blob")
                } else {
                    format!("{at} is in a chunk blob that does not exist")
                }),
            }
        }
    }
    let top = headers.keys().next_back().map_or(0, |&m| m + 1);
    Ok(Restored {
        blobs,
        allocs,
        next_id: next.max(top).max(1),
        problems,
        orphans,
        chunks: headers.len() as u64,
        pages,
        refs,
        segs: segs
            .into_iter()
            .filter(|(id, _, _)| headers.contains_key(id))
            .collect(),
        headers,
    })
}

/// Every chunk id, ascending.
pub(crate) fn list<S: BlobStore>(db: &Db<S>) -> Result<Vec<ChunkId>> {
    let mut pre = meta::META_PREFIX.to_vec();
    pre.push(b'c');
    let mut out = Vec::new();
    for item in db.iter_prefix(&pre)? {
        let (k, _) = item?;
        if let Some(Key::Chunk(id)) = meta::parse_key(&k) {
            out.push(id);
        }
    }
    out.sort_unstable();
    Ok(out)
}

/// What [`check`] found.
#[derive(Debug, Clone, Default)]
pub struct ChunkCheck {
    pub chunks: u64,
    pub blobs: u64,
    /// Pages referenced by committed metadata.
    pub pages: u64,
    /// Pages of chunk blobs no chunk references (free space; not a problem).
    pub free_pages: u64,
    /// Metadata that does not decode, pages referenced twice or outside their blob, pages
    /// past their chunk's size, two blobs with one number, pages that fail their crc32c or
    /// cannot be read.
    pub problems: Vec<String>,
    /// Normal after a crash: segments of chunks whose creation was lost (the next writable
    /// open deletes them).
    pub notes: Vec<String>,
}

/// Check the chunk metadata of `db` against the chunk blobs: the bitmaps restore would
/// build, every reference in them, and every referenced page read back against its crc32c.
/// Reads only (works on a read-only store).
pub fn check<S: BlobStore>(db: &Db<S>) -> Result<ChunkCheck> {
    let mut r = restore_with(db, 1, true)?;
    let refs = std::mem::take(&mut r.refs);
    if let Err(e) = verify_pages(db.blobstore(), &r.blobs, refs, &mut r.problems) {
        close_blobs(db.blobstore(), r.blobs.values());
        return Err(e);
    }
    let free: u64 = r.allocs.iter().map(Alloc::free_pages).sum();
    let rep = ChunkCheck {
        chunks: r.chunks,
        blobs: r.blobs.len() as u64,
        pages: r.pages,
        free_pages: free,
        problems: r.problems,
        notes: r
            .orphans
            .iter()
            .map(|(id, s)| {
                format!("segment {s} of chunk {id}, whose creation did not survive a crash")
            })
            .collect(),
    };
    close_blobs(db.blobstore(), r.blobs.values());
    Ok(rep)
}

/// Pages `verify_pages` reads per submission.
const VERIFY_BATCH: usize = 64;

/// Read every page of `refs` (in blob order) and compare it with its crc32c; a page that
/// fails, or that cannot be read, is a problem naming its chunk and place. References to
/// missing blobs or past a blob's end were reported by restore and are skipped here.
fn verify_pages<S: BlobStore>(
    store: &S,
    blobs: &HashMap<u32, S::Blob>,
    mut refs: Vec<(ChunkId, u64, PageRef)>,
    problems: &mut Vec<String>,
) -> Result<()> {
    refs.sort_unstable_by_key(|(_, _, r)| (r.blob, r.page));
    let ch = store.channel()?;
    let ipp = PAGE / u64::from(store.io_unit_size());
    let mut buf = AlignedBuf::zeroed(VERIFY_BATCH * PAGE as usize);
    for group in refs.chunks(VERIFY_BATCH) {
        let mut read = vec![false; group.len()];
        let mut reqs = Vec::with_capacity(group.len());
        for (((_, _, r), page), was_read) in group
            .iter()
            .zip(buf.chunks_exact_mut(PAGE as usize))
            .zip(read.iter_mut())
        {
            let Some(b) = blobs.get(&r.blob) else {
                continue;
            };
            if u64::from(r.page + 1) * ipp > b.num_io_units() {
                continue;
            }
            *was_read = true;
            reqs.push(BlobIo::Read {
                blob: b,
                offset: u64::from(r.page) * ipp,
                buf: page,
            });
        }
        if let Err(e) = store.block_on(ch.submit(&mut reqs)) {
            drop(reqs);
            let (id, cp, r) = group[0];
            problems.push(format!(
                "{} chunk pages from chunk {id} page {cp} (chunk blob {}, page {}) on: unreadable: {e}",
                group.len(),
                r.blob,
                r.page
            ));
            continue;
        }
        drop(reqs);
        for (((id, cp, r), page), was_read) in
            group.iter().zip(buf.chunks_exact(PAGE as usize)).zip(&read)
        {
            if *was_read && meta::page_crc(*id, *cp, page) != r.crc {
                problems.push(format!(
                    "chunk {id} page {cp} (chunk blob {}, page {}) fails its crc32c",
                    r.blob, r.page
                ));
            }
        }
    }
    Ok(())
}
