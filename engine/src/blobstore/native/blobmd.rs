//! One blob's metadata in memory, its serialization into an md chain (`docs/blobstore-format.md`) and
//! its parsing back.
//!
//! Writer order, as SPDK's: root page starts with FLAGS; then every user xattr, then every
//! internal xattr, each whole (a new page when one does not fit); then the cluster map as
//! EXTENT_TABLE entries (extent-table mode) or EXTENT_RLE runs, starting a new page when fewer
//! than 13 bytes remain. Matching SPDK byte for byte requires the same packing, including two
//! quirks we reproduce on purpose: an extent table with no entries is omitted when fewer than
//! 13 bytes remain on the last page, and a table descriptor with zero entries is
//! emitted when 13..21 bytes remain before continuing on a new page.

use super::descriptor::{
    Descriptor, RleRun, TableEntry, CLUSTERS_PER_EXTENT_PAGE, MIN_EXTENT_DESC, TYPE_EXTENT_PAGE,
    TYPE_EXTENT_RLE, TYPE_EXTENT_TABLE, TYPE_FLAGS, TYPE_XATTR, TYPE_XATTR_INTERNAL,
};
use super::mdpage::{walk, MdPage, DESC_AREA, NO_NEXT};
use crate::blobstore::error::{Error, Result};

/// `invalid_flags` bit: thin provisioned.
pub const FLAG_THIN_PROV: u64 = 0x1;
/// `invalid_flags` bit: blob has internal xattrs.
pub const FLAG_INTERNAL_XATTR: u64 = 0x2;
/// `invalid_flags` bit: created with an extent table.
pub const FLAG_EXTENT_TABLE: u64 = 0x4;
/// `invalid_flags` bit: clone of an external snapshot.
pub const FLAG_EXTERNAL_SNAPSHOT: u64 = 0x8;
const INVALID_KNOWN: u64 = 0xF;
/// `data_ro_flags` bit: read-only blob.
pub const FLAG_READ_ONLY: u64 = 0x1;
const DATA_RO_KNOWN: u64 = 0x1;
/// `md_ro_flags` clear-method bits.
pub const MD_RO_CLEAR_MASK: u64 = 0x3;
const MD_RO_KNOWN: u64 = 0x3;

/// Internal xattr of a thin clone: its parent snapshot's blob id (u64, little-endian).
pub const XATTR_SNAPSHOT: &[u8] = b"SNAP";
/// Internal xattr of a snapshot whose creation has not finished (value: the original's id).
pub const XATTR_SNAPSHOT_IN_PROGRESS: &[u8] = b"SNAPTMP";
/// Internal xattr of a snapshot being deleted into its clone (value: the clone's id).
pub const XATTR_SNAPSHOT_PENDING_REMOVAL: &[u8] = b"SNAPRM";
/// Internal xattr of an esnap clone: the external snapshot's id (opaque bytes).
pub const XATTR_EXTERNAL_SNAPSHOT_ID: &[u8] = b"EXTSNAP";

/// What a blob reads where it has no cluster of its own (SPDK's `back_bs_dev`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parent {
    /// Nothing: a thick blob, or a thin blob reading zeroes.
    None,
    /// A thin clone of the snapshot blob with this id.
    Snapshot(u64),
    /// An esnap clone of the external snapshot named by these bytes.
    External(Vec<u8>),
}

/// Largest blob size in clusters we hold in memory (16 Mi clusters = 16 TiB at 1 MiB). SPDK
/// has no limit short of memory; a corrupt descriptor must not make us allocate gigabytes.
pub const MAX_BLOB_CLUSTERS: u64 = 1 << 24;

/// Blob id of the blob rooted at md index `i`.
pub fn blob_id(i: u32) -> u64 {
    (1u64 << 32) | u64::from(i)
}

/// Root md index of `id`, if `id` has the blob-id form.
pub fn root_index(id: u64) -> Option<u32> {
    if id >> 32 == 1 {
        Some(id as u32)
    } else {
        None
    }
}

/// Extent-page slots a blob of `n` clusters needs.
pub fn slots_for(n: u64) -> usize {
    n.div_ceil(u64::from(CLUSTERS_PER_EXTENT_PAGE)) as usize
}

/// One xattr: name and value bytes.
pub type Xattr = (Vec<u8>, Vec<u8>);

