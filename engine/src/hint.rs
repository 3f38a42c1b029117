//! Hint blobs: a keydir image that spares open from scanning data blobs.
//!
//! Two uses, one encoding: a merge writes a hint for its output blob (every record in it), and a
//! clean close writes a keydir snapshot per shard (every live key). A hint is a header, the list
//! of data blobs it covers, then entries; each part is covered by a crc32c, so a torn or stale
//! hint is rejected as a whole and open falls back to scanning.
//!
//! Header (40 bytes):
//!
//! | offset | size | field       | meaning                                              |
//! |--------|------|-------------|------------------------------------------------------|
//! | 0      | 8    | magic       | `b"BCHINT01"`                                        |
//! | 8      | 8    | entries     | number of entries                                    |
//! | 16     | 8    | body_len    | bytes after the header                               |
//! | 24     | 8    | max_seq     | highest record seq the hint accounts for             |
//! | 32     | 4    | body_crc    | crc32c of the body                                   |
//! | 36     | 4    | header_crc  | crc32c of bytes 0..36                                |
//!
//! Body: `owner_seq: u64` (the `bc.seq` of the hint blob itself, so a stale hint left in a
//! reused cluster never passes for this one), `blob_count: u32`, then `blob_count` × (`blob_seq: u64`, `valid_len: u64`), then
//! `entries` × entry:
//!
//! | offset | size    | field     |
//! |--------|---------|-----------|
//! | 0      | 8       | blob_seq  |
//! | 8      | 8       | seq       | (0 in a keydir snapshot: older than any later record)
//! | 16     | 4       | offset    |
//! | 20     | 4       | value_len |
//! | 24     | 2       | key_len   |
//! | 26     | key_len | key       |

use crate::error::{Error, Result};

pub const MAGIC: &[u8; 8] = b"BCHINT01";
pub const HEADER_LEN: usize = 40;
const ENTRY_FIXED: usize = 26;

/// One entry of a hint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub blob_seq: u64,
    pub seq: u64,
    pub offset: u32,
    pub value_len: u32,
    pub key: Vec<u8>,
}

/// Builds a hint in memory.
pub struct Writer {
    body: Vec<u8>,
    entries: u64,
    max_seq: u64,
}

impl Writer {
    /// A hint stored in the blob with `bc.seq` = `owner_seq`, covering `blobs` =
    /// (blob_seq, valid_len).
    pub fn new(owner_seq: u64, blobs: &[(u64, u64)]) -> Self {
        let mut body = Vec::with_capacity(12 + blobs.len() * 16);
        body.extend_from_slice(&owner_seq.to_le_bytes());
        body.extend_from_slice(&(blobs.len() as u32).to_le_bytes());
        for (s, l) in blobs {
            body.extend_from_slice(&s.to_le_bytes());
            body.extend_from_slice(&l.to_le_bytes());
        }
        Writer {
            body,
            entries: 0,
            max_seq: 0,
        }
    }

    pub fn push(&mut self, blob_seq: u64, seq: u64, offset: u32, value_len: u32, key: &[u8]) {
        self.body.extend_from_slice(&blob_seq.to_le_bytes());
        self.body.extend_from_slice(&seq.to_le_bytes());
        self.body.extend_from_slice(&offset.to_le_bytes());
        self.body.extend_from_slice(&value_len.to_le_bytes());
        self.body
            .extend_from_slice(&(key.len() as u16).to_le_bytes());
        self.body.extend_from_slice(key);
        self.entries += 1;
        self.max_seq = self.max_seq.max(seq);
    }

    /// Raise the recorded max seq (a snapshot records the shard's seq, not its entries').
    pub fn note_seq(&mut self, seq: u64) {
        self.max_seq = self.max_seq.max(seq);
    }

    /// The encoded hint, zero-padded to a multiple of `align`.
    pub fn finish(self, align: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER_LEN + self.body.len() + align);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&self.entries.to_le_bytes());
        out.extend_from_slice(&(self.body.len() as u64).to_le_bytes());
        out.extend_from_slice(&self.max_seq.to_le_bytes());
        out.extend_from_slice(&crc32c::crc32c(&self.body).to_le_bytes());
        let hc = crc32c::crc32c(&out[..36]);
        out.extend_from_slice(&hc.to_le_bytes());
        out.extend_from_slice(&self.body);
        let padded = out.len().div_ceil(align) * align;
        out.resize(padded, 0);
        out
    }
}

/// A decoded hint header.
#[derive(Debug, Clone, Copy)]
pub struct Header {
    pub entries: u64,
    pub body_len: u64,
    pub max_seq: u64,
    body_crc: u32,
}

impl Header {
    /// Total encoded length (before padding).
    pub fn total_len(&self) -> u64 {
        (HEADER_LEN as u64).saturating_add(self.body_len)
    }
}

fn bad(blob: u64, offset: u64, detail: &str) -> Error {
    Error::Corruption {
        blob,
        offset,
        detail: format!("hint: {detail}"),
    }
}

/// Parse the header at the start of `buf`.
pub fn parse_header(buf: &[u8], blob: u64) -> Result<Header> {
    let h = buf
        .get(..HEADER_LEN)
        .ok_or_else(|| bad(blob, 0, "short header"))?;
    let u64_at = |o: usize| u64::from_le_bytes(h[o..o + 8].try_into().unwrap_or([0; 8]));
    let u32_at = |o: usize| u32::from_le_bytes(h[o..o + 4].try_into().unwrap_or([0; 4]));
    if &h[..8] != MAGIC {
        return Err(bad(blob, 0, "bad magic"));
    }
    if crc32c::crc32c(&h[..36]) != u32_at(36) {
        return Err(bad(blob, 0, "header crc"));
    }
    Ok(Header {
        entries: u64_at(8),
        body_len: u64_at(16),
        max_seq: u64_at(24),
        body_crc: u32_at(32),
    })
}

