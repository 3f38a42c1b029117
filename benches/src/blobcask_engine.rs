//! The blobcask adapter, and the device/blobstore plumbing of `rawdevice` and `blobraw`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use blobcask::blobstore::native::NativeBlobStore;
use blobcask::blobstore::{BlobIo, BlobStore, Bstype, CreateOpts, InitOpts, IoChannel};
use blobcask::device::{AnyDevice, Device, FileDevice, FileOptions, IoRequest, MemoryDevice};
use blobcask::{Db, DeviceSpec, Options, SyncPolicy};
use std::time::Duration;

use crate::config::{Backend, Config};
use crate::engine::{Engine, EngineStats};
use crate::raw::{self, RawFigure, Target};
use crate::workload::say;
use crate::BenchResult;

/// Memory devices by `--db` path, so a memory-backed store survives close + reopen within
/// one process (the `reopen` benchmark and the smoke test).
fn memory_devices() -> &'static Mutex<HashMap<PathBuf, Arc<MemoryDevice>>> {
    static M: OnceLock<Mutex<HashMap<PathBuf, Arc<MemoryDevice>>>> = OnceLock::new();
    M.get_or_init(|| Mutex::new(HashMap::new()))
}

/// The blobcask engine under test, on the native blobstore or (feature `spdk`) on SPDK.
pub struct Blobcask<S: BlobStore = NativeBlobStore<AnyDevice>> {
    db: Db<S>,
    label: String,
    cluster_size: u64,
}

/// The engine options the flags ask for.
pub fn options(cfg: &Config, device: DeviceSpec, create: bool) -> BenchResult<Options> {
    let mut o = Options::new(device);
    o.create = create;
    o.device_size = cfg.device_bytes();
    o.preallocate = cfg.preallocate;
    if cfg.shards > 0 {
        o.shards = cfg.shards;
    }
    if cfg.max_blob_size > 0 {
        o.max_blob_size = cfg.max_blob_size;
    }
    o.sync = if !cfg.sync {
        SyncPolicy::Never
    } else if cfg.group_commit_us < 0 {
        o.sync // the engine's default (group commit)
    } else if cfg.group_commit_us == 0 {
        SyncPolicy::Always
    } else {
        SyncPolicy::GroupCommit {
            max_delay: Duration::from_micros(cfg.group_commit_us as u64),
        }
    };
    if let Some(c) = cfg.cache_bytes()? {
        o.cache_bytes = usize::try_from(c)?;
    }
    o.max_key_size = o.max_key_size.max(cfg.key_size + 1);
    o.max_value_size = o.max_value_size.max(cfg.value_size);
    Ok(o)
}

/// Open blobcask at `path` (an image file or block device; ignored for `--backend memory`).
pub fn open(cfg: &Config, path: &Path, create: bool) -> BenchResult<Box<dyn Engine>> {
    let device = match cfg.backend {
        Backend::Spdk => return open_spdk(cfg, path, create),
        Backend::Memory => {
            let mut m = memory_devices().lock().unwrap_or_else(|p| p.into_inner());
            let dev = match (create, m.get(path)) {
                (false, Some(d)) => d.clone(),
                (false, None) => {
                    return Err(format!(
                        "--use_existing_db with --backend memory: no memory store at {} in \
                         this process",
                        path.display()
                    )
                    .into())
                }
                (true, _) => {
                    let d = Arc::new(MemoryDevice::new(cfg.device_bytes(), 4096)?);
                    m.insert(path.to_path_buf(), d.clone());
                    d
                }
            };
            DeviceSpec::Device(AnyDevice::Memory(dev))
        }
        Backend::Native => {
            if create && path.is_file() {
                // db_bench without --use_existing_db starts from an empty store.
                std::fs::remove_file(path)?;
            }
            DeviceSpec::Path(path.to_path_buf())
        }
    };
    let o = options(cfg, device, create)?;
    let cluster_size = u64::from(o.cluster_size);
    let db = Db::open(o)?;
    let label = match cfg.backend {
        Backend::Memory => "blobcask/memory".to_string(),
        _ => "blobcask/native".to_string(),
    };
    Ok(Box::new(Blobcask {
        db,
        label,
        cluster_size,
    }))
}

