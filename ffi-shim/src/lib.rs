//! Safe async Rust over SPDK's environment, threads, bdevs and blobstore.
//!
//! # Model
//!
//! * [`Env::start`] brings up SPDK once per process: the DPDK-based env layer, SPDK's thread
//!   library, every linked subsystem (bdev, accel, iobuf, ...) and the bdevs of a JSON config
//!   in the format of SPDK's `save_config` (`malloc`, `aio`, `uring`, `nvme` bdevs).
//! * Every SPDK thread this crate creates — the metadata thread (every blobstore metadata
//!   call runs there) and one SPDK thread per [`Channel`] (its blob I/O runs there) — has a
//!   poll lock of its own; whoever holds it runs the thread's queued jobs and polls it. A
//!   caller blocked in [`block_on`] drives the SPDK threads its future submitted to, so an
//!   operation is submitted, polled and completed on the caller's own OS thread (no hop), and
//!   callers on different channels do so side by side. A background *reactor* thread polls
//!   the SPDK threads no blocked caller drives. SPDK needs every thread that holds an I/O
//!   channel polled at all times (resize freezes I/O on all channels, unload waits for every
//!   channel's teardown), which is why the threads are not left to shard loops alone.
//! * Callers on any OS thread submit work to a thread's queue and await a completion record.
//!   The record is reference counted; the reference handed to SPDK as `cb_arg` belongs to the
//!   callback. A completion that happens before the submitting call returns is fine, and a
//!   future dropped before completion frees nothing SPDK still uses: DMA buffers, xattr arrays
//!   and the channel live in the record until the callback has run.
//!
//! Without SPDK at build time (no `spdk` feature, or spdk-sys found no SPDK) the same API
//! exists and [`Env::start`] returns [`Error::Unavailable`].

#![warn(missing_docs)]

use std::fmt;

// The FFI module: every call into SPDK and every callback trampoline.
#[cfg(spdk_present)]
#[allow(unsafe_code)]
mod real;
#[cfg(spdk_present)]
pub use real::{block_on, Blob, Blobstore, Channel, Env};

#[cfg(not(spdk_present))]
mod stub;
#[cfg(not(spdk_present))]
pub use stub::{block_on, Blob, Blobstore, Channel, Env};

/// Whether this build links SPDK.
pub const SPDK_PRESENT: bool = cfg!(spdk_present);

/// The error type of this crate.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// This build has no SPDK, or SPDK could not be started in this process.
    #[error("SPDK is unavailable: {0}")]
    Unavailable(String),
    /// An SPDK call failed with a negative errno.
    #[error("{op}: {} ({rc})", errno_name(*rc))]
    Spdk {
        /// What was attempted.
        op: &'static str,
        /// SPDK's negative errno.
        rc: i32,
    },
    /// A bad argument, caught before SPDK saw it.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// The blob handle was closed (or never opened) in this store.
    #[error("blob {0:#x} is not open")]
    NotOpen(u64),
    /// The blobstore was unloaded.
    #[error("the blobstore is unloaded")]
    Unloaded,
    /// `spdk_dma_malloc` failed.
    #[error("out of SPDK DMA memory ({0} bytes)")]
    NoDmaMemory(usize),
}

impl Error {
    /// The negative errno this error stands for (SPDK's own for [`Error::Spdk`]).
    pub fn errno(&self) -> i32 {
        match self {
            Error::Spdk { rc, .. } => *rc,
            Error::Unavailable(_) => -libc_errno::ENODEV,
            Error::InvalidArgument(_) => -libc_errno::EINVAL,
            Error::NotOpen(_) => -libc_errno::EBADF,
            Error::Unloaded => -libc_errno::ESHUTDOWN,
            Error::NoDmaMemory(_) => -libc_errno::ENOMEM,
        }
    }
}

/// The errno values this crate names (Linux numbering, which is what SPDK reports).
pub mod libc_errno {
    #![allow(missing_docs)]
    pub const EPERM: i32 = 1;
    pub const ENOENT: i32 = 2;
    pub const EIO: i32 = 5;
    pub const ENXIO: i32 = 6;
    pub const EBADF: i32 = 9;
    pub const ENOMEM: i32 = 12;
    pub const EBUSY: i32 = 16;
    pub const EEXIST: i32 = 17;
    pub const ENODEV: i32 = 19;
    pub const EINVAL: i32 = 22;
    pub const ENOSPC: i32 = 28;
    pub const EILSEQ: i32 = 84;
    pub const ENOTSUP: i32 = 95;
    pub const ESHUTDOWN: i32 = 108;
}

fn errno_name(rc: i32) -> &'static str {
    use libc_errno::*;
    match -rc {
        EPERM => "EPERM",
        ENOENT => "ENOENT",
        EIO => "EIO",
        ENXIO => "ENXIO",
        EBADF => "EBADF",
        ENOMEM => "ENOMEM",
        EBUSY => "EBUSY",
        EEXIST => "EEXIST",
        ENODEV => "ENODEV",
        EINVAL => "EINVAL",
        ENOSPC => "ENOSPC",
        EILSEQ => "EILSEQ",
        ENOTSUP => "ENOTSUP",
        ESHUTDOWN => "ESHUTDOWN",
        _ => "errno",
    }
}

