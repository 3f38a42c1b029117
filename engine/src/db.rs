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

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

use parking_lot::Mutex;

use crate::blobs::{write_catalog, write_totals};
use crate::blobstore::BlobStore;
use crate::device::{AlignedBuf, IoPath};
use crate::error::{Error, Result};
use crate::keydir::hash_key;
use crate::recovery::Recovered;
use crate::reply;
use crate::shard::{Op, Req};
use crate::state::{Core, ShardShared};

pub use crate::options::{DeviceSpec, MergeOptions, Options, SyncPolicy};
pub use crate::stats::{BlobRole, BlobStats, ShardStats, Stats, Totals};

#[cfg(feature = "spdk")]
mod spdk;
#[cfg(feature = "spdk")]
pub use spdk::spdk_store;

/// A batch of puts and deletes applied all-or-nothing (also after a crash), in order: a later
/// operation on a key wins over an earlier one.
///
/// ```
/// use blobcask::WriteBatch;
/// # use blobcask::{Db, DeviceSpec, Options};
/// # let db = Db::open(Options::new(DeviceSpec::Memory { size: 64 << 20 }))?;
/// let mut batch = WriteBatch::new();
/// batch.put(b"a", b"1").put(b"b", b"2").delete(b"a");
/// assert_eq!(batch.len(), 3);
/// db.write_batch(batch)?;
/// assert_eq!(db.get(b"a")?, None);
/// assert_eq!(db.get(b"b")?.as_deref(), Some(&b"2"[..]));
/// # Ok::<(), blobcask::Error>(())
/// ```
#[derive(Debug, Default, Clone)]
pub struct WriteBatch {
    pub(crate) ops: Vec<Op>,
}

impl WriteBatch {
    /// An empty batch.
    pub fn new() -> Self {
        Self::default()
    }

    /// Add a put of `value` under `key`.
    pub fn put(&mut self, key: &[u8], value: &[u8]) -> &mut Self {
        self.ops.push(Op::Put(key.to_vec(), value.to_vec()));
        self
    }

    /// Add a delete of `key`.
    pub fn delete(&mut self, key: &[u8]) -> &mut Self {
        self.ops.push(Op::Delete(key.to_vec()));
        self
    }

    /// Operations in the batch.
    pub fn len(&self) -> usize {
        self.ops.len()
    }

    /// Whether the batch holds no operation (writing it does nothing).
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// Remove every operation, keeping the allocation for reuse.
    pub fn clear(&mut self) {
        self.ops.clear();
    }
}

/// What every clone of a [`Db`] shares: the running store.
struct Inner<S: BlobStore> {
    core: Arc<Core<S>>,
    cells: Vec<Arc<crate::shard::ShardCell<S>>>,
    threads: Mutex<Vec<JoinHandle<()>>>,
    /// `None` once close stopped it, and on a read-only store.
    merge: Mutex<Option<crate::merge::Worker>>,
    /// `Some` once close began: a second close gets `Error::Closed`.
    close_result: Mutex<Option<bool>>,
    /// The store's hold on a device handle the caller shares (`DeviceSpec::Device`); released
    /// when close has finished with the device.
    claim: Mutex<Option<crate::device::FileClaim>>,
    /// A `chunk::ChunkStore` is open on this store (one at a time; close waits for it).
    chunks_open: std::sync::atomic::AtomicBool,
    /// The snapshot blobs of the checkpoint this handle reads (`Db::open_checkpoint`).
    view: std::sync::OnceLock<Vec<crate::blobstore::BlobId>>,
}

/// A blobcask store. Cheap to clone; every clone is the same store. Blocking methods may be
/// called from any thread.
pub struct Db<S: BlobStore = crate::blobstore::native::NativeBlobStore<crate::device::AnyDevice>> {
    inner: Arc<Inner<S>>,
}

/// A streaming iterator over live `(key, value)` pairs; see [`Db::iter`]. Besides
/// `Iterator` (owned pairs), [`Iter::next_pair`] lends each pair without copying it.
pub struct Iter<S: BlobStore = crate::blobstore::native::NativeBlobStore<crate::device::AnyDevice>>
{
    db: Db<S>,
    cursor: crate::iter::Cursor<S>,
}

impl<S: BlobStore> Iterator for Iter<S> {
    type Item = Result<(Vec<u8>, Vec<u8>)>;

    fn next(&mut self) -> Option<Self::Item> {
        self.cursor
            .next_ref(self.db.core())
            .map(|r| r.map(|(k, v)| (k.to_vec(), v.to_vec())))
    }
}

impl<S: BlobStore> Iter<S> {
    /// The next pair, borrowed from the iterator's read buffers (valid until the next call):
    /// no allocation per pair.
    pub fn next_pair(&mut self) -> Option<Result<(&[u8], &[u8])>> {
        self.cursor.next_ref(self.db.core())
    }
}

/// A streaming iterator over live keys; see [`Db::iter_keys`].
pub struct KeyIter<
    S: BlobStore = crate::blobstore::native::NativeBlobStore<crate::device::AnyDevice>,
> {
    db: Db<S>,
    shard: usize,
    keys: std::vec::IntoIter<Vec<u8>>,
}

