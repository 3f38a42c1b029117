//! Blobstore consistency from public APIs only: load a copy of an image and check that the
//! cluster mask equals what the blobs' metadata owns (md clusters plus the union of every
//! blob's cluster map): no leaked cluster, no cluster owned twice, no owned cluster free. A
//! second load with `force_recover` rebuilds the masks from the md pages; both loads must
//! agree, which for a clean image proves the persisted masks right.

use std::collections::BTreeMap;
use std::sync::Arc;

use blobcask::blobstore::native::NativeBlobStore;
use blobcask::blobstore::{BlobId, BlobStore, LoadOpts};
use blobcask::device::SimDevice;

/// What a consistent image holds.
#[derive(Debug, Clone, Default)]
pub struct Fsck {
    pub blobs: usize,
    pub used_clusters: usize,
    pub clean: bool,
}

/// Load a copy of `image` (`force_recover` as given) and check its masks.
fn one_load(image: &[u8], force_recover: bool) -> Result<(Vec<u32>, Vec<u32>, Fsck), String> {
    let dev = SimDevice::from_image(image.to_vec(), 4096, 0).map_err(|e| e.to_string())?;
    let clean = blobcask::blobstore::native::superblock::SuperBlock::decode(
        &image[..4096.min(image.len())],
    )
    .map(|sb| sb.is_clean())
    .unwrap_or(false);
    let store = pollster::block_on(NativeBlobStore::load(
        Arc::new(dev),
        LoadOpts {
            force_recover,
            ..LoadOpts::default()
        },
    ))
    .map_err(|e| format!("load (force_recover={force_recover}) failed: {e}"))?;
    let md_clusters = store.layout().num_md_clusters;
    let ids = store
        .block_on(store.blob_ids())
        .map_err(|e| format!("blob_ids: {e}"))?;
    let mut owner: BTreeMap<u32, BlobId> = BTreeMap::new();
    for c in 0..md_clusters {
        owner.insert(c, 0);
    }
    for &id in &ids {
        let blob = store
            .block_on(store.open(id))
            .map_err(|e| format!("open blob {id:#x}: {e}"))?;
        for c in store.cluster_map(&blob) {
            if c == 0 {
                continue;
            }
            if let Some(prev) = owner.insert(c, id) {
                return Err(format!(
                    "cluster {c} is owned twice: by {prev:#x} and by blob {id:#x}"
                ));
            }
        }
        store
            .block_on(store.close(blob))
            .map_err(|e| format!("close blob {id:#x}: {e}"))?;
    }
    let used = store.used_clusters();
    let owned: Vec<u32> = owner.keys().copied().collect();
    if used != owned {
        let leaked: Vec<u32> = used
            .iter()
            .filter(|c| !owner.contains_key(c))
            .copied()
            .collect();
        let free_but_owned: Vec<(u32, BlobId)> = owner
            .iter()
            .filter(|(c, _)| used.binary_search(c).is_err())
            .map(|(c, b)| (*c, *b))
            .collect();
        return Err(format!(
            "cluster mask disagrees with the blobs (force_recover={force_recover}): leaked \
             {leaked:?}, owned but free {free_but_owned:?}"
        ));
    }
    let md = store.used_md_pages();
    if md.len() < ids.len() {
        return Err(format!(
            "{} blobs but only {} md pages in use",
            ids.len(),
            md.len()
        ));
    }
    let report = Fsck {
        blobs: ids.len(),
        used_clusters: used.len(),
        clean,
    };
    Ok((used, md, report))
}

/// Check `image` (see the module docs). Loading happens on copies; `image` is untouched.
pub fn check(image: &[u8]) -> Result<Fsck, String> {
    let (c1, m1, rep) = one_load(image, false)?;
    if rep.clean {
        let (c2, m2, _) = one_load(image, true)?;
        if c1 != c2 {
            return Err(format!(
                "persisted cluster mask {c1:?} differs from the one rebuilt from metadata {c2:?}"
            ));
        }
        if m1 != m2 {
            return Err(format!(
                "persisted md page mask {m1:?} differs from the one rebuilt from metadata {m2:?}"
            ));
        }
    }
    Ok(rep)
}
