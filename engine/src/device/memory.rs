//! A device held in memory. Writes are durable at once; used by tests and `--backend memory`.

use parking_lot::RwLock;

use super::error::{Error, Result};
use super::{check_range, Device, IoPath, IoRequest};

/// A RAM-backed [`Device`].
pub struct MemoryDevice {
    block_size: u32,
    data: RwLock<Vec<u8>>,
}

impl std::fmt::Debug for MemoryDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryDevice")
            .field("block_size", &self.block_size)
            .field("size", &self.data.read().len())
            .finish()
    }
}

impl MemoryDevice {
    /// A zero-filled device of `size` bytes (rounded down to `block_size`).
    pub fn new(size: u64, block_size: u32) -> Result<Self> {
        if !(512..=4096).contains(&block_size) || !block_size.is_power_of_two() {
            return Err(Error::invalid(format!(
                "block size {block_size} is not a power of two in 512..=4096"
            )));
        }
        let size = size - size % u64::from(block_size);
        let len = usize::try_from(size)
            .map_err(|_| Error::invalid("memory device larger than the address space"))?;
        Ok(MemoryDevice {
            block_size,
            data: RwLock::new(vec![0; len]),
        })
    }

    /// A device holding a copy of `image` (e.g. a fixture).
    pub fn from_bytes(image: Vec<u8>, block_size: u32) -> Result<Self> {
        let dev = Self::new(image.len() as u64, block_size)?;
        let mut d = dev.data.write();
        let n = d.len();
        d.copy_from_slice(&image[..n]);
        drop(d);
        Ok(dev)
    }

    /// A copy of the whole device.
    pub fn to_bytes(&self) -> Vec<u8> {
        self.data.read().clone()
    }

    fn read_sync(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        let d = self.data.read();
        check_range(self.block_size, d.len() as u64, offset, buf.len() as u64)?;
        let o = offset as usize;
        buf.copy_from_slice(&d[o..o + buf.len()]);
        Ok(())
    }

    fn write_sync(&self, offset: u64, buf: &[u8]) -> Result<()> {
        let mut d = self.data.write();
        check_range(self.block_size, d.len() as u64, offset, buf.len() as u64)?;
        let o = offset as usize;
        d[o..o + buf.len()].copy_from_slice(buf);
        Ok(())
    }
}

impl Device for MemoryDevice {
    fn block_size(&self) -> u32 {
        self.block_size
    }

    fn size(&self) -> u64 {
        self.data.read().len() as u64
    }

    fn io_path(&self) -> IoPath {
        IoPath::Memory
    }

    async fn read(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        self.read_sync(offset, buf)
    }

    async fn write(&self, offset: u64, buf: &[u8]) -> Result<()> {
        self.write_sync(offset, buf)
    }

    async fn submit(&self, reqs: &mut [IoRequest<'_>]) -> Result<()> {
        for r in reqs.iter_mut() {
            match r {
                IoRequest::Read { offset, buf } => self.read_sync(*offset, buf)?,
                IoRequest::Write { offset, buf } => self.write_sync(*offset, buf)?,
            }
        }
        Ok(())
    }

    async fn flush(&self) -> Result<()> {
        Ok(())
    }

    async fn unmap(&self, offset: u64, len: u64) -> Result<()> {
        // Like a file image without hole punching: the old bytes stay.
        check_range(self.block_size, self.size(), offset, len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_back_what_was_written() {
        let d = MemoryDevice::new(1 << 16, 4096).unwrap();
        pollster::block_on(d.write(4096, &[7u8; 4096])).unwrap();
        let mut b = vec![0u8; 8192];
        pollster::block_on(d.read(0, &mut b)).unwrap();
        assert!(b[..4096].iter().all(|&x| x == 0));
        assert!(b[4096..].iter().all(|&x| x == 7));
    }

    #[test]
    fn rejects_misaligned_and_out_of_range_io() {
        let d = MemoryDevice::new(1 << 16, 4096).unwrap();
        let mut b = vec![0u8; 4096];
        assert!(pollster::block_on(d.read(100, &mut b)).is_err());
        assert!(pollster::block_on(d.read(1 << 16, &mut b)).is_err());
        assert!(pollster::block_on(d.write(0, &[0u8; 100])).is_err());
    }
}
