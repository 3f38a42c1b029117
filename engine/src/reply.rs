//! A one-shot reply slot from a shard thread to its caller: blocking (short spin, then park)
//! or awaited as a future.
//!
//! A caller that runs its own request (it found the shard idle, see `shard.rs`) needs no slot:
//! its [`Sender::caller`] leaves the outcome in a thread-local that [`take_caller`] reads once
//! the group is done, with no allocation and no lock.

use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use parking_lot::{Condvar, Mutex};

use crate::error::{Error, Result};

struct Slot<T> {
    value: Option<Result<T>>,
    waker: Option<Waker>,
    sender_gone: bool,
}

struct Shared<T> {
    slot: Mutex<Slot<T>>,
    cv: Condvar,
}

/// The sending half, held by the shard. `None`: the caller runs the request itself.
pub struct Sender<T>(Option<Arc<Shared<T>>>);

thread_local! {
    /// The outcome of the request this thread runs for itself.
    static CALLER: RefCell<Option<Result<()>>> = const { RefCell::new(None) };
}

impl Sender<()> {
    /// The reply of a request run by the thread that made it: never queued, never sent across
    /// threads.
    pub fn caller() -> Self {
        CALLER.with(|c| c.borrow_mut().take());
        Sender(None)
    }
}

/// The outcome [`Sender::caller`]'s request left on this thread (`Closed` if it got none).
pub fn take_caller() -> Result<()> {
    CALLER
        .with(|c| c.borrow_mut().take())
        .unwrap_or(Err(Error::Closed))
}

/// The receiving half, held by the caller.
pub struct Receiver<T>(Arc<Shared<T>>);

/// A connected pair.
pub fn channel<T>() -> (Sender<T>, Receiver<T>) {
    let s = Arc::new(Shared {
        slot: Mutex::new(Slot {
            value: None,
            waker: None,
            sender_gone: false,
        }),
        cv: Condvar::new(),
    });
    (Sender(Some(s.clone())), Receiver(s))
}

/// What a reply may carry; `()` is also what a caller running its own request gets back.
pub trait Outcome: Sized {
    /// Leave the outcome of a slot-less ([`Sender::caller`]) request for [`take_caller`].
    fn leave(v: Result<Self>);
}

impl Outcome for () {
    fn leave(v: Result<()>) {
        CALLER.with(|c| *c.borrow_mut() = Some(v));
    }
}

impl<T: Outcome> Sender<T> {
    pub fn send(mut self, v: Result<T>) {
        let Some(shared) = self.0.take() else {
            T::leave(v);
            return;
        };
        let mut g = shared.slot.lock();
        g.value = Some(v);
        if let Some(w) = g.waker.take() {
            w.wake();
        }
        drop(g);
        shared.cv.notify_one();
    }
}

impl<T> Drop for Sender<T> {
    fn drop(&mut self) {
        let Some(shared) = self.0.take() else {
            return;
        };
        let mut g = shared.slot.lock();
        g.sender_gone = true;
        if let Some(w) = g.waker.take() {
            w.wake();
        }
        drop(g);
        shared.cv.notify_one();
    }
}

impl<T> Receiver<T> {
    /// Block until the reply arrives. A shard that went away without replying is `Closed`.
    pub fn wait(self) -> Result<T> {
        // A short spin catches the common case of a shard that is already working on our
        // request; parking costs a futex round trip each way.
        for _ in 0..200 {
            if let Some(mut g) = self.0.slot.try_lock() {
                if let Some(v) = g.value.take() {
                    return v;
                }
                if g.sender_gone {
                    return Err(Error::Closed);
                }
            }
            std::hint::spin_loop();
        }
        let mut g = self.0.slot.lock();
        loop {
            if let Some(v) = g.value.take() {
                return v;
            }
            if g.sender_gone {
                return Err(Error::Closed);
            }
            self.0.cv.wait(&mut g);
        }
    }
}

impl<T> Future for Receiver<T> {
    type Output = Result<T>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<T>> {
        let mut g = self.0.slot.lock();
        if let Some(v) = g.value.take() {
            return Poll::Ready(v);
        }
        if g.sender_gone {
            return Poll::Ready(Err(Error::Closed));
        }
        g.waker = Some(cx.waker().clone());
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_caller_running_its_own_request_gets_its_outcome_without_a_slot() {
        Sender::caller().send(Err(Error::Full));
        assert!(matches!(take_caller(), Err(Error::Full)));
        Sender::caller().send(Ok(()));
        assert!(take_caller().is_ok());
        // Nothing left, or a sender dropped unsent: the shard went away.
        assert!(matches!(take_caller(), Err(Error::Closed)));
        drop(Sender::caller());
        assert!(matches!(take_caller(), Err(Error::Closed)));
    }

    #[test]
    fn delivers_blocking_and_async_and_reports_a_dropped_sender() {
        let (s, r) = channel::<()>();
        std::thread::spawn(move || s.send(Ok(())));
        r.wait().unwrap();
        let (s, r) = channel::<()>();
        std::thread::spawn(move || s.send(Err(Error::Full)));
        assert!(matches!(pollster::block_on(r), Err(Error::Full)));
        let (s, r) = channel::<()>();
        drop(s);
        assert!(matches!(r.wait(), Err(Error::Closed)));
    }
}
