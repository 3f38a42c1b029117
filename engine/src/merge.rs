//! Merge: rewrite a shard's sealed blobs one at a time, dropping dead records, and free them.
//!
//! One worker thread per store; it merges on demand ([`crate::Db::merge`]) and when a trigger
//! fires (Basho-style: a sealed blob's dead fraction or dead bytes, or too many small sealed
//! blobs; optionally only inside a UTC hour window). An active blob whose dead fraction passes
//! the trigger is sealed first (the shard does it at its next turn), so dead space is
//! reclaimable wherever it is. Reads and writes go on meanwhile: the worker reads and writes
//! blobs through its own I/O channel, the shard keeps appending to its active blob, and moved
//! keys are switched over only if the keydir still points at the copied record
//! (`KeyDir::replace_if`).
//!
//! A merge pass takes **every sealed blob** of the shard (chosen under the batch gate, so no
//! write_batch is half-published) and rewrites them **one per step, oldest records first**
//! (see [`merge_ordered`]): a step appends one input's live records to the current output
//! (consecutive inputs are packed into one output up to the blob size), commits, and deletes
//! the input before the next step starts. A full store therefore only needs room for one
//! blob's live data and its hint (the reserve, see `options::Geometry`), whatever the fraction
//! deleted.
//!
//! Crash safety, per step: a new output carries `bc.merge = pending`; a step's records are
//! written and flushed, then the output's `bc.inputs` gains the input's seq and `bc.merge`
//! becomes `done` (one `sync_md`, then a flush): the step's commit point. Open deletes a
//! `pending` output (nothing committed) and every listed input of a `done` one that survived
//! (post-step state); copies a killed step left past the committed ones duplicate records of
//! an input that still exists, with the same seqs and values, so the keydir comes out the same.
//! The output's hint, written when it is complete, covers only committed steps. A dropped
//! tombstone never uncovers an older record: every blob with older records finished its step
//! earlier in the pass.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};

use crate::blob_scan::scan_blob;
use crate::blobs::{
    create_blob, data_xattrs, write_catalog, write_totals, ROLE_HINT, X_INPUTS, X_LEN, X_MERGE,
};
use crate::blobstore::{BlobStore, IoChannel as _};
use crate::device::AlignedBuf;
use crate::error::{Error, Result};
use crate::hint;
use crate::keydir::{hash_key, Loc};
use crate::record::{self, Kind};
use crate::reply;
use crate::snapshot::write_hint_blob;
use crate::state::{record_len, BlobEntry, BlobHandle, BlobRole, Core, LOC_BATCH_BIT};

enum Msg {
    MergeAll(reply::Sender<()>),
    Stop,
}

/// The merge worker of one store.
pub(crate) struct Worker {
    tx: Sender<Msg>,
    thread: Option<JoinHandle<()>>,
}

impl Worker {
    pub fn start<S: BlobStore>(core: Arc<Core<S>>) -> Result<Self> {
        let (tx, rx) = crossbeam_channel::unbounded();
        let thread = std::thread::Builder::new()
            .name("blobcask-merge".into())
            .spawn(move || run(core, rx))
            .map_err(Error::Io)?;
        Ok(Worker {
            tx,
            thread: Some(thread),
        })
    }

    /// Merge every shard that has sealed blobs; blocks until done.
    pub fn merge_all(&self) -> Result<()> {
        let (tx, rx) = reply::channel();
        self.tx.send(Msg::MergeAll(tx)).map_err(|_| Error::Closed)?;
        rx.wait()
    }

