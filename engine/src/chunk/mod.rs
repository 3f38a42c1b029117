//! The chunk engine: chunks (byte arrays of any size, written and read at any offset) on
//! blobs of the same blobstore as a [`Db`], which holds their metadata.
//!
//! - **Data** lives in *chunk blobs* (`bc.role = chunk`, `bc.chunk.no` = a store-unique u32),
//!   allocated at 4 KiB page granularity. Every chunk blob belongs to one worker thread
//!   (`no % workers`); the worker keeps a free-space bitmap of it in its own memory
//!   (`alloc.rs`) and is the only thread that allocates from it. A worker short of space grows
//!   its newest blob (or creates one) by whole clusters, in batches.
//! - **Metadata** lives in the KV under the reserved prefix [`META_PREFIX`] (`meta.rs`): a
//!   header per chunk and one key per 1 MiB segment holding each page's location and crc32c.
//! - **Requests** for a chunk go to worker `id % workers` over a channel, so the operations on
//!   one chunk are serialized and different chunks run in parallel, no lock shared between
//!   workers on the data path. A page that another worker owns is freed by a message to it.
//!   Small reads are served on the caller's thread from the worker's in-memory metadata
//!   (`cache.rs`), crc-verified, falling back to the worker on any doubt.
//! - **Atomic writes**: new data goes to free pages (copy on write; partly covered edge pages
//!   are read, merged and written whole), then every touched segment (and the header) is
//!   committed in one KV write batch; the old pages are freed only once that commit is
//!   durable (at once for a durable write, else at the worker's next sync). A crash therefore
//!   leaves the old or the new content of a write, never a mix, and never a reference to a
//!   page that was reused. Reads verify each page's crc32c ([`ChunkError::Corruption`]).
//! - **Restore** (`recover.rs`): the bitmaps are rebuilt from the committed segment values at
//!   open; no bitmap is ever written.
//!
//! One chunk store per [`Db`] at a time. Close the [`ChunkStore`] before the [`Db`]: it holds
//! its blobs open, so `Db::close` refuses (`Busy`, nothing done) while it is open.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::thread::JoinHandle;
use std::time::Duration;

use parking_lot::{Condvar, Mutex, RwLock};

use crate::blobstore::BlobStore;
use crate::db::{Db, WriteBatch};
use crate::device::AlignedBuf;

// The bitmaps and the metadata codec: public only with `internals` (tests and fuzzers).
internal! {
    alloc;
    meta;
}
mod cache;
mod recover;
mod worker;

pub use meta::META_PREFIX;
pub use recover::{check, ChunkCheck};

/// A chunk's id: store-unique, never reused.
pub type ChunkId = u64;

/// Largest chunk size (1 TiB).
pub const MAX_CHUNK_SIZE: u64 = 1 << 40;

pub(crate) use crate::blobs::ROLE_CHUNK;
/// A chunk blob's number (u32 LE), referenced by segment entries.
pub(crate) const X_CHUNK_NO: &str = "bc.chunk.no";

/// Errors of the chunk store.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ChunkError {
    #[error("chunk {0} does not exist")]
    NotFound(ChunkId),
    #[error("no space left for chunk data")]
    OutOfSpace,
    /// Bytes or metadata on the device fail validation; nothing of them is returned.
    #[error("corruption in chunk {chunk} at offset {offset}: {detail}")]
    Corruption {
        chunk: ChunkId,
        offset: u64,
        detail: String,
    },
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    #[error("the chunk store is read-only")]
    ReadOnly,
    #[error("the chunk store is closed")]
    Closed,
    /// The KV store or the blobstore under it failed.
    #[error("store: {0}")]
    Store(#[from] crate::Error),
}

impl From<crate::blobstore::Error> for ChunkError {
    fn from(e: crate::blobstore::Error) -> Self {
        ChunkError::Store(e.into())
    }
}

pub type Result<T, E = ChunkError> = std::result::Result<T, E>;

