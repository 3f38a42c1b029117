//! Options of [`crate::Db`]: defaults and validation.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::device::{AnyDevice, SimDevice};
use crate::error::{Error, Result};

/// Where the store lives. A clone of `Device`, `Sim` or a memory device is another handle to
/// the same device.
#[derive(Debug, Clone)]
pub enum DeviceSpec {
    /// An image file or a block device (created as an image file of `device_size` bytes when
    /// absent and `create` is set).
    Path(PathBuf),
    /// A fresh in-memory device (always formatted).
    Memory { size: u64 },
    /// A simulated device with fault injection (tests keep the `Arc` to crash it).
    Sim(Arc<SimDevice>),
    /// Any device already opened by the caller.
    Device(AnyDevice),
}

/// When an acknowledged write is durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncPolicy {
    /// Acknowledged only after the device flush that covers it (queued writers share one).
    Always,
    /// As `Always`, but a shard that saw concurrent writers waits up to `max_delay` for more
    /// before its shared write and flush.
    GroupCommit { max_delay: Duration },
    /// Acknowledged after the device write; durable at the next `sync`, merge or close.
    Never,
}

/// What open does with a data blob's log that does not validate to its end (`scan.rs` says
/// how the engine tells the cases apart).
///
/// A careful user wants to hear about damage before anything is served: a silently shortened
/// log turns into older values and deleted keys coming back. So the default opens only a store
/// whose logs are whole or end in a torn tail, and `Salvage` is a deliberate second step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RecoveryMode {
    /// Drop a torn tail — bytes past a blob's last flush that a crash left half-written — and
    /// nothing else. Damage to durable records fails open with [`Error::DamagedLog`], naming
    /// shard, blob and offset, and the device is left as it was.
    #[default]
    TolerateTornTail,
    /// Skip damaged ranges: resume at the next valid record and keep every valid record after
    /// the damage. Keys whose newest record lay in a skipped range come back with an older
    /// value, or come back from deletion; [`crate::Db::damage`] lists the ranges skipped.
    Salvage,
}

/// Merge triggers (Basho-style). A triggered merge rewrites every sealed data blob of the
/// shard; see `merge.rs`.
#[derive(Debug, Clone)]
pub struct MergeOptions {
    /// Merge automatically when a trigger fires (else only on [`crate::Db::merge`]).
    pub auto: bool,
    /// How often the merge worker looks at the triggers.
    pub check_interval: Duration,
    /// Trigger: some sealed blob has at least this percentage of dead bytes.
    pub frag_trigger_pct: u8,
    /// Trigger: some sealed blob holds at least this many dead bytes.
    pub dead_bytes_trigger: u64,
    /// A sealed blob below this size counts as small.
    pub small_blob_threshold: u64,
    /// Trigger: at least this many small sealed blobs (0 = never).
    pub small_blobs_trigger: usize,
    /// Only merge automatically between these UTC hours (`start..end`, may wrap midnight).
    pub window: Option<(u8, u8)>,
}

impl Default for MergeOptions {
    fn default() -> Self {
        MergeOptions {
            auto: true,
            check_interval: Duration::from_secs(1),
            frag_trigger_pct: 60,
            dead_bytes_trigger: 512 << 20,
            small_blob_threshold: 10 << 20,
            small_blobs_trigger: 16,
            window: None,
        }
    }
}

