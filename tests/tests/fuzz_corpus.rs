//! Replays every corpus file of the engine fuzz targets (`fuzz/corpus/{record_decode,
//! hint_decode, catalog_decode, chunk_meta_decode, recover_mutated, op_model}/`) through the same functions the targets call
//! (`blobcask_tests::fuzz`), plus seeded mutations of each file, so `cargo test` keeps every
//! past finding fixed without nightly or libFuzzer.
//!
//! `REGEN_CORPUS=1 cargo test -p blobcask-tests --test fuzz_corpus -- --ignored` rewrites the
//! hand-made seed files.

use std::path::PathBuf;
use std::time::Instant;

use blobcask::{catalog, hint, record};
use blobcask_tests::fuzz;
use blobcask_tests::seed;
use rand::Rng;

type Target = fn(&[u8]);

const TARGETS: &[(&str, Target, u64)] = &[
    ("record_decode", fuzz::record_decode, 200),
    ("hint_decode", fuzz::hint_decode, 200),
    ("catalog_decode", fuzz::catalog_decode, 200),
    ("chunk_meta_decode", fuzz::chunk_meta_decode, 200),
    ("recover_mutated", fuzz::recover_mutated, 10),
    ("op_model", fuzz::op_model, 10),
];

fn dir(target: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target)
}

fn corpus(target: &str) -> Vec<(String, Vec<u8>)> {
    let mut v: Vec<_> = std::fs::read_dir(dir(target))
        .unwrap_or_else(|e| panic!("corpus of {target}: {e}"))
        .map(|e| {
            let p = e.unwrap().path();
            (
                p.file_name().unwrap().to_string_lossy().into_owned(),
                std::fs::read(&p).unwrap(),
            )
        })
        .collect();
    v.sort();
    v
}

fn mutate(rng: &mut rand_chacha::ChaCha8Rng, data: &[u8]) -> Vec<u8> {
    let mut d = data.to_vec();
    match rng.gen_range(0..4) {
        0 if !d.is_empty() => {
            for _ in 0..rng.gen_range(1..4) {
                let i = rng.gen_range(0..d.len());
                d[i] ^= 1 << rng.gen_range(0..8);
            }
        }
        1 if !d.is_empty() => d.truncate(rng.gen_range(0..d.len())),
        2 => d.extend((0..rng.gen_range(1..32)).map(|_| rng.gen::<u8>())),
        _ if !d.is_empty() => {
            let i = rng.gen_range(0..d.len());
            d[i] = rng.gen();
        }
        _ => d.push(rng.gen()),
    }
    d
}

#[test]
fn engine_fuzz_corpora_replay() {
    let t0 = Instant::now();
    let mut cases = 0u64;
    for &(target, f, mutations) in TARGETS {
        let c = corpus(target);
        assert!(c.len() >= 3, "{target}: seed corpus missing");
        for (name, data) in &c {
            if std::panic::catch_unwind(|| f(data)).is_err() {
                panic!("{target}: corpus file {name} fails");
            }
            cases += 1;
        }
        let s = seed::forced_seed().unwrap_or(0xF022);
        let mut rng = seed::rng(seed::mix(s, target.len() as u64));
        for i in 0..mutations * seed::scale() {
            let (name, data) = &c[i as usize % c.len()];
            let m = mutate(&mut rng, data);
            if std::panic::catch_unwind(|| f(&m)).is_err() {
                panic!(
                    "{target}: mutation {i} of {name} fails (input {}); replay: SEED={s:#x} \
                     cargo test -p blobcask-tests --test fuzz_corpus",
                    hex(&m)
                );
            }
            cases += 1;
        }
    }
    seed::report("engine_fuzz_corpora_replay", cases, t0);
}

fn hex(b: &[u8]) -> String {
    b.iter().take(256).map(|x| format!("{x:02x}")).collect()
}

