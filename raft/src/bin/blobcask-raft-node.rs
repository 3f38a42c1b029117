//! A replicated key-value node on 127.0.0.1 (see the README's "Replication (openraft)").
//!
//! ```text
//! blobcask-raft-node --id 1 --addr 127.0.0.1:7001 --dir /tmp/n1 [--device-size BYTES]
//!                    [--snapshot-every N] [--keep-logs N]
//! ```

use std::process::ExitCode;

use blobcask_raft::node::{start, NodeOptions};

fn usage() -> ExitCode {
    eprintln!(
        "usage: blobcask-raft-node --id N --addr HOST:PORT --dir DIR [--device-size BYTES] \
         [--snapshot-every N] [--keep-logs N]"
    );
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let mut id = None;
    let mut addr = None;
    let mut dir = None;
    let mut device_size = None;
    let mut every = None;
    let mut keep = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let v = args.next();
        match (a.as_str(), v) {
            ("--id", Some(v)) => id = v.parse::<u64>().ok(),
            ("--addr", Some(v)) => addr = Some(v),
            ("--dir", Some(v)) => dir = Some(v),
            ("--device-size", Some(v)) => device_size = v.parse::<u64>().ok(),
            ("--snapshot-every", Some(v)) => every = v.parse::<u64>().ok(),
            ("--keep-logs", Some(v)) => keep = v.parse::<u64>().ok(),
            _ => return usage(),
        }
    }
    let (Some(id), Some(addr), Some(dir)) = (id, addr, dir) else {
        return usage();
    };
    let mut opts = NodeOptions::new(id, addr, dir);
    if let Some(s) = device_size {
        opts.device_size = s;
    }
    if let Some(n) = every {
        opts.snapshot_every = n;
    }
    if let Some(n) = keep {
        opts.keep_logs = n;
    }
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("tokio: {e}");
            return ExitCode::FAILURE;
        }
    };
    rt.block_on(async {
        match start(opts).await {
            Ok(node) => {
                println!("node {} listening on {}", node.id, node.addr);
                // Serve until the process is stopped (a kill is a crash; the store recovers).
                std::future::pending::<()>().await;
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("blobcask-raft-node: {e}");
                ExitCode::FAILURE
            }
        }
    })
}