/// Options of [`crate::Db::open`]. Start from [`Options::new`] (or [`Options::at`] for an
/// image file) and change what you need, with the chainable setters or the public fields.
///
/// | option | default |
/// |---|---|
/// | `create` | `true`: format the device if it holds no blobstore, create a missing image file |
/// | `device_size` | 1 GiB: size of an image file that `create` makes (the store's limit) |
/// | `preallocate` | `false`: a new image file is sparse and takes space as it is written |
/// | `cluster_size` | 1 MiB (when formatting) |
/// | `shards` | the machine's cores (an existing store keeps its own count) |
/// | `max_blob_size` | 256 MiB: a data blob past this is sealed |
/// | `sync` | [`SyncPolicy::GroupCommit`] with a 200 µs gather window: a write returns once durable |
/// | `merge` | [`MergeOptions::default`]: automatic, blobs 60 % dead or 512 MiB dead, 16 small blobs |
/// | `max_key_size` / `max_value_size` | 1024 B / 16 MiB |
/// | `cache_bytes` | a sixteenth of the machine's memory, at least 32 MiB, at most 1 GiB |
/// | `bstype` | `"BLOBCASK"` |
/// | `read_only` | `false` |
/// | `recovery` | [`RecoveryMode::TolerateTornTail`]: open refuses a damaged log |
///
/// ```
/// use blobcask::{Options, SyncPolicy};
/// let opts = Options::at("/tmp/example-store.img")
///     .device_size(256 << 20)
///     .shards(4)
///     .sync(SyncPolicy::Always);
/// assert_eq!(opts.device_size, 256 << 20);
/// ```
#[derive(Debug, Clone)]
pub struct Options {
    pub device: DeviceSpec,
    /// Format the device if it does not hold a blobstore (and create the image file).
    pub create: bool,
    /// Size of an image file created for `DeviceSpec::Path`: the most the store can hold
    /// (`blobcask grow` raises it later). Unless `preallocate` is set the file is sparse, so
    /// it takes space on the file system only as the store writes it.
    pub device_size: u64,
    /// Allocate a new image file whole with `fallocate` when creating it (default `false`).
    /// Preallocation reserves the space up front (the store cannot later find the file
    /// system full) and spares the file system block allocation during writes. A sparse
    /// image on a file system that fills up fails the write that finds no room with an I/O
    /// error; nothing acknowledged is lost.
    pub preallocate: bool,
    /// Cluster size when formatting.
    pub cluster_size: u32,
    /// Io unit size when formatting: 4096 (default) or a smaller power of two down to 512 (a
    /// store as SPDK makes on a device with 512-byte blocks). An existing store keeps its own.
    pub io_unit_size: u32,
    /// Shard count (default: cores). An existing store keeps the count it was created with.
    pub shards: usize,
    /// A data blob past this size is sealed and a new one started (at most 4 GiB).
    pub max_blob_size: u64,
    pub sync: SyncPolicy,
    pub merge: MergeOptions,
    /// At most 65535.
    pub max_key_size: usize,
    /// At most 2 GiB - 1, and must fit a data blob.
    pub max_value_size: usize,
    /// Read cache bytes over all shards; 0 disables it. The cache holds device pages of data
    /// blobs, filled as they are written and as reads miss. Default: a sixteenth of the
    /// machine's memory, at least 32 MiB and at most 1 GiB.
    pub cache_bytes: usize,
    /// Blobstore type tag (at most 16 bytes).
    pub bstype: String,
    /// Open for reading only: an image file is opened `O_RDONLY` under a shared lock, recovery
    /// runs in memory only, and every write (put, delete, batch, sync, merge) fails
    /// [`Error::ReadOnly`]. Nothing reaches the device, not even at close.
    pub read_only: bool,
    /// How long open waits for the image's lock while another handle holds it (a writer holds
    /// it exclusively, readers share it) before failing [`Error::Locked`]. Default `None`: half
    /// a second. `Some(Duration::MAX)` waits for as long as it takes.
    pub lock_wait: Option<Duration>,
    /// What open does with damaged records.
    pub recovery: RecoveryMode,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            device: DeviceSpec::Memory { size: 256 << 20 },
            create: true,
            device_size: 1 << 30,
            preallocate: false,
            cluster_size: crate::blobstore::DEFAULT_CLUSTER_SIZE,
            io_unit_size: 4096,
            shards: std::thread::available_parallelism().map_or(1, |n| n.get()),
            max_blob_size: 256 << 20,
            sync: SyncPolicy::GroupCommit {
                max_delay: Duration::from_micros(200),
            },
            merge: MergeOptions::default(),
            max_key_size: 1024,
            max_value_size: 16 << 20,
            cache_bytes: crate::cache::default_budget(),
            bstype: "BLOBCASK".to_string(),
            read_only: false,
            lock_wait: None,
            recovery: RecoveryMode::default(),
        }
    }
}

