//! `check` (fsck) and `repair` of a store on the native blobstore.
//!
//! Both work on copies: the device is read through a copy-on-write [`Overlay`], so checking a
//! crashed image never recovers it on disk, and repair writes its result only once everything
//! readable has been salvaged.
//!
//! What `check` verifies:
//! 1. the blobstore loads (super block, md chains, extent pages);
//! 2. on a cleanly closed store, the on-disk md-page and cluster masks equal what recovery
//!    rebuilds from the blobs' metadata (a difference is a leak or a double allocation), and
//!    no cluster is mapped by two blobs;
//! 3. every data blob's log: each record's CRC, from offset 0 to the first bad record; past
//!    it, the rest of the blob is searched for records that still validate, because a valid
//!    record after a bad one means the bad bytes are damage, not a torn tail, and recovery
//!    would drop everything behind them;
//! 4. every hint and keydir snapshot: its CRCs, and each entry against the record it names.

use std::collections::{BTreeMap, HashMap, HashSet};

use crate::blobstore::native::NativeBlobStore;
use crate::blobstore::{Blob, BlobId, BlobStore, IoChannel, LoadOpts};
use crate::device::{Device, Overlay};
use crate::error::{Error, Result};
use crate::hint;
use crate::record::{self, Kind};

/// What [`check`] found.
#[derive(Debug, Default, Clone)]
pub struct CheckReport {
    /// The super block said the store was closed cleanly.
    pub clean_shutdown: bool,
    pub blobs: usize,
    pub data_blobs: usize,
    pub hint_blobs: usize,
    /// Records that passed their CRC.
    pub records: u64,
    /// Hint entries verified against their records.
    pub hint_entries: u64,
    /// Damage: anything here makes the store unclean.
    pub problems: Vec<String>,
    /// Facts worth knowing that are not damage (e.g. a torn tail after a crash).
    pub notes: Vec<String>,
}

impl CheckReport {
    pub fn is_clean(&self) -> bool {
        self.problems.is_empty()
    }
}

/// One record found by a salvage scan, owned.
#[derive(Debug, Clone)]
pub struct Salvaged {
    pub shard: usize,
    pub seq: u64,
    pub kind: Kind,
    pub batch: Option<u64>,
    pub key: Vec<u8>,
    pub value: Vec<u8>,
}

/// A damaged byte range of a data blob: `[start, end)` failed, valid records follow it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Damage {
    pub blob: BlobId,
    pub start: u64,
    pub end: u64,
}

/// Result of scanning one blob's bytes.
#[derive(Debug, Default)]
pub struct BlobScan {
    /// (offset, length) of every valid record, in log order.
    pub records: Vec<(u64, usize)>,
    /// End of the valid prefix (what recovery keeps).
    pub prefix_end: u64,
    /// Ranges that failed but are followed by valid records.
    pub damaged: Vec<(u64, u64)>,
}

/// Scan `bytes` as a record log seeded with `salt`: the valid prefix, then a byte-by-byte
/// search for records past every bad spot.
pub fn scan_log(bytes: &[u8], salt: u64) -> BlobScan {
    let mut out = BlobScan::default();
    let mut pos = 0usize;
    let mut prefix = true;
    while pos < bytes.len() {
        if let Some(r) = record::decode(&bytes[pos..], salt) {
            let len = r.header.record_len();
            out.records.push((pos as u64, len));
            pos += len;
            continue;
        }
        if prefix {
            out.prefix_end = pos as u64;
            prefix = false;
        }
        let next = (pos + 1..bytes.len()).find(|&q| record::decode(&bytes[q..], salt).is_some());
        match next {
            Some(q) => {
                out.damaged.push((pos as u64, q as u64));
                pos = q;
            }
            None => break,
        }
    }
    if prefix {
        out.prefix_end = pos as u64;
    }
    out
}

struct Meta {
    id: BlobId,
    role: Vec<u8>,
    shard: usize,
    seq: u64,
    salt: u64,
}

fn le_u64(v: Option<Vec<u8>>) -> Option<u64> {
    v.and_then(|b| b.try_into().ok()).map(u64::from_le_bytes)
}

async fn read_all<S: BlobStore>(store: &S, blob: &S::Blob) -> Result<Vec<u8>> {
    let iou = u64::from(store.io_unit_size());
    let total = blob.num_io_units();
    let mut buf = vec![0u8; (total * iou) as usize];
    let ch = store.channel()?;
    let step = (4u64 << 20) / iou;
    let mut at = 0;
    while at < total {
        let n = step.min(total - at);
        ch.read(
            blob,
            at,
            &mut buf[(at * iou) as usize..((at + n) * iou) as usize],
        )
        .await?;
        at += n;
    }
    Ok(buf)
}

