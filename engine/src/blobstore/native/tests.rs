//! Behaviour tests of the native blobstore on memory and sim devices.

use super::blobmd::root_index;
use super::mdpage::MdPage;
use super::superblock::{read_u32, SuperBlock};
use super::*;
use crate::blobstore::{ClearMethod, InitOpts, LoadOpts};
use crate::device::{CrashMode, MemoryDevice, SimDevice};

type Store = NativeBlobStore<MemoryDevice>;

fn b<F: Future>(f: F) -> F::Output {
    pollster::block_on(f)
}

fn small(cluster: u32) -> Store {
    let dev = MemoryDevice::new(8 << 20, 4096).unwrap();
    b(NativeBlobStore::init(
        dev,
        InitOpts {
            cluster_size: cluster,
            ..InitOpts::default()
        },
    ))
    .unwrap()
}

fn reload(s: Store) -> Store {
    let _ = b(s.unload());
    let dev = s.into_device().unwrap();
    b(NativeBlobStore::load(dev, LoadOpts::default())).unwrap()
}

/// Drop the store without unloading and load what the device holds.
/// The first `len` bytes of the device.
fn head(s: &Store, len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    b(s.device().read(0, &mut v)).unwrap();
    v
}

fn crash(s: Store) -> Store {
    let bytes = s.device().to_bytes();
    drop(s);
    b(NativeBlobStore::load(
        MemoryDevice::from_bytes(bytes, 4096).unwrap(),
        LoadOpts::default(),
    ))
    .unwrap()
}

fn thin(n: u64) -> CreateOpts {
    CreateOpts {
        num_clusters: n,
        thin_provision: true,
        ..CreateOpts::default()
    }
}

/// The worked example of `docs/blobstore-format.md`: init of a 1 GiB device with 512-byte blocks writes exactly these bytes.
#[test]
fn init_writes_example_a_super_block() {
    let dev = MemoryDevice::new(1 << 30, 512).unwrap();
    let s = b(NativeBlobStore::init(dev, InitOpts::default())).unwrap();
    let img = head(&s, 4096);
    let want = "5350444b424c4f4203000000001000000000000\
                0ffffffffffffffff0000100001000000010000000200000001000000040000000004000000\
                00000000000000000000000000000003000000010000000000004000000000000200000010\
                0000";
    assert_eq!(hex::encode(&img[..96]), want.replace(' ', ""));
    assert_eq!(read_u32(&img, 4092), 0xBFB8_212F);
    assert_eq!(s.layout().num_md_clusters, 5);
    b(s.unload()).unwrap();
    let img = head(&s, 4096);
    assert_eq!(read_u32(&img, 4092), 0xC78E_BC9D);
    assert!(SuperBlock::decode(&img).unwrap().is_clean());
}

/// The worked example of `docs/blobstore-format.md`: the first blob, thick, 10 clusters, extent table, xattr name=foo.
#[test]
fn example_c_chain_bytes() {
    let dev = MemoryDevice::new(1 << 30, 512).unwrap();
    let s = b(NativeBlobStore::init(dev, InitOpts::default())).unwrap();
    let id = b(s.create(CreateOpts {
        num_clusters: 10,
        xattrs: vec![("name".into(), b"foo".to_vec())],
        ..CreateOpts::default()
    }))
    .unwrap();
    assert_eq!(id, 0x1_0000_0000);
    let img = head(&s, 6 * 4096);
    let md0 = &img[4 * 4096..5 * 4096];
    let root = MdPage::decode(md0, 0).unwrap();
    assert_eq!((root.id, root.sequence_num, root.next), (id, 0, u32::MAX));
    assert_eq!(
        hex::encode(&md0[16..16 + 66]),
        concat!(
            "0318000000040000000000000000000000000000000000000000000000",
            "020b000000040003006e616d65666f6f",
            "05100000000a000000000000000100000001000000"
        )
    );
    assert!(md0[16 + 66..4088].iter().all(|&x| x == 0));
    let md1 = &img[5 * 4096..6 * 4096];
    let ep = MdPage::decode(md1, 0).unwrap();
    assert_eq!((ep.id, ep.sequence_num, ep.next), (id, 0, u32::MAX));
    let mut want = vec![6u8, 0x2c, 0, 0, 0, 0, 0, 0, 0];
    for c in 5u32..15 {
        want.extend_from_slice(&c.to_le_bytes());
    }
    assert_eq!(&md1[16..16 + want.len()], &want[..]);
}

#[test]
fn open_is_refcounted_and_close_persists() {
    let s = small(65536);
    let id = b(s.create(CreateOpts::default())).unwrap();
    let h1 = b(s.open(id)).unwrap();
    let h2 = b(s.open(id)).unwrap();
    b(s.set_xattr(&h1, "k", b"v")).unwrap();
    assert_eq!(b(s.get_xattr(&h2, "k")).unwrap(), Some(b"v".to_vec()));
    assert!(matches!(b(s.unload()), Err(Error::Busy(_))));
    assert!(matches!(b(s.delete(id)), Err(Error::Busy(_))));
    b(s.close(h1)).unwrap();
    b(s.close(h2.clone())).unwrap();
    assert!(matches!(b(s.close(h2)), Err(Error::BadHandle)));
    b(s.unload()).unwrap();
    assert!(matches!(
        b(s.create(CreateOpts::default())),
        Err(Error::Closed)
    ));
    let s = reload(s);
    let h = b(s.open(id)).unwrap();
    assert_eq!(b(s.xattr_names(&h)).unwrap(), vec!["k".to_string()]);
}

#[test]
fn thin_write_allocates_lowest_free_and_survives_a_crash() {
    let s = small(65536);
    let first = s.layout().num_md_clusters;
    let id = b(s.create(thin(16))).unwrap();
    let blob = b(s.open(id)).unwrap();
    let ch = s.channel().unwrap();
    let data = vec![0xABu8; 4096];
    b(ch.write(&blob, 16 * 5 + 3, &data)).unwrap();
    assert_eq!(s.cluster_map(&blob)[5], first);
    assert_eq!(blob.num_allocated_clusters(), 1);
    let mut r = vec![1u8; 8192];
    b(ch.read(&blob, 16 * 5 + 2, &mut r)).unwrap();
    assert!(r[4096..].iter().all(|&x| x == 0xAB));
    // A thin read of an unallocated cluster is zeroes without touching the device.
    b(ch.read(&blob, 0, &mut r)).unwrap();
    assert!(r.iter().all(|&x| x == 0));
    drop(ch);
    drop(blob);
    // No sync, no close: the cluster map reached the disk before the data.
    let s = crash(s);
    let blob = b(s.open(id)).unwrap();
    assert_eq!(s.cluster_map(&blob)[5], first);
    let ch = s.channel().unwrap();
    let mut r = vec![0u8; 4096];
    b(ch.read(&blob, 16 * 5 + 3, &mut r)).unwrap();
    assert_eq!(r, data);
    assert_eq!(s.used_clusters().len() as u32, first + 1);
}

#[test]
fn delete_frees_everything_and_out_of_range_io_fails() {
    let s = small(65536);
    let free0 = s.free_clusters();
    let a = b(s.create(CreateOpts {
        num_clusters: 3,
        ..CreateOpts::default()
    }))
    .unwrap();
    let pages0 = s.used_md_pages();
    assert_eq!(pages0, vec![0, 1]);
    assert_eq!(s.free_clusters(), free0 - 3);
    let blob = b(s.open(a)).unwrap();
    let ch = s.channel().unwrap();
    let mut buf = vec![0u8; 4096];
    assert!(b(ch.read(&blob, 48, &mut buf)).is_err());
    assert!(b(ch.read(&blob, 47, &mut buf[..100])).is_err());
    b(s.close(blob)).unwrap();
    b(s.delete(a)).unwrap();
    assert_eq!(s.free_clusters(), free0);
    assert!(s.used_md_pages().is_empty());
    assert!(matches!(b(s.open(a)), Err(Error::NotFound(_))));
    assert!(matches!(b(s.delete(a)), Err(Error::NotFound(_))));
    let s = crash(s);
    assert_eq!(s.free_clusters(), free0);
    assert!(b(s.blob_ids()).unwrap().is_empty());
}