/// `--backend spdk`: the same image file, as an SPDK aio bdev.
#[cfg(feature = "spdk")]
fn open_spdk(cfg: &Config, path: &Path, create: bool) -> BenchResult<Box<dyn Engine>> {
    use blobcask::blobstore::spdk::SpdkConfig;
    if create {
        if path.is_file() {
            std::fs::remove_file(path)?;
        }
        let f = std::fs::File::create(path)?;
        f.set_len(cfg.device_bytes())?;
        f.sync_all()?;
    }
    let json = match SpdkConfig::aio("BenchAio0", path, 4096) {
        SpdkConfig::Json(j) => j,
        SpdkConfig::File(p) => p.display().to_string(),
    };
    let o = options(cfg, DeviceSpec::Path(path.to_path_buf()), create)?;
    let cluster_size = u64::from(o.cluster_size);
    let db = Db::open_spdk(&json, "BenchAio0", o)?;
    Ok(Box::new(Blobcask {
        db,
        label: "blobcask/spdk-aio".to_string(),
        cluster_size,
    }))
}

#[cfg(not(feature = "spdk"))]
fn open_spdk(_cfg: &Config, _path: &Path, _create: bool) -> BenchResult<Box<dyn Engine>> {
    Err("--backend spdk needs the bench built with `--features spdk` (and SPDK installed)".into())
}

impl<S: BlobStore> Engine for Blobcask<S> {
    fn name(&self) -> String {
        self.label.clone()
    }
    fn put(&self, key: &[u8], value: &[u8]) -> BenchResult<()> {
        Ok(self.db.put(key, value)?)
    }
    fn get(&self, key: &[u8]) -> BenchResult<Option<Vec<u8>>> {
        Ok(self.db.get(key)?)
    }
    fn multi_get(&self, keys: &[Vec<u8>]) -> BenchResult<Vec<Option<Vec<u8>>>> {
        Ok(self.db.multi_get(keys)?)
    }
    fn delete(&self, key: &[u8]) -> BenchResult<()> {
        Ok(self.db.delete(key)?)
    }
    fn sync(&self) -> BenchResult<()> {
        Ok(self.db.sync()?)
    }
    fn scan(&self, f: &mut dyn FnMut(&[u8], &[u8]) -> bool) -> BenchResult<u64> {
        let mut n = 0u64;
        let mut it = self.db.iter()?;
        while let Some(item) = it.next_pair() {
            let (k, v) = item?;
            n += 1;
            if !f(k, v) {
                break;
            }
        }
        Ok(n)
    }
    fn compact(&self) -> BenchResult<()> {
        Ok(self.db.merge()?)
    }
    fn stats(&self) -> BenchResult<EngineStats> {
        let s = self.db.stats()?;
        Ok(convert_stats(&s, self.cluster_size))
    }
    fn close(self: Box<Self>) -> BenchResult<()> {
        Ok(self.db.close()?)
    }
}

/// blobcask's [`blobcask::Stats`] as the tool's [`EngineStats`].
fn convert_stats(s: &blobcask::Stats, cluster_size: u64) -> EngineStats {
    let used = s.total_clusters.saturating_sub(s.free_clusters) * cluster_size;
    let sealed = s.blobs.len();
    // Keys, keydir bytes per key and write amplification are the tool's own lines (from the
    // fields below); these lines add only what they do not show, so each figure appears once.
    let lines = vec![
        format!("keydir bytes          {}", s.keydir_bytes),
        format!(
            "log bytes live/dead   {} / {} in {sealed} data blobs over {} shards",
            s.live_bytes,
            s.dead_bytes,
            s.shards.len()
        ),
        format!(
            "clusters used/total   {} / {}",
            s.total_clusters.saturating_sub(s.free_clusters),
            s.total_clusters
        ),
        format!(
            "user/device bytes     {} / {}",
            s.user_bytes, s.device_bytes
        ),
        format!("merges                {} ({} bytes rewritten)", s.merges, s.merged_bytes),
        format!(
            "group commits         {} carrying {} writes (mean {:.2}; histogram 1,2-3,4-7,..,>=128: {:?})",
            s.groups, s.group_ops, s.mean_group_size, s.group_size_histogram
        ),
        format!("cache hits/misses     {} / {}", s.cache_hits, s.cache_misses),
        format!(
            "last recovery         {:.3} s (hints used: {})",
            s.recovery_time.as_secs_f64(),
            s.recovery_used_hints
        ),
        format!("io path               {}", s.io_path),
    ];
    EngineStats {
        keys: Some(s.keys),
        keydir_bytes_per_key: Some(s.keydir_bytes_per_key),
        used_bytes: Some(used),
        live_bytes: None,
        write_amplification: (s.user_bytes > 0).then_some(s.write_amplification),
        lines,
    }
}

