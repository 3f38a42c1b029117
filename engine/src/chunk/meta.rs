//! Chunk metadata in the KV store: keys and values, with their byte layouts.
//!
//! Every key starts with [`META_PREFIX`] (`ff ff 63 6b`), which user writes may not use.
//! `docs/chunk-format.md` has the same tables.
//!
//! Keys (big-endian numbers, so a prefix scan visits one chunk's keys together):
//!
//! | key                                   | bytes | value            |
//! |---------------------------------------|-------|------------------|
//! | prefix ‖ `c` ‖ chunk id u64           | 13    | [`ChunkHeader`]  |
//! | prefix ‖ `s` ‖ chunk id u64 ‖ seg u32 | 17    | [`Segment`]      |
//! | prefix ‖ `n`                          | 5     | next chunk id u64 LE |
//!
//! Chunk header value (24 bytes, little-endian):
//!
//! | offset | size | field     | meaning                                   |
//! |--------|------|-----------|-------------------------------------------|
//! | 0      | 1    | version   | 1                                         |
//! | 1      | 1    | seg_shift | log2 of the segment size (20: 1 MiB)      |
//! | 2      | 2    | reserved  | 0                                         |
//! | 4      | 8    | size      | chunk size in bytes                       |
//! | 12     | 8    | hint      | `hint_size` given at creation             |
//! | 20     | 4    | crc       | crc32c of bytes 0..20                     |
//!
//! Segment value (8 + 12·n + 4 bytes): one entry per page of the segment up to its last
//! written page, then a crc32c of everything before it.
//!
//! | offset  | size | field    | meaning                                           |
//! |---------|------|----------|---------------------------------------------------|
//! | 0       | 1    | version  | 1 (`end` is 0), or 2 (`end` is 1..=1 MiB)          |
//! | 1       | 1    | reserved | 0                                                 |
//! | 2       | 2    | n        | entries (1..=256)                                 |
//! | 4       | 4    | end      | the chunk is at least `segment start + end` bytes long |
//! | 8+12·i  | 4    | blob     | chunk blob number (`bc.chunk.no`); `ffffffff` = hole (reads zeroes) |
//! | 12+12·i | 4    | page     | 4 KiB page within that blob                       |
//! | 16+12·i | 4    | crc      | crc32c of (chunk id u64 LE ‖ chunk page u64 LE ‖ the 4 KiB page) |
//! | 8+12·n  | 4    | crc      | crc32c of bytes 0..8+12·n                         |

use crate::chunk::ChunkId;

/// Prefix of every chunk metadata key: two `ff` bytes (never in a UTF-8 text key) then `ck`.
pub const META_PREFIX: &[u8; 4] = crate::options::RESERVED_PREFIX;
/// Bytes per chunk page: the unit of allocation, checksum and copy on write.
pub const PAGE: u64 = 4096;
/// log2 of the segment size: one metadata key per 1 MiB of a chunk.
pub const SEG_SHIFT: u32 = 20;
/// Bytes per segment.
pub const SEG_BYTES: u64 = 1 << SEG_SHIFT;
/// Pages per segment.
pub const SEG_PAGES: usize = (SEG_BYTES / PAGE) as usize;
/// A segment entry's `blob` for a page never written.
pub const HOLE: u32 = u32::MAX;

const VERSION: u8 = 1;
/// Segment values with a nonzero `end`.
const SEG_VERSION_END: u8 = 2;
const HEADER_LEN: usize = 24;
const SEG_HEAD: usize = 8;
const ENTRY: usize = 12;

