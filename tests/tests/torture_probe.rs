use std::time::Instant;
use blobcask::SyncPolicy;
use blobcask_tests::harness::{self, Mix};
use blobcask_tests::oracle::Oracle;

#[test]
fn probe() {
    let t = Instant::now();
    let img = harness::template(2);
    eprintln!("template {:?}", t.elapsed());
    for _ in 0..3 {
        let t = Instant::now();
        let dev = harness::device(img.clone(), 1);
        eprintln!("device {:?}", t.elapsed());
        let t = Instant::now();
        let db = harness::open(&dev, SyncPolicy::Always, 2).unwrap();
        eprintln!("open {:?} ios {:?}", t.elapsed(), dev.io_counts());
        let mut rng = blobcask_tests::seed::rng(5);
        let mix = Mix { steps: 50, reopen: 0, merge: 0, ..Mix::default() };
        let steps = harness::generate(&mut rng, &mix);
        let u = harness::universe(mix.keys);
        let mut o = Oracle::new(2);
        let t = Instant::now();
        let run = harness::drive(db, &dev, &mut o, &steps, SyncPolicy::Always, &u).unwrap();
        eprintln!("drive {:?} ios {:?}", t.elapsed(), dev.io_counts());
        let t = Instant::now();
        let image = dev.crash_image();
        eprintln!("crash_image {:?}", t.elapsed());
        let t = Instant::now();
        drop(run.db);
        eprintln!("drop {:?}", t.elapsed());
        let t = Instant::now();
        blobcask_tests::fsck::check(&image).unwrap();
        eprintln!("fsck {:?}", t.elapsed());
        let t = Instant::now();
        let (_d, db) = harness::reopen_and_verify(image, 3, &mut o, SyncPolicy::Always, &u).unwrap();
        eprintln!("reopen+verify {:?}", t.elapsed());
        let t = Instant::now();
        db.merge().unwrap();
        eprintln!("merge {:?}", t.elapsed());
        let t = Instant::now();
        db.close().unwrap();
        eprintln!("close {:?}", t.elapsed());
        let t = Instant::now();
        let db = harness::open(&_d, SyncPolicy::Always, 2).unwrap();
        eprintln!("clean open {:?}", t.elapsed());
        let t = Instant::now();
        drop(db);
        eprintln!("drop3 {:?}", t.elapsed());
    }
}
