//! The key-value state machine on blobcask, and its snapshots.
//!
//! User data lives under `d/` + generation + key. `apply` writes the data of a run of entries,
//! the last applied log id and the membership in one blobcask batch, so a crash keeps all of
//! it or none.
//!
//! # Snapshots
//!
//! - **Build**: the live records of the current generation are streamed (`iter_prefix`, which
//!   reads the data blobs sequentially) into a snapshot image: `BCSNAP1\0`, then per pair a
//!   little-endian u32 key length, the key, a u32 value length and the value. It is built while
//!   the state machine task holds the state machine (openraft asks for the builder on that
//!   task), so the image is exactly the state at its `last_log_id`; applying waits meanwhile.
//! - **Install**: the image is checked whole first (a bad image changes nothing), then written
//!   under a *new* generation, which nothing reads yet, in batches; then one batch switches
//!   `s/gen`, `s/applied` and `s/membership` together. A crash before that batch leaves the old
//!   state (open deletes the new generation's partial data); after it, the new state (open
//!   deletes the old generation's data, which is also deleted in the background right away).
//! - The current snapshot (metadata and image) is kept in memory and, with a snapshot
//!   directory, in the file `snapshot` there (written to `snapshot.tmp`, synced, renamed).

use std::io::Cursor;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use blobcask::{Db, WriteBatch};
use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{
    BasicNode, Entry, EntryPayload, LogId, OptionalSend, RaftSnapshotBuilder, SnapshotMeta,
    StorageError, StoredMembership,
};
use serde::{Deserialize, Serialize};

use crate::codec::{decode_as, encode, read_sm, read_snapshot, write_sm, write_snapshot};
use crate::log_store::log_index;
use crate::{NodeId, Request, Response, TypeConfig};

const GEN: &[u8] = b"s/gen";
const APPLIED: &[u8] = b"s/applied";
const MEMBERSHIP: &[u8] = b"s/membership";
const DATA: &[u8] = b"d/";
const MAGIC: &[u8; 8] = b"BCSNAP1\0";
/// Pairs per batch when installing, and batches in flight.
const INSTALL_BATCH: usize = 1024;
const INSTALL_IN_FLIGHT: usize = 8;
const DELETE_BATCH: usize = 4096;

type Membership = StoredMembership<NodeId, BasicNode>;
type Meta = SnapshotMeta<NodeId, BasicNode>;

fn data_prefix(gen: u64) -> Vec<u8> {
    let mut k = DATA.to_vec();
    k.extend_from_slice(&gen.to_be_bytes());
    k
}

fn data_key(gen: u64, key: &[u8]) -> Vec<u8> {
    let mut k = data_prefix(gen);
    k.extend_from_slice(key);
    k
}

/// What one pass over the keydir found (see [`crate::open`]).
pub(crate) struct KeyScan {
    pub log_indices: Vec<u64>,
    /// Data keys of other generations than the current one.
    pub stale_data: Vec<Vec<u8>>,
}

fn read_gen(db: &Db) -> Result<u64, crate::Error> {
    Ok(match db.get(GEN)? {
        Some(b) => u64::from_be_bytes(
            b.as_slice()
                .try_into()
                .map_err(|_| blobcask::Error::invalid("s/gen is not 8 bytes"))?,
        ),
        None => 0,
    })
}

pub(crate) fn scan_keys(db: &Db) -> Result<KeyScan, crate::Error> {
    let cur = data_prefix(read_gen(db)?);
    let mut scan = KeyScan {
        log_indices: Vec::new(),
        stale_data: Vec::new(),
    };
    for k in db.iter_keys()? {
        let k = k?;
        if let Some(i) = log_index(&k) {
            scan.log_indices.push(i);
        } else if k.starts_with(DATA) && !k.starts_with(&cur) {
            scan.stale_data.push(k);
        }
    }
    Ok(scan)
}

fn delete_keys(db: &Db, keys: &[Vec<u8>]) -> blobcask::Result<()> {
    for chunk in keys.chunks(DELETE_BATCH) {
        let mut b = WriteBatch::new();
        for k in chunk {
            b.delete(k);
        }
        db.write_batch(b)?;
    }
    Ok(())
}

/// The current snapshot.
#[derive(Clone, Serialize, Deserialize)]
struct Stored {
    meta: Meta,
    image: Vec<u8>,
}

impl Stored {
    fn to_snapshot(&self) -> Snapshot<TypeConfig> {
        Snapshot {
            meta: self.meta.clone(),
            snapshot: Box::new(Cursor::new(self.image.clone())),
        }
    }
}

/// Reads of the state machine's data, for a node's clients (cheap to clone).
#[derive(Clone)]
pub struct Kv {
    db: Db,
    gen: Arc<RwLock<u64>>,
}

