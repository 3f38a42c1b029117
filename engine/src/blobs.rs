//! The engine's blobs as the blobstore holds them: the xattrs that name each blob's role,
//! shard and sequence, creating a blob, reading a blob's xattrs back ([`Meta`]), and writing the
//! catalog blob that lists them all (its format is in `catalog.rs`).
//!
//! `engine/FORMAT.md` ("Blobs and their xattrs") has the table of every xattr and its encoding.

use crate::blobstore::{Blob as _, BlobId, BlobStore, CreateOpts, IoChannel as _};
use crate::catalog;
use crate::device::AlignedBuf;
use crate::error::{Error, Result};

pub(crate) const X_ROLE: &str = "bc.role";
pub(crate) const X_SHARD: &str = "bc.shard";
pub(crate) const X_SEQ: &str = "bc.seq";
pub(crate) const X_SALT: &str = "bc.salt";
pub(crate) const X_MERGE: &str = "bc.merge";
pub(crate) const X_INPUTS: &str = "bc.inputs";
pub(crate) const X_FOR: &str = "bc.for";
pub(crate) const X_LEN: &str = "bc.len";
pub(crate) const X_FORMAT: &str = "bc.format";
pub(crate) const X_SHARDS: &str = "bc.shards";
pub(crate) const X_EPOCH: &str = "bc.epoch";
pub(crate) const X_TOTALS: &str = "bc.totals";
/// On a checkpoint's snapshot blob: the checkpoint's name (see `checkpoint.rs`).
pub(crate) const X_CKPT: &str = "bc.ckpt";
/// On a checkpoint's snapshot blob: the original's `bc.role`.
pub(crate) const X_CKPT_ROLE: &str = "bc.ckpt.role";
pub(crate) const FORMAT_VERSION: u32 = 2;

pub(crate) const ROLE_DATA: &[u8] = b"data";
pub(crate) const ROLE_HINT: &[u8] = b"hint";
pub(crate) const ROLE_SNAPSHOT: &[u8] = b"snapshot";
/// A chunk store's data blob (`chunk/`): the engine's recovery, merge and catalog leave it
/// alone; checkpoints snapshot it with the engine's blobs.
pub(crate) const ROLE_CHUNK: &[u8] = b"chunk";
pub(crate) const ROLE_SUPER: &[u8] = b"super";

/// Record the counters of every run so far in the super blob (`bc.totals`): at each clean
/// close and after each merge (from the merge worker, the only writer of it while the store
/// runs). Nothing to do before the super blob exists.
pub(crate) fn write_totals<S: BlobStore>(store: &S, totals: &crate::state::Totals) -> Result<()> {
    let Some(id) = store.super_blob() else {
        return Ok(());
    };
    let blob = store.block_on(store.open(id))?;
    let res = store
        .block_on(store.set_xattr(&blob, X_TOTALS, &totals.encode()))
        .and_then(|()| store.block_on(store.sync_md(&blob)));
    store.block_on(store.close(blob))?;
    Ok(res?)
}

/// Create an engine blob: run-length extents in the root page (see [`data_xattrs`]).
pub(crate) fn create_blob<S: BlobStore>(
    store: &S,
    clusters: u64,
    xattrs: Vec<(String, Vec<u8>)>,
) -> Result<BlobId> {
    Ok(store.block_on(store.create(CreateOpts {
        num_clusters: clusters,
        xattrs,
        use_extent_table: false,
        ..CreateOpts::default()
    }))?)
}

/// Xattrs of a new data blob.
/// Engine blobs use run-length extents in the root page (`use_extent_table: false`): one md
/// page per blob instead of two, which matters on small stores where md pages run out first.
pub(crate) fn data_xattrs(shard: usize, seq: u64, salt: u64) -> Vec<(String, Vec<u8>)> {
    vec![
        (X_ROLE.into(), ROLE_DATA.to_vec()),
        (X_SHARD.into(), (shard as u32).to_le_bytes().to_vec()),
        (X_SEQ.into(), seq.to_le_bytes().to_vec()),
        (X_SALT.into(), salt.to_le_bytes().to_vec()),
    ]
}

