//! The chunk workers' in-memory metadata (resident headers, the segment cache, sizes recorded
//! in segments) against the KV's committed values: coherent across write, truncate, remove,
//! compaction, reopen and crash; and what one operation costs in device I/Os and KV work.

use std::sync::Arc;

use blobcask::chunk::{ChunkError, ChunkOptions, ChunkStore};
use blobcask::SyncPolicy;
use blobcask_tests::harness;

const DEV: u64 = 16 << 20;
const MIB: u64 = 1 << 20;

fn template() -> Vec<u8> {
    harness::template_of(DEV, 2)
}

fn opts(workers: usize, cache: u64) -> ChunkOptions {
    ChunkOptions {
        workers,
        durable: false,
        grow_clusters: 2,
        max_blob_clusters: 8,
        reserve_clusters: 2,
        meta_cache_bytes: cache,
        ..ChunkOptions::default()
    }
}

fn bytes(tag: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| tag ^ (i as u8).wrapping_mul(31) | 1)
        .collect()
}

/// A model of one chunk's bytes.
fn put(m: &mut Vec<u8>, off: u64, d: &[u8]) {
    let end = off as usize + d.len();
    if m.len() < end {
        m.resize(end, 0);
    }
    m[off as usize..end].copy_from_slice(d);
}

fn all(cs: &ChunkStore, id: u64) -> Vec<u8> {
    cs.read(id, 0, u64::MAX).unwrap()
}

/// Every cache budget (none, tiny: constant eviction, ample) sees the same bytes through
/// writes that grow the chunk inside and across segments, truncates that shrink below and
/// past a segment's recorded end, growth by truncate, compaction, removal and reopen.
#[test]
fn cached_and_uncached_metadata_agree_through_every_operation() {
    for cache in [0, 4096, 64 << 20] {
        let dev = harness::device(template(), 1);
        let db = harness::open(&dev, SyncPolicy::Never, 2).unwrap();
        let cs = ChunkStore::open(&db, opts(2, cache)).unwrap();
        let a = cs.create(0).unwrap();
        let b = cs.create(0).unwrap();
        let (mut ma, mut mb) = (Vec::new(), Vec::new());
        let steps: Vec<(u64, usize)> = vec![
            (0, 100),                // grows within segment 0
            (MIB - 10, 30),          // spans segments 0 and 1
            (3 * MIB + 5, 4096),     // past a gap, within segment 3
            (2 * MIB, MIB as usize), // a whole segment
            (7, 9000),               // overwrite with both edges partial
        ];
        for (k, (off, len)) in steps.iter().enumerate() {
            let d = bytes(k as u8, *len);
            cs.write(a, *off, &d).unwrap();
            put(&mut ma, *off, &d);
            cs.write(b, *off / 2, &d).unwrap();
            put(&mut mb, *off / 2, &d);
            assert_eq!(all(&cs, a), ma, "cache {cache} step {k}");
            assert_eq!(cs.stat(a).unwrap().size, ma.len() as u64);
        }
        // Shrink into segment 1 (segment 3's recorded end must not bring the size back).
        cs.truncate(a, MIB + 77).unwrap();
        ma.truncate((MIB + 77) as usize);
        assert_eq!(all(&cs, a), ma);
        // Grow by truncate (a hole), then write into the hole's middle.
        cs.truncate(a, 5 * MIB).unwrap();
        ma.resize(5 * MIB as usize, 0);
        let d = bytes(40, 5000);
        cs.write(a, 4 * MIB - 3, &d).unwrap();
        put(&mut ma, 4 * MIB - 3, &d);
        assert_eq!(all(&cs, a), ma);
        cs.sync().unwrap();
        cs.compact().unwrap();
        assert_eq!(all(&cs, a), ma);
        assert_eq!(all(&cs, b), mb);
        // Reopen: sizes recorded only in segments come back from the restore scan.
        cs.close().unwrap();
        let cs = ChunkStore::open(&db, opts(3, cache)).unwrap();
        assert_eq!(all(&cs, a), ma, "cache {cache} after reopen");
        assert_eq!(all(&cs, b), mb);
        assert_eq!(cs.stat(b).unwrap().size, mb.len() as u64);
        cs.remove(b).unwrap();
        assert!(matches!(cs.read(b, 0, 1), Err(ChunkError::NotFound(_))));
        assert!(matches!(cs.write(b, 0, b"x"), Err(ChunkError::NotFound(_))));
        let c = cs.create(0).unwrap();
        assert_eq!(cs.stat(c).unwrap().size, 0);
        cs.write(c, 10, b"abc").unwrap();
        assert_eq!(
            cs.read(c, 0, 100).unwrap(),
            [&[0u8; 10][..], b"abc"].concat()
        );
        cs.close().unwrap();
        db.close().unwrap();
        let rep =
            blobcask::chunk::check(&harness::open(&dev, SyncPolicy::Never, 2).unwrap()).unwrap();
        assert!(rep.problems.is_empty(), "{:?}", rep.problems);
    }
}

