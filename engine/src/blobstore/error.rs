//! Errors of the blobstore layer, and the one mapping between them and SPDK's negative errnos,
//! so the native and the SPDK backend report the same thing for the
//! same fault.

use std::io;

use crate::device;

/// Every fallible blobstore operation returns this.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An unusable argument (options, offsets, xattr names) (SPDK `-EINVAL`).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// No free cluster (SPDK `-ENOSPC`).
    #[error("no space left on the blobstore")]
    NoSpace,
    /// No free metadata page, or an xattr too large for one page (SPDK `-ENOMEM`).
    #[error("out of metadata space: {0}")]
    NoMdSpace(String),
    /// A blob id that does not exist, or an xattr that is not set (SPDK `-ENOENT`).
    #[error("not found: {0}")]
    NotFound(String),
    /// The blob or store is in use (SPDK `-EBUSY`).
    #[error("busy: {0}")]
    Busy(String),
    /// Write to a read-only blob or store (SPDK `-EPERM`).
    #[error("read-only: {0}")]
    ReadOnly(String),
    /// Handle not open (SPDK `-EBADF`).
    #[error("blob handle is not open")]
    BadHandle,
    /// Bytes on the device fail validation. `blob` is the blob id (0 for store-level
    /// structures), `offset` the byte offset (in the blob for data, on the device for
    /// metadata) (SPDK `-EILSEQ`).
    #[error("corruption in blob {blob:#x} at offset {offset}: {detail}")]
    Corruption {
        blob: u64,
        offset: u64,
        detail: String,
    },
    /// The device does not hold an SPDK blobstore (no signature / bad super block).
    #[error("not a blobstore: {0}")]
    NotABlobstore(String),
    /// The blobstore carries another application's bstype tag (SPDK `-ENXIO`).
    #[error("blobstore type mismatch: expected {expected:?}, found {found:?}")]
    BstypeMismatch { expected: String, found: String },
    /// Not supported by this backend or build (SPDK `-ENOTSUP`).
    #[error("unsupported: {0}")]
    Unsupported(String),
    /// A read of an esnap clone needs its external snapshot, and no device was given for
    /// the esnap id stored in the blob (SPDK cannot open such a blob: `-ENODEV` here).
    #[error("blob {blob:#x} is an esnap clone of {esnap_id:?}, and no device was given for it")]
    EsnapUnavailable { blob: u64, esnap_id: String },
    /// The store was unloaded or abandoned (SPDK `-ESHUTDOWN`).
    #[error("store is closed")]
    Closed,
    /// The device under the store failed.
    #[error("{0}")]
    Device(#[from] device::Error),
    /// SPDK failed with an errno no other variant stands for; the source is that errno.
    #[error("I/O error: {op}: {source}")]
    Spdk {
        op: String,
        #[source]
        source: io::Error,
    },
}

/// `Result` with the blobstore [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
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

    /// The error SPDK means by negative errno `rc` from operation `op`.
    pub fn from_errno(op: &str, rc: i32) -> Self {
        match -rc {
            libc::EINVAL => Error::InvalidArgument(format!("{op} (-EINVAL)")),
            libc::ENOSPC => Error::NoSpace,
            libc::ENOMEM => Error::NoMdSpace(format!("{op} (-ENOMEM)")),
            libc::ENOENT => Error::NotFound(op.to_owned()),
            libc::EBUSY => Error::Busy(op.to_owned()),
            libc::EPERM => Error::ReadOnly(op.to_owned()),
            libc::EBADF => Error::BadHandle,
            libc::EILSEQ => Error::NotABlobstore(format!("{op}: bad super block")),
            libc::ENXIO => Error::BstypeMismatch {
                expected: String::new(),
                found: format!("another tag ({op})"),
            },
            libc::ENOTSUP => Error::Unsupported(op.to_owned()),
            libc::ESHUTDOWN => Error::Closed,
            n => Error::Spdk {
                op: op.to_owned(),
                source: io::Error::from_raw_os_error(n),
            },
        }
    }

    /// The negative errno SPDK's blobstore reports for the same condition; the inverse of
    /// [`Error::from_errno`].
    pub fn errno(&self) -> i32 {
        match self {
            Error::InvalidArgument(_) => -libc::EINVAL,
            Error::NoSpace => -libc::ENOSPC,
            Error::NoMdSpace(_) => -libc::ENOMEM,
            Error::NotFound(_) => -libc::ENOENT,
            Error::Busy(_) => -libc::EBUSY,
            Error::ReadOnly(_) => -libc::EPERM,
            Error::BadHandle => -libc::EBADF,
            Error::Corruption { .. } | Error::NotABlobstore(_) => -libc::EILSEQ,
            Error::BstypeMismatch { .. } => -libc::ENXIO,
            Error::Unsupported(_) => -libc::ENOTSUP,
            Error::EsnapUnavailable { .. } => -libc::ENODEV,
            Error::Closed => -libc::ESHUTDOWN,
            Error::Device(d) => d.errno(),
            Error::Spdk { source, .. } => -source.raw_os_error().unwrap_or(libc::EIO),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::error::Error as _;

    use super::*;

    #[test]
    fn every_spdk_errno_round_trips() {
        let named = [
            libc::EINVAL,
            libc::ENOSPC,
            libc::ENOMEM,
            libc::ENOENT,
            libc::EBUSY,
            libc::EPERM,
            libc::EBADF,
            libc::EILSEQ,
            libc::ENXIO,
            libc::ENOTSUP,
            libc::ESHUTDOWN,
        ];
        for n in named
            .into_iter()
            .chain([libc::EIO, libc::ENODEV, libc::EEXIST])
        {
            let e = Error::from_errno("op", -n);
            assert_eq!(e.errno(), -n, "{e:?}");
        }
        assert!(matches!(
            Error::from_errno("x", -libc::ENOSPC),
            Error::NoSpace
        ));
    }

    #[test]
    fn an_unnamed_errno_is_the_source() {
        let e = Error::from_errno("spdk_bs_load", -libc::EIO);
        let src = e.source().and_then(|s| s.downcast_ref::<io::Error>());
        assert_eq!(src.and_then(io::Error::raw_os_error), Some(libc::EIO));
    }
}