/// A blob's metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobMd {
    pub id: u64,
    pub invalid_flags: u64,
    pub data_ro_flags: u64,
    pub md_ro_flags: u64,
    pub xattrs: Vec<Xattr>,
    pub internal_xattrs: Vec<Xattr>,
    /// Serialize the map as EXTENT_TABLE + extent pages (else EXTENT_RLE).
    pub extent_table: bool,
    /// Device cluster of every blob cluster, 0 = unallocated.
    pub clusters: Vec<u32>,
    /// Md index of every extent-page slot, 0 = none (extent-table mode only).
    pub extent_pages: Vec<u32>,
}

impl BlobMd {
    pub fn is_thin(&self) -> bool {
        self.invalid_flags & FLAG_THIN_PROV != 0
    }

    /// Data (and metadata) read-only: READ_ONLY or an unknown `data_ro` bit.
    pub fn data_ro(&self) -> bool {
        self.data_ro_flags != 0
    }

    /// Metadata read-only: data read-only or an unknown `md_ro` bit.
    pub fn md_ro(&self) -> bool {
        self.data_ro() || self.md_ro_flags & !MD_RO_KNOWN != 0
    }

    pub fn num_clusters(&self) -> u64 {
        self.clusters.len() as u64
    }

    /// An internal xattr's value.
    pub fn internal_xattr(&self, name: &[u8]) -> Option<&[u8]> {
        self.internal_xattrs
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_slice())
    }

    /// The blob's backing, by SPDK's rules at open: the esnap flag wins (its id must be
    /// present); otherwise a thin blob with a `SNAP` xattr of 8 bytes is a clone of that
    /// snapshot; a thick blob's `SNAP` is ignored.
    pub fn parent(&self) -> Result<Parent> {
        let corrupt = |d: &str| Error::Corruption {
            blob: self.id,
            offset: 0,
            detail: d.to_owned(),
        };
        if self.invalid_flags & FLAG_EXTERNAL_SNAPSHOT != 0 {
            return match self.internal_xattr(XATTR_EXTERNAL_SNAPSHOT_ID) {
                Some(v) if !v.is_empty() => Ok(Parent::External(v.to_vec())),
                _ => Err(corrupt("esnap clone without an EXTSNAP id")),
            };
        }
        if !self.is_thin() {
            return Ok(Parent::None);
        }
        match self.internal_xattr(XATTR_SNAPSHOT) {
            None => Ok(Parent::None),
            Some(v) => match <[u8; 8]>::try_from(v) {
                Ok(b) => Ok(Parent::Snapshot(u64::from_le_bytes(b))),
                Err(_) => Err(corrupt(&format!("SNAP xattr of {} bytes", v.len()))),
            },
        }
    }

    /// The entries of extent-page slot `slot` (`min(512, n - 512 slot)` of them).
    pub fn slot_entries(clusters: &[u32], slot: usize) -> &[u32] {
        let per = CLUSTERS_PER_EXTENT_PAGE as usize;
        let start = (slot * per).min(clusters.len());
        let end = (start + per).min(clusters.len());
        &clusters[start..end]
    }

    /// The extent page of `slot` (id = this blob, sequence 0, no next).
    pub fn extent_page(&self, slot: usize) -> MdPage {
        let mut p = MdPage::new(self.id, 0);
        let d = Descriptor::ExtentPage {
            start_cluster_idx: (slot as u32) * CLUSTERS_PER_EXTENT_PAGE,
            clusters: Self::slot_entries(&self.clusters, slot).to_vec(),
        };
        let mut b = Vec::with_capacity(d.encoded_len());
        d.encode(&mut b);
        p.descriptors[..b.len()].copy_from_slice(&b);
        p
    }

    fn table_entries(&self) -> Vec<TableEntry> {
        let mut out: Vec<TableEntry> = Vec::new();
        for &p in &self.extent_pages {
            match out.last_mut() {
                Some(e) if p == 0 && e.page_idx == 0 => e.num_pages += 1,
                _ => out.push(TableEntry {
                    page_idx: p,
                    num_pages: 1,
                }),
            }
        }
        out
    }

    fn rle_runs(&self) -> Vec<RleRun> {
        let mut out: Vec<RleRun> = Vec::new();
        for &c in &self.clusters {
            match out.last_mut() {
                Some(r) if r.cluster_idx == 0 && c == 0 => r.length += 1,
                Some(r)
                    if r.cluster_idx != 0
                        && c != 0
                        && r.cluster_idx.wrapping_add(r.length) == c =>
                {
                    r.length += 1
                }
                _ => out.push(RleRun {
                    cluster_idx: c,
                    length: 1,
                }),
            }
        }
        out
    }

    /// Serialize into the descriptor areas of the chain pages (page 0 = root).
    pub fn serialize(&self) -> Result<Vec<Vec<u8>>> {
        let mut pages: Vec<Vec<u8>> = vec![Vec::with_capacity(DESC_AREA)];
        fn cur(p: &mut [Vec<u8>]) -> &mut Vec<u8> {
            let n = p.len() - 1;
            &mut p[n]
        }
        let flags = Descriptor::Flags {
            invalid: self.invalid_flags,
            data_ro: self.data_ro_flags,
            md_ro: self.md_ro_flags,
        };
        flags.encode(cur(&mut pages));
        for (internal, list) in [(false, &self.xattrs), (true, &self.internal_xattrs)] {
            for (name, value) in list {
                let d = Descriptor::Xattr {
                    internal,
                    name: name.clone(),
                    value: value.clone(),
                };
                let len = d.encoded_len();
                if len > DESC_AREA || name.len() > 0xFFFF || value.len() > 0xFFFF {
                    return Err(Error::NoMdSpace(format!(
                        "xattr {:?} needs {len} bytes, a page holds {DESC_AREA}",
                        String::from_utf8_lossy(name)
                    )));
                }
                if DESC_AREA - cur(&mut pages).len() < len {
                    pages.push(Vec::with_capacity(DESC_AREA));
                }
                d.encode(cur(&mut pages));
            }
        }
        if self.extent_table {
            let entries = self.table_entries();
            let mut i = 0;
            loop {
                let rem = DESC_AREA - cur(&mut pages).len();
                if rem >= MIN_EXTENT_DESC {
                    let k = (entries.len() - i).min((rem - MIN_EXTENT_DESC) / 8);
                    Descriptor::ExtentTable {
                        num_clusters: self.num_clusters(),
                        entries: entries[i..i + k].to_vec(),
                    }
                    .encode(cur(&mut pages));
                    i += k;
                }
                if i == entries.len() {
                    break;
                }
                pages.push(Vec::with_capacity(DESC_AREA));
            }
        } else {
            let runs = self.rle_runs();
            let mut i = 0;
            while i < runs.len() {
                let rem = DESC_AREA - cur(&mut pages).len();
                if rem >= MIN_EXTENT_DESC {
                    let k = (runs.len() - i).min((rem - 5) / 8);
                    Descriptor::ExtentRle(runs[i..i + k].to_vec()).encode(cur(&mut pages));
                    i += k;
                }
                if i < runs.len() {
                    pages.push(Vec::with_capacity(DESC_AREA));
                }
            }
        }
        for p in &mut pages {
            p.resize(DESC_AREA, 0);
        }
        Ok(pages)
    }
}

