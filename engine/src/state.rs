//! The state the handle, the shard threads and the merge worker share: the resolved
//! configuration, each shard's index (keydir + blob table), write-behind buffer, cache and
//! counters, and the store-wide flags and gates.
//!
//! Everything above this module (`db`, `shard`, `merge`, `recovery`, `stats`) reaches the
//! shared state through these types; this module depends only on the layers below it (record
//! and keydir formats, the blobstore, the device). The locks here and the order in which they
//! may be taken are listed in `engine/ARCHITECTURE.md`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::{Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};

use crate::blobstore::{BlobId, BlobStore};
use crate::device::IoPath;
use crate::error::{Error, Result};
use crate::keydir::{KeyDir, Loc};
use crate::options::{MergeOptions, RecoveryMode, SyncPolicy};
use crate::record;
use crate::scan::LogDamage;
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
    /// Data blobs by slot ([`Loc::blob`]); a freed slot is `None` until reused.
    pub blobs: Vec<Option<BlobEntry<S>>>,
    /// Damaged ranges a salvaging open skipped in this shard's logs.
    pub damage: Vec<LogDamage>,
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

/// Counters summed over every run of a store: persisted in the super blob (`bc.totals`) at
/// each clean close and after each merge, so they survive across processes. A run that ends in
/// a crash loses what it added since its last merge.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Totals {
    pub merges: u64,
    /// Bytes merge rewrote.
    pub merged_bytes: u64,
    /// Key + value bytes the user handed to put/delete/write_batch.
    pub user_bytes: u64,
    /// Bytes written to the device by shards and merges.
    pub device_bytes: u64,
}

impl Totals {
    /// Encoded length of `bc.totals`.
    pub(crate) const LEN: usize = 32;

    /// `device_bytes / user_bytes` (0 before any write).
    pub fn write_amplification(&self) -> f64 {
        if self.user_bytes == 0 {
            0.0
        } else {
            self.device_bytes as f64 / self.user_bytes as f64
        }
    }

    /// Four little-endian u64s in field order.
    pub(crate) fn encode(&self) -> [u8; Self::LEN] {
        let mut b = [0u8; Self::LEN];
        let f = [
            self.merges,
            self.merged_bytes,
            self.user_bytes,
            self.device_bytes,
        ];
        for (c, v) in b.chunks_exact_mut(8).zip(f) {
            c.copy_from_slice(&v.to_le_bytes());
        }
        b
    }

    /// Undo [`Totals::encode`]; any other length (an older store has none) is `None`.
    pub(crate) fn decode(b: &[u8]) -> Option<Totals> {
        if b.len() != Self::LEN {
            return None;
        }
        let mut f = b
            .chunks_exact(8)
            .map(|c| c.try_into().map(u64::from_le_bytes).unwrap_or(0));
        let mut next = || f.next().unwrap_or(0);
        Some(Totals {
            merges: next(),
            merged_bytes: next(),
            user_bytes: next(),
            device_bytes: next(),
        })
    }

    pub(crate) fn plus(self, o: Totals) -> Totals {
        Totals {
            merges: self.merges.saturating_add(o.merges),
            merged_bytes: self.merged_bytes.saturating_add(o.merged_bytes),
            user_bytes: self.user_bytes.saturating_add(o.user_bytes),
            device_bytes: self.device_bytes.saturating_add(o.device_bytes),
        }
    }
}

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
    /// Keydir and blob table: read by every `get`, written once per group and by merge.
    pub index: RwLock<Index<S>>,
    /// Pages of this shard's data blobs (see `cache.rs`); `None` when the budget is 0.
    pub cache: Option<crate::cache::PageCache>,
    /// Seq of the shard's next blob (data, hint or snapshot alike).
    pub next_blob_seq: AtomicU64,
    pub ctr: Counters,
    /// Serializes merges of this shard (and the close-time snapshot).
    pub merge_lock: Mutex<()>,
    /// Hint blobs of this shard: data blob seq → hint blob id.
    pub hints: Mutex<HashMap<u64, BlobId>>,
    /// Keydir snapshot blobs of this shard (normally at most one).
    pub snapshots: Mutex<Vec<BlobId>>,
    /// Records of the active blob not yet on the device (see `shard.rs`).
    pub unwritten: RwLock<Unwritten>,
    /// Bytes in `unwritten` beyond what is on the device.
    pub pending_bytes: AtomicU64,
    /// The merge worker asks the shard to seal its active blob (too much of it is dead).
    pub seal_wanted: AtomicBool,
    /// A device flush (`BlobStore::flush_ticket`) that must have finished before the shard
    /// writes any more records out: records in the buffer name data written elsewhere on
    /// the device (chunk pages) that must be durable first. 0: none.
    pub barrier: AtomicU64,
}

