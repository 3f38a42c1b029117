//! The `blobcask` binary, driven as a user would: every subcommand, exit codes and messages.

// Test code (its helpers are not `#[test]` functions): a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::process::Stdio;

mod common;
use common::*;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures/spdk")
        .join(name)
}

#[test]
fn put_get_delete_keys_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let db = fresh_store(dir.path(), "32M");
    assert_eq!(ok(&["put", &db, "alpha", "one"]), "OK\n");
    assert_eq!(ok(&["put", &db, "beta", "two"]), "OK\n");
    assert_eq!(ok(&["get", &db, "alpha"]), "one\n");
    let missing = run(&["get", &db, "gamma"]);
    assert_eq!(missing.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("NOT_FOUND"));
    assert_eq!(ok(&["keys", &db]), "alpha\nbeta\n");
    assert_eq!(ok(&["keys", &db, "--prefix", "b"]), "beta\n");
    assert_eq!(ok(&["delete", &db, "alpha"]), "OK\n");
    let gone = run(&["delete", &db, "alpha"]);
    assert_eq!(
        gone.status.code(),
        Some(1),
        "delete of a missing key is not found, as get"
    );
    assert_eq!(String::from_utf8_lossy(&gone.stderr), "NOT_FOUND\n");
    assert!(gone.stdout.is_empty());
    assert_eq!(run(&["get", &db, "alpha"]).status.code(), Some(1));
}

#[test]
fn load_and_dump_preserve_binary_records() {
    let dir = tempfile::tempdir().unwrap();
    let db = fresh_store(dir.path(), "32M");
    let tsv = dir.path().join("in.tsv");
    let mut lines = String::new();
    for i in 0..300 {
        lines.push_str(&format!("k{i:04}\tv\\x00\\t{i}\n"));
    }
    std::fs::write(&tsv, &lines).unwrap();
    let out = ok(&["load", &db, tsv.to_str().unwrap()]);
    assert!(out.contains("loaded 300 records"), "{out}");
    let mut dumped: Vec<String> = ok(&["dump", &db]).lines().map(str::to_string).collect();
    dumped.sort();
    let mut want: Vec<String> = lines.lines().map(str::to_string).collect();
    want.sort();
    assert_eq!(dumped, want);
    let out = ok(&["stats", &db]);
    assert!(out.contains("keys                 300"), "{out}");
    let json: serde_json::Value = serde_json::from_str(&ok(&["stats", &db, "--json"])).unwrap();
    assert_eq!(json["keys"], 300);
    let out = ok(&["merge", &db]);
    assert!(out.starts_with("merged in"), "{out}");
    assert_eq!(ok(&["dump", &db]).lines().count(), 300);
}

