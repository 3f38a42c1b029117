//! Checkpoints: a store frozen at a point in time as blobstore snapshots of its blobs.
//!
//! Creating one snapshots every engine blob (data, hint, keydir snapshot) and every chunk blob
//! (so the checkpoint's chunk metadata finds its pages as they were) with the native
//! blobstore's `create_snapshot`: metadata only, no data copy. The snapshot takes the blob's
//! clusters and the live blob becomes its thin clone (the blobstore copies a cluster on the
//! live blob's first write to it). Then one small *marker* blob is created that names the
//! checkpoint and lists its snapshots; its creation (one md write) is the commit point.
//!
//! - Snapshot blobs carry the original's xattrs except `bc.role` (so neither the live store's
//!   open nor its catalog takes them for its own), plus `bc.ckpt` (the checkpoint's name) and
//!   `bc.ckpt.role` (the original role).
//! - The marker carries `bc.ckpt.name`, `bc.ckpt.time` (unix ms, u64 LE), `bc.ckpt.blobs`
//!   (the snapshot ids, u64 LE each) and `bc.shards` (the store's shard count, u32 LE).
//! - A snapshot whose checkpoint has no marker (a creation cut short, or a deletion, which
//!   deletes the marker first) is a leftover: a writable open deletes it, and the live blob
//!   takes back the clusters it still shares (`clean_leftovers`).
//! - The blobstore's own load repairs a snapshot cut short inside `create_snapshot`.
//!
//! The native store refuses to snapshot an open blob (SPDK freezes its I/O instead), and the
//! running engine holds every blob open, so checkpoints are made and deleted while no `Db`
//! has the store open (they take the image's exclusive lock like a writable open). Reading one
//! is `Db::open_checkpoint`: a read-only open whose recovery takes the
//! checkpoint's snapshot blobs as the store's blobs.

use std::collections::HashSet;

use crate::blobs::{le_u32, le_u64, write_catalog, X_CKPT, X_CKPT_ROLE, X_ROLE, X_SHARDS};
use crate::blobs::{ROLE_CHUNK, ROLE_DATA, ROLE_HINT, ROLE_SNAPSHOT};
use crate::blobstore::native::NativeBlobStore;
use crate::blobstore::{BlobId, BlobStore, CreateOpts};
use crate::device::AnyDevice;
use crate::error::{Error, Result};

/// On the marker blob: the checkpoint's name.
const X_CKPT_NAME: &str = "bc.ckpt.name";
const X_CKPT_TIME: &str = "bc.ckpt.time";
const X_CKPT_BLOBS: &str = "bc.ckpt.blobs";
/// Longest checkpoint name, in bytes.
pub const MAX_NAME: usize = 255;

type Store = NativeBlobStore<AnyDevice>;
type Xattrs = Vec<(String, Vec<u8>)>;

/// A committed checkpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    pub name: String,
    /// Creation time, milliseconds since the Unix epoch.
    pub created_ms: u64,
    /// The snapshot blobs it holds.
    pub blobs: Vec<BlobId>,
    /// The store's shard count when it was made.
    pub shards: u32,
    /// The marker blob that commits it.
    pub marker: BlobId,
}

pub(crate) fn check_name(name: &str) -> Result<()> {
    if name.is_empty() || name.len() > MAX_NAME || name.chars().any(char::is_control) {
        return Err(Error::invalid(format!(
            "checkpoint name {name:?}: 1 to {MAX_NAME} bytes without control characters"
        )));
    }
    Ok(())
}

/// Every committed checkpoint on a loaded store, by name.
pub(crate) fn list_on<S: BlobStore>(store: &S) -> Result<Vec<Checkpoint>> {
    Ok(scan(store)?.0)
}

