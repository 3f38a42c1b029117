//! A simulated device for crash and fault tests: memory plus a seeded fault plan.
//!
//! # The fault model, in plain words
//!
//! - **Volatile writes.** A completed write is visible to later reads at once, but it is
//!   *volatile* until a [`Device::flush`] completes: the device keeps a durable image (what
//!   survives power loss) and the list of writes since the last flush.
//! - **Crash.** [`SimDevice::crash_image`] is what a power cut would leave: every flushed write,
//!   exactly; of the unflushed writes a seeded random subset, applied in a random order (so for
//!   a block written twice since the last flush any of its versions may survive). Under
//!   [`CrashMode::Random`] (the default) each crash draws a survival probability, then picks
//!   writes with it; [`CrashMode::KeepAll`] keeps every unflushed write (in order),
//!   [`CrashMode::DropAll`] none.
//! - **Torn writes.** A surviving write that spans more than one 4 KiB page ([`TEAR_UNIT`], on
//!   4 KiB boundaries of the device) may be *torn*: any subset of its pages lands. A write
//!   inside one page is atomic. This is the medium assumption of SPDK's blobstore (and ours):
//!   4 KiB atomicity, nothing larger.
//! - **Bit flips.** [`SimDevice::flip_bit`] / [`SimDevice::flip_random_bits`] rot bits of the
//!   medium now (seen by reads and kept in the durable image); [`FaultPlan::crash_bit_flips`]
//!   flips random bits of each crash image (inside [`FaultPlan::crash_flip_range`]).
//! - **EIO.** [`FaultPlan::read_error`] / `write_error` / `flush_error` fail the N-th read,
//!   write or flush (counted since the device was made, 1-based, each request of a batch
//!   counting once) — only that one (transient) or it and every later one (persistent). A
//!   failed write changes nothing; a failed flush makes nothing durable (the writes stay
//!   volatile and may still be lost at a crash).
//! - **Latent sector errors.** Reads touching a [`FaultPlan::bad_ranges`] range fail with EIO;
//!   writes there succeed (the range stays bad until the plan changes).
//! - **Full device.** With [`FaultPlan::full_at`] set, a write ending past that byte fails with
//!   an ENOSPC-like [`Error::Injected`] (kind `StorageFull`).
//! - **Crash point.** With [`FaultPlan::stop_after`] = N, I/O number N+1 and every later one
//!   (reads, writes, flushes and unmaps all count, see [`SimDevice::io_counts`]) fails: the
//!   machine died right after the N-th I/O. A sweep test runs a workload once to learn the
//!   total, then once per crash point, and checks recovery of each `crash_image`.
//! - **Slow flushes.** With [`FaultPlan::flush_latency`] set, a flush takes that long without
//!   holding up other I/O, and makes durable only the writes completed before it started.
//! - **Unmap** does nothing but count: old bytes stay, as on an image file.
//! - **Delayed, reordered reads.** An async read ([`Device::read_owned`]) stays in flight for
//!   a seeded number of polls (0 to 3; the future wakes itself) and reads the medium only when
//!   it completes, so writes issued after it by other callers may land first and concurrent
//!   async reads complete out of order, as on a real queue.
//!
//! Every random choice comes from a ChaCha8 generator seeded by the device seed (and, for
//! crash images, the number of crash images drawn so far), so a failure replays from its seed.

use std::io;
use std::ops::Range;
use std::time::Duration;

use parking_lot::Mutex;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::error::{Error, Result};
use super::{check_range, AlignedBuf, Device, IoPath, IoRequest};

/// Granularity of torn writes: the atomic unit of the medium.
pub const TEAR_UNIT: u64 = 4096;

/// Fail the `nth` operation of a kind (1-based, counted since the device was made).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ErrorAt {
    /// Which operation fails first.
    pub nth: u64,
    /// Whether every later operation of the kind fails too.
    pub persistent: bool,
}

impl ErrorAt {
    /// Only the `nth` operation fails.
    pub fn transient(nth: u64) -> Self {
        ErrorAt {
            nth,
            persistent: false,
        }
    }

    /// The `nth` operation and every later one fail.
    pub fn persistent(nth: u64) -> Self {
        ErrorAt {
            nth,
            persistent: true,
        }
    }

    fn hits(&self, k: u64) -> bool {
        if self.persistent {
            k >= self.nth
        } else {
            k == self.nth
        }
    }
}

/// Which unflushed writes survive a crash.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CrashMode {
    /// A seeded random subset, in random order, possibly torn.
    #[default]
    Random,
    /// All of them, in order, none torn (the cache made it to the medium).
    KeepAll,
    /// None of them (only flushed data survives).
    DropAll,
}

