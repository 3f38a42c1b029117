//! A shard: the single writer of its shard's log.
//!
//! **Who runs the write.** The shard's state sits behind a mutex ([`ShardCell`]). A blocking
//! caller that finds it free runs the group itself: its own request plus whatever is queued
//! (flat combining), so a lone synchronous writer pays no thread hop and no wake-up, and its
//! own outcome needs no reply slot (`reply::Sender::caller`). A caller
//! that finds the shard busy queues its request on the shard's `crossbeam-channel` and waits on
//! its reply slot; the current holder drains the queue before it lets go, and the shard's own
//! thread serves whatever is left (and every async caller). Measured with db_bench fillseq
//! (1 thread, memory device, loaded 2-core VM): 54 µs/op with every write hopping to the shard
//! thread, 12 µs/op with the caller running it.
//!
//! **One write per group.** The group's records are encoded into one contiguous run after the
//! log's end, issued as **one device write** (from the page holding the device end, page
//! aligned) and, per the sync policy, **one flush**; then the new locations are published in
//! the keydir under one write-lock and everyone is answered.
//!
//! **Pipelined group commit.** On a blobstore that shares device flushes (the native one, see
//! `device::FlushCombiner`), a group of plain writes under a syncing policy lets go of the
//! shard's lock once it is on the device, holding a flush ticket: the next group is written
//! while this one's flush runs, and one flush serves every shard whose groups were written
//! before it started. Its writer then waits for the flush (`ShardCell::settle`) and publishes,
//! in log order, every group that flush made durable.
//!
//! **Write-behind under `SyncPolicy::Never`.** Acknowledging only after a direct-I/O write
//! costs a device round trip per put (~400 µs on these VMs). Under `Never` the records are
//! acknowledged once they are in the shard's write-behind buffer ([`crate::state::Unwritten`]),
//! which readers consult before the device; it goes out when it holds 1 MiB, on `sync`, seal,
//! close and batch rounds, and from the shard thread after 2 ms idle, or every 20 ms while
//! writers keep the shard busy (the thread never takes the lock from a running writer more
//! often: its writer would queue behind it). A crash loses a suffix of the shard's log: what
//! is left is still a prefix.
//!
//! **Free-space lease.** The active blob is grown ahead of the write cursor by a batch of
//! clusters at a time (`resize` + one `sync_md`), so appends inside the lease touch neither the
//! blobstore's allocator nor its metadata thread. A cluster is written only once the metadata
//! naming it is durable. After a crash the unused part of the lease still belongs to the blob;
//! open seals that blob and shrinks it to what holds records, which returns the clusters.
//!
//! **Torn writes.** Only the page holding the device end (whose acknowledged bytes are
//! rewritten unchanged) is ever rewritten, and a page write is atomic; a torn multi-page write
//! can therefore only lose records not yet acknowledged as durable.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use parking_lot::Mutex;

use crate::blobstore::{BlobStore, IoChannel as _};
use crate::device::AlignedBuf;
use crate::error::{Error, Result};
use crate::keydir::{hash_key, Loc};
use crate::options::SyncPolicy;
use crate::record;
use crate::reply;
use crate::state::{record_len, BlobEntry, BlobHandle, BlobRole, Core, Index, LOC_BATCH_BIT};

/// One mutation.
#[derive(Debug, Clone)]
pub(crate) enum Op {
    Put(Vec<u8>, Vec<u8>),
    Delete(Vec<u8>),
}

impl Op {
    pub fn key(&self) -> &[u8] {
        match self {
            Op::Put(k, _) | Op::Delete(k) => k,
        }
    }
}

/// A request to a shard thread.
pub(crate) enum Req {
    /// Plain writes, or a whole single-shard batch (`batch` = its id) with its commit.
    Write {
        ops: Vec<Op>,
        batch: Option<u64>,
        reply: reply::Sender<()>,
    },
    /// Round 1 of a cross-shard batch: write and flush the members, publish nothing yet.
    Prepare {
        batch: u64,
        ops: Vec<Op>,
        reply: reply::Sender<()>,
    },
    /// Round 2: write the commit record, then publish the prepared members.
    Commit {
        batch: u64,
        reply: reply::Sender<()>,
    },
    /// Round 1 failed somewhere: forget the prepared members (they stay uncommitted on disk).
    Abort {
        batch: u64,
    },
    Sync {
        reply: reply::Sender<()>,
    },
    /// Seal the active blob (so that a merge on demand covers everything written so far).
    Seal {
        reply: reply::Sender<()>,
    },
    Close {
        reply: reply::Sender<()>,
    },
}

/// Requests drained into one group at most.
const MAX_GROUP: usize = 512;
/// Encoded bytes after which a group is written out even if more is queued.
const MAX_ENCODED: usize = 8 << 20;
/// Under `SyncPolicy::Never`, buffered bytes that force a device write.
const WRITE_BEHIND: u64 = 1 << 20;
/// Under `SyncPolicy::Never`, how long records may wait in the buffer when the shard is idle.
const WRITE_BEHIND_DELAY: Duration = Duration::from_millis(2);
/// Under `SyncPolicy::Never`, how long records may wait in the buffer while writers keep the
/// shard busy (and the buffer short of `WRITE_BEHIND`).
const WRITE_BEHIND_MAX_AGE: Duration = Duration::from_millis(20);

/// A keydir change to publish once the group is durable.
struct Effect {
    key: Vec<u8>,
    hash: u64,
    loc: Option<Loc>,
    len: u64,
}

enum Post {
    Apply(reply::Sender<()>, Vec<Effect>),
    Prepare(u64, reply::Sender<()>, Vec<Effect>),
    Commit(u64, reply::Sender<()>),
}

/// A group on the device whose flush is still to come (pipelined, see `Shard::settle`).
struct Awaiting {
    /// The device flush that makes it durable (`BlobStore::flush_ticket`).
    ticket: u64,
    /// Only `Post::Apply`.
    posts: Vec<Post>,
    /// Slot and salt of the blob it went to, and the log's device end after it.
    slot: u16,
    salt: u64,
    end: u64,
}