#[test]
fn shrink_frees_clusters_only_after_sync() {
    let s = small(65536);
    let id = b(s.create(CreateOpts {
        num_clusters: 4,
        use_extent_table: false,
        ..CreateOpts::default()
    }))
    .unwrap();
    let blob = b(s.open(id)).unwrap();
    let free = s.free_clusters();
    b(s.resize(&blob, 1)).unwrap();
    assert_eq!(s.free_clusters(), free);
    assert_eq!(blob.num_clusters(), 1);
    b(s.sync_md(&blob)).unwrap();
    assert_eq!(s.free_clusters(), free + 3);
    b(s.resize(&blob, 600)).unwrap_err();
    b(s.close(blob)).unwrap();
    let s = crash(s);
    let blob = b(s.open(id)).unwrap();
    assert_eq!(blob.num_clusters(), 1);
    assert_eq!(s.free_clusters(), free + 3);
}

#[test]
fn unsynced_changes_are_lost_in_a_crash() {
    let s = small(65536);
    let id = b(s.create(CreateOpts {
        num_clusters: 2,
        ..CreateOpts::default()
    }))
    .unwrap();
    let blob = b(s.open(id)).unwrap();
    b(s.resize(&blob, 5)).unwrap();
    b(s.set_xattr(&blob, "x", b"1")).unwrap();
    drop(blob);
    let s = crash(s);
    let blob = b(s.open(id)).unwrap();
    assert_eq!(blob.num_clusters(), 2);
    assert!(b(s.xattr_names(&blob)).unwrap().is_empty());
    // Recovery did not leak the 3 clusters the lost resize had claimed.
    assert_eq!(
        s.used_clusters().len() as u32,
        s.layout().num_md_clusters + 2
    );
}

#[test]
fn xattrs_keep_order_and_respect_the_page_limit() {
    let s = small(65536);
    assert!(matches!(
        b(s.create(CreateOpts {
            xattrs: vec![("e".into(), vec![])],
            ..CreateOpts::default()
        })),
        Err(Error::InvalidArgument(_))
    ));
    let id = b(s.create(CreateOpts::default())).unwrap();
    let h = b(s.open(id)).unwrap();
    for (k, v) in [("a", &b"1"[..]), ("b", b"2"), ("c", b"3")] {
        b(s.set_xattr(&h, k, v)).unwrap();
    }
    b(s.set_xattr(&h, "a", b"again")).unwrap();
    b(s.remove_xattr(&h, "b")).unwrap();
    assert!(matches!(
        b(s.remove_xattr(&h, "b")),
        Err(Error::NotFound(_))
    ));
    b(s.set_xattr(&h, "empty", b"")).unwrap();
    assert!(matches!(
        b(s.set_xattr(&h, "big", &vec![0u8; 4072])),
        Err(Error::NoMdSpace(_))
    ));
    b(s.close(h)).unwrap();
    let s = reload(s);
    let h = b(s.open(id)).unwrap();
    assert_eq!(b(s.xattr_names(&h)).unwrap(), vec!["a", "c", "empty"]);
    assert_eq!(b(s.get_xattr(&h, "a")).unwrap(), Some(b"again".to_vec()));
    assert_eq!(b(s.get_xattr(&h, "empty")).unwrap(), Some(vec![]));
}

#[test]
fn multi_page_chains_grow_and_shrink() {
    let s = small(65536);
    let id = b(s.create(CreateOpts::default())).unwrap();
    let h = b(s.open(id)).unwrap();
    for i in 0..5 {
        b(s.set_xattr(&h, &format!("x{i}"), &vec![i as u8; 3000])).unwrap();
    }
    b(s.sync_md(&h)).unwrap();
    assert_eq!(s.used_md_pages(), vec![0, 1, 2, 3, 4]);
    for i in 1..5 {
        b(s.remove_xattr(&h, &format!("x{i}"))).unwrap();
    }
    b(s.sync_md(&h)).unwrap();
    assert_eq!(s.used_md_pages(), vec![0]);
    let img = s.device().to_bytes();
    let md_start = s.layout().md_start as usize;
    for i in 1..5 {
        let o = (md_start + i) * 4096;
        assert!(
            img[o..o + 4096].iter().all(|&x| x == 0),
            "old chain page {i} zeroed"
        );
    }
    for i in 0..3 {
        b(s.set_xattr(&h, &format!("y{i}"), &vec![9; 3000])).unwrap();
    }
    b(s.close(h)).unwrap();
    let s = crash(s);
    let h = b(s.open(id)).unwrap();
    assert_eq!(b(s.xattr_names(&h)).unwrap(), vec!["x0", "y0", "y1", "y2"]);
    assert_eq!(s.used_md_pages(), vec![0, 1, 2, 3]);
}

#[test]
fn read_only_blobs_refuse_changes() {
    let s = small(65536);
    let id = b(s.create(CreateOpts {
        num_clusters: 1,
        ..CreateOpts::default()
    }))
    .unwrap();
    let h = b(s.open(id)).unwrap();
    b(s.set_read_only(&h)).unwrap();
    b(s.sync_md(&h)).unwrap();
    assert!(h.is_read_only());
    let ch = s.channel().unwrap();
    assert!(matches!(
        b(ch.write(&h, 0, &[0u8; 4096])),
        Err(Error::ReadOnly(_))
    ));
    assert!(matches!(b(s.resize(&h, 2)), Err(Error::ReadOnly(_))));
    assert!(matches!(
        b(s.set_xattr(&h, "a", b"b")),
        Err(Error::ReadOnly(_))
    ));
    drop(ch);
    b(s.close(h)).unwrap();
    let s = reload(s);
    assert!(b(s.open(id)).unwrap().is_read_only());
}

#[test]
fn io_units_of_512_bytes_and_clear_methods() {
    let dev = MemoryDevice::new(4 << 20, 512).unwrap();
    let s = b(NativeBlobStore::init(
        dev,
        InitOpts {
            cluster_size: 16384,
            ..InitOpts::default()
        },
    ))
    .unwrap();
    assert_eq!(s.io_unit_size(), 512);
    let id = b(s.create(CreateOpts {
        num_clusters: 2,
        clear_method: ClearMethod::WriteZeroes,
        ..CreateOpts::default()
    }))
    .unwrap();
    let h = b(s.open(id)).unwrap();
    assert_eq!(h.num_io_units(), 64);
    let ch = s.channel().unwrap();
    let data: Vec<u8> = (0..4096u32).map(|i| i as u8).collect();
    b(ch.write(&h, 30, &data)).unwrap(); // crosses the cluster boundary at unit 32
    let mut r = vec![0u8; 4096];
    b(ch.read(&h, 30, &mut r)).unwrap();
    assert_eq!(r, data);
    let c0 = s.cluster_map(&h)[0];
    b(s.close(h)).unwrap();
    b(s.delete(id)).unwrap();
    let img = s.device().to_bytes();
    let o = (c0 as usize) * 16384;
    assert!(
        img[o..o + 32768].iter().all(|&x| x == 0),
        "write-zeroes clear method"
    );
}

