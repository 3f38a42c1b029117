//! The read path: keydir, then memory (the page cache and the write-behind buffer), then the
//! device — one read per key, or one submission for many keys (`multi_get`).
//!
//! Reads run on the caller's thread. The keydir probe holds the shard's index lock for reading
//! only while it copies the location and clones the blob handle; merge deletes a blob only
//! after every reader has dropped its handle, so the read needs no retry.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use crate::blobstore::{Blob as _, BlobIo, BlobStore, IoChannel as _};
use crate::device::AlignedBuf;
use crate::error::{Error, Result};
use crate::keydir::hash_key;
use crate::record;
use crate::state::{record_len, BlobHandle, BlobRole, Core, ShardShared};

/// What a lookup found before any device I/O.
pub(crate) enum Lookup<S: BlobStore, T> {
    /// The key has no value.
    Absent,
    /// Served from memory.
    Done(T),
    /// The record must be read from the device.
    Read(PendingRead<S>),
}

/// A record to read from the device: whole pages `[start, end)` of its blob.
pub(crate) struct PendingRead<S: BlobStore> {
    shard: usize,
    handle: Arc<BlobHandle<S>>,
    offset: u64,
    start: u64,
    end: u64,
    /// Bytes of the blob from its start known to be log on the device when the read was
    /// planned: what the pages read may be cached as.
    log_end: u64,
}

impl<S: BlobStore> PendingRead<S> {
    fn buffer(&self) -> AlignedBuf {
        AlignedBuf::zeroed((self.end - self.start) as usize)
    }

    /// Decode the record from the pages read into `buf`, cache them, and run `f` on the value.
    fn finish<T>(
        &self,
        core: &Core<S>,
        key: &[u8],
        buf: &[u8],
        f: impl FnOnce(&[u8]) -> T,
    ) -> Result<T> {
        let h = &self.handle;
        let at = (self.offset - self.start) as usize;
        let rec = record::decode_for_read(&buf[at..], h.salt, key, h.id, self.offset)?;
        let out = f(rec.value);
        let cache = core.shards[self.shard].cache.as_ref();
        if let Some(c) = cache {
            let log = self.log_end.saturating_sub(self.start) as usize;
            c.insert_run(h.salt, self.start, buf, log);
        }
        Ok(out)
    }
}

/// Find `key`'s record and, when it is in memory, run `f` on its value.
pub(crate) fn lookup<S: BlobStore, T>(
    core: &Core<S>,
    key: &[u8],
    f: impl FnOnce(&[u8]) -> T,
) -> Result<Lookup<S, T>> {
    let hash = hash_key(key);
    let shard = core.shard_of_key(key, hash);
    let sh = &core.shards[shard];
    let Some(found) = probe(sh, key, hash)? else {
        return Ok(Lookup::Absent);
    };
    let salt = found.handle.salt;
    let (id, offset) = (found.handle.id, found.offset);
    if let Some(c) = &sh.cache {
        if let Some(bytes) = c.range(salt, found.offset, found.len) {
            sh.ctr.cache_hits.fetch_add(1, Ordering::Relaxed);
            let rec = record::decode_for_read(&bytes, salt, key, id, offset)?;
            return Ok(Lookup::Done(f(rec.value)));
        }
    }
    // The write-behind buffer holds the active blob's bytes from the page holding its device
    // end; pages below that page are final on the device.
    let log_floor = {
        let uw = sh.unwritten.read();
        if uw.salt == salt && found.offset >= uw.start {
            let at = (found.offset - uw.start) as usize;
            let rec =
                record::decode_for_read(uw.bytes.get(at..).unwrap_or(&[]), salt, key, id, offset)?;
            sh.ctr.cache_hits.fetch_add(1, Ordering::Relaxed);
            return Ok(Lookup::Done(f(rec.value)));
        }
        let end = found.offset + found.len;
        if uw.salt == salt && end > uw.start {
            // The record runs from the last whole page (cached as written) into the buffer.
            let head = sh
                .cache
                .as_ref()
                .and_then(|c| c.range(salt, found.offset, uw.start - found.offset));
            let tail = uw.bytes.get(..(end - uw.start) as usize);
            if let (Some(head), Some(tail)) = (head, tail) {
                let joined = [&head[..], tail].concat();
                let rec = record::decode_for_read(&joined, salt, key, id, offset)?;
                sh.ctr.cache_hits.fetch_add(1, Ordering::Relaxed);
                return Ok(Lookup::Done(f(rec.value)));
            }
        }
        if uw.salt == salt {
            uw.start
        } else {
            0
        }
    };
    sh.ctr.cache_misses.fetch_add(1, Ordering::Relaxed);
    let page = core.cfg.page;
    let blob_bytes = found.handle.blob.num_io_units() * core.cfg.io_unit;
    let start = found.offset / page * page;
    let end = (found.offset + found.len).div_ceil(page) * page;
    let end = end.min(blob_bytes);
    if end < found.offset + found.len {
        return Err(Error::Corruption {
            blob: found.handle.id,
            offset: found.offset,
            detail: "record lies past the end of its blob".into(),
        });
    }
    let log_end = found
        .sealed_len
        .unwrap_or(0)
        .max(log_floor)
        .max(found.offset + found.len);
    Ok(Lookup::Read(PendingRead {
        shard,
        handle: found.handle,
        offset: found.offset,
        start,
        end,
        log_end,
    }))
}

