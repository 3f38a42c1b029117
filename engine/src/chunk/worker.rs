//! A chunk worker: one thread that owns some chunk blobs and their bitmaps, and runs every
//! request for the chunks routed to it (`id % workers`), one at a time.
//!
//! Write: allocate pages from the own bitmap (growing the newest blob or creating one, in
//! whole clusters, when short) → read the old edge pages a write covers partly → write the
//! new pages (one submission) → commit every touched segment and the header in one KV batch
//! → free the pages the write replaced: at once when the commit is durable, else at the next
//! sync (a page must not be reused while a crash could still bring back the metadata that
//! points to it). Pages of blobs another worker owns go back to it by message.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::thread::JoinHandle;

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};

use super::alloc::Alloc;
use super::cache::Meta;
use super::meta::{self, ChunkHeader, PageRef, Segment, PAGE, SEG_BYTES, SEG_PAGES};
use super::{
    ChunkCounters, ChunkError, ChunkId, ChunkStat, CompactStats, Msg, Result, Shared, SpaceStats,
    WriteBuf, MAX_CHUNK_SIZE, ROLE_CHUNK, X_CHUNK_NO,
};
use crate::blobs::X_ROLE;
use crate::blobstore::{Blob as _, BlobIo, BlobStore, CreateOpts, IoChannel as _};
use crate::db::WriteBatch;
use crate::device::AlignedBuf;
use parking_lot::RwLock;

/// What a worker starts with besides its channel: its bitmaps, the headers of its chunks and
/// the segments to warm its cache with (from the restore scan), and the sending half of its
/// write-buffer pool.
pub(crate) struct Start {
    pub alloc: Alloc,
    /// The worker's metadata (headers, segment cache), which callers read too.
    pub meta: Arc<RwLock<Meta>>,
    pub warm: Vec<(ChunkId, u32, Segment)>,
    pub pool: Sender<crate::device::AlignedBuf>,
}

pub(crate) fn spawn<S: BlobStore>(
    sh: Arc<Shared<S>>,
    id: usize,
    rx: Receiver<Msg>,
    peers: Vec<Sender<Msg>>,
    start: Start,
) -> Result<JoinHandle<()>> {
    let Start {
        alloc,
        meta,
        warm,
        pool,
    } = start;
    let ch = sh.db.blobstore().channel()?;
    let own: HashMap<u32, S::Blob> = {
        let all = sh.blobs.load();
        alloc
            .blobs()
            .filter_map(|(no, _)| all.get(&no).map(|b| (no, b.clone())))
            .collect()
    };
    {
        let mut m = meta.write();
        for (c, s, seg) in warm {
            m.cache.put_segment(c, s, seg);
        }
    }
    let mut w = Worker {
        n: sh.workers(),
        id,
        sh,
        own,
        alloc,
        ch,
        pending: Vec::new(),
        peers,
        meta,
        pool,
        counters: ChunkCounters::default(),
        grow_streak: 0,
        crc: crc_helper(id),
    };
    std::thread::Builder::new()
        .name(format!("blobcask-chunk-{id}"))
        .spawn(move || w.run(rx))
        .map_err(|e| ChunkError::Store(e.into()))
}

struct Worker<S: BlobStore> {
    id: usize,
    n: usize,
    sh: Arc<Shared<S>>,
    /// The blobs this worker owns (`no % n == id`) and allocates from.
    own: HashMap<u32, S::Blob>,
    alloc: Alloc,
    ch: S::Channel,
    /// Pages freed by commits that may not be durable yet.
    pending: Vec<(u32, u32)>,
    peers: Vec<Sender<Msg>>,
    /// The headers of its chunks and a cache of their segments (`cache.rs`). Only this
    /// worker changes it, each time after the KV accepted a commit and before it answers;
    /// callers read it to serve reads on their own thread (`ChunkStore::read`).
    meta: Arc<RwLock<Meta>>,
    /// Write buffers go back to the callers through it (one copy per write, no page faults).
    pool: Sender<AlignedBuf>,
    counters: ChunkCounters,
    /// Consecutive grows of the newest blob: each one takes more clusters (doubling).
    grow_streak: u32,
    /// Checksums large writes beside their device write (none if its thread did not start).
    crc: Option<CrcHelper>,
}

fn corrupt(chunk: ChunkId, offset: u64, detail: impl Into<String>) -> ChunkError {
    ChunkError::Corruption {
        chunk,
        offset,
        detail: detail.into(),
    }
}

