//! The SPDK environment and the polling of every SPDK thread.
//!
//! Each SPDK thread has a *slot*: the thread, a poll lock and a queue of jobs to run on it.
//! Whoever holds a slot's poll lock is that SPDK thread for the moment: it runs the queued
//! jobs and calls `spdk_thread_poll`. Slots are independent, so two OS threads drive two
//! SPDK threads at once without a shared lock.
//!
//! * A caller blocked in [`Env::block_on`] drives the slots its future submitted to (its I/O
//!   channel's thread, or the metadata thread) itself: a job is run on the submitting OS
//!   thread when the slot is free, and the callback runs there too (run-to-completion on the
//!   caller, as SPDK's own reactors do; no hop, no wake-up). A slot driven by a blocked caller
//!   is *claimed*: other pollers leave it alone.
//! * When its own slots are idle for a while, a blocked caller also sweeps the unclaimed
//!   slots (a metadata operation may need messages handled on other threads).
//! * The background reactor thread sweeps the unclaimed slots whenever nobody else does: it
//!   keeps SPDK moving for futures awaited on other executors and for SPDK's own timed
//!   pollers, and it sleeps while callers drive (SPDK needs every thread that holds an I/O
//!   channel polled: resize freezes I/O on all channels, unload waits for every channel).

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::ffi::{CStr, CString};
use std::future::Future;
use std::pin::pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex, MutexGuard, OnceLock, TryLockError};
use std::task::{Context, Poll, Wake, Waker};
use std::thread::{self, Thread};
use std::time::{Duration, Instant};

use super::completion::{complete_trampoline, Record, IN_FLIGHT};
use super::ffi;
use crate::{Config, EnvOpts, Error, Result};

type Job = Box<dyn FnOnce() + Send>;

/// One SPDK thread (`struct spdk_thread *`) and what it takes to drive it.
pub(crate) struct Slot {
    /// Only ever handed to SPDK by the holder of `poll`.
    raw: *mut spdk_sys::spdk_thread,
    /// Held by the OS thread that is this SPDK thread right now.
    poll: Mutex<()>,
    /// Jobs to run on this thread, in submission order.
    jobs: Mutex<VecDeque<Job>>,
    /// `jobs` is not empty (a hint read without the lock).
    queued: AtomicBool,
    /// Callers blocked in `block_on` that drive this slot themselves.
    claims: AtomicUsize,
    /// `spdk_thread_exit` was called; destroyed once SPDK reports it exited.
    exiting: AtomicBool,
    /// Destroyed: never polled again.
    dead: AtomicBool,
    /// A channel's thread in service (its I/O channels made, not yet being released): its
    /// turns run without [`Shared::big`].
    hot: AtomicBool,
}

// SAFETY: `raw` is an opaque token outside a turn; only the OS thread holding `poll` hands it
// to SPDK (spdk_set_thread / spdk_thread_poll), so sending or sharing the slot is harmless.
unsafe impl Send for Slot {}
// SAFETY: as above; every other field is a lock or an atomic.
unsafe impl Sync for Slot {}

/// A handle on an SPDK thread's slot.
pub(crate) type SpdkThread = Arc<Slot>;

impl Slot {
    fn new(raw: *mut spdk_sys::spdk_thread) -> SpdkThread {
        Arc::new(Slot {
            raw,
            poll: Mutex::new(()),
            jobs: Mutex::new(VecDeque::new()),
            queued: AtomicBool::new(false),
            claims: AtomicUsize::new(0),
            exiting: AtomicBool::new(false),
            dead: AtomicBool::new(false),
            hot: AtomicBool::new(false),
        })
    }

    /// Mark the thread in service (turns without the big lock) or not.
    pub(crate) fn set_hot(&self, hot: bool) {
        self.hot.store(hot, Ordering::Release);
    }

    fn push(&self, job: Job) {
        lock(&self.jobs).push_back(job);
        self.queued.store(true, Ordering::Release);
    }
}

