//! `Db::stats`: counters and the blob layout.

use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::blobstore::{BlobId, BlobStore};
pub use crate::state::{BlobRole, Totals};
use crate::state::{Core, ShardShared};

/// One data blob.
#[derive(Debug, Clone)]
pub struct BlobStats {
    pub id: BlobId,
    pub shard: usize,
    /// The shard-local blob sequence number (`bc.seq`).
    pub seq: u64,
    pub role: BlobRole,
    /// Bytes of log.
    pub size: u64,
    pub live_bytes: u64,
    pub dead_bytes: u64,
}

/// One shard.
#[derive(Debug, Clone)]
pub struct ShardStats {
    pub shard: usize,
    pub keys: u64,
    pub keydir_bytes: u64,
    pub live_bytes: u64,
    pub dead_bytes: u64,
    pub merges: u64,
    pub groups: u64,
    pub group_ops: u64,
    pub cache_hits: u64,
    pub cache_misses: u64,
}

/// A snapshot of the store's counters.
#[derive(Debug, Clone)]
pub struct Stats {
    pub keys: u64,
    pub shards: Vec<ShardStats>,
    pub blobs: Vec<BlobStats>,
    pub live_bytes: u64,
    pub dead_bytes: u64,
    /// Heap bytes of all keydirs.
    pub keydir_bytes: u64,
    /// Keydir bytes per key beyond the key bytes themselves.
    pub keydir_bytes_per_key: f64,
    pub merges: u64,
    /// Bytes merge rewrote.
    pub merged_bytes: u64,
    /// Key + value bytes the user handed to put/delete/write_batch.
    pub user_bytes: u64,
    /// Bytes written to the device by shards and merges (padding and rewrites included).
    pub device_bytes: u64,
    /// `device_bytes / user_bytes`.
    pub write_amplification: f64,
    /// Group commits and the requests they carried.
    pub groups: u64,
    pub group_ops: u64,
    pub mean_group_size: f64,
    /// Histogram of group sizes: buckets 1, 2-3, 4-7, ..., 64-127, >= 128.
    pub group_size_histogram: [u64; 8],
    /// Reads served from memory (the page cache or the write-behind buffer) and from the device.
    pub cache_hits: u64,
    pub cache_misses: u64,
    /// Bytes the read cache holds now, and the most it may hold.
    pub cache_bytes: u64,
    pub cache_capacity: u64,
    /// Submission path of the device (io_uring, pread/pwrite, memory).
    pub io_path: String,
    /// How long the last open spent rebuilding keydirs.
    pub recovery_time: Duration,
    /// Whether that open used hints (snapshots or merge hints) for at least one shard.
    pub recovery_used_hints: bool,
    pub free_clusters: u64,
    pub total_clusters: u64,
    /// The counters above summed over every run of the store, this one included (the per-run
    /// fields start at zero at each open).
    pub totals: Totals,
}

pub(crate) fn collect<S: BlobStore>(core: &Core<S>) -> Stats {
    let mut st = Stats {
        keys: 0,
        shards: Vec::new(),
        blobs: Vec::new(),
        live_bytes: 0,
        dead_bytes: 0,
        keydir_bytes: 0,
        keydir_bytes_per_key: 0.0,
        merges: 0,
        merged_bytes: 0,
        user_bytes: 0,
        device_bytes: 0,
        write_amplification: 0.0,
        groups: 0,
        group_ops: 0,
        mean_group_size: 0.0,
        group_size_histogram: [0; 8],
        cache_hits: 0,
        cache_misses: 0,
        cache_bytes: 0,
        cache_capacity: 0,
        io_path: core.io_path().to_string(),
        recovery_time: Duration::ZERO,
        recovery_used_hints: false,
        free_clusters: core.store.free_clusters(),
        total_clusters: core.store.total_data_clusters(),
        totals: Totals::default(),
    };
    let mut overhead = 0u64;
    for (i, sh) in core.shards.iter().enumerate() {
        let c = &sh.ctr;
        let (ss, shard_overhead) = shard_stats(i, sh, &mut st.blobs);
        overhead += shard_overhead;
        st.keys += ss.keys;
        st.keydir_bytes += ss.keydir_bytes;
        st.live_bytes += ss.live_bytes;
        st.dead_bytes += ss.dead_bytes;
        st.merges += ss.merges;
        st.groups += ss.groups;
        st.group_ops += ss.group_ops;
        st.cache_hits += ss.cache_hits;
        st.cache_misses += ss.cache_misses;
        if let Some(cache) = &sh.cache {
            st.cache_bytes += cache.weight();
            st.cache_capacity += cache.capacity();
        }
        st.merged_bytes += c.merged_bytes.load(Ordering::Relaxed);
        st.user_bytes += c.user_bytes.load(Ordering::Relaxed);
        st.device_bytes += c.device_bytes.load(Ordering::Relaxed);
        for (b, h) in st.group_size_histogram.iter_mut().zip(&c.group_hist) {
            *b += h.load(Ordering::Relaxed);
        }
        st.shards.push(ss);
    }
    st.blobs.sort_by_key(|b| (b.shard, b.seq));
    if st.keys > 0 {
        st.keydir_bytes_per_key = overhead as f64 / st.keys as f64;
    }
    if st.user_bytes > 0 {
        st.write_amplification = st.device_bytes as f64 / st.user_bytes as f64;
    }
    if st.groups > 0 {
        st.mean_group_size = st.group_ops as f64 / st.groups as f64;
    }
    st.totals = core.totals();
    let (t, h) = core.recovery_info();
    st.recovery_time = t;
    st.recovery_used_hints = h;
    st
}

/// One shard's counters and layout; its blobs go to `blobs`. Also returns the keydir's
/// overhead bytes.
fn shard_stats<S: BlobStore>(
    i: usize,
    sh: &ShardShared<S>,
    blobs: &mut Vec<BlobStats>,
) -> (ShardStats, u64) {
    let c = &sh.ctr;
    let ix = sh.index.read();
    let mut ss = ShardStats {
        shard: i,
        keys: ix.keydir.len() as u64,
        keydir_bytes: ix.keydir.memory_bytes() as u64,
        live_bytes: 0,
        dead_bytes: 0,
        merges: c.merges.load(Ordering::Relaxed),
        groups: c.groups.load(Ordering::Relaxed),
        group_ops: c.group_ops.load(Ordering::Relaxed),
        cache_hits: c.cache_hits.load(Ordering::Relaxed),
        cache_misses: c.cache_misses.load(Ordering::Relaxed),
    };
    let overhead = ix.keydir.overhead_bytes() as u64;
    for e in ix.blobs.iter().flatten() {
        let dead = e.written.saturating_sub(e.live);
        ss.live_bytes += e.live;
        ss.dead_bytes += dead;
        blobs.push(BlobStats {
            id: e.handle.id,
            shard: i,
            seq: e.handle.seq,
            role: e.role,
            size: e.written,
            live_bytes: e.live,
            dead_bytes: dead,
        });
    }
    (ss, overhead)
}
