//! openraft's own storage suite against the blobcask log store and state machine.

use blobcask::{Db, DeviceSpec};
use blobcask_raft::{LogStore, NodeId, StateMachine, TypeConfig};
use openraft::testing::{StoreBuilder, Suite};
use openraft::StorageError;

struct Builder {
    /// Keep the snapshot file in a directory (else in memory only).
    with_dir: bool,
}

impl StoreBuilder<TypeConfig, LogStore, StateMachine, Option<tempfile::TempDir>> for Builder {
    async fn build(
        &self,
    ) -> Result<(Option<tempfile::TempDir>, LogStore, StateMachine), StorageError<NodeId>> {
        let mut opts = blobcask_raft::store_options(DeviceSpec::Memory { size: 64 << 20 });
        opts.cache_bytes = 1 << 20;
        let db = Db::open(opts).expect("open blobcask");
        let dir = self.with_dir.then(|| tempfile::tempdir().expect("tempdir"));
        let (log, sm) = blobcask_raft::open(db, dir.as_ref().map(|d| d.path().join("snap")))
            .expect("open raft storage");
        Ok((dir, log, sm))
    }
}

#[test]
fn openraft_suite_in_memory_snapshots() {
    Suite::test_all(Builder { with_dir: false }).unwrap();
}

#[test]
fn openraft_suite_snapshot_files() {
    Suite::test_all(Builder { with_dir: true }).unwrap();
}
