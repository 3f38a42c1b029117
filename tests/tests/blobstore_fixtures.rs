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

// ---- Snapshots, clones, a read-only blob and esnap clones (SPDK v25.09) ----------------------

mod snapshots {
    use std::collections::{BTreeMap, HashSet};
    use std::sync::Arc;

    use blobcask::blobstore::native::esnap::{EsnapMap, EsnapResolver};
    use blobcask::blobstore::native::{BlobParent, NativeBlobStore};
    use blobcask::blobstore::replay::{first_difference, replay_to_device, sha256_hex};
    use blobcask::blobstore::{Blob, BlobStore, Error, IoChannel, LoadOpts, INVALID_BLOB_ID};
    use blobcask::device::MemoryDevice;
    use serde_json::Value;

    use super::{dev, dir, image, manifest};

    const NAMES: &[&str] = &[
        "snapshots",
        "snapshots-dirty",
        "snapshots-delete",
        "snapshots-inflate",
    ];

    type Store = NativeBlobStore<MemoryDevice>;

    fn resolver() -> Arc<dyn EsnapResolver> {
        let bytes = std::fs::read(dir().join("snapshots-esnap.img")).unwrap();
        let m = manifest("snapshots");
        let e = &m["esnap_devices"][0];
        assert_eq!(sha256_hex(&bytes), e["sha256"].as_str().unwrap());
        let mut map = EsnapMap::new();
        map.insert(
            e["esnap_id"].as_str().unwrap(),
            Arc::new(MemoryDevice::from_bytes(bytes, 4096).unwrap()),
        );
        Arc::new(map)
    }

    fn load(name: &str, force_recover: bool, esnap: bool) -> Store {
        let s = pollster::block_on(NativeBlobStore::load(
            dev(name),
            LoadOpts {
                force_recover,
                ..LoadOpts::default()
            },
        ))
        .unwrap_or_else(|e| panic!("{name}: {e}"));
        if esnap {
            s.set_esnap_resolver(Some(resolver()));
        }
        s
    }

