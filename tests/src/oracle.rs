//! The expected-state oracle: a model of every acknowledged operation, per shard, checked
//! against what a reopened store holds (ARCHITECTURE §4.1-4.2).
//!
//! Each session (from one open to the next crash or close) keeps, per shard, the log of
//! operations the store acknowledged, plus the ones that failed (their outcome is unknown: a
//! failed write may still have reached the medium). Durability promises advance a per-shard
//! "durable" mark: an ack under `SyncPolicy::Always`, a successful `sync`, `merge` or `close`.
//!
//! After a reopen, [`Oracle::verify`] accepts the observed key/value state only if, for every
//! shard, it equals the session's starting state with a prefix of the shard's log applied
//! (in log order), where the prefix covers at least the durable mark, and failed operations
//! inside the prefix may each be in or out. Cross-shard batches must be all in or all out.
//! That one check proves: synced writes present with exactly their value, unsynced writes a
//! prefix, deletes never resurrected, no value that was never written.

use std::collections::{BTreeMap, BTreeSet};

use blobcask::keydir::hash_key;
use blobcask::{Db, WriteBatch};

pub type Key = Vec<u8>;
pub type Value = Vec<u8>;
/// Live keys and their values.
pub type State = BTreeMap<Key, Value>;

/// One write operation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    Put(Key, Value),
    Delete(Key),
}

impl Op {
    pub fn key(&self) -> &[u8] {
        match self {
            Op::Put(k, _) | Op::Delete(k) => k,
        }
    }

    fn effect(&self) -> (Key, Option<Value>) {
        match self {
            Op::Put(k, v) => (k.clone(), Some(v.clone())),
            Op::Delete(k) => (k.clone(), None),
        }
    }
}

/// Build the engine's batch from model ops.
pub fn to_batch(ops: &[Op]) -> WriteBatch {
    let mut b = WriteBatch::new();
    for op in ops {
        match op {
            Op::Put(k, v) => b.put(k, v),
            Op::Delete(k) => b.delete(k),
        };
    }
    b
}

#[derive(Clone, Debug)]
struct Entry {
    /// Operation number in the session (for messages).
    id: usize,
    effects: Vec<(Key, Option<Value>)>,
    /// Set for batches spanning several shards: they must be all in or all out.
    multi: Option<usize>,
    /// The store did not acknowledge it (unknown outcome).
    maybe: bool,
}

/// Expected state of a store; see the module docs.
#[derive(Clone, Debug)]
pub struct Oracle {
    shards: usize,
    base: State,
    logs: Vec<Vec<Entry>>,
    durable: Vec<usize>,
    /// What reads must return now: `base` plus every acknowledged op.
    live: State,
    /// Keys touched by failed ops, with the values they may have taken.
    uncertain: BTreeMap<Key, Vec<Option<Value>>>,
    next_id: usize,
}

impl Oracle {
    pub fn new(shards: usize) -> Self {
        Oracle {
            shards,
            base: State::new(),
            logs: vec![Vec::new(); shards],
            durable: vec![0; shards],
            live: State::new(),
            uncertain: BTreeMap::new(),
            next_id: 0,
        }
    }

    pub fn shards(&self) -> usize {
        self.shards
    }

    /// The shard the engine routes `key` to.
    pub fn shard_of(&self, key: &[u8]) -> usize {
        (hash_key(key) % self.shards as u64) as usize
    }

    /// What reads must return now (acknowledged state).
    pub fn live(&self) -> &State {
        &self.live
    }

    /// Number of operations recorded this session.
    pub fn session_ops(&self) -> usize {
        self.next_id
    }

    fn push(&mut self, ops: &[Op], maybe: bool, durable: bool) {
        let id = self.next_id;
        self.next_id += 1;
        let mut per: BTreeMap<usize, Vec<(Key, Option<Value>)>> = BTreeMap::new();
        for op in ops {
            per.entry(self.shard_of(op.key()))
                .or_default()
                .push(op.effect());
        }
        let multi = (per.len() > 1).then_some(id);
        for (s, effects) in per {
            if !maybe {
                for (k, v) in &effects {
                    match v {
                        Some(v) => self.live.insert(k.clone(), v.clone()),
                        None => self.live.remove(k),
                    };
                }
            } else {
                for (k, v) in &effects {
                    self.uncertain.entry(k.clone()).or_default().push(v.clone());
                }
            }
            self.logs[s].push(Entry {
                id,
                effects,
                multi,
                maybe,
            });
            if durable {
                self.durable[s] = self.logs[s].len();
            }
        }
    }