/// Open (creating if needed) the file or block device at `path` for raw I/O.
fn open_raw(path: &Path, lock: bool, size: u64) -> BenchResult<(FileDevice, bool)> {
    let opts = FileOptions {
        lock,
        preallocate: true,
        ..FileOptions::default()
    };
    if path.exists() {
        return Ok((FileDevice::open_with(path, &opts)?, false));
    }
    Ok((FileDevice::create_with(path, size, &opts)?, true))
}

/// Run `f` on the file/block device at `path`; an image file is created (and removed after)
/// when absent.
pub fn with_file_device<T>(
    cfg: &Config,
    path: &Path,
    f: impl FnOnce(&FileDevice) -> BenchResult<T>,
) -> BenchResult<T> {
    let want = if cfg.raw_bytes > 0 {
        cfg.raw_bytes
    } else {
        cfg.device_bytes().max(1 << 30)
    };
    let size = want.div_ceil(1 << 20) * (1 << 20);
    let (dev, created) = open_raw(path, true, size)?;
    let r = f(&dev);
    drop(dev);
    if created {
        let _ = std::fs::remove_file(path);
    }
    r
}

/// A blob as a [`Target`]: byte offsets converted to io units.
struct BlobTarget<'a, S: BlobStore> {
    store: &'a S,
    ch: &'a S::Channel,
    blob: &'a S::Blob,
    unit: u64,
}