/// How a group ended.
#[derive(Debug, Default, Clone, Copy)]
struct GroupEnd {
    /// The shard closed.
    closed: bool,
    /// The group is on the device and waits for this flush: whoever ran it calls
    /// `ShardCell::settle` once it has let go of the shard's lock.
    ticket: Option<u64>,
}

/// What a group asked for, gathered while staging its requests.
#[derive(Default)]
struct GroupPlan {
    /// Replies that wait for the group's keydir changes to publish.
    posts: Vec<Post>,
    syncs: Vec<reply::Sender<()>>,
    close: Option<reply::Sender<()>>,
    /// Flush once the group is on the device (the sync policy or a request wants it durable).
    flush: bool,
    /// Sync, seal, close and batch rounds need the records on the device now.
    flush_forced: bool,
    /// A round of a cross-shard batch is in the group: its caller holds `batch_gate`, so the
    /// group must not be pipelined (settling it takes `state` with a wait, which `batch_gate`
    /// holders never do).
    batch_round: bool,
}

impl Post {
    fn fail(self, e: Error) {
        match self {
            Post::Apply(r, _) | Post::Prepare(_, r, _) | Post::Commit(_, r) => r.send(Err(e)),
        }
    }
}

/// The active data blob.
struct Active<S: BlobStore> {
    slot: u16,
    handle: Arc<BlobHandle<S>>,
    /// End of the published log (on the device or in the shard's write-behind buffer).
    end: u64,
    /// End of what reached the device.
    dev_end: u64,
    /// Bytes of clusters whose metadata is durable.
    leased: u64,
    /// End of what a completed flush covers: each record claims it (see `record.rs`).
    durable: u64,
    /// A blob continued after a reopen whose space past the log may still hold a torn or
    /// stale tail: cleared (and the shard's snapshots dropped) before the first append.
    resumed: bool,
}

/// State of one shard thread.
pub(crate) struct Shard<S: BlobStore> {
    id: usize,
    core: Arc<Core<S>>,
    chan: S::Channel,
    active: Option<Active<S>>,
    next_seq: u64,
    enc: Vec<u8>,
    wbuf: AlignedBuf,
    pending: HashMap<u64, Vec<Effect>>,
    last_group: usize,
    /// Something of the current group reached the device.
    group_wrote: bool,
    /// The current group flushed the device (so every group in `awaiting` is durable).
    group_flushed: bool,
    /// The current group holds puts (which may not eat into the merge reserve).
    group_puts: bool,
    /// Something was written since open: close writes a fresh keydir snapshot.
    wrote: bool,
    /// Blobs this shard sealed that may hold records not yet in the keydir (a group or a
    /// prepared batch that spans a rotation): they stay out of merges until published, or a
    /// merge would take those records for dead and drop them, blob and all.
    unpublished: Vec<u16>,
    /// Groups written but not yet durable, oldest first (pipelined plain writes).
    awaiting: VecDeque<Awaiting>,
    /// Plain write groups release the shard during their flush (see `Shard::settle`).
    pipeline: bool,
    /// The last `ShardShared::barrier` flush this shard waited for.
    barrier_done: u64,
}

/// A shard: its state under a mutex, and its queue.
///
/// A blocking caller that finds the state unlocked runs the group itself (its own request plus
/// whatever is queued), so a lone synchronous writer pays no thread hop; otherwise it queues
/// the request for the current holder or the shard thread. Either way exactly one thread at a
/// time writes the shard's log through the shard's I/O channel.
pub(crate) struct ShardCell<S: BlobStore> {
    pub state: Mutex<Shard<S>>,
    pub tx: Sender<Req>,
    pub rx: Receiver<Req>,
    /// Set once the shard processed its `Close`.
    pub closed: AtomicBool,
    /// Records wait in the write-behind buffer (the shard thread writes them out when idle).
    pub pending: AtomicBool,
    /// Groups run so far, by anyone: the shard thread tells an idle shard from a busy one.
    pub groups: AtomicU64,
    /// For the shard thread to see `ShardShared::seal_wanted` without taking the lock.
    core: Arc<Core<S>>,
    id: usize,
    /// Mirrors `Shard::pipeline`: a blocking writer needs a reply slot, since whoever
    /// settles its group may be another thread.
    pipeline: bool,
}

impl<S: BlobStore> ShardCell<S> {
    /// Hand `req` to the shard: run it here if the shard is idle, else queue it.
    pub fn submit(&self, req: Req, direct: bool) -> Result<()> {
        if direct {
            if let Some(mut st) = self.state.try_lock() {
                if self.closed.load(Ordering::Acquire) {
                    fail_req(req, Error::Closed);
                    return Ok(());
                }
                let ticket = self.run_locked(&mut st, req);
                drop(st);
                self.settle(ticket);
                return Ok(());
            }
        }
        self.tx.send(req).map_err(|_| Error::Closed)
    }

    /// Plain writes from a blocking caller: run here if the shard is idle, with no reply slot
    /// (the outcome comes back through `reply::take_caller`), else queue them and wait.
    pub fn write(&self, ops: Vec<Op>) -> Result<()> {
        if let Some(mut st) = self.state.try_lock() {
            if self.closed.load(Ordering::Acquire) {
                return Err(Error::Closed);
            }
            if self.pipeline {
                let (tx, rx) = reply::channel();
                let req = Req::Write {
                    ops,
                    batch: None,
                    reply: tx,
                };
                let ticket = self.run_locked(&mut st, req);
                drop(st);
                self.settle(ticket);
                return rx.wait();
            }
            let req = Req::Write {
                ops,
                batch: None,
                reply: reply::Sender::caller(),
            };
            self.run_locked(&mut st, req);
            return reply::take_caller();
        }
        let (tx, rx) = reply::channel();
        let req = Req::Write {
            ops,
            batch: None,
            reply: tx,
        };
        self.tx.send(req).map_err(|_| Error::Closed)?;
        rx.wait()
    }