#[test]
fn load_rejects_a_malformed_line_by_number() {
    let dir = tempfile::tempdir().unwrap();
    let db = fresh_store(dir.path(), "32M");
    let tsv = dir.path().join("bad.tsv");
    std::fs::write(&tsv, "a\t1\nno-tab-here\n").unwrap();
    let o = run(&["load", &db, tsv.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("bad.tsv:2"), "{err}");
}

#[test]
fn shell_prints_one_line_per_command_from_a_pipe() {
    let dir = tempfile::tempdir().unwrap();
    let db = fresh_store(dir.path(), "32M");
    let mut child = bin()
        .args(["shell", &db, "--sync", "always"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"put k hello world\nget k\nget nope\n\ncontains k\ndelete k\nget k\nfrobnicate\nput onlykey\nkeys\nquit\nget k\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let lines: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect();
    // Nine commands give nine lines: the blank line gives none, nothing runs after `quit`.
    assert_eq!(lines.len(), 9, "{lines:?}");
    assert_eq!(lines[0], "OK");
    assert_eq!(lines[1], "hello world");
    assert_eq!(lines[2], "NOT_FOUND");
    assert_eq!(lines[3], "OK");
    assert_eq!(lines[4], "OK");
    assert_eq!(lines[5], "NOT_FOUND");
    assert!(lines[6].starts_with("ERR unknown command"), "{}", lines[6]);
    assert!(lines[7].starts_with("ERR "), "{}", lines[7]);
    assert_eq!(lines[8], "", "no keys left");
}

#[test]
fn too_large_values_get_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let db = fresh_store(dir.path(), "32M");
    let key = "k".repeat(2000);
    let o = run(&["put", &db, &key, "v"]);
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("key of 2000 bytes exceeds"), "{err}");
}

#[test]
fn foreign_devices_are_refused_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let junk = dir.path().join("junk.img");
    std::fs::write(&junk, vec![0x5au8; 1 << 20]).unwrap();
    let o = run(&["get", junk.to_str().unwrap(), "k"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("no blobstore"));
    let o = run(&["blobs", junk.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("not a blobstore"));
    // A blobstore of another application (bstype BLOBCASKTEST) is not ours to open.
    let other = dir.path().join("other.img");
    std::fs::copy(fixture("basic.img"), &other).unwrap();
    let o = run(&["get", other.to_str().unwrap(), "k"]);
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("type mismatch"), "{err}");
    assert!(err.contains("BLOBCASKTEST"), "{err}");
    let missing = dir.path().join("missing.img");
    let o = run(&["get", missing.to_str().unwrap(), "k"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("does not exist"));
}

#[test]
fn a_store_open_elsewhere_is_locked() {
    let dir = tempfile::tempdir().unwrap();
    let db = fresh_store(dir.path(), "32M");
    let held = blobcask::device::FileDevice::open(&db).unwrap();
    let o = run(&["get", &db, "k"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("already open"));
    drop(held);
    assert_eq!(run(&["get", &db, "k"]).status.code(), Some(1));
}

#[test]
fn blobs_lists_any_spdk_image_read_only() {
    let img = fixture("basic.img");
    let before = std::fs::read(&img).unwrap();
    let out = ok(&["blobs", img.to_str().unwrap()]);
    assert!(out.contains("bstype \"BLOBCASKTEST\""), "{out}");
    assert!(out.contains("0x100000000"), "{out}");
    let json: serde_json::Value =
        serde_json::from_str(&ok(&["blobs", "--json", img.to_str().unwrap()])).unwrap();
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("basic.json")).unwrap()).unwrap();
    let blobs = json["blobs"].as_array().unwrap();
    let want = manifest["blobs"].as_array().unwrap();
    assert_eq!(blobs.len(), want.len());
    for (b, w) in blobs.iter().zip(want) {
        assert_eq!(b["id"], w["id_hex"], "ids are hex in JSON too");
        assert_eq!(b["num_clusters"], w["num_clusters"]);
        assert_eq!(b["num_allocated_clusters"], w["num_allocated_clusters"]);
        assert_eq!(b["thin_provisioned"], w["thin_provisioned"]);
        let names: Vec<&serde_json::Value> = b["xattrs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| &x["name"])
            .collect();
        let want_names: Vec<&serde_json::Value> = w["xattrs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| &x["name"])
            .collect();
        assert_eq!(names, want_names);
    }
    assert_eq!(json["super_block"]["cluster_size"], 1 << 20);
    assert_eq!(json["super_block"]["bstype"], "BLOBCASKTEST");
    // Every manifest read of the first blob hashes the same through `blob --read`.
    let first = &want[0];
    for r in first["reads"].as_array().unwrap().iter().take(6) {
        let range = format!("{}:{}", r["offset"], r["length"]);
        let out = ok(&[
            "blob",
            img.to_str().unwrap(),
            first["id_hex"].as_str().unwrap(),
            "--read",
            &range,
        ]);
        assert_eq!(out.trim(), r["sha256"].as_str().unwrap(), "range {range}");
    }
    let one: serde_json::Value = serde_json::from_str(&ok(&[
        "blob",
        img.to_str().unwrap(),
        "4294967296",
        "--json",
    ]))
    .unwrap();
    assert_eq!(one["id"], "0x100000000");
    assert_eq!(
        std::fs::read(&img).unwrap(),
        before,
        "inspection wrote nothing"
    );
}

/// SPDK's store of 512-byte io units (made on a 512-byte-block bdev): listed, read and
/// checked, the image untouched.
#[test]
fn blobs_blob_and_check_read_an_spdk_io512_image() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("io512.img");
    std::fs::copy(fixture("io512.img"), &img).unwrap();
    let p = img.to_str().unwrap();
    let before = std::fs::read(&img).unwrap();
    let out = ok(&["blobs", p]);
    assert!(out.contains("io unit 512"), "{out}");
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("io512.json")).unwrap()).unwrap();
    let json: serde_json::Value = serde_json::from_str(&ok(&["blobs", "--json", p])).unwrap();
    assert_eq!(json["super_block"]["io_unit_size"], 512);
    let want = manifest["blobs"].as_array().unwrap();
    assert_eq!(json["blobs"].as_array().unwrap().len(), want.len());
    for b in want {
        for r in b["reads"].as_array().unwrap().iter().take(4) {
            let range = format!("{}:{}", r["offset"], r["length"]);
            let out = ok(&["blob", p, b["id_hex"].as_str().unwrap(), "--read", &range]);
            assert_eq!(out.trim(), r["sha256"].as_str().unwrap(), "range {range}");
        }
    }
    // Not a blobcask store: `check` says so (exit 1), it does not fail to read it (exit 2).
    let o = run(&["check", p]);
    assert_eq!(
        o.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(String::from_utf8_lossy(&o.stdout).contains("5 blobs"));
    assert_eq!(
        std::fs::read(&img).unwrap(),
        before,
        "inspection wrote nothing"
    );
}

#[test]
fn format_with_512_byte_io_units_makes_a_working_store() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("s512.img");
    let p = p.to_str().unwrap();
    let out = ok(&[
        "format",
        p,
        "--size",
        "32M",
        "--cluster-size",
        "64K",
        "--io-unit",
        "512",
        "--shards",
        "2",
    ]);
    assert!(out.contains("formatted"), "{out}");
    let sb = std::fs::read(p).unwrap();
    assert_eq!(&sb[..8], b"SPDKBLOB");
    assert_eq!(u32::from_le_bytes(sb[88..92].try_into().unwrap()), 512);
    assert_eq!(u32::from_le_bytes(sb[92..96].try_into().unwrap()), 4096);
    for i in 0..50 {
        assert_eq!(
            ok(&["put", p, &format!("k{i}"), &"v".repeat(i * 37)]),
            "OK\n"
        );
    }
    ok(&["merge", p]);
    assert_eq!(ok(&["get", p, "k49"]), format!("{}\n", "v".repeat(49 * 37)));
    assert!(ok(&["blobs", p]).contains("io unit 512"));
    assert!(run(&["check", p]).status.success());
    // A repair rebuilds it with the same io unit.
    assert!(ok(&["repair", p]).contains("rebuilt"));
    assert!(ok(&["blobs", p]).contains("io unit 512"));
    assert_eq!(ok(&["get", p, "k7"]), format!("{}\n", "v".repeat(7 * 37)));
    let bad = run(&["format", p, "--force", "--io-unit", "384"]);
    assert_eq!(
        bad.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );
    assert!(String::from_utf8_lossy(&bad.stderr).contains("io_unit_size"));
}

