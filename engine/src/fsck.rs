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
//! 3. every data blob's log, with the rule open uses (`scan.rs`) and every piece of evidence
//!    (records' durable claims, `bc.len`, hint and snapshot lengths): damage to durable records
//!    is a problem named by blob, shard and offset (the root cause); a torn tail is a note;
//! 4. every hint and keydir snapshot: its CRCs, and each entry against the record it names
//!    (an entry whose record lies in a damaged range is a consequence, not a second problem).
//!    A hint that fails its CRC is a note after a crash (it may be half-written; open scans
//!    instead), a problem after a clean close.

use std::collections::{HashMap, HashSet};

use crate::blobstore::native::NativeBlobStore;
use crate::blobstore::{BlobId, BlobStore, LoadOpts};
use crate::device::{Device, Overlay};
use crate::error::{Error, Result};
use crate::salvage;
pub use crate::salvage::{LostBlob, SalvageReport, StoreShape};
pub use crate::scan::LogDamage;

/// What [`check`] found.
#[derive(Debug, Default, Clone)]
pub struct CheckReport {
    /// The super block said the store was closed cleanly.
    pub clean_shutdown: bool,
    pub blobs: usize,
    pub data_blobs: usize,
    /// Merge hint blobs.
    pub hint_blobs: usize,
    /// Keydir snapshot blobs.
    pub snapshot_blobs: usize,
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
    if super_shards(&rebuilt).is_none() {
        // An empty or foreign blobstore is not a clean blobcask store: open refuses it.
        rep.problems.push(
            "the device holds a blobstore but no blobcask store (no readable super blob with \
             `bc.shards`)"
                .into(),
        );
    }
    check_engine(&rebuilt, &mut rep)?;
    Ok(rep)
}

