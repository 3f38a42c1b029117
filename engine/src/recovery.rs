//! Recovery: what open finds on the blobstore, turned into a plain [`Recovered`] value (each
//! shard's keydir and blob table, its next seqs, its hint and snapshot blobs). Merge
//! roll-back/roll-forward, keydir rebuild from snapshots, hints or by scanning. Starting the
//! shard threads and the merge worker is `db`'s job.
//!
//! Open runs in two phases so that a failed open writes nothing.
//!
//! **Read and validate** (no device write):
//! 1. the super blob (role `super`) gives the shard count and the epoch of the last run;
//! 2. every blob is classified by `bc.role`; merge settlement is *decided*: a merge output
//!    still `pending` is doomed (the merge never committed: pre-merge state), one that is `done`
//!    dooms whatever of its inputs survived (post-merge state); hints of doomed blobs too;
//! 3. each shard rebuilds its keydir, in parallel: from its newest valid keydir snapshot (all of
//!    whose blobs still exist) plus the blobs written after it, or else blob by blob from a
//!    valid merge hint or by scanning (`scan.rs`: a torn tail ends the log, damage to durable
//!    records fails open unless `RecoveryMode::Salvage` skips it). Records apply by seq (newest
//!    wins; deletes are remembered until the end). Batch members wait in a side list;
//! 4. members whose batch has a commit record in any shard are applied. A shard whose own
//!    commit record of such a batch was lost in a crash *adopts* the batch: `db` appends the
//!    commit record to that shard's log and flushes it before the store serves or merges, so
//!    the members no longer depend on another shard's log, which a later open may read from a
//!    snapshot or a merge may rewrite (neither carries commit records).
//!
//! **Commit** (only once every step above succeeded; skipped by a read-only open):
//! 5. the super blob's `bc.epoch` is bumped so batch ids of this run never collide with an
//!    earlier run's (or the super blob is created on a new store);
//! 6. doomed merge blobs and superseded hints are deleted;
//! 7. every blob is sealed: shrunk to the clusters that hold records (returning the unused part
//!    of a free-space lease); empty ones are deleted; the newest data blob of each shard is
//!    continued by the shard's next write (see `seal_all`).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::blob_scan::{blob_source, read_hint};
use crate::blobs::{
    close_and_delete, le_u32, le_u64, read_meta, Meta, FORMAT_VERSION, ROLE_DATA, ROLE_HINT,
    ROLE_SNAPSHOT, ROLE_SUPER, X_EPOCH, X_FORMAT, X_MERGE, X_ROLE, X_SHARDS, X_TOTALS,
};
use crate::blobstore::{Blob as _, BlobId, BlobStore, CreateOpts};
use crate::catalog;
use crate::error::{Error, Result};
use crate::keydir::{hash_key, Loc};
use crate::options::{Options, RecoveryMode};
use crate::record::{self, Kind};
use crate::scan::{self, Evidence, LogDamage};
use crate::state::{record_len, BlobEntry, BlobHandle, BlobRole, Config, Index, LOC_BATCH_BIT};

/// What the super blob says; `id` is `None` on a new store (the commit phase creates it).
struct SuperInfo {
    id: Option<BlobId>,
    shards: usize,
    /// The epoch of this run (the stored one + 1).
    epoch: u64,
    /// Counters of earlier runs (`bc.totals`; zero on a new or older store).
    totals: crate::state::Totals,
}

