//! Streaming iteration over the live pairs: each shard's keydir locations are copied when the
//! iterator reaches the shard, sorted by blob and offset, and read back in large sequential
//! I/Os (several windows in one submission) instead of one random read per record.
//!
//! What an iterator promises (the pairs come in log order, not key order):
//! - every key that is live from the iterator's start to its end is yielded exactly once;
//! - a value yielded is one the key held at some point during the iteration (the one of the
//!   shard's snapshot, or, for a record merge moved meanwhile, the key's value when the move
//!   was noticed);
//! - a key written or deleted after its shard's snapshot may or may not be seen.
//!
//! Blobs are not pinned: the cursor keeps a weak reference per blob and holds a strong one
//! only for the duration of a read, as a point read does, so merge is never held up by an
//! idle iterator. When a blob has gone (merged and deleted), its remaining records are found
//! again through the keydir by key hash and read where they live now.

use std::collections::{HashSet, VecDeque};
use std::ops::Bound;
use std::sync::{Arc, Weak};

use crate::blobstore::{Blob as _, BlobIo, BlobStore, IoChannel as _};
use crate::device::AlignedBuf;
use crate::error::{Error, Result};
use crate::keydir::hash_key;
use crate::options::RESERVED_PREFIX;
use crate::record::{self, Kind};
use crate::state::{record_len, BlobHandle, Core};

/// Largest window read in one I/O (a record longer than this gets a window of its own).
const WINDOW: u64 = 1 << 20;
/// Bytes read per refill, across windows submitted together.
const BATCH: u64 = 4 << 20;
/// Dead bytes between two live records that are read through rather than starting a new I/O.
const GAP: u64 = 128 << 10;

/// Which keys an iterator yields.
#[derive(Debug, Clone, Default)]
pub(crate) struct Select {
    pub prefix: Vec<u8>,
    pub from: Option<(Vec<u8>, bool)>,
    pub to: Option<(Vec<u8>, bool)>,
}

impl Select {
    pub fn range(from: Bound<&[u8]>, to: Bound<&[u8]>) -> Self {
        let conv = |b: Bound<&[u8]>| match b {
            Bound::Included(k) => Some((k.to_vec(), true)),
            Bound::Excluded(k) => Some((k.to_vec(), false)),
            Bound::Unbounded => None,
        };
        Select {
            prefix: Vec::new(),
            from: conv(from),
            to: conv(to),
        }
    }

    /// Every key matches.
    fn is_all(&self) -> bool {
        self.prefix.is_empty() && self.from.is_none() && self.to.is_none()
    }

    /// The engine's own keys (the chunk store's metadata) match only a selection by a prefix
    /// that starts with the reserved one: user iteration never sees them.
    pub fn matches(&self, key: &[u8]) -> bool {
        if !key.starts_with(&self.prefix) {
            return false;
        }
        if key.starts_with(RESERVED_PREFIX) && !self.prefix.starts_with(RESERVED_PREFIX) {
            return false;
        }
        if let Some((f, incl)) = &self.from {
            if key < f.as_slice() || (!incl && key == f.as_slice()) {
                return false;
            }
        }
        if let Some((t, incl)) = &self.to {
            if key > t.as_slice() || (!incl && key == t.as_slice()) {
                return false;
            }
        }
        true
    }
}

/// A record to read: where it is, and the key hash that finds it again after a merge.
#[derive(Clone, Copy)]
struct Entry {
    hash: u64,
    /// Index into [`Cursor::blobs`].
    blob: u32,
    offset: u32,
    len: u32,
}

impl Entry {
    /// Sort key: blob, then offset.
    fn place(&self) -> u64 {
        (u64::from(self.blob) << 32) | u64::from(self.offset)
    }
}

/// A decoded item: a pair inside `bufs[buf]` (key at `key..value`, value at `value..end`),
/// or an error.
enum Ready {
    Pair {
        buf: u32,
        key: u32,
        value: u32,
        end: u32,
    },
    Err(Error),
}

