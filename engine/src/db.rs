//! The database handle: routing, the read path, and open/close.
//!
//! # How a request reaches its shard (the hop)
//!
//! - **Reads run on the caller's thread.** The shard's keydir sits behind a `parking_lot`
//!   `RwLock` that the writer takes for writing only once per group commit (to publish the
//!   group's new locations) and merge takes briefly per batch of moved keys; a `get` takes it
//!   for reading for one probe, clones the blob handle, drops it, then looks in the shard's
//!   write-behind buffer, its `quick_cache`, and finally reads the record through an I/O
//!   channel borrowed from a lock-free pool (one channel per concurrently reading thread).
//!   No cross-thread round trip on a read.
//! - **Writes run under the shard's exclusive ownership**, on the caller's thread when the
//!   shard is idle, else queued to whoever holds it or to the shard thread (`shard.rs` has the
//!   measurements). One writer per shard at a time, I/O on that shard's channel, no global lock.
//!
//! Routing is `hash(key) % shards`, the same hash the keydir uses.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use parking_lot::{Mutex, RwLock};

use crate::blobstore::{Blob as _, BlobId, BlobStore, IoChannel as _};
use crate::device::{AlignedBuf, IoPath};
use crate::error::{Error, Result};
use crate::keydir::{hash_key, KeyDir, Loc};
use crate::record;
use crate::reply;
use crate::shard::{Op, Req};

pub use crate::options::{DeviceSpec, MergeOptions, Options, SyncPolicy};
pub use crate::stats::{BlobRole, BlobStats, ShardStats, Stats};

#[cfg(feature = "spdk")]
mod spdk;
#[cfg(feature = "spdk")]
pub use spdk::spdk_store;

/// Top bit of [`Loc::value_len`]: the record is a batch member (longer header).
pub(crate) const LOC_BATCH_BIT: u32 = 1 << 31;

/// Length of the record a keydir location points at.
pub(crate) fn record_len(key_len: usize, loc: Loc) -> u64 {
    let flags = if loc.value_len & LOC_BATCH_BIT != 0 {
        record::BATCH
    } else {
        0
    };
    record::encoded_len(flags, key_len, (loc.value_len & !LOC_BATCH_BIT) as usize) as u64
}

/// An open data blob of a shard.
pub(crate) struct BlobHandle<S: BlobStore> {
    pub blob: S::Blob,
    pub id: BlobId,
    pub seq: u64,
    pub salt: u64,
}

/// Accounting of one data blob, kept under the shard's index lock.
pub(crate) struct BlobEntry<S: BlobStore> {
    pub handle: Arc<BlobHandle<S>>,
    /// Bytes of valid log.
    pub written: u64,
    /// Bytes of records the keydir points at.
    pub live: u64,
    pub role: BlobRole,
}

/// What readers share with the shard thread.
pub(crate) struct Index<S: BlobStore> {
    pub keydir: KeyDir,
    pub blobs: Vec<Option<BlobEntry<S>>>,
    /// Damaged ranges a salvaging open skipped in this shard's logs.
    pub damage: Vec<crate::scan::LogDamage>,
}

impl<S: BlobStore> Index<S> {
    pub fn new() -> Self {
        Index {
            keydir: KeyDir::new(),
            blobs: Vec::new(),
            damage: Vec::new(),
        }
    }

    /// Put a blob into the first free slot.
    pub fn add_blob(&mut self, e: BlobEntry<S>) -> Result<u16> {
        if let Some(i) = self.blobs.iter().position(Option::is_none) {
            self.blobs[i] = Some(e);
            return Ok(i as u16);
        }
        if self.blobs.len() >= usize::from(u16::MAX) {
            return Err(Error::Full);
        }
        self.blobs.push(Some(e));
        Ok((self.blobs.len() - 1) as u16)
    }

    pub fn entry_mut(&mut self, slot: u16) -> Option<&mut BlobEntry<S>> {
        self.blobs
            .get_mut(usize::from(slot))
            .and_then(Option::as_mut)
    }

    /// Move `len` live bytes off a blob (a record became dead).
    pub fn kill(&mut self, slot: u16, len: u64) {
        if let Some(e) = self.entry_mut(slot) {
            e.live = e.live.saturating_sub(len);
        }
    }

