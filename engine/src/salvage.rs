//! Store-wide evidence for `check` and `repair`: every engine blob's bytes, the hints and
//! snapshots that pass the checks open applies, each data log scanned with all the durability
//! evidence there is (`scan.rs`), and the fold of what survives into the live key set.
//!
//! The fold is never less correct than open: a keydir snapshot says which keys were live at
//! its `max_seq` and where their records were, a merge hint names the live version of each key
//! it covers. A key whose named record is damaged is **lost** (left out, never replaced by an
//! older value), and a key a snapshot does not list was deleted at its time (an older put does
//! not bring it back). Where no such evidence covers a damaged range, every key of the shard
//! whose newest surviving record is older than a seq the range may have held is **suspect**:
//! it may have regressed to an older value, come back from deletion, or be missing; and so is
//! every key whose name can still be read in a damaged record's header.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use crate::blobstore::{Blob, BlobId, BlobStore, IoChannel};
use crate::error::Result;
use crate::hint;
use crate::options::RecoveryMode;
use crate::record::{self, Kind};
use crate::scan::{self, Evidence, LogDamage, LogScan};

/// What the xattrs say about one engine blob.
#[derive(Debug, Clone)]
pub(crate) struct Meta {
    pub id: BlobId,
    pub role: Vec<u8>,
    pub shard: usize,
    pub seq: u64,
    pub salt: u64,
    /// `bc.len` (0 if unset).
    pub len: u64,
    pub merge: Option<Vec<u8>>,
    pub for_seq: u64,
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
pub(crate) fn catalog<S: BlobStore>(store: &S) -> Result<Vec<(Meta, Vec<u8>)>> {
    store.block_on(async {
        let mut out = Vec::new();
        for id in store.blob_ids().await? {
            let blob = store.open(id).await?;
            let Some(role) = store.get_xattr(&blob, "bc.role").await? else {
                store.close(blob).await?;
                continue;
            };
            let shard = store
                .get_xattr(&blob, "bc.shard")
                .await?
                .and_then(|b| b.try_into().ok())
                .map_or(usize::MAX, |b: [u8; 4]| u32::from_le_bytes(b) as usize);
            let x = |n: &'static str| store.get_xattr(&blob, n);
            let seq = le_u64(x("bc.seq").await?).unwrap_or(0);
            let salt = le_u64(x("bc.salt").await?).unwrap_or(0);
            let len = le_u64(x("bc.len").await?).unwrap_or(0);
            let merge = x("bc.merge").await?;
            let for_seq = le_u64(x("bc.for").await?).unwrap_or(0);
            let bytes = if role == b"super" {
                Vec::new()
            } else {
                read_all(store, &blob).await?
            };
            store.close(blob).await?;
            let m = Meta {
                id,
                role,
                shard,
                seq,
                salt,
                len,
                merge,
                for_seq,
            };
            out.push((m, bytes));
        }
        Ok(out)
    })
}

/// One surviving record, owned.
#[derive(Debug, Clone)]
pub struct Salvaged {
    pub shard: usize,
    pub seq: u64,
    pub kind: Kind,
    pub batch: Option<u64>,
    pub key: Vec<u8>,
    pub value: Vec<u8>,
    pub blob_seq: u64,
    pub offset: u64,
}

/// One data blob's log as the analysis read it.
#[derive(Debug)]
pub struct BlobLog {
    pub id: BlobId,
    pub shard: usize,
    pub seq: u64,
    pub scan: LogScan,
    /// Records kept, in log order.
    pub records: Vec<Salvaged>,
    /// Commit records kept (batch ids).
    pub commits: Vec<u64>,
    /// The blob's bytes.
    pub bytes: Vec<u8>,
    /// A merge output (its records are not in seq order, and are older than later blobs').
    pub merged: bool,
}

/// A hint or snapshot blob that failed a check open applies.
#[derive(Debug, Clone)]
pub struct BadHint {
    pub id: BlobId,
    pub role: String,
    pub shard: usize,
    pub why: String,
}

/// Everything the store's engine blobs say.
#[derive(Debug, Default)]
pub struct Analysis {
    pub logs: Vec<BlobLog>,
    pub bad_hints: Vec<BadHint>,
    /// Usable merge hints: (shard, hint).
    pub hints: Vec<(usize, hint::Hint)>,
    /// The newest usable keydir snapshot per shard.
    pub snapshots: BTreeMap<usize, hint::Hint>,
    /// Hint and snapshot blobs found (usable or not).
    pub hint_blobs: usize,
    /// Of those, keydir snapshots.
    pub snapshot_blobs: usize,
    /// Data blobs with a damaged md page (see [`LostBlob`]).
    pub lost: Vec<LostBlob>,
}

impl Analysis {
    /// Whether open takes blob `seq` of `shard` from a hint or snapshot instead of scanning.
    pub fn covers(&self, shard: usize, seq: u64) -> bool {
        let named = |h: &hint::Hint| h.blobs.iter().any(|&(b, _)| b == seq);
        self.snapshots.get(&shard).is_some_and(named)
            || self.hints.iter().any(|(s, h)| *s == shard && named(h))
    }
}

/// Read and judge every engine blob of `store` (nothing is written).
pub fn analyze<S: BlobStore>(store: &S) -> Result<Analysis> {
    analyze_catalog(catalog(store)?, Vec::new())
}

/// [`analyze`], knowing that the data blobs `lost` have damaged md pages.
pub fn analyze_with_lost<S: BlobStore>(store: &S, lost: Vec<LostBlob>) -> Result<Analysis> {
    analyze_catalog(catalog(store)?, lost)
}

pub(crate) fn analyze_catalog(cat: Vec<(Meta, Vec<u8>)>, lost: Vec<LostBlob>) -> Result<Analysis> {
    let mut an = Analysis::default();
    // A lost blob still existed: a snapshot naming it is not stale.
    let data: HashSet<(usize, u64)> = cat
        .iter()
        .filter(|(m, _)| m.role == b"data")
        .map(|(m, _)| (m.shard, m.seq))
        .chain(lost.iter().map(|b| (b.shard, b.seq)))
        .collect();
    // Lengths that hints and snapshots know, per (shard, blob seq).
    let mut known: HashMap<(usize, u64), u64> = HashMap::new();
    let mut snaps: Vec<(u64, usize, hint::Hint)> = Vec::new();
    for (m, bytes) in cat.iter().filter(|(m, _)| m.role != b"data") {
        let snapshot = m.role == b"snapshot";
        if !snapshot && m.role != b"hint" {
            continue;
        }
        an.hint_blobs += 1;
        an.snapshot_blobs += usize::from(snapshot);
        let bad = |why: String| BadHint {
            id: m.id,
            role: String::from_utf8_lossy(&m.role).into_owned(),
            shard: m.shard,
            why,
        };
        let h = match hint::decode(bytes, m.id) {
            Ok(h) => h,
            Err(e) => {
                an.bad_hints.push(bad(e.to_string()));
                continue;
            }
        };
        let fits = if snapshot {
            h.blobs.iter().all(|(b, _)| data.contains(&(m.shard, *b)))
        } else {
            h.blobs.len() == 1 && h.blobs[0].0 == m.for_seq && data.contains(&(m.shard, m.for_seq))
        };
        if h.owner_seq != m.seq || !fits {
            an.bad_hints
                .push(bad("names blobs that no longer exist (stale)".into()));
            continue;
        }
        for &(b, len) in &h.blobs {
            let k = known.entry((m.shard, b)).or_default();
            *k = (*k).max(len);
        }
        if snapshot {
            snaps.push((m.seq, m.shard, h));
        } else {
            an.hints.push((m.shard, h));
        }
    }
    snaps.sort_by_key(|(seq, _, _)| *seq);
    for (_, shard, h) in snaps {
        an.snapshots.insert(shard, h);
    }
    for (m, bytes) in cat.iter().filter(|(m, _)| m.role == b"data") {
        let ev = Evidence::of_blob(
            m.len,
            m.merge.as_deref(),
            known.get(&(m.shard, m.seq)).copied().unwrap_or(0),
        );
        let mut log = scan_one(m, bytes, ev)?;
        if lost.iter().any(|b| b.restored_prefix && b.blob == m.id) {
            // Restored from a stale catalog: the log may have gone on past its clusters.
            let end = log.scan.end;
            log.scan.damaged.retain(|d| d.offset < end);
            log.scan.damaged.push(scan::DamagedRange {
                offset: end,
                len: (bytes.len() as u64).saturating_sub(end),
            });
        }
        an.logs.push(log);
    }
    an.lost = lost;
    Ok(an)
}

fn scan_one(m: &Meta, bytes: &[u8], ev: Evidence) -> Result<BlobLog> {
    let mut records = Vec::new();
    let mut commits = Vec::new();
    let mut src = scan::Source::from_bytes(bytes);
    let s = scan::scan_log(&mut src, m.salt, ev, RecoveryMode::Salvage, |off, r| {
        if let Some(b) = r.committed_batch() {
            commits.push(b);
            return;
        }
        records.push(Salvaged {
            shard: m.shard,
            seq: r.header.seq,
            kind: r.header.kind(),
            batch: (r.header.flags & record::BATCH != 0).then_some(r.header.batch_id),
            key: r.key.to_vec(),
            value: r.value.to_vec(),
            blob_seq: m.seq,
            offset: off,
        });
    })?;
    Ok(BlobLog {
        id: m.id,
        shard: m.shard,
        seq: m.seq,
        scan: s,
        records,
        commits,
        bytes: bytes.to_vec(),
        merged: m.merge.is_some(),
    })
}

/// A data blob whose md page is damaged and could not be restored exactly (named from the
/// catalog).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct LostBlob {
    pub blob: BlobId,
    pub shard: usize,
    pub seq: u64,
    /// What the catalog says it was ("data blob of shard 0, seq 3 (5 clusters)").
    pub what: String,
    /// Its md page was rebuilt from a stale catalog: its log is known only up to where the
    /// catalog's clusters end (the rest is treated as damaged).
    pub restored_prefix: bool,
}

