//! Blob metadata descriptors (`docs/blobstore-format.md`). Every descriptor is a 5-byte header
//! `type u8 | length u32` (length = payload bytes after the header) and a payload:
//!
//! | type | name | payload |
//! |---:|---|---|
//! | 0 | PADDING | none; `length 0` ends the page |
//! | 1 | EXTENT_RLE | n × (`cluster_idx u32`, `length u32`), n ≥ 1; cluster 0 = unallocated run |
//! | 2 | XATTR | `name_len u16`, `value_len u16`, name, value; length = 4 + name + value |
//! | 3 | FLAGS | `invalid u64`, `data_ro u64`, `md_ro u64`; length = 24 exactly |
//! | 4 | XATTR_INTERNAL | as XATTR |
//! | 5 | EXTENT_TABLE | `num_clusters u64`, n × (`page_idx u32`, `num_pages u32`), n ≥ 0 |
//! | 6 | EXTENT_PAGE | `start_cluster_idx u32`, n × `cluster_idx u32`, 1 ≤ n ≤ 512 |
//!
//! Decoders check every length before use and report [`Error::Corruption`].

use super::superblock::{read_u32, read_u64};
use crate::blobstore::error::{Error, Result};

pub const TYPE_PADDING: u8 = 0;
pub const TYPE_EXTENT_RLE: u8 = 1;
pub const TYPE_XATTR: u8 = 2;
pub const TYPE_FLAGS: u8 = 3;
pub const TYPE_XATTR_INTERNAL: u8 = 4;
pub const TYPE_EXTENT_TABLE: u8 = 5;
pub const TYPE_EXTENT_PAGE: u8 = 6;

/// Clusters covered by one extent page.
pub const CLUSTERS_PER_EXTENT_PAGE: u32 = 512;
/// Bytes of a FLAGS descriptor.
pub const FLAGS_DESC_LEN: usize = 29;
/// Bytes one needs free to start an EXTENT_RLE or EXTENT_TABLE descriptor (SPDK's rule).
pub const MIN_EXTENT_DESC: usize = 13;

/// One EXTENT_RLE run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RleRun {
    /// First device cluster, 0 = unallocated.
    pub cluster_idx: u32,
    pub length: u32,
}

/// One EXTENT_TABLE entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TableEntry {
    /// Md index of an extent page, 0 = `num_pages` unallocated slots.
    pub page_idx: u32,
    pub num_pages: u32,
}

/// A decoded descriptor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Descriptor {
    ExtentRle(Vec<RleRun>),
    Xattr {
        internal: bool,
        name: Vec<u8>,
        value: Vec<u8>,
    },
    Flags {
        invalid: u64,
        data_ro: u64,
        md_ro: u64,
    },
    ExtentTable {
        num_clusters: u64,
        entries: Vec<TableEntry>,
    },
    ExtentPage {
        start_cluster_idx: u32,
        clusters: Vec<u32>,
    },
    /// A type this implementation does not know (ignored on open, fatal in recovery).
    Unknown {
        ty: u8,
        len: u32,
    },
}

fn bad(offset: u64, d: String) -> Error {
    Error::corrupt_md(offset, d)
}

impl Descriptor {
    /// Bytes of the encoded descriptor, header included.
    pub fn encoded_len(&self) -> usize {
        5 + match self {
            Descriptor::ExtentRle(r) => 8 * r.len(),
            Descriptor::Xattr { name, value, .. } => 4 + name.len() + value.len(),
            Descriptor::Flags { .. } => 24,
            Descriptor::ExtentTable { entries, .. } => 8 + 8 * entries.len(),
            Descriptor::ExtentPage { clusters, .. } => 4 + 4 * clusters.len(),
            Descriptor::Unknown { len, .. } => *len as usize,
        }
    }