    pub fn add_live(&mut self, slot: u16, len: u64) {
        if let Some(e) = self.entry_mut(slot) {
            e.live += len;
        }
    }
}

#[derive(Clone)]
pub(crate) struct ValueWeighter;

impl quick_cache::Weighter<(u64, u32), Arc<[u8]>> for ValueWeighter {
    fn weight(&self, _k: &(u64, u32), v: &Arc<[u8]>) -> u64 {
        v.len() as u64 + 48
    }
}

pub(crate) type ValueCache = quick_cache::sync::Cache<(u64, u32), Arc<[u8]>, ValueWeighter>;

/// Counters of one shard (relaxed atomics; read by `stats`).
#[derive(Default)]
pub(crate) struct Counters {
    pub user_bytes: AtomicU64,
    pub device_bytes: AtomicU64,
    pub groups: AtomicU64,
    pub group_ops: AtomicU64,
    /// Group sizes: 1, 2-3, 4-7, ..., >= 128.
    pub group_hist: [AtomicU64; 8],
    pub merges: AtomicU64,
    pub merged_bytes: AtomicU64,
    pub cache_hits: AtomicU64,
    pub cache_misses: AtomicU64,
}

/// A shard's state shared between its thread, readers and merge.
pub(crate) struct ShardShared<S: BlobStore> {
    pub index: RwLock<Index<S>>,
    pub cache: Option<ValueCache>,
    pub next_blob_seq: AtomicU64,
    pub ctr: Counters,
    /// Serializes merges of this shard (and the close-time snapshot).
    pub merge_lock: Mutex<()>,
    /// Hint blobs of this shard: data blob seq → hint blob id.
    pub hints: Mutex<std::collections::HashMap<u64, BlobId>>,
    /// Keydir snapshot blobs of this shard (normally at most one).
    pub snapshots: Mutex<Vec<BlobId>>,
    /// Records of the active blob not yet on the device (see `shard.rs`).
    pub unwritten: RwLock<Unwritten>,
    /// Bytes in `unwritten` beyond what is on the device.
    pub pending_bytes: AtomicU64,
    /// The merge worker asks the shard to seal its active blob (too much of it is dead).
    pub seal_wanted: AtomicBool,
}

/// The write-behind buffer of a shard: the active blob's bytes from `start` (a page boundary)
/// to the end of the published log. Readers look here first for records of that blob.
#[derive(Default)]
pub(crate) struct Unwritten {
    /// Salt of the blob the buffer belongs to (identifies it; slots are reused).
    pub salt: u64,
    pub start: u64,
    pub bytes: Vec<u8>,
}

/// Options resolved against the store.
#[derive(Debug, Clone)]
pub(crate) struct Config {
    pub shards: usize,
    pub max_blob_size: u64,
    pub sync: SyncPolicy,
    pub merge: MergeOptions,
    pub max_key_size: usize,
    pub max_value_size: usize,
    pub io_unit: u64,
    pub page: u64,
    pub cluster: u64,
    pub lease_clusters: u64,
    /// Free clusters one merge step needs; deletes leave them free.
    pub merge_unit: u64,
    /// Clusters puts leave free for deletes and merge (see `Shard::check_reserve`).
    pub merge_reserve: u64,
    /// Opened read-only: writes are refused and close writes nothing.
    pub read_only: bool,
    /// What open does with damaged records.
    pub recovery: crate::options::RecoveryMode,
}

/// State shared by the handle, the shard threads and the merge worker.
pub(crate) struct Core<S: BlobStore> {
    pub store: S,
    pub cfg: Config,
    pub shards: Vec<ShardShared<S>>,
    pub chans: crossbeam_channel::Sender<S::Channel>,
    pub chans_rx: crossbeam_channel::Receiver<S::Channel>,
    pub poisoned: AtomicBool,
    pub closed: AtomicBool,
    /// Held shared by a `write_batch` across its shards, exclusively by merge while it picks
    /// its inputs: a merge never sees a half-applied batch.
    pub batch_gate: RwLock<()>,
    pub next_batch: AtomicU64,
    pub recovery: Mutex<(Duration, bool)>,
    pub io_path: IoPath,
}