/// A blob the current shard's snapshot points into.
struct SnapBlob<S: BlobStore> {
    handle: Weak<BlobHandle<S>>,
}

/// A window: bytes `[start, end)` of one blob covering `entries`.
struct Window {
    start: u64,
    end: u64,
    entries: std::ops::Range<usize>,
}

/// The iteration state; [`crate::Iter`] drives it with the store's core.
pub(crate) struct Cursor<S: BlobStore> {
    sel: Select,
    /// Next shard to snapshot.
    shard: usize,
    /// Shard the current `todo` belongs to.
    cur: usize,
    blobs: Vec<SnapBlob<S>>,
    todo: Vec<Entry>,
    pos: usize,
    ready: VecDeque<Ready>,
    /// The windows of the last refill, which `ready` points into.
    bufs: Vec<AlignedBuf>,
    /// Window buffers of `WINDOW` bytes, reused across refills.
    pool: Vec<AlignedBuf>,
    /// An error ended the iteration.
    done: bool,
}

impl<S: BlobStore> Cursor<S> {
    pub fn new(sel: Select) -> Self {
        Cursor {
            sel,
            shard: 0,
            cur: 0,
            blobs: Vec::new(),
            todo: Vec::new(),
            pos: 0,
            ready: VecDeque::new(),
            bufs: Vec::new(),
            pool: Vec::new(),
            done: false,
        }
    }

    /// The next pair, or `None` at the end. An error is yielded for the records it concerns;
    /// iteration goes on with the others. The pair borrows the cursor's buffers.
    pub fn next_ref(&mut self, core: &Core<S>) -> Option<Result<(&[u8], &[u8])>> {
        loop {
            match self.ready.pop_front() {
                Some(Ready::Pair {
                    buf,
                    key,
                    value,
                    end,
                }) => {
                    let b = &self.bufs[buf as usize];
                    return Some(Ok((
                        &b[key as usize..value as usize],
                        &b[value as usize..end as usize],
                    )));
                }
                Some(Ready::Err(e)) => return Some(Err(e)),
                None => {}
            }
            if self.done {
                return None;
            }
            if core.is_closed() {
                return self.finish(Error::Closed);
            }
            if self.pos == self.todo.len() {
                if self.shard == core.shards.len() {
                    return None;
                }
                self.snapshot(core);
                continue;
            }
            if let Err(e) = self.refill(core) {
                return self.finish(e);
            }
        }
    }

    /// End the iteration with `e`.
    fn finish<T>(&mut self, e: Error) -> Option<Result<T>> {
        self.done = true;
        self.todo.clear();
        self.pos = 0;
        Some(Err(e))
    }

    /// Copy the next shard's matching locations, sorted by blob and offset.
    fn snapshot(&mut self, core: &Core<S>) {
        let s = self.shard;
        self.shard += 1;
        self.cur = s;
        self.blobs.clear();
        self.todo.clear();
        self.pos = 0;
        let all = self.sel.is_all();
        let sel = &self.sel;
        collect(core, s, &mut self.blobs, &mut self.todo, |key| {
            ((all && !key.starts_with(RESERVED_PREFIX)) || sel.matches(key)).then(|| hash_key(key))
        });
        self.todo.sort_unstable_by_key(Entry::place);
    }

