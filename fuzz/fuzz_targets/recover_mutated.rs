//! Open a small store image after arbitrary byte edits (`cargo +nightly fuzz run recover_mutated`). The body is
//! `blobcask_tests::fuzz::recover_mutated`; the corpus in `corpus/recover_mutated/` is replayed by `cargo test`
//! (`tests/tests/fuzz_corpus.rs`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    blobcask_tests::fuzz::recover_mutated(data);
});