/// Every blob that carries a `bc.role`, with its bytes.
fn catalog<S: BlobStore>(store: &S) -> Result<Vec<(Meta, Vec<u8>)>> {
    store.block_on(async {
        let mut out = Vec::new();
        for id in store.blob_ids().await? {
            let blob = store.open(id).await?;
            let role = store.get_xattr(&blob, "bc.role").await?;
            let Some(role) = role else {
                store.close(blob).await?;
                continue;
            };
            let shard = store
                .get_xattr(&blob, "bc.shard")
                .await?
                .and_then(|b| b.try_into().ok())
                .map_or(usize::MAX, |b: [u8; 4]| u32::from_le_bytes(b) as usize);
            let seq = le_u64(store.get_xattr(&blob, "bc.seq").await?).unwrap_or(0);
            let salt = le_u64(store.get_xattr(&blob, "bc.salt").await?).unwrap_or(0);
            let bytes = if role == b"super" {
                Vec::new()
            } else {
                read_all(store, &blob).await?
            };
            store.close(blob).await?;
            out.push((
                Meta {
                    id,
                    role,
                    shard,
                    seq,
                    salt,
                },
                bytes,
            ));
        }
        Ok(out)
    })
}

fn masks<D: Device>(store: &NativeBlobStore<D>) -> (Vec<u32>, Vec<u32>) {
    (store.used_md_pages(), store.used_clusters())
}

fn diff(a: &[u32], b: &[u32]) -> Vec<u32> {
    let b: HashSet<u32> = b.iter().copied().collect();
    a.iter().copied().filter(|x| !b.contains(x)).collect()
}

fn sample(v: &[u32]) -> String {
    let s: Vec<String> = v.iter().take(8).map(u32::to_string).collect();
    if v.len() > 8 {
        format!("{} ...", s.join(", "))
    } else {
        s.join(", ")
    }
}

/// Check the store on the devices `open()` returns (called twice: a normal and a
/// recovering load, each on its own overlay).
pub fn check<D: Device>(open: impl Fn() -> Result<D>) -> Result<CheckReport> {
    let mut rep = CheckReport::default();
    let normal = match pollster::block_on(NativeBlobStore::load(
        Overlay::new(open()?),
        LoadOpts::default(),
    )) {
        Ok(s) => s,
        Err(e) => {
            rep.problems
                .push(format!("the blobstore does not load: {e}"));
            return Ok(rep);
        }
    };
    let rebuilt = match pollster::block_on(NativeBlobStore::load(
        Overlay::new(open()?),
        LoadOpts {
            force_recover: true,
            ..LoadOpts::default()
        },
    )) {
        Ok(s) => s,
        Err(e) => {
            rep.problems
                .push(format!("the metadata pages do not recover: {e}"));
            return Ok(rep);
        }
    };
    let mut sb = vec![0u8; 4096];
    pollster::block_on(normal.device().base().read(0, &mut sb))?;
    rep.clean_shutdown = crate::blobstore::native::superblock::SuperBlock::decode(&sb)?.is_clean();
    check_masks(&normal, &rebuilt, &mut rep)?;
    check_engine(&rebuilt, &mut rep)?;
    Ok(rep)
}

fn check_masks<D: Device>(
    normal: &NativeBlobStore<Overlay<D>>,
    rebuilt: &NativeBlobStore<Overlay<D>>,
    rep: &mut CheckReport,
) -> Result<()> {
    let (md_a, cl_a) = masks(normal);
    let (md_b, cl_b) = masks(rebuilt);
    if rep.clean_shutdown {
        let leaked = diff(&cl_a, &cl_b);
        let unmarked = diff(&cl_b, &cl_a);
        if !leaked.is_empty() {
            rep.problems.push(format!(
                "cluster mask marks {} clusters no blob owns (leak): {}",
                leaked.len(),
                sample(&leaked)
            ));
        }
        if !unmarked.is_empty() {
            rep.problems.push(format!(
                "{} clusters owned by blobs are free in the cluster mask (double allocation): {}",
                unmarked.len(),
                sample(&unmarked)
            ));
        }
        let md_leaked = diff(&md_a, &md_b);
        let md_unmarked = diff(&md_b, &md_a);
        if !md_leaked.is_empty() || !md_unmarked.is_empty() {
            rep.problems.push(format!(
                "md page mask differs from the metadata: {} extra, {} missing",
                md_leaked.len(),
                md_unmarked.len()
            ));
        }
    } else {
        rep.notes.push(
            "the store was not closed cleanly: its masks are rebuilt from metadata on open \
             (normal after a crash)"
                .into(),
        );
    }
    let mut owner: HashMap<u32, BlobId> = HashMap::new();
    let ids = rebuilt.block_on(rebuilt.blob_ids())?;
    rep.blobs = ids.len();
    for id in ids {
        let blob = rebuilt.block_on(rebuilt.open(id))?;
        for c in rebuilt.cluster_map(&blob).into_iter().filter(|&c| c != 0) {
            if let Some(other) = owner.insert(c, id) {
                rep.problems.push(format!(
                    "cluster {c} is mapped by blobs {other:#x} and {id:#x}"
                ));
            }
        }
        rebuilt.block_on(rebuilt.close(blob))?;
    }
    Ok(())
}

