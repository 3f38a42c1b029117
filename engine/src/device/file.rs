//! File images and block devices: opened `O_DIRECT`, driven by io_uring.
//!
//! One code path serves a preallocated image file and a block device (`/dev/loopN`,
//! `/dev/nvme0n1`); only how size and block size are learned differs:
//!
//! | target        | size                          | block size                                  |
//! |---------------|-------------------------------|---------------------------------------------|
//! | regular file  | file length (a block multiple) | [`FileOptions::block_size`], else detected  |
//! | block device  | `BLKGETSIZE64`                | `BLKSSZGET` (logical), or a larger override |
//!
//! A regular file's block size is the direct-I/O alignment the kernel reports (`statx`
//! `STATX_DIOALIGN`), else 512 if a 512-byte direct read works, else 4096. When no block size
//! is asked for and the device starts with a blobstore super block whose io unit is smaller
//! than the detected block size (an image made on a 512-byte device, now on a file system or
//! disk with 4 KiB sectors), the block size drops to that io unit and, if direct I/O cannot
//! serve it, the device opens buffered: the page cache then does the read-modify-write of
//! the covering sectors, so such a store opens, reads and writes rather than failing.
//!
//! **Submission.** Each thread lazily creates its own io_uring ring of [`RING_ENTRIES`] entries
//! the first time it does I/O, so a `FileDevice` can be used from any number of threads at
//! once with no lock. A batch ([`Device::submit`]) is pushed as one run of SQEs (queue depth =
//! batch length, refilled as completions arrive when the ring is smaller) and the call waits for
//! every completion before it returns. Short transfers are resubmitted for the remainder,
//! `EINTR`/`EAGAIN` completions are retried. When io_uring cannot be set up (old kernel,
//! seccomp, `io_uring_disabled`), or [`FileOptions::force_pread`] or the environment variable
//! `BLOBCASK_NO_URING=1` asks for it, blocking `pread`/`pwrite` do the same work.
//!
//! **Buffers.** `O_DIRECT` needs the buffer address aligned to the block size; an unaligned
//! caller buffer is bounced through an [`AlignedBuf`], an aligned one goes to the kernel as is.
//! If the file system refuses `O_DIRECT` (e.g. tmpfs on old kernels, or a block size below the
//! file system's direct-I/O alignment), the device opens buffered and says so in the log;
//! [`Device::flush`] (`fdatasync`) then carries the whole durability burden, as it does anyway.
//!
//! **Unmap.** On block devices [`Device::unmap`] issues `BLKDISCARD` (when
//! [`FileOptions::discard`] is set; a device without discard support is not an error). On image
//! files it does nothing: the old bytes stay, as with SPDK's aio bdev on a file without hole
//! punching, so nobody may rely on unmapped ranges reading as zero.
//!
//! **Exclusion.** A writable open takes `flock(LOCK_EX)` on the file, a read-only one
//! `flock(LOCK_SH)`: any number of readers at once, or one writer alone. An open that cannot
//! get its lock retries for [`FileOptions::lock_wait`] (default half a second) and then fails
//! with [`Error::Locked`]. The lock is advisory.

use std::cell::RefCell;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use io_uring::{opcode, types, IoUring};

use super::error::{Error, Result};
use super::{check_range, AlignedBuf, Device, IoPath, IoRequest};

/// Entries of each thread's io_uring ring (submission queue depth).
pub const RING_ENTRIES: u32 = 128;

/// Block size of image files whose direct-I/O alignment cannot be learned.
pub const DEFAULT_FILE_BLOCK_SIZE: u32 = 4096;

/// Smallest block size (and io unit) a device may have.
const MIN_BLOCK_SIZE: u32 = 512;

/// Largest single kernel transfer; longer requests are split (the SQE length is a `u32`).
const MAX_TRANSFER: usize = 1 << 30;

/// Environment variable that forces the `pread`/`pwrite` path when set to `1`.
pub const NO_URING_ENV: &str = "BLOBCASK_NO_URING";

// Block-device ioctls not exported by `libc` (generic Linux encoding: x86_64, aarch64, riscv).
/// `_IOR(0x12, 114, size_t)`: device size in bytes.
const BLKGETSIZE64: libc::Ioctl = 0x8008_1272;
/// `_IO(0x12, 119)`: discard a `[offset, len]` byte range.
const BLKDISCARD: libc::Ioctl = 0x1277;

/// How a [`FileDevice`] is opened.
#[derive(Debug, Clone)]
pub struct FileOptions {
    /// Never use io_uring; do blocking `pread`/`pwrite` (tests of the fallback path).
    pub force_pread: bool,
    /// Try `O_DIRECT` (default). If the file system refuses it the device opens buffered.
    pub direct: bool,
    /// Block size: for image files the device block size (default: detected, see the module
    /// docs; a size below the file system's direct-I/O alignment opens buffered); for block
    /// devices an optional override that must be a multiple of the logical block size.
    pub block_size: Option<u32>,
    /// Issue `BLKDISCARD` on unmap of a block device (default on). Ignored for files.
    pub discard: bool,
    /// Take the advisory exclusive `flock` (default on); a shared one when `read_only`.
    pub lock: bool,
    /// Open `O_RDONLY`; every write fails `ReadOnly` (inspection tools).
    pub read_only: bool,
    /// How long to wait for a lock another handle holds before failing `Locked` (default:
    /// half a second; `Duration::MAX` waits for as long as it takes). Never less than the
    /// default: a handle closed a moment ago may still hold the lock briefly.
    pub lock_wait: Option<std::time::Duration>,
    /// When creating an image file: allocate all of it with `fallocate` (default off: the
    /// file is sparse and takes space on the file system as blocks are written).
    pub preallocate: bool,
}

impl Default for FileOptions {
    fn default() -> Self {
        FileOptions {
            force_pread: false,
            direct: true,
            block_size: None,
            discard: true,
            lock: true,
            read_only: false,
            lock_wait: None,
            preallocate: false,
        }
    }
}

/// An image file or a block device; see the module documentation.
#[derive(Debug)]
pub struct FileDevice {
    file: File,
    path: PathBuf,
    size: u64,
    block_size: u32,
    /// Buffer address alignment direct I/O needs; other buffers are bounced.
    mem_align: usize,
    block_device: bool,
    direct: bool,
    discard: bool,
    read_only: bool,
    io_path: IoPath,
    /// The completion thread of async reads, started by the first one (`None` inside: it
    /// could not start, and async reads are done in place).
    reactor: std::sync::OnceLock<Option<super::reactor::Reactor>>,
    /// Held by the store open on this handle: the `flock` cannot keep two stores of one
    /// process off a handle they share.
    claimed: std::sync::atomic::AtomicBool,
}

/// A store's exclusive use of a shared [`FileDevice`] handle; released on drop.
#[derive(Debug)]
pub(crate) struct FileClaim(std::sync::Arc<FileDevice>);

impl FileClaim {
    /// Claim `dev` for one store; fails [`Error::Locked`] while another claim holds it.
    pub(crate) fn new(dev: &std::sync::Arc<FileDevice>) -> Result<Self> {
        use std::sync::atomic::Ordering;
        if dev.claimed.swap(true, Ordering::AcqRel) {
            return Err(Error::Locked(format!(
                "{}: another store of this process is open on this device handle",
                dev.path.display()
            )));
        }
        Ok(FileClaim(dev.clone()))
    }
}

impl Drop for FileClaim {
    fn drop(&mut self) {
        self.0
            .claimed
            .store(false, std::sync::atomic::Ordering::Release);
    }
}