/// `Result` with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// SPDK's log levels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogLevel {
    /// Nothing.
    Disabled,
    /// Errors only.
    Error,
    /// Errors and warnings (default).
    #[default]
    Warn,
    /// Notices too.
    Notice,
    /// Informational messages too.
    Info,
    /// Everything.
    Debug,
}

impl LogLevel {
    #[cfg_attr(not(spdk_present), allow(dead_code))]
    fn to_spdk(self) -> i32 {
        match self {
            LogLevel::Disabled => -1,
            LogLevel::Error => 0,
            LogLevel::Warn => 1,
            LogLevel::Notice => 2,
            LogLevel::Info => 3,
            LogLevel::Debug => 4,
        }
    }
}

/// Options of [`Env::start`].
#[derive(Debug, Clone)]
pub struct EnvOpts {
    /// Process name given to DPDK.
    pub name: String,
    /// CPU mask of the env (SPDK's `-m`); the reactor itself is not pinned.
    pub core_mask: String,
    /// Run without hugepages. `None` = only when no hugepages are free or hugetlbfs is not
    /// mounted.
    pub no_huge: Option<bool>,
    /// Memory for DPDK in MiB. 0 = automatic: on demand with hugepages, 1024 with
    /// `no_huge` (which needs at least 512).
    pub mem_size_mb: u32,
    /// Skip the PCI scan. `None` = skip unless the config attaches NVMe controllers.
    pub no_pci: Option<bool>,
    /// SPDK log level printed to stderr.
    pub log_level: LogLevel,
}

impl Default for EnvOpts {
    fn default() -> Self {
        EnvOpts {
            name: "blobcask".into(),
            core_mask: "0x1".into(),
            no_huge: None,
            mem_size_mb: 0,
            no_pci: None,
            log_level: LogLevel::Warn,
        }
    }
}

/// Whether this machine has hugepages SPDK can use: free pages and a mounted hugetlbfs.
pub fn hugepages_usable() -> bool {
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let free = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("HugePages_Free:"))
        .and_then(|v| v.trim().parse::<u64>().ok())
        .unwrap_or(0);
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    free > 0
        && mounts
            .lines()
            .any(|l| l.split_whitespace().nth(2) == Some("hugetlbfs"))
}

/// Remove the DPDK runtime directory of process `pid` (`/var/run/dpdk/spdk_pid<pid>`, or
/// under `$XDG_RUNTIME_DIR` when not root). SPDK names it after the pid; DPDK leaves it
/// behind when a process exits without `spdk_env_fini` or is killed. This crate removes its
/// own at exit; call this for a child process that was killed.
pub fn remove_dpdk_runtime_dir(pid: u32) {
    let name = format!("spdk_pid{pid}");
    let mut dirs = vec![std::path::PathBuf::from("/var/run/dpdk").join(&name)];
    if let Some(x) = std::env::var_os("XDG_RUNTIME_DIR") {
        dirs.push(std::path::PathBuf::from(x).join("dpdk").join(&name));
    }
    for d in dirs {
        if d.is_dir() {
            let _ = std::fs::remove_dir_all(&d);
        }
    }
}

/// A bdev configuration: either JSON text or a path to a JSON file.
#[derive(Debug, Clone)]
pub enum Config {
    /// JSON text in SPDK's `save_config` format (`{"subsystems": [...]}`).
    Json(String),
    /// A file holding such JSON.
    File(std::path::PathBuf),
}

impl Config {
    /// JSON text if `s` starts with `{` (after whitespace), a file path otherwise.
    pub fn parse(s: &str) -> Config {
        if s.trim_start().starts_with('{') {
            Config::Json(s.to_owned())
        } else {
            Config::File(s.into())
        }
    }

    /// The JSON text.
    pub fn text(&self) -> Result<String> {
        match self {
            Config::Json(s) => Ok(s.clone()),
            Config::File(p) => std::fs::read_to_string(p).map_err(|e| {
                Error::InvalidArgument(format!("reading SPDK config {}: {e}", p.display()))
            }),
        }
    }

    /// JSON of one malloc bdev.
    pub fn malloc(name: &str, size_bytes: u64, block_size: u32) -> Config {
        let blocks = size_bytes / u64::from(block_size.max(1));
        Config::Json(format!(
            r#"{{"subsystems":[{{"subsystem":"bdev","config":[{{"method":"bdev_malloc_create","params":{{"name":{},"num_blocks":{blocks},"block_size":{block_size}}}}}]}}]}}"#,
            json_str(name)
        ))
    }

    /// JSON of one aio bdev over a file or block device.
    pub fn aio(name: &str, path: &std::path::Path, block_size: u32) -> Config {
        Config::Json(format!(
            r#"{{"subsystems":[{{"subsystem":"bdev","config":[{{"method":"bdev_aio_create","params":{{"name":{},"filename":{},"block_size":{block_size}}}}}]}}]}}"#,
            json_str(name),
            json_str(&path.to_string_lossy())
        ))
    }