/// Options of [`ChunkStore::open`].
#[derive(Debug, Clone)]
pub struct ChunkOptions {
    /// Worker threads, each with its own blobs and bitmaps (default 2).
    pub workers: usize,
    /// Whether `write`, `truncate`, `remove` and `create` are durable when they return
    /// (default true). Otherwise they are durable at the next [`ChunkStore::sync`].
    pub durable: bool,
    /// Clusters a worker adds when it first runs short (default 4); each further growth
    /// doubles that, up to `max_blob_clusters` and half the free clusters.
    pub grow_clusters: u64,
    /// Largest chunk blob, in clusters (default 64); a worker then starts another blob.
    pub max_blob_clusters: u64,
    /// Clusters left free for the KV store beyond its own reserve (default 4).
    pub reserve_clusters: u64,
    /// [`ChunkStore::compact`] empties blobs whose live share of pages is below this
    /// (default 0.25).
    pub compact_below: f64,
    /// Run a compaction pass in each worker when it has been idle this long (default none).
    pub compact_every: Option<Duration>,
    /// Frees a non-durable worker keeps waiting for a sync before it syncs by itself
    /// (default 16384 pages).
    pub max_pending_frees: usize,
    /// Bytes of segment metadata the workers keep in memory, split evenly between them
    /// (default 64 MiB: the maps of about 20 GiB of chunk data; 0 = none). Chunk headers
    /// (about 40 bytes each) stay in memory besides, for every chunk a worker has seen.
    pub meta_cache_bytes: u64,
}

impl Default for ChunkOptions {
    fn default() -> Self {
        ChunkOptions {
            workers: 2,
            durable: true,
            grow_clusters: 4,
            max_blob_clusters: 64,
            reserve_clusters: 4,
            compact_below: 0.25,
            compact_every: None,
            max_pending_frees: 16384,
            meta_cache_bytes: 64 << 20,
        }
    }
}

/// What [`ChunkStore::stat`] says about a chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkStat {
    pub id: ChunkId,
    /// Size in bytes.
    pub size: u64,
    /// The size hint given at creation.
    pub hint: u64,
    /// 4 KiB pages that hold data (holes read as zeroes and take none).
    pub pages: u64,
}

/// What a compaction pass did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CompactStats {
    /// Live pages copied out of sparse blobs.
    pub moved_pages: u64,
    /// Blobs deleted.
    pub blobs_freed: u64,
    /// Clusters those blobs gave back to the blobstore.
    pub clusters_freed: u64,
}

/// What the workers did since open (a sum over them; for benchmarks and tests).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ChunkCounters {
    /// Data page writes submitted (one submission per write or move).
    pub data_writes: u64,
    /// Data page reads submitted (edge pages of writes included).
    pub data_reads: u64,
    /// Metadata values read from the KV (cache misses that went to the KV).
    pub meta_reads: u64,
    /// KV batches committed.
    pub commits: u64,
    /// Of those, batches of more than one key (a cross-shard batch when the keys hash to
    /// different KV shards: two rounds, a flush in each).
    pub multi_key_commits: u64,
    /// `Db::sync` calls by the workers (durable writes under `SyncPolicy::Never`, syncs).
    pub syncs: u64,
    /// Blob growths (resize + metadata sync) and new blobs.
    pub grows: u64,
    pub cache_hits: u64,
    pub cache_misses: u64,
}

impl std::ops::Add for ChunkCounters {
    type Output = Self;
    fn add(self, o: Self) -> Self {
        ChunkCounters {
            data_writes: self.data_writes + o.data_writes,
            data_reads: self.data_reads + o.data_reads,
            meta_reads: self.meta_reads + o.meta_reads,
            commits: self.commits + o.commits,
            multi_key_commits: self.multi_key_commits + o.multi_key_commits,
            syncs: self.syncs + o.syncs,
            grows: self.grows + o.grows,
            cache_hits: self.cache_hits + o.cache_hits,
            cache_misses: self.cache_misses + o.cache_misses,
        }
    }
}

/// A write's bytes, placed by the caller at `lead` (the offset's place in its first page) of
/// a page-aligned buffer spanning every page the write touches: the one copy of the data on
/// its way to the device. The worker fills the edges around it.
pub(crate) struct WriteBuf {
    pub buf: AlignedBuf,
    pub lead: usize,
    pub len: usize,
}