impl<S: BlobStore> Worker<S> {
    fn run(&mut self, rx: Receiver<Msg>) {
        loop {
            let msg = match self.sh.opts.compact_every {
                Some(t) => match rx.recv_timeout(t) {
                    Ok(m) => m,
                    Err(RecvTimeoutError::Timeout) => {
                        if !self.sh.read_only {
                            if let Err(e) = self.compact() {
                                log::warn!("blobcask: chunk compaction failed: {e}");
                            }
                        }
                        continue;
                    }
                    Err(RecvTimeoutError::Disconnected) => return,
                },
                None => match rx.recv() {
                    Ok(m) => m,
                    Err(_) => return,
                },
            };
            match msg {
                Msg::Write {
                    id,
                    off,
                    mut data,
                    durable,
                    reply,
                } => {
                    let r = self.write(id, off, &mut data, durable);
                    self.recycle(data.buf);
                    reply.send(r)
                }
                Msg::Read {
                    id,
                    off,
                    len,
                    reply,
                } => reply.send(self.read(id, off, len)),
                Msg::Truncate {
                    id,
                    size,
                    durable,
                    reply,
                } => reply.send(self.truncate(id, size, durable)),
                Msg::Remove { id, durable, reply } => reply.send(self.remove(id, durable)),
                Msg::Stat { id, reply } => reply.send(self.stat(id)),
                Msg::WriteOwned {
                    id,
                    off,
                    mut data,
                    durable,
                    reply,
                } => {
                    let r = self.write(id, off, &mut data, durable);
                    reply.send(r.map(|()| data.buf))
                }
                Msg::Created(id, h) => {
                    self.meta.write().heads.insert(id, h);
                }
                Msg::Free(pages) => {
                    for (b, p) in pages {
                        // A blob compacted away meanwhile no longer has the page: nothing to do.
                        let _ = self.alloc.free(b, p);
                    }
                }
                Msg::Sync { reply } => reply.send(self.sync_now()),
                Msg::Compact { reply } => reply.send(if self.sh.read_only {
                    Err(ChunkError::ReadOnly)
                } else {
                    self.compact()
                }),
                Msg::Counters { reply } => {
                    let mut c = self.counters;
                    let m = self.meta.read();
                    c.cache_hits = m.cache.counts.hits;
                    c.cache_misses = m.cache.counts.misses;
                    reply.send(Ok(c))
                }
                Msg::Space { reply } => reply.send(Ok(SpaceStats {
                    blobs: self.own.len() as u64,
                    pages: self.alloc.blobs().map(|(_, b)| b.pages()).sum(),
                    free_pages: self.alloc.free_pages(),
                })),
                Msg::Stop { reply } => {
                    let r = if self.sh.read_only || self.pending.is_empty() {
                        Ok(())
                    } else {
                        self.sync_now()
                    };
                    reply.send(r);
                    return;
                }
            }
        }
    }

    fn store(&self) -> &S {
        self.sh.db.blobstore()
    }

    fn io_per_page(&self) -> u64 {
        PAGE / u64::from(self.store().io_unit_size())
    }

    fn writable(&self) -> Result<()> {
        if self.sh.read_only {
            return Err(ChunkError::ReadOnly);
        }
        Ok(())
    }

    /// A write buffer the worker is done with goes back to the callers' pool (up to 4 MiB;
    /// a full pool drops it).
    fn recycle(&self, buf: AlignedBuf) {
        if buf.len() <= 4 << 20 {
            let _ = self.pool.try_send(buf);
        }
    }

    /// The chunk's header (resident after the first access; a chunk never seen is read from
    /// the KV: one created since open, which has no segment yet, so its size is the header's).
    fn header(&mut self, id: ChunkId) -> Result<ChunkHeader> {
        if let Some(h) = self.meta.read().heads.get(&id) {
            return Ok(*h);
        }
        self.counters.meta_reads += 1;
        let v = self
            .sh
            .db
            .get_system(&meta::chunk_key(id))?
            .ok_or(ChunkError::NotFound(id))?;
        let h = ChunkHeader::decode(&v).map_err(|e| corrupt(id, 0, e.to_string()))?;
        self.meta.write().heads.insert(id, h);
        Ok(h)
    }

    /// Segment `seg` of `id` (from the cache, else the KV).
    fn segment(&mut self, id: ChunkId, seg: u32) -> Result<Segment> {
        if let Some(s) = self.meta.write().cache.segment(id, seg) {
            return Ok(s);
        }
        self.counters.meta_reads += 1;
        let s = match self.sh.db.get_system(&meta::seg_key(id, seg))? {
            None => Segment::default(),
            Some(v) => Segment::decode(&v)
                .map_err(|e| corrupt(id, u64::from(seg) * SEG_BYTES, e.to_string()))?,
        };
        self.meta.write().cache.put_segment(id, seg, s.clone());
        Ok(s)
    }

    /// Segment `seg` of a chunk of `size` bytes: one that starts at or past the size has no
    /// page (truncate and remove delete them), so it is not looked up.
    fn segment_below(&mut self, id: ChunkId, seg: u32, size: u64) -> Result<Segment> {
        if u64::from(seg) * SEG_BYTES >= size {
            return Ok(Segment::default());
        }
        self.segment(id, seg)
    }