#[test]
fn grow_extends_the_image_and_the_store_keeps_working() {
    let dir = tempfile::tempdir().unwrap();
    let db = fresh_store(dir.path(), "32M");
    ok(&["put", &db, "before", "grow"]);
    let free = |p: &str| -> (u64, u64) {
        let j: serde_json::Value = serde_json::from_str(&ok(&["blobs", "--json", p])).unwrap();
        let sb = &j["super_block"];
        (
            sb["size"].as_u64().unwrap(),
            sb["total_data_clusters"].as_u64().unwrap(),
        )
    };
    let (size0, total0) = free(&db);
    assert_eq!(size0, 32 << 20);
    let out = ok(&["grow", &db, "--size", "48M"]);
    assert!(out.contains("grew"), "{out}");
    assert_eq!(std::fs::metadata(&db).unwrap().len(), 48 << 20);
    let (size1, total1) = free(&db);
    assert_eq!(size1, 48 << 20);
    assert_eq!(total1, total0 + (16 << 20) / (64 << 10));
    assert_eq!(ok(&["get", &db, "before"]), "grow\n");
    // More data than the old size held: it needs clusters only the new size has.
    let tsv = dir.path().join("big.tsv");
    let value = "x".repeat(60_000);
    let lines: String = (0..600).map(|i| format!("k{i}\t{value}\n")).collect();
    std::fs::write(&tsv, lines).unwrap();
    ok(&["load", &db, tsv.to_str().unwrap()]);
    assert!(run(&["check", &db]).status.success());
    assert_eq!(ok(&["get", &db, "k599"]).len(), 60_001);
    // Shrinking is refused and changes nothing; the same size is a no-op.
    let before = std::fs::read(&db).unwrap();
    let o = run(&["grow", &db, "--size", "32M"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("cannot shrink"));
    assert!(ok(&["grow", &db]).contains("nothing to grow"));
    assert!(
        std::fs::read(&db).unwrap() == before,
        "a refused grow changed the image"
    );
}

#[test]
fn inspecting_a_dirty_image_leaves_it_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("dirty.img");
    std::fs::copy(fixture("dirty.img"), &img).unwrap();
    let before = std::fs::read(&img).unwrap();
    let out = ok(&["blobs", img.to_str().unwrap()]);
    assert!(out.contains("dirty (recovered in memory)"), "{out}");
    assert_eq!(std::fs::read(&img).unwrap(), before);
    let o = run(&["blob", img.to_str().unwrap(), "0x100000009"]);
    assert_eq!(o.status.code(), Some(1), "no such blob: not found");
    assert!(String::from_utf8_lossy(&o.stderr).contains("NOT_FOUND"));
}