/// Space and counts of the chunk store.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SpaceStats {
    pub blobs: u64,
    pub pages: u64,
    pub free_pages: u64,
}

// ---- one-shot replies: blocking `wait` or a `Future` ----

enum SlotState<T> {
    Empty(Option<Waker>),
    Full(Result<T>),
    Taken,
}

struct Slot<T> {
    state: Mutex<SlotState<T>>,
    cv: Condvar,
}

/// The sending half of a reply (held by a worker).
pub(crate) struct Tx<T>(Option<Arc<Slot<T>>>);

impl<T> Tx<T> {
    pub(crate) fn send(mut self, v: Result<T>) {
        if let Some(s) = self.0.take() {
            fill(&s, v);
        }
    }
}

fn fill<T>(s: &Slot<T>, v: Result<T>) {
    let mut st = s.state.lock();
    if let SlotState::Empty(Some(w)) = std::mem::replace(&mut *st, SlotState::Full(v)) {
        w.wake();
    }
    s.cv.notify_all();
}

impl<T> Drop for Tx<T> {
    fn drop(&mut self) {
        // A worker that stopped without answering: the caller gets `Closed`, never a hang.
        if let Some(s) = self.0.take() {
            fill(&s, Err(ChunkError::Closed));
        }
    }
}

/// The result of a request to a worker: `wait()` blocks, `.await` does not.
pub struct Reply<T>(Arc<Slot<T>>);

impl<T> Reply<T> {
    /// Block until the worker answers.
    pub fn wait(self) -> Result<T> {
        let mut st = self.0.state.lock();
        loop {
            match std::mem::replace(&mut *st, SlotState::Taken) {
                SlotState::Full(v) => return v,
                SlotState::Taken => return Err(ChunkError::Closed),
                e @ SlotState::Empty(_) => {
                    *st = e;
                    self.0.cv.wait(&mut st);
                }
            }
        }
    }

    fn ready(v: Result<T>) -> Self {
        Reply(Arc::new(Slot {
            state: Mutex::new(SlotState::Full(v)),
            cv: Condvar::new(),
        }))
    }
}

impl<T> Future for Reply<T> {
    type Output = Result<T>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<T>> {
        let mut st = self.0.state.lock();
        match std::mem::replace(&mut *st, SlotState::Taken) {
            SlotState::Full(v) => Poll::Ready(v),
            SlotState::Taken => Poll::Ready(Err(ChunkError::Closed)),
            SlotState::Empty(_) => {
                *st = SlotState::Empty(Some(cx.waker().clone()));
                Poll::Pending
            }
        }
    }
}

pub(crate) fn reply<T>() -> (Tx<T>, Reply<T>) {
    let s = Arc::new(Slot {
        state: Mutex::new(SlotState::Empty(None)),
        cv: Condvar::new(),
    });
    (Tx(Some(s.clone())), Reply(s))
}

// ---- the store ----

/// What every worker shares (read-mostly; nothing here is locked on the data path).
pub(crate) struct Shared<S: BlobStore> {
    pub db: Db<S>,
    pub opts: ChunkOptions,
    /// Every chunk blob by number: a worker reads pages of blobs another worker owns (after a
    /// change of the worker count) through it. Replaced whole when a blob comes or goes.
    pub blobs: arc_swap::ArcSwap<std::collections::HashMap<u32, S::Blob>>,
    /// Serializes id allocation with the write of the next-id key (creates only).
    pub next_id: Mutex<ChunkId>,
    pub read_only: bool,
}

impl<S: BlobStore> Shared<S> {
    pub fn workers(&self) -> usize {
        self.opts.workers
    }

    /// Make a new chunk: its header and the next-id counter in one batch.
    pub fn create(&self, hint: u64, durable: bool) -> Result<ChunkId> {
        if self.read_only {
            return Err(ChunkError::ReadOnly);
        }
        let mut next = self.next_id.lock();
        let id = *next;
        let mut b = WriteBatch::new();
        b.put(
            &meta::chunk_key(id),
            &meta::ChunkHeader { size: 0, hint }.encode(),
        );
        b.put(&meta::next_key(), &(id + 1).to_le_bytes());
        self.db.write_batch_system(b)?;
        *next = id + 1;
        drop(next);
        if durable && !self.db.syncs_every_write() {
            self.db.sync()?;
        }
        Ok(id)
    }
}