/// What a salvage (`fsck::salvage`) recovered and what it could not.
#[derive(Debug, Default)]
pub struct SalvageReport {
    /// Live key → value.
    pub live: BTreeMap<Vec<u8>, Vec<u8>>,
    /// Records kept by the scans.
    pub records: u64,
    /// Records found only past damage (open in the default mode refuses such a log).
    pub beyond_damage: u64,
    /// Valid records past a torn tail, dropped as open drops them (never flushed).
    pub unflushed: u64,
    pub damaged: Vec<LogDamage>,
    /// Batch records whose batch never committed (dropped, as open does).
    pub uncommitted: u64,
    /// Keys whose newest version was in a damaged record: left out of `live`.
    pub lost: BTreeSet<Vec<u8>>,
    /// Keys that may be stale: an older value, back from deletion, or missing.
    pub suspect: BTreeSet<Vec<u8>>,
    /// Keys a hint or snapshot vouched for (their state is exact).
    pub vouched: u64,
    /// Metadata rebuilt before salvaging (super block, md pages restored from the catalog).
    pub restored: Vec<String>,
    /// The damaged store's geometry, which `repair` rebuilds with.
    pub shape: Option<StoreShape>,
    /// Data blobs whose md page is damaged and was not restored exactly.
    pub damaged_blobs: Vec<LostBlob>,
}