fn check_engine<S: BlobStore>(store: &S, rep: &mut CheckReport) -> Result<()> {
    let cat = catalog(store)?;
    // (shard, blob seq) -> (blob id, salt, bytes)
    let mut data: HashMap<(usize, u64), (BlobId, u64, &[u8])> = HashMap::new();
    for (m, bytes) in &cat {
        if m.role == b"data" {
            rep.data_blobs += 1;
            data.insert((m.shard, m.seq), (m.id, m.salt, bytes));
            let s = scan_log(bytes, m.salt);
            rep.records += s.records.len() as u64;
            for (a, b) in &s.damaged {
                let after = s.records.iter().filter(|(o, _)| *o >= *b).count();
                rep.problems.push(format!(
                    "blob {:#x} (shard {}): bytes {a}..{b} fail their CRC and {after} valid \
                     records follow; opening drops everything after byte {a}",
                    m.id, m.shard
                ));
            }
        }
    }
    for (m, bytes) in &cat {
        if m.role != b"hint" && m.role != b"snapshot" {
            continue;
        }
        rep.hint_blobs += 1;
        let h = match hint::decode(bytes, m.id) {
            Ok(h) => h,
            Err(e) => {
                rep.problems.push(format!(
                    "{} blob {:#x} (shard {}) is invalid ({e}); open falls back to scanning",
                    String::from_utf8_lossy(&m.role),
                    m.id,
                    m.shard
                ));
                continue;
            }
        };
        // Keydir snapshots do not record seqs (they are written at close, newest wins).
        let check_seq = m.role == b"hint";
        let mut bad = 0u64;
        for e in &h.entries {
            let ok = data
                .get(&(m.shard, e.blob_seq))
                .is_some_and(|(_, salt, b)| {
                    b.get(e.offset as usize..)
                        .and_then(|r| record::decode(r, *salt))
                        .is_some_and(|r| {
                            r.key == e.key.as_slice() && (!check_seq || r.header.seq == e.seq)
                        })
                });
            if !ok {
                bad += 1;
            }
        }
        rep.hint_entries += h.entries.len() as u64;
        if bad > 0 {
            rep.problems.push(format!(
                "{} blob {:#x} (shard {}): {bad} of {} entries do not match their records",
                String::from_utf8_lossy(&m.role),
                m.id,
                m.shard,
                h.entries.len()
            ));
        }
    }
    Ok(())
}

/// What [`salvage`] recovered.
#[derive(Debug, Default)]
pub struct SalvageReport {
    /// Live key → value, newest record wins per key; deletes and uncommitted batches applied.
    pub live: BTreeMap<Vec<u8>, Vec<u8>>,
    pub records: u64,
    /// Records found only past damage (recovery by open would have lost them).
    pub beyond_damage: u64,
    pub damaged: Vec<Damage>,
    /// Batch records whose batch never committed (dropped, as open does).
    pub uncommitted: u64,
    /// Metadata rebuilt before salvaging (super block, md pages restored from the catalog).
    pub restored: Vec<String>,
}

/// If the super block does not decode, derive it from the layout (in the overlay only).
async fn rebuild_super_block<D: Device>(dev: &Overlay<D>) -> Result<Option<String>> {
    use crate::blobstore::native::{rebuild, superblock::SuperBlock};
    let mut b = vec![0u8; 4096];
    dev.read(0, &mut b).await?;
    if SuperBlock::decode(&b).is_ok() {
        return Ok(None);
    }
    let sb = rebuild::super_block_from_layout(
        dev,
        crate::blobstore::Bstype::new("BLOBCASK")?,
        (b"bc.role", b"super"),
    )
    .await?;
    dev.write(0, &sb.encode()).await?;
    Ok(Some(format!(
        "rebuilt the damaged super block from the layout (cluster size {}, super blob {:#x})",
        sb.cluster_size, sb.super_blob
    )))
}

