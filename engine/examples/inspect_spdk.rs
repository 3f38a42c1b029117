//! Read any SPDK blobstore (here a golden image made by real SPDK) without changing it:
//! super block facts, every blob with its size, flags and xattrs.
//!
//!     cargo run -p blobcask --example inspect_spdk -- tests/fixtures/spdk/basic.img

use blobcask::blobstore::native::NativeBlobStore;
use blobcask::blobstore::{Blob, BlobStore, LoadOpts};
use blobcask::device::{FileDevice, FileOptions, Overlay};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let path = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "tests/fixtures/spdk/basic.img".into());
    let ro = FileOptions {
        read_only: true,
        ..FileOptions::default()
    };
    // The overlay keeps whatever a load writes (a dirty store's recovery) in memory.
    let dev = Overlay::new(FileDevice::open_with(&path, &ro)?);
    let store = pollster::block_on(NativeBlobStore::load(dev, LoadOpts::default()))?;
    println!(
        "{path}: bstype {:?}, io unit {} B, cluster {} KiB, {} of {} clusters free",
        store.bstype(),
        store.io_unit_size(),
        store.cluster_size() / 1024,
        store.free_clusters(),
        store.total_data_clusters()
    );
    for id in pollster::block_on(store.blob_ids())? {
        let blob = pollster::block_on(store.open(id))?;
        let names = pollster::block_on(store.xattr_names(&blob))?;
        println!(
            "blob {id:#x}: {} clusters ({} allocated){}{} xattrs {names:?}",
            blob.num_clusters(),
            blob.num_allocated_clusters(),
            if blob.is_thin() { ", thin" } else { "" },
            if blob.is_read_only() {
                ", read-only"
            } else {
                ""
            },
        );
        pollster::block_on(store.close(blob))?;
    }
    Ok(())
}
