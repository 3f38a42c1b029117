//! The load path driven by arbitrary bytes: the body of the `blobstore_load` cargo-fuzz
//! target (`fuzz/`), also run over its corpus by `cargo test`. Whatever the bytes, loading,
//! opening and reading every blob, and a small write sequence must return errors, never
//! panic, hang or allocate without bound.

use super::{NativeBlobStore, NativeChannel};
use crate::blobstore::{Blob, BlobStore, CreateOpts, IoChannel, LoadOpts};
use crate::device::MemoryDevice;

/// Inputs are placed at the start of a zeroed device of at least this many bytes, so a
/// corpus file only needs the image's non-zero prefix. An input starting with
/// [`SPARSE_MAGIC`] is instead a list of chunks `offset u32 LE | len u16 LE | bytes`, each
/// copied to its byte offset (how the seed corpus stays a few hundred bytes per image).
pub const MIN_DEVICE: usize = 64 << 10;
/// Inputs longer than this are truncated (keeps each run fast).
pub const MAX_DEVICE: usize = 4 << 20;

/// Magic of the sparse input form.
pub const SPARSE_MAGIC: &[u8; 8] = b"BCSPARSE";

/// The device image an input stands for.
pub fn image_of(data: &[u8]) -> Vec<u8> {
    let Some(mut rest) = data.strip_prefix(SPARSE_MAGIC) else {
        let n = data
            .len()
            .clamp(MIN_DEVICE, MAX_DEVICE)
            .next_multiple_of(4096);
        let mut img = vec![0u8; n];
        let k = data.len().min(n);
        img[..k].copy_from_slice(&data[..k]);
        return img;
    };
    let mut img = vec![0u8; MIN_DEVICE];
    while rest.len() >= 6 {
        let off = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
        let len = usize::from(u16::from_le_bytes([rest[4], rest[5]]));
        rest = &rest[6..];
        let len = len.min(rest.len());
        let end = off.saturating_add(len);
        if end <= MAX_DEVICE {
            if end > img.len() {
                img.resize(end.next_multiple_of(4096), 0);
            }
            img[off..end].copy_from_slice(&rest[..len]);
        }
        rest = &rest[len..];
    }
    img
}

/// The sparse form of an image: its non-zero runs (gaps under 16 zero bytes are kept).
pub fn sparse_of(img: &[u8]) -> Vec<u8> {
    let mut out = SPARSE_MAGIC.to_vec();
    let mut i = 0;
    while i < img.len() {
        if img[i] == 0 {
            i += 1;
            continue;
        }
        let start = i;
        let mut zeros = 0;
        while i < img.len() && zeros < 16 && i - start < 0xFFFF {
            zeros = if img[i] == 0 { zeros + 1 } else { 0 };
            i += 1;
        }
        let end = i - zeros;
        out.extend_from_slice(&(start as u32).to_le_bytes());
        out.extend_from_slice(&((end - start) as u16).to_le_bytes());
        out.extend_from_slice(&img[start..end]);
    }
    out
}

/// Load `data` as a device image (both the normal and the forced-recovery path), then open
/// and read every blob, then create, write and unload. Returns how many blobs opened.
pub fn load_arbitrary(data: &[u8]) -> usize {
    let img = image_of(data);
    let mut opened = 0;
    for force_recover in [false, true] {
        let Ok(dev) = MemoryDevice::from_bytes(img.clone(), 4096) else {
            return opened;
        };
        let opts = LoadOpts {
            force_recover,
            ..LoadOpts::default()
        };
        if let Ok(store) = pollster::block_on(NativeBlobStore::load(dev, opts)) {
            opened += pollster::block_on(exercise(&store));
        }
    }
    opened
}

async fn exercise(store: &NativeBlobStore<MemoryDevice>) -> usize {
    let Ok(ids) = store.blob_ids().await else {
        return 0;
    };
    let Ok(ch) = store.channel() else {
        return 0;
    };
    let mut opened = 0;
    for id in ids.into_iter().take(64) {
        let Ok(blob) = store.open(id).await else {
            continue;
        };
        opened += 1;
        read_some(store, &ch, &blob).await;
        let _ = store.set_xattr(&blob, "fuzz", b"x").await;
        let _ = store.resize(&blob, blob.num_clusters() + 1).await;
        let _ = store.close(blob).await;
    }
    if let Ok(id) = store
        .create(CreateOpts {
            num_clusters: 1,
            thin_provision: true,
            ..CreateOpts::default()
        })
        .await
    {
        if let Ok(blob) = store.open(id).await {
            let buf = vec![0x5Au8; store.io_unit_size() as usize];
            let _ = ch.write(&blob, 0, &buf).await;
            let _ = store.close(blob).await;
        }
        let _ = store.delete(id).await;
    }
    drop(ch);
    let _ = store.unload().await;
    opened
}

async fn read_some(
    store: &NativeBlobStore<MemoryDevice>,
    ch: &NativeChannel<MemoryDevice>,
    blob: &super::NativeBlob,
) {
    let units = blob.num_io_units().min(64);
    let mut buf = vec![0u8; (units * u64::from(store.io_unit_size())) as usize];
    let _ = ch.read(blob, 0, &mut buf).await;
    let _ = store.xattr_names(blob).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sparse_round_trip() {
        let mut img = vec![0u8; MIN_DEVICE];
        img[5] = 1;
        img[4092..4100].copy_from_slice(&[1, 2, 3, 4, 5, 6, 7, 8]);
        img[40000] = 9;
        let s = sparse_of(&img);
        assert!(s.len() < 64);
        assert_eq!(image_of(&s), img);
        assert_eq!(
            image_of(b"BCSPARSE\xff\xff\xff\xff\x05\x00ab").len(),
            MIN_DEVICE
        );
    }
}
