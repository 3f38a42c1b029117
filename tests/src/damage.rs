//! The small store the damage suites (`damage_open`, `damage_masks`) build and break: two
//! shards, 64 KiB clusters and 128 KiB blobs, so a few hundred keys spread over many blobs
//! and md pages; no automatic merge, so the layout is what the suite wrote.

use blobcask::{DeviceSpec, MergeOptions, Options, SyncPolicy};

/// Options of an existing damage-suite store on `device`.
pub fn options(device: DeviceSpec) -> Options {
    Options {
        device,
        create: false,
        device_size: 16 << 20,
        cluster_size: 64 << 10,
        shards: 2,
        max_blob_size: 128 << 10,
        sync: SyncPolicy::Never,
        merge: MergeOptions {
            auto: false,
            ..MergeOptions::default()
        },
        max_key_size: 64,
        max_value_size: 16 << 10,
        cache_bytes: 0,
        ..Options::default()
    }
}

/// The suites' key names.
pub fn key(i: usize) -> Vec<u8> {
    format!("key{i:04}").into_bytes()
}
