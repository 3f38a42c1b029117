//! The blobcask log store and state machine across reopens, and the repairs open makes.

use std::collections::BTreeSet;
use std::io::Cursor;

use blobcask::{Db, DeviceSpec};
use blobcask_raft::{LogStore, Request, StateMachine, TypeConfig};
use openraft::storage::{RaftLogStorage, RaftLogStorageExt, RaftStateMachine};
use openraft::testing::log_id;
use openraft::{
    BasicNode, Entry, EntryPayload, Membership, RaftLogReader, RaftSnapshotBuilder, SnapshotMeta,
    StoredMembership, Vote,
};

fn open_db(path: &std::path::Path) -> Db {
    let mut opts = blobcask_raft::store_options(DeviceSpec::Path(path.join("store.img")));
    opts.device_size = 64 << 20;
    opts.cache_bytes = 1 << 20;
    // The background deletion of an old generation may hold a handle for a moment.
    opts.lock_wait = Some(std::time::Duration::from_secs(10));
    Db::open(opts).expect("open")
}

fn open(path: &std::path::Path) -> (Db, LogStore, StateMachine) {
    let db = open_db(path);
    let (l, s) = blobcask_raft::open(db.clone(), Some(path.join("snap"))).expect("raft open");
    (db, l, s)
}

fn put(term: u64, index: u64, k: &str, v: &str) -> Entry<TypeConfig> {
    Entry {
        log_id: log_id(term, 1, index),
        payload: EntryPayload::Normal(Request::Put {
            key: k.as_bytes().to_vec(),
            value: v.as_bytes().to_vec(),
        }),
    }
}

/// Append, waiting for the flush callback.
async fn append(log: &mut LogStore, entries: Vec<Entry<TypeConfig>>) {
    log.blocking_append(entries).await.expect("append");
}

fn indices(es: &[Entry<TypeConfig>]) -> Vec<u64> {
    es.iter().map(|e| e.log_id.index).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_survives_reopen_and_open_repairs_holes_and_purged_leftovers() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (db, mut log, _sm) = open(dir.path());
        append(&mut log, (1..=10).map(|i| put(1, i, "k", "v")).collect()).await;
        log.save_vote(&Vote::new(2, 1)).await.unwrap();
        log.truncate(log_id(1, 1, 8)).await.unwrap();
        log.purge(log_id(1, 1, 2)).await.unwrap();
        assert_eq!(
            indices(&log.try_get_log_entries(..).await.unwrap()),
            vec![3, 4, 5, 6, 7]
        );
        // What a crash can leave: an entry after a hole, and one below the purged index.
        db.put(&[&b"l/e/"[..], &9u64.to_be_bytes()].concat(), b"junk")
            .unwrap();
        db.put(&[&b"l/e/"[..], &1u64.to_be_bytes()].concat(), b"junk")
            .unwrap();
        drop((log, _sm));
        db.close().unwrap();
    }
    let (_db, mut log, _sm) = open(dir.path());
    let st = log.get_log_state().await.unwrap();
    assert_eq!(st.last_purged_log_id, Some(log_id(1, 1, 2)));
    assert_eq!(st.last_log_id, Some(log_id(1, 1, 7)));
    assert_eq!(log.read_vote().await.unwrap(), Some(Vote::new(2, 1)));
    assert_eq!(
        indices(&log.try_get_log_entries(0..100).await.unwrap()),
        vec![3, 4, 5, 6, 7]
    );
    assert_eq!(
        indices(&log.try_get_log_entries(4..=5).await.unwrap()),
        vec![4, 5]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_machine_snapshot_install_survives_reopen_and_drops_the_old_generation() {
    let dir = tempfile::tempdir().unwrap();
    let members = Membership::<u64, BasicNode>::new(vec![BTreeSet::from([1])], None);
    let snap = {
        let (db, _log, mut sm) = open(dir.path());
        sm.apply([
            put(1, 1, "a", "1"),
            put(1, 2, "b", "2"),
            Entry {
                log_id: log_id(1, 1, 3),
                payload: EntryPayload::Membership(members.clone()),
            },
            Entry {
                log_id: log_id(1, 1, 4),
                payload: EntryPayload::Normal(Request::Delete { key: b"a".to_vec() }),
            },
        ])
        .await
        .unwrap();
        let kv = sm.kv();
        assert_eq!(kv.get(b"a").unwrap(), None);
        assert_eq!(kv.get(b"b").unwrap().as_deref(), Some(&b"2"[..]));
        let snap = sm
            .get_snapshot_builder()
            .await
            .build_snapshot()
            .await
            .unwrap();
        assert_eq!(snap.meta.last_log_id, Some(log_id(1, 1, 4)));
        sm.apply([put(1, 5, "c", "3")]).await.unwrap();
        drop(sm);
        db.close().unwrap();
        snap
    };
    let (db, log, mut sm) = open(dir.path());
    assert_eq!(sm.applied_state().await.unwrap().0, Some(log_id(1, 1, 5)));
    // The snapshot file came back.
    let cur = sm.get_current_snapshot().await.unwrap().expect("snapshot");
    assert_eq!(cur.meta, snap.meta);
    // A bad image changes nothing.
    let bad = SnapshotMeta {
        last_log_id: Some(log_id(2, 1, 9)),
        ..snap.meta.clone()
    };
    assert!(sm
        .install_snapshot(&bad, Box::new(Cursor::new(b"garbage".to_vec())))
        .await
        .is_err());
    assert_eq!(sm.applied_state().await.unwrap().0, Some(log_id(1, 1, 5)));
    // Install the older snapshot: back to its state.
    sm.install_snapshot(&snap.meta, snap.snapshot)
        .await
        .unwrap();
    let kv = sm.kv();
    assert_eq!(kv.get(b"c").unwrap(), None);
    assert_eq!(kv.get(b"b").unwrap().as_deref(), Some(&b"2"[..]));
    assert_eq!(
        sm.applied_state().await.unwrap(),
        (
            Some(log_id(1, 1, 4)),
            StoredMembership::new(Some(log_id(1, 1, 3)), members)
        )
    );
    // Every handle goes (the image's lock goes with the last one).
    drop((sm, kv, log));
    db.close().unwrap();
    // Reopen: one generation of data left (the old one is deleted by then or by open).
    let db = open_db(dir.path());
    let (_l, sm) = blobcask_raft::open(db.clone(), Some(dir.path().join("snap"))).unwrap();
    let data: Vec<Vec<u8>> = db
        .keys()
        .unwrap()
        .into_iter()
        .filter(|k| k.starts_with(b"d/"))
        .collect();
    assert_eq!(data.len(), 1, "{data:?}");
    assert_eq!(sm.kv().get(b"b").unwrap().as_deref(), Some(&b"2"[..]));
}