#[test]
fn concurrent_thin_writes_from_many_threads() {
    let s = small(65536);
    let id = b(s.create(thin(64))).unwrap();
    let h = b(s.open(id)).unwrap();
    let threads: Vec<_> = (0..4u8)
        .map(|t| {
            let s = s.clone();
            let h = h.clone();
            std::thread::spawn(move || {
                let ch = s.channel().unwrap();
                for k in 0..16u64 {
                    let c = k * 4 + u64::from(t);
                    b(ch.write(&h, c * 16, &vec![t + 1; 4096])).unwrap();
                    // Everyone also writes into cluster 63 (the same allocation race).
                    b(ch.write(&h, 63 * 16 + u64::from(t), &vec![t + 1; 4096])).unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(h.num_allocated_clusters(), 64);
    let map = s.cluster_map(&h);
    let mut sorted = map.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted.len(), 64, "no cluster handed out twice");
    let ch = s.channel().unwrap();
    let mut r = vec![0u8; 4096];
    for c in 0..63u64 {
        b(ch.read(&h, c * 16, &mut r)).unwrap();
        assert!(r.iter().all(|&x| x == (c % 4) as u8 + 1));
    }
}

#[test]
fn unmap_releases_whole_thin_clusters() {
    let s = small(65536);
    let id = b(s.create(thin(4))).unwrap();
    let h = b(s.open(id)).unwrap();
    let ch = s.channel().unwrap();
    b(ch.write(&h, 0, &vec![7u8; 4096 * 32])).unwrap();
    assert_eq!(h.num_allocated_clusters(), 2);
    let free = s.free_clusters();
    b(ch.unmap(&h, 8, 24)).unwrap(); // cluster 1 whole, cluster 0 partly
    assert_eq!(h.num_allocated_clusters(), 1);
    assert_eq!(s.free_clusters(), free + 1);
    let mut r = vec![1u8; 4096];
    b(ch.read(&h, 20, &mut r)).unwrap();
    assert!(r.iter().all(|&x| x == 0));
    b(ch.write_zeroes(&h, 40, 4)).unwrap();
    assert_eq!(h.num_allocated_clusters(), 2);
}

#[test]
fn loads_reject_foreign_and_corrupt_devices() {
    let dev = MemoryDevice::new(1 << 20, 4096).unwrap();
    assert!(matches!(
        b(NativeBlobStore::load(dev, LoadOpts::default())),
        Err(Error::NotABlobstore(_))
    ));
    let s = small(65536);
    b(s.unload()).unwrap();
    let dev = s.into_device().unwrap();
    let opts = LoadOpts {
        bstype: crate::blobstore::Bstype::new("OTHER").unwrap(),
        force_recover: false,
    };
    assert!(matches!(
        b(NativeBlobStore::load(dev, opts)),
        Err(Error::BstypeMismatch { .. })
    ));
}

/// Crash at every point of a sequence on the sim device (unflushed writes lost or torn at
/// random): every crash image loads, and everything synced before the crash is there.
#[test]
fn sim_crashes_at_every_step_recover() {
    for seed in 0..12u64 {
        let dev = SimDevice::new(4 << 20, 4096, seed).unwrap();
        dev.set_crash_mode(CrashMode::Random);
        let s = b(NativeBlobStore::init(
            dev,
            InitOpts {
                cluster_size: 65536,
                ..InitOpts::default()
            },
        ))
        .unwrap();
        let mut synced: Vec<(u64, u64)> = Vec::new();
        let steps = 6 + seed as usize % 5;
        for step in 0..steps {
            let id = b(s.create(thin(8))).unwrap();
            let h = b(s.open(id)).unwrap();
            let ch = s.channel().unwrap();
            b(ch.write(&h, (step as u64 % 8) * 16, &vec![step as u8 + 1; 4096])).unwrap();
            b(ch.flush()).unwrap();
            b(s.resize(&h, 8 + step as u64)).unwrap();
            b(s.close(h)).unwrap();
            synced.push((id, 8 + step as u64));
            if step % 3 == 2 {
                let (old, _) = synced.remove(0);
                b(s.delete(old)).unwrap();
            }
        }
        let image = s.device().crash_image();
        drop(s);
        let s = b(NativeBlobStore::load(
            MemoryDevice::from_bytes(image, 4096).unwrap(),
            LoadOpts::default(),
        ))
        .unwrap_or_else(|e| panic!("seed {seed}: {e}"));
        let ids = b(s.blob_ids()).unwrap();
        let mut owned = Vec::new();
        for &(id, n) in &synced {
            assert!(ids.contains(&id), "seed {seed}: blob {id:#x} lost");
            let h = b(s.open(id)).unwrap();
            assert_eq!(h.num_clusters(), n);
            owned.extend(s.cluster_map(&h).into_iter().filter(|&c| c != 0));
            b(s.close(h)).unwrap();
        }
        owned.sort();
        let before = owned.len();
        owned.dedup();
        assert_eq!(before, owned.len(), "seed {seed}: a cluster owned twice");
    }
}

#[test]
fn md_pages_larger_than_4096() {
    let dev = MemoryDevice::new(8 << 20, 4096).unwrap();
    let s = b(NativeBlobStore::init(
        dev,
        InitOpts {
            cluster_size: 65536,
            md_page_size: Some(8192),
            ..InitOpts::default()
        },
    ))
    .unwrap();
    assert_eq!(s.md_page_size(), 8192);
    let id = b(s.create(CreateOpts {
        num_clusters: 2,
        xattrs: vec![("k".into(), vec![3; 3000])],
        ..CreateOpts::default()
    }))
    .unwrap();
    let h = b(s.open(id)).unwrap();
    b(s.set_xattr(&h, "k2", &vec![4; 3000])).unwrap();
    b(s.close(h)).unwrap();
    let s = crash(s);
    let h = b(s.open(id)).unwrap();
    assert_eq!(b(s.xattr_names(&h)).unwrap(), vec!["k", "k2"]);
    assert_eq!(h.num_clusters(), 2);
}

/// The scenario of [`crash_at_every_io_leaves_a_loadable_store`]; stops at the first error.
fn crash_scenario(s: &NativeBlobStore<SimDevice>, done: &mut Vec<(BlobId, u64)>) -> Result<()> {
    let a = b(s.create(CreateOpts {
        num_clusters: 2,
        ..CreateOpts::default()
    }))?;
    done.push((a, 2));
    let t = b(s.create(thin(600)))?;
    done.push((t, 600));
    let ha = b(s.open(a))?;
    let ht = b(s.open(t))?;
    let ch = s.channel()?;
    b(ch.write(&ht, 3 * 16, &[1u8; 4096]))?;
    b(ch.write(&ht, 520 * 16, &[2u8; 4096]))?;
    for i in 0..3 {
        b(s.set_xattr(&ha, &format!("x{i}"), &[i as u8; 3000]))?;
    }
    b(s.resize(&ha, 4))?;
    b(s.sync_md(&ha))?;
    done[0].1 = 4;
    b(s.remove_xattr(&ha, "x1"))?;
    b(s.resize(&ha, 1))?;
    b(s.sync_md(&ha))?;
    done[0].1 = 1;
    b(s.close(ht))?;
    done.remove(1); // in flight: may or may not survive a crash
    b(s.delete(t))?;
    let r = b(s.create(CreateOpts {
        num_clusters: 3,
        thin_provision: true,
        use_extent_table: false,
        ..CreateOpts::default()
    }))?;
    let hr = b(s.open(r))?;
    b(ch.write(&hr, 2 * 16, &[3u8; 4096]))?;
    done.push((r, 3));
    b(s.close(ha))?;
    b(s.close(hr))?;
    drop(ch);
    b(s.unload())?;
    Ok(())
}

/// Crash at every single I/O of a scenario (the device fails every I/O from that point, then
/// loses or tears its unflushed writes at random): the store always loads, no cluster is
/// leaked or owned twice, every blob opens, and every blob whose creation completed before
/// the crash point is there.
#[test]
fn crash_at_every_io_leaves_a_loadable_store() {
    let make = |seed| {
        let dev = SimDevice::new(4 << 20, 4096, seed).unwrap();
        b(NativeBlobStore::init(
            dev,
            InitOpts {
                cluster_size: 65536,
                ..InitOpts::default()
            },
        ))
        .unwrap()
    };
    let s = make(0);
    let base = s.device().io_counts().total();
    crash_scenario(&s, &mut Vec::new()).unwrap();
    let total = s.device().io_counts().total() - base;
    drop(s);
    assert!(total > 20);
    for k in 0..=total {
        let s = make(k);
        s.device().stop_after(base + k);
        let mut done = Vec::new();
        let finished = crash_scenario(&s, &mut done).is_ok();
        // Two random survivor sets, plus "only flushed writes survive".
        let mut images = vec![
            s.device().crash_image(),
            s.device().crash_image_with_seed(k ^ 0x5EED),
        ];
        s.device().set_crash_mode(CrashMode::DropAll);
        images.push(s.device().crash_image());
        drop(s);
        for image in images {
            check_crash_image(k, image, &done, finished);
        }
    }
}

fn check_crash_image(k: u64, image: Vec<u8>, done: &[(BlobId, u64)], finished: bool) {
    {
        let s = b(NativeBlobStore::load(
            MemoryDevice::from_bytes(image, 4096).unwrap(),
            LoadOpts::default(),
        ))
        .unwrap_or_else(|e| panic!("crash after I/O {k}: load failed: {e}"));
        let mut owned: Vec<u32> = (0..s.layout().num_md_clusters).collect();
        for id in b(s.blob_ids()).unwrap() {
            let h = b(s.open(id)).unwrap_or_else(|e| panic!("crash after I/O {k}: open: {e}"));
            owned.extend(s.cluster_map(&h).into_iter().filter(|&c| c != 0));
            b(s.close(h)).unwrap();
        }
        owned.sort();
        let n = owned.len();
        owned.dedup();
        assert_eq!(n, owned.len(), "crash after I/O {k}: cluster owned twice");
        assert_eq!(s.used_clusters(), owned, "crash after I/O {k}: leak");
        let ids = b(s.blob_ids()).unwrap();
        for (id, _) in done {
            assert!(
                ids.contains(id),
                "crash after I/O {k}: completed blob {id:#x} lost"
            );
        }
        if finished {
            assert_eq!(ids.len(), 2, "completed scenario");
        }
    }
}

/// A dirty store (created, never unloaded) with one synced blob of `clusters` clusters.
fn dirty_with_blob(clusters: u64) -> (Vec<u8>, BlobId, Vec<u32>) {
    let s = small(64 << 10);
    let id = b(s.create(CreateOpts {
        num_clusters: clusters,
        xattrs: vec![("role".into(), b"kept".to_vec())],
        ..CreateOpts::default()
    }))
    .unwrap();
    let h = b(s.open(id)).unwrap();
    let map = s.cluster_map(&h);
    b(s.close(h)).unwrap();
    (s.device().to_bytes(), id, map)
}

#[test]
fn loading_a_dirty_store_writes_nothing() {
    let (bytes, id, _) = dirty_with_blob(3);
    let s = b(NativeBlobStore::load(
        MemoryDevice::from_bytes(bytes.clone(), 4096).unwrap(),
        LoadOpts::default(),
    ))
    .unwrap();
    assert!(b(s.blob_ids()).unwrap().contains(&id));
    assert!(
        s.device().to_bytes() == bytes,
        "the load wrote to the device"
    );
}

#[test]
fn a_damaged_md_page_fails_a_dirty_load_unless_salvaging() {
    let (mut bytes, id, map) = dirty_with_blob(3);
    let l = small(64 << 10).layout().clone();
    let page = l.md_offset(id as u32) as usize;
    bytes[page + 100] ^= 0x10;
    let dev = || MemoryDevice::from_bytes(bytes.clone(), 4096).unwrap();
    match b(NativeBlobStore::load(dev(), LoadOpts::default())) {
        Err(Error::Corruption { blob, offset, .. }) => {
            assert_eq!((blob, offset), (id, page as u64));
        }
        other => panic!("{:?}", other.map(|_| ())),
    }
    // SPDK's behaviour, asked for explicitly: the blob is dropped and its clusters read free;
    // repair can then write its md page back.
    let s = b(NativeBlobStore::load_salvage(dev(), LoadOpts::default())).unwrap();
    assert!(!b(s.blob_ids()).unwrap().contains(&id));
    let xattrs = vec![("role".to_string(), b"kept".to_vec())];
    b(s.restore_blob_md(id, xattrs.clone(), map.clone())).unwrap();
    let h = b(s.open(id)).unwrap();
    assert_eq!(s.cluster_map(&h), map);
    assert_eq!(b(s.get_xattr(&h, "role")).unwrap(), Some(b"kept".to_vec()));
    b(s.close(h)).unwrap();
    // Restoring over a live blob or taken clusters is refused.
    assert!(b(s.restore_blob_md(id, xattrs, map)).is_err());
}

#[test]
fn a_zeroed_super_block_is_rebuilt_from_the_layout() {
    let s = small(64 << 10);
    let id = b(s.create(CreateOpts {
        xattrs: vec![("bc.role".into(), b"super".to_vec())],
        ..CreateOpts::default()
    }))
    .unwrap();
    b(s.set_super(id)).unwrap();
    b(s.create(CreateOpts {
        num_clusters: 2,
        ..CreateOpts::default()
    }))
    .unwrap();
    b(s.unload()).unwrap();
    let want = SuperBlock::decode(&head(&s, 4096)).unwrap();
    let mut bytes = s.into_device().unwrap().to_bytes();
    bytes[..4096].fill(0);
    let dev = MemoryDevice::from_bytes(bytes, 4096).unwrap();
    let got = b(rebuild::super_block_from_layout(
        &dev,
        Bstype::default(),
        (b"bc.role", b"super"),
    ))
    .unwrap();
    assert_eq!(got.clean, 0, "the masks are rebuilt, not trusted");
    assert_eq!(SuperBlock { clean: 1, ..got }, want);
}

/// Clear bit `i` of the mask whose first page is `start` in a device image.
fn clear_mask_bit(bytes: &mut [u8], l: &super::layout::Layout, start: u32, i: u32) {
    let at = (l.page_offset(start) + super::mask::MASK_HEADER) as usize + i as usize / 8;
    assert!(bytes[at] & (1 << (i % 8)) != 0, "bit {i} was set");
    bytes[at] &= !(1 << (i % 8));
}

/// A clean store holding one extent-table blob with 3 clusters and a 2-page xattr chain:
/// its image, id, md pages (chain and extent pages) and device clusters.
fn clean_with_blob() -> (Vec<u8>, BlobId, Vec<u32>, Vec<u32>) {
    let s = small(64 << 10);
    let id = b(s.create(CreateOpts {
        num_clusters: 3,
        xattrs: vec![("a".into(), vec![7u8; 3000]), ("b".into(), vec![8u8; 3000])],
        use_extent_table: true,
        ..CreateOpts::default()
    }))
    .unwrap();
    let blob = b(s.open(id)).unwrap();
    let clusters = s.cluster_map(&blob);
    b(s.close(blob)).unwrap();
    let (_, chain) = b(s.inner.read_blob(id)).unwrap();
    let root = root_index(id).unwrap();
    let pages: Vec<u32> = s
        .used_md_pages()
        .into_iter()
        .filter(|&p| p >= root)
        .collect();
    assert!(
        chain.len() >= 2 && pages.len() > chain.len(),
        "chain and extent pages"
    );
    b(s.unload()).unwrap();
    (s.into_device().unwrap().to_bytes(), id, pages, clusters)
}

#[test]
fn a_live_blob_whose_cluster_or_md_page_bit_is_clear_does_not_open() {
    let (image, id, pages, clusters) = clean_with_blob();
    let l = {
        let s = b(NativeBlobStore::load(
            MemoryDevice::from_bytes(image.clone(), 4096).unwrap(),
            LoadOpts::default(),
        ))
        .unwrap();
        s.layout().clone()
    };
    let root = root_index(id).unwrap();
    let mut cases: Vec<(u32, u32, &str)> = clusters
        .iter()
        .map(|&c| (l.cluster_mask_start, c, "used-cluster mask bit"))
        .collect();
    cases.extend(
        pages
            .iter()
            .filter(|&&p| p != root)
            .map(|&p| (l.page_mask_start, p, "used-md-page mask bit")),
    );
    for (start, i, want) in cases {
        let mut bytes = image.clone();
        clear_mask_bit(&mut bytes, &l, start, i);
        let dev = MemoryDevice::from_bytes(bytes.clone(), 4096).unwrap();
        let s = b(NativeBlobStore::load(dev, LoadOpts::default())).unwrap();
        match b(s.open(id)) {
            Err(Error::Corruption { blob, detail, .. }) => {
                assert_eq!(blob, id);
                assert!(detail.contains(&format!("{want} {i} is clear")), "{detail}");
            }
            Err(e) => panic!("{want} {i}: {e}"),
            Ok(_) => panic!("{want} {i}: a blob the mask does not protect opened"),
        }
        // Never allocate over it: nothing else can be created in its place before a reload.
        assert_eq!(s.device().to_bytes(), bytes, "a refused open wrote nothing");
    }
}

#[test]
fn a_cleared_root_page_bit_is_rebuilt_in_memory_and_never_reused() {
    let (image, id, _, clusters) = clean_with_blob();
    let mut bytes = image.clone();
    let s = b(NativeBlobStore::load(
        MemoryDevice::from_bytes(image, 4096).unwrap(),
        LoadOpts::default(),
    ))
    .unwrap();
    let l = s.layout().clone();
    drop(s);
    clear_mask_bit(&mut bytes, &l, l.page_mask_start, root_index(id).unwrap());
    let s = b(NativeBlobStore::load(
        MemoryDevice::from_bytes(bytes, 4096).unwrap(),
        LoadOpts::default(),
    ))
    .unwrap();
    assert!(s.used_md_pages().contains(&root_index(id).unwrap()));
    for _ in 0..8 {
        let other = b(s.create(CreateOpts {
            num_clusters: 1,
            ..CreateOpts::default()
        }))
        .unwrap();
        assert_ne!(other, id);
    }
    let blob = b(s.open(id)).unwrap();
    assert_eq!(s.cluster_map(&blob), clusters);
    b(s.close(blob)).unwrap();
}

#[test]
fn a_stray_blob_id_bit_on_another_blobs_page_is_forgotten_and_not_persisted() {
    let (image, id, pages, _) = clean_with_blob();
    let root = root_index(id).unwrap();
    let load = |bytes: Vec<u8>| {
        b(NativeBlobStore::load(
            MemoryDevice::from_bytes(bytes, 4096).unwrap(),
            LoadOpts::default(),
        ))
        .unwrap()
    };
    let l = load(image.clone()).layout().clone();
    let stray = pages.into_iter().find(|&p| p != root).unwrap();
    let mut bytes = image;
    let at = (l.page_offset(l.blobid_mask_start) + super::mask::MASK_HEADER) as usize;
    bytes[at + stray as usize / 8] |= 1 << (stray % 8);
    let s = load(bytes);
    let ghost = super::blobmd::blob_id(stray);
    assert!(b(s.blob_ids()).unwrap().contains(&ghost));
    assert!(matches!(b(s.open(ghost)), Err(Error::NotFound(_))));
    assert_eq!(b(s.blob_ids()).unwrap(), vec![id]);
    let blob = b(s.open(id)).unwrap();
    b(s.close(blob)).unwrap();
    let s = reload(s);
    assert_eq!(
        b(s.blob_ids()).unwrap(),
        vec![id],
        "the clean unload dropped the bit"
    );
}

// ---- Snapshots, clones and esnap clones (read side) ------------------------------------------

/// Give blob `id` internal xattr `name` (and optionally extra invalid flags), persisted, as
/// SPDK's snapshot and clone operations leave it.
fn set_internal(s: &Store, id: BlobId, name: &[u8], value: &[u8], flags: u64) {
    let h = b(s.open(id)).unwrap();
    s.inner
        .with_blob(&h.shared, |_, ob| {
            ob.md.internal_xattrs.push((name.to_vec(), value.to_vec()));
            ob.md.invalid_flags |= blobmd::FLAG_INTERNAL_XATTR | flags;
            ob.dirty = true;
            Ok(())
        })
        .unwrap();
    b(s.close(h)).unwrap();
}

/// Make `parent` a read-only snapshot and `child` (thin) its clone.
fn make_clone(s: &Store, parent: BlobId, child: BlobId) {
    let p = b(s.open(parent)).unwrap();
    b(s.set_read_only(&p)).unwrap();
    b(s.close(p)).unwrap();
    set_internal(s, child, b"SNAP", &parent.to_le_bytes(), 0);
}

fn fill(s: &Store, id: BlobId, cluster: u64, byte: u8) {
    let h = b(s.open(id)).unwrap();
    let ch = s.channel().unwrap();
    b(ch.write(&h, cluster * 16, &vec![byte; 16 * 4096])).unwrap();
    b(s.close(h)).unwrap();
}

/// The first byte of every cluster (each read whole, checked uniform).
fn clusters_of(s: &Store, h: &NativeBlob) -> Vec<u8> {
    let ch = s.channel().unwrap();
    (0..h.num_clusters())
        .map(|c| {
            let mut r = vec![0xEEu8; 16 * 4096];
            b(ch.read(h, c * 16, &mut r)).unwrap();
            assert!(r.iter().all(|&x| x == r[0]), "cluster {c} not uniform");
            r[0]
        })
        .collect()
}

#[test]
fn a_clone_reads_down_its_snapshot_chain_and_holds_it_open() {
    let s = small(65536);
    // G <- P <- C: grandparent, parent (4 clusters), clone grown to 6.
    let g = b(s.create(thin(4))).unwrap();
    let p = b(s.create(thin(4))).unwrap();
    let c = b(s.create(thin(6))).unwrap();
    fill(&s, g, 1, 0x11);
    fill(&s, g, 3, 0x13);
    fill(&s, p, 0, 0x20);
    fill(&s, p, 3, 0x23);
    fill(&s, c, 3, 0x33);
    fill(&s, c, 5, 0x35);
    make_clone(&s, g, p);
    make_clone(&s, p, c);
    let want = vec![0x20, 0x11, 0, 0x33, 0, 0x35];
    let h = b(s.open(c)).unwrap();
    assert_eq!(h.parent(), BlobParent::Snapshot(p));
    assert_eq!(clusters_of(&s, &h), want);
    // A read spanning clusters from three blobs in one request.
    let ch = s.channel().unwrap();
    let mut r = vec![0u8; 3 * 16 * 4096];
    b(ch.read(&h, 8, &mut r[..2 * 16 * 4096])).unwrap();
    assert_eq!(r[0], 0x20);
    assert_eq!(r[8 * 4096], 0x11);
    assert_eq!(r[24 * 4096], 0);
    drop(ch);
    // The chain is held open: neither snapshot can go while C is open.
    assert!(matches!(b(s.delete(p)), Err(Error::Busy(_))));
    assert!(matches!(b(s.delete(g)), Err(Error::Busy(_))));
    b(s.close(h)).unwrap();
    assert!(
        s.inner.st.lock().open.is_empty(),
        "the last close released the chain"
    );
    // It survives reload and a crash (recovery counts every blob's own clusters).
    let used = s.used_clusters();
    let s = crash(reload(s));
    assert_eq!(s.used_clusters(), used);
    let h = b(s.open(c)).unwrap();
    assert_eq!(clusters_of(&s, &h), want);
    // Opening the parent too shares the handle the clone holds.
    let hp = b(s.open(p)).unwrap();
    assert!(hp.is_read_only());
    assert_eq!(clusters_of(&s, &hp), vec![0x20, 0x11, 0, 0x23]);
    b(s.close(h)).unwrap();
    b(s.close(hp)).unwrap();
    assert!(s.inner.st.lock().open.is_empty());
    // Deleting the clone frees only its clusters; then its parent can go.
    let free = s.free_clusters();
    b(s.delete(c)).unwrap();
    assert_eq!(s.free_clusters(), free + 2);
    b(s.delete(p)).unwrap();
    let h = b(s.open(g)).unwrap();
    assert_eq!(clusters_of(&s, &h), vec![0, 0x11, 0, 0x13]);
    b(s.close(h)).unwrap();
}

#[test]
fn clone_writes_copy_on_first_write_and_unmap_keeps_clusters() {
    let s = small(65536);
    let p = b(s.create(thin(3))).unwrap();
    let c = b(s.create(thin(4))).unwrap();
    fill(&s, p, 0, 0x20);
    fill(&s, c, 1, 0x31);
    make_clone(&s, p, c);
    let h = b(s.open(c)).unwrap();
    let ch = s.channel().unwrap();
    // Cluster 0: the parent's data around the new unit; cluster 2: the chain ends in
    // zeroes, nothing to copy; cluster 3: past the parent's end, zeroes copied.
    b(ch.write(&h, 3, &[0xA0u8; 4096])).unwrap();
    b(ch.write(&h, 2 * 16 + 1, &[0xA2u8; 4096])).unwrap();
    b(ch.write(&h, 3 * 16 + 2, &[0xA3u8; 4096])).unwrap();
    assert_eq!(h.num_allocated_clusters(), 4);
    let mut r = vec![0u8; 16 * 4096];
    b(ch.read(&h, 0, &mut r)).unwrap();
    for (u, chunk) in r.chunks(4096).enumerate() {
        let want = if u == 3 { 0xA0 } else { 0x20 };
        assert!(chunk.iter().all(|&x| x == want), "unit {u}");
    }
    // Unmapping a whole own cluster of a clone keeps it (as SPDK: it would expose the parent).
    b(ch.unmap(&h, 16, 16)).unwrap();
    assert_eq!(h.num_allocated_clusters(), 4);
    b(s.close(h)).unwrap();
    drop(ch);
    let s = crash(reload(s));
    let h = b(s.open(c)).unwrap();
    let ch = s.channel().unwrap();
    b(ch.read(&h, 0, &mut r)).unwrap();
    assert!(r[3 * 4096..4 * 4096].iter().all(|&x| x == 0xA0));
    assert!(r[4 * 4096..].iter().all(|&x| x == 0x20));
    b(ch.read(&h, 3 * 16, &mut r)).unwrap();
    assert!(r[2 * 4096..3 * 4096].iter().all(|&x| x == 0xA3));
    assert!(r[..2 * 4096].iter().all(|&x| x == 0));
    b(s.close(h)).unwrap();
    // The snapshot is read-only.
    let h = b(s.open(p)).unwrap();
    let e = b(ch.write(&h, 0, &[1u8; 4096])).unwrap_err();
    assert!(matches!(e, Error::ReadOnly(_)), "{e}");
    b(s.close(h)).unwrap();
}

#[test]
fn snapshot_and_clone_api() {
    let s = small(65536);
    let a = b(s.create(thin(4))).unwrap();
    fill(&s, a, 0, 0x10);
    fill(&s, a, 1, 0x11);
    let used = s.used_clusters();
    let x = vec![("name".to_owned(), b"snap".to_vec())];
    let s1 = b(s.create_snapshot(a, &x)).unwrap();
    assert_eq!(s.used_clusters(), used, "a snapshot copies nothing");
    let h = b(s.open(a)).unwrap();
    assert_eq!(h.parent(), BlobParent::Snapshot(s1));
    assert_eq!(h.num_allocated_clusters(), 0);
    assert!(matches!(b(s.create_snapshot(a, &[])), Err(Error::Busy(_))));
    b(s.close(h)).unwrap();
    assert!(matches!(
        b(s.create_snapshot(s1, &[])),
        Err(Error::InvalidArgument(_))
    ));
    assert!(matches!(
        b(s.create_clone(a, &[])),
        Err(Error::InvalidArgument(_))
    ));
    fill(&s, a, 1, 0xA1);
    let s2 = b(s.create_snapshot(a, &[])).unwrap();
    fill(&s, a, 2, 0xA2);
    let c = b(s.create_clone(s1, &x)).unwrap();
    fill(&s, c, 3, 0xC3);
    let check = |s: &Store| {
        for (id, want, parent) in [
            (s1, vec![0x10, 0x11, 0, 0], BlobParent::None),
            (s2, vec![0x10, 0xA1, 0, 0], BlobParent::Snapshot(s1)),
            (a, vec![0x10, 0xA1, 0xA2, 0], BlobParent::Snapshot(s2)),
            (c, vec![0x10, 0x11, 0, 0xC3], BlobParent::Snapshot(s1)),
        ] {
            let h = b(s.open(id)).unwrap();
            assert_eq!(clusters_of(s, &h), want, "{id:#x}");
            assert_eq!(h.parent(), parent, "{id:#x}");
            assert_eq!(h.is_read_only(), id == s1 || id == s2);
            b(s.close(h)).unwrap();
        }
    };
    check(&s);
    let h = b(s.open(s1)).unwrap();
    assert_eq!(b(s.get_xattr(&h, "name")).unwrap(), Some(b"snap".to_vec()));
    assert!(s.internal_xattrs(&h).unwrap().is_empty(), "SNAPTMP is gone");
    b(s.close(h)).unwrap();
    let s = reload(s);
    check(&s);
    let s = crash(s);
    check(&s);
    // An esnap clone without its device: reads and first writes fail, nothing changes.
    let e = b(s.create_esnap_clone(thin(2), b"ext-1")).unwrap();
    let h = b(s.open(e)).unwrap();
    let ch = s.channel().unwrap();
    let used = s.used_clusters();
    let err = b(ch.write(&h, 0, &[1u8; 4096])).unwrap_err();
    assert!(matches!(err, Error::EsnapUnavailable { .. }), "{err}");
    assert_eq!(s.used_clusters(), used);
    b(s.close(h)).unwrap();
}

/// A crash at every device I/O of a snapshot, and of a copy on first write, leaves a store
/// that loads and reads the data as before (both operations leave the clone's contents as
/// they were, or as written).
#[test]
fn crashes_during_snapshot_and_copy_on_write_recover() {
    use std::sync::Arc as A;
    let base = {
        let dev = A::new(SimDevice::new(4 << 20, 4096, 7).unwrap());
        let s = b(NativeBlobStore::init(
            dev.clone(),
            InitOpts {
                cluster_size: 65536,
                ..InitOpts::default()
            },
        ))
        .unwrap();
        let a = b(s.create(thin(4))).unwrap();
        let h = b(s.open(a)).unwrap();
        let ch = s.channel().unwrap();
        b(ch.write(&h, 0, &vec![0x10u8; 2 * 16 * 4096])).unwrap();
        b(s.close(h)).unwrap();
        drop(ch);
        b(s.unload()).unwrap();
        drop(s);
        dev.current_image()
    };
    let a = blobmd::blob_id(0);
    let old: Vec<u8> = vec![0x10u8; 2 * 16 * 4096];
    // op 0: snapshot; op 1: snapshot, then a write into the clone's cluster 1; op 2:
    // snapshot, then the delete of the snapshot (which hands its clusters to the clone).
    // op 3: snapshot, then an inflate of the clone (it copies every cluster back).
    for op in 0..4 {
        let mut k = 0;
        loop {
            let dev = A::new(SimDevice::from_image(base.clone(), 4096, k).unwrap());
            dev.set_crash_mode(CrashMode::Random);
            let s = b(NativeBlobStore::load(dev.clone(), LoadOpts::default())).unwrap();
            let start = dev.io_counts().total();
            let mut new = old.clone();
            let mut snap = 0;
            if op >= 1 {
                snap = b(s.create_snapshot(a, &[])).unwrap();
            }
            if op == 1 {
                new[(16 + 4) * 4096..(16 + 5) * 4096].fill(0x77);
            }
            let start = if op >= 1 {
                dev.io_counts().total()
            } else {
                start
            };
            dev.stop_after(start + k);
            let done = if op == 0 {
                b(s.create_snapshot(a, &[])).is_ok()
            } else if op == 2 {
                b(s.delete(snap)).is_ok()
            } else if op == 3 {
                b(s.inflate(a)).is_ok()
            } else {
                let h = b(s.open(a));
                let ch = s.channel();
                match (h, ch) {
                    (Ok(h), Ok(ch)) => b(ch.write(&h, 16 + 4, &[0x77u8; 4096])).is_ok(),
                    _ => false,
                }
            };
            let image = dev.crash_image();
            drop(s);
            let s = b(NativeBlobStore::load(
                MemoryDevice::from_bytes(image, 4096).unwrap(),
                LoadOpts::default(),
            ))
            .unwrap_or_else(|e| panic!("op {op} crash at {k}: {e}"));
            let h = b(s.open(a)).unwrap_or_else(|e| panic!("op {op} crash at {k}: {e}"));
            let ch = s.channel().unwrap();
            let mut got = vec![0u8; 2 * 16 * 4096];
            b(ch.read(&h, 0, &mut got)).unwrap();
            for (i, (&g, (&o, &n))) in got.iter().zip(old.iter().zip(&new)).enumerate() {
                assert!(g == o || g == n, "op {op} crash at {k}: byte {i} is {g:#x}");
            }
            // The load finished or undid a cut-short snapshot operation: no marks left, and
            // no cluster belongs to two blobs.
            let mut owned = Vec::new();
            for id in b(s.blob_ids()).unwrap() {
                let h = b(s.open(id)).unwrap_or_else(|e| panic!("op {op} crash at {k}: {e}"));
                let marks = s.internal_xattrs(&h).unwrap();
                assert!(
                    marks.iter().all(|(n, _)| n != "SNAPTMP" && n != "SNAPRM"),
                    "op {op} crash at {k}: {marks:?}"
                );
                owned.extend(s.cluster_map(&h).into_iter().filter(|&c| c != 0));
                b(s.close(h)).unwrap();
            }
            let n = owned.len();
            owned.sort();
            owned.dedup();
            assert_eq!(
                n,
                owned.len(),
                "op {op} crash at {k}: a cluster owned twice"
            );
            b(s.close(h)).unwrap();
            if done {
                break;
            }
            k += 1;
            assert!(k < 200, "op {op} never completed");
        }
    }
}

#[test]
fn an_esnap_clone_reads_its_external_device_or_fails_alone() {
    use super::esnap::{EsnapMap, ExternalDevice};
    let s = small(65536);
    let e = b(s.create(thin(4))).unwrap();
    fill(&s, e, 2, 0x42);
    set_internal(
        &s,
        e,
        b"EXTSNAP",
        b"base-uuid",
        blobmd::FLAG_EXTERNAL_SNAPSHOT,
    );
    let plain = b(s.create(thin(1))).unwrap();
    fill(&s, plain, 0, 0x50);
    // Without a resolver: it opens, its own cluster reads, the rest fails typed.
    let h = b(s.open(e)).unwrap();
    assert_eq!(
        h.parent(),
        BlobParent::External {
            id: b"base-uuid".to_vec(),
            available: false
        }
    );
    let ch = s.channel().unwrap();
    let mut r = vec![0u8; 4096];
    b(ch.read(&h, 32, &mut r)).unwrap();
    assert_eq!(r[0], 0x42);
    let err = b(ch.read(&h, 0, &mut r)).unwrap_err();
    assert!(
        matches!(&err, Error::EsnapUnavailable { blob, esnap_id } if *blob == e && esnap_id == "base-uuid"),
        "{err}"
    );
    assert_eq!(err.errno(), -libc::ENODEV);
    b(s.close(h)).unwrap();
    let hp = b(s.open(plain)).unwrap();
    assert_eq!(clusters_of(&s, &hp), vec![0x50]);
    b(s.close(hp)).unwrap();
    // With one: 2.5 clusters of external data, zeroes past its end.
    let ext = MemoryDevice::new(5 * 32768, 4096).unwrap();
    b(crate::device::Device::write(
        &ext,
        0,
        &vec![0xE0u8; 5 * 32768],
    ))
    .unwrap();
    let mut map = EsnapMap::new();
    map.insert("base-uuid", Arc::new(ext) as Arc<dyn ExternalDevice>);
    s.set_esnap_resolver(Some(Arc::new(map)));
    let h = b(s.open(e)).unwrap();
    let mut r = vec![1u8; 4 * 16 * 4096];
    b(ch.read(&h, 0, &mut r)).unwrap();
    let c = 16 * 4096;
    assert!(r[..2 * c].iter().all(|&x| x == 0xE0));
    assert!(r[2 * c..3 * c].iter().all(|&x| x == 0x42));
    assert!(r[3 * c..].iter().all(|&x| x == 0));
    // A first write copies the external data around it.
    b(ch.write(&h, 1, &[1u8; 4096])).unwrap();
    b(ch.read(&h, 0, &mut r[..16 * 4096])).unwrap();
    assert!(r[..4096].iter().all(|&x| x == 0xE0));
    assert!(r[4096..2 * 4096].iter().all(|&x| x == 1));
    assert!(r[2 * 4096..16 * 4096].iter().all(|&x| x == 0xE0));
    b(s.close(h)).unwrap();
    // A device whose blocks do not divide the io unit is refused at open.
    let big = MemoryDevice::new(1 << 16, 8192);
    if let Ok(big) = big {
        let mut map = EsnapMap::new();
        map.insert("base-uuid", Arc::new(big) as Arc<dyn ExternalDevice>);
        s.set_esnap_resolver(Some(Arc::new(map)));
        assert!(matches!(b(s.open(e)), Err(Error::InvalidArgument(_))));
    }
}

#[test]
fn damaged_snapshot_links_fail_the_open_only() {
    let s = small(65536);
    let a = b(s.create(thin(1))).unwrap();
    let loop_ = b(s.create(thin(1))).unwrap();
    let gone = b(s.create(thin(1))).unwrap();
    let ok = b(s.create(thin(1))).unwrap();
    set_internal(&s, a, b"SNAP", &[1, 2, 3], 0);
    set_internal(&s, loop_, b"SNAP", &loop_.to_le_bytes(), 0);
    set_internal(&s, gone, b"SNAP", &0x1_0000_0099u64.to_le_bytes(), 0);
    let e = b(s.open(a)).unwrap_err();
    assert!(matches!(e, Error::Corruption { .. }), "{e}");
    let e = b(s.open(loop_)).unwrap_err();
    assert!(matches!(e, Error::Corruption { .. }), "{e}");
    let e = b(s.open(gone)).unwrap_err();
    assert!(matches!(e, Error::NotFound(_)), "{e}");
    assert!(
        s.inner.st.lock().open.is_empty(),
        "a failed open leaves nothing open"
    );
    let h = b(s.open(ok)).unwrap();
    b(s.close(h)).unwrap();
    // Recovery still counts them all.
    let s = crash(s);
    assert_eq!(b(s.blob_ids()).unwrap().len(), 4);
}

/// A crash at every device I/O of `create_clone` leaves the old state (no clone; the snapshot
/// and its first clone as they were) or the new one (the clone, thin, a clone of the snapshot,
/// with its xattr, reading exactly its parent's bytes), with no cluster owned twice or leaked.
#[test]
fn a_crash_at_every_io_of_create_clone_recovers_old_or_new() {
    use std::sync::Arc as A;
    const LEN: usize = 4 * 16 * 4096;
    let (base, a, snap) = {
        let dev = A::new(SimDevice::new(4 << 20, 4096, 11).unwrap());
        let s = b(NativeBlobStore::init(
            dev.clone(),
            InitOpts {
                cluster_size: 65536,
                ..InitOpts::default()
            },
        ))
        .unwrap();
        let a = b(s.create(thin(4))).unwrap();
        let h = b(s.open(a)).unwrap();
        let ch = s.channel().unwrap();
        b(ch.write(&h, 0, &vec![0x10u8; 2 * 16 * 4096])).unwrap();
        b(s.close(h)).unwrap();
        let snap = b(s.create_snapshot(a, &[])).unwrap();
        // The first clone copies cluster 1 on its first write.
        let h = b(s.open(a)).unwrap();
        b(ch.write(&h, 16 + 3, &[0xA1u8; 4096])).unwrap();
        b(s.close(h)).unwrap();
        drop(ch);
        b(s.unload()).unwrap();
        drop(s);
        (dev.current_image(), a, snap)
    };
    let mut snap_bytes = vec![0u8; LEN];
    snap_bytes[..2 * 16 * 4096].fill(0x10);
    let mut a_bytes = snap_bytes.clone();
    a_bytes[(16 + 3) * 4096..(16 + 4) * 4096].fill(0xA1);
    let xattrs = vec![("name".to_owned(), b"clone".to_vec())];
    let read = |s: &NativeBlobStore<MemoryDevice>, h: &NativeBlob| {
        let mut r = vec![0xEEu8; LEN];
        b(s.channel().unwrap().read(h, 0, &mut r)).unwrap();
        r
    };
    let (mut olds, mut news) = (0, 0);
    let mut k = 0;
    loop {
        let dev = A::new(SimDevice::from_image(base.clone(), 4096, k).unwrap());
        dev.set_crash_mode(CrashMode::Random);
        let s = b(NativeBlobStore::load(dev.clone(), LoadOpts::default())).unwrap();
        dev.stop_after(dev.io_counts().total() + k);
        let done = b(s.create_clone(snap, &xattrs)).is_ok();
        // Two random survivor sets, plus "only flushed writes survive".
        let mut images = vec![dev.crash_image(), dev.crash_image_with_seed(k ^ 0x5EED)];
        dev.set_crash_mode(CrashMode::DropAll);
        images.push(dev.crash_image());
        drop(s);
        for image in images {
            let s = b(NativeBlobStore::load(
                MemoryDevice::from_bytes(image, 4096).unwrap(),
                LoadOpts::default(),
            ))
            .unwrap_or_else(|e| panic!("crash at {k}: load: {e}"));
            let ids = b(s.blob_ids()).unwrap();
            let mut owned: Vec<u32> = (0..s.layout().num_md_clusters).collect();
            for &id in &ids {
                let h = b(s.open(id)).unwrap_or_else(|e| panic!("crash at {k}: open: {e}"));
                let marks = s.internal_xattrs(&h).unwrap();
                assert!(
                    marks.iter().all(|(n, _)| n != "SNAPTMP" && n != "SNAPRM"),
                    "crash at {k}: {marks:?}"
                );
                owned.extend(s.cluster_map(&h).into_iter().filter(|&c| c != 0));
                let (want, parent, ro) = if id == snap {
                    (&snap_bytes, BlobParent::None, true)
                } else if id == a {
                    (&a_bytes, BlobParent::Snapshot(snap), false)
                } else {
                    assert!(h.is_thin(), "crash at {k}: the clone is thick");
                    assert_eq!(h.num_clusters(), 4, "crash at {k}");
                    assert_eq!(h.num_allocated_clusters(), 0, "crash at {k}");
                    assert_eq!(
                        b(s.get_xattr(&h, "name")).unwrap(),
                        Some(b"clone".to_vec()),
                        "crash at {k}"
                    );
                    (&snap_bytes, BlobParent::Snapshot(snap), false)
                };
                assert_eq!(h.parent(), parent, "crash at {k}: parent of {id:#x}");
                assert_eq!(h.is_read_only(), ro, "crash at {k}: {id:#x}");
                assert!(read(&s, &h) == *want, "crash at {k}: bytes of {id:#x}");
                b(s.close(h)).unwrap();
            }
            owned.sort();
            let n = owned.len();
            owned.dedup();
            assert_eq!(n, owned.len(), "crash at {k}: a cluster owned twice");
            assert_eq!(s.used_clusters(), owned, "crash at {k}: leak");
            match ids.len() {
                2 => olds += 1,
                3 => news += 1,
                n => panic!("crash at {k}: {n} blobs"),
            }
            assert!(
                ids.contains(&a) && ids.contains(&snap),
                "crash at {k}: {ids:?}"
            );
        }
        if done {
            break;
        }
        k += 1;
        assert!(k < 200, "create_clone never completed");
    }
    assert!(
        k > 0 && olds > 0 && news > 0,
        "k {k}, old {olds}, new {news}"
    );
}

#[test]
fn deleting_a_snapshot_hands_its_clusters_to_its_only_clone() {
    let s = small(65536);
    let g = b(s.create(thin(4))).unwrap();
    let p = b(s.create(thin(4))).unwrap();
    let c = b(s.create(thin(4))).unwrap();
    fill(&s, g, 1, 0x11);
    fill(&s, p, 0, 0x20);
    fill(&s, p, 3, 0x23);
    fill(&s, c, 3, 0x33);
    make_clone(&s, g, p);
    make_clone(&s, p, c);
    let want = vec![0x20, 0x11, 0, 0x33];
    let other = b(s.create_clone(g, &[])).unwrap();
    // G has two clones (P and `other`): refused as SPDK does.
    let e = b(s.delete(g)).unwrap_err();
    assert!(matches!(e, Error::Busy(_)), "{e}");
    b(s.delete(other)).unwrap();
    let free = s.free_clusters();
    b(s.delete(p)).unwrap();
    assert_eq!(
        s.free_clusters(),
        free + 1,
        "only P's cluster 3, which C had, is freed"
    );
    let h = b(s.open(c)).unwrap();
    assert_eq!(h.parent(), BlobParent::Snapshot(g));
    assert_eq!(clusters_of(&s, &h), want);
    assert_eq!(h.num_allocated_clusters(), 2);
    // Open, the clone keeps its snapshot: busy.
    assert!(matches!(b(s.delete(g)), Err(Error::Busy(_))));
    b(s.close(h)).unwrap();
    b(s.delete(g)).unwrap();
    let check = |s: &Store| {
        let h = b(s.open(c)).unwrap();
        assert_eq!(h.parent(), BlobParent::None);
        assert_eq!(clusters_of(s, &h), want);
        assert_eq!(h.num_allocated_clusters(), 3);
        assert!(s.internal_xattrs(&h).unwrap().is_empty());
        b(s.close(h)).unwrap();
        assert_eq!(b(s.blob_ids()).unwrap(), vec![c]);
    };
    check(&s);
    let used = s.used_clusters();
    let s = crash(s);
    assert_eq!(s.used_clusters(), used);
    check(&s);
}
