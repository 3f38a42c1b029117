//! The catalog blob: the engine's own copy of what every blob's md page says.
//!
//! A blob's md page is the only place SPDK's format keeps its role and cluster map; when that
//! page is damaged, the blobstore can neither say what the blob held nor give its clusters
//! back to it. The catalog (one blob with `bc.role = catalog`, written at every clean close
//! and after every merge, replaced atomically: the new one is written and flushed before the
//! old one is deleted) lists every engine blob's id, role, shard, sequence, salt and cluster
//! map. Open uses it to name a damaged blob; `repair` uses it to write a fresh md page for a
//! data blob whose page is lost (only from an exact catalog: see [`restore_lost_blobs`]). It
//! is a plain blob with xattrs, so SPDK still loads the store.
//!
//! Header (32 bytes):
//!
//! | offset | size | field      | meaning                                                 |
//! |--------|------|------------|---------------------------------------------------------|
//! | 0      | 8    | magic      | `b"BCCATL01"`                                           |
//! | 8      | 8    | epoch      | the super blob's `bc.epoch` at a close; 0 after a merge |
//! | 16     | 4    | entries    | number of entries                                       |
//! | 20     | 4    | body_len   | bytes after the header                                  |
//! | 24     | 4    | body_crc   | crc32c of the body                                      |
//! | 28     | 4    | header_crc | crc32c of bytes 0..28                                   |
//!
//! Body: `entries` × entry (56 bytes, then its extents):
//!
//! | offset | size | field    | meaning                                                   |
//! |--------|------|----------|-----------------------------------------------------------|
//! | 0      | 8    | blob_id  | SPDK blob id                                              |
//! | 8      | 1    | role     | 1 data, 2 hint, 3 snapshot                                |
//! | 9      | 1    | merge    | 0 none, 1 pending, 2 done (`bc.merge`)                    |
//! | 10     | 2    | reserved | 0                                                         |
//! | 12     | 4    | shard    | `bc.shard`                                                |
//! | 16     | 8    | seq      | `bc.seq`                                                  |
//! | 24     | 8    | salt     | `bc.salt` (data blobs; else 0)                            |
//! | 32     | 8    | for_seq  | `bc.for` (hints; else 0)                                  |
//! | 40     | 8    | clusters | blob size in clusters                                     |
//! | 48     | 4    | extents  | number of extents `n`                                     |
//! | 52     | 4    | reserved | 0                                                         |
//! | 56     | 8·n  | extent   | `first: u32` device cluster (0 = unallocated), `count: u32` |
//!
//! All integers little-endian. The extents of an entry add up to `clusters`.

use crate::blobstore::native::blobmd::root_index;
use crate::blobstore::native::mdpage::MdPage;
use crate::blobstore::native::NativeBlobStore;
use crate::blobstore::{Blob as _, BlobId, BlobStore, IoChannel as _};
use crate::device::{AlignedBuf, Device};
use crate::error::{Error, Result};

/// `bc.role` of the catalog blob (the engine's xattr names are listed in `blobs.rs`).
pub const ROLE: &[u8] = b"catalog";
const X_ROLE: &str = "bc.role";
const X_EPOCH: &str = "bc.epoch";

pub const MAGIC: &[u8; 8] = b"BCCATL01";
pub const HEADER_LEN: usize = 32;
/// Fixed part of an entry: id 8, role 1, merge 1, reserved 2, shard 4, seq 8, salt 8,
/// for_seq 8, clusters 8, extents 4, reserved 4.
pub const ENTRY_FIXED: usize = 56;
/// Bounds that keep a damaged catalog from asking for absurd allocations.
const MAX_ENTRIES: u32 = 1 << 20;

/// Role of a catalogued blob.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Data,
    Hint,
    Snapshot,
}

impl Role {
    fn code(self) -> u8 {
        match self {
            Role::Data => 1,
            Role::Hint => 2,
            Role::Snapshot => 3,
        }
    }

