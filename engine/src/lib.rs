//! blobcask: a Bitcask-style key-value store whose data files are blobs on an SPDK-format
//! blobstore.

pub mod blobstore;
pub mod device;
mod error;

pub use error::{Error, Result};