/// One pass over every blob: the committed checkpoints (by name) and the ids of every
/// checkpoint snapshot blob.
fn scan<S: BlobStore>(store: &S) -> Result<(Vec<Checkpoint>, Vec<BlobId>)> {
    let mut out = Vec::new();
    let mut snaps = Vec::new();
    for id in store.block_on(store.blob_ids())? {
        let blob = match store.block_on(store.open(id)) {
            Ok(b) => b,
            Err(crate::blobstore::Error::NotFound(_)) => continue,
            // A blob that does not open is no checkpoint's: recovery (or `check`) reports
            // it, naming what it held.
            Err(e) => {
                log::warn!("blobcask: checkpoint scan skips blob {id:#x}: {e}");
                continue;
            }
        };
        let x = |n: &str| store.block_on(store.get_xattr(&blob, n));
        let res = (|| -> Result<Option<Checkpoint>> {
            if x(X_CKPT)?.is_some() {
                snaps.push(id);
                return Ok(None);
            }
            let Some(name) = x(X_CKPT_NAME)? else {
                return Ok(None);
            };
            Ok(Some(Checkpoint {
                name: String::from_utf8_lossy(&name).into_owned(),
                created_ms: le_u64(&x(X_CKPT_TIME)?).unwrap_or(0),
                blobs: x(X_CKPT_BLOBS)?
                    .unwrap_or_default()
                    .chunks_exact(8)
                    .filter_map(|c| c.try_into().ok().map(u64::from_le_bytes))
                    .collect(),
                shards: le_u32(&x(X_SHARDS)?).unwrap_or(0),
                marker: id,
            }))
        })();
        store.block_on(store.close(blob))?;
        out.extend(res?);
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok((out, snaps))
}

/// The checkpoint named `name` on a loaded store.
pub(crate) fn find_on<S: BlobStore>(store: &S, name: &str) -> Result<Checkpoint> {
    list_on(store)?
        .into_iter()
        .find(|c| c.name == name)
        .ok_or_else(|| Error::NotFound(format!("no checkpoint named {name:?}")))
}

/// Delete every snapshot blob no committed checkpoint lists (what a creation or deletion cut
/// short left). Needs every blob closed: each leftover's clone takes back its clusters.
/// Returns how many were deleted.
pub(crate) fn clean_leftovers<S: BlobStore>(store: &S) -> Result<usize> {
    let (cks, snaps) = scan(store)?;
    let kept: HashSet<BlobId> = cks.into_iter().flat_map(|c| c.blobs).collect();
    let mut n = 0;
    for id in snaps.into_iter().filter(|id| !kept.contains(id)) {
        log::warn!("blobcask: deleting checkpoint leftover blob {id:#x}");
        store.block_on(store.delete(id))?;
        n += 1;
    }
    Ok(n)
}

/// A closed store's checkpoints are made and deleted only after a clean close: the catalog
/// they rewrite is then exact, and the engine's own recovery of a crash stays its own.
fn require_clean(store: &Store) -> Result<()> {
    if store.loaded_clean() {
        return Ok(());
    }
    Err(Error::invalid(
        "the store was not closed cleanly: open and close it first",
    ))
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Make checkpoint `name`: on a loaded store no engine has open (`live` false), or on the
/// running store's blobstore with every write to its blobs frozen by the caller (`live`: the
/// blobs stay open, and the catalog is written as after a merge).
pub(crate) fn create_on(store: &Store, name: &str, live: bool) -> Result<Checkpoint> {
    check_name(name)?;
    if !live {
        require_clean(store)?;
        clean_leftovers(store)?;
    }
    if list_on(store)?.iter().any(|c| c.name == name) {
        return Err(Error::invalid(format!(
            "a checkpoint named {name:?} exists"
        )));
    }
    let super_id = store.super_blob();
    let mut shards = 0u32;
    let mut originals = Vec::new();
    for id in store.block_on(store.blob_ids())? {
        let blob = match store.block_on(store.open(id)) {
            Ok(b) => b,
            Err(crate::blobstore::Error::NotFound(_)) => continue,
            Err(e) => return Err(e.into()),
        };
        let res = (|| -> Result<Option<Xattrs>> {
            if Some(id) == super_id {
                shards = le_u32(&store.block_on(store.get_xattr(&blob, X_SHARDS))?).unwrap_or(0);
                return Ok(None);
            }
            let Some(role) = store.block_on(store.get_xattr(&blob, X_ROLE))? else {
                return Ok(None);
            };
            if ![ROLE_DATA, ROLE_HINT, ROLE_SNAPSHOT, ROLE_CHUNK].contains(&role.as_slice()) {
                return Ok(None);
            }
            let mut xattrs = vec![
                (X_CKPT.to_string(), name.as_bytes().to_vec()),
                (X_CKPT_ROLE.to_string(), role),
            ];
            for n in store.block_on(store.xattr_names(&blob))? {
                if n == X_ROLE {
                    continue;
                }
                if let Some(v) = store.block_on(store.get_xattr(&blob, &n))? {
                    xattrs.push((n, v));
                }
            }
            Ok(Some(xattrs))
        })();
        store.block_on(store.close(blob))?;
        if let Some(x) = res? {
            originals.push((id, x));
        }
    }
    let mut blobs = Vec::with_capacity(originals.len());
    for (id, xattrs) in originals {
        match store.block_on(store.create_snapshot_frozen(id, &xattrs)) {
            Ok(s) => blobs.push(s),
            // A merged-away blob its last reader deleted meanwhile: dead data only.
            Err(crate::blobstore::Error::NotFound(_)) if live => {}
            Err(e) => return Err(e.into()),
        }
    }
    let created_ms = now_ms();
    let list: Vec<u8> = blobs.iter().flat_map(|b| b.to_le_bytes()).collect();
    let mut xattrs = vec![
        (X_CKPT_NAME.to_string(), name.as_bytes().to_vec()),
        (X_CKPT_TIME.to_string(), created_ms.to_le_bytes().to_vec()),
        (X_SHARDS.to_string(), shards.to_le_bytes().to_vec()),
    ];
    if !list.is_empty() {
        xattrs.push((X_CKPT_BLOBS.to_string(), list));
    }
    // The commit point: one blob creation.
    let marker = store.block_on(store.create(CreateOpts {
        num_clusters: 0,
        xattrs,
        use_extent_table: false,
        ..CreateOpts::default()
    }))?;
    // The live blobs' cluster maps changed: the catalog must say so.
    write_catalog(store, store.cluster_size() as u64, !live)?;
    Ok(Checkpoint {
        name: name.to_string(),
        created_ms,
        blobs,
        shards,
        marker,
    })
}

/// Delete checkpoint `name` on a loaded store no engine has open: the marker first (the
/// commit point), then its snapshots (each one's clone takes what it still shares; the rest
/// is freed).
pub(crate) fn delete_on(store: &Store, name: &str) -> Result<()> {
    require_clean(store)?;
    let c = find_on(store, name)?;
    store.block_on(store.delete(c.marker))?;
    clean_leftovers(store)?;
    write_catalog(store, store.cluster_size() as u64, true)?;
    Ok(())
}
