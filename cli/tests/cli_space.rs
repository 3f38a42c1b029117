//! The `blobcask` binary on space and `format`: many short-lived writers on a small store, and
//! `format`'s refusals (an existing store without `--force`, a geometry that cannot work).

// Test code (its helpers are not `#[test]` functions): a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

use std::process::Command;

mod common;
use common::*;

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

/// `format` without `--force` writes only to a new path or an entirely zero image, and never
/// replaces anything but a regular file, even with `--force`.
#[test]
fn format_never_replaces_a_non_regular_file_nor_data_past_the_first_page() {
    use std::os::unix::fs::FileTypeExt;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let fifo = d.join("fifo");
    assert!(Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap()
        .success());
    let sub = d.join("sub");
    std::fs::create_dir(&sub).unwrap();
    let null = d.join("null");
    std::os::unix::fs::symlink("/dev/null", &null).unwrap();
    let dangling = d.join("dangling");
    std::os::unix::fs::symlink(d.join("nowhere"), &dangling).unwrap();
    for (p, word) in [
        (&fifo, "FIFO"),
        (&sub, "directory"),
        (&null, "character device"),
        (&dangling, "refusing"),
    ] {
        for force in [false, true] {
            let mut args = vec!["format", p.to_str().unwrap(), "--size", "16M"];
            if force {
                args.push("--force");
            }
            refused(&args, word);
        }
    }
    assert!(std::fs::metadata(&fifo).unwrap().file_type().is_fifo());
    assert!(sub.is_dir());
    assert!(std::fs::metadata("/dev/null")
        .unwrap()
        .file_type()
        .is_char_device());
    assert!(std::fs::symlink_metadata(&dangling).unwrap().is_symlink());

    // User data after a zero first page is data.
    let f = d.join("file");
    let mut bytes = vec![0u8; 4096];
    bytes.extend_from_slice(b"user data");
    std::fs::write(&f, &bytes).unwrap();
    refused(&["format", f.to_str().unwrap(), "--size", "16M"], "--force");
    assert_eq!(std::fs::read(&f).unwrap(), bytes);

    // A store whose super block was zeroed is still a store (repair recovers it).
    let img = d.join("store.img");
    let db = img.to_str().unwrap();
    ok(&["format", db, "--size", "16M", "--shards", "1"]);
    ok(&["put", db, "k", "v"]);
    {
        use std::io::Write;
        let mut h = std::fs::OpenOptions::new().write(true).open(&img).unwrap();
        h.write_all(&[0u8; 4096]).unwrap();
    }
    let before = sha(&img);
    refused(&["format", db, "--size", "16M"], "--force");
    assert_eq!(sha(&img), before);
    refused(&["get", db, "k"], "repair");

    // An entirely zero image, and an empty one, are formatted without --force.
    for (name, len) in [("zero.img", 16u64 << 20), ("empty.img", 0)] {
        let z = d.join(name);
        std::fs::File::create(&z).unwrap().set_len(len).unwrap();
        ok(&[
            "format",
            z.to_str().unwrap(),
            "--size",
            "16M",
            "--shards",
            "1",
        ]);
        ok(&["put", z.to_str().unwrap(), "k", "v"]);
    }
}

/// A failed `--force` leaves the old image as it was; `--force` without `--size` keeps the
/// image's size.
#[test]
fn a_failed_forced_format_keeps_the_old_store_and_force_keeps_the_size() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("store.img");
    let db = img.to_str().unwrap();
    ok(&[
        "format",
        db,
        "--size",
        "24M",
        "--shards",
        "1",
        "--cluster-size",
        "64K",
    ]);
    ok(&["put", db, "k", "v"]);
    let before = sha(&img);
    let o = run(&["format", db, "--size", "1000000T", "--force"]);
    assert_eq!(o.status.code(), Some(2), "{o:?}");
    assert_eq!(sha(&img), before, "a failed format changed the old store");
    assert_eq!(ok(&["get", db, "k"]), "v\n");
    let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    assert_eq!(left.len(), 1, "a failed format left files behind: {left:?}");

    ok(&[
        "format",
        db,
        "--force",
        "--shards",
        "1",
        "--cluster-size",
        "64K",
    ]);
    assert_eq!(std::fs::metadata(&img).unwrap().len(), 24 << 20);
    assert_eq!(run(&["get", db, "k"]).status.code(), Some(1));
}

/// A zero cluster size is a typed error, and the too-small advice fits the request.
#[test]
fn format_explains_bad_cluster_sizes_and_gives_advice_that_applies() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("s.img");
    let p = img.to_str().unwrap();
    for cs in ["0", "0K", "1000"] {
        refused(
            &["format", p, "--size", "16M", "--cluster-size", cs],
            "--cluster-size",
        );
    }
    let advice = |args: &[&str]| {
        let o = run(args);
        assert_eq!(o.status.code(), Some(2));
        String::from_utf8_lossy(&o.stderr).into_owned()
    };
    let one = advice(&[
        "format",
        p,
        "--size",
        "1M",
        "--shards",
        "1",
        "--cluster-size",
        "64K",
    ]);
    assert!(
        one.contains("at least") && !one.contains("fewer shards"),
        "{one}"
    );
    let tiny = advice(&[
        "format",
        p,
        "--size",
        "16M",
        "--shards",
        "1",
        "--cluster-size",
        "4K",
    ]);
    assert!(
        tiny.contains("no device size") && tiny.contains("bigger cluster size"),
        "{tiny}"
    );
    assert!(
        !tiny.contains("fewer shards") && !tiny.contains("smaller clusters"),
        "{tiny}"
    );
    assert!(!img.exists());
}