    /// Append the encoding to `out`. Xattr names/values must fit u16 (checked by callers).
    pub fn encode(&self, out: &mut Vec<u8>) {
        let len = (self.encoded_len() - 5) as u32;
        let ty = match self {
            Descriptor::ExtentRle(_) => TYPE_EXTENT_RLE,
            Descriptor::Xattr {
                internal: false, ..
            } => TYPE_XATTR,
            Descriptor::Xattr { internal: true, .. } => TYPE_XATTR_INTERNAL,
            Descriptor::Flags { .. } => TYPE_FLAGS,
            Descriptor::ExtentTable { .. } => TYPE_EXTENT_TABLE,
            Descriptor::ExtentPage { .. } => TYPE_EXTENT_PAGE,
            Descriptor::Unknown { ty, .. } => *ty,
        };
        out.push(ty);
        out.extend_from_slice(&len.to_le_bytes());
        match self {
            Descriptor::ExtentRle(runs) => {
                for r in runs {
                    out.extend_from_slice(&r.cluster_idx.to_le_bytes());
                    out.extend_from_slice(&r.length.to_le_bytes());
                }
            }
            Descriptor::Xattr { name, value, .. } => {
                out.extend_from_slice(&(name.len() as u16).to_le_bytes());
                out.extend_from_slice(&(value.len() as u16).to_le_bytes());
                out.extend_from_slice(name);
                out.extend_from_slice(value);
            }
            Descriptor::Flags {
                invalid,
                data_ro,
                md_ro,
            } => {
                out.extend_from_slice(&invalid.to_le_bytes());
                out.extend_from_slice(&data_ro.to_le_bytes());
                out.extend_from_slice(&md_ro.to_le_bytes());
            }
            Descriptor::ExtentTable {
                num_clusters,
                entries,
            } => {
                out.extend_from_slice(&num_clusters.to_le_bytes());
                for e in entries {
                    out.extend_from_slice(&e.page_idx.to_le_bytes());
                    out.extend_from_slice(&e.num_pages.to_le_bytes());
                }
            }
            Descriptor::ExtentPage {
                start_cluster_idx,
                clusters,
            } => {
                out.extend_from_slice(&start_cluster_idx.to_le_bytes());
                for c in clusters {
                    out.extend_from_slice(&c.to_le_bytes());
                }
            }
            Descriptor::Unknown { len, .. } => out.resize(out.len() + *len as usize, 0),
        }
    }

