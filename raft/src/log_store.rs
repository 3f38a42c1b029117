//! The Raft log on blobcask: one key per entry (`l/e/` + big-endian index), so a range of
//! entries is a set of point reads (one `multi_get`), never a scan.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::sync::{Arc, Mutex, MutexGuard};

use blobcask::{Db, WriteBatch};
use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{Entry, LogId, OptionalSend, RaftLogReader, StorageError, Vote};
use tokio::sync::oneshot;

use crate::codec::{decode, decode_as, encode, read_logs, read_vote, write_logs, write_vote};
use crate::{NodeId, TypeConfig};

pub(crate) const LOG_PREFIX: &[u8] = b"l/e/";
const VOTE: &[u8] = b"l/vote";
const COMMITTED: &[u8] = b"l/committed";
const PURGED: &[u8] = b"l/purged";
/// Deletes per batch in `truncate` and `purge` (each batch is flushed before the next).
const DELETE_CHUNK: u64 = 4096;
/// Keys per `multi_get` in a range read.
const READ_CHUNK: u64 = 1024;

pub(crate) fn log_key(index: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(LOG_PREFIX.len() + 8);
    k.extend_from_slice(LOG_PREFIX);
    k.extend_from_slice(&index.to_be_bytes());
    k
}

/// The index of a log key.
pub(crate) fn log_index(key: &[u8]) -> Option<u64> {
    let rest = key.strip_prefix(LOG_PREFIX)?;
    Some(u64::from_be_bytes(rest.try_into().ok()?))
}

/// The log's bounds, kept in memory.
struct Bounds {
    last_purged: Option<LogId<NodeId>>,
    /// The last entry written (or being written).
    last: Option<LogId<NodeId>>,
}

impl Bounds {
    /// First index that may hold an entry.
    fn first_index(&self) -> u64 {
        self.last_purged.map_or(0, |l| l.index + 1)
    }
}

struct Inner {
    db: Db,
    bounds: Mutex<Bounds>,
    /// Entries handed to blobcask whose write has not been acknowledged yet: a read must see
    /// them (the leader replicates entries before its own flush completes).
    pending: Mutex<BTreeMap<u64, Entry<TypeConfig>>>,
    /// Completes when the last append's callback has fired: the next append's callback waits
    /// for it, so callbacks fire in append order.
    last_ack: Mutex<Option<oneshot::Receiver<()>>>,
}

