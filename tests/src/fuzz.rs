//! The bodies of the engine's fuzz targets (`fuzz/fuzz_targets/*.rs` call these), shared with
//! `tests/tests/fuzz_corpus.rs`, which replays every corpus file through them in `cargo test`.
//! Each function panics on a property violation (that is the fuzzer's finding) and otherwise
//! returns quietly whatever the input.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::OnceLock;

use blobcask::device::ErrorAt;
use blobcask::{catalog, hint, record, scan, RecoveryMode, SyncPolicy};

use crate::harness::{self, Step};
use crate::oracle::{self, Key, Op, Oracle};

fn u64_at(data: &[u8], at: usize) -> u64 {
    let mut b = [0u8; 8];
    for (i, x) in b.iter_mut().enumerate() {
        *x = data.get(at + i).copied().unwrap_or(0);
    }
    u64::from_le_bytes(b)
}

/// Record decoder: the first 8 bytes are the blob salt, the rest a log. Decoding never panics,
/// a scan never runs past its buffer, and every record it accepts re-encodes to exactly the
/// bytes it was decoded from.
pub fn record_decode(data: &[u8]) {
    let salt = u64_at(data, 0);
    let log = data.get(8..).unwrap_or(&[]);
    let _ = record::parse_header(log);
    let mut scan = record::Scan::new(log, salt);
    let mut at_end = 0;
    for (off, rec) in scan.by_ref() {
        let h = rec.header;
        let len = h.record_len();
        assert!(
            off + len <= log.len(),
            "record at {off} runs past the buffer"
        );
        let mut again = Vec::new();
        record::encode_claiming(
            &mut again, salt, h.seq, h.durable, h.flags, h.batch_id, rec.key, rec.value,
        );
        assert_eq!(
            &again[..],
            &log[off..off + len],
            "record at {off} does not round-trip"
        );
        at_end = off + len;
    }
    assert_eq!(scan.end(), at_end);
    if let Some(rec) = record::decode(log, salt) {
        let _ = record::decode_for_read(log, salt, rec.key, 1, 0);
    }
    // The recovery scan: in bounds, and salvage keeps at least what the default keeps.
    let mut kept = [0u64; 2];
    for (i, mode) in [RecoveryMode::TolerateTornTail, RecoveryMode::Salvage]
        .into_iter()
        .enumerate()
    {
        let mut src = scan::Source::from_bytes(log);
        let ev = scan::Evidence {
            known_len: u64_at(data, 1) % (log.len() as u64 + 1),
            whole: data.first().is_some_and(|b| b & 1 == 1),
        };
        let s = scan::scan_log(&mut src, salt, ev, mode, |off, rec| {
            assert!(off as usize + rec.header.record_len() <= log.len());
            kept[i] += 1;
        })
        .expect("an in-memory scan cannot fail");
        assert!(s.end as usize <= log.len());
        assert!(s
            .damaged
            .iter()
            .all(|d| d.offset + d.len <= log.len() as u64));
    }
    assert!(kept[1] >= kept[0], "salvage kept less than the default");
}

/// Hint decoder: decoding arbitrary bytes never panics (nor allocates without bound), and a
/// hint it accepts holds no more entries than its bytes can carry.
pub fn hint_decode(data: &[u8]) {
    let _ = hint::parse_header(data, 7);
    if let Ok(h) = hint::decode(data, 7) {
        assert!(h.entries.len() as u64 == h.header.entries);
        assert!(h.header.total_len() <= data.len() as u64);
        for e in &h.entries {
            assert!(e.key.len() <= data.len());
        }
    }
}

/// Catalog decoder: decoding arbitrary bytes never panics (nor allocates without bound), and a
/// catalog it accepts re-encodes to exactly the bytes it came from.
pub fn catalog_decode(data: &[u8]) {
    let _ = catalog::total_len(data);
    if let Ok(c) = catalog::decode(data) {
        let again = catalog::encode(&c);
        assert_eq!(again.as_slice(), &data[..again.len()]);
        for e in &c.entries {
            assert!(e.clusters.len() <= data.len() * 64);
        }
    }
}

/// Chunk metadata decoders (`chunk/meta.rs`): a key, a chunk header and a segment value from
/// the same bytes. Decoding never panics, and what is accepted re-encodes to the same bytes.
pub fn chunk_meta_decode(data: &[u8]) {
    use blobcask::chunk::meta::{self, ChunkHeader, Segment};
    if let Some(k) = meta::parse_key(data) {
        let again = match k {
            meta::Key::Chunk(id) => meta::chunk_key(id),
            meta::Key::Seg(id, seg) => meta::seg_key(id, seg),
            meta::Key::Next => meta::next_key(),
        };
        assert_eq!(again, data);
    }
    if let Ok(h) = ChunkHeader::decode(data) {
        assert_eq!(h.encode(), data);
    }
    if let Ok(s) = Segment::decode(data) {
        assert!(!s.pages.is_empty() && s.pages.len() <= meta::SEG_PAGES);
        assert_eq!(s.encode(), data);
    }
}