pub(crate) fn le_u64(v: &Option<Vec<u8>>) -> Option<u64> {
    v.as_deref()
        .and_then(|b| b.try_into().ok())
        .map(u64::from_le_bytes)
}

pub(crate) fn le_u32(v: &Option<Vec<u8>>) -> Option<u32> {
    v.as_deref()
        .and_then(|b| b.try_into().ok())
        .map(u32::from_le_bytes)
}

/// What the xattrs say about one blob.
pub(crate) struct Meta<S: BlobStore> {
    pub id: BlobId,
    pub blob: S::Blob,
    pub role: Vec<u8>,
    pub shard: usize,
    pub seq: u64,
    pub salt: u64,
    pub merge: Option<Vec<u8>>,
    pub inputs: Vec<u64>,
    pub for_seq: u64,
    /// `bc.len`: the log length recorded when the blob was sealed (0 if never).
    pub len: u64,
}

/// An open blob's role: its `bc.role` on the live store; in a checkpoint (`in_view`), the
/// `bc.ckpt.role` of a checkpoint snapshot blob (`None` for any other blob).
pub(crate) fn role_of<S: BlobStore>(
    store: &S,
    blob: &S::Blob,
    in_view: bool,
) -> Result<Option<Vec<u8>>> {
    if !in_view {
        return Ok(store.block_on(store.get_xattr(blob, X_ROLE))?);
    }
    Ok(match store.block_on(store.get_xattr(blob, X_CKPT))? {
        Some(_) => store.block_on(store.get_xattr(blob, X_CKPT_ROLE))?,
        None => None,
    })
}

/// `view`: `None` reads the live store (blobs with `bc.role`); `Some(ids)` reads a
/// checkpoint: only its snapshot blobs `ids` (as its marker lists them), whose role is in
/// `bc.ckpt.role` (see `checkpoint.rs`).
pub(crate) fn read_meta<S: BlobStore>(
    store: &S,
    id: BlobId,
    view: Option<&[BlobId]>,
) -> Result<Option<Meta<S>>> {
    if view.is_some_and(|ids| !ids.contains(&id)) {
        return Ok(None);
    }
    let blob = match store.block_on(store.open(id)).map_err(Error::from) {
        Ok(b) => b,
        // Enumerated but no root page of its own: a stray blob-id mask bit (a leak that
        // `check` reports), not a blob that holds anything.
        Err(Error::NotFound(why)) => {
            log::warn!("blobcask: skipping blob {id:#x}: {why}");
            return Ok(None);
        }
        Err(e) => return Err(e),
    };
    let Some(role) = role_of(store, &blob, view.is_some())? else {
        store.block_on(store.close(blob))?;
        return Ok(None);
    };
    let x = |name: &str| store.block_on(store.get_xattr(&blob, name));
    let shard = le_u32(&x(X_SHARD)?).unwrap_or(u32::MAX) as usize;
    let seq = le_u64(&x(X_SEQ)?).unwrap_or(0);
    let salt = le_u64(&x(X_SALT)?).unwrap_or(0);
    let merge = x(X_MERGE)?;
    let inputs = x(X_INPUTS)?
        .unwrap_or_default()
        .chunks_exact(8)
        .filter_map(|c| c.try_into().ok().map(u64::from_le_bytes))
        .collect();
    let for_seq = le_u64(&x(X_FOR)?).unwrap_or(0);
    let len = le_u64(&x(X_LEN)?).unwrap_or(0);
    Ok(Some(Meta {
        id,
        blob,
        role,
        shard,
        seq,
        salt,
        merge,
        inputs,
        for_seq,
        len,
    }))
}

pub(crate) fn close_and_delete<S: BlobStore>(store: &S, blob: S::Blob) -> Result<()> {
    let id = blob.id();
    store.block_on(store.close(blob))?;
    Ok(store.block_on(store.delete(id))?)
}