/// Hand-made seed inputs of each target.
fn seeds() -> Vec<(&'static str, &'static str, Vec<u8>)> {
    let salt = 0x1234_5678_9abc_def0u64;
    let mut log = salt.to_le_bytes().to_vec();
    record::encode(&mut log, salt, 1, 0, 0, b"key1", b"value one");
    record::encode(&mut log, salt, 2, record::TOMBSTONE, 0, b"key1", b"");
    // Later records claim the earlier ones durable (format 2's `durable` field).
    let flushed = (log.len() - 8) as u32;
    record::encode_claiming(
        &mut log,
        salt,
        3,
        flushed,
        record::BATCH,
        77,
        b"k2",
        &[9; 300],
    );
    record::encode_claiming(
        &mut log,
        salt,
        4,
        flushed,
        record::COMMIT,
        0,
        b"",
        &77u64.to_le_bytes(),
    );
    let mut torn = log.clone();
    torn.truncate(log.len() - 5);
    let mut flipped = log.clone();
    flipped[8 + 30] ^= 4;

    let mut w = hint::Writer::new(5, &[(1, 4096), (2, 100)]);
    w.push(1, 10, 0, 20, b"alpha");
    w.push(2, 11, 64, 0, b"beta");
    w.note_seq(11);
    let good_hint = w.finish(64);
    // Valid crcs around an absurd blob count: the decoder must not trust it for allocation.
    let mut body = 5u64.to_le_bytes().to_vec();
    body.extend_from_slice(&u32::MAX.to_le_bytes());
    let mut huge = hint::MAGIC.to_vec();
    huge.extend_from_slice(&u64::MAX.to_le_bytes());
    huge.extend_from_slice(&(body.len() as u64).to_le_bytes());
    huge.extend_from_slice(&0u64.to_le_bytes());
    huge.extend_from_slice(&crc32c(&body).to_le_bytes());
    let hc = crc32c(&huge[..36]);
    huge.extend_from_slice(&hc.to_le_bytes());
    huge.extend_from_slice(&body);

    // Valid header crc around an absurd body length (must not overflow).
    let mut long = hint::MAGIC.to_vec();
    long.extend_from_slice(&1u64.to_le_bytes());
    long.extend_from_slice(&u64::MAX.to_le_bytes());
    long.extend_from_slice(&0u64.to_le_bytes());
    long.extend_from_slice(&0u32.to_le_bytes());
    let hc = crc32c(&long[..36]);
    long.extend_from_slice(&hc.to_le_bytes());

    let good_catalog = catalog::encode(&catalog::Catalog {
        epoch: 3,
        entries: vec![
            catalog::Entry {
                blob_id: 0x1_0000_0002,
                role: catalog::Role::Data,
                merge: 0,
                shard: 1,
                seq: 7,
                salt: 0xABCD,
                for_seq: 0,
                clusters: vec![40, 41, 42, 0, 50],
            },
            catalog::Entry {
                blob_id: 0x1_0000_0003,
                role: catalog::Role::Hint,
                merge: 0,
                shard: 1,
                seq: 8,
                salt: 0,
                for_seq: 7,
                clusters: vec![60],
            },
        ],
    });
    // Valid crcs around an entry claiming 2^32-1 clusters in one extent.
    let mut entry = 0x1_0000_0002u64.to_le_bytes().to_vec();
    entry.extend_from_slice(&[1, 0, 0, 0]);
    entry.extend_from_slice(&[0; 4 + 8 + 8 + 8]);
    entry.extend_from_slice(&u64::from(u32::MAX).to_le_bytes());
    entry.extend_from_slice(&1u32.to_le_bytes());
    entry.extend_from_slice(&[0; 4]);
    entry.extend_from_slice(&5u32.to_le_bytes());
    entry.extend_from_slice(&u32::MAX.to_le_bytes());
    let mut huge_cat = catalog::MAGIC.to_vec();
    huge_cat.extend_from_slice(&1u64.to_le_bytes());
    huge_cat.extend_from_slice(&1u32.to_le_bytes());
    huge_cat.extend_from_slice(&(entry.len() as u32).to_le_bytes());
    huge_cat.extend_from_slice(&crc32c(&entry).to_le_bytes());
    let hc = crc32c(&huge_cat);
    huge_cat.extend_from_slice(&hc.to_le_bytes());
    huge_cat.extend_from_slice(&entry);

    let edits = |v: &[(u32, u8)]| -> Vec<u8> {
        v.iter()
            .flat_map(|(o, x)| {
                let mut e = o.to_le_bytes().to_vec();
                e.push(*x);
                e
            })
            .collect()
    };
    use blobcask::chunk::meta::{self as chunk_meta, ChunkHeader, PageRef, Segment};
    let header = ChunkHeader {
        size: 5 << 20,
        hint: 64 << 20,
    }
    .encode();
    let mut seg = Segment::default();
    seg.set(
        3,
        PageRef {
            blob: 2,
            page: 9,
            crc: 0xdead_beef,
        },
    );
    let seg = seg.encode();
    // A valid crc around an entry count past a segment's pages.
    let mut too_many = vec![1, 0, 0xff, 0xff, 0, 0, 0, 0];
    let crc = crc32c(&too_many);
    too_many.extend_from_slice(&crc.to_le_bytes());
    vec![
        ("chunk_meta_decode", "header", header),
        ("chunk_meta_decode", "segment", seg.clone()),
        (
            "chunk_meta_decode",
            "segment-cut",
            seg[..seg.len() - 1].to_vec(),
        ),
        ("chunk_meta_decode", "too-many-pages", too_many),
        ("chunk_meta_decode", "seg-key", chunk_meta::seg_key(7, 3)),
        (
            "chunk_meta_decode",
            "chunk-key",
            chunk_meta::chunk_key(u64::MAX),
        ),
        ("chunk_meta_decode", "empty", vec![]),
        ("record_decode", "log", log.clone()),
        ("record_decode", "torn", torn),
        ("record_decode", "flipped", flipped),
        ("record_decode", "empty", vec![]),
        ("hint_decode", "good", good_hint.clone()),
        ("hint_decode", "truncated", good_hint[..50].to_vec()),
        ("hint_decode", "huge-blob-count", huge),
        ("hint_decode", "huge-body-len", long),
        ("catalog_decode", "good", good_catalog.clone()),
        ("catalog_decode", "truncated", good_catalog[..40].to_vec()),
        ("catalog_decode", "huge-extent", huge_cat),
        ("catalog_decode", "empty", vec![]),
        ("recover_mutated", "none", vec![]),
        (
            "recover_mutated",
            "super-block",
            edits(&[(0, 1), (100, 0x80)]),
        ),
        (
            "recover_mutated",
            "md-region",
            edits(&[(20480 + 17, 0x10), (24576 + 4000, 3)]),
        ),
        (
            "recover_mutated",
            "data",
            edits(&[(300_000, 0xff), (400_100, 1), (600_000, 2)]),
        ),
        (
            "op_model",
            "puts-always",
            vec![0, 4, 0, 0, 0, 1, 1, 2, 0, 3, 3, 1, 5, 1, 6, 0],
        ),
        (
            "op_model",
            "never-crash",
            vec![1, 3, 9, 0, 0, 9, 4, 18, 2, 3, 6, 0, 0, 4, 7, 8],
        ),
        (
            "op_model",
            "flush-error",
            vec![2, 2, 3, 1, 0, 1, 0, 2, 4, 33, 7, 8, 0, 5, 1, 1],
        ),
        (
            "op_model",
            "merge-reopen",
            vec![0, 1, 12, 0, 0, 200, 0, 100, 7, 0, 7, 8, 0, 1],
        ),
    ]
}

fn crc32c(b: &[u8]) -> u32 {
    // Castagnoli, bitwise (tests only; the engine uses the crc32c crate).
    let mut c = !0u32;
    for &x in b {
        c ^= u32::from(x);
        for _ in 0..8 {
            c = if c & 1 != 0 {
                (c >> 1) ^ 0x82F6_3B78
            } else {
                c >> 1
            };
        }
    }
    !c
}

#[test]
#[ignore = "rewrites the seed corpus; run with REGEN_CORPUS=1"]
fn regenerate_seed_corpus() {
    if std::env::var("REGEN_CORPUS").is_err() {
        return;
    }
    for (target, name, data) in seeds() {
        std::fs::create_dir_all(dir(target)).unwrap();
        std::fs::write(dir(target).join(name), data).unwrap();
    }
}

/// The hand-made seeds also run straight from code (in case the corpus dir is stale).
#[test]
fn seed_inputs_pass() {
    for (target, name, data) in seeds() {
        let f = TARGETS.iter().find(|t| t.0 == target).unwrap().1;
        if std::panic::catch_unwind(|| f(&data)).is_err() {
            panic!("{target}: seed {name} fails");
        }
    }
}
