//! Atomic batches: every put and delete of a batch is applied, or none is, also across a
//! crash and across shards.
//!
//!     cargo run -p blobcask --example batch

use blobcask::{Db, DeviceSpec, Options, WriteBatch};

fn main() -> blobcask::Result<()> {
    let db = Db::open(Options::new(DeviceSpec::Memory { size: 64 << 20 }))?;
    db.put(b"account:alice", b"100")?;
    db.put(b"account:bob", b"0")?;

    // Move 30 from alice to bob: both balances change together.
    let mut transfer = WriteBatch::new();
    transfer
        .put(b"account:alice", b"70")
        .put(b"account:bob", b"30")
        .put(b"log:1", b"alice->bob 30");
    db.write_batch(transfer)?;

    for k in [&b"account:alice"[..], b"account:bob", b"log:1"] {
        let v = db.get(k)?.unwrap_or_default();
        println!(
            "{} = {}",
            String::from_utf8_lossy(k),
            String::from_utf8_lossy(&v)
        );
    }

    // Many small writes in one batch also cost one group commit instead of one each.
    let mut bulk = WriteBatch::new();
    for i in 0..1000 {
        bulk.put(format!("item:{i:04}").as_bytes(), b"x");
    }
    db.write_batch(bulk)?;
    println!("{} keys", db.stats()?.keys);
    db.close()
}