/// What a rebuilt store must be formatted with so that it is the damaged one's twin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreShape {
    pub cluster_size: u32,
    pub io_unit_size: u32,
    /// Device size in bytes.
    pub size: u64,
    /// `bc.shards` of the super blob (or, if unreadable, one more than the highest shard seen).
    pub shards: usize,
}

/// How a key's state was decided.
struct Decided {
    shard: usize,
    /// The seq the state is known at (record seq, or the snapshot's max seq).
    seq: u64,
    value: Option<Vec<u8>>,
    lost: bool,
    vouched: bool,
}

/// Fold the surviving records of `an` into the live key set (see the module doc).
pub fn fold(an: &Analysis) -> SalvageReport {
    let mut rep = SalvageReport::default();
    let commits: HashSet<u64> = an.logs.iter().flat_map(|l| l.commits.clone()).collect();
    // (shard, blob seq, offset) → record, and the newest record per key.
    let mut at: HashMap<(usize, u64, u64), &Salvaged> = HashMap::new();
    let mut newest: HashMap<&[u8], &Salvaged> = HashMap::new();
    for l in &an.logs {
        rep.unflushed += l.scan.unflushed;
        let first_damage = l.scan.damaged.first().map_or(u64::MAX, |d| d.offset);
        for d in &l.scan.damaged {
            rep.damaged.push(LogDamage {
                shard: l.shard,
                blob: l.id,
                blob_seq: l.seq,
                offset: d.offset,
                len: d.len,
            });
        }
        for r in &l.records {
            rep.records += 1;
            if r.offset > first_damage {
                rep.beyond_damage += 1;
            }
            // A snapshot or hint that names a batch member vouches for its commit even when
            // the commit record is damaged (open keeps it), so every record is addressable.
            at.insert((r.shard, r.blob_seq, r.offset), r);
            if r.batch.is_some_and(|b| !commits.contains(&b)) {
                rep.uncommitted += 1;
                continue;
            }
            let e = newest.entry(r.key.as_slice()).or_insert(r);
            if r.seq > e.seq {
                *e = r;
            }
        }
    }
    let mut decided: BTreeMap<Vec<u8>, Decided> = BTreeMap::new();
    for (k, r) in &newest {
        decided.insert(
            k.to_vec(),
            Decided {
                shard: r.shard,
                seq: r.seq,
                value: (r.kind == Kind::Put).then(|| r.value.clone()),
                lost: false,
                vouched: false,
            },
        );
    }
    apply_snapshots(an, &at, &mut decided);
    apply_hints(an, &at, &mut decided);
    mark_suspects(an, &rep.damaged, &decided, &mut rep.suspect);
    for (k, d) in decided {
        rep.vouched += u64::from(d.vouched);
        if d.lost {
            rep.suspect.remove(&k);
            rep.lost.insert(k);
        } else if let Some(v) = d.value {
            rep.live.insert(k, v);
        }
    }
    rep.damaged_blobs = an.lost.clone();
    rep
}

