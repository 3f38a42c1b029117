//! blobcask as the storage of an [openraft] cluster: a Raft log store
//! ([`LogStore`]) and a key-value state machine ([`StateMachine`]) on one blobcask store, a
//! plain TCP transport ([`network`]), and a node that serves clients ([`node`]).
//!
//! # Why openraft 0.9
//!
//! 0.9 is openraft's stable line on crates.io (0.10 has been in alpha for a long time, and its
//! storage traits and type configuration still change between alphas). An embedder wants an
//! API that stays put, so this crate implements the 0.9 storage-v2 traits
//! (`RaftLogStorage`, `RaftStateMachine`) and passes 0.9's own storage suite
//! (`openraft::testing::Suite::test_all`). The layout below does not depend on the version.
//!
//! # Layout (keys of one blobcask store)
//!
//! | key | value |
//! |---|---|
//! | `l/e/` + index (u64 big-endian) | a log entry (bincode) |
//! | `l/vote`, `l/committed`, `l/purged` | the vote, the committed and the last purged log id |
//! | `s/gen` | the state machine's current generation (u64 big-endian) |
//! | `s/applied`, `s/membership` | the last applied log id and the membership it carries |
//! | `d/` + generation (u64 BE) + user key | a user value |
//!
//! # What is durable when
//!
//! - `append`: the entries are written as one batch; openraft's callback fires once the
//!   batch is flushed (blobcask's group commit lets concurrent appends, and the state
//!   machine's writes, share one flush), and callbacks fire in append order.
//! - `save_vote` returns once the vote is flushed; `save_committed` is written without waiting
//!   (openraft does not need it durable).
//! - `truncate` and `purge` return once their deletes are flushed; merge reclaims the space.
//! - `apply` writes the user data, the applied log id and the membership in one batch and
//!   returns once it is flushed: a crash keeps all of it or none of it, so an entry is never
//!   applied twice nor skipped.
//! - Snapshots: see [`StateMachine`].
//!
//! The store should have one shard (see [`store_options`]): then every batch is a single
//! group in one log, and a crash keeps a prefix of the appends. Open also repairs a store with
//! more shards: entries after a hole in the log, which cannot have been acknowledged, are
//! dropped.

// openraft's `StorageError` (what its traits return) is large; helpers pass it along as is.
#![allow(clippy::result_large_err)]

use std::io::Cursor;

use serde::{Deserialize, Serialize};

mod codec;
pub mod log_store;
pub mod network;
pub mod node;
pub mod state_machine;

pub use log_store::LogStore;
pub use state_machine::{Kv, StateMachine};

/// A node's id.
pub type NodeId = u64;

openraft::declare_raft_types!(
    /// The openraft types of the replicated key-value store.
    pub TypeConfig:
        D = Request,
        R = Response,
);

/// A write to the replicated key-value store (a log entry's payload).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    Put { key: Vec<u8>, value: Vec<u8> },
    Delete { key: Vec<u8> },
}

/// What applying a [`Request`] answers.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Response {
    /// The log index the request was applied at.
    pub index: u64,
}

/// The openraft handle of this crate's types.
pub type Raft = openraft::Raft<TypeConfig>;

/// Errors of opening the storage.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("blobcask: {0}")]
    Store(#[from] blobcask::Error),
    #[error("decoding {what}: {source}")]
    Decode {
        what: &'static str,
        #[source]
        source: bincode::Error,
    },
    #[error("snapshot file: {0}")]
    Io(#[from] std::io::Error),
}

/// Options for a store meant for [`open`]: one shard (so that a crash keeps a prefix of the
/// log; see the crate docs) and blobcask's default group commit.
pub fn store_options(device: blobcask::DeviceSpec) -> blobcask::Options {
    let mut opts = blobcask::Options::new(device);
    opts.shards = 1;
    opts
}

/// Open the log store and the state machine on `db`. The current snapshot is kept in memory
/// and, when `snapshot_dir` is given, in a file there (written before it is used, so a restart
/// finds it). Open repairs what a crash may have left: log entries after a hole or at or
/// below the purged index, and the data of a snapshot install cut short.
pub fn open(
    db: blobcask::Db,
    snapshot_dir: Option<std::path::PathBuf>,
) -> Result<(LogStore, StateMachine), Error> {
    let scan = state_machine::scan_keys(&db)?;
    let log = LogStore::open(db.clone(), &scan.log_indices)?;
    let sm = StateMachine::open(db, snapshot_dir, &scan.stale_data)?;
    Ok((log, sm))
}
