//! The keydir of one shard: key → where its latest record lives.
//!
//! Compact by construction, since memory per key is a headline figure:
//! - keys live in a chunked **arena** (1 MiB chunks, each key prefixed by its u16 length, no
//!   per-key allocation); a key never straddles a chunk, so an arena offset is a plain `u32`;
//! - the table is **open addressing with linear probing** over 16-byte `Slot`s (arena offset,
//!   15-bit hash tag, blob slot, record offset, value length), any capacity (index by
//!   multiply-shift, so it grows by 1.5× rather than 2×), at most 85 % full, deletions by
//!   backward shift (no tombstone slots).
//!
//! Memory per key ≈ 16 B / load (0.57..0.85) + 2 B length prefix + arena slack, i.e. 21–30 B
//! beyond the key itself; [`KeyDir::overhead_bytes`] reports the measured figure.
//!
//! Sequence numbers are not kept at run time (one writer per shard applies records in log
//! order; merge swaps by location). During recovery, when records of several blobs are applied
//! out of order, [`KeyDir::begin_rebuild`] adds a parallel `u64` seq per slot and keeps
//! deletions as marked slots until [`KeyDir::finish_rebuild`].

/// Where a key's latest record lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Loc {
    /// Index into the shard's blob table.
    pub blob: u16,
    /// Byte offset of the record in the blob.
    pub offset: u32,
    /// Value length (the record length follows from key and value length).
    pub value_len: u32,
}

const EMPTY: u32 = u32::MAX;
const CHUNK: usize = 1 << 20;
const DEAD_FLAG: u16 = 1 << 15;
const MAX_LOAD_NUM: usize = 85;

#[derive(Clone, Copy)]
struct Slot {
    key_off: u32,
    /// Bits 0..15 of the tag: hash bits; bit 15: deleted (only while rebuilding).
    tag: u16,
    blob: u16,
    offset: u32,
    value_len: u32,
}

const EMPTY_SLOT: Slot = Slot {
    key_off: EMPTY,
    tag: 0,
    blob: 0,
    offset: 0,
    value_len: 0,
};

impl Slot {
    fn loc(&self) -> Loc {
        Loc {
            blob: self.blob,
            offset: self.offset,
            value_len: self.value_len,
        }
    }
    fn is_dead(&self) -> bool {
        self.tag & DEAD_FLAG != 0
    }
}

/// 64-bit hash of a key: routes it to a shard and places it in the table.
pub fn hash_key(key: &[u8]) -> u64 {
    const K: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut h: u64 = 0x243F_6A88_85A3_08D3 ^ (key.len() as u64).wrapping_mul(K);
    let mut chunks = key.chunks_exact(8);
    for c in &mut chunks {
        let w = u64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]);
        h = (h ^ w).wrapping_mul(K).rotate_left(29);
    }
    let mut tail = [0u8; 8];
    let rest = chunks.remainder();
    tail[..rest.len()].copy_from_slice(rest);
    h = (h ^ u64::from_le_bytes(tail)).wrapping_mul(K);
    // murmur3 fmix64
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

fn tag_of(hash: u64) -> u16 {
    ((hash >> 16) as u16) & !DEAD_FLAG
}

/// One shard's keydir. See the module doc.
#[derive(Default)]
pub struct KeyDir {
    slots: Vec<Slot>,
    /// Occupied slots (live, plus deleted-marked ones while rebuilding).
    used: usize,
    dead_marked: usize,
    chunks: Vec<Vec<u8>>,
    arena_live: usize,
    arena_dead: usize,
    seqs: Vec<u64>,
    rebuilding: bool,
}

impl KeyDir {
    pub fn new() -> Self {
        Self::default()
    }

    /// Live keys.
    pub fn len(&self) -> usize {
        self.used - self.dead_marked
    }

    #[cfg_attr(not(feature = "internals"), allow(dead_code))]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Heap bytes held (table, arena, rebuild seqs).
    pub fn memory_bytes(&self) -> usize {
        self.slots.capacity() * std::mem::size_of::<Slot>()
            + self.chunks.iter().map(Vec::capacity).sum::<usize>()
            + self.seqs.capacity() * 8
    }

    /// Bytes of the live keys themselves.
    pub fn key_bytes(&self) -> usize {
        // arena_live counts the 2-byte prefixes as well.
        self.arena_live - 2 * self.len()
    }

    /// Memory beyond the keys themselves.
    pub fn overhead_bytes(&self) -> usize {
        self.memory_bytes().saturating_sub(self.key_bytes())
    }

