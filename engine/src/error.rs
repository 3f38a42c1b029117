//! The one error type of the `blobcask` crate boundary.
//!
//! Blobstore-level failures map 1:1 onto SPDK's negative errnos (see [`Error::errno`]), so the
//! native and the SPDK backend report the same thing for the same fault.

use std::io;

/// Every fallible operation in `blobcask` returns this.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Caller passed something unusable (bad option, misaligned I/O, out-of-range offset).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// A key longer than the configured limit.
    #[error("key of {len} bytes exceeds the limit of {max}")]
    KeyTooLarge { len: usize, max: usize },
    /// A value longer than the configured limit.
    #[error("value of {len} bytes exceeds the limit of {max}")]
    ValueTooLarge { len: usize, max: usize },
    /// No free cluster (SPDK `-ENOSPC`).
    #[error("no space left on the blobstore")]
    Full,
    /// No free metadata page, or an xattr too large for one page (SPDK `-ENOMEM`).
    #[error("out of metadata space: {0}")]
    NoMetadataSpace(String),
    /// A blob id that does not exist, or an xattr that is not set (SPDK `-ENOENT`).
    #[error("not found: {0}")]
    NotFound(String),
    /// The blob or store is in use (SPDK `-EBUSY`).
    #[error("busy: {0}")]
    Busy(String),
    /// Write to a read-only blob (SPDK `-EPERM`).
    #[error("read-only: {0}")]
    ReadOnly(String),
    /// Handle not open (SPDK `-EBADF`).
    #[error("blob handle is not open")]
    BadHandle,
    /// Bytes on the device fail validation. `blob` is the blob id (0 for store-level
    /// structures), `offset` the byte offset (in the blob for data, on the device for
    /// metadata).
    #[error("corruption in blob {blob:#x} at offset {offset}: {detail}")]
    Corruption {
        blob: u64,
        offset: u64,
        detail: String,
    },
    /// A data blob's log is damaged where its records were known durable (not a torn tail).
    /// Open refuses it under the default recovery mode; `offset` and `len` are bytes of blob
    /// `blob` (its id) in shard `shard`.
    #[error(
        "damaged log in shard {shard}, blob {blob:#x}, offset {offset} ({len} bytes): durable \
         records no longer validate; run `blobcask check`, then `repair`, or open with \
         RecoveryMode::Salvage"
    )]
    DamagedLog {
        shard: usize,
        blob: u64,
        offset: u64,
        len: u64,
    },
    /// The device does not hold an SPDK blobstore (no signature / bad super block).
    #[error("not a blobstore: {0}")]
    NotABlobstore(String),
    /// The blobstore carries another application's bstype tag (SPDK `-ENXIO`).
    #[error("blobstore type mismatch: expected {expected:?}, found {found:?}")]
    BstypeMismatch { expected: String, found: String },
    /// The store is opened by another process.
    #[error("store is locked by another user: {0}")]
    Locked(String),
    /// A device error.
    #[error("I/O error: {0}")]
    Io(#[from] io::Error),
    /// A write or flush failed earlier; writes are refused until the store is reopened.
    #[error("store is poisoned by an earlier write failure; reopen it")]
    Poisoned,
    /// The store was closed.
    #[error("store is closed")]
    Closed,
    /// The operation is not supported by this backend or build.
    #[error("unsupported: {0}")]
    Unsupported(String),
}

/// `Result` with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// The negative errno SPDK's blobstore reports for the same condition.
    pub fn errno(&self) -> i32 {
        match self {
            Error::InvalidArgument(_) | Error::KeyTooLarge { .. } | Error::ValueTooLarge { .. } => {
                -libc::EINVAL
            }
            Error::Full => -libc::ENOSPC,
            Error::NoMetadataSpace(_) => -libc::ENOMEM,
            Error::NotFound(_) => -libc::ENOENT,
            Error::Busy(_) | Error::Locked(_) => -libc::EBUSY,
            Error::ReadOnly(_) => -libc::EPERM,
            Error::BadHandle => -libc::EBADF,
            Error::Corruption { .. } | Error::DamagedLog { .. } | Error::NotABlobstore(_) => {
                -libc::EILSEQ
            }
            Error::BstypeMismatch { .. } => -libc::ENXIO,
            Error::Io(_) | Error::Poisoned | Error::Closed => -libc::EIO,
            Error::Unsupported(_) => -libc::ENOTSUP,
        }
    }

    /// Shorthand for a corruption found in store-level metadata at device byte `offset`.
    pub fn corrupt_md(offset: u64, detail: impl Into<String>) -> Self {
        Error::Corruption {
            blob: 0,
            offset,
            detail: detail.into(),
        }
    }

    /// Shorthand for [`Error::InvalidArgument`].
    pub fn invalid(detail: impl Into<String>) -> Self {
        Error::InvalidArgument(detail.into())
    }
}