/// Hard limits of the on-disk format.
pub const MAX_KEY_LIMIT: usize = u16::MAX as usize;
/// Keys starting with these bytes are the engine's own (the chunk store's metadata keys,
/// `chunk/meta.rs`): user writes of them are refused. Two `ff` bytes never occur
/// in UTF-8 text, so no text key collides.
pub const RESERVED_PREFIX: &[u8; 4] = b"\xff\xffck";
pub const MAX_VALUE_LIMIT: usize = (1 << 31) - 1;
pub const MAX_BLOB_LIMIT: u64 = u32::MAX as u64 + 1;
pub const MAX_SHARDS: usize = 1024;

/// Merge outputs smaller than this many clusters get a hint only on a roomy store (else open
/// scans them).
pub(crate) const HINT_MIN_CLUSTERS: u64 = 8;

/// Space a store sets aside, derived from its size so that a merge always has room.
///
/// A merge rewrites one sealed blob at a time into an output of at most two data blobs' worth
/// (so that half-dead blobs pack), so the largest unit it needs is one output's worth of live
/// data, its hint and a cluster of slack; outputs are capped at 1/32 of the store so this unit
/// stays small, and at four clusters at least (blobs of one cluster each would run out of md
/// pages, one per cluster, before clusters). Puts leave the whole reserve free, deletes the
/// merge unit (the rest is room for their tombstones: 512 KiB or a cluster per shard).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Geometry {
    /// Data blob size past which the active blob is sealed (half a merge output).
    pub max_blob_size: u64,
    /// Clusters the active blob is grown by at a time.
    pub lease_clusters: u64,
    /// Free clusters one merge step needs (one output's live data + hint + slack).
    pub merge_unit: u64,
    /// Free clusters puts must leave.
    pub merge_reserve: u64,
}

impl Geometry {
    /// The geometry of a store of `total` data clusters of `cluster` bytes with `shards`.
    pub fn new(total: u64, cluster: u64, shards: usize, max_blob_size: u64) -> Geometry {
        let out_cl = (max_blob_size / cluster).clamp(1, (total / 32).max(4));
        let blob_cl = (out_cl / 2).max(1);
        let out_cl = blob_cl * 2;
        let hint_cl = if out_cl >= HINT_MIN_CLUSTERS {
            out_cl.div_ceil(2)
        } else {
            0
        };
        let merge_unit = out_cl + hint_cl + 1;
        Geometry {
            max_blob_size: blob_cl * cluster,
            lease_clusters: ((4u64 << 20) / cluster).clamp(1, 16).min(blob_cl),
            merge_unit,
            merge_reserve: merge_unit + shards as u64 * ((512 << 10) / cluster).max(1),
        }
    }

    /// Whether `total` data clusters hold a working store: the reserve, and per shard an
    /// active blob, a keydir snapshot being replaced (two) and a cluster of data.
    fn fits(&self, total: u64, shards: usize) -> bool {
        total >= self.merge_reserve + 4 * shards as u64
    }
}

/// The smallest number of data clusters that holds a working store of `shards`.
pub(crate) fn min_data_clusters(cluster: u64, shards: usize, max_blob_size: u64) -> u64 {
    (1..)
        .find(|&t| Geometry::new(t, cluster, shards, max_blob_size).fits(t, shards))
        .unwrap_or(u64::MAX)
}

