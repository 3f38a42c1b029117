//! Open (or create) a store on an image file, write, read, delete, close.
//!
//!     cargo run -p blobcask --example basic -- /tmp/basic.img

use blobcask::{Db, DeviceSpec, Options};

fn main() -> blobcask::Result<()> {
    let path = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "basic.img".into());
    let mut opts = Options::new(DeviceSpec::Path(path.clone().into()));
    // A missing image file is created this size (default 1 GiB), sparse: it takes space on
    // the file system as the store writes it (`Options::preallocate` allocates it whole).
    opts.device_size = 64 << 20;
    let db = Db::open(opts)?;

    db.put(b"hello", b"world")?;
    match db.get(b"hello")? {
        Some(v) => println!("hello = {}", String::from_utf8_lossy(&v)),
        None => println!("hello is missing"),
    }
    db.delete(b"hello")?;
    assert_eq!(db.get(b"hello")?, None);

    // Values are read in place when a copy is not needed.
    db.put(b"counter", &7u64.to_le_bytes())?;
    let n = db.get_with(b"counter", |v| v.len())?;
    println!("counter holds {n:?} bytes");

    let s = db.stats()?;
    println!(
        "{} keys, {} live bytes, {} of {} clusters free",
        s.keys, s.live_bytes, s.free_clusters, s.total_clusters
    );
    db.close()?;
    println!("closed {path}");
    Ok(())
}