    fn by_slot(m: &Value) -> BTreeMap<String, Value> {
        m["blobs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| (b["scenario_name"].as_str().unwrap().to_owned(), b.clone()))
            .collect()
    }

    fn id_of(m: &Value, slot: &str) -> u64 {
        by_slot(m)[slot]["id"].as_u64().unwrap()
    }

    /// Every blob: its kind as SPDK reports it, and every recorded read.
    fn verify(name: &str, s: &Store) {
        let m = manifest(name);
        let want_free = m["spdk_reported_after_load"]["api"]["free_cluster_count"]
            .as_u64()
            .unwrap();
        assert_eq!(s.free_clusters(), want_free, "{name}: free clusters");
        let blobs = m["blobs"].as_array().unwrap();
        let ids = pollster::block_on(s.blob_ids()).unwrap();
        let want: Vec<u64> = blobs.iter().map(|b| b["id"].as_u64().unwrap()).collect();
        assert_eq!(ids, want, "{name}: blob ids");
        let ch = s.channel().unwrap();
        let mut parents = HashSet::new();
        let mut opened = Vec::new();
        for b in blobs {
            let slot = b["scenario_name"].as_str().unwrap();
            let blob = pollster::block_on(s.open(b["id"].as_u64().unwrap()))
                .unwrap_or_else(|e| panic!("{name}/{slot}: {e}"));
            let api = &b["spdk_api"];
            assert_eq!(blob.num_clusters(), b["num_clusters"].as_u64().unwrap());
            assert_eq!(
                blob.num_allocated_clusters(),
                b["num_allocated_clusters"].as_u64().unwrap(),
                "{name}/{slot}: allocated"
            );
            assert_eq!(blob.is_thin(), b["thin_provisioned"] == true, "{slot}");
            assert_eq!(blob.is_read_only(), api["read_only"] == true, "{slot}");
            let pid = api["parent_id"].as_u64().unwrap();
            match blob.parent() {
                BlobParent::None => {
                    assert_eq!(pid, INVALID_BLOB_ID, "{slot}");
                    assert!(api["esnap_clone"] == false, "{slot}");
                }
                BlobParent::Snapshot(p) => {
                    assert_eq!(p, pid, "{slot}");
                    assert!(api["clone"] == true, "{slot}");
                    parents.insert(p);
                }
                BlobParent::External { id, available } => {
                    assert!(api["esnap_clone"] == true && available, "{slot}");
                    assert_eq!(id, api["esnap_id"].as_str().unwrap().as_bytes(), "{slot}");
                }
            }
            for r in b["reads"].as_array().unwrap() {
                let (o, n) = (r["offset"].as_u64().unwrap(), r["length"].as_u64().unwrap());
                let mut buf = vec![0u8; n as usize * 4096];
                pollster::block_on(ch.read(&blob, o, &mut buf))
                    .unwrap_or_else(|e| panic!("{name}/{slot} read {o}+{n}: {e}"));
                assert_eq!(
                    sha256_hex(&buf),
                    r["sha256"].as_str().unwrap(),
                    "{name}/{slot}: read {o}+{n}"
                );
            }
            opened.push(blob);
        }
        for (b, blob) in blobs.iter().zip(&opened) {
            let snap = parents.contains(&blob.id());
            assert_eq!(
                snap,
                b["spdk_api"]["snapshot"] == true,
                "{}",
                b["scenario_name"]
            );
        }
        for blob in opened {
            pollster::block_on(s.close(blob)).unwrap();
        }
    }

    #[test]
    fn load_and_read_through_the_chains_as_spdk() {
        for name in NAMES {
            for force in [false, true] {
                let s = load(name, force, true);
                verify(name, &s);
            }
        }
    }

    #[test]
    fn replay_of_spdks_operations_is_byte_identical() {
        for name in NAMES {
            let m = manifest(name);
            let got = replay_to_device(&m).unwrap_or_else(|e| panic!("{name}: replay: {e}"));
            let bytes = got.to_bytes();
            if let Some(d) = first_difference(&image(name), &bytes) {
                panic!("{name}: first difference at {d}");
            }
        }
    }

    #[test]
    fn replayed_images_read_back_as_spdk_read_them() {
        for name in NAMES {
            let m = manifest(name);
            let dev = replay_to_device(&m).unwrap();
            let s = pollster::block_on(NativeBlobStore::load(dev, LoadOpts::default())).unwrap();
            s.set_esnap_resolver(Some(resolver()));
            verify(name, &s);
        }
    }

    #[test]
    fn load_and_unload_write_spdks_image() {
        for name in NAMES {
            let s = load(name, false, true);
            verify(name, &s);
            pollster::block_on(s.unload()).unwrap();
            let out = s.into_device().unwrap().to_bytes();
            let want = manifest(name)["verification"]["image_after_spdk_load_unload_sha256"]
                .as_str()
                .unwrap()
                .to_owned();
            assert_eq!(sha256_hex(&out), want, "{name}");
        }
        // The clean image is unchanged.
        let s = load("snapshots", false, true);
        pollster::block_on(s.unload()).unwrap();
        assert!(s.into_device().unwrap().to_bytes() == image("snapshots"));
    }

    #[test]
    fn an_esnap_clone_without_its_device_fails_only_its_own_reads() {
        let m = manifest("snapshots");
        let s = load("snapshots", false, false);
        let ch = s.channel().unwrap();
        let e = pollster::block_on(s.open(id_of(&m, "E"))).unwrap();
        assert_eq!(
            e.parent(),
            BlobParent::Snapshot(id_of(&m, "ES")),
            "E is a clone of ES"
        );
        let es = pollster::block_on(s.open(id_of(&m, "ES"))).unwrap();
        assert!(matches!(
            es.parent(),
            BlobParent::External {
                available: false,
                ..
            }
        ));
        let mut buf = vec![0u8; 4096];
        // Cluster 0 is in neither E nor ES: it needs the external device.
        let err = pollster::block_on(ch.read(&e, 0, &mut buf)).unwrap_err();
        assert!(matches!(err, Error::EsnapUnavailable { .. }), "{err}");
        assert!(err.to_string().contains("esnap-base.img"), "{err}");
        // E's own cluster 3 and ES's cluster 2 read fine.
        pollster::block_on(ch.read(&e, 3 * 16, &mut buf)).unwrap();
        pollster::block_on(ch.read(&e, 2 * 16 + 5, &mut buf)).unwrap();
        pollster::block_on(s.close(es)).unwrap();
        pollster::block_on(s.close(e)).unwrap();
        // Every other blob still reads as SPDK read it.
        for (slot, b) in by_slot(&m) {
            if ["E", "ES", "F"].contains(&slot.as_str()) {
                continue;
            }
            let blob = pollster::block_on(s.open(b["id"].as_u64().unwrap())).unwrap();
            let r = &b["reads"][0];
            let mut buf = vec![0u8; r["length"].as_u64().unwrap() as usize * 4096];
            pollster::block_on(ch.read(&blob, r["offset"].as_u64().unwrap(), &mut buf)).unwrap();
            assert_eq!(sha256_hex(&buf), r["sha256"].as_str().unwrap(), "{slot}");
            pollster::block_on(s.close(blob)).unwrap();
        }
    }

    #[test]
    fn snapshots_refuse_writes_and_deletes_that_would_break_their_clones() {
        let m = manifest("snapshots");
        let s = load("snapshots", false, true);
        let ch = s.channel().unwrap();
        let buf = vec![7u8; 4096];
        let s1 = pollster::block_on(s.open(id_of(&m, "S1"))).unwrap();
        let err = pollster::block_on(ch.write(&s1, 0, &buf)).unwrap_err();
        assert!(matches!(err, Error::ReadOnly(_)), "{err}");
        pollster::block_on(s.close(s1)).unwrap();
        // S1 has two clones (S2 and C): as SPDK, it cannot be deleted.
        let err = pollster::block_on(s.delete(id_of(&m, "S1"))).unwrap_err();
        assert!(matches!(err, Error::Busy(_)), "{err}");
        assert_eq!(err.errno(), -16);
        drop(ch);
        pollster::block_on(s.unload()).unwrap();
        assert!(s.into_device().unwrap().to_bytes() == image("snapshots"));
    }

    /// A first write into a clone's cluster copies the parent's data around it (from S2,
    /// from S1 through S2, and from the external snapshot through ES), and the snapshots
    /// still read as before.
    #[test]
    fn copy_on_first_write_into_clones() {
        let m = manifest("snapshots");
        let s = load("snapshots", false, true);
        let ch = s.channel().unwrap();
        let slots = by_slot(&m);
        let whole = |slot: &str| -> Vec<u8> {
            let b = pollster::block_on(s.open(id_of(&m, slot))).unwrap();
            let mut v = vec![0u8; b.num_io_units() as usize * 4096];
            pollster::block_on(ch.read(&b, 0, &mut v)).unwrap();
            pollster::block_on(s.close(b)).unwrap();
            v
        };
        for (slot, cluster) in [("A", 2u64), ("A", 3), ("E", 0), ("C", 8)] {
            let before = whole(slot);
            let b = pollster::block_on(s.open(id_of(&m, slot))).unwrap();
            let allocated = b.num_allocated_clusters();
            let at = cluster * 16 + 5;
            pollster::block_on(ch.write(&b, at, &[0x5Au8; 4096])).unwrap();
            assert_eq!(b.num_allocated_clusters(), allocated + 1, "{slot}");
            pollster::block_on(s.close(b)).unwrap();
            let mut want = before;
            want[at as usize * 4096..(at as usize + 1) * 4096].fill(0x5A);
            assert!(whole(slot) == want, "{slot} cluster {cluster}");
        }
        for snap in ["S1", "S2", "ES"] {
            let r = &slots[snap]["reads"][0];
            assert_eq!(
                sha256_hex(&whole(snap)),
                r["sha256"].as_str().unwrap(),
                "{snap}"
            );
        }
        // Everything survives a reload through recovery.
        drop(ch);
        pollster::block_on(s.unload()).unwrap();
        let dev = MemoryDevice::from_bytes(s.into_device().unwrap().to_bytes(), 4096).unwrap();
        let o = LoadOpts {
            force_recover: true,
            ..LoadOpts::default()
        };
        let s = pollster::block_on(NativeBlobStore::load(dev, o)).unwrap();
        s.set_esnap_resolver(Some(resolver()));
        let ch = s.channel().unwrap();
        let a = pollster::block_on(s.open(id_of(&m, "A"))).unwrap();
        let mut v = vec![0u8; 4096];
        pollster::block_on(ch.read(&a, 3 * 16 + 5, &mut v)).unwrap();
        assert!(v.iter().all(|&x| x == 0x5A));
        pollster::block_on(s.close(a)).unwrap();
    }

    #[test]
    fn deleting_a_clone_frees_only_its_own_clusters() {
        let m = manifest("snapshots");
        let s = load("snapshots", false, true);
        let free = s.free_clusters();
        let c = &by_slot(&m)["C"];
        let held = pollster::block_on(s.open(id_of(&m, "A"))).unwrap();
        // S1 is held open by A (its grandchild): deleting it is refused as busy.
        let err = pollster::block_on(s.delete(id_of(&m, "S1"))).unwrap_err();
        assert!(matches!(err, Error::Busy(_)), "{err}");
        pollster::block_on(s.close(held)).unwrap();
        pollster::block_on(s.delete(c["id"].as_u64().unwrap())).unwrap();
        assert_eq!(
            s.free_clusters(),
            free + c["num_allocated_clusters"].as_u64().unwrap()
        );
        pollster::block_on(s.unload()).unwrap();
        let s = NativeBlobStore::load(
            MemoryDevice::from_bytes(s.into_device().unwrap().to_bytes(), 4096).unwrap(),
            LoadOpts {
                force_recover: true,
                ..LoadOpts::default()
            },
        );
        let s = pollster::block_on(s).unwrap();
        s.set_esnap_resolver(Some(resolver()));
        let ch = s.channel().unwrap();
        let s1 = &by_slot(&m)["S1"];
        let blob = pollster::block_on(s.open(s1["id"].as_u64().unwrap())).unwrap();
        let r = &s1["reads"][0];
        let mut buf = vec![0u8; r["length"].as_u64().unwrap() as usize * 4096];
        pollster::block_on(ch.read(&blob, 0, &mut buf)).unwrap();
        assert_eq!(sha256_hex(&buf), r["sha256"].as_str().unwrap());
        pollster::block_on(s.close(blob)).unwrap();
    }
}
