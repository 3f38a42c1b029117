//! The three allocation masks (`docs/blobstore-format.md`): used md pages, used clusters, used blob ids.
//!
//! Byte table of a mask region (`len` md pages, read and written as one transfer):
//!
//! | offset | size | field |
//! |---:|---:|---|
//! | 0 | 1 | type: 0 md pages, 1 clusters, 2 blob ids |
//! | 1 | 4 | length = number of valid bits |
//! | 5 | ceil(length/8) | bitmap, bit `i` = byte `5 + i/8`, bit `i % 8` (LSB first) |
//! | … | … | zero to the end of the region |
//!
//! No checksum covers a mask; a mask is only trusted when the super block says `clean = 1`.

use bitvec::prelude::{BitVec, Lsb0};

use crate::blobstore::error::{Error, Result};

/// Which mask a region holds (its type byte).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MaskKind {
    MdPages = 0,
    Clusters = 1,
    BlobIds = 2,
}

/// Bytes of the mask header (type + length).
pub const MASK_HEADER: u64 = 5;

/// An in-memory bit mask with the lowest-free searches the allocator needs.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Mask {
    bits: BitVec<u8, Lsb0>,
}

impl Mask {
    /// `len` clear bits.
    pub fn new(len: u32) -> Mask {
        Mask {
            bits: BitVec::repeat(false, len as usize),
        }
    }

    pub fn len(&self) -> u32 {
        self.bits.len() as u32
    }

    /// Extend to `len` bits with clear ones (never shrinks).
    pub fn grow(&mut self, len: u32) {
        if len as usize > self.bits.len() {
            self.bits.resize(len as usize, false);
        }
    }

    pub fn is_empty(&self) -> bool {
        self.bits.is_empty()
    }

    /// Bit `i`; out of range reads as set (never "free").
    pub fn get(&self, i: u32) -> bool {
        self.bits.get(i as usize).map(|b| *b).unwrap_or(true)
    }

    /// Set bit `i` (ignored when out of range).
    pub fn set(&mut self, i: u32) {
        if let Some(mut b) = self.bits.get_mut(i as usize) {
            *b = true;
        }
    }

    /// Clear bit `i` (ignored when out of range).
    pub fn clear(&mut self, i: u32) {
        if let Some(mut b) = self.bits.get_mut(i as usize) {
            *b = false;
        }
    }

    /// Lowest clear bit at or after `from`.
    pub fn first_clear_from(&self, from: u32) -> Option<u32> {
        let f = from as usize;
        if f >= self.bits.len() {
            return None;
        }
        self.bits[f..].first_zero().map(|i| (i + f) as u32)
    }

    pub fn count_ones(&self) -> u32 {
        self.bits.count_ones() as u32
    }

    /// Indexes of the set bits, ascending.
    pub fn ones(&self) -> impl Iterator<Item = u32> + '_ {
        self.bits.iter_ones().map(|i| i as u32)
    }

    /// Encode into a region of `region_bytes` bytes.
    pub fn encode(&self, kind: MaskKind, region_bytes: usize) -> Vec<u8> {
        let mut out = vec![0u8; region_bytes];
        out[0] = kind as u8;
        out[1..5].copy_from_slice(&self.len().to_le_bytes());
        let raw = self.bits.as_raw_slice();
        let n = raw.len().min(region_bytes.saturating_sub(5));
        out[5..5 + n].copy_from_slice(&raw[..n]);
        // The last byte's unused bits are zero: BitVec::repeat and set/clear never touch them.
        out
    }

    /// Decode a region. `min_bits` is the length the store needs: a longer mask is truncated
    /// (SPDK does so for the cluster mask after an interrupted grow), a shorter one is
    /// corruption. `region_offset` is the device byte offset, for errors.
    pub fn decode(
        kind: MaskKind,
        region: &[u8],
        min_bits: u32,
        exact: bool,
        region_offset: u64,
    ) -> Result<Mask> {
        let bad = |d: String| Error::corrupt_md(region_offset, d);
        if region.len() < 5 {
            return Err(bad(format!(
                "{kind:?} mask region is {} bytes",
                region.len()
            )));
        }
        if region[0] != kind as u8 {
            return Err(bad(format!("{kind:?} mask has type byte {}", region[0])));
        }
        let mut l = [0u8; 4];
        l.copy_from_slice(&region[1..5]);
        let len = u32::from_le_bytes(l);
        if len < min_bits || (exact && len != min_bits) {
            return Err(bad(format!(
                "{kind:?} mask holds {len} bits, the store needs {min_bits}"
            )));
        }
        let need = (u64::from(len)).div_ceil(8);
        if MASK_HEADER + need > region.len() as u64 {
            return Err(bad(format!(
                "{kind:?} mask of {len} bits does not fit its {}-byte region",
                region.len()
            )));
        }
        let bytes = &region[5..5 + need as usize];
        let mut bits: BitVec<u8, Lsb0> = BitVec::from_slice(bytes);
        bits.truncate(min_bits as usize);
        Ok(Mask { bits })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_table() {
        let mut m = Mask::new(10);
        m.set(0);
        m.set(3);
        m.set(9);
        let r = m.encode(MaskKind::Clusters, 16);
        assert_eq!(hex::encode(&r), "010a0000000902000000000000000000");
        // type 1, length 10, bits 0 and 3 -> 0x09, bit 9 -> byte 1 bit 1 -> 0x02
        assert_eq!(
            Mask::decode(MaskKind::Clusters, &r, 10, true, 0).unwrap(),
            m
        );
    }

    #[test]
    fn lowest_free_and_truncation() {
        let mut m = Mask::new(20);
        for i in 0..5 {
            m.set(i);
        }
        m.set(6);
        assert_eq!(m.first_clear_from(0), Some(5));
        assert_eq!(m.first_clear_from(6), Some(7));
        assert_eq!(m.first_clear_from(20), None);
        let r = m.encode(MaskKind::Clusters, 4096);
        let t = Mask::decode(MaskKind::Clusters, &r, 8, false, 0).unwrap();
        assert_eq!(t.len(), 8);
        assert_eq!(t.ones().collect::<Vec<_>>(), vec![0, 1, 2, 3, 4, 6]);
        assert!(Mask::decode(MaskKind::Clusters, &r, 8, true, 0).is_err());
        assert!(Mask::decode(MaskKind::MdPages, &r, 20, true, 0).is_err());
        assert!(Mask::decode(MaskKind::Clusters, &r, 21, false, 0).is_err());
        let mut huge = r.clone();
        huge[1..5].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(Mask::decode(MaskKind::Clusters, &huge, 8, false, 0).is_err());
    }
}