    fn from_code(c: u8) -> Option<Role> {
        match c {
            1 => Some(Role::Data),
            2 => Some(Role::Hint),
            3 => Some(Role::Snapshot),
            _ => None,
        }
    }

    /// The `bc.role` xattr value.
    pub fn xattr(self) -> &'static [u8] {
        match self {
            Role::Data => b"data",
            Role::Hint => b"hint",
            Role::Snapshot => b"snapshot",
        }
    }

    pub fn from_xattr(v: &[u8]) -> Option<Role> {
        [Role::Data, Role::Hint, Role::Snapshot]
            .into_iter()
            .find(|r| r.xattr() == v)
    }
}

/// One catalogued blob.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub blob_id: u64,
    pub role: Role,
    /// 0 none, 1 pending, 2 done.
    pub merge: u8,
    pub shard: u32,
    pub seq: u64,
    pub salt: u64,
    pub for_seq: u64,
    /// Device cluster of every blob cluster (0 = unallocated).
    pub clusters: Vec<u32>,
}

impl Entry {
    /// "data blob of shard 1, seq 4 (3 clusters)": what open and repair tell the user.
    pub fn describe(&self) -> String {
        format!(
            "{} blob of shard {}, seq {} ({} cluster{})",
            String::from_utf8_lossy(self.role.xattr()),
            self.shard,
            self.seq,
            self.clusters.len(),
            if self.clusters.len() == 1 { "" } else { "s" }
        )
    }
}

/// A decoded catalog.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Catalog {
    pub epoch: u64,
    pub entries: Vec<Entry>,
}

impl Catalog {
    pub fn find(&self, id: u64) -> Option<&Entry> {
        self.entries.iter().find(|e| e.blob_id == id)
    }
}

/// Run-length extents of a cluster map.
fn extents(map: &[u32]) -> Vec<(u32, u32)> {
    let mut out: Vec<(u32, u32)> = Vec::new();
    for &c in map {
        match out.last_mut() {
            Some((first, n)) if (*first == 0 && c == 0) || (*first != 0 && *first + *n == c) => {
                *n += 1
            }
            _ => out.push((c, 1)),
        }
    }
    out
}

/// Encode a catalog.
pub fn encode(cat: &Catalog) -> Vec<u8> {
    let mut body = Vec::new();
    for e in &cat.entries {
        let ext = extents(&e.clusters);
        body.extend_from_slice(&e.blob_id.to_le_bytes());
        body.push(e.role.code());
        body.push(e.merge);
        body.extend_from_slice(&[0, 0]);
        body.extend_from_slice(&e.shard.to_le_bytes());
        body.extend_from_slice(&e.seq.to_le_bytes());
        body.extend_from_slice(&e.salt.to_le_bytes());
        body.extend_from_slice(&e.for_seq.to_le_bytes());
        body.extend_from_slice(&(e.clusters.len() as u64).to_le_bytes());
        body.extend_from_slice(&(ext.len() as u32).to_le_bytes());
        body.extend_from_slice(&[0; 4]);
        for (first, n) in ext {
            body.extend_from_slice(&first.to_le_bytes());
            body.extend_from_slice(&n.to_le_bytes());
        }
    }
    let mut out = Vec::with_capacity(HEADER_LEN + body.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&cat.epoch.to_le_bytes());
    out.extend_from_slice(&(cat.entries.len() as u32).to_le_bytes());
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32c::crc32c(&body).to_le_bytes());
    let hcrc = crc32c::crc32c(&out);
    out.extend_from_slice(&hcrc.to_le_bytes());
    out.extend_from_slice(&body);
    out
}

fn u32_at(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]])
}

fn u64_at(b: &[u8], o: usize) -> u64 {
    u64::from(u32_at(b, o)) | u64::from(u32_at(b, o + 4)) << 32
}