/// Every live slot. Sweepers copy the list when its generation changed.
struct Shared {
    slots: Mutex<Vec<SpdkThread>>,
    generation: AtomicU64,
    /// Held for every turn except those of threads in service. SPDK's shared pools are DPDK
    /// rings, whose multi-consumer operations spin while a preempted OS thread is halfway
    /// through one; SPDK avoids that with one pinned reactor per core, which a process of
    /// many OS threads on few cores is not. Making channels (which fill per-thread buffer
    /// caches from those rings, thousands of operations), tearing them down and metadata
    /// work therefore run one at a time; only the I/O of channels in service, which hits the
    /// rings rarely and briefly, runs side by side.
    big: Mutex<()>,
}

impl Shared {
    fn add(&self, s: SpdkThread) {
        lock(&self.slots).push(s);
        self.generation.fetch_add(1, Ordering::Release);
    }

    fn remove(&self, s: &Slot) {
        lock(&self.slots).retain(|x| !std::ptr::eq(&**x, s));
        self.generation.fetch_add(1, Ordering::Release);
    }

    fn snapshot(&self, cache: &mut Vec<SpdkThread>, generation: &mut u64) {
        let g = self.generation.load(Ordering::Acquire);
        if g != *generation || cache.is_empty() {
            cache.clear();
            cache.extend(lock(&self.slots).iter().cloned());
            *generation = g;
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

thread_local! {
    /// This OS thread holds [`Shared::big`].
    static HOLDS_BIG: Cell<bool> = const { Cell::new(false) };
    /// The slot this OS thread is driving (inside a turn), or null.
    static CURRENT: Cell<*const Slot> = const { Cell::new(std::ptr::null()) };
    /// While this OS thread is blocked in `block_on`: the slots it drives itself.
    static CLAIMED: RefCell<Option<Vec<SpdkThread>>> = const { RefCell::new(None) };
}

fn driving() -> bool {
    CURRENT.with(|c| !c.get().is_null())
}

/// Set at process exit: nobody takes another turn.
static STOP: AtomicBool = AtomicBool::new(false);
/// OS threads blocked in `block_on`. While there are any, they drive SPDK and the reactor
/// thread only covers what they leave.
static BLOCKED: AtomicUsize = AtomicUsize::new(0);

/// The process-wide SPDK environment. Started once; lives until the process exits.
pub struct Env {
    shared: Arc<Shared>,
    reactor: Thread,
    md: SpdkThread,
    version: String,
}

static ENV: OnceLock<std::result::Result<Env, String>> = OnceLock::new();

/// atexit handler: take every poll lock for good before SPDK's and DPDK's destructors run,
/// so no OS thread polls what they tear down.
extern "C" fn stop_polling_at_exit() {
    STOP.store(true, Ordering::SeqCst);
    crate::remove_dpdk_runtime_dir(std::process::id());
    let Some(env) = Env::get() else { return };
    let mine = CURRENT.with(Cell::get);
    let slots: Vec<SpdkThread> = lock(&env.shared.slots).clone();
    let deadline = Instant::now() + Duration::from_secs(2);
    for s in slots {
        if std::ptr::eq(&*s, mine) {
            continue;
        }
        loop {
            match s.poll.try_lock() {
                Ok(g) => {
                    std::mem::forget(g);
                    break;
                }
                Err(TryLockError::Poisoned(p)) => {
                    std::mem::forget(p.into_inner());
                    break;
                }
                Err(TryLockError::WouldBlock) if Instant::now() < deadline => {
                    thread::sleep(Duration::from_micros(50));
                }
                Err(TryLockError::WouldBlock) => return,
            }
        }
    }
}

/// Restores [`CURRENT`] even if a job panics.
struct CurrentGuard(*const Slot);

impl Drop for CurrentGuard {
    fn drop(&mut self) {
        CURRENT.with(|c| c.set(self.0));
    }
}

fn try_poll_lock(s: &Slot) -> Option<MutexGuard<'_, ()>> {
    match s.poll.try_lock() {
        Ok(g) => Some(g),
        Err(TryLockError::Poisoned(p)) => Some(p.into_inner()),
        Err(TryLockError::WouldBlock) => None,
    }
}

/// [`Shared::big`] held for a turn on `s`, unless `s` is in service or this OS thread holds it.
struct BigGuard<'a>(Option<MutexGuard<'a, ()>>);

impl Drop for BigGuard<'_> {
    fn drop(&mut self) {
        if self.0.take().is_some() {
            HOLDS_BIG.with(|b| b.set(false));
        }
    }
}