impl FileDevice {
    /// Create a new image file of `size` bytes, preallocated with `fallocate`, and open it.
    /// Fails if the file already exists.
    pub fn create(path: impl AsRef<Path>, size: u64, block_size: u32) -> Result<Self> {
        let opts = FileOptions {
            block_size: Some(block_size),
            preallocate: true,
            ..FileOptions::default()
        };
        Self::create_with(path, size, &opts)
    }

    /// A new image file of `size` bytes as `opts` say: the block size is `opts.block_size` or
    /// detected; the file is sparse unless `opts.preallocate`.
    pub fn create_with(path: impl AsRef<Path>, size: u64, opts: &FileOptions) -> Result<Self> {
        let path = path.as_ref();
        // Without a block size, any size the detection may pick must divide it.
        let bs = opts.block_size.unwrap_or(DEFAULT_FILE_BLOCK_SIZE);
        check_block_size(bs)?;
        if size < u64::from(bs) || !size.is_multiple_of(u64::from(bs)) {
            return Err(Error::invalid(format!(
                "image size {size} is not a positive multiple of the {bs}-byte block size"
            )));
        }
        make_image(path, size, opts.preallocate)?;
        Self::open_with(path, opts)
    }

    /// Extend the image file at `path` to `size` bytes, allocating the new range like
    /// [`FileDevice::create`] does (sparse where the file system cannot allocate), durably.
    /// A file already that long, or a block device, is left alone. For `grow`.
    pub fn extend(path: impl AsRef<Path>, size: u64) -> Result<()> {
        let path = path.as_ref();
        let meta = std::fs::metadata(path).map_err(|e| io_ctx(path, "stat", e))?;
        if !meta.is_file() || meta.len() >= size {
            return Ok(());
        }
        let file = OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_CLOEXEC)
            .open(path)
            .map_err(|e| io_ctx(path, "open", e))?;
        let len = libc::off_t::try_from(size)
            .map_err(|_| Error::invalid(format!("image size {size} too large")))?;
        // SAFETY: fallocate only takes integers; the fd is owned by `file`, open for writing.
        let rc = unsafe { libc::fallocate(file.as_raw_fd(), 0, 0, len) };
        if rc != 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EOPNOTSUPP) {
                return Err(io_ctx(path, "fallocate", e));
            }
            file.set_len(size)
                .map_err(|e| io_ctx(path, "set image length", e))?;
        }
        file.sync_all().map_err(|e| io_ctx(path, "fsync", e))
    }

    /// Open an existing image file or block device with default options.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        Self::open_with(path, &FileOptions::default())
    }

    /// Open an existing image file or block device.
    pub fn open_with(path: impl AsRef<Path>, opts: &FileOptions) -> Result<Self> {
        let path = path.as_ref();
        let ft = std::fs::metadata(path)
            .map_err(|e| io_ctx(path, "stat", e))?
            .file_type();
        if !ft.is_file() && !ft.is_block_device() {
            return Err(Error::invalid(format!(
                "{}: neither a regular file nor a block device",
                path.display()
            )));
        }
        let (mut file, mut direct) = open_fd(path, opts.direct, opts.read_only)?;
        if opts.lock {
            lock_file(&file, path, opts.read_only, opts.lock_wait)?;
        }
        let meta = file.metadata().map_err(|e| io_ctx(path, "stat", e))?;
        let block_device = meta.file_type().is_block_device();
        let (mut size, mut block_size, mut mem_align) = if block_device {
            let (size, bs) = block_device_geometry(&file, path, opts.block_size)?;
            (size, bs, bs)
        } else if meta.is_file() {
            let (bs, mem) = match opts.block_size {
                Some(bs) => (bs, bs),
                None => file_block_size(&file, path),
            };
            (meta.len(), bs, mem)
        } else {
            return Err(Error::invalid(format!(
                "{}: neither a regular file nor a block device",
                path.display()
            )));
        };
        if opts.block_size.is_none() {
            if let Some(unit) = smaller_io_unit(&file, size, block_size) {
                log::info!(
                    "{}: the blobstore's {unit}-byte io unit is below the {block_size}-byte \
                     block size; using {unit}-byte blocks",
                    path.display()
                );
                block_size = unit;
                mem_align = mem_align.min(unit);
            }
        }
        if !block_device {
            // After the io unit had its say: an image of 512-byte units need not be a
            // multiple of a larger detected block.
            size = file_geometry(path, size, block_size)?;
        }
        if direct && !probe_direct(&file, block_size) {
            log::warn!(
                "{}: O_DIRECT refused at {block_size}-byte alignment; using buffered I/O + fdatasync",
                path.display()
            );
            // Drop the direct descriptor (and its lock) before taking the buffered one.
            drop(file);
            (file, direct) = open_fd(path, false, opts.read_only)?;
            if opts.lock {
                lock_file(&file, path, opts.read_only, opts.lock_wait)?;
            }
        }
        let io_path = if uring_wanted(opts) && ring_available() {
            IoPath::IoUring
        } else {
            IoPath::Pread
        };
        log::info!(
            "device {}: {} bytes, {}-byte blocks, {}, {}{}",
            path.display(),
            size,
            block_size,
            if block_device {
                "block device"
            } else {
                "image file"
            },
            io_path,
            if direct { ", O_DIRECT" } else { ", buffered" },
        );
        Ok(FileDevice {
            file,
            path: path.to_path_buf(),
            size,
            block_size,
            mem_align: mem_align.max(block_size) as usize,
            block_device,
            direct,
            discard: opts.discard,
            read_only: opts.read_only,
            io_path,
            reactor: std::sync::OnceLock::new(),
            claimed: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// The reactor of async reads, started on first use (on the io_uring path only).
    fn reactor(&self) -> Option<&super::reactor::Reactor> {
        self.reactor
            .get_or_init(|| {
                if self.io_path != IoPath::IoUring {
                    return None;
                }
                let started = self
                    .file
                    .try_clone()
                    .and_then(super::reactor::Reactor::start);
                match started {
                    Ok(r) => Some(r),
                    Err(e) => {
                        log::warn!("blobcask: no async reactor ({e}); async reads run in place");
                        None
                    }
                }
            })
            .as_ref()
    }

    fn check_writable(&self) -> Result<()> {
        if self.read_only {
            return Err(Error::ReadOnly(format!(
                "{} is open read-only",
                self.path.display()
            )));
        }
        Ok(())
    }

    /// Path the device was opened at.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether the target is a block device (rather than an image file).
    pub fn is_block_device(&self) -> bool {
        self.block_device
    }

    /// Whether `O_DIRECT` is in effect (false: buffered I/O, see the module docs).
    pub fn is_direct(&self) -> bool {
        self.direct
    }

    fn fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }

    /// Run `reqs` to completion on this thread's ring or with pread/pwrite.
    fn submit_sync(&self, reqs: &mut [IoRequest<'_>]) -> Result<()> {
        for r in reqs.iter() {
            let (offset, len) = match r {
                IoRequest::Read { offset, buf } => (*offset, buf.len()),
                IoRequest::Write { offset, buf } => (*offset, buf.len()),
            };
            check_range(self.block_size, self.size, offset, len as u64)?;
        }
        let align = self.mem_align;
        let mut bounces: Vec<Option<AlignedBuf>> = Vec::with_capacity(reqs.len());
        let mut ops: Vec<Op> = Vec::with_capacity(reqs.len());
        for r in reqs.iter_mut() {
            let (kind, offset, ptr, len) = match r {
                IoRequest::Read { offset, buf } => {
                    (OpKind::Read, *offset, buf.as_mut_ptr(), buf.len())
                }
                IoRequest::Write { offset, buf } => {
                    // The kernel only reads through a write's pointer.
                    (OpKind::Write, *offset, buf.as_ptr().cast_mut(), buf.len())
                }
            };
            if len == 0 {
                bounces.push(None);
                continue;
            }
            let mut bounce = None;
            let mut ptr = ptr;
            if self.direct && !(ptr as usize).is_multiple_of(align) {
                let mut b = AlignedBuf::zeroed(len);
                if let IoRequest::Write { buf, .. } = r {
                    b.copy_from_slice(buf);
                }
                ptr = b.as_mut_ptr();
                bounce = Some(b);
            }
            ops.push(Op::new(kind, offset, ptr, len, bounces.len()));
            bounces.push(bounce);
        }
        let res = self.run(&mut ops);
        // Copy bounced reads back, for the requests that completed.
        for op in &ops {
            if op.kind == OpKind::Read && op.done == op.len {
                if let (Some(b), IoRequest::Read { buf, .. }) =
                    (bounces[op.req].as_ref(), &mut reqs[op.req])
                {
                    buf.copy_from_slice(b);
                }
            }
        }
        res.map_err(|source| self.io_error(reqs, source))
    }

    /// A failed data request (or batch), with the range it covered.
    fn io_error(&self, reqs: &[IoRequest<'_>], source: io::Error) -> Error {
        let ranges = reqs.iter().map(|r| match r {
            IoRequest::Read { offset, buf } => (*offset, *offset + buf.len() as u64),
            IoRequest::Write { offset, buf } => (*offset, *offset + buf.len() as u64),
        });
        let (start, end) = ranges.fold((u64::MAX, 0), |(s, e), (a, b)| (s.min(a), e.max(b)));
        let writes = reqs.iter().any(|r| matches!(r, IoRequest::Write { .. }));
        let reads = reqs.iter().any(|r| matches!(r, IoRequest::Read { .. }));
        Error::Io {
            context: self.path.display().to_string(),
            op: match (reads, writes) {
                (true, true) => "read/write",
                (false, true) => "write",
                _ => "read",
            },
            offset: start.min(end),
            len: end.saturating_sub(start),
            source,
        }
    }

    fn run(&self, ops: &mut [Op]) -> io::Result<()> {
        if self.io_path == IoPath::IoUring {
            if let Some(r) = with_ring(|ring| run_uring(ring, self.fd(), ops)) {
                return r;
            }
        }
        run_blocking(self.fd(), ops)
    }

    fn flush_sync(&self) -> Result<()> {
        // `fdatasync` itself, not through the ring: io_uring hands every fsync to one of its
        // worker threads (a wake-up and a context switch more per flush, on the path of every
        // durable write), and a flush is issued only after the writes it covers completed.
        let mut ops = [Op::new(OpKind::Fsync, 0, std::ptr::null_mut(), 0, 0)];
        run_blocking(self.fd(), &mut ops).map_err(|e| io_ctx(&self.path, "fdatasync", e))
    }

    fn unmap_sync(&self, offset: u64, len: u64) -> Result<()> {
        check_range(self.block_size, self.size, offset, len)?;
        if !self.block_device || !self.discard || len == 0 {
            return Ok(());
        }
        let range: [u64; 2] = [offset, len];
        // SAFETY: BLKDISCARD reads two u64s from the pointer, which points at `range`, alive
        // for the duration of the call; the fd is owned by `self.file`.
        let rc = unsafe { libc::ioctl(self.fd(), BLKDISCARD, range.as_ptr()) };
        if rc == 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            // No discard support: the old bytes stay, which the contract allows.
            Some(libc::EOPNOTSUPP) | Some(libc::ENOTTY) | Some(libc::EINVAL) => {
                log::debug!("{}: discard unsupported ({e})", self.path.display());
                Ok(())
            }
            _ => Err(io_ctx(&self.path, "BLKDISCARD", e)),
        }
    }
}

impl Device for FileDevice {
    fn block_size(&self) -> u32 {
        self.block_size
    }

    fn size(&self) -> u64 {
        self.size
    }

    fn io_path(&self) -> IoPath {
        self.io_path
    }

    async fn read(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        self.submit_sync(&mut [IoRequest::Read { offset, buf }])
    }

    async fn read_owned(&self, offset: u64, buf: AlignedBuf) -> (AlignedBuf, Result<()>) {
        let mut buf = buf;
        if let Err(e) = check_range(self.block_size, self.size, offset, buf.len() as u64) {
            return (buf, Err(e));
        }
        match self.reactor() {
            Some(r) => {
                let (buf, res) = r.read(offset, buf).await;
                let res = res.map_err(|e| io_ctx(&self.path, "async read", e));
                (buf, res)
            }
            None => {
                let r = self.submit_sync(&mut [IoRequest::Read {
                    offset,
                    buf: &mut buf,
                }]);
                (buf, r)
            }
        }
    }

    async fn write(&self, offset: u64, buf: &[u8]) -> Result<()> {
        self.check_writable()?;
        self.submit_sync(&mut [IoRequest::Write { offset, buf }])
    }

    async fn submit(&self, reqs: &mut [IoRequest<'_>]) -> Result<()> {
        if reqs.iter().any(|r| matches!(r, IoRequest::Write { .. })) {
            self.check_writable()?;
        }
        self.submit_sync(reqs)
    }

    async fn flush(&self) -> Result<()> {
        if self.read_only {
            return Ok(());
        }
        self.flush_sync()
    }

    async fn unmap(&self, offset: u64, len: u64) -> Result<()> {
        self.check_writable()?;
        self.unmap_sync(offset, len)
    }
}

// ---------------------------------------------------------------------------------------------
// Opening

fn io_ctx(path: &Path, what: &str, e: io::Error) -> Error {
    Error::Os {
        context: format!("{}: {what}", path.display()),
        source: e,
    }
}

fn check_block_size(bs: u32) -> Result<()> {
    if (512..=4096).contains(&bs) && bs.is_power_of_two() {
        Ok(())
    } else {
        Err(Error::invalid(format!(
            "block size {bs} is not a power of two in 512..=4096"
        )))
    }
}

/// Create `path` (it must not exist), `size` bytes long, sparse or allocated; durable on
/// return.
fn make_image(path: &Path, size: u64, preallocate: bool) -> Result<()> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .custom_flags(libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| io_ctx(path, "create image", e))?;
    let len = libc::off_t::try_from(size)
        .map_err(|_| Error::invalid(format!("image size {size} too large")))?;
    // SAFETY: fallocate only takes integers; the fd is owned by `file`, open for writing.
    let rc = preallocate.then(|| unsafe { libc::fallocate(file.as_raw_fd(), 0, 0, len) });
    match rc {
        Some(0) => {}
        Some(_) => {
            let e = io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EOPNOTSUPP) {
                drop(file);
                let _ = std::fs::remove_file(path);
                return Err(io_ctx(path, "fallocate", e));
            }
            log::warn!(
                "{}: fallocate unsupported, image is sparse ({e})",
                path.display()
            );
            file.set_len(size)
                .map_err(|e| io_ctx(path, "set image length", e))?;
        }
        None => file
            .set_len(size)
            .map_err(|e| io_ctx(path, "set image length", e))?,
    }
    file.sync_all().map_err(|e| io_ctx(path, "fsync", e))?;
    // Make the directory entry durable too.
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// Open read-write (or read-only), with `O_DIRECT` if asked and accepted. Returns whether it
/// is direct.
fn open_fd(path: &Path, direct: bool, read_only: bool) -> Result<(File, bool)> {
    let mut o = OpenOptions::new();
    o.read(true).write(!read_only);
    if direct {
        match o
            .clone()
            .custom_flags(libc::O_DIRECT | libc::O_CLOEXEC)
            .open(path)
        {
            Ok(f) => return Ok((f, true)),
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                log::warn!(
                    "{}: O_DIRECT refused by the file system ({e}); using buffered I/O + fdatasync",
                    path.display()
                );
            }
            Err(e) => return Err(io_ctx(path, "open", e)),
        }
    }
    let f = o
        .custom_flags(libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| io_ctx(path, "open", e))?;
    Ok((f, false))
}

/// How long a held lock is retried before `Locked`: a handle closed a moment ago may still be
/// pinned by io_uring's deferred file release, which the kernel finishes within milliseconds.
const LOCK_RETRY: std::time::Duration = std::time::Duration::from_millis(500);

/// Take the exclusive lock, or a shared one when `shared` (several readers at once, no writer
/// while one holds it), retrying for `wait` (default [`LOCK_RETRY`]).
fn lock_file(
    file: &File,
    path: &Path,
    shared: bool,
    wait: Option<std::time::Duration>,
) -> Result<()> {
    let mode = if shared { libc::LOCK_SH } else { libc::LOCK_EX };
    let wait = wait.unwrap_or(LOCK_RETRY).max(LOCK_RETRY);
    let t0 = std::time::Instant::now();
    loop {
        // SAFETY: flock only takes integers; the fd is owned by `file`.
        let rc = unsafe { libc::flock(file.as_raw_fd(), mode | libc::LOCK_NB) };
        if rc == 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EWOULDBLOCK) {
            return Err(io_ctx(path, "flock", e));
        }
        if t0.elapsed() >= wait {
            let held = if shared {
                "a writer holds its exclusive lock"
            } else {
                "another handle holds its lock"
            };
            return Err(Error::Locked(format!(
                "{} is already open elsewhere ({held})",
                path.display()
            )));
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

fn file_geometry(path: &Path, len: u64, bs: u32) -> Result<u64> {
    check_block_size(bs)?;
    if len < u64::from(bs) {
        return Err(Error::invalid(format!(
            "{}: image of {len} bytes is shorter than one {bs}-byte block",
            path.display()
        )));
    }
    if !len.is_multiple_of(u64::from(bs)) {
        return Err(Error::invalid(format!(
            "{}: image size {len} is not a multiple of the {bs}-byte block size",
            path.display()
        )));
    }
    Ok(len)
}

/// The block size and buffer alignment of a regular file: the direct-I/O alignment `statx`
/// reports, else 512 if a 512-byte direct read works, else 4096.
fn file_block_size(file: &File, path: &Path) -> (u32, u32) {
    let clamp = |a: u32| {
        a.next_power_of_two()
            .clamp(MIN_BLOCK_SIZE, DEFAULT_FILE_BLOCK_SIZE)
    };
    if let Some((offset_align, mem_align)) = statx_dio_align(file) {
        return (clamp(offset_align), clamp(mem_align));
    }
    let direct = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECT | libc::O_CLOEXEC)
        .open(path);
    match direct {
        Ok(f) if probe_direct(&f, MIN_BLOCK_SIZE) => (MIN_BLOCK_SIZE, MIN_BLOCK_SIZE),
        _ => (DEFAULT_FILE_BLOCK_SIZE, DEFAULT_FILE_BLOCK_SIZE),
    }
}

/// `statx` `STATX_DIOALIGN`: (offset alignment, memory alignment) of direct I/O, when the
/// kernel and file system report them (Linux 6.1+). `None` when not reported, or when the file
/// supports no direct I/O at all (alignments of 0).
fn statx_dio_align(file: &File) -> Option<(u32, u32)> {
    // SAFETY: statx is plain data; all zero is a valid value.
    let mut stx: libc::statx = unsafe { std::mem::zeroed() };
    // SAFETY: the path is an empty C string and AT_EMPTY_PATH makes statx describe the fd,
    // owned by `file`; `stx` is a valid, writable statx for the duration of the call.
    let rc = unsafe {
        libc::statx(
            file.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH,
            libc::STATX_DIOALIGN,
            &mut stx,
        )
    };
    if rc != 0 || stx.stx_mask & libc::STATX_DIOALIGN == 0 || stx.stx_dio_offset_align == 0 {
        return None;
    }
    Some((stx.stx_dio_offset_align, stx.stx_dio_mem_align.max(1)))
}

/// The io unit of a blobstore super block at the start of the device, when it is smaller
/// than `block_size` (and a valid block size itself). Only the signature and the
/// `io_unit_size` field (bytes 88..92) are read: the device layer knows nothing else of the
/// format, and a wrong value can only pick a smaller block size, which works on any device.
fn smaller_io_unit(file: &File, size: u64, block_size: u32) -> Option<u32> {
    const SB: usize = 4096;
    const SIGNATURE: &[u8; 8] = b"SPDKBLOB";
    if size < SB as u64 {
        return None;
    }
    let mut buf = AlignedBuf::zeroed(SB);
    // SAFETY: `buf` is valid for `SB` writable bytes for the whole call; the fd is owned by
    // `file`. The read is 4 KiB-aligned in offset, length and address, which direct I/O with
    // any block size up to 4096 accepts.
    let n = unsafe { libc::pread(file.as_raw_fd(), buf.as_mut_ptr().cast(), SB, 0) };
    if n != SB as isize || &buf[..8] != SIGNATURE {
        return None;
    }
    let unit = u32::from_le_bytes([buf[88], buf[89], buf[90], buf[91]]);
    (unit != 0 && unit < block_size && check_block_size(unit).is_ok()).then_some(unit)
}

fn block_device_geometry(file: &File, path: &Path, bs: Option<u32>) -> Result<(u64, u32)> {
    let fd = file.as_raw_fd();
    let mut size: u64 = 0;
    // SAFETY: BLKGETSIZE64 writes one u64 through the pointer, which points at `size`; the
    // fd is owned by `file` and refers to a block device.
    if unsafe { libc::ioctl(fd, BLKGETSIZE64, &mut size as *mut u64) } != 0 {
        return Err(io_ctx(path, "BLKGETSIZE64", io::Error::last_os_error()));
    }
    let mut lbs: libc::c_int = 0;
    // SAFETY: BLKSSZGET writes one int through the pointer, which points at `lbs`.
    if unsafe { libc::ioctl(fd, libc::BLKSSZGET, &mut lbs as *mut libc::c_int) } != 0 {
        return Err(io_ctx(path, "BLKSSZGET", io::Error::last_os_error()));
    }
    let lbs = u32::try_from(lbs).unwrap_or(0);
    check_block_size(lbs).map_err(|_| {
        Error::Unsupported(format!(
            "{}: logical block size {lbs} outside 512..=4096",
            path.display()
        ))
    })?;
    let bs = match bs {
        None => lbs,
        Some(b) => {
            check_block_size(b)?;
            if b % lbs != 0 {
                return Err(Error::invalid(format!(
                    "{}: block size {b} is not a multiple of the device's logical block size {lbs}",
                    path.display()
                )));
            }
            b
        }
    };
    let size = size - size % u64::from(bs);
    if size == 0 {
        return Err(Error::invalid(format!(
            "{}: block device is smaller than one block",
            path.display()
        )));
    }
    Ok((size, bs))
}

/// Whether an aligned direct read of one block works on this file.
fn probe_direct(file: &File, block_size: u32) -> bool {
    let mut buf = AlignedBuf::zeroed(block_size as usize);
    loop {
        // SAFETY: `buf` is valid for `block_size` writable bytes for the whole call; the fd is
        // owned by `file`.
        let n = unsafe { libc::pread(file.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n >= 0 {
            return true;
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EINTR) | Some(libc::EAGAIN) => continue,
            Some(libc::EINVAL) => return false,
            // Any other error is a real device problem; let the first real I/O report it.
            _ => return true,
        }
    }
}

fn uring_wanted(opts: &FileOptions) -> bool {
    if opts.force_pread {
        return false;
    }
    match std::env::var(NO_URING_ENV) {
        Ok(v) => !(v == "1" || v.eq_ignore_ascii_case("true") || v.eq_ignore_ascii_case("yes")),
        Err(_) => true,
    }
}

// ---------------------------------------------------------------------------------------------
// Per-thread rings

enum RingSlot {
    Untried,
    Ready(Box<IoUring>),
    Unavailable,
}

thread_local! {
    static RING: RefCell<RingSlot> = const { RefCell::new(RingSlot::Untried) };
}

/// Run `f` on this thread's ring, creating it on first use. `None` when this thread has no
/// ring (setup failed, or the thread is being torn down): the caller falls back to pread.
fn with_ring<R>(f: impl FnOnce(&mut IoUring) -> R) -> Option<R> {
    RING.try_with(|slot| {
        let mut slot = slot.try_borrow_mut().ok()?;
        if let RingSlot::Untried = *slot {
            *slot = match IoUring::new(RING_ENTRIES) {
                Ok(r) => RingSlot::Ready(Box::new(r)),
                Err(e) => {
                    log::warn!("io_uring setup failed on this thread ({e}); using pread/pwrite");
                    RingSlot::Unavailable
                }
            };
        }
        match &mut *slot {
            RingSlot::Ready(ring) => Some(f(ring)),
            _ => None,
        }
    })
    .ok()
    .flatten()
}

fn ring_available() -> bool {
    with_ring(|_| ()).is_some()
}

// ---------------------------------------------------------------------------------------------
// Running operations

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OpKind {
    Read,
    Write,
    Fsync,
}

/// One kernel operation: `len` bytes at `ptr` ↔ device `offset`; `done` bytes finished.
struct Op {
    kind: OpKind,
    offset: u64,
    ptr: *mut u8,
    len: usize,
    done: usize,
    /// Index of the request this op serves.
    req: usize,
}

impl Op {
    fn new(kind: OpKind, offset: u64, ptr: *mut u8, len: usize, req: usize) -> Self {
        Op {
            kind,
            offset,
            ptr,
            len,
            done: 0,
            req,
        }
    }

    /// Length of the next transfer of this op.
    fn chunk(&self) -> usize {
        (self.len - self.done).min(MAX_TRANSFER)
    }

    fn finished(&self) -> bool {
        match self.kind {
            OpKind::Fsync => self.done == 1,
            _ => self.done == self.len,
        }
    }

    /// Account a transfer of `n` bytes (or a successful fsync). `Err` on an unexpected EOF.
    fn advance(&mut self, n: usize) -> io::Result<()> {
        if self.kind == OpKind::Fsync {
            self.done = 1;
            return Ok(());
        }
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "{} at byte {} returned 0 (file shorter than the device?)",
                    if self.kind == OpKind::Read {
                        "read"
                    } else {
                        "write"
                    },
                    self.offset + self.done as u64
                ),
            ));
        }
        self.done += n.min(self.len - self.done);
        Ok(())
    }

    fn sqe(&self, fd: RawFd, user_data: u64) -> io_uring::squeue::Entry {
        let fd = types::Fd(fd);
        let off = self.offset + self.done as u64;
        // `ptr.wrapping_add` keeps this safe to compute; the kernel dereferences it only
        // within `[ptr, ptr + len)`, which the caller guarantees is valid (see `run_uring`).
        let p = self.ptr.wrapping_add(self.done);
        let n = self.chunk() as u32;
        match self.kind {
            OpKind::Read => opcode::Read::new(fd, p, n).offset(off).build(),
            OpKind::Write => opcode::Write::new(fd, p.cast_const(), n)
                .offset(off)
                .build(),
            OpKind::Fsync => opcode::Fsync::new(fd)
                .flags(types::FsyncFlags::DATASYNC)
                .build(),
        }
        .user_data(user_data)
    }
}