/// Bytes the catalog at the start of `b` occupies (header checked), or an error.
pub fn total_len(b: &[u8]) -> Result<usize> {
    let bad = |m: &str| Err(Error::corrupt_md(0, format!("catalog: {m}")));
    if b.len() < HEADER_LEN {
        return bad("shorter than its header");
    }
    if &b[..8] != MAGIC {
        return bad("bad magic");
    }
    if crc32c::crc32c(&b[..28]) != u32_at(b, 28) {
        return bad("header CRC mismatch");
    }
    Ok(HEADER_LEN + u32_at(b, 20) as usize)
}

/// Decode and verify a catalog; any inconsistency is `Corruption`, never a panic.
pub fn decode(b: &[u8]) -> Result<Catalog> {
    let bad = |m: String| Err(Error::corrupt_md(0, format!("catalog: {m}")));
    let total = total_len(b)?;
    if b.len() < total {
        return bad(format!("{} bytes, header says {total}", b.len()));
    }
    let body = &b[HEADER_LEN..total];
    if crc32c::crc32c(body) != u32_at(b, 24) {
        return bad("body CRC mismatch".into());
    }
    let count = u32_at(b, 16);
    if count > MAX_ENTRIES || count as usize * ENTRY_FIXED > body.len() {
        return bad(format!("{count} entries do not fit the body"));
    }
    let mut entries = Vec::with_capacity(count as usize);
    let mut o = 0usize;
    for i in 0..count {
        if body.len() - o < ENTRY_FIXED {
            return bad(format!("entry {i} is cut short"));
        }
        let e = &body[o..];
        let Some(role) = Role::from_code(e[8]) else {
            return bad(format!("entry {i}: unknown role {}", e[8]));
        };
        let n_clusters = u64_at(e, 40);
        let n_ext = u32_at(e, 48) as usize;
        if n_ext.saturating_mul(8) > body.len() - o - ENTRY_FIXED {
            return bad(format!("entry {i}: {n_ext} extents do not fit"));
        }
        if n_clusters > u64::from(u32::MAX) || n_clusters as usize > body.len().saturating_mul(64) {
            return bad(format!("entry {i}: {n_clusters} clusters"));
        }
        let mut clusters = Vec::with_capacity(n_clusters as usize);
        for k in 0..n_ext {
            let x = ENTRY_FIXED + k * 8;
            let (first, n) = (u32_at(e, x), u32_at(e, x + 4));
            if clusters.len() as u64 + u64::from(n) > n_clusters
                || (first != 0 && first.checked_add(n).is_none())
            {
                return bad(format!("entry {i}: extent {k} overruns the blob"));
            }
            clusters.extend((0..n).map(|j| if first == 0 { 0 } else { first + j }));
        }
        if clusters.len() as u64 != n_clusters {
            return bad(format!("entry {i}: extents do not cover the blob"));
        }
        entries.push(Entry {
            blob_id: u64_at(e, 0),
            role,
            merge: e[9],
            shard: u32_at(e, 12),
            seq: u64_at(e, 16),
            salt: u64_at(e, 24),
            for_seq: u64_at(e, 32),
            clusters,
        });
        o += ENTRY_FIXED + n_ext * 8;
    }
    if o != body.len() {
        return bad("trailing bytes after the last entry".into());
    }
    Ok(Catalog {
        epoch: u64_at(b, 8),
        entries,
    })
}

/// Read and verify the catalog held by `blob`.
pub fn read_blob<S: BlobStore>(store: &S, ch: &S::Channel, blob: &S::Blob) -> Result<Catalog> {
    let iou = u64::from(store.io_unit_size());
    let size = blob.num_io_units() * iou;
    let first = 4096u64.max(iou).min(size);
    if first < HEADER_LEN as u64 {
        return Err(Error::corrupt_md(0, "catalog: empty blob"));
    }
    let mut head = AlignedBuf::zeroed(first as usize);
    store.block_on(ch.read(blob, 0, &mut head))?;
    let total = (total_len(&head)? as u64).div_ceil(iou) * iou;
    if total > size {
        return Err(Error::corrupt_md(0, "catalog: longer than its blob"));
    }
    let mut buf = AlignedBuf::zeroed(total as usize);
    store.block_on(ch.read(blob, 0, &mut buf))?;
    decode(&buf)
}

