//! Cost of the SPDK bridge itself: 4 KiB reads on a malloc bdev (no device latency), one at a
//! time and in batches of 32. `cargo run -p ffi-shim --features spdk --release --example
//! bridge_bench [aio-file]` (with a file: an aio bdev over it instead).

use std::time::{Duration, Instant};

use ffi_shim::{
    block_on, BlobCreateOpts, Blobstore, BsInitOpts, Config, EnvOpts, IoReq, StartMode,
};

fn main() {
    let file = std::env::args().nth(1);
    let (cfg, name) = match &file {
        Some(f) => (
            Config::aio("BenchAio0", std::path::Path::new(f), 4096),
            "BenchAio0",
        ),
        None => (
            Config::malloc("BenchMalloc0", 512 << 20, 4096),
            "BenchMalloc0",
        ),
    };
    let mode = StartMode::Init(BsInitOpts::default());
    let bs = match block_on(Blobstore::start(&EnvOpts::default(), &cfg, name, mode)) {
        Ok(b) => b,
        Err(e) => {
            println!("skipped: {e}");
            return;
        }
    };
    block_on(async {
        let clusters = bs.free_clusters().unwrap_or(0) * 3 / 4;
        let id = bs
            .create_blob(&BlobCreateOpts {
                num_clusters: clusters,
                ..Default::default()
            })
            .await
            .expect("create");
        let blob = bs.open_blob(id).await.expect("open");
        let ch = bs.channel().expect("channel");
        let units = clusters * u64::from(bs.cluster_size()) / 4096;
        let buf = vec![7u8; 1 << 20];
        let mut off = 0;
        while off + 256 <= units {
            ch.write(&blob, off, &buf).await.expect("fill");
            off += 256;
        }
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x % off
        };
        let mut one = vec![0u8; 4096];
        let t = Instant::now();
        let mut n = 0u64;
        while t.elapsed() < Duration::from_secs(2) {
            ch.read(&blob, next(), &mut one).await.expect("read");
            n += 1;
        }
        let qd1 = n as f64 / t.elapsed().as_secs_f64();
        let mut bufs: Vec<Vec<u8>> = (0..32).map(|_| vec![0u8; 4096]).collect();
        let t = Instant::now();
        let mut n = 0u64;
        while t.elapsed() < Duration::from_secs(2) {
            let mut reqs: Vec<IoReq<'_>> = bufs
                .iter_mut()
                .map(|b| IoReq::Read {
                    blob: &blob,
                    offset: next(),
                    buf: b,
                })
                .collect();
            ch.submit(&mut reqs).await.expect("batch");
            n += 32;
        }
        let qd32 = n as f64 / t.elapsed().as_secs_f64();
        println!(
            "{name}: 4 KiB random reads: QD1 {:.1}k IOPS ({:.1} us each), batches of 32 {:.1}k IOPS",
            qd1 / 1e3,
            1e6 / qd1,
            qd32 / 1e3
        );
        bs.close_blob(&blob).await.expect("close");
        drop(ch);
        bs.unload().await.expect("unload");
    });
}