#[test]
fn check_is_clean_on_a_healthy_store_and_repair_salvages_damage() {
    let dir = tempfile::tempdir().unwrap();
    let db = fresh_store(dir.path(), "32M");
    let tsv = dir.path().join("in.tsv");
    let lines: String = (0..60)
        .map(|i| format!("key{i:03}\tvalue-{i:03}-padding-padding\n"))
        .collect();
    std::fs::write(&tsv, &lines).unwrap();
    ok(&["load", &db, tsv.to_str().unwrap()]);
    let out = ok(&["check", &db]);
    assert!(out.trim_end().ends_with("clean"), "{out}");

    // Damage one record in the middle of a data blob.
    let mut bytes = std::fs::read(&db).unwrap();
    let at = bytes
        .windows(9)
        .position(|w| w == b"value-030")
        .expect("record on disk");
    bytes[at + 2] ^= 0x01;
    std::fs::write(&db, &bytes).unwrap();

    let o = run(&["check", &db]);
    assert_eq!(o.status.code(), Some(1), "damage makes check fail");
    let report = String::from_utf8_lossy(&o.stdout);
    assert!(report.contains("PROBLEM"), "{report}");
    // The root cause, by blob and offset.
    assert!(report.contains("damaged record at offset"), "{report}");
    // The keydir snapshot is intact: open uses it, and only the damaged key fails.
    assert_eq!(ok(&["get", &db, "key059"]), "value-059-padding-padding\n");
    // The damaged record is never returned as data.
    let o = run(&["get", &db, "key030"]);
    assert_ne!(o.status.code(), Some(0));

    // Without its keydir snapshots, open must scan: the default refuses the damaged log,
    // --salvage skips the damaged record and keeps everything after it.
    let intact = std::fs::read(&db).unwrap();
    let mut hintless = intact.clone();
    let mut at = 0;
    while let Some(p) = hintless[at..].windows(8).position(|w| w == b"BCHINT01") {
        hintless[at + p] ^= 0xff;
        at += p + 8;
    }
    std::fs::write(&db, &hintless).unwrap();
    let o = run(&["get", &db, "key059"]);
    assert_eq!(o.status.code(), Some(2), "open must refuse a damaged log");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("damaged log in shard"), "{err}");
    let o = run(&["get", &db, "key059", "--salvage"]);
    assert_eq!(
        String::from_utf8_lossy(&o.stdout),
        "value-059-padding-padding\n"
    );
    assert!(String::from_utf8_lossy(&o.stderr).contains("salvage: skipped"));
    std::fs::write(&db, &intact).unwrap();

    let repaired = dir.path().join("repaired.img");
    let json = dir.path().join("report.json");
    let out = ok(&[
        "repair",
        &db,
        "--output",
        repaired.to_str().unwrap(),
        "--report",
        json.to_str().unwrap(),
    ]);
    assert!(out.contains("damaged: shard"), "{out}");
    let rep: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    assert_eq!(rep["counts"]["damaged_ranges"], 1, "{rep}");
    assert_eq!(rep["keys_lost"], serde_json::json!(["key030"]), "{rep}");
    let r = repaired.to_str().unwrap();
    assert!(ok(&["check", r]).trim_end().ends_with("clean"));
    let keys = ok(&["keys", r]);
    // Every intact record survives, including those behind the damage.
    for i in (0..60).filter(|&i| i != 30) {
        assert!(keys.contains(&format!("key{i:03}\n")), "key{i:03} lost");
        assert_eq!(
            ok(&["get", r, &format!("key{i:03}")]),
            format!("value-{i:03}-padding-padding\n")
        );
    }
    // In place: the store itself is rebuilt and the salvage backup removed afterwards.
    let out = ok(&["repair", &db]);
    assert!(out.contains("rebuilt"), "{out}");
    assert!(ok(&["check", &db]).trim_end().ends_with("clean"));
    assert_eq!(ok(&["get", &db, "key059"]), "value-059-padding-padding\n");
    assert!(!Path::new(&format!("{db}.salvage.tsv")).exists());
}