/// The Raft log store (also its own log reader: clones share everything).
#[derive(Clone)]
pub struct LogStore {
    inner: Arc<Inner>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic elsewhere while holding the lock leaves plain data: keep going.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl LogStore {
    /// Open the log kept in `db`; `indices` are the log keys present (from one pass over the
    /// keydir). Entries at or below the purged index and after the first hole are deleted:
    /// a purge or truncate cut short, or appends after one lost in a crash (never acknowledged,
    /// since callbacks fire in order).
    pub(crate) fn open(db: Db, indices: &[u64]) -> Result<LogStore, crate::Error> {
        let last_purged: Option<LogId<NodeId>> = match db.get(PURGED)? {
            Some(b) => Some(decode_as(&b, "purged log id")?),
            None => None,
        };
        let mut sorted = indices.to_vec();
        sorted.sort_unstable();
        let first = last_purged.map(|l| l.index + 1);
        let mut keep_end = None; // last index of the contiguous run
        let mut stale = WriteBatch::new();
        for &i in &sorted {
            let keep = match (first, keep_end) {
                (Some(f), None) => i == f,
                (None, None) => true,
                (_, Some(e)) => i == e + 1,
            };
            if keep && first.is_none_or(|f| i >= f) {
                keep_end = Some(i);
            } else {
                stale.delete(&log_key(i));
            }
        }
        if !stale.is_empty() {
            db.write_batch(stale)?;
        }
        let last = match keep_end {
            Some(i) => {
                let b = db
                    .get(&log_key(i))?
                    .ok_or_else(|| blobcask::Error::invalid("log entry vanished during open"))?;
                let e: Entry<TypeConfig> = decode_as(&b, "log entry")?;
                Some(e.log_id)
            }
            None => None,
        };
        Ok(LogStore {
            inner: Arc::new(Inner {
                db,
                bounds: Mutex::new(Bounds { last_purged, last }),
                pending: Mutex::new(BTreeMap::new()),
                last_ack: Mutex::new(None),
            }),
        })
    }

    fn db(&self) -> &Db {
        &self.inner.db
    }

    /// The entry at `index`, from the pending writes or the store.
    fn entry_at(&self, index: u64) -> Result<Option<Entry<TypeConfig>>, StorageError<NodeId>> {
        if let Some(e) = lock(&self.inner.pending).get(&index) {
            return Ok(Some(e.clone()));
        }
        match self.db().get(&log_key(index)).map_err(read_logs)? {
            Some(b) => Ok(Some(decode(&b).map_err(read_logs)?)),
            None => Ok(None),
        }
    }

    /// Delete the entries `from..=to` in batches, highest first (a crash between two keeps a
    /// contiguous log), each flushed before the next.
    async fn delete_range(&self, from: u64, to: u64) -> Result<(), StorageError<NodeId>> {
        let mut hi = to;
        while hi >= from {
            let lo = hi.saturating_sub(DELETE_CHUNK - 1).max(from);
            let mut b = WriteBatch::new();
            for i in (lo..=hi).rev() {
                b.delete(&log_key(i));
            }
            self.db().write_batch_async(b).await.map_err(write_logs)?;
            if lo == 0 {
                break;
            }
            hi = lo - 1;
        }
        Ok(())
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<TypeConfig>>, StorageError<NodeId>> {
        let (first, last) = {
            let b = lock(&self.inner.bounds);
            (b.first_index(), b.last.map(|l| l.index))
        };
        let Some(last) = last else {
            return Ok(Vec::new());
        };
        let start = match range.start_bound() {
            Bound::Included(&i) => i,
            Bound::Excluded(&i) => i.saturating_add(1),
            Bound::Unbounded => 0,
        }
        .max(first);
        let end = match range.end_bound() {
            Bound::Included(&i) => i.saturating_add(1),
            Bound::Excluded(&i) => i,
            Bound::Unbounded => u64::MAX,
        }
        .min(last.saturating_add(1));
        let mut out = Vec::new();
        let mut lo = start;
        while lo < end {
            let hi = end.min(lo.saturating_add(READ_CHUNK));
            // Pending entries first; the rest in one multi_get.
            let mut slots: Vec<Option<Entry<TypeConfig>>> = Vec::with_capacity((hi - lo) as usize);
            let mut want = Vec::new();
            {
                let p = lock(&self.inner.pending);
                for i in lo..hi {
                    let e = p.get(&i).cloned();
                    if e.is_none() {
                        want.push(log_key(i));
                    }
                    slots.push(e);
                }
            }
            let mut got = self.db().multi_get(&want).map_err(read_logs)?.into_iter();
            for slot in slots {
                let e = match slot {
                    Some(e) => Some(e),
                    // An entry leaves `pending` only once its write is acknowledged, hence
                    // readable.
                    None => match got.next().flatten() {
                        Some(b) => Some(decode(&b).map_err(read_logs)?),
                        None => None,
                    },
                };
                // Absent: below the first entry of a log never purged.
                out.extend(e);
            }
            lo = hi;
        }
        Ok(out)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError<NodeId>> {
        let b = lock(&self.inner.bounds);
        Ok(LogState {
            last_purged_log_id: b.last_purged,
            last_log_id: b.last.or(b.last_purged),
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), StorageError<NodeId>> {
        let v = encode(vote).map_err(write_vote)?;
        self.db().put_async(VOTE, &v).await.map_err(write_vote)
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, StorageError<NodeId>> {
        match self.db().get(VOTE).map_err(read_vote)? {
            Some(b) => Ok(Some(decode(&b).map_err(read_vote)?)),
            None => Ok(None),
        }
    }

    async fn save_committed(
        &mut self,
        committed: Option<LogId<NodeId>>,
    ) -> Result<(), StorageError<NodeId>> {
        // openraft does not need it durable: queue the write and do not wait for its flush
        // (queued writes to one key land in order).
        let v = encode(&committed).map_err(write_logs)?;
        let w = self.db().put_async(COMMITTED, &v);
        tokio::spawn(async move {
            if let Err(e) = w.await {
                log::warn!("saving the committed log id: {e}");
            }
        });
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<NodeId>>, StorageError<NodeId>> {
        match self.db().get(COMMITTED).map_err(read_logs)? {
            Some(b) => Ok(decode(&b).map_err(read_logs)?),
            None => Ok(None),
        }
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError<NodeId>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut batch = WriteBatch::new();
        let mut ids = Vec::new();
        {
            let mut pending = lock(&self.inner.pending);
            for e in entries {
                batch.put(&log_key(e.log_id.index), &encode(&e).map_err(write_logs)?);
                ids.push(e.log_id);
                pending.insert(e.log_id.index, e);
            }
        }
        let Some(&last) = ids.last() else {
            callback.log_io_completed(Ok(()));
            return Ok(());
        };
        lock(&self.inner.bounds).last = Some(last);
        // Queued now, in call order; blobcask's group commit shares one flush between this
        // batch, the appends queued behind it and the state machine's writes.
        let write = self.db().write_batch_async(batch);
        let (tx, rx) = oneshot::channel();
        let prev = lock(&self.inner.last_ack).replace(rx);
        let inner = self.inner.clone();
        tokio::spawn(async move {
            let res = write.await;
            if let Some(prev) = prev {
                let _ = prev.await;
            }
            {
                let mut pending = lock(&inner.pending);
                for id in &ids {
                    if pending.get(&id.index).is_some_and(|e| e.log_id == *id) {
                        pending.remove(&id.index);
                    }
                }
            }
            callback.log_io_completed(res.map_err(std::io::Error::other));
            let _ = tx.send(());
        });
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        let (last, first) = {
            let b = lock(&self.inner.bounds);
            (b.last.map(|l| l.index), b.first_index())
        };
        let Some(last) = last else {
            return Ok(());
        };
        if log_id.index > last {
            return Ok(());
        }
        lock(&self.inner.pending).retain(|&i, _| i < log_id.index);
        self.delete_range(log_id.index, last).await?;
        let new_last = if log_id.index > first {
            self.entry_at(log_id.index - 1)?.map(|e| e.log_id)
        } else {
            None
        };
        let mut b = lock(&self.inner.bounds);
        b.last = new_last.or(b.last_purged);
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        let (first, last) = {
            let b = lock(&self.inner.bounds);
            (b.first_index(), b.last.map(|l| l.index))
        };
        // The purged id first: a crash amid the deletes leaves entries below it, which open
        // deletes.
        let v = encode(&log_id).map_err(write_logs)?;
        self.db().put_async(PURGED, &v).await.map_err(write_logs)?;
        {
            let mut b = lock(&self.inner.bounds);
            b.last_purged = Some(log_id);
            if b.last.is_none_or(|l| l.index < log_id.index) {
                b.last = Some(log_id);
            }
        }
        lock(&self.inner.pending).retain(|&i, _| i > log_id.index);
        let to = last.map_or(log_id.index, |l| l.min(log_id.index));
        if first <= to && last.is_some() {
            self.delete_range(first, to).await?;
        }
        Ok(())
    }
}
