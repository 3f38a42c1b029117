//! I/O channels (one SPDK thread each) and DMA buffers.

use std::ffi::c_void;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicPtr, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use super::completion::{Done, Record};
use super::ffi;
use super::reactor::{check, SpdkThread};
use super::store::{Addr, Blob, BlobMeta, StoreInner};
use crate::{Error, IoReq, Result};

/// Memory from `spdk_dma_malloc`, owned by a completion record while SPDK may use it.
pub(crate) struct DmaBuf {
    ptr: NonNull<u8>,
    len: usize,
    /// Bytes allocated (`len` or more, for a pooled buffer).
    cap: usize,
}

// SAFETY: DMA memory is plain heap memory from DPDK's allocator; it may be used and freed
// from any thread.
unsafe impl Send for DmaBuf {}

impl DmaBuf {
    pub fn new(len: usize) -> Result<DmaBuf> {
        Self::with_cap(len, len)
    }

    fn with_cap(len: usize, cap: usize) -> Result<DmaBuf> {
        // SAFETY: plain allocation; the env is up (a store exists).
        let p = unsafe { spdk_sys::spdk_dma_malloc(cap.max(1), 4096, std::ptr::null_mut()) };
        NonNull::new(p as *mut u8)
            .map(|ptr| DmaBuf { ptr, len, cap })
            .ok_or(Error::NoDmaMemory(cap))
    }

    pub fn as_ptr(&self) -> *mut c_void {
        self.ptr.as_ptr() as *mut c_void
    }

    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: `len` bytes were allocated at `ptr`; the allocation lives as long as self.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }

    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as above, and `&mut self` makes the borrow unique.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Drop for DmaBuf {
    fn drop(&mut self) {
        // SAFETY: allocated by spdk_dma_malloc, freed once.
        unsafe { spdk_sys::spdk_dma_free(self.ptr.as_ptr() as *mut c_void) };
    }
}

/// Pooled DMA buffers are at most this big ...
const POOL_MAX_BUF: usize = 128 << 10;
/// ... and a channel keeps at most this many.
const POOL_BUFS: usize = 32;

pub(crate) struct ChanInner {
    /// DMA buffers of completed I/O, reused: DPDK's allocator takes a heap-wide spinlock,
    /// which channels working side by side would otherwise contend on for every I/O.
    pool: Mutex<Vec<DmaBuf>>,
    store: Arc<StoreInner>,
    thread: SpdkThread,
    /// `spdk_bs_alloc_io_channel` on `thread`; null once released.
    ch: AtomicPtr<c_void>,
    /// The flush descriptor's bdev channel on `thread`, or null.
    bdev_ch: AtomicPtr<c_void>,
}

impl ChanInner {
    /// A DMA buffer of `len` bytes, from the pool when one fits.
    fn dma(&self, len: usize) -> Result<DmaBuf> {
        if len > POOL_MAX_BUF {
            return DmaBuf::new(len);
        }
        let cap = len.next_power_of_two().max(4096);
        let pooled = {
            let mut pool = lock(&self.pool);
            pool.iter()
                .position(|b| b.cap == cap)
                .map(|i| pool.swap_remove(i))
        };
        match pooled {
            Some(mut b) => {
                b.len = len;
                Ok(b)
            }
            None => DmaBuf::with_cap(len, cap),
        }
    }

    /// Give back the buffer of a completed I/O.
    fn recycle(&self, rec: &Record) {
        let Some(b) = rec.take_dma() else { return };
        if b.cap <= POOL_MAX_BUF {
            let mut pool = lock(&self.pool);
            if pool.len() < POOL_BUFS {
                pool.push(b);
            }
        }
    }

    /// Free the SPDK channels (on their thread) and wait until that ran.
    pub async fn release(self: &Arc<ChanInner>) {
        self.thread.set_hot(false);
        let me = Arc::clone(self);
        let _ = self.store.env.call(&self.thread, move || me.free_here());
    }

    /// On `thread`: free whatever is still held.
    fn free_here(&self) {
        let ch = self.ch.swap(std::ptr::null_mut(), Ordering::AcqRel);
        if !ch.is_null() {
            // SAFETY: on the channel's thread; the channel was allocated there, freed once.
            unsafe { spdk_sys::spdk_bs_free_io_channel(ch as *mut spdk_sys::spdk_io_channel) };
        }
        let bch = self.bdev_ch.swap(std::ptr::null_mut(), Ordering::AcqRel);
        if !bch.is_null() {
            // SAFETY: as above, for the bdev channel.
            unsafe { spdk_sys::spdk_put_io_channel(bch as *mut spdk_sys::spdk_io_channel) };
        }
    }
}