/// A verified hint.
#[derive(Debug, Clone)]
pub struct Hint {
    pub header: Header,
    /// `bc.seq` of the blob the hint was written for.
    pub owner_seq: u64,
    /// Data blobs covered: (blob_seq, valid_len).
    pub blobs: Vec<(u64, u64)>,
    pub entries: Vec<Entry>,
}

/// Decode a whole hint (`buf` holds at least `header.total_len()` bytes).
pub fn decode(buf: &[u8], blob: u64) -> Result<Hint> {
    let h = decode_ref(buf, blob)?;
    let entries = h.entries().map(|e| e.to_entry()).collect();
    Ok(Hint {
        header: h.header,
        owner_seq: h.owner_seq,
        blobs: h.blobs,
        entries,
    })
}

/// One entry of a hint, its key borrowed from the hint's bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EntryRef<'a> {
    pub blob_seq: u64,
    pub seq: u64,
    pub offset: u32,
    pub value_len: u32,
    pub key: &'a [u8],
}

impl EntryRef<'_> {
    pub fn to_entry(self) -> Entry {
        Entry {
            blob_seq: self.blob_seq,
            seq: self.seq,
            offset: self.offset,
            value_len: self.value_len,
            key: self.key.to_vec(),
        }
    }
}

/// A verified hint whose entries are decoded as they are walked: open applies them straight
/// into the keydir, with no allocation per entry.
#[derive(Debug, Clone)]
pub struct HintRef<'a> {
    pub header: Header,
    pub owner_seq: u64,
    pub blobs: Vec<(u64, u64)>,
    /// The entries' bytes (already checked to hold exactly `header.entries` entries).
    entries: &'a [u8],
}

impl<'a> HintRef<'a> {
    /// The entries, in order.
    pub fn entries(&self) -> impl Iterator<Item = EntryRef<'a>> + 'a {
        let mut r = Reader {
            b: self.entries,
            pos: 0,
        };
        std::iter::from_fn(move || r.entry())
    }
}

/// Verify a hint (`buf` holds at least `header.total_len()` bytes) without copying its entries.
pub fn decode_ref(buf: &[u8], blob: u64) -> Result<HintRef<'_>> {
    let header = parse_header(buf, blob)?;
    let end = usize::try_from(header.total_len()).map_err(|_| bad(blob, 0, "too long"))?;
    let body = buf
        .get(HEADER_LEN..end)
        .ok_or_else(|| bad(blob, 0, "truncated body"))?;
    if crc32c::crc32c(body) != header.body_crc {
        return Err(bad(blob, HEADER_LEN as u64, "body crc"));
    }
    let mut r = Reader { b: body, pos: 0 };
    let owner_seq = r.u64().ok_or_else(|| bad(blob, 0, "owner"))?;
    let n = r.u32().ok_or_else(|| bad(blob, 0, "blob list"))?;
    // Counts come from the input: never allocate more than the body can hold.
    let mut blobs = Vec::with_capacity((n as usize).min(body.len() / 16));
    for _ in 0..n {
        let s = r.u64().ok_or_else(|| bad(blob, 0, "blob list"))?;
        let l = r.u64().ok_or_else(|| bad(blob, 0, "blob list"))?;
        blobs.push((s, l));
    }
    let start = r.pos;
    for _ in 0..header.entries {
        let at = (HEADER_LEN + r.pos) as u64;
        r.entry().ok_or_else(|| bad(blob, at, "truncated entry"))?;
    }
    if r.pos != body.len() {
        return Err(bad(blob, 0, "trailing bytes"));
    }
    Ok(HintRef {
        header,
        owner_seq,
        blobs,
        entries: &body[start..],
    })
}

struct Reader<'a> {
    b: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let s = self.b.get(self.pos..self.pos + n)?;
        self.pos += n;
        Some(s)
    }
    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }
    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }
    fn u16(&mut self) -> Option<u16> {
        Some(u16::from_le_bytes(self.take(2)?.try_into().ok()?))
    }
    fn entry(&mut self) -> Option<EntryRef<'a>> {
        if self.b.len() - self.pos < ENTRY_FIXED {
            return None;
        }
        let blob_seq = self.u64()?;
        let seq = self.u64()?;
        let offset = self.u32()?;
        let value_len = self.u32()?;
        let klen = usize::from(self.u16()?);
        let key = self.take(klen)?;
        Some(EntryRef {
            blob_seq,
            seq,
            offset,
            value_len,
            key,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_rejects_damage() {
        let mut w = Writer::new(77, &[(3, 4096), (5, 100)]);
        w.push(3, 10, 0, 5, b"alpha");
        w.push(5, 11, 64, 0, b"");
        w.note_seq(20);
        let buf = w.finish(512);
        assert_eq!(buf.len() % 512, 0);
        let h = decode(&buf, 1).unwrap();
        assert_eq!(h.blobs, vec![(3, 4096), (5, 100)]);
        assert_eq!(h.owner_seq, 77);
        assert_eq!(h.entries.len(), 2);
        assert_eq!(h.entries[0].key, b"alpha");
        assert_eq!(h.header.max_seq, 20);
        let total = h.header.total_len() as usize;
        for i in 0..total {
            let mut b = buf.clone();
            b[i] ^= 4;
            assert!(decode(&b, 1).is_err(), "flip at {i} accepted");
        }
        assert!(decode(&buf[..total - 1], 1).is_err());
        let r = decode_ref(&buf, 1).unwrap();
        let walked: Vec<Entry> = r.entries().map(|e| e.to_entry()).collect();
        assert_eq!(walked, h.entries);
    }
}