/// A small store image (clean close, after a merge) and every value ever written per key.
struct Golden {
    image: Vec<u8>,
    history: BTreeMap<Key, BTreeSet<Vec<u8>>>,
    universe: Vec<Key>,
}

fn golden() -> &'static Golden {
    static G: OnceLock<Golden> = OnceLock::new();
    G.get_or_init(|| {
        let shards = 2;
        let universe = harness::universe(12);
        let dev = harness::device(harness::template(shards), 1);
        let db = harness::open(&dev, SyncPolicy::Always, shards).unwrap();
        let mut history: BTreeMap<Key, BTreeSet<Vec<u8>>> = BTreeMap::new();
        for i in 0..60usize {
            let k = universe[i * 7 % universe.len()].clone();
            if i % 9 == 8 {
                db.delete(&k).unwrap();
            } else {
                let mut v = format!("{}#{i}|", String::from_utf8_lossy(&k)).into_bytes();
                v.resize(v.len() + i * 97 % 5000, b'a' + (i % 26) as u8);
                db.put(&k, &v).unwrap();
                history.entry(k).or_default().insert(v);
            }
            if i == 40 {
                db.merge().unwrap();
            }
        }
        db.close().unwrap();
        Golden {
            image: dev.durable_image(),
            history,
            universe,
        }
    })
}

/// Recovery of a mutated image: the input is a list of 5-byte edits (`offset: u32` LE into
/// the image, modulo its size, `xor: u8`) applied to a small store. Open never panics; if it
/// succeeds, no read returns a value never written for its key.
pub fn recover_mutated(data: &[u8]) {
    let g = golden();
    let mut image = g.image.clone();
    for e in data.chunks_exact(5).take(64) {
        let off = u32::from_le_bytes([e[0], e[1], e[2], e[3]]) as usize % image.len();
        image[off] ^= e[4];
    }
    let dev = harness::device(image, 0);
    let Ok(db) = harness::open(&dev, SyncPolicy::Always, 2) else {
        return;
    };
    for k in &g.universe {
        if let Ok(Some(v)) = db.get(k) {
            assert!(
                g.history.get(k).is_some_and(|h| h.contains(&v)),
                "get {} after mutations returned a value never written: {}",
                oracle::show(k),
                oracle::show(&v)
            );
        }
    }
    let _ = db.put(&g.universe[0], b"after");
    let _ = db.close();
}

/// Op-sequence model test with a fault countdown. Byte 0 picks the sync policy and shard
/// count, bytes 1..3 a fault (kind, N-th operation, transient or persistent), the rest ops
/// (2 bytes each: kind, key/value). The workload runs against the oracle with the fault armed;
/// then the device crashes and the reopened store must satisfy the oracle.
pub fn op_model(data: &[u8]) {
    let b = |i: usize| data.get(i).copied().unwrap_or(0);
    let sync = if b(0) & 1 == 0 {
        SyncPolicy::Always
    } else {
        SyncPolicy::Never
    };
    let shards = 1 + usize::from(b(0) >> 1 & 1);
    let universe = harness::universe(8);
    let nth = u64::from(b(2)) + 1;
    let at = if b(3) & 1 == 0 {
        ErrorAt::transient(nth)
    } else {
        ErrorAt::persistent(nth)
    };
    let mut steps = Vec::new();
    for (i, op) in data
        .get(4..)
        .unwrap_or(&[])
        .chunks_exact(2)
        .take(48)
        .enumerate()
    {
        let k = universe[usize::from(op[1] & 7)].clone();
        let mut v = format!("{}#{i}|", String::from_utf8_lossy(&k)).into_bytes();
        v.resize(v.len() + usize::from(op[1] >> 3) * 300, b'v');
        steps.push(match op[0] % 8 {
            0..=2 => Step::Put(k, v),
            3 => Step::Delete(k),
            4 => Step::Batch(vec![
                Op::Put(k, v),
                Op::Delete(universe[usize::from(op[0] >> 3 & 7)].clone()),
            ]),
            5 => Step::Get(k),
            6 => Step::Sync,
            _ => match op[0] >> 3 & 3 {
                0 => Step::Merge,
                1 => Step::Reopen,
                _ => Step::Get(k),
            },
        });
    }
    let dev = harness::device(harness::template(shards), u64_at(data, 0));
    match b(1) % 5 {
        0 => dev.update_plan(|p| p.read_error = Some(at)),
        1 => dev.update_plan(|p| p.write_error = Some(at)),
        2 => dev.update_plan(|p| p.flush_error = Some(at)),
        3 => dev.stop_after(nth * 4),
        _ => {}
    }
    let mut o = Oracle::new(shards);
    let db = harness::open(&dev, sync, shards).ok();
    let db = db.and_then(|db| {
        harness::drive(db, &dev, &mut o, &steps, sync, &universe)
            .unwrap_or_else(|e| panic!("{e}"))
            .db
    });
    dev.update_plan(|p| {
        p.read_error = None;
        p.write_error = None;
        p.flush_error = None;
    });
    let image = dev.crash_image();
    drop(db);
    harness::reopen_and_verify(image, 0, &mut o, sync, &universe).unwrap_or_else(|e| panic!("{e}"));
}
