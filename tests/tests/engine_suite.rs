//! The generic engine suites ([`blobcask_tests::suite`]) on the native backend over a memory
//! device; `spdk_engine.rs` runs the same list on SPDK bdevs. `io512` runs most of them again
//! on a blobstore of 512-byte io units.

use blobcask_tests::backend::NativeMem;

blobcask_tests::engine_suite!(None::<String>, NativeMem::new);

mod io512 {
    use blobcask_tests::backend::NativeMem;

    blobcask_tests::engine_suite!(@each None::<String>, NativeMem::io512;
        put_get_delete_contains,
        limits_give_clear_errors,
        batches_and_reopen_after_clean_close,
        async_variants_complete,
        every_read_path_agrees_cold_and_warm,
        merge_keeps_live_data_and_frees_space,
        a_full_device_says_full_and_keeps_serving_reads,
        concurrent_writers_readers_and_merges_match_the_model,
        synced_writes_survive_a_kill_exactly,
        unsynced_writes_recover_as_a_per_shard_prefix,
        deletes_never_come_back_across_merges_and_kills,
        a_kill_anywhere_inside_merge_loses_nothing
    );
}
