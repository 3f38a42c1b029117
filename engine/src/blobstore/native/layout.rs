//! Device layout (`docs/blobstore-format.md`): where the masks, the md region and the data
//! clusters are, computed at init or from a loaded super block.

use super::mask::MASK_HEADER;
use super::superblock::{SuperBlock, SUPER_BLOCK_SIZE, VERSION};
use crate::blobstore::error::{Error, Result};
use crate::blobstore::{Bstype, InitOpts, INVALID_BLOB_ID};

/// Largest cluster count a mask length (u32 bits) and a cluster index (u32) allow.
const MAX_CLUSTERS: u64 = u32::MAX as u64;

/// Geometry of a blobstore.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    pub md_page_size: u32,
    pub cluster_size: u32,
    pub io_unit_size: u32,
    /// Store size in bytes (the super block's `size`).
    pub size: u64,
    pub total_clusters: u32,
    pub md_start: u32,
    pub md_len: u32,
    pub page_mask_start: u32,
    pub page_mask_len: u32,
    pub cluster_mask_start: u32,
    pub cluster_mask_len: u32,
    pub blobid_mask_start: u32,
    /// 0 on legacy stores without a blob-id mask.
    pub blobid_mask_len: u32,
    pub num_md_clusters: u32,
}

/// Md pages a mask of `bits` bits needs: `ceil((5 + ceil(bits / 8)) / page)`.
pub fn pages_for(bits: u64, md_page_size: u32) -> u32 {
    let bytes = MASK_HEADER + bits.div_ceil(8);
    bytes.div_ceil(u64::from(md_page_size)) as u32
}

impl Layout {
    /// The layout `spdk_bs_init` picks for a device of `dev_size` bytes and `block_size`
    /// blocks.
    pub fn for_init(dev_size: u64, block_size: u32, opts: &InitOpts) -> Result<Layout> {
        let io_unit_size = opts.io_unit_size.unwrap_or(block_size);
        if !io_unit_size.is_power_of_two()
            || !(512..=1 << 20).contains(&io_unit_size)
            || !io_unit_size.is_multiple_of(block_size)
        {
            return Err(Error::invalid(format!(
                "io unit {io_unit_size} is not a power of two of at least 512 and a multiple \
                 of the device's {block_size}-byte blocks"
            )));
        }
        let md_page_size = opts.md_page_size.unwrap_or(0).max(4096).max(io_unit_size);
        if !md_page_size.is_power_of_two() {
            return Err(Error::invalid(format!(
                "md page size {md_page_size} is not a power of two"
            )));
        }
        let cs = opts.cluster_size;
        if cs == 0 || !cs.is_multiple_of(4096) || cs < md_page_size {
            return Err(Error::invalid(format!(
                "cluster size {cs} must be a multiple of 4096 and at least {md_page_size}"
            )));
        }
        if !cs.is_multiple_of(md_page_size) || !cs.is_multiple_of(io_unit_size) {
            return Err(Error::invalid(format!(
                "cluster size {cs} is not a multiple of the md page size {md_page_size}"
            )));
        }
        let total = dev_size / u64::from(cs);
        if total == 0 {
            return Err(Error::NoSpace);
        }
        if total > MAX_CLUSTERS {
            return Err(Error::invalid(format!("{total} clusters do not fit u32")));
        }
        let total_clusters = total as u32;
        let md_len = opts.num_md_pages.unwrap_or(total_clusters);
        let page_mask_len = pages_for(u64::from(md_len), md_page_size);
        let cluster_mask_len = pages_for(total, md_page_size);
        let reserve = page_mask_len.max(cluster_mask_len);
        let blobid_mask_len = page_mask_len;
        let page_mask_start = 1u32;
        let cluster_mask_start = page_mask_start + page_mask_len;
        let blobid_mask_start = cluster_mask_start + reserve;
        let md_start = blobid_mask_start + blobid_mask_len;
        let l = Layout {
            md_page_size,
            cluster_size: cs,
            io_unit_size,
            size: dev_size,
            total_clusters,
            md_start,
            md_len,
            page_mask_start,
            page_mask_len,
            cluster_mask_start,
            cluster_mask_len,
            blobid_mask_start,
            blobid_mask_len,
            num_md_clusters: 0,
        };
        let num_md = l.md_clusters_needed();
        if num_md > total {
            return Err(Error::NoMdSpace(format!(
                "metadata needs {num_md} clusters, the device has {total}"
            )));
        }
        Ok(Layout {
            num_md_clusters: num_md as u32,
            ..l
        })
    }