#[test]
fn replay_reproduces_a_fixture() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("replayed.img");
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("empty-clean.json")).unwrap())
            .unwrap();
    let printed = ok(&[
        "replay",
        fixture("empty-clean.json").to_str().unwrap(),
        out.to_str().unwrap(),
    ]);
    assert_eq!(
        printed.split_whitespace().next().unwrap(),
        manifest["image"]["sha256"].as_str().unwrap()
    );
}

#[test]
fn help_names_every_subcommand() {
    let out = ok(&["--help"]);
    for cmd in [
        "format", "put", "get", "delete", "keys", "load", "dump", "stats", "merge", "check",
        "repair", "blobs", "blob", "shell", "replay",
    ] {
        assert!(out.contains(cmd), "help lacks {cmd}");
    }
}

fn shell_puts(db: &str, n: usize) {
    let mut child = bin()
        .args(["shell", db])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let cmds: String = (1..=n).map(|i| format!("put k{i} v{i}\n")).collect();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(cmds.as_bytes())
        .unwrap();
    assert!(child.wait_with_output().unwrap().status.success());
}

#[test]
fn repair_in_place_keeps_the_store_geometry_and_never_erases_a_backup() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("r.img");
    let db = img.to_str().unwrap().to_string();
    ok(&[
        "format",
        &db,
        "--size",
        "8M",
        "--cluster-size",
        "16K",
        "--shards",
        "2",
    ]);
    shell_puts(&db, 50);
    let before = ok(&["blobs", &db, "--json"]);
    let sb = |s: &str| {
        let v: serde_json::Value = serde_json::from_str(s).unwrap();
        (
            v["super_block"]["cluster_size"].clone(),
            v["super_block"]["size"].clone(),
        )
    };
    for round in 0..2 {
        let out = ok(&["repair", &db]);
        assert!(out.contains("rebuilt"), "round {round}: {out}");
        assert!(ok(&["check", &db]).trim_end().ends_with("clean"));
        assert_eq!(sb(&ok(&["blobs", &db, "--json"])), sb(&before));
        assert_eq!(
            ok(&["stats", &db]).lines().nth(1).unwrap().trim_end(),
            "shards               2"
        );
        for i in [1, 25, 50] {
            assert_eq!(ok(&["get", &db, &format!("k{i}")]), format!("v{i}\n"));
        }
    }
    // A backup left by an earlier run is never truncated or removed.
    let backup = format!("{db}.salvage.tsv");
    std::fs::write(&backup, "k1\tv1\n").unwrap();
    ok(&["repair", &db]);
    assert_eq!(std::fs::read_to_string(&backup).unwrap(), "k1\tv1\n");
    // An existing --output is refused, not overwritten.
    let o = run(&["repair", &db, "--output", &backup]);
    assert_eq!(o.status.code(), Some(2));
    assert_eq!(std::fs::read_to_string(&backup).unwrap(), "k1\tv1\n");
}

