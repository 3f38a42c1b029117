//! Reads that complete without a thread waiting for them: one io_uring ring per file device,
//! owned by a completion thread.
//!
//! The per-thread rings of `file.rs` serve blocking callers: a caller submits and waits in the
//! kernel for its own completions. An async caller must not block its executor's thread, so its
//! reads go here instead: [`Reactor::read`] queues the read and returns a future; the reactor
//! thread pushes queued reads onto its ring, waits for any completion, and wakes the future
//! whose read completed. Any number of reads are in flight at once, from one caller thread or
//! many.
//!
//! **Buffers are owned.** A read takes its [`AlignedBuf`] by value and gives it back with the
//! result; until the kernel is done with it the buffer belongs to the reactor. Dropping a
//! future early is therefore safe: the read still completes into memory the reactor owns, and
//! the buffer is freed then.
//!
//! **Waking the reactor.** The thread sleeps in `io_uring_enter` waiting for a completion. A
//! read of an `eventfd` is kept armed on the ring; a new request writes to that `eventfd`, so its
//! completion wakes the thread, which then drains the request queue.

use std::collections::HashMap;
use std::fs::File;
use std::future::Future;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use crossbeam_channel::{Receiver, Sender};
use io_uring::{opcode, types, IoUring};
use parking_lot::Mutex;

use super::AlignedBuf;

/// Entries of a reactor's ring.
const ENTRIES: u32 = 256;
/// `user_data` of the eventfd read.
const WAKE: u64 = u64::MAX;

/// What a completed read hands back: the buffer and the outcome.
pub type Completion = (AlignedBuf, io::Result<()>);

#[derive(Default)]
struct Slot {
    done: Option<Completion>,
    waker: Option<Waker>,
}

/// A read's meeting point between its future and the reactor thread.
#[derive(Default)]
struct Shared {
    slot: Mutex<Slot>,
}

impl Shared {
    fn complete(&self, c: Completion) {
        let waker = {
            let mut s = self.slot.lock();
            s.done = Some(c);
            s.waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
    }
}

struct Request {
    offset: u64,
    buf: AlignedBuf,
    shared: Arc<Shared>,
}

/// A read in flight: its buffer, how much of it is filled, and whom to tell.
struct InFlight {
    offset: u64,
    buf: AlignedBuf,
    done: usize,
    shared: Arc<Shared>,
}

/// A completion thread with its own ring, reading one file.
pub struct Reactor {
    tx: Sender<Request>,
    wake: File,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl std::fmt::Debug for Reactor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Reactor")
    }
}

impl Reactor {
    /// A reactor reading `file` (a duplicate of the device's descriptor, so in-flight reads
    /// never outlive the descriptor they use).
    pub fn start(file: File) -> io::Result<Reactor> {
        let ring = IoUring::new(ENTRIES)?;
        // SAFETY: eventfd takes no pointers; a negative return is handled below.
        let efd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
        if efd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `efd` is a fresh descriptor that nothing else owns.
        let wake = File::from(unsafe { OwnedFd::from_raw_fd(efd) });
        let wake_r = wake.try_clone()?;
        let (tx, rx) = crossbeam_channel::unbounded();
        let stop = Arc::new(AtomicBool::new(false));
        let stop_r = stop.clone();
        let thread = std::thread::Builder::new()
            .name("blobcask-reactor".into())
            .spawn(move || Loop::new(ring, file, wake_r, rx, stop_r).run())?;
        Ok(Reactor {
            tx,
            wake,
            stop,
            thread: Some(thread),
        })
    }

    /// Read `buf.len()` bytes at `offset` into `buf`; the future gives the buffer back.
    pub fn read(&self, offset: u64, buf: AlignedBuf) -> ReadFuture<'_> {
        ReadFuture {
            reactor: self,
            request: Some((offset, buf)),
            shared: Arc::new(Shared::default()),
        }
    }

    fn nudge(&self) {
        let one = 1u64.to_ne_bytes();
        // SAFETY: writes 8 bytes from a live local array to our own eventfd.
        let _ = unsafe { libc::write(self.wake.as_raw_fd(), one.as_ptr().cast(), 8) };
    }
}