fn retryable(errno: i32) -> bool {
    errno == libc::EINTR || errno == libc::EAGAIN
}

/// Drives `ops` to completion on `ring`, keeping as many in flight as the ring holds.
///
/// Invariant that makes the `unsafe` pushes sound: this function never returns (and never
/// unwinds — see [`InFlight`]) while the kernel still holds an SQE of ours, so every buffer
/// pointer given to the kernel stays valid (the caller's borrow or our bounce buffer outlives
/// this call) and the fd (borrowed from the device) stays open until the last completion.
fn run_uring(ring: &mut IoUring, fd: RawFd, ops: &mut [Op]) -> io::Result<()> {
    // A ring is used by one call at a time on its thread and always drained, so no stale
    // completions can be waiting; drain defensively anyway.
    ring.completion().for_each(drop);
    let cap = ring.params().sq_entries() as usize;
    let mut guard = InFlight { ring, count: 0 };
    let mut next = 0usize;
    let mut again: Vec<usize> = Vec::new();
    let mut first_err: Option<io::Error> = None;
    loop {
        // Fill the submission queue.
        {
            let mut sq = guard.ring.submission();
            while guard.count < cap {
                let idx = if let Some(i) = again.pop() {
                    i
                } else if first_err.is_none() && next < ops.len() {
                    next += 1;
                    next - 1
                } else {
                    break;
                };
                let sqe = ops[idx].sqe(fd, idx as u64);
                // SAFETY: the SQE points into `ops[idx]`'s buffer, valid for `len` bytes
                // (a live caller borrow or a bounce buffer owned by our caller) until this
                // function returns, and this function waits for the completion of every
                // pushed SQE before returning (the `InFlight` guard also waits on unwind).
                // The fd is borrowed from the device, which outlives this call.
                if unsafe { sq.push(&sqe) }.is_err() {
                    again.push(idx);
                    break;
                }
                guard.count += 1;
            }
        }
        if guard.count == 0 {
            break;
        }
        guard.submit_and_wait_one();
        for cqe in guard.ring.completion() {
            guard.count -= 1;
            let idx = cqe.user_data() as usize;
            let Some(op) = ops.get_mut(idx) else {
                continue;
            };
            let res = cqe.result();
            if res < 0 {
                if retryable(-res) {
                    again.push(idx);
                } else if first_err.is_none() {
                    first_err = Some(io::Error::from_raw_os_error(-res));
                }
                continue;
            }
            match op.advance(res as usize) {
                Ok(()) if !op.finished() => again.push(idx),
                Ok(()) => {}
                Err(e) => {
                    first_err.get_or_insert(e);
                }
            }
        }
        if first_err.is_some() {
            // Do not resubmit remainders after an error; drain what is in flight.
            again.clear();
        }
    }
    match first_err {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// Counts SQEs the kernel holds; waits for all of them on drop so that an unwind can never
/// release a buffer the kernel still writes into.
struct InFlight<'r> {
    ring: &'r mut IoUring,
    count: usize,
}

impl InFlight<'_> {
    /// Submit pending SQEs and wait for at least one completion. Transient failures are
    /// retried; if the ring keeps failing while the kernel holds our buffers there is no
    /// sound way to return, so the process aborts.
    fn submit_and_wait_one(&mut self) {
        let mut failures = 0u32;
        loop {
            match self.ring.submit_and_wait(1) {
                Ok(_) => return,
                Err(e) => {
                    let errno = e.raw_os_error().unwrap_or(0);
                    if retryable(errno) || errno == libc::EBUSY {
                        // EBUSY: completions must be reaped first; the caller does next.
                        if errno == libc::EBUSY {
                            return;
                        }
                        continue;
                    }
                    failures += 1;
                    if failures > 1000 {
                        log::error!(
                            "io_uring_enter keeps failing ({e}) with {} requests in flight; \
                             aborting rather than releasing buffers the kernel may still use",
                            self.count
                        );
                        std::process::abort();
                    }
                    std::thread::sleep(std::time::Duration::from_millis(1));
                }
            }
        }
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        while self.count > 0 {
            self.submit_and_wait_one();
            let n = self.ring.completion().count();
            self.count = self.count.saturating_sub(n);
        }
    }
}