#[test]
fn check_refuses_a_device_without_a_blobcask_store() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("z.img");
    std::fs::write(&img, vec![0u8; 4 << 20]).unwrap();
    let o = run(&["check", img.to_str().unwrap()]);
    assert_ne!(o.status.code(), Some(0));
    // An empty blobstore (what a format that failed halfway leaves) is not a clean store.
    use blobcask::blobstore::BlobStore;
    std::fs::remove_file(&img).unwrap();
    let dev = blobcask::device::FileDevice::create(&img, 4 << 20, 4096).unwrap();
    let opts = blobcask::blobstore::InitOpts {
        cluster_size: 64 << 10,
        ..Default::default()
    };
    let bs = pollster::block_on(blobcask::blobstore::native::NativeBlobStore::init(
        dev, opts,
    ))
    .unwrap();
    bs.block_on(bs.unload()).unwrap();
    drop(bs);
    let o = run(&["check", img.to_str().unwrap()]);
    assert_eq!(
        o.status.code(),
        Some(1),
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(String::from_utf8_lossy(&o.stdout).contains("no blobcask store"));
}

#[test]
fn format_with_4k_clusters_explains_the_metadata_limit() {
    let dir = tempfile::tempdir().unwrap();
    for size in ["24M", "32M"] {
        let img = dir.path().join(format!("f{size}.img"));
        let o = run(&[
            "format",
            img.to_str().unwrap(),
            "--size",
            size,
            "--cluster-size",
            "4K",
            "--shards",
            "1",
        ]);
        assert_eq!(o.status.code(), Some(2));
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains("md page"), "{err}");
        assert!(!img.exists(), "a refused format leaves no file");
    }
}

/// Offset of the first batch commit record's header in `img` (flags COMMIT, no key, an 8-byte
/// value), past the blobstore metadata at `from`.
fn first_commit(img: &[u8], from: usize) -> usize {
    (from..img.len() - 24)
        .find(|&i| img[i + 12..i + 20] == [4, 0, 0, 0, 8, 0, 0, 0] && img[i + 4..i + 12] != [0; 8])
        .expect("a commit record")
}

#[test]
fn a_damaged_commit_record_is_named_and_repair_keeps_what_the_snapshot_vouches_for() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("l.img");
    let db = img.to_str().unwrap().to_string();
    ok(&[
        "format",
        &db,
        "--size",
        "32M",
        "--cluster-size",
        "64K",
        "--shards",
        "1",
    ]);
    let tsv = dir.path().join("c.tsv");
    let rows: String = (1..=300).map(|i| format!("k{i}\told{i}\n")).collect();
    std::fs::write(&tsv, rows).unwrap();
    ok(&["load", &db, tsv.to_str().unwrap()]);
    let mut bytes = std::fs::read(&img).unwrap();
    // Data clusters start past the md region: the first 64 KiB cluster after a few of metadata.
    let at = first_commit(&bytes, 4 << 16);
    bytes[at + 5] ^= 0x10;
    std::fs::write(&img, &bytes).unwrap();

    let o = run(&["check", &db]);
    assert_eq!(o.status.code(), Some(1));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains("damaged batch commit record at offset"),
        "{out}"
    );
    assert!(out.contains("members depend on it"), "{out}");
    assert!(!out.contains("newest record is damaged"), "{out}");
    assert_eq!(ok(&["get", &db, "k5"]), "old5\n");

    let rep_img = dir.path().join("l.rep.img");
    let json = dir.path().join("l.rep.json");
    ok(&[
        "repair",
        &db,
        "--output",
        rep_img.to_str().unwrap(),
        "--report",
        json.to_str().unwrap(),
    ]);
    let rep: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    assert_eq!(rep["counts"]["keys_lost"], 0, "{rep}");
    let r = rep_img.to_str().unwrap();
    // Repair is never less correct than open: every key open serves, repair keeps.
    for i in 1..=300 {
        let k = format!("k{i}");
        assert_eq!(ok(&["get", &db, &k]), ok(&["get", r, &k]), "{k}");
    }
}