    fn pages_per_cluster(&self) -> u64 {
        u64::from(self.cluster_size / self.md_page_size)
    }

    fn md_clusters_needed(&self) -> u64 {
        (u64::from(self.md_start) + u64::from(self.md_len)).div_ceil(self.pages_per_cluster())
    }

    /// The layout a loaded super block describes, validated against a device of `dev_size`
    /// bytes with `block_size` blocks. Any inconsistency is [`Error::NotABlobstore`].
    pub fn from_super(sb: &SuperBlock, dev_size: u64, block_size: u32) -> Result<Layout> {
        let bad = |d: String| Error::NotABlobstore(d);
        let md_page_size = if sb.md_page_size == 0 {
            4096
        } else {
            sb.md_page_size
        };
        if md_page_size < 4096 || !md_page_size.is_power_of_two() || md_page_size > 1 << 20 {
            return Err(bad(format!("md page size {md_page_size}")));
        }
        let io_unit_size = if sb.io_unit_size == 0 {
            4096
        } else {
            sb.io_unit_size
        };
        if io_unit_size < block_size
            || !io_unit_size.is_multiple_of(block_size)
            || io_unit_size > 1 << 20
        {
            return Err(bad(format!(
                "io unit {io_unit_size} does not fit the device's {block_size}-byte blocks"
            )));
        }
        let cs = sb.cluster_size;
        if cs == 0 || !cs.is_multiple_of(md_page_size) || !cs.is_multiple_of(io_unit_size) {
            return Err(bad(format!("cluster size {cs}")));
        }
        let size = if sb.size == 0 { dev_size } else { sb.size };
        if size > dev_size {
            return Err(bad(format!(
                "store size {size} is larger than the device ({dev_size})"
            )));
        }
        let total = size / u64::from(cs);
        if total == 0 || total > MAX_CLUSTERS {
            return Err(bad(format!("{total} clusters")));
        }
        let l = Layout {
            md_page_size,
            cluster_size: cs,
            io_unit_size,
            size,
            total_clusters: total as u32,
            md_start: sb.md_start,
            md_len: sb.md_len,
            page_mask_start: sb.used_page_mask_start,
            page_mask_len: sb.used_page_mask_len,
            cluster_mask_start: sb.used_cluster_mask_start,
            cluster_mask_len: sb.used_cluster_mask_len,
            blobid_mask_start: sb.used_blobid_mask_start,
            blobid_mask_len: sb.used_blobid_mask_len,
            num_md_clusters: 0,
        };
        let num_md = l.md_clusters_needed();
        if num_md > total {
            return Err(bad(format!(
                "metadata region ({} + {} pages) is larger than the store",
                l.md_start, l.md_len
            )));
        }
        let total_pages = size / u64::from(md_page_size);
        let region_ok = |start: u32, len: u32, bits: u64| {
            start >= 1
                && len >= pages_for(bits, md_page_size)
                && u64::from(start) + u64::from(len) <= u64::from(l.md_start)
        };
        if !region_ok(l.page_mask_start, l.page_mask_len, u64::from(l.md_len))
            || !region_ok(l.cluster_mask_start, l.cluster_mask_len, total)
            || (l.blobid_mask_len != 0
                && !region_ok(l.blobid_mask_start, l.blobid_mask_len, u64::from(l.md_len)))
            || u64::from(l.md_start) + u64::from(l.md_len) > total_pages
        {
            return Err(bad("mask regions or md region out of place".into()));
        }
        Ok(Layout {
            num_md_clusters: num_md as u32,
            ..l
        })
    }

    /// The super block init writes for this layout (`clean = 0`).
    pub fn init_super(&self, bstype: Bstype) -> SuperBlock {
        SuperBlock {
            version: VERSION,
            length: SUPER_BLOCK_SIZE as u32,
            clean: 0,
            super_blob: INVALID_BLOB_ID,
            cluster_size: self.cluster_size,
            used_page_mask_start: self.page_mask_start,
            used_page_mask_len: self.page_mask_len,
            used_cluster_mask_start: self.cluster_mask_start,
            used_cluster_mask_len: self.cluster_mask_len,
            md_start: self.md_start,
            md_len: self.md_len,
            bstype,
            used_blobid_mask_start: self.blobid_mask_start,
            used_blobid_mask_len: self.blobid_mask_len,
            size: self.size,
            io_unit_size: self.io_unit_size,
            md_page_size: self.md_page_size,
            reserved: vec![0; 3996],
        }
    }