/// Every readable record of the store on `dev` (loaded over an overlay, so nothing is
/// written), folded into the live key set.
pub fn salvage<D: Device>(dev: D) -> Result<SalvageReport> {
    let mut rep = SalvageReport::default();
    let dev = Overlay::new(dev);
    let mut sb = vec![0u8; 4096];
    pollster::block_on(dev.read(0, &mut sb))?;
    let clean_close =
        crate::blobstore::native::superblock::SuperBlock::decode(&sb).is_ok_and(|s| s.is_clean());
    if let Some(note) = pollster::block_on(rebuild_super_block(&dev))? {
        rep.restored.push(note);
    }
    let store = pollster::block_on(NativeBlobStore::load_salvage(
        dev,
        LoadOpts {
            force_recover: true,
            ..LoadOpts::default()
        },
    ))?;
    rep.restored
        .extend(crate::catalog::restore_lost_blobs(&store, clean_close)?);
    let cat = catalog(&store)?;
    let mut all: Vec<Salvaged> = Vec::new();
    let mut commits: HashSet<u64> = HashSet::new();
    for (m, bytes) in cat.iter().filter(|(m, _)| m.role == b"data") {
        let s = scan_log(bytes, m.salt);
        for &(a, b) in &s.damaged {
            rep.damaged.push(Damage {
                blob: m.id,
                start: a,
                end: b,
            });
        }
        for &(off, len) in &s.records {
            let Some(r) = record::decode(&bytes[off as usize..off as usize + len], m.salt) else {
                continue;
            };
            rep.records += 1;
            if off >= s.prefix_end {
                rep.beyond_damage += 1;
            }
            if let Some(b) = r.committed_batch() {
                commits.insert(b);
                continue;
            }
            all.push(Salvaged {
                shard: m.shard,
                seq: r.header.seq,
                kind: r.header.kind(),
                batch: (r.header.flags & record::BATCH != 0).then_some(r.header.batch_id),
                key: r.key.to_vec(),
                value: r.value.to_vec(),
            });
        }
    }
    // Newest record per key wins; a key lives in one shard, whose seqs are ordered.
    all.sort_by_key(|r| (r.shard, r.seq));
    let mut latest: HashMap<Vec<u8>, Salvaged> = HashMap::new();
    for r in all {
        if let Some(b) = r.batch {
            if !commits.contains(&b) {
                rep.uncommitted += 1;
                continue;
            }
        }
        latest.insert(r.key.clone(), r);
    }
    for (k, r) in latest {
        if r.kind == Kind::Put {
            rep.live.insert(k, r.value);
        }
    }
    Ok(rep)
}

/// A clear error for a store that cannot be salvaged at all.
pub fn unsalvageable(e: Error) -> Error {
    Error::Corruption {
        blob: 0,
        offset: 0,
        detail: format!("the blobstore metadata is unreadable, nothing can be salvaged: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log(records: &[(&[u8], &[u8])], salt: u64) -> Vec<u8> {
        let mut v = Vec::new();
        for (i, (k, val)) in records.iter().enumerate() {
            record::encode(&mut v, salt, i as u64 + 1, 0, 0, k, val);
        }
        v.resize(v.len() + 4096, 0);
        v
    }

    #[test]
    fn an_intact_log_scans_to_its_end() {
        let b = log(&[(b"a", b"1"), (b"b", b"2")], 7);
        let s = scan_log(&b, 7);
        assert_eq!(s.records.len(), 2);
        assert!(s.damaged.is_empty());
        assert_eq!(
            s.prefix_end,
            (s.records[1].0 as usize + s.records[1].1) as u64
        );
    }

    #[test]
    fn damage_in_the_middle_is_found_and_skipped() {
        let mut b = log(&[(b"a", b"one"), (b"b", b"two"), (b"c", b"three")], 7);
        let first = record::encoded_len(0, 1, 3);
        b[first + 22] ^= 0x40; // inside the second record
        let s = scan_log(&b, 7);
        assert_eq!(s.records.len(), 2, "first and third survive");
        assert_eq!(s.prefix_end, first as u64);
        assert_eq!(s.damaged.len(), 1);
        assert_eq!(s.damaged[0].0, first as u64);
    }

    #[test]
    fn a_wrong_salt_validates_nothing() {
        let b = log(&[(b"a", b"1")], 7);
        let s = scan_log(&b, 8);
        assert!(s.records.is_empty());
        assert_eq!(s.prefix_end, 0);
    }
}
