//! `blobcask checkpoint create|list|delete|dump`, driven as a user would.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

mod common;
use common::*;

#[test]
fn checkpoint_create_list_dump_delete() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("store.img");
    let db = img.to_str().unwrap();
    ok(&[
        "format",
        db,
        "--size",
        "32M",
        "--cluster-size",
        "64K",
        "--shards",
        "2",
    ]);
    ok(&["put", db, "a", "1"]);
    ok(&["put", db, "b", "2"]);
    let out = ok(&["checkpoint", "create", db, "c1"]);
    assert!(out.contains("created checkpoint \"c1\""), "{out}");
    ok(&["put", db, "a", "9"]);
    ok(&["delete", db, "b"]);

    let list = ok(&["checkpoint", "list", db]);
    let fields: Vec<&str> = list.trim_end().split('\t').collect();
    assert_eq!(fields.len(), 3, "{list}");
    assert_eq!(fields[0], "c1");

    let mut frozen: Vec<String> = ok(&["checkpoint", "dump", db, "c1"])
        .lines()
        .map(String::from)
        .collect();
    frozen.sort();
    assert_eq!(frozen, ["a\t1", "b\t2"]);
    assert_eq!(ok(&["dump", db]), "a\t9\n");
    let check = ok(&["check", db]);
    assert!(check.contains("clean"), "{check}");

    let dup = run(&["checkpoint", "create", db, "c1"]);
    assert!(!dup.status.success());
    assert!(String::from_utf8_lossy(&dup.stderr).contains("exists"));

    ok(&["checkpoint", "delete", db, "c1"]);
    assert_eq!(ok(&["checkpoint", "list", db]), "");
    let gone = run(&["checkpoint", "dump", db, "c1"]);
    assert!(!gone.status.success());
    assert!(String::from_utf8_lossy(&gone.stderr).contains("no checkpoint named"));
    assert_eq!(ok(&["dump", db]), "a\t9\n");
}