/// The faults a [`SimDevice`] injects; see the module docs for their meaning.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FaultPlan {
    /// EIO on the N-th read.
    pub read_error: Option<ErrorAt>,
    /// EIO on the N-th write (the write changes nothing).
    pub write_error: Option<ErrorAt>,
    /// EIO on the N-th flush (nothing becomes durable).
    pub flush_error: Option<ErrorAt>,
    /// Crash point: every I/O after the first `stop_after` fails.
    pub stop_after: Option<u64>,
    /// Writes ending past this byte offset fail with ENOSPC.
    pub full_at: Option<u64>,
    /// Byte ranges whose reads fail with EIO.
    pub bad_ranges: Vec<Range<u64>>,
    /// Which unflushed writes a crash keeps.
    pub crash_mode: CrashMode,
    /// Whether multi-page unflushed writes may tear at a crash (default true).
    pub torn_writes: bool,
    /// Random bit flips applied to each crash image.
    pub crash_bit_flips: u32,
    /// Where crash bit flips land (default: the whole device).
    pub crash_flip_range: Option<Range<u64>>,
    /// How long a flush takes (default none). While it runs other I/O goes on, and it makes
    /// durable only the writes completed before it started, as a real device flush does.
    pub flush_latency: Duration,
}

impl Default for FaultPlan {
    fn default() -> Self {
        FaultPlan {
            read_error: None,
            write_error: None,
            flush_error: None,
            stop_after: None,
            full_at: None,
            bad_ranges: Vec::new(),
            crash_mode: CrashMode::Random,
            torn_writes: true,
            crash_bit_flips: 0,
            crash_flip_range: None,
            flush_latency: Duration::ZERO,
        }
    }
}

/// Operations seen so far (including failed ones; each request of a batch counts).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct IoCounts {
    pub reads: u64,
    pub writes: u64,
    pub flushes: u64,
    pub unmaps: u64,
}

impl IoCounts {
    /// All I/Os: the numbering [`FaultPlan::stop_after`] uses.
    pub fn total(&self) -> u64 {
        self.reads + self.writes + self.flushes + self.unmaps
    }
}

#[derive(Debug, Clone, Copy)]
enum Kind {
    Read,
    Write,
    Flush,
    Unmap,
}

struct PendingWrite {
    offset: u64,
    data: Vec<u8>,
}

struct State {
    /// What survives a crash for certain.
    durable: Vec<u8>,
    /// What reads see: `durable` plus the pending writes.
    current: Vec<u8>,
    /// Writes since the last successful flush, in completion order.
    pending: Vec<PendingWrite>,
    /// Writes made durable so far (a flush with latency drains up to its start's count).
    drained: u64,
    plan: FaultPlan,
    counts: IoCounts,
    /// Set by [`SimDevice::crash`]: the old device accepts no more I/O.
    crashed: bool,
    /// Crash images drawn so far (varies the seed of each draw).
    draws: u64,
    /// For `flip_random_bits`.
    rng: ChaCha8Rng,
    /// How long each async read stays in flight.
    delays: ChaCha8Rng,
}

/// A memory device with a seeded fault plan. `Send + Sync`; share it with `Arc` to keep a
/// handle after giving it to a store.
pub struct SimDevice {
    block_size: u32,
    size: u64,
    seed: u64,
    state: Mutex<State>,
}

impl std::fmt::Debug for SimDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimDevice")
            .field("block_size", &self.block_size)
            .field("size", &self.size)
            .field("seed", &self.seed)
            .finish_non_exhaustive()
    }
}

