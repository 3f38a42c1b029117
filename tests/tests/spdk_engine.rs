//! The generic engine suites ([`blobcask_tests::suite`]) on real SPDK (`--features spdk`):
//! once on a malloc bdev and once on an aio bdev over a file. A kill abandons the SPDK
//! blobstore without unloading it; the reopen loads the same bdev again, so SPDK's own
//! dirty-load recovery runs beneath the engine's.
//!
//! Without the feature, or when SPDK cannot start here, every test prints
//! `skipped: <why>` and passes.

#[cfg(not(feature = "spdk"))]
#[test]
fn spdk_engine_suites() {
    println!("skipped: built without the `spdk` feature (cargo test --features spdk)");
}

#[cfg(feature = "spdk")]
mod malloc {
    use blobcask_tests::backend::{spdk_available, SpdkMalloc};
    blobcask_tests::engine_suite!(spdk_available().err(), SpdkMalloc::new);
}

#[cfg(feature = "spdk")]
mod aio {
    use blobcask_tests::backend::{spdk_available, SpdkAio};
    blobcask_tests::engine_suite!(spdk_available().err(), SpdkAio::new);
}