/// Refuse a store of `total` data clusters that cannot hold `shards`, naming the minimum.
pub(crate) fn check_space(
    total: u64,
    cluster: u64,
    shards: usize,
    max_blob_size: u64,
) -> Result<()> {
    let min = min_data_clusters(cluster, shards, max_blob_size);
    if total >= min {
        return Ok(());
    }
    Err(Error::InvalidArgument(format!(
        "the store is too small: {shards} shards with {} KiB clusters need at least {min} data \
         clusters ({}), the device has {total}; {}",
        cluster >> 10,
        match min_device_size(cluster, shards, max_blob_size) {
            // Only clusters no bigger than an md page get here: the blobstore keeps one md
            // page per cluster, so its metadata alone fills any device.
            u64::MAX => format!(
                "no device size fits them: the blobstore keeps one 4 KiB md page per cluster, \
                 so with {} KiB clusters its metadata fills the whole device; use clusters of \
                 at least 8 KiB",
                cluster >> 10
            ),
            size => human(size),
        },
        match (
            shards > 1,
            min_device_size(cluster, shards, max_blob_size) == u64::MAX
        ) {
            (true, true) => "use fewer shards or a bigger cluster size",
            (false, true) => "use a bigger cluster size",
            (true, false) => "use fewer shards, smaller clusters or a bigger device",
            (false, false) => "use smaller clusters or a bigger device",
        },
    )))
}

/// The smallest device (a multiple of the cluster size) whose native blobstore holds a
/// working store of `shards`.
fn min_device_size(cluster: u64, shards: usize, max_blob_size: u64) -> u64 {
    let min = min_data_clusters(cluster, shards, max_blob_size);
    let Ok(cs) = u32::try_from(cluster) else {
        return u64::MAX;
    };
    let init = crate::blobstore::InitOpts {
        cluster_size: cs,
        ..Default::default()
    };
    (min..min * 4 + 64)
        .map(|n| n * cluster)
        .find(|&size| {
            crate::blobstore::native::layout::Layout::for_init(size, 4096, &init)
                .is_ok_and(|l| u64::from(l.total_data_clusters()) >= min)
        })
        .unwrap_or(u64::MAX)
}

fn human(bytes: u64) -> String {
    if bytes.is_multiple_of(1 << 20) {
        format!("{} MiB", bytes >> 20)
    } else {
        format!("{} KiB", bytes.div_ceil(1 << 10))
    }
}

impl Options {
    /// Defaults on `device`.
    pub fn new(device: DeviceSpec) -> Self {
        Options {
            device,
            ..Options::default()
        }
    }

    /// The smallest device on which a new native store with these options works (its
    /// cluster size and shard count).
    pub fn min_device_size(&self) -> u64 {
        if self.cluster_size < 4096 {
            return u64::MAX;
        }
        min_device_size(
            u64::from(self.cluster_size),
            self.shards,
            self.max_blob_size,
        )
    }

    /// Refuse a new native store of `size` bytes that cannot hold these options' shards (a
    /// typed [`Error::InvalidArgument`] naming the minimum), before anything is written.
    pub fn check_new_store(&self, size: u64) -> Result<()> {
        if self.cluster_size < 4096 || !self.cluster_size.is_multiple_of(4096) {
            // The geometry below divides by it.
            return self.validate();
        }
        let init = crate::blobstore::InitOpts {
            cluster_size: self.cluster_size,
            ..Default::default()
        };
        let total = crate::blobstore::native::layout::Layout::for_init(size, 4096, &init)
            .map_or(0, |l| u64::from(l.total_data_clusters()));
        check_space(
            total,
            u64::from(self.cluster_size),
            self.shards,
            self.max_blob_size,
        )
    }

