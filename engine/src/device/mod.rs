//! Block devices under the native blobstore.
//!
//! One trait, [`Device`], with byte-addressed reads and writes whose offsets and lengths are
//! multiples of [`Device::block_size`]. Backends:
//! - `file`: a preallocated image file or a block device (`/dev/loopN`, `/dev/nvme0n1`), opened
//!   `O_DIRECT`, driven by io_uring (one ring per thread) with a pread/pwrite fallback;
//! - `memory`: a byte vector;
//! - `sim`: memory plus a seeded fault plan (torn writes, lost unflushed writes, bit flips, EIO,
//!   full device) for crash and fault tests.
//!
//! [`AnyDevice`] picks one of them at run time (CLI flag, path) with static dispatch
//! underneath, and `Arc<D>` is a device whenever `D` is, so a test can keep a handle to the
//! [`SimDevice`] it gave to a store.
//!
//! The futures returned by the native backends perform their I/O when first polled and
//! complete it before that poll returns, so borrowed buffers are never left with the kernel
//! after a future is dropped. Any implementation must keep that property: once a future is
//! dropped or has returned, no I/O may still reference the caller's buffer.

use std::future::Future;
use std::sync::Arc;

mod error;
pub use error::{Error, Result};

mod any;
mod flush;
// The two modules that talk to the kernel: aligned allocation, O_DIRECT, io_uring, ioctls.
#[allow(unsafe_code)]
mod buf;
#[allow(unsafe_code)]
mod file;
mod memory;
mod overlay;
// Owns an io_uring ring and an eventfd, and hands the kernel buffers it owns.
#[allow(unsafe_code)]
mod reactor;
pub mod sim;
pub use any::AnyDevice;
pub use buf::AlignedBuf;
pub(crate) use file::FileClaim;
pub use file::{FileDevice, FileOptions, DEFAULT_FILE_BLOCK_SIZE, NO_URING_ENV, RING_ENTRIES};
pub use flush::FlushCombiner;
pub use memory::MemoryDevice;
pub use overlay::Overlay;
pub use sim::{CrashMode, ErrorAt, FaultPlan, IoCounts, SimDevice};

/// Alignment of buffers that avoid a bounce copy on `O_DIRECT` devices.
pub const BUF_ALIGN: usize = 4096;

/// Which submission path a device uses; shown in logs and stats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IoPath {
    /// io_uring rings, one per thread.
    IoUring,
    /// Blocking `pread`/`pwrite` (io_uring could not be set up).
    Pread,
    /// In-memory (memory and sim devices).
    Memory,
    /// SPDK bdev I/O (the `spdk` backend; no `Device` underneath).
    Spdk,
}

impl std::fmt::Display for IoPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            IoPath::IoUring => "io_uring",
            IoPath::Pread => "pread/pwrite",
            IoPath::Memory => "memory",
            IoPath::Spdk => "spdk",
        })
    }
}

/// One request of a batch submitted with [`Device::submit`].
#[derive(Debug)]
pub enum IoRequest<'a> {
    Read { offset: u64, buf: &'a mut [u8] },
    Write { offset: u64, buf: &'a [u8] },
}

/// A block device. Offsets and lengths are in bytes and must be multiples of `block_size()`;
/// buffers of any address are accepted, [`BUF_ALIGN`]-aligned ones avoid a copy.
pub trait Device: Send + Sync + 'static {
    /// Logical block size in bytes (512..=4096, a power of two).
    fn block_size(&self) -> u32;
    /// Usable size in bytes (a multiple of `block_size`).
    fn size(&self) -> u64;
    /// Submission path in use.
    fn io_path(&self) -> IoPath;

    /// Read `buf.len()` bytes at `offset`.
    fn read(&self, offset: u64, buf: &mut [u8]) -> impl Future<Output = Result<()>> + Send;
    /// Read into an owned buffer, handed back with the outcome. The default reads in place
    /// (completing in its first poll); the file device queues the read on its reactor and
    /// completes the future from the reactor's thread, so an async caller never blocks and can
    /// keep many reads in flight. The buffer stays with the I/O until it ends: dropping the
    /// future early is safe.
    fn read_owned(
        &self,
        offset: u64,
        buf: AlignedBuf,
    ) -> impl Future<Output = (AlignedBuf, Result<()>)> + Send {
        async move {
            let mut buf = buf;
            let r = self.read(offset, &mut buf).await;
            (buf, r)
        }
    }
    /// Write `buf` at `offset`. Not durable until a later [`Device::flush`] completes.
    fn write(&self, offset: u64, buf: &[u8]) -> impl Future<Output = Result<()>> + Send;
    /// Submit every request at once (queue depth = `reqs.len()`), complete all of them.
    /// The first error is returned; requests are independent (no ordering among them).
    fn submit(&self, reqs: &mut [IoRequest<'_>]) -> impl Future<Output = Result<()>> + Send;
    /// Make every completed write durable (`fdatasync` on files and block devices).
    fn flush(&self) -> impl Future<Output = Result<()>> + Send;
    /// Tell the device a range is no longer needed. Devices without discard leave the old
    /// bytes in place (as SPDK's aio bdev does); callers must never rely on unmapped ranges
    /// reading as zero.
    fn unmap(&self, offset: u64, len: u64) -> impl Future<Output = Result<()>> + Send;
}

/// A shared device is a device: a test can keep an `Arc` handle (e.g. to a [`SimDevice`])
/// after handing a clone to a store.
impl<T: Device> Device for Arc<T> {
    fn block_size(&self) -> u32 {
        (**self).block_size()
    }

    fn size(&self) -> u64 {
        (**self).size()
    }

    fn io_path(&self) -> IoPath {
        (**self).io_path()
    }

    fn read(&self, offset: u64, buf: &mut [u8]) -> impl Future<Output = Result<()>> + Send {
        (**self).read(offset, buf)
    }

    fn write(&self, offset: u64, buf: &[u8]) -> impl Future<Output = Result<()>> + Send {
        (**self).write(offset, buf)
    }

    fn read_owned(
        &self,
        offset: u64,
        buf: AlignedBuf,
    ) -> impl Future<Output = (AlignedBuf, Result<()>)> + Send {
        (**self).read_owned(offset, buf)
    }

    fn submit(&self, reqs: &mut [IoRequest<'_>]) -> impl Future<Output = Result<()>> + Send {
        (**self).submit(reqs)
    }

    fn flush(&self) -> impl Future<Output = Result<()>> + Send {
        (**self).flush()
    }

    fn unmap(&self, offset: u64, len: u64) -> impl Future<Output = Result<()>> + Send {
        (**self).unmap(offset, len)
    }
}

/// Check that an I/O range is block-aligned and inside the device.
pub fn check_range(block_size: u32, size: u64, offset: u64, len: u64) -> Result<()> {
    let bs = u64::from(block_size);
    if !offset.is_multiple_of(bs) || !len.is_multiple_of(bs) {
        return Err(Error::Misaligned {
            offset,
            len,
            block_size,
        });
    }
    match offset.checked_add(len) {
        Some(end) if end <= size => Ok(()),
        _ => Err(Error::OutOfRange { offset, len, size }),
    }
}