    /// JSON of one io_uring bdev over a file or block device.
    pub fn uring(name: &str, path: &std::path::Path, block_size: u32) -> Config {
        Config::Json(format!(
            r#"{{"subsystems":[{{"subsystem":"bdev","config":[{{"method":"bdev_uring_create","params":{{"name":{},"filename":{},"block_size":{block_size}}}}}]}}]}}"#,
            json_str(name),
            json_str(&path.to_string_lossy())
        ))
    }

    /// JSON that deletes an aio bdev (run with [`Env::load_config`]).
    pub fn aio_delete(name: &str) -> Config {
        Config::Json(format!(
            r#"{{"subsystems":[{{"subsystem":"bdev","config":[{{"method":"bdev_aio_delete","params":{{"name":{}}}}}]}}]}}"#,
            json_str(name)
        ))
    }

    /// JSON that deletes an io_uring bdev.
    pub fn uring_delete(name: &str) -> Config {
        Config::Json(format!(
            r#"{{"subsystems":[{{"subsystem":"bdev","config":[{{"method":"bdev_uring_delete","params":{{"name":{}}}}}]}}]}}"#,
            json_str(name)
        ))
    }

    /// JSON that deletes a malloc bdev.
    pub fn malloc_delete(name: &str) -> Config {
        Config::Json(format!(
            r#"{{"subsystems":[{{"subsystem":"bdev","config":[{{"method":"bdev_malloc_delete","params":{{"name":{}}}}}]}}]}}"#,
            json_str(name)
        ))
    }
}

fn json_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// How `spdk_bs_init` clears the data area (`enum bs_clear_method`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BsClearMethod {
    /// Unmap (SPDK's default).
    #[default]
    Unmap = 0,
    /// Write zeroes.
    WriteZeroes = 1,
    /// Leave the bytes.
    None = 2,
}

/// How a blob's freed clusters are cleared (`enum blob_clear_method`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BlobClearMethod {
    /// The store's default.
    #[default]
    Default = 0,
    /// Leave the bytes.
    None = 1,
    /// Unmap.
    Unmap = 2,
    /// Write zeroes.
    WriteZeroes = 3,
}

/// Options of [`Blobstore::init`] (`spdk_bs_opts`).
#[derive(Debug, Clone)]
pub struct BsInitOpts {
    /// Bytes per cluster.
    pub cluster_size: u32,
    /// Md pages; 0 = one per cluster.
    pub num_md_pages: u32,
    /// Application tag.
    pub bstype: [u8; 16],
    /// How the data area is cleared.
    pub clear_method: BsClearMethod,
    /// Md page size; 0 = automatic.
    pub md_page_size: u32,
}

impl Default for BsInitOpts {
    fn default() -> Self {
        BsInitOpts {
            cluster_size: 1 << 20,
            num_md_pages: 0,
            bstype: [0; 16],
            clear_method: BsClearMethod::Unmap,
            md_page_size: 0,
        }
    }
}

/// Options of [`Blobstore::load`].
#[derive(Debug, Clone, Default)]
pub struct BsLoadOpts {
    /// Expected tag; all zero accepts any.
    pub bstype: [u8; 16],
    /// Rebuild the masks even if the store is clean.
    pub force_recover: bool,
}

/// Whether [`Blobstore::start`] formats the bdev or loads the store on it.
#[derive(Debug, Clone)]
pub enum StartMode {
    /// `spdk_bs_init`.
    Init(BsInitOpts),
    /// `spdk_bs_load`.
    Load(BsLoadOpts),
}

/// Options of [`Blobstore::create_blob`] (`spdk_blob_opts`).
#[derive(Debug, Clone)]
pub struct BlobCreateOpts {
    /// Initial size.
    pub num_clusters: u64,
    /// Thin provisioning.
    pub thin_provision: bool,
    /// Extent pages instead of run-length extents.
    pub use_extent_table: bool,
    /// Clear method of freed clusters.
    pub clear_method: BlobClearMethod,
    /// Xattrs set before the first persist.
    pub xattrs: Vec<(String, Vec<u8>)>,
}

impl Default for BlobCreateOpts {
    fn default() -> Self {
        BlobCreateOpts {
            num_clusters: 0,
            thin_provision: false,
            use_extent_table: true,
            clear_method: BlobClearMethod::Default,
            xattrs: Vec::new(),
        }
    }
}

/// One request of [`Channel::submit`].
pub enum IoReq<'a> {
    /// Read into `buf` from io unit `offset`.
    Read {
        /// The blob.
        blob: &'a Blob,
        /// Offset in io units.
        offset: u64,
        /// Destination; a multiple of the io unit size.
        buf: &'a mut [u8],
    },
    /// Write `buf` at io unit `offset`.
    Write {
        /// The blob.
        blob: &'a Blob,
        /// Offset in io units.
        offset: u64,
        /// Source; a multiple of the io unit size.
        buf: &'a [u8],
    },
}

impl fmt::Debug for IoReq<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IoReq::Read { offset, buf, .. } => write!(f, "Read({offset}, {} B)", buf.len()),
            IoReq::Write { offset, buf, .. } => write!(f, "Write({offset}, {} B)", buf.len()),
        }
    }
}