impl Kv {
    /// The applied value of `key` (a linearizable read first asks the leader; see
    /// [`crate::node`]).
    pub fn get(&self, key: &[u8]) -> blobcask::Result<Option<Vec<u8>>> {
        // Held for the read: an install switches generations under the write lock, and only
        // deletes the old one afterwards.
        let gen = self
            .gen
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        self.db.get(&data_key(*gen, key))
    }
}

/// The key-value state machine.
pub struct StateMachine {
    db: Db,
    gen: Arc<RwLock<u64>>,
    /// The next generation an install may use (above every one tried).
    next_gen: u64,
    applied: Option<LogId<NodeId>>,
    membership: Membership,
    current: Option<Stored>,
    dir: Option<PathBuf>,
}

impl StateMachine {
    pub(crate) fn open(
        db: Db,
        dir: Option<PathBuf>,
        stale: &[Vec<u8>],
    ) -> Result<StateMachine, crate::Error> {
        delete_keys(&db, stale)?;
        let gen = read_gen(&db)?;
        let applied = match db.get(APPLIED)? {
            Some(b) => decode_as(&b, "applied log id")?,
            None => None,
        };
        let membership = match db.get(MEMBERSHIP)? {
            Some(b) => decode_as(&b, "membership")?,
            None => Membership::default(),
        };
        let current = match &dir {
            Some(d) => {
                std::fs::create_dir_all(d)?;
                match std::fs::read(d.join("snapshot")) {
                    Ok(b) => Some(decode_as::<Stored>(&b, "snapshot file")?),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
                    Err(e) => return Err(e.into()),
                }
            }
            None => None,
        };
        Ok(StateMachine {
            db,
            gen: Arc::new(RwLock::new(gen)),
            next_gen: gen + 1,
            applied,
            membership,
            current,
            dir,
        })
    }

    /// A read handle on the data.
    pub fn kv(&self) -> Kv {
        Kv {
            db: self.db.clone(),
            gen: self.gen.clone(),
        }
    }

    fn gen(&self) -> u64 {
        *self
            .gen
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Make `s` the current snapshot (the file first, when there is a directory).
    async fn keep(&mut self, s: Stored) -> Result<(), StorageError<NodeId>> {
        if let Some(dir) = self.dir.clone() {
            let bytes = encode(&s).map_err(write_snapshot)?;
            tokio::task::spawn_blocking(move || write_file(&dir, &bytes))
                .await
                .map_err(write_snapshot)?
                .map_err(write_snapshot)?;
        }
        self.current = Some(s);
        Ok(())
    }

    /// Stream the current generation into a snapshot image.
    async fn build(&mut self) -> Result<Snapshot<TypeConfig>, StorageError<NodeId>> {
        let db = self.db.clone();
        let prefix = data_prefix(self.gen());
        let image = tokio::task::spawn_blocking(move || -> blobcask::Result<Vec<u8>> {
            let mut out = MAGIC.to_vec();
            let mut it = db.iter_prefix(&prefix)?;
            while let Some(item) = it.next_pair() {
                let (k, v) = item?;
                let k = &k[prefix.len()..];
                for part in [k, v] {
                    let len = u32::try_from(part.len())
                        .map_err(|_| blobcask::Error::invalid("pair too large"))?;
                    out.extend_from_slice(&len.to_le_bytes());
                    out.extend_from_slice(part);
                }
            }
            Ok(out)
        })
        .await
        .map_err(read_sm)?
        .map_err(read_sm)?;
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let meta = Meta {
            last_log_id: self.applied,
            last_membership: self.membership.clone(),
            snapshot_id: format!(
                "{}-{}-{nanos}",
                self.applied.map_or(0, |l| l.leader_id.term),
                self.applied.map_or(0, |l| l.index)
            ),
        };
        let s = Stored { meta, image };
        let snap = s.to_snapshot();
        self.keep(s).await?;
        Ok(snap)
    }
}

fn write_file(dir: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    let tmp = dir.join("snapshot.tmp");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, dir.join("snapshot"))?;
    std::fs::File::open(dir)?.sync_all()
}

fn bad(what: &str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_string())
}

/// One length-prefixed part of a snapshot image.
fn take<'a>(rest: &mut &'a [u8]) -> Result<&'a [u8], std::io::Error> {
    let (len, tail) = rest
        .split_first_chunk::<4>()
        .ok_or_else(|| bad("truncated"))?;
    let len = u32::from_le_bytes(*len) as usize;
    if tail.len() < len {
        return Err(bad("truncated"));
    }
    let (part, tail) = tail.split_at(len);
    *rest = tail;
    Ok(part)
}

/// A key and its value, borrowed from a snapshot image.
type Pair<'a> = (&'a [u8], &'a [u8]);