/// A keydir hit: the record's blob and place.
struct Found<S: BlobStore> {
    handle: Arc<BlobHandle<S>>,
    offset: u64,
    len: u64,
    /// The blob's log length when it is sealed (final).
    sealed_len: Option<u64>,
}

fn probe<S: BlobStore>(sh: &ShardShared<S>, key: &[u8], hash: u64) -> Result<Option<Found<S>>> {
    let ix = sh.index.read();
    let Some(loc) = ix.keydir.get(key, hash) else {
        return Ok(None);
    };
    let Some(e) = ix.blobs.get(usize::from(loc.blob)).and_then(Option::as_ref) else {
        return Err(Error::Corruption {
            blob: 0,
            offset: u64::from(loc.offset),
            detail: format!("keydir points at missing blob slot {}", loc.blob),
        });
    };
    Ok(Some(Found {
        handle: e.handle.clone(),
        offset: u64::from(loc.offset),
        len: record_len(key.len(), loc),
        sealed_len: (e.role == BlobRole::Sealed).then_some(e.written),
    }))
}

/// `key`'s value, with `f` run on it.
pub(crate) fn get_with<S: BlobStore, T>(
    core: &Core<S>,
    key: &[u8],
    f: impl FnOnce(&[u8]) -> T,
) -> Result<Option<T>> {
    let mut f = Some(f);
    let pending = match lookup(core, key, |v| f.take().map(|f| f(v)))? {
        Lookup::Absent => return Ok(None),
        Lookup::Done(v) => return Ok(v),
        Lookup::Read(p) => p,
    };
    let Some(f) = f else { return Ok(None) };
    let mut buf = pending.buffer();
    core.with_channel(|ch| {
        let iou = core.cfg.io_unit;
        Ok(core
            .store
            .block_on(ch.read(&pending.handle.blob, pending.start / iou, &mut buf))?)
    })?;
    pending.finish(core, key, &buf, f).map(Some)
}

/// `key`'s value without blocking the calling thread on the device: a store that
/// [drives itself](BlobStore::drives_itself) queues the read (on the file device's reactor)
/// and the future completes when it does; others read in place.
pub(crate) async fn get_async<S: BlobStore>(core: &Core<S>, key: &[u8]) -> Result<Option<Vec<u8>>> {
    if !core.store.drives_itself() {
        return get_with(core, key, <[u8]>::to_vec);
    }
    let pending = match lookup(core, key, <[u8]>::to_vec)? {
        Lookup::Absent => return Ok(None),
        Lookup::Done(v) => return Ok(Some(v)),
        Lookup::Read(p) => p,
    };
    let ch = core.take_channel()?;
    let iou = core.cfg.io_unit;
    let (buf, res) = ch
        .read_owned(&pending.handle.blob, pending.start / iou, pending.buffer())
        .await;
    core.return_channel(ch);
    res?;
    pending.finish(core, key, &buf, <[u8]>::to_vec).map(Some)
}

/// The values of `keys`, in order: what memory holds first, then every device read in one
/// submission.
pub(crate) fn multi_get<S: BlobStore, K: AsRef<[u8]>>(
    core: &Core<S>,
    keys: &[K],
) -> Result<Vec<Option<Vec<u8>>>> {
    let mut out = Vec::with_capacity(keys.len());
    let mut reads: Vec<(usize, PendingRead<S>)> = Vec::new();
    for (i, k) in keys.iter().enumerate() {
        match lookup(core, k.as_ref(), <[u8]>::to_vec)? {
            Lookup::Absent => out.push(None),
            Lookup::Done(v) => out.push(Some(v)),
            Lookup::Read(p) => {
                out.push(None);
                reads.push((i, p));
            }
        }
    }
    if reads.is_empty() {
        return Ok(out);
    }
    let mut bufs: Vec<AlignedBuf> = reads.iter().map(|(_, p)| p.buffer()).collect();
    let iou = core.cfg.io_unit;
    core.with_channel(|ch| {
        let mut ios: Vec<BlobIo<'_, S::Blob>> = reads
            .iter()
            .zip(bufs.iter_mut())
            .map(|((_, p), buf)| BlobIo::Read {
                blob: &p.handle.blob,
                offset: p.start / iou,
                buf: &mut buf[..],
            })
            .collect();
        Ok(core.store.block_on(ch.submit(&mut ios))?)
    })?;
    for ((i, p), buf) in reads.iter().zip(&bufs) {
        out[*i] = Some(p.finish(core, keys[*i].as_ref(), buf, <[u8]>::to_vec)?);
    }
    Ok(out)
}
