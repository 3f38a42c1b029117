//! The super block (`docs/blobstore-format.md`): page 0 of the device, 4096 bytes, CRC-32C protected.
//!
//! Byte table (little-endian, packed):
//!
//! | offset | size | field |
//! |---:|---:|---|
//! | 0 | 8 | signature `SPDKBLOB` |
//! | 8 | 4 | version (written 3; 1..=3 accepted) |
//! | 12 | 4 | length (4096) |
//! | 16 | 4 | clean (1 = masks on disk are exact) |
//! | 20 | 8 | super_blob id, `u64::MAX` = none |
//! | 28 | 4 | cluster_size |
//! | 32 | 4 | used_page_mask_start |
//! | 36 | 4 | used_page_mask_len |
//! | 40 | 4 | used_cluster_mask_start |
//! | 44 | 4 | used_cluster_mask_len |
//! | 48 | 4 | md_start |
//! | 52 | 4 | md_len |
//! | 56 | 16 | bstype |
//! | 72 | 4 | used_blobid_mask_start |
//! | 76 | 4 | used_blobid_mask_len (0 = legacy store without blob-id mask) |
//! | 80 | 8 | size in bytes (0 = legacy, use device size) |
//! | 88 | 4 | io_unit_size (0 = legacy 4096) |
//! | 92 | 4 | md_page_size (0 = legacy 4096) |
//! | 96 | 3996 | reserved (kept verbatim across rewrites, as SPDK does) |
//! | 4092 | 4 | CRC-32C of bytes 0..4092 |

use crate::blobstore::error::{Error, Result};
use crate::blobstore::Bstype;

/// Bytes of the super block structure.
pub const SUPER_BLOCK_SIZE: usize = 4096;
/// The signature at byte 0.
pub const SIGNATURE: [u8; 8] = *b"SPDKBLOB";
/// The version this implementation writes.
pub const VERSION: u32 = 3;
const RESERVED_OFF: usize = 96;
const CRC_OFF: usize = 4092;

/// A decoded super block. `reserved` keeps bytes 96..4092 so a rewrite preserves them.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct SuperBlock {
    pub version: u32,
    pub length: u32,
    /// Raw `clean` field (1 = clean).
    pub clean: u32,
    pub super_blob: u64,
    pub cluster_size: u32,
    pub used_page_mask_start: u32,
    pub used_page_mask_len: u32,
    pub used_cluster_mask_start: u32,
    pub used_cluster_mask_len: u32,
    pub md_start: u32,
    pub md_len: u32,
    pub bstype: Bstype,
    pub used_blobid_mask_start: u32,
    pub used_blobid_mask_len: u32,
    pub size: u64,
    pub io_unit_size: u32,
    pub md_page_size: u32,
    pub reserved: Vec<u8>,
}

/// CRC-32C over the first 4092 bytes of a 4096-byte structure (super block or md page).
pub fn struct_crc(buf: &[u8]) -> u32 {
    crc32c::crc32c(&buf[..CRC_OFF])
}

/// Little-endian u32 at `o` (caller checked the bounds).
pub(crate) fn read_u32(b: &[u8], o: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[o..o + 4]);
    u32::from_le_bytes(a)
}

/// Little-endian u64 at `o` (caller checked the bounds).
pub(crate) fn read_u64(b: &[u8], o: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[o..o + 8]);
    u64::from_le_bytes(a)
}

impl SuperBlock {
    /// Encode to the 4096 on-disk bytes, CRC included.
    pub fn encode(&self) -> Vec<u8> {
        let mut b = vec![0u8; SUPER_BLOCK_SIZE];
        b[0..8].copy_from_slice(&SIGNATURE);
        b[8..12].copy_from_slice(&self.version.to_le_bytes());
        b[12..16].copy_from_slice(&self.length.to_le_bytes());
        b[16..20].copy_from_slice(&self.clean.to_le_bytes());
        b[20..28].copy_from_slice(&self.super_blob.to_le_bytes());
        b[28..32].copy_from_slice(&self.cluster_size.to_le_bytes());
        b[32..36].copy_from_slice(&self.used_page_mask_start.to_le_bytes());
        b[36..40].copy_from_slice(&self.used_page_mask_len.to_le_bytes());
        b[40..44].copy_from_slice(&self.used_cluster_mask_start.to_le_bytes());
        b[44..48].copy_from_slice(&self.used_cluster_mask_len.to_le_bytes());
        b[48..52].copy_from_slice(&self.md_start.to_le_bytes());
        b[52..56].copy_from_slice(&self.md_len.to_le_bytes());
        b[56..72].copy_from_slice(&self.bstype.0);
        b[72..76].copy_from_slice(&self.used_blobid_mask_start.to_le_bytes());
        b[76..80].copy_from_slice(&self.used_blobid_mask_len.to_le_bytes());
        b[80..88].copy_from_slice(&self.size.to_le_bytes());
        b[88..92].copy_from_slice(&self.io_unit_size.to_le_bytes());
        b[92..96].copy_from_slice(&self.md_page_size.to_le_bytes());
        let n = self.reserved.len().min(CRC_OFF - RESERVED_OFF);
        b[RESERVED_OFF..RESERVED_OFF + n].copy_from_slice(&self.reserved[..n]);
        let crc = struct_crc(&b);
        b[CRC_OFF..].copy_from_slice(&crc.to_le_bytes());
        b
    }