/// Read the super blob, writing nothing.
fn read_super<S: BlobStore>(store: &S, opts: &Options) -> Result<SuperInfo> {
    let Some(id) = store.super_blob() else {
        if !store.block_on(store.blob_ids())?.is_empty() {
            return Err(Error::invalid(
                "the blobstore holds blobs but no blobcask super blob (a foreign store?)",
            ));
        }
        return Ok(SuperInfo {
            id: None,
            shards: opts.shards,
            epoch: 1,
            totals: Default::default(),
        });
    };
    let blob = store.block_on(store.open(id))?;
    let x = |n: &str| store.block_on(store.get_xattr(&blob, n));
    let read = (|| {
        Ok::<_, Error>((
            x(X_ROLE)?,
            le_u32(&x(X_FORMAT)?),
            le_u32(&x(X_SHARDS)?),
            le_u64(&x(X_EPOCH)?),
            x(X_TOTALS)?,
        ))
    })();
    store.block_on(store.close(blob))?;
    let (role, format, shards, epoch, totals) = read?;
    let totals = totals
        .as_deref()
        .and_then(crate::state::Totals::decode)
        .unwrap_or_default();
    match (role.as_deref(), format, shards) {
        (Some(ROLE_SUPER), Some(FORMAT_VERSION), Some(n)) if n >= 1 => {
            if n as usize != opts.shards {
                log::info!(
                    "blobcask: store was created with {n} shards; using {n}, not {}",
                    opts.shards
                );
            }
            Ok(SuperInfo {
                id: Some(id),
                shards: n as usize,
                epoch: epoch.unwrap_or(0) + 1,
                totals,
            })
        }
        (Some(ROLE_SUPER), f, _) => Err(Error::Unsupported(format!(
            "blobcask format {f:?}, this build reads {FORMAT_VERSION}"
        ))),
        _ => Err(Error::invalid(
            "the blobstore's super blob is not a blobcask super blob",
        )),
    }
}

/// Commit phase: record this run's epoch, or create the super blob of a new store.
fn commit_super<S: BlobStore>(store: &S, sup: &SuperInfo) -> Result<()> {
    if let Some(id) = sup.id {
        let blob = store.block_on(store.open(id))?;
        let res = store
            .block_on(store.set_xattr(&blob, X_EPOCH, &sup.epoch.to_le_bytes()))
            .and_then(|()| store.block_on(store.sync_md(&blob)));
        store.block_on(store.close(blob))?;
        return Ok(res?);
    }
    let id = store.block_on(store.create(CreateOpts {
        num_clusters: 0,
        xattrs: vec![
            (X_ROLE.into(), ROLE_SUPER.to_vec()),
            (X_FORMAT.into(), FORMAT_VERSION.to_le_bytes().to_vec()),
            (X_SHARDS.into(), (sup.shards as u32).to_le_bytes().to_vec()),
            (X_EPOCH.into(), sup.epoch.to_le_bytes().to_vec()),
        ],
        use_extent_table: false,
        ..CreateOpts::default()
    }))?;
    Ok(store.block_on(store.set_super(id))?)
}

/// Per-shard output of phase 1.
struct Rebuilt<S: BlobStore> {
    index: Index<S>,
    members: Vec<Member>,
    commits: HashSet<u64>,
    max_seq: u64,
    used_hints: bool,
    max_blob_seq: u64,
    hints: HashMap<u64, BlobId>,
    snapshots: Vec<BlobId>,
    /// Older hints of a blob that has a newer one: deleted by the commit phase.
    superseded: Vec<S::Blob>,
}

/// A batch member found by a scan, applied only if its batch committed.
struct Member {
    batch: u64,
    key: Vec<u8>,
    seq: u64,
    loc: Option<Loc>,
}

/// A store as open found it: every shard's rebuilt index and counters, validated and (unless
/// read-only) committed, nothing running yet. `db` turns it into a running store.
pub(crate) struct Recovered<S: BlobStore> {
    pub store: S,
    pub cfg: Config,
    pub shards: Vec<RecoveredShard<S>>,
    /// This run's epoch: batch ids of this run start at `epoch << 32`.
    pub epoch: u64,
    /// How long validation, rebuild and commit took.
    pub elapsed: Duration,
    /// Whether hints (snapshots or merge hints) served at least one shard.
    pub used_hints: bool,
}

/// One shard of a [`Recovered`] store.
pub(crate) struct RecoveredShard<S: BlobStore> {
    pub index: Index<S>,
    /// Seq of the shard's next record.
    pub next_seq: u64,
    /// Seq of the shard's next blob.
    pub next_blob_seq: u64,
    /// Merge hints: data blob seq → hint blob id.
    pub hints: HashMap<u64, BlobId>,
    /// Keydir snapshot blobs.
    pub snapshots: Vec<BlobId>,
    /// Batches applied here on another shard's commit record: `db` writes their commit
    /// records to this shard before serving (see the module doc, step 4).
    pub adopted: Vec<u64>,
}

