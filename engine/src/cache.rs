//! The read cache: device pages of data blobs, in memory.
//!
//! The store bypasses the kernel's page cache (`O_DIRECT`), so it keeps its own. Its unit is a
//! device page of a data blob, not a value: one page holds every record that lies in it, so a
//! page read for one key serves its neighbours too, and the writer can hand over what it just
//! wrote without decoding it.
//!
//! **Filled by writes and by misses.** A shard inserts every page it writes (see
//! `Shard::write_out`), so a record just written is read from memory, as it would have been from
//! the page cache of a buffered file. A `get` that misses reads whole pages and inserts them.
//!
//! **Only bytes known to be log are served.** A page carries how many of its bytes, from its
//! start, are log (`valid`). The page holding a blob's device end is rewritten with more records
//! later, and a reader may insert an older copy of it after the writer inserted a newer one; an
//! older copy only has fewer valid bytes, and a record that ends past them is a miss, never a
//! read of stale bytes. Bytes below `valid` never change: a blob's log is written once, in
//! order, and a blob's salt (part of the key) is never reused, so pages of a deleted blob are
//! never mistaken for another's; they simply age out.
//!
//! **Eviction** is `quick_cache`'s CLOCK-Pro-style policy (a cold queue that new pages enter,
//! a hot queue for pages read again, and ghost entries of recently evicted ones): a scan of
//! pages read once does not push out the pages read repeatedly.

use std::sync::Arc;

/// A cached page: its bytes and how many of them, from the start, are log.
pub(crate) struct Page {
    valid: u32,
    bytes: Box<[u8]>,
}

/// Bytes found in the cache: a range of one cached page, or gathered from several.
pub(crate) enum CachedRange {
    InPage(Arc<Page>, usize, usize),
    Gathered(Vec<u8>),
}

impl std::ops::Deref for CachedRange {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            CachedRange::InPage(p, a, b) => &p.bytes[*a..*b],
            CachedRange::Gathered(v) => v,
        }
    }
}

/// `(blob salt, page number in the blob)`.
type PageKey = (u64, u64);

#[derive(Clone)]
struct PageWeighter;

/// Pages a lock shard of the cache holds at least.
const MIN_SHARD_PAGES: u64 = 1024;
/// Lock shards of a large cache (a power of two).
const MAX_LOCK_SHARDS: u64 = 16;

/// Bookkeeping bytes per entry beyond the page itself (key, `Arc`, box, slab slot).
const ENTRY_OVERHEAD: u64 = 64;

impl quick_cache::Weighter<PageKey, Arc<Page>> for PageWeighter {
    fn weight(&self, _k: &PageKey, v: &Arc<Page>) -> u64 {
        v.bytes.len() as u64 + ENTRY_OVERHEAD
    }
}

/// The pages of one shard's data blobs.
pub(crate) struct PageCache {
    pages: quick_cache::sync::Cache<PageKey, Arc<Page>, PageWeighter>,
    page: u64,
}

impl PageCache {
    /// A cache of at most `budget` bytes of `page`-byte pages.
    pub fn new(budget: u64, page: u64) -> PageCache {
        let items = (budget / (page + ENTRY_OVERHEAD)).max(16);
        // `quick_cache` splits its budget over independent shards; a shard of a few pages
        // would evict by accident of hashing, so each keeps at least `MIN_SHARD_PAGES`.
        let wanted = (items / MIN_SHARD_PAGES).clamp(1, MAX_LOCK_SHARDS);
        let shards = 1usize << (63 - wanted.leading_zeros());
        let options = quick_cache::OptionsBuilder::new()
            .estimated_items_capacity(items as usize)
            .weight_capacity(budget)
            .shards(shards)
            .build();
        let pages = match options {
            Ok(o) => quick_cache::sync::Cache::with_options(
                o,
                PageWeighter,
                Default::default(),
                Default::default(),
            ),
            Err(_) => quick_cache::sync::Cache::with_weighter(items as usize, budget, PageWeighter),
        };
        PageCache { pages, page }
    }

    /// Cache the pages of `bytes`, which hold a blob's bytes from `start` (page aligned); the
    /// first `log_len` of them are log. Pages past `log_len` are not cached.
    pub fn insert_run(&self, salt: u64, start: u64, bytes: &[u8], log_len: usize) {
        debug_assert!(start.is_multiple_of(self.page));
        let page = self.page as usize;
        let log_len = log_len.min(bytes.len());
        let mut at = 0;
        while at < log_len {
            let end = (at + page).min(bytes.len());
            let mut buf = vec![0u8; page].into_boxed_slice();
            buf[..end - at].copy_from_slice(&bytes[at..end]);
            let valid = (log_len - at).min(page) as u32;
            self.insert(salt, (start + at as u64) / self.page, valid, buf);
            at += page;
        }
    }

    fn insert(&self, salt: u64, index: u64, valid: u32, bytes: Box<[u8]>) {
        let key = (salt, index);
        if self.pages.peek(&key).is_some_and(|p| p.valid >= valid) {
            // A copy with at least as many log bytes is there already.
            return;
        }
        self.pages.insert(key, Arc::new(Page { valid, bytes }));
    }