    fn home(&self, hash: u64) -> usize {
        ((u128::from(hash) * self.slots.len() as u128) >> 64) as usize
    }

    fn key_at(&self, off: u32) -> &[u8] {
        let off = off as usize;
        let chunk = &self.chunks[off / CHUNK];
        let o = off % CHUNK;
        let len = usize::from(u16::from_le_bytes([chunk[o], chunk[o + 1]]));
        &chunk[o + 2..o + 2 + len]
    }

    fn store_key(&mut self, key: &[u8]) -> u32 {
        let need = key.len() + 2;
        let fits = self.chunks.last().is_some_and(|c| c.len() + need <= CHUNK);
        if !fits {
            self.chunks.push(Vec::with_capacity(4096.max(need)));
        }
        let idx = self.chunks.len() - 1;
        let chunk = &mut self.chunks[idx];
        if chunk.capacity() < chunk.len() + need {
            let want = (chunk.capacity() * 2).max(chunk.len() + need).min(CHUNK);
            chunk.reserve_exact(want - chunk.len());
        }
        let off = idx * CHUNK + chunk.len();
        chunk.extend_from_slice(&(key.len() as u16).to_le_bytes());
        chunk.extend_from_slice(key);
        self.arena_live += need;
        // The arena is bounded to 4 GiB per shard (u32 offsets); the shard refuses keys
        // well before that (see `shard.rs`, `arena_full`).
        off as u32
    }

    /// Arena bytes still addressable.
    pub fn arena_room(&self) -> usize {
        (u32::MAX as usize - 1).saturating_sub(self.chunks.len() * CHUNK)
    }

    /// Position of `key`, or of the empty slot where it would go.
    fn find(&self, key: &[u8], hash: u64) -> (usize, bool) {
        let n = self.slots.len();
        let tag = tag_of(hash);
        let mut i = self.home(hash);
        loop {
            let s = &self.slots[i];
            if s.key_off == EMPTY {
                return (i, false);
            }
            if s.tag & !DEAD_FLAG == tag && self.key_at(s.key_off) == key {
                return (i, true);
            }
            i += 1;
            if i == n {
                i = 0;
            }
        }
    }

    /// The location of `key`'s latest value.
    pub fn get(&self, key: &[u8], hash: u64) -> Option<Loc> {
        if self.slots.is_empty() {
            return None;
        }
        match self.find(key, hash) {
            (i, true) if !self.slots[i].is_dead() => Some(self.slots[i].loc()),
            _ => None,
        }
    }

    /// Grow the table past 85 % load, and compact the arena once it is mostly dead. Called
    /// before a lookup whose slot index is then used, never between the two.
    fn grow_if_needed(&mut self) {
        let full = (self.used + 1) * 100 > self.slots.len() * MAX_LOAD_NUM;
        let compact = self.arena_dead > self.arena_live && self.arena_dead >= CHUNK;
        if full {
            self.rehash((self.slots.len() * 3 / 2).max(16));
        } else if compact {
            self.rehash(self.slots.len());
        }
    }

    /// Make room for `n` more keys without growing. Bulk loads in hash order (a snapshot is
    /// written in table order) must reserve first: with an order-preserving home function,
    /// sorted inserts into a small table pile up in one probe run.
    pub fn reserve(&mut self, n: usize) {
        let want = self.used + n;
        if want * 100 > self.slots.len() * MAX_LOAD_NUM {
            self.rehash(want * 100 / MAX_LOAD_NUM + 16);
        }
    }

    /// Rebuild the table at `cap` slots, compacting the arena if it is mostly dead.
    fn rehash(&mut self, cap: usize) {
        let old = std::mem::replace(&mut self.slots, vec![EMPTY_SLOT; cap]);
        let old_seqs = std::mem::take(&mut self.seqs);
        let compact = self.arena_dead > self.arena_live && self.arena_dead > CHUNK;
        let old_chunks = if compact {
            self.arena_live = 0;
            self.arena_dead = 0;
            std::mem::take(&mut self.chunks)
        } else {
            Vec::new()
        };
        if self.rebuilding {
            self.seqs = vec![0; cap];
        }
        for (j, s) in old.iter().enumerate() {
            if s.key_off == EMPTY {
                continue;
            }
            let mut s = *s;
            let key: Vec<u8>;
            let hash = if compact {
                key = key_in(&old_chunks, s.key_off).to_vec();
                s.key_off = self.store_key(&key);
                hash_key(&key)
            } else {
                hash_key(self.key_at(s.key_off))
            };
            let n = self.slots.len();
            let mut i = self.home(hash);
            while self.slots[i].key_off != EMPTY {
                i = if i + 1 == n { 0 } else { i + 1 };
            }
            self.slots[i] = s;
            if self.rebuilding {
                self.seqs[i] = old_seqs.get(j).copied().unwrap_or(0);
            }
        }
    }