impl Drop for ChanInner {
    fn drop(&mut self) {
        let ch = self.ch.swap(std::ptr::null_mut(), Ordering::AcqRel) as Addr;
        let bch = self.bdev_ch.swap(std::ptr::null_mut(), Ordering::AcqRel) as Addr;
        self.thread.set_hot(false);
        let env = self.store.env;
        env.run(&self.thread, move || {
            if ch != 0 {
                // SAFETY: on the channel's thread; no I/O is in flight (every record of an
                // I/O holds this channel alive); freed once.
                unsafe { spdk_sys::spdk_bs_free_io_channel(ch as *mut spdk_sys::spdk_io_channel) };
            }
            if bch != 0 {
                // SAFETY: as above.
                unsafe { spdk_sys::spdk_put_io_channel(bch as *mut spdk_sys::spdk_io_channel) };
            }
        });
        env.exit_thread(&self.thread);
    }
}

/// A blob I/O channel. Each channel has its own SPDK thread, so channels of different
/// shards submit in parallel.
pub struct Channel {
    inner: Arc<ChanInner>,
}

impl std::fmt::Debug for Channel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Channel({})", self.inner.store.bdev)
    }
}

#[derive(Clone, Copy)]
enum Kind {
    Read,
    Write,
    Unmap,
    WriteZeroes,
}

/// One I/O ready for submission.
struct Op {
    kind: Kind,
    blob: Addr,
    meta: Arc<BlobMeta>,
    offset: u64,
    units: u64,
    rec: Arc<Record>,
}

/// How often an I/O refused with -ENOMEM (request slots exhausted) is resubmitted.
const ENOMEM_RETRIES: u32 = 10_000;

impl Channel {
    pub(crate) fn new(store: Arc<StoreInner>) -> Result<Channel> {
        let bs = store.bs()?;
        let env = store.env;
        let thread = env.create_thread("blobcask_io")?;
        let desc = store.flush_desc.load(Ordering::Acquire) as Addr;
        let (ch, bch) = env
            .call(&thread, move || {
                // SAFETY: on the new thread; the store is live.
                let ch = unsafe {
                    spdk_sys::spdk_bs_alloc_io_channel(bs as *mut spdk_sys::spdk_blob_store)
                };
                let bch = if desc != 0 {
                    // SAFETY: on the new thread; the descriptor is open.
                    unsafe {
                        spdk_sys::spdk_bdev_get_io_channel(desc as *mut spdk_sys::spdk_bdev_desc)
                    }
                } else {
                    std::ptr::null_mut()
                };
                (ch as Addr, bch as Addr)
            })
            .ok_or_else(|| Error::Unavailable("the SPDK reactor has stopped".into()))?;
        let inner = Arc::new(ChanInner {
            pool: Mutex::new(Vec::new()),
            store: Arc::clone(&store),
            thread,
            ch: AtomicPtr::new(ch as *mut c_void),
            bdev_ch: AtomicPtr::new(bch as *mut c_void),
        });
        if ch == 0 {
            drop(inner);
            return Err(Error::Spdk {
                op: "spdk_bs_alloc_io_channel",
                rc: -crate::libc_errno::ENOMEM,
            });
        }
        // From now on its turns (its I/O) run beside other channels'.
        inner.thread.set_hot(true);
        store
            .channels
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(Arc::downgrade(&inner));
        Ok(Channel { inner })
    }

    fn units(&self, bytes: usize) -> Result<u64> {
        let unit = self.inner.store.io_unit as usize;
        if unit == 0 || !bytes.is_multiple_of(unit) {
            return Err(Error::InvalidArgument(format!(
                "I/O of {bytes} bytes is not a multiple of the {unit}-byte io unit"
            )));
        }
        Ok((bytes / unit) as u64)
    }

    fn check_blob(&self, blob: &Blob) -> Result<Addr> {
        if !Arc::ptr_eq(blob.store(), &self.inner.store) {
            return Err(Error::InvalidArgument(
                "blob and channel belong to different blobstores".into(),
            ));
        }
        self.inner.store.blob_ptr(blob)
    }

