//! Decode arbitrary bytes as a salted record log (`cargo +nightly fuzz run record_decode`). The body is
//! `blobcask_tests::fuzz::record_decode`; the corpus in `corpus/record_decode/` is replayed by `cargo test`
//! (`tests/tests/fuzz_corpus.rs`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    blobcask_tests::fuzz::record_decode(data);
});
