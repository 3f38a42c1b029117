//! Decode arbitrary bytes as a catalog blob (`cargo +nightly fuzz run catalog_decode`). The
//! body is `blobcask_tests::fuzz::catalog_decode`; the corpus in `corpus/catalog_decode/` is
//! replayed by `cargo test` (`tests/tests/fuzz_corpus.rs`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    blobcask_tests::fuzz::catalog_decode(data);
});
