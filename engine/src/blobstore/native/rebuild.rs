//! Rebuilding a damaged super block from the layout (used only by `repair`).
//!
//! Every field of the super block follows from the device size, its block size and the
//! cluster size `init` was given ([`Layout::for_init`]; the md page count is SPDK's "one per
//! cluster" default), except the super blob's id and the clean flag. So each power-of-two
//! cluster size is tried in turn, and the one layout is accepted under which the start of the
//! md region holds a valid root md page carrying the caller's super-blob xattr. The rebuilt
//! super block says `clean = 0`, so the load that follows rebuilds the masks from the md
//! pages instead of trusting mask pages written under a super block nobody can vouch for.

use super::blobmd::{blob_id, parse_chain};
use super::layout::Layout;
use super::mdpage::{MdPage, NO_NEXT};
use super::store::read_md_page;
use super::superblock::SuperBlock;
use crate::blobstore::{Bstype, InitOpts};
use crate::device::Device;
use crate::error::{Error, Result};

/// Md pages searched for the super blob (the engine creates it first, at md index 0).
const SEARCH_PAGES: u32 = 64;

/// A super block for `dev` whose super blob is the root page with xattr `marker` = (name,
/// value), or `NotABlobstore` when no cluster size lays the device out around such a page.
pub async fn super_block_from_layout<D: Device>(
    dev: &D,
    bstype: Bstype,
    marker: (&[u8], &[u8]),
) -> Result<SuperBlock> {
    for shift in 12..=30u32 {
        let opts = InitOpts {
            cluster_size: 1 << shift,
            bstype,
            ..InitOpts::default()
        };
        let Ok(l) = Layout::for_init(dev.size(), dev.block_size(), &opts) else {
            continue;
        };
        if let Some(id) = find_marked_root(dev, &l, marker).await {
            let mut sb = l.init_super(bstype);
            sb.super_blob = id;
            return Ok(sb);
        }
    }
    Err(Error::NotABlobstore(
        "no cluster size lays the device out around a super blob: the super block cannot be \
         rebuilt"
            .into(),
    ))
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
