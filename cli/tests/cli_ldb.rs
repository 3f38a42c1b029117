//! The `blobcask` binary behaves like RocksDB's `ldb`: one key/value encoding everywhere,
//! values from stdin or a file, `scan`, `load` failures that say how far they got, quiet exits
//! on a closed pipe, exit codes 0/1/2, read-only commands under a shared lock that leave the
//! image byte for byte as it was, and counters that outlive the process.

// Test code (its helpers are not `#[test]` functions): a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

mod common;
use common::*;

fn write_tsv(dir: &Path, name: &str, lines: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, lines).unwrap();
    p.to_str().unwrap().to_string()
}

#[test]
fn keys_printed_by_keys_and_scan_are_accepted_by_get_put_and_delete() {
    let dir = tempfile::tempdir().unwrap();
    let db = fresh_store(dir.path(), "64M");
    // A key with a tab, a newline, a backslash and a byte outside ASCII, in the escaped form.
    assert_eq!(
        ok(&["put", &db, "a\\tb\\n\\\\c\\xff", "v\\x00\\t1"]),
        "OK\n"
    );
    assert_eq!(ok(&["keys", &db]), "a\\tb\\n\\\\c\\xff\n");
    let key = ok(&["keys", &db]).trim_end().to_string();
    assert_eq!(ok(&["get", &db, &key]), "v\\x00\\t1\n");
    assert_eq!(ok(&["scan", &db]), format!("{key}\tv\\x00\\t1\n"));
    assert_eq!(sorted(&ok(&["dump", &db])), ok(&["scan", &db]));
    // The same record in hex, both ways.
    let hkey = ok(&["keys", &db, "--hex"]).trim_end().to_string();
    assert_eq!(hkey, hex::encode(b"a\tb\n\\c\xff"));
    assert_eq!(ok(&["get", &db, "--hex", &hkey]), "76000931\n");
    assert_eq!(ok(&["put", &db, "--hex", "00ff", "6869"]), "OK\n");
    assert_eq!(ok(&["get", &db, "\\x00\\xff"]), "hi\n");
    assert_eq!(ok(&["get", &db, "--hex", "00ff"]), "6869\n");
    assert_eq!(ok(&["delete", &db, &key]), "OK\n");
    assert_eq!(run(&["get", &db, &key]).status.code(), Some(1));
    // A raw tab in an argument is the same key as its escape.
    assert_eq!(ok(&["put", &db, "x\ty", "raw"]), "OK\n");
    assert_eq!(ok(&["get", &db, "x\\ty"]), "raw\n");
    // Bad encodings are errors, not other keys.
    let o = run(&["get", &db, "bad\\q"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(err(&o).contains("unknown escape"), "{}", err(&o));
    let o = run(&["get", &db, "--hex", "zz"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(err(&o).contains("not hex"), "{}", err(&o));
}

#[test]
fn values_come_from_stdin_or_a_file_and_get_raw_returns_the_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let db = fresh_store(dir.path(), "64M");
    // Larger than any argument list allows, and binary.
    let big: Vec<u8> = (0..3u32 << 20)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    let o = run_in(&["put", &db, "big", "-"], &big);
    assert!(o.status.success(), "{}", err(&o));
    let o = run(&["get", &db, "big", "--raw"]);
    assert!(o.status.success());
    assert!(o.stdout == big, "get --raw gives the bytes back");
    let o = run_in(&["put", &db, "s", "--stdin"], b"from\tstdin\n");
    assert!(o.status.success(), "{}", err(&o));
    assert_eq!(ok(&["get", &db, "s"]), "from\\tstdin\\n\n");
    let file = dir.path().join("value.bin");
    std::fs::write(&file, b"\x00file").unwrap();
    ok(&["put", &db, "f", "--value-file", file.to_str().unwrap()]);
    assert_eq!(
        ok(&["get", &db, "66", "--hex"]),
        "0066696c65\n",
        "--hex: key and value"
    );
    // Past the 16 MiB limit: refused before anything is written.
    let huge = dir.path().join("huge.bin");
    std::fs::File::create(&huge)
        .unwrap()
        .set_len((16 << 20) + 1)
        .unwrap();
    let o = run(&["put", &db, "h", "--value-file", huge.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        err(&o).contains("exceeds the limit of 16777216"),
        "{}",
        err(&o)
    );
    assert_eq!(run(&["get", &db, "h"]).status.code(), Some(1));
    let o = run(&["put", &db, "h", "v", "--stdin"]);
    assert_eq!(o.status.code(), Some(2), "a value and --stdin conflict");
}

#[test]
fn scan_selects_by_prefix_and_half_open_range_in_key_order() {
    let dir = tempfile::tempdir().unwrap();
    let db = fresh_store(dir.path(), "64M");
    let mut lines = String::new();
    for k in ["b2", "a1", "c1", "b1", "b3", "a2"] {
        lines.push_str(&format!("{k}\tv{k}\n"));
    }
    let tsv = write_tsv(dir.path(), "in.tsv", &lines);
    ok(&["load", &db, &tsv]);
    assert_eq!(ok(&["keys", &db]), "a1\na2\nb1\nb2\nb3\nc1\n");
    assert_eq!(
        ok(&["scan", &db, "--prefix", "b"]),
        "b1\tvb1\nb2\tvb2\nb3\tvb3\n"
    );
    assert_eq!(
        ok(&["scan", &db, "--from", "a2", "--to", "b3", "--keys-only"]),
        "a2\nb1\nb2\n"
    );
    assert_eq!(
        ok(&["scan", &db, "--from", "b", "--limit", "2"]),
        "b1\tvb1\nb2\tvb2\n"
    );
    assert_eq!(ok(&["keys", &db, "--prefix", "b", "--to", "b2"]), "b1\n");
    assert_eq!(ok(&["scan", &db, "--prefix", "z"]), "");
    assert_eq!(ok(&["scan", &db, "--limit", "0"]), "");
    assert_eq!(ok(&["keys", &db, "--hex", "--prefix", "63"]), "6331\n");
}

#[test]
fn a_failed_load_names_file_and_line_and_how_much_it_committed() {
    let dir = tempfile::tempdir().unwrap();
    let db = fresh_store(dir.path(), "64M");
    let mut lines = String::new();
    for i in 1..=600 {
        if i == 301 {
            lines.push_str("no tab on this line\n");
        } else {
            lines.push_str(&format!("k{i:04}\tv{i}\n"));
        }
    }
    let tsv = write_tsv(dir.path(), "in.tsv", &lines);
    let o = run(&["load", &db, &tsv]);
    assert_eq!(o.status.code(), Some(2));
    let e = err(&o);
    assert!(e.contains("in.tsv:301: expected key<TAB>value"), "{e}");
    assert!(e.contains("300 records were committed"), "{e}");
    assert!(e.contains("resume from line 301"), "{e}");
    assert_eq!(ok(&["keys", &db]).lines().count(), 300, "what it said");
    // Resuming from the line named, after the bad line is fixed, completes the file.
    let rest: String = lines
        .lines()
        .skip(300)
        .map(|l| {
            if l.starts_with("no tab") {
                "k0301\tv301\n".to_string()
            } else {
                format!("{l}\n")
            }
        })
        .collect();
    let o = run_in(&["load", &db, "-"], rest.as_bytes());
    assert!(o.status.success(), "{}", err(&o));
    assert_eq!(String::from_utf8_lossy(&o.stdout), "loaded 300 records\n");
    assert!(o.stderr.is_empty(), "no progress output without a terminal");
    assert_eq!(ok(&["keys", &db]).lines().count(), 600);

    // Atomic: a bad line near the end writes nothing of the file.
    let db2 = {
        let d = dir.path().join("two");
        std::fs::create_dir(&d).unwrap();
        fresh_store(&d, "64M")
    };
    let o = run(&["load", &db2, &tsv, "--atomic"]);
    assert_eq!(o.status.code(), Some(2));
    let e = err(&o);
    assert!(e.contains("in.tsv:301"), "{e}");
    assert!(e.contains("nothing was written (--atomic)"), "{e}");
    assert_eq!(ok(&["keys", &db2]), "");
    let good = write_tsv(dir.path(), "good.tsv", &rest);
    assert_eq!(
        ok(&["load", &db2, &good, "--atomic"]),
        "loaded 300 records\n"
    );
    assert_eq!(ok(&["keys", &db2]).lines().count(), 300);

    // A key over the limit, bad UTF-8 and a bad escape are named by line too; from stdin.
    let long = format!("a\t1\n{}\t2\n", "k".repeat(1025));
    let o = run_in(&["load", &db2, "-"], long.as_bytes());
    assert_eq!(o.status.code(), Some(2));
    let e = err(&o);
    assert!(e.contains("<stdin>:2: key of 1025 bytes exceeds"), "{e}");
    assert!(e.contains("1 records were committed"), "{e}");
    let o = run_in(&["load", &db2, "-"], b"ok\t1\nbad\t\xff\n");
    assert!(
        err(&o).contains("<stdin>:2: the line is not UTF-8"),
        "{}",
        err(&o)
    );
    let o = run_in(&["load", &db2, "-", "--atomic"], b"k\t\\q\n");
    assert!(
        err(&o).contains("<stdin>:1: value: unknown escape"),
        "{}",
        err(&o)
    );
    let o = run(&["load", &db2, "/nonexistent/in.tsv"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(err(&o).contains("/nonexistent/in.tsv"), "{}", err(&o));
}

#[test]
fn hex_load_and_dump_round_trip_every_byte() {
    let dir = tempfile::tempdir().unwrap();
    let db = fresh_store(dir.path(), "64M");
    let mut lines = String::new();
    for b in 0..=255u8 {
        lines.push_str(&format!(
            "{}\t{}\n",
            hex::encode([b, b]),
            hex::encode([b; 3])
        ));
    }
    let tsv = write_tsv(dir.path(), "in.hex", &lines);
    ok(&["load", &db, &tsv, "--hex"]);
    // dump streams in log order; sorted, it is what was loaded.
    assert_eq!(sorted(&ok(&["dump", &db, "--hex"])), lines);
    // The escaped dump loads back into an equal store.
    let escaped = write_tsv(dir.path(), "out.tsv", &ok(&["dump", &db]));
    let d2 = dir.path().join("2");
    std::fs::create_dir(&d2).unwrap();
    let db2 = fresh_store(&d2, "64M");
    ok(&["load", &db2, &escaped]);
    assert_eq!(sorted(&ok(&["dump", &db2, "--hex"])), lines);
}

/// The lines of `out`, sorted (each with its newline).
fn sorted(out: &str) -> String {
    let mut l: Vec<&str> = out.lines().collect();
    l.sort_unstable();
    l.iter().map(|x| format!("{x}\n")).collect()
}

/// Start `args`, read one line of its output, close the pipe, and wait.
fn read_one_line_then_close(args: &[&str]) -> Output {
    let mut child = bin()
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert!(!line.is_empty());
    drop(out);
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    let status = child.wait().unwrap();
    Output {
        status,
        stdout: line.into_bytes(),
        stderr: stderr.into_bytes(),
    }
}

#[test]
fn a_closed_pipe_ends_every_listing_quietly() {
    let dir = tempfile::tempdir().unwrap();
    let db = fresh_store(dir.path(), "64M");
    // Far more output than a pipe buffers.
    let v = "x".repeat(200);
    let lines: String = (0..4000).map(|i| format!("key{i:05}\t{v}\n")).collect();
    let tsv = write_tsv(dir.path(), "in.tsv", &lines);
    ok(&["load", &db, &tsv]);
    for cmd in ["keys", "scan", "dump"] {
        let args: Vec<&str> = if cmd == "keys" {
            vec![cmd, &db, "--hex"]
        } else {
            vec![cmd, &db]
        };
        let o = read_one_line_then_close(&args);
        assert_eq!(o.status.code(), Some(0), "{cmd}: {}", err(&o));
        assert!(o.stderr.is_empty(), "{cmd} printed: {}", err(&o));
    }
    // Help into a closed pipe does not panic either.
    let o = read_one_line_then_close(&["--help"]);
    assert_ne!(o.status.code(), Some(101), "{}", err(&o));
    assert!(!err(&o).contains("panicked"), "{}", err(&o));
}

#[test]
fn every_command_documents_its_exit_codes_and_keeps_them() {
    let dir = tempfile::tempdir().unwrap();
    let db = fresh_store(dir.path(), "64M");
    let help = ok(&["--help"]);
    assert!(help.contains("Exit status: 0 success"), "{help}");
    assert!(
        help.contains("1 to 1024 bytes") && help.contains("16 MiB"),
        "{help}"
    );
    for cmd in [
        "format", "put", "get", "delete", "keys", "scan", "load", "dump", "stats", "merge",
        "check", "repair", "blobs", "blob", "shell", "replay",
    ] {
        let h = ok(&[cmd, "--help"]);
        assert!(h.contains("Exit status: 0"), "{cmd} --help: {h}");
        let read_only = [
            "get", "keys", "scan", "dump", "stats", "check", "blobs", "blob",
        ];
        assert_eq!(
            h.contains("--sync"),
            !read_only.contains(&cmd) && !["format", "repair", "replay"].contains(&cmd),
            "--sync only on commands that write: {cmd}"
        );
        if read_only.contains(&cmd) {
            assert!(h.contains("--wait-lock"), "{cmd}");
        }
    }
    assert!(ok(&["--version"]).starts_with("blobcask "));
    ok(&["put", &db, "k", "v"]);
    assert_eq!(run(&["get", &db, "k"]).status.code(), Some(0));
    for (args, code) in [
        (vec!["get", &db, "missing"], 1),
        (vec!["delete", &db, "missing"], 1),
        (vec!["check", &db], 0),
        (vec!["blob", &db, "0xffffffff"], 1),
        (vec!["stats", &db], 0),
        (vec!["get", "/nonexistent.img", "k"], 2),
        (vec!["get", &db], 2),
        (vec!["frobnicate"], 2),
    ] {
        let o = run(&args);
        assert_eq!(o.status.code(), Some(code), "{args:?}: {}", err(&o));
        if code == 1 && args[0] != "blob" {
            assert_eq!(err(&o), "NOT_FOUND\n", "{args:?}");
            assert!(o.stdout.is_empty(), "{args:?}");
        }
    }
    // The message names the CLI's way out, not the library's option.
    let o = run(&["keys", &format!("{db}.missing")]);
    let e = err(&o);
    assert!(e.contains("does not exist; `blobcask format"), "{e}");
    assert!(!e.contains("set create"), "{e}");
    let zeros = dir.path().join("zeros.img");
    std::fs::File::create(&zeros)
        .unwrap()
        .set_len(8 << 20)
        .unwrap();
    let o = run(&["get", zeros.to_str().unwrap(), "k"]);
    assert_eq!(o.status.code(), Some(2));
    let e = err(&o);
    assert!(e.contains("holds no blobstore"), "{e}");
    assert!(e.contains("`blobcask format`"), "{e}");
    assert!(!e.contains("Options::") && !e.contains("set create"), "{e}");
    // Flags are checked with their own names, before anything is touched.
    let o = run(&["format", zeros.to_str().unwrap(), "--shards", "0"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(err(&o).contains("--shards"), "{}", err(&o));
    let o = run(&["format", zeros.to_str().unwrap(), "--cluster-size", "1000"]);
    assert!(err(&o).contains("--cluster-size"), "{}", err(&o));
}

#[test]
fn read_only_commands_leave_the_image_byte_identical() {
    let dir = tempfile::tempdir().unwrap();
    let db = fresh_store(dir.path(), "64M");
    let lines: String = (0..500).map(|i| format!("k{i}\tv{i}\n")).collect();
    let tsv = write_tsv(dir.path(), "in.tsv", &lines);
    ok(&["load", &db, &tsv]);
    ok(&["merge", &db]);
    ok(&["put", &db, "k1", "newer"]);
    let before = sha(&db);
    let ids = ok(&["blobs", &db]);
    let id = ids
        .lines()
        .nth(2)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap();
    for args in [
        vec!["get", &db, "k1"],
        vec!["get", &db, "missing"],
        vec!["keys", &db],
        vec!["scan", &db, "--prefix", "k2"],
        vec!["dump", &db],
        vec!["stats", &db],
        vec!["stats", &db, "--json"],
        vec!["check", &db],
        vec!["blobs", &db, "--json"],
        vec!["blob", &db, id],
        vec!["get", &db, "k1", "--salvage"],
    ] {
        let o = run(&args);
        assert!(o.status.code().unwrap() < 2, "{args:?}: {}", err(&o));
        assert_eq!(sha(&db), before, "{args:?} changed the image");
    }
}

/// Open the store as another process would hold it: read-only (shared lock) or to write.
fn hold(db: &str, read_only: bool) -> blobcask::Db {
    let mut o = blobcask::Options::new(blobcask::DeviceSpec::Path(db.into()));
    o.create = false;
    o.cache_bytes = 0;
    if read_only {
        blobcask::Db::open_read_only(o).unwrap()
    } else {
        blobcask::Db::open(o).unwrap()
    }
}

#[test]
fn readers_share_the_lock_and_writers_wait_for_it() {
    let dir = tempfile::tempdir().unwrap();
    let db = fresh_store(dir.path(), "64M");
    ok(&["put", &db, "k", "v"]);
    // A reader holds the store: other readers run beside it, a writer is refused.
    let reader = hold(&db, true);
    assert_eq!(ok(&["get", &db, "k"]), "v\n");
    assert_eq!(ok(&["keys", &db]), "k\n");
    ok(&["check", &db]);
    ok(&["blobs", &db]);
    let o = run(&["put", &db, "k", "w"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(err(&o).contains("already open"), "{}", err(&o));
    assert!(
        err(&o).contains("--wait-lock"),
        "the hint names the flag: {}",
        err(&o)
    );
    let t = Instant::now();
    let o = run(&["put", &db, "k", "w", "--wait-lock=1.5"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        t.elapsed() >= Duration::from_millis(1400),
        "waited {:?}",
        t.elapsed()
    );
    // A writer that waits gets the store once the reader lets go.
    let waiting = bin()
        .args(["put", "--wait-lock", &db, "k", "w"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1000));
    drop(reader);
    let o = waiting.wait_with_output().unwrap();
    assert!(o.status.success(), "{}", err(&o));
    assert_eq!(ok(&["get", &db, "k"]), "w\n");
    // A writer holds it: readers are refused, or wait with --wait-lock.
    let writer = hold(&db, false);
    let o = run(&["get", &db, "k"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(err(&o).contains("already open"), "{}", err(&o));
    let waiting = bin()
        .args(["get", &db, "k", "--wait-lock=60"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1000));
    writer.close().unwrap();
    let o = waiting.wait_with_output().unwrap();
    assert!(o.status.success(), "{}", err(&o));
    assert_eq!(String::from_utf8_lossy(&o.stdout), "w\n");
}

#[test]
fn stats_show_each_figure_once_with_counters_that_outlive_the_process() {
    let dir = tempfile::tempdir().unwrap();
    let db = fresh_store(dir.path(), "64M");
    let lines: String = (0..2000).map(|i| format!("k{}\tv{i}\n", i % 100)).collect();
    let tsv = write_tsv(dir.path(), "in.tsv", &lines);
    ok(&["load", &db, &tsv]);
    let first: serde_json::Value = serde_json::from_str(&ok(&["stats", &db, "--json"])).unwrap();
    assert_eq!(first["merges"], 0);
    let user = first["user_bytes_written"].as_u64().unwrap();
    assert!(user > 0, "written by an earlier process: {first}");
    assert!(first["device_bytes_written"].as_u64().unwrap() >= user);
    ok(&["merge", &db]);
    let after: serde_json::Value = serde_json::from_str(&ok(&["stats", &db, "--json"])).unwrap();
    assert!(after["merges"].as_u64().unwrap() >= 1, "{after}");
    assert!(after["merged_bytes"].as_u64().unwrap() > 0, "{after}");
    assert_eq!(
        after["user_bytes_written"], user,
        "merge writes no user bytes"
    );
    let text = ok(&["stats", &db]);
    for figure in [
        "keys ",
        "merges ",
        "write amplification",
        "live bytes",
        "dead bytes",
    ] {
        assert_eq!(text.matches(figure).count(), 1, "{figure}: {text}");
    }
    assert!(
        text.contains(&format!("merges               {}", after["merges"])),
        "{text}"
    );
    // Ids are hex and data blobs are called data, as `blobs` calls them.
    for b in after["blobs"].as_array().unwrap() {
        assert!(b["id"].as_str().unwrap().starts_with("0x"), "{b}");
        assert_eq!(b["role"], "data");
        let id = b["id"].as_str().unwrap();
        let listed = ok(&["blobs", &db]);
        let row = listed.lines().find(|l| l.starts_with(id)).unwrap();
        assert!(row.contains(" data "), "{row}");
    }
}

#[test]
fn a_piped_shell_keeps_no_history() {
    let dir = tempfile::tempdir().unwrap();
    let db = fresh_store(dir.path(), "64M");
    let home = dir.path().join("home");
    std::fs::create_dir(&home).unwrap();
    let mut child = bin()
        .args(["shell", &db])
        .env("HOME", &home)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"put secret hunter2\nget secret\n")
        .unwrap();
    let o = child.wait_with_output().unwrap();
    assert_eq!(String::from_utf8_lossy(&o.stdout), "OK\nhunter2\n");
    assert!(std::fs::read_dir(&home).unwrap().next().is_none());
}
