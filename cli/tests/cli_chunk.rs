//! `blobcask chunk create|write|read|rm|ls|stat` and the chunk part of `check`, driven as a
//! user would.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

mod common;
use common::*;

#[test]
fn chunk_create_write_read_stat_ls_rm_check() {
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
    ok(&["put", db, "k", "v"]);
    let id = ok(&["chunk", "create", db, "--hint", "1M"])
        .trim()
        .to_string();
    assert_eq!(id, "1");
    let body: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
    ok_in(&["chunk", "write", db, &id], &body);
    ok_in(&["chunk", "write", db, &id, "--offset", "9000"], b"HELLO");
    let mut want = body.clone();
    want[9000..9005].copy_from_slice(b"HELLO");
    assert_eq!(ok_in(&["chunk", "read", db, &id], b""), want);
    assert_eq!(
        ok_in(
            &["chunk", "read", db, &id, "--offset", "8998", "--len", "9"],
            b""
        ),
        &want[8998..9007]
    );
    let file = dir.path().join("data.bin");
    std::fs::write(&file, b"from a file").unwrap();
    ok(&[
        "chunk",
        "write",
        db,
        &id,
        "--offset",
        "20000",
        "--file",
        file.to_str().unwrap(),
    ]);
    let stat = ok(&["chunk", "stat", db, &id]);
    assert_eq!(stat, "id\t1\nsize\t20011\nhint\t1048576\npages\t4\n");
    let id2 = ok(&["chunk", "create", db]).trim().to_string();
    assert_eq!(
        ok(&["chunk", "ls", db]),
        format!("1\t20011\t4\n{id2}\t0\t0\n")
    );

    let check = ok(&["check", db]);
    assert!(check.contains("2 chunks in"), "{check}");
    assert!(check.contains("clean"), "{check}");
    // The KV still holds the user's key, and only it.
    assert_eq!(ok(&["get", db, "k"]), "v\n");

    ok(&["chunk", "rm", db, &id]);
    assert_eq!(ok(&["chunk", "ls", db]), format!("{id2}\t0\t0\n"));
    for args in [
        vec!["chunk", "read", db, &id],
        vec!["chunk", "stat", db, &id],
        vec!["chunk", "rm", db, &id],
    ] {
        let o = run_in(&args, b"");
        assert_eq!(o.status.code(), Some(1), "{args:?}");
        assert!(String::from_utf8_lossy(&o.stderr).contains("NOT_FOUND"));
    }
    let o = run_in(&["chunk", "write", db, "77"], b"x");
    assert_eq!(o.status.code(), Some(1));
    assert!(ok(&["check", db]).contains("clean"));

    // A repair rebuilds the key-value data and says that chunks are left out.
    let rebuilt = dir.path().join("rebuilt.img");
    let said = ok(&["repair", db, "--output", rebuilt.to_str().unwrap()]);
    assert!(said.contains("chunk metadata keys left out"), "{said}");
    assert_eq!(ok(&["keys", rebuilt.to_str().unwrap()]), "k\n");
    assert_eq!(ok(&["chunk", "ls", rebuilt.to_str().unwrap()]), "");
}

/// `chunk read|ls|stat --checkpoint NAME` read the chunks as the checkpoint froze them.
#[test]
fn chunk_commands_read_a_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let db = fresh_store(dir.path(), "32M");
    let db = db.as_str();
    let id = ok(&["chunk", "create", db]).trim().to_string();
    ok_in(&["chunk", "write", db, &id], &[b'a'; 20_000]);
    ok(&["checkpoint", "create", db, "c1"]);
    ok_in(
        &["chunk", "write", db, &id, "--offset", "10000"],
        &[b'b'; 20_000],
    );
    let other = ok(&["chunk", "create", db]).trim().to_string();
    let frozen = ok_in(&["chunk", "read", db, &id, "--checkpoint", "c1"], b"");
    assert_eq!(frozen, vec![b'a'; 20_000]);
    let live = ok_in(&["chunk", "read", db, &id], b"");
    assert_eq!(live.len(), 30_000);
    assert_eq!(&live[10_000..], &[b'b'; 20_000][..]);
    assert_eq!(
        ok(&["chunk", "ls", db, "--checkpoint", "c1"]),
        format!("{id}\t20000\t5\n")
    );
    let o = run_in(&["chunk", "stat", db, &other, "--checkpoint", "c1"], b"");
    assert_eq!(o.status.code(), Some(1), "{}", err(&o));
    refused(&["chunk", "ls", db, "--checkpoint", "nope"], "nope");
}

/// A flipped byte in a chunk page: `chunk read` refuses it (exit 2) and `check` names it
/// (exit 1); neither changes the image.
#[test]
fn a_damaged_chunk_page_is_refused_by_read_and_named_by_check() {
    let dir = tempfile::tempdir().unwrap();
    let db = fresh_store(dir.path(), "32M");
    let id = ok(&["chunk", "create", &db]).trim().to_string();
    let body = b"0123456789abcdef".repeat(1024);
    ok_in(&["chunk", "write", &db, &id], &body);
    let mut img = std::fs::read(&db).unwrap();
    let at = img
        .windows(body.len())
        .position(|w| w == body.as_slice())
        .expect("the chunk's bytes are on the image");
    img[at + 5000] ^= 0x10;
    std::fs::write(&db, &img).unwrap();
    let before = sha(&db);
    let o = run_in(&["chunk", "read", &db, &id], b"");
    assert_eq!(o.status.code(), Some(2), "{}", err(&o));
    assert!(err(&o).contains("crc32c"), "{}", err(&o));
    assert!(o.stdout.is_empty());
    let o = run(&["check", &db]);
    assert_eq!(o.status.code(), Some(1));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains(&format!("PROBLEM: chunk {id} page 1 (")) && out.contains("fails its crc32c"),
        "{out}"
    );
    assert_eq!(sha(&db), before, "read and check changed the image");
}