/// A chunk that grew by writes only (its header still says 0) keeps its size across a
/// crash; an unsynced growth is either all there or not at all.
#[test]
fn size_recorded_in_segments_survives_a_crash() {
    for seed in 0..8u64 {
        let dev = harness::device(template(), seed);
        let db = harness::open(&dev, SyncPolicy::Never, 2).unwrap();
        let cs = ChunkStore::open(&db, opts(2, 1 << 20)).unwrap();
        let id = cs.create(0).unwrap();
        let first = bytes(1, 5000);
        cs.write(id, 0, &first).unwrap();
        cs.sync().unwrap();
        let second = bytes(2, 3000);
        cs.write(id, MIB + 100, &second).unwrap();
        let next = dev.crash().unwrap();
        drop(cs);
        drop(db);
        let dev = Arc::new(next);
        let db = harness::open(&dev, SyncPolicy::Never, 2).unwrap();
        let rep = blobcask::chunk::check(&db).unwrap();
        assert!(rep.problems.is_empty(), "seed {seed}: {:?}", rep.problems);
        let cs = ChunkStore::open(&db, opts(2, 1 << 20)).unwrap();
        let got = all(&cs, id);
        let mut grown = first.clone();
        put(&mut grown, MIB + 100, &second);
        assert!(
            got == first || got == grown,
            "seed {seed}: {} bytes",
            got.len()
        );
        cs.close().unwrap();
        db.close().unwrap();
    }
}

/// What a write and a read cost: a whole-segment write into a fresh chunk reads no metadata
/// and commits one key; a write within a segment that grows the chunk commits one key (no
/// header); a read after reopen finds its metadata in memory and does one device read.
#[test]
fn writes_commit_one_key_and_reads_do_one_device_read() {
    let dev = harness::device(template(), 3);
    let db = harness::open(&dev, SyncPolicy::Always, 2).unwrap();
    let cs = ChunkStore::open(
        &db,
        ChunkOptions {
            durable: true,
            ..opts(1, 1 << 20)
        },
    )
    .unwrap();
    let id = cs.create(0).unwrap();
    let c0 = cs.counters().unwrap();
    cs.write(id, 0, &bytes(1, MIB as usize)).unwrap();
    cs.write(id, MIB, &bytes(2, MIB as usize)).unwrap();
    let c1 = cs.counters().unwrap();
    assert_eq!(c1.commits - c0.commits, 2);
    assert_eq!(c1.multi_key_commits - c0.multi_key_commits, 0);
    assert_eq!(c1.meta_reads - c0.meta_reads, 0, "{c1:?}");
    assert_eq!(c1.data_reads - c0.data_reads, 0);
    // A durable 4 KiB overwrite: one data write, a flush (the data is on the medium before
    // the metadata naming it), one KV write, one flush (SyncPolicy::Always). (The first one
    // may grow the blob; the second takes the page the first freed.)
    cs.write(id, 4096, &bytes(4, 4096)).unwrap();
    let io0 = dev.io_counts();
    let k0 = cs.counters().unwrap();
    cs.write(id, 8192, &bytes(3, 4096)).unwrap();
    let io1 = dev.io_counts();
    let k1 = cs.counters().unwrap();
    assert_eq!(
        io1.reads - io0.reads,
        0,
        "{io0:?} -> {io1:?}, {k0:?} -> {k1:?}"
    );
    assert_eq!(io1.flushes - io0.flushes, 2, "{io0:?} -> {io1:?}");
    assert_eq!(io1.writes - io0.writes, 2, "{io0:?} -> {io1:?}");
    cs.close().unwrap();
    let cs = ChunkStore::open(&db, opts(1, 1 << 20)).unwrap();
    let c2 = cs.counters().unwrap();
    let io2 = dev.io_counts();
    assert_eq!(
        cs.read(id, MIB + 4096, 4096).unwrap(),
        bytes(2, MIB as usize)[4096..8192]
    );
    let io3 = dev.io_counts();
    assert_eq!(io3.reads - io2.reads, 1, "{io2:?} -> {io3:?}");
    let c3 = cs.counters().unwrap();
    assert_eq!(c3.meta_reads - c2.meta_reads, 0);
    // Served on this thread: the worker read nothing.
    assert_eq!(c3.data_reads - c2.data_reads, 0);
    // A read across segments goes through the worker (one submission).
    cs.read(id, MIB - 4096, 8192).unwrap();
    assert_eq!(cs.counters().unwrap().data_reads - c3.data_reads, 1);
    cs.close().unwrap();
    db.close().unwrap();
}