impl Drop for Reactor {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        self.nudge();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A read queued on a [`Reactor`]; resolves to the buffer and the outcome.
pub struct ReadFuture<'a> {
    reactor: &'a Reactor,
    request: Option<(u64, AlignedBuf)>,
    shared: Arc<Shared>,
}

impl Future for ReadFuture<'_> {
    type Output = Completion;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Completion> {
        {
            let mut s = self.shared.slot.lock();
            if let Some(c) = s.done.take() {
                return Poll::Ready(c);
            }
            s.waker = Some(cx.waker().clone());
        }
        if let Some((offset, buf)) = self.request.take() {
            let shared = self.shared.clone();
            let req = Request {
                offset,
                buf,
                shared,
            };
            if let Err(e) = self.reactor.tx.send(req) {
                let r = e.into_inner();
                let gone = io::Error::new(io::ErrorKind::BrokenPipe, "the reactor has stopped");
                return Poll::Ready((r.buf, Err(gone)));
            }
            self.reactor.nudge();
        }
        Poll::Pending
    }
}

/// The reactor thread's state.
struct Loop {
    ring: IoUring,
    file: File,
    wake: File,
    wake_buf: Box<[u8; 8]>,
    rx: Receiver<Request>,
    stop: Arc<AtomicBool>,
    inflight: HashMap<u64, InFlight>,
    next_id: u64,
    /// Requests that did not fit the ring yet.
    backlog: Vec<InFlight>,
}

impl Loop {
    fn new(
        ring: IoUring,
        file: File,
        wake: File,
        rx: Receiver<Request>,
        stop: Arc<AtomicBool>,
    ) -> Loop {
        Loop {
            ring,
            file,
            wake,
            wake_buf: Box::new([0; 8]),
            rx,
            stop,
            inflight: HashMap::new(),
            next_id: 0,
            backlog: Vec::new(),
        }
    }

    fn run(mut self) {
        if self.arm_wake().is_err() {
            return self.fail_all("cannot arm the reactor's eventfd");
        }
        loop {
            while let Ok(r) = self.rx.try_recv() {
                self.backlog.push(InFlight {
                    offset: r.offset,
                    buf: r.buf,
                    done: 0,
                    shared: r.shared,
                });
            }
            self.push_backlog();
            if self.stop.load(Ordering::Acquire) && self.inflight.is_empty() {
                // The eventfd read stays in the ring; dropping the ring cancels it, and its
                // buffer (`wake_buf`) lives until then.
                return;
            }
            match self.ring.submit_and_wait(1) {
                Ok(_) => {}
                Err(e) if matches!(e.raw_os_error(), Some(libc::EINTR | libc::EBUSY)) => {}
                Err(e) => {
                    log::error!("blobcask: reactor io_uring_enter failed: {e}");
                    std::thread::sleep(std::time::Duration::from_millis(1));
                }
            }
            self.reap();
        }
    }

    fn arm_wake(&mut self) -> io::Result<()> {
        let sqe = opcode::Read::new(
            types::Fd(self.wake.as_raw_fd()),
            self.wake_buf.as_mut_ptr(),
            8,
        )
        .build()
        .user_data(WAKE);
        // SAFETY: `wake_buf` is boxed and lives as long as the ring (both fields of `self`).
        unsafe { self.ring.submission().push(&sqe) }
            .map_err(|_| io::Error::other("reactor ring full"))
    }