pub(crate) enum Msg {
    Write {
        id: ChunkId,
        off: u64,
        data: WriteBuf,
        durable: bool,
        reply: Tx<()>,
    },
    /// A write whose buffer goes back to the caller.
    WriteOwned {
        id: ChunkId,
        off: u64,
        data: WriteBuf,
        durable: bool,
        reply: Tx<AlignedBuf>,
    },
    Read {
        id: ChunkId,
        off: u64,
        len: u64,
        reply: Tx<Vec<u8>>,
    },
    Truncate {
        id: ChunkId,
        size: u64,
        durable: bool,
        reply: Tx<()>,
    },
    Remove {
        id: ChunkId,
        durable: bool,
        reply: Tx<()>,
    },
    Stat {
        id: ChunkId,
        reply: Tx<ChunkStat>,
    },
    /// Pages of blobs this worker owns, freed by another worker (its commit is durable).
    Free(Vec<(u32, u32)>),
    /// A chunk just created (its header is committed): the worker need not read it back.
    Created(ChunkId, meta::ChunkHeader),
    Sync {
        reply: Tx<()>,
    },
    Compact {
        reply: Tx<CompactStats>,
    },
    Space {
        reply: Tx<SpaceStats>,
    },
    Counters {
        reply: Tx<ChunkCounters>,
    },
    Stop {
        reply: Tx<()>,
    },
}

struct StoreInner<S: BlobStore> {
    shared: Arc<Shared<S>>,
    senders: Vec<crossbeam_channel::Sender<Msg>>,
    /// Per worker: write buffers it is done with, for the next caller (no lock: a
    /// bounded lock-free channel).
    pools: Vec<crossbeam_channel::Receiver<AlignedBuf>>,
    /// Per worker: its metadata, which `read` consults to serve a read on the caller's
    /// thread (a lock per worker, shared with that worker's readers only).
    metas: Vec<Arc<RwLock<cache::Meta>>>,
    threads: Mutex<Vec<JoinHandle<()>>>,
    closed: AtomicBool,
}

/// Chunks on the blobstore of a [`Db`]. Cheap to clone; every clone is the same store.
pub struct ChunkStore<
    S: BlobStore = crate::blobstore::native::NativeBlobStore<crate::device::AnyDevice>,
> {
    inner: Arc<StoreInner<S>>,
}

impl<S: BlobStore> Clone for ChunkStore<S> {
    fn clone(&self) -> Self {
        ChunkStore {
            inner: self.inner.clone(),
        }
    }
}

impl<S: BlobStore> std::fmt::Debug for ChunkStore<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChunkStore")
            .field("workers", &self.inner.senders.len())
            .finish()
    }
}