/// A snapshot fixes every key of its shard at its `max_seq`: listed keys hold the named
/// record, unlisted ones were deleted.
fn apply_snapshots(
    an: &Analysis,
    at: &HashMap<(usize, u64, u64), &Salvaged>,
    decided: &mut BTreeMap<Vec<u8>, Decided>,
) {
    for (&shard, h) in &an.snapshots {
        let m = h.header.max_seq;
        let mut listed: HashSet<&[u8]> = HashSet::new();
        for e in &h.entries {
            listed.insert(e.key.as_slice());
            if decided.get(&e.key).is_some_and(|d| d.seq > m) {
                continue;
            }
            let rec = at
                .get(&(shard, e.blob_seq, u64::from(e.offset)))
                .filter(|r| r.key == e.key && r.kind == Kind::Put);
            decided.insert(
                e.key.clone(),
                Decided {
                    shard,
                    seq: m,
                    value: rec.map(|r| r.value.clone()),
                    lost: rec.is_none(),
                    vouched: true,
                },
            );
        }
        for (k, d) in decided.iter_mut() {
            if d.shard == shard && d.seq <= m && !listed.contains(k.as_slice()) {
                d.value = None;
                d.seq = m;
                d.vouched = true;
            }
        }
    }
}

/// A merge hint names the live version (seq) of each key it covers: if that record is gone
/// and nothing newer survives, the key is lost.
fn apply_hints(
    an: &Analysis,
    at: &HashMap<(usize, u64, u64), &Salvaged>,
    decided: &mut BTreeMap<Vec<u8>, Decided>,
) {
    for (shard, h) in &an.hints {
        for e in &h.entries {
            if decided.get(&e.key).is_some_and(|d| d.seq >= e.seq) {
                continue;
            }
            let rec = at
                .get(&(*shard, e.blob_seq, u64::from(e.offset)))
                .filter(|r| r.key == e.key && r.seq == e.seq);
            decided.insert(
                e.key.clone(),
                Decided {
                    shard: *shard,
                    seq: e.seq,
                    value: rec.map(|r| r.value.clone()),
                    lost: rec.is_none(),
                    vouched: true,
                },
            );
        }
    }
}