/// One catalog entry from an open blob's xattrs (`None`: not an engine data/hint/snapshot).
fn catalog_entry<S: BlobStore>(
    store: &S,
    id: BlobId,
    blob: &S::Blob,
) -> Result<Option<catalog::Entry>> {
    let x = |n: &str| store.block_on(store.get_xattr(blob, n));
    let Some(role) = x(X_ROLE)?.as_deref().and_then(catalog::Role::from_xattr) else {
        return Ok(None);
    };
    let merge = match x(X_MERGE)?.as_deref() {
        Some(b"pending") => 1,
        Some(b"done") => 2,
        _ => 0,
    };
    Ok(Some(catalog::Entry {
        blob_id: id,
        role,
        merge,
        shard: le_u32(&x(X_SHARD)?).unwrap_or(u32::MAX),
        seq: le_u64(&x(X_SEQ)?).unwrap_or(0),
        salt: le_u64(&x(X_SALT)?).unwrap_or(0),
        for_seq: le_u64(&x(X_FOR)?).unwrap_or(0),
        clusters: store.device_clusters(blob).unwrap_or_default(),
    }))
}

/// Write a new catalog of every engine blob, then delete the older ones (see `catalog.rs`).
/// On a store too full for it, the old catalog goes first (a stale catalog is worse than
/// none); if there is still no room, the store closes without one.
/// `at_close`: written by a clean close as its last change before the unload, so open may
/// hold the store to it; a catalog written after a merge records epoch 0 (blobs change after
/// it: it only names blobs, it is never exact).
pub(crate) fn write_catalog<S: BlobStore>(store: &S, cluster: u64, at_close: bool) -> Result<()> {
    let super_id = store.super_blob();
    let mut cat = catalog::Catalog::default();
    let mut old = Vec::new();
    for id in store.block_on(store.blob_ids())? {
        let blob = store.block_on(store.open(id))?;
        let res = if Some(id) == super_id {
            store
                .block_on(store.get_xattr(&blob, X_EPOCH))
                .map_err(Error::from)
                .map(|e| cat.epoch = if at_close { le_u64(&e).unwrap_or(0) } else { 0 })
        } else {
            match store
                .block_on(store.get_xattr(&blob, X_ROLE))
                .map_err(Error::from)
            {
                Ok(Some(r)) if r == catalog::ROLE => {
                    old.push(id);
                    Ok(())
                }
                Ok(_) => catalog_entry(store, id, &blob).map(|e| cat.entries.extend(e)),
                Err(e) => Err(e),
            }
        };
        store.block_on(store.close(blob))?;
        res?;
    }
    let bytes = catalog::encode(&cat);
    let mut made = write_catalog_blob(store, cluster, &bytes);
    if matches!(made, Err(Error::Full | Error::NoMetadataSpace(_))) {
        for o in old.drain(..) {
            store.block_on(store.delete(o))?;
        }
        made = write_catalog_blob(store, cluster, &bytes);
        if let Err(e @ (Error::Full | Error::NoMetadataSpace(_))) = made {
            log::warn!("blobcask: no room for the catalog blob ({e}); closing without one");
            return Ok(());
        }
    }
    made?;
    for o in old {
        store.block_on(store.delete(o))?;
    }
    Ok(())
}

fn write_catalog_blob<S: BlobStore>(store: &S, cluster: u64, bytes: &[u8]) -> Result<()> {
    let clusters = (bytes.len() as u64).div_ceil(cluster).max(1);
    let id = create_blob(
        store,
        clusters,
        vec![(X_ROLE.to_string(), catalog::ROLE.to_vec())],
    )?;
    let blob = store.block_on(store.open(id))?;
    let res = (|| -> Result<()> {
        let ch = store.channel()?;
        let iou = u64::from(store.io_unit_size());
        let mut buf =
            AlignedBuf::zeroed((bytes.len() as u64).div_ceil(iou) as usize * iou as usize);
        buf[..bytes.len()].copy_from_slice(bytes);
        store.block_on(ch.write(&blob, 0, &buf))?;
        Ok(store.block_on(ch.flush())?)
    })();
    store.block_on(store.close(blob))?;
    if res.is_err() {
        let _ = store.block_on(store.delete(id));
    }
    res
}