impl<S: BlobStore> ChunkStore<S> {
    /// Open the chunk store of `db`: find its blobs, rebuild every worker's bitmaps from the
    /// committed metadata (time proportional to the metadata) and start the workers. A store
    /// whose metadata references a page twice or past its blob is refused (`Corruption`;
    /// [`check`] lists every such reference).
    pub fn open(db: &Db<S>, opts: ChunkOptions) -> Result<ChunkStore<S>> {
        if opts.workers == 0 || opts.workers > 256 {
            return Err(ChunkError::InvalidArgument(format!(
                "workers = {} (must be 1..=256)",
                opts.workers
            )));
        }
        if opts.grow_clusters == 0 || opts.max_blob_clusters < opts.grow_clusters {
            return Err(ChunkError::InvalidArgument(
                "grow_clusters must be 1..=max_blob_clusters".into(),
            ));
        }
        if !db.claim_chunks() {
            return Err(ChunkError::InvalidArgument(
                "a chunk store is already open on this store (or a checkpoint is being made)"
                    .into(),
            ));
        }
        let rest = match recover::restore(db, opts.workers) {
            Ok(r) => r,
            Err(e) => {
                db.release_chunks();
                return Err(e);
            }
        };
        if let Some(p) = rest.problems.first() {
            let detail = format!(
                "{p}{}",
                if rest.problems.len() > 1 {
                    format!(
                        " (and {} more; run `blobcask check`)",
                        rest.problems.len() - 1
                    )
                } else {
                    String::new()
                }
            );
            recover::close_blobs(db.blobstore(), rest.blobs.values());
            db.release_chunks();
            return Err(ChunkError::Corruption {
                chunk: 0,
                offset: 0,
                detail,
            });
        }
        if !rest.orphans.is_empty() && !db.is_read_only() {
            let mut b = WriteBatch::new();
            for &(id, s) in &rest.orphans {
                b.delete(&meta::seg_key(id, s));
            }
            let done = db.write_batch_system(b).and_then(|()| db.sync());
            if let Err(e) = done {
                recover::close_blobs(db.blobstore(), rest.blobs.values());
                db.release_chunks();
                return Err(e.into());
            }
        }
        let shared = Arc::new(Shared {
            db: db.clone(),
            opts: opts.clone(),
            blobs: arc_swap::ArcSwap::from_pointee(rest.blobs),
            next_id: Mutex::new(rest.next_id),
            read_only: db.is_read_only(),
        });
        let mut senders = Vec::new();
        let mut rxs = Vec::new();
        let mut pools = Vec::new();
        let mut metas = Vec::new();
        let mut starts: Vec<worker::Start> = Vec::new();
        let budget = opts.meta_cache_bytes / opts.workers as u64;
        for alloc in rest.allocs {
            let meta = Arc::new(RwLock::new(cache::Meta::new(budget)));
            metas.push(meta.clone());
            let (tx, rx) = crossbeam_channel::unbounded();
            senders.push(tx);
            rxs.push(rx);
            let (ptx, prx) = crossbeam_channel::bounded(4);
            pools.push(prx);
            starts.push(worker::Start {
                alloc,
                meta,
                warm: Vec::new(),
                pool: ptx,
            });
        }
        let n = opts.workers as u64;
        for (id, h) in rest.headers {
            metas[(id % n) as usize].write().heads.insert(id, h);
        }
        // Warm each worker's cache with its chunks' segments, within its share of the budget
        // (the cache evicts past it).
        for (id, s, seg) in rest.segs {
            starts[(id % n) as usize].warm.push((id, s, seg));
        }
        let mut threads = Vec::new();
        let mut spawn_err = None;
        for ((w, rx), start) in rxs.into_iter().enumerate().zip(starts) {
            match worker::spawn(shared.clone(), w, rx, senders.clone(), start) {
                Ok(t) => threads.push(t),
                Err(e) => {
                    spawn_err = Some(e);
                    break;
                }
            }
        }
        let store = ChunkStore {
            inner: Arc::new(StoreInner {
                shared,
                senders,
                pools,
                metas,
                threads: Mutex::new(threads),
                closed: AtomicBool::new(false),
            }),
        };
        if let Some(e) = spawn_err {
            let _ = store.close();
            return Err(e);
        }
        Ok(store)
    }

    fn send(&self, id: ChunkId, msg: Msg) -> Result<()> {
        if self.inner.closed.load(Ordering::Acquire) {
            return Err(ChunkError::Closed);
        }
        let w = (id % self.inner.senders.len() as u64) as usize;
        self.inner.senders[w]
            .send(msg)
            .map_err(|_| ChunkError::Closed)
    }

    fn request<T>(&self, id: ChunkId, make: impl FnOnce(Tx<T>) -> Msg) -> Reply<T> {
        let (tx, rx) = reply();
        match self.send(id, make(tx)) {
            Ok(()) => rx,
            Err(e) => Reply::ready(Err(e)),
        }
    }

    /// The write's bytes in a page-aligned buffer (a pooled one when it fits).
    fn place(&self, id: ChunkId, off: u64, data: &[u8]) -> WriteBuf {
        let lead = (off % meta::PAGE) as usize;
        let span = (lead + data.len()).div_ceil(meta::PAGE as usize) * meta::PAGE as usize;
        let w = (id % self.inner.pools.len().max(1) as u64) as usize;
        let mut buf = match self.inner.pools.get(w).and_then(|p| p.try_recv().ok()) {
            Some(b) if b.len() >= span => b,
            _ => AlignedBuf::zeroed(span),
        };
        buf[lead..lead + data.len()].copy_from_slice(data);
        WriteBuf {
            buf,
            lead,
            len: data.len(),
        }
    }