/// The newest readable catalog of the store, if any (blobs that fail to open are skipped:
/// this runs when something is already known to be damaged).
pub fn read_newest<S: BlobStore>(store: &S) -> Option<Catalog> {
    let ids = store.block_on(store.blob_ids()).ok()?;
    let ch = store.channel().ok()?;
    let mut best: Option<Catalog> = None;
    for id in ids {
        let Ok(blob) = store.block_on(store.open(id)) else {
            continue;
        };
        let role = store.block_on(store.get_xattr(&blob, X_ROLE));
        let cat = match role {
            Ok(Some(r)) if r == ROLE => read_blob(store, &ch, &blob).ok(),
            _ => None,
        };
        let _ = store.block_on(store.close(blob));
        if let Some(c) = cat {
            if best.as_ref().is_none_or(|b| c.epoch >= b.epoch) {
                best = Some(c);
            }
        }
    }
    best
}

/// The super blob's `bc.epoch`, if readable.
fn super_epoch<S: BlobStore>(store: &S) -> Option<u64> {
    let b = store.block_on(store.open(store.super_blob()?)).ok()?;
    let e = store.block_on(store.get_xattr(&b, X_EPOCH));
    let _ = store.block_on(store.close(b));
    e.ok()??.try_into().ok().map(u64::from_le_bytes)
}

/// Add what the catalog says about blob `id` to a `Corruption` error about it.
pub fn name_damaged<S: BlobStore>(store: &S, id: BlobId, e: Error) -> Error {
    let Error::Corruption {
        blob,
        offset,
        detail,
    } = e
    else {
        return e;
    };
    let cat = read_newest(store);
    let current = cat
        .as_ref()
        .is_some_and(|c| super_epoch(store) == Some(c.epoch));
    let said = match cat.as_ref().and_then(|c| c.find(id)) {
        Some(ent) if current => {
            format!("; per the catalog, blob {id:#x} is the {}", ent.describe())
        }
        Some(ent) => format!(
            "; per the catalog {} (it may be stale), blob {id:#x} was the {}",
            if cat.as_ref().is_some_and(|c| c.epoch == 0) {
                "written after a merge"
            } else {
                "of an earlier run"
            },
            ent.describe()
        ),
        None if cat.is_some() => format!("; the catalog does not list blob {id:#x}"),
        None => "; the store has no readable catalog".to_string(),
    };
    Error::Corruption {
        blob,
        offset,
        detail: format!("{detail}{said}"),
    }
}

/// Open's cross-check of the blob-id mask: when the store was closed cleanly and exactly one
/// catalog was written in that run (`stored_epoch`, the super blob's `bc.epoch`), that
/// catalog lists every engine blob the close left, so a listed blob the store does not
/// enumerate (`ids`) is hidden by a cleared used-blob-id bit. Serving without it would
/// answer `NotFound` for live keys: refuse, naming the blob, its mask bit and what it held.
/// Several catalogs of that epoch (a close that could not delete the one a merge wrote)
/// cannot be told apart, so there is no check then.
pub fn check_enumerated(
    ids: &[BlobId],
    catalogs: &[Catalog],
    stored_epoch: u64,
    super_id: BlobId,
) -> Result<()> {
    let mut current = catalogs.iter().filter(|c| c.epoch == stored_epoch);
    let (Some(cat), None) = (current.next(), current.next()) else {
        return Ok(());
    };
    let present: std::collections::HashSet<BlobId> = ids.iter().copied().collect();
    let missing: Vec<&Entry> = cat
        .entries
        .iter()
        .filter(|e| e.blob_id != super_id && !present.contains(&e.blob_id))
        .collect();
    let Some(first) = missing.first() else {
        return Ok(());
    };
    let bit = root_index(first.blob_id).map_or_else(|| "?".to_string(), |i| i.to_string());
    Err(Error::Corruption {
        blob: first.blob_id,
        offset: 0,
        detail: format!(
            "used-blob-id mask bit {bit} is clear for live blob {:#x} (per the catalog of the \
             last clean close, the {}){}; its keys would read as absent, so the store is not \
             opened (`blobcask repair` rebuilds the masks)",
            first.blob_id,
            first.describe(),
            if missing.len() > 1 {
                format!(
                    ", and {} more catalogued blobs are missing",
                    missing.len() - 1
                )
            } else {
                String::new()
            }
        ),
    })
}