    /// Run `req` and whatever is queued as one group, holding the shard's lock. A ticket
    /// back: the group waits for that flush (call `settle` with the lock released).
    fn run_locked(&self, st: &mut Shard<S>, req: Req) -> Option<u64> {
        let group = st.gather(req, &self.rx);
        let end = st.handle_group(group);
        if end.closed {
            self.closed.store(true, Ordering::Release);
        }
        self.pending.store(st.has_unwritten(), Ordering::Relaxed);
        self.groups.fetch_add(1, Ordering::Relaxed);
        end.ticket
    }

    /// The second half of a pipelined group, run without the shard's lock so that the next
    /// group can be written meanwhile: wait for the device flush numbered `ticket` (shared
    /// with every shard and writer of the device), then publish what it made durable.
    fn settle(&self, ticket: Option<u64>) {
        let Some(ticket) = ticket else {
            return;
        };
        let store = &self.core.store;
        let r = store.block_on(store.flush_to(ticket)).map_err(Error::from);
        self.state.lock().settle(ticket, r);
    }
}

/// Make shard `id` and start its thread. `next_seq` continues the recovered log.
pub(crate) fn spawn<S: BlobStore>(
    core: Arc<Core<S>>,
    id: usize,
    next_seq: u64,
) -> Result<(Arc<ShardCell<S>>, std::thread::JoinHandle<()>)> {
    let chan = core.store.channel()?;
    let active = resume_active(&core, id, &chan)?;
    let pipeline =
        !matches!(core.cfg.sync, SyncPolicy::Never) && core.store.flush_ticket().is_some();
    let (tx, rx) = crossbeam_channel::bounded(4096);
    let cell = Arc::new(ShardCell {
        core: core.clone(),
        id,
        state: Mutex::new(Shard {
            id,
            core,
            chan,
            active,
            next_seq: next_seq.max(1),
            enc: Vec::new(),
            wbuf: AlignedBuf::zeroed(0),
            pending: HashMap::new(),
            last_group: 0,
            group_wrote: false,
            group_flushed: false,
            group_puts: false,
            wrote: false,
            unpublished: Vec::new(),
            awaiting: VecDeque::new(),
            pipeline,
            barrier_done: 0,
        }),
        tx,
        rx,
        closed: AtomicBool::new(false),
        pending: AtomicBool::new(false),
        groups: AtomicU64::new(0),
        pipeline,
    });
    let c = cell.clone();
    let thread = std::thread::Builder::new()
        .name(format!("blobcask-shard-{id}"))
        .spawn(move || run(&c))
        .map_err(Error::Io)?;
    Ok((cell, thread))
}

/// The shard thread: serves queued requests (async callers, and blocking callers that found
/// the shard busy) until the shard is closed. Under `SyncPolicy::Never` it also writes the
/// write-behind buffer out once the shard has been idle for `WRITE_BEHIND_DELAY`, or, under a
/// steady load that keeps the shard busy, once `WRITE_BEHIND_MAX_AGE` has passed since it last
/// did: taking the shard's lock every 2 ms would make the running writer queue behind it.
fn run<S: BlobStore>(cell: &ShardCell<S>) {
    let never = matches!(cell.state.lock().core.cfg.sync, SyncPolicy::Never);
    let wait = if never {
        WRITE_BEHIND_DELAY
    } else {
        Duration::from_millis(50)
    };
    let mut seen = cell.groups.load(Ordering::Relaxed);
    let mut last_flush = Instant::now();
    loop {
        match cell.rx.recv_timeout(wait) {
            Ok(req) => {
                let mut st = cell.state.lock();
                if cell.closed.load(Ordering::Acquire) {
                    fail_req(req, Error::Closed);
                    continue;
                }
                let group = st.gather(req, &cell.rx);
                let end = st.handle_group(group);
                if end.closed {
                    cell.closed.store(true, Ordering::Release);
                    return;
                }
                cell.pending.store(st.has_unwritten(), Ordering::Relaxed);
                cell.groups.fetch_add(1, Ordering::Relaxed);
                drop(st);
                cell.settle(end.ticket);
            }
            Err(RecvTimeoutError::Timeout) => {
                if cell.closed.load(Ordering::Acquire) {
                    return;
                }
                if cell.core.shards[cell.id]
                    .seal_wanted
                    .load(Ordering::Acquire)
                {
                    let mut st = cell.state.lock();
                    if !cell.closed.load(Ordering::Acquire) {
                        st.seal_if_wanted();
                    }
                }
                let now = cell.groups.load(Ordering::Relaxed);
                let idle = now == seen;
                seen = now;
                let due = idle || last_flush.elapsed() >= WRITE_BEHIND_MAX_AGE;
                if due && cell.pending.load(Ordering::Relaxed) {
                    last_flush = Instant::now();
                    write_behind(cell);
                }
            }
            Err(RecvTimeoutError::Disconnected) => return,
        }
    }
}

/// Write the write-behind buffer out (the shard thread, on a timer).
fn write_behind<S: BlobStore>(cell: &ShardCell<S>) {
    let mut st = cell.state.lock();
    if st.core.is_poisoned() {
        cell.pending.store(false, Ordering::Relaxed);
        return;
    }
    if let Err(e) = st.write_out() {
        log::error!("blobcask: shard {} write-behind failed: {e}", st.id);
        st.core.poison();
    }
    cell.pending.store(st.has_unwritten(), Ordering::Relaxed);
}

/// A poisoned shard refuses the whole group (a `Close` in it still closes); true if it closed.
fn refuse_poisoned(group: Vec<Req>) -> bool {
    let mut close = None;
    for req in group {
        match req {
            Req::Close { reply } => close = Some(reply),
            other => fail_req(other, Error::Poisoned),
        }
    }
    if let Some(r) = close {
        r.send(Ok(()));
        return true;
    }
    false
}

pub(crate) fn fail_req(req: Req, e: Error) {
    match req {
        Req::Write { reply, .. }
        | Req::Prepare { reply, .. }
        | Req::Commit { reply, .. }
        | Req::Sync { reply }
        | Req::Seal { reply }
        | Req::Close { reply } => reply.send(Err(e)),
        Req::Abort { .. } => {}
    }
}

