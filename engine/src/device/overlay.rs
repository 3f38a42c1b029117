//! A copy-on-write view of a device: reads come from the base device unless the block was
//! written through the overlay, and writes stay in memory. Inspection tools load a store
//! through it so recovering a dirty image (which writes masks) leaves the image untouched.

use std::collections::HashMap;

use parking_lot::RwLock;

use super::error::Result;
use super::{check_range, Device, IoPath, IoRequest};

/// A [`Device`] whose writes never reach `base`.
pub struct Overlay<D: Device> {
    base: D,
    /// Written blocks, by block index.
    blocks: RwLock<HashMap<u64, Box<[u8]>>>,
}

impl<D: Device> Overlay<D> {
    pub fn new(base: D) -> Self {
        Overlay {
            base,
            blocks: RwLock::new(HashMap::new()),
        }
    }

    /// The device underneath.
    pub fn base(&self) -> &D {
        &self.base
    }

    /// Blocks written through the overlay so far.
    pub fn dirty_blocks(&self) -> usize {
        self.blocks.read().len()
    }

    async fn read_one(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        check_range(self.block_size(), self.size(), offset, buf.len() as u64)?;
        self.base.read(offset, buf).await?;
        let bs = u64::from(self.block_size());
        let blocks = self.blocks.read();
        if blocks.is_empty() {
            return Ok(());
        }
        for (i, chunk) in buf.chunks_mut(bs as usize).enumerate() {
            if let Some(b) = blocks.get(&(offset / bs + i as u64)) {
                chunk.copy_from_slice(b);
            }
        }
        Ok(())
    }

    fn write_one(&self, offset: u64, buf: &[u8]) -> Result<()> {
        check_range(self.block_size(), self.size(), offset, buf.len() as u64)?;
        let bs = u64::from(self.block_size());
        let mut blocks = self.blocks.write();
        for (i, chunk) in buf.chunks(bs as usize).enumerate() {
            blocks.insert(offset / bs + i as u64, chunk.into());
        }
        Ok(())
    }
}

impl<D: Device> Device for Overlay<D> {
    fn block_size(&self) -> u32 {
        self.base.block_size()
    }

    fn size(&self) -> u64 {
        self.base.size()
    }

    fn io_path(&self) -> IoPath {
        self.base.io_path()
    }

    async fn read(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        self.read_one(offset, buf).await
    }

    async fn write(&self, offset: u64, buf: &[u8]) -> Result<()> {
        self.write_one(offset, buf)
    }

    async fn submit(&self, reqs: &mut [IoRequest<'_>]) -> Result<()> {
        for r in reqs.iter_mut() {
            match r {
                IoRequest::Read { offset, buf } => self.read_one(*offset, buf).await?,
                IoRequest::Write { offset, buf } => self.write_one(*offset, buf)?,
            }
        }
        Ok(())
    }

    async fn flush(&self) -> Result<()> {
        Ok(())
    }

    async fn unmap(&self, offset: u64, len: u64) -> Result<()> {
        check_range(self.block_size(), self.size(), offset, len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::MemoryDevice;

    #[test]
    fn writes_stay_in_the_overlay() {
        let base = MemoryDevice::new(16384, 4096).unwrap();
        pollster::block_on(base.write(0, &[1u8; 8192])).unwrap();
        let ov = Overlay::new(base);
        pollster::block_on(ov.write(4096, &[9u8; 4096])).unwrap();
        let mut b = vec![0u8; 12288];
        pollster::block_on(ov.read(0, &mut b)).unwrap();
        assert!(b[..4096].iter().all(|&x| x == 1));
        assert!(b[4096..8192].iter().all(|&x| x == 9));
        assert!(b[8192..].iter().all(|&x| x == 0));
        let raw = ov.base().to_bytes();
        assert!(raw[4096..8192].iter().all(|&x| x == 1), "base untouched");
        assert_eq!(ov.dirty_blocks(), 1);
    }
}
