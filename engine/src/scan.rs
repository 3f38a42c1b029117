//! The recovery scan of one data blob's log, and the rule that tells a torn tail from damage.
//!
//! A log's records are walked from offset 0. The first bad record (implausible header, crc
//! failure, or a `durable` claim past its own offset) at offset `x` is either
//! - the **end of the log** or a **torn tail**: bytes past the last flush, which a power loss
//!   may have kept in any subset. Nothing after `x` is kept (unflushed writes recover as a
//!   prefix), in every mode; or
//! - **damage**: bytes known to have been durable. They are, if something proves `x` lies
//!   below the blob's durable frontier: a valid record further on whose `durable` claim exceeds
//!   `x`; the blob's length recorded by a hint, a keydir snapshot or `bc.len` (set when the
//!   blob was sealed after a flush, or, on a merge output, at each step's commit point: a
//!   later step's copies past it are unflushed until that step commits); or, for a committed
//!   merge output without `bc.len` (merged before it was recorded), any valid record further
//!   on.
//!
//! Past damage, [`RecoveryMode::Salvage`] resumes at the next valid record (plausible header,
//! crc under the blob's salt); [`RecoveryMode::TolerateTornTail`] stops and the caller fails.
//!
//! Stale records of an earlier run of the same blob (a shard that continues its previous
//! active blob overwrites the torn tail from the end of the valid prefix) lie past the new
//! end and claim at most the old frontier, which is below the new run's first record: they
//! never prove anything about the new bytes.

use crate::error::Result;
use crate::options::RecoveryMode;
use crate::record::{self, Record};

/// Bytes fetched per device read.
const WINDOW: u64 = 4 << 20;

/// What proves bytes of a blob durable besides its records' own claims.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Evidence {
    /// Bytes known durable: a hint's or snapshot's length of the blob, or its `bc.len`.
    pub known_len: u64,
    /// A committed merge output without `bc.len`: every record it holds is trusted durable.
    pub whole: bool,
}

impl Evidence {
    /// The evidence of a data blob's xattrs: `bc.len` (`len`, 0 if absent), `bc.merge`, and
    /// `known`, a length a hint or keydir snapshot records. A committed merge output records
    /// its committed length in `bc.len` at each step's commit point: copies a later step left
    /// past it were never flushed. Only an output without one (written before merge set it)
    /// falls back to trusting every valid record it holds.
    pub fn of_blob(len: u64, merge: Option<&[u8]>, known: u64) -> Self {
        Evidence {
            known_len: len.max(known),
            whole: merge == Some(b"done") && len == 0,
        }
    }
}

/// A byte range of a blob that held durable records and no longer validates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct DamagedRange {
    pub offset: u64,
    pub len: u64,
}

/// A damaged range of one shard's log, as open reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct LogDamage {
    pub shard: usize,
    /// Blob id.
    pub blob: u64,
    /// The blob's `bc.seq`.
    pub blob_seq: u64,
    pub offset: u64,
    pub len: u64,
}

/// What a scan kept and found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct LogScan {
    /// End of the last record kept: where the log continues.
    pub end: u64,
    /// Records handed to the caller.
    pub records: u64,
    /// The durable frontier the evidence proves.
    pub proven: u64,
    /// Damage, in log order (under `TolerateTornTail` at most one: the scan stops there).
    pub damaged: Vec<DamagedRange>,
    /// Where the torn tail starts, if valid (unflushed) records were found past it.
    pub torn_at: Option<u64>,
    /// Valid records past the torn tail, dropped because nothing proves them durable.
    pub unflushed: u64,
}

/// A blob's bytes, read a window at a time through `read(offset, len)` (both multiples of
/// `unit`).
pub struct Source<'a> {
    read: Box<dyn FnMut(u64, u64) -> Result<Vec<u8>> + 'a>,
    total: u64,
    unit: u64,
    start: u64,
    buf: Vec<u8>,
}