    /// Read the next windows and decode their records into `ready`.
    fn refill(&mut self, core: &Core<S>) -> Result<()> {
        let page = core.cfg.page;
        let mut windows: Vec<Window> = Vec::new();
        let mut handles: Vec<Arc<BlobHandle<S>>> = Vec::new();
        let mut total = 0u64;
        let mut i = self.pos;
        while i < self.todo.len() && total < BATCH {
            let first = self.todo[i];
            let handle = match self.blobs[first.blob as usize].handle.upgrade() {
                Some(h) => h,
                None => {
                    // Merged away since the snapshot: find its records where they live now.
                    self.relocate(core, i);
                    continue;
                }
            };
            let blob_bytes = handle.blob.num_io_units() * core.cfg.io_unit;
            let start = u64::from(first.offset) / page * page;
            let mut end = u64::from(first.offset) + u64::from(first.len);
            let mut j = i + 1;
            while let Some(e) = self.todo.get(j) {
                let e_end = u64::from(e.offset) + u64::from(e.len);
                if e.blob != first.blob
                    || e_end - start > WINDOW
                    || u64::from(e.offset).saturating_sub(end) > GAP
                {
                    break;
                }
                end = e_end;
                j += 1;
            }
            let end_aligned = end.div_ceil(page) * page;
            let end_aligned = end_aligned.min(blob_bytes);
            if end_aligned < end {
                let e = Error::Corruption {
                    blob: handle.id,
                    offset: u64::from(first.offset),
                    detail: "record lies past the end of its blob".into(),
                };
                self.ready.push_back(Ready::Err(e));
                self.pos = j;
                i = j;
                continue;
            }
            total += end_aligned - start;
            windows.push(Window {
                start,
                end: end_aligned,
                entries: i..j,
            });
            handles.push(handle);
            i = j;
        }
        self.pos = i;
        if windows.is_empty() {
            return Ok(());
        }
        for b in self.bufs.drain(..) {
            if b.len() == WINDOW as usize {
                self.pool.push(b);
            }
        }
        let mut bufs: Vec<AlignedBuf> = windows
            .iter()
            .map(|w| {
                let len = w.end - w.start;
                match self.pool.pop() {
                    Some(b) if len <= WINDOW => b,
                    _ if len <= WINDOW => AlignedBuf::zeroed(WINDOW as usize),
                    _ => AlignedBuf::zeroed(len as usize),
                }
            })
            .collect();
        // The write-behind buffer first: bytes it no longer holds are on the device by then.
        let sh = &core.shards[self.cur];
        let mut dev_end: Vec<u64> = windows.iter().map(|w| w.end).collect();
        {
            let uw = sh.unwritten.read();
            for ((w, h), (buf, de)) in windows
                .iter()
                .zip(&handles)
                .zip(bufs.iter_mut().zip(dev_end.iter_mut()))
            {
                if uw.salt != h.salt || w.end <= uw.start {
                    continue;
                }
                let from = w.start.max(uw.start);
                let have = uw.start + uw.bytes.len() as u64;
                let to = w.end.min(have);
                if to > from {
                    let src = &uw.bytes[(from - uw.start) as usize..(to - uw.start) as usize];
                    buf[(from - w.start) as usize..(to - w.start) as usize].copy_from_slice(src);
                }
                *de = from;
            }
        }
        let iou = core.cfg.io_unit;
        core.with_channel(|ch| {
            let mut ios: Vec<BlobIo<'_, S::Blob>> = Vec::with_capacity(windows.len());
            for ((w, h), (buf, de)) in windows
                .iter()
                .zip(&handles)
                .zip(bufs.iter_mut().zip(&dev_end))
            {
                if *de > w.start {
                    ios.push(BlobIo::Read {
                        blob: &h.blob,
                        offset: w.start / iou,
                        buf: &mut buf[..(*de - w.start) as usize],
                    });
                }
            }
            if ios.is_empty() {
                return Ok(());
            }
            Ok(core.store.block_on(ch.submit(&mut ios))?)
        })?;
        for (bi, ((w, h), buf)) in windows.iter().zip(&handles).zip(&bufs).enumerate() {
            for e in &self.todo[w.entries.clone()] {
                let at = (u64::from(e.offset) - w.start) as usize;
                let bytes = &buf[at..at + e.len as usize];
                let corrupt = |detail: &str| {
                    Ready::Err(Error::Corruption {
                        blob: h.id,
                        offset: u64::from(e.offset),
                        detail: detail.to_string(),
                    })
                };
                self.ready.push_back(match record::decode(bytes, h.salt) {
                    None => corrupt("record fails its crc"),
                    Some(r) if r.header.kind() != Kind::Put => {
                        corrupt("keydir points at a record without a value")
                    }
                    Some(r) => {
                        // Where the decoded slices lie in the window.
                        let base = buf.as_ptr() as usize;
                        let key = r.key.as_ptr() as usize - base;
                        let value = r.value.as_ptr() as usize - base;
                        Ready::Pair {
                            buf: bi as u32,
                            key: key as u32,
                            value: value as u32,
                            end: (value + r.value.len()) as u32,
                        }
                    }
                });
            }
        }
        self.bufs = bufs;
        Ok(())
    }