    /// The store acknowledged `ops` (one op, or a batch); `durable` if the sync policy
    /// promised durability at the ack (`SyncPolicy::Always`).
    pub fn acked(&mut self, ops: &[Op], durable: bool) {
        self.push(ops, false, durable);
    }

    /// `ops` failed: they may or may not have reached the medium.
    pub fn failed(&mut self, ops: &[Op]) {
        self.push(ops, true, false);
    }

    /// A `sync`, `merge` or `close` succeeded: everything acknowledged is durable.
    pub fn synced(&mut self) {
        for s in 0..self.shards {
            self.durable[s] = self.logs[s].len();
        }
    }

    /// Check a read made during the session: the acknowledged value, or (for a key touched by
    /// a failed op) one of the values that op may have left.
    pub fn check_read(&self, key: &[u8], got: Option<&[u8]>) -> Result<(), String> {
        let want = self.live.get(key).map(Vec::as_slice);
        if got == want {
            return Ok(());
        }
        if let Some(alts) = self.uncertain.get(key) {
            if alts.iter().any(|a| a.as_deref() == got) {
                return Ok(());
            }
        }
        Err(format!(
            "read of {} returned {} but the acknowledged value is {}",
            show(key),
            show_opt(got),
            show_opt(want)
        ))
    }

    /// Accept a session that ended with a clean close: the store must hold exactly `live`.
    pub fn verify_clean(&mut self, observed: &State) -> Result<(), String> {
        self.synced();
        self.verify(observed)
    }

    /// Check `observed` (the whole store after a reopen) against the model; on success the
    /// observed state becomes the start of a new session.
    pub fn verify(&mut self, observed: &State) -> Result<(), String> {
        let mut outcomes = Vec::with_capacity(self.shards);
        for s in 0..self.shards {
            let want: State = observed
                .iter()
                .filter(|(k, _)| self.shard_of(k) == s)
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            let found = self.shard_outcomes(s, &want);
            if found.is_empty() {
                return Err(self.explain(s, &want));
            }
            outcomes.push(found);
        }
        if !self.batches_consistent(&outcomes) {
            return Err(format!(
                "a cross-shard batch is applied in some shards but not others: {outcomes:?}"
            ));
        }
        self.base = observed.clone();
        self.live = observed.clone();
        self.logs = vec![Vec::new(); self.shards];
        self.durable = vec![0; self.shards];
        self.uncertain.clear();
        self.next_id = 0;
        Ok(())
    }