    /// Forget what is cached of `id`: a commit of it failed, so its committed state is not
    /// known here (the next access reads the KV).
    fn invalidate(&mut self, id: ChunkId) {
        let mut m = self.meta.write();
        m.heads.remove(&id);
        m.cache.forget_all(id);
    }

    fn blob(&self, no: u32) -> Option<S::Blob> {
        self.own
            .get(&no)
            .cloned()
            .or_else(|| self.sh.blobs.load().get(&no).cloned())
    }

    /// Read and verify the pages `refs` (chunk page number, location) into `out` (4 KiB per
    /// ref, in order); holes read as zeroes.
    fn read_pages(&mut self, id: ChunkId, refs: &[(u64, PageRef)], out: &mut [u8]) -> Result<()> {
        let ipp = self.io_per_page();
        let mut blobs = Vec::with_capacity(refs.len());
        for (cp, r) in refs {
            if r.is_hole() {
                blobs.push(None);
                continue;
            }
            let b = self.blob(r.blob).ok_or_else(|| {
                corrupt(
                    id,
                    cp * PAGE,
                    format!("references chunk blob {}, which does not exist", r.blob),
                )
            })?;
            if u64::from(r.page + 1) * ipp > b.num_io_units() {
                return Err(corrupt(
                    id,
                    cp * PAGE,
                    format!(
                        "references page {} past the end of chunk blob {}",
                        r.page, r.blob
                    ),
                ));
            }
            blobs.push(Some(b));
        }
        let mut reqs = Vec::new();
        for (buf, ((_, r), b)) in out
            .chunks_exact_mut(PAGE as usize)
            .zip(refs.iter().zip(&blobs))
        {
            match b {
                None => buf.fill(0),
                Some(b) => reqs.push(BlobIo::Read {
                    blob: b,
                    offset: u64::from(r.page) * ipp,
                    buf,
                }),
            }
        }
        if !reqs.is_empty() {
            self.counters.data_reads += 1;
            self.store().block_on(self.ch.submit(&mut reqs))?;
        }
        drop(reqs);
        for ((cp, r), buf) in refs.iter().zip(out.chunks_exact(PAGE as usize)) {
            if !r.is_hole() && meta::page_crc(id, *cp, buf) != r.crc {
                return Err(corrupt(
                    id,
                    cp * PAGE,
                    format!(
                        "page fails its crc32c (chunk blob {}, page {})",
                        r.blob, r.page
                    ),
                ));
            }
        }
        Ok(())
    }

    fn read(&mut self, id: ChunkId, off: u64, len: u64) -> Result<Vec<u8>> {
        let h = self.header(id)?;
        let end = off.saturating_add(len).min(h.size);
        if off >= end {
            return Ok(Vec::new());
        }
        let first = off / PAGE;
        let last = (end - 1) / PAGE;
        let mut refs = Vec::with_capacity((last - first + 1) as usize);
        let mut seg_cache: Option<(u32, Segment)> = None;
        for cp in first..=last {
            let (seg, idx) = split(cp);
            if seg_cache.as_ref().is_none_or(|(s, _)| *s != seg) {
                seg_cache = Some((seg, self.segment(id, seg)?));
            }
            let r = seg_cache
                .as_ref()
                .map_or(PageRef::HOLE, |(_, s)| s.get(idx));
            refs.push((cp, r));
        }
        let mut buf = AlignedBuf::zeroed(refs.len() * PAGE as usize);
        self.read_pages(id, &refs, &mut buf)?;
        let start = (off - first * PAGE) as usize;
        Ok(buf[start..start + (end - off) as usize].to_vec())
    }

    fn write(&mut self, id: ChunkId, off: u64, data: &mut WriteBuf, durable: bool) -> Result<()> {
        self.writable()?;
        let end = off
            .checked_add(data.len as u64)
            .filter(|&e| e <= MAX_CHUNK_SIZE)
            .ok_or_else(|| {
                ChunkError::InvalidArgument(format!(
                    "write of {} bytes at {off} ends past the largest chunk ({MAX_CHUNK_SIZE})",
                    data.len
                ))
            })?;
        let h = self.header(id)?;
        if data.len == 0 {
            return Ok(());
        }
        let r = self.write_in(id, h, off, end, data, durable);
        if r.is_err() {
            self.invalidate(id);
        }
        r
    }