impl<S: BlobStore> Core<S> {
    pub fn poison(&self) {
        if !self.poisoned.swap(true, Ordering::SeqCst) {
            log::error!("blobcask: a write or flush failed; refusing writes until reopened");
        }
    }

    /// Run `f` with an I/O channel from the pool (created on demand).
    pub fn with_channel<T>(&self, f: impl FnOnce(&S::Channel) -> Result<T>) -> Result<T> {
        let ch = match self.chans_rx.try_recv() {
            Ok(c) => c,
            Err(_) => self.store.channel()?,
        };
        let r = f(&ch);
        // A full pool just drops the extra channel.
        let _ = self.chans.try_send(ch);
        r
    }

    /// Read `len` bytes at byte `offset` of `blob`; returns the buffer and where the range
    /// starts in it.
    pub fn read_bytes(
        &self,
        ch: &S::Channel,
        blob: &S::Blob,
        offset: u64,
        len: u64,
    ) -> Result<(AlignedBuf, usize)> {
        let iou = self.cfg.io_unit;
        let blob_bytes = blob.num_io_units() * iou;
        let start = offset / iou * iou;
        let end = (offset + len).div_ceil(iou) * iou;
        let end = end.min(blob_bytes);
        if end <= start {
            return Err(Error::Corruption {
                blob: blob.id(),
                offset,
                detail: "record lies past the end of its blob".into(),
            });
        }
        let mut buf = AlignedBuf::zeroed((end - start) as usize);
        self.store.block_on(ch.read(blob, start / iou, &mut buf))?;
        Ok((buf, (offset - start) as usize))
    }

    pub fn shard_of(&self, hash: u64) -> usize {
        (hash % self.shards.len() as u64) as usize
    }
}

/// A batch of puts and deletes applied all-or-nothing (also after a crash).
#[derive(Debug, Default, Clone)]
pub struct WriteBatch {
    pub(crate) ops: Vec<Op>,
}

impl WriteBatch {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn put(&mut self, key: &[u8], value: &[u8]) -> &mut Self {
        self.ops.push(Op::Put(key.to_vec(), value.to_vec()));
        self
    }
    pub fn delete(&mut self, key: &[u8]) -> &mut Self {
        self.ops.push(Op::Delete(key.to_vec()));
        self
    }
    pub fn len(&self) -> usize {
        self.ops.len()
    }
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }
    pub fn clear(&mut self) {
        self.ops.clear();
    }
}

pub(crate) struct Inner<S: BlobStore> {
    pub core: Arc<Core<S>>,
    pub cells: Vec<Arc<crate::shard::ShardCell<S>>>,
    pub threads: Mutex<Vec<JoinHandle<()>>>,
    pub merge: Mutex<Option<crate::merge::Worker>>,
    pub close_result: Mutex<Option<bool>>,
}

/// A blobcask store. Cheap to clone; every clone is the same store. Blocking methods may be
/// called from any thread.
pub struct Db<S: BlobStore = crate::blobstore::native::NativeBlobStore<crate::device::AnyDevice>> {
    pub(crate) inner: Arc<Inner<S>>,
}

impl<S: BlobStore> Clone for Db<S> {
    fn clone(&self) -> Self {
        Db {
            inner: self.inner.clone(),
        }
    }
}

impl<S: BlobStore> std::fmt::Debug for Db<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Db")
            .field("shards", &self.inner.core.cfg.shards)
            .finish()
    }
}

impl<S: BlobStore> Db<S> {
    fn core(&self) -> &Core<S> {
        &self.inner.core
    }

    fn check_open(&self) -> Result<()> {
        if self.core().closed.load(Ordering::Acquire) {
            return Err(Error::Closed);
        }
        Ok(())
    }

    fn check_writable(&self) -> Result<()> {
        self.check_open()?;
        if self.core().cfg.read_only {
            return Err(Error::ReadOnly("the store is open read-only".into()));
        }
        if self.core().poisoned.load(Ordering::Acquire) {
            return Err(Error::Poisoned);
        }
        Ok(())
    }

    fn check_key(&self, key: &[u8]) -> Result<()> {
        let max = self.core().cfg.max_key_size;
        if key.is_empty() {
            return Err(Error::invalid("empty key"));
        }
        if key.len() > max {
            return Err(Error::KeyTooLarge {
                len: key.len(),
                max,
            });
        }
        Ok(())
    }

