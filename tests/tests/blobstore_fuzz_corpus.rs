//! Replays the `blobstore_load` fuzz corpus (and seeded mutations of it) through the fuzz
//! target's function: loading arbitrary bytes never panics.

use std::path::PathBuf;

use blobcask::blobstore::native::fuzz::{image_of, load_arbitrary, sparse_of};
use blobcask::blobstore::native::NativeBlobStore;
use blobcask::blobstore::{BlobStore, CreateOpts, InitOpts, IoChannel};
use blobcask::device::MemoryDevice;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn corpus_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/blobstore_load")
}

fn corpus() -> Vec<(String, Vec<u8>)> {
    let mut v: Vec<_> = std::fs::read_dir(corpus_dir())
        .expect("corpus dir")
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

#[test]
fn corpus_never_panics() {
    let c = corpus();
    assert!(c.len() >= 8, "seed corpus missing");
    let mut opened = 0;
    for (name, data) in &c {
        let r = std::panic::catch_unwind(|| load_arbitrary(data));
        opened += r.unwrap_or_else(|_| panic!("corpus file {name} panicked"));
    }
    assert!(opened > 0, "no corpus image loaded at all");
}

#[test]
fn seeded_mutations_never_panic() {
    let c = corpus();
    for seed in 0..400u64 {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let (name, base) = &c[seed as usize % c.len()];
        // Mutate the image, not its sparse encoding.
        let mut d = image_of(base);
        for _ in 0..rng.gen_range(1..16) {
            let i = rng.gen_range(0..d.len());
            d[i] = rng.gen();
        }
        // Keep CRCs valid half of the time so the mutation reaches the decoders behind them.
        if seed % 2 == 0 {
            for p in (0..d.len() / 4096).map(|p| p * 4096) {
                recrc(&mut d[p..p + 4096]);
            }
        }
        let r = std::panic::catch_unwind(|| load_arbitrary(&d));
        assert!(r.is_ok(), "mutation seed {seed} of {name} panicked");
    }
}

fn recrc(page: &mut [u8]) {
    let c = crc32c::crc32c(&page[..4092]);
    page[4092..4096].copy_from_slice(&c.to_le_bytes());
}

fn b<F: std::future::Future>(f: F) -> F::Output {
    pollster::block_on(f)
}

/// Two blobs (thick extent table with an xattr, thin RLE with data), clean or crashed.
fn base_image(unload: bool) -> Vec<u8> {
    let dev = MemoryDevice::new(64 << 10, 4096).unwrap();
    let s = b(NativeBlobStore::init(
        dev,
        InitOpts {
            cluster_size: 4096,
            num_md_pages: Some(4),
            ..InitOpts::default()
        },
    ))
    .unwrap();
    let a = b(s.create(CreateOpts {
        num_clusters: 1,
        xattrs: vec![("name".into(), b"a".to_vec())],
        ..CreateOpts::default()
    }))
    .unwrap();
    let t = b(s.create(CreateOpts {
        num_clusters: 3,
        thin_provision: true,
        use_extent_table: false,
        ..CreateOpts::default()
    }))
    .unwrap();
    let h = b(s.open(t)).unwrap();
    let ch = s.channel().unwrap();
    b(ch.write(&h, 1, &[0x77u8; 4096])).unwrap();
    drop(ch);
    b(s.close(h)).unwrap();
    b(s.set_super(a)).unwrap();
    if unload {
        b(s.unload()).unwrap();
    }
    s.device().to_bytes()
}

const MD0: usize = 4 * 4096;

fn patch(mut img: Vec<u8>, at: usize, bytes: &[u8]) -> Vec<u8> {
    img[at..at + bytes.len()].copy_from_slice(bytes);
    let p = at / 4096 * 4096;
    recrc(&mut img[p..p + 4096]);
    img
}

/// Regenerates the seed corpus (run with `--ignored`).
#[test]
#[ignore]
fn regenerate_corpus() {
    let clean = base_image(true);
    let dirty = base_image(false);
    let huge = u32::MAX.to_le_bytes();
    let files: Vec<(&str, Vec<u8>)> = vec![
        ("clean", clean.clone()),
        ("dirty", dirty.clone()),
        // Root of blob 0: the xattr descriptor (after FLAGS at 16+29) claims 4 GiB.
        (
            "desc-len-huge",
            patch(clean.clone(), MD0 + 16 + 29 + 1, &huge),
        ),
        // Extent page of blob 0 (md 1): first cluster past the device.
        (
            "extent-out-of-range",
            patch(clean.clone(), MD0 + 4096 + 16 + 9, &huge),
        ),
        // Cluster mask claims 4 Gi bits.
        ("mask-len-huge", {
            let mut v = clean.clone();
            v[2 * 4096 + 1..2 * 4096 + 5].copy_from_slice(&huge);
            v
        }),
        // Super block: md_len huge.
        ("super-md-len-huge", patch(clean.clone(), 52, &huge)),
        // Thin RLE blob (md 2): unallocated run of 4 Gi clusters.
        (
            "rle-run-huge",
            patch(dirty.clone(), MD0 + 2 * 4096 + 16 + 29 + 5 + 4, &huge),
        ),
        // Root of blob 0 points to itself as next page.
        (
            "chain-loop",
            patch(dirty.clone(), MD0 + 4088, &0u32.to_le_bytes()),
        ),
        // Extent table of blob 0 claims 2^40 clusters.
        (
            "table-huge",
            patch(
                clean.clone(),
                MD0 + 16 + 29 + 15 + 5,
                &(1u64 << 40).to_le_bytes(),
            ),
        ),
        // Unknown descriptor type in a chain: ignored on open, fatal in recovery.
        ("unknown-type", patch(dirty.clone(), MD0 + 16 + 29, &[0x42])),
        ("zeros", vec![0u8; 4096]),
    ];
    let dir = corpus_dir();
    std::fs::create_dir_all(&dir).unwrap();
    for (name, img) in files {
        std::fs::write(dir.join(name), sparse_of(&img)).unwrap();
    }
}

#[test]
fn clean_seed_loads() {
    let img = image_of(&std::fs::read(corpus_dir().join("clean")).unwrap());
    let dev = MemoryDevice::from_bytes(img, 4096).unwrap();
    let s = b(NativeBlobStore::load(dev, Default::default())).expect("clean seed loads");
    for id in b(s.blob_ids()).unwrap() {
        let h = b(s.open(id)).unwrap_or_else(|e| panic!("open {id:#x}: {e}"));
        b(s.close(h)).unwrap();
    }
    assert_eq!(
        load_arbitrary(&std::fs::read(corpus_dir().join("clean")).unwrap()),
        4
    );
}
