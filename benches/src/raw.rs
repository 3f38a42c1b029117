//! The device's own limits (`rawdevice`) and the blob layer against the raw device
//! (`blobraw`), on the same file and with the same buffer sizes as the engine.

use std::path::Path;
use std::time::Instant;

use blobcask::device::{AlignedBuf, Device, IoRequest};
use rand::{Rng, SeedableRng};

use crate::config::{Backend, Config};
use crate::workload::say;
use crate::BenchResult;

/// One measured figure, with its blob-layer counterpart where there is one.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RawFigure {
    pub bench: String,
    pub name: String,
    /// "MB/s" or "IOPS".
    pub unit: String,
    pub raw: f64,
    pub blob: Option<f64>,
    /// blob / raw.
    pub ratio: Option<f64>,
}

const KIB: usize = 1024;
const MIB: u64 = 1 << 20;

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    pollster::block_on(f)
}

/// Size of the region exercised.
fn region_bytes(cfg: &Config, dev_size: u64) -> u64 {
    let want = if cfg.raw_bytes > 0 {
        cfg.raw_bytes
    } else {
        1 << 30
    };
    let r = want.min(dev_size);
    r - r % MIB
}

/// A workload against either the raw device or a blob.
pub trait Target {
    /// Write `buf` at byte offset `off` of the target's region.
    fn write(&self, off: u64, buf: &[u8]) -> BenchResult<()>;
    /// Submit a batch (queue depth = `reqs.len()`).
    fn submit(&self, reqs: &mut [IoRequest<'_>]) -> BenchResult<()>;
    fn flush(&self) -> BenchResult<()>;
}

/// The raw device, with an offset applied.
pub struct RawTarget<'a, D: Device> {
    pub dev: &'a D,
    pub base: u64,
}

impl<D: Device> Target for RawTarget<'_, D> {
    fn write(&self, off: u64, buf: &[u8]) -> BenchResult<()> {
        Ok(block_on(self.dev.write(self.base + off, buf))?)
    }
    fn submit(&self, reqs: &mut [IoRequest<'_>]) -> BenchResult<()> {
        if self.base != 0 {
            for r in reqs.iter_mut() {
                match r {
                    IoRequest::Read { offset, .. } | IoRequest::Write { offset, .. } => {
                        *offset += self.base
                    }
                }
            }
        }
        Ok(block_on(self.dev.submit(reqs))?)
    }
    fn flush(&self) -> BenchResult<()> {
        Ok(block_on(self.dev.flush())?)
    }
}

/// Sequential writes of `chunk` bytes over `region`; a flush every `flush_every` writes
/// (0 = once at the end). Returns MB/s.
pub fn seq_write(t: &dyn Target, region: u64, chunk: usize, flush_every: u64) -> BenchResult<f64> {
    let mut buf = AlignedBuf::zeroed(chunk);
    rand_chacha::ChaCha8Rng::seed_from_u64(7).fill(&mut buf[..]);
    let n = region / chunk as u64;
    let start = Instant::now();
    for i in 0..n {
        t.write(i * chunk as u64, &buf)?;
        if flush_every > 0 && (i + 1) % flush_every == 0 {
            t.flush()?;
        }
    }
    t.flush()?;
    let secs = start.elapsed().as_secs_f64().max(1e-9);
    Ok((n * chunk as u64) as f64 / secs / MIB as f64)
}

/// One pass of reads over `region`, `chunk` bytes each, `qd` per submission (the shape of
/// the engine's iteration: 1 MiB windows, 4 per submission). Returns MB/s.
pub fn seq_read(t: &dyn Target, region: u64, chunk: usize, qd: usize) -> BenchResult<f64> {
    let qd = qd.max(1);
    let mut bufs: Vec<AlignedBuf> = (0..qd).map(|_| AlignedBuf::zeroed(chunk)).collect();
    let n = region / chunk as u64;
    let start = Instant::now();
    let mut i = 0;
    while i < n {
        let k = (n - i).min(qd as u64) as usize;
        let mut reqs: Vec<IoRequest<'_>> = bufs[..k]
            .iter_mut()
            .enumerate()
            .map(|(j, buf)| IoRequest::Read {
                offset: (i + j as u64) * chunk as u64,
                buf: &mut buf[..],
            })
            .collect();
        t.submit(&mut reqs)?;
        i += k as u64;
    }
    let secs = start.elapsed().as_secs_f64().max(1e-9);
    Ok((n * chunk as u64) as f64 / secs / MIB as f64)
}

/// `ops` random 4 KiB I/Os in `region` in batches of `qd`. Returns IOPS.
pub fn rand_io(
    t: &dyn Target,
    region: u64,
    qd: usize,
    ops: u64,
    write: bool,
    seed: u64,
) -> BenchResult<f64> {
    let qd = qd.max(1);
    let bs = 4 * KIB;
    let blocks = (region / bs as u64).max(1);
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let mut bufs: Vec<AlignedBuf> = (0..qd).map(|_| AlignedBuf::zeroed(bs)).collect();
    let wbuf = AlignedBuf::from_slice(&[0x5a; 4096]);
    let batches = ops.div_ceil(qd as u64);
    let start = Instant::now();
    for _ in 0..batches {
        let offs: Vec<u64> = (0..qd)
            .map(|_| rng.gen_range(0..blocks) * bs as u64)
            .collect();
        if write {
            let mut reqs: Vec<IoRequest<'_>> = offs
                .iter()
                .map(|&offset| IoRequest::Write {
                    offset,
                    buf: &wbuf[..],
                })
                .collect();
            t.submit(&mut reqs)?;
        } else {
            let mut reqs: Vec<IoRequest<'_>> = offs
                .iter()
                .zip(bufs.iter_mut())
                .map(|(&offset, b)| IoRequest::Read {
                    offset,
                    buf: &mut b[..],
                })
                .collect();
            t.submit(&mut reqs)?;
        }
    }
    let secs = start.elapsed().as_secs_f64().max(1e-9);
    Ok((batches * qd as u64) as f64 / secs)
}

/// 4 KiB writes each followed by a flush (the `--sync=1` single-writer ceiling). IOPS.
pub fn write_flush(t: &dyn Target, region: u64, ops: u64) -> BenchResult<f64> {
    let buf = AlignedBuf::from_slice(&[0xa5; 4096]);
    let blocks = (region / 4096).max(1);
    let start = Instant::now();
    for i in 0..ops {
        t.write((i % blocks) * 4096, &buf)?;
        t.flush()?;
    }
    Ok(ops as f64 / start.elapsed().as_secs_f64().max(1e-9))
}

pub fn figure(bench: &str, name: &str, unit: &str, raw: f64, blob: Option<f64>) -> RawFigure {
    let r = RawFigure {
        bench: bench.into(),
        name: name.into(),
        unit: unit.into(),
        raw,
        blob,
        ratio: blob.map(|b| b / raw.max(1e-9)),
    };
    match r.blob {
        None => say(&format!(
            "{:<12} : {:<28} {:>12.1} {unit}",
            bench, name, raw
        )),
        Some(b) => say(&format!(
            "{:<12} : {:<28} raw {:>10.1} blob {:>10.1} {unit}  blob/raw {:.3}",
            bench,
            name,
            raw,
            b,
            r.ratio.unwrap_or(0.0)
        )),
    }
    r
}

/// The engine's read queue depth: one outstanding read per client thread, at least 32.
pub fn engine_qd(cfg: &Config) -> usize {
    if cfg.raw_qd > 0 {
        cfg.raw_qd
    } else {
        cfg.threads().max(32)
    }
}

/// `rawdevice` on an already open device.
pub fn rawdevice_on<D: Device>(cfg: &Config, dev: &D) -> BenchResult<Vec<RawFigure>> {
    let region = region_bytes(cfg, dev.size());
    if region < 16 * MIB {
        return Err(format!(
            "rawdevice needs at least 16 MiB, the device has {}",
            dev.size()
        )
        .into());
    }
    say(&format!(
        "rawdevice    : {} MiB region, io path {}",
        region / MIB,
        dev.io_path()
    ));
    let t = RawTarget { dev, base: 0 };
    let b = "rawdevice";
    // The first passes write never-written (preallocated) extents, as a fresh store does
    // (1 MiB is the engine's write-behind size); the later passes overwrite, the device's
    // best case.
    let half = region / 2;
    let fresh_1m = seq_write(&t, half, 1 << 20, 0)?;
    let t2 = RawTarget { dev, base: half };
    let fresh_128k = seq_write(&t2, half, 128 * KIB, 0)?;
    let mut v = vec![
        figure(b, "seqwrite 1M fresh", "MB/s", fresh_1m, None),
        figure(b, "seqwrite 128K fresh", "MB/s", fresh_128k, None),
    ];
    v.push(figure(
        b,
        "seqwrite 1M",
        "MB/s",
        seq_write(&t, region, 1 << 20, 0)?,
        None,
    ));
    v.push(figure(
        b,
        "seqwrite 128K",
        "MB/s",
        seq_write(&t, region, 128 * KIB, 0)?,
        None,
    ));
    // Flush after every write: what --sync=1 costs at each buffer size.
    let small = region.min(64 * MIB);
    v.push(figure(
        b,
        "seqwrite 128K + flush each",
        "MB/s",
        seq_write(&t, small, 128 * KIB, 1)?,
        None,
    ));
    v.push(figure(
        b,
        "seqread 1M QD4",
        "MB/s",
        seq_read(&t, region, 1 << 20, 4)?,
        None,
    ));
    let wf_ops = (cfg.raw_ops / 10).clamp(100, 5000);
    v.push(figure(
        b,
        "write 4K + flush each",
        "IOPS",
        write_flush(&t, small, wf_ops)?,
        None,
    ));
    let seed = cfg.effective_seed();
    v.push(figure(
        b,
        "randread 4K QD1",
        "IOPS",
        rand_io(&t, region, 1, cfg.raw_ops, false, seed)?,
        None,
    ));
    let mut qds = vec![cfg.threads(), engine_qd(cfg)];
    qds.sort_unstable();
    qds.dedup();
    for q in qds.into_iter().filter(|&q| q > 1) {
        v.push(figure(
            b,
            &format!("randread 4K QD{q}"),
            "IOPS",
            rand_io(&t, region, q, cfg.raw_ops * 2, false, seed ^ q as u64)?,
            None,
        ));
    }
    Ok(v)
}

/// `rawread` on an already open device: the region is first written with 1 MiB writes (a
/// read of a never-written extent of an image file would not reach the disk), then read at
/// random, 4 KiB at a time, at queue depth 1, 32 and `--batch_size`.
pub fn rawread_on<D: Device>(cfg: &Config, dev: &D) -> BenchResult<Vec<RawFigure>> {
    let region = region_bytes(cfg, dev.size());
    if region < 16 * MIB {
        return Err(format!(
            "rawread needs at least 16 MiB, the device has {}",
            dev.size()
        )
        .into());
    }
    say(&format!(
        "rawread      : {} MiB region, io path {}",
        region / MIB,
        dev.io_path()
    ));
    let t = RawTarget { dev, base: 0 };
    let b = "rawread";
    let mut v = vec![figure(
        b,
        "seqwrite 1M (fill)",
        "MB/s",
        seq_write(&t, region, 1 << 20, 0)?,
        None,
    )];
    v.push(figure(
        b,
        "seqread 1M QD4",
        "MB/s",
        seq_read(&t, region, 1 << 20, 4)?,
        None,
    ));
    let seed = cfg.effective_seed();
    let mut qds = vec![1, 32, cfg.batch_size.max(1)];
    qds.sort_unstable();
    qds.dedup();
    for q in qds {
        let ops = if q == 1 { cfg.raw_ops } else { cfg.raw_ops * 2 };
        v.push(figure(
            b,
            &format!("randread 4K QD{q}"),
            "IOPS",
            rand_io(&t, region, q, ops, false, seed ^ q as u64)?,
            None,
        ));
    }
    Ok(v)
}

/// `--benchmarks=rawread` on the configured backend at `path`.
pub fn rawread(cfg: &Config, path: &Path) -> BenchResult<Vec<RawFigure>> {
    match cfg.backend {
        Backend::Memory => {
            let dev = blobcask::device::MemoryDevice::new(cfg.device_bytes().min(1 << 30), 4096)?;
            rawread_on(cfg, &dev)
        }
        Backend::Native | Backend::Spdk => {
            crate::blobcask_engine::with_file_device(cfg, path, |dev| rawread_on(cfg, dev))
        }
    }
}

/// `--benchmarks=rawdevice` on the configured backend at `path`.
pub fn rawdevice(cfg: &Config, path: &Path) -> BenchResult<Vec<RawFigure>> {
    match cfg.backend {
        Backend::Memory => {
            let dev = blobcask::device::MemoryDevice::new(cfg.device_bytes().min(1 << 30), 4096)?;
            rawdevice_on(cfg, &dev)
        }
        Backend::Native | Backend::Spdk => {
            crate::blobcask_engine::with_file_device(cfg, path, |dev| rawdevice_on(cfg, dev))
        }
    }
}

/// `--benchmarks=blobraw` at `path`.
pub fn blobraw(cfg: &Config, path: &Path) -> BenchResult<Vec<RawFigure>> {
    crate::blobcask_engine::blobraw(cfg, path)
}