/// Recover a blobcask store on an already loaded or initialised blobstore: validate and
/// rebuild everything first, then (unless read-only) commit; see the module doc.
pub(crate) fn recover<S: BlobStore>(store: S, opts: &Options) -> Result<Recovered<S>> {
    recover_view(store, opts, None)
}

/// [`recover`] of the live store (`view` `None`) or, read-only, of the checkpoint whose
/// snapshot blobs are `view`.
pub(crate) fn recover_view<S: BlobStore>(
    store: S,
    opts: &Options,
    view: Option<&[BlobId]>,
) -> Result<Recovered<S>> {
    opts.validate()?;
    if view.is_some() && !opts.read_only {
        return Err(Error::invalid("a checkpoint opens read-only"));
    }
    let t0 = Instant::now();
    let sup = read_super(&store, opts)?;
    let cfg = resolve_config(&store, opts, &sup)?;
    let (metas, doomed) = read_catalog(&store, &sup, cfg.shards, view)?;
    let mut rebuilt = rebuild_shards(&store, &cfg, metas)?;
    let (used_hints, adopted) = apply_committed_batches(&mut rebuilt);
    if !opts.read_only {
        commit_open(&store, &cfg, &sup, doomed, &mut rebuilt)?;
    }
    let shards = rebuilt
        .into_iter()
        .zip(adopted)
        .map(|(r, adopted)| RecoveredShard {
            index: r.index,
            next_seq: r.max_seq + 1,
            next_blob_seq: r.max_blob_seq + 1,
            hints: r.hints,
            snapshots: r.snapshots,
            adopted,
        })
        .collect();
    Ok(Recovered {
        store,
        cfg,
        shards,
        epoch: sup.epoch,
        elapsed: t0.elapsed(),
        used_hints,
    })
}

/// Resolve the options against the store (the super blob's shard count wins over the
/// options'); refuses a new store's shard count the device cannot hold, before any write.
fn resolve_config<S: BlobStore>(store: &S, opts: &Options, sup: &SuperInfo) -> Result<Config> {
    let shards = sup.shards;
    let cluster = u64::from(store.cluster_size());
    if sup.id.is_none() {
        crate::options::check_space(
            store.total_data_clusters(),
            cluster,
            opts.shards,
            opts.max_blob_size,
        )?;
    }
    let io_unit = u64::from(store.io_unit_size());
    let geo = crate::options::Geometry::new(
        store.total_data_clusters(),
        cluster,
        shards,
        opts.max_blob_size.max(cluster),
    );
    Ok(Config {
        shards,
        max_blob_size: geo.max_blob_size,
        sync: opts.sync,
        merge: opts.merge.clone(),
        max_key_size: opts.max_key_size,
        max_value_size: opts.max_value_size,
        io_unit,
        page: io_unit.max(4096),
        cluster,
        lease_clusters: geo.lease_clusters,
        merge_unit: geo.merge_unit,
        merge_reserve: geo.merge_reserve,
        read_only: opts.read_only,
        recovery: opts.recovery,
        stored_totals: sup.totals,
    })
}

/// Blobs to keep, and doomed blobs (see [`settle_merges`]).
type Settled<S> = (Vec<Meta<S>>, Vec<Meta<S>>);

/// Read every blob's xattrs, hold the enumeration to the last clean close's catalog, and
/// settle merges: returns the blobs to keep and the doomed ones (deleted only by the commit).
fn read_catalog<S: BlobStore>(
    store: &S,
    sup: &SuperInfo,
    shards: usize,
    view: Option<&[BlobId]>,
) -> Result<Settled<S>> {
    let super_id = store.super_blob();
    let ids = store.block_on(store.blob_ids())?;
    let mut metas: Vec<Meta<S>> = Vec::new();
    let mut catalogs = Vec::new();
    for &id in &ids {
        if Some(id) == super_id {
            continue;
        }
        let meta = read_meta(store, id, view).map_err(|e| catalog::name_damaged(store, id, e))?;
        if let Some(m) = meta {
            if m.shard < shards {
                metas.push(m);
                continue;
            }
            if m.role == catalog::ROLE && store.loaded_clean() {
                // Unreadable: no cross-check (a damaged catalog is `check`'s to report).
                let ch = store.channel()?;
                catalogs.extend(catalog::read_blob(store, &ch, &m.blob).ok());
            }
            store.block_on(store.close(m.blob))?;
        }
    }
    if let Some(id) = sup.id {
        catalog::check_enumerated(&ids, &catalogs, sup.epoch - 1, id)?;
    }
    Ok(settle_merges(metas))
}