fn big_for<'a>(sh: &'a Shared, s: &Slot) -> BigGuard<'a> {
    if s.hot.load(Ordering::Acquire) || HOLDS_BIG.with(Cell::get) {
        return BigGuard(None);
    }
    let g = lock(&sh.big);
    HOLDS_BIG.with(|b| b.set(true));
    BigGuard(Some(g))
}

/// With `s`'s poll lock held: be `s`, run its queued jobs, then `extra` (if any), and poll
/// it `polls` times. Whether anything was done (`None` if the slot is gone or the process is
/// exiting).
fn drive_locked(sh: &Shared, s: &Slot, extra: Option<Job>, polls: u32) -> Option<bool> {
    if STOP.load(Ordering::SeqCst) || s.dead.load(Ordering::Acquire) {
        return None;
    }
    let _big = big_for(sh, s);
    let _current = CurrentGuard(CURRENT.with(|c| c.replace(s)));
    let mut ran = false;
    if s.queued.swap(false, Ordering::AcqRel) {
        let batch = std::mem::take(&mut *lock(&s.jobs));
        ran = !batch.is_empty();
        for job in batch {
            on_thread(s, job);
        }
    }
    if let Some(f) = extra {
        on_thread(s, f);
        ran = true;
    }
    let mut busy = false;
    for _ in 0..polls {
        // SAFETY: `s` is live (not dead, checked under its poll lock, which we hold); nobody
        // else polls it while we hold the lock.
        busy |= unsafe { spdk_sys::spdk_thread_poll(s.raw, 0, 0) } > 0;
    }
    if s.exiting.load(Ordering::Acquire)
        // SAFETY: live, as above.
        && unsafe { spdk_sys::spdk_thread_is_exited(s.raw) }
    {
        // SAFETY: an exited thread may be destroyed; `dead` keeps everyone from polling it
        // again (checked under the poll lock we hold).
        unsafe { spdk_sys::spdk_thread_destroy(s.raw) };
        s.dead.store(true, Ordering::Release);
        sh.remove(s);
    }
    Some(ran || busy)
}

/// One turn on `s` if nobody else drives it: `None` if its poll lock is taken (or it is
/// gone), otherwise whether anything was done.
fn turn(sh: &Shared, s: &Slot) -> Option<bool> {
    if STOP.load(Ordering::Relaxed) {
        return None;
    }
    let _g = try_poll_lock(s)?;
    drive_locked(sh, s, None, 1)
}

/// A turn on every slot nobody has claimed. Whether anything was done.
fn sweep(sh: &Shared, cache: &mut Vec<SpdkThread>, generation: &mut u64) -> bool {
    sh.snapshot(cache, generation);
    let mut work = false;
    for s in cache.iter() {
        if s.claims.load(Ordering::Acquire) == 0 || s.queued.load(Ordering::Acquire) {
            work |= turn(sh, s) == Some(true);
        }
    }
    work
}

/// Waker of [`Env::block_on`].
struct Signal {
    woken: AtomicBool,
    thread: Thread,
}

impl Wake for Signal {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }
    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        self.thread.unpark();
    }
}

/// How long a blocked caller polls only its own slots before it sweeps the others too.
const SWEEP_AFTER: Duration = Duration::from_micros(20);
/// How long a blocked caller polls without progress before it yields its CPU between polls.
const YIELD_AFTER: Duration = Duration::from_micros(200);
/// How long before it sleeps between polls (a long flush; SPDK still makes progress, only
/// this caller's wake-up is up to `NAP` late).
const NAP_AFTER: Duration = Duration::from_millis(2);
const NAP: Duration = Duration::from_micros(50);

/// Ends a `block_on`: releases the claims and restores the outer claim list.
struct BlockGuard(Option<Vec<SpdkThread>>);