impl<'a> Source<'a> {
    pub fn new(total: u64, unit: u64, read: impl FnMut(u64, u64) -> Result<Vec<u8>> + 'a) -> Self {
        Source {
            read: Box::new(read),
            total,
            unit: unit.max(1),
            start: 0,
            buf: Vec::new(),
        }
    }

    /// Bytes already in memory.
    pub fn from_bytes(bytes: &'a [u8]) -> Self {
        Source::new(bytes.len() as u64, 1, move |off, len| {
            Ok(bytes[off as usize..(off + len) as usize].to_vec())
        })
    }

    /// The bytes from `pos` on, at least `need` of them unless the blob ends first.
    fn get(&mut self, pos: u64, need: u64) -> Result<&[u8]> {
        if pos >= self.total {
            return Ok(&[]);
        }
        let need = need.min(self.total - pos);
        let have = self.start + self.buf.len() as u64;
        if pos < self.start || pos + need > have {
            let a = pos / self.unit * self.unit;
            let want = (pos + need - a).max(WINDOW).div_ceil(self.unit) * self.unit;
            let n = want.min(self.total - a);
            self.buf = (self.read)(a, n)?;
            self.start = a;
        }
        Ok(&self.buf[(pos - self.start) as usize..])
    }

    /// The valid record at `pos`, if there is one.
    fn record(&mut self, pos: u64, salt: u64) -> Result<Option<Record<'_>>> {
        let total = self.total;
        let head = self.get(pos, (record::HEADER_LEN + record::BATCH_EXT_LEN) as u64)?;
        let Some(h) = record::parse_header(head) else {
            return Ok(None);
        };
        let len = h.record_len() as u64;
        if len > total - pos || u64::from(h.durable) > pos {
            return Ok(None);
        }
        let buf = self.get(pos, len)?;
        Ok(record::decode(buf, salt))
    }
}

/// Valid records found by searching byte by byte past the first bad spot.
#[derive(Default)]
struct Survey {
    /// (offset, length) in log order.
    found: Vec<(u64, u64)>,
    max_claim: u64,
}

impl Survey {
    fn take(src: &mut Source<'_>, from: u64, salt: u64) -> Result<Survey> {
        let mut s = Survey::default();
        let mut q = from;
        while q < src.total {
            match src.record(q, salt)? {
                Some(r) => {
                    let len = r.header.record_len() as u64;
                    s.max_claim = s.max_claim.max(u64::from(r.header.durable));
                    s.found.push((q, len));
                    q += len;
                }
                None => q += 1,
            }
        }
        Ok(s)
    }

    /// The first record found past `x`.
    fn next_after(&self, x: u64) -> Option<u64> {
        let i = self.found.partition_point(|&(o, _)| o <= x);
        self.found.get(i).map(|&(o, _)| o)
    }

    fn count_after(&self, x: u64) -> u64 {
        (self.found.len() - self.found.partition_point(|&(o, _)| o <= x)) as u64
    }

    fn last_end(&self) -> u64 {
        self.found.last().map_or(0, |&(o, l)| o + l)
    }
}