    /// The blob of `todo[at]` is gone: replace the remaining entries of every blob gone by
    /// now with the current locations of the same keys, found by hash in one pass over the
    /// shard's keydir.
    fn relocate(&mut self, core: &Core<S>, at: usize) {
        let mut gone = vec![false; self.blobs.len()];
        for (g, b) in gone.iter_mut().zip(&self.blobs) {
            *g = b.handle.strong_count() == 0;
        }
        let (lost, mut kept): (Vec<Entry>, Vec<Entry>) =
            self.todo[at..].iter().partition(|e| gone[e.blob as usize]);
        let hashes: HashSet<u64> = lost.iter().map(|e| e.hash).collect();
        let sel = &self.sel;
        collect(core, self.cur, &mut self.blobs, &mut kept, |key| {
            let hash = hash_key(key);
            (hashes.contains(&hash) && sel.matches(key)).then_some(hash)
        });
        kept.sort_unstable_by_key(Entry::place);
        self.todo.truncate(at);
        self.todo.extend(kept);
    }
}

/// Append to `out` the current location of every key of `shard` that `keep`
/// accepts (it returns the key's hash), registering in `blobs` the blobs they point into. One pass
/// under the shard's index read lock.
fn collect<S: BlobStore>(
    core: &Core<S>,
    shard: usize,
    blobs: &mut Vec<SnapBlob<S>>,
    out: &mut Vec<Entry>,
    keep: impl Fn(&[u8]) -> Option<u64>,
) {
    let ix = core.shards[shard].index.read();
    // Blob table slot -> index into `blobs` (u32::MAX: not registered by this pass).
    let mut slot_to_idx: Vec<u32> = vec![u32::MAX; ix.blobs.len()];
    for (key, loc) in ix.keydir.iter() {
        let Some(hash) = keep(key) else { continue };
        let Some(e) = ix.blobs.get(usize::from(loc.blob)).and_then(Option::as_ref) else {
            continue;
        };
        let idx = &mut slot_to_idx[usize::from(loc.blob)];
        if *idx == u32::MAX {
            blobs.push(SnapBlob {
                handle: Arc::downgrade(&e.handle),
            });
            *idx = (blobs.len() - 1) as u32;
        }
        out.push(Entry {
            hash,
            blob: *idx,
            offset: loc.offset,
            len: record_len(key.len(), loc) as u32,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn select_applies_prefix_and_bounds() {
        let all = Select::default();
        assert!(all.matches(b""));
        assert!(all.matches(b"anything"));

        let p = Select {
            prefix: b"user:".to_vec(),
            ..Select::default()
        };
        assert!(p.matches(b"user:1"));
        assert!(p.matches(b"user:"));
        assert!(!p.matches(b"user"));
        assert!(!p.matches(b"item:1"));

        let r = Select::range(Bound::Included(b"b"), Bound::Excluded(b"d"));
        assert!(!r.matches(b"a"));
        assert!(r.matches(b"b"));
        assert!(r.matches(b"c\xff"));
        assert!(!r.matches(b"d"));
        let r = Select::range(Bound::Excluded(b"b"), Bound::Included(b"d"));
        assert!(!r.matches(b"b"));
        assert!(r.matches(b"b\0"));
        assert!(r.matches(b"d"));
        assert!(!r.matches(b"d\0"));
        assert!(!all.matches(b"\xff\xffck\x01"));
        assert!(!Select::range(Bound::Unbounded, Bound::Unbounded).matches(b"\xff\xffck"));
        let own = Select {
            prefix: RESERVED_PREFIX.to_vec(),
            ..Select::default()
        };
        assert!(own.matches(b"\xff\xffck\x01"));
    }
}
