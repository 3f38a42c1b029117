//! `blobcask grow`: extend an image file and grow the blobstore on it to the new size.

use std::path::Path;
use std::process::ExitCode;

use blobcask::blobstore::native::NativeBlobStore;
use blobcask::blobstore::{BlobStore, LoadOpts};
use blobcask::device::{Device, FileDevice};

use crate::CliResult;

/// Extend `path` to `size` (an image file), load its blobstore, grow it to the device's size
/// and unload. Anything refused leaves the image as it was: the file is cut back to its old
/// length when the grow fails after the extension.
pub fn grow(path: &Path, size: Option<u64>) -> CliResult {
    let meta = std::fs::metadata(path)?;
    let old_len = meta.len();
    if meta.is_file() {
        if let Some(s) = size.filter(|&s| s < old_len) {
            return Err(blobcask::Error::invalid(format!(
                "{} is {old_len} bytes; a blobstore cannot shrink to {s}",
                path.display()
            ))
            .into());
        }
    } else if size.is_some() {
        return Err(blobcask::Error::invalid(
            "--size applies to image files; a block device grows to its own size",
        )
        .into());
    }
    let extended = meta.is_file() && size.is_some_and(|s| s > old_len);
    if let Some(s) = size {
        FileDevice::extend(path, s)?;
    }
    let res = grow_store(path);
    if res.is_err() && extended {
        // Loading wrote nothing, so the old length restores the old image exactly.
        let f = std::fs::OpenOptions::new().write(true).open(path)?;
        f.set_len(old_len)?;
        f.sync_all()?;
    }
    let (old, new, total, free) = res?;
    if old == new {
        println!("{}: already {new} bytes, nothing to grow", path.display());
    } else {
        println!(
            "grew {} from {old} to {new} bytes: {total} data clusters ({free} free)",
            path.display()
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// (old size, new size, data clusters, free clusters).
fn grow_store(path: &Path) -> Result<(u64, u64, u64, u64), blobcask::Error> {
    let dev = FileDevice::open(path)?;
    let dev_size = dev.size();
    let bs = pollster::block_on(NativeBlobStore::load(dev, LoadOpts::default()))?;
    let old = bs.layout().size;
    // SPDK's device is its bdev, whose blocks are the io unit: a partial one is not in it.
    let unit = u64::from(bs.io_unit_size());
    let new = dev_size / unit * unit;
    if new == old {
        // Nothing to do; dropping the store unloaded writes nothing (the load wrote nothing).
        return Ok((old, new, bs.total_data_clusters(), bs.free_clusters()));
    }
    // A refused grow drops the store without unloading: the load wrote nothing, nor does this.
    pollster::block_on(bs.grow(new))?;
    let (total, free) = (bs.total_data_clusters(), bs.free_clusters());
    pollster::block_on(bs.unload())?;
    Ok((old, new, total, free))
}