/// SplitMix64 finalizer: derives independent seeds from (seed, n).
fn mix(seed: u64, n: u64) -> u64 {
    let mut z = seed ^ n.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn sim_err(kind: io::ErrorKind, msg: String) -> Error {
    Error::Injected(io::Error::new(kind, format!("sim: {msg}")))
}

fn overlaps(r: &Range<u64>, offset: u64, len: u64) -> bool {
    offset < r.end && r.start < offset + len
}

impl SimDevice {
    /// A zero-filled device of `size` bytes (a multiple of `block_size`).
    pub fn new(size: u64, block_size: u32, seed: u64) -> Result<Self> {
        let len = usize::try_from(size)
            .map_err(|_| Error::invalid("sim device larger than the address space"))?;
        Self::from_image(vec![0; len], block_size, seed)
    }

    /// A device whose durable content is `image` (e.g. an earlier crash image or a fixture).
    pub fn from_image(image: Vec<u8>, block_size: u32, seed: u64) -> Result<Self> {
        if !(512..=4096).contains(&block_size) || !block_size.is_power_of_two() {
            return Err(Error::invalid(format!(
                "block size {block_size} is not a power of two in 512..=4096"
            )));
        }
        let size = image.len() as u64;
        if size == 0 || !size.is_multiple_of(u64::from(block_size)) {
            return Err(Error::invalid(format!(
                "sim image of {size} bytes is not a positive multiple of {block_size}"
            )));
        }
        Ok(SimDevice {
            block_size,
            size,
            seed,
            state: Mutex::new(State {
                current: image.clone(),
                durable: image,
                pending: Vec::new(),
                drained: 0,
                plan: FaultPlan::default(),
                counts: IoCounts::default(),
                crashed: false,
                draws: 0,
                rng: ChaCha8Rng::seed_from_u64(mix(seed, u64::MAX)),
                delays: ChaCha8Rng::seed_from_u64(mix(seed, u64::MAX - 1)),
            }),
        })
    }

    /// The seed every random choice derives from.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// A copy of the current fault plan.
    pub fn fault_plan(&self) -> FaultPlan {
        self.state.lock().plan.clone()
    }

    /// Replace the fault plan.
    pub fn set_fault_plan(&self, plan: FaultPlan) {
        self.state.lock().plan = plan;
    }

    /// Edit the fault plan in place.
    pub fn update_plan(&self, f: impl FnOnce(&mut FaultPlan)) {
        f(&mut self.state.lock().plan);
    }

    /// Back to the default plan (no faults). A crashed device stays crashed.
    pub fn clear_faults(&self) {
        self.set_fault_plan(FaultPlan::default());
    }

    /// Fail the next read (and all later ones if `persistent`).
    pub fn fail_next_read(&self, persistent: bool) {
        let mut st = self.state.lock();
        st.plan.read_error = Some(ErrorAt {
            nth: st.counts.reads + 1,
            persistent,
        });
    }

    /// Fail the next write (and all later ones if `persistent`).
    pub fn fail_next_write(&self, persistent: bool) {
        let mut st = self.state.lock();
        st.plan.write_error = Some(ErrorAt {
            nth: st.counts.writes + 1,
            persistent,
        });
    }

    /// Fail the next flush (and all later ones if `persistent`).
    pub fn fail_next_flush(&self, persistent: bool) {
        let mut st = self.state.lock();
        st.plan.flush_error = Some(ErrorAt {
            nth: st.counts.flushes + 1,
            persistent,
        });
    }

    /// Arm the crash point: I/O number `n + 1` (counted since the device was made) and every
    /// later one fail.
    pub fn stop_after(&self, n: u64) {
        self.state.lock().plan.stop_after = Some(n);
    }

    /// Writes ending past `limit` bytes fail with ENOSPC (`None`: no limit).
    pub fn set_full_at(&self, limit: Option<u64>) {
        self.state.lock().plan.full_at = limit;
    }

    /// Reads touching `range` fail with EIO.
    pub fn add_bad_range(&self, range: Range<u64>) {
        self.state.lock().plan.bad_ranges.push(range);
    }

    /// Which unflushed writes survive a crash.
    pub fn set_crash_mode(&self, mode: CrashMode) {
        self.state.lock().plan.crash_mode = mode;
    }

    /// Operations so far.
    pub fn io_counts(&self) -> IoCounts {
        self.state.lock().counts
    }

    /// Writes not yet made durable by a flush.
    pub fn unflushed_writes(&self) -> usize {
        self.state.lock().pending.len()
    }

    /// What survives a crash for certain (every flushed write).
    pub fn durable_image(&self) -> Vec<u8> {
        self.state.lock().durable.clone()
    }

    /// What reads see now.
    pub fn current_image(&self) -> Vec<u8> {
        self.state.lock().current.clone()
    }

    /// Whether [`SimDevice::crash`] was called (all I/O fails).
    pub fn is_crashed(&self) -> bool {
        self.state.lock().crashed
    }

    /// The image a power cut now would leave (see the module docs). Each call draws anew, from
    /// a seed derived from the device seed and the number of earlier draws, so the same
    /// seed and the same history give the same images.
    pub fn crash_image(&self) -> Vec<u8> {
        let mut st = self.state.lock();
        let draw = st.draws;
        st.draws += 1;
        let mut rng = ChaCha8Rng::seed_from_u64(mix(self.seed, draw));
        survivors(&st, &mut rng, self.size)
    }

    /// [`SimDevice::crash_image`] drawn from an explicit seed (does not count as a draw).
    pub fn crash_image_with_seed(&self, seed: u64) -> Vec<u8> {
        let st = self.state.lock();
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        survivors(&st, &mut rng, self.size)
    }

    /// Crash: this device stops accepting I/O, and the returned device (no faults, counters
    /// at zero, a derived seed) holds a [`SimDevice::crash_image`].
    pub fn crash(&self) -> Result<SimDevice> {
        // The image and the stop in one critical section: an I/O completing in between (a
        // flush acknowledged to a writer) would be missing from the image.
        let (image, draws) = {
            let mut st = self.state.lock();
            let draw = st.draws;
            st.draws += 1;
            let mut rng = ChaCha8Rng::seed_from_u64(mix(self.seed, draw));
            let image = survivors(&st, &mut rng, self.size);
            st.crashed = true;
            (image, st.draws)
        };
        SimDevice::from_image(image, self.block_size, mix(self.seed, draws ^ 0xC4A5_11ED))
    }

    /// Flip bit `bit` (0..8) of the byte at `offset`, on the medium (reads and durable image).
    pub fn flip_bit(&self, offset: u64, bit: u8) -> Result<()> {
        if offset >= self.size || bit >= 8 {
            return Err(Error::invalid(format!(
                "bit {bit} of byte {offset} is outside the device"
            )));
        }
        let mut st = self.state.lock();
        let o = offset as usize;
        st.durable[o] ^= 1 << bit;
        st.current[o] ^= 1 << bit;
        Ok(())
    }

    /// Flip `count` seeded-random bits inside `range`; returns the (byte, bit) positions.
    pub fn flip_random_bits(&self, range: Range<u64>, count: usize) -> Result<Vec<(u64, u8)>> {
        if range.start >= range.end || range.end > self.size {
            return Err(Error::invalid(format!(
                "flip range {range:?} is empty or outside the device"
            )));
        }
        let mut st = self.state.lock();
        let mut flips = Vec::with_capacity(count);
        for _ in 0..count {
            let byte = st.rng.gen_range(range.clone());
            let bit = st.rng.gen_range(0..8u8);
            st.durable[byte as usize] ^= 1 << bit;
            st.current[byte as usize] ^= 1 << bit;
            flips.push((byte, bit));
        }
        Ok(flips)
    }

    fn read_sync(&self, st: &mut State, offset: u64, buf: &mut [u8]) -> Result<()> {
        check_range(self.block_size, self.size, offset, buf.len() as u64)?;
        let k = st.begin(Kind::Read)?;
        if st.plan.read_error.is_some_and(|e| e.hits(k)) {
            return Err(sim_err(
                io::ErrorKind::Other,
                format!("injected EIO on read #{k} at {offset}+{}", buf.len()),
            ));
        }
        if let Some(r) = st
            .plan
            .bad_ranges
            .iter()
            .find(|r| overlaps(r, offset, buf.len() as u64))
        {
            return Err(sim_err(
                io::ErrorKind::Other,
                format!("EIO: read {offset}+{} touches bad range {r:?}", buf.len()),
            ));
        }
        let o = offset as usize;
        buf.copy_from_slice(&st.current[o..o + buf.len()]);
        Ok(())
    }

    fn write_sync(&self, st: &mut State, offset: u64, buf: &[u8]) -> Result<()> {
        check_range(self.block_size, self.size, offset, buf.len() as u64)?;
        let k = st.begin(Kind::Write)?;
        if st.plan.write_error.is_some_and(|e| e.hits(k)) {
            return Err(sim_err(
                io::ErrorKind::Other,
                format!("injected EIO on write #{k} at {offset}+{}", buf.len()),
            ));
        }
        let end = offset + buf.len() as u64;
        if let Some(limit) = st.plan.full_at {
            if end > limit {
                return Err(sim_err(
                    io::ErrorKind::StorageFull,
                    format!(
                        "ENOSPC: write {offset}+{} past the limit {limit}",
                        buf.len()
                    ),
                ));
            }
        }
        if buf.is_empty() {
            return Ok(());
        }
        let o = offset as usize;
        st.current[o..o + buf.len()].copy_from_slice(buf);
        st.pending.push(PendingWrite {
            offset,
            data: buf.to_vec(),
        });
        Ok(())
    }

    fn flush_sync(&self, st: &mut State) -> Result<()> {
        let k = st.begin(Kind::Flush)?;
        if st.plan.flush_error.is_some_and(|e| e.hits(k)) {
            return Err(sim_err(
                io::ErrorKind::Other,
                format!("injected EIO on flush #{k}"),
            ));
        }
        let n = st.pending.len();
        Self::make_durable(st, n);
        Ok(())
    }

    /// The first `n` pending writes become durable.
    fn make_durable(st: &mut State, n: usize) {
        let done: Vec<PendingWrite> = st.pending.drain(..n).collect();
        for w in &done {
            let o = w.offset as usize;
            st.durable[o..o + w.data.len()].copy_from_slice(&w.data);
        }
        st.drained += n as u64;
    }

    /// A flush that takes `latency`: it covers the writes completed when it started.
    fn slow_flush(&self, latency: Duration) -> Result<()> {
        let target = {
            let mut st = self.state.lock();
            let k = st.begin(Kind::Flush)?;
            if st.plan.flush_error.is_some_and(|e| e.hits(k)) {
                return Err(sim_err(
                    io::ErrorKind::Other,
                    format!("injected EIO on flush #{k}"),
                ));
            }
            st.drained + st.pending.len() as u64
        };
        std::thread::sleep(latency);
        let mut st = self.state.lock();
        if st.crashed {
            return Err(sim_err(
                io::ErrorKind::Other,
                "device crashed during a flush".into(),
            ));
        }
        let n = (target.saturating_sub(st.drained) as usize).min(st.pending.len());
        Self::make_durable(&mut st, n);
        Ok(())
    }
}

impl State {
    /// Count an I/O of `kind`; fail it if the device crashed or the crash point passed.
    /// Returns the 1-based number of this I/O among those of its kind.
    fn begin(&mut self, kind: Kind) -> Result<u64> {
        let c = &mut self.counts;
        let k = match kind {
            Kind::Read => {
                c.reads += 1;
                c.reads
            }
            Kind::Write => {
                c.writes += 1;
                c.writes
            }
            Kind::Flush => {
                c.flushes += 1;
                c.flushes
            }
            Kind::Unmap => {
                c.unmaps += 1;
                c.unmaps
            }
        };
        let total = c.total();
        if self.crashed {
            return Err(sim_err(
                io::ErrorKind::Other,
                "device crashed; no I/O accepted".into(),
            ));
        }
        if let Some(n) = self.plan.stop_after {
            if total > n {
                return Err(sim_err(
                    io::ErrorKind::Other,
                    format!("I/O #{total} refused: crash point after I/O #{n}"),
                ));
            }
        }
        Ok(k)
    }
}

/// The surviving image: durable data plus a selection of the pending writes.
fn survivors(st: &State, rng: &mut ChaCha8Rng, size: u64) -> Vec<u8> {
    let mut img = st.durable.clone();
    let apply = |img: &mut Vec<u8>, off: u64, data: &[u8]| {
        let o = off as usize;
        img[o..o + data.len()].copy_from_slice(data);
    };
    match st.plan.crash_mode {
        CrashMode::DropAll => {}
        CrashMode::KeepAll => {
            for w in &st.pending {
                apply(&mut img, w.offset, &w.data);
            }
        }
        CrashMode::Random => {
            let p: f64 = rng.gen();
            let mut chosen: Vec<&PendingWrite> =
                st.pending.iter().filter(|_| rng.gen_bool(p)).collect();
            chosen.shuffle(rng);
            for w in chosen {
                let pages = tear_units(w.offset, w.data.len() as u64);
                let torn = st.plan.torn_writes && pages.len() > 1 && rng.gen_bool(0.5);
                for (start, len) in pages {
                    if torn && !rng.gen_bool(0.5) {
                        continue;
                    }
                    let rel = (start - w.offset) as usize;
                    apply(&mut img, start, &w.data[rel..rel + len as usize]);
                }
            }
        }
    }
    if st.plan.crash_bit_flips > 0 {
        let range = st.plan.crash_flip_range.clone().unwrap_or(0..size);
        let range = range.start.min(size)..range.end.min(size);
        if range.start < range.end {
            for _ in 0..st.plan.crash_bit_flips {
                let byte = rng.gen_range(range.clone()) as usize;
                img[byte] ^= 1 << rng.gen_range(0..8u8);
            }
        }
    }
    img
}

/// Split `[offset, offset + len)` at [`TEAR_UNIT`] boundaries: `(start, len)` pieces.
fn tear_units(offset: u64, len: u64) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    let end = offset + len;
    let mut at = offset;
    while at < end {
        let next = ((at / TEAR_UNIT) + 1) * TEAR_UNIT;
        let stop = next.min(end);
        out.push((at, stop - at));
        at = stop;
    }
    out
}