    fn durable(&self) -> bool {
        self.inner.shared.opts.durable
    }

    /// Create an empty chunk; `hint_size` is the size it is expected to reach (recorded, and
    /// shown by `stat`).
    pub fn create(&self, hint_size: u64) -> Result<ChunkId> {
        if self.inner.closed.load(Ordering::Acquire) {
            return Err(ChunkError::Closed);
        }
        let id = self.inner.shared.create(hint_size, self.durable())?;
        self.created(id, hint_size);
        Ok(id)
    }

    /// Tell the new chunk's worker its header (before any request for the chunk, which
    /// comes later on the same channel).
    fn created(&self, id: ChunkId, hint: u64) {
        let _ = self.send(id, Msg::Created(id, meta::ChunkHeader { size: 0, hint }));
    }

    /// [`ChunkStore::create`] without blocking the caller (runs on a worker).
    pub fn create_async(&self, hint_size: u64) -> Reply<ChunkId> {
        let (tx, rx) = reply();
        let store = self.clone();
        if self.inner.closed.load(Ordering::Acquire) {
            return Reply::ready(Err(ChunkError::Closed));
        }
        match std::thread::Builder::new()
            .name("blobcask-chunk-create".into())
            .spawn(move || tx.send(store.create(hint_size)))
        {
            Ok(_) => rx,
            Err(e) => Reply::ready(Err(ChunkError::Store(e.into()))),
        }
    }

    /// Write `data` at `offset` (the chunk grows as needed; a gap reads as zeroes). Atomic:
    /// after a crash the chunk holds all of it or none of it.
    pub fn write(&self, id: ChunkId, offset: u64, data: &[u8]) -> Result<()> {
        self.write_with(id, offset, data, self.durable())
    }

    /// [`ChunkStore::write`] with durability chosen for this call.
    pub fn write_with(&self, id: ChunkId, offset: u64, data: &[u8], durable: bool) -> Result<()> {
        let data = self.place(id, offset, data);
        self.request(id, |reply| Msg::Write {
            id,
            off: offset,
            data,
            durable,
            reply,
        })
        .wait()
    }

    pub fn write_async(&self, id: ChunkId, offset: u64, data: Vec<u8>) -> Reply<()> {
        let durable = self.durable();
        let data = self.place(id, offset, &data);
        self.request(id, |reply| Msg::Write {
            id,
            off: offset,
            data,
            durable,
            reply,
        })
    }

    /// Write `buf` at `offset` without copying it: the buffer itself goes to the device and
    /// comes back in the reply for reuse. `offset` and `buf.len()` must be multiples of
    /// 4 KiB (`InvalidArgument` otherwise). Durability as [`ChunkStore::write`].
    pub fn write_owned(&self, id: ChunkId, offset: u64, buf: AlignedBuf) -> Reply<AlignedBuf> {
        if !offset.is_multiple_of(meta::PAGE) || !(buf.len() as u64).is_multiple_of(meta::PAGE) {
            return Reply::ready(Err(ChunkError::InvalidArgument(format!(
                "write_owned of {} bytes at {offset}: both must be multiples of 4096",
                buf.len()
            ))));
        }
        let durable = self.durable();
        let len = buf.len();
        self.request(id, |reply| Msg::WriteOwned {
            id,
            off: offset,
            data: WriteBuf { buf, lead: 0, len },
            durable,
            reply,
        })
    }

    /// Read `len` bytes at `offset`; a read reaching past the end is cut at the chunk's size.
    pub fn read(&self, id: ChunkId, offset: u64, len: u64) -> Result<Vec<u8>> {
        if let Some(v) = self.read_here(id, offset, len) {
            return Ok(v);
        }
        self.read_async(id, offset, len).wait()
    }