    fn write_in(
        &mut self,
        id: ChunkId,
        h: ChunkHeader,
        off: u64,
        end: u64,
        data: &mut WriteBuf,
        durable: bool,
    ) -> Result<()> {
        let first = off / PAGE;
        let last = (end - 1) / PAGE;
        let n = (last - first + 1) as usize;
        let mut segs: BTreeMap<u32, Segment> = BTreeMap::new();
        for s in split(first).0..=split(last).0 {
            let seg = self.segment_below(id, s, h.size)?;
            segs.insert(s, seg);
        }
        // The caller placed the bytes at `lead` of a page-aligned buffer of at least `n`
        // pages (the one copy of the data). Edge pages the write covers only partly keep
        // their other bytes: read back (crc verified), or zero past the size.
        let len = n * PAGE as usize;
        let (lead, tail) = (data.lead, data.lead + data.len);
        let mut edges = Vec::new();
        if lead > 0 {
            edges.push((first, 0..lead));
        }
        if !tail.is_multiple_of(PAGE as usize) {
            edges.push((last, tail - (n - 1) * PAGE as usize..PAGE as usize));
        }
        let mut old_page: Option<(u64, AlignedBuf)> = None;
        for (cp, keep) in edges {
            let at = ((cp - first) * PAGE) as usize;
            let dst = &mut data.buf[at..at + PAGE as usize];
            if cp * PAGE >= h.size {
                dst[keep].fill(0);
                continue;
            }
            if old_page.as_ref().is_none_or(|(c, _)| *c != cp) {
                let (s, i) = split(cp);
                let r = segs.get(&s).map_or(PageRef::HOLE, |g| g.get(i));
                let mut one = AlignedBuf::zeroed(PAGE as usize);
                self.read_pages(id, &[(cp, r)], &mut one)?;
                old_page = Some((cp, one));
            }
            if let Some((_, one)) = &old_page {
                data.buf[at..at + PAGE as usize][keep.clone()].copy_from_slice(&one[keep]);
            }
        }
        let new = self.take_pages(n)?;
        let shared = Arc::new(std::mem::replace(&mut data.buf, AlignedBuf::zeroed(0)));
        let crcs = self.write_and_crc(id, first, &new, &shared, len);
        // The buffer goes back to the pool unless a helper still holds it (it never does
        // after answering).
        if let Ok(b) = Arc::try_unwrap(shared) {
            data.buf = b;
        }
        let crcs = match crcs {
            Ok(c) => c,
            Err(e) => {
                self.give_back(&new);
                return Err(e);
            }
        };
        let mut freed = Vec::new();
        for (k, (&(b, p), &crc)) in new.iter().zip(&crcs).enumerate() {
            let cp = first + k as u64;
            let (s, i) = split(cp);
            if let Some(seg) = segs.get_mut(&s) {
                let old = seg.get(i);
                if !old.is_hole() {
                    freed.push((old.blob, old.page));
                }
                seg.set(
                    i,
                    PageRef {
                        blob: b,
                        page: p,
                        crc,
                    },
                );
            }
        }
        // A write that grows the chunk says so in the segment it ends in: the batch stays
        // one key (one KV shard, one round) for any write within a segment.
        let (end_seg, _) = split((end - 1) / PAGE);
        if end > h.size {
            if let Some(seg) = segs.get_mut(&end_seg) {
                let reach = (end - u64::from(end_seg) * SEG_BYTES) as u32;
                seg.end = seg.end.max(reach);
            }
        }
        let mut batch = WriteBatch::new();
        for (s, seg) in &segs {
            batch.put(&meta::seg_key(id, *s), &seg.encode());
        }
        self.commit(batch, &new, freed, durable)?;
        let mut m = self.meta.write();
        for (s, seg) in segs {
            m.cache.put_segment(id, s, seg);
        }
        if end > h.size {
            m.heads.insert(
                id,
                ChunkHeader {
                    size: end,
                    hint: h.hint,
                },
            );
        }
        Ok(())
    }

    /// Commit a batch; `new` are the pages it makes live (given back if the KV refused the
    /// batch without writing it), `freed` those it makes dead.
    ///
    /// The pages of `new` are durable before the batch is written: a device with a volatile
    /// cache persists writes in any order, and a crash that kept the batch but not its pages
    /// would leave the chunk neither old nor new (its pages failing their crc, the old ones
    /// free again). A durable commit flushes them here; a non-durable one, on a store that
    /// shares flushes, leaves the KV shard to wait for a flush begun after them before it
    /// writes the batch out (one flush for every commit its write-behind buffer gathered).
    fn commit(
        &mut self,
        batch: WriteBatch,
        new: &[(u32, u32)],
        freed: Vec<(u32, u32)>,
        durable: bool,
    ) -> Result<()> {
        let durable_now = self.sh.db.syncs_every_write();
        let mut after = None;
        if !new.is_empty() {
            match self.store().flush_ticket() {
                Some(t) if !durable && !durable_now => after = Some(t),
                _ => self.store().block_on(self.ch.flush())?,
            }
        }
        self.counters.commits += 1;
        if batch.len() > 1 {
            self.counters.multi_key_commits += 1;
        }
        let committed = match after {
            Some(t) => self.sh.db.write_batch_system_after(batch, t),
            None => self.sh.db.write_batch_system(batch),
        };
        match committed {
            Ok(()) => {}
            Err(crate::Error::Full) => {
                // Nothing was written: the new pages are referenced by nothing.
                self.give_back(new);
                return Err(ChunkError::OutOfSpace);
            }
            // Anything else may or may not have reached the device: leave the new pages
            // taken (the next open's restore frees them if the commit did not land).
            Err(e) => return Err(e.into()),
        }
        if durable && !durable_now {
            self.counters.syncs += 1;
            self.sh.db.sync()?;
        }
        if durable || durable_now {
            self.release(freed);
        } else {
            self.pending.extend(freed);
            if self.pending.len() > self.sh.opts.max_pending_frees {
                self.sync_now()?;
            }
        }
        Ok(())
    }