impl<S: BlobStore> Iterator for KeyIter<S> {
    type Item = Result<Vec<u8>>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(k) = self.keys.next() {
                return Some(Ok(k));
            }
            let core = self.db.core();
            if self.shard >= core.shards.len() {
                return None;
            }
            if core.is_closed() {
                self.shard = usize::MAX;
                return Some(Err(Error::Closed));
            }
            let ix = core.shards[self.shard].index.read();
            let keys: Vec<Vec<u8>> = ix
                .keydir
                .iter()
                .filter(|(k, _)| !k.starts_with(crate::options::RESERVED_PREFIX))
                .map(|(k, _)| k.to_vec())
                .collect();
            drop(ix);
            self.keys = keys.into_iter();
            self.shard += 1;
        }
    }
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
        if self.core().is_closed() {
            return Err(Error::Closed);
        }
        Ok(())
    }

    fn check_writable(&self) -> Result<()> {
        self.check_open()?;
        if self.core().cfg.read_only {
            return Err(Error::ReadOnly("the store is open read-only".into()));
        }
        if self.core().is_poisoned() {
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

    /// Check a single write; returns its shard.
    fn check_op(&self, op: &Op) -> Result<usize> {
        self.check_writable()?;
        let key = op.key();
        self.check_key(key)?;
        check_not_reserved(key)?;
        if let Op::Put(_, v) = op {
            self.check_value(v)?;
        }
        Ok(self.core().shard_of_key(key, hash_key(key)))
    }

    /// A blocking single write (see `ShardCell::write`).
    fn write_one(&self, op: Op) -> Result<()> {
        let shard = self.check_op(&op)?;
        self.inner.cells[shard].write(vec![op])
    }

    /// A single write queued for the shard thread (async callers must not block on the
    /// shard's I/O); the receiver completes with it.
    fn queue_write(&self, op: Op) -> Result<reply::Receiver<()>> {
        let shard = self.check_op(&op)?;
        let (tx, rx) = reply::channel();
        self.submit(
            false,
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
    ///
    /// ```
    /// # use blobcask::{Db, DeviceSpec, Options};
    /// # let db = Db::open(Options::new(DeviceSpec::Memory { size: 64 << 20 }))?;
    /// db.put(b"color", b"blue")?;
    /// db.put(b"color", b"green")?; // the newest value wins
    /// assert_eq!(db.get(b"color")?.as_deref(), Some(&b"green"[..]));
    /// # Ok::<(), blobcask::Error>(())
    /// ```
    pub fn put(&self, key: &[u8], value: &[u8]) -> Result<()> {
        self.write_one(Op::Put(key.to_vec(), value.to_vec()))
    }

    /// Remove `key` (no error if absent).
    ///
    /// ```
    /// # use blobcask::{Db, DeviceSpec, Options};
    /// # let db = Db::open(Options::new(DeviceSpec::Memory { size: 64 << 20 }))?;
    /// db.put(b"k", b"v")?;
    /// db.delete(b"k")?;
    /// db.delete(b"never-there")?; // not an error
    /// assert_eq!(db.get(b"k")?, None);
    /// # Ok::<(), blobcask::Error>(())
    /// ```
    pub fn delete(&self, key: &[u8]) -> Result<()> {
        self.write_one(Op::Delete(key.to_vec()))
    }

    /// The latest value of `key`.
    ///
    /// ```
    /// # use blobcask::{Db, DeviceSpec, Options};
    /// # let db = Db::open(Options::new(DeviceSpec::Memory { size: 64 << 20 }))?;
    /// db.put(b"k", b"v")?;
    /// assert_eq!(db.get(b"k")?, Some(b"v".to_vec()));
    /// assert_eq!(db.get(b"missing")?, None);
    /// # Ok::<(), blobcask::Error>(())
    /// ```
    pub fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        self.get_with(key, <[u8]>::to_vec)
    }

    /// Run `f` on the latest value of `key` without copying it out: the slice is the cached
    /// page (or the buffer the record was read into) itself.
    ///
    /// ```
    /// # use blobcask::{Db, DeviceSpec, Options};
    /// # let db = Db::open(Options::new(DeviceSpec::Memory { size: 64 << 20 }))?;
    /// db.put(b"k", b"a long value")?;
    /// assert_eq!(db.get_with(b"k", |v| v.len())?, Some(12));
    /// # Ok::<(), blobcask::Error>(())
    /// ```
    pub fn get_with<T>(&self, key: &[u8], f: impl FnOnce(&[u8]) -> T) -> Result<Option<T>> {
        self.check_open()?;
        self.check_key(key)?;
        crate::read::get_with(self.core(), key, f)
    }

    /// The latest values of `keys`, in the same order; the device reads of the keys not in
    /// memory are issued together (one submission, queue depth = their number).
    ///
    /// ```
    /// # use blobcask::{Db, DeviceSpec, Options};
    /// # let db = Db::open(Options::new(DeviceSpec::Memory { size: 64 << 20 }))?;
    /// db.put(b"a", b"1")?;
    /// db.put(b"c", b"3")?;
    /// let got = db.multi_get(&[&b"a"[..], b"b", b"c"])?;
    /// assert_eq!(got, vec![Some(b"1".to_vec()), None, Some(b"3".to_vec())]);
    /// # Ok::<(), blobcask::Error>(())
    /// ```
    pub fn multi_get<K: AsRef<[u8]>>(&self, keys: &[K]) -> Result<Vec<Option<Vec<u8>>>> {
        self.check_open()?;
        for k in keys {
            self.check_key(k.as_ref())?;
        }
        crate::read::multi_get(self.core(), keys)
    }

    /// Whether `key` has a value (keydir only, no I/O).
    ///
    /// ```
    /// # use blobcask::{Db, DeviceSpec, Options};
    /// # let db = Db::open(Options::new(DeviceSpec::Memory { size: 64 << 20 }))?;
    /// db.put(b"k", b"")?; // an empty value is a value
    /// assert!(db.contains(b"k")?);
    /// assert!(!db.contains(b"other")?);
    /// # Ok::<(), blobcask::Error>(())
    /// ```
    pub fn contains(&self, key: &[u8]) -> Result<bool> {
        self.check_open()?;
        self.check_key(key)?;
        let h = hash_key(key);
        let sh = &self.core().shards[self.core().shard_of_key(key, h)];
        Ok(sh.index.read().keydir.get(key, h).is_some())
    }

    /// Apply `batch` atomically: after a crash either all of it or none of it is there.
    ///
    /// ```
    /// # use blobcask::{Db, DeviceSpec, Options};
    /// # let db = Db::open(Options::new(DeviceSpec::Memory { size: 64 << 20 }))?;
    /// db.put(b"from", b"100")?;
    /// let mut batch = blobcask::WriteBatch::new();
    /// batch.put(b"from", b"60").put(b"to", b"40").delete(b"pending");
    /// db.write_batch(batch)?;
    /// assert_eq!(db.get(b"to")?.as_deref(), Some(&b"40"[..]));
    /// # Ok::<(), blobcask::Error>(())
    /// ```
    pub fn write_batch(&self, batch: WriteBatch) -> Result<()> {
        self.write_batch_start(batch, true, false)?.wait()
    }

    /// `write_batch` of the engine's own keys (the chunk store's metadata, under
    /// [`crate::options::RESERVED_PREFIX`]): the user's key and value limits do not apply.
    pub(crate) fn write_batch_system(&self, batch: WriteBatch) -> Result<()> {
        self.write_batch_start(batch, true, true)?.wait()
    }

    /// [`Db::write_batch_system`] of a batch whose records must not reach the device before
    /// the device flush `ticket` (`BlobStore::flush_ticket`) finished: the shards holding its
    /// keys wait for that flush before they next write records out.
    pub(crate) fn write_batch_system_after(&self, batch: WriteBatch, ticket: u64) -> Result<()> {
        let core = self.core();
        for op in &batch.ops {
            let s = core.shard_of_key(op.key(), hash_key(op.key()));
            core.shards[s]
                .barrier
                .fetch_max(ticket, std::sync::atomic::Ordering::AcqRel);
        }
        self.write_batch_system(batch)
    }

    /// `get` of one of the engine's own keys (no user key limits).
    pub(crate) fn get_system(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        self.check_open()?;
        crate::read::get_with(self.core(), key, <[u8]>::to_vec)
    }

    /// The blobstore under the store (the chunk store keeps its data blobs there).
    pub(crate) fn blobstore(&self) -> &S {
        &self.core().store
    }

    /// Whether the store was opened read-only.
    pub(crate) fn is_read_only(&self) -> bool {
        self.core().cfg.read_only
    }

    /// Whether every acknowledged write is already durable (`Always`, `GroupCommit`).
    pub(crate) fn syncs_every_write(&self) -> bool {
        !matches!(self.core().cfg.sync, SyncPolicy::Never)
    }

    /// Clusters the KV keeps free for its deletes and merges (the chunk store leaves them).
    pub(crate) fn kv_reserve_clusters(&self) -> u64 {
        self.core().cfg.merge_reserve
    }

    fn write_batch_start(
        &self,
        batch: WriteBatch,
        direct: bool,
        system: bool,
    ) -> Result<BatchWait<S>> {
        self.check_writable()?;
        let mut parts: Vec<Vec<Op>> = vec![Vec::new(); self.core().cfg.shards];
        for op in batch.ops {
            if system {
                if op.key().is_empty() || op.key().len() > crate::options::MAX_KEY_LIMIT {
                    return Err(Error::invalid("system key out of range"));
                }
            } else {
                self.check_key(op.key())?;
                check_not_reserved(op.key())?;
                if let Op::Put(_, v) = &op {
                    self.check_value(v)?;
                }
            }
            parts[self.core().shard_of_key(op.key(), hash_key(op.key()))].push(op);
        }
        let used: Vec<usize> = (0..parts.len()).filter(|&i| !parts[i].is_empty()).collect();
        if used.is_empty() {
            return Ok(BatchWait::Done);
        }
        let id = self.core().next_batch_id();
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
        let _gate = self.core().batch_gate_shared();
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

    /// Every live key (unordered). [`Db::iter_keys`] streams them instead.
    ///
    /// ```
    /// # use blobcask::{Db, DeviceSpec, Options};
    /// # let db = Db::open(Options::new(DeviceSpec::Memory { size: 64 << 20 }))?;
    /// db.put(b"b", b"2")?;
    /// db.put(b"a", b"1")?;
    /// let mut keys = db.keys()?;
    /// keys.sort();
    /// assert_eq!(keys, vec![b"a".to_vec(), b"b".to_vec()]);
    /// # Ok::<(), blobcask::Error>(())
    /// ```
    pub fn keys(&self) -> Result<Vec<Vec<u8>>> {
        self.check_open()?;
        let mut out = Vec::new();
        for sh in &self.core().shards {
            let ix = sh.index.read();
            out.extend(
                ix.keydir
                    .iter()
                    .filter(|(k, _)| !k.starts_with(crate::options::RESERVED_PREFIX))
                    .map(|(k, _)| k.to_vec()),
            );
        }
        Ok(out)
    }

    /// Stream every live key (unordered, no device I/O): the keys of one shard are copied
    /// when the iterator reaches it.
    ///
    /// ```
    /// # use blobcask::{Db, DeviceSpec, Options};
    /// # let db = Db::open(Options::new(DeviceSpec::Memory { size: 64 << 20 }))?;
    /// for i in 0..10u8 {
    ///     db.put(&[b'k', i], b"v")?;
    /// }
    /// assert_eq!(db.iter_keys()?.count(), 10);
    /// # Ok::<(), blobcask::Error>(())
    /// ```
    pub fn iter_keys(&self) -> Result<KeyIter<S>> {
        self.check_open()?;
        Ok(KeyIter {
            db: self.clone(),
            shard: 0,
            keys: Vec::new().into_iter(),
        })
    }

    /// Stream every live pair, in log order (not key order).
    ///
    /// Each data blob is read sequentially in large I/Os, several in flight at once, so a
    /// full pass runs at the device's sequential bandwidth rather than one random read per
    /// record; the read cache is neither consulted nor filled. Every key live from start to
    /// end is yielded exactly once, with a value it held during the iteration; keys written
    /// or deleted meanwhile may or may not appear. The iterator holds a clone of the handle
    /// (the store stays open while it lives) but pins no blob: merges go on beside it.
    ///
    /// An item is an error for the records it concerns (a record that fails its crc is
    /// reported, never served); the iteration goes on with the others, except after
    /// [`Error::Closed`].
    ///
    /// ```
    /// # use blobcask::{Db, DeviceSpec, Options};
    /// let db = Db::open(Options::new(DeviceSpec::Memory { size: 64 << 20 }))?;
    /// db.put(b"user:1", b"ada")?;
    /// db.put(b"user:2", b"grace")?;
    /// db.put(b"item:1", b"lamp")?;
    /// let mut users = db
    ///     .iter_prefix(b"user:")?
    ///     .collect::<blobcask::Result<Vec<_>>>()?;
    /// users.sort();
    /// assert_eq!(users, vec![
    ///     (b"user:1".to_vec(), b"ada".to_vec()),
    ///     (b"user:2".to_vec(), b"grace".to_vec()),
    /// ]);
    /// assert_eq!(db.iter()?.count(), 3);
    /// # Ok::<(), blobcask::Error>(())
    /// ```
    pub fn iter(&self) -> Result<Iter<S>> {
        self.iter_select(crate::iter::Select::default())
    }

    /// [`Db::iter`] over the keys that start with `prefix`.
    ///
    /// ```
    /// # use blobcask::{Db, DeviceSpec, Options};
    /// # let db = Db::open(Options::new(DeviceSpec::Memory { size: 64 << 20 }))?;
    /// db.put(b"user:1", b"ada")?;
    /// db.put(b"item:1", b"lamp")?;
    /// let users: Vec<_> = db.iter_prefix(b"user:")?.collect::<blobcask::Result<_>>()?;
    /// assert_eq!(users, vec![(b"user:1".to_vec(), b"ada".to_vec())]);
    /// # Ok::<(), blobcask::Error>(())
    /// ```
    pub fn iter_prefix(&self, prefix: &[u8]) -> Result<Iter<S>> {
        self.iter_select(crate::iter::Select {
            prefix: prefix.to_vec(),
            ..Default::default()
        })
    }

    /// [`Db::iter`] over the keys within `from` and `to` (byte order); the pairs still come
    /// in log order.
    ///
    /// ```
    /// # use blobcask::{Db, DeviceSpec, Options};
    /// # let db = Db::open(Options::new(DeviceSpec::Memory { size: 64 << 20 }))?;
    /// use std::ops::Bound;
    /// for k in [&b"a"[..], b"b", b"c", b"d"] {
    ///     db.put(k, b"v")?;
    /// }
    /// let mut keys: Vec<Vec<u8>> = db
    ///     .iter_range(Bound::Included(&b"b"[..]), Bound::Excluded(&b"d"[..]))?
    ///     .map(|kv| kv.map(|(k, _)| k))
    ///     .collect::<blobcask::Result<_>>()?;
    /// keys.sort();
    /// assert_eq!(keys, vec![b"b".to_vec(), b"c".to_vec()]);
    /// # Ok::<(), blobcask::Error>(())
    /// ```
    pub fn iter_range(
        &self,
        from: std::ops::Bound<&[u8]>,
        to: std::ops::Bound<&[u8]>,
    ) -> Result<Iter<S>> {
        self.iter_select(crate::iter::Select::range(from, to))
    }

    fn iter_select(&self, sel: crate::iter::Select) -> Result<Iter<S>> {
        self.check_open()?;
        Ok(Iter {
            db: self.clone(),
            cursor: crate::iter::Cursor::new(sel),
        })
    }

    /// Fold over every live key and value, in log order, with [`Db::iter`]'s guarantees.
    /// Stops at the first error.
    ///
    /// ```
    /// # use blobcask::{Db, DeviceSpec, Options};
    /// # let db = Db::open(Options::new(DeviceSpec::Memory { size: 64 << 20 }))?;
    /// db.put(b"a", b"12")?;
    /// db.put(b"b", b"345")?;
    /// let bytes = db.fold(0, |n, _key, value| n + value.len())?;
    /// assert_eq!(bytes, 5);
    /// # Ok::<(), blobcask::Error>(())
    /// ```
    pub fn fold<T>(&self, init: T, mut f: impl FnMut(T, &[u8], &[u8]) -> T) -> Result<T> {
        let mut acc = init;
        let mut it = self.iter()?;
        while let Some(item) = it.next_pair() {
            let (k, v) = item?;
            acc = f(acc, k, v);
        }
        Ok(acc)
    }

    /// Make every acknowledged write durable.
    ///
    /// ```
    /// # use blobcask::{Db, DeviceSpec, Options, SyncPolicy};
    /// // Acknowledge writes before their flush, and flush at chosen points.
    /// let opts = Options::new(DeviceSpec::Memory { size: 64 << 20 }).sync(SyncPolicy::Never);
    /// let db = Db::open(opts)?;
    /// for i in 0..100u32 {
    ///     db.put(&i.to_be_bytes(), b"v")?;
    /// }
    /// db.sync()?; // all 100 are durable now
    /// # Ok::<(), blobcask::Error>(())
    /// ```
    pub fn sync(&self) -> Result<()> {
        for w in self.sync_start(true)? {
            w.wait()?;
        }
        Ok(())
    }

    /// Append to each shard the commit records of the batches it adopted at open (see
    /// `recovery.rs`, step 4), durably.
    fn write_adopted_commits(&self, adopted: &[Vec<u64>]) -> Result<()> {
        let mut waits = Vec::new();
        for (s, batches) in adopted.iter().enumerate() {
            if batches.is_empty() {
                continue;
            }
            log::info!(
                "blobcask: shard {s} adopts {} batch(es) committed in another shard",
                batches.len()
            );
            for &batch in batches {
                let (tx, rx) = reply::channel();
                self.send(s, Req::Commit { batch, reply: tx })?;
                waits.push(rx);
            }
            let (tx, rx) = reply::channel();
            self.send(s, Req::Sync { reply: tx })?;
            waits.push(rx);
        }
        for w in waits {
            match w.wait() {
                // A full store still opens: the batches stay recovered from the other shards'
                // commit records, as they were before this open.
                Err(e @ (Error::Full | Error::NoMetadataSpace(_))) => {
                    log::warn!("blobcask: adopted batch commits not written: {e}");
                }
                r => r?,
            }
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
    ///
    /// ```
    /// # use blobcask::{Db, DeviceSpec, Options};
    /// # let db = Db::open(Options::new(DeviceSpec::Memory { size: 64 << 20 }))?;
    /// for _ in 0..3 {
    ///     for i in 0..100u32 {
    ///         db.put(&i.to_be_bytes(), &[0u8; 100])?; // overwrites leave dead records
    ///     }
    /// }
    /// db.merge()?; // rewrites the live records, frees the dead ones
    /// assert_eq!(db.get(&7u32.to_be_bytes())?.map(|v| v.len()), Some(100));
    /// # Ok::<(), blobcask::Error>(())
    /// ```
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
    ///
    /// ```
    /// # use blobcask::{Db, DeviceSpec, Options};
    /// # let db = Db::open(Options::new(DeviceSpec::Memory { size: 64 << 20 }))?;
    /// assert!(db.damage()?.is_empty()); // a healthy store
    /// # Ok::<(), blobcask::Error>(())
    /// ```
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
    ///
    /// ```
    /// # use blobcask::{Db, DeviceSpec, Options};
    /// # let db = Db::open(Options::new(DeviceSpec::Memory { size: 64 << 20 }))?;
    /// db.put(b"k", b"v")?;
    /// let stats = db.stats()?;
    /// assert_eq!(stats.keys, 1);
    /// # Ok::<(), blobcask::Error>(())
    /// ```
    pub fn stats(&self) -> Result<Stats> {
        self.check_open()?;
        Ok(crate::stats::collect(self.core()))
    }

    /// Flush, write hints, close every blob and unload the blobstore cleanly. Other clones
    /// get [`Error::Closed`] afterwards. Dropping the last clone closes too (errors logged).
    ///
    /// While a chunk store (`chunk::ChunkStore`) is open on the store this fails with
    /// [`Error::Busy`] and changes nothing: close the chunk store first. The handle is consumed
    /// either way; to retry, close a clone. The chunk store holds a clone of its own, so a
    /// store whose handles are all gone closes when its chunk store does.
    ///
    /// ```
    /// # use blobcask::{Db, DeviceSpec, Options};
    /// # let db = Db::open(Options::new(DeviceSpec::Memory { size: 64 << 20 }))?;
    /// let other = db.clone();
    /// db.close()?;
    /// assert!(matches!(other.get(b"k"), Err(blobcask::Error::Closed)));
    /// # Ok::<(), blobcask::Error>(())
    /// ```
    pub fn close(self) -> Result<()> {
        if self
            .inner
            .chunks_open
            .load(std::sync::atomic::Ordering::Acquire)
        {
            // Its blobs are open: the unload would fail half way. Nothing is done.
            return Err(Error::Busy(
                "a chunk store is open on this store; close it first".into(),
            ));
        }
        self.inner.close()
    }

    /// The snapshot blobs of the checkpoint this handle reads; `None` on the live store.
    pub(crate) fn checkpoint_view(&self) -> Option<&[crate::blobstore::BlobId]> {
        self.inner.view.get().map(Vec::as_slice)
    }

    /// Claim the store for a chunk store, or for a live checkpoint (false: one of them holds it).
    pub(crate) fn claim_chunks(&self) -> bool {
        !self
            .inner
            .chunks_open
            .swap(true, std::sync::atomic::Ordering::AcqRel)
    }

    /// The chunk store closed.
    pub(crate) fn release_chunks(&self) {
        self.inner
            .chunks_open
            .store(false, std::sync::atomic::Ordering::Release);
    }

    // ---- async variants: the future completes when the shard replies ----

    /// [`Db::put`] as a future.
    ///
    /// ```
    /// # use blobcask::{Db, DeviceSpec, Options};
    /// # let db = Db::open(Options::new(DeviceSpec::Memory { size: 64 << 20 }))?;
    /// pollster::block_on(async {
    ///     db.put_async(b"k", b"v").await?;
    ///     assert_eq!(db.get_async(b"k").await?.as_deref(), Some(&b"v"[..]));
    ///     Ok::<(), blobcask::Error>(())
    /// })?;
    /// # Ok::<(), blobcask::Error>(())
    /// ```
    pub fn put_async(
        &self,
        key: &[u8],
        value: &[u8],
    ) -> impl std::future::Future<Output = Result<()>> + Send + 'static {
        let r = self.queue_write(Op::Put(key.to_vec(), value.to_vec()));
        async move { r?.await }
    }

    /// [`Db::delete`] as a future.
    pub fn delete_async(
        &self,
        key: &[u8],
    ) -> impl std::future::Future<Output = Result<()>> + Send + 'static {
        let r = self.queue_write(Op::Delete(key.to_vec()));
        async move { r?.await }
    }

    /// [`Db::get`] as a future. What memory holds is answered in the first poll; a device read
    /// on an image file or block device is queued on the device's reactor and the future
    /// completes when it does, so one thread can keep many reads in flight (`join` them). On
    /// SPDK the read still completes in the first poll (through the SPDK thread).
    ///
    /// ```
    /// # use blobcask::{Db, DeviceSpec, Options};
    /// # let db = Db::open(Options::new(DeviceSpec::Memory { size: 64 << 20 }))?;
    /// for i in 0..8u8 {
    ///     db.put(&[i], &[i; 10])?;
    /// }
    /// // Start every read, then wait for them together: one thread, many reads in flight.
    /// let reads: Vec<_> = (0..8u8).map(|i| db.get_async(&[i])).collect();
    /// for (i, r) in reads.into_iter().enumerate() {
    ///     assert_eq!(pollster::block_on(r)?, Some(vec![i as u8; 10]));
    /// }
    /// # Ok::<(), blobcask::Error>(())
    /// ```
    pub fn get_async(
        &self,
        key: &[u8],
    ) -> impl std::future::Future<Output = Result<Option<Vec<u8>>>> + Send + 'static {
        let db = self.clone();
        let key = key.to_vec();
        async move {
            db.check_open()?;
            db.check_key(&key)?;
            crate::read::get_async(db.core(), &key).await
        }
    }

    /// [`Db::write_batch`] as a future. A batch spanning shards runs its two rounds on a
    /// helper thread.
    pub fn write_batch_async(
        &self,
        batch: WriteBatch,
    ) -> impl std::future::Future<Output = Result<()>> + Send + 'static {
        let r = self.write_batch_start(batch, false, false);
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
        core.mark_closed();
        if let Some(w) = self.merge.lock().take() {
            w.stop();
        }
        let _gate = core.batch_gate_exclusive();
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
        if first_err.is_some() || core.is_poisoned() {
            // A write or flush failed: the blobstore's in-memory metadata may claim what the
            // device does not hold (e.g. a delete whose root-zeroing flush failed). A clean
            // unload would persist that as clean masks; leave the store dirty instead, so the
            // next load rebuilds the masks from the md pages (crash semantics).
            log::error!("blobcask: closing without a clean unload after a failure");
            first_err.get_or_insert(Error::Poisoned);
        } else if core.cfg.read_only {
            // Nothing to persist: the blobstore stays exactly as it was loaded.
        } else if let Err(e) = close_all(core) {
            first_err.get_or_insert(e);
        }
        log::info!("blobcask: closed in {:?}", t0.elapsed());
        self.claim.lock().take();
        match first_err {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

/// User writes never reach the engine's own keys (see [`crate::options::RESERVED_PREFIX`]).
fn check_not_reserved(key: &[u8]) -> Result<()> {
    if key.starts_with(crate::options::RESERVED_PREFIX) {
        return Err(Error::invalid(
            "keys starting with bytes ff ff 63 6b are reserved for the chunk store's metadata",
        ));
    }
    Ok(())
}

/// Write the catalog, close every open blob and unload the blobstore.
fn close_all<S: BlobStore>(core: &Core<S>) -> Result<()> {
    let store = &core.store;
    let mut first: Option<Error> = None;
    if let Err(e) = write_totals(store, &core.totals()) {
        first.get_or_insert(e);
    }
    if let Err(e) = write_catalog(store, core.cfg.cluster, true) {
        first.get_or_insert(e);
    }
    for sh in &core.shards {
        let mut ix = sh.index.write();
        for e in ix.blobs.iter_mut() {
            if let Some(e) = e.take() {
                if let Err(err) = store.block_on(store.close(e.handle.blob.clone())) {
                    first.get_or_insert(err.into());
                }
            }
        }
    }
    core.drop_pooled_channels();
    if let Err(e) = store.block_on(store.unload()) {
        first.get_or_insert(e.into());
    }
    first.map_or(Ok(()), Err)
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
    pub fn open(opts: Options) -> Result<Db> {
        Db::open_as(opts, None)
    }

    /// Open the live store (`view` `None`) or, read-only, checkpoint `view`.
    fn open_as(mut opts: Options, view: Option<&str>) -> Result<Db> {
        use crate::device::{AnyDevice, Device};

        opts.validate()?;
        let spec = std::mem::replace(&mut opts.device, DeviceSpec::Memory { size: 0 });
        let path = match &spec {
            DeviceSpec::Path(p) => Some(p.clone()),
            _ => None,
        };
        let (dev, fresh) = match spec {
            DeviceSpec::Path(p) if p.exists() => {
                let fo = crate::device::FileOptions {
                    read_only: opts.read_only,
                    lock_wait: opts.lock_wait,
                    ..Default::default()
                };
                (AnyDevice::open_path_with(&p, &fo)?, false)
            }
            DeviceSpec::Path(p) if opts.create && !opts.read_only => {
                opts.check_new_store(opts.device_size)?;
                // A small io unit needs blocks that small (buffered I/O if direct I/O cannot do
                // them); the default one works on any detected block size.
                let fo = crate::device::FileOptions {
                    block_size: (opts.io_unit_size < 4096).then_some(opts.io_unit_size),
                    preallocate: opts.preallocate,
                    ..Default::default()
                };
                (
                    AnyDevice::create_path_with(&p, opts.device_size, &fo)?,
                    true,
                )
            }
            DeviceSpec::Path(p) => {
                return Err(Error::invalid(format!(
                    "{} does not exist (`Options::create` makes a new store there)",
                    p.display()
                )));
            }
            DeviceSpec::Memory { size } => (AnyDevice::memory(size, opts.io_unit_size)?, true),
            DeviceSpec::Sim(s) => (AnyDevice::from(s), false),
            DeviceSpec::Device(d) => (d, false),
        };
        // A cloned `Options` shares its device handle: one store on it at a time.
        let claim = dev.claim()?;
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
        let ids = match view {
            // What a checkpoint creation or deletion cut short leaves (no blob is open yet).
            None if !opts.read_only => {
                crate::checkpoint::clean_leftovers(&store)?;
                None
            }
            None => None,
            Some(name) => Some(crate::checkpoint::find_on(&store, name)?.blobs),
        };
        let db = start(
            crate::recovery::recover_view(store, &opts, ids.as_deref())?,
            &opts,
            io_path,
        )?;
        *db.inner.claim.lock() = claim;
        if let Some(ids) = ids {
            let _ = db.inner.view.set(ids);
        }
        Ok(db)
    }

    /// Open checkpoint `name` of the store on `opts.device`, read-only: gets and iteration
    /// see the store as it was when the checkpoint was made; writes fail
    /// [`Error::ReadOnly`]. See [`Db::create_checkpoint`].
    pub fn open_checkpoint(mut opts: Options, name: &str) -> Result<Db> {
        opts.read_only = true;
        opts.create = false;
        Db::open_as(opts, Some(name))
    }

    /// Freeze the store on `opts.device` as checkpoint `name`: a blobstore snapshot of every
    /// engine blob (metadata only; no data is copied) and a marker blob that commits it.
    /// The store must not be open elsewhere (the native blobstore snapshots closed blobs
    /// only; an image file's lock is taken as by a writable open). Space: the snapshots
    /// share every cluster with the live store until the live store writes over one (its
    /// cluster is then copied) or merge deletes the blob (the snapshot keeps it).
    pub fn create_checkpoint(opts: Options, name: &str) -> Result<crate::checkpoint::Checkpoint> {
        crate::checkpoint::check_name(name)?;
        with_store(opts, |s| crate::checkpoint::create_on(s, name, false))
    }

    /// Freeze the running store as checkpoint `name` (see [`Db::create_checkpoint`]): holds
    /// every acknowledged write (buffered records are written out and flushed first) and
    /// never half a batch; writes racing with the call may or may not be in it. Writes,
    /// merges and batches wait while the blobs are snapshotted (metadata writes only);
    /// reads go on.
    ///
    /// ```
    /// # use blobcask::{Db, Options};
    /// # let dir = tempfile::tempdir()?;
    /// # let path = dir.path().join("store.img");
    /// # Db::open(Options::at(&path).device_size(64 << 20))?.close()?;
    /// let db = Db::open(Options::at(&path))?;
    /// db.put(b"k", b"before")?;
    /// db.checkpoint("nightly")?;
    /// db.put(b"k", b"after")?;
    /// db.close()?;
    /// let frozen = Db::open_checkpoint(Options::at(&path), "nightly")?;
    /// assert_eq!(frozen.get(b"k")?.as_deref(), Some(&b"before"[..]));
    /// frozen.close()?;
    /// let names: Vec<String> = Db::list_checkpoints(Options::at(&path))?
    ///     .into_iter()
    ///     .map(|c| c.name)
    ///     .collect();
    /// assert_eq!(names, ["nightly"]);
    /// Db::delete_checkpoint(Options::at(&path), "nightly")?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn checkpoint(&self, name: &str) -> Result<crate::checkpoint::Checkpoint> {
        crate::checkpoint::check_name(name)?;
        self.check_writable()?;
        // A chunk store's workers write its blobs, which the checkpoint snapshots, at any
        // time: none may be open, nor open meanwhile (the claim holds one off).
        if !self.claim_chunks() {
            return Err(Error::Busy(
                "a chunk store is open on this store; close it before a checkpoint".into(),
            ));
        }
        let made = self.checkpoint_frozen(name);
        self.release_chunks();
        made
    }

    /// [`Db::checkpoint`] with no chunk store open.
    fn checkpoint_frozen(&self, name: &str) -> Result<crate::checkpoint::Checkpoint> {
        use crate::blobstore::IoChannel as _;

        // Lock order: close, then merges (a merge takes its shard's lock, then the batch
        // gate), then the batch gate (a batch holds it while it waits for its shards), then
        // every shard's writer.
        let done = self.inner.close_result.lock();
        if done.is_some() {
            return Err(Error::Closed);
        }
        let core = self.core();
        let _merges: Vec<_> = core.shards.iter().map(|s| s.merge_lock.lock()).collect();
        let _gate = core.batch_gate_exclusive();
        let mut states: Vec<_> = self.inner.cells.iter().map(|c| c.state.lock()).collect();
        let written = states
            .iter_mut()
            .try_for_each(|st| st.write_out())
            .and_then(|()| core.with_channel(|ch| Ok(core.store.block_on(ch.flush())?)));
        if let Err(e) = written {
            core.poison();
            return Err(e);
        }
        let made = crate::checkpoint::create_on(&core.store, name, true);
        if let Err(e) = &made {
            if !matches!(e, Error::InvalidArgument(_)) {
                // A snapshot cut short may leave a blob's in-memory metadata ahead of the
                // device: refuse writes until a reopen (which deletes the leftovers).
                core.poison();
            }
        }
        made
    }

    /// The store's committed checkpoints, by name.
    pub fn list_checkpoints(mut opts: Options) -> Result<Vec<crate::checkpoint::Checkpoint>> {
        opts.read_only = true;
        let (store, _claim) = load_store(opts)?;
        crate::checkpoint::list_on(&store)
    }

    /// Delete checkpoint `name`, freeing the clusters only it held. The store must not be
    /// open elsewhere.
    pub fn delete_checkpoint(opts: Options, name: &str) -> Result<()> {
        with_store(opts, |s| crate::checkpoint::delete_on(s, name))
    }

    /// Open an existing store for reading only (see [`Options::read_only`]).
    ///
    /// ```
    /// # use blobcask::{Db, Options};
    /// # let dir = tempfile::tempdir()?;
    /// # let path = dir.path().join("store.img");
    /// # Db::open(Options::at(&path).device_size(64 << 20))?.close()?;
    /// // Several readers may share the image; writes fail `ReadOnly`.
    /// let a = Db::open_read_only(Options::at(&path))?;
    /// let b = Db::open_read_only(Options::at(&path))?;
    /// assert!(matches!(a.put(b"k", b"v"), Err(blobcask::Error::ReadOnly(_))));
    /// drop((a, b));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
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

/// Load the native blobstore of `opts.device` without opening the engine on it (with the
/// claim on a shared device handle, held until the store is done with).
fn load_store(
    mut opts: Options,
) -> Result<(
    crate::blobstore::native::NativeBlobStore<crate::device::AnyDevice>,
    Option<crate::device::FileClaim>,
)> {
    use crate::device::{AnyDevice, FileOptions};

    opts.validate()?;
    opts.create = false;
    let spec = std::mem::replace(&mut opts.device, DeviceSpec::Memory { size: 0 });
    let dev = match spec {
        DeviceSpec::Path(p) => {
            let fo = FileOptions {
                read_only: opts.read_only,
                lock_wait: opts.lock_wait,
                ..Default::default()
            };
            AnyDevice::open_path_with(&p, &fo)?
        }
        DeviceSpec::Sim(s) => AnyDevice::from(s),
        DeviceSpec::Device(d) => d,
        DeviceSpec::Memory { .. } => {
            return Err(Error::invalid("a checkpoint needs an existing store"));
        }
    };
    let claim = dev.claim()?;
    Ok((native_store(dev, false, &opts)?, claim))
}

/// Run `f` on the loaded store, then unload it (also after an error, which is returned).
fn with_store<T>(
    opts: Options,
    f: impl FnOnce(&crate::blobstore::native::NativeBlobStore<crate::device::AnyDevice>) -> Result<T>,
) -> Result<T> {
    let (store, _claim) = load_store(opts)?;
    let res = f(&store);
    let un = store.block_on(store.unload()).map_err(Error::from);
    let v = res?;
    un?;
    Ok(v)
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
                io_unit_size: Some(opts.io_unit_size),
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
            "the device holds no blobstore (`Options::create` formats it)".into(),
        ));
    };
    Ok(store)
}

impl<S: BlobStore> Db<S> {
    /// Open a store on a blobstore the caller loaded or initialised (e.g. the SPDK backend).
    /// `opts.device` is ignored.
    pub fn open_on(store: S, opts: Options, io_path: IoPath) -> Result<Db<S>> {
        start(crate::recovery::recover(store, &opts)?, &opts, io_path)
    }
}

/// Turn a recovered store into a running one: the shared state (caches sized from
/// `opts.cache_bytes`), one thread per shard and, unless read-only, the merge worker.
fn start<S: BlobStore>(rec: Recovered<S>, opts: &Options, io_path: IoPath) -> Result<Db<S>> {
    let shards = rec.cfg.shards;
    let cap_per_shard = opts.cache_bytes / shards;
    let mut shard_state = Vec::with_capacity(shards);
    let mut next_seqs = Vec::with_capacity(shards);
    let mut adopted = Vec::with_capacity(shards);
    for r in rec.shards {
        adopted.push(r.adopted);
        let cache = (cap_per_shard > 0)
            .then(|| crate::cache::PageCache::new(cap_per_shard as u64, rec.cfg.page));
        next_seqs.push(r.next_seq);
        shard_state.push(ShardShared::new(
            r.index,
            cache,
            r.next_blob_seq,
            r.hints,
            r.snapshots,
        ));
    }
    let used_hints = rec.used_hints;
    let core = Arc::new(Core::new(
        rec.store,
        rec.cfg,
        shard_state,
        rec.epoch,
        (rec.elapsed, used_hints),
        io_path,
    ));
    log::info!(
        "blobcask: opened {shards} shards in {:?} (hints used: {used_hints})",
        rec.elapsed
    );
    let mut cells = Vec::with_capacity(shards);
    let mut threads = Vec::with_capacity(shards);
    for (i, ns) in next_seqs.into_iter().enumerate() {
        let (cell, thread) = crate::shard::spawn(core.clone(), i, ns)?;
        threads.push(thread);
        cells.push(cell);
    }
    let db = Db {
        inner: Arc::new(Inner {
            core: core.clone(),
            cells,
            threads: Mutex::new(threads),
            merge: Mutex::new(None),
            close_result: Mutex::new(None),
            claim: Mutex::new(None),
            chunks_open: std::sync::atomic::AtomicBool::new(false),
            view: std::sync::OnceLock::new(),
        }),
    };
    if !opts.read_only {
        // Before the merge worker starts: a merge may drop the commit records adopted batches
        // still depend on. A failure drops `db`, which closes it.
        db.write_adopted_commits(&adopted)?;
        *db.inner.merge.lock() = Some(crate::merge::Worker::start(core)?);
    }
    Ok(db)
}