    /// Bytes `[offset, offset + len)` of the blob with `salt`, if every page holding them is
    /// cached with those bytes valid. A range inside one page is handed out in place; one that
    /// spans pages is gathered into a buffer.
    pub fn range(&self, salt: u64, offset: u64, len: u64) -> Option<CachedRange> {
        let get = |index: u64| self.pages.get(&(salt, index));
        if len == 0 {
            return None;
        }
        let end = offset + len;
        let first = offset / self.page;
        let last = (end - 1) / self.page;
        if first == last {
            let p = get(first)?;
            let a = (offset - first * self.page) as usize;
            let b = (end - first * self.page) as usize;
            return (b <= p.valid as usize).then_some(CachedRange::InPage(p, a, b));
        }
        let mut out = Vec::with_capacity(len as usize);
        for index in first..=last {
            let p = get(index)?;
            let base = index * self.page;
            let a = offset.max(base) - base;
            let b = end.min(base + self.page) - base;
            if b > u64::from(p.valid) {
                return None;
            }
            out.extend_from_slice(&p.bytes[a as usize..b as usize]);
        }
        Some(CachedRange::Gathered(out))
    }

    /// Whether page `index` of the blob with `salt` is cached (not counted as a use).
    pub fn holds(&self, salt: u64, index: u64) -> bool {
        self.pages.peek(&(salt, index)).is_some()
    }

    /// Bytes held (the weight of every entry).
    pub fn weight(&self) -> u64 {
        self.pages.weight()
    }

    /// The most bytes it may hold.
    pub fn capacity(&self) -> u64 {
        self.pages.capacity()
    }
}

/// The default read-cache budget: a sixteenth of the machine's memory, at least 32 MiB and at
/// most 1 GiB (64 MiB where the memory size cannot be read).
pub fn default_budget() -> usize {
    const MIN: u64 = 32 << 20;
    const MAX: u64 = 1 << 30;
    // Read once: `Options::default()` asks on every open.
    static BUDGET: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *BUDGET.get_or_init(|| match total_memory() {
        Some(m) => (m / 16).clamp(MIN, MAX) as usize,
        None => 64 << 20,
    })
}

/// Physical memory in bytes, from `/proc/meminfo`.
fn total_memory() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    parse_mem_total(&text)
}

fn parse_mem_total(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kib.checked_mul(1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i % 251) as u8).collect()
    }

    fn read(c: &PageCache, salt: u64, off: u64, len: u64) -> Option<Vec<u8>> {
        c.range(salt, off, len).map(|r| r.to_vec())
    }

    #[test]
    fn serves_what_was_written_within_and_across_pages() {
        let c = PageCache::new(1 << 20, 4096);
        let bytes = log(3 * 4096);
        c.insert_run(7, 0, &bytes, 10_000);
        assert_eq!(read(&c, 7, 100, 50).unwrap(), &bytes[100..150]);
        assert_eq!(read(&c, 7, 4000, 300).unwrap(), &bytes[4000..4300]);
        assert_eq!(read(&c, 7, 0, 10_000).unwrap(), &bytes[..10_000]);
    }

    #[test]
    fn never_serves_bytes_past_the_log() {
        let c = PageCache::new(1 << 20, 4096);
        let bytes = log(2 * 4096);
        c.insert_run(7, 0, &bytes, 5000);
        assert!(read(&c, 7, 4990, 10).is_some());
        assert!(read(&c, 7, 4990, 11).is_none(), "one byte past the log");
        assert!(read(&c, 7, 9000, 10).is_none(), "a page never written");
        assert!(read(&c, 8, 0, 10).is_none(), "another blob's salt");
    }

    #[test]
    fn an_older_shorter_copy_never_replaces_a_longer_one() {
        let c = PageCache::new(1 << 20, 4096);
        let bytes = log(4096);
        c.insert_run(1, 0, &bytes, 3000);
        // A reader that read the page before the writer completed it inserts it late.
        c.insert_run(1, 0, &bytes, 1000);
        assert!(read(&c, 1, 2000, 1000).is_some());
        // A longer copy does replace a shorter one.
        c.insert_run(1, 0, &bytes, 4096);
        assert!(read(&c, 1, 3000, 1096).is_some());
    }

    #[test]
    fn stays_within_its_budget() {
        let budget = 64 * (4096 + ENTRY_OVERHEAD);
        let c = PageCache::new(budget, 4096);
        let bytes = log(4096);
        for i in 0..1000 {
            c.insert_run(3, i * 4096, &bytes, 4096);
        }
        assert!(c.weight() <= c.capacity());
        assert!(c.weight() > 0);
    }

    #[test]
    fn default_budget_is_a_sixteenth_of_memory_within_bounds() {
        assert_eq!(
            parse_mem_total("MemTotal:       24576000 kB\nMemFree: 1 kB\n"),
            Some(24_576_000 * 1024)
        );
        assert_eq!(parse_mem_total("nothing here"), None);
        let b = default_budget() as u64;
        assert!((32 << 20..=1 << 30).contains(&b));
    }
}
