//! Streaming iteration: every pair, a prefix, a key range, keys only, and `next_pair`, which
//! lends each pair without copying it.
//!
//!     cargo run -p blobcask --example iterate

use std::ops::Bound;

use blobcask::{Db, DeviceSpec, Options};

fn main() -> blobcask::Result<()> {
    let db = Db::open(Options::new(DeviceSpec::Memory { size: 64 << 20 }))?;
    for i in 0..100 {
        db.put(
            format!("user:{i:03}").as_bytes(),
            format!("name {i}").as_bytes(),
        )?;
        db.put(format!("order:{i:03}").as_bytes(), &[i as u8; 16])?;
    }

    // Pairs come in log order, not key order; sort them when order matters.
    let mut users: Vec<(Vec<u8>, Vec<u8>)> =
        db.iter_prefix(b"user:")?.collect::<blobcask::Result<_>>()?;
    users.sort();
    println!(
        "{} users, first {:?}",
        users.len(),
        String::from_utf8_lossy(&users[0].0)
    );

    let range = db.iter_range(Bound::Included(b"order:010"), Bound::Excluded(b"order:020"))?;
    println!("{} orders in [010, 020)", range.count());

    // No allocation per pair: the slices borrow the iterator's read buffers.
    let mut it = db.iter()?;
    let mut bytes = 0;
    while let Some(item) = it.next_pair() {
        let (k, v) = item?;
        bytes += k.len() + v.len();
    }
    println!("{bytes} bytes of keys and values");

    let keys = db.iter_keys()?.count();
    println!("{keys} keys (read from memory only)");
    db.close()
}