/// Phase 1: rebuild every shard's keydir, one thread per shard.
fn rebuild_shards<S: BlobStore>(
    store: &S,
    cfg: &Config,
    metas: Vec<Meta<S>>,
) -> Result<Vec<Rebuilt<S>>> {
    let mut per_shard: Vec<Vec<Meta<S>>> = (0..cfg.shards).map(|_| Vec::new()).collect();
    for m in metas {
        let s = m.shard;
        per_shard[s].push(m);
    }
    let rebuilt: Vec<Result<Rebuilt<S>>> = std::thread::scope(|sc| {
        let hs: Vec<_> = per_shard
            .into_iter()
            .map(|ms| sc.spawn(move || rebuild_shard(store, cfg, ms)))
            .collect();
        hs.into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(Error::invalid("recovery thread panicked")))
            })
            .collect()
    });
    rebuilt.into_iter().collect()
}

/// Phase 2: apply the members of batches committed in any shard, finish the keydirs and count
/// live bytes; returns whether any shard used hints, and per shard the batches it adopts (applied
/// on another shard's commit record alone), sorted.
fn apply_committed_batches<S: BlobStore>(rebuilt: &mut [Rebuilt<S>]) -> (bool, Vec<Vec<u64>>) {
    let committed: HashSet<u64> = rebuilt
        .iter()
        .flat_map(|r| r.commits.iter().copied())
        .collect();
    let mut used_hints = false;
    let mut adopted = Vec::with_capacity(rebuilt.len());
    for r in rebuilt {
        let mut mine: Vec<u64> = Vec::new();
        for m in std::mem::take(&mut r.members) {
            if committed.contains(&m.batch) {
                if !r.commits.contains(&m.batch) {
                    mine.push(m.batch);
                }
                r.index.keydir.apply(&m.key, hash_key(&m.key), m.seq, m.loc);
            }
        }
        mine.sort_unstable();
        mine.dedup();
        adopted.push(mine);
        r.index.keydir.finish_rebuild();
        let lives: Vec<(u16, u64)> = r
            .index
            .keydir
            .iter()
            .map(|(k, l)| (l.blob, record_len(k.len(), l)))
            .collect();
        for (b, n) in lives {
            r.index.add_live(b, n);
        }
        used_hints |= r.used_hints;
    }
    (used_hints, adopted)
}

/// The commit phase of open: every write recovery needs, once everything validated.
fn commit_open<S: BlobStore>(
    store: &S,
    cfg: &Config,
    sup: &SuperInfo,
    doomed: Vec<Meta<S>>,
    rebuilt: &mut [Rebuilt<S>],
) -> Result<()> {
    commit_super(store, sup)?;
    for m in doomed {
        log::info!(
            "blobcask: recovery deletes blob {:#x} ({}, shard {}, seq {})",
            m.id,
            String::from_utf8_lossy(&m.role),
            m.shard,
            m.seq
        );
        close_and_delete(store, m.blob)?;
    }
    for r in rebuilt.iter_mut() {
        for b in std::mem::take(&mut r.superseded) {
            close_and_delete(store, b)?;
        }
        seal_all(store, cfg, &mut r.index)?;
    }
    Ok(())
}