    /// Give pages back to their owners now (their freeing commit is durable).
    fn release(&mut self, pages: Vec<(u32, u32)>) {
        let mut foreign: HashMap<usize, Vec<(u32, u32)>> = HashMap::new();
        for (b, p) in pages {
            let owner = b as usize % self.n;
            if owner == self.id {
                if let Err(e) = self.alloc.free(b, p) {
                    log::warn!("blobcask: chunk page {b}:{p} freed twice or unknown ({e:?})");
                }
            } else {
                foreign.entry(owner).or_default().push((b, p));
            }
        }
        for (w, pages) in foreign {
            let _ = self.peers[w].send(Msg::Free(pages));
        }
    }

    /// Pages taken by an operation that did not commit.
    fn give_back(&mut self, pages: &[(u32, u32)]) {
        for &(b, p) in pages {
            let _ = self.alloc.free(b, p);
        }
    }

    /// Make every commit so far durable, then free what they freed.
    fn sync_now(&mut self) -> Result<()> {
        if !self.sh.read_only {
            self.counters.syncs += 1;
            self.sh.db.sync()?;
        }
        let p = std::mem::take(&mut self.pending);
        self.release(p);
        Ok(())
    }

    /// `n` free pages of the own blobs, growing them if needed.
    fn take_pages(&mut self, n: usize) -> Result<Vec<(u32, u32)>> {
        self.take_pages_avoiding(n, &[])
    }

    /// [`Self::take_pages`] outside the blobs `avoid` (compaction's victims: a page moved
    /// into a victim not yet emptied would be deleted with it).
    fn take_pages_avoiding(&mut self, n: usize, avoid: &[u32]) -> Result<Vec<(u32, u32)>> {
        loop {
            if let Some(v) = self.alloc.alloc(n, avoid) {
                return Ok(v);
            }
            if !self.pending.is_empty() {
                self.sync_now()?;
                continue;
            }
            let have: u64 = self
                .alloc
                .blobs()
                .filter(|(no, _)| !avoid.contains(no))
                .map(|(_, b)| b.free())
                .sum();
            self.grow(n as u64 - have)?;
        }
    }

    /// Add at least `pages` pages of space: grow the newest own blob by a batch of clusters,
    /// or start a new blob once it is at its largest.
    fn grow(&mut self, pages: u64) -> Result<()> {
        let sh = self.sh.clone();
        let store = sh.db.blobstore();
        let cluster = u64::from(store.cluster_size());
        let ppc = cluster / PAGE;
        let need = pages.div_ceil(ppc).max(1);
        let base = need.max(self.sh.opts.grow_clusters);
        let reserve = self.sh.opts.reserve_clusters + self.sh.db.kv_reserve_clusters();
        let free = store.free_clusters();
        if free < base + reserve {
            return Err(ChunkError::OutOfSpace);
        }
        // A worker that keeps growing (sequential fills) takes twice as much each time, up
        // to a blob's largest size: fewer resizes and `sync_md` per byte written. Never more
        // than half of what is free beyond the reserves, so other workers still get space.
        let streak = base.saturating_mul(1 << self.grow_streak.min(16));
        let want = streak
            .min(self.sh.opts.max_blob_clusters)
            .min((free - reserve) / 2)
            .max(base);
        self.grow_streak += 1;
        self.counters.grows += 1;
        let max = self.sh.opts.max_blob_clusters;
        let newest = self.own.keys().copied().max();
        if let Some(no) = newest {
            let blob = self.own[&no].clone();
            let have = blob.num_clusters();
            if have < max {
                let to = (have + want).min(max);
                store.block_on(store.resize(&blob, to)).map_err(space)?;
                store.block_on(store.sync_md(&blob)).map_err(space)?;
                if let Some(b) = self.alloc.blob_mut(no) {
                    b.grow(to * ppc);
                }
                return Ok(());
            }
        }
        let no = self.next_blob_no();
        let clusters = want.min(max);
        let id = store
            .block_on(store.create(CreateOpts {
                num_clusters: clusters,
                use_extent_table: false,
                xattrs: vec![
                    (X_ROLE.into(), ROLE_CHUNK.to_vec()),
                    (X_CHUNK_NO.into(), no.to_le_bytes().to_vec()),
                ],
                ..CreateOpts::default()
            }))
            .map_err(space)?;
        let blob = store.block_on(store.open(id))?;
        self.alloc.add_blob(no, clusters * ppc);
        self.own.insert(no, blob.clone());
        self.sh.blobs.rcu(|m| {
            let mut m = HashMap::clone(m);
            m.insert(no, blob.clone());
            m
        });
        Ok(())
    }

