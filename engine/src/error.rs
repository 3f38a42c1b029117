//! The engine's error type, the one at the `blobcask` crate boundary.
//!
//! The device and blobstore layers have errors of their own ([`device::Error`],
//! [`blobstore::Error`]). Converting one keeps the kinds callers match on as engine variants
//! (`Full`, `NoMetadataSpace`, `Corruption`, ...) and wraps the rest as a `#[source]`, so
//! `source()` leads down to the OS or SPDK errno.

use std::io;

use crate::{blobstore, device};

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
    /// An OS error of the engine itself (e.g. spawning a thread).
    #[error("I/O error: {0}")]
    Io(#[from] io::Error),
    /// The device failed (its OS error is the source's source).
    #[error("{0}")]
    Device(#[source] device::Error),
    /// The blobstore failed in a way no other variant stands for (e.g. an SPDK errno).
    #[error("{0}")]
    Blobstore(#[source] blobstore::Error),
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
    /// The operating system's error behind this one, if any: the first `io::Error` in the
    /// `source()` chain (its `raw_os_error` is the errno).
    pub fn os_error(&self) -> Option<&io::Error> {
        let mut cur = std::error::Error::source(self);
        while let Some(s) = cur {
            if let Some(io) = s.downcast_ref::<io::Error>() {
                return Some(io);
            }
            cur = s.source();
        }
        None
    }

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
            Error::Device(e) => e.errno(),
            Error::Blobstore(e) => e.errno(),
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

/// Argument, lock and read-only refusals keep their engine variants; failed I/O is wrapped.
impl From<device::Error> for Error {
    fn from(e: device::Error) -> Self {
        use device::Error as D;
        match e {
            D::InvalidArgument(s) => Error::InvalidArgument(s),
            D::Misaligned { .. } | D::OutOfRange { .. } => Error::InvalidArgument(e.to_string()),
            D::ReadOnly(s) => Error::ReadOnly(s),
            D::Locked(s) => Error::Locked(s),
            D::Unsupported(s) => Error::Unsupported(s),
            e => Error::Device(e),
        }
    }
}

/// The kinds the engine reacts to (space, corruption, ...) become engine variants; a device
/// failure becomes [`Error::Device`]; anything else is wrapped as [`Error::Blobstore`].
impl From<blobstore::Error> for Error {
    fn from(e: blobstore::Error) -> Self {
        use blobstore::Error as B;
        match e {
            B::InvalidArgument(s) => Error::InvalidArgument(s),
            B::NoSpace => Error::Full,
            B::NoMdSpace(s) => Error::NoMetadataSpace(s),
            B::NotFound(s) => Error::NotFound(s),
            B::Busy(s) => Error::Busy(s),
            B::ReadOnly(s) => Error::ReadOnly(s),
            B::BadHandle => Error::BadHandle,
            B::Corruption {
                blob,
                offset,
                detail,
            } => Error::Corruption {
                blob,
                offset,
                detail,
            },
            B::NotABlobstore(s) => Error::NotABlobstore(s),
            B::BstypeMismatch { expected, found } => Error::BstypeMismatch { expected, found },
            B::Unsupported(s) => Error::Unsupported(s),
            B::Closed => Error::Closed,
            B::Device(d) => Error::from(d),
            e => Error::Blobstore(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_device_failure_under_the_blobstore_keeps_its_os_error() {
        let d = device::Error::Io {
            context: "img".into(),
            op: "write",
            offset: 0,
            len: 4096,
            source: io::Error::from_raw_os_error(libc::EIO),
        };
        let e = Error::from(blobstore::Error::from(d));
        assert!(
            matches!(e, Error::Device(device::Error::Io { .. })),
            "{e:?}"
        );
        assert_eq!(
            e.os_error().and_then(io::Error::raw_os_error),
            Some(libc::EIO)
        );
        assert_eq!(e.errno(), -libc::EIO);
    }

    #[test]
    fn blobstore_kinds_keep_their_engine_variants() {
        assert!(matches!(
            Error::from(blobstore::Error::NoSpace),
            Error::Full
        ));
        assert!(matches!(
            Error::from(blobstore::Error::from_errno("resize", -libc::ENOMEM)),
            Error::NoMetadataSpace(_)
        ));
        assert!(matches!(
            Error::from(blobstore::Error::corrupt_md(8192, "bad crc")),
            Error::Corruption { offset: 8192, .. }
        ));
        assert!(matches!(
            Error::from(device::Error::Locked("img".into())),
            Error::Locked(_)
        ));
    }

    #[test]
    fn an_spdk_errno_is_reachable_from_the_engine_error() {
        let e = Error::from(blobstore::Error::from_errno("spdk_bs_load", -libc::ENODEV));
        assert!(matches!(e, Error::Blobstore(_)), "{e:?}");
        assert_eq!(
            e.os_error().and_then(io::Error::raw_os_error),
            Some(libc::ENODEV)
        );
        assert_eq!(e.errno(), -libc::ENODEV);
    }
}