/// Keys whose state is older than a seq a damaged range may have held.
fn mark_suspects(
    an: &Analysis,
    damaged: &[LogDamage],
    decided: &BTreeMap<Vec<u8>, Decided>,
    out: &mut BTreeSet<Vec<u8>>,
) {
    for d in damaged {
        let Some(l) = an
            .logs
            .iter()
            .find(|l| l.id == d.blob && l.shard == d.shard)
        else {
            continue;
        };
        // Seqs the range may have held: between its neighbours (a plain log is in seq order;
        // merge output is not, so any seq).
        let before = l.records.iter().rev().find(|r| r.offset < d.offset);
        let after = l.records.iter().find(|r| r.offset > d.offset);
        let plain = l.records.windows(2).all(|w| w[0].seq < w[1].seq);
        let (lo, hi) = match (plain, before, after) {
            (true, b, Some(a)) => (b.map_or(0, |r| r.seq), a.seq),
            (true, Some(b), None) => (b.seq, next_seq(an, l.shard, l.seq)),
            _ => (0, next_seq(an, l.shard, l.seq)),
        };
        for (k, dk) in decided {
            if dk.shard == d.shard && hi.saturating_sub(1) > dk.seq.max(lo) {
                out.insert(k.clone());
            }
        }
        out.extend(probable_keys(&l.bytes, d));
    }
    // A blob with no md page left could have held any record up to the next blob's first.
    for b in an.lost.iter().filter(|b| !b.restored_prefix) {
        let hi = next_seq(an, b.shard, b.seq);
        for (k, dk) in decided {
            if dk.shard == b.shard && hi.saturating_sub(1) > dk.seq {
                out.insert(k.clone());
            }
        }
    }
}

/// The first record seq of the plain data blob of `shard` that followed blob `blob_seq` (a
/// bound on every seq that blob held: it was sealed before the next one started), or
/// `u64::MAX` if none survives.
fn next_seq(an: &Analysis, shard: usize, blob_seq: u64) -> u64 {
    an.logs
        .iter()
        .filter(|l| l.shard == shard && l.seq > blob_seq && !l.merged)
        .min_by_key(|l| l.seq)
        .and_then(|l| l.records.first())
        .map_or(u64::MAX, |r| r.seq)
}

/// Keys the damaged range probably held: where its records' headers still parse, their key
/// bytes (which may themselves be damaged). Names keys that have no other record left.
fn probable_keys(bytes: &[u8], d: &LogDamage) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut at = d.offset as usize;
    let end = (d.offset + d.len) as usize;
    while at < end {
        let Some(h) = bytes.get(at..end).and_then(record::parse_header) else {
            break;
        };
        let k = at + h.header_len();
        let Some(key) = bytes.get(k..k + usize::from(h.key_len)) else {
            break;
        };
        if at + h.record_len() > end {
            break;
        }
        if !key.is_empty() {
            out.push(key.to_vec());
        }
        at += h.record_len();
    }
    out
}