/// A reader that stops early (`keys | head`) ends the command quietly.
#[test]
fn a_closed_pipe_ends_a_listing_quietly() {
    use std::io::Read;
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("s.img");
    let db = img.to_str().unwrap();
    ok(&["format", db, "--size", "16M", "--shards", "1"]);
    let tsv = dir.path().join("in.tsv");
    let lines: String = (0..20_000).map(|i| format!("key{i:06}\tv\n")).collect();
    std::fs::write(&tsv, lines).unwrap();
    ok(&["load", db, tsv.to_str().unwrap()]);
    for cmd in ["keys", "dump"] {
        let mut child = Command::new(env!("CARGO_BIN_EXE_blobcask"))
            .args([cmd, db])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut first = [0u8; 16];
        child.stdout.take().unwrap().read_exact(&mut first).unwrap();
        // The pipe is closed here, with most of the listing unread.
        let out = child.wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.is_empty(), "{cmd}: {err}");
        assert!(out.status.success(), "{cmd}: {:?}", out.status);
    }
}

/// A put refused for space writes nothing, so it must not poison the store, whatever the sync
/// policy: later commands go on and everything acknowledged is there.
#[test]
fn no_space_does_not_poison_a_store_without_sync() {
    for sync in ["never", "always"] {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("s.img");
        let db = img.to_str().unwrap();
        ok(&[
            "format",
            db,
            "--size",
            "16M",
            "--shards",
            "2",
            "--cluster-size",
            "64K",
        ]);
        let mut want = std::collections::HashMap::new();
        // Values of 100 B .. 100 KB, log-uniform from a fixed LCG, in sessions of 200 puts
        // until some are refused for space.
        let mut x = 12345u64;
        let mut n = 0;
        let mut filled = false;
        let mut after_full = 0;
        for _ in 0..30 {
            let mut cmds = String::new();
            let mut vals = Vec::new();
            for _ in 0..200 {
                x = x
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let frac = (x >> 11) as f64 / (1u64 << 53) as f64;
                // Every third value just over a cluster: past the reserve its blob rotates.
                let len = if n % 3 == 0 {
                    66_000
                } else {
                    (100.0 * 1000f64.powf(frac)) as usize
                };
                let v: String =
                    std::iter::repeat_n(char::from(b'a' + (n % 6) as u8), len).collect();
                cmds.push_str(&format!("put k{n} {v}\n"));
                vals.push((format!("k{n}"), v));
                n += 1;
            }
            let mut child = Command::new(env!("CARGO_BIN_EXE_blobcask"))
                .args(["shell", "--sync", sync, db])
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap();
            let mut stdin = child.stdin.take().unwrap();
            let feeder = std::thread::spawn(move || {
                use std::io::Write;
                stdin.write_all(cmds.as_bytes()).unwrap();
            });
            let out = child.wait_with_output().unwrap();
            feeder.join().unwrap();
            let text = String::from_utf8_lossy(&out.stdout);
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(out.status.success(), "sync {sync}: {err}");
            assert!(!text.contains("poisoned"), "sync {sync}: {text:.300}");
            let replies: Vec<&str> = text.lines().collect();
            assert_eq!(replies.len(), vals.len(), "sync {sync}");
            for ((k, v), r) in vals.into_iter().zip(&replies) {
                if *r == "OK" {
                    want.insert(k, v);
                } else {
                    assert!(r.contains("no space"), "sync {sync}: {k}: {r}");
                    filled = true;
                }
            }
            // Go on past the first refusal: small puts still fit, big ones rotate and fail.
            if filled {
                after_full += 1;
                if after_full == 4 {
                    break;
                }
            }
        }
        assert!(filled, "sync {sync}: the store never filled");
        let dump = ok(&["dump", db]);
        let got: std::collections::HashMap<String, String> = dump
            .lines()
            .filter_map(|l| l.split_once('\t'))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        assert_eq!(got.len(), want.len(), "sync {sync}");
        assert!(
            got == want,
            "sync {sync}: the dump differs from what was acknowledged"
        );
    }
}

/// `format` makes a sparse image up to `--size`; `--preallocate` allocates all of it.
#[test]
fn format_makes_a_sparse_image_unless_asked_to_preallocate() {
    use std::os::unix::fs::MetadataExt;
    let dir = tempfile::tempdir().unwrap();
    let sparse = dir.path().join("sparse.img");
    ok(&["format", sparse.to_str().unwrap(), "--size", "256M"]);
    ok(&["put", sparse.to_str().unwrap(), "k", "v"]);
    let meta = std::fs::metadata(&sparse).unwrap();
    assert_eq!(meta.len(), 256 << 20);
    assert!(
        meta.blocks() * 512 < 64 << 20,
        "{} bytes",
        meta.blocks() * 512
    );
    assert_eq!(ok(&["get", sparse.to_str().unwrap(), "k"]), "v\n");

    let full = dir.path().join("full.img");
    ok(&[
        "format",
        full.to_str().unwrap(),
        "--size",
        "64M",
        "--preallocate",
    ]);
    let meta = std::fs::metadata(&full).unwrap();
    assert!(
        meta.blocks() * 512 >= 64 << 20,
        "{} bytes",
        meta.blocks() * 512
    );
}