impl Drop for BlockGuard {
    fn drop(&mut self) {
        let mine = CLAIMED.with(|c| c.replace(self.0.take()));
        for s in mine.into_iter().flatten() {
            s.claims.fetch_sub(1, Ordering::AcqRel);
        }
        BLOCKED.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Whether this OS thread is blocked in `block_on`; if so `s` joins the slots it drives.
fn claim(s: &SpdkThread) -> bool {
    CLAIMED.with(|c| match &mut *c.borrow_mut() {
        Some(list) => {
            if !list.iter().any(|x| Arc::ptr_eq(x, s)) {
                s.claims.fetch_add(1, Ordering::AcqRel);
                list.push(Arc::clone(s));
            }
            true
        }
        None => false,
    })
}

impl Env {
    /// Start SPDK in this process, or return the environment started before (`opts` are
    /// then ignored). A failed start is remembered: DPDK cannot be initialised twice.
    pub fn start(opts: &EnvOpts) -> Result<&'static Env> {
        let env = ENV.get_or_init(|| start_reactor(opts.clone()));
        env.as_ref().map_err(|e| Error::Unavailable(e.clone()))
    }

    /// The environment, if [`Env::start`] succeeded earlier.
    pub fn get() -> Option<&'static Env> {
        ENV.get().and_then(|r| r.as_ref().ok())
    }

    /// SPDK's version string, e.g. `SPDK v25.09`.
    pub fn version(&self) -> &str {
        &self.version
    }

    /// Run the RPC calls of a JSON config (bdev creation and deletion, ...) through SPDK's
    /// config loader. Stops at the first failing call.
    pub async fn load_config(&self, config: &Config) -> Result<()> {
        let json = CString::new(config.text()?)
            .map_err(|_| Error::InvalidArgument("SPDK config holds a NUL byte".into()))?;
        let rec = Record::new();
        let r = Arc::clone(&rec);
        self.run(&self.md, move || {
            // SAFETY: on the metadata thread (run() sets it); SPDK copies `json` before
            // returning, and `r` is handed over as cb_arg exactly once.
            unsafe { ffi::shim_load_config(json.as_ptr(), json.as_bytes().len(), r.into_cb_arg()) };
        });
        let done = rec.wait().await;
        check("loading SPDK JSON config", done.rc)
    }

    /// Write zeroes over every block of bdev `name`, so that it reads as a bdev just
    /// created. Unlike deleting it, this works while blobstores abandoned on it still hold
    /// it open.
    pub async fn zero_bdev(&self, name: &str) -> Result<()> {
        let name = CString::new(name)
            .map_err(|_| Error::InvalidArgument("bdev name holds a NUL byte".into()))?;
        let rec = Record::new();
        let r = Arc::clone(&rec);
        self.run(&self.md, move || {
            // SAFETY: on the metadata thread (run() sets it); the shim only reads `name`
            // during the call, and `r` is handed over as cb_arg exactly once.
            unsafe { ffi::shim_bdev_zero_all(name.as_ptr(), r.into_cb_arg()) };
        });
        let done = rec.wait().await;
        check("zeroing a bdev", done.rc)
    }

    /// Block size and block count of a bdev, if it exists.
    pub fn bdev_geometry(&self, name: &str) -> Option<(u32, u64)> {
        let name = CString::new(name).ok()?;
        self.call(&self.md, move || {
            // SAFETY: on the metadata thread; `name` outlives both calls.
            unsafe {
                (
                    ffi::shim_bdev_block_size(name.as_ptr()),
                    ffi::shim_bdev_num_blocks(name.as_ptr()),
                )
            }
        })
        .filter(|&(bs, _)| bs != 0)
    }

    pub(crate) fn md(&self) -> &SpdkThread {
        &self.md
    }

    /// Run `f` on SPDK thread `t`. Jobs of one thread run in submission order. When nobody
    /// drives `t`, `f` runs right here (after the jobs queued before it) and this OS thread
    /// stays `t`'s driver for the rest of its `block_on`; otherwise `f` is queued for the
    /// thread's driver.
    pub(crate) fn run(&self, t: &SpdkThread, f: impl FnOnce() + Send + 'static) {
        if !driving() {
            if let Some(_g) = try_poll_lock(t) {
                if drive_locked(&self.shared, t, Some(Box::new(f)), 0).is_some() {
                    if !claim(t) {
                        // No blocked caller will poll the callback: the reactor must.
                        self.reactor.unpark();
                    }
                    return;
                }
                // The slot is gone or the process is exiting: nothing runs anymore.
                return;
            }
        }
        t.push(Box::new(f));
        if !claim(t) {
            self.reactor.unpark();
        }
    }

