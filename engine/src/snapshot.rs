//! Writing hint-format blobs: a merge output's hint and the close-time keydir snapshot of a
//! shard (the format is in `hint.rs`).

use std::sync::atomic::Ordering;

use crate::blobs::{create_blob, ROLE_HINT, ROLE_SNAPSHOT, X_FOR, X_ROLE, X_SEQ, X_SHARD};
use crate::blobstore::{BlobId, BlobStore, IoChannel as _};
use crate::device::AlignedBuf;
use crate::error::{Error, Result};
use crate::hint;
use crate::state::Core;

/// Create a hint-like blob (`role` hint or snapshot) holding `bytes`; returns its id.
pub(crate) fn write_hint_blob<S: BlobStore>(
    core: &Core<S>,
    ch: &S::Channel,
    shard: usize,
    role: &[u8],
    seq: u64,
    for_seq: u64,
    bytes: &[u8],
) -> Result<BlobId> {
    let store = &core.store;
    let clusters = (bytes.len() as u64).div_ceil(core.cfg.cluster).max(1);
    let mut xattrs = vec![
        (X_ROLE.to_string(), role.to_vec()),
        (X_SHARD.to_string(), (shard as u32).to_le_bytes().to_vec()),
        (X_SEQ.to_string(), seq.to_le_bytes().to_vec()),
    ];
    if role == ROLE_HINT {
        xattrs.push((X_FOR.to_string(), for_seq.to_le_bytes().to_vec()));
    }
    let id = create_blob(store, clusters, xattrs)?;
    let blob = store.block_on(store.open(id))?;
    let iou = core.cfg.io_unit;
    let res = (|| {
        let mut off = 0usize;
        while off < bytes.len() {
            let n = (bytes.len() - off).min(4 << 20);
            let buf = AlignedBuf::from_slice(&bytes[off..off + n]);
            store.block_on(ch.write(&blob, off as u64 / iou, &buf))?;
            off += n;
        }
        core.shards[shard]
            .ctr
            .device_bytes
            .fetch_add(bytes.len() as u64, Ordering::Relaxed);
        store.block_on(ch.flush()).map_err(Error::from)
    })();
    store.block_on(store.close(blob))?;
    if res.is_err() {
        let _ = store.block_on(store.delete(id));
    }
    res.map(|()| id)
}

/// Close-time keydir snapshot of `shard`; replaces older snapshots.
pub(crate) fn write_snapshot<S: BlobStore>(
    core: &Core<S>,
    shard: usize,
    ch: &S::Channel,
    max_seq: u64,
) -> Result<()> {
    let sh = &core.shards[shard];
    let _m = sh.merge_lock.lock();
    let seq = sh.next_blob_seq.fetch_add(1, Ordering::SeqCst);
    let bytes = {
        let ix = sh.index.read();
        let mut seq_of = vec![0u64; ix.blobs.len()];
        let mut list = Vec::new();
        for (i, e) in ix.blobs.iter().enumerate() {
            if let Some(e) = e {
                seq_of[i] = e.handle.seq;
                list.push((e.handle.seq, e.written));
            }
        }
        let mut w = hint::Writer::new(seq, &list);
        for (k, l) in ix.keydir.iter() {
            w.push(seq_of[usize::from(l.blob)], 0, l.offset, l.value_len, k);
        }
        w.note_seq(max_seq);
        w.finish(core.cfg.page as usize)
    };
    // A snapshot only speeds up open; the reserve is what lets deletes and merge run on a full
    // store, and a snapshot grows with the key count, so it never takes the reserve.
    let need = (bytes.len() as u64).div_ceil(core.cfg.cluster).max(1);
    if core.store.free_clusters() < need + core.cfg.merge_reserve {
        return Err(Error::Full);
    }
    let id = write_hint_blob(core, ch, shard, ROLE_SNAPSHOT, seq, 0, &bytes)?;
    let old: Vec<BlobId> = std::mem::replace(&mut *sh.snapshots.lock(), vec![id]);
    for o in old {
        core.store.block_on(core.store.delete(o))?;
    }
    Ok(())
}
