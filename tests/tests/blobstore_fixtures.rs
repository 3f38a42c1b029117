//! Compatibility with real SPDK: every golden image (made by SPDK v25.05.1 / v25.09, `io512`
//! on a bdev with 512-byte blocks, `grow` grown by `spdk_bs_grow_live` after its image file
//! was extended) loads in the native blobstore and reads back exactly as its manifest says,
//! and replaying each manifest's recorded operations produces the fixture image byte for byte.

use std::path::PathBuf;

use blobcask::blobstore::native::superblock::SuperBlock;
use blobcask::blobstore::replay::{
    first_difference, image_geometry, replay, replay_to_device, sha256_hex, verify_manifest,
};
use blobcask::device::MemoryDevice;
use serde_json::Value;

const FIXTURES: &[&str] = &[
    "empty-clean",
    "basic",
    "thin-extent",
    "dirty",
    "v2509",
    "io512",
    "grow",
];

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/spdk")
}

fn manifest(name: &str) -> Value {
    let t = std::fs::read_to_string(dir().join(format!("{name}.json"))).expect("manifest");
    serde_json::from_str(&t).expect("manifest json")
}

fn image(name: &str) -> Vec<u8> {
    let b = std::fs::read(dir().join(format!("{name}.img"))).expect("image");
    assert_eq!(
        sha256_hex(&b),
        manifest(name)["image"]["sha256"].as_str().unwrap()
    );
    b
}

/// The image on a memory device with the block size of the bdev SPDK wrote it on.
fn dev(name: &str) -> MemoryDevice {
    let (_, block) = image_geometry(&manifest(name)).unwrap();
    MemoryDevice::from_bytes(image(name), block).unwrap()
}

fn check_load(name: &str, force_recover: bool) {
    let m = manifest(name);
    if let Err(e) = verify_manifest(&m, dev(name), force_recover) {
        panic!("{name} (force_recover={force_recover}): {e}");
    }
}

#[test]
fn every_fixture_loads_and_reads_back() {
    for n in FIXTURES {
        check_load(n, false);
    }
}

#[test]
fn every_fixture_loads_through_recovery() {
    for n in FIXTURES {
        check_load(n, true);
    }
}

#[test]
fn clean_images_are_unchanged_by_load_and_unload() {
    for n in [
        "empty-clean",
        "basic",
        "thin-extent",
        "v2509",
        "io512",
        "grow",
    ] {
        let m = manifest(n);
        let out = verify_manifest(&m, dev(n), false).unwrap().to_bytes();
        if let Some(d) = first_difference(&image(n), &out) {
            panic!("{n}: load + unload changed the image: {d}");
        }
    }
}

#[test]
fn dirty_recovery_rebuilds_spdks_masks() {
    let m = manifest("dirty");
    let out = verify_manifest(&m, dev("dirty"), false).unwrap().to_bytes();
    let want = m["verification"]["image_after_spdk_load_unload_sha256"]
        .as_str()
        .unwrap();
    if sha256_hex(&out) != want {
        panic!("dirty: load + unload differs from SPDK's");
    }
}