    /// Device byte offset of md index `i`.
    pub fn md_offset(&self, i: u32) -> u64 {
        (u64::from(self.md_start) + u64::from(i)) * u64::from(self.md_page_size)
    }

    /// Device byte offset of absolute md page `p` (mask regions).
    pub fn page_offset(&self, p: u32) -> u64 {
        u64::from(p) * u64::from(self.md_page_size)
    }

    /// Device byte offset of cluster `c`.
    pub fn cluster_offset(&self, c: u32) -> u64 {
        u64::from(c) * u64::from(self.cluster_size)
    }

    /// Total md pages from page 0 through the md region.
    pub fn num_md_pages(&self) -> u32 {
        self.md_start + self.md_len
    }

    pub fn total_data_clusters(&self) -> u32 {
        self.total_clusters - self.num_md_clusters
    }

    /// Io units per cluster.
    pub fn units_per_cluster(&self) -> u64 {
        u64::from(self.cluster_size / self.io_unit_size)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn example_a_and_b() {
        let a = Layout::for_init(1 << 30, 512, &InitOpts::default()).unwrap();
        assert_eq!((a.total_clusters, a.md_len), (1024, 1024));
        assert_eq!((a.page_mask_start, a.page_mask_len), (1, 1));
        assert_eq!((a.cluster_mask_start, a.cluster_mask_len), (2, 1));
        assert_eq!((a.blobid_mask_start, a.blobid_mask_len), (3, 1));
        assert_eq!(a.md_start, 4);
        assert_eq!(a.num_md_clusters, 5);
        assert_eq!(a.total_data_clusters(), 1019);
        assert_eq!(a.io_unit_size, 512);
        let b = Layout::for_init(100 << 30, 4096, &InitOpts::default()).unwrap();
        assert_eq!(b.total_clusters, 102_400);
        assert_eq!(
            (b.page_mask_start, b.cluster_mask_start, b.blobid_mask_start),
            (1, 5, 9)
        );
        assert_eq!(b.md_start, 13);
        assert_eq!(b.num_md_clusters, 401);
        let sb = a.init_super(Bstype::default());
        assert_eq!(Layout::from_super(&sb, 1 << 30, 512).unwrap(), a);
    }

    #[test]
    fn init_rejects() {
        let o = |cs| InitOpts {
            cluster_size: cs,
            ..InitOpts::default()
        };
        assert!(matches!(
            Layout::for_init(1 << 19, 4096, &o(1 << 20)),
            Err(Error::NoSpace)
        ));
        assert!(Layout::for_init(1 << 30, 4096, &o(1000)).is_err());
        let io = |u| InitOpts {
            io_unit_size: Some(u),
            ..InitOpts::default()
        };
        // An io unit below the device block, not a power of two, or below 512.
        assert!(Layout::for_init(1 << 30, 4096, &io(512)).is_err());
        assert!(Layout::for_init(1 << 30, 512, &io(1536)).is_err());
        assert!(Layout::for_init(1 << 30, 512, &io(256)).is_err());
        let l = Layout::for_init(1 << 30, 512, &io(4096)).unwrap();
        assert_eq!((l.io_unit_size, l.md_page_size), (4096, 4096));
        let l = Layout::for_init(1 << 30, 4096, &io(8192)).unwrap();
        assert_eq!((l.io_unit_size, l.md_page_size), (8192, 8192));
        assert!(Layout::for_init(1 << 30, 4096, &o(0)).is_err());
        let many = InitOpts {
            num_md_pages: Some(1 << 20),
            ..o(1 << 20)
        };
        assert!(matches!(
            Layout::for_init(8 << 20, 4096, &many),
            Err(Error::NoMdSpace(_))
        ));
    }

    #[test]
    fn loads_reject_bad_geometry() {
        let a = Layout::for_init(1 << 30, 4096, &InitOpts::default()).unwrap();
        let sb = a.init_super(Bstype::default());
        assert!(Layout::from_super(&sb, 1 << 29, 4096).is_err());
        let mut s = sb.clone();
        s.md_len = u32::MAX;
        assert!(Layout::from_super(&s, 1 << 30, 4096).is_err());
        let mut s = sb.clone();
        s.cluster_size = 0;
        assert!(Layout::from_super(&s, 1 << 30, 4096).is_err());
        let mut s = sb.clone();
        s.used_cluster_mask_len = 0;
        assert!(Layout::from_super(&s, 1 << 30, 4096).is_err());
    }
}