    /// Decode and validate (SPDK's order: version, signature, CRC). Every failure is
    /// [`Error::NotABlobstore`].
    pub fn decode(b: &[u8]) -> Result<SuperBlock> {
        if b.len() < SUPER_BLOCK_SIZE {
            return Err(Error::NotABlobstore(format!(
                "device too small for a super block ({} bytes)",
                b.len()
            )));
        }
        let version = read_u32(b, 8);
        if !(1..=3).contains(&version) {
            return Err(Error::NotABlobstore(format!(
                "super block version {version} is not 1..=3"
            )));
        }
        if b[0..8] != SIGNATURE {
            return Err(Error::NotABlobstore("no SPDKBLOB signature".into()));
        }
        let stored = read_u32(b, CRC_OFF);
        let crc = struct_crc(b);
        if stored != crc {
            return Err(Error::NotABlobstore(format!(
                "super block CRC {stored:#010x} != computed {crc:#010x}"
            )));
        }
        let mut bstype = [0u8; 16];
        bstype.copy_from_slice(&b[56..72]);
        Ok(SuperBlock {
            version,
            length: read_u32(b, 12),
            clean: read_u32(b, 16),
            super_blob: read_u64(b, 20),
            cluster_size: read_u32(b, 28),
            used_page_mask_start: read_u32(b, 32),
            used_page_mask_len: read_u32(b, 36),
            used_cluster_mask_start: read_u32(b, 40),
            used_cluster_mask_len: read_u32(b, 44),
            md_start: read_u32(b, 48),
            md_len: read_u32(b, 52),
            bstype: Bstype(bstype),
            used_blobid_mask_start: read_u32(b, 72),
            used_blobid_mask_len: read_u32(b, 76),
            size: read_u64(b, 80),
            io_unit_size: read_u32(b, 88),
            md_page_size: read_u32(b, 92),
            reserved: b[RESERVED_OFF..CRC_OFF].to_vec(),
        })
    }

    /// True when the `clean` field says the masks are exact.
    pub fn is_clean(&self) -> bool {
        self.clean == 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The worked example of `docs/blobstore-format.md` (1 GiB, 512-byte blocks, defaults), as SPDK writes it.
    pub(crate) fn example_a(clean: u32) -> SuperBlock {
        SuperBlock {
            version: 3,
            length: 4096,
            clean,
            super_blob: u64::MAX,
            cluster_size: 0x10_0000,
            used_page_mask_start: 1,
            used_page_mask_len: 1,
            used_cluster_mask_start: 2,
            used_cluster_mask_len: 1,
            md_start: 4,
            md_len: 1024,
            bstype: Bstype::default(),
            used_blobid_mask_start: 3,
            used_blobid_mask_len: 1,
            size: 1 << 30,
            io_unit_size: 512,
            md_page_size: 4096,
            reserved: vec![0; 3996],
        }
    }

    #[test]
    fn example_a_bytes_match_the_format_notes() {
        let hex96 = concat!(
            "5350444b424c4f42",
            "03000000",
            "00100000",
            "00000000",
            "ffffffffffffffff",
            "00001000",
            "01000000",
            "01000000",
            "02000000",
            "01000000",
            "04000000",
            "00040000",
            "00000000000000000000000000000000",
            "03000000",
            "01000000",
            "0000004000000000",
            "00020000",
            "00100000"
        );
        let b = example_a(0).encode();
        assert_eq!(hex::encode(&b[..96]), hex96);
        assert!(b[96..4092].iter().all(|&x| x == 0));
        assert_eq!(read_u32(&b, 4092), 0xBFB8_212F);
        assert_eq!(read_u32(&example_a(1).encode(), 4092), 0xC78E_BC9D);
    }

    #[test]
    fn crc_check_values() {
        assert_eq!(crc32c::crc32c(b"123456789"), 0xE306_9283);
        assert_eq!(struct_crc(&[0u8; 4096]), 0xA732_586E);
    }

    #[test]
    fn round_trip_and_rejects() {
        let sb = example_a(1);
        let b = sb.encode();
        assert_eq!(SuperBlock::decode(&b).unwrap(), sb);
        let mut bad = b.clone();
        bad[0] = b'X';
        assert!(matches!(
            SuperBlock::decode(&bad),
            Err(Error::NotABlobstore(_))
        ));
        let mut bad = b.clone();
        bad[100] ^= 1;
        assert!(matches!(
            SuperBlock::decode(&bad),
            Err(Error::NotABlobstore(_))
        ));
        let mut bad = b.clone();
        bad[8] = 4;
        assert!(matches!(
            SuperBlock::decode(&bad),
            Err(Error::NotABlobstore(_))
        ));
        assert!(SuperBlock::decode(&[0u8; 4096]).is_err());
        assert!(SuperBlock::decode(&b[..100]).is_err());
    }
}