/// Bring back, from the catalog, every data blob whose root md page is damaged (non-zero,
/// failing its CRC, so the salvage load dropped it). The catalog is trusted only if it is
/// exact: the store was closed cleanly (`clean_close`, the super block's flag) in the epoch
/// the catalog was written in, so the close wrote it last and nothing changed since. (A
/// catalog written after a merge, or before a later run, may miss clusters a blob grew into
/// or name clusters reused since; restoring from it could bring back an older value.)
/// Returns one line per blob. Writes go wherever `store` writes (`repair` uses an overlay).
pub fn restore_lost_blobs<D: Device>(
    store: &NativeBlobStore<D>,
    clean_close: bool,
) -> Result<Vec<String>> {
    let Some(cat) = read_newest(store) else {
        return Ok(Vec::new());
    };
    if !clean_close || super_epoch(store) != Some(cat.epoch) {
        return Ok(Vec::new());
    }
    let present: std::collections::HashSet<BlobId> =
        store.block_on(store.blob_ids())?.into_iter().collect();
    let l = store.layout().clone();
    let mut done = Vec::new();
    for e in cat
        .entries
        .iter()
        .filter(|e| e.role == Role::Data && e.merge != 1)
    {
        // No cluster map: written by a backend that cannot tell (SPDK), nothing to restore.
        if present.contains(&e.blob_id) || e.clusters.is_empty() {
            continue;
        }
        let Some(idx) = root_index(e.blob_id).filter(|&i| i < l.md_len) else {
            continue;
        };
        let mut page = vec![0u8; l.md_page_size as usize];
        store.block_on(store.device().read(l.md_offset(idx), &mut page))?;
        if MdPage::crc_ok(&page) || page.iter().all(|&b| b == 0) {
            continue; // deleted (zeroed) or owned by another blob now: not ours to restore
        }
        let xattrs = vec![
            (X_ROLE.to_string(), Role::Data.xattr().to_vec()),
            ("bc.shard".to_string(), e.shard.to_le_bytes().to_vec()),
            ("bc.seq".to_string(), e.seq.to_le_bytes().to_vec()),
            ("bc.salt".to_string(), e.salt.to_le_bytes().to_vec()),
        ];
        match store.block_on(store.restore_blob_md(e.blob_id, xattrs, e.clusters.clone())) {
            Ok(()) => done.push(format!(
                "restored the md page of blob {:#x} ({}) from the catalog",
                e.blob_id,
                e.describe()
            )),
            Err(err) => done.push(format!(
                "could not restore blob {:#x} ({}): {err}",
                e.blob_id,
                e.describe()
            )),
        }
    }
    Ok(done)
}