/// What parsing a chain found; extent pages still have to be read and applied.
#[derive(Debug)]
pub struct ParsedChain {
    pub md: BlobMd,
    /// Number of clusters the EXTENT_TABLE says (extent-table mode).
    pub table_clusters: u64,
}

/// Parse a blob's chain pages (already CRC-checked, in chain order). `total_clusters` bounds
/// cluster indexes; `md_len` bounds md indexes. With `strict_types`, unknown descriptor types
/// fail (recovery), otherwise they are ignored (open).
pub fn parse_chain(
    id: u64,
    pages: &[MdPage],
    total_clusters: u32,
    md_len: u32,
    strict_types: bool,
) -> Result<ParsedChain> {
    let corrupt = |d: String| Error::Corruption {
        blob: id,
        offset: 0,
        detail: d,
    };
    let mut md = BlobMd {
        id,
        invalid_flags: 0,
        data_ro_flags: 0,
        md_ro_flags: 0,
        xattrs: Vec::new(),
        internal_xattrs: Vec::new(),
        extent_table: false,
        clusters: Vec::new(),
        extent_pages: Vec::new(),
    };
    let mut saw_rle = false;
    let mut table_clusters: Option<u64> = None;
    for page in pages {
        for raw in walk(&page.descriptors)? {
            let d = Descriptor::decode(raw.ty, raw.payload, raw.offset as u64)
                .map_err(|e| corrupt(format!("{e}")))?;
            match d {
                Descriptor::Flags {
                    invalid,
                    data_ro,
                    md_ro,
                } => {
                    md.invalid_flags = invalid;
                    md.data_ro_flags = data_ro;
                    md.md_ro_flags = md_ro;
                }
                Descriptor::Xattr {
                    internal,
                    name,
                    value,
                } => {
                    if internal {
                        md.internal_xattrs.push((name, value))
                    } else {
                        md.xattrs.push((name, value))
                    }
                }
                Descriptor::ExtentRle(runs) => {
                    saw_rle = true;
                    for r in runs {
                        let n = md.clusters.len() as u64 + u64::from(r.length);
                        if n > MAX_BLOB_CLUSTERS {
                            return Err(corrupt(format!(
                                "blob larger than {MAX_BLOB_CLUSTERS} clusters"
                            )));
                        }
                        if r.cluster_idx == 0 {
                            md.clusters.resize(n as usize, 0);
                        } else {
                            let end = u64::from(r.cluster_idx) + u64::from(r.length);
                            if end > u64::from(total_clusters) {
                                return Err(corrupt(format!(
                                    "run {}+{} past the {total_clusters} clusters",
                                    r.cluster_idx, r.length
                                )));
                            }
                            md.clusters.extend(r.cluster_idx..end as u32);
                        }
                    }
                }
                Descriptor::ExtentTable {
                    num_clusters,
                    entries,
                } => {
                    if num_clusters > MAX_BLOB_CLUSTERS {
                        return Err(corrupt(format!("extent table of {num_clusters} clusters")));
                    }
                    if table_clusters.is_some_and(|t| t != num_clusters) {
                        return Err(corrupt("extent tables disagree on num_clusters".into()));
                    }
                    table_clusters = Some(num_clusters);
                    let need = slots_for(num_clusters);
                    for e in entries {
                        if e.page_idx != 0 {
                            if e.num_pages != 1 || e.page_idx >= md_len {
                                return Err(corrupt(format!(
                                    "extent table entry {}x{}",
                                    e.page_idx, e.num_pages
                                )));
                            }
                            md.extent_pages.push(e.page_idx);
                        } else {
                            let n = md.extent_pages.len() as u64 + u64::from(e.num_pages);
                            if n > need as u64 {
                                return Err(corrupt("extent table has too many slots".into()));
                            }
                            md.extent_pages.resize(n as usize, 0);
                        }
                        if md.extent_pages.len() > need {
                            return Err(corrupt("extent table has too many slots".into()));
                        }
                    }
                }
                Descriptor::ExtentPage { .. } => {
                    return Err(corrupt("extent page descriptor inside a chain".into()))
                }
                Descriptor::Unknown { ty, .. } => {
                    if strict_types {
                        return Err(corrupt(format!("unknown descriptor type {ty}")));
                    }
                }
            }
        }
    }
    if md.invalid_flags & !INVALID_KNOWN != 0 {
        return Err(Error::Unsupported(format!(
            "blob {id:#x} has unknown invalid_flags {:#x}",
            md.invalid_flags
        )));
    }
    let _ = DATA_RO_KNOWN;
    if saw_rle && table_clusters.is_some() {
        return Err(corrupt(
            "both EXTENT_RLE and EXTENT_TABLE descriptors".into(),
        ));
    }
    let had_table = table_clusters.is_some();
    let table_clusters = table_clusters.unwrap_or(0);
    if had_table {
        md.extent_table = true;
        md.extent_pages.resize(slots_for(table_clusters), 0);
    }
    if !md.is_thin() {
        if md.clusters.contains(&0) {
            return Err(corrupt("unallocated cluster in a thick blob".into()));
        }
        if md.extent_table && md.extent_pages.contains(&0) {
            return Err(corrupt("unallocated extent page in a thick blob".into()));
        }
    }
    Ok(ParsedChain { md, table_clusters })
}

