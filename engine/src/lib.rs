//! blobcask: a Bitcask-style key-value store whose data files are blobs on an SPDK-format
//! blobstore.

mod blob_scan;
mod blobs;
pub mod blobstore;
mod cache;
pub mod catalog;
pub mod db;
pub mod device;
mod error;
pub mod fsck;
pub mod hint;
mod iter;
pub mod keydir;
mod merge;
mod options;
mod read;
pub mod record;
mod recovery;
mod reply;
pub mod salvage;
pub mod scan;
mod shard;
mod snapshot;
mod state;
mod stats;

pub use db::{
    native_store, BlobRole, BlobStats, Db, DeviceSpec, Iter, KeyIter, MergeOptions, Options,
    ShardStats, Stats, SyncPolicy, WriteBatch,
};
pub use error::{Error, Result};
pub use options::RecoveryMode;