impl<S: BlobStore> Shard<S> {
    /// The first request plus what is queued; under group commit, wait up to `max_delay`
    /// for more when the last group showed concurrent writers.
    fn gather(&mut self, first: Req, rx: &Receiver<Req>) -> Vec<Req> {
        let mut group = vec![first];
        while group.len() < MAX_GROUP {
            match rx.try_recv() {
                Ok(r) => group.push(r),
                Err(_) => break,
            }
        }
        if let SyncPolicy::GroupCommit { max_delay } = self.core.cfg.sync {
            // With a group of this shard waiting for its flush, the writers of the last group
            // are not all free to come back: gathering on would only add latency.
            if self.last_group > 1 && max_delay > Duration::ZERO && self.awaiting.is_empty() {
                let deadline = Instant::now() + max_delay;
                while group.len() < self.last_group.min(MAX_GROUP) {
                    match rx.recv_deadline(deadline) {
                        Ok(r) => group.push(r),
                        Err(_) => break,
                    }
                }
            }
        }
        self.last_group = group.len();
        group
    }

    /// Process one group (up to the device write when it is pipelined).
    fn handle_group(&mut self, group: Vec<Req>) -> GroupEnd {
        self.count_group(group.len());
        self.group_wrote = false;
        self.group_flushed = false;
        self.group_puts = false;
        if self.core.is_poisoned() {
            return GroupEnd {
                closed: refuse_poisoned(group),
                ticket: None,
            };
        }
        let mut plan = GroupPlan {
            flush: !matches!(self.core.cfg.sync, SyncPolicy::Never),
            ..GroupPlan::default()
        };
        let mut it = group.into_iter();
        let result = self
            .stage_group(&mut it, &mut plan)
            .and_then(|()| self.make_durable(&plan));
        let close = plan.close.take();
        let mut ticket = None;
        match result {
            Ok(Some(t)) => {
                ticket = Some(t);
                self.wait_for_flush(t, plan.posts);
            }
            Ok(None) => self.publish(plan.posts, plan.syncs),
            Err(e) => self.fail_group(e, plan.posts, plan.syncs),
        }
        for req in it {
            fail_req(req, Error::Closed);
        }
        if let Some(reply) = close {
            reply.send(self.close());
            return GroupEnd {
                closed: true,
                ticket: None,
            };
        }
        self.seal_if_wanted();
        GroupEnd {
            closed: false,
            ticket,
        }
    }

    /// Queue a written group's replies until flush `ticket` has finished.
    fn wait_for_flush(&mut self, ticket: u64, posts: Vec<Post>) {
        let Some(a) = self.active.as_ref() else {
            return;
        };
        self.awaiting.push_back(Awaiting {
            ticket,
            posts,
            slot: a.slot,
            salt: a.handle.salt,
            end: a.dev_end,
        });
    }

    /// Flush `ticket` finished with `r`: publish (or fail) every group it covers, in order.
    /// Groups of one shard take their tickets in order, so those are a prefix of `awaiting`;
    /// a group queued later needs a later flush. The thread that ran a group settles it, but
    /// whoever settles first answers every group before it too (or an ordinary group that
    /// flushed publishes them all first), so keydir changes land in log order.
    fn settle(&mut self, ticket: u64, r: Result<()>) {
        let n = self
            .awaiting
            .iter()
            .take_while(|w| w.ticket <= ticket)
            .count();
        if n == 0 {
            return;
        }
        let done: Vec<Awaiting> = self.awaiting.drain(..n).collect();
        if let Err(e) = r {
            log::error!("blobcask: shard {} flush failed: {e}", self.id);
            self.core.poison();
            let mut e = Some(e);
            for p in done.into_iter().flat_map(|w| w.posts) {
                p.fail(e.take().unwrap_or(Error::Poisoned));
            }
            return;
        }
        if let (Some(a), Some(last)) = (self.active.as_mut(), done.last()) {
            if a.handle.salt == last.salt {
                a.durable = a.durable.max(last.end);
            }
        }
        let core = self.core.clone();
        let mut replies = Vec::new();
        {
            let mut ix = core.shards[self.id].index.write();
            for w in done {
                if let Some(e) = ix.entry_mut(w.slot) {
                    e.written = e.written.max(w.end);
                }
                Self::apply_posts(&mut ix, w.posts, &mut replies);
            }
            self.release_sealed(&mut ix);
        }
        for r in replies {
            r.send(Ok(()));
        }
    }

    /// Apply plain writes' keydir changes, collecting their replies.
    fn apply_posts(ix: &mut Index<S>, posts: Vec<Post>, replies: &mut Vec<reply::Sender<()>>) {
        for p in posts {
            if let Post::Apply(r, effects) = p {
                for eff in effects {
                    apply(ix, eff);
                }
                replies.push(r);
            }
        }
    }

    fn count_group(&self, len: usize) {
        let ctr = &self.core.shards[self.id].ctr;
        ctr.groups.fetch_add(1, Ordering::Relaxed);
        ctr.group_ops.fetch_add(len as u64, Ordering::Relaxed);
        let bucket = (usize::BITS - 1 - len.max(1).leading_zeros()).min(7) as usize;
        ctr.group_hist[bucket].fetch_add(1, Ordering::Relaxed);
    }

    /// Encode the group's requests into the shard's buffer, up to a `Close` (which ends the
    /// group) or the first error; what is left in `it` is not taken.
    fn stage_group(
        &mut self,
        it: &mut std::vec::IntoIter<Req>,
        plan: &mut GroupPlan,
    ) -> Result<()> {
        // u32 arena offsets bound a shard's key bytes to 4 GiB: refuse new keys near it.
        let arena_full = self.core.shards[self.id].index.read().keydir.arena_room() < 64 << 20;
        for req in it.by_ref() {
            if self.stage_req(req, plan, arena_full)? {
                break;
            }
        }
        Ok(())
    }