    /// Point `key` at `loc`; returns the location it replaces.
    pub fn insert(&mut self, key: &[u8], hash: u64, loc: Loc) -> Option<Loc> {
        self.upsert(key, hash, loc, 0)
    }

    fn upsert(&mut self, key: &[u8], hash: u64, loc: Loc, seq: u64) -> Option<Loc> {
        self.grow_if_needed();
        let (i, found) = self.find(key, hash);
        let s = &mut self.slots[i];
        let old = if found {
            let was_dead = s.is_dead();
            let old = s.loc();
            s.tag &= !DEAD_FLAG;
            if was_dead {
                self.dead_marked -= 1;
                None
            } else {
                Some(old)
            }
        } else {
            let key_off = self.store_key(key);
            self.slots[i] = Slot {
                key_off,
                tag: tag_of(hash),
                ..EMPTY_SLOT
            };
            self.used += 1;
            None
        };
        let s = &mut self.slots[i];
        s.blob = loc.blob;
        s.offset = loc.offset;
        s.value_len = loc.value_len;
        if self.rebuilding {
            self.seqs[i] = seq;
        }
        old
    }

    /// Replace `key`'s location only if it still is `expect` (merge moving a live record).
    pub fn replace_if(&mut self, key: &[u8], hash: u64, expect: Loc, new: Loc) -> bool {
        if self.slots.is_empty() {
            return false;
        }
        match self.find(key, hash) {
            (i, true) if !self.slots[i].is_dead() && self.slots[i].loc() == expect => {
                let s = &mut self.slots[i];
                s.blob = new.blob;
                s.offset = new.offset;
                s.value_len = new.value_len;
                true
            }
            _ => false,
        }
    }

    /// Forget `key`; returns where it was.
    pub fn remove(&mut self, key: &[u8], hash: u64) -> Option<Loc> {
        if self.slots.is_empty() {
            return None;
        }
        let (i, found) = self.find(key, hash);
        if !found || self.slots[i].is_dead() {
            return None;
        }
        let old = self.slots[i].loc();
        self.erase(i);
        Some(old)
    }

    /// Empty slot `i` and shift its probe successors back (no tombstones in the table).
    fn erase(&mut self, mut i: usize) {
        let n = self.slots.len();
        let klen = self.key_at(self.slots[i].key_off).len() + 2;
        if self.slots[i].is_dead() {
            self.dead_marked -= 1;
        }
        self.arena_live -= klen;
        self.arena_dead += klen;
        self.used -= 1;
        self.slots[i] = EMPTY_SLOT;
        let mut j = i;
        loop {
            j = if j + 1 == n { 0 } else { j + 1 };
            let s = self.slots[j];
            if s.key_off == EMPTY {
                break;
            }
            let home = self.home(hash_key(self.key_at(s.key_off)));
            // May the entry at j move to i? Yes unless its home lies cyclically in (i, j].
            let stays = if i <= j {
                i < home && home <= j
            } else {
                i < home || home <= j
            };
            if !stays {
                self.slots[i] = s;
                self.slots[j] = EMPTY_SLOT;
                if self.rebuilding {
                    self.seqs[i] = self.seqs[j];
                    self.seqs[j] = 0;
                }
                i = j;
            }
        }
    }

