//! Load arbitrary bytes as a blobstore device image (`cargo +nightly fuzz run blobstore_load`).
//! The corpus in `corpus/blobstore_load/` is replayed by `cargo test` (test
//! `blobstore_fuzz_corpus` in the `blobcask-tests` crate).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    blobcask::blobstore::native::fuzz::load_arbitrary(data);
});