    /// Finish the merge in progress, if any, and stop.
    pub fn stop(mut self) {
        let _ = self.tx.send(Msg::Stop);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn run<S: BlobStore>(core: Arc<Core<S>>, rx: Receiver<Msg>) {
    let ch = match core.store.channel() {
        Ok(c) => c,
        Err(e) => {
            log::error!("blobcask: merge worker has no I/O channel: {e}");
            // Serve until told to stop: `stop` waits for this thread.
            for m in rx {
                match m {
                    Msg::MergeAll(r) => r.send(Err(Error::Unsupported(
                        "merge worker has no channel".into(),
                    ))),
                    Msg::Stop => return,
                }
            }
            return;
        }
    };
    let interval = core.cfg.merge.check_interval.max(Duration::from_millis(10));
    loop {
        match rx.recv_timeout(interval) {
            Ok(Msg::MergeAll(r)) => {
                let mut res = Ok(());
                for s in 0..core.shards.len() {
                    if let Err(e) = merge_shard(&core, &ch, s) {
                        res = Err(e);
                        break;
                    }
                }
                r.send(res);
            }
            Ok(Msg::Stop) | Err(RecvTimeoutError::Disconnected) => return,
            Err(RecvTimeoutError::Timeout) => {
                if !core.cfg.merge.auto || !in_window(core.cfg.merge.window) {
                    continue;
                }
                for s in 0..core.shards.len() {
                    if core.is_poisoned() || core.is_closed() {
                        break;
                    }
                    if triggered(&core, s) {
                        if let Err(e) = merge_shard(&core, &ch, s) {
                            log::error!("blobcask: merge of shard {s} failed: {e}");
                        }
                    }
                }
            }
        }
    }
}

fn in_window(window: Option<(u8, u8)>) -> bool {
    let Some((a, b)) = window else { return true };
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let h = ((secs / 3600) % 24) as u8;
    if a <= b {
        (a..b).contains(&h)
    } else {
        h >= a || h < b
    }
}

/// Whether shard `s` meets a merge trigger.
pub(crate) fn triggered<S: BlobStore>(core: &Core<S>, s: usize) -> bool {
    let m = &core.cfg.merge;
    let ix = core.shards[s].index.read();
    let mut small = 0usize;
    for e in ix.blobs.iter().flatten() {
        let dead = e.written.saturating_sub(e.live);
        if e.role == BlobRole::Active {
            // Past a quarter of a blob, an active blob as dead as a sealed one would have to
            // be is sealed (by its shard) and merged at the next check.
            let big = e.written >= (core.cfg.max_blob_size / 4).max(core.cfg.cluster);
            let frag = dead * 100 >= e.written * u64::from(m.frag_trigger_pct);
            if big && dead > 0 && (frag || dead >= m.dead_bytes_trigger) {
                core.shards[s].seal_wanted.store(true, Ordering::Release);
            }
            continue;
        }
        if e.role != BlobRole::Sealed {
            continue;
        }
        if e.written > 0 && dead * 100 >= e.written * u64::from(m.frag_trigger_pct) && dead > 0 {
            return true;
        }
        if dead >= m.dead_bytes_trigger {
            return true;
        }
        if e.written < m.small_blob_threshold {
            small += 1;
        }
    }
    m.small_blobs_trigger > 0 && small >= m.small_blobs_trigger
}

/// Appends merge output; only whole pages go out before the end.
struct Out<'a, S: BlobStore> {
    core: &'a Core<S>,
    ch: &'a S::Channel,
    handle: Arc<BlobHandle<S>>,
    slot: u16,
    /// Bytes of records encoded so far (written or in `enc`).
    end: u64,
    /// Blob offset of `enc[0]`.
    enc_base: u64,
    enc: Vec<u8>,
    clusters: u64,
    written: u64,
    shard: usize,
    /// Output pages holding a record whose old page was in the read cache: they go into the
    /// cache as they are written, so what was hot before the merge stays in memory.
    hot: std::collections::BTreeSet<u64>,
}

impl<S: BlobStore> Out<'_, S> {
    fn push(&mut self, seq: u64, key: &[u8], value: &[u8]) -> Result<u32> {
        let at = self.end;
        let len = record::encoded_len(0, key.len(), value.len()) as u64;
        if at + len > crate::options::MAX_BLOB_LIMIT {
            return Err(Error::Unsupported(
                "live data of one shard exceeds a 4 GiB merge output".into(),
            ));
        }
        record::encode(&mut self.enc, self.handle.salt, seq, 0, 0, key, value);
        self.end += len;
        if self.enc.len() >= 4 << 20 {
            self.write(false)?;
        }
        Ok(at as u32)
    }