    /// Run `f` on SPDK thread `t` and wait for its value, driving SPDK meanwhile. Returns
    /// `None` only if polling has stopped (process exit) or `t` is gone.
    pub(crate) fn call<T: Send + 'static>(
        &self,
        t: &SpdkThread,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Option<T> {
        let current = CURRENT.with(Cell::get);
        if std::ptr::eq(current, &**t) {
            // Inside a turn on `t` already.
            return Some(f());
        }
        if let Some(_g) = try_poll_lock(t) {
            if STOP.load(Ordering::SeqCst) || t.dead.load(Ordering::Acquire) {
                return None;
            }
            let _big = big_for(&self.shared, t);
            let _current = CurrentGuard(CURRENT.with(|c| c.replace(&**t)));
            if t.queued.swap(false, Ordering::AcqRel) {
                let batch = std::mem::take(&mut *lock(&t.jobs));
                for job in batch {
                    on_thread(t, job);
                }
            }
            return Some(on_thread(t, f));
        }
        if !current.is_null() {
            log::warn!("ffi-shim: a job waits for another SPDK thread's driver");
        }
        let (tx, rx) = mpsc::sync_channel(1);
        t.push(Box::new(move || {
            let _ = tx.send(f());
        }));
        self.reactor.unpark();
        loop {
            match rx.try_recv() {
                Ok(v) => return Some(v),
                Err(mpsc::TryRecvError::Disconnected) => return None,
                Err(mpsc::TryRecvError::Empty) => {}
            }
            if STOP.load(Ordering::Relaxed) || t.dead.load(Ordering::Acquire) {
                return None;
            }
            if turn(&self.shared, t).is_none() {
                // Someone else drives `t`; they run our job.
                match rx.recv_timeout(Duration::from_micros(50)) {
                    Ok(v) => return Some(v),
                    Err(mpsc::RecvTimeoutError::Disconnected) => return None,
                    Err(mpsc::RecvTimeoutError::Timeout) => {}
                }
            }
        }
    }

    /// Run `f` to completion on this OS thread, driving the SPDK threads it submits to while
    /// it waits (see the module doc). Must not be called from inside an SPDK callback or job.
    pub fn block_on<F: Future>(&self, f: F) -> F::Output {
        if driving() {
            log::error!("ffi-shim: block_on inside an SPDK turn cannot make progress");
        }
        BLOCKED.fetch_add(1, Ordering::AcqRel);
        let _guard = BlockGuard(CLAIMED.with(|c| c.replace(Some(Vec::new()))));
        let signal = Arc::new(Signal {
            woken: AtomicBool::new(false),
            thread: thread::current(),
        });
        let waker = Waker::from(Arc::clone(&signal));
        let mut cx = Context::from_waker(&waker);
        let mut f = pin!(f);
        let mut mine: Vec<SpdkThread> = Vec::new();
        let mut cache: Vec<SpdkThread> = Vec::new();
        let mut generation = 0;
        loop {
            signal.woken.store(false, Ordering::Release);
            if let Poll::Ready(v) = f.as_mut().poll(&mut cx) {
                return v;
            }
            let mut idle_since: Option<Instant> = None;
            while !signal.woken.load(Ordering::Acquire) {
                // Jobs run inside turns may have claimed more slots.
                CLAIMED.with(|c| {
                    if let Some(list) = &*c.borrow() {
                        if list.len() != mine.len() {
                            mine.clone_from(list);
                        }
                    }
                });
                let mut work = false;
                for s in &mine {
                    work |= turn(&self.shared, s) == Some(true);
                }
                if work {
                    idle_since = None;
                    continue;
                }
                let idle = idle_since.get_or_insert_with(Instant::now).elapsed();
                if idle < SWEEP_AFTER {
                    continue;
                }
                if sweep(&self.shared, &mut cache, &mut generation) {
                    idle_since = None;
                } else if idle > NAP_AFTER {
                    thread::park_timeout(NAP);
                } else if idle > YIELD_AFTER {
                    thread::yield_now();
                }
            }
        }
    }