    /// Submit every op in one hop to the channel's thread and await all callbacks.
    async fn run(&self, ops: &[Op]) -> Vec<Done> {
        let mut jobs: Vec<(Kind, Addr, u64, u64, Arc<Record>)> = Vec::with_capacity(ops.len());
        for o in ops {
            // The blob stays open until the record is released (its last close waits), so
            // no I/O reaches a freed blob.
            let Some(guard) = o.meta.enter() else {
                o.rec.complete_now(-crate::libc_errno::EBADF);
                continue;
            };
            // The channel must outlive every callback, even if this future is dropped.
            o.rec.keep(Box::new((Arc::clone(&self.inner), guard)));
            jobs.push((o.kind, o.blob, o.offset, o.units, Arc::clone(&o.rec)));
        }
        let inner = Arc::clone(&self.inner);
        self.inner.store.env.run(&self.inner.thread, move || {
            let ch = inner.ch.load(Ordering::Acquire);
            for (kind, blob, offset, units, rec) in jobs {
                if ch.is_null() {
                    rec.complete_now(-crate::libc_errno::ESHUTDOWN);
                    continue;
                }
                let b = blob as *mut c_void;
                let buf = rec.dma_ptr();
                let arg = rec.into_cb_arg();
                // SAFETY: on the channel's thread with its channel; the blob is open; the
                // DMA buffer (for reads and writes) is owned by the record, which SPDK holds
                // through `arg` until the callback.
                unsafe {
                    match kind {
                        Kind::Read => ffi::shim_blob_read(b, ch, buf, offset, units, arg),
                        Kind::Write => ffi::shim_blob_write(b, ch, buf, offset, units, arg),
                        Kind::Unmap => ffi::shim_blob_unmap(b, ch, offset, units, arg),
                        Kind::WriteZeroes => ffi::shim_blob_write_zeroes(b, ch, offset, units, arg),
                    }
                }
            }
        });
        let mut out = Vec::with_capacity(ops.len());
        for o in ops {
            out.push(o.rec.wait().await);
        }
        out
    }

    /// Run ops, resubmitting those SPDK refused for lack of request slots.
    async fn run_retrying(&self, mut ops: Vec<Op>) -> Result<Vec<Arc<Record>>> {
        let mut finished: Vec<Option<Arc<Record>>> = Vec::new();
        finished.resize_with(ops.len(), || None);
        let mut index: Vec<usize> = (0..ops.len()).collect();
        let mut tries = 0;
        let mut first_err = None;
        loop {
            let done = self.run(&ops).await;
            let mut again = Vec::new();
            let mut again_idx = Vec::new();
            for ((op, d), i) in ops.into_iter().zip(done).zip(index) {
                if d.rc == -crate::libc_errno::ENOMEM && tries < ENOMEM_RETRIES {
                    // SPDK no longer uses the buffer: move it into a fresh record.
                    let rec = match op.rec.take_dma() {
                        Some(dma) => Record::with_dma(dma),
                        None => Record::new(),
                    };
                    again.push(Op { rec, ..op });
                    again_idx.push(i);
                } else {
                    if d.rc != 0 && first_err.is_none() {
                        first_err = Some(d.rc);
                    }
                    finished[i] = Some(op.rec);
                }
            }
            if again.is_empty() {
                break;
            }
            tries += 1;
            std::thread::yield_now();
            ops = again;
            index = again_idx;
        }
        if let Some(rc) = first_err {
            check("spdk_blob_io", rc)?;
        }
        Ok(finished.into_iter().flatten().collect())
    }

    fn data_op(
        &self,
        kind: Kind,
        blob: &Blob,
        offset: u64,
        buf: Option<&[u8]>,
        len: usize,
    ) -> Result<Option<Op>> {
        let b = self.check_blob(blob)?;
        let units = self.units(len)?;
        if units == 0 {
            return Ok(None);
        }
        let mut dma = self.inner.dma(len)?;
        if let Some(src) = buf {
            dma.as_mut_slice().copy_from_slice(src);
        }
        Ok(Some(Op {
            kind,
            blob: b,
            meta: Arc::clone(blob.meta()),
            offset,
            units,
            rec: Record::with_dma(dma),
        }))
    }

