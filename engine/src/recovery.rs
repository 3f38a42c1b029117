//! Open and close: the catalog of blobs (by xattrs), merge roll-back/roll-forward, keydir
//! rebuild from hints or by scanning, and the close-time keydir snapshot.
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
//! 4. members whose batch has a commit record in any shard are applied.
//!
//! **Commit** (only once every step above succeeded; skipped by a read-only open):
//! 5. the super blob's `bc.epoch` is bumped so batch ids of this run never collide with an
//!    earlier run's (or the super blob is created on a new store);
//! 6. doomed merge blobs and superseded hints are deleted;
//! 7. every blob is sealed: shrunk to the clusters that hold records (returning the unused part
//!    of a free-space lease); empty ones are deleted; the newest data blob of each shard is
//!    continued by the shard's next write (see `seal_all`).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use parking_lot::{Mutex, RwLock};

use crate::blobstore::{Blob as _, BlobId, BlobStore, CreateOpts, IoChannel as _};
use crate::catalog;
use crate::db::{
    record_len, BlobEntry, BlobHandle, Config, Core, Counters, Db, Index, Inner, ShardShared,
    ValueCache, ValueWeighter,
};
use crate::device::{AlignedBuf, IoPath};
use crate::error::{Error, Result};
use crate::hint;
use crate::keydir::{hash_key, Loc};
use crate::options::Options;
use crate::options::RecoveryMode;
use crate::record::{self, Kind};
use crate::scan::{self, Evidence, LogDamage};
use crate::stats::BlobRole;

pub(crate) const X_ROLE: &str = "bc.role";
pub(crate) const X_SHARD: &str = "bc.shard";
pub(crate) const X_SEQ: &str = "bc.seq";
pub(crate) const X_SALT: &str = "bc.salt";
pub(crate) const X_MERGE: &str = "bc.merge";
pub(crate) const X_INPUTS: &str = "bc.inputs";
pub(crate) const X_FOR: &str = "bc.for";
pub(crate) const X_LEN: &str = "bc.len";
const X_FORMAT: &str = "bc.format";
const X_SHARDS: &str = "bc.shards";
const X_EPOCH: &str = "bc.epoch";
const FORMAT_VERSION: u32 = 2;

pub(crate) const ROLE_DATA: &[u8] = b"data";
pub(crate) const ROLE_HINT: &[u8] = b"hint";
pub(crate) const ROLE_SNAPSHOT: &[u8] = b"snapshot";
const ROLE_SUPER: &[u8] = b"super";

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

fn le_u64(v: &Option<Vec<u8>>) -> Option<u64> {
    v.as_deref()
        .and_then(|b| b.try_into().ok())
        .map(u64::from_le_bytes)
}

fn le_u32(v: &Option<Vec<u8>>) -> Option<u32> {
    v.as_deref()
        .and_then(|b| b.try_into().ok())
        .map(u32::from_le_bytes)
}

/// What the xattrs say about one blob.
struct Meta<S: BlobStore> {
    id: BlobId,
    blob: S::Blob,
    role: Vec<u8>,
    shard: usize,
    seq: u64,
    salt: u64,
    merge: Option<Vec<u8>>,
    inputs: Vec<u64>,
    for_seq: u64,
    /// `bc.len`: the log length recorded when the blob was sealed (0 if never).
    len: u64,
}

fn read_meta<S: BlobStore>(store: &S, id: BlobId) -> Result<Option<Meta<S>>> {
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
    let role = store.block_on(store.get_xattr(&blob, X_ROLE))?;
    let Some(role) = role else {
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

fn close_and_delete<S: BlobStore>(store: &S, blob: S::Blob) -> Result<()> {
    let id = blob.id();
    store.block_on(store.close(blob))?;
    Ok(store.block_on(store.delete(id))?)
}

/// What the super blob says; `id` is `None` on a new store (the commit phase creates it).
struct SuperInfo {
    id: Option<BlobId>,
    shards: usize,
    /// The epoch of this run (the stored one + 1).
    epoch: u64,
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
        ))
    })();
    store.block_on(store.close(blob))?;
    let (role, format, shards, epoch) = read?;
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