/// A store with `shards` shards: k1..k300 loaded as oldN, then k1..k200 put as newN through a
/// shell that is killed after its last acknowledgement (the store is left dirty).
fn crashed_store(dir: &Path, shards: &str) -> (PathBuf, BTreeMap<String, String>) {
    let img = dir.join("c.img");
    let db = img.to_str().unwrap().to_string();
    ok(&[
        "format",
        &db,
        "--size",
        "32M",
        "--cluster-size",
        "64K",
        "--shards",
        shards,
    ]);
    let tsv = dir.join("c.tsv");
    let rows: String = (1..=300).map(|i| format!("k{i}\told{i}\n")).collect();
    std::fs::write(&tsv, rows).unwrap();
    ok(&["load", &db, tsv.to_str().unwrap()]);
    let mut child = bin()
        .args(["shell", &db, "--sync", "always"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    for i in 1..=200 {
        writeln!(stdin, "put k{i} new{i}").unwrap();
        stdin.flush().unwrap();
        assert_eq!(lines.next().unwrap().unwrap(), "OK");
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let model = (1..=300)
        .map(|i| {
            let v = if i <= 200 { "new" } else { "old" };
            (format!("k{i}"), format!("{v}{i}"))
        })
        .collect();
    (img, model)
}

/// Repair `img` into a new image and check the report's promise: every key served is right
/// or listed (suspect or lost), every key not served is listed. Returns the report.
fn repair_is_honest(dir: &Path, img: &Path, model: &BTreeMap<String, String>) -> serde_json::Value {
    let out = dir.join("rep.img");
    let json = dir.join("rep.json");
    let _ = std::fs::remove_file(&out);
    let text = ok(&[
        "repair",
        img.to_str().unwrap(),
        "--output",
        out.to_str().unwrap(),
        "--report",
        json.to_str().unwrap(),
    ]);
    let rep: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    let listed: BTreeSet<String> = ["keys_lost", "keys_suspect"]
        .iter()
        .flat_map(|f| rep[f].as_array().unwrap().iter())
        .map(|k| k.as_str().unwrap().to_string())
        .collect();
    let served: BTreeMap<String, String> = ok(&["dump", out.to_str().unwrap()])
        .lines()
        .map(|l| {
            let (k, v) = l.split_once('\t').unwrap();
            (k.to_string(), v.to_string())
        })
        .collect();
    for (k, v) in model {
        match served.get(k) {
            Some(s) if s == v => {}
            other => assert!(
                listed.contains(k),
                "{k}: served {other:?}, not listed\n{text}"
            ),
        }
    }
    rep
}

#[test]
fn repair_names_a_data_blob_whose_md_page_is_lost_after_a_crash_and_lists_what_it_affects() {
    for shards in ["1", "2"] {
        let dir = tempfile::tempdir().unwrap();
        let (img, model) = crashed_store(dir.path(), shards);
        let db = img.to_str().unwrap();
        let doc: serde_json::Value = serde_json::from_str(&ok(&["blobs", db, "--json"])).unwrap();
        let md_start = doc["super_block"]["md_start"].as_u64().unwrap();
        let data: Vec<u64> = doc["blobs"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|b| b["role"] == "data")
            .map(|b| {
                let id = b["id"].as_str().unwrap();
                u64::from_str_radix(id.strip_prefix("0x").unwrap(), 16).unwrap()
            })
            .collect();
        assert!(!data.is_empty());
        let intact = std::fs::read(&img).unwrap();
        for id in data {
            let mut bytes = intact.clone();
            bytes[((md_start + (id & 0xFFFF_FFFF)) * 4096 + 100) as usize] ^= 0x99;
            std::fs::write(&img, &bytes).unwrap();
            let rep = repair_is_honest(dir.path(), &img, &model);
            let named = rep["damaged_blobs"].as_array().unwrap();
            assert!(
                named.iter().any(|b| b["blob"] == format!("{id:#x}")),
                "blob {id:#x} not named: {rep}"
            );
            assert_eq!(rep["counts"]["damaged_blobs"], named.len());
        }
    }
}

/// An SPDK v25.09 store with snapshots, clones, a read-only blob and esnap clones: `blobs`
/// lists and explains every blob, `blob --read` reads through the backing chains exactly as
/// SPDK did, an esnap clone reads through `--esnap ID=PATH` and fails alone without it.
#[test]
fn blobs_and_blob_read_snapshots_clones_and_esnap_clones() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("snapshots.img");
    std::fs::copy(fixture("snapshots.img"), &img).unwrap();
    let before = std::fs::read(&img).unwrap();
    let img = img.to_str().unwrap();
    let esnap = format!(
        "esnap-base.img={}",
        fixture("snapshots-esnap.img").to_str().unwrap()
    );
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("snapshots.json")).unwrap()).unwrap();
    let want = manifest["blobs"].as_array().unwrap();
    let hex_of = |slot: &str| {
        want.iter().find(|b| b["scenario_name"] == slot).unwrap()["id_hex"]
            .as_str()
            .unwrap()
            .to_owned()
    };

    let table = ok(&["blobs", img]);
    let line = |slot: &str| {
        let id = hex_of(slot);
        table
            .lines()
            .find(|l| l.starts_with(&format!("{id} ")))
            .unwrap_or_else(|| panic!("{slot} not listed: {table}"))
            .to_owned()
    };
    assert!(line("A").ends_with(&format!("thin, clone of {}", hex_of("S2"))));
    assert!(line("S1").contains("snapshot, read-only, thin"));
    assert!(line("S2").contains(&format!(
        "snapshot, read-only, thin, clone of {}",
        hex_of("S1")
    )));
    assert!(line("C").contains(&format!("clone of {}", hex_of("S1"))));
    assert!(line("R").ends_with("read-only, thick"));
    assert!(line("T").ends_with("/ thin"));
    assert!(line("ES").contains("esnap clone of esnap-base.img (no device given)"));
    assert!(line("F").contains("esnap clone of esnap-base.img"));

    let doc: serde_json::Value =
        serde_json::from_str(&ok(&["blobs", img, "--json", "--esnap", &esnap])).unwrap();
    let got = doc["blobs"].as_array().unwrap();
    assert_eq!(got.len(), want.len());
    for (g, w) in got.iter().zip(want) {
        let api = &w["spdk_api"];
        assert_eq!(g["id"], w["id_hex"], "ids are hex in JSON");
        assert_eq!(g["num_allocated_clusters"], w["num_allocated_clusters"]);
        assert_eq!(g["read_only"], api["read_only"], "{}", w["scenario_name"]);
        assert_eq!(g["is_snapshot"], api["snapshot"], "{}", w["scenario_name"]);
        assert_eq!(g["is_clone"], api["clone"], "{}", w["scenario_name"]);
        assert_eq!(
            g["is_esnap_clone"], api["esnap_clone"],
            "{}",
            w["scenario_name"]
        );
        if api["clone"] == true {
            let parent = format!("{:#x}", api["parent_id"].as_u64().unwrap());
            assert_eq!(g["parent"]["snapshot_id"], serde_json::json!(parent));
        }
        if api["esnap_clone"] == true {
            assert_eq!(g["parent"]["esnap_id"], api["esnap_id"]);
            assert_eq!(g["parent"]["esnap_device"], true);
        }
    }

    // Whole-blob reads of every blob, through the chains and the external snapshot.
    for w in want {
        let r = &w["reads"][0];
        let range = format!("{}:{}", r["offset"], r["length"]);
        let id = w["id_hex"].as_str().unwrap();
        let out = ok(&["blob", img, id, "--read", &range, "--esnap", &esnap]);
        assert_eq!(out.trim(), r["sha256"].as_str().unwrap(), "{id} {range}");
    }
    // Without the mapping, only reads that reach the external snapshot fail.
    let o = run(&["blob", img, &hex_of("E"), "--read", "0:16"]);
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("esnap-base.img") && err.contains("--esnap"),
        "{err}"
    );
    ok(&["blob", img, &hex_of("A"), "--read", "0:128"]);
    let one = ok(&["blob", img, &hex_of("S2")]);
    assert!(
        one.contains("kind: snapshot, read-only, thin, clone of"),
        "{one}"
    );
    assert!(one.contains("internal xattr SNAP = 0x"), "{one}");
    assert_eq!(
        std::fs::read(img).unwrap(),
        before,
        "inspection wrote nothing"
    );
}

/// `replay` of SPDK's recorded snapshot, clone, esnap clone, delete and inflate operations
/// writes SPDK's image exactly (the external snapshot comes from the manifest's pattern).
#[test]
fn replay_of_snapshot_manifests_prints_spdks_sha256() {
    let dir = tempfile::tempdir().unwrap();
    for n in [
        "snapshots",
        "snapshots-dirty",
        "snapshots-delete",
        "snapshots-inflate",
    ] {
        let m: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(fixture(&format!("{n}.json"))).unwrap())
                .unwrap();
        let out = dir.path().join(format!("{n}.img"));
        let got = ok(&[
            "replay",
            fixture(&format!("{n}.json")).to_str().unwrap(),
            out.to_str().unwrap(),
        ]);
        assert_eq!(
            got.split_whitespace().next(),
            m["image"]["sha256"].as_str(),
            "{n}"
        );
    }
}
