//! The SPDK environment and the polling of every SPDK thread.
//!
//! Polling is a *turn*: run the queued jobs, then `spdk_thread_poll` every SPDK thread once.
//! A turn needs the driver lock, so exactly one OS thread polls at a time. Two kinds of OS
//! threads take turns: the reactor thread, which keeps everything moving whenever nobody
//! else does, and callers blocked in [`Env::block_on`] / [`Env::call`], which drive SPDK
//! themselves while they wait, so a request submitted and completed on an idle system never
//! hops to another OS thread (run-to-completion on the caller, as SPDK's own reactors do).

use std::cell::Cell;
use std::collections::VecDeque;
use std::ffi::{CStr, CString};
use std::future::Future;
use std::pin::pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex, MutexGuard, OnceLock, TryLockError};
use std::task::{Context, Poll, Wake, Waker};
use std::thread::{self, Thread};
use std::time::{Duration, Instant};

use super::completion::{complete_trampoline, Record, IN_FLIGHT};
use super::ffi;
use crate::{Config, EnvOpts, Error, Result};

/// An SPDK thread (`struct spdk_thread *`), only ever dereferenced by SPDK during a turn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SpdkThread(pub *mut spdk_sys::spdk_thread);

// SAFETY: the pointer is an opaque token outside a turn; only the OS thread holding the
// driver lock hands it to SPDK (spdk_set_thread / spdk_thread_poll), so sending or sharing
// the token is harmless.
unsafe impl Send for SpdkThread {}
// SAFETY: as above; the token is never dereferenced by Rust.
unsafe impl Sync for SpdkThread {}

type Job = Box<dyn FnOnce() + Send>;

#[derive(Default)]
struct ThreadList {
    generation: u64,
    threads: Vec<SpdkThread>,
    exiting: Vec<SpdkThread>,
}

/// State only the driver (the OS thread holding the lock) uses.
#[derive(Default)]
struct Driver {
    generation: u64,
    cache: Vec<SpdkThread>,
    batch: VecDeque<(SpdkThread, Job)>,
}

struct Shared {
    queue: Mutex<VecDeque<(SpdkThread, Job)>>,
    threads: Mutex<ThreadList>,
    driver: Mutex<Driver>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

thread_local! {
    /// True while this OS thread is inside a turn (holds the driver lock).
    static DRIVING: Cell<bool> = const { Cell::new(false) };
}

/// Set at process exit: nobody takes another turn.
static STOP: AtomicBool = AtomicBool::new(false);

/// The process-wide SPDK environment. Started once; lives until the process exits.
pub struct Env {
    shared: Arc<Shared>,
    reactor: Thread,
    md: SpdkThread,
    version: String,
}

static ENV: OnceLock<std::result::Result<Env, String>> = OnceLock::new();

/// atexit handler: take the driver lock for good before SPDK's and DPDK's destructors run,
/// so no OS thread polls what they tear down.
extern "C" fn stop_polling_at_exit() {
    STOP.store(true, Ordering::SeqCst);
    crate::remove_dpdk_runtime_dir(std::process::id());
    let Some(env) = Env::get() else { return };
    if DRIVING.with(Cell::get) {
        return;
    }
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        match env.shared.driver.try_lock() {
            Ok(g) => {
                std::mem::forget(g);
                return;
            }
            Err(TryLockError::Poisoned(p)) => {
                std::mem::forget(p.into_inner());
                return;
            }
            Err(TryLockError::WouldBlock) if Instant::now() < deadline => {
                thread::sleep(Duration::from_micros(50));
            }
            Err(TryLockError::WouldBlock) => return,
        }
    }
}

/// Clears [`DRIVING`] even if a job panics.
struct DrivingGuard;

impl Drop for DrivingGuard {
    fn drop(&mut self) {
        DRIVING.with(|d| d.set(false));
    }
}