/// Why a metadata value does not decode.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("chunk metadata: {0}")]
pub struct DecodeError(pub &'static str);

/// Key of chunk `id`'s header.
pub fn chunk_key(id: ChunkId) -> Vec<u8> {
    let mut k = META_PREFIX.to_vec();
    k.push(b'c');
    k.extend_from_slice(&id.to_be_bytes());
    k
}

/// Key of segment `seg` of chunk `id`.
pub fn seg_key(id: ChunkId, seg: u32) -> Vec<u8> {
    let mut k = META_PREFIX.to_vec();
    k.push(b's');
    k.extend_from_slice(&id.to_be_bytes());
    k.extend_from_slice(&seg.to_be_bytes());
    k
}

/// Key of the next-chunk-id counter.
pub fn next_key() -> Vec<u8> {
    let mut k = META_PREFIX.to_vec();
    k.push(b'n');
    k
}

/// Prefix of every segment key of chunk `id`.
#[cfg(any(test, feature = "internals"))]
pub fn seg_prefix(id: ChunkId) -> Vec<u8> {
    let mut k = META_PREFIX.to_vec();
    k.push(b's');
    k.extend_from_slice(&id.to_be_bytes());
    k
}

/// A parsed metadata key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Key {
    Chunk(ChunkId),
    Seg(ChunkId, u32),
    Next,
}

/// Parse a metadata key (`None`: not one of ours).
pub fn parse_key(k: &[u8]) -> Option<Key> {
    let rest = k.strip_prefix(META_PREFIX.as_slice())?;
    match rest {
        [b'c', id @ ..] => Some(Key::Chunk(u64::from_be_bytes(id.try_into().ok()?))),
        [b's', id @ ..] if id.len() == 12 => Some(Key::Seg(
            u64::from_be_bytes(id[..8].try_into().ok()?),
            u32::from_be_bytes(id[8..].try_into().ok()?),
        )),
        [b'n'] => Some(Key::Next),
        _ => None,
    }
}

/// A chunk's header value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkHeader {
    pub size: u64,
    pub hint: u64,
}

impl ChunkHeader {
    pub fn encode(&self) -> Vec<u8> {
        let mut b = vec![0u8; HEADER_LEN];
        b[0] = VERSION;
        b[1] = SEG_SHIFT as u8;
        b[4..12].copy_from_slice(&self.size.to_le_bytes());
        b[12..20].copy_from_slice(&self.hint.to_le_bytes());
        let crc = crc32c::crc32c(&b[..20]);
        b[20..24].copy_from_slice(&crc.to_le_bytes());
        b
    }

    pub fn decode(b: &[u8]) -> Result<Self, DecodeError> {
        if b.len() != HEADER_LEN {
            return Err(DecodeError("chunk header has the wrong length"));
        }
        if crc32c::crc32c(&b[..20]) != le32(&b[20..24]) {
            return Err(DecodeError("chunk header fails its crc"));
        }
        if b[0] != VERSION || u32::from(b[1]) != SEG_SHIFT || b[2..4] != [0, 0] {
            return Err(DecodeError("chunk header of an unknown version"));
        }
        Ok(ChunkHeader {
            size: le64(&b[4..12]),
            hint: le64(&b[12..20]),
        })
    }
}

/// Where one chunk page lives and its checksum.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageRef {
    pub blob: u32,
    pub page: u32,
    pub crc: u32,
}

impl PageRef {
    pub const HOLE: PageRef = PageRef {
        blob: HOLE,
        page: 0,
        crc: 0,
    };

    pub fn is_hole(&self) -> bool {
        self.blob == HOLE
    }
}

/// A segment value: the pages of one 1 MiB piece of a chunk, trailing holes dropped.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Segment {
    pub pages: Vec<PageRef>,
    /// The chunk's size is at least the segment's start + `end` (0..=`SEG_BYTES`): a write
    /// that grows the chunk records it here, in the one value it commits, instead of
    /// rewriting the header (another key, so another KV shard, and a two-round batch).
    pub end: u32,
}

impl Segment {
    /// Entry `i` (a hole past the stored ones).
    pub fn get(&self, i: usize) -> PageRef {
        self.pages.get(i).copied().unwrap_or(PageRef::HOLE)
    }

    pub fn set(&mut self, i: usize, r: PageRef) {
        if self.pages.len() <= i {
            self.pages.resize(i + 1, PageRef::HOLE);
        }
        self.pages[i] = r;
    }

    /// Drop trailing holes; true if nothing is left (the key is deleted instead).
    pub fn trim(&mut self) -> bool {
        while self.pages.last().is_some_and(PageRef::is_hole) {
            self.pages.pop();
        }
        self.pages.is_empty()
    }

