//! What every CLI suite needs: run the `blobcask` binary, demand success or a refusal, make a
//! small store.

// Each suite uses a different part of this module.
#![allow(dead_code)]

use std::io::Write as _;
use std::path::Path;
use std::process::{Command, Output, Stdio};

/// The binary under test, with a `HOME` of its own: history and progress must never depend on
/// the caller's home or terminal.
pub fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_blobcask"));
    c.env("HOME", std::env::temp_dir());
    c
}

pub fn run(args: &[&str]) -> Output {
    bin().args(args).output().expect("run blobcask")
}

/// Run with `input` on stdin.
pub fn run_in(args: &[&str], input: &[u8]) -> Output {
    let mut child = bin()
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run blobcask");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(input)
        .expect("write stdin");
    child.wait_with_output().expect("wait for blobcask")
}

/// Stdout of a run that must succeed.
pub fn ok_in(args: &[&str], input: &[u8]) -> Vec<u8> {
    let o = run_in(args, input);
    assert!(
        o.status.success(),
        "blobcask {args:?} failed ({:?}): {}",
        o.status.code(),
        err(&o)
    );
    o.stdout
}

/// Stdout (as text) of a run that must succeed.
pub fn ok(args: &[&str]) -> String {
    let o = run(args);
    assert!(
        o.status.success(),
        "blobcask {args:?} failed ({:?}): {}",
        o.status.code(),
        err(&o)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn err(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Exit code 2 with an error naming `word`.
pub fn refused(args: &[&str], word: &str) {
    let o = run(args);
    let e = err(&o);
    assert_eq!(o.status.code(), Some(2), "blobcask {args:?}: {e}");
    assert!(e.contains(word), "blobcask {args:?}: {e}");
}

/// A new store of `size` (64 KiB clusters, 2 shards) in `dir`; returns its path.
pub fn fresh_store(dir: &Path, size: &str) -> String {
    let img = dir.join("store.img");
    let p = img.to_str().expect("utf-8 path").to_string();
    let out = ok(&[
        "format",
        &p,
        "--size",
        size,
        "--cluster-size",
        "64K",
        "--shards",
        "2",
    ]);
    assert!(out.contains("formatted"), "{out}");
    p
}

/// SHA-256 of a file: proof that a command left it byte for byte as it was.
pub fn sha(p: impl AsRef<Path>) -> Vec<u8> {
    use sha2::Digest;
    sha2::Sha256::digest(std::fs::read(p).expect("read file")).to_vec()
}
