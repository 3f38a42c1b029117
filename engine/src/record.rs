//! Data records: the byte layout of everything a shard appends to its data blobs.
//!
//! A data blob is a log of records packed back to back from offset 0. Every integer is
//! little-endian and fixed-width; no `usize` reaches the disk.
//!
//! | offset | size      | field     | meaning                                                  |
//! |--------|-----------|-----------|----------------------------------------------------------|
//! | 0      | 4         | crc       | crc32c of `salt` (8 B, the blob's `bc.salt`) ‖ bytes 4.. |
//! | 4      | 8         | seq       | shard sequence number, strictly increasing per shard log |
//! | 12     | 2         | flags     | [`TOMBSTONE`], [`BATCH`], [`COMMIT`]; other bits zero    |
//! | 14     | 2         | key_len   | bytes of key                                             |
//! | 16     | 4         | value_len | bytes of value (0 for a tombstone)                       |
//! | 20     | 4         | durable   | bytes `[0, durable)` of this blob were flushed before this |
//! |        |           |           | record was written; at most the record's own offset      |
//! | 24     | 8 if BATCH| batch_id  | only with [`BATCH`]: the batch this record belongs to    |
//! | ..     | key_len   | key       |                                                          |
//! | ..     | value_len | value     |                                                          |
//!
//! A [`COMMIT`] record has no key and an 8-byte value: the batch id it commits.
//!
//! The crc is seeded with the blob's random salt, so a stale record left in a reused cluster
//! by a deleted blob never validates in its successor.
//!
//! `durable` is what tells a torn tail from damage: after a power loss, unflushed writes may
//! land in any subset, so a valid record behind a bad one proves nothing by itself; a valid
//! record whose `durable` lies past the bad bytes proves they had been flushed, so they are
//! damage. The recovery scan (`scan.rs`) applies that rule. See `engine/FORMAT.md`.

use crate::error::{Error, Result};

/// Bytes of the fixed header.
pub const HEADER_LEN: usize = 24;
/// Extra header bytes of a [`BATCH`] member (the batch id).
pub const BATCH_EXT_LEN: usize = 8;

/// The key was deleted (no value).
pub const TOMBSTONE: u16 = 1 << 0;
/// Member of a `write_batch`; effective only once a [`COMMIT`] of its batch id exists.
pub const BATCH: u16 = 1 << 1;
/// Commits a batch: value = the batch id (u64 LE), no key.
pub const COMMIT: u16 = 1 << 2;
const KNOWN_FLAGS: u16 = TOMBSTONE | BATCH | COMMIT;

/// What one record says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Put,
    Delete,
    Commit,
}

/// A decoded record header (offsets relative to the record start).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub seq: u64,
    pub flags: u16,
    pub key_len: u16,
    pub value_len: u32,
    /// Bytes of the blob flushed before this record was written (≤ its own offset).
    pub durable: u32,
    /// Batch id for [`BATCH`] members, else 0.
    pub batch_id: u64,
}

impl Header {
    /// Header bytes including the batch extension.
    pub fn header_len(&self) -> usize {
        header_len(self.flags)
    }

    /// Total record length.
    pub fn record_len(&self) -> usize {
        self.header_len() + usize::from(self.key_len) + self.value_len as usize
    }

    pub fn kind(&self) -> Kind {
        if self.flags & COMMIT != 0 {
            Kind::Commit
        } else if self.flags & TOMBSTONE != 0 {
            Kind::Delete
        } else {
            Kind::Put
        }
    }
}

/// Header length for a record with these flags.
pub fn header_len(flags: u16) -> usize {
    if flags & BATCH != 0 {
        HEADER_LEN + BATCH_EXT_LEN
    } else {
        HEADER_LEN
    }
}

/// Length of an encoded record.
pub fn encoded_len(flags: u16, key_len: usize, value_len: usize) -> usize {
    header_len(flags) + key_len + value_len
}

/// The crc of a record body (`bytes[4..]`) under `salt`.
fn crc(salt: u64, body: &[u8]) -> u32 {
    crc32c::crc32c_append(crc32c::crc32c(&salt.to_le_bytes()), body)
}

/// Append one record to `out` that claims nothing durable (`durable` = 0): merge output,
/// which its hint and commit protocol cover. See [`encode_claiming`].
pub fn encode(
    out: &mut Vec<u8>,
    salt: u64,
    seq: u64,
    flags: u16,
    batch_id: u64,
    key: &[u8],
    value: &[u8],
) {
    encode_claiming(out, salt, seq, 0, flags, batch_id, key, value);
}

