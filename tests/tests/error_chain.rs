//! Errors cross the layers typed: a device failure reaches the `Db` caller as
//! `Error::Device` with the OS error in its `source()` chain, and a full blobstore is still
//! `Error::Full` at the `Db`.

use blobcask::{Error, SyncPolicy};
use blobcask_tests::harness;

#[test]
fn a_failed_device_read_reaches_the_caller_with_its_os_error() {
    let dev = harness::device(harness::template(1), 1);
    let db = harness::open(&dev, SyncPolicy::Always, 1).expect("open");
    db.put(b"key", b"value").expect("put");
    // Later records push "key" out of the log's tail page, which stays in memory.
    for i in 0..4u32 {
        db.put(&i.to_le_bytes(), &[1; 12_000]).expect("put");
    }
    db.close().expect("close");
    // Reopened without a read cache, so the get below must read the device.
    let mut o = harness::options(dev.clone(), SyncPolicy::Always, 1);
    o.cache_bytes = 0;
    let db = blobcask::Db::open(o).expect("reopen");

    dev.fail_next_read(true);
    let err = db
        .get(b"key")
        .expect_err("a get whose device read fails must fail");
    assert!(matches!(err, Error::Device(_)), "{err:?}");
    let os = err
        .os_error()
        .expect("the io::Error is reachable through source()");
    assert!(os.to_string().contains("sim"), "{os}");
    assert_eq!(err.errno(), -5, "EIO");

    dev.clear_faults();
    assert_eq!(db.get(b"key").expect("get"), Some(b"value".to_vec()));
    db.close().expect("close");
}

#[test]
fn a_full_blobstore_is_error_full_at_the_db() {
    let dev = harness::device(harness::template(1), 2);
    let db = harness::open(&dev, SyncPolicy::Never, 1).expect("open");
    let value = vec![0x5A; 12_000];
    let mut full = None;
    for i in 0..100_000u32 {
        match db.put(&i.to_le_bytes(), &value) {
            Ok(()) => {}
            Err(e) => {
                full = Some(e);
                break;
            }
        }
    }
    let err = full.expect("the store never filled up");
    assert!(matches!(err, Error::Full), "{err:?}");
    assert_eq!(err.errno(), -28, "ENOSPC");
}

#[test]
fn an_os_error_of_the_device_keeps_its_errno_as_an_engine_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let dev_err = blobcask::device::FileDevice::open(dir.path().join("missing"))
        .expect_err("no device at that path");
    assert!(
        matches!(dev_err, blobcask::device::Error::Os { .. }),
        "{dev_err:?}"
    );
    let err = Error::from(dev_err);
    assert!(matches!(err, Error::Device(_)), "{err:?}");
    let os = err
        .os_error()
        .expect("the io::Error is reachable through source()");
    assert_eq!(os.raw_os_error(), Some(2), "ENOENT: {os}");
    assert_eq!(err.errno(), -2);
    assert!(err.to_string().contains("missing"), "{err}");
}
