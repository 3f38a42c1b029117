//! Errors of the device layer: what a block device can report, with the OS error as source.

use std::io;

/// Every fallible device operation returns this.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An unusable argument (block size, image size, path).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// An I/O range not aligned to the block size.
    #[error("I/O at {offset}+{len} is not aligned to the {block_size}-byte block size")]
    Misaligned {
        offset: u64,
        len: u64,
        block_size: u32,
    },
    /// An I/O range past the end of the device.
    #[error("I/O at {offset}+{len} runs past the device end ({size})")]
    OutOfRange { offset: u64, len: u64, size: u64 },
    /// A write to a device opened read-only.
    #[error("read-only: {0}")]
    ReadOnly(String),
    /// The device is held (exclusive lock) by another process or handle.
    #[error("store is locked by another user: {0}")]
    Locked(String),
    /// The device has a property this build cannot use (e.g. its logical block size).
    #[error("unsupported: {0}")]
    Unsupported(String),
    /// A system call on the device outside data I/O (open, geometry, lock, flush) failed.
    #[error("I/O error: {context}: {source}")]
    Os {
        /// The path and the call, e.g. `/dev/loop0: BLKGETSIZE64`.
        context: String,
        #[source]
        source: io::Error,
    },
    /// A data read or write failed. `offset` and `len` span the request (a batch: from its
    /// lowest offset to its highest end).
    #[error("I/O error: {context}: {op} of {len} bytes at {offset}: {source}")]
    Io {
        context: String,
        op: &'static str,
        offset: u64,
        len: u64,
        #[source]
        source: io::Error,
    },
    /// A fault the simulator injected (its plan's EIO, or the simulated full device).
    #[error("I/O error: {0}")]
    Injected(#[source] io::Error),
}

/// `Result` with the device [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// Shorthand for [`Error::InvalidArgument`].
    pub fn invalid(detail: impl Into<String>) -> Self {
        Error::InvalidArgument(detail.into())
    }

    /// The OS error underneath, if the device reported one.
    pub fn io_error(&self) -> Option<&io::Error> {
        match self {
            Error::Os { source, .. } | Error::Io { source, .. } | Error::Injected(source) => {
                Some(source)
            }
            _ => None,
        }
    }

    /// The negative errno SPDK's bdev layer reports for the same condition.
    pub fn errno(&self) -> i32 {
        match self {
            Error::InvalidArgument(_) | Error::Misaligned { .. } | Error::OutOfRange { .. } => {
                -libc::EINVAL
            }
            Error::ReadOnly(_) => -libc::EPERM,
            Error::Locked(_) => -libc::EBUSY,
            Error::Unsupported(_) => -libc::ENOTSUP,
            Error::Os { source, .. } | Error::Io { source, .. } | Error::Injected(source) => {
                -source.raw_os_error().unwrap_or(libc::EIO)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::error::Error as _;

    use super::*;

    #[test]
    fn an_io_error_keeps_its_os_error_as_source() {
        let e = Error::Io {
            context: "img".into(),
            op: "read",
            offset: 4096,
            len: 512,
            source: io::Error::from_raw_os_error(libc::EIO),
        };
        let src = e.source().and_then(|s| s.downcast_ref::<io::Error>());
        assert_eq!(src.and_then(io::Error::raw_os_error), Some(libc::EIO));
        assert_eq!(e.errno(), -libc::EIO);
        assert!(e.to_string().contains("read of 512 bytes at 4096"), "{e}");
    }
}
