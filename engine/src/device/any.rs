//! [`AnyDevice`]: a backend chosen at run time, dispatched statically.

use std::path::Path;
use std::sync::Arc;

use super::error::{Error, Result};
use super::{Device, FileDevice, FileOptions, IoPath, IoRequest, MemoryDevice, SimDevice};

/// One of the device backends. Callers that pick a backend from a flag or a path (the `Db`,
/// the CLI, the bench tool) hold this; the `match` in each method is the only dispatch cost.
/// Every backend sits behind an `Arc`: a clone is another handle to the same open device (so
/// [`crate::Options`] can be cloned, and a test can keep a handle to a memory or sim device).
#[derive(Debug, Clone)]
pub enum AnyDevice {
    File(Arc<FileDevice>),
    Memory(Arc<MemoryDevice>),
    Sim(Arc<SimDevice>),
}

impl AnyDevice {
    /// Claim a file device for one store (a cloned `Options` shares its handle); `None` for
    /// devices that are never shared that way.
    pub(crate) fn claim(&self) -> Result<Option<super::FileClaim>> {
        match self {
            AnyDevice::File(f) => super::FileClaim::new(f).map(Some),
            AnyDevice::Memory(_) | AnyDevice::Sim(_) => Ok(None),
        }
    }

    /// Open an existing image file or block device (default [`FileOptions`]).
    pub fn open_path(path: impl AsRef<Path>) -> Result<Self> {
        FileDevice::open(path).map(AnyDevice::from)
    }

    /// Open an existing image file or block device with options.
    pub fn open_path_with(path: impl AsRef<Path>, opts: &FileOptions) -> Result<Self> {
        FileDevice::open_with(path, opts).map(AnyDevice::from)
    }

    /// Create a sparse image file of `size` bytes (its block size detected). If `path`
    /// is a block device it is opened instead, and must hold at least `size` bytes.
    pub fn create_path(path: impl AsRef<Path>, size: u64) -> Result<Self> {
        Self::create_path_with(path, size, &FileOptions::default())
    }

    /// [`AnyDevice::create_path`] with options (e.g. a block size for a store's io unit).
    pub fn create_path_with(path: impl AsRef<Path>, size: u64, opts: &FileOptions) -> Result<Self> {
        let path = path.as_ref();
        if is_block_device(path) {
            let dev = FileDevice::open_with(path, opts)?;
            if dev.size() < size {
                return Err(Error::invalid(format!(
                    "{}: block device holds {} bytes, {size} requested",
                    path.display(),
                    dev.size()
                )));
            }
            return Ok(AnyDevice::from(dev));
        }
        FileDevice::create_with(path, size, opts).map(AnyDevice::from)
    }

    /// A zero-filled memory device.
    pub fn memory(size: u64, block_size: u32) -> Result<Self> {
        MemoryDevice::new(size, block_size).map(|d| AnyDevice::Memory(Arc::new(d)))
    }

    /// Short name of the backend: `file`, `memory` or `sim`.
    pub fn kind(&self) -> &'static str {
        match self {
            AnyDevice::File(_) => "file",
            AnyDevice::Memory(_) => "memory",
            AnyDevice::Sim(_) => "sim",
        }
    }
}

fn is_block_device(path: &Path) -> bool {
    use std::os::unix::fs::FileTypeExt;
    std::fs::metadata(path).is_ok_and(|m| m.file_type().is_block_device())
}

impl From<FileDevice> for AnyDevice {
    fn from(d: FileDevice) -> Self {
        AnyDevice::File(Arc::new(d))
    }
}

impl From<Arc<FileDevice>> for AnyDevice {
    fn from(d: Arc<FileDevice>) -> Self {
        AnyDevice::File(d)
    }
}

impl From<MemoryDevice> for AnyDevice {
    fn from(d: MemoryDevice) -> Self {
        AnyDevice::Memory(Arc::new(d))
    }
}

impl From<Arc<MemoryDevice>> for AnyDevice {
    fn from(d: Arc<MemoryDevice>) -> Self {
        AnyDevice::Memory(d)
    }
}

impl From<SimDevice> for AnyDevice {
    fn from(d: SimDevice) -> Self {
        AnyDevice::Sim(Arc::new(d))
    }
}

impl From<Arc<SimDevice>> for AnyDevice {
    fn from(d: Arc<SimDevice>) -> Self {
        AnyDevice::Sim(d)
    }
}

/// Forward a call to whichever backend is inside.
macro_rules! dispatch {
    ($self:ident, $d:ident => $e:expr) => {
        match $self {
            AnyDevice::File($d) => $e,
            AnyDevice::Memory($d) => $e,
            AnyDevice::Sim($d) => $e,
        }
    };
}

impl Device for AnyDevice {
    fn block_size(&self) -> u32 {
        dispatch!(self, d => d.block_size())
    }

    fn size(&self) -> u64 {
        dispatch!(self, d => d.size())
    }

    fn io_path(&self) -> IoPath {
        dispatch!(self, d => d.io_path())
    }

    async fn read(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        dispatch!(self, d => d.read(offset, buf).await)
    }

    async fn write(&self, offset: u64, buf: &[u8]) -> Result<()> {
        dispatch!(self, d => d.write(offset, buf).await)
    }

    async fn read_owned(
        &self,
        offset: u64,
        buf: super::AlignedBuf,
    ) -> (super::AlignedBuf, Result<()>) {
        dispatch!(self, d => d.read_owned(offset, buf).await)
    }

    async fn submit(&self, reqs: &mut [IoRequest<'_>]) -> Result<()> {
        dispatch!(self, d => d.submit(reqs).await)
    }

    async fn flush(&self) -> Result<()> {
        dispatch!(self, d => d.flush().await)
    }

    async fn unmap(&self, offset: u64, len: u64) -> Result<()> {
        dispatch!(self, d => d.unmap(offset, len).await)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exercise(d: &AnyDevice) {
        let bs = d.block_size() as usize;
        let data = vec![0x5Au8; 2 * bs];
        pollster::block_on(d.write(bs as u64, &data)).unwrap();
        pollster::block_on(d.flush()).unwrap();
        let mut back = vec![0u8; 2 * bs];
        let mut reqs = [IoRequest::Read {
            offset: bs as u64,
            buf: &mut back,
        }];
        pollster::block_on(d.submit(&mut reqs)).unwrap();
        assert_eq!(back, data);
        pollster::block_on(d.unmap(0, bs as u64)).unwrap();
    }

    #[test]
    fn every_backend_dispatches() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("img");
        let f = AnyDevice::create_path(&p, 1 << 20).unwrap();
        assert_eq!((f.kind(), f.size()), ("file", 1 << 20));
        // The file system's direct-I/O alignment.
        assert!([512, 1024, 2048, 4096].contains(&f.block_size()));
        exercise(&f);
        drop(f);
        let f = AnyDevice::open_path(&p).unwrap();
        assert!(matches!(f.io_path(), IoPath::IoUring | IoPath::Pread));

        let m = AnyDevice::memory(1 << 16, 512).unwrap();
        assert_eq!((m.kind(), m.io_path()), ("memory", IoPath::Memory));
        exercise(&m);

        let sim = Arc::new(SimDevice::new(1 << 16, 4096, 7).unwrap());
        let s = AnyDevice::from(Arc::clone(&sim));
        exercise(&s);
        assert_eq!(sim.io_counts().total(), 4);
        assert_eq!(s.kind(), "sim");
    }
}