    /// Write the whole pages of `enc` (all of it, padded, when `last`).
    fn write(&mut self, last: bool) -> Result<()> {
        let page = self.core.cfg.page as usize;
        let n = if last {
            self.enc.len().div_ceil(page) * page
        } else {
            self.enc.len() / page * page
        };
        if n == 0 {
            return Ok(());
        }
        let store = &self.core.store;
        let cluster = self.core.cfg.cluster;
        let need = (self.enc_base + n as u64).div_ceil(cluster);
        if need > self.clusters {
            let target = need + self.core.cfg.lease_clusters;
            let resized = store.block_on(store.resize(&self.handle.blob, target));
            self.clusters = match resized.map_err(Error::from) {
                Err(Error::Full) => {
                    store.block_on(store.resize(&self.handle.blob, need))?;
                    need
                }
                r => r.map(|()| target)?,
            };
        }
        let mut buf = AlignedBuf::zeroed(n);
        let m = n.min(self.enc.len());
        buf[..m].copy_from_slice(&self.enc[..m]);
        let iou = self.core.cfg.io_unit;
        store.block_on(self.ch.write(&self.handle.blob, self.enc_base / iou, &buf))?;
        self.cache_hot(&buf, m);
        self.written += n as u64;
        if last {
            // Keep the partial last page: the next step's records continue it.
            let keep_from = self.end / page as u64 * page as u64;
            self.enc.drain(..(keep_from - self.enc_base) as usize);
            self.enc_base = keep_from;
        } else {
            self.enc.drain(..m);
            self.enc_base += n as u64;
        }
        Ok(())
    }
}

impl<S: BlobStore> Out<'_, S> {
    /// Note that the record at `at` was in the read cache at its old place.
    fn mark_hot(&mut self, at: u32, len: u64) {
        let page = self.core.cfg.page;
        let (first, last) = (u64::from(at) / page, (u64::from(at) + len - 1) / page);
        self.hot.extend(first..=last);
    }

    /// Cache the hot pages of `buf` (written at `enc_base`; its first `log` bytes are log).
    fn cache_hot(&mut self, buf: &[u8], log: usize) {
        let Some(cache) = &self.core.shards[self.shard].cache else {
            return;
        };
        let page = self.core.cfg.page;
        let first = self.enc_base / page;
        let pages = (buf.len() as u64).div_ceil(page);
        for index in self.hot.range(first..first + pages) {
            let at = ((index - first) * page) as usize;
            let end = (at + page as usize).min(buf.len());
            let valid = log.saturating_sub(at).min(end - at);
            if valid > 0 {
                cache.insert_run(self.handle.salt, index * page, &buf[at..end], valid);
            }
        }
        // Pages before the one the next write starts at are final.
        let keep = (self.enc_base + log as u64) / page;
        self.hot = self.hot.split_off(&keep);
    }
}

/// A sealed input of a merge: (slot, handle, written, live).
type Input<S> = (u16, Arc<BlobHandle<S>>, u64, u64);

