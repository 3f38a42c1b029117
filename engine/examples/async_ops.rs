//! The async API: many operations in flight from one thread. Any executor works; this one
//! uses `pollster` and `join` by hand to stay dependency-free.
//!
//!     cargo run -p blobcask --example async_ops

use std::future::Future;

use blobcask::{Db, DeviceSpec, Options};

/// Drive every future to completion on this thread, all in flight at once.
fn join_all<F: Future + Unpin>(mut futs: Vec<F>) -> Vec<F::Output> {
    use std::task::Poll;
    let mut out: Vec<Option<F::Output>> = futs.iter().map(|_| None).collect();
    pollster::block_on(std::future::poll_fn(|cx| {
        let mut pending = false;
        for (f, o) in futs.iter_mut().zip(out.iter_mut()) {
            if o.is_none() {
                match std::pin::Pin::new(f).poll(cx) {
                    Poll::Ready(v) => *o = Some(v),
                    Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            Poll::Pending
        } else {
            Poll::Ready(())
        }
    }));
    out.into_iter().flatten().collect()
}

fn main() -> blobcask::Result<()> {
    let dir = std::env::temp_dir().join(format!("blobcask-async-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let mut opts = Options::new(DeviceSpec::Path(dir.join("store.img")));
    opts.device_size = 64 << 20;
    let db = Db::open(opts)?;

    let puts: Vec<_> = (0..64)
        .map(|i| Box::pin(db.put_async(format!("k{i}").as_bytes(), &[i as u8; 100])))
        .collect();
    for r in join_all(puts) {
        r?;
    }
    // Reads that miss the cache go to the device together (one thread, many in flight).
    let gets: Vec<_> = (0..64)
        .map(|i| Box::pin(db.get_async(format!("k{i}").as_bytes())))
        .collect();
    let found = join_all(gets)
        .into_iter()
        .filter(|r| matches!(r, Ok(Some(_))))
        .count();
    println!("{found} of 64 keys read back");
    pollster::block_on(db.sync_async())?;
    db.close()?;
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}
