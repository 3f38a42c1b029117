//! The generic engine suites ([`blobcask_tests::suite`]) on the native backend over a memory
//! device; `spdk_engine.rs` runs the same list on SPDK bdevs.

use blobcask_tests::backend::NativeMem;

blobcask_tests::engine_suite!(None::<String>, NativeMem::new);