/// Merge the sealed blobs of shard `s`, one at a time, oldest records first.
pub(crate) fn merge_shard<S: BlobStore>(core: &Core<S>, ch: &S::Channel, s: usize) -> Result<()> {
    let sh = &core.shards[s];
    let _m = sh.merge_lock.lock();
    if core.is_poisoned() {
        return Err(Error::Poisoned);
    }
    if core.is_closed() {
        return Err(Error::Closed);
    }
    let inputs: Vec<Input<S>> = {
        let _gate = core.batch_gate_exclusive();
        let ix = sh.index.read();
        ix.blobs
            .iter()
            .enumerate()
            .filter_map(|(i, e)| e.as_ref().map(|e| (i, e)))
            .filter(|(_, e)| e.role == BlobRole::Sealed)
            .map(|(i, e)| (i as u16, e.handle.clone(), e.written, e.live))
            .collect()
    };
    if inputs.iter().all(|(_, _, written, live)| written == live) {
        return Ok(());
    }
    let res = merge_ordered(core, ch, s, inputs);
    if res.is_ok() {
        // The catalog names blobs for open and check; a failure here loses no data.
        if let Err(e) = write_catalog(&core.store, core.cfg.cluster, false) {
            log::warn!("blobcask: catalog after the merge of shard {s}: {e}");
        }
        // The counters, so that a crash after the merge keeps it counted.
        if let Err(e) = write_totals(&core.store, &core.totals()) {
            log::warn!("blobcask: totals after the merge of shard {s}: {e}");
        }
    }
    if let Err(e) = &res {
        // Out of space or metadata, or a damaged input: the step backed out (or left a
        // consistent pending output that open discards; a failed commit poisons by itself);
        // anything else is a device failure.
        if !matches!(
            e,
            Error::Unsupported(_)
                | Error::Full
                | Error::NoMetadataSpace(_)
                | Error::Closed
                | Error::Corruption { .. }
        ) {
            core.poison();
        }
    }
    res
}

/// Rewrite `inputs` one blob per step, in log order (by their first record's seq; the seq
/// ranges of a shard's blobs never overlap, except for the uncommitted copies a killed step
/// leaves in its output, whose range starts earlier). By the time a blob is merged, every blob
/// holding older records has been merged in this pass and lost its dead records, so the step
/// may drop the blob's tombstones: no older value they hide survives anywhere (the Bitcask #82
/// class of resurrection). Consecutive inputs are packed into one output up to the blob size;
/// each step commits and frees its input before the next starts, so a merge needs room for
/// one blob's live data and its hint only.
fn merge_ordered<S: BlobStore>(
    core: &Core<S>,
    ch: &S::Channel,
    s: usize,
    inputs: Vec<Input<S>>,
) -> Result<()> {
    let mut ordered = Vec::with_capacity(inputs.len());
    for input in inputs {
        let first = if input.2 == 0 {
            0
        } else {
            first_seq(core, ch, &input.1)?
        };
        ordered.push((first, input));
    }
    ordered.sort_by_key(|(first, input)| (*first, input.1.seq));
    let mut cur: Option<Output<'_, S>> = None;
    let res = (|| {
        for (_, input) in ordered {
            if core.is_closed() {
                // Closing: every finished step is committed; the rest waits for the next merge.
                break;
            }
            let (_, _, written, live) = input;
            if written == live && written >= core.cfg.max_blob_size {
                // Nothing dead and nothing to pack: no older dead record hides here either.
                if let Some(o) = cur.take() {
                    o.finish()?;
                }
                continue;
            }
            if live == 0 {
                drop_input(core, s, input)?;
                continue;
            }
            if cur
                .as_ref()
                .is_some_and(|o| o.full(live) || o.seqs.len() >= MAX_INPUTS)
            {
                if let Some(o) = cur.take() {
                    o.finish()?;
                }
            }
            match cur.as_mut() {
                Some(o) => o.step(input)?,
                None => cur = Some(Output::start(core, ch, s, input)?),
            }
        }
        Ok(())
    })();
    match cur {
        // Whatever stopped the pass, the steps done so far are committed: seal them.
        Some(o) => o.finish().and(res),
        None => res,
    }
}

/// Inputs one output takes at most (their seqs are an xattr of one md page).
const MAX_INPUTS: usize = 64;

/// A merge output being packed: its committed steps, and the hint entries of its records.
struct Output<'a, S: BlobStore> {
    out: Out<'a, S>,
    s: usize,
    /// Seqs of the inputs whose step committed.
    seqs: Vec<u64>,
    /// Log bytes of the committed steps.
    committed: u64,
    entries: Vec<(Vec<u8>, u64, u32, u32)>,
}