/// Append one record to `out`, claiming that bytes `[0, durable)` of its blob were flushed
/// before it is written. The caller has checked `key.len() <= u16::MAX` and
/// `value.len() <= u32::MAX`, and that `durable` is at most the record's offset.
#[allow(clippy::too_many_arguments)]
pub fn encode_claiming(
    out: &mut Vec<u8>,
    salt: u64,
    seq: u64,
    durable: u32,
    flags: u16,
    batch_id: u64,
    key: &[u8],
    value: &[u8],
) {
    debug_assert!(flags & !KNOWN_FLAGS == 0);
    debug_assert!(key.len() <= usize::from(u16::MAX));
    debug_assert!(u32::try_from(value.len()).is_ok());
    let start = out.len();
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&seq.to_le_bytes());
    out.extend_from_slice(&flags.to_le_bytes());
    out.extend_from_slice(&(key.len() as u16).to_le_bytes());
    out.extend_from_slice(&(value.len() as u32).to_le_bytes());
    out.extend_from_slice(&durable.to_le_bytes());
    if flags & BATCH != 0 {
        out.extend_from_slice(&batch_id.to_le_bytes());
    }
    out.extend_from_slice(key);
    out.extend_from_slice(value);
    let c = crc(salt, &out[start + 4..]);
    out[start..start + 4].copy_from_slice(&c.to_le_bytes());
}

/// Parse the header at the start of `buf` without checking the crc. `None` if `buf` is too
/// short for a header or the header is implausible (unknown flags, a commit with a key).
pub fn parse_header(buf: &[u8]) -> Option<Header> {
    if buf.len() < HEADER_LEN {
        return None;
    }
    let seq = u64::from_le_bytes(buf[4..12].try_into().ok()?);
    let flags = u16::from_le_bytes(buf[12..14].try_into().ok()?);
    let key_len = u16::from_le_bytes(buf[14..16].try_into().ok()?);
    let value_len = u32::from_le_bytes(buf[16..20].try_into().ok()?);
    let durable = u32::from_le_bytes(buf[20..24].try_into().ok()?);
    if flags & !KNOWN_FLAGS != 0 || seq == 0 {
        return None;
    }
    if flags & COMMIT != 0 && (key_len != 0 || value_len != 8 || flags != COMMIT) {
        return None;
    }
    if flags & TOMBSTONE != 0 && value_len != 0 {
        return None;
    }
    let batch_id = if flags & BATCH != 0 {
        u64::from_le_bytes(buf.get(24..32)?.try_into().ok()?)
    } else {
        0
    };
    Some(Header {
        seq,
        flags,
        key_len,
        value_len,
        durable,
        batch_id,
    })
}

/// A record checked against its crc.
#[derive(Debug, Clone, Copy)]
pub struct Record<'a> {
    pub header: Header,
    pub key: &'a [u8],
    pub value: &'a [u8],
}

impl Record<'_> {
    /// The batch id a commit record commits.
    pub fn committed_batch(&self) -> Option<u64> {
        (self.header.kind() == Kind::Commit)
            .then(|| self.value.try_into().ok().map(u64::from_le_bytes))
            .flatten()
    }
}

/// Decode and verify the record at the start of `buf`. `None` if it is incomplete, its header
/// is implausible or its crc fails: to a scan, the end of the log.
pub fn decode(buf: &[u8], salt: u64) -> Option<Record<'_>> {
    let header = parse_header(buf)?;
    let len = header.record_len();
    let rec = buf.get(..len)?;
    let stored = u32::from_le_bytes(rec[0..4].try_into().ok()?);
    if crc(salt, &rec[4..]) != stored {
        return None;
    }
    let k = header.header_len();
    let v = k + usize::from(header.key_len);
    Some(Record {
        header,
        key: &rec[k..v],
        value: &rec[v..],
    })
}

/// Decode a record read back for a `get`: it must validate and carry `key`, else the blob is
/// corrupt at `offset`.
pub fn decode_for_read<'a>(
    buf: &'a [u8],
    salt: u64,
    key: &[u8],
    blob: u64,
    offset: u64,
) -> Result<Record<'a>> {
    let corrupt = |detail: &str| Error::Corruption {
        blob,
        offset,
        detail: detail.to_string(),
    };
    let rec = decode(buf, salt).ok_or_else(|| corrupt("record fails its crc"))?;
    if rec.key != key {
        return Err(corrupt("record holds another key"));
    }
    if rec.header.kind() != Kind::Put {
        return Err(corrupt("keydir points at a record without a value"));
    }
    Ok(rec)
}

/// Iterate the valid prefix of a log held in `buf` (records from offset 0). Yields
/// `(offset, record)`; stops at the first invalid record. [`Scan::end`] is then the length of
/// the valid prefix. (The engine reads logs through `scan.rs`; this plain walk serves tests and
/// fuzzers.)
#[cfg(any(test, feature = "internals"))]
pub struct Scan<'a> {
    buf: &'a [u8],
    salt: u64,
    pos: usize,
}