    /// The next blob number this worker may use: above every existing one, `≡ id (mod n)`.
    fn next_blob_no(&self) -> u32 {
        let top = self
            .sh
            .blobs
            .load()
            .keys()
            .copied()
            .max()
            .map_or(0, |m| m + 1);
        let n = self.n as u32;
        let id = self.id as u32;
        top + (id + n - top % n) % n
    }

    /// Write `buf[..len]` to the pages `at` and return the crc of each page (chunk `id`,
    /// from chunk page `first`). A large write has its crcs computed by the worker's helper
    /// thread while the device writes: the checksum costs no time on the write's path.
    fn write_and_crc(
        &mut self,
        id: ChunkId,
        first: u64,
        at: &[(u32, u32)],
        buf: &Arc<AlignedBuf>,
        len: usize,
    ) -> Result<Vec<u32>> {
        let n = at.len();
        let helped = n >= OVERLAP_PAGES
            && self.crc.as_ref().is_some_and(|h| {
                h.jobs
                    .send(CrcJob {
                        buf: buf.clone(),
                        id,
                        first,
                        n,
                    })
                    .is_ok()
            });
        let written = self.write_pages(at, &buf[..len]);
        let crcs = if helped {
            self.crc.as_ref().and_then(|h| h.done.recv().ok())
        } else {
            None
        };
        written?;
        Ok(crcs.unwrap_or_else(|| page_crcs(id, first, n, buf)))
    }

    /// Write `buf` (4 KiB per page) to the pages `at`, one request per run of neighbours.
    fn write_pages(&mut self, at: &[(u32, u32)], buf: &[u8]) -> Result<()> {
        self.counters.data_writes += 1;
        let ipp = self.io_per_page();
        let mut runs: Vec<(u32, u32, usize, usize)> = Vec::new(); // blob, page, from, count
        for (k, &(b, p)) in at.iter().enumerate() {
            match runs.last_mut() {
                Some(r) if r.0 == b && r.1 + r.3 as u32 == p => r.3 += 1,
                _ => runs.push((b, p, k, 1)),
            }
        }
        let blobs: Vec<S::Blob> = runs
            .iter()
            .map(|r| self.own.get(&r.0).cloned())
            .collect::<Option<_>>()
            .ok_or_else(|| ChunkError::InvalidArgument("allocation outside own blobs".into()))?;
        let mut reqs: Vec<BlobIo<'_, S::Blob>> = runs
            .iter()
            .zip(&blobs)
            .map(|(r, b)| BlobIo::Write {
                blob: b,
                offset: u64::from(r.1) * ipp,
                buf: &buf[r.2 * PAGE as usize..(r.2 + r.3) * PAGE as usize],
            })
            .collect();
        Ok(self.store().block_on(self.ch.submit(&mut reqs))?)
    }

    fn truncate(&mut self, id: ChunkId, size: u64, durable: bool) -> Result<()> {
        self.writable()?;
        if size > MAX_CHUNK_SIZE {
            return Err(ChunkError::InvalidArgument(format!(
                "size {size} is past the largest chunk ({MAX_CHUNK_SIZE})"
            )));
        }
        let h = self.header(id)?;
        match self.truncate_in(id, h, size, durable) {
            Ok(segs) => {
                let mut m = self.meta.write();
                for (s, seg) in segs {
                    m.cache.put_segment(id, s, seg);
                }
                m.heads.insert(id, ChunkHeader { size, hint: h.hint });
                Ok(())
            }
            Err(e) => {
                self.invalidate(id);
                Err(e)
            }
        }
    }

