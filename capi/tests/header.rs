//! `include/blobcask.h` is what cbindgen makes of `src/lib.rs` today: a stale header fails
//! here. `BLOBCASK_BLESS=1 cargo test -p blobcask-capi --test header` writes it anew.
#![allow(clippy::unwrap_used)] // test code

use std::path::Path;

#[test]
fn the_committed_header_is_current() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let config = cbindgen::Config::from_file(dir.join("cbindgen.toml")).unwrap();
    let mut out = Vec::new();
    cbindgen::Builder::new()
        .with_crate(dir)
        .with_config(config)
        .generate()
        .expect("cbindgen generates the header")
        .write(&mut out);
    let path = dir.join("include/blobcask.h");
    if std::env::var_os("BLOBCASK_BLESS").is_some() {
        std::fs::write(&path, &out).unwrap();
    }
    let committed = std::fs::read(&path).unwrap_or_default();
    assert!(
        committed == out,
        "{} is stale: run `BLOBCASK_BLESS=1 cargo test -p blobcask-capi --test header`",
        path.display()
    );
}