#[cfg(any(test, feature = "internals"))]
impl<'a> Scan<'a> {
    pub fn new(buf: &'a [u8], salt: u64) -> Self {
        Scan { buf, salt, pos: 0 }
    }

    /// Bytes of valid records seen so far.
    pub fn end(&self) -> usize {
        self.pos
    }
}

#[cfg(any(test, feature = "internals"))]
impl<'a> Iterator for Scan<'a> {
    type Item = (usize, Record<'a>);

    fn next(&mut self) -> Option<Self::Item> {
        let rest = self.buf.get(self.pos..)?;
        // No seq-order check: merge output holds records of several logs. This is the plain
        // valid prefix; recovery's classification of what follows lives in `scan.rs`.
        let rec = decode(rest, self.salt)?;
        let at = self.pos;
        self.pos += rec.header.record_len();
        Some((at, rec))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(flags: u16, batch: u64, key: &[u8], value: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        encode(&mut v, 42, 7, flags, batch, key, value);
        v
    }

    #[test]
    fn round_trips_every_kind() {
        let put = one(0, 0, b"k", b"value");
        assert_eq!(put.len(), encoded_len(0, 1, 5));
        let r = decode(&put, 42).unwrap();
        assert_eq!(
            (r.key, r.value, r.header.seq),
            (&b"k"[..], &b"value"[..], 7)
        );
        assert_eq!(r.header.kind(), Kind::Put);

        let del = one(TOMBSTONE | BATCH, 99, b"key", b"");
        let r = decode(&del, 42).unwrap();
        assert_eq!(r.header.kind(), Kind::Delete);
        assert_eq!(r.header.batch_id, 99);
        assert_eq!(r.key, b"key");

        let c = one(COMMIT, 0, b"", &99u64.to_le_bytes());
        assert_eq!(decode(&c, 42).unwrap().committed_batch(), Some(99));
    }

    #[test]
    fn layout_matches_the_byte_table() {
        let v = one(0, 0, b"ab", b"xyz");
        assert_eq!(&v[4..12], &7u64.to_le_bytes());
        assert_eq!(&v[12..14], &0u16.to_le_bytes());
        assert_eq!(&v[14..16], &2u16.to_le_bytes());
        assert_eq!(&v[16..20], &3u32.to_le_bytes());
        assert_eq!(&v[20..24], &0u32.to_le_bytes());
        assert_eq!(&v[24..], b"abxyz");
        let mut b = Vec::new();
        encode_claiming(&mut b, 42, 7, 4096, BATCH, 9, b"ab", b"");
        assert_eq!(&b[20..24], &4096u32.to_le_bytes());
        assert_eq!(&b[24..32], &9u64.to_le_bytes());
        let h = parse_header(&b).unwrap();
        assert_eq!((h.durable, h.batch_id, h.header_len()), (4096, 9, 32));
        let crc = crc32c::crc32c_append(crc32c::crc32c(&42u64.to_le_bytes()), &v[4..]);
        assert_eq!(&v[0..4], &crc.to_le_bytes());
    }

    #[test]
    fn rejects_wrong_salt_flips_and_truncation() {
        let v = one(0, 0, b"k", b"value");
        assert!(decode(&v, 43).is_none());
        assert!(decode(&v[..v.len() - 1], 42).is_none());
        for i in 0..v.len() {
            let mut w = v.clone();
            w[i] ^= 0x10;
            assert!(decode(&w, 42).is_none(), "flip at {i} accepted");
        }
        assert!(decode(&[0u8; 64], 42).is_none());
    }

    #[test]
    fn scan_stops_at_the_torn_tail() {
        let mut log = Vec::new();
        for s in 1..=3u64 {
            encode(&mut log, 5, s, 0, 0, b"k", &[s as u8; 10]);
        }
        let good = log.len();
        encode(&mut log, 5, 4, 0, 0, b"k", &[4; 10]);
        let last = log.len() - 3;
        log[last] ^= 1;
        log.extend_from_slice(&[0; 100]);
        let mut scan = Scan::new(&log, 5);
        assert_eq!(scan.by_ref().count(), 3);
        assert_eq!(scan.end(), good);
    }

    #[test]
    fn read_checks_the_key() {
        let v = one(0, 0, b"k", b"v");
        assert!(decode_for_read(&v, 42, b"k", 1, 0).is_ok());
        assert!(matches!(
            decode_for_read(&v, 42, b"j", 1, 0),
            Err(Error::Corruption { .. })
        ));
    }
}