/// The pairs of a snapshot image, checked whole.
fn parse_image(image: &[u8]) -> Result<Vec<Pair<'_>>, std::io::Error> {
    let mut rest = image
        .strip_prefix(MAGIC)
        .ok_or_else(|| bad("not a snapshot image"))?;
    let mut pairs = Vec::new();
    while !rest.is_empty() {
        let k = take(&mut rest)?;
        let v = take(&mut rest)?;
        if k.is_empty() {
            return Err(bad("empty key"));
        }
        pairs.push((k, v));
    }
    Ok(pairs)
}

/// Hands out the snapshot the state machine built when asked for the builder.
pub struct SnapshotBuilder {
    built: Option<Result<Snapshot<TypeConfig>, StorageError<NodeId>>>,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError<NodeId>> {
        self.built
            .take()
            .unwrap_or_else(|| Err(read_snapshot(std::io::Error::other("built once"))))
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId<NodeId>>, Membership), StorageError<NodeId>> {
        Ok((self.applied, self.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Response>, StorageError<NodeId>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let gen = self.gen();
        let mut batch = WriteBatch::new();
        let mut out = Vec::new();
        let mut applied = self.applied;
        let mut membership = self.membership.clone();
        for e in entries {
            applied = Some(e.log_id);
            match e.payload {
                EntryPayload::Blank => {}
                EntryPayload::Normal(Request::Put { key, value }) => {
                    batch.put(&data_key(gen, &key), &value);
                }
                EntryPayload::Normal(Request::Delete { key }) => {
                    batch.delete(&data_key(gen, &key));
                }
                EntryPayload::Membership(m) => {
                    membership = StoredMembership::new(Some(e.log_id), m);
                }
            }
            out.push(Response {
                index: e.log_id.index,
            });
        }
        if out.is_empty() {
            return Ok(out);
        }
        batch.put(APPLIED, &encode(&applied).map_err(write_sm)?);
        batch.put(MEMBERSHIP, &encode(&membership).map_err(write_sm)?);
        self.db.write_batch_async(batch).await.map_err(write_sm)?;
        self.applied = applied;
        self.membership = membership;
        Ok(out)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        SnapshotBuilder {
            built: Some(self.build().await),
        }
    }

    async fn begin_receiving_snapshot(
        &mut self,
    ) -> Result<Box<Cursor<Vec<u8>>>, StorageError<NodeId>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &Meta,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError<NodeId>> {
        let image = snapshot.into_inner();
        let new_gen = self.next_gen;
        self.next_gen += 1;
        let db = self.db.clone();
        let image =
            tokio::task::spawn_blocking(move || -> Result<Vec<u8>, StorageError<NodeId>> {
                let pairs = parse_image(&image).map_err(read_snapshot)?;
                // Several batches in flight so that their flushes overlap.
                let mut flights = std::collections::VecDeque::new();
                for chunk in pairs.chunks(INSTALL_BATCH) {
                    let mut b = WriteBatch::new();
                    for (k, v) in chunk {
                        b.put(&data_key(new_gen, k), v);
                    }
                    flights.push_back(db.write_batch_async(b));
                    if flights.len() >= INSTALL_IN_FLIGHT {
                        if let Some(f) = flights.pop_front() {
                            tokio::runtime::Handle::current()
                                .block_on(f)
                                .map_err(write_snapshot)?;
                        }
                    }
                }
                for f in flights {
                    tokio::runtime::Handle::current()
                        .block_on(f)
                        .map_err(write_snapshot)?;
                }
                Ok(image)
            })
            .await
            .map_err(write_snapshot)??;
        let stored = Stored {
            meta: meta.clone(),
            image,
        };
        self.keep(stored).await?;
        let mut b = WriteBatch::new();
        b.put(GEN, &new_gen.to_be_bytes());
        b.put(APPLIED, &encode(&meta.last_log_id).map_err(write_sm)?);
        b.put(
            MEMBERSHIP,
            &encode(&meta.last_membership).map_err(write_sm)?,
        );
        self.db.write_batch_async(b).await.map_err(write_sm)?;
        let old = {
            let mut g = self
                .gen
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            std::mem::replace(&mut *g, new_gen)
        };
        self.applied = meta.last_log_id;
        self.membership = meta.last_membership.clone();
        // The old generation is unreachable now: delete it in the background (open deletes
        // what a crash leaves of it).
        let db = self.db.clone();
        std::thread::spawn(move || {
            let prefix = data_prefix(old);
            let keys: Vec<Vec<u8>> = match db.iter_keys() {
                Ok(it) => it
                    .filter_map(|k| k.ok())
                    .filter(|k| k.starts_with(&prefix))
                    .collect(),
                Err(e) => {
                    log::warn!("listing generation {old}: {e}");
                    return;
                }
            };
            if let Err(e) = delete_keys(&db, &keys) {
                log::warn!("deleting generation {old}: {e}");
            }
        });
        Ok(())
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> Result<Option<Snapshot<TypeConfig>>, StorageError<NodeId>> {
        Ok(self.current.as_ref().map(Stored::to_snapshot))
    }
}
