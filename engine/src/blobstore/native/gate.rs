//! A tiny async mutual-exclusion gate: the native blobstore's "metadata thread". Metadata
//! operations hold it across their device I/O so they run one at a time, in arrival order
//! of acquisition; data I/O never takes it except to allocate a thin cluster.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use parking_lot::Mutex;

#[derive(Default)]
pub struct Gate {
    state: Mutex<GateState>,
}

#[derive(Default)]
struct GateState {
    locked: bool,
    waiters: VecDeque<Waker>,
}

/// Held while a metadata operation runs; releases on drop.
pub struct GateGuard<'a> {
    gate: &'a Gate,
}

pub struct Acquire<'a> {
    gate: &'a Gate,
}

impl Gate {
    pub fn lock(&self) -> Acquire<'_> {
        Acquire { gate: self }
    }
}

impl<'a> Future for Acquire<'a> {
    type Output = GateGuard<'a>;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<GateGuard<'a>> {
        let mut s = self.gate.state.lock();
        if !s.locked {
            s.locked = true;
            Poll::Ready(GateGuard { gate: self.gate })
        } else {
            if !s.waiters.iter().any(|w| w.will_wake(cx.waker())) {
                s.waiters.push_back(cx.waker().clone());
            }
            Poll::Pending
        }
    }
}

impl Drop for GateGuard<'_> {
    fn drop(&mut self) {
        let waiters: Vec<Waker> = {
            let mut s = self.gate.state.lock();
            s.locked = false;
            s.waiters.drain(..).collect()
        };
        // Wake everyone; the losers re-queue. Simple and starvation-free enough for md ops.
        for w in waiters {
            w.wake();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn serializes_threads() {
        let g = Arc::new(Gate::default());
        let n = Arc::new(Mutex::new(0u32));
        let hs: Vec<_> = (0..4)
            .map(|_| {
                let g = g.clone();
                let n = n.clone();
                std::thread::spawn(move || {
                    for _ in 0..200 {
                        let _k = pollster::block_on(g.lock());
                        let v = *n.lock();
                        std::thread::yield_now();
                        *n.lock() = v + 1;
                    }
                })
            })
            .collect();
        for h in hs {
            h.join().unwrap();
        }
        assert_eq!(*n.lock(), 800);
    }
}