impl Device for SimDevice {
    fn block_size(&self) -> u32 {
        self.block_size
    }

    fn size(&self) -> u64 {
        self.size
    }

    fn io_path(&self) -> IoPath {
        IoPath::Memory
    }

    async fn read(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        let mut st = self.state.lock();
        self.read_sync(&mut st, offset, buf)
    }

    async fn write(&self, offset: u64, buf: &[u8]) -> Result<()> {
        let mut st = self.state.lock();
        self.write_sync(&mut st, offset, buf)
    }

    async fn read_owned(&self, offset: u64, buf: AlignedBuf) -> (AlignedBuf, Result<()>) {
        let polls = self.state.lock().delays.gen_range(0..=3u32);
        for _ in 0..polls {
            YieldOnce(false).await;
        }
        let mut buf = buf;
        let r = {
            let mut st = self.state.lock();
            self.read_sync(&mut st, offset, &mut buf)
        };
        (buf, r)
    }

    /// Requests run in order, each on its own (a failure does not stop the others, as with a
    /// real queue); the first error is returned.
    async fn submit(&self, reqs: &mut [IoRequest<'_>]) -> Result<()> {
        let mut st = self.state.lock();
        let mut first = Ok(());
        for r in reqs.iter_mut() {
            let res = match r {
                IoRequest::Read { offset, buf } => self.read_sync(&mut st, *offset, buf),
                IoRequest::Write { offset, buf } => self.write_sync(&mut st, *offset, buf),
            };
            if first.is_ok() {
                first = res;
            }
        }
        first
    }

    async fn flush(&self) -> Result<()> {
        let mut st = self.state.lock();
        let latency = st.plan.flush_latency;
        if !latency.is_zero() {
            drop(st);
            return self.slow_flush(latency);
        }
        self.flush_sync(&mut st)
    }

    async fn unmap(&self, offset: u64, len: u64) -> Result<()> {
        check_range(self.block_size, self.size, offset, len)?;
        self.state.lock().begin(Kind::Unmap).map(|_| ())
    }
}

/// Pending once (waking itself), then ready: one step of an in-flight delay.
struct YieldOnce(bool);

impl std::future::Future for YieldOnce {
    type Output = ();
    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<()> {
        if self.0 {
            return std::task::Poll::Ready(());
        }
        self.0 = true;
        cx.waker().wake_by_ref();
        std::task::Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    const PAGE: usize = 4096;

    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        pollster::block_on(f)
    }