    /// Every live key and its location, in table order.
    pub fn iter(&self) -> impl Iterator<Item = (&[u8], Loc)> + '_ {
        self.slots
            .iter()
            .filter(|s| s.key_off != EMPTY && !s.is_dead())
            .map(|s| (self.key_at(s.key_off), s.loc()))
    }

    /// Enter recovery mode: records are applied with their seqs in any order.
    pub fn begin_rebuild(&mut self) {
        self.rebuilding = true;
        self.seqs = vec![0; self.slots.len()];
    }

    /// Apply one recovered record: a put (`Some(loc)`) or a delete (`None`) at `seq`. Newer seq
    /// wins; a delete is remembered (as a marked slot) so that an older put applied later
    /// stays deleted. Returns the live location this record displaced, if any.
    pub fn apply(&mut self, key: &[u8], hash: u64, seq: u64, loc: Option<Loc>) -> Applied {
        debug_assert!(self.rebuilding);
        if !self.slots.is_empty() {
            if let (i, true) = self.find(key, hash) {
                if self.seqs[i] >= seq {
                    return Applied::Stale;
                }
                let s = &mut self.slots[i];
                let prev = (!s.is_dead()).then(|| s.loc());
                match loc {
                    Some(l) => {
                        if s.is_dead() {
                            self.dead_marked -= 1;
                        }
                        s.tag &= !DEAD_FLAG;
                        s.blob = l.blob;
                        s.offset = l.offset;
                        s.value_len = l.value_len;
                    }
                    None => {
                        if !s.is_dead() {
                            self.dead_marked += 1;
                        }
                        s.tag |= DEAD_FLAG;
                    }
                }
                self.seqs[i] = seq;
                return Applied::Replaced(prev);
            }
        }
        let put = loc.unwrap_or(Loc {
            blob: 0,
            offset: 0,
            value_len: 0,
        });
        self.upsert(key, hash, put, seq);
        if loc.is_none() {
            let (i, _) = self.find(key, hash);
            self.slots[i].tag |= DEAD_FLAG;
            self.dead_marked += 1;
        }
        Applied::Replaced(None)
    }

    /// Leave recovery mode: drop deletion marks and the seqs. Returns the highest seq seen.
    pub fn finish_rebuild(&mut self) -> u64 {
        let max = self.seqs.iter().copied().max().unwrap_or(0);
        let mut i = 0;
        while i < self.slots.len() {
            let s = self.slots[i];
            if s.key_off != EMPTY && s.is_dead() {
                // erase shifts a successor into i; look at i again.
                self.erase(i);
                continue;
            }
            i += 1;
        }
        self.rebuilding = false;
        self.seqs = Vec::new();
        if self.arena_dead > self.arena_live && self.arena_dead > CHUNK {
            self.rehash(self.slots.len());
        }
        max
    }
}

/// Outcome of [`KeyDir::apply`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// The record is older than what the keydir holds; ignored.
    Stale,
    /// Applied; carries the live location it displaced.
    Replaced(Option<Loc>),
}