impl<S: BlobStore> ShardShared<S> {
    /// A shard's shared state as recovery left it (empty write-behind buffer, zero counters).
    pub fn new(
        index: Index<S>,
        cache: Option<crate::cache::PageCache>,
        next_blob_seq: u64,
        hints: HashMap<u64, BlobId>,
        snapshots: Vec<BlobId>,
    ) -> Self {
        ShardShared {
            index: RwLock::new(index),
            cache,
            next_blob_seq: AtomicU64::new(next_blob_seq),
            ctr: Counters::default(),
            merge_lock: Mutex::new(()),
            hints: Mutex::new(hints),
            snapshots: Mutex::new(snapshots),
            unwritten: RwLock::new(Unwritten::default()),
            pending_bytes: AtomicU64::new(0),
            seal_wanted: AtomicBool::new(false),
            barrier: AtomicU64::new(0),
        }
    }
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
    pub recovery: RecoveryMode,
    /// Counters of earlier runs, as the super blob's `bc.totals` holds them.
    pub stored_totals: Totals,
}

/// State shared by the handle, the shard threads and the merge worker.
///
/// `store`, `cfg` and `shards` are read everywhere and stay open to the crate; the flags,
/// gates and pools are private behind the methods below, so every reader and writer of them
/// is in this file.
pub(crate) struct Core<S: BlobStore> {
    /// The blobstore every blob of the store lives on.
    pub store: S,
    /// Options resolved against the store; fixed for the life of the handle.
    pub cfg: Config,
    /// One entry per shard, indexed by [`Core::shard_of`].
    pub shards: Vec<ShardShared<S>>,
    /// Pool of I/O channels for readers and merge (bounded; extra channels are dropped).
    chans: crossbeam_channel::Sender<S::Channel>,
    chans_rx: crossbeam_channel::Receiver<S::Channel>,
    /// A write or flush failed: writes are refused until reopened.
    poisoned: AtomicBool,
    /// `close` began: every operation gets `Error::Closed`.
    closed: AtomicBool,
    /// Held shared by a `write_batch` across its shards, exclusively by merge while it picks
    /// its inputs (and by close): a merge never sees a half-applied batch.
    batch_gate: RwLock<()>,
    /// Next cross-shard batch id; starts at `epoch << 32` so ids never repeat across runs.
    next_batch: AtomicU64,
    /// How long the last open took, and whether it used hints.
    recovery_time: Duration,
    recovery_used_hints: bool,
    /// How the device submits I/O (reported by `stats`).
    io_path: IoPath,
}

impl<S: BlobStore> Core<S> {
    /// The shared state of a store just recovered; `recovery` is (open time, hints used).
    pub fn new(
        store: S,
        cfg: Config,
        shards: Vec<ShardShared<S>>,
        epoch: u64,
        recovery: (Duration, bool),
        io_path: IoPath,
    ) -> Self {
        let (chans, chans_rx) = crossbeam_channel::bounded(64);
        Core {
            store,
            cfg,
            shards,
            chans,
            chans_rx,
            poisoned: AtomicBool::new(false),
            closed: AtomicBool::new(false),
            batch_gate: RwLock::new(()),
            next_batch: AtomicU64::new(epoch << 32),
            recovery_time: recovery.0,
            recovery_used_hints: recovery.1,
            io_path,
        }
    }

    pub fn poison(&self) {
        if !self.poisoned.swap(true, Ordering::SeqCst) {
            log::error!("blobcask: a write or flush failed; refusing writes until reopened");
        }
    }