    fn page(fill: u8) -> Vec<u8> {
        vec![fill; PAGE]
    }

    /// Content of page `i` of `img`, checked to be uniform; returns its fill byte.
    fn fill_of(img: &[u8], i: usize) -> u8 {
        let p = &img[i * PAGE..(i + 1) * PAGE];
        assert!(p.iter().all(|&b| b == p[0]), "page {i} is not uniform");
        p[0]
    }

    fn dev(seed: u64) -> SimDevice {
        SimDevice::new(64 * PAGE as u64, 4096, seed).unwrap()
    }

    /// A slow flush covers only the writes completed before it started.
    #[test]
    fn a_slow_flush_covers_writes_completed_before_it_started() {
        let d = Arc::new(SimDevice::new(64 << 10, 4096, 3).unwrap());
        d.update_plan(|p| p.flush_latency = Duration::from_millis(50));
        block_on(d.write(0, &[1u8; 4096])).unwrap();
        let f = {
            let d = d.clone();
            std::thread::spawn(move || block_on(d.flush()))
        };
        std::thread::sleep(Duration::from_millis(10));
        block_on(d.write(4096, &[2u8; 4096])).unwrap();
        f.join().unwrap().unwrap();
        assert_eq!(d.unflushed_writes(), 1);
        let img = d.durable_image();
        assert_eq!(img[0], 1);
        assert_eq!(img[4096], 0);
    }

