//! Metadata pages (`docs/blobstore-format.md`): blob chain pages and extent pages.
//!
//! Byte table (the first 4096 bytes of an md page slot; a larger slot's tail is written as
//! zero and ignored on read):
//!
//! | offset | size | field |
//! |---:|---:|---|
//! | 0 | 8 | id: owning blob id |
//! | 8 | 4 | sequence_num: 0 root, 1, 2, … chain pages; 0 for extent pages |
//! | 12 | 4 | reserved0 (zero) |
//! | 16 | 4072 | descriptor stream, zero-filled after the last descriptor |
//! | 4088 | 4 | next md index, `0xFFFF_FFFF` = end of chain |
//! | 4092 | 4 | CRC-32C of bytes 0..4092 |
//!
//! Descriptor stream walk: 5-byte header `type u8 | length u32` then `length` payload bytes;
//! `type 0, length 0` ends the page; fewer than 5 bytes left ends it too. Unlike SPDK we reject
//! any descriptor whose payload runs past byte 4072 of the area.

use super::superblock::{read_u32, read_u64, struct_crc};
use crate::blobstore::error::{Error, Result};

/// Bytes of the page structure.
pub const PAGE_STRUCT_SIZE: usize = 4096;
/// Bytes of the descriptor area.
pub const DESC_AREA: usize = 4072;
/// Offset of the descriptor area in the page.
pub const DESC_OFFSET: usize = 16;
const NEXT_OFF: usize = 4088;
const CRC_OFF: usize = 4092;
/// `next` of the last page of a chain.
pub const NO_NEXT: u32 = u32::MAX;
/// Bytes of a descriptor header.
pub const DESC_HEADER: usize = 5;

/// A decoded md page.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct MdPage {
    pub id: u64,
    pub sequence_num: u32,
    pub next: u32,
    /// The 4072-byte descriptor area.
    pub descriptors: Vec<u8>,
}

impl MdPage {
    /// An empty page (descriptor area all zero).
    pub fn new(id: u64, sequence_num: u32) -> MdPage {
        MdPage {
            id,
            sequence_num,
            next: NO_NEXT,
            descriptors: vec![0; DESC_AREA],
        }
    }

    /// Encode into a slot of `slot_size` bytes (≥ 4096); the tail past 4096 is zero.
    pub fn encode(&self, slot_size: usize) -> Vec<u8> {
        let mut b = vec![0u8; slot_size.max(PAGE_STRUCT_SIZE)];
        b[0..8].copy_from_slice(&self.id.to_le_bytes());
        b[8..12].copy_from_slice(&self.sequence_num.to_le_bytes());
        let n = self.descriptors.len().min(DESC_AREA);
        b[DESC_OFFSET..DESC_OFFSET + n].copy_from_slice(&self.descriptors[..n]);
        b[NEXT_OFF..CRC_OFF].copy_from_slice(&self.next.to_le_bytes());
        let crc = struct_crc(&b);
        b[CRC_OFF..PAGE_STRUCT_SIZE].copy_from_slice(&crc.to_le_bytes());
        b
    }

    /// True when the buffer holds a page whose CRC verifies.
    pub fn crc_ok(b: &[u8]) -> bool {
        b.len() >= PAGE_STRUCT_SIZE && read_u32(b, CRC_OFF) == struct_crc(b)
    }

    /// Decode a page, checking its CRC. `offset` (device bytes) is for the error.
    pub fn decode(b: &[u8], offset: u64) -> Result<MdPage> {
        if b.len() < PAGE_STRUCT_SIZE {
            return Err(Error::corrupt_md(offset, "short md page"));
        }
        if !Self::crc_ok(b) {
            return Err(Error::corrupt_md(
                offset,
                format!(
                    "md page CRC {:#010x} != computed {:#010x}",
                    read_u32(b, CRC_OFF),
                    struct_crc(b)
                ),
            ));
        }
        Ok(MdPage {
            id: read_u64(b, 0),
            sequence_num: read_u32(b, 8),
            next: read_u32(b, NEXT_OFF),
            descriptors: b[DESC_OFFSET..DESC_OFFSET + DESC_AREA].to_vec(),
        })
    }
}

/// One raw descriptor found by [`walk`]: its type, payload, and offset in the area.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RawDesc<'a> {
    pub ty: u8,
    pub payload: &'a [u8],
    pub offset: usize,
}

/// Walk a descriptor area. Fails on a descriptor that runs past the end of the area.
pub fn walk(area: &[u8]) -> Result<Vec<RawDesc<'_>>> {
    let mut out = Vec::new();
    let mut off = 0usize;
    while off + DESC_HEADER <= area.len() {
        let ty = area[off];
        let len = read_u32(area, off + 1) as usize;
        if ty == 0 && len == 0 {
            break;
        }
        let start = off + DESC_HEADER;
        let end = match start.checked_add(len) {
            Some(e) if e <= area.len() => e,
            _ => {
                return Err(Error::corrupt_md(
                    (DESC_OFFSET + off) as u64,
                    format!("descriptor type {ty} of {len} bytes runs past the page"),
                ))
            }
        };
        out.push(RawDesc {
            ty,
            payload: &area[start..end],
            offset: off,
        });
        off = end;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_table_and_round_trip() {
        let mut p = MdPage::new(0x1_0000_0002, 1);
        p.next = 7;
        p.descriptors[0] = 3;
        let b = p.encode(4096);
        assert_eq!(hex::encode(&b[..17]), "0200000001000000010000000000000003");
        assert_eq!(read_u32(&b, 4088), 7);
        assert_eq!(read_u32(&b, 4092), struct_crc(&b));
        assert_eq!(MdPage::decode(&b, 0).unwrap(), p);
        let big = p.encode(8192);
        assert_eq!(big.len(), 8192);
        assert!(big[4096..].iter().all(|&x| x == 0));
        let mut bad = b.clone();
        bad[20] ^= 1;
        assert!(MdPage::decode(&bad, 0).is_err());
        assert!(MdPage::decode(&[0u8; 4096], 0).is_err());
    }

    #[test]
    fn walk_stops_and_bounds() {
        let mut a = vec![0u8; DESC_AREA];
        a[0] = 2;
        a[1] = 3;
        a[8] = 9; // second descriptor at offset 8: type 9, length 0
        let d = walk(&a).unwrap();
        assert_eq!(d.len(), 2);
        assert_eq!(d[0].payload.len(), 3);
        assert_eq!(d[1].ty, 9);
        let mut a = vec![0u8; DESC_AREA];
        a[0] = 2;
        a[1..5].copy_from_slice(&5000u32.to_le_bytes());
        assert!(walk(&a).is_err());
        let mut a = vec![0u8; DESC_AREA];
        a[0] = 2;
        a[1..5].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(walk(&a).is_err());
        // Fewer than 5 bytes left at the end ends the walk.
        let mut a = vec![0u8; DESC_AREA];
        a[0] = 1;
        a[1..5].copy_from_slice(&((DESC_AREA - 5 - 3) as u32).to_le_bytes());
        a[DESC_AREA - 3] = 7;
        assert_eq!(walk(&a).unwrap().len(), 1);
    }
}