    /// Truncate's commit; returns the segment values it committed.
    fn truncate_in(
        &mut self,
        id: ChunkId,
        h: ChunkHeader,
        size: u64,
        durable: bool,
    ) -> Result<Vec<(u32, Segment)>> {
        let mut batch = WriteBatch::new();
        batch.put(
            &meta::chunk_key(id),
            &ChunkHeader { size, hint: h.hint }.encode(),
        );
        let mut done = Vec::new();
        if size >= h.size {
            self.commit(batch, &[], Vec::new(), durable)?;
            return Ok(done);
        }
        let mut freed = Vec::new();
        let mut new = Vec::new();
        // The first page to drop whole, and the page cut in the middle (if any).
        let keep_pages = size.div_ceil(PAGE);
        let old_pages = h.size.div_ceil(PAGE);
        let cut = (!size.is_multiple_of(PAGE)).then_some(size / PAGE);
        let first_seg = split(keep_pages.saturating_sub(u64::from(cut.is_some()))).0;
        let last_seg = split(old_pages.saturating_sub(1)).0;
        for s in first_seg..=last_seg {
            let mut seg = self.segment(id, s)?;
            let base = u64::from(s) * SEG_PAGES as u64;
            for i in 0..seg.pages.len() {
                let cp = base + i as u64;
                let r = seg.pages[i];
                if r.is_hole() {
                    continue;
                }
                if cp >= keep_pages {
                    freed.push((r.blob, r.page));
                    seg.pages[i] = PageRef::HOLE;
                } else if Some(cp) == cut {
                    // Zero the tail of the cut page (copy on write) so a later growth reads
                    // zeroes there.
                    let mut buf = AlignedBuf::zeroed(PAGE as usize);
                    self.read_pages(id, &[(cp, r)], &mut buf)?;
                    buf[(size % PAGE) as usize..].fill(0);
                    let at = self.take_pages(1)?;
                    if let Err(e) = self.write_pages(&at, &buf) {
                        self.give_back(&at);
                        return Err(e);
                    }
                    freed.push((r.blob, r.page));
                    seg.pages[i] = PageRef {
                        blob: at[0].0,
                        page: at[0].1,
                        crc: meta::page_crc(id, cp, &buf),
                    };
                    new.extend(at);
                }
            }
            // The size the segment records may not outlive the cut.
            if seg.reach(s) > size {
                seg.end = size.saturating_sub(u64::from(s) * SEG_BYTES) as u32;
            }
            if seg.trim() {
                seg.end = 0;
                batch.delete(&meta::seg_key(id, s));
            } else {
                batch.put(&meta::seg_key(id, s), &seg.encode());
            }
            done.push((s, seg));
        }
        self.commit(batch, &new, freed, durable)?;
        Ok(done)
    }

    fn remove(&mut self, id: ChunkId, durable: bool) -> Result<()> {
        self.writable()?;
        let h = self.header(id)?;
        let mut batch = WriteBatch::new();
        let mut freed = Vec::new();
        let pages = h.size.div_ceil(PAGE);
        if pages > 0 {
            for s in 0..=split(pages - 1).0 {
                let seg = self.segment(id, s)?;
                freed.extend(
                    seg.pages
                        .iter()
                        .filter(|r| !r.is_hole())
                        .map(|r| (r.blob, r.page)),
                );
                if !seg.pages.is_empty() {
                    batch.delete(&meta::seg_key(id, s));
                }
            }
        }
        batch.delete(&meta::chunk_key(id));
        let r = self.commit(batch, &[], freed, durable);
        match &r {
            Ok(()) => {
                let mut m = self.meta.write();
                m.heads.remove(&id);
                m.cache.forget(id, 0..=split(pages.saturating_sub(1)).0);
            }
            Err(_) => self.invalidate(id),
        }
        r
    }

    fn stat(&mut self, id: ChunkId) -> Result<ChunkStat> {
        let h = self.header(id)?;
        let mut pages = 0;
        let n = h.size.div_ceil(PAGE);
        if n > 0 {
            for s in 0..=split(n - 1).0 {
                pages += self
                    .segment(id, s)?
                    .pages
                    .iter()
                    .filter(|r| !r.is_hole())
                    .count() as u64;
            }
        }
        Ok(ChunkStat {
            id,
            size: h.size,
            hint: h.hint,
            pages,
        })
    }

