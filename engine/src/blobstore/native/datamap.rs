//! The data path's view of a blob: an immutable, cheaply cloned cluster map published through
//! `arc-swap`, so reads and writes to allocated clusters never take a lock.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;

use super::blobmd::BlobMd;
use super::esnap::{show_id, ExternalDevice};

const CHUNK: usize = 512;

/// A snapshot of a blob's cluster map and I/O-relevant flags.
#[derive(Debug, Clone)]
pub struct DataMap {
    chunks: Vec<Arc<Vec<u32>>>,
    len: u64,
    allocated: u64,
    pub thin: bool,
    pub read_only: bool,
}

impl DataMap {
    pub fn build(md: &BlobMd, read_only: bool) -> DataMap {
        DataMap {
            chunks: md
                .clusters
                .chunks(CHUNK)
                .map(|c| Arc::new(c.to_vec()))
                .collect(),
            len: md.clusters.len() as u64,
            allocated: md.clusters.iter().filter(|&&c| c != 0).count() as u64,
            thin: md.is_thin(),
            read_only,
        }
    }

    /// Device cluster of blob cluster `i` (0 = unallocated or out of range).
    pub fn get(&self, i: u64) -> u32 {
        let c = (i / CHUNK as u64) as usize;
        let o = (i % CHUNK as u64) as usize;
        self.chunks
            .get(c)
            .and_then(|v| v.get(o))
            .copied()
            .unwrap_or(0)
    }

    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn allocated(&self) -> u64 {
        self.allocated
    }

    /// A copy with some entries changed; only the touched chunks are copied.
    pub fn with_updates(&self, ups: &[(u64, u32)]) -> DataMap {
        let mut m = self.clone();
        for &(i, c) in ups {
            let ci = (i / CHUNK as u64) as usize;
            let o = (i % CHUNK as u64) as usize;
            if let Some(ch) = m.chunks.get_mut(ci) {
                let v = Arc::make_mut(ch);
                if let Some(slot) = v.get_mut(o) {
                    match (*slot != 0, c != 0) {
                        (false, true) => m.allocated += 1,
                        (true, false) => m.allocated -= 1,
                        _ => {}
                    }
                    *slot = c;
                }
            }
        }
        m
    }
}

/// Where a blob's unallocated clusters read from (SPDK's `back_bs_dev`).
#[derive(Clone)]
pub enum Backing {
    /// Zeroes: a thick blob, or a thin blob with no parent.
    Zeroes,
    /// The parent snapshot, held open for as long as this blob is.
    Snapshot(Arc<BlobShared>),
    /// The external device of an esnap clone, and its id.
    External(Vec<u8>, Arc<dyn ExternalDevice>),
    /// An esnap clone whose id no resolver maps to a device (the id bytes).
    MissingExternal(Vec<u8>),
}

impl std::fmt::Debug for Backing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Backing::Zeroes => f.write_str("Zeroes"),
            Backing::Snapshot(p) => write!(f, "Snapshot({:#x})", p.id),
            Backing::External(id, d) => {
                write!(f, "External({}, {} bytes)", show_id(id), d.size_bytes())
            }
            Backing::MissingExternal(id) => write!(f, "MissingExternal({})", show_id(id)),
        }
    }
}

/// State shared between a blob's handles and the data path.
#[derive(Debug)]
pub struct BlobShared {
    pub id: u64,
    pub map: ArcSwap<DataMap>,
    pub open: AtomicBool,
    pub units_per_cluster: u64,
    /// Replaced only by a snapshot of this blob (which makes it a clone of the snapshot).
    pub backing: ArcSwap<Backing>,
}

impl BlobShared {
    pub fn new(id: u64, map: DataMap, units_per_cluster: u64) -> Arc<BlobShared> {
        Self::with_backing(id, map, units_per_cluster, Backing::Zeroes)
    }

    pub fn with_backing(
        id: u64,
        map: DataMap,
        units_per_cluster: u64,
        backing: Backing,
    ) -> Arc<BlobShared> {
        Arc::new(BlobShared {
            id,
            map: ArcSwap::from_pointee(map),
            open: AtomicBool::new(true),
            units_per_cluster,
            backing: ArcSwap::from_pointee(backing),
        })
    }

    pub fn is_open(&self) -> bool {
        self.open.load(Ordering::Acquire)
    }
}
