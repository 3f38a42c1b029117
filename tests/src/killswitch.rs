//! A process kill for any backend: [`KillSwitch`] wraps a [`BlobStore`] and, once its
//! [`Switch`] is thrown, refuses every further call before it reaches the store.
//! [`Switch::kill`] returns only after every call that got through has completed, so the
//! device then holds exactly what a process killed at that instant leaves behind (kill -9,
//! not power loss: every completed write stays). Because it sits above the blobstore, the
//! same crash suites run on the native backend and on SPDK bdevs.
//!
//! [`Switch::arm`] throws the switch at the N-th device-changing call from now, which puts
//! crash points inside an operation (a merge, a rotation) without knowing the backend.

use std::future::Future;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use blobcask::blobstore::{BlobId, BlobIo, BlobStore, Bstype, CreateOpts, IoChannel};
use blobcask::blobstore::{Error, Result};
use blobcask::device::AlignedBuf;

/// Shared by a [`KillSwitch`] store and its channels.
#[derive(Default)]
pub struct Switch {
    dead: AtomicBool,
    in_flight: AtomicUsize,
    /// Device-changing calls still allowed; negative when disarmed.
    left: AtomicI64,
    /// Device-changing calls that went through.
    writes: AtomicU64,
    /// Run on the calling thread just before the device-changing call with this count.
    hook: Mutex<Option<(u64, Hook)>>,
}

/// See [`Switch::on_write`].
pub type Hook = Box<dyn FnOnce() + Send>;

/// Held while a call runs inside the store.
struct Pass(Arc<Switch>);

impl Drop for Pass {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, SeqCst);
    }
}

fn killed() -> Error {
    Error::Device(blobcask::device::Error::Injected(io::Error::other(
        "process killed (kill switch)",
    )))
}

impl Switch {
    pub fn new() -> Arc<Switch> {
        Arc::new(Switch {
            left: AtomicI64::new(-1),
            ..Switch::default()
        })
    }

    /// Let `n` more device-changing calls through, then kill at the next one.
    pub fn arm(&self, n: u64) {
        self.left
            .store(i64::try_from(n).unwrap_or(i64::MAX), SeqCst);
    }

    /// Run `f` on the writing thread just before the device-changing call that makes
    /// [`Switch::writes`] pass `n` (the writer stays inside its operation meanwhile).
    pub fn on_write(&self, n: u64, f: Hook) {
        *self.hook.lock().unwrap_or_else(|e| e.into_inner()) = Some((n, f));
    }

    /// Whether the switch has been thrown.
    pub fn is_dead(&self) -> bool {
        self.dead.load(SeqCst)
    }

    /// Device-changing calls that reached the store so far.
    pub fn writes(&self) -> u64 {
        self.writes.load(SeqCst)
    }

    /// Kill now and wait until no call is inside the store any more.
    pub fn kill(&self) {
        self.dead.store(true, SeqCst);
        let t0 = Instant::now();
        while self.in_flight.load(SeqCst) > 0 {
            assert!(
                t0.elapsed() < Duration::from_secs(60),
                "a store call never completed after the kill"
            );
            std::thread::sleep(Duration::from_micros(200));
        }
    }

    fn enter(self: &Arc<Self>, changes_device: bool) -> Result<Pass> {
        // Count first, then look: `kill` sets `dead` first, then waits for the count, so a
        // call either sees `dead` or is waited for.
        self.in_flight.fetch_add(1, SeqCst);
        let pass = Pass(Arc::clone(self));
        if self.dead.load(SeqCst) {
            return Err(killed());
        }
        if changes_device {
            let due = {
                let mut h = self.hook.lock().unwrap_or_else(|e| e.into_inner());
                match h.as_ref() {
                    Some((n, _)) if self.writes.load(SeqCst) >= *n => h.take().map(|(_, f)| f),
                    _ => None,
                }
            };
            if let Some(f) = due {
                f();
            }
            if self.left.load(SeqCst) >= 0 && self.left.fetch_sub(1, SeqCst) == 0 {
                self.dead.store(true, SeqCst);
                return Err(killed());
            }
            self.writes.fetch_add(1, SeqCst);
        }
        Ok(pass)
    }
}