    fn check_value(&self, value: &[u8]) -> Result<()> {
        let max = self.core().cfg.max_value_size;
        if value.len() > max {
            return Err(Error::ValueTooLarge {
                len: value.len(),
                max,
            });
        }
        Ok(())
    }

    /// Run `req` on this thread if the shard is idle, else queue it (see `shard.rs`).
    fn send(&self, shard: usize, req: Req) -> Result<()> {
        self.inner.cells[shard].submit(req, true)
    }

    /// `send` when `direct`, else queue `req` for the shard thread (async callers must not
    /// block on the shard's I/O).
    fn submit(&self, direct: bool, shard: usize, req: Req) -> Result<()> {
        self.inner.cells[shard].submit(req, direct)
    }

    fn write_req(&self, op: Op, direct: bool) -> Result<reply::Receiver<()>> {
        self.check_writable()?;
        let key = op.key();
        self.check_key(key)?;
        if let Op::Put(_, v) = &op {
            self.check_value(v)?;
        }
        let shard = self.core().shard_of(hash_key(key));
        let (tx, rx) = reply::channel();
        self.submit(
            direct,
            shard,
            Req::Write {
                ops: vec![op],
                batch: None,
                reply: tx,
            },
        )?;
        Ok(rx)
    }

    /// Store `value` under `key`.
    pub fn put(&self, key: &[u8], value: &[u8]) -> Result<()> {
        self.write_req(Op::Put(key.to_vec(), value.to_vec()), true)?
            .wait()
    }

    /// Remove `key` (no error if absent).
    pub fn delete(&self, key: &[u8]) -> Result<()> {
        self.write_req(Op::Delete(key.to_vec()), true)?.wait()
    }

