//! blobcask-raft benchmark: log append latency and throughput (with and without a flush per
//! append), snapshot build and install, and the client write throughput of a 3-node cluster on
//! 127.0.0.1 (in one process). Run (release):
//!
//! ```text
//! cargo bench -p blobcask-raft --bench raft -- [--appends N] [--keys N] [--secs S]
//!                                             [--clients N] [--dir DIR]
//! ```
//!
//! Stores are image files under `--dir` (default: the system's temporary directory), so a
//! flush is a real `fdatasync` of the file.

#![allow(clippy::unwrap_used)] // a benchmark: a failed unwrap is a failed run

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use blobcask::{Db, DeviceSpec, SyncPolicy};
use blobcask_raft::network::{ClientReply, Rpc};
use blobcask_raft::node::{start, Client, NodeOptions};
use blobcask_raft::{LogStore, Request, StateMachine, TypeConfig};
use openraft::storage::{RaftLogStorageExt, RaftStateMachine};
use openraft::testing::log_id;
use openraft::{Entry, EntryPayload, RaftSnapshotBuilder};

struct Args {
    appends: u64,
    keys: u64,
    secs: u64,
    clients: usize,
    dir: PathBuf,
}

fn args() -> Args {
    let mut a = Args {
        appends: 5000,
        keys: 1_000_000,
        secs: 10,
        clients: 32,
        dir: std::env::temp_dir(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let mut v = || it.next().unwrap_or_default();
        match k.as_str() {
            "--appends" => a.appends = v().parse().expect("--appends N"),
            "--keys" => a.keys = v().parse().expect("--keys N"),
            "--secs" => a.secs = v().parse().expect("--secs S"),
            "--clients" => a.clients = v().parse().expect("--clients N"),
            "--dir" => a.dir = PathBuf::from(v()),
            "--bench" => {}
            other => panic!("unknown argument {other}"),
        }
    }
    a
}

fn open(dir: &Path, sync: SyncPolicy, size: u64) -> (Db, LogStore, StateMachine) {
    std::fs::create_dir_all(dir).unwrap();
    let mut o = blobcask_raft::store_options(DeviceSpec::Path(dir.join("store.img")));
    o.device_size = size;
    o.sync = sync;
    let db = Db::open(o).unwrap();
    let (l, s) = blobcask_raft::open(db.clone(), Some(dir.join("snap"))).unwrap();
    (db, l, s)
}

fn entry(i: u64, key: &[u8], value: &[u8]) -> Entry<TypeConfig> {
    Entry {
        log_id: log_id(1, 1, i),
        payload: EntryPayload::Normal(Request::Put {
            key: key.to_vec(),
            value: value.to_vec(),
        }),
    }
}

fn pct(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1e6
}

/// Appends of `per` entries of 100 bytes, one at a time, each waiting for its callback.
async fn appends(root: &Path, sync: SyncPolicy, n: u64, per: u64) -> String {
    let dir = root.join("append");
    let _ = std::fs::remove_dir_all(&dir);
    let (db, mut log, _sm) = open(&dir, sync, 1 << 30);
    let value = vec![7u8; 100];
    let mut lat = Vec::with_capacity(n as usize);
    let t0 = Instant::now();
    let mut idx = 1;
    for _ in 0..n {
        let es: Vec<_> = (0..per)
            .map(|j| entry(idx + j, format!("key{:012}", idx + j).as_bytes(), &value))
            .collect();
        idx += per;
        let t = Instant::now();
        log.blocking_append(es).await.unwrap();
        lat.push(t.elapsed());
    }
    let el = t0.elapsed();
    lat.sort();
    drop((log, _sm));
    db.close().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    format!(
        "{:.0} appends/s, {:.0} entries/s, p50 {:.0} us, p99 {:.0} us",
        n as f64 / el.as_secs_f64(),
        (n * per) as f64 / el.as_secs_f64(),
        pct(&lat, 0.5),
        pct(&lat, 0.99)
    )
}

/// Apply `keys` puts, then time a snapshot build and its install on a fresh store.
async fn snapshots(root: &Path, keys: u64) -> (String, String) {
    let a = root.join("snap-a");
    let b = root.join("snap-b");
    let _ = std::fs::remove_dir_all(&a);
    let _ = std::fs::remove_dir_all(&b);
    let size = ((keys * 400) >> 20 << 20).max(256 << 20);
    let (db_a, _la, mut sm_a) = open(&a, SyncPolicy::Never, size);
    let value = vec![7u8; 100];
    let mut i = 1;
    while i <= keys {
        let hi = (i + 10_000).min(keys + 1);
        let es: Vec<_> = (i..hi)
            .map(|j| entry(j, format!("key{j:012}").as_bytes(), &value))
            .collect();
        sm_a.apply(es).await.unwrap();
        i = hi;
    }
    db_a.sync().unwrap();
    let t = Instant::now();
    let snap = sm_a
        .get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .unwrap();
    let build = t.elapsed();
    let bytes = snap.snapshot.get_ref().len();
    let (db_b, _lb, mut sm_b) = open(&b, blobcask::Options::default().sync, size);
    let t = Instant::now();
    sm_b.install_snapshot(&snap.meta, snap.snapshot)
        .await
        .unwrap();
    let install = t.elapsed();
    assert_eq!(
        sm_b.kv()
            .get(format!("key{:012}", keys).as_bytes())
            .unwrap(),
        Some(value)
    );
    drop((_la, sm_a, _lb, sm_b));
    db_a.close().unwrap();
    db_b.close().unwrap();
    let _ = std::fs::remove_dir_all(&a);
    let _ = std::fs::remove_dir_all(&b);
    (
        format!(
            "{:.2} s ({:.0} k keys/s, {} MB image)",
            build.as_secs_f64(),
            keys as f64 / build.as_secs_f64() / 1e3,
            bytes >> 20
        ),
        format!(
            "{:.2} s ({:.0} k keys/s)",
            install.as_secs_f64(),
            keys as f64 / install.as_secs_f64() / 1e3
        ),
    )
}

/// A 3-node cluster in this process; `clients` writers for `secs` seconds.
async fn cluster(root: &Path, secs: u64, clients: usize) -> String {
    let mut addrs = BTreeMap::new();
    for id in 1..=3u64 {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        addrs.insert(id, format!("127.0.0.1:{}", l.local_addr().unwrap().port()));
    }
    let mut nodes = Vec::new();
    for (&id, addr) in &addrs {
        let dir = root.join(format!("cluster-n{id}"));
        let _ = std::fs::remove_dir_all(&dir);
        let mut o = NodeOptions::new(id, addr.clone(), dir);
        o.device_size = 2 << 30;
        nodes.push(start(o).await.unwrap());
    }
    let mut c = Client::new(addrs.clone());
    let r = c
        .call_node(
            1,
            &Rpc::Init {
                members: addrs.clone(),
            },
        )
        .await
        .unwrap();
    assert!(matches!(r, ClientReply::Done), "{r:?}");
    c.put(b"warm", b"up").await.unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let value = vec![7u8; 100];
    let t = Instant::now();
    let tasks: Vec<_> = (0..clients)
        .map(|w| {
            let mut c = Client::new(addrs.clone());
            let (stop, done, value) = (stop.clone(), done.clone(), value.clone());
            tokio::spawn(async move {
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    c.put(format!("w{w}k{i}").as_bytes(), &value).await.unwrap();
                    done.fetch_add(1, Ordering::Relaxed);
                    i += 1;
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(secs)).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    let n = done.load(Ordering::Relaxed);
    let el = t.elapsed();
    for n in &nodes {
        let _ = n.raft.shutdown().await;
    }
    drop(nodes);
    for id in 1..=3 {
        let _ = std::fs::remove_dir_all(root.join(format!("cluster-n{id}")));
    }
    format!(
        "{:.0} writes/s ({clients} clients, {n} writes)",
        n as f64 / el.as_secs_f64()
    )
}

fn main() {
    let a = args();
    let root = a
        .dir
        .join(format!("blobcask-raft-bench-{}", std::process::id()));
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let gc = blobcask::Options::default().sync;
        println!("| measurement | blobcask |");
        println!("|---|---|");
        let r = appends(&root, gc, a.appends, 1).await;
        println!("| append 1 entry, flushed (group commit) | {r} |");
        let r = appends(&root, SyncPolicy::Never, a.appends, 1).await;
        println!("| append 1 entry, no flush (`SyncPolicy::Never`) | {r} |");
        let r = appends(&root, gc, a.appends / 10, 64).await;
        println!("| append 64 entries, flushed | {r} |");
        let r = cluster(&root, a.secs, a.clients).await;
        println!("| 3-node cluster, client puts of 100 B | {r} |");
        let (b, i) = snapshots(&root, a.keys).await;
        println!("| snapshot build, {} keys | {b} |", a.keys);
        println!("| snapshot install, {} keys | {i} |", a.keys);
    });
    let _ = std::fs::remove_dir_all(&root);
}
