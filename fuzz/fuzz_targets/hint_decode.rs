//! Decode arbitrary bytes as a hint / keydir snapshot (`cargo +nightly fuzz run hint_decode`). The body is
//! `blobcask_tests::fuzz::hint_decode`; the corpus in `corpus/hint_decode/` is replayed by `cargo test`
//! (`tests/tests/fuzz_corpus.rs`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    blobcask_tests::fuzz::hint_decode(data);
});