    /// Check every option; a clear error names the bad one.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::InvalidArgument(m));
        if self.shards == 0 || self.shards > MAX_SHARDS {
            return bad(format!(
                "shards = {} (must be 1..={MAX_SHARDS})",
                self.shards
            ));
        }
        if self.max_key_size == 0 || self.max_key_size > MAX_KEY_LIMIT {
            return bad(format!(
                "max_key_size = {} (must be 1..={MAX_KEY_LIMIT})",
                self.max_key_size
            ));
        }
        if self.max_value_size > MAX_VALUE_LIMIT {
            return bad(format!(
                "max_value_size = {} (at most {MAX_VALUE_LIMIT})",
                self.max_value_size
            ));
        }
        if self.cluster_size < 4096 || !self.cluster_size.is_multiple_of(4096) {
            return bad(format!(
                "cluster_size = {} (a multiple of 4096)",
                self.cluster_size
            ));
        }
        if !self.io_unit_size.is_power_of_two() || !(512..=4096).contains(&self.io_unit_size) {
            return bad(format!(
                "io_unit_size = {} (a power of two in 512..=4096)",
                self.io_unit_size
            ));
        }
        if self.max_blob_size > MAX_BLOB_LIMIT || self.max_blob_size < 4096 {
            return bad(format!(
                "max_blob_size = {} (must be 4096..={MAX_BLOB_LIMIT})",
                self.max_blob_size
            ));
        }
        let biggest = crate::record::encoded_len(crate::record::BATCH, self.max_key_size, 0) as u64
            + self.max_value_size as u64;
        if biggest > self.max_blob_size {
            return bad(format!(
                "max_value_size {} + max_key_size {} does not fit max_blob_size {}",
                self.max_value_size, self.max_key_size, self.max_blob_size
            ));
        }
        if self.bstype.len() > 16 {
            return bad(format!("bstype {:?} is longer than 16 bytes", self.bstype));
        }
        if self.merge.frag_trigger_pct > 100 {
            return bad(format!(
                "merge.frag_trigger_pct = {} (at most 100)",
                self.merge.frag_trigger_pct
            ));
        }
        if let Some((a, b)) = self.merge.window {
            if a > 23 || b > 24 {
                return bad(format!("merge.window = {a}..{b} (hours 0..=24)"));
            }
        }
        if let SyncPolicy::GroupCommit { max_delay } = self.sync {
            if max_delay > Duration::from_secs(1) {
                return bad(format!("sync max_delay {max_delay:?} is over 1 s"));
            }
        }
        Ok(())
    }
}

/// Chainable setters, one per field (each says its default in the table of [`Options`]).
impl Options {
    /// Defaults on the image file or block device at `path`.
    pub fn at(path: impl Into<PathBuf>) -> Self {
        Options::new(DeviceSpec::Path(path.into()))
    }

    /// Format a device without a blobstore / create a missing image file.
    pub fn create(mut self, create: bool) -> Self {
        self.create = create;
        self
    }

    /// Size of an image file `create` makes, in bytes: the store's limit.
    pub fn device_size(mut self, bytes: u64) -> Self {
        self.device_size = bytes;
        self
    }

    /// Allocate a new image file whole when creating it (else it is sparse).
    pub fn preallocate(mut self, yes: bool) -> Self {
        self.preallocate = yes;
        self
    }

    /// Cluster size when formatting, in bytes (a multiple of 4096).
    pub fn cluster_size(mut self, bytes: u32) -> Self {
        self.cluster_size = bytes;
        self
    }

    /// Shards of a new store.
    pub fn shards(mut self, shards: usize) -> Self {
        self.shards = shards;
        self
    }

    /// Size past which a data blob is sealed, in bytes.
    pub fn max_blob_size(mut self, bytes: u64) -> Self {
        self.max_blob_size = bytes;
        self
    }

    /// When a write is durable.
    pub fn sync(mut self, sync: SyncPolicy) -> Self {
        self.sync = sync;
        self
    }

    /// When and how merge runs.
    pub fn merge(mut self, merge: MergeOptions) -> Self {
        self.merge = merge;
        self
    }

