//! Rebuilding a damaged super block from the layout (used only by `repair`).
//!
//! Every field of the super block follows from the device size, its block size and the
//! cluster size `init` was given ([`Layout::for_init`]; the md page count is SPDK's "one per
//! cluster" default), except the super blob's id and the clean flag. So each power-of-two
//! cluster size is tried in turn; a layout fits when the start of its md region holds a valid
//! root md page carrying the caller's super-blob xattr and no root maps a cluster outside its
//! data area. Small devices give several cluster sizes the same md start, so the mask pages
//! decide (a clean unload wrote their bit counts); without them, only a sole fit is taken.
//! The rebuilt super block says `clean = 0`, so the load that follows rebuilds the masks from
//! the md pages instead of trusting mask pages written under a super block nobody vouches for.

use super::blobmd::{blob_id, parse_chain};
use super::layout::Layout;
use super::mask::MaskKind;
use super::mdpage::{MdPage, NO_NEXT};
use super::store::read_md_page;
use super::superblock::SuperBlock;
use crate::blobstore::error::{Error, Result};
use crate::blobstore::{Bstype, InitOpts};
use crate::device::Device;

/// Md pages searched for the super blob (the engine creates it first, at md index 0).
const SEARCH_PAGES: u32 = 64;

/// A super block for `dev` whose super blob is the root page with xattr `marker` = (name,
/// value), or `NotABlobstore` when no cluster size lays the device out around such a page.
pub async fn super_block_from_layout<D: Device>(
    dev: &D,
    bstype: Bstype,
    marker: (&[u8], &[u8]),
) -> Result<SuperBlock> {
    let mut fits = Vec::new();
    for shift in 12..=30u32 {
        let opts = InitOpts {
            cluster_size: 1 << shift,
            bstype,
            // What the engine formats with unless told otherwise (the io unit leaves no trace
            // in the layout; a store formatted with smaller units is rebuilt with 4 KiB ones).
            io_unit_size: Some(dev.block_size().max(4096)),
            ..InitOpts::default()
        };
        let Ok(l) = Layout::for_init(dev.size(), dev.block_size(), &opts) else {
            continue;
        };
        if let Some(id) = find_marked_root(dev, &l, marker).await {
            fits.push((masks_match(dev, &l).await, l, id));
        }
    }
    // Mask pages written by a clean unload state the md page and cluster counts outright;
    // without them, only a layout that is the sole fit is trusted.
    let pick = match fits.iter().position(|f| f.0) {
        Some(i) => Some(fits.swap_remove(i)),
        None if fits.len() == 1 => fits.pop(),
        None => None,
    };
    let Some((_, l, id)) = pick else {
        return Err(Error::NotABlobstore(format!(
            "the super block cannot be rebuilt: {} cluster sizes fit the md region",
            fits.len()
        )));
    };
    let mut sb = l.init_super(bstype);
    sb.super_blob = id;
    Ok(sb)
}

/// Whether the md-page and cluster mask pages of `l` carry exactly its bit counts.
async fn masks_match<D: Device>(dev: &D, l: &Layout) -> bool {
    let mut b = vec![0u8; l.md_page_size as usize];
    for (start, kind, bits) in [
        (l.page_mask_start, MaskKind::MdPages, l.md_len),
        (l.cluster_mask_start, MaskKind::Clusters, l.total_clusters),
    ] {
        if dev.read(l.page_offset(start), &mut b).await.is_err()
            || b[0] != kind as u8
            || u32::from_le_bytes([b[1], b[2], b[3], b[4]]) != bits
        {
            return false;
        }
    }
    true
}

/// The marked root's id, if the layout `l` explains the md region: the marked root lies in its
/// first pages, and every valid root page maps only clusters of the data area. (Small devices
/// give many cluster sizes the same `md_start`; a wrong one maps clusters into metadata or
/// past the end.)
async fn find_marked_root<D: Device>(dev: &D, l: &Layout, marker: (&[u8], &[u8])) -> Option<u64> {
    let mut found = None;
    for i in 0..l.md_len {
        let b = read_md_page(dev, l, i).await.ok()?;
        if !MdPage::crc_ok(&b) {
            continue;
        }
        let Ok(p) = MdPage::decode(&b, l.md_offset(i)) else {
            continue;
        };
        if p.sequence_num != 0 || p.id != blob_id(i) || p.next != NO_NEXT {
            continue;
        }
        let id = p.id;
        let parsed = parse_chain(id, &[p], l.total_clusters, l.md_len, true).ok()?;
        let md = parsed.md;
        if md
            .clusters
            .iter()
            .any(|&c| c != 0 && (c < l.num_md_clusters || c >= l.total_clusters))
        {
            return None;
        }
        if found.is_none()
            && i < SEARCH_PAGES
            && md
                .xattrs
                .iter()
                .any(|(k, v)| k == marker.0 && v == marker.1)
        {
            found = Some(id);
        }
        if found.is_none() && i >= SEARCH_PAGES {
            return None;
        }
    }
    found
}