    /// Create an SPDK thread (polled by whoever uses it, and by the reactor).
    pub(crate) fn create_thread(&self, name: &str) -> Result<SpdkThread> {
        let name = CString::new(name).unwrap_or_else(|_| c"blobcask_io".to_owned());
        let raw = self
            .call(&self.md, move || {
                // SAFETY: thread lib is initialised; `name` is copied by SPDK.
                unsafe { spdk_sys::spdk_thread_create(name.as_ptr(), std::ptr::null()) as usize }
            })
            .ok_or_else(|| Error::Unavailable("the SPDK reactor has stopped".into()))?;
        if raw == 0 {
            return Err(Error::Spdk {
                op: "spdk_thread_create",
                rc: -crate::libc_errno::ENOMEM,
            });
        }
        let t = Slot::new(raw as *mut spdk_sys::spdk_thread);
        self.shared.add(Arc::clone(&t));
        Ok(t)
    }

    /// Ask SPDK thread `t` to exit after the jobs queued before this one; whoever polls it
    /// next destroys it once SPDK reports it exited.
    pub(crate) fn exit_thread(&self, t: &SpdkThread) {
        let me = Arc::clone(t);
        t.push(Box::new(move || {
            // SAFETY: we are on `t` (the driver made it current); it is not the metadata
            // thread.
            unsafe { spdk_sys::spdk_thread_exit(me.raw) };
            me.exiting.store(true, Ordering::Release);
        }));
        self.reactor.unpark();
    }
}

/// Run `f` as SPDK thread `t` (with `t`'s poll lock held).
fn on_thread<T>(t: &Slot, f: impl FnOnce() -> T) -> T {
    // SAFETY: only a holder of `t`'s poll lock calls this, between polls, so making `t`
    // current for the duration of `f` is what spdk_thread_poll itself does.
    let prev = unsafe { spdk_sys::spdk_get_thread() };
    // SAFETY: as above.
    unsafe { spdk_sys::spdk_set_thread(t.raw) };
    let v = f();
    // SAFETY: restore the previous current thread (null outside polls).
    unsafe { spdk_sys::spdk_set_thread(prev) };
    v
}

pub(crate) fn check(op: &'static str, rc: i32) -> Result<()> {
    if rc == 0 {
        Ok(())
    } else {
        Err(Error::Spdk { op, rc })
    }
}

fn start_reactor(opts: EnvOpts) -> std::result::Result<Env, String> {
    let shared = Arc::new(Shared {
        slots: Mutex::new(Vec::new()),
        generation: AtomicU64::new(0),
        big: Mutex::new(()),
    });
    let (tx, rx) = mpsc::channel();
    let sh = Arc::clone(&shared);
    let handle = thread::Builder::new()
        .name("spdk-reactor".into())
        .spawn(move || reactor_main(opts, sh, tx))
        .map_err(|e| format!("spawning the SPDK reactor thread: {e}"))?;
    let reactor = handle.thread().clone();
    let md = match rx.recv() {
        Ok(Ok(md)) => md,
        Ok(Err(e)) => return Err(e),
        Err(_) => return Err("the SPDK reactor thread died during start-up".into()),
    };
    // SAFETY: returns a pointer to a static NUL-terminated string.
    let version = unsafe { CStr::from_ptr(ffi::shim_spdk_version()) }
        .to_string_lossy()
        .into_owned();
    Ok(Env {
        shared,
        reactor,
        md,
        version,
    })
}

