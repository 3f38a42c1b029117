//! blobcask: a Bitcask-style key-value store whose data files are blobs on an SPDK-format
//! blobstore.
//!
//! Records are appended to per-shard logs; an in-memory keydir maps each key to its newest
//! record, so a read is one lookup and at most one device read, and a write is one append
//! (shared with concurrent writers by group commit). The logs are blobs of a blobstore that
//! speaks SPDK's on-disk format, on an image file, a block device or memory (`O_DIRECT` and
//! io_uring), or on real SPDK with the `spdk` feature.
//!
//! # Quickstart
//!
//! ```
//! use blobcask::{Db, DeviceSpec, Options};
//!
//! # let dir = tempfile::tempdir()?;
//! # let path = dir.path().join("store.img");
//! // Creates (and formats) the image file when it does not exist yet.
//! let mut opts = Options::new(DeviceSpec::Path(path.clone()));
//! opts.device_size = 64 << 20;
//! let db = Db::open(opts)?;
//!
//! db.put(b"user:1", b"ada")?;
//! assert_eq!(db.get(b"user:1")?.as_deref(), Some(&b"ada"[..]));
//!
//! let mut batch = blobcask::WriteBatch::new();
//! batch.put(b"user:2", b"grace").delete(b"user:1");
//! db.write_batch(batch)?; // all or nothing, also across a crash
//!
//! for item in db.iter_prefix(b"user:")? {
//!     let (key, value) = item?;
//!     println!("{} = {}", String::from_utf8_lossy(&key), String::from_utf8_lossy(&value));
//! }
//! db.close()?; // flush, write hints, unload cleanly (dropping the last handle does too)
//!
//! // Everything acknowledged is there after a reopen (or a crash).
//! let db = Db::open_read_only(Options::new(DeviceSpec::Path(path)))?;
//! assert_eq!(db.get(b"user:2")?.as_deref(), Some(&b"grace"[..]));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Where to go next
//!
//! - [`Options`]: durability ([`SyncPolicy`]), shards, cache, merge, recovery of damaged logs
//!   ([`RecoveryMode`]); every field says its default.
//! - [`Db`]: point reads and writes, `multi_get`, batches, iteration ([`Db::iter`]), async
//!   variants (`put_async`, `get_async`, ...), `sync`, `merge`, `stats`, `damage`.
//! - The `examples/` directory: basic use, batches, iteration, async, crash recovery, and
//!   reading any SPDK blobstore with [`blobstore::native::NativeBlobStore`].
//! - `engine/FORMAT.md` (the engine's on-disk records, hints and snapshots) and
//!   `engine/ARCHITECTURE.md` (modules, threads, locks, the write and read paths).

// Internals: public with the `internals` feature only (the CLI, the test suites and the
// fuzzers use them); no compatibility promise covers them. Defined before every module so
// that `chunk` can use it too.
macro_rules! internal {
    ($($(#[$attr:meta])* $name:ident;)*) => {$(
        $(#[$attr])*
        #[cfg(feature = "internals")]
        pub mod $name;
        $(#[$attr])*
        #[cfg(not(feature = "internals"))]
        mod $name;
    )*};
}

// The public layers: the engine's API (re-exported below), the chunk store beside it, the
// devices it runs on, the blobstore beneath it (usable alone, e.g. to read any SPDK
// blobstore) and the offline check and salvage of a store.
pub mod blobstore;
pub mod chunk;
pub mod device;
pub mod fsck;

internal! {
    catalog;
    /// Checkpoints: [`Db::checkpoint`] and the calls beside it.
    checkpoint;
    db;
    hint;
    keydir;
    record;
    salvage;
    scan;
}

mod blob_scan;
mod blobs;
mod cache;
mod error;
mod iter;
mod merge;
mod options;
mod read;
mod recovery;
mod reply;
mod shard;
mod snapshot;
mod state;
mod stats;

pub use checkpoint::Checkpoint;
pub use db::{
    native_store, BlobRole, BlobStats, Db, DeviceSpec, Iter, KeyIter, MergeOptions, Options,
    ShardStats, Stats, SyncPolicy, Totals, WriteBatch,
};
pub use error::{Error, Result};
pub use options::RecoveryMode;
pub use scan::LogDamage;