    /// Empty the sparse own blobs (not the newest: allocation fills it) and delete them.
    fn compact(&mut self) -> Result<CompactStats> {
        let mut st = CompactStats::default();
        self.sync_now()?;
        let newest = self.own.keys().copied().max();
        let victims: Vec<u32> = self
            .alloc
            .blobs()
            .filter(|(no, b)| {
                Some(*no) != newest
                    && (b.live() as f64) < self.sh.opts.compact_below * b.pages() as f64
            })
            .map(|(no, _)| no)
            .collect();
        if victims.is_empty() {
            return Ok(st);
        }
        // Who references each victim: one pass over the segment metadata.
        let mut refs: HashMap<u32, BTreeMap<(ChunkId, u32), ()>> = HashMap::new();
        let mut foreign: Vec<u32> = Vec::new();
        for item in self
            .sh
            .db
            .iter_prefix(&[META_SEG_PREFIX.as_slice()].concat())?
        {
            let (k, v) = item?;
            let Some(meta::Key::Seg(id, s)) = meta::parse_key(&k) else {
                continue;
            };
            let Ok(seg) = Segment::decode(&v) else {
                continue;
            };
            for r in seg.pages.iter().filter(|r| victims.contains(&r.blob)) {
                if id as usize % self.n != self.id {
                    foreign.push(r.blob);
                }
                refs.entry(r.blob).or_default().insert((id, s), ());
            }
        }
        for &v in &victims {
            if foreign.contains(&v) {
                continue;
            }
            for &(id, s) in refs.get(&v).map(|m| m.keys()).into_iter().flatten() {
                let mut seg = self.segment(id, s)?;
                let base = u64::from(s) * SEG_PAGES as u64;
                let idx: Vec<usize> = (0..seg.pages.len())
                    .filter(|&i| seg.pages[i].blob == v)
                    .collect();
                if idx.is_empty() {
                    continue;
                }
                let olds: Vec<(u64, PageRef)> = idx
                    .iter()
                    .map(|&i| (base + i as u64, seg.pages[i]))
                    .collect();
                let mut buf = AlignedBuf::zeroed(olds.len() * PAGE as usize);
                self.read_pages(id, &olds, &mut buf)?;
                let at = self.take_pages_avoiding(olds.len(), &victims)?;
                if let Err(e) = self.write_pages(&at, &buf) {
                    self.give_back(&at);
                    return Err(e);
                }
                for (k, &i) in idx.iter().enumerate() {
                    seg.pages[i] = PageRef {
                        blob: at[k].0,
                        page: at[k].1,
                        crc: olds[k].1.crc,
                    };
                }
                let mut b = WriteBatch::new();
                b.put(&meta::seg_key(id, s), &seg.encode());
                // The victim's pages are not freed one by one: the whole blob goes below.
                if let Err(e) = self.commit(b, &at, Vec::new(), false) {
                    self.invalidate(id);
                    return Err(e);
                }
                self.meta.write().cache.put_segment(id, s, seg);
                st.moved_pages += at.len() as u64;
            }
            // The moves must be durable before the blob (and its old copies) is gone.
            self.sync_now()?;
            let Some(blob) = self.own.remove(&v) else {
                continue;
            };
            let clusters = blob.num_clusters();
            self.alloc.remove_blob(v);
            self.sh.blobs.rcu(|m| {
                let mut m = HashMap::clone(m);
                m.remove(&v);
                m
            });
            let store = self.store();
            let bid = blob.id();
            store.block_on(store.close(blob))?;
            store.block_on(store.delete(bid))?;
            st.blobs_freed += 1;
            st.clusters_freed += clusters;
        }
        Ok(st)
    }
}

/// Writes of at least this many pages have their crcs computed beside the device write.
const OVERLAP_PAGES: usize = 32;

/// The crcs of `n` pages of `buf` holding chunk `id`'s pages from `first` on.
fn page_crcs(id: ChunkId, first: u64, n: usize, buf: &[u8]) -> Vec<u32> {
    buf.chunks_exact(PAGE as usize)
        .take(n)
        .enumerate()
        .map(|(k, p)| meta::page_crc(id, first + k as u64, p))
        .collect()
}

/// Pages to checksum for a worker, by its helper thread.
struct CrcJob {
    buf: Arc<AlignedBuf>,
    id: ChunkId,
    first: u64,
    n: usize,
}

/// A worker's checksum helper: a thread of its own (no state shared with other workers).
struct CrcHelper {
    jobs: Sender<CrcJob>,
    done: Receiver<Vec<u32>>,
}

fn crc_helper(worker: usize) -> Option<CrcHelper> {
    let (jobs, job_rx) = crossbeam_channel::bounded::<CrcJob>(1);
    let (done_tx, done) = crossbeam_channel::bounded(1);
    std::thread::Builder::new()
        .name(format!("blobcask-chunk-{worker}-crc"))
        .spawn(move || {
            for j in job_rx {
                let crcs = page_crcs(j.id, j.first, j.n, &j.buf);
                // Let go of the buffer before answering: the worker takes it back whole.
                drop(j);
                if done_tx.send(crcs).is_err() {
                    return;
                }
            }
        })
        .ok()?;
    Some(CrcHelper { jobs, done })
}

/// Prefix of every segment key.
const META_SEG_PREFIX: [u8; 5] = [0xff, 0xff, b'c', b'k', b's'];

/// A chunk page number → (segment, index in it).
fn split(cp: u64) -> (u32, usize) {
    (
        (cp / SEG_PAGES as u64) as u32,
        (cp % SEG_PAGES as u64) as usize,
    )
}

/// `Full` from the blobstore is the chunk store's `OutOfSpace`.
fn space(e: crate::blobstore::Error) -> ChunkError {
    match crate::Error::from(e) {
        crate::Error::Full => ChunkError::OutOfSpace,
        e => ChunkError::Store(e),
    }
}