    pub fn encode(&self) -> Vec<u8> {
        let n = self.pages.len();
        let mut b = Vec::with_capacity(SEG_HEAD + ENTRY * n + 4);
        // Version 1 when there is no `end` (the bytes older versions wrote), else 2.
        b.push(if self.end == 0 {
            VERSION
        } else {
            SEG_VERSION_END
        });
        b.push(0);
        b.extend_from_slice(&(n as u16).to_le_bytes());
        b.extend_from_slice(&self.end.to_le_bytes());
        for p in &self.pages {
            b.extend_from_slice(&p.blob.to_le_bytes());
            b.extend_from_slice(&p.page.to_le_bytes());
            b.extend_from_slice(&p.crc.to_le_bytes());
        }
        let crc = crc32c::crc32c(&b);
        b.extend_from_slice(&crc.to_le_bytes());
        b
    }

    pub fn decode(b: &[u8]) -> Result<Self, DecodeError> {
        if b.len() < SEG_HEAD + 4 {
            return Err(DecodeError("segment value too short"));
        }
        let body = b.len() - 4;
        if crc32c::crc32c(&b[..body]) != le32(&b[body..]) {
            return Err(DecodeError("segment value fails its crc"));
        }
        let end = le32(&b[4..8]);
        let known = match b[0] {
            VERSION => end == 0,
            SEG_VERSION_END => end != 0 && u64::from(end) <= SEG_BYTES,
            _ => false,
        };
        if !known || b[1] != 0 {
            return Err(DecodeError("segment value of an unknown version"));
        }
        let n = usize::from(u16::from_le_bytes([b[2], b[3]]));
        if n == 0 || n > SEG_PAGES || body != SEG_HEAD + ENTRY * n {
            return Err(DecodeError("segment value has a bad entry count"));
        }
        let pages = b[SEG_HEAD..body]
            .chunks_exact(ENTRY)
            .map(|e| PageRef {
                blob: le32(&e[0..4]),
                page: le32(&e[4..8]),
                crc: le32(&e[8..12]),
            })
            .collect();
        Ok(Segment { pages, end })
    }

    /// Where this segment says chunk `s`'s size reaches (0: nothing recorded).
    pub fn reach(&self, s: u32) -> u64 {
        if self.end == 0 {
            0
        } else {
            u64::from(s) * SEG_BYTES + u64::from(self.end)
        }
    }
}

/// crc32c of a chunk page: binds the bytes to the chunk and page they belong to, so a page
/// of another chunk (or of another place in this one) in a reused slot fails.
pub fn page_crc(id: ChunkId, chunk_page: u64, data: &[u8]) -> u32 {
    let mut pre = [0u8; 16];
    pre[..8].copy_from_slice(&id.to_le_bytes());
    pre[8..].copy_from_slice(&chunk_page.to_le_bytes());
    crc32c::crc32c_append(crc32c::crc32c(&pre), data)
}

fn le32(b: &[u8]) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[..4]);
    u32::from_le_bytes(a)
}

