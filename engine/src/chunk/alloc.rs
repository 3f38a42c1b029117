//! A worker's free-space bitmaps: one bit per 4 KiB page of each chunk blob it owns (set =
//! used). Owned by one worker thread; nothing here is shared or locked.
//!
//! The bitmaps are never written to the device: after a crash (or any open) they are rebuilt
//! from the committed segment metadata (`recover.rs`), so a page no chunk references is free.

use std::collections::BTreeMap;

use bitvec::prelude::{BitVec, Lsb0};

/// The pages of one blob.
#[derive(Debug, Clone)]
pub struct BlobSpace {
    used: BitVec<u64, Lsb0>,
    free: u64,
    /// Where the next search starts (keeps allocation sequential within a blob).
    cursor: usize,
}

impl BlobSpace {
    pub fn new(pages: u64) -> Self {
        BlobSpace {
            used: BitVec::repeat(false, pages as usize),
            free: pages,
            cursor: 0,
        }
    }

    pub fn pages(&self) -> u64 {
        self.used.len() as u64
    }

    pub fn free(&self) -> u64 {
        self.free
    }

    pub fn live(&self) -> u64 {
        self.pages() - self.free
    }

    /// Make the blob `pages` long (it grew by whole clusters).
    pub fn grow(&mut self, pages: u64) {
        let old = self.used.len();
        if pages as usize > old {
            self.used.resize(pages as usize, false);
            self.free += pages - old as u64;
        }
    }

    fn is_used(&self, page: u32) -> Option<bool> {
        self.used.get(page as usize).map(|b| *b)
    }
}

/// Why a bitmap update was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MarkError {
    /// No such blob, or the page lies past its end.
    OutOfRange,
    /// Marking used a page already used (referenced twice), or freeing a free page.
    Twice,
}

/// Every blob a worker owns, by chunk blob number.
#[derive(Debug, Default, Clone)]
pub struct Alloc {
    blobs: BTreeMap<u32, BlobSpace>,
}

impl Alloc {
    pub fn add_blob(&mut self, no: u32, pages: u64) {
        self.blobs.insert(no, BlobSpace::new(pages));
    }

    pub fn remove_blob(&mut self, no: u32) -> Option<BlobSpace> {
        self.blobs.remove(&no)
    }

    #[cfg(any(test, feature = "internals"))]
    pub fn blob(&self, no: u32) -> Option<&BlobSpace> {
        self.blobs.get(&no)
    }

    pub fn blob_mut(&mut self, no: u32) -> Option<&mut BlobSpace> {
        self.blobs.get_mut(&no)
    }

    pub fn blobs(&self) -> impl Iterator<Item = (u32, &BlobSpace)> {
        self.blobs.iter().map(|(&n, s)| (n, s))
    }

    pub fn free_pages(&self) -> u64 {
        self.blobs.values().map(BlobSpace::free).sum()
    }

    /// Mark a page used (restore: a committed reference).
    pub fn mark_used(&mut self, no: u32, page: u32) -> Result<(), MarkError> {
        let b = self.blobs.get_mut(&no).ok_or(MarkError::OutOfRange)?;
        match b.is_used(page) {
            None => Err(MarkError::OutOfRange),
            Some(true) => Err(MarkError::Twice),
            Some(false) => {
                b.used.set(page as usize, true);
                b.free -= 1;
                Ok(())
            }
        }
    }

    /// Give a page back.
    pub fn free(&mut self, no: u32, page: u32) -> Result<(), MarkError> {
        let b = self.blobs.get_mut(&no).ok_or(MarkError::OutOfRange)?;
        match b.is_used(page) {
            None => Err(MarkError::OutOfRange),
            Some(false) => Err(MarkError::Twice),
            Some(true) => {
                b.used.set(page as usize, false);
                b.free += 1;
                Ok(())
            }
        }
    }

    /// Take `n` free pages, as few runs as the bitmaps allow (first fit from each blob's
    /// cursor), skipping the blobs in `avoid`. `None` (and nothing taken) if there are fewer
    /// than `n`.
    pub fn alloc(&mut self, n: usize, avoid: &[u32]) -> Option<Vec<(u32, u32)>> {
        let avail: u64 = self
            .blobs
            .iter()
            .filter(|(no, _)| !avoid.contains(no))
            .map(|(_, b)| b.free)
            .sum();
        if avail < n as u64 {
            return None;
        }
        let mut out = Vec::with_capacity(n);
        // Newest blobs first: older ones drain (and become compactable) as pages are freed.
        for (&no, b) in self.blobs.iter_mut().rev() {
            if out.len() == n {
                break;
            }
            if avoid.contains(&no) || b.free == 0 {
                continue;
            }
            let len = b.used.len();
            let start = b.cursor.min(len);
            for i in (start..len).chain(0..start) {
                if out.len() == n {
                    break;
                }
                if !b.used[i] {
                    b.used.set(i, true);
                    b.free -= 1;
                    b.cursor = i + 1;
                    out.push((no, i as u32));
                }
            }
        }
        Some(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn alloc_free_mark() {
        let mut a = Alloc::default();
        a.add_blob(0, 4);
        a.add_blob(1, 2);
        let got = a.alloc(3, &[]).unwrap();
        assert_eq!(got, vec![(1, 0), (1, 1), (0, 0)]);
        assert_eq!(a.free_pages(), 3);
        assert!(a.alloc(4, &[]).is_none());
        assert_eq!(a.free_pages(), 3, "a refused allocation takes nothing");
        assert_eq!(a.free(1, 0), Ok(()));
        assert_eq!(a.free(1, 0), Err(MarkError::Twice));
        assert_eq!(a.free(1, 9), Err(MarkError::OutOfRange));
        assert_eq!(a.free(7, 0), Err(MarkError::OutOfRange));
        assert_eq!(a.mark_used(0, 0), Err(MarkError::Twice));
        assert_eq!(a.mark_used(0, 3), Ok(()));
        assert_eq!(a.alloc(2, &[0]), None);
        assert_eq!(a.alloc(1, &[0]), Some(vec![(1, 0)]));
        a.blob_mut(1).unwrap().grow(5);
        assert_eq!(a.blob(1).unwrap().free(), 3);
    }

    proptest! {
        /// Every page handed out is distinct and was free; frees return exactly what was
        /// taken; counts always agree with the bits.
        #[test]
        fn never_hands_out_a_page_twice(ops in proptest::collection::vec((0usize..6, any::<bool>()), 1..60)) {
            let mut a = Alloc::default();
            a.add_blob(3, 7);
            a.add_blob(5, 9);
            let mut held: Vec<(u32, u32)> = Vec::new();
            for (n, take) in ops {
                if take {
                    if let Some(got) = a.alloc(n, &[]) {
                        prop_assert_eq!(got.len(), n);
                        for p in got {
                            prop_assert!(!held.contains(&p));
                            held.push(p);
                        }
                    } else {
                        prop_assert!(16 - held.len() < n);
                    }
                } else {
                    for _ in 0..n.min(held.len()) {
                        let p = held.swap_remove(0);
                        prop_assert_eq!(a.free(p.0, p.1), Ok(()));
                    }
                }
                prop_assert_eq!(a.free_pages(), 16 - held.len() as u64);
            }
        }
    }
}
