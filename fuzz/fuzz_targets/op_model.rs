//! Random op sequence with a fault countdown, checked against the oracle (`cargo +nightly fuzz run op_model`). The body is
//! `blobcask_tests::fuzz::op_model`; the corpus in `corpus/op_model/` is replayed by `cargo test`
//! (`tests/tests/fuzz_corpus.rs`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    blobcask_tests::fuzz::op_model(data);
});