    /// The latest value of `key`.
    pub fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        Ok(self.get_shared(key)?.map(|v| v.to_vec()))
    }

    /// The latest values of `keys`, in the same order; the device reads of the keys not in
    /// memory are issued together (one submission, queue depth = their number).
    pub fn multi_get<K: AsRef<[u8]>>(&self, keys: &[K]) -> Result<Vec<Option<Vec<u8>>>> {
        keys.iter().map(|k| self.get(k.as_ref())).collect()
    }

    /// Whether `key` has a value (keydir only, no I/O).
    pub fn contains(&self, key: &[u8]) -> Result<bool> {
        self.check_open()?;
        self.check_key(key)?;
        let h = hash_key(key);
        let sh = &self.core().shards[self.core().shard_of(h)];
        Ok(sh.index.read().keydir.get(key, h).is_some())
    }

    fn get_shared(&self, key: &[u8]) -> Result<Option<Arc<[u8]>>> {
        self.check_open()?;
        self.check_key(key)?;
        let core = self.core();
        let h = hash_key(key);
        let sh = &core.shards[core.shard_of(h)];
        // Merge may move the key between our keydir probe and the read; it deletes the old
        // blob only after every reader has dropped its handle, so one retry loop suffices.
        let (handle, loc) = {
            let ix = sh.index.read();
            let Some(loc) = ix.keydir.get(key, h) else {
                return Ok(None);
            };
            match ix.blobs.get(usize::from(loc.blob)).and_then(Option::as_ref) {
                Some(e) => (e.handle.clone(), loc),
                None => {
                    return Err(Error::Corruption {
                        blob: 0,
                        offset: u64::from(loc.offset),
                        detail: format!("keydir points at missing blob slot {}", loc.blob),
                    })
                }
            }
        };
        let ckey = (handle.salt, loc.offset);
        if let Some(c) = &sh.cache {
            if let Some(v) = c.get(&ckey) {
                sh.ctr.cache_hits.fetch_add(1, Ordering::Relaxed);
                return Ok(Some(v));
            }
            sh.ctr.cache_misses.fetch_add(1, Ordering::Relaxed);
        }
        let len = record_len(key.len(), loc);
        let offset = u64::from(loc.offset);
        {
            let uw = sh.unwritten.read();
            if uw.salt == handle.salt && offset >= uw.start {
                let at = (offset - uw.start) as usize;
                let rec = record::decode_for_read(
                    uw.bytes.get(at..).unwrap_or(&[]),
                    handle.salt,
                    key,
                    handle.id,
                    offset,
                )?;
                return Ok(Some(Arc::from(rec.value)));
            }
        }
        let value: Arc<[u8]> = core.with_channel(|ch| {
            let (buf, at) = core.read_bytes(ch, &handle.blob, offset, len)?;
            let rec = record::decode_for_read(&buf[at..], handle.salt, key, handle.id, offset)?;
            Ok(Arc::from(rec.value))
        })?;
        if let Some(c) = &sh.cache {
            c.insert(ckey, value.clone());
        }
        Ok(Some(value))
    }

    /// Apply `batch` atomically: after a crash either all of it or none of it is there.
    pub fn write_batch(&self, batch: WriteBatch) -> Result<()> {
        self.write_batch_start(batch, true)?.wait()
    }

    fn write_batch_start(&self, batch: WriteBatch, direct: bool) -> Result<BatchWait<S>> {
        self.check_writable()?;
        let mut parts: Vec<Vec<Op>> = vec![Vec::new(); self.core().cfg.shards];
        for op in batch.ops {
            self.check_key(op.key())?;
            if let Op::Put(_, v) = &op {
                self.check_value(v)?;
            }
            parts[self.core().shard_of(hash_key(op.key()))].push(op);
        }
        let used: Vec<usize> = (0..parts.len()).filter(|&i| !parts[i].is_empty()).collect();
        if used.is_empty() {
            return Ok(BatchWait::Done);
        }
        let id = self.core().next_batch.fetch_add(1, Ordering::Relaxed);
        if used.len() == 1 {
            // One shard: members and commit go out in one group; its log order makes the
            // batch atomic without a second round.
            let s = used[0];
            let (tx, rx) = reply::channel();
            let ops = std::mem::take(&mut parts[s]);
            self.submit(
                direct,
                s,
                Req::Write {
                    ops,
                    batch: Some(id),
                    reply: tx,
                },
            )?;
            return Ok(BatchWait::One(rx));
        }
        Ok(BatchWait::Multi {
            db: self.clone(),
            id,
            parts,
            used,
        })
    }

    /// Cross-shard batch: every shard writes and flushes its members (prepare), then each
    /// writes a commit record. Recovery applies members whose batch has a commit in any shard
    /// (see `recovery.rs`).
    fn run_multi(&self, id: u64, mut parts: Vec<Vec<Op>>, used: &[usize]) -> Result<()> {
        let _gate = self.core().batch_gate.read();
        let mut waits = Vec::new();
        for &s in used {
            let (tx, rx) = reply::channel();
            let ops = std::mem::take(&mut parts[s]);
            self.send(
                s,
                Req::Prepare {
                    batch: id,
                    ops,
                    reply: tx,
                },
            )?;
            waits.push(rx);
        }
        let mut first_err = None;
        for w in waits {
            if let Err(e) = w.wait() {
                first_err.get_or_insert(e);
            }
        }
        if let Some(e) = first_err {
            for &s in used {
                let _ = self.send(s, Req::Abort { batch: id });
            }
            return Err(e);
        }
        let mut waits = Vec::new();
        for &s in used {
            let (tx, rx) = reply::channel();
            self.send(
                s,
                Req::Commit {
                    batch: id,
                    reply: tx,
                },
            )?;
            waits.push(rx);
        }
        let mut res = Ok(());
        for w in waits {
            if let Err(e) = w.wait() {
                if res.is_ok() {
                    res = Err(e);
                }
            }
        }
        res
    }

    /// Every live key (unordered).
    pub fn keys(&self) -> Result<Vec<Vec<u8>>> {
        self.check_open()?;
        let mut out = Vec::new();
        for sh in &self.core().shards {
            let ix = sh.index.read();
            out.extend(ix.keydir.iter().map(|(k, _)| k.to_vec()));
        }
        Ok(out)
    }

    /// Fold over every live key and value (a consistent view per key, not across keys).
    pub fn fold<T>(&self, init: T, mut f: impl FnMut(T, &[u8], &[u8]) -> T) -> Result<T> {
        let mut acc = init;
        for sh in &self.core().shards {
            let keys: Vec<Vec<u8>> = {
                let ix = sh.index.read();
                ix.keydir.iter().map(|(k, _)| k.to_vec()).collect()
            };
            for k in keys {
                if let Some(v) = self.get_shared(&k)? {
                    acc = f(acc, &k, &v);
                }
            }
        }
        Ok(acc)
    }

    /// Make every acknowledged write durable.
    pub fn sync(&self) -> Result<()> {
        for w in self.sync_start(true)? {
            w.wait()?;
        }
        Ok(())
    }

    fn sync_start(&self, direct: bool) -> Result<Vec<reply::Receiver<()>>> {
        self.check_writable()?;
        let mut waits = Vec::new();
        for s in 0..self.inner.cells.len() {
            let (tx, rx) = reply::channel();
            self.submit(direct, s, Req::Sync { reply: tx })?;
            waits.push(rx);
        }
        Ok(waits)
    }

    /// Seal every shard's active blob and merge every shard now (blocks until done).
    pub fn merge(&self) -> Result<()> {
        self.check_writable()?;
        let mut waits = Vec::new();
        for s in 0..self.inner.cells.len() {
            let (tx, rx) = reply::channel();
            self.send(s, Req::Seal { reply: tx })?;
            waits.push(rx);
        }
        for w in waits {
            w.wait()?;
        }
        let g = self.inner.merge.lock();
        match g.as_ref() {
            Some(w) => w.merge_all(),
            None => Err(Error::Closed),
        }
    }

    /// The damaged log ranges open skipped (only under `RecoveryMode::Salvage`; the default
    /// mode refuses to open a damaged log). Empty for a healthy store.
    pub fn damage(&self) -> Result<Vec<crate::scan::LogDamage>> {
        self.check_open()?;
        Ok(self
            .core()
            .shards
            .iter()
            .flat_map(|sh| sh.index.read().damage.clone())
            .collect())
    }

    /// A snapshot of the counters and the blob layout.
    pub fn stats(&self) -> Result<Stats> {
        self.check_open()?;
        Ok(crate::stats::collect(self.core()))
    }

    /// Flush, write hints, close every blob and unload the blobstore cleanly. Other clones
    /// get [`Error::Closed`] afterwards. Dropping the last clone closes too (errors logged).
    pub fn close(self) -> Result<()> {
        self.inner.close()
    }

    // ---- async variants: the future completes when the shard replies ----

    /// [`Db::put`] as a future.
    pub fn put_async(
        &self,
        key: &[u8],
        value: &[u8],
    ) -> impl std::future::Future<Output = Result<()>> + Send + 'static {
        let r = self.write_req(Op::Put(key.to_vec(), value.to_vec()), false);
        async move { r?.await }
    }

    /// [`Db::delete`] as a future.
    pub fn delete_async(
        &self,
        key: &[u8],
    ) -> impl std::future::Future<Output = Result<()>> + Send + 'static {
        let r = self.write_req(Op::Delete(key.to_vec()), false);
        async move { r?.await }
    }

    /// [`Db::get`] as a future. Reads run on the calling thread (see the module doc), so the
    /// read happens when the future is first polled.
    pub fn get_async(
        &self,
        key: &[u8],
    ) -> impl std::future::Future<Output = Result<Option<Vec<u8>>>> + Send + 'static {
        let db = self.clone();
        let key = key.to_vec();
        async move { db.get(&key) }
    }

    /// [`Db::write_batch`] as a future. A batch spanning shards runs its two rounds on a
    /// helper thread.
    pub fn write_batch_async(
        &self,
        batch: WriteBatch,
    ) -> impl std::future::Future<Output = Result<()>> + Send + 'static {
        let r = self.write_batch_start(batch, false);
        async move {
            match r? {
                BatchWait::Done => Ok(()),
                BatchWait::One(rx) => rx.await,
                multi => {
                    let (tx, rx) = reply::channel();
                    std::thread::spawn(move || tx.send(multi.wait()));
                    rx.await
                }
            }
        }
    }

    /// [`Db::sync`] as a future.
    pub fn sync_async(&self) -> impl std::future::Future<Output = Result<()>> + Send + 'static {
        let r = self.sync_start(false);
        async move {
            for w in r? {
                w.await?;
            }
            Ok(())
        }
    }
}