/// Scan a log, calling `f(offset, record)` for every record kept (see the module doc).
pub fn scan_log(
    src: &mut Source<'_>,
    salt: u64,
    ev: Evidence,
    mode: RecoveryMode,
    mut f: impl FnMut(u64, Record<'_>),
) -> Result<LogScan> {
    let mut out = LogScan::default();
    let mut claims = 0u64;
    let mut survey: Option<Survey> = None;
    let mut pos = 0u64;
    while pos < src.total {
        if let Some(rec) = src.record(pos, salt)? {
            let len = rec.header.record_len() as u64;
            claims = claims.max(u64::from(rec.header.durable));
            f(pos, rec);
            out.records += 1;
            pos += len;
            out.end = pos;
            continue;
        }
        let sv = match &mut survey {
            Some(sv) => sv,
            None => survey.insert(Survey::take(src, pos + 1, salt)?),
        };
        let whole = if ev.whole { sv.last_end() } else { 0 };
        let proven = ev.known_len.max(claims).max(sv.max_claim).max(whole);
        out.proven = out.proven.max(proven);
        if pos >= proven {
            let n = sv.count_after(pos);
            if n > 0 {
                out.torn_at = Some(pos);
                out.unflushed = n;
            }
            break;
        }
        let next = sv.next_after(pos);
        let stop = next.unwrap_or_else(|| proven.min(src.total));
        out.damaged.push(DamagedRange {
            offset: pos,
            len: stop - pos,
        });
        match (mode, next) {
            (RecoveryMode::Salvage, Some(y)) => pos = y,
            _ => break,
        }
    }
    out.proven = out.proven.max(claims).max(ev.known_len);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{encode, encode_claiming, TOMBSTONE};

    const SALT: u64 = 77;

    /// A log of `n` one-record groups, each claiming the previous group durable; returns the
    /// log and each record's offset.
    fn log(n: u64) -> (Vec<u8>, Vec<u64>) {
        let mut v = Vec::new();
        let mut offs = Vec::new();
        for s in 1..=n {
            let at = v.len() as u64;
            let claim = offs.last().copied().unwrap_or(0) as u32;
            offs.push(at);
            let flags = if s % 5 == 0 { TOMBSTONE } else { 0 };
            let val = if flags == 0 {
                vec![s as u8; 30]
            } else {
                vec![]
            };
            encode_claiming(&mut v, SALT, s, claim, flags, 0, b"key", &val);
        }
        v.extend_from_slice(&[0; 300]);
        (v, offs)
    }

    fn run(bytes: &[u8], ev: Evidence, mode: RecoveryMode) -> (LogScan, Vec<u64>) {
        let mut seqs = Vec::new();
        let mut src = Source::from_bytes(bytes);
        let s = scan_log(&mut src, SALT, ev, mode, |_, r| seqs.push(r.header.seq)).unwrap();
        (s, seqs)
    }

    #[test]
    fn a_clean_log_ends_at_its_last_record() {
        let (v, offs) = log(10);
        let (s, seqs) = run(&v, Evidence::default(), RecoveryMode::TolerateTornTail);
        assert_eq!(seqs, (1..=10).collect::<Vec<_>>());
        assert_eq!(s.end, v.len() as u64 - 300);
        assert!(s.damaged.is_empty() && s.torn_at.is_none());
        assert_eq!(s.proven, offs[8]);
    }

    #[test]
    fn damage_below_a_later_claim_is_damage_not_a_torn_tail() {
        let (mut v, offs) = log(10);
        v[offs[3] as usize + 22] ^= 0xff;
        let (s, seqs) = run(&v, Evidence::default(), RecoveryMode::TolerateTornTail);
        assert_eq!(seqs, vec![1, 2, 3]);
        assert_eq!(
            s.damaged,
            vec![DamagedRange {
                offset: offs[3],
                len: offs[4] - offs[3]
            }]
        );
        let (s, seqs) = run(&v, Evidence::default(), RecoveryMode::Salvage);
        assert_eq!(seqs, vec![1, 2, 3, 5, 6, 7, 8, 9, 10]);
        assert_eq!(s.damaged.len(), 1);
        assert_eq!(s.end, v.len() as u64 - 300);
    }

    #[test]
    fn unproven_bytes_are_a_torn_tail_and_what_follows_is_dropped() {
        // Records 9 and 10 were written after the flush that record 9 claims: 9 lost, 10 landed.
        let (mut v, offs) = log(10);
        v[offs[8] as usize + 30] ^= 1;
        for mode in [RecoveryMode::TolerateTornTail, RecoveryMode::Salvage] {
            let (s, seqs) = run(&v, Evidence::default(), mode);
            assert_eq!(seqs, (1..=8).collect::<Vec<_>>());
            assert!(s.damaged.is_empty());
            assert_eq!((s.torn_at, s.unflushed), (Some(offs[8]), 1));
        }
        // A hint or `bc.len` that knows the length turns the same bytes into damage.
        let known = Evidence {
            known_len: v.len() as u64 - 300,
            whole: false,
        };
        let (s, _) = run(&v, known, RecoveryMode::TolerateTornTail);
        assert_eq!(s.damaged[0].offset, offs[8]);
        let (s, seqs) = run(&v, known, RecoveryMode::Salvage);
        assert_eq!(seqs.last(), Some(&10));
        assert_eq!(s.damaged.len(), 1);
    }

    #[test]
    fn a_merge_output_is_durable_as_a_whole() {
        let mut v = Vec::new();
        let mut offs = Vec::new();
        for s in 1..=4u64 {
            offs.push(v.len());
            encode(&mut v, SALT, s, 0, 0, b"k", b"vv");
        }
        v[offs[1] + 5] ^= 4;
        let whole = Evidence {
            known_len: 0,
            whole: true,
        };
        let (s, _) = run(&v, whole, RecoveryMode::TolerateTornTail);
        assert_eq!(s.damaged.len(), 1);
        let (s, _) = run(&v, Evidence::default(), RecoveryMode::TolerateTornTail);
        assert!(s.damaged.is_empty());
        assert_eq!(s.torn_at, Some(offs[1] as u64));
    }

    #[test]
    fn a_merge_output_is_durable_up_to_its_committed_length() {
        // Steps 1 and 2 committed (`bc.len` = end of record 2); step 3's copies were torn.
        let mut v = Vec::new();
        let mut offs = Vec::new();
        for s in 1..=5u64 {
            offs.push(v.len() as u64);
            encode(&mut v, SALT, s, 0, 0, b"k", b"vv");
        }
        v[offs[2] as usize + 5] ^= 4;
        let ev = Evidence::of_blob(offs[2], Some(b"done"), 0);
        let (s, seqs) = run(&v, ev, RecoveryMode::TolerateTornTail);
        assert_eq!(seqs, vec![1, 2]);
        assert!(s.damaged.is_empty());
        assert_eq!((s.torn_at, s.unflushed), (Some(offs[2]), 2));
        // Damage below the committed length is still damage.
        v[offs[1] as usize + 5] ^= 4;
        let (s, _) = run(&v, ev, RecoveryMode::TolerateTornTail);
        assert_eq!(s.damaged[0].offset, offs[1]);
        // An output without `bc.len` (merged before it was recorded) is trusted as a whole.
        let legacy = Evidence::of_blob(0, Some(b"done"), 0);
        assert!(legacy.whole);
        assert!(!Evidence::of_blob(0, Some(b"pending"), 0).whole);
    }

    #[test]
    fn damage_with_nothing_valid_after_it_reaches_the_proven_end() {
        let (mut v, offs) = log(6);
        let end = v.len() as u64 - 300;
        for b in &mut v[offs[4] as usize..end as usize] {
            *b = 0xee;
        }
        let ev = Evidence {
            known_len: end,
            whole: false,
        };
        let (s, seqs) = run(&v, ev, RecoveryMode::Salvage);
        assert_eq!(seqs, vec![1, 2, 3, 4]);
        assert_eq!(
            s.damaged,
            vec![DamagedRange {
                offset: offs[4],
                len: end - offs[4]
            }]
        );
    }

    #[test]
    fn a_claim_past_its_own_offset_is_not_a_record() {
        let mut v = Vec::new();
        encode_claiming(&mut v, SALT, 1, 4096, 0, 0, b"k", b"v");
        let (s, seqs) = run(&v, Evidence::default(), RecoveryMode::Salvage);
        assert!(seqs.is_empty() && s.end == 0);
    }

    #[test]
    fn windows_smaller_than_the_log_read_the_same() {
        let (mut v, offs) = log(50);
        v[offs[20] as usize + 1] ^= 1;
        v.resize(v.len().div_ceil(512) * 512, 0);
        let bytes = v.clone();
        let mut src = Source::new(v.len() as u64, 512, |off, len| {
            Ok(bytes[off as usize..(off + len) as usize].to_vec())
        });
        let mut n = 0;
        let s = scan_log(
            &mut src,
            SALT,
            Evidence::default(),
            RecoveryMode::Salvage,
            |_, _| n += 1,
        )
        .unwrap();
        assert_eq!((n, s.damaged.len()), (49, 1));
    }
}
