//! Flush combining: one device flush serves every caller that needs one at about the same time.
//!
//! A device flush (`fdatasync`, an NVMe flush) makes durable every write that completed before
//! it *started*. Shards, merge, metadata and chunk writers each need their own writes durable.
//! A caller takes a **ticket** once its writes completed — the number the next flush to start
//! will get — and returns once a flush numbered at or above it has finished:
//!
//! - a flush numbered at or above the ticket already runs (another caller started it after
//!   this one's writes): the caller shares it and issues none;
//! - else, if fewer than the combiner's limit run, the caller runs the next flush itself;
//! - else it waits and shares the next one a waiter starts (every waiter that arrived while
//!   the limit was reached shares it).
//!
//! A limit of 1 runs one flush at a time and shares the most; the default lets flushes overlap,
//! because Linux already merges concurrent flushes of a block device (see [`DEFAULT_LIMIT`]).
//! Callers that split "write" and "wait for durability" (a shard's pipelined group commit:
//! ticket under the shard's lock, wait after releasing it) share the most: every shard whose
//! group was written before a flush started rides on it.
//!
//! A failed flush fails every caller it served. A caller whose ticket is at or below a failed
//! flush's number gets the error even if a later flush succeeded for it (after a failed
//! `fdatasync` the kernel may report success while data written before it is lost).

use std::future::Future;
use std::io;

use parking_lot::{Condvar, Mutex};

use super::{Error, Result};

/// Serialises and shares the flushes of one device (see the module doc).
#[derive(Debug)]
pub struct FlushCombiner {
    st: Mutex<State>,
    done: Condvar,
    /// Flushes allowed to run at once.
    limit: usize,
}

impl Default for FlushCombiner {
    fn default() -> Self {
        FlushCombiner::with_limit(DEFAULT_LIMIT)
    }
}

/// Device flushes of one device in flight at once by default. Linux merges concurrent
/// flushes of a block device into one device command by itself, and on an idle-ish 2-core VM
/// (ext4 image file, `overwrite --sync=1` with 8 threads) running them one at a time was
/// 2-3x slower than letting them overlap (`benches/RESULTS.md`, "Shared flush"); the bound
/// only keeps a crowd of writers from each entering `fdatasync`.
pub const DEFAULT_LIMIT: usize = 16;

#[derive(Debug, Default)]
struct State {
    /// Flushes started so far; flush `n` is the `n`-th.
    started: u64,
    /// The highest-numbered flush that has finished (they may finish out of order).
    finished: u64,
    running: usize,
    /// The last flush that failed: its number and a copy of its error for those it served.
    failed: Option<(u64, FailedFlush)>,
    /// Device flushes issued, for tests and stats.
    issued: u64,
}

#[derive(Debug)]
struct FailedFlush {
    injected: bool,
    os: Option<i32>,
    kind: io::ErrorKind,
    msg: String,
}

impl FailedFlush {
    fn of(e: &Error) -> FailedFlush {
        let src = e.io_error();
        FailedFlush {
            injected: matches!(e, Error::Injected(_)),
            os: src.and_then(io::Error::raw_os_error),
            kind: src.map_or(io::ErrorKind::Other, io::Error::kind),
            msg: e.to_string(),
        }
    }

    /// A copy of the error for a caller that shared the failed flush (same variant for an
    /// injected fault, same errno for an OS error).
    fn error(&self, n: u64) -> Error {
        let source = match self.os {
            Some(code) => io::Error::from_raw_os_error(code),
            None => io::Error::new(self.kind, self.msg.clone()),
        };
        if self.injected {
            return Error::Injected(source);
        }
        Error::Os {
            context: format!("shared device flush #{n}: {}", self.msg),
            source,
        }
    }
}

/// What `FlushCombiner::join` decided.
enum Turn {
    /// The ticket's flush finished, with this outcome.
    Done(Result<()>),
    /// No flush runs: the caller runs flush number `.0`.
    Lead(u64),
}

impl FlushCombiner {
    pub fn new() -> FlushCombiner {
        FlushCombiner::default()
    }

    /// A combiner that lets up to `limit` (at least 1) device flushes run at once: a caller
    /// finding fewer running starts its own; one finding `limit` running waits for a flush
    /// that starts after it arrived (and shares it).
    pub fn with_limit(limit: usize) -> FlushCombiner {
        FlushCombiner {
            st: Mutex::default(),
            done: Condvar::new(),
            limit: limit.max(1),
        }
    }

    /// The number of the first flush not started yet: it covers every write completed now.
    pub fn ticket(&self) -> u64 {
        self.st.lock().started + 1
    }