    #[test]
    fn reads_see_unflushed_writes() {
        let d = dev(1);
        block_on(d.write(4096, &page(7))).unwrap();
        let mut b = page(0);
        block_on(d.read(4096, &mut b)).unwrap();
        assert_eq!(b, page(7));
        assert_eq!(d.unflushed_writes(), 1);
        assert_eq!(fill_of(&d.durable_image(), 1), 0);
        block_on(d.flush()).unwrap();
        assert_eq!(d.unflushed_writes(), 0);
        assert_eq!(fill_of(&d.durable_image(), 1), 7);
    }

    #[test]
    fn crash_keeps_flushed_writes_exactly() {
        for seed in 0..50 {
            let d = dev(seed);
            for i in 0..8 {
                block_on(d.write(i * 4096, &page(i as u8 + 1))).unwrap();
            }
            block_on(d.flush()).unwrap();
            // Overwrite half of them without flushing.
            for i in 0..4 {
                block_on(d.write(i * 4096, &page(0xEE))).unwrap();
            }
            let img = d.crash_image();
            for i in 0..8 {
                let f = fill_of(&img, i);
                if i < 4 {
                    assert!(f == i as u8 + 1 || f == 0xEE, "seed {seed} page {i}: {f}");
                } else {
                    assert_eq!(f, i as u8 + 1, "seed {seed} page {i}");
                }
            }
        }
    }

    #[test]
    fn crash_modes_bound_the_outcomes() {
        let d = dev(3);
        block_on(d.write(0, &page(1))).unwrap();
        block_on(d.flush()).unwrap();
        block_on(d.write(0, &page(2))).unwrap();
        block_on(d.write(4096, &[3u8; 2 * PAGE])).unwrap();
        d.set_crash_mode(CrashMode::DropAll);
        assert_eq!(d.crash_image(), d.durable_image());
        d.set_crash_mode(CrashMode::KeepAll);
        assert_eq!(d.crash_image(), d.current_image());
    }

    #[test]
    fn unflushed_writes_survive_as_a_subset() {
        let n = 32;
        let (mut kept_some, mut dropped_some) = (false, false);
        for seed in 0..40 {
            let d = dev(seed);
            for i in 0..n {
                block_on(d.write(i * 4096, &page(0xA0 + i as u8))).unwrap();
            }
            let img = d.crash_image();
            for i in 0..n as usize {
                match fill_of(&img, i) {
                    0 => dropped_some = true,
                    f if f == 0xA0 + i as u8 => kept_some = true,
                    f => panic!("seed {seed} page {i}: foreign byte {f:#x}"),
                }
            }
        }
        assert!(kept_some && dropped_some);
    }

    #[test]
    fn overwritten_block_may_keep_any_version() {
        let mut seen = std::collections::BTreeSet::new();
        for seed in 0..200 {
            let d = dev(seed);
            for v in 1..=3u8 {
                block_on(d.write(0, &page(v))).unwrap();
            }
            seen.insert(fill_of(&d.crash_image(), 0));
        }
        assert_eq!(seen.into_iter().collect::<Vec<_>>(), vec![0, 1, 2, 3]);
    }