    fn shard_base(&self, s: usize) -> State {
        self.base
            .iter()
            .filter(|(k, _)| self.shard_of(k) == s)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    /// Every way shard `s`'s log explains `want`: (multi-shard batches included, excluded).
    fn shard_outcomes(&self, s: usize, want: &State) -> Vec<(BTreeSet<usize>, BTreeSet<usize>)> {
        let log = &self.logs[s];
        // Paths: (state, multi batches in, multi batches out); at most 64 kept.
        let mut paths = vec![(self.shard_base(s), BTreeSet::new(), BTreeSet::new())];
        let mut found = Vec::new();
        for p in 0..=log.len() {
            if p >= self.durable[s] {
                for (st, inn, out) in &paths {
                    if st == want && !found.contains(&(inn.clone(), out.clone())) {
                        found.push((inn.clone(), out.clone()));
                    }
                }
            }
            let Some(e) = log.get(p) else { break };
            let mut next = Vec::new();
            for (st, inn, out) in paths {
                if e.maybe {
                    let mut o2 = out.clone();
                    if let Some(m) = e.multi {
                        o2.insert(m);
                    }
                    next.push((st.clone(), inn.clone(), o2));
                }
                let mut st2 = st;
                apply(&mut st2, &e.effects);
                let mut i2 = inn;
                if let Some(m) = e.multi {
                    i2.insert(m);
                }
                next.push((st2, i2, out));
            }
            next.dedup();
            next.truncate(64);
            paths = next;
        }
        found
    }

    /// Is there one outcome per shard such that every multi-shard batch is all in or all out?
    fn batches_consistent(&self, outcomes: &[Vec<(BTreeSet<usize>, BTreeSet<usize>)>]) -> bool {
        let multis: BTreeSet<usize> = self.logs.iter().flatten().filter_map(|e| e.multi).collect();
        if multis.is_empty() {
            return true;
        }
        fn go(
            o: &[Vec<(BTreeSet<usize>, BTreeSet<usize>)>],
            inn: &BTreeSet<usize>,
            out: &BTreeSet<usize>,
        ) -> bool {
            let Some((first, rest)) = o.split_first() else {
                return inn.is_disjoint(out);
            };
            first.iter().any(|(i, x)| {
                let i2: BTreeSet<usize> = inn.union(i).copied().collect();
                let x2: BTreeSet<usize> = out.union(x).copied().collect();
                i2.is_disjoint(&x2) && go(rest, &i2, &x2)
            })
        }
        // A batch never reached by a shard's prefix counts as "out" for that shard.
        let with_unreached: Vec<Vec<(BTreeSet<usize>, BTreeSet<usize>)>> = outcomes
            .iter()
            .enumerate()
            .map(|(s, os)| {
                let in_log: BTreeSet<usize> = self.logs[s].iter().filter_map(|e| e.multi).collect();
                os.iter()
                    .map(|(i, x)| {
                        let mut x = x.clone();
                        for m in &in_log {
                            if !i.contains(m) {
                                x.insert(*m);
                            }
                        }
                        (i.clone(), x)
                    })
                    .collect()
            })
            .collect();
        go(&with_unreached, &BTreeSet::new(), &BTreeSet::new())
    }

    fn explain(&self, s: usize, want: &State) -> String {
        let log = &self.logs[s];
        let durable = self.durable[s];
        // Diff against the durable prefix with every op applied (the most likely intent).
        let mut st = self.shard_base(s);
        for e in &log[..durable] {
            apply(&mut st, &e.effects);
        }
        let mut diffs = Vec::new();
        let keys: BTreeSet<&Key> = st.keys().chain(want.keys()).collect();
        for k in keys {
            if st.get(k) != want.get(k) {
                let history: Vec<String> = log
                    .iter()
                    .filter_map(|e| {
                        e.effects.iter().find(|(k2, _)| k2 == k).map(|(_, v)| {
                            format!(
                                "#{}{}{}={}",
                                e.id,
                                if e.maybe { "?" } else { "" },
                                if log[..durable].iter().any(|d| d.id == e.id) {
                                    "(durable)"
                                } else {
                                    ""
                                },
                                show_opt(v.as_deref())
                            )
                        })
                    })
                    .collect();
                diffs.push(format!(
                    "  key {}: recovered {}, durable prefix says {}, session history [{}], \
                     session start {}",
                    show(k),
                    show_opt(want.get(k).map(Vec::as_slice)),
                    show_opt(st.get(k).map(Vec::as_slice)),
                    history.join(", "),
                    show_opt(self.base.get(k).map(Vec::as_slice)),
                ));
            }
            if diffs.len() >= 8 {
                break;
            }
        }
        format!(
            "shard {s}: recovered state is no prefix of the shard's log (log {} ops, {durable} \
             durable); no prefix >= the durable mark matches:\n{}",
            log.len(),
            diffs.join("\n")
        )
    }
}

fn apply(st: &mut State, effects: &[(Key, Option<Value>)]) {
    for (k, v) in effects {
        match v {
            Some(v) => st.insert(k.clone(), v.clone()),
            None => st.remove(k),
        };
    }
}

/// Short printable form of a key or value.
pub fn show(b: &[u8]) -> String {
    let head: String = String::from_utf8_lossy(&b[..b.len().min(24)])
        .chars()
        .map(|c| if c.is_ascii_graphic() { c } else { '.' })
        .collect();
    if b.len() > 24 {
        format!("{head:?}..({} B)", b.len())
    } else {
        format!("{head:?}")
    }
}

fn show_opt(b: Option<&[u8]>) -> String {
    b.map_or_else(|| "<absent>".to_string(), show)
}

/// Why reading the whole store failed.
#[derive(Debug)]
pub enum ReadError {
    /// The store returned an error (fine while faults are armed).
    Store(blobcask::Error),
    /// The store contradicts itself (`keys()` vs `get`): always a failure.
    Inconsistent(String),
}

impl std::fmt::Display for ReadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReadError::Store(e) => write!(f, "read failed after reopen: {e}"),
            ReadError::Inconsistent(m) => f.write_str(m),
        }
    }
}