    /// Read `buf.len()` bytes (a multiple of the io unit) at io unit `offset`.
    pub async fn read(&self, blob: &Blob, offset: u64, buf: &mut [u8]) -> Result<()> {
        let Some(op) = self.data_op(Kind::Read, blob, offset, None, buf.len())? else {
            return Ok(());
        };
        let recs = self.run_retrying(vec![op]).await?;
        for r in recs {
            r.with_dma_bytes(|d| buf.copy_from_slice(d));
            self.inner.recycle(&r);
        }
        Ok(())
    }

    /// Write `buf` (a multiple of the io unit) at io unit `offset`.
    pub async fn write(&self, blob: &Blob, offset: u64, buf: &[u8]) -> Result<()> {
        let Some(op) = self.data_op(Kind::Write, blob, offset, Some(buf), buf.len())? else {
            return Ok(());
        };
        for r in self.run_retrying(vec![op]).await? {
            self.inner.recycle(&r);
        }
        Ok(())
    }

    /// Submit several reads and writes at once; the first error is returned after all
    /// completed.
    pub async fn submit(&self, reqs: &mut [IoReq<'_>]) -> Result<()> {
        let mut ops = Vec::with_capacity(reqs.len());
        let mut reads = Vec::new();
        for (i, r) in reqs.iter().enumerate() {
            let op = match r {
                IoReq::Read { blob, offset, buf } => {
                    self.data_op(Kind::Read, blob, *offset, None, buf.len())?
                }
                IoReq::Write { blob, offset, buf } => {
                    self.data_op(Kind::Write, blob, *offset, Some(buf), buf.len())?
                }
            };
            if let Some(op) = op {
                if matches!(op.kind, Kind::Read) {
                    reads.push((i, ops.len()));
                }
                ops.push(op);
            }
        }
        if ops.is_empty() {
            return Ok(());
        }
        let recs = self.run_retrying(ops).await?;
        for (req_i, op_i) in reads {
            if let (IoReq::Read { buf, .. }, Some(rec)) = (&mut reqs[req_i], recs.get(op_i)) {
                rec.with_dma_bytes(|d| buf.copy_from_slice(d));
            }
        }
        for r in &recs {
            self.inner.recycle(r);
        }
        Ok(())
    }

    /// Unmap `len` io units at `offset`.
    pub async fn unmap(&self, blob: &Blob, offset: u64, len: u64) -> Result<()> {
        self.no_data(Kind::Unmap, blob, offset, len).await
    }

    /// Write zeroes over `len` io units at `offset`.
    pub async fn write_zeroes(&self, blob: &Blob, offset: u64, len: u64) -> Result<()> {
        self.no_data(Kind::WriteZeroes, blob, offset, len).await
    }

    async fn no_data(&self, kind: Kind, blob: &Blob, offset: u64, len: u64) -> Result<()> {
        let b = self.check_blob(blob)?;
        if len == 0 {
            return Ok(());
        }
        let op = Op {
            kind,
            blob: b,
            meta: Arc::clone(blob.meta()),
            offset,
            units: len,
            rec: Record::new(),
        };
        self.run_retrying(vec![op]).await.map(|_| ())
    }

    /// Flush the bdev's volatile cache (no-op for bdevs without one, such as malloc).
    pub async fn flush(&self) -> Result<()> {
        let desc = self.inner.store.flush_desc.load(Ordering::Acquire) as Addr;
        if desc == 0 {
            return Ok(());
        }
        let rec = Record::new();
        rec.keep(Box::new(Arc::clone(&self.inner)));
        let r = Arc::clone(&rec);
        let inner = Arc::clone(&self.inner);
        self.inner.store.env.run(&self.inner.thread, move || {
            let bch = inner.bdev_ch.load(Ordering::Acquire);
            let desc = inner.store.flush_desc.load(Ordering::Acquire);
            if bch.is_null() || desc.is_null() {
                r.complete_now(0);
                return;
            }
            // SAFETY: on the channel's thread with the bdev channel made there; the
            // descriptor is open (closed only after channels are released).
            unsafe { ffi::shim_bdev_flush(desc, bch, r.into_cb_arg()) };
        });
        let done = rec.wait().await;
        check("spdk_bdev_flush_blocks", done.rc)
    }
}