    #[test]
    fn multi_page_writes_tear_at_page_granularity() {
        let (mut torn, mut whole) = (false, false);
        for seed in 0..200 {
            let d = SimDevice::new(64 * PAGE as u64, 512, seed).unwrap();
            d.set_crash_mode(CrashMode::KeepAll);
            // KeepAll never tears; use Random for the real check below.
            d.set_crash_mode(CrashMode::Random);
            // 4 pages starting mid-page (512-byte blocks): 5 tear units.
            let mut data = vec![0u8; 4 * PAGE];
            for (i, b) in data.iter_mut().enumerate() {
                *b = 1 + ((i + 2048) / PAGE) as u8;
            }
            block_on(d.write(2048, &data)).unwrap();
            let img = d.crash_image();
            // Every 4 KiB unit of the device is entirely old (0) or entirely new.
            let mut news = 0;
            for u in 0..6 {
                let p = &img[u * PAGE..(u + 1) * PAGE];
                let lo = if u == 0 { 2048 } else { 0 };
                let hi = if u == 4 { 2048 } else { PAGE };
                let part = &p[lo..hi];
                let all_old = part.iter().all(|&b| b == 0);
                let all_new = part.iter().all(|&b| b == 1 + u as u8);
                assert!(u == 5 || all_old || all_new, "seed {seed} unit {u} mixed");
                if u < 5 && all_new {
                    news += 1;
                }
            }
            match news {
                0 => {}
                5 => whole = true,
                _ => torn = true,
            }
        }
        assert!(torn && whole, "torn {torn} whole {whole}");
    }

    #[test]
    fn torn_writes_can_be_disabled() {
        for seed in 0..100 {
            let d = dev(seed);
            d.update_plan(|p| p.torn_writes = false);
            block_on(d.write(0, &[9u8; 4 * PAGE])).unwrap();
            let img = d.crash_image();
            let news = (0..4).filter(|&i| fill_of(&img, i) == 9).count();
            assert!(news == 0 || news == 4, "seed {seed}: {news}");
        }
    }

    #[test]
    fn eio_countdown_transient_and_persistent() {
        let d = dev(0);
        let mut b = page(0);
        // Transient write error: only the next write fails, and it changes nothing.
        d.fail_next_write(false);
        assert!(matches!(
            block_on(d.write(0, &page(1))),
            Err(Error::Injected(_))
        ));
        assert_eq!(fill_of(&d.current_image(), 0), 0);
        block_on(d.write(0, &page(2))).unwrap();
        // Persistent write error from the 2nd next write on.
        let w = d.io_counts().writes;
        d.update_plan(|p| p.write_error = Some(ErrorAt::persistent(w + 2)));
        block_on(d.write(0, &page(3))).unwrap();
        for _ in 0..3 {
            assert!(block_on(d.write(0, &page(4))).is_err());
        }
        assert_eq!(fill_of(&d.current_image(), 0), 3);
        // Reads.
        d.fail_next_read(false);
        assert!(block_on(d.read(0, &mut b)).is_err());
        block_on(d.read(0, &mut b)).unwrap();
        d.fail_next_read(true);
        assert!(block_on(d.read(0, &mut b)).is_err());
        assert!(block_on(d.read(0, &mut b)).is_err());
        // Flush: a failed flush makes nothing durable.
        d.clear_faults();
        d.fail_next_flush(false);
        assert!(block_on(d.flush()).is_err());
        assert_eq!(d.unflushed_writes(), 2);
        assert_eq!(fill_of(&d.durable_image(), 0), 0);
        block_on(d.flush()).unwrap();
        assert_eq!(fill_of(&d.durable_image(), 0), 3);
        d.fail_next_flush(true);
        assert!(block_on(d.flush()).is_err());
        assert!(block_on(d.flush()).is_err());
        let c = d.io_counts();
        assert_eq!((c.reads, c.writes, c.flushes), (4, 6, 4));
    }

    #[test]
    fn crash_point_stops_all_later_io() {
        fn workload(d: &SimDevice) -> Vec<bool> {
            let mut ok = Vec::new();
            let mut b = page(0);
            for i in 0..4u64 {
                ok.push(block_on(d.write(i * 4096, &page(i as u8 + 1))).is_ok());
                ok.push(block_on(d.read(i * 4096, &mut b)).is_ok());
                ok.push(block_on(d.flush()).is_ok());
            }
            ok.push(block_on(d.unmap(0, 4096)).is_ok());
            ok
        }
        let total = {
            let d = dev(0);
            assert!(workload(&d).iter().all(|&x| x));
            d.io_counts().total()
        };
        assert_eq!(total, 13);
        for n in 0..=total {
            let d = dev(n);
            d.stop_after(n);
            let ok = workload(&d);
            let expect: Vec<bool> = (0..total).map(|i| i < n).collect();
            assert_eq!(ok, expect, "crash point {n}");
            // The durable image holds exactly the writes whose flush completed.
            let img = d.crash_image();
            for i in 0..4usize {
                let flushed = (3 * i as u64 + 3) <= n;
                if flushed {
                    assert_eq!(fill_of(&img, i), i as u8 + 1, "crash point {n} page {i}");
                }
            }
        }
    }

    #[test]
    fn batch_requests_fail_independently() {
        let d = dev(0);
        d.stop_after(2);
        let (a, b, c) = (page(1), page(2), page(3));
        let mut reqs = [
            IoRequest::Write { offset: 0, buf: &a },
            IoRequest::Write {
                offset: 4096,
                buf: &b,
            },
            IoRequest::Write {
                offset: 8192,
                buf: &c,
            },
        ];
        assert!(block_on(d.submit(&mut reqs)).is_err());
        let img = d.current_image();
        assert_eq!(
            (fill_of(&img, 0), fill_of(&img, 1), fill_of(&img, 2)),
            (1, 2, 0)
        );
        assert_eq!(d.io_counts().writes, 3);
    }