    /// Device flushes issued so far.
    pub fn issued(&self) -> u64 {
        self.st.lock().issued
    }

    /// Flush so that every write completed before this call is durable, sharing the device
    /// flush with concurrent callers. `flush` is the device's own flush.
    pub async fn flush<F, Fut>(&self, flush: F) -> Result<()>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<()>>,
    {
        let t = self.ticket();
        self.wait(t, flush).await
    }

    /// Return once flush number `ticket` (from [`FlushCombiner::ticket`]) has finished,
    /// running it with `flush` if no flush is running. Blocks the calling thread while
    /// another caller's flush runs.
    pub async fn wait<F, Fut>(&self, ticket: u64, flush: F) -> Result<()>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<()>>,
    {
        let n = match self.join(ticket) {
            Turn::Done(r) => return r,
            Turn::Lead(n) => n,
        };
        let mut lead = Lead {
            c: self,
            n,
            done: false,
        };
        let r = flush().await;
        lead.finish(r.as_ref().err());
        r
    }

    /// Wait for `ticket`'s flush, or take the lead when none runs.
    fn join(&self, ticket: u64) -> Turn {
        let mut st = self.st.lock();
        loop {
            if st.finished >= ticket {
                return Turn::Done(match &st.failed {
                    Some((n, f)) if *n >= ticket => Err(f.error(*n)),
                    _ => Ok(()),
                });
            }
            if st.started >= ticket {
                // A flush numbered `ticket` or later runs: it started after the ticket was
                // taken, so it covers the caller; share it rather than start another.
                self.done.wait(&mut st);
                continue;
            }
            if st.running < self.limit {
                // `started + 1` is `ticket`: this flush starts after the ticket.
                st.started += 1;
                st.running += 1;
                st.issued += 1;
                return Turn::Lead(st.started);
            }
            self.done.wait(&mut st);
        }
    }
}

/// The running flush; ends it even if its future is dropped half way.
struct Lead<'a> {
    c: &'a FlushCombiner,
    n: u64,
    done: bool,
}

impl Lead<'_> {
    fn finish(&mut self, err: Option<&Error>) {
        let mut st = self.c.st.lock();
        st.running -= 1;
        st.finished = st.finished.max(self.n);
        if let Some(e) = err {
            if st.failed.as_ref().is_none_or(|(n, _)| *n < self.n) {
                st.failed = Some((self.n, FailedFlush::of(e)));
            }
        }
        self.done = true;
        drop(st);
        self.c.done.notify_all();
    }
}