/// A blobstore behind a [`Switch`].
pub struct KillSwitch<S> {
    inner: S,
    switch: Arc<Switch>,
}

impl<S: BlobStore> KillSwitch<S> {
    pub fn new(inner: S, switch: Arc<Switch>) -> Self {
        KillSwitch { inner, switch }
    }
}

/// A channel of a [`KillSwitch`] store.
pub struct KillChannel<C> {
    inner: C,
    switch: Arc<Switch>,
}

/// Pass the call to the store only if the switch allows it; the pass is held until the
/// store's future completes (or is dropped). The decision is taken when the future is made,
/// so the returned future borrows nothing but what the store's own future borrows.
fn gate<T, F: Future<Output = Result<T>>>(
    switch: &Arc<Switch>,
    changes_device: bool,
    call: impl FnOnce() -> F,
) -> impl Future<Output = Result<T>> {
    let pass = switch.enter(changes_device);
    let fut = pass.as_ref().ok().map(|_| call());
    async move {
        let _pass = pass?;
        match fut {
            Some(f) => f.await,
            None => Err(killed()),
        }
    }
}

impl<S: BlobStore> BlobStore for KillSwitch<S> {
    type Blob = S::Blob;
    type Channel = KillChannel<S::Channel>;

    fn io_unit_size(&self) -> u32 {
        self.inner.io_unit_size()
    }
    fn cluster_size(&self) -> u32 {
        self.inner.cluster_size()
    }
    fn md_page_size(&self) -> u32 {
        self.inner.md_page_size()
    }
    fn bstype(&self) -> Bstype {
        self.inner.bstype()
    }
    fn free_clusters(&self) -> u64 {
        self.inner.free_clusters()
    }
    fn total_data_clusters(&self) -> u64 {
        self.inner.total_data_clusters()
    }
    fn super_blob(&self) -> Option<BlobId> {
        self.inner.super_blob()
    }
    fn loaded_clean(&self) -> bool {
        self.inner.loaded_clean()
    }
    fn block_on<F: Future>(&self, f: F) -> F::Output {
        self.inner.block_on(f)
    }
    fn drives_itself(&self) -> bool {
        self.inner.drives_itself()
    }
    fn create(&self, opts: CreateOpts) -> impl Future<Output = Result<BlobId>> + Send {
        gate(&self.switch, true, move || self.inner.create(opts))
    }
    fn open(&self, id: BlobId) -> impl Future<Output = Result<Self::Blob>> + Send {
        gate(&self.switch, false, move || self.inner.open(id))
    }
    fn close(&self, blob: Self::Blob) -> impl Future<Output = Result<()>> + Send {
        gate(&self.switch, true, move || self.inner.close(blob))
    }
    fn delete(&self, id: BlobId) -> impl Future<Output = Result<()>> + Send {
        gate(&self.switch, true, move || self.inner.delete(id))
    }
    fn blob_ids(&self) -> impl Future<Output = Result<Vec<BlobId>>> + Send {
        gate(&self.switch, false, move || self.inner.blob_ids())
    }
    fn set_super(&self, id: BlobId) -> impl Future<Output = Result<()>> + Send {
        gate(&self.switch, true, move || self.inner.set_super(id))
    }
    fn resize(&self, blob: &Self::Blob, clusters: u64) -> impl Future<Output = Result<()>> + Send {
        gate(&self.switch, true, move || {
            self.inner.resize(blob, clusters)
        })
    }
    fn sync_md(&self, blob: &Self::Blob) -> impl Future<Output = Result<()>> + Send {
        gate(&self.switch, true, move || self.inner.sync_md(blob))
    }
    fn set_read_only(&self, blob: &Self::Blob) -> impl Future<Output = Result<()>> + Send {
        gate(&self.switch, false, move || self.inner.set_read_only(blob))
    }
    fn set_xattr(
        &self,
        blob: &Self::Blob,
        name: &str,
        value: &[u8],
    ) -> impl Future<Output = Result<()>> + Send {
        gate(&self.switch, false, move || {
            self.inner.set_xattr(blob, name, value)
        })
    }
    fn remove_xattr(
        &self,
        blob: &Self::Blob,
        name: &str,
    ) -> impl Future<Output = Result<()>> + Send {
        gate(&self.switch, false, move || {
            self.inner.remove_xattr(blob, name)
        })
    }
    fn get_xattr(
        &self,
        blob: &Self::Blob,
        name: &str,
    ) -> impl Future<Output = Result<Option<Vec<u8>>>> + Send {
        gate(&self.switch, false, move || {
            self.inner.get_xattr(blob, name)
        })
    }
    fn xattr_names(&self, blob: &Self::Blob) -> impl Future<Output = Result<Vec<String>>> + Send {
        gate(&self.switch, false, move || self.inner.xattr_names(blob))
    }
    fn channel(&self) -> Result<Self::Channel> {
        let _pass = self.switch.enter(false)?;
        Ok(KillChannel {
            inner: self.inner.channel()?,
            switch: Arc::clone(&self.switch),
        })
    }
    fn unload(&self) -> impl Future<Output = Result<()>> + Send {
        gate(&self.switch, true, move || self.inner.unload())
    }
}