/// Open a blobcask store on an already loaded or initialised blobstore.
pub(crate) fn open_store<S: BlobStore>(store: S, opts: Options, io_path: IoPath) -> Result<Db<S>> {
    opts.validate()?;
    let t0 = Instant::now();
    let sup = read_super(&store, &opts)?;
    let (shards, epoch) = (sup.shards, sup.epoch);
    let cluster = u64::from(store.cluster_size());
    if sup.id.is_none() {
        // A new store: refuse a shard count the device cannot hold before writing anything.
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
    let cfg = Config {
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
    };

    // Catalog.
    let super_id = store.super_blob();
    let ids = store.block_on(store.blob_ids())?;
    let mut metas: Vec<Meta<S>> = Vec::new();
    let mut catalogs = Vec::new();
    for &id in &ids {
        if Some(id) == super_id {
            continue;
        }
        let meta =
            read_meta(&store, id).map_err(|e| crate::catalog::name_damaged(&store, id, e))?;
        if let Some(m) = meta {
            if m.shard < shards {
                metas.push(m);
                continue;
            }
            if m.role == catalog::ROLE && store.loaded_clean() {
                // Unreadable: no cross-check (a damaged catalog is `check`'s to report).
                let ch = store.channel()?;
                catalogs.extend(catalog::read_blob(&store, &ch, &m.blob).ok());
            }
            store.block_on(store.close(m.blob))?;
        }
    }
    if let Some(id) = sup.id {
        catalog::check_enumerated(&ids, &catalogs, sup.epoch - 1, id)?;
    }
    let (metas, doomed) = settle_merges(metas);

    // Phase 1: per-shard rebuild, in parallel.
    let mut per_shard: Vec<Vec<Meta<S>>> = (0..shards).map(|_| Vec::new()).collect();
    for m in metas {
        let s = m.shard;
        per_shard[s].push(m);
    }
    let cfg_ref = &cfg;
    let store_ref = &store;
    let rebuilt: Vec<Result<Rebuilt<S>>> = std::thread::scope(|sc| {
        let hs: Vec<_> = per_shard
            .into_iter()
            .map(|ms| sc.spawn(move || rebuild_shard(store_ref, cfg_ref, ms)))
            .collect();
        hs.into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(Error::invalid("recovery thread panicked")))
            })
            .collect()
    });
    let mut rebuilt: Vec<Rebuilt<S>> = rebuilt.into_iter().collect::<Result<_>>()?;

    // Phase 2: committed batch members, live bytes.
    let committed: HashSet<u64> = rebuilt
        .iter()
        .flat_map(|r| r.commits.iter().copied())
        .collect();
    let mut used_hints = false;
    for r in &mut rebuilt {
        for m in std::mem::take(&mut r.members) {
            if committed.contains(&m.batch) {
                r.index.keydir.apply(&m.key, hash_key(&m.key), m.seq, m.loc);
            }
        }
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

    if !opts.read_only {
        commit_open(&store, &cfg, &sup, doomed, &mut rebuilt)?;
    }

    let cap_per_shard = opts.cache_bytes / shards;
    let mut shard_state = Vec::with_capacity(shards);
    let mut next_seqs = Vec::with_capacity(shards);
    for r in rebuilt {
        let cache = (cap_per_shard > 0).then(|| {
            ValueCache::with_weighter(
                (cap_per_shard / 1024).max(64),
                cap_per_shard as u64,
                ValueWeighter,
            )
        });
        next_seqs.push(r.max_seq + 1);
        shard_state.push(ShardShared {
            index: RwLock::new(r.index),
            cache,
            next_blob_seq: AtomicU64::new(r.max_blob_seq + 1),
            ctr: Counters::default(),
            merge_lock: Mutex::new(()),
            hints: Mutex::new(r.hints),
            snapshots: Mutex::new(r.snapshots),
            unwritten: RwLock::new(Default::default()),
            pending_bytes: AtomicU64::new(0),
            seal_wanted: AtomicBool::new(false),
        });
    }
    let (ctx, crx) = crossbeam_channel::bounded(64);
    let core = Arc::new(Core {
        store,
        cfg,
        shards: shard_state,
        chans: ctx,
        chans_rx: crx,
        poisoned: AtomicBool::new(false),
        closed: AtomicBool::new(false),
        batch_gate: RwLock::new(()),
        next_batch: AtomicU64::new(epoch << 32),
        recovery: Mutex::new((t0.elapsed(), used_hints)),
        io_path,
    });
    log::info!(
        "blobcask: opened {shards} shards in {:?} (hints used: {used_hints})",
        t0.elapsed()
    );
    let mut cells = Vec::with_capacity(shards);
    let mut threads = Vec::with_capacity(shards);
    for (i, ns) in next_seqs.into_iter().enumerate() {
        let (cell, thread) = crate::shard::spawn(core.clone(), i, ns)?;
        threads.push(thread);
        cells.push(cell);
    }
    let worker = if opts.read_only {
        None
    } else {
        Some(crate::merge::Worker::start(core.clone())?)
    };
    Ok(Db {
        inner: Arc::new(Inner {
            core,
            cells,
            threads: Mutex::new(threads),
            merge: Mutex::new(worker),
            close_result: Mutex::new(None),
        }),
    })
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
fn settle_merges<S: BlobStore>(metas: Vec<Meta<S>>) -> (Vec<Meta<S>>, Vec<Meta<S>>) {
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

    // Blob table: every data blob gets a slot.
    let mut slot_of: HashMap<u64, u16> = HashMap::new();
    for m in &data {
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

    // The newest snapshot whose blobs all still exist.
    let mut covered: HashSet<u64> = HashSet::new();
    for s in &snaps {
        if !covered.is_empty() {
            break;
        }
        let Ok(h) = read_hint(store, cfg, &ch, &s.blob) else {
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
        out.index.keydir.reserve(h.entries.len());
        for e in h.entries {
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
                .apply(&e.key, hash_key(&e.key), e.seq, Some(loc));
        }
        out.max_seq = out.max_seq.max(h.header.max_seq);
        out.used_hints = true;
        covered.insert(u64::MAX);
    }
    for s in snaps {
        out.snapshots.push(s.id);
        store.block_on(store.close(s.blob))?;
    }

    for m in &data {
        if covered.contains(&m.seq) {
            continue;
        }
        let slot = slot_of[&m.seq];
        let mut from_hint = false;
        if let Some(h) = hints.get(&m.seq) {
            if let Ok(hint) = read_hint(store, cfg, &ch, &h.blob) {
                if hint.owner_seq == h.seq && hint.blobs.len() == 1 && hint.blobs[0].0 == m.seq {
                    out.index.keydir.reserve(hint.entries.len());
                    for e in hint.entries {
                        let loc = Loc {
                            blob: slot,
                            offset: e.offset,
                            value_len: e.value_len,
                        };
                        out.index
                            .keydir
                            .apply(&e.key, hash_key(&e.key), e.seq, Some(loc));
                    }
                    if let Some(e) = out.index.entry_mut(slot) {
                        e.written = hint.blobs[0].1;
                    }
                    out.max_seq = out.max_seq.max(hint.header.max_seq);
                    out.used_hints = true;
                    from_hint = true;
                }
            }
        }
        if from_hint {
            continue;
        }
        let ev = Evidence::of_blob(m.len, m.merge.as_deref(), 0);
        let mut src = blob_source(store, cfg, &ch, &m.blob);
        let found = scan::scan_log(&mut src, m.salt, ev, cfg.recovery, |off, rec| {
            apply_scanned(&mut out, slot, off, rec)
        })?;
        note_scan(&mut out, cfg.recovery, m, &found)?;
        if let Some(e) = out.index.entry_mut(slot) {
            e.written = found.end;
        }
    }
    for (seq, h) in hints {
        out.hints.insert(seq, h.id);
        store.block_on(store.close(h.blob))?;
    }
    Ok(out)
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
            value_len: rec.header.value_len | if batch { crate::db::LOC_BATCH_BIT } else { 0 },
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

/// A blob's bytes for [`scan::scan_log`], read through `ch`.
fn blob_source<'a, S: BlobStore>(
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

/// Read and verify a whole hint blob.
fn read_hint<S: BlobStore>(
    store: &S,
    cfg: &Config,
    ch: &S::Channel,
    blob: &S::Blob,
) -> Result<hint::Hint> {
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
    hint::decode(&buf, blob.id())
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
            match store.block_on(store.get_xattr(&blob, X_ROLE)) {
                Ok(Some(r)) if r == catalog::ROLE => {
                    old.push(id);
                    Ok(())
                }
                Ok(_) => catalog_entry(store, id, &blob).map(|e| cat.entries.extend(e)),
                Err(e) => Err(e.into()),
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
    let res = (|| {
        let ch = store.channel()?;
        let iou = u64::from(store.io_unit_size());
        let mut buf =
            AlignedBuf::zeroed((bytes.len() as u64).div_ceil(iou) as usize * iou as usize);
        buf[..bytes.len()].copy_from_slice(bytes);
        store.block_on(ch.write(&blob, 0, &buf))?;
        store.block_on(ch.flush()).map_err(Error::from)
    })();
    store.block_on(store.close(blob))?;
    if res.is_err() {
        let _ = store.block_on(store.delete(id));
    }
    res
}

/// Write the catalog, close every open blob and unload the blobstore.
pub(crate) fn close_all<S: BlobStore>(core: &Core<S>) -> Result<()> {
    let store = &core.store;
    let mut first: Option<Error> = None;
    if let Err(e) = write_catalog(store, core.cfg.cluster, true) {
        first.get_or_insert(e);
    }
    for sh in &core.shards {
        let mut ix = sh.index.write();
        for e in ix.blobs.iter_mut() {
            if let Some(e) = e.take() {
                if let Err(err) = store.block_on(store.close(e.handle.blob.clone())) {
                    first.get_or_insert(err.into());
                }
            }
        }
    }
    while core.chans_rx.try_recv().is_ok() {}
    if let Err(e) = store.block_on(store.unload()) {
        first.get_or_insert(e.into());
    }
    first.map_or(Ok(()), Err)
}
