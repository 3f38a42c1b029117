//! The `blobcask` binary on space and `format`: many short-lived writers on a small store, and
//! `format`'s refusals (an existing store without `--force`, a geometry that cannot work).

use std::path::Path;
use std::process::{Command, Output};

fn run(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_blobcask"))
        .args(args)
        .output()
        .expect("run blobcask")
}

fn ok(args: &[&str]) -> String {
    let o = run(args);
    assert!(
        o.status.success(),
        "blobcask {args:?} failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Exit code 2 with an error naming `word`.
fn refused(args: &[&str], word: &str) {
    let o = run(args);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "blobcask {args:?}: {err}");
    assert!(err.contains(word), "blobcask {args:?}: {err}");
}

fn sha(p: &Path) -> Vec<u8> {
    use sha2::Digest;
    sha2::Sha256::digest(std::fs::read(p).unwrap()).to_vec()
}

/// Each process that writes continues its shard's active blob instead of leaving a new blob
/// of at least one cluster behind: 1,000 `put` processes fit a 32 MiB store of 1 MiB clusters.
#[test]
fn a_thousand_put_processes_fit_a_32_mib_store() {
    let n: usize = std::env::var("BLOBCASK_CLI_PUTS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1000);
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("store.img");
    let db = img.to_str().unwrap();
    ok(&["format", db, "--size", "32M", "--shards", "2"]);
    for i in 0..n {
        let o = run(&["put", db, &format!("key{i}"), &format!("value{i}")]);
        assert!(
            o.status.success(),
            "put {i} of {n} failed: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
    let dump = ok(&["dump", db]);
    let mut lines: Vec<&str> = dump.lines().collect();
    lines.sort_unstable();
    let mut want: Vec<String> = (0..n).map(|i| format!("key{i}\tvalue{i}")).collect();
    want.sort_unstable();
    assert_eq!(lines, want);
    assert_eq!(ok(&["get", db, "key7"]), "value7\n");
    let stats = ok(&["stats", db, "--json"]);
    let v: serde_json::Value = serde_json::from_str(&stats).unwrap();
    let blobs = v["blobs"].as_array().map_or(0, Vec::len);
    assert!(blobs <= 4, "{n} writers left {blobs} data blobs: {stats}");
}

#[test]
fn format_refuses_an_existing_store_unless_forced_and_force_reformats() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("store.img");
    let db = img.to_str().unwrap();
    ok(&["format", db, "--size", "32M", "--shards", "2"]);
    ok(&["put", db, "k", "v"]);
    let before = sha(&img);
    refused(&["format", db, "--size", "64M", "--shards", "1"], "--force");
    assert_eq!(sha(&img), before, "a refused format changed the store");
    assert_eq!(ok(&["get", db, "k"]), "v\n");

    // --force: new size, shards and cluster size, and no old data.
    let out = ok(&[
        "format",
        db,
        "--size",
        "64M",
        "--shards",
        "3",
        "--cluster-size",
        "64K",
        "--force",
    ]);
    assert!(out.contains("3 shards"), "{out}");
    assert_eq!(std::fs::metadata(&img).unwrap().len(), 64 << 20);
    assert_eq!(run(&["get", db, "k"]).status.code(), Some(1));
    let stats = ok(&["stats", db]);
    assert!(
        stats
            .lines()
            .any(|l| l.split_whitespace().eq(["shards", "3"])),
        "{stats}"
    );
    ok(&["put", db, "k2", "v2"]);
    assert_eq!(ok(&["get", db, "k2"]), "v2\n");
}

#[test]
fn format_refuses_a_geometry_that_cannot_work_and_leaves_no_file() {
    let dir = tempfile::tempdir().unwrap();
    for (size, shards, cluster) in [("3M", "1", "1M"), ("7M", "2", "1M"), ("16M", "8", "1M")] {
        let img = dir.path().join(format!("s{size}-{shards}.img"));
        let p = img.to_str().unwrap();
        refused(
            &[
                "format",
                p,
                "--size",
                size,
                "--shards",
                shards,
                "--cluster-size",
                cluster,
            ],
            "at least",
        );
        assert!(
            !img.exists(),
            "a failed format left {} behind",
            img.display()
        );
    }
    // The minimum it names works: put, get and reopen.
    let img = dir.path().join("min.img");
    let p = img.to_str().unwrap();
    let o = run(&[
        "format",
        p,
        "--size",
        "4M",
        "--shards",
        "8",
        "--cluster-size",
        "64K",
    ]);
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    let min = err
        .split('(')
        .nth(1)
        .and_then(|s| s.split(')').next())
        .unwrap_or_else(|| panic!("no minimum named: {err}"))
        .replace(" MiB", "M")
        .replace(" KiB", "K");
    ok(&[
        "format",
        p,
        "--size",
        &min,
        "--shards",
        "8",
        "--cluster-size",
        "64K",
    ]);
    for i in 0..40 {
        ok(&["put", p, &format!("k{i}"), "v"]);
    }
    assert_eq!(ok(&["keys", p]).lines().count(), 40);
    // A default shard count shrinks to what the device holds.
    let img = dir.path().join("small.img");
    let out = ok(&["format", img.to_str().unwrap(), "--size", "12M"]);
    assert!(out.contains("formatted"), "{out}");
}