fn le64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_le_bytes(a)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn keys_parse_back() {
        assert_eq!(parse_key(&chunk_key(7)), Some(Key::Chunk(7)));
        assert_eq!(parse_key(&seg_key(7, 3)), Some(Key::Seg(7, 3)));
        assert_eq!(parse_key(&next_key()), Some(Key::Next));
        assert_eq!(parse_key(b"user key"), None);
        assert!(seg_key(7, 3).starts_with(&seg_prefix(7)));
        assert!(!seg_key(70, 3).starts_with(&seg_prefix(7)));
        assert_eq!(seg_key(1, 2).len(), 17);
    }

    #[test]
    fn header_byte_layout() {
        let h = ChunkHeader {
            size: 0x0102,
            hint: 5,
        };
        let b = h.encode();
        assert_eq!(b.len(), 24);
        assert_eq!(&b[..4], &[1, 20, 0, 0]);
        assert_eq!(&b[4..12], &0x0102u64.to_le_bytes());
        assert_eq!(ChunkHeader::decode(&b), Ok(h));
        let mut bad = b.clone();
        bad[5] ^= 1;
        assert!(ChunkHeader::decode(&bad).is_err());
        assert!(ChunkHeader::decode(&b[..23]).is_err());
    }

    #[test]
    fn segment_byte_layout_and_damage() {
        let mut s = Segment::default();
        s.set(
            1,
            PageRef {
                blob: 2,
                page: 3,
                crc: 4,
            },
        );
        let b = s.encode();
        assert_eq!(b.len(), 8 + 24 + 4);
        assert_eq!(&b[..8], &[1, 0, 2, 0, 0, 0, 0, 0]);
        assert_eq!(&b[8..12], &HOLE.to_le_bytes());
        assert_eq!(&b[20..24], &2u32.to_le_bytes());
        assert_eq!(Segment::decode(&b), Ok(s.clone()));
        for i in 0..b.len() {
            let mut bad = b.clone();
            bad[i] ^= 0x10;
            assert!(Segment::decode(&bad).is_err(), "flip at {i} accepted");
        }
        assert!(Segment::decode(&[]).is_err());
        // Version 2 carries `end`; a version 1 value with one, or a version 2 value
        // without one or past the segment, is refused.
        let mut e = s.clone();
        e.end = 5000;
        let b2 = e.encode();
        assert_eq!(&b2[..8], &[2, 0, 2, 0, 0x88, 0x13, 0, 0]);
        assert_eq!(Segment::decode(&b2), Ok(e.clone()));
        assert_eq!(e.reach(3), 3 * SEG_BYTES + 5000);
        for (v, end) in [(1u8, 5000u32), (2, 0), (2, (1 << 20) + 1)] {
            let mut bad = b2.clone();
            bad[0] = v;
            bad[4..8].copy_from_slice(&end.to_le_bytes());
            let body = bad.len() - 4;
            let crc = crc32c::crc32c(&bad[..body]);
            bad[body..].copy_from_slice(&crc.to_le_bytes());
            assert!(Segment::decode(&bad).is_err(), "v{v} end {end} accepted");
        }
        s.set(1, PageRef::HOLE);
        assert!(s.trim());
    }

    #[test]
    fn page_crc_binds_place() {
        let d = vec![7u8; 4096];
        assert_ne!(page_crc(1, 0, &d), page_crc(1, 1, &d));
        assert_ne!(page_crc(1, 0, &d), page_crc(2, 0, &d));
        assert_eq!(page_crc(1, 0, &d), page_crc(1, 0, &d));
    }

    fn page_ref() -> impl Strategy<Value = PageRef> {
        (any::<u32>(), any::<u32>(), any::<u32>()).prop_map(|(blob, page, crc)| PageRef {
            blob,
            page,
            crc,
        })
    }

    proptest! {
        #[test]
        fn segment_round_trips(
            pages in proptest::collection::vec(page_ref(), 1..=SEG_PAGES),
            end in prop_oneof![Just(0u32), 1u32..=(1 << 20)],
        ) {
            let s = Segment { pages, end };
            let b = s.encode();
            prop_assert_eq!(b[0], if end == 0 { 1 } else { 2 });
            prop_assert_eq!(Segment::decode(&b), Ok(s));
        }

        #[test]
        fn header_round_trips(size in any::<u64>(), hint in any::<u64>()) {
            let h = ChunkHeader { size, hint };
            prop_assert_eq!(ChunkHeader::decode(&h.encode()), Ok(h));
        }

        #[test]
        fn decoders_never_panic(b in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = Segment::decode(&b);
            let _ = ChunkHeader::decode(&b);
            let _ = parse_key(&b);
        }

        #[test]
        fn keys_round_trip(id in any::<u64>(), seg in any::<u32>()) {
            prop_assert_eq!(parse_key(&chunk_key(id)), Some(Key::Chunk(id)));
            prop_assert_eq!(parse_key(&seg_key(id, seg)), Some(Key::Seg(id, seg)));
        }
    }
}