/// Every catalogued data blob that is still missing after [`restore_lost_blobs`] and whose
/// root md page is damaged (non-zero, failing its CRC). Each is restored from the catalog
/// when every cluster the catalog lists for it is still free; such a catalog may be stale
/// (the blob may have grown since), so the restored log is only a prefix and the fold treats
/// what follows it as damaged. Writes go wherever `store` writes (`repair` uses an overlay).
pub fn restore_stale_blobs<D: Device>(
    store: &NativeBlobStore<D>,
) -> Result<Vec<crate::salvage::LostBlob>> {
    let Some(cat) = read_newest(store) else {
        return Ok(Vec::new());
    };
    let present: std::collections::HashSet<BlobId> =
        store.block_on(store.blob_ids())?.into_iter().collect();
    let l = store.layout().clone();
    let mut out = Vec::new();
    for e in cat.entries.iter().filter(|e| e.role == Role::Data) {
        if present.contains(&e.blob_id) {
            continue;
        }
        let Some(idx) = root_index(e.blob_id).filter(|&i| i < l.md_len) else {
            continue;
        };
        let mut page = vec![0u8; l.md_page_size as usize];
        store.block_on(store.device().read(l.md_offset(idx), &mut page))?;
        if MdPage::crc_ok(&page) || page.iter().all(|&b| b == 0) {
            continue; // deleted since the catalog was written, or reused: not lost
        }
        let xattrs = vec![
            (X_ROLE.to_string(), Role::Data.xattr().to_vec()),
            ("bc.shard".to_string(), e.shard.to_le_bytes().to_vec()),
            ("bc.seq".to_string(), e.seq.to_le_bytes().to_vec()),
            ("bc.salt".to_string(), e.salt.to_le_bytes().to_vec()),
        ];
        let restored = !e.clusters.is_empty()
            && store
                .block_on(store.restore_blob_md(e.blob_id, xattrs, e.clusters.clone()))
                .is_ok();
        out.push(crate::salvage::LostBlob {
            blob: e.blob_id,
            shard: e.shard as usize,
            seq: e.seq,
            what: e.describe(),
            restored_prefix: restored,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Catalog {
        Catalog {
            epoch: 9,
            entries: vec![
                Entry {
                    blob_id: 0x1_0000_0003,
                    role: Role::Data,
                    merge: 2,
                    shard: 1,
                    seq: 4,
                    salt: 0xDEAD_BEEF,
                    for_seq: 0,
                    clusters: vec![10, 11, 12, 20, 0, 0, 21],
                },
                Entry {
                    blob_id: 0x1_0000_0004,
                    role: Role::Hint,
                    merge: 0,
                    shard: 0,
                    seq: 5,
                    salt: 0,
                    for_seq: 4,
                    clusters: vec![],
                },
            ],
        }
    }

    #[test]
    fn a_catalog_round_trips_with_its_byte_layout() {
        let c = sample();
        let b = encode(&c);
        assert_eq!(&b[..8], MAGIC);
        assert_eq!(u64_at(&b, 8), 9);
        assert_eq!(u32_at(&b, 16), 2);
        assert_eq!(total_len(&b).unwrap(), b.len());
        // First entry: 56 fixed bytes, then 4 extents (10+3, 20+1, 0+2, 21+1).
        let e = &b[HEADER_LEN..];
        assert_eq!(u64_at(e, 0), 0x1_0000_0003);
        assert_eq!((e[8], e[9]), (1, 2));
        assert_eq!(u32_at(e, 12), 1);
        assert_eq!(u64_at(e, 16), 4);
        assert_eq!(u64_at(e, 24), 0xDEAD_BEEF);
        assert_eq!(u64_at(e, 40), 7);
        assert_eq!(u32_at(e, 48), 4);
        assert_eq!((u32_at(e, 56), u32_at(e, 60)), (10, 3));
        assert_eq!(decode(&b).unwrap(), c);
    }

    #[test]
    fn every_flipped_byte_is_rejected_and_nothing_panics() {
        let b = encode(&sample());
        for i in 0..b.len() {
            let mut d = b.clone();
            d[i] ^= 0x20;
            assert!(decode(&d).is_err(), "byte {i}");
        }
        for n in 0..b.len() {
            assert!(decode(&b[..n]).is_err(), "cut at {n}");
        }
    }
}