/// Read the whole store: every key of `universe`, and check `keys()` names nothing else.
pub fn try_read_all(db: &Db, universe: &[Key]) -> Result<State, ReadError> {
    let mut st = State::new();
    for k in universe {
        match db.get(k) {
            Ok(Some(v)) => {
                st.insert(k.clone(), v);
            }
            Ok(None) => {}
            Err(e) => return Err(ReadError::Store(e)),
        }
    }
    let keys = db.keys().map_err(ReadError::Store)?;
    let known: BTreeSet<&Key> = universe.iter().collect();
    let bad = |m: String| Err(ReadError::Inconsistent(m));
    for k in &keys {
        if !known.contains(k) {
            return bad(format!(
                "keys() returns {} which was never written",
                show(k)
            ));
        }
        if !st.contains_key(k) {
            return bad(format!("keys() lists {} but get finds nothing", show(k)));
        }
    }
    if keys.len() != st.len() {
        return bad(format!(
            "keys() lists {} keys, get finds {}",
            keys.len(),
            st.len()
        ));
    }
    Ok(st)
}

/// [`try_read_all`] where any error is a failure.
pub fn read_all(db: &Db, universe: &[Key]) -> Result<State, String> {
    try_read_all(db, universe).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(k: &str, v: &str) -> Op {
        Op::Put(k.as_bytes().to_vec(), v.as_bytes().to_vec())
    }

    fn state(kv: &[(&str, &str)]) -> State {
        kv.iter()
            .map(|(k, v)| (k.as_bytes().to_vec(), v.as_bytes().to_vec()))
            .collect()
    }

    #[test]
    fn prefix_rules() {
        let mut o = Oracle::new(1);
        o.acked(&[put("a", "1")], true);
        o.acked(&[put("b", "1")], false);
        o.acked(&[put("a", "2")], false);
        // Durable only, and every prefix beyond it, is fine.
        for ok in [
            state(&[("a", "1")]),
            state(&[("a", "1"), ("b", "1")]),
            state(&[("a", "2"), ("b", "1")]),
        ] {
            assert!(o.clone().verify(&ok).is_ok(), "{ok:?}");
        }
        // A hole (a=2 without b) or a lost durable write is not.
        for bad in [state(&[("a", "2")]), state(&[]), state(&[("a", "3")])] {
            assert!(o.clone().verify(&bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn failed_ops_are_optional_and_deletes_stay_deleted() {
        let mut o = Oracle::new(1);
        o.acked(&[put("a", "1")], true);
        o.acked(&[Op::Delete(b"a".to_vec())], true);
        o.failed(&[put("b", "1")]);
        assert!(o.clone().verify(&state(&[])).is_ok());
        assert!(o.clone().verify(&state(&[("b", "1")])).is_ok());
        assert!(o.clone().verify(&state(&[("a", "1")])).is_err());
    }

    #[test]
    fn cross_shard_batches_are_atomic() {
        let mut o = Oracle::new(2);
        // Find two keys on different shards.
        let keys: Vec<String> = (0..64).map(|i| format!("k{i}")).collect();
        let a = keys.iter().find(|k| o.shard_of(k.as_bytes()) == 0).unwrap();
        let b = keys.iter().find(|k| o.shard_of(k.as_bytes()) == 1).unwrap();
        o.acked(&[put(a, "1"), put(b, "1")], false);
        assert!(o.clone().verify(&state(&[])).is_ok());
        assert!(o.clone().verify(&state(&[(a, "1"), (b, "1")])).is_ok());
        assert!(o.clone().verify(&state(&[(a, "1")])).is_err());
    }
}