/// `write_owned` writes the caller's aligned buffer itself and hands it back; a large one has
/// its crcs computed beside the device write, and they verify on read, after reopen too.
#[test]
fn write_owned_round_trips_and_refuses_unaligned() {
    use blobcask::device::AlignedBuf;
    let dev = harness::device(template(), 5);
    let db = harness::open(&dev, SyncPolicy::Never, 2).unwrap();
    let cs = ChunkStore::open(&db, opts(2, 1 << 20)).unwrap();
    let id = cs.create(0).unwrap();
    let want = bytes(9, 64 * 4096 * 2);
    let buf = AlignedBuf::from_slice(&want);
    let back = cs.write_owned(id, 4096, buf).wait().unwrap();
    assert_eq!(&back[..], &want[..]);
    let small = cs
        .write_owned(id, 0, AlignedBuf::from_slice(&want[..4096]))
        .wait()
        .unwrap();
    assert_eq!(small.len(), 4096);
    let mut m = Vec::new();
    put(&mut m, 4096, &want);
    put(&mut m, 0, &want[..4096]);
    assert_eq!(all(&cs, id), m);
    for (off, len) in [(100u64, 4096usize), (0, 100)] {
        let r = cs.write_owned(id, off, AlignedBuf::zeroed(len)).wait();
        assert!(
            matches!(r, Err(ChunkError::InvalidArgument(_))),
            "{off}+{len}"
        );
    }
    cs.close().unwrap();
    let cs = ChunkStore::open(&db, opts(1, 0)).unwrap();
    assert_eq!(all(&cs, id), m);
    cs.close().unwrap();
    db.close().unwrap();
}

/// Reads served on the caller's thread while the chunk's worker rewrites the same pages (a
/// durable write frees the old page at once, so pages are reused under the readers): every
/// read returns one write's page whole, never older than the last write acknowledged before
/// the read began.
#[test]
fn caller_thread_reads_race_writes_coherently() {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    const PAGES: usize = 8;
    let dev = harness::device(template(), 11);
    let db = harness::open(&dev, SyncPolicy::Always, 2).unwrap();
    let cs = ChunkStore::open(
        &db,
        ChunkOptions {
            durable: true,
            ..opts(2, 1 << 20)
        },
    )
    .unwrap();
    let id = cs.create(0).unwrap();
    for p in 0..PAGES {
        cs.write(id, (p * 4096) as u64, &[0u8; 4096]).unwrap();
    }
    let acked: Vec<AtomicU64> = (0..PAGES).map(|_| AtomicU64::new(0)).collect();
    let stop = AtomicBool::new(false);
    std::thread::scope(|s| {
        s.spawn(|| {
            for tag in 1..=600u64 {
                let p = (tag as usize * 5) % PAGES;
                let mut page = vec![0u8; 4096];
                page[..8].copy_from_slice(&tag.to_le_bytes());
                page[8..].fill(tag as u8);
                cs.write(id, (p * 4096) as u64, &page).unwrap();
                acked[p].store(tag, Ordering::Release);
            }
            stop.store(true, Ordering::Release);
        });
        for r in 0..2u64 {
            let (cs, acked, stop) = (&cs, &acked, &stop);
            s.spawn(move || {
                let mut k = r;
                while !stop.load(Ordering::Acquire) {
                    k = k
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    let p = (k >> 33) as usize % PAGES;
                    let floor = acked[p].load(Ordering::Acquire);
                    let got = cs.read(id, (p * 4096) as u64, 4096).unwrap();
                    let tag = u64::from_le_bytes(got[..8].try_into().unwrap());
                    assert!(
                        tag >= floor,
                        "page {p}: read tag {tag} after {floor} was acked"
                    );
                    assert!(
                        got[8..].iter().all(|&b| b == tag as u8),
                        "page {p}: torn read"
                    );
                }
            });
        }
    });
    cs.close().unwrap();
    db.close().unwrap();
}