/// Check an extent page for `slot` and return its entries, at most `want` of them (a page
/// holding more, written before a crash interrupted a resize, is read up to the size the root
/// says; fewer is corruption).
pub fn parse_extent_page(
    id: u64,
    page: &MdPage,
    slot: usize,
    want: usize,
    total_clusters: u32,
) -> Result<Vec<u32>> {
    let corrupt = |d: String| Error::Corruption {
        blob: id,
        offset: 0,
        detail: format!("extent page of slot {slot}: {d}"),
    };
    if page.sequence_num != 0 || page.next != NO_NEXT {
        return Err(corrupt("sequence or next set".into()));
    }
    let descs = walk(&page.descriptors)?;
    let first = descs.first().ok_or_else(|| corrupt("empty".into()))?;
    if first.ty != TYPE_EXTENT_PAGE {
        return Err(corrupt(format!("first descriptor has type {}", first.ty)));
    }
    let Descriptor::ExtentPage {
        start_cluster_idx,
        clusters,
    } = Descriptor::decode(first.ty, first.payload, 0)?
    else {
        return Err(corrupt("not an extent page".into()));
    };
    if descs.len() > 1 {
        return Err(corrupt("more than one descriptor".into()));
    }
    if u64::from(start_cluster_idx) != slot as u64 * u64::from(CLUSTERS_PER_EXTENT_PAGE) {
        return Err(corrupt(format!("starts at cluster {start_cluster_idx}")));
    }
    if clusters.len() < want {
        return Err(corrupt(format!(
            "{} entries, {want} needed",
            clusters.len()
        )));
    }
    let out = clusters[..want].to_vec();
    if let Some(&c) = out.iter().find(|&&c| c >= total_clusters) {
        return Err(corrupt(format!("cluster {c} past the device")));
    }
    Ok(out)
}