/// Decide how merges roll back (pending output) or forward (done output with surviving
/// inputs): returns the blobs to keep and the doomed ones, which only the commit phase deletes.
fn settle_merges<S: BlobStore>(metas: Vec<Meta<S>>) -> Settled<S> {
    let mut doomed: HashSet<(usize, u64)> = HashSet::new();
    for m in &metas {
        if m.role != ROLE_DATA {
            continue;
        }
        match m.merge.as_deref() {
            Some(b"pending") => {
                doomed.insert((m.shard, m.seq));
            }
            Some(b"done") => {
                for &i in &m.inputs {
                    doomed.insert((m.shard, i));
                }
            }
            _ => {}
        }
    }
    let data_seqs: HashSet<(usize, u64)> = metas
        .iter()
        .filter(|m| m.role == ROLE_DATA && !doomed.contains(&(m.shard, m.seq)))
        .map(|m| (m.shard, m.seq))
        .collect();
    let mut keep = Vec::new();
    let mut doomed_blobs = Vec::new();
    for m in metas {
        let dead = if m.role == ROLE_DATA {
            doomed.contains(&(m.shard, m.seq))
        } else if m.role == ROLE_HINT {
            !data_seqs.contains(&(m.shard, m.for_seq))
        } else {
            false
        };
        if dead {
            doomed_blobs.push(m);
        } else {
            keep.push(m);
        }
    }
    (keep, doomed_blobs)
}

/// An engine blob's metadata, sorted by role for one shard's rebuild.
struct ShardBlobs<S: BlobStore> {
    /// Data blobs, oldest first.
    data: Vec<Meta<S>>,
    /// Newest hint per data blob seq.
    hints: HashMap<u64, Meta<S>>,
    /// Keydir snapshots, newest first.
    snaps: Vec<Meta<S>>,
}

/// Rebuild one shard's keydir: from its newest usable snapshot, then each data blob not
/// covered by it from a valid merge hint, else by scanning.
fn rebuild_shard<S: BlobStore>(store: &S, cfg: &Config, metas: Vec<Meta<S>>) -> Result<Rebuilt<S>> {
    let ch = store.channel()?;
    let mut out = Rebuilt {
        index: Index::new(),
        members: Vec::new(),
        commits: HashSet::new(),
        max_seq: 0,
        used_hints: false,
        max_blob_seq: metas.iter().map(|m| m.seq).max().unwrap_or(0),
        hints: HashMap::new(),
        snapshots: Vec::new(),
        superseded: Vec::new(),
    };
    out.index.keydir.begin_rebuild();
    let blobs = sort_by_role(store, metas, &mut out)?;
    let slot_of = add_data_blobs(&mut out, &blobs.data)?;
    let covered = apply_snapshot(store, cfg, &ch, &mut out, &blobs.snaps, &slot_of);
    for s in blobs.snaps {
        out.snapshots.push(s.id);
        store.block_on(store.close(s.blob))?;
    }
    for m in &blobs.data {
        if covered.contains(&m.seq) {
            continue;
        }
        let slot = slot_of[&m.seq];
        let hint = blobs.hints.get(&m.seq);
        if hint.is_some_and(|h| apply_hint(store, cfg, &ch, &mut out, m, h, slot)) {
            continue;
        }
        scan_data_blob(store, cfg, &ch, &mut out, m, slot)?;
    }
    for (seq, h) in blobs.hints {
        out.hints.insert(seq, h.id);
        store.block_on(store.close(h.blob))?;
    }
    Ok(out)
}

/// Sort a shard's blobs by role; an older hint of a blob that has a newer one goes to
/// `out.superseded`, blobs of unknown roles are closed.
fn sort_by_role<S: BlobStore>(
    store: &S,
    metas: Vec<Meta<S>>,
    out: &mut Rebuilt<S>,
) -> Result<ShardBlobs<S>> {
    let mut data: Vec<Meta<S>> = Vec::new();
    let mut hints: HashMap<u64, Meta<S>> = HashMap::new();
    let mut snaps: Vec<Meta<S>> = Vec::new();
    for m in metas {
        match m.role.as_slice() {
            ROLE_DATA => data.push(m),
            ROLE_HINT => {
                if let Some(old) = hints.insert(m.for_seq, m) {
                    out.superseded.push(old.blob);
                }
            }
            ROLE_SNAPSHOT => snaps.push(m),
            _ => store.block_on(store.close(m.blob))?,
        }
    }
    data.sort_by_key(|m| m.seq);
    snaps.sort_by_key(|m| std::cmp::Reverse(m.seq));
    Ok(ShardBlobs { data, hints, snaps })
}