    /// A small read served on the caller's thread, without the round trip through the
    /// worker: the page map comes from the worker's metadata (read-locked for the lookup
    /// only), the pages from the device, and every page must pass its crc. Anything else —
    /// metadata not in memory, a read across segments or of more than 16 pages, an I/O
    /// error, a page that fails its crc (a concurrent write may have reused it) — returns
    /// `None` and the worker serves the read, which is authoritative. A read that passes
    /// returns exactly the bytes the map named at the lookup: a write not yet answered is
    /// either wholly visible or not at all (its worker updates the map after the commit,
    /// before it answers).
    fn read_here(&self, id: ChunkId, off: u64, len: u64) -> Option<Vec<u8>> {
        use crate::blobstore::{Blob as _, BlobIo, IoChannel as _};
        const MAX_PAGES: u64 = 16;
        let sh = &self.inner.shared;
        let store = sh.db.blobstore();
        if self.inner.closed.load(Ordering::Acquire) || !store.drives_itself() {
            return None;
        }
        let n = self.inner.metas.len() as u64;
        let meta = self.inner.metas.get((id % n.max(1)) as usize)?;
        let (end, first, refs) = {
            let m = meta.read();
            let h = m.heads.get(&id)?;
            let end = off.saturating_add(len).min(h.size);
            if off >= end {
                return Some(Vec::new());
            }
            let (first, last) = (off / meta::PAGE, (end - 1) / meta::PAGE);
            let seg = first / meta::SEG_PAGES as u64;
            if last / meta::SEG_PAGES as u64 != seg || last - first >= MAX_PAGES {
                return None;
            }
            let g = m.cache.peek(id, seg as u32)?;
            let refs: Vec<meta::PageRef> = (first..=last)
                .map(|cp| g.get((cp % meta::SEG_PAGES as u64) as usize))
                .collect();
            (end, first, refs)
        };
        let ipp = meta::PAGE / u64::from(store.io_unit_size());
        let blobs = sh.blobs.load();
        let mut buf = AlignedBuf::zeroed(refs.len() * meta::PAGE as usize);
        let mut reqs = Vec::new();
        for (page, r) in buf.chunks_exact_mut(meta::PAGE as usize).zip(&refs) {
            if r.is_hole() {
                continue;
            }
            let b = blobs.get(&r.blob)?;
            if u64::from(r.page + 1) * ipp > b.num_io_units() {
                return None;
            }
            reqs.push(BlobIo::Read {
                blob: b,
                offset: u64::from(r.page) * ipp,
                buf: page,
            });
        }
        if !reqs.is_empty() {
            let ch = store.channel().ok()?;
            store.block_on(ch.submit(&mut reqs)).ok()?;
        }
        drop(reqs);
        for (k, (page, r)) in buf.chunks_exact(meta::PAGE as usize).zip(&refs).enumerate() {
            if !r.is_hole() && meta::page_crc(id, first + k as u64, page) != r.crc {
                return None;
            }
        }
        let start = (off - first * meta::PAGE) as usize;
        Some(buf[start..start + (end - off) as usize].to_vec())
    }

    pub fn read_async(&self, id: ChunkId, offset: u64, len: u64) -> Reply<Vec<u8>> {
        self.request(id, |reply| Msg::Read {
            id,
            off: offset,
            len,
            reply,
        })
    }

    /// Set the chunk's size: a shrink frees the pages past it (and zeroes the tail of the
    /// last page), a growth adds a hole.
    pub fn truncate(&self, id: ChunkId, size: u64) -> Result<()> {
        self.truncate_async(id, size).wait()
    }

    pub fn truncate_async(&self, id: ChunkId, size: u64) -> Reply<()> {
        let durable = self.durable();
        self.request(id, |reply| Msg::Truncate {
            id,
            size,
            durable,
            reply,
        })
    }

    /// Delete the chunk and free its pages.
    pub fn remove(&self, id: ChunkId) -> Result<()> {
        self.remove_async(id).wait()
    }

    pub fn remove_async(&self, id: ChunkId) -> Reply<()> {
        let durable = self.durable();
        self.request(id, |reply| Msg::Remove { id, durable, reply })
    }

    pub fn stat(&self, id: ChunkId) -> Result<ChunkStat> {
        self.request(id, |reply| Msg::Stat { id, reply }).wait()
    }