    /// Largest key, in bytes.
    pub fn max_key_size(mut self, bytes: usize) -> Self {
        self.max_key_size = bytes;
        self
    }

    /// Largest value, in bytes.
    pub fn max_value_size(mut self, bytes: usize) -> Self {
        self.max_value_size = bytes;
        self
    }

    /// Read cache over all shards, in bytes (0 disables it).
    pub fn cache_bytes(mut self, bytes: usize) -> Self {
        self.cache_bytes = bytes;
        self
    }

    /// Blobstore type tag (at most 16 bytes).
    pub fn bstype(mut self, bstype: impl Into<String>) -> Self {
        self.bstype = bstype.into();
        self
    }

    /// Open for reading only.
    pub fn read_only(mut self, read_only: bool) -> Self {
        self.read_only = read_only;
        self
    }

    /// What open does with a damaged log.
    pub fn recovery(mut self, recovery: RecoveryMode) -> Self {
        self.recovery = recovery;
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reserve_holds_a_merge_step_and_blobs_stay_small() {
        for (total, cluster, shards) in [(30, 1 << 20, 1), (126, 64 << 10, 8), (1019, 1 << 20, 2)] {
            let g = Geometry::new(total, cluster, shards, 256 << 20);
            let out_cl = 2 * g.max_blob_size / cluster;
            assert!(g.merge_unit > out_cl, "{g:?}: a step's output does not fit");
            assert!(
                g.merge_reserve > g.merge_unit,
                "{g:?}: no room for tombstones"
            );
            assert!(g.lease_clusters * cluster <= g.max_blob_size, "{g:?}");
            assert!(
                out_cl <= (total / 32).max(4),
                "{g:?}: blobs too big for the store"
            );
        }
        // The user's smaller blob size wins.
        let g = Geometry::new(1019, 64 << 10, 2, 256 << 10);
        assert_eq!(g.max_blob_size, 128 << 10);
    }

    #[test]
    fn the_minimum_size_is_exact_and_named() {
        for (cluster, shards) in [(1u32 << 20, 1), (1 << 20, 2), (64 << 10, 8), (16 << 10, 3)] {
            let o = Options {
                cluster_size: cluster,
                shards,
                ..Options::default()
            };
            let min = o.min_device_size();
            assert!(o.check_new_store(min).is_ok(), "{cluster} {shards}: {min}");
            match o.check_new_store(min - u64::from(cluster)) {
                Err(Error::InvalidArgument(m)) => {
                    assert!(
                        m.contains("at least") && m.contains(&format!("{shards} shards")),
                        "{m}"
                    )
                }
                other => panic!("{cluster} {shards}: {other:?}"),
            }
        }
        // More shards need more room.
        let min = |shards| min_data_clusters(1 << 20, shards, 256 << 20);
        assert!(min(1) < min(2) && min(2) < min(8));
    }

    #[test]
    fn defaults_validate_and_bad_values_are_named() {
        assert!(Options::default().validate().is_ok());
        type Case = (Box<dyn Fn(&mut Options)>, &'static str);
        let cases: Vec<Case> = vec![
            (Box::new(|o| o.shards = 0), "shards"),
            (Box::new(|o| o.max_key_size = 70_000), "max_key_size"),
            (Box::new(|o| o.cluster_size = 1000), "cluster_size"),
            (Box::new(|o| o.max_blob_size = 1 << 40), "max_blob_size"),
            (Box::new(|o| o.max_value_size = 1 << 30), "does not fit"),
            (Box::new(|o| o.bstype = "x".repeat(17)), "bstype"),
        ];
        for (f, word) in cases {
            let mut o = Options::default();
            f(&mut o);
            match o.validate() {
                Err(Error::InvalidArgument(m)) => assert!(m.contains(word), "{m}"),
                other => panic!("{word}: {other:?}"),
            }
        }
    }
}
