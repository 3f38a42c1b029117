//! A one-shot reply slot from a shard thread to its caller: blocking (short spin, then park)
//! or awaited as a future.

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

/// The sending half, held by the shard.
pub struct Sender<T>(Arc<Shared<T>>);

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
    (Sender(s.clone()), Receiver(s))
}

impl<T> Sender<T> {
    pub fn send(self, v: Result<T>) {
        let mut g = self.0.slot.lock();
        g.value = Some(v);
        if let Some(w) = g.waker.take() {
            w.wake();
        }
        drop(g);
        self.0.cv.notify_one();
    }
}

impl<T> Drop for Sender<T> {
    fn drop(&mut self) {
        let mut g = self.0.slot.lock();
        g.sender_gone = true;
        if let Some(w) = g.waker.take() {
            w.wake();
        }
        drop(g);
        self.0.cv.notify_one();
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
    fn delivers_blocking_and_async_and_reports_a_dropped_sender() {
        let (s, r) = channel::<u32>();
        std::thread::spawn(move || s.send(Ok(5)));
        assert_eq!(r.wait().unwrap(), 5);
        let (s, r) = channel::<u32>();
        std::thread::spawn(move || s.send(Ok(6)));
        assert_eq!(pollster::block_on(r).unwrap(), 6);
        let (s, r) = channel::<u32>();
        drop(s);
        assert!(matches!(r.wait(), Err(Error::Closed)));
    }
}