    /// Push waiting reads while the ring has room.
    fn push_backlog(&mut self) {
        while self.inflight.len() < ENTRIES as usize - 1 {
            let Some(op) = self.backlog.pop() else { return };
            let id = self.next_id;
            let len = op.buf.len() - op.done;
            // SAFETY: the pointer stays valid: `op` (owning the buffer) is kept in `inflight`
            // until its completion is reaped.
            let ptr = unsafe { op.buf.as_ptr().add(op.done).cast_mut() };
            let sqe = opcode::Read::new(types::Fd(self.file.as_raw_fd()), ptr, len as u32)
                .offset(op.offset + op.done as u64)
                .build()
                .user_data(id);
            // SAFETY: the buffer is owned by `op`, which `inflight` keeps until completion.
            if unsafe { self.ring.submission().push(&sqe) }.is_err() {
                self.backlog.push(op);
                return;
            }
            self.next_id += 1;
            self.inflight.insert(id, op);
        }
    }

    fn reap(&mut self) {
        let done: Vec<(u64, i32)> = self
            .ring
            .completion()
            .map(|c| (c.user_data(), c.result()))
            .collect();
        for (id, res) in done {
            if id == WAKE {
                if self.arm_wake().is_err() {
                    log::error!("blobcask: reactor cannot re-arm its eventfd");
                }
                continue;
            }
            let Some(mut op) = self.inflight.remove(&id) else {
                continue;
            };
            match res {
                n if n > 0 => {
                    op.done += n as usize;
                    if op.done < op.buf.len() {
                        // A short read: ask for the rest.
                        self.backlog.push(op);
                    } else {
                        op.shared.complete((op.buf, Ok(())));
                    }
                }
                0 => {
                    let e = io::Error::new(io::ErrorKind::UnexpectedEof, "read past end of file");
                    op.shared.complete((op.buf, Err(e)));
                }
                n if -n == libc::EINTR || -n == libc::EAGAIN => self.backlog.push(op),
                n => op
                    .shared
                    .complete((op.buf, Err(io::Error::from_raw_os_error(-n)))),
            }
        }
    }

    fn fail_all(self, why: &str) {
        for r in self.rx.try_iter() {
            r.shared
                .complete((r.buf, Err(io::Error::other(why.to_string()))));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn image(pages: usize) -> (tempfile::NamedTempFile, Vec<u8>) {
        let data: Vec<u8> = (0..pages * 4096).map(|i| (i * 7 % 251) as u8).collect();
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(&data).unwrap();
        f.flush().unwrap();
        (f, data)
    }

    #[test]
    fn many_reads_in_flight_from_one_thread_complete_with_the_right_bytes() {
        let (f, data) = image(64);
        let Ok(r) = Reactor::start(f.reopen().unwrap()) else {
            eprintln!("note: io_uring unavailable, reactor test left out");
            return;
        };
        let futs: Vec<_> = (0..64u64)
            .rev()
            .map(|p| r.read(p * 4096, AlignedBuf::zeroed(4096)))
            .collect();
        let outs = pollster::block_on(async {
            let mut outs = Vec::new();
            for f in futs {
                outs.push(f.await);
            }
            outs
        });
        for (i, (buf, res)) in outs.into_iter().enumerate() {
            res.unwrap();
            let p = 63 - i;
            assert_eq!(&buf[..], &data[p * 4096..(p + 1) * 4096], "page {p}");
        }
    }

    #[test]
    fn a_read_past_the_end_fails_and_a_dropped_future_is_harmless() {
        let (f, _) = image(2);
        let Ok(r) = Reactor::start(f.reopen().unwrap()) else {
            return;
        };
        let (_, res) = pollster::block_on(r.read(8 * 4096, AlignedBuf::zeroed(4096)));
        assert!(res.is_err());
        // Polled once (queued), then dropped while in flight.
        let mut fut = Box::pin(r.read(0, AlignedBuf::zeroed(4096)));
        let waker = std::task::Waker::noop();
        let _ = fut.as_mut().poll(&mut Context::from_waker(waker));
        drop(fut);
        let (buf, res) = pollster::block_on(r.read(4096, AlignedBuf::zeroed(4096)));
        res.unwrap();
        assert_eq!(buf.len(), 4096);
        drop(r);
    }
}