enum BatchWait<S: BlobStore> {
    Done,
    One(reply::Receiver<()>),
    Multi {
        db: Db<S>,
        id: u64,
        parts: Vec<Vec<Op>>,
        used: Vec<usize>,
    },
}

impl<S: BlobStore> BatchWait<S> {
    fn wait(self) -> Result<()> {
        match self {
            BatchWait::Done => Ok(()),
            BatchWait::One(rx) => rx.wait(),
            BatchWait::Multi {
                db,
                id,
                parts,
                used,
            } => db.run_multi(id, parts, &used),
        }
    }
}

impl<S: BlobStore> Inner<S> {
    fn close(&self) -> Result<()> {
        let mut done = self.close_result.lock();
        if let Some(ok) = *done {
            return if ok { Err(Error::Closed) } else { Ok(()) };
        }
        *done = Some(true);
        let core = &self.core;
        let t0 = Instant::now();
        core.closed.store(true, Ordering::Release);
        if let Some(w) = self.merge.lock().take() {
            w.stop();
        }
        let _gate = core.batch_gate.write();
        let mut first_err: Option<Error> = None;
        let mut waits = Vec::new();
        for cell in &self.cells {
            let (rtx, rrx) = reply::channel();
            if cell.submit(Req::Close { reply: rtx }, false).is_ok() {
                waits.push(rrx);
            }
        }
        for w in waits {
            if let Err(e) = w.wait() {
                first_err.get_or_insert(e);
            }
        }
        for t in self.threads.lock().drain(..) {
            let _ = t.join();
        }
        if first_err.is_some() || core.poisoned.load(Ordering::Acquire) {
            // A write or flush failed: the blobstore's in-memory metadata may claim what the
            // device does not hold (e.g. a delete whose root-zeroing flush failed). A clean
            // unload would persist that as clean masks; leave the store dirty instead, so the
            // next load rebuilds the masks from the md pages (crash semantics).
            log::error!("blobcask: closing without a clean unload after a failure");
            first_err.get_or_insert(Error::Poisoned);
        } else if core.cfg.read_only {
            // Nothing to persist: the blobstore stays exactly as it was loaded.
        } else if let Err(e) = crate::recovery::close_all(core) {
            first_err.get_or_insert(e);
        }
        log::info!("blobcask: closed in {:?}", t0.elapsed());
        match first_err {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

impl<S: BlobStore> Drop for Inner<S> {
    fn drop(&mut self) {
        if self.close_result.lock().is_none() {
            if let Err(e) = self.close() {
                log::error!("blobcask: close on drop failed: {e}");
            }
        }
    }
}

impl Db {
    /// Open (or, with `create`, format) a store on the native blobstore.
    pub fn open(mut opts: Options) -> Result<Db> {
        use crate::device::{AnyDevice, Device};

        opts.validate()?;
        let spec = std::mem::replace(&mut opts.device, DeviceSpec::Memory { size: 0 });
        let path = match &spec {
            DeviceSpec::Path(p) => Some(p.clone()),
            _ => None,
        };
        let (dev, fresh) = match spec {
            DeviceSpec::Path(p) if opts.read_only && p.exists() => {
                let fo = crate::device::FileOptions {
                    read_only: true,
                    ..Default::default()
                };
                (AnyDevice::open_path_with(&p, &fo)?, false)
            }
            DeviceSpec::Path(p) => {
                if p.exists() {
                    (AnyDevice::open_path(&p)?, false)
                } else if opts.create && !opts.read_only {
                    opts.check_new_store(opts.device_size)?;
                    (AnyDevice::create_path(&p, opts.device_size)?, true)
                } else {
                    return Err(Error::invalid(format!(
                        "{} does not exist (set create to make it)",
                        p.display()
                    )));
                }
            }
            DeviceSpec::Memory { size } => (AnyDevice::memory(size, 4096)?, true),
            DeviceSpec::Sim(s) => (AnyDevice::from(s), false),
            DeviceSpec::Device(d) => (d, false),
        };
        let io_path = dev.io_path();
        let twin = match &dev {
            AnyDevice::Memory(m) => Some(AnyDevice::Memory(m.clone())),
            AnyDevice::Sim(s) => Some(AnyDevice::Sim(s.clone())),
            AnyDevice::File(_) => None,
        };
        let store = match native_store(dev, fresh, &opts) {
            Ok(s) => s,
            Err(e @ Error::Corruption { .. }) => return Err(name_load_damage(twin, path, e)),
            Err(e) => return Err(e),
        };
        crate::recovery::open_store(store, opts, io_path)
    }

    /// Open an existing store for reading only (see [`Options::read_only`]).
    pub fn open_read_only(mut opts: Options) -> Result<Db> {
        opts.read_only = true;
        opts.create = false;
        Db::open(opts)
    }
}

/// A load refused for a damaged md page: load the device again SPDK's way (damaged pages
/// skipped), in memory only, and let the catalog say what the damaged blob held.
fn name_load_damage(
    twin: Option<crate::device::AnyDevice>,
    path: Option<std::path::PathBuf>,
    e: Error,
) -> Error {
    use crate::blobstore::native::NativeBlobStore;
    use crate::device::{AnyDevice, FileOptions, Overlay};

    let Error::Corruption { blob, .. } = &e else {
        return e;
    };
    let blob = *blob;
    let dev = twin.or_else(|| {
        let fo = FileOptions {
            read_only: true,
            ..FileOptions::default()
        };
        path.and_then(|p| AnyDevice::open_path_with(p, &fo).ok())
    });
    let Some(dev) = dev else { return e };
    match pollster::block_on(NativeBlobStore::load_salvage(
        Overlay::new(dev),
        crate::blobstore::LoadOpts::default(),
    )) {
        Ok(store) => crate::catalog::name_damaged(&store, blob, e),
        Err(_) => e,
    }
}

/// Load the native blobstore on `dev`, or format it when `fresh` (a device just made) or when
/// `opts.create` is set and the device is all zeroes at its start. Anything else that holds
/// no blobstore is refused: a damaged super block must never be mistaken for an empty device.
pub fn native_store(
    dev: crate::device::AnyDevice,
    fresh: bool,
    opts: &Options,
) -> Result<crate::blobstore::native::NativeBlobStore<crate::device::AnyDevice>> {
    use crate::blobstore::native::NativeBlobStore;
    use crate::blobstore::{Bstype, InitOpts, LoadOpts};
    use crate::device::Device;

    let bstype = Bstype::new(&opts.bstype)?;
    let mut probe = AlignedBuf::zeroed(dev.block_size().max(4096) as usize);
    // A failed probe read is an error, never a reason to format: with `create` that
    // would wipe an existing store.
    let formatted = dev.size() >= probe.len() as u64 && {
        pollster::block_on(dev.read(0, &mut probe))?;
        probe[..8] == crate::blobstore::native::superblock::SIGNATURE
    };
    if opts.read_only && (fresh || !formatted) {
        return Err(Error::NotABlobstore(
            "the device holds no blobstore (a read-only open never formats)".into(),
        ));
    }
    let store = if formatted && !fresh {
        pollster::block_on(NativeBlobStore::load(
            dev,
            LoadOpts {
                bstype,
                force_recover: false,
            },
        ))?
    } else if fresh || (opts.create && probe.iter().all(|&b| b == 0)) {
        // Only a new or zeroed device is formatted: a damaged super block of a real store
        // (one flipped signature bit) must never be mistaken for an empty device.
        pollster::block_on(NativeBlobStore::init(
            dev,
            InitOpts {
                cluster_size: opts.cluster_size,
                bstype,
                ..InitOpts::default()
            },
        ))?
    } else if opts.create {
        return Err(Error::NotABlobstore(
            "the device holds data that is not a blobstore; refusing to format it \
                 (zero its first 4 KiB to allow formatting, or run `blobcask repair`)"
                .into(),
        ));
    } else {
        return Err(Error::NotABlobstore(
            "the device holds no blobstore (set create to format it)".into(),
        ));
    };
    Ok(store)
}

impl<S: BlobStore> Db<S> {
    /// Open a store on a blobstore the caller loaded or initialised (e.g. the SPDK backend).
    /// `opts.device` is ignored.
    pub fn open_on(store: S, opts: Options, io_path: IoPath) -> Result<Db<S>> {
        crate::recovery::open_store(store, opts, io_path)
    }
}