impl<'a, S: BlobStore> Output<'a, S> {
    /// Create the output (`pending`) and merge `input` into it as its first step.
    fn start(core: &'a Core<S>, ch: &'a S::Channel, s: usize, input: Input<S>) -> Result<Self> {
        let (handle, slot) = new_output_blob(core, s, input.1.seq)?;
        let mut o = Output {
            out: Out {
                core,
                ch,
                handle,
                slot,
                end: 0,
                enc_base: 0,
                enc: Vec::new(),
                clusters: 1,
                written: 0,
                shard: s,
                hot: Default::default(),
            },
            s,
            seqs: Vec::new(),
            committed: 0,
            entries: Vec::new(),
        };
        if let Err(e) = o.step(input) {
            if o.seqs.is_empty() {
                // The step never reached freeing its input: dropping the output leaves the
                // store as before (recovery does the same with a `pending` output).
                o.abandon()?;
            }
            // Otherwise the output holds the only copy of a freed input: it stays.
            return Err(e);
        }
        Ok(o)
    }

    /// Whether `live` more bytes would overflow a merge output (two data blobs' worth, so
    /// that half-dead blobs pack; see `options::Geometry`).
    fn full(&self, live: u64) -> bool {
        self.out.end + live > 2 * self.out.core.cfg.max_blob_size
    }

    /// One step: copy `input`'s live records after the committed ones, switch readers over,
    /// commit (`done` with the input's seq added: the commit point), then free the input.
    fn step(&mut self, input: Input<S>) -> Result<()> {
        let core = self.out.core;
        let store = &core.store;
        let sh = &core.shards[self.s];
        let slot = self.out.slot;
        let moved = copy_live(
            core,
            self.out.ch,
            self.s,
            std::slice::from_ref(&input),
            &mut self.out,
        )?;
        let end = self.out.end;
        for chunk in moved.chunks(1024) {
            let mut ix = sh.index.write();
            for (k, old, new, _) in chunk {
                if ix.keydir.replace_if(k, hash_key(k), *old, *new) {
                    let len = record_len(k.len(), *old);
                    ix.kill(old.blob, len);
                    ix.add_live(new.blob, record_len(k.len(), *new));
                }
            }
            if let Some(e) = ix.entry_mut(slot) {
                e.written = end;
            }
        }
        let mut seqs = self.seqs.clone();
        seqs.push(input.1.seq);
        let list: Vec<u8> = seqs.iter().flat_map(|q| q.to_le_bytes()).collect();
        let blob = &self.out.handle.blob;
        let commit = (|| {
            store.block_on(store.set_xattr(blob, X_INPUTS, &list))?;
            // The committed length: a later step's copies past it are unflushed until that
            // step commits, so a crash may tear them (a torn tail, not damage).
            store.block_on(store.set_xattr(blob, X_LEN, &end.to_le_bytes()))?;
            store.block_on(store.set_xattr(blob, X_MERGE, b"done"))?;
            store.block_on(store.sync_md(blob))?;
            store.block_on(self.out.ch.flush())
        })();
        if let Err(e) = commit {
            // Readers already follow the output: whatever the error, stop serving until a
            // reopen settles the step from what reached the device.
            core.poison();
            return Err(e.into());
        }
        // Committed: from here on the input may be gone, and the output must never be.
        self.seqs = seqs;
        self.committed = end;
        for (k, _, new, seq) in moved {
            self.entries.push((k, seq, new.offset, new.value_len));
        }
        drop_input(core, self.s, input)
    }

    /// Drop an output none of whose steps committed.
    fn abandon(self) -> Result<()> {
        let core = self.out.core;
        let store = &core.store;
        let taken = core.shards[self.s]
            .index
            .write()
            .blobs
            .get_mut(usize::from(self.out.slot))
            .and_then(Option::take);
        drop(taken);
        let inner = unwrap_handle(self.out.handle);
        store.block_on(store.close(inner.blob))?;
        Ok(store.block_on(store.delete(inner.id))?)
    }