    /// Every chunk id, ascending (a scan of the KV's chunk headers).
    pub fn list(&self) -> Result<Vec<ChunkId>> {
        if self.inner.closed.load(Ordering::Acquire) {
            return Err(ChunkError::Closed);
        }
        recover::list(&self.inner.shared.db)
    }

    /// Iterate over every chunk's [`ChunkStat`], ascending by id.
    pub fn iter(&self) -> Result<impl Iterator<Item = Result<ChunkStat>> + '_> {
        Ok(self.list()?.into_iter().map(|id| self.stat(id)))
    }

    /// Make every earlier write durable (and let each worker reuse the pages they freed).
    pub fn sync(&self) -> Result<()> {
        self.all(|reply| Msg::Sync { reply }).map(|_| ())
    }

    /// One compaction pass in every worker: blobs whose live pages are below
    /// [`ChunkOptions::compact_below`] are emptied (their pages moved, committed, synced) and
    /// deleted, giving their clusters back.
    pub fn compact(&self) -> Result<CompactStats> {
        let all = self.all(|reply| Msg::Compact { reply })?;
        Ok(all
            .into_iter()
            .fold(CompactStats::default(), |a, s| CompactStats {
                moved_pages: a.moved_pages + s.moved_pages,
                blobs_freed: a.blobs_freed + s.blobs_freed,
                clusters_freed: a.clusters_freed + s.clusters_freed,
            }))
    }

    /// Blobs and pages over every worker.
    pub fn space(&self) -> Result<SpaceStats> {
        let all = self.all(|reply| Msg::Space { reply })?;
        Ok(all
            .into_iter()
            .fold(SpaceStats::default(), |a, s| SpaceStats {
                blobs: a.blobs + s.blobs,
                pages: a.pages + s.pages,
                free_pages: a.free_pages + s.free_pages,
            }))
    }

    /// What the workers did since open, summed.
    pub fn counters(&self) -> Result<ChunkCounters> {
        let all = self.all(|reply| Msg::Counters { reply })?;
        Ok(all.into_iter().fold(ChunkCounters::default(), |a, c| a + c))
    }

    fn all<T>(&self, make: impl Fn(Tx<T>) -> Msg) -> Result<Vec<T>> {
        let waits: Vec<Reply<T>> = (0..self.inner.senders.len() as u64)
            .map(|w| self.request(w, &make))
            .collect();
        waits.into_iter().map(Reply::wait).collect()
    }

    /// Stop the workers (each syncs first unless read-only) and close the chunk blobs. The
    /// [`Db`] stays open.
    pub fn close(&self) -> Result<()> {
        if self.inner.closed.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        let mut first: Option<ChunkError> = None;
        let waits: Vec<Reply<()>> = self
            .inner
            .senders
            .iter()
            .map(|s| {
                let (tx, rx) = reply();
                match s.send(Msg::Stop { reply: tx }) {
                    Ok(()) => rx,
                    Err(_) => Reply::ready(Ok(())),
                }
            })
            .collect();
        for w in waits {
            if let Err(e) = w.wait() {
                first.get_or_insert(e);
            }
        }
        for t in self.inner.threads.lock().drain(..) {
            let _ = t.join();
        }
        let blobs = self.inner.shared.blobs.swap(Arc::default());
        recover::close_blobs(self.inner.shared.db.blobstore(), blobs.values());
        self.inner.shared.db.release_chunks();
        first.map_or(Ok(()), Err)
    }
}

impl<S: BlobStore> Drop for StoreInner<S> {
    fn drop(&mut self) {
        if !self.closed.load(Ordering::Acquire) {
            let s = ChunkStore {
                inner: Arc::new(StoreInner {
                    shared: self.shared.clone(),
                    senders: std::mem::take(&mut self.senders),
                    pools: std::mem::take(&mut self.pools),
                    metas: std::mem::take(&mut self.metas),
                    threads: Mutex::new(std::mem::take(&mut *self.threads.lock())),
                    closed: AtomicBool::new(false),
                }),
            };
            self.closed.store(true, Ordering::Release);
            if let Err(e) = s.close() {
                log::error!("blobcask: closing the chunk store on drop failed: {e}");
            }
        }
    }
}