impl Drop for Lead<'_> {
    fn drop(&mut self) {
        if !self.done {
            // Abandoned: it counts as failed for whoever waited on it.
            let e = Error::Os {
                context: "device flush abandoned".into(),
                source: io::Error::other("the flushing future was dropped"),
            };
            self.finish(Some(&e));
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::{Arc, Barrier, Mutex as StdMutex};
    use std::time::Duration;

    use super::*;

    /// N callers at once: fewer than N device flushes, and each caller returns only after a
    /// flush that began after its write completed.
    #[test]
    fn concurrent_callers_share_flushes_that_began_after_their_writes() {
        const N: usize = 8;
        let c = Arc::new(FlushCombiner::with_limit(1));
        // A logical clock: every event takes the next tick.
        let clock = Arc::new(AtomicU64::new(0));
        // (start tick, end tick) of every device flush.
        let flushes = Arc::new(StdMutex::new(Vec::<(u64, u64)>::new()));
        let barrier = Arc::new(Barrier::new(N));
        let threads: Vec<_> = (0..N)
            .map(|i| {
                let (c, clock, flushes, barrier) =
                    (c.clone(), clock.clone(), flushes.clone(), barrier.clone());
                std::thread::spawn(move || {
                    barrier.wait();
                    for round in 0..5 {
                        // Stagger the writers a little so some arrive mid-flush.
                        std::thread::sleep(Duration::from_micros(
                            ((i * 7 + round) % 5) as u64 * 300,
                        ));
                        let wrote = clock.fetch_add(1, Ordering::SeqCst);
                        let r = pollster::block_on(c.flush(|| async {
                            let start = clock.fetch_add(1, Ordering::SeqCst);
                            std::thread::sleep(Duration::from_millis(3));
                            let end = clock.fetch_add(1, Ordering::SeqCst);
                            flushes.lock().unwrap().push((start, end));
                            Ok(())
                        }));
                        r.unwrap();
                        let back = clock.fetch_add(1, Ordering::SeqCst);
                        let f = flushes.lock().unwrap();
                        assert!(
                            f.iter().any(|&(s, e)| s > wrote && e < back),
                            "caller {i}: no flush began after its write at {wrote} and ended \
                             before it returned at {back}: {f:?}"
                        );
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let n = flushes.lock().unwrap().len();
        assert_eq!(c.issued(), n as u64);
        assert!(n < N * 5, "{n} flushes for {} requests: none shared", N * 5);
        // No two flushes overlapped.
        let mut f = flushes.lock().unwrap().clone();
        f.sort_unstable();
        assert!(f.windows(2).all(|w| w[0].1 < w[1].0), "{f:?}");
    }

    /// Callers whose tickets were taken before a flush started share it; a caller whose
    /// ticket came after that flush started runs its own beside it (under the limit).
    #[test]
    fn a_running_flush_serves_every_earlier_ticket() {
        let c = Arc::new(FlushCombiner::new());
        let (t1, t2) = (c.ticket(), c.ticket());
        assert_eq!(t1, t2);
        let started = Arc::new(Barrier::new(2));
        let a = {
            let (c, started) = (c.clone(), started.clone());
            std::thread::spawn(move || {
                pollster::block_on(c.wait(t1, || async {
                    started.wait();
                    std::thread::sleep(Duration::from_millis(30));
                    Ok(())
                }))
            })
        };
        started.wait();
        // Shares the running flush: its own closure must not run.
        pollster::block_on(c.wait(t2, || async { panic!("a second flush for one ticket") }))
            .unwrap();
        assert_eq!(c.issued(), 1);
        // A ticket taken now needs a flush that starts later: it runs one beside the first.
        let t3 = c.ticket();
        assert!(t3 > t1);
        let mut ran = false;
        pollster::block_on(c.wait(t3, || async {
            ran = true;
            Ok(())
        }))
        .unwrap();
        assert!(ran);
        a.join().unwrap().unwrap();
        assert_eq!(c.issued(), 2);
    }

    /// A lone caller always runs its own flush (no flush is skipped).
    #[test]
    fn a_lone_caller_flushes_every_time() {
        let c = FlushCombiner::new();
        let mut calls = 0;
        for _ in 0..3 {
            pollster::block_on(c.flush(|| async {
                calls += 1;
                Ok(())
            }))
            .unwrap();
        }
        assert_eq!(calls, 3);
        assert_eq!(c.issued(), 3);
    }

    /// A failed flush fails its leader and everyone who shared it, with the same errno; a
    /// later flush succeeds again.
    #[test]
    fn a_failed_flush_fails_everyone_it_served() {
        let c = Arc::new(FlushCombiner::new());
        let t = c.ticket();
        let started = Arc::new(Barrier::new(2));
        let release = Arc::new(Barrier::new(2));
        let leader = {
            let (c, started, release) = (c.clone(), started.clone(), release.clone());
            std::thread::spawn(move || {
                pollster::block_on(c.wait(t, || async {
                    started.wait();
                    release.wait();
                    Err(Error::Os {
                        context: "img: fdatasync".into(),
                        source: io::Error::from_raw_os_error(libc::EIO),
                    })
                }))
            })
        };
        started.wait();
        // Ticket `t` is running: this caller shares it and must see its failure.
        let follower = {
            let c = c.clone();
            std::thread::spawn(move || pollster::block_on(c.wait(t, || async { Ok(()) })))
        };
        std::thread::sleep(Duration::from_millis(20));
        release.wait();
        let e = leader.join().unwrap().unwrap_err();
        assert_eq!(e.errno(), -libc::EIO);
        let e = follower.join().unwrap().unwrap_err();
        assert_eq!(e.errno(), -libc::EIO, "{e}");
        assert_eq!(c.issued(), 1);
        // The next ticket is a new flush.
        pollster::block_on(c.flush(|| async { Ok(()) })).unwrap();
        assert_eq!(c.issued(), 2);
    }

    /// A flush whose future is dropped half way counts as failed and frees the next caller.
    #[test]
    fn an_abandoned_flush_does_not_wedge_the_device() {
        use std::pin::pin;
        use std::task::{Context, Poll, Waker};
        let c = FlushCombiner::new();
        {
            let mut f = pin!(c.flush(std::future::pending::<Result<()>>));
            let mut cx = Context::from_waker(Waker::noop());
            assert!(matches!(f.as_mut().poll(&mut cx), Poll::Pending));
        }
        pollster::block_on(c.flush(|| async { Ok(()) })).unwrap();
        assert_eq!(c.issued(), 2);
    }
}