    /// Stage one request; true when it closes the shard (the group ends there).
    fn stage_req(&mut self, req: Req, plan: &mut GroupPlan, arena_full: bool) -> Result<bool> {
        if matches!(
            req,
            Req::Prepare { .. } | Req::Commit { .. } | Req::Abort { .. }
        ) {
            plan.batch_round = true;
        }
        match req {
            Req::Write { reply, .. } | Req::Prepare { reply, .. } if arena_full => {
                reply.send(Err(Error::Full));
            }
            Req::Write { ops, batch, reply } => {
                plan.posts.push(Post::Apply(reply, Vec::new()));
                let effects = self.stage_ops(ops, batch)?;
                if let Some(id) = batch {
                    self.append_commit(id)?;
                }
                if let Some(Post::Apply(_, e)) = plan.posts.last_mut() {
                    *e = effects;
                }
            }
            Req::Prepare { batch, ops, reply } => {
                plan.flush = true;
                plan.flush_forced = true;
                plan.posts.push(Post::Prepare(batch, reply, Vec::new()));
                let effects = self.stage_ops(ops, Some(batch))?;
                if let Some(Post::Prepare(_, _, e)) = plan.posts.last_mut() {
                    *e = effects;
                }
            }
            Req::Commit { batch, reply } => {
                plan.flush_forced = true;
                plan.posts.push(Post::Commit(batch, reply));
                self.append_commit(batch)?;
            }
            Req::Abort { batch } => {
                self.pending.remove(&batch);
            }
            Req::Sync { reply } => {
                plan.flush = true;
                plan.flush_forced = true;
                plan.syncs.push(reply);
            }
            Req::Seal { reply } => {
                plan.syncs.push(reply);
                self.write_out().and_then(|()| self.rotate())?;
            }
            Req::Close { reply } => {
                plan.flush_forced = true;
                plan.close = Some(reply);
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Write the staged group out and flush it when the policy or a request asks for it. A
    /// group of plain writes returns instead a ticket for the flush it needs, to wait for
    /// without the shard's lock (`ShardCell::settle`).
    fn make_durable(&mut self, plan: &GroupPlan) -> Result<Option<u64>> {
        self.commit_group(plan.flush_forced)?;
        // A forced flush (close above all: its keydir snapshot must hold every acknowledged
        // write) also settles the groups still waiting for theirs.
        let settle_awaiting = plan.flush_forced && !self.awaiting.is_empty();
        if plan.flush && self.group_wrote || !plan.syncs.is_empty() || settle_awaiting {
            if self.can_pipeline(plan) {
                // Taken after the write completed: that flush starts after it.
                if let Some(t) = self.core.store.flush_ticket() {
                    return Ok(Some(t));
                }
            }
            self.core.store.block_on(self.chan.flush())?;
            self.group_flushed = true;
            if let Some(a) = self.active.as_mut() {
                a.durable = a.dev_end;
            }
        }
        Ok(None)
    }

    /// Only plain writes (and single-shard batches) that sealed no blob leave the lock
    /// before their flush: syncs, cross-shard batch rounds (`batch_round`), seals and close
    /// keep the old order.
    fn can_pipeline(&self, plan: &GroupPlan) -> bool {
        self.pipeline
            && !plan.flush_forced
            && !plan.batch_round
            && plan.syncs.is_empty()
            && plan.close.is_none()
            && self.unpublished.is_empty()
            && self.active.is_some()
            && plan.posts.iter().all(|p| matches!(p, Post::Apply(..)))
    }

    /// Seal the active blob if the merge worker asked (its dead fraction passed the trigger).
    fn seal_if_wanted(&mut self) {
        let sh = &self.core.shards[self.id];
        if !sh.seal_wanted.swap(false, Ordering::AcqRel) || self.core.is_poisoned() {
            return;
        }
        let res = self.write_out().and_then(|()| self.rotate());
        let core = self.core.clone();
        self.release_sealed(&mut core.shards[self.id].index.write());
        if let Err(e) = res {
            log::error!(
                "blobcask: shard {} failed to seal its active blob: {e}",
                self.id
            );
            self.core.poison();
        }
    }

    fn fail_group(&mut self, e: Error, posts: Vec<Post>, syncs: Vec<reply::Sender<()>>) {
        let recoverable = matches!(e, Error::Full | Error::NoMetadataSpace(_)) && !self.group_wrote;
        if recoverable {
            // Nothing of this group reached the device: drop it and carry on.
            self.enc.clear();
            for p in posts {
                p.fail(match &e {
                    Error::NoMetadataSpace(m) => Error::NoMetadataSpace(m.clone()),
                    _ => Error::Full,
                });
            }
        } else {
            log::error!("blobcask: shard {} write failed: {e}", self.id);
            self.core.poison();
            let mut e = Some(e);
            for p in posts {
                p.fail(e.take().unwrap_or(Error::Poisoned));
            }
        }
        for s in syncs {
            s.send(Err(Error::Poisoned));
        }
        let core = self.core.clone();
        self.release_sealed(&mut core.shards[self.id].index.write());
    }

    /// Publish the group's keydir changes under one write-lock, then reply.
    fn publish(&mut self, posts: Vec<Post>, syncs: Vec<reply::Sender<()>>) {
        let mut replies = Vec::with_capacity(posts.len());
        let core = self.core.clone();
        {
            let sh = &core.shards[self.id];
            let mut ix = sh.index.write();
            if let Some(a) = &self.active {
                if let Some(e) = ix.entry_mut(a.slot) {
                    e.written = a.end;
                }
            }
            // Groups still waiting for their flush come first: this group's flush covered
            // them (it started after their writes). A group that did not flush has no
            // changes to publish; their own flush answers them.
            if self.group_flushed {
                for w in self.awaiting.drain(..) {
                    if let Some(e) = ix.entry_mut(w.slot) {
                        e.written = e.written.max(w.end);
                    }
                    Self::apply_posts(&mut ix, w.posts, &mut replies);
                }
            }
            for p in posts {
                match p {
                    Post::Apply(r, effects) => {
                        for eff in effects {
                            apply(&mut ix, eff);
                        }
                        replies.push(r);
                    }
                    Post::Prepare(id, r, effects) => {
                        self.pending.insert(id, effects);
                        replies.push(r);
                    }
                    Post::Commit(id, r) => {
                        for eff in self.pending.remove(&id).unwrap_or_default() {
                            apply(&mut ix, eff);
                        }
                        replies.push(r);
                    }
                }
            }
            self.release_sealed(&mut ix);
        }
        for r in replies {
            r.send(Ok(()));
        }
        for s in syncs {
            s.send(Ok(()));
        }
    }

    /// Encode `ops` (as members of `batch` if given).
    fn stage_ops(&mut self, ops: Vec<Op>, batch: Option<u64>) -> Result<Vec<Effect>> {
        let mut effects = Vec::with_capacity(ops.len());
        let bflag = if batch.is_some() { record::BATCH } else { 0 };
        let bid = batch.unwrap_or(0);
        let core = self.core.clone();
        let ctr = &core.shards[self.id].ctr;
        for op in ops {
            let (key, value, flags) = match op {
                Op::Put(k, v) => {
                    self.group_puts = true;
                    (k, Some(v), bflag)
                }
                Op::Delete(k) => (k, None, bflag | record::TOMBSTONE),
            };
            let vbytes = value.as_deref().unwrap_or(&[]);
            ctr.user_bytes
                .fetch_add((key.len() + vbytes.len()) as u64, Ordering::Relaxed);
            let (slot, offset, len) = self.append(flags, bid, &key, vbytes)?;
            let loc = value.map(|v| Loc {
                blob: slot,
                offset,
                value_len: v.len() as u32 | if batch.is_some() { LOC_BATCH_BIT } else { 0 },
            });
            let hash = hash_key(&key);
            effects.push(Effect {
                key,
                hash,
                loc,
                len,
            });
        }
        Ok(effects)
    }

    fn append_commit(&mut self, batch: u64) -> Result<()> {
        self.append(record::COMMIT, 0, &[], &batch.to_le_bytes())
            .map(|_| ())
    }

    /// Encode one record after what is staged; rotate first if it would overflow the blob.
    /// Returns (blob slot, offset, record length).
    fn append(
        &mut self,
        flags: u16,
        batch: u64,
        key: &[u8],
        value: &[u8],
    ) -> Result<(u16, u32, u64)> {
        let len = record::encoded_len(flags, key.len(), value.len()) as u64;
        self.ensure_active()?;
        let pos = self.staged_end()?;
        if pos + len > self.core.cfg.max_blob_size && pos > 0 {
            // The next blob must fit before this group's records go out: a `Full` after them
            // could not be backed out.
            self.check_reserve(1)?;
            self.write_out()?;
            self.rotate()?;
            self.ensure_active()?;
        }
        let pos = self.staged_end()?;
        let a = self.active.as_ref().ok_or(Error::Closed)?;
        let seq = self.next_seq;
        self.next_seq += 1;
        let durable = u32::try_from(a.durable.min(pos)).unwrap_or(0);
        record::encode_claiming(
            &mut self.enc,
            a.handle.salt,
            seq,
            durable,
            flags,
            batch,
            key,
            value,
        );
        let slot = a.slot;
        if self.enc.len() >= MAX_ENCODED {
            self.commit_enc()?;
        }
        Ok((slot, pos as u32, len))
    }

    fn staged_end(&self) -> Result<u64> {
        let a = self.active.as_ref().ok_or(Error::Closed)?;
        Ok(a.end + self.enc.len() as u64)
    }

    /// Create the active blob if there is none (or ready a continued one).
    fn ensure_active(&mut self) -> Result<()> {
        if self.active.as_ref().is_some_and(|a| a.resumed) {
            return self.ready_resumed();
        }
        if self.active.is_some() {
            return Ok(());
        }
        let core = &self.core;
        let cfg = &core.cfg;
        let sh = &core.shards[self.id];
        let seq = sh.next_blob_seq.fetch_add(1, Ordering::SeqCst);
        let salt: u64 = rand::random();
        let max_cl = cfg.max_blob_size.div_ceil(cfg.cluster);
        let clusters = cfg.lease_clusters.min(max_cl).max(1);
        let create = |n: u64| {
            crate::blobs::create_blob(
                &core.store,
                n,
                crate::blobs::data_xattrs(self.id, seq, salt),
            )
        };
        // A nearly full store still takes a blob of one cluster; deletes take no lease ahead
        // (each shard's tombstones get a cluster of the room set aside for them).
        self.check_reserve(1)?;
        let clusters = if self.group_puts && self.check_reserve(clusters).is_ok() {
            clusters
        } else {
            1
        };
        let (id, clusters) = match create(clusters) {
            Err(Error::Full) if clusters > 1 => (create(1)?, 1),
            r => (r?, clusters),
        };
        let blob = core.store.block_on(core.store.open(id))?;
        let handle = Arc::new(BlobHandle {
            blob,
            id,
            seq,
            salt,
        });
        let slot = sh.index.write().add_blob(BlobEntry {
            handle: handle.clone(),
            written: 0,
            live: 0,
            role: BlobRole::Active,
        })?;
        {
            let mut uw = sh.unwritten.write();
            uw.salt = handle.salt;
            uw.start = 0;
            uw.bytes.clear();
        }
        self.active = Some(Active {
            slot,
            handle,
            end: 0,
            dev_end: 0,
            leased: clusters * cfg.cluster,
            durable: 0,
            resumed: false,
        });
        Ok(())
    }

    /// Before the first append to a continued blob: drop the shard's keydir snapshots (they
    /// record the blob's old length, and open would ignore records past it) and zero the
    /// blob's space past its log (a torn or stale tail there must never line up behind new
    /// records as if it were log), then flush.
    fn ready_resumed(&mut self) -> Result<()> {
        let core = self.core.clone();
        let store = &core.store;
        let sh = &core.shards[self.id];
        let snaps: Vec<_> = std::mem::take(&mut *sh.snapshots.lock());
        for id in snaps {
            store.block_on(store.delete(id))?;
        }
        let page = core.cfg.page;
        let iou = core.cfg.io_unit;
        let Some(a) = self.active.as_mut() else {
            return Ok(());
        };
        let start = a.end / page * page;
        if a.end > start {
            // The partial last page, with zeroes after the log.
            let mut buf = AlignedBuf::zeroed(page as usize);
            let n = (a.end - start) as usize;
            buf[..n].copy_from_slice(&sh.unwritten.read().bytes[..n]);
            store.block_on(self.chan.write(&a.handle.blob, start / iou, &buf))?;
        }
        let mut at = a.end.div_ceil(page) * page;
        if at < a.leased {
            let zeros = AlignedBuf::zeroed((1 << 20).min(a.leased - at) as usize);
            while at < a.leased {
                let n = (a.leased - at).min(zeros.len() as u64) as usize;
                store.block_on(self.chan.write(&a.handle.blob, at / iou, &zeros[..n]))?;
                at += n as u64;
            }
        }
        store.block_on(self.chan.flush())?;
        a.resumed = false;
        Ok(())
    }

    /// Puts may not take the last `merge_reserve` clusters, deletes the last half of them: on
    /// a full store, deletes and then the merge that turns them into free space need room.
    fn check_reserve(&self, clusters: u64) -> Result<()> {
        if self.core.store.free_clusters() < clusters + self.reserve_floor() {
            return Err(Error::Full);
        }
        Ok(())
    }

    /// Free clusters this group must leave: the whole reserve for puts, one merge step's
    /// worth for deletes.
    fn reserve_floor(&self) -> u64 {
        if self.group_puts {
            self.core.cfg.merge_reserve
        } else {
            self.core.cfg.merge_unit
        }
    }

    /// Grow the lease so that `[0, end)` lies in clusters with durable metadata.
    fn ensure_lease(&mut self, end: u64) -> Result<()> {
        let floor = self.reserve_floor();
        let cfg = &self.core.cfg;
        let a = self.active.as_mut().ok_or(Error::Closed)?;
        if end <= a.leased {
            return Ok(());
        }
        let need = end.div_ceil(cfg.cluster);
        let max_cl = cfg.max_blob_size.div_ceil(cfg.cluster);
        let ahead = if self.group_puts {
            cfg.lease_clusters - 1
        } else {
            0
        };
        let target = (need + ahead).min(max_cl).max(need);
        let have = a.leased / cfg.cluster;
        let store = &self.core.store;
        let free = store.free_clusters();
        if free < (need - have) + floor {
            return Err(Error::Full);
        }
        let target = target.min(have + free - floor).max(need);
        let target = match store
            .block_on(store.resize(&a.handle.blob, target))
            .map_err(Error::from)
        {
            // Nearly full: lease only what this write needs.
            Err(Error::Full) if target > need => {
                store.block_on(store.resize(&a.handle.blob, need))?;
                need
            }
            r => r.map(|()| target)?,
        };
        store.block_on(store.sync_md(&a.handle.blob))?;
        a.leased = target * cfg.cluster;
        Ok(())
    }

    /// Move the staged records into the write-behind buffer, where readers find them until
    /// they reach the device. Checks the lease first, so a `Full` leaves nothing half-done.
    fn commit_enc(&mut self) -> Result<()> {
        if self.enc.is_empty() {
            return Ok(());
        }
        let end = self.staged_end()?;
        self.ensure_lease(end)?;
        let sh = &self.core.shards[self.id];
        let a = self.active.as_mut().ok_or(Error::Closed)?;
        sh.unwritten.write().bytes.extend_from_slice(&self.enc);
        sh.pending_bytes
            .fetch_add(self.enc.len() as u64, Ordering::Relaxed);
        a.end = end;
        self.enc.clear();
        self.wrote = true;
        // These bytes will reach the device with some later write: past this point a failure
        // cannot simply drop the group.
        self.group_wrote = true;
        Ok(())
    }

    /// Commit the staged records, and write the buffer out if the policy or its size says so.
    fn commit_group(&mut self, force: bool) -> Result<()> {
        self.commit_enc()?;
        let never = matches!(self.core.cfg.sync, SyncPolicy::Never);
        let pending = self.core.shards[self.id]
            .pending_bytes
            .load(Ordering::Relaxed);
        if force || !never || pending >= WRITE_BEHIND {
            self.write_out()?;
        }
        Ok(())
    }

    /// Write everything not yet on the device (from the page holding the device end, whose
    /// bytes are rewritten unchanged) in one device write.
    pub(crate) fn write_out(&mut self) -> Result<()> {
        // Writing out earlier groups' acknowledged bytes does not make this group's `Full`
        // unrecoverable: only its own records (committed by `commit_enc`) do; a failed
        // device write is no `Full` and poisons anyway.
        self.commit_enc()?;
        if self.active.as_ref().is_none_or(|a| a.end == a.dev_end) {
            return Ok(());
        }
        let barrier = self.core.shards[self.id].barrier.load(Ordering::Acquire);
        if barrier > self.barrier_done {
            let store = &self.core.store;
            store.block_on(store.flush_to(barrier))?;
            self.barrier_done = barrier;
        }
        let page = self.core.cfg.page;
        let iou = self.core.cfg.io_unit;
        let sh = &self.core.shards[self.id];
        let Some(a) = self.active.as_mut() else {
            return Ok(());
        };
        let base = a.dev_end / page * page;
        let total = {
            let uw = sh.unwritten.read();
            let total = uw.bytes.len();
            debug_assert_eq!(uw.start, base);
            debug_assert_eq!(base + total as u64, a.end);
            let padded = total.div_ceil(page as usize) * page as usize;
            if self.wbuf.len() < padded {
                self.wbuf = AlignedBuf::zeroed(padded.div_ceil(1 << 20) << 20);
            }
            self.wbuf[..total].copy_from_slice(&uw.bytes);
            self.wbuf[total..padded].fill(0);
            total
        };
        let padded = total.div_ceil(page as usize) * page as usize;
        let store = &self.core.store;
        store.block_on(
            self.chan
                .write(&a.handle.blob, base / iou, &self.wbuf[..padded]),
        )?;
        sh.ctr
            .device_bytes
            .fetch_add(padded as u64, Ordering::Relaxed);
        if let Some(c) = &sh.cache {
            // Before the buffer lets go of these bytes, so a reader finds them in one or the
            // other (see `cache.rs`). Only whole pages: the partial last one stays in the
            // buffer, and caching it would copy a page per synced put.
            let whole = total / page as usize * page as usize;
            c.insert_run(a.handle.salt, base, &self.wbuf[..whole], whole);
        }
        sh.pending_bytes.fetch_sub(
            (a.end - a.dev_end).min(sh.pending_bytes.load(Ordering::Relaxed)),
            Ordering::Relaxed,
        );
        a.dev_end = a.end;
        // Keep only the partial last page: it is rewritten with the next write.
        let keep_from = a.end / page * page;
        let mut uw = sh.unwritten.write();
        let drop_n = (keep_from - uw.start) as usize;
        uw.bytes.drain(..drop_n);
        uw.start = keep_from;
        Ok(())
    }

    /// Whether records wait in the write-behind buffer.
    pub(crate) fn has_unwritten(&self) -> bool {
        self.active.as_ref().is_some_and(|a| a.end > a.dev_end)
    }

    /// Seal the active blob: shrink it to the clusters that hold records.
    fn rotate(&mut self) -> Result<()> {
        self.write_out()?;
        if self.active.as_ref().is_some_and(|a| a.resumed) {
            // Its tail is cleared before its clusters may go back to the allocator.
            self.ready_resumed()?;
        }
        let Some(a) = self.active.take() else {
            return Ok(());
        };
        let cluster = self.core.cfg.cluster;
        let used = a.end.div_ceil(cluster).max(1);
        let store = &self.core.store;
        // The whole log durable, then its length recorded: a sealed blob's end is known.
        store.block_on(self.chan.flush())?;
        store.block_on(store.set_xattr(
            &a.handle.blob,
            crate::blobs::X_LEN,
            &a.end.to_le_bytes(),
        ))?;
        if used * cluster < a.leased {
            store.block_on(store.resize(&a.handle.blob, used))?;
        }
        store.block_on(store.sync_md(&a.handle.blob))?;
        let mut ix = self.core.shards[self.id].index.write();
        if let Some(e) = ix.entry_mut(a.slot) {
            // Still `Active` to merges until every record in it is published.
            e.written = a.end;
        }
        self.unpublished.push(a.slot);
        Ok(())
    }

    /// Hand the blobs sealed since the last publish to merges, once no record written into
    /// them waits for its group or batch to be published.
    fn release_sealed(&mut self, ix: &mut Index<S>) {
        if !self.pending.is_empty() || !self.awaiting.is_empty() {
            return;
        }
        for slot in self.unpublished.drain(..) {
            if let Some(e) = ix.entry_mut(slot) {
                e.role = BlobRole::Sealed;
            }
        }
    }

    /// Clean close: everything durable, active blob sealed, keydir snapshot written.
    fn close(&mut self) -> Result<()> {
        if self.core.is_poisoned() || self.core.cfg.read_only {
            return Ok(());
        }
        self.write_out()?;
        if self.active.as_ref().is_some_and(|a| a.resumed) {
            // Continued but never written: left as it is, the next open continues it again.
            self.active = None;
        } else {
            self.rotate()?;
        }
        self.core.store.block_on(self.chan.flush())?;
        let sh = &self.core.shards[self.id];
        if !self.wrote && !sh.snapshots.lock().is_empty() {
            // Nothing changed since the snapshot was written: it is still current.
            return Ok(());
        }
        match crate::snapshot::write_snapshot(&self.core, self.id, &self.chan, self.next_seq - 1) {
            // A snapshot only speeds up open (which scans without one): a full store still
            // closes cleanly.
            Err(e @ (Error::Full | Error::NoMetadataSpace(_))) => {
                log::warn!("blobcask: shard {} writes no keydir snapshot: {e}", self.id);
                Ok(())
            }
            r => r,
        }
    }
}

/// Publish one change, keeping per-blob live bytes.
fn apply<S: BlobStore>(ix: &mut Index<S>, eff: Effect) {
    let klen = eff.key.len();
    match eff.loc {
        Some(loc) => {
            if let Some(old) = ix.keydir.insert(&eff.key, eff.hash, loc) {
                ix.kill(old.blob, record_len(klen, old));
            }
            ix.add_live(loc.blob, eff.len);
        }
        None => {
            if let Some(old) = ix.keydir.remove(&eff.key, eff.hash) {
                ix.kill(old.blob, record_len(klen, old));
            }
        }
    }
}

/// The active blob `seal_all` kept for shard `id` to continue after a reopen, if any: its log
/// continues at its valid end, whose partial last page goes into the write-behind buffer (it
/// is rewritten with the next write).
fn resume_active<S: BlobStore>(
    core: &Core<S>,
    id: usize,
    chan: &S::Channel,
) -> Result<Option<Active<S>>> {
    use crate::blobstore::Blob as _;
    let sh = &core.shards[id];
    let found = {
        let ix = sh.index.read();
        ix.blobs.iter().enumerate().find_map(|(i, e)| {
            e.as_ref()
                .filter(|e| e.role == BlobRole::Active)
                .map(|e| (i as u16, e.handle.clone(), e.written))
        })
    };
    let Some((slot, handle, end)) = found else {
        return Ok(None);
    };
    let page = core.cfg.page;
    let start = end / page * page;
    let mut head = Vec::new();
    if end > start {
        let mut buf = AlignedBuf::zeroed(page as usize);
        let store = &core.store;
        store.block_on(chan.read(&handle.blob, start / core.cfg.io_unit, &mut buf))?;
        head.extend_from_slice(&buf[..(end - start) as usize]);
    }
    {
        let mut uw = sh.unwritten.write();
        uw.salt = handle.salt;
        uw.start = start;
        uw.bytes = head;
    }
    let leased = handle.blob.num_clusters() * core.cfg.cluster;
    Ok(Some(Active {
        slot,
        handle,
        end,
        dev_end: end,
        leased,
        // `ready_resumed` flushes the log before the first append claims it.
        durable: end,
        resumed: true,
    }))
}
