//! A worker's segment cache: the segment values of the chunks it serves, so a read or write
//! finds a chunk's page map in memory instead of a KV read (a device read when the KV's page
//! cache is cold). The headers stay resident beside it (`worker.rs`).
//!
//! Coherence: a chunk's segments change only on the worker its id routes to, so the
//! worker's own commits are the only writers. The cache takes the new values only after the
//! KV accepted the batch; a commit whose outcome is unknown (an error other than `Full`)
//! drops every entry of the chunk, so the next access reads the KV again. A crash loses the
//! cache with the process; open refills it from the restore scan.
//!
//! Budget: [`super::ChunkOptions::meta_cache_bytes`] split evenly over the workers; an entry
//! weighs its encoded size plus a fixed overhead (a full segment about 3.1 KiB for 1 MiB of
//! data, 0.3 %). Eviction is `quick_cache`'s CLOCK-Pro policy (per worker, unsynchronized:
//! no lock is shared with other workers).

use quick_cache::unsync::Cache;

use super::meta::Segment;
use super::ChunkId;

/// Chunk id and segment number.
type Key = (ChunkId, u32);

/// Bytes an entry costs beyond its payload (key, table slot, allocation header).
const OVERHEAD: u64 = 64;

#[derive(Debug, Clone, Copy)]
struct Weigh;

impl quick_cache::Weighter<Key, Segment> for Weigh {
    fn weight(&self, _: &Key, s: &Segment) -> u64 {
        OVERHEAD + 12 * s.pages.len() as u64
    }
}

/// Hits and misses of one worker's cache.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheCounts {
    pub hits: u64,
    pub misses: u64,
}

/// A worker's metadata: the header of every chunk it has seen (all of its chunks at open,
/// then each one it is asked about; sizes raised to what their segments record; about 40
/// bytes each, never evicted) and the segment cache.
pub(crate) struct Meta {
    pub heads: std::collections::HashMap<ChunkId, super::meta::ChunkHeader>,
    pub cache: MetaCache,
}

impl Meta {
    pub fn new(budget: u64) -> Self {
        Meta {
            heads: Default::default(),
            cache: MetaCache::new(budget),
        }
    }
}

pub(crate) struct MetaCache {
    c: Option<Cache<Key, Segment, Weigh>>,
    pub counts: CacheCounts,
}

impl MetaCache {
    /// A cache of about `budget` bytes; 0 disables it (every access reads the KV).
    pub fn new(budget: u64) -> Self {
        let c = (budget > 0).then(|| {
            let items = (budget / (OVERHEAD + 12 * 256)).clamp(16, 1 << 20) as usize;
            Cache::with_weighter(items, budget, Weigh)
        });
        MetaCache {
            c,
            counts: CacheCounts::default(),
        }
    }

    pub fn segment(&mut self, id: ChunkId, s: u32) -> Option<Segment> {
        let hit = self.c.as_ref()?.get(&(id, s)).cloned();
        self.count(hit.is_some());
        hit
    }

    /// Entry `i` of every segment `s` of `id` in the cache, without counting or touching
    /// its recency (the callers' reads).
    pub fn peek(&self, id: ChunkId, s: u32) -> Option<&Segment> {
        self.c.as_ref()?.peek(&(id, s))
    }

    fn count(&mut self, hit: bool) {
        if hit {
            self.counts.hits += 1;
        } else {
            self.counts.misses += 1;
        }
    }

    /// The committed value of segment `s` of `id` (empty: the key does not exist).
    pub fn put_segment(&mut self, id: ChunkId, s: u32, seg: Segment) {
        if let Some(c) = self.c.as_mut() {
            c.insert((id, s), seg);
        }
    }

    /// Drop the segments `segs` of `id` (a removed chunk).
    pub fn forget(&mut self, id: ChunkId, segs: impl IntoIterator<Item = u32>) {
        if let Some(c) = self.c.as_mut() {
            for s in segs {
                c.remove(&(id, s));
            }
        }
    }

    /// Drop every entry of `id` (its committed state is unknown).
    pub fn forget_all(&mut self, id: ChunkId) {
        if let Some(c) = self.c.as_mut() {
            c.retain(|k, _| k.0 != id);
        }
    }

    /// Entries and their weight (tests).
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.c.as_ref().map_or(0, |c| c.len())
    }

    #[cfg(test)]
    pub fn weight(&self) -> u64 {
        self.c.as_ref().map_or(0, |c| c.weight())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chunk::meta::PageRef;

    fn seg(n: usize) -> Segment {
        Segment {
            end: 0,
            pages: vec![
                PageRef {
                    blob: 1,
                    page: 2,
                    crc: 3
                };
                n
            ],
        }
    }

    #[test]
    fn hit_miss_and_forget() {
        let mut c = MetaCache::new(1 << 20);
        assert_eq!(c.segment(1, 0), None);
        c.put_segment(1, 0, seg(4));
        c.put_segment(1, 1, seg(4));
        c.put_segment(2, 0, seg(1));
        assert_eq!(c.segment(1, 0), Some(seg(4)));
        assert_eq!(c.counts, CacheCounts { hits: 1, misses: 1 });
        c.forget(1, [0]);
        assert_eq!(c.segment(1, 0), None);
        assert_eq!(c.segment(1, 1), Some(seg(4)));
        c.forget_all(1);
        assert_eq!(c.segment(1, 1), None);
        assert_eq!(c.segment(2, 0), Some(seg(1)));
    }

    #[test]
    fn stays_within_budget() {
        let budget = 64 * (OVERHEAD + 12 * 256);
        let mut c = MetaCache::new(budget);
        for s in 0..1000 {
            c.put_segment(7, s, seg(256));
        }
        assert!(c.weight() <= budget, "{} > {budget}", c.weight());
        assert!(c.len() <= 64);
    }

    #[test]
    fn disabled_caches_nothing() {
        let mut c = MetaCache::new(0);
        c.put_segment(1, 0, seg(1));
        assert_eq!(c.segment(1, 0), None);
    }
}