    /// Write the hint of the committed steps and hand the output to the shard as sealed.
    fn finish(self) -> Result<()> {
        let core = self.out.core;
        let sh = &core.shards[self.s];
        let out_seq = self.out.handle.seq;
        let end = self.committed;
        let hint_seq = sh.next_blob_seq.fetch_add(1, Ordering::SeqCst);
        let mut w = hint::Writer::new(hint_seq, &[(out_seq, end)]);
        for (k, seq, offset, value_len) in &self.entries {
            w.push(out_seq, *seq, *offset, *value_len, k);
        }
        let bytes = w.finish(core.cfg.page as usize);
        // Without room for the hint the output still stands; open then scans it. An output
        // gets one only on a roomy store: a hint only speeds up open, and on a nearly full
        // store its clusters would make a merge of blobs with little dead data free nothing,
        // or less than it takes.
        let hint_cl = (bytes.len() as u64).div_ceil(core.cfg.cluster);
        let roomy = core.store.free_clusters() >= hint_cl + 2 * core.cfg.merge_reserve;
        let hint_id = if !roomy {
            None
        } else {
            match write_hint_blob(
                core,
                self.out.ch,
                self.s,
                ROLE_HINT,
                hint_seq,
                out_seq,
                &bytes,
            ) {
                Ok(id) => Some(id),
                Err(e @ (Error::Full | Error::NoMetadataSpace(_))) => {
                    log::warn!("blobcask: merge of shard {} writes no hint: {e}", self.s);
                    None
                }
                Err(e) => return Err(e),
            }
        };
        {
            let mut ix = sh.index.write();
            if let Some(e) = ix.entry_mut(self.out.slot) {
                e.role = BlobRole::Sealed;
                e.written = end;
            }
        }
        if let Some(id) = hint_id {
            sh.hints.lock().insert(out_seq, id);
        }
        let ctr = &sh.ctr;
        ctr.merged_bytes.fetch_add(end, Ordering::Relaxed);
        ctr.device_bytes
            .fetch_add(self.out.written, Ordering::Relaxed);
        log::info!(
            "blobcask: merged {} blobs of shard {} into {out_seq} ({end} bytes, {} keys)",
            self.seqs.len(),
            self.s,
            self.entries.len()
        );
        Ok(())
    }
}

/// Create merge output blob (marked `pending`, input `input_seq`) of shard `s` and give it a
/// slot in the shard's blob table.
fn new_output_blob<S: BlobStore>(
    core: &Core<S>,
    s: usize,
    input_seq: u64,
) -> Result<(Arc<BlobHandle<S>>, u16)> {
    let sh = &core.shards[s];
    let store = &core.store;
    let out_seq = sh.next_blob_seq.fetch_add(1, Ordering::SeqCst);
    let salt: u64 = rand::random();
    let mut xattrs = data_xattrs(s, out_seq, salt);
    xattrs.push((X_MERGE.into(), b"pending".to_vec()));
    xattrs.push((X_INPUTS.into(), input_seq.to_le_bytes().to_vec()));
    // One cluster to start with: a merge is what frees space on a full store.
    let id = create_blob(store, 1, xattrs)?;
    let blob = match store.block_on(store.open(id)) {
        Ok(b) => b,
        Err(e) => {
            let _ = store.block_on(store.delete(id));
            return Err(e.into());
        }
    };
    let handle = Arc::new(BlobHandle {
        blob,
        id,
        seq: out_seq,
        salt,
    });
    let slot = sh.index.write().add_blob(BlobEntry {
        handle: handle.clone(),
        written: 0,
        live: 0,
        role: BlobRole::Merging,
    });
    let slot = match slot {
        Ok(slot) => slot,
        Err(e) => {
            store.block_on(store.close(handle.blob.clone()))?;
            store.block_on(store.delete(id))?;
            return Err(e);
        }
    };
    Ok((handle, slot))
}

/// Seq of the first record of a sealed blob.
fn first_seq<S: BlobStore>(core: &Core<S>, ch: &S::Channel, h: &BlobHandle<S>) -> Result<u64> {
    let store = &core.store;
    let mut head = AlignedBuf::zeroed(core.cfg.page as usize);
    store.block_on(ch.read(&h.blob, 0, &mut head))?;
    record::parse_header(&head)
        .map(|hd| hd.seq)
        .ok_or_else(|| Error::Corruption {
            blob: h.id,
            offset: 0,
            detail: "a merge input's first record header is unreadable".into(),
        })
}