    pub fn is_poisoned(&self) -> bool {
        self.poisoned.load(Ordering::Acquire)
    }

    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// From now on every operation of the handle gets `Error::Closed`.
    pub fn mark_closed(&self) {
        self.closed.store(true, Ordering::Release);
    }

    /// The batch gate held shared: a cross-shard batch in flight.
    pub fn batch_gate_shared(&self) -> RwLockReadGuard<'_, ()> {
        self.batch_gate.read()
    }

    /// The batch gate held exclusively: no cross-shard batch is half applied.
    pub fn batch_gate_exclusive(&self) -> RwLockWriteGuard<'_, ()> {
        self.batch_gate.write()
    }

    /// A new cross-shard batch id.
    pub fn next_batch_id(&self) -> u64 {
        self.next_batch.fetch_add(1, Ordering::Relaxed)
    }

    /// The counters of every run so far: the stored ones plus this run's.
    pub fn totals(&self) -> Totals {
        let this_run = self.shards.iter().fold(Totals::default(), |t, sh| {
            let c = &sh.ctr;
            t.plus(Totals {
                merges: c.merges.load(Ordering::Relaxed),
                merged_bytes: c.merged_bytes.load(Ordering::Relaxed),
                user_bytes: c.user_bytes.load(Ordering::Relaxed),
                device_bytes: c.device_bytes.load(Ordering::Relaxed),
            })
        });
        self.cfg.stored_totals.plus(this_run)
    }

    /// How long the last open took, and whether it used hints.
    pub fn recovery_info(&self) -> (Duration, bool) {
        (self.recovery_time, self.recovery_used_hints)
    }

    pub fn io_path(&self) -> &IoPath {
        &self.io_path
    }

    /// Drop every pooled channel (close does this before unloading the blobstore).
    pub fn drop_pooled_channels(&self) {
        while self.chans_rx.try_recv().is_ok() {}
    }

    /// Run `f` with an I/O channel from the pool (created on demand).
    pub fn with_channel<T>(&self, f: impl FnOnce(&S::Channel) -> Result<T>) -> Result<T> {
        let ch = self.take_channel()?;
        let r = f(&ch);
        self.return_channel(ch);
        r
    }

    /// An I/O channel from the pool (created on demand); give it back with `return_channel`.
    pub fn take_channel(&self) -> Result<S::Channel> {
        match self.chans_rx.try_recv() {
            Ok(c) => Ok(c),
            Err(_) => Ok(self.store.channel()?),
        }
    }

    pub fn return_channel(&self, ch: S::Channel) {
        // A full pool just drops the extra channel.
        let _ = self.chans.try_send(ch);
    }

    pub fn shard_of(&self, hash: u64) -> usize {
        (hash % self.shards.len() as u64) as usize
    }

    /// The shard of `key` (`hash` is its keydir hash): by the hash, except that every key of
    /// one chunk (the reserved prefix, a kind byte, the chunk id: bytes 5..13 are the id) goes
    /// to one shard, so a chunk's metadata batch is a single-shard batch (no prepare flush)
    /// and its records keep one log order. This is part of the format: a key's shard is
    /// where open finds its records.
    pub fn shard_of_key(&self, key: &[u8], hash: u64) -> usize {
        match key.get(5..13) {
            Some(id) if key.starts_with(crate::options::RESERVED_PREFIX) => {
                self.shard_of(crate::keydir::hash_key(id))
            }
            _ => self.shard_of(hash),
        }
    }
}

/// What a data blob is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlobRole {
    /// The shard is appending to it.
    Active,
    /// Immutable; a merge input candidate.
    Sealed,
    /// Being written by a merge.
    Merging,
}

#[cfg(test)]
mod tests {
    use super::Totals;

    #[test]
    fn totals_round_trip_and_refuse_other_lengths() {
        let t = Totals {
            merges: 3,
            merged_bytes: 1 << 40,
            user_bytes: 100,
            device_bytes: 250,
        };
        assert_eq!(Totals::decode(&t.encode()), Some(t));
        assert_eq!(Totals::decode(&t.encode()[..31]), None);
        assert_eq!(Totals::decode(&[]), None);
        assert_eq!(t.write_amplification(), 2.5);
        assert_eq!(Totals::default().write_amplification(), 0.0);
        assert_eq!(t.plus(t).merges, 6);
    }
}
