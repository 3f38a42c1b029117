//! The implementation over a linked SPDK.

mod channel;
mod completion;
mod ffi;
mod reactor;
mod store;

pub use channel::Channel;
pub use reactor::Env;
pub use store::{Blob, Blobstore};

/// Run a future to completion on the calling thread, driving SPDK while it waits
/// ([`Env::block_on`]); before SPDK is started, a plain blocking executor. Must not be
/// called from SPDK callbacks or jobs.
pub fn block_on<F: std::future::Future>(f: F) -> F::Output {
    match Env::get() {
        Some(env) => env.block_on(f),
        None => pollster::block_on(f),
    }
}