/// Blocking fallback: `pread`/`pwrite`/`fdatasync`, one op after another.
fn run_blocking(fd: RawFd, ops: &mut [Op]) -> io::Result<()> {
    for op in ops.iter_mut() {
        while !op.finished() {
            let off = libc::off_t::try_from(op.offset + op.done as u64)
                .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
            let p = op.ptr.wrapping_add(op.done);
            let n = op.chunk();
            // SAFETY: `p..p+n` lies inside the op's buffer (a live caller borrow or a bounce
            // buffer owned by our caller for the duration of this call); for reads it is
            // writable (it came from `&mut [u8]` or an owned AlignedBuf). The fd is borrowed
            // from the device and open.
            let rc = unsafe {
                match op.kind {
                    OpKind::Read => libc::pread(fd, p.cast(), n, off),
                    OpKind::Write => libc::pwrite(fd, p.cast_const().cast(), n, off),
                    OpKind::Fsync => libc::fdatasync(fd) as isize,
                }
            };
            if rc < 0 {
                let e = io::Error::last_os_error();
                if retryable(e.raw_os_error().unwrap_or(0)) {
                    continue;
                }
                return Err(e);
            }
            op.advance(rc as usize)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::process::Command;

    use super::*;

    const MIB: u64 = 1 << 20;

    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        pollster::block_on(f)
    }

    fn pattern(len: usize, seed: u8) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect()
    }

    fn pread_opts() -> FileOptions {
        FileOptions {
            force_pread: true,
            ..FileOptions::default()
        }
    }

    /// Expected path for a device opened without `force_pread`.
    fn expect_uring(dev: &FileDevice) {
        if uring_wanted(&FileOptions::default()) && ring_available() {
            assert_eq!(dev.io_path(), IoPath::IoUring);
        } else {
            println!("io_uring unavailable here; device runs {}", dev.io_path());
        }
    }

    fn round_trip(dev: &FileDevice) {
        let bs = dev.block_size() as usize;
        let a = AlignedBuf::from_slice(&pattern(4 * bs, 1));
        block_on(dev.write(0, &a)).unwrap();
        block_on(dev.write(dev.size() - bs as u64, &pattern(bs, 2))).unwrap();
        block_on(dev.flush()).unwrap();
        let mut r = AlignedBuf::zeroed(4 * bs);
        block_on(dev.read(0, &mut r)).unwrap();
        assert_eq!(&r[..], &a[..]);
        let mut tail = vec![0u8; bs];
        block_on(dev.read(dev.size() - bs as u64, &mut tail)).unwrap();
        assert_eq!(tail, pattern(bs, 2));
    }

    #[test]
    fn round_trip_io_uring() {
        let dir = tempfile::tempdir().unwrap();
        let dev = FileDevice::create(dir.path().join("img"), 4 * MIB, 4096).unwrap();
        expect_uring(&dev);
        assert_eq!(dev.size(), 4 * MIB);
        assert_eq!(dev.block_size(), 4096);
        assert!(!dev.is_block_device());
        round_trip(&dev);
    }

    #[test]
    fn round_trip_pread_fallback() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("img");
        let opts = FileOptions {
            block_size: Some(512),
            ..pread_opts()
        };
        let dev = FileDevice::create_with(&p, MIB, &opts).unwrap();
        assert_eq!(dev.io_path(), IoPath::Pread);
        assert_eq!(dev.block_size(), 512);
        round_trip(&dev);
        drop(dev);
        // The same bytes through the io_uring path.
        let dev = FileDevice::open_with(
            &p,
            &FileOptions {
                block_size: Some(512),
                ..FileOptions::default()
            },
        )
        .unwrap();
        let mut tail = vec![0u8; 512];
        block_on(dev.read(MIB - 512, &mut tail)).unwrap();
        assert_eq!(tail, pattern(512, 2));
    }

    /// Runs in a child process (see `env_var_forces_pread`); a no-op otherwise.
    #[test]
    fn no_uring_env_child() {
        if std::env::var(NO_URING_ENV).as_deref() != Ok("1") {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let dev = FileDevice::create(dir.path().join("img"), MIB, 4096).unwrap();
        assert_eq!(dev.io_path(), IoPath::Pread);
        round_trip(&dev);
        println!("child-io-path={}", dev.io_path());
    }

    #[test]
    fn env_var_forces_pread() {
        // The environment is process-wide and tests run in parallel threads, so the variable
        // is set only in a child process running one test.
        let exe = std::env::current_exe().unwrap();
        let out = Command::new(exe)
            .args([
                "--exact",
                "device::file::tests::no_uring_env_child",
                "--nocapture",
            ])
            .env(NO_URING_ENV, "1")
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{stdout}");
        assert!(stdout.contains("child-io-path=pread/pwrite"), "{stdout}");
    }

    #[test]
    fn create_preallocates() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("img");
        let _dev = FileDevice::create(&p, 8 * MIB, 4096).unwrap();
        let meta = std::fs::metadata(&p).unwrap();
        assert_eq!(meta.len(), 8 * MIB);
        use std::os::unix::fs::MetadataExt;
        // fallocate reserved the blocks (st_blocks counts 512-byte units).
        assert!(meta.blocks() * 512 >= 8 * MIB, "blocks {}", meta.blocks());
    }

    #[test]
    fn create_with_defaults_is_sparse() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("img");
        let dev = FileDevice::create_with(&p, 64 * MIB, &FileOptions::default()).unwrap();
        let meta = std::fs::metadata(&p).unwrap();
        assert_eq!(meta.len(), 64 * MIB);
        assert!(meta.blocks() * 512 < MIB, "blocks {}", meta.blocks());
        // Written blocks take space; the rest reads as zeroes.
        let data = vec![0xabu8; 4096];
        pollster::block_on(dev.write(32 * MIB, &data)).unwrap();
        let mut back = vec![1u8; 8192];
        pollster::block_on(dev.read(32 * MIB, &mut back)).unwrap();
        assert_eq!(&back[..4096], &data[..]);
        assert!(back[4096..].iter().all(|&b| b == 0));
    }

    fn batch_at_qd(opts: &FileOptions, n: usize) {
        let dir = tempfile::tempdir().unwrap();
        let dev = FileDevice::create_with(dir.path().join("img"), 8 * MIB, opts).unwrap();
        let slots = (8 * MIB / 4096) as usize;
        // Distinct pseudo-random slots.
        let offs: Vec<u64> = (0..n).map(|i| ((i * 7919) % slots) as u64 * 4096).collect();
        let bufs: Vec<AlignedBuf> = (0..n)
            .map(|i| AlignedBuf::from_slice(&pattern(4096, i as u8)))
            .collect();
        let mut reqs: Vec<IoRequest<'_>> = offs
            .iter()
            .zip(&bufs)
            .map(|(&offset, b)| IoRequest::Write { offset, buf: b })
            .collect();
        block_on(dev.submit(&mut reqs)).unwrap();
        let mut outs: Vec<AlignedBuf> = (0..n).map(|_| AlignedBuf::zeroed(4096)).collect();
        let mut reqs: Vec<IoRequest<'_>> = offs
            .iter()
            .zip(outs.iter_mut())
            .map(|(&offset, b)| IoRequest::Read { offset, buf: b })
            .collect();
        block_on(dev.submit(&mut reqs)).unwrap();
        for (i, b) in outs.iter().enumerate() {
            assert_eq!(&b[..], &pattern(4096, i as u8)[..], "request {i}");
        }
    }

    #[test]
    fn batch_submit_qd32() {
        batch_at_qd(&FileOptions::default(), 32);
        batch_at_qd(&pread_opts(), 32);
    }

    #[test]
    fn batch_larger_than_the_ring_is_chunked() {
        batch_at_qd(&FileOptions::default(), RING_ENTRIES as usize * 2 + 17);
    }

    fn unaligned(opts: &FileOptions) {
        let dir = tempfile::tempdir().unwrap();
        let dev = FileDevice::create_with(dir.path().join("img"), MIB, opts).unwrap();
        let data = pattern(3 * 4096 + 1, 9);
        let src = &data[1..]; // odd address
        assert_ne!(src.as_ptr() as usize % 4096, 0);
        block_on(dev.write(8192, src)).unwrap();
        let mut back = vec![0u8; 3 * 4096 + 3];
        let dst = &mut back[3..];
        block_on(dev.read(8192, dst)).unwrap();
        assert_eq!(&back[3..], src);
        // Mixed batch: aligned and unaligned buffers together.
        let mut a = AlignedBuf::zeroed(4096);
        let mut u = vec![0u8; 4097];
        let mut reqs = [
            IoRequest::Read {
                offset: 8192,
                buf: &mut a,
            },
            IoRequest::Read {
                offset: 12288,
                buf: &mut u[1..],
            },
        ];
        block_on(dev.submit(&mut reqs)).unwrap();
        assert_eq!(&a[..], &src[..4096]);
        assert_eq!(&u[1..], &src[4096..8192]);
    }

    #[test]
    fn unaligned_buffers_are_bounced() {
        unaligned(&FileOptions::default());
        unaligned(&pread_opts());
    }

    #[test]
    fn large_request_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let dev = FileDevice::create(dir.path().join("img"), 16 * MIB, 4096).unwrap();
        let data = AlignedBuf::from_slice(&pattern(8 * MIB as usize, 5));
        block_on(dev.write(4096, &data)).unwrap();
        let mut back = AlignedBuf::zeroed(data.len());
        block_on(dev.read(4096, &mut back)).unwrap();
        assert!(back[..] == data[..]);
    }

    #[test]
    fn second_open_is_locked() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("img");
        let dev = FileDevice::create(&p, MIB, 4096).unwrap();
        match FileDevice::open(&p) {
            Err(Error::Locked(msg)) => assert!(msg.contains("img"), "{msg}"),
            other => panic!("expected Locked, got {other:?}"),
        }
        drop(dev);
        FileDevice::open(&p).unwrap();
    }

    #[test]
    fn bad_sizes_are_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("short");
        std::fs::write(&p, vec![0u8; 100]).unwrap();
        assert!(matches!(
            FileDevice::open(&p),
            Err(Error::InvalidArgument(_))
        ));
        let p = dir.path().join("ragged");
        std::fs::write(&p, vec![0u8; 4096 + 512]).unwrap();
        let with = |bs| FileOptions {
            block_size: Some(bs),
            ..FileOptions::default()
        };
        assert!(matches!(
            FileDevice::open_with(&p, &with(4096)),
            Err(Error::InvalidArgument(_))
        ));
        assert_eq!(
            FileDevice::open_with(&p, &with(512)).unwrap().size(),
            4096 + 512
        );
        // With the block size detected: fine on 512-byte alignment, refused on 4 KiB.
        match FileDevice::open(&p) {
            Ok(d) => assert_eq!(d.block_size(), 512),
            Err(e) => assert!(matches!(e, Error::InvalidArgument(_)), "{e}"),
        }
        let p = dir.path().join("empty");
        std::fs::write(&p, b"").unwrap();
        assert!(matches!(
            FileDevice::open(&p),
            Err(Error::InvalidArgument(_))
        ));
        for (size, bs) in [(0, 4096), (5000, 4096), (MIB, 1000), (MIB, 8192)] {
            let r = FileDevice::create(dir.path().join(format!("c{size}-{bs}")), size, bs);
            assert!(matches!(r, Err(Error::InvalidArgument(_))), "{size} {bs}");
        }
        // create never clobbers an existing file.
        assert!(matches!(
            FileDevice::create(dir.path().join("ragged"), MIB, 4096),
            Err(Error::Os { .. })
        ));
        assert!(FileDevice::open(dir.path().join("missing")).is_err());
        assert!(matches!(
            FileDevice::open(dir.path()),
            Err(Error::InvalidArgument(_))
        ));
    }

    #[test]
    fn file_block_size_is_the_direct_io_alignment() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("img");
        let dev = FileDevice::create_with(&p, MIB, &FileOptions::default()).unwrap();
        let (bs, mem) = file_block_size(&dev.file, &p);
        assert_eq!(dev.block_size(), bs);
        assert!(bs.is_power_of_two() && (512..=4096).contains(&bs), "{bs}");
        assert!(mem.is_power_of_two() && mem <= 4096, "{mem}");
        match statx_dio_align(&dev.file) {
            Some((off, _)) => {
                println!("statx: direct-I/O offset alignment {off}");
                assert_eq!(bs, off.clamp(512, 4096));
            }
            None => println!("statx reports no direct-I/O alignment; probed {bs}"),
        }
        if dev.is_direct() {
            // Direct I/O works at the detected granularity, from an unaligned buffer too.
            let data = pattern(bs as usize * 3, 4);
            block_on(dev.write(u64::from(bs), &data[..])).unwrap();
            let mut back = vec![0u8; bs as usize * 3 + 1];
            block_on(dev.read(u64::from(bs), &mut back[1..])).unwrap();
            assert_eq!(&back[1..], &data[..]);
        }
    }

    /// A 4096-byte super block (valid CRC) with `io_unit_size` = `unit`.
    fn super_block_with_io_unit(unit: u32) -> Vec<u8> {
        use crate::blobstore::native::layout::Layout;
        use crate::blobstore::InitOpts;
        let l = Layout::for_init(
            8 * MIB,
            unit,
            &InitOpts {
                cluster_size: 64 << 10,
                ..InitOpts::default()
            },
        )
        .unwrap();
        l.init_super(Default::default()).encode().to_vec()
    }

    #[test]
    fn a_smaller_io_unit_lowers_the_block_size() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("img");
        let mut img = vec![0u8; 8 * MIB as usize];
        img[..4096].copy_from_slice(&super_block_with_io_unit(512));
        std::fs::write(&p, &img).unwrap();
        let f = File::open(&p).unwrap();
        assert_eq!(smaller_io_unit(&f, 8 * MIB, 4096), Some(512));
        assert_eq!(smaller_io_unit(&f, 8 * MIB, 512), None);
        assert_eq!(smaller_io_unit(&f, 2048, 4096), None);
        // An explicit block size is kept; a detected one drops to the io unit.
        let opts = FileOptions {
            block_size: Some(4096),
            ..FileOptions::default()
        };
        assert_eq!(FileDevice::open_with(&p, &opts).unwrap().block_size(), 4096);
        let dev = FileDevice::open(&p).unwrap();
        assert_eq!(dev.block_size(), 512);
        round_trip(&dev);
        // Not a blobstore, or a nonsense io unit: nothing changes.
        img[0] ^= 1;
        std::fs::write(&p, &img).unwrap();
        let f = File::open(&p).unwrap();
        assert_eq!(smaller_io_unit(&f, 8 * MIB, 4096), None);
        img[0] ^= 1;
        img[88..92].copy_from_slice(&300u32.to_le_bytes());
        std::fs::write(&p, &img).unwrap();
        let f = File::open(&p).unwrap();
        assert_eq!(smaller_io_unit(&f, 8 * MIB, 4096), None);
    }

    #[test]
    fn out_of_range_and_misaligned_io_fail() {
        let dir = tempfile::tempdir().unwrap();
        let dev = FileDevice::create(dir.path().join("img"), MIB, 4096).unwrap();
        let mut b = AlignedBuf::zeroed(4096);
        assert!(block_on(dev.read(MIB, &mut b)).is_err());
        assert!(block_on(dev.read(512, &mut b)).is_err());
        assert!(block_on(dev.write(0, &b[..512])).is_err());
        assert!(block_on(dev.unmap(0, 100)).is_err());
        block_on(dev.unmap(0, 4096)).unwrap();
    }

    #[test]
    fn unmap_on_a_file_keeps_the_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let dev = FileDevice::create(dir.path().join("img"), MIB, 4096).unwrap();
        block_on(dev.write(0, &pattern(8192, 3))).unwrap();
        block_on(dev.unmap(0, 8192)).unwrap();
        let mut b = vec![0u8; 8192];
        block_on(dev.read(0, &mut b)).unwrap();
        assert_eq!(b, pattern(8192, 3));
    }

    #[test]
    fn file_shrunk_behind_our_back_is_an_error_not_a_hang() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("img");
        for opts in [FileOptions::default(), pread_opts()] {
            let _ = std::fs::remove_file(&p);
            let dev = FileDevice::create_with(&p, MIB, &opts).unwrap();
            OpenOptions::new()
                .write(true)
                .open(&p)
                .unwrap()
                .set_len(MIB / 2)
                .unwrap();
            let mut b = AlignedBuf::zeroed(8192);
            let e = block_on(dev.read(MIB / 2, &mut b)).unwrap_err();
            assert!(e.to_string().contains("returned 0"), "{e}");
        }
    }

    #[test]
    fn concurrent_threads_use_their_own_rings() {
        let dir = tempfile::tempdir().unwrap();
        let dev = FileDevice::create(dir.path().join("img"), 8 * MIB, 4096).unwrap();
        std::thread::scope(|s| {
            for t in 0..4u64 {
                let dev = &dev;
                s.spawn(move || {
                    for i in 0..64u64 {
                        let off = (t * 64 + i) * 4096;
                        let data = pattern(4096, (t * 64 + i) as u8);
                        block_on(dev.write(off, &data)).unwrap();
                        let mut back = AlignedBuf::zeroed(4096);
                        block_on(dev.read(off, &mut back)).unwrap();
                        assert_eq!(&back[..], &data[..]);
                    }
                    block_on(dev.flush()).unwrap();
                });
            }
        });
    }

    #[test]
    fn buffered_mode_works() {
        let dir = tempfile::tempdir().unwrap();
        let opts = FileOptions {
            direct: false,
            ..FileOptions::default()
        };
        let dev = FileDevice::create_with(dir.path().join("img"), MIB, &opts).unwrap();
        assert!(!dev.is_direct());
        unaligned(&opts);
        round_trip(&dev);
    }

    #[test]
    fn tmpfs_image_opens() {
        let shm = Path::new("/dev/shm");
        if !shm.is_dir() {
            println!("skipped: no /dev/shm");
            return;
        }
        let dir = tempfile::tempdir_in(shm).unwrap();
        let dev = FileDevice::create(dir.path().join("img"), MIB, 4096).unwrap();
        println!("tmpfs image: direct = {}", dev.is_direct());
        round_trip(&dev);
    }

    /// Attach `img` to a free loop device; `None` (with the reason printed) if we cannot.
    fn losetup(img: &Path, sector: u32) -> Option<PathBuf> {
        let out = Command::new("losetup")
            .args(["-f", "--show", "-b", &sector.to_string()])
            .arg(img)
            .output();
        match out {
            Ok(o) if o.status.success() => {
                let dev = String::from_utf8_lossy(&o.stdout).trim().to_string();
                Some(PathBuf::from(dev))
            }
            Ok(o) => {
                println!(
                    "skipped: losetup failed: {}",
                    String::from_utf8_lossy(&o.stderr).trim()
                );
                None
            }
            Err(e) => {
                println!("skipped: cannot run losetup: {e}");
                None
            }
        }
    }

    struct LoopGuard(PathBuf);
    impl Drop for LoopGuard {
        fn drop(&mut self) {
            let _ = Command::new("losetup").arg("-d").arg(&self.0).status();
        }
    }

    #[test]
    fn loop_block_device() {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("backing");
        std::fs::write(&img, vec![0u8; 8 * MIB as usize]).unwrap();
        for sector in [512u32, 4096] {
            let Some(loopdev) = losetup(&img, sector) else {
                return;
            };
            let _guard = LoopGuard(loopdev.clone());
            let dev = FileDevice::open(&loopdev).unwrap();
            assert!(dev.is_block_device());
            assert_eq!(dev.size(), 8 * MIB);
            assert_eq!(dev.block_size(), sector);
            expect_uring(&dev);
            round_trip(&dev);
            batch_at_qd_on(&dev, 32);
            block_on(dev.unmap(0, u64::from(sector) * 8)).unwrap();
            assert!(matches!(FileDevice::open(&loopdev), Err(Error::Locked(_))));
            // AnyDevice::create_path on a block device opens it.
            drop(dev);
            let any = super::super::AnyDevice::create_path(&loopdev, MIB).unwrap();
            assert_eq!(any.size(), 8 * MIB);
        }
    }

    /// A device with 4 KiB sectors holding a store with 512-byte io units (made on a 512-byte
    /// device, then copied): it opens with 512-byte blocks, buffered, and works at that
    /// granularity.
    #[test]
    fn loop_device_of_4k_sectors_serves_512_byte_io_units() {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("backing");
        let mut bytes = vec![0u8; 8 * MIB as usize];
        bytes[..4096].copy_from_slice(&super_block_with_io_unit(512));
        std::fs::write(&img, &bytes).unwrap();
        let Some(loopdev) = losetup(&img, 4096) else {
            return;
        };
        let _guard = LoopGuard(loopdev.clone());
        let dev = FileDevice::open(&loopdev).unwrap();
        assert!(dev.is_block_device());
        assert_eq!(dev.block_size(), 512);
        assert!(!dev.is_direct(), "512-byte direct I/O on 4 KiB sectors");
        let data = pattern(512, 9);
        block_on(dev.write(8192 + 512, &data)).unwrap();
        block_on(dev.flush()).unwrap();
        let mut back = vec![0u8; 1536];
        block_on(dev.read(8192, &mut back)).unwrap();
        assert!(back[..512].iter().all(|&b| b == 0));
        assert_eq!(&back[512..1024], &data[..]);
        assert!(back[1024..].iter().all(|&b| b == 0));
    }

    fn batch_at_qd_on(dev: &FileDevice, n: usize) {
        let bs = dev.block_size() as usize;
        let bufs: Vec<Vec<u8>> = (0..n).map(|i| pattern(bs, i as u8 ^ 0x5a)).collect();
        let mut reqs: Vec<IoRequest<'_>> = bufs
            .iter()
            .enumerate()
            .map(|(i, b)| IoRequest::Write {
                offset: (i * 2 * bs) as u64,
                buf: b,
            })
            .collect();
        block_on(dev.submit(&mut reqs)).unwrap();
        block_on(dev.flush()).unwrap();
        for (i, b) in bufs.iter().enumerate() {
            let mut back = vec![0u8; bs];
            block_on(dev.read((i * 2 * bs) as u64, &mut back)).unwrap();
            assert_eq!(&back, b);
        }
    }
}
