//! Read-only opens share an image file, writers hold it alone, `Options::lock_wait` waits for
//! the lock, and the store's counters (`Stats::totals`) outlive the handle.

use std::path::Path;
use std::time::{Duration, Instant};

use blobcask::{Db, DeviceSpec, Error, Options, SyncPolicy};

fn opts(path: &Path) -> Options {
    let mut o = Options::new(DeviceSpec::Path(path.to_path_buf()));
    o.device_size = 32 << 20;
    o.cluster_size = 64 << 10;
    o.shards = 2;
    o.cache_bytes = 0;
    o.sync = SyncPolicy::Always;
    o.merge.auto = false;
    o
}

fn existing(path: &Path) -> Options {
    let mut o = opts(path);
    o.create = false;
    o
}

#[test]
fn readers_share_an_image_and_a_writer_waits_for_them() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("s.img");
    let db = Db::open(opts(&img)).unwrap();
    db.put(b"k", b"v").unwrap();
    // A writer holds the image alone: a reader is refused.
    assert!(matches!(
        Db::open_read_only(existing(&img)),
        Err(Error::Locked(_))
    ));
    db.close().unwrap();

    let before = std::fs::read(&img).unwrap();
    let r1 = Db::open_read_only(existing(&img)).unwrap();
    let r2 = Db::open_read_only(existing(&img)).unwrap();
    assert_eq!(r1.get(b"k").unwrap().as_deref(), Some(&b"v"[..]));
    assert_eq!(r2.get(b"k").unwrap().as_deref(), Some(&b"v"[..]));
    assert!(matches!(Db::open(existing(&img)), Err(Error::Locked(_))));
    // A bounded wait gives up after about as long as asked.
    let mut o = existing(&img);
    o.lock_wait = Some(Duration::from_millis(800));
    let t = Instant::now();
    assert!(matches!(Db::open(o), Err(Error::Locked(_))));
    assert!(
        t.elapsed() >= Duration::from_millis(750),
        "{:?}",
        t.elapsed()
    );
    // A writer that waits opens once both readers are gone.
    let waiter = {
        let mut o = existing(&img);
        o.lock_wait = Some(Duration::MAX);
        std::thread::spawn(move || Db::open(o).map(|db| db.close()))
    };
    std::thread::sleep(Duration::from_millis(300));
    r1.close().unwrap();
    std::thread::sleep(Duration::from_millis(300));
    assert!(!waiter.is_finished(), "one reader still holds the image");
    // Compared while r2 still holds the image: once it closes, the waiting writer may open
    // and write at once.
    assert_eq!(
        std::fs::read(&img).unwrap(),
        before,
        "readers wrote nothing"
    );
    r2.close().unwrap();
    waiter.join().unwrap().unwrap().unwrap();
}

#[test]
fn totals_survive_close_and_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("t.img");
    let db = Db::open(opts(&img)).unwrap();
    for i in 0..200u32 {
        db.put(format!("k{}", i % 10).as_bytes(), &[7u8; 100])
            .unwrap();
    }
    db.merge().unwrap();
    let first = db.stats().unwrap();
    assert!(first.totals.merges >= 1);
    assert_eq!(first.totals.user_bytes, first.user_bytes);
    db.close().unwrap();

    let db = Db::open(existing(&img)).unwrap();
    let s = db.stats().unwrap();
    assert_eq!(s.merges, 0, "per-run counters start again");
    assert_eq!(
        s.totals.merges, first.totals.merges,
        "the totals are stored"
    );
    assert_eq!(s.totals.merged_bytes, first.totals.merged_bytes);
    assert_eq!(s.totals.user_bytes, first.totals.user_bytes);
    // Close wrote more (the keydir snapshots), and counted it.
    assert!(s.totals.device_bytes > first.totals.device_bytes);
    db.put(b"more", b"x").unwrap();
    let s = db.stats().unwrap();
    assert_eq!(s.totals.user_bytes, first.totals.user_bytes + 5);
    db.close().unwrap();

    // A read-only open sees them and stores nothing.
    let r = Db::open_read_only(existing(&img)).unwrap();
    let s = r.stats().unwrap();
    assert_eq!(s.totals.user_bytes, first.totals.user_bytes + 5);
    assert_eq!(s.totals.merges, first.totals.merges);
    r.close().unwrap();
}

#[test]
fn a_merge_is_counted_even_if_the_process_then_dies() {
    use blobcask_tests::harness;
    let dev = harness::device(harness::template(2), 7);
    let db = harness::open(&dev, SyncPolicy::Always, 2).unwrap();
    for i in 0..300u32 {
        db.put(format!("k{}", i % 10).as_bytes(), b"value").unwrap();
    }
    db.merge().unwrap();
    let merged = db.stats().unwrap().totals;
    assert!(merged.merges >= 1);
    // A power cut now: only what was flushed survives (the old handle's close reaches only
    // the old device).
    let after = harness::device(dev.durable_image(), 8);
    drop(db);
    let db = harness::open(&after, SyncPolicy::Always, 2).unwrap();
    let t = db.stats().unwrap().totals;
    assert_eq!(t.merges, merged.merges, "{t:?}");
    assert_eq!(t.user_bytes, merged.user_bytes, "{t:?}");
    db.close().unwrap();
}