/// Blob table: every data blob gets a slot; returns blob seq → slot.
fn add_data_blobs<S: BlobStore>(
    out: &mut Rebuilt<S>,
    data: &[Meta<S>],
) -> Result<HashMap<u64, u16>> {
    let mut slot_of: HashMap<u64, u16> = HashMap::new();
    for m in data {
        let slot = out.index.add_blob(BlobEntry {
            handle: Arc::new(BlobHandle {
                blob: m.blob.clone(),
                id: m.id,
                seq: m.seq,
                salt: m.salt,
            }),
            written: 0,
            live: 0,
            role: BlobRole::Sealed,
        })?;
        slot_of.insert(m.seq, slot);
    }
    Ok(slot_of)
}

/// Load the newest snapshot whose blobs all still exist; returns the data blob seqs it covers
/// (plus `u64::MAX` when one was used), empty if none was usable.
fn apply_snapshot<S: BlobStore>(
    store: &S,
    cfg: &Config,
    ch: &S::Channel,
    out: &mut Rebuilt<S>,
    snaps: &[Meta<S>],
    slot_of: &HashMap<u64, u16>,
) -> HashSet<u64> {
    let mut covered: HashSet<u64> = HashSet::new();
    for s in snaps {
        if !covered.is_empty() {
            break;
        }
        let Ok(bytes) = read_hint(store, cfg, ch, &s.blob) else {
            continue;
        };
        let Ok(h) = crate::hint::decode_ref(&bytes, s.blob.id()) else {
            continue;
        };
        if h.owner_seq != s.seq || !h.blobs.iter().all(|(b, _)| slot_of.contains_key(b)) {
            continue;
        }
        for (b, len) in &h.blobs {
            if let Some(e) = out.index.entry_mut(slot_of[b]) {
                e.written = *len;
            }
            covered.insert(*b);
        }
        out.index.keydir.reserve(h.header.entries as usize);
        for e in h.entries() {
            let Some(&blob) = slot_of.get(&e.blob_seq) else {
                continue;
            };
            let loc = Loc {
                blob,
                offset: e.offset,
                value_len: e.value_len,
            };
            out.index
                .keydir
                .apply(e.key, hash_key(e.key), e.seq, Some(loc));
        }
        out.max_seq = out.max_seq.max(h.header.max_seq);
        out.used_hints = true;
        covered.insert(u64::MAX);
    }
    covered
}

/// Load data blob `m` (in `slot`) from its merge hint `h`; false if the hint is unreadable or
/// is not a single-blob hint of `m` (the caller then scans the blob).
fn apply_hint<S: BlobStore>(
    store: &S,
    cfg: &Config,
    ch: &S::Channel,
    out: &mut Rebuilt<S>,
    m: &Meta<S>,
    h: &Meta<S>,
    slot: u16,
) -> bool {
    let Ok(bytes) = read_hint(store, cfg, ch, &h.blob) else {
        return false;
    };
    let Ok(hint) = crate::hint::decode_ref(&bytes, h.blob.id()) else {
        return false;
    };
    if hint.owner_seq != h.seq || hint.blobs.len() != 1 || hint.blobs[0].0 != m.seq {
        return false;
    }
    out.index.keydir.reserve(hint.header.entries as usize);
    for e in hint.entries() {
        let loc = Loc {
            blob: slot,
            offset: e.offset,
            value_len: e.value_len,
        };
        out.index
            .keydir
            .apply(e.key, hash_key(e.key), e.seq, Some(loc));
    }
    if let Some(e) = out.index.entry_mut(slot) {
        e.written = hint.blobs[0].1;
    }
    out.max_seq = out.max_seq.max(hint.header.max_seq);
    out.used_hints = true;
    true
}

/// Load data blob `m` (in `slot`) by scanning its log.
fn scan_data_blob<S: BlobStore>(
    store: &S,
    cfg: &Config,
    ch: &S::Channel,
    out: &mut Rebuilt<S>,
    m: &Meta<S>,
    slot: u16,
) -> Result<()> {
    let ev = Evidence::of_blob(m.len, m.merge.as_deref(), 0);
    let mut src = blob_source(store, cfg, ch, &m.blob);
    let found = scan::scan_log(&mut src, m.salt, ev, cfg.recovery, |off, rec| {
        apply_scanned(out, slot, off, rec)
    })?;
    note_scan(out, cfg.recovery, m, &found)?;
    if let Some(e) = out.index.entry_mut(slot) {
        e.written = found.end;
    }
    Ok(())
}