impl<S: BlobStore> Target for BlobTarget<'_, S> {
    fn write(&self, off: u64, buf: &[u8]) -> BenchResult<()> {
        Ok(self
            .store
            .block_on(self.ch.write(self.blob, off / self.unit, buf))?)
    }
    fn submit(&self, reqs: &mut [IoRequest<'_>]) -> BenchResult<()> {
        let mut b: Vec<BlobIo<'_, S::Blob>> = reqs
            .iter_mut()
            .map(|r| match r {
                IoRequest::Read { offset, buf } => BlobIo::Read {
                    blob: self.blob,
                    offset: *offset / self.unit,
                    buf: &mut buf[..],
                },
                IoRequest::Write { offset, buf } => BlobIo::Write {
                    blob: self.blob,
                    offset: *offset / self.unit,
                    buf: &buf[..],
                },
            })
            .collect();
        Ok(self.store.block_on(self.ch.submit(&mut b))?)
    }
    fn flush(&self) -> BenchResult<()> {
        Ok(self.store.block_on(self.ch.flush())?)
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// Measure `f` on raw and blob alternately, `rounds` times each; medians.
fn pair(
    rounds: usize,
    raw_t: &dyn Target,
    blob_t: &dyn Target,
    f: &dyn Fn(&dyn Target, usize) -> BenchResult<f64>,
) -> BenchResult<(f64, f64)> {
    let mut a = Vec::new();
    let mut b = Vec::new();
    for i in 0..rounds {
        // Alternate which goes first so drift on a shared machine hits both alike.
        if i % 2 == 0 {
            a.push(f(raw_t, i)?);
            b.push(f(blob_t, i)?);
        } else {
            b.push(f(blob_t, i)?);
            a.push(f(raw_t, i)?);
        }
    }
    Ok((median(a), median(b)))
}

/// `blobraw`: the native blob layer (`NativeBlobStore` + `IoChannel`) against the raw device
/// on the same file. The blob is thick, on the first half of the device; the raw I/O goes to
/// an equal region at the end of the same file.
pub fn blobraw(cfg: &Config, path: &Path) -> BenchResult<Vec<RawFigure>> {
    if cfg.backend == Backend::Memory {
        return blobraw_memory(cfg);
    }
    let region: u64 = if cfg.raw_bytes > 0 {
        cfg.raw_bytes.div_ceil(1 << 20) * (1 << 20)
    } else {
        256 << 20
    };
    if path.exists() {
        if path.is_file() {
            std::fs::remove_file(path)?;
        } else {
            return Err(format!(
                "blobraw formats its device; refusing to touch existing {}",
                path.display()
            )
            .into());
        }
    }
    let size = 2 * region + (64 << 20);
    let (store_dev, _) = open_raw(path, true, size)?;
    let (raw_dev, _) = open_raw(path, false, size)?;
    let r = blobraw_on(cfg, store_dev, &raw_dev, raw_dev.size() - region, region);
    drop(raw_dev);
    let _ = std::fs::remove_file(path);
    r
}

fn blobraw_memory(cfg: &Config) -> BenchResult<Vec<RawFigure>> {
    let region: u64 = if cfg.raw_bytes > 0 {
        cfg.raw_bytes.div_ceil(1 << 20) * (1 << 20)
    } else {
        64 << 20
    };
    let dev = Arc::new(MemoryDevice::new(2 * region + (64 << 20), 4096)?);
    let raw_dev = AnyDevice::Memory(dev.clone());
    let base = raw_dev.size() - region;
    blobraw_on(cfg, AnyDevice::Memory(dev), &raw_dev, base, region)
}

fn blobraw_on<D: Device, R: Device>(
    cfg: &Config,
    store_dev: D,
    raw_dev: &R,
    raw_base: u64,
    region: u64,
) -> BenchResult<Vec<RawFigure>> {
    let opts = InitOpts {
        bstype: Bstype::new("BLOBRAW")?,
        ..InitOpts::default()
    };
    let store = pollster::block_on(NativeBlobStore::init(store_dev, opts))?;
    let clusters = region / u64::from(store.cluster_size());
    let id = store.block_on(store.create(CreateOpts {
        num_clusters: clusters,
        ..CreateOpts::default()
    }))?;
    let blob = store.block_on(store.open(id))?;
    let ch = store.channel()?;
    let unit = u64::from(store.io_unit_size());
    let bt = BlobTarget {
        store: &store,
        ch: &ch,
        blob: &blob,
        unit,
    };
    let rt = raw::RawTarget {
        dev: raw_dev,
        base: raw_base,
    };
    say(&format!(
        "blobraw      : {} MiB blob ({clusters} clusters of {} KiB) vs {} MiB raw region, io \
         path {}",
        region >> 20,
        store.cluster_size() >> 10,
        region >> 20,
        raw_dev.io_path()
    ));
    let rounds = cfg.raw_rounds.max(1);
    let ops = cfg.raw_ops;
    let seed = cfg.effective_seed();
    let mut out = Vec::new();
    let mut push = |name: &str, unit: &str, (r, b): (f64, f64)| {
        out.push(raw::figure("blobraw", name, unit, r, Some(b)));
    };
    // Fill both regions first: reads of never-written extents would not touch the disk.
    push(
        "seqwrite 128K",
        "MB/s",
        pair(rounds, &rt, &bt, &|t, _| {
            raw::seq_write(t, region, 128 << 10, 0)
        })?,
    );
    for qd in [1usize, 32] {
        push(
            &format!("randread 4K QD{qd}"),
            "IOPS",
            pair(rounds, &rt, &bt, &|t, i| {
                raw::rand_io(t, region, qd, ops, false, seed ^ i as u64)
            })?,
        );
        push(
            &format!("randwrite 4K QD{qd}"),
            "IOPS",
            pair(rounds, &rt, &bt, &|t, i| {
                raw::rand_io(t, region, qd, ops, true, seed ^ (i as u64) << 8)
            })?,
        );
    }
    store.block_on(store.close(blob))?;
    store.block_on(store.unload())?;
    Ok(out)
}
