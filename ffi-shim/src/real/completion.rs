//! Completion records: the owned, reference-counted state behind every SPDK callback.
//!
//! A [`Record`] lives in an `Arc`. The submitting side keeps one reference (inside the future
//! it awaits) and gives one more to SPDK as `cb_arg` through [`Record::into_cb_arg`]. The
//! callback ([`complete_trampoline`]) takes that reference back, stores the result and wakes
//! the waiting task. Whatever SPDK may still touch until the callback — the DMA buffer of an
//! I/O, xattr arrays, the channel — is parked in the record, so a future dropped early frees
//! none of it: the callback's reference keeps it alive and its drop frees it afterwards.

use std::any::Any;
use std::ffi::{c_int, c_void};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use super::channel::DmaBuf;

/// Records handed to SPDK and not yet called back. While non-zero the reactor does not sleep.
pub(crate) static IN_FLIGHT: AtomicUsize = AtomicUsize::new(0);

/// What a callback reported: SPDK's `bserrno`/`rc`, and an id/count or a handle if any.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Done {
    pub rc: i32,
    pub value: u64,
    pub ptr: usize,
}

#[derive(Default)]
struct State {
    done: Option<Done>,
    waker: Option<Waker>,
}

/// One outstanding SPDK operation.
#[derive(Default)]
pub(crate) struct Record {
    state: Mutex<State>,
    dma: Mutex<Option<DmaBuf>>,
    keep: Mutex<Option<Box<dyn Any + Send>>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding one of these locks leaves plain data behind; keep going.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Record {
    pub fn new() -> Arc<Record> {
        Arc::new(Record::default())
    }

    /// A record owning `dma` until the callback has run.
    pub fn with_dma(dma: DmaBuf) -> Arc<Record> {
        let r = Record::default();
        *lock(&r.dma) = Some(dma);
        Arc::new(r)
    }

    /// Keep `v` alive until the callback has run (and the record is dropped).
    pub fn keep(&self, v: Box<dyn Any + Send>) {
        *lock(&self.keep) = Some(v);
    }

    /// Address of the DMA buffer (null without one). Valid while the record lives.
    pub fn dma_ptr(&self) -> *mut c_void {
        lock(&self.dma)
            .as_ref()
            .map_or(std::ptr::null_mut(), |d| d.as_ptr())
    }

    /// Take the DMA buffer back (after completion: SPDK no longer uses it).
    pub fn take_dma(&self) -> Option<DmaBuf> {
        lock(&self.dma).take()
    }

    /// Run `f` over the DMA buffer's bytes (after completion, for reads).
    pub fn with_dma_bytes<R>(&self, f: impl FnOnce(&[u8]) -> R) -> Option<R> {
        lock(&self.dma).as_ref().map(|d| f(d.as_slice()))
    }

    /// The reference SPDK owns until it calls back. Exactly one callback must follow (or
    /// [`Record::complete_now`] must be called instead, without handing the pointer over).
    pub fn into_cb_arg(self: &Arc<Record>) -> *mut c_void {
        IN_FLIGHT.fetch_add(1, Ordering::Relaxed);
        Arc::into_raw(Arc::clone(self)) as *mut c_void
    }

    /// Complete without SPDK (the call was refused before it reached SPDK).
    pub fn complete_now(&self, rc: i32) {
        self.finish(Done {
            rc,
            value: 0,
            ptr: 0,
        });
    }

    fn finish(&self, done: Done) {
        let waker = {
            let mut st = lock(&self.state);
            if st.done.is_some() {
                log::error!("ffi-shim: an SPDK callback ran twice; ignoring the second");
                return;
            }
            st.done = Some(done);
            st.waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
    }

    /// The result, once there is one.
    pub fn wait(self: &Arc<Record>) -> Wait {
        Wait(Arc::clone(self))
    }
}

/// Future of a record's completion.
pub(crate) struct Wait(Arc<Record>);

impl Future for Wait {
    type Output = Done;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Done> {
        let mut st = lock(&self.0.state);
        match st.done {
            Some(d) => Poll::Ready(d),
            None => {
                let replace = st.waker.as_ref().is_none_or(|w| !w.will_wake(cx.waker()));
                if replace {
                    st.waker = Some(cx.waker().clone());
                }
                Poll::Pending
            }
        }
    }
}

/// Called by every C trampoline, on the reactor, exactly once per `cb_arg`.
///
/// # Safety
/// `rec` must come from [`Record::into_cb_arg`] and not have been passed here before.
pub(crate) unsafe extern "C" fn complete_trampoline(
    rec: *mut c_void,
    rc: c_int,
    value: u64,
    ptr: *mut c_void,
) {
    if rec.is_null() {
        return;
    }
    // SAFETY: per this function's contract `rec` is the raw form of an `Arc<Record>` whose
    // reference was given to SPDK and is returned to us exactly once, here.
    let rec = unsafe { Arc::from_raw(rec as *const Record) };
    IN_FLIGHT.fetch_sub(1, Ordering::Relaxed);
    rec.finish(Done {
        rc,
        value,
        ptr: ptr as usize,
    });
    // Dropping `rec` here may free the DMA buffer and whatever was kept, if the future has
    // gone away already.
}