/// Apply one record found by a scan to the shard being rebuilt.
fn apply_scanned<S: BlobStore>(out: &mut Rebuilt<S>, slot: u16, off: u64, rec: record::Record<'_>) {
    out.max_seq = out.max_seq.max(rec.header.seq);
    let batch = rec.header.flags & record::BATCH != 0;
    let loc = match rec.header.kind() {
        Kind::Commit => {
            if let Some(id) = rec.committed_batch() {
                out.commits.insert(id);
            }
            return;
        }
        Kind::Put => Some(Loc {
            blob: slot,
            offset: off as u32,
            value_len: rec.header.value_len | if batch { LOC_BATCH_BIT } else { 0 },
        }),
        Kind::Delete => None,
    };
    if batch {
        out.members.push(Member {
            batch: rec.header.batch_id,
            key: rec.key.to_vec(),
            seq: rec.header.seq,
            loc,
        });
    } else {
        out.index
            .keydir
            .apply(rec.key, hash_key(rec.key), rec.header.seq, loc);
    }
}

/// Refuse damage under the default mode; under `Salvage` remember and log what was skipped.
fn note_scan<S: BlobStore>(
    out: &mut Rebuilt<S>,
    mode: RecoveryMode,
    m: &Meta<S>,
    found: &scan::LogScan,
) -> Result<()> {
    for d in &found.damaged {
        if mode == RecoveryMode::TolerateTornTail {
            return Err(Error::DamagedLog {
                shard: m.shard,
                blob: m.id,
                offset: d.offset,
                len: d.len,
            });
        }
        log::warn!(
            "blobcask: salvage skipped {} damaged bytes at offset {} of blob {:#x} (shard {}, seq {})",
            d.len,
            d.offset,
            m.id,
            m.shard,
            m.seq
        );
        out.index.damage.push(LogDamage {
            shard: m.shard,
            blob: m.id,
            blob_seq: m.seq,
            offset: d.offset,
            len: d.len,
        });
    }
    if let Some(at) = found.torn_at {
        log::info!(
            "blobcask: torn tail at offset {at} of blob {:#x} (shard {}): {} unflushed records dropped",
            m.id,
            m.shard,
            found.unflushed
        );
    }
    Ok(())
}

/// Shrink every blob to the clusters holding records; delete empty ones. The shard's newest
/// data blob, unless it is a merge output or full, is kept as it is and marked active: the
/// shard continues its log (see `shard::resume_active`), so a process that writes a little and
/// exits does not leave a blob of at least one cluster behind each time.
fn seal_all<S: BlobStore>(store: &S, cfg: &Config, index: &mut Index<S>) -> Result<()> {
    let newest = index
        .blobs
        .iter()
        .enumerate()
        .filter_map(|(i, e)| e.as_ref().map(|e| (i, e)))
        .max_by_key(|(_, e)| e.handle.seq)
        .map(|(i, _)| i);
    let mut resume = None;
    if let Some(i) = newest {
        if let Some(e) = &index.blobs[i] {
            let merged = store.block_on(store.get_xattr(&e.handle.blob, X_MERGE))?;
            if merged.is_none() && e.written > 0 && e.written < cfg.max_blob_size {
                resume = Some(i);
            }
        }
    }
    for i in 0..index.blobs.len() {
        let Some(e) = &mut index.blobs[i] else {
            continue;
        };
        if Some(i) == resume {
            e.role = BlobRole::Active;
            continue;
        }
        let h = e.handle.clone();
        if e.written == 0 && e.live == 0 {
            index.blobs[i] = None;
            match Arc::try_unwrap(h) {
                Ok(h) => close_and_delete(store, h.blob)?,
                Err(_) => return Err(Error::Busy("blob handle shared during open".into())),
            }
            continue;
        }
        let used = e.written.div_ceil(cfg.cluster).max(1);
        if h.blob.num_clusters() > used {
            store.block_on(store.resize(&h.blob, used))?;
            store.block_on(store.sync_md(&h.blob))?;
        }
    }
    Ok(())
}
