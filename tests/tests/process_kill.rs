//! Real process kill: a child process (this test binary re-executed with `BLOBCASK_KILL_CHILD`)
//! writes with `SyncPolicy::Always` to an image file on the file device (io_uring, or its
//! pread fallback), printing `ack <i>` after each acknowledged put. The parent SIGKILLs it at a
//! random moment, reopens the image in-process and checks the oracle: every acknowledged put
//! is there with exactly its value; the one in flight may or may not be.

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use blobcask::{Db, DeviceSpec, Options, SyncPolicy};
use blobcask_tests::oracle::{self, Op, Oracle};
use blobcask_tests::seed;
use rand::Rng;

const CHILD_ENV: &str = "BLOBCASK_KILL_CHILD";
const KEYS: usize = 40;
const SHARDS: usize = 2;

fn key(i: u64) -> Vec<u8> {
    format!("key{:03}", i % KEYS as u64).into_bytes()
}

fn value(round: u64, i: u64) -> Vec<u8> {
    let mut v = format!("r{round}-i{i}|").into_bytes();
    let len = (seed::mix(round, i) % 3000) as usize;
    v.resize(v.len() + len, b'a' + (i % 26) as u8);
    v
}

fn options(path: &std::path::Path) -> Options {
    Options {
        device: DeviceSpec::Path(path.to_path_buf()),
        create: true,
        device_size: 16 << 20,
        cluster_size: 64 << 10,
        shards: SHARDS,
        max_blob_size: 256 << 10,
        max_value_size: 64 << 10,
        sync: SyncPolicy::Always,
        cache_bytes: 0,
        ..Options::default()
    }
}

/// The child: runs only when re-executed by the parent.
#[test]
fn process_kill_child() {
    let Ok(spec) = std::env::var(CHILD_ENV) else {
        return;
    };
    let (path, round) = spec.split_once('|').expect("path|round");
    let round: u64 = round.parse().unwrap();
    let db = Db::open(options(std::path::Path::new(path))).expect("child open");
    let out = std::io::stdout();
    for i in 0.. {
        db.put(&key(i), &value(round, i)).expect("child put");
        let mut o = out.lock();
        writeln!(o, "ack {i}").unwrap();
        o.flush().unwrap();
    }
}

#[test]
fn sigkill_while_writing() {
    if std::env::var(CHILD_ENV).is_ok() {
        return;
    }
    let t0 = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.img");
    let universe: Vec<Vec<u8>> = (0..KEYS as u64).map(key).collect();
    let mut oracle = Oracle::new(SHARDS);
    let s = seed::forced_seed().unwrap_or(0x6b11);
    let mut rng = seed::rng(s);
    let rounds = 6 * seed::scale();
    let exe = std::env::current_exe().unwrap();
    let mut total_acks = 0;
    let mut max_lock_wait = Duration::ZERO;
    // Format first, so that even a child killed before its first put leaves a store.
    Db::open(options(&path)).unwrap().close().unwrap();
    for round in 0..rounds {
        let mut child = Command::new(&exe)
            .args([
                "--exact",
                "process_kill_child",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_ENV, format!("{}|{round}", path.display()))
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let reader = std::thread::spawn(move || {
            let mut acks = Vec::new();
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                // libtest may print its "test ... " prefix on the same line as the first ack.
                if let Some(p) = line.rfind("ack ") {
                    if let Ok(n) = line[p + 4..].trim().parse::<u64>() {
                        acks.push(n);
                    }
                }
            }
            acks
        });
        // Let it open (first round also formats) and write for a random while.
        std::thread::sleep(Duration::from_millis(rng.gen_range(150..600)));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        let acks = reader.join().unwrap();
        for (j, &i) in acks.iter().enumerate() {
            assert_eq!(i, j as u64, "acks out of order");
            oracle.acked(&[Op::Put(key(i), value(round, i))], true);
        }
        let next = acks.len() as u64;
        oracle.failed(&[Op::Put(key(next), value(round, next))]);
        total_acks += acks.len();
        // The killed process's io_uring ring is torn down by the kernel asynchronously and
        // holds the file (and its flock) until then: retry `Locked` for a while.
        let t_kill = Instant::now();
        let db = loop {
            let mut o = options(&path);
            o.create = false;
            match Db::open(o) {
                Ok(db) => break db,
                Err(blobcask::Error::Locked(_)) if t_kill.elapsed() < Duration::from_secs(10) => {
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => panic!("seed {s:#x} round {round}: reopen after SIGKILL failed: {e}"),
            }
        };
        max_lock_wait = max_lock_wait.max(t_kill.elapsed());
        let st = oracle::read_all(&db, &universe).unwrap();
        oracle.verify(&st).unwrap_or_else(|e| {
            panic!(
                "seed {s:#x} round {round} ({} acks): {e}\n  replay: SEED={s:#x} cargo test \
                 -p blobcask-tests --test process_kill",
                acks.len()
            )
        });
        db.close().unwrap();
    }
    eprintln!(
        "sigkill_while_writing: {rounds} kills, {total_acks} acknowledged puts in {:.1?} \
         (longest wait for the killed child's lock: {max_lock_wait:?})",
        t0.elapsed()
    );
}

/// A closed store releases its image file: the same process can open it again at once.
#[test]
fn close_releases_the_image_lock() {
    if std::env::var(CHILD_ENV).is_ok() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.img");
    let db = Db::open(options(&path)).unwrap();
    db.put(b"k", b"v").unwrap();
    db.close().unwrap();
    let mut o = options(&path);
    o.create = false;
    let db = Db::open(o).expect("reopen right after close");
    assert_eq!(db.get(b"k").unwrap().as_deref(), Some(&b"v"[..]));
    db.close().unwrap();
}