    /// Decode a descriptor from its type and payload. `offset` (device bytes) is for errors.
    pub fn decode(ty: u8, p: &[u8], offset: u64) -> Result<Descriptor> {
        let n = p.len();
        match ty {
            TYPE_EXTENT_RLE => {
                if n == 0 || !n.is_multiple_of(8) {
                    return Err(bad(offset, format!("EXTENT_RLE of {n} bytes")));
                }
                let runs: Vec<RleRun> = p
                    .chunks_exact(8)
                    .map(|c| RleRun {
                        cluster_idx: read_u32(c, 0),
                        length: read_u32(c, 4),
                    })
                    .collect();
                if runs.iter().all(|r| r.length == 0) {
                    return Err(bad(offset, "EXTENT_RLE with no clusters".into()));
                }
                Ok(Descriptor::ExtentRle(runs))
            }
            TYPE_XATTR | TYPE_XATTR_INTERNAL => {
                if n < 4 {
                    return Err(bad(offset, format!("xattr of {n} bytes")));
                }
                let nl = usize::from(u16::from_le_bytes([p[0], p[1]]));
                let vl = usize::from(u16::from_le_bytes([p[2], p[3]]));
                if 4 + nl + vl != n {
                    return Err(bad(offset, format!("xattr length {n} != 4 + {nl} + {vl}")));
                }
                Ok(Descriptor::Xattr {
                    internal: ty == TYPE_XATTR_INTERNAL,
                    name: p[4..4 + nl].to_vec(),
                    value: p[4 + nl..].to_vec(),
                })
            }
            TYPE_FLAGS => {
                if n != 24 {
                    return Err(bad(offset, format!("FLAGS of {n} bytes")));
                }
                Ok(Descriptor::Flags {
                    invalid: read_u64(p, 0),
                    data_ro: read_u64(p, 8),
                    md_ro: read_u64(p, 16),
                })
            }
            TYPE_EXTENT_TABLE => {
                if n < 8 || !(n - 8).is_multiple_of(8) {
                    return Err(bad(offset, format!("EXTENT_TABLE of {n} bytes")));
                }
                let entries = p[8..]
                    .chunks_exact(8)
                    .map(|c| TableEntry {
                        page_idx: read_u32(c, 0),
                        num_pages: read_u32(c, 4),
                    })
                    .collect();
                Ok(Descriptor::ExtentTable {
                    num_clusters: read_u64(p, 0),
                    entries,
                })
            }
            TYPE_EXTENT_PAGE => {
                if n < 8
                    || !(n - 4).is_multiple_of(4)
                    || (n - 4) / 4 > CLUSTERS_PER_EXTENT_PAGE as usize
                {
                    return Err(bad(offset, format!("EXTENT_PAGE of {n} bytes")));
                }
                Ok(Descriptor::ExtentPage {
                    start_cluster_idx: read_u32(p, 0),
                    clusters: p[4..].chunks_exact(4).map(|c| read_u32(c, 0)).collect(),
                })
            }
            _ => Ok(Descriptor::Unknown { ty, len: n as u32 }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rt(d: &Descriptor) -> Vec<u8> {
        let mut b = Vec::new();
        d.encode(&mut b);
        assert_eq!(b.len(), d.encoded_len());
        assert_eq!(&Descriptor::decode(b[0], &b[5..], 0).unwrap(), d);
        b
    }

    /// The descriptors of the worked example of `docs/blobstore-format.md`
    #[test]
    fn example_c_byte_tables() {
        let flags = Descriptor::Flags {
            invalid: 4,
            data_ro: 0,
            md_ro: 0,
        };
        assert_eq!(
            hex::encode(rt(&flags)),
            "0318000000040000000000000000000000000000000000000000000000"
        );
        let x = Descriptor::Xattr {
            internal: false,
            name: b"name".to_vec(),
            value: b"foo".to_vec(),
        };
        assert_eq!(hex::encode(rt(&x)), "020b000000040003006e616d65666f6f");
        let t = Descriptor::ExtentTable {
            num_clusters: 10,
            entries: vec![TableEntry {
                page_idx: 1,
                num_pages: 1,
            }],
        };
        assert_eq!(
            hex::encode(rt(&t)),
            "05100000000a000000000000000100000001000000"
        );
        let ep = Descriptor::ExtentPage {
            start_cluster_idx: 0,
            clusters: (5..15).collect(),
        };
        let b = rt(&ep);
        assert_eq!(&b[..9], &[6, 0x2c, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(b.len(), 49);
        let r = Descriptor::ExtentRle(vec![
            RleRun {
                cluster_idx: 266,
                length: 3,
            },
            RleRun {
                cluster_idx: 0,
                length: 7,
            },
        ]);
        assert_eq!(
            hex::encode(rt(&r)),
            "01100000000a010000030000000000000007000000"
        );
        rt(&Descriptor::Xattr {
            internal: true,
            name: b"SNAP".to_vec(),
            value: vec![],
        });
    }

    #[test]
    fn decoders_reject_bad_lengths() {
        assert!(Descriptor::decode(TYPE_EXTENT_RLE, &[], 0).is_err());
        assert!(Descriptor::decode(TYPE_EXTENT_RLE, &[0; 7], 0).is_err());
        assert!(Descriptor::decode(TYPE_EXTENT_RLE, &[0; 8], 0).is_err());
        assert!(Descriptor::decode(TYPE_XATTR, &[0; 3], 0).is_err());
        assert!(Descriptor::decode(TYPE_XATTR, &[1, 0, 1, 0, b'a'], 0).is_err());
        assert!(Descriptor::decode(TYPE_FLAGS, &[0; 23], 0).is_err());
        assert!(Descriptor::decode(TYPE_EXTENT_TABLE, &[0; 12], 0).is_err());
        assert!(Descriptor::decode(TYPE_EXTENT_PAGE, &[0; 4], 0).is_err());
        assert!(Descriptor::decode(TYPE_EXTENT_PAGE, &[0; 4 + 4 * 513], 0).is_err());
        assert!(matches!(
            Descriptor::decode(77, &[1, 2], 0),
            Ok(Descriptor::Unknown { ty: 77, len: 2 })
        ));
    }
}