/// The JSON form of a report (`repair --report`). Keys are UTF-8 where they are, else
/// `hex:`-prefixed.
#[cfg(feature = "replay")]
pub fn report_json(rep: &SalvageReport) -> serde_json::Value {
    let key = |k: &Vec<u8>| match std::str::from_utf8(k) {
        Ok(s) if !s.starts_with("hex:") => s.to_string(),
        _ => format!("hex:{}", hex::encode(k)),
    };
    serde_json::json!({
        "damaged": rep.damaged,
        "damaged_blobs": rep.damaged_blobs,
        "keys_lost": rep.lost.iter().map(key).collect::<Vec<_>>(),
        "keys_suspect": rep.suspect.iter().map(key).collect::<Vec<_>>(),
        "counts": {
            "damaged_ranges": rep.damaged.len(),
            "damaged_bytes": rep.damaged.iter().map(|d| d.len).sum::<u64>(),
            "damaged_blobs": rep.damaged_blobs.len(),
            "records": rep.records,
            "records_beyond_damage": rep.beyond_damage,
            "unflushed_records_dropped": rep.unflushed,
            "uncommitted_batch_records": rep.uncommitted,
            "live_keys": rep.live.len(),
            "keys_lost": rep.lost.len(),
            "keys_suspect": rep.suspect.len(),
            "keys_vouched_by_hints": rep.vouched,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(role: &[u8], seq: u64, salt: u64) -> Meta {
        Meta {
            id: 0x100 + seq,
            role: role.to_vec(),
            shard: 0,
            seq,
            salt,
            len: 0,
            merge: None,
            for_seq: 0,
        }
    }

    /// A one-shard store: one log of (key, value or tombstone), each record claiming all before
    /// it durable, plus (optionally) a snapshot of the final keydir.
    fn store(ops: &[(&str, Option<&str>)], snapshot: bool) -> (Vec<(Meta, Vec<u8>)>, Vec<u64>) {
        let mut log = Vec::new();
        let mut offs = Vec::new();
        let mut live: BTreeMap<&str, u64> = BTreeMap::new();
        for (i, (k, v)) in ops.iter().enumerate() {
            let at = log.len() as u64;
            let claim = at as u32; // one record per flushed group
            offs.push(at);
            let flags = if v.is_none() { record::TOMBSTONE } else { 0 };
            let val = v.unwrap_or("").as_bytes();
            record::encode_claiming(
                &mut log,
                9,
                i as u64 + 1,
                claim,
                flags,
                0,
                k.as_bytes(),
                val,
            );
            match v {
                Some(_) => live.insert(k, at),
                None => live.remove(k),
            };
        }
        let end = log.len() as u64;
        log.resize(log.len() + 512, 0);
        let mut cat = vec![(meta(b"data", 1, 9), log)];
        if snapshot {
            let mut w = hint::Writer::new(2, &[(1, end)]);
            for (k, off) in &live {
                w.push(1, 0, *off as u32, 1, k.as_bytes());
            }
            w.note_seq(ops.len() as u64);
            cat.push((meta(b"snapshot", 2, 0), w.finish(512)));
        }
        (cat, offs)
    }

    const OPS: &[(&str, Option<&str>)] = &[
        ("a", Some("a1")),
        ("b", Some("b1")),
        ("a", Some("a2")),
        ("b", None),
        ("c", Some("c1")),
    ];

    #[test]
    fn an_intact_store_folds_to_its_live_keys() {
        let (cat, _) = store(OPS, true);
        let rep = fold(&analyze_catalog(cat, Vec::new()).unwrap());
        let live: Vec<_> = rep.live.keys().cloned().collect();
        assert_eq!(live, vec![b"a".to_vec(), b"c".to_vec()]);
        assert_eq!(rep.live[&b"a".to_vec()], b"a2");
        assert!(rep.damaged.is_empty() && rep.lost.is_empty() && rep.suspect.is_empty());
    }

    #[test]
    fn with_a_snapshot_a_damaged_tombstone_or_newest_value_is_never_undone() {
        for (victim, key) in [(3usize, "b"), (2, "a")] {
            let (mut cat, offs) = store(OPS, true);
            cat[0].1[offs[victim] as usize + 4] ^= 0x20;
            let rep = fold(&analyze_catalog(cat, Vec::new()).unwrap());
            assert_eq!(rep.damaged.len(), 1, "{key}");
            assert!(
                !rep.live.contains_key(key.as_bytes()),
                "{key} restored from an older record"
            );
            if key == "a" {
                assert!(rep.lost.contains(key.as_bytes()));
            }
            assert_eq!(
                rep.live.get(b"c".as_slice()).map(Vec::as_slice),
                Some(&b"c1"[..])
            );
        }
    }

    #[test]
    fn without_hints_keys_older_than_the_damage_are_suspect() {
        let (mut cat, offs) = store(OPS, false);
        cat[0].1[offs[3] as usize + 4] ^= 0x20; // b's tombstone
        let rep = fold(&analyze_catalog(cat, Vec::new()).unwrap());
        assert_eq!(rep.damaged.len(), 1);
        assert!(rep.suspect.contains(b"b".as_slice()), "{:?}", rep.suspect);
        assert!(
            !rep.suspect.contains(b"c".as_slice()),
            "c is newer than the damage"
        );
        #[cfg(feature = "replay")]
        {
            let j = report_json(&rep);
            assert_eq!(j["counts"]["damaged_ranges"], 1);
            assert!(j["keys_suspect"]
                .as_array()
                .unwrap()
                .iter()
                .any(|k| k == "b"));
        }
    }

    #[test]
    fn a_data_blob_whose_md_page_is_lost_makes_the_keys_it_held_lost_not_absent() {
        let (mut cat, _) = store(OPS, true);
        cat.remove(0); // the data blob: its md page is damaged and not restorable
        let lost = vec![LostBlob {
            blob: 0x101,
            shard: 0,
            seq: 1,
            what: "data blob of shard 0, seq 1 (1 cluster)".into(),
            restored_prefix: false,
        }];
        let an = analyze_catalog(cat, lost).unwrap();
        assert!(an.bad_hints.is_empty(), "the snapshot is not stale");
        let rep = fold(&an);
        assert!(rep.live.is_empty());
        let lost: Vec<_> = rep.lost.iter().cloned().collect();
        assert_eq!(lost, vec![b"a".to_vec(), b"c".to_vec()]);
        #[cfg(feature = "replay")]
        assert_eq!(report_json(&rep)["counts"]["damaged_blobs"], 1);
    }
}
