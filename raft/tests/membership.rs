//! Membership changes through the client, with three nodes in this process: a learner joins
//! and catches up, becomes a voter, and a voter leaves; reads and writes go on throughout.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use blobcask_raft::network::{ClientReply, Rpc};
use blobcask_raft::node::{start, Client, NodeOptions};

fn free_addr() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    format!("127.0.0.1:{}", l.local_addr().expect("address").port())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn learner_joins_becomes_voter_and_a_voter_leaves() {
    let dir = tempfile::tempdir().unwrap();
    let addrs: BTreeMap<u64, String> = (1..=3).map(|id| (id, free_addr())).collect();
    let mut nodes = Vec::new();
    for (&id, addr) in &addrs {
        let mut o = NodeOptions::new(id, addr.clone(), dir.path().join(format!("n{id}")));
        o.device_size = 64 << 20;
        nodes.push(start(o).await.unwrap());
    }
    let mut c = Client::new(addrs.clone());
    let two: BTreeMap<u64, String> = addrs.iter().take(2).map(|(k, v)| (*k, v.clone())).collect();
    let r = c.call_node(1, &Rpc::Init { members: two }).await.unwrap();
    assert!(matches!(r, ClientReply::Done), "{r:?}");
    for i in 0..20 {
        c.put(format!("k{i}").as_bytes(), b"before").await.unwrap();
    }

    // Node 3 joins as a learner: add_learner returns once it caught up.
    let r = c
        .call(&Rpc::AddLearner {
            id: 3,
            addr: addrs[&3].clone(),
        })
        .await
        .unwrap();
    assert!(matches!(r, ClientReply::Done), "{r:?}");
    // (Its log has caught up; it applies once it hears the commit index.)
    let end = Instant::now() + Duration::from_secs(10);
    while nodes[2].kv.get(b"k19").unwrap().is_none() {
        assert!(Instant::now() < end, "the learner did not apply");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        nodes[2].kv.get(b"k19").unwrap().as_deref(),
        Some(&b"before"[..])
    );

    let r = c
        .call(&Rpc::ChangeMembership {
            voters: BTreeSet::from([1, 2, 3]),
        })
        .await
        .unwrap();
    assert!(matches!(r, ClientReply::Done), "{r:?}");
    let r = c
        .call(&Rpc::ChangeMembership {
            voters: BTreeSet::from([2, 3]),
        })
        .await
        .unwrap();
    assert!(matches!(r, ClientReply::Done), "{r:?}");
    c.put(b"after", b"yes").await.unwrap();
    c.delete(b"k0").await.unwrap();
    assert_eq!(c.get(b"after").await.unwrap().as_deref(), Some(&b"yes"[..]));
    assert_eq!(c.get(b"k0").await.unwrap(), None);

    // Every remaining voter applies it.
    let end = Instant::now() + Duration::from_secs(10);
    for n in &nodes[1..] {
        while n.kv.get(b"after").unwrap().is_none() {
            assert!(Instant::now() < end, "node {} did not apply", n.id);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(n.status().voters, BTreeSet::from([2, 3]));
    }
    for n in &nodes {
        n.raft.shutdown().await.unwrap();
    }
}