fn check_masks<D: Device>(
    normal: &NativeBlobStore<Overlay<D>>,
    rebuilt: &NativeBlobStore<Overlay<D>>,
    rep: &mut CheckReport,
) -> Result<()> {
    let mut owner: HashMap<u32, BlobId> = HashMap::new();
    let ids = rebuilt.block_on(rebuilt.blob_ids())?;
    rep.blobs = ids.len();
    for &id in &ids {
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
    if !rep.clean_shutdown {
        rep.notes.push(
            "the store was not closed cleanly: its masks are rebuilt from metadata on open \
             (normal after a crash)"
                .into(),
        );
        return Ok(());
    }
    // The masks as on disk: a load that finds them inconsistent rebuilds them in memory.
    let [md_a, cl_a, id_a] = match rebuilt.block_on(normal.disk_masks())? {
        Some(m) => m,
        None => {
            let (m, c) = masks(normal);
            [m, c, rebuilt.used_blob_ids()]
        }
    };
    let (md_b, cl_b) = masks(rebuilt);
    let id_b = rebuilt.used_blob_ids();
    let leaked = diff(&cl_a, &cl_b);
    let unmarked = diff(&cl_b, &cl_a);
    if !leaked.is_empty() {
        rep.problems.push(format!(
            "used-cluster mask marks {} clusters no blob owns (leak): {}",
            leaked.len(),
            sample(&leaked)
        ));
    }
    for c in unmarked.iter().take(8) {
        let who = owner.get(c).map_or_else(
            || "the metadata".to_string(),
            |b| format!("live blob {b:#x}"),
        );
        rep.problems.push(format!(
            "used-cluster mask bit {c} is clear for device cluster {c} of {who}: a later \
             allocation would overwrite it; open refuses (`repair` rebuilds the masks)"
        ));
    }
    if unmarked.len() > 8 {
        rep.problems.push(format!(
            "... {} more used-cluster mask bits clear for live clusters",
            unmarked.len() - 8
        ));
    }
    let md_leaked = diff(&md_a, &md_b);
    let md_unmarked = diff(&md_b, &md_a);
    if !md_leaked.is_empty() {
        rep.problems.push(format!(
            "used-md-page mask marks {} md pages no blob uses (leak): {}",
            md_leaked.len(),
            sample(&md_leaked)
        ));
    }
    if !md_unmarked.is_empty() {
        rep.problems.push(format!(
            "used-md-page mask bits clear for {} md pages of live blobs: {}; a later blob \
             would overwrite their metadata; open refuses or rebuilds the masks (`repair` \
             rebuilds them)",
            md_unmarked.len(),
            sample(&md_unmarked)
        ));
    }
    for i in diff(&id_b, &id_a) {
        rep.problems.push(format!(
            "used-blob-id mask bit {i} is clear for live blob {:#x} (its root md page {i} is \
             valid): the blob is hidden and its keys read as absent; open refuses when the \
             catalog lists it (`repair` brings it back)",
            crate::blobstore::native::blobmd::blob_id(i)
        ));
    }
    for i in diff(&id_a, &id_b) {
        rep.problems.push(format!(
            "used-blob-id mask bit {i} is set but md page {i} holds no valid root of blob {:#x} \
             (a leak, no data lost)",
            crate::blobstore::native::blobmd::blob_id(i)
        ));
    }
    Ok(())
}

/// What rebuilding the masks from the metadata (`repair`'s load) changed in the used-blob-id
/// mask of a cleanly closed store: blobs a cleared bit hid are back.
fn mask_repairs<D: Device>(store: &NativeBlobStore<Overlay<D>>) -> Result<Vec<String>> {
    let Some([_, _, on_disk]) = store.block_on(store.disk_masks())? else {
        return Ok(Vec::new());
    };
    Ok(diff(&store.used_blob_ids(), &on_disk)
        .into_iter()
        .map(|i| {
            format!(
                "brought back blob {:#x}, hidden by a clear used-blob-id mask bit {i}",
                crate::blobstore::native::blobmd::blob_id(i)
            )
        })
        .collect())
}

fn check_engine<S: BlobStore>(store: &S, rep: &mut CheckReport) -> Result<()> {
    let an = salvage::analyze(store)?;
    let folded = salvage::fold(&an);
    rep.data_blobs = an.logs.len();
    rep.hint_blobs = an.hint_blobs - an.snapshot_blobs;
    rep.snapshot_blobs = an.snapshot_blobs;
    for l in &an.logs {
        rep.records += l.records.len() as u64 + l.commits.len() as u64;
        let consequence = if an.covers(l.shard, l.seq) {
            "a hint or snapshot covers the blob, so open succeeds and reads of the keys whose \
             records lie there fail"
        } else {
            "open refuses this log (RecoveryMode::Salvage skips the range)"
        };
        for d in &l.scan.damaged {
            let after = l.records.iter().filter(|r| r.offset > d.offset).count();
            if let Some((batch, members)) = damaged_commit(&an, l, d.offset) {
                rep.problems.push(format!(
                    "blob {:#x} (shard {}, seq {}): damaged batch commit record at offset {} \
                     ({} bytes; batch {batch}); {members} members depend on it (their own \
                     records are intact), {after} valid records follow; {consequence}",
                    l.id, l.shard, l.seq, d.offset, d.len
                ));
                continue;
            }
            rep.problems.push(format!(
                "blob {:#x} (shard {}, seq {}): damaged record at offset {}: {} bytes of durable \
                 log fail validation, {after} valid records follow; {consequence}; `repair` \
                 rebuilds without it",
                l.id, l.shard, l.seq, d.offset, d.len
            ));
        }
        if let Some(at) = l.scan.torn_at {
            rep.notes.push(format!(
                "blob {:#x} (shard {}): torn tail at offset {at}: {} records written after the \
                 last flush are dropped (normal after a crash)",
                l.id, l.shard, l.scan.unflushed
            ));
        }
    }
    for b in &an.bad_hints {
        let what = format!(
            "{} blob {:#x} (shard {}) is unusable ({}); open rebuilds from a scan",
            b.role, b.id, b.shard, b.why
        );
        // Half-written hints are normal after a crash; after a clean close they are damage.
        if rep.clean_shutdown {
            rep.problems.push(what);
        } else {
            rep.notes.push(format!("{what} (normal after a crash)"));
        }
    }
    let damaged_at = |shard: usize, blob_seq: u64, off: u64| {
        an.logs.iter().any(|l| {
            l.shard == shard
                && l.seq == blob_seq
                && l.scan
                    .damaged
                    .iter()
                    .any(|d| off >= d.offset && off < d.offset + d.len)
        })
    };
    let hints = an.hints.iter().map(|(s, h)| (*s, h, true));
    let snaps = an.snapshots.iter().map(|(s, h)| (*s, h, false));
    for (shard, h, check_seq) in hints.chain(snaps) {
        rep.hint_entries += h.entries.len() as u64;
        let bad = h
            .entries
            .iter()
            .filter(|e| {
                let off = u64::from(e.offset);
                let found = an.logs.iter().any(|l| {
                    l.shard == shard
                        && l.seq == e.blob_seq
                        && l.records.iter().any(|r| {
                            r.offset == off && r.key == e.key && (!check_seq || r.seq == e.seq)
                        })
                });
                !found && !damaged_at(shard, e.blob_seq, off)
            })
            .count();
        if bad > 0 {
            rep.problems.push(format!(
                "a hint of shard {shard}: {bad} of {} entries do not match their records",
                h.entries.len()
            ));
        }
    }
    if !folded.lost.is_empty() || !folded.suspect.is_empty() {
        rep.notes.push(format!(
            "consequences of the damage: {} keys lost (their newest record is damaged), {} keys \
             may be stale (`repair --report` lists them)",
            folded.lost.len(),
            folded.suspect.len()
        ));
    }
    Ok(())
}

/// If the damaged range at `off` of `l` is the commit record of a batch whose members lie just
/// before it (the newest valid record before the range is a member of a batch that no
/// surviving commit record commits), that batch and its member count.
fn damaged_commit(an: &salvage::Analysis, l: &salvage::BlobLog, off: u64) -> Option<(u64, usize)> {
    let last = l.records.iter().rev().find(|r| r.offset < off)?;
    let batch = last.batch?;
    let committed = an.logs.iter().any(|x| x.commits.contains(&batch));
    if committed {
        return None;
    }
    // The range must not start with a readable header of another kind.
    let at = usize::try_from(off).ok()?;
    if let Some(h) = l.bytes.get(at..).and_then(crate::record::parse_header) {
        if h.flags & crate::record::COMMIT == 0 {
            return None;
        }
    }
    let members = an
        .logs
        .iter()
        .flat_map(|x| &x.records)
        .filter(|r| r.batch == Some(batch))
        .count();
    Some((batch, members))
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
/// written), folded into the live key set with every hint and snapshot as evidence.
pub fn salvage<D: Device>(dev: D) -> Result<SalvageReport> {
    let dev = Overlay::new(dev);
    let mut sb = vec![0u8; 4096];
    pollster::block_on(dev.read(0, &mut sb))?;
    let clean_close =
        crate::blobstore::native::superblock::SuperBlock::decode(&sb).is_ok_and(|s| s.is_clean());
    let mut restored: Vec<String> = pollster::block_on(rebuild_super_block(&dev))?
        .into_iter()
        .collect();
    let store = pollster::block_on(NativeBlobStore::load_salvage(
        dev,
        LoadOpts {
            force_recover: true,
            ..LoadOpts::default()
        },
    ))?;
    restored.extend(crate::catalog::restore_lost_blobs(&store, clean_close)?);
    if clean_close {
        restored.extend(mask_repairs(&store)?);
    }
    let lost = crate::catalog::restore_stale_blobs(&store)?;
    let an = salvage::analyze_with_lost(&store, lost)?;
    let mut rep = salvage::fold(&an);
    rep.restored = restored;
    let seen = an.logs.iter().map(|l| l.shard + 1).max().unwrap_or(1);
    rep.shape = Some(salvage::StoreShape {
        cluster_size: store.cluster_size(),
        io_unit_size: store.io_unit_size(),
        size: store.layout().size,
        shards: super_shards(&store).unwrap_or(seen),
    });
    Ok(rep)
}

/// The super blob's `bc.shards`, if readable.
fn super_shards<S: BlobStore>(store: &S) -> Option<usize> {
    let b = store.block_on(store.open(store.super_blob()?)).ok()?;
    let v = store.block_on(store.get_xattr(&b, "bc.shards"));
    let _ = store.block_on(store.close(b));
    let n = u32::from_le_bytes(v.ok()??.try_into().ok()?) as usize;
    (n >= 1).then_some(n)
}

/// A clear error for a store that cannot be salvaged at all.
pub fn unsalvageable(e: Error) -> Error {
    Error::Corruption {
        blob: 0,
        offset: 0,
        detail: format!("the blobstore metadata is unreadable, nothing can be salvaged: {e}"),
    }
}