    #[test]
    fn bit_flips_are_detected_by_a_checksum() {
        let d = dev(11);
        let data: Vec<u8> = (0..PAGE).map(|i| (i * 7) as u8).collect();
        let sum = crc32c::crc32c(&data);
        block_on(d.write(8192, &data)).unwrap();
        block_on(d.flush()).unwrap();
        let flips = d.flip_random_bits(8192..8192 + PAGE as u64, 1).unwrap();
        assert!((8192..8192 + PAGE as u64).contains(&flips[0].0));
        let mut back = page(0);
        block_on(d.read(8192, &mut back)).unwrap();
        assert_ne!(crc32c::crc32c(&back), sum);
        // Flipping the same bit again restores the data, in the durable image too.
        d.flip_bit(flips[0].0, flips[0].1).unwrap();
        assert_eq!(crc32c::crc32c(&d.durable_image()[8192..8192 + PAGE]), sum);
        assert!(d.flip_bit(64 * PAGE as u64, 0).is_err());
        // Flips at crash time hit only the crash image, inside the range.
        d.update_plan(|p| {
            p.crash_bit_flips = 3;
            p.crash_flip_range = Some(8192..8192 + PAGE as u64);
        });
        let img = d.crash_image();
        assert_ne!(crc32c::crc32c(&img[8192..8192 + PAGE]), sum);
        assert_eq!(&img[..8192], &d.durable_image()[..8192]);
        assert_eq!(crc32c::crc32c(&d.current_image()[8192..8192 + PAGE]), sum);
    }

    #[test]
    fn full_device_and_latent_sector_errors() {
        let d = dev(0);
        d.set_full_at(Some(8 * 4096));
        block_on(d.write(7 * 4096, &page(1))).unwrap();
        match block_on(d.write(7 * 4096, &[1u8; 2 * PAGE])) {
            Err(Error::Injected(e)) => assert_eq!(e.kind(), io::ErrorKind::StorageFull),
            other => panic!("expected ENOSPC, got {other:?}"),
        }
        d.set_full_at(None);
        block_on(d.write(7 * 4096, &[1u8; 2 * PAGE])).unwrap();
        d.add_bad_range(10 * 4096 + 100..10 * 4096 + 101);
        let mut b = page(0);
        assert!(block_on(d.read(10 * 4096, &mut b)).is_err());
        block_on(d.read(9 * 4096, &mut b)).unwrap();
        block_on(d.write(10 * 4096, &b)).unwrap();
        assert!(block_on(d.read(10 * 4096, &mut b)).is_err());
    }

    #[test]
    fn same_seed_same_crash() {
        let run = |seed| {
            let d = dev(seed);
            for i in 0..16u64 {
                block_on(d.write((i % 10) * 4096, &[i as u8; 2 * PAGE])).unwrap();
                if i == 5 {
                    block_on(d.flush()).unwrap();
                }
            }
            let flips = d.flip_random_bits(0..4096, 2).unwrap();
            (d.crash_image(), d.crash_image(), flips)
        };
        let (a1, a2, fa) = run(42);
        let (b1, b2, fb) = run(42);
        assert!(a1 == b1 && a2 == b2 && fa == fb);
        assert!(a1 != a2 || run(43).0 != a1, "draws should vary");
        let d = dev(9);
        block_on(d.write(0, &[5u8; 8 * PAGE])).unwrap();
        assert_eq!(d.crash_image_with_seed(77), d.crash_image_with_seed(77));
    }

    #[test]
    fn crash_hands_over_to_a_new_device() {
        let d = Arc::new(dev(5));
        block_on(d.write(0, &page(1))).unwrap();
        block_on(d.flush()).unwrap();
        let after = d.crash().unwrap();
        assert!(d.is_crashed());
        let mut b = page(0);
        assert!(block_on(d.read(0, &mut b)).is_err());
        block_on(after.read(0, &mut b)).unwrap();
        assert_eq!(b, page(1));
        assert_eq!(after.io_counts().total(), 1);
        let again = SimDevice::from_image(after.durable_image(), 4096, 1).unwrap();
        assert_eq!(fill_of(&again.durable_image(), 0), 1);
        assert!(SimDevice::from_image(vec![0; 1000], 512, 0).is_err());
        assert!(SimDevice::new(4096, 300, 0).is_err());
    }

    #[test]
    fn shared_handle_is_a_device() {
        fn assert_device<D: Device>(_: &D) {}
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<SimDevice>();
        let d = Arc::new(dev(0));
        assert_device(&d);
        let store_side = Arc::clone(&d);
        block_on(store_side.write(0, &page(4))).unwrap();
        assert_eq!(d.io_counts().writes, 1);
        assert_eq!(store_side.io_path(), IoPath::Memory);
    }
}
