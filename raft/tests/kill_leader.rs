//! Three node processes on 127.0.0.1 under a write load: SIGKILL the leader, check that every
//! acknowledged write is on the new leader, restart the killed node and check that it catches
//! up with all of them. `BLOBCASK_RAFT_SOAK=SECONDS` repeats kill-and-restart rounds for that
//! long.

#![allow(clippy::unwrap_used)] // test helpers: a failed unwrap is a failed test

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use blobcask_raft::network::{ClientReply, Rpc, Status};
use blobcask_raft::node::Client;

struct Cluster {
    dir: PathBuf,
    addrs: BTreeMap<u64, String>,
    procs: BTreeMap<u64, Child>,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for c in self.procs.values_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Cluster {
    fn new(dir: &Path, n: u64) -> Cluster {
        let addrs = (1..=n)
            .map(|id| (id, format!("127.0.0.1:{}", free_port())))
            .collect();
        let mut c = Cluster {
            dir: dir.to_path_buf(),
            addrs,
            procs: BTreeMap::new(),
        };
        for id in 1..=n {
            c.start(id);
        }
        c
    }

    fn start(&mut self, id: u64) {
        let child = Command::new(env!("CARGO_BIN_EXE_blobcask-raft-node"))
            .args(["--id", &id.to_string(), "--addr", &self.addrs[&id]])
            .arg("--dir")
            .arg(self.dir.join(format!("n{id}")))
            .args(["--device-size", &(128u64 << 20).to_string()])
            // Small, so that snapshots are built and logs purged as the load runs, and a
            // restarted node is sent a snapshot (no entries are kept behind one).
            .args(["--snapshot-every", "300", "--keep-logs", "0"])
            .stdout(Stdio::null())
            .spawn()
            .expect("start node");
        self.procs.insert(id, child);
    }

    /// SIGKILL (what `Child::kill` sends on Unix).
    fn kill(&mut self, id: u64) {
        let mut c = self.procs.remove(&id).expect("running");
        c.kill().unwrap();
        c.wait().unwrap();
    }

    fn client(&self) -> Client {
        let mut c = Client::new(self.addrs.clone());
        c.timeout = Duration::from_secs(20);
        c
    }
}

async fn status(c: &mut Client, id: u64) -> Option<Status> {
    match c.call_node(id, &Rpc::Status).await {
        Ok(ClientReply::Status(s)) => Some(s),
        _ => None,
    }
}

/// Fails once `end` has passed, naming `what`; else sleeps a little.
async fn tick(end: Instant, what: &str) {
    assert!(Instant::now() < end, "timed out waiting for {what}");
    tokio::time::sleep(Duration::from_millis(50)).await;
}

fn deadline(secs: u64) -> Instant {
    Instant::now() + Duration::from_secs(secs)
}

/// The leader as `among` see it.
async fn leader(cl: &Cluster, among: &[u64]) -> u64 {
    let mut c = cl.client();
    let end = deadline(20);
    loop {
        for &id in among {
            if let Some(Status {
                leader: Some(l), ..
            }) = status(&mut c, id).await
            {
                if among.contains(&l) {
                    return l;
                }
            }
        }
        tick(end, "a leader").await;
    }
}

type Oracle = Arc<Mutex<HashMap<Vec<u8>, Vec<u8>>>>;

/// Writers that put until `stop`; every acknowledged put goes into the oracle.
fn writers(
    cl: &Cluster,
    n: usize,
    round: usize,
    stop: Arc<AtomicBool>,
    oracle: Oracle,
) -> Vec<tokio::task::JoinHandle<()>> {
    (0..n)
        .map(|w| {
            let mut c = cl.client();
            let stop = stop.clone();
            let oracle = oracle.clone();
            tokio::spawn(async move {
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    // Overwrite a few keys too, so the oracle checks the last value.
                    let key = format!("r{round}w{w}k{}", i % 500).into_bytes();
                    let value = format!("v{i}").into_bytes();
                    if c.put(&key, &value).await.is_ok() {
                        oracle.lock().unwrap().insert(key, value);
                    }
                    i += 1;
                }
            })
        })
        .collect()
}