impl<C: IoChannel> IoChannel for KillChannel<C> {
    type Blob = C::Blob;

    fn read_owned(
        &self,
        blob: &Self::Blob,
        offset: u64,
        buf: AlignedBuf,
    ) -> impl Future<Output = (AlignedBuf, Result<()>)> + Send {
        let pass = self.switch.enter(false);
        let fut = match pass {
            Ok(_) => Ok(self.inner.read_owned(blob, offset, buf)),
            Err(_) => Err(buf),
        };
        async move {
            let _pass = pass;
            match fut {
                Ok(f) => f.await,
                Err(buf) => (buf, Err(killed())),
            }
        }
    }

    fn read(
        &self,
        blob: &Self::Blob,
        offset: u64,
        buf: &mut [u8],
    ) -> impl Future<Output = Result<()>> + Send {
        gate(&self.switch, false, move || {
            self.inner.read(blob, offset, buf)
        })
    }
    fn write(
        &self,
        blob: &Self::Blob,
        offset: u64,
        buf: &[u8],
    ) -> impl Future<Output = Result<()>> + Send {
        gate(&self.switch, true, move || {
            self.inner.write(blob, offset, buf)
        })
    }
    fn submit(
        &self,
        reqs: &mut [BlobIo<'_, Self::Blob>],
    ) -> impl Future<Output = Result<()>> + Send {
        let writes = reqs.iter().any(|r| matches!(r, BlobIo::Write { .. }));
        gate(&self.switch, writes, move || self.inner.submit(reqs))
    }
    fn unmap(
        &self,
        blob: &Self::Blob,
        offset: u64,
        len: u64,
    ) -> impl Future<Output = Result<()>> + Send {
        gate(&self.switch, true, move || {
            self.inner.unmap(blob, offset, len)
        })
    }
    fn write_zeroes(
        &self,
        blob: &Self::Blob,
        offset: u64,
        len: u64,
    ) -> impl Future<Output = Result<()>> + Send {
        gate(&self.switch, true, move || {
            self.inner.write_zeroes(blob, offset, len)
        })
    }
    fn flush(&self) -> impl Future<Output = Result<()>> + Send {
        gate(&self.switch, true, move || self.inner.flush())
    }
}
