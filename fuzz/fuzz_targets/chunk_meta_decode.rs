//! Decode arbitrary bytes as chunk metadata: key, chunk header, segment value (`cargo +nightly
//! fuzz run chunk_meta_decode`). The body is `blobcask_tests::fuzz::chunk_meta_decode`; the
//! corpus in `corpus/chunk_meta_decode/` is replayed by `cargo test`
//! (`tests/tests/fuzz_corpus.rs`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    blobcask_tests::fuzz::chunk_meta_decode(data);
});