#[test]
fn replay_is_byte_identical() {
    let mut failures = Vec::new();
    for n in FIXTURES {
        let m = manifest(n);
        let got = replay_to_device(&m).unwrap_or_else(|e| panic!("{n}: replay failed: {e}"));
        let bytes = got.to_bytes();
        if let Some(d) = first_difference(&image(n), &bytes) {
            failures.push(format!("{n}: first difference at {d}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn replayed_images_read_back_as_the_manifest_says() {
    for n in FIXTURES {
        let m = manifest(n);
        let got = replay_to_device(&m).unwrap();
        if let Err(e) = verify_manifest(&m, got, false) {
            panic!("{n}: {e}");
        }
    }
}

#[test]
fn super_block_fields_match_the_manifest() {
    for n in FIXTURES {
        let m = manifest(n);
        let sb = SuperBlock::decode(&image(n)).unwrap();
        let s = &m["super_block"];
        assert_eq!(u64::from(sb.clean), s["clean"].as_u64().unwrap(), "{n}");
        assert_eq!(u64::from(sb.md_len), s["md_len"].as_u64().unwrap(), "{n}");
        assert_eq!(
            u64::from(sb.md_start),
            s["md_start"].as_u64().unwrap(),
            "{n}"
        );
        assert_eq!(sb.size, s["size"].as_u64().unwrap(), "{n}");
        assert_eq!(sb.super_blob, s["super_blob"].as_u64().unwrap(), "{n}");
        assert_eq!(
            format!(
                "{:#010x}",
                u32::from_le_bytes(image(n)[4092..4096].try_into().unwrap())
            ),
            s["crc"].as_str().unwrap(),
            "{n}"
        );
    }
}

#[test]
fn a_mismatch_names_the_md_page_and_decodes_both() {
    let m = manifest("basic");
    let mut bytes = replay_to_device(&m).unwrap().to_bytes();
    // md index 2 is the root of blob `data`; flip a byte of its xattr.
    bytes[(4 + 2) * 4096 + 16 + 29 + 9] ^= 1;
    let d = first_difference(&image("basic"), &bytes).unwrap();
    assert!(d.starts_with("md page 2 "), "{d}");
    assert!(
        d.contains("expected: id 0x100000002") && d.contains("undecodable"),
        "{d}"
    );
    let mut bytes = image("basic");
    bytes[7 << 20] ^= 1;
    let d = first_difference(&image("basic"), &bytes).unwrap();
    assert!(d.starts_with("cluster 7 "), "{d}");
}

#[test]
fn replay_into_an_image_file_prints_the_fixture_sha256() {
    let dir = tempfile::tempdir().unwrap();
    for n in FIXTURES {
        let m = manifest(n);
        let out = dir.path().join(format!("{n}.img"));
        let sha = replay(&m, &out).unwrap_or_else(|e| panic!("{n}: {e}"));
        assert_eq!(sha, m["image"]["sha256"].as_str().unwrap(), "{n}");
    }
}

/// Load the io512 image at `path` (an image file or a block device) read-only through the
/// file device and check every manifest read; returns the device's block size.
fn io512_reads_back_from(path: &std::path::Path) -> u32 {
    use blobcask::blobstore::native::NativeBlobStore;
    use blobcask::blobstore::{Blob, BlobStore, IoChannel, LoadOpts};
    use blobcask::device::{Device, FileDevice, FileOptions, Overlay};

    let m = manifest("io512");
    let opts = FileOptions {
        read_only: true,
        ..FileOptions::default()
    };
    let dev = Overlay::new(FileDevice::open_with(path, &opts).unwrap());
    let block = dev.block_size();
    let s = pollster::block_on(NativeBlobStore::load(dev, LoadOpts::default())).unwrap();
    assert_eq!(s.io_unit_size(), 512);
    let ch = s.channel().unwrap();
    for b in m["blobs"].as_array().unwrap() {
        let blob = pollster::block_on(s.open(b["id"].as_u64().unwrap())).unwrap();
        assert_eq!(blob.num_io_units(), b["num_io_units"].as_u64().unwrap());
        for r in b["reads"].as_array().unwrap() {
            let (off, len) = (r["offset"].as_u64().unwrap(), r["length"].as_u64().unwrap());
            let mut buf = vec![0u8; len as usize * 512];
            pollster::block_on(ch.read(&blob, off, &mut buf)).unwrap();
            assert_eq!(
                sha256_hex(&buf),
                r["sha256"].as_str().unwrap(),
                "{off}+{len}"
            );
        }
        pollster::block_on(s.close(blob)).unwrap();
    }
    block
}

/// The io512 image: SPDK's 512-byte io units with 4 KiB md pages, read through the file device
/// (whose block size is the file system's direct-I/O alignment, or 512 via the super block).
#[test]
fn io512_image_has_512_byte_io_units_and_reads_through_a_file() {
    let m = manifest("io512");
    let sb = SuperBlock::decode(&image("io512")).unwrap();
    assert_eq!((sb.io_unit_size, sb.md_page_size), (512, 4096));
    assert_eq!(m["spdk"]["aio_block_size"], 512);
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("io512.img");
    std::fs::write(&p, image("io512")).unwrap();
    assert_eq!(io512_reads_back_from(&p), 512);
    // Read-only: the image file is untouched.
    assert_eq!(std::fs::read(&p).unwrap(), image("io512"));
}

/// The io512 image on a block device of 4 KiB sectors (a loop device): the device drops to
/// 512-byte blocks (buffered) and every read comes back as SPDK wrote it. Skips without
/// `losetup` rights.
#[test]
fn io512_image_reads_back_from_a_4k_sector_block_device() {
    use std::process::Command;
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("io512.img");
    std::fs::write(&p, image("io512")).unwrap();
    let out = Command::new("losetup")
        .args(["-f", "--show", "-b", "4096"])
        .arg(&p)
        .output();
    let dev = match out {
        Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout).trim().to_string(),
        Ok(o) => {
            println!(
                "skipped: losetup: {}",
                String::from_utf8_lossy(&o.stderr).trim()
            );
            return;
        }
        Err(e) => {
            println!("skipped: cannot run losetup: {e}");
            return;
        }
    };
    struct Detach(String);
    impl Drop for Detach {
        fn drop(&mut self) {
            let _ = std::process::Command::new("losetup")
                .args(["-d", &self.0])
                .status();
        }
    }
    let _detach = Detach(dev.clone());
    assert_eq!(io512_reads_back_from(std::path::Path::new(&dev)), 512);

    // Writes at 512-byte granularity work too: a new thin blob, written at odd units across a
    // cluster boundary, and one more unit of blob `thin`, survive an unload and a reload.
    use blobcask::blobstore::native::NativeBlobStore;
    use blobcask::blobstore::{BlobStore, CreateOpts, IoChannel, LoadOpts};
    use blobcask::device::FileDevice;
    let thin = 0x1_0000_0002u64;
    let data: Vec<u8> = (0..5 * 512).map(|i| (i * 7 % 251) as u8).collect();
    let new_id = pollster::block_on(async {
        let s = NativeBlobStore::load(FileDevice::open(&dev).unwrap(), LoadOpts::default())
            .await
            .unwrap();
        let ch = s.channel().unwrap();
        let id = s
            .create(CreateOpts {
                num_clusters: 4,
                thin_provision: true,
                ..CreateOpts::default()
            })
            .await
            .unwrap();
        let b = s.open(id).await.unwrap();
        ch.write(&b, 126, &data).await.unwrap();
        s.close(b).await.unwrap();
        let t = s.open(thin).await.unwrap();
        ch.write(&t, 7, &data[..512]).await.unwrap();
        s.close(t).await.unwrap();
        drop(ch);
        s.unload().await.unwrap();
        id
    });
    let s = pollster::block_on(NativeBlobStore::load(
        FileDevice::open(&dev).unwrap(),
        LoadOpts::default(),
    ))
    .unwrap();
    let ch = s.channel().unwrap();
    pollster::block_on(async {
        let b = s.open(new_id).await.unwrap();
        let mut back = vec![0u8; 7 * 512];
        ch.read(&b, 125, &mut back).await.unwrap();
        assert!(back[..512].iter().all(|&x| x == 0));
        assert_eq!(&back[512..6 * 512], &data[..]);
        assert!(back[6 * 512..].iter().all(|&x| x == 0));
        s.close(b).await.unwrap();
        let t = s.open(thin).await.unwrap();
        let mut u = vec![0u8; 3 * 512];
        ch.read(&t, 6, &mut u).await.unwrap();
        assert_eq!(&u[512..1024], &data[..512]);
        // Its neighbours, units 6 and 8, were never written.
        assert!(u[..512].iter().all(|&x| x == 0));
        assert!(u[1024..].iter().all(|&x| x == 0));
        s.close(t).await.unwrap();
    });
}

/// The grow image: made on 8 MiB, grown live to 12 MiB by SPDK; the super block says so, and
/// the replay's first session really ran on the shorter device (its md region is sized for it).
#[test]
fn grow_image_was_grown_by_spdk() {
    let m = manifest("grow");
    let sb = SuperBlock::decode(&image("grow")).unwrap();
    assert_eq!(sb.size, 12 << 20);
    assert_eq!(
        sb.md_len, 128,
        "one md page per cluster of the 8 MiB device"
    );
    assert_eq!(m["sessions"][0]["device_size_bytes"], 8 << 20);
    assert!(m["sessions"][1]["ops"]
        .as_array()
        .unwrap()
        .iter()
        .any(|o| o["op"] == "grow"));
    // Without the grow, blob B (110 clusters) would not have fit.
    let b = m["blobs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["scenario_name"] == "B")
        .unwrap();
    assert_eq!(b["num_allocated_clusters"], 110);
}
