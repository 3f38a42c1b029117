//! The implementation over a linked SPDK.

mod channel;
mod completion;
mod ffi;
mod reactor;
mod store;

pub use channel::Channel;
pub use reactor::Env;
pub use store::{Blob, Blobstore};

/// Run a future to completion on the calling thread, parking it while SPDK works on the
/// reactor. Must not be called from SPDK callbacks (they run on the reactor).
pub fn block_on<F: std::future::Future>(f: F) -> F::Output {
    pollster::block_on(f)
}
