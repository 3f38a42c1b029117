//! Smoke test of the SPDK bridge on a malloc bdev. Skips (and says why) without SPDK.

use std::future::Future;
use std::task::{Context, Waker};

use ffi_shim::{
    block_on, BlobCreateOpts, Blobstore, BsInitOpts, BsLoadOpts, Config, EnvOpts, StartMode,
};

#[test]
fn malloc_roundtrip() {
    let cfg = Config::malloc("ShimSmoke0", 64 << 20, 4096);
    let mode = StartMode::Init(BsInitOpts {
        bstype: *b"SHIMSMOKE\0\0\0\0\0\0\0",
        ..BsInitOpts::default()
    });
    let bs = match block_on(Blobstore::start(
        &EnvOpts::default(),
        &cfg,
        "ShimSmoke0",
        mode,
    )) {
        Ok(bs) => bs,
        Err(e) => {
            println!("skipped: {e}");
            return;
        }
    };
    block_on(async {
        assert_eq!(bs.io_unit_size(), 4096);
        assert_eq!(bs.cluster_size(), 1 << 20);
        let total = bs.total_data_clusters().unwrap();
        assert!(total > 50, "{total}");
        let id = bs
            .create_blob(&BlobCreateOpts {
                num_clusters: 2,
                xattrs: vec![("name".into(), b"hello".to_vec())],
                ..Default::default()
            })
            .await
            .unwrap();
        let blob = bs.open_blob(id).await.unwrap();
        assert_eq!(blob.num_clusters(), 2);
        assert_eq!(
            bs.get_xattr(&blob, "name").unwrap().as_deref(),
            Some(&b"hello"[..])
        );
        assert_eq!(bs.get_xattr(&blob, "nope").unwrap(), None);
        bs.set_xattr(&blob, "k2", &[1, 2, 3]).unwrap();
        assert_eq!(
            bs.xattr_names(&blob).unwrap(),
            vec!["name".to_string(), "k2".into()]
        );
        let ch = bs.channel().unwrap();
        let data: Vec<u8> = (0..8192u32).map(|i| (i % 251) as u8).collect();
        ch.write(&blob, 3, &data).await.unwrap();
        let mut back = vec![0u8; 8192];
        ch.read(&blob, 3, &mut back).await.unwrap();
        assert_eq!(back, data);
        ch.flush().await.unwrap();

        // Futures dropped after submission: SPDK still completes into memory the record
        // owns; nothing here may crash or leak into later I/O.
        for i in 0..64u64 {
            let mut scratch = vec![0u8; 4096];
            let mut f = Box::pin(ch.read(&blob, i % 16, &mut scratch));
            let _ = f.as_mut().poll(&mut Context::from_waker(Waker::noop()));
            drop(f);
            let junk = vec![0xAB; 4096];
            let mut f = Box::pin(ch.write(&blob, 40 + i % 8, &junk));
            let _ = f.as_mut().poll(&mut Context::from_waker(Waker::noop()));
            drop(f);
            let mut f = Box::pin(bs.sync_md(&blob));
            let _ = f.as_mut().poll(&mut Context::from_waker(Waker::noop()));
            drop(f);
        }
        let mut back = vec![0u8; 8192];
        ch.read(&blob, 3, &mut back).await.unwrap();
        assert_eq!(back, data);

        bs.resize(&blob, 4).await.unwrap();
        bs.sync_md(&blob).await.unwrap();
        assert_eq!(blob.num_clusters(), 4);
        bs.set_super(id).await.unwrap();
        assert_eq!(bs.blob_ids().await.unwrap(), vec![id]);
        assert!(
            bs.unload().await.is_err(),
            "unload with an open blob must fail"
        );
        bs.close_blob(&blob).await.unwrap();
        drop(ch);
        bs.unload().await.unwrap();

        let env = ffi_shim::Env::get().unwrap();
        let bs = Blobstore::load(env, "ShimSmoke0", &BsLoadOpts::default())
            .await
            .unwrap();
        assert_eq!(&bs.bstype()[..9], b"SHIMSMOKE");
        assert_eq!(bs.super_blob(), Some(id));
        let blob = bs.open_blob(id).await.unwrap();
        assert_eq!(blob.num_clusters(), 4);
        assert_eq!(
            bs.get_xattr(&blob, "k2").unwrap().as_deref(),
            Some(&[1u8, 2, 3][..])
        );
        let ch = bs.channel().unwrap();
        let mut back = vec![0u8; 8192];
        ch.read(&blob, 3, &mut back).await.unwrap();
        assert_eq!(back, data);
        bs.close_blob(&blob).await.unwrap();
        bs.delete_blob(id).await.unwrap();
        assert!(bs.blob_ids().await.unwrap().is_empty());
        bs.unload().await.unwrap();
        println!("SPDK {} ok", env.version());
    });
}
