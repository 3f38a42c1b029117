//! Crash recovery on the simulated device: writes acknowledged under `SyncPolicy::Always`
//! survive a power loss at any point; unacknowledged ones may or may not.
//!
//!     cargo run -p blobcask --example crash_recovery

use std::sync::Arc;

use blobcask::device::SimDevice;
use blobcask::{Db, DeviceSpec, Options, SyncPolicy};

fn options(dev: &Arc<SimDevice>) -> Options {
    let mut o = Options::new(DeviceSpec::Sim(dev.clone()));
    o.sync = SyncPolicy::Always;
    o.shards = 2;
    o
}

fn main() -> blobcask::Result<()> {
    let dev = Arc::new(SimDevice::new(64 << 20, 4096, 42)?);
    let db = Db::open(options(&dev))?;
    for i in 0..500 {
        db.put(format!("key{i}").as_bytes(), format!("value{i}").as_bytes())?;
    }
    // Power loss: unflushed writes land in any subset, as on a real disk. No close.
    let after = Arc::new(dev.crash()?);
    drop(db);

    let db = Db::open(options(&after))?;
    let mut missing = 0;
    for i in 0..500 {
        if db.get(format!("key{i}").as_bytes())?.as_deref() != Some(format!("value{i}").as_bytes())
        {
            missing += 1;
        }
    }
    println!("reopened after the crash: {missing} of 500 acknowledged writes missing");
    assert_eq!(missing, 0);
    db.close()
}