fn init_spdk(opts: &EnvOpts, sh: &Shared) -> std::result::Result<SpdkThread, String> {
    let name = CString::new(opts.name.clone()).map_err(|_| "env name holds a NUL byte")?;
    let mask = CString::new(opts.core_mask.clone()).map_err(|_| "core mask holds a NUL byte")?;
    let no_huge = opts.no_huge.unwrap_or_else(|| !crate::hugepages_usable());
    let no_pci = opts.no_pci.unwrap_or(true);
    // With hugepages DPDK grows its memory on demand (0 = no `-m`); without them it needs a
    // fixed amount up front.
    let mem = match (no_huge, opts.mem_size_mb) {
        (true, 0) => 1024,
        (true, m) => m.max(512),
        (false, m) => m,
    };
    let mem = i32::try_from(mem).unwrap_or(i32::MAX);
    // SAFETY: plain C call with valid NUL-terminated strings that outlive it; SPDK keeps no
    // pointer to them past initialisation (DPDK copies its argv).
    let rc = unsafe {
        ffi::shim_env_start(
            name.as_ptr(),
            mask.as_ptr(),
            i32::from(no_huge),
            if no_huge || opts.mem_size_mb > 0 {
                mem
            } else {
                0
            },
            i32::from(no_pci),
        )
    };
    if rc != 0 {
        return Err(format!(
            "spdk_env_init failed ({rc}){}",
            if no_huge {
                ""
            } else {
                "; no usable hugepages? reserve some (echo 1024 > /proc/sys/vm/nr_hugepages) or set no_huge"
            }
        ));
    }
    // SAFETY: the env is up. DPDK pinned this thread to the main core; undo that so the
    // reactor does not fight the engine's threads for one CPU.
    unsafe { spdk_sys::spdk_unaffinitize_thread() };
    // SAFETY: registers a plain function pointer with the shim; called before any callback.
    unsafe { ffi::shim_set_complete(complete_trampoline) };
    // SAFETY: plain setter.
    unsafe { ffi::shim_log_level(opts.log_level.to_spdk()) };
    // SAFETY: first and only initialisation of the thread library in this process.
    let rc = unsafe { spdk_sys::spdk_thread_lib_init(None, 0) };
    if rc != 0 {
        return Err(format!("spdk_thread_lib_init failed ({rc})"));
    }
    // SAFETY: thread lib initialised; the name is copied.
    let md = unsafe { spdk_sys::spdk_thread_create(c"blobcask_md".as_ptr(), std::ptr::null()) };
    if md.is_null() {
        return Err("spdk_thread_create(metadata) failed".into());
    }
    let md = Slot::new(md);
    sh.add(Arc::clone(&md));

    let rec = Record::new();
    let r = Arc::clone(&rec);
    md.push(Box::new(move || {
        // SAFETY: on the metadata thread; the record reference is handed over once.
        unsafe { ffi::shim_subsystem_init(r.into_cb_arg()) }
    }));
    let mut spins: u64 = 0;
    loop {
        if let Some(rc) = poll_ready(&rec) {
            if rc != 0 {
                return Err(format!("spdk_subsystem_init failed ({rc})"));
            }
            break;
        }
        turn(sh, &md);
        spins += 1;
        if spins.is_multiple_of(100_000) {
            thread::sleep(Duration::from_micros(100));
        }
        if spins > 200_000_000 {
            return Err("spdk_subsystem_init did not complete".into());
        }
    }
    Ok(md)
}

fn poll_ready(rec: &Arc<Record>) -> Option<i32> {
    use std::task::{Context, Poll, Waker};
    let mut w = rec.wait();
    let mut cx = Context::from_waker(Waker::noop());
    match std::pin::Pin::new(&mut w).poll(&mut cx) {
        Poll::Ready(d) => Some(d.rc),
        Poll::Pending => None,
    }
}

fn reactor_main(
    opts: EnvOpts,
    shared: Arc<Shared>,
    tx: mpsc::Sender<std::result::Result<SpdkThread, String>>,
) {
    let started = init_spdk(&opts, &shared);
    let ok = started.is_ok();
    let _ = tx.send(started);
    if !ok {
        return;
    }
    // SAFETY: registers a plain `extern "C" fn` with libc.
    if unsafe { ffi::shim_atexit(stop_polling_at_exit) } != 0 {
        log::warn!("ffi-shim: atexit registration failed; exit may crash the reactor");
    }
    let mut idle: u32 = 0;
    let mut cache = Vec::new();
    let mut generation = 0;
    loop {
        if STOP.load(Ordering::Relaxed) {
            loop {
                thread::park();
            }
        }
        if sweep(&shared, &mut cache, &mut generation) {
            idle = 0;
            continue;
        }
        if BLOCKED.load(Ordering::Acquire) > 0 {
            // Blocked callers drive SPDK (and sweep what they do not claim when idle); only
            // look in now and then, and stay off the CPU they need.
            idle = 0;
            thread::park_timeout(Duration::from_micros(200));
        } else if IN_FLIGHT.load(Ordering::Relaxed) > 0 {
            // Futures awaited elsewhere: their callbacks need us.
            idle = 0;
            thread::yield_now();
        } else {
            idle = idle.saturating_add(1);
            if idle > 2_000 {
                // Nothing queued, nothing in flight: sleep until a submit unparks us, but
                // wake now and then for SPDK's timed pollers.
                thread::park_timeout(Duration::from_millis(1));
            } else if idle > 200 {
                thread::yield_now();
            }
        }
    }
}