/// Descriptor types recovery accepts in a chain.
pub fn recovery_type_ok(ty: u8) -> bool {
    matches!(
        ty,
        TYPE_EXTENT_RLE | TYPE_XATTR | TYPE_FLAGS | TYPE_XATTR_INTERNAL | TYPE_EXTENT_TABLE
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn md(clusters: Vec<u32>, eps: Vec<u32>, ext: bool, thin: bool) -> BlobMd {
        BlobMd {
            id: blob_id(0),
            invalid_flags: if ext { FLAG_EXTENT_TABLE } else { 0 } | if thin { 1 } else { 0 },
            data_ro_flags: 0,
            md_ro_flags: 0,
            xattrs: vec![(b"name".to_vec(), b"foo".to_vec())],
            internal_xattrs: vec![],
            extent_table: ext,
            clusters,
            extent_pages: eps,
        }
    }

    /// The worked example of `docs/blobstore-format.md`
    #[test]
    fn example_c_root_and_extent_page() {
        let m = md((5..15).collect(), vec![1], true, false);
        let pages = m.serialize().unwrap();
        assert_eq!(pages.len(), 1);
        let p = &pages[0];
        assert_eq!(p[0], 3);
        assert_eq!(&p[29..45], b"\x02\x0b\x00\x00\x00\x04\x00\x03\x00namefoo");
        assert_eq!(
            hex::encode(&p[45..66]),
            "05100000000a000000000000000100000001000000"
        );
        assert!(p[66..].iter().all(|&b| b == 0));
        let ep = m.extent_page(0);
        assert_eq!(&ep.descriptors[..9], &[6, 0x2c, 0, 0, 0, 0, 0, 0, 0]);
        let mut root = MdPage::new(m.id, 0);
        root.descriptors = p.clone();
        let parsed = parse_chain(m.id, &[root], 1024, 1024, true).unwrap();
        assert!(parsed.md.extent_table);
        assert_eq!(parsed.table_clusters, 10);
        assert_eq!(parsed.md.extent_pages, vec![1]);
        let e = parse_extent_page(m.id, &ep, 0, 10, 1024).unwrap();
        assert_eq!(e, (5..15).collect::<Vec<_>>());
        assert!(parse_extent_page(m.id, &ep, 0, 11, 1024).is_err());
        assert!(parse_extent_page(m.id, &ep, 1, 10, 1024).is_err());
        assert!(parse_extent_page(m.id, &ep, 0, 10, 10).is_err());
    }

    #[test]
    fn rle_round_trip_and_split_over_pages() {
        // Alternating allocated/unallocated: one run per cluster, forces several pages.
        let clusters: Vec<u32> = (0..2000u32)
            .map(|i| if i % 2 == 0 { 100 + i } else { 0 })
            .collect();
        let m = md(clusters, vec![], false, true);
        let areas = m.serialize().unwrap();
        assert!(areas.len() > 1);
        let pages: Vec<MdPage> = areas
            .into_iter()
            .enumerate()
            .map(|(i, a)| MdPage {
                id: m.id,
                sequence_num: i as u32,
                next: NO_NEXT,
                descriptors: a,
            })
            .collect();
        let p = parse_chain(m.id, &pages, 10_000, 16, true).unwrap();
        assert_eq!(p.md, m);
    }

    #[test]
    fn empty_table_omitted_when_page_is_full() {
        // Fill the root so that fewer than 13 bytes remain after the xattr.
        let mut m = md(vec![], vec![], true, false);
        let v = vec![7u8; DESC_AREA - 29 - 9 - 4 - 10];
        m.xattrs = vec![(b"name".to_vec(), v)];
        let a = m.serialize().unwrap();
        assert_eq!(a.len(), 1);
        assert!(!a[0].contains(&5) || a[0][DESC_AREA - 10..].iter().all(|&b| b == 0));
        let mut root = MdPage::new(m.id, 0);
        root.descriptors = a[0].clone();
        let p = parse_chain(m.id, &[root], 100, 100, true).unwrap();
        assert!(!p.md.extent_table);
    }

    #[test]
    fn table_with_zero_runs() {
        let mut clusters = vec![0u32; 2100];
        clusters[5] = 263;
        clusters[1600] = 270;
        clusters[2099] = 285;
        let mut m = md(clusters, vec![6, 0, 0, 7, 10], true, true);
        m.xattrs.clear();
        let e = m.table_entries();
        assert_eq!(
            e.iter()
                .map(|e| (e.page_idx, e.num_pages))
                .collect::<Vec<_>>(),
            vec![(6, 1), (0, 2), (7, 1), (10, 1)]
        );
    }

    #[test]
    fn rejects_conflicts_and_thick_holes() {
        let m = md(vec![0, 5], vec![], false, false);
        let mut root = MdPage::new(m.id, 0);
        root.descriptors = m.serialize().unwrap().remove(0);
        assert!(parse_chain(m.id, &[root], 100, 100, true).is_err());
        let mut bad = MdPage::new(m.id, 0);
        bad.descriptors[0] = 99;
        assert!(parse_chain(m.id, std::slice::from_ref(&bad), 100, 100, true).is_err());
        assert!(parse_chain(m.id, &[bad], 100, 100, false).is_ok());
    }

    #[test]
    fn parent_follows_spdks_rules() {
        let snap = 0x1_0000_0007u64.to_le_bytes().to_vec();
        let mut m = md(vec![0, 0], vec![], false, true);
        assert_eq!(m.parent().unwrap(), Parent::None);
        m.internal_xattrs = vec![(XATTR_SNAPSHOT.to_vec(), snap.clone())];
        assert_eq!(m.parent().unwrap(), Parent::Snapshot(0x1_0000_0007));
        // A thick blob reads nothing through SNAP (SPDK ignores it).
        let mut thick = md(vec![5, 6], vec![], false, false);
        thick.internal_xattrs = m.internal_xattrs.clone();
        assert_eq!(thick.parent().unwrap(), Parent::None);
        m.internal_xattrs = vec![(XATTR_SNAPSHOT.to_vec(), vec![1, 2, 3])];
        assert!(matches!(m.parent(), Err(Error::Corruption { .. })));
        // The esnap flag wins over SNAP, and needs its id.
        m.invalid_flags |= FLAG_EXTERNAL_SNAPSHOT | FLAG_INTERNAL_XATTR;
        m.internal_xattrs = vec![(XATTR_SNAPSHOT.to_vec(), snap)];
        assert!(matches!(m.parent(), Err(Error::Corruption { .. })));
        m.internal_xattrs
            .push((XATTR_EXTERNAL_SNAPSHOT_ID.to_vec(), b"uuid-1".to_vec()));
        assert_eq!(m.parent().unwrap(), Parent::External(b"uuid-1".to_vec()));
        // Such a blob's chain parses (it used to be refused) and round-trips.
        let mut root = MdPage::new(m.id, 0);
        root.descriptors = m.serialize().unwrap().remove(0);
        let p = parse_chain(m.id, &[root], 100, 100, true).unwrap();
        assert_eq!(p.md, m);
        assert_eq!(p.md.internal_xattr(b"EXTSNAP"), Some(&b"uuid-1"[..]));
    }
}