/// Delete a merged input (its step committed, or none of its records is live), its hint, and
/// the shard's snapshots (which name it).
fn drop_input<S: BlobStore>(core: &Core<S>, s: usize, input: Input<S>) -> Result<()> {
    let sh = &core.shards[s];
    let store = &core.store;
    let (slot, handle, ..) = input;
    let taken = sh
        .index
        .write()
        .blobs
        .get_mut(usize::from(slot))
        .and_then(Option::take);
    drop(taken);
    // Snapshots name every blob; one naming this blob is of no use after it is gone.
    let old_snaps: Vec<_> = std::mem::take(&mut *sh.snapshots.lock());
    for id in old_snaps {
        store.block_on(store.delete(id))?;
    }
    if let Some(id) = sh.hints.lock().remove(&handle.seq) {
        store.block_on(store.delete(id))?;
    }
    let inner = unwrap_handle(handle);
    store.block_on(store.close(inner.blob))?;
    store.block_on(store.delete(inner.id))?;
    sh.ctr.merges.fetch_add(1, Ordering::Relaxed);
    Ok(())
}

/// The handle once its last reader let go (readers hold a clone for one read only).
fn unwrap_handle<S: BlobStore>(mut h: Arc<BlobHandle<S>>) -> BlobHandle<S> {
    loop {
        match Arc::try_unwrap(h) {
            Ok(inner) => return inner,
            Err(back) => {
                h = back;
                std::thread::sleep(Duration::from_micros(50));
            }
        }
    }
}

/// Copy the records of `inputs` the keydir still points at into `out`, flushed. Returns
/// (key, old location, new location, seq) per copy.
#[allow(clippy::type_complexity)]
fn copy_live<S: BlobStore>(
    core: &Core<S>,
    ch: &S::Channel,
    s: usize,
    inputs: &[Input<S>],
    out: &mut Out<'_, S>,
) -> Result<Vec<(Vec<u8>, Loc, Loc, u64)>> {
    let sh = &core.shards[s];
    let store = &core.store;
    let mut moved: Vec<(Vec<u8>, Loc, Loc, u64)> = Vec::new();
    for (in_slot, h, written, _) in inputs {
        let mut err: Option<Error> = None;
        scan_blob(store, &core.cfg, ch, h, *written, |off, rec| {
            if err.is_some() || rec.header.kind() != Kind::Put {
                return;
            }
            let batch = rec.header.flags & record::BATCH != 0;
            let old = Loc {
                blob: *in_slot,
                offset: off as u32,
                value_len: rec.header.value_len | if batch { LOC_BATCH_BIT } else { 0 },
            };
            let live = sh.index.read().keydir.get(rec.key, hash_key(rec.key)) == Some(old);
            if !live {
                return;
            }
            let len = record::encoded_len(0, rec.key.len(), rec.value.len()) as u64;
            let was_cached = sh.cache.as_ref().is_some_and(|c| {
                let page = core.cfg.page;
                c.holds(h.salt, off / page)
            });
            match out.push(rec.header.seq, rec.key, rec.value) {
                Ok(at) => {
                    if was_cached {
                        out.mark_hot(at, len);
                    }
                    let new = Loc {
                        blob: out.slot,
                        offset: at,
                        value_len: rec.header.value_len,
                    };
                    moved.push((rec.key.to_vec(), old, new, rec.header.seq));
                }
                Err(e) => err = Some(e),
            }
        })?;
        if let Some(e) = err {
            return Err(e);
        }
    }
    out.write(true)?;
    let used = out.end.div_ceil(core.cfg.cluster).max(1);
    if used != out.clusters {
        store.block_on(store.resize(&out.handle.blob, used))?;
        out.clusters = used;
    }
    store.block_on(store.sync_md(&out.handle.blob))?;
    store.block_on(ch.flush())?;
    Ok(moved)
}
