//! Reading engine blobs back: a data blob's log as a [`scan::Source`], a whole hint blob
//! (merge hint or keydir snapshot), and the validated scan merge runs over its inputs.

use crate::blobs::{le_u64, X_LEN, X_MERGE};
use crate::blobstore::{Blob as _, BlobStore, IoChannel as _};
use crate::device::AlignedBuf;
use crate::error::{Error, Result};
use crate::hint;
use crate::options::RecoveryMode;
use crate::record;
use crate::scan::{self, Evidence};
use crate::state::{BlobHandle, Config};

/// A blob's bytes for [`scan::scan_log`], read through `ch`.
pub(crate) fn blob_source<'a, S: BlobStore>(
    store: &'a S,
    cfg: &Config,
    ch: &'a S::Channel,
    blob: &'a S::Blob,
) -> scan::Source<'a> {
    let iou = cfg.io_unit;
    scan::Source::new(blob.num_io_units() * iou, iou, move |off, len| {
        let mut chunk = AlignedBuf::zeroed(len as usize);
        store.block_on(ch.read(blob, off / iou, &mut chunk))?;
        Ok(chunk[..].to_vec())
    })
}

/// Read a whole hint blob (its header checked; `hint::decode_ref` verifies the rest).
pub(crate) fn read_hint<S: BlobStore>(
    store: &S,
    cfg: &Config,
    ch: &S::Channel,
    blob: &S::Blob,
) -> Result<AlignedBuf> {
    let iou = cfg.io_unit;
    let size = blob.num_io_units() * iou;
    let first = cfg.page.min(size);
    if first == 0 {
        return Err(Error::corrupt_md(0, "empty hint blob"));
    }
    let mut head = AlignedBuf::zeroed(first as usize);
    store.block_on(ch.read(blob, 0, &mut head))?;
    let h = hint::parse_header(&head, blob.id())?;
    let total = h.total_len().div_ceil(iou) * iou;
    if total > size {
        return Err(Error::corrupt_md(0, "hint longer than its blob"));
    }
    let mut buf = AlignedBuf::zeroed(total as usize);
    let mut off = 0u64;
    while off < total {
        let n = (total - off).min(4 << 20);
        store.block_on(ch.read(blob, off / iou, &mut buf[off as usize..(off + n) as usize]))?;
        off += n;
    }
    Ok(buf)
}

/// Scan a data blob's log for merge, calling `f(offset, record)` for each record; returns the
/// log's end. `written` is the log length the keydir knows (all of it was valid when open or
/// the shard established it). Damage (see `scan.rs`) is an error: a merge must never drop the
/// records behind it and then delete the blob that held them.
pub(crate) fn scan_blob<S: BlobStore>(
    store: &S,
    cfg: &Config,
    ch: &S::Channel,
    handle: &BlobHandle<S>,
    written: u64,
    f: impl FnMut(u64, record::Record<'_>),
) -> Result<u64> {
    let (blob, salt) = (&handle.blob, handle.salt);
    let x = |name: &str| store.block_on(store.get_xattr(blob, name));
    let ev = Evidence::of_blob(
        le_u64(&x(X_LEN)?).unwrap_or(0),
        x(X_MERGE)?.as_deref(),
        written,
    );
    let mut src = blob_source(store, cfg, ch, blob);
    let found = scan::scan_log(&mut src, salt, ev, RecoveryMode::TolerateTornTail, f)?;
    if let Some(d) = found.damaged.first() {
        return Err(Error::Corruption {
            blob: blob.id(),
            offset: d.offset,
            detail: format!("{} bytes of durable log fail validation", d.len),
        });
    }
    Ok(found.end)
}