/// Every acknowledged write on node `id`: through the leader (linearizable) or from the
/// node's applied state.
async fn check(cl: &Cluster, id: u64, oracle: &Oracle, linearizable: bool) {
    let mut c = cl.client();
    let want: Vec<(Vec<u8>, Vec<u8>)> = oracle.lock().unwrap().clone().into_iter().collect();
    for (k, v) in want {
        let r = c
            .call_node(
                id,
                &Rpc::Read {
                    key: k.clone(),
                    linearizable,
                },
            )
            .await
            .expect("read");
        match r {
            ClientReply::Value(Some(got)) => assert_eq!(
                got,
                v,
                "node {id}: {} holds {} instead of the acknowledged {}",
                String::from_utf8_lossy(&k),
                String::from_utf8_lossy(&got),
                String::from_utf8_lossy(&v)
            ),
            other => panic!(
                "node {id}: {} lost ({other:?})",
                String::from_utf8_lossy(&k)
            ),
        }
    }
}

async fn round(cl: &mut Cluster, round: usize, oracle: &Oracle) {
    let all: Vec<u64> = cl.addrs.keys().copied().collect();
    let old = leader(cl, &all).await;
    let stop = Arc::new(AtomicBool::new(false));
    let ws = writers(cl, 4, round, stop.clone(), oracle.clone());
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let mut c = cl.client();
    let old_last = status(&mut c, old)
        .await
        .and_then(|s| s.last_log_index)
        .unwrap();
    cl.kill(old);
    let rest: Vec<u64> = all.iter().copied().filter(|&i| i != old).collect();
    // The load goes on against the survivors.
    tokio::time::sleep(Duration::from_millis(2000)).await;
    stop.store(true, Ordering::Relaxed);
    for w in ws {
        w.await.unwrap();
    }
    let acked = oracle.lock().unwrap().len();
    assert!(acked > 100, "only {acked} writes acknowledged");
    let new = leader(cl, &rest).await;
    assert_ne!(new, old);
    check(cl, new, oracle, true).await;

    // The killed node restarts and catches up: from a snapshot, since the new leader purged
    // its log past the killed node's last entry.
    // (Purges follow snapshots, every 300 entries: write more until the leader purged.)
    let end = deadline(30);
    let mut i = 0u64;
    let st = loop {
        let st = status(&mut c, new).await.unwrap();
        if st.last_purged.is_some_and(|p| p > old_last) {
            break st;
        }
        assert!(Instant::now() < end, "the leader kept its log: {st:?}");
        for _ in 0..50 {
            let (k, v) = (
                format!("r{round}fill{}", i % 100).into_bytes(),
                format!("f{i}").into_bytes(),
            );
            c.put(&k, &v).await.unwrap();
            oracle.lock().unwrap().insert(k, v);
            i += 1;
        }
    };
    cl.start(old);
    let target = st.last_applied.unwrap();
    let end = deadline(30);
    while status(&mut c, old)
        .await
        .and_then(|s| s.last_applied)
        .is_none_or(|a| a < target)
    {
        tick(end, "the restarted node to catch up").await;
    }
    check(cl, old, oracle, false).await;
    eprintln!(
        "round {round}: killed leader {old}, new leader {new}, {acked} acknowledged keys checked \
         on both; node {old} caught up to index {target}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_the_leader_under_load() {
    let dir = tempfile::tempdir().unwrap();
    let mut cl = Cluster::new(dir.path(), 3);
    let mut c = cl.client();
    let end = deadline(20);
    for id in 1..=3 {
        while status(&mut c, id).await.is_none() {
            tick(end, "the nodes to listen").await;
        }
    }
    let r = c
        .call_node(
            1,
            &Rpc::Init {
                members: cl.addrs.clone(),
            },
        )
        .await
        .unwrap();
    assert!(matches!(r, ClientReply::Done), "{r:?}");

    let oracle: Oracle = Arc::default();
    round(&mut cl, 0, &oracle).await;
    let soak: u64 = std::env::var("BLOBCASK_RAFT_SOAK")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let end = Instant::now() + Duration::from_secs(soak);
    let mut n = 1;
    while Instant::now() < end {
        round(&mut cl, n, &oracle).await;
        n += 1;
    }
}