fn key_in(chunks: &[Vec<u8>], off: u32) -> &[u8] {
    let off = off as usize;
    let chunk = &chunks[off / CHUNK];
    let o = off % CHUNK;
    let len = usize::from(u16::from_le_bytes([chunk[o], chunk[o + 1]]));
    &chunk[o + 2..o + 2 + len]
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashMap;

    fn loc(n: u32) -> Loc {
        Loc {
            blob: (n % 7) as u16,
            offset: n,
            value_len: n ^ 5,
        }
    }

    #[derive(Debug, Clone)]
    enum Op {
        Insert(u8, u32),
        Remove(u8),
        ReplaceIf(u8, u32, u32),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (any::<u8>(), any::<u32>()).prop_map(|(k, v)| Op::Insert(k, v)),
            any::<u8>().prop_map(Op::Remove),
            (any::<u8>(), any::<u32>(), any::<u32>()).prop_map(|(k, a, b)| Op::ReplaceIf(k, a, b)),
        ]
    }

    fn key(k: u8) -> Vec<u8> {
        // Short and long keys, some sharing prefixes.
        let mut v = vec![b'k'; usize::from(k % 19)];
        v.push(k);
        v
    }

    proptest! {
        #[test]
        fn behaves_like_a_hashmap(ops in proptest::collection::vec(op(), 1..600)) {
            let mut kd = KeyDir::new();
            let mut model: HashMap<Vec<u8>, Loc> = HashMap::new();
            for op in ops {
                match op {
                    Op::Insert(k, v) => {
                        let key = key(k);
                        let h = hash_key(&key);
                        prop_assert_eq!(kd.insert(&key, h, loc(v)), model.insert(key, loc(v)));
                    }
                    Op::Remove(k) => {
                        let key = key(k);
                        prop_assert_eq!(kd.remove(&key, hash_key(&key)), model.remove(&key));
                    }
                    Op::ReplaceIf(k, a, b) => {
                        let key = key(k);
                        let expect = model.get(&key).copied().filter(|_| a % 2 == 0).unwrap_or(loc(a));
                        let did = kd.replace_if(&key, hash_key(&key), expect, loc(b));
                        let want = model.get(&key) == Some(&expect);
                        prop_assert_eq!(did, want);
                        if want { model.insert(key, loc(b)); }
                    }
                }
                prop_assert_eq!(kd.len(), model.len());
            }
            for (k, l) in &model {
                prop_assert_eq!(kd.get(k, hash_key(k)), Some(*l));
            }
            let mut seen: Vec<_> = kd.iter().map(|(k, l)| (k.to_vec(), l)).collect();
            seen.sort_by(|a, b| a.0.cmp(&b.0));
            let mut want: Vec<_> = model.into_iter().collect();
            want.sort_by(|a, b| a.0.cmp(&b.0));
            prop_assert_eq!(seen, want);
        }

        #[test]
        fn rebuild_is_order_independent(
            recs in proptest::collection::vec((any::<u8>(), any::<bool>()), 1..300),
            shuffle_seed in any::<u64>(),
        ) {
            // Records with seq = position; applying them in any order gives the state of
            // applying them in seq order.
            let mut model: HashMap<Vec<u8>, Loc> = HashMap::new();
            for (seq, (k, put)) in recs.iter().enumerate() {
                if *put { model.insert(key(*k), loc(seq as u32)); } else { model.remove(&key(*k)); }
            }
            let mut order: Vec<usize> = (0..recs.len()).collect();
            let mut x = shuffle_seed | 1;
            for i in (1..order.len()).rev() {
                x ^= x << 13; x ^= x >> 7; x ^= x << 17;
                order.swap(i, (x % (i as u64 + 1)) as usize);
            }
            let mut kd = KeyDir::new();
            kd.begin_rebuild();
            for &i in &order {
                let (k, put) = recs[i];
                let key = key(k);
                kd.apply(&key, hash_key(&key), i as u64 + 1, put.then(|| loc(i as u32)));
            }
            prop_assert_eq!(kd.finish_rebuild(), recs.len() as u64);
            prop_assert_eq!(kd.len(), model.len());
            for (k, l) in &model {
                prop_assert_eq!(kd.get(k, hash_key(k)), Some(*l));
            }
        }
    }

    #[test]
    fn overhead_per_key_is_small_at_half_a_million_keys() {
        let mut kd = KeyDir::new();
        let n = 500_000u32;
        for i in 0..n {
            let k = format!("key{i:012}");
            kd.insert(k.as_bytes(), hash_key(k.as_bytes()), loc(i));
        }
        let per_key = kd.overhead_bytes() as f64 / f64::from(n);
        assert!(per_key <= 32.0, "{per_key} B/key");
        for i in (0..n).step_by(97) {
            let k = format!("key{i:012}");
            assert_eq!(kd.get(k.as_bytes(), hash_key(k.as_bytes())), Some(loc(i)));
        }
    }

    /// The headline figure: `cargo test -p blobcask --release --lib ten_million -- --ignored
    /// --nocapture`.
    #[test]
    #[ignore = "allocates ~450 MB; run by hand"]
    fn ten_million_keys_overhead() {
        let mut kd = KeyDir::new();
        let n = 10_000_000u32;
        for i in 0..n {
            let k = format!("key{i:013}");
            kd.insert(k.as_bytes(), hash_key(k.as_bytes()), loc(i));
        }
        let per_key = kd.overhead_bytes() as f64 / f64::from(n);
        println!(
            "10M keys of 16 B: {} B total, {:.1} B/key beyond the key ({} slots)",
            kd.memory_bytes(),
            per_key,
            kd.slots.len()
        );
        assert!(per_key <= 32.0);
    }

    #[test]
    fn bulk_load_in_table_order_is_fast() {
        let mut a = KeyDir::new();
        for i in 0..200_000u32 {
            let k = format!("key{i:012}");
            a.insert(k.as_bytes(), hash_key(k.as_bytes()), loc(i));
        }
        let t0 = std::time::Instant::now();
        let mut b = KeyDir::new();
        b.reserve(a.len());
        for (k, l) in a.iter() {
            b.insert(k, hash_key(k), l);
        }
        assert_eq!(b.len(), a.len());
        assert!(t0.elapsed().as_secs() < 2, "{:?}", t0.elapsed());
    }

    #[test]
    fn arena_compacts_after_churn() {
        let mut kd = KeyDir::new();
        for round in 0..6u32 {
            for i in 0..40_000u32 {
                let k = format!("{round}-{i:040}");
                kd.insert(k.as_bytes(), hash_key(k.as_bytes()), loc(i));
            }
            for i in 0..40_000u32 {
                let k = format!("{round}-{i:040}");
                kd.remove(k.as_bytes(), hash_key(k.as_bytes()));
            }
            let k = format!("{round}-keep");
            kd.insert(k.as_bytes(), hash_key(k.as_bytes()), loc(round));
        }
        kd.insert(b"x", hash_key(b"x"), loc(1));
        assert_eq!(kd.len(), 7);
        assert!(kd.memory_bytes() < 8 << 20, "{}", kd.memory_bytes());
        assert_eq!(kd.get(b"3-keep", hash_key(b"3-keep")), Some(loc(3)));
    }
}