/// One turn. `None` if another OS thread is driving (or the process is exiting);
/// otherwise whether anything was done.
fn turn(sh: &Shared) -> Option<bool> {
    if STOP.load(Ordering::Relaxed) {
        return None;
    }
    let mut d = match sh.driver.try_lock() {
        Ok(g) => g,
        Err(TryLockError::Poisoned(p)) => p.into_inner(),
        Err(TryLockError::WouldBlock) => return None,
    };
    if STOP.load(Ordering::SeqCst) {
        return None;
    }
    DRIVING.with(|x| x.set(true));
    let _guard = DrivingGuard;
    let mut batch = std::mem::take(&mut d.batch);
    std::mem::swap(&mut *lock(&sh.queue), &mut batch);
    let ran = !batch.is_empty();
    while let Some((t, job)) = batch.pop_front() {
        on_thread(t, job);
    }
    d.batch = batch;
    {
        let tl = lock(&sh.threads);
        if tl.generation != d.generation {
            d.cache.clear();
            d.cache.extend_from_slice(&tl.threads);
            d.generation = tl.generation;
        }
    }
    let mut busy = false;
    for t in &d.cache {
        // SAFETY: `t` is a live SPDK thread (destroyed only below, under this same lock,
        // after which the cache is refreshed); we hold the driver lock, so nobody else
        // polls it.
        let rc = unsafe { spdk_sys::spdk_thread_poll(t.0, 0, 0) };
        busy |= rc > 0;
    }
    let mut tl = lock(&sh.threads);
    if !tl.exiting.is_empty() {
        let mut i = 0;
        while i < tl.exiting.len() {
            let t = tl.exiting[i];
            // SAFETY: `t` is live until destroyed just below.
            if unsafe { spdk_sys::spdk_thread_is_exited(t.0) } {
                // SAFETY: exited threads may be destroyed; it leaves the list and the
                // cache (by the generation bump) before anyone polls again.
                unsafe { spdk_sys::spdk_thread_destroy(t.0) };
                tl.exiting.swap_remove(i);
                tl.threads.retain(|x| *x != t);
                tl.generation += 1;
            } else {
                i += 1;
            }
        }
    }
    Some(ran || busy)
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

/// How long a blocked caller keeps polling an idle SPDK before it parks.
const CALLER_SPIN: Duration = Duration::from_micros(50);

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
        self.run(self.md, move || {
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
        self.run(self.md, move || {
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
        self.call(self.md, move || {
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

    pub(crate) fn md(&self) -> SpdkThread {
        self.md
    }

    /// Queue `f` to run on SPDK thread `t` at the next turn. Jobs run in submission order.
    pub(crate) fn run(&self, t: SpdkThread, f: impl FnOnce() + Send + 'static) {
        lock(&self.shared.queue).push_back((t, Box::new(f)));
        self.reactor.unpark();
    }

    /// Run `f` on SPDK thread `t` and wait for its value, driving SPDK meanwhile. Returns
    /// `None` only if polling has stopped (process exit). Inline inside a turn.
    pub(crate) fn call<T: Send + 'static>(
        &self,
        t: SpdkThread,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Option<T> {
        if DRIVING.with(Cell::get) {
            return Some(on_thread(t, f));
        }
        let (tx, rx) = mpsc::sync_channel(1);
        self.run(t, move || {
            let _ = tx.send(f());
        });
        loop {
            match rx.try_recv() {
                Ok(v) => return Some(v),
                Err(mpsc::TryRecvError::Disconnected) => return None,
                Err(mpsc::TryRecvError::Empty) => {}
            }
            if turn(&self.shared).is_none() {
                // Someone else drives; they run our job.
                match rx.recv_timeout(Duration::from_micros(200)) {
                    Ok(v) => return Some(v),
                    Err(mpsc::RecvTimeoutError::Disconnected) => return None,
                    Err(mpsc::RecvTimeoutError::Timeout) => {}
                }
            }
        }
    }

    /// Run `f` to completion on this OS thread, taking SPDK turns while it waits (parking
    /// when SPDK is idle or another thread drives). Must not be called from inside an SPDK
    /// callback or job.
    pub fn block_on<F: Future>(&self, f: F) -> F::Output {
        if DRIVING.with(Cell::get) {
            log::error!("ffi-shim: block_on inside an SPDK turn cannot make progress");
        }
        let signal = Arc::new(Signal {
            woken: AtomicBool::new(false),
            thread: thread::current(),
        });
        let waker = Waker::from(Arc::clone(&signal));
        let mut cx = Context::from_waker(&waker);
        let mut f = pin!(f);
        loop {
            signal.woken.store(false, Ordering::Release);
            if let Poll::Ready(v) = f.as_mut().poll(&mut cx) {
                return v;
            }
            let mut idle_since: Option<Instant> = None;
            while !signal.woken.load(Ordering::Acquire) {
                match turn(&self.shared) {
                    Some(true) => idle_since = None,
                    Some(false) => {
                        let since = *idle_since.get_or_insert_with(Instant::now);
                        if since.elapsed() > CALLER_SPIN {
                            thread::park_timeout(Duration::from_micros(200));
                            idle_since = None;
                        }
                    }
                    None => thread::park_timeout(Duration::from_micros(100)),
                }
            }
        }
    }

    /// Create an SPDK thread polled by the reactor.
    pub(crate) fn create_thread(&self, name: &str) -> Result<SpdkThread> {
        let name = CString::new(name).unwrap_or_else(|_| c"blobcask_io".to_owned());
        let sh = Arc::clone(&self.shared);
        let t = self
            .call(self.md, move || {
                // SAFETY: thread lib is initialised; `name` is copied by SPDK.
                let t = unsafe { spdk_sys::spdk_thread_create(name.as_ptr(), std::ptr::null()) };
                if !t.is_null() {
                    let mut tl = lock(&sh.threads);
                    tl.threads.push(SpdkThread(t));
                    tl.generation += 1;
                }
                SpdkThread(t)
            })
            .ok_or_else(|| Error::Unavailable("the SPDK reactor has stopped".into()))?;
        if t.0.is_null() {
            return Err(Error::Spdk {
                op: "spdk_thread_create",
                rc: -crate::libc_errno::ENOMEM,
            });
        }
        Ok(t)
    }

    /// Ask SPDK thread `t` to exit after the jobs queued before this one; the reactor
    /// destroys it once SPDK reports it exited.
    pub(crate) fn exit_thread(&self, t: SpdkThread) {
        let sh = Arc::clone(&self.shared);
        self.run(t, move || {
            // SAFETY: we are on `t` (run() set it); it is not the metadata thread.
            unsafe { spdk_sys::spdk_thread_exit(t.0) };
            lock(&sh.threads).exiting.push(t);
        });
    }
}

/// Run `f` with `t` as the current SPDK thread (inside a turn only).
fn on_thread<T>(t: SpdkThread, f: impl FnOnce() -> T) -> T {
    // SAFETY: only the driver calls this, between polls, so making `t` current for the
    // duration of `f` is what spdk_thread_poll itself does.
    let prev = unsafe { spdk_sys::spdk_get_thread() };
    // SAFETY: as above.
    unsafe { spdk_sys::spdk_set_thread(t.0) };
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
        queue: Mutex::new(VecDeque::new()),
        threads: Mutex::new(ThreadList::default()),
        driver: Mutex::new(Driver::default()),
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
    let md = SpdkThread(md);
    {
        let mut tl = lock(&sh.threads);
        tl.threads.push(md);
        tl.generation += 1;
    }

    let rec = Record::new();
    let r = Arc::clone(&rec);
    lock(&sh.queue).push_back((
        md,
        Box::new(move || {
            // SAFETY: on the metadata thread; the record reference is handed over once.
            unsafe { ffi::shim_subsystem_init(r.into_cb_arg()) }
        }),
    ));
    let mut spins: u64 = 0;
    loop {
        if let Some(rc) = poll_ready(&rec) {
            if rc != 0 {
                return Err(format!("spdk_subsystem_init failed ({rc})"));
            }
            break;
        }
        turn(sh);
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
    loop {
        match turn(&shared) {
            None if STOP.load(Ordering::Relaxed) => loop {
                thread::park();
            },
            // A blocked caller drives; stay out of its way.
            None => {
                idle = 0;
                thread::park_timeout(Duration::from_micros(50));
            }
            Some(true) => idle = 0,
            Some(false) if IN_FLIGHT.load(Ordering::Relaxed) > 0 => idle = 0,
            Some(false) => {
                idle = idle.saturating_add(1);
                if idle > 20_000 {
                    // Nothing queued, nothing in flight: sleep until a submit unparks us,
                    // but wake now and then for SPDK's timed pollers.
                    thread::park_timeout(Duration::from_millis(1));
                } else if idle > 2_000 {
                    thread::yield_now();
                }
            }
        }
    }
}
