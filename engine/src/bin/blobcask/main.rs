//! `blobcask`: use, inspect, check and repair a store on an image file or a block device.

use std::io::{self, BufRead, BufWriter, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use blobcask::{Db, DeviceSpec, Options, SyncPolicy};
use clap::{Parser, Subcommand, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};

mod grow;
mod inspect;
mod shell;
mod tsv;

/// A Bitcask-style key-value store on an SPDK-format blobstore.
#[derive(Parser)]
#[command(name = "blobcask", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Clone, Copy, ValueEnum)]
enum SyncArg {
    /// Acknowledge only after the device flush.
    Always,
    /// Share one flush among concurrent writers (2 ms window).
    Group,
    /// Never flush on the write path (data reaches the device, durability at close).
    Never,
}

impl From<SyncArg> for SyncPolicy {
    fn from(s: SyncArg) -> Self {
        match s {
            SyncArg::Always => SyncPolicy::Always,
            SyncArg::Group => SyncPolicy::GroupCommit {
                max_delay: Duration::from_millis(2),
            },
            SyncArg::Never => SyncPolicy::Never,
        }
    }
}

/// Options shared by every command that opens a store.
#[derive(clap::Args, Clone)]
struct StoreArgs {
    /// Image file or block device holding the store.
    device: PathBuf,
    /// Durability of writes.
    #[arg(long, value_enum, default_value = "always")]
    sync: SyncArg,
    /// Open even if a data log is damaged: skip the damaged ranges and keep every valid record
    /// after them (older values may come back; the ranges skipped are printed).
    #[arg(long)]
    salvage: bool,
}

#[derive(Subcommand)]
enum Cmd {
    /// Create a store: format an image file (created with --size) or a block device.
    Format {
        device: PathBuf,
        /// Size of a new image file, e.g. 1G, 512M (default: an existing image's size, else 1G).
        #[arg(long, value_parser = parse_size)]
        size: Option<u64>,
        /// Blobstore cluster size, e.g. 1M, 64K.
        #[arg(long, default_value = "1M", value_parser = parse_size)]
        cluster_size: u64,
        /// Io unit size: 4096, or 512 (2048, 1024) for a store as SPDK makes on a device with
        /// 512-byte blocks.
        #[arg(long, default_value = "4096", value_parser = parse_size)]
        io_unit: u64,
        /// Number of shards (default: number of cores, fewer if the device cannot hold them).
        #[arg(long)]
        shards: Option<usize>,
        /// Reformat a device that already holds data (it is lost), with the new geometry.
        #[arg(long)]
        force: bool,
    },
    /// Store a value.
    Put {
        #[command(flatten)]
        store: StoreArgs,
        key: String,
        value: String,
    },
    /// Print a value (exit code 1 when the key is absent).
    Get {
        #[command(flatten)]
        store: StoreArgs,
        key: String,
    },
    /// Delete a key.
    Delete {
        #[command(flatten)]
        store: StoreArgs,
        key: String,
    },
    /// List keys (TSV-escaped), optionally only those with a prefix.
    Keys {
        #[command(flatten)]
        store: StoreArgs,
        #[arg(long)]
        prefix: Option<String>,
    },
    /// Bulk import `key<TAB>value` lines from a file or `-` (stdin).
    Load {
        #[command(flatten)]
        store: StoreArgs,
        input: String,
    },
    /// Export every live record as `key<TAB>value` lines.
    Dump {
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Keys, live and dead bytes per blob, fragmentation, keydir bytes per key.
    Stats {
        #[command(flatten)]
        store: StoreArgs,
        #[arg(long)]
        json: bool,
    },
    /// Merge: rewrite live records, write hints, free dead blobs.
    Merge {
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Verify a store (read-only): record CRCs, hints against data, masks against metadata.
    /// Exit code 0 = clean, 1 = problems found, 2 = could not check.
    Check { device: PathBuf },
    /// Salvage every readable record into a consistent store; reports what was lost.
    Repair {
        device: PathBuf,
        /// Write the repaired store to a new image instead of rebuilding in place.
        #[arg(long)]
        output: Option<PathBuf>,
        /// Write a JSON report: damaged ranges, keys lost, keys that may be stale, counts.
        #[arg(long)]
        report: Option<PathBuf>,
    },
    /// List the blobs of any SPDK blobstore image (read-only).
    Blobs {
        device: PathBuf,
        #[arg(long)]
        json: bool,
        /// The image file of an external snapshot: esnap ID (text, or 0x-hex bytes) = PATH.
        #[arg(long, value_name = "ID=PATH")]
        esnap: Vec<String>,
    },
    /// Show one blob of any SPDK blobstore image (read-only).
    Blob {
        device: PathBuf,
        /// Blob id, decimal or 0x-hex.
        id: String,
        #[arg(long)]
        json: bool,
        /// Print the sha256 of io units OFFSET..OFFSET+LEN.
        #[arg(long, value_name = "OFFSET:LEN")]
        read: Option<String>,
        /// The image file of an external snapshot: esnap ID (text, or 0x-hex bytes) = PATH.
        #[arg(long, value_name = "ID=PATH")]
        esnap: Vec<String>,
    },
    /// Interactive prompt (`put k v`, `get k`, `delete k`, `keys`, `help`); from a pipe it
    /// prints exactly one result line per command.
    Shell {
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Run an SPDK fixture manifest's operations on the native blobstore into a new image and
    /// print the image's sha256.
    Replay { manifest: PathBuf, out: PathBuf },
    /// Grow the blobstore to the device's size (SPDK's live grow): an image file is first
    /// extended to --size; a block device is grown to its current size.
    Grow {
        device: PathBuf,
        /// New size of an image file, e.g. 2G (default: the file's current size).
        #[arg(long, value_parser = parse_size)]
        size: Option<u64>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli.cmd) {
        Ok(code) => code,
        // A reader that went away (`keys | head`) is not an error of ours.
        Err(e) if broken_pipe(e.as_ref()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            if let Some(blobcask::Error::NotABlobstore(_)) = e.downcast_ref::<blobcask::Error>() {
                eprintln!(
                    "hint: if this device held a store whose metadata is damaged, `blobcask \
                     check` diagnoses it and `blobcask repair` recovers its records"
                );
            }
            ExitCode::from(2)
        }
    }
}

/// Whether `e` or one of its sources is an EPIPE on our output.
fn broken_pipe(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(e);
    while let Some(e) = cur {
        if e.downcast_ref::<io::Error>()
            .is_some_and(|io| io.kind() == io::ErrorKind::BrokenPipe)
        {
            return true;
        }
        if let Some(blobcask::Error::Io(io)) = e.downcast_ref::<blobcask::Error>() {
            if io.kind() == io::ErrorKind::BrokenPipe {
                return true;
            }
        }
        cur = e.source();
    }
    false
}

type CliResult = Result<ExitCode, Box<dyn std::error::Error>>;

fn open(store: &StoreArgs) -> Result<Db, blobcask::Error> {
    let mut opts = store_options(store);
    opts.sync = store.sync.into();
    report_damage(Db::open(opts)?)
}

/// Open for a command that changes nothing: the device is never written, not even at close.
fn open_read_only(store: &StoreArgs) -> Result<Db, blobcask::Error> {
    report_damage(Db::open_read_only(store_options(store))?)
}

fn store_options(store: &StoreArgs) -> Options {
    let mut opts = Options::new(DeviceSpec::Path(store.device.clone()));
    opts.create = false;
    if store.salvage {
        opts.recovery = blobcask::RecoveryMode::Salvage;
    }
    opts
}

/// Say what a salvage open skipped.
fn report_damage(db: Db) -> Result<Db, blobcask::Error> {
    for d in db.damage()? {
        eprintln!(
            "salvage: skipped {} damaged bytes at offset {} of blob {:#x} (shard {})",
            d.len, d.offset, d.blob, d.shard
        );
    }
    Ok(db)
}

fn run(cmd: Cmd) -> CliResult {
    match cmd {
        Cmd::Format {
            device,
            size,
            cluster_size,
            io_unit,
            shards,
            force,
        } => format(&device, size, cluster_size, io_unit, shards, force),
        Cmd::Put { store, key, value } => {
            let db = open(&store)?;
            db.put(key.as_bytes(), value.as_bytes())?;
            db.close()?;
            println!("OK");
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Get { store, key } => {
            let db = open_read_only(&store)?;
            let v = db.get(key.as_bytes())?;
            db.close()?;
            match v {
                Some(v) => {
                    let mut out = io::stdout().lock();
                    out.write_all(&v)?;
                    out.write_all(b"\n")?;
                    Ok(ExitCode::SUCCESS)
                }
                None => {
                    eprintln!("NOT_FOUND");
                    Ok(ExitCode::from(1))
                }
            }
        }
        Cmd::Delete { store, key } => {
            let db = open(&store)?;
            let existed = db.contains(key.as_bytes())?;
            db.delete(key.as_bytes())?;
            db.close()?;
            println!("{}", if existed { "OK" } else { "NOT_FOUND" });
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Keys { store, prefix } => {
            let db = open_read_only(&store)?;
            let mut keys = db.keys()?;
            db.close()?;
            keys.sort();
            let mut out = BufWriter::new(io::stdout().lock());
            for k in keys {
                if prefix.as_ref().is_none_or(|p| k.starts_with(p.as_bytes())) {
                    writeln!(out, "{}", tsv::escape(&k))?;
                }
            }
            out.flush()?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Load { store, input } => load(&store, &input),
        Cmd::Dump { store } => {
            let db = open_read_only(&store)?;
            let mut out = BufWriter::new(io::stdout().lock());
            let res = db.fold(Ok(()), |acc: io::Result<()>, k, v| {
                acc.and_then(|()| writeln!(out, "{}\t{}", tsv::escape(k), tsv::escape(v)))
            })?;
            db.close()?;
            res?;
            out.flush()?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Stats { store, json } => {
            let db = open_read_only(&store)?;
            let stats = db.stats()?;
            db.close()?;
            inspect::print_stats(&stats, json)?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Merge { store } => {
            let db = open(&store)?;
            let before = db.stats()?;
            let spinner = spinner("merging");
            let t = Instant::now();
            db.merge()?;
            spinner.finish_and_clear();
            let after = db.stats()?;
            db.close()?;
            println!(
                "merged in {:.2?}: {} blobs -> {} blobs, dead bytes {} -> {}",
                t.elapsed(),
                before.blobs.len(),
                after.blobs.len(),
                before.blobs.iter().map(|b| b.dead_bytes).sum::<u64>(),
                after.blobs.iter().map(|b| b.dead_bytes).sum::<u64>(),
            );
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Check { device } => inspect::check(&device),
        Cmd::Repair {
            device,
            output,
            report,
        } => inspect::repair(&device, output.as_deref(), report.as_deref()),
        Cmd::Blobs {
            device,
            json,
            esnap,
        } => inspect::blobs(&device, json, &esnap),
        Cmd::Blob {
            device,
            id,
            json,
            read,
            esnap,
        } => inspect::blob(&device, &id, json, read.as_deref(), &esnap),
        Cmd::Shell { store } => {
            let db = open(&store)?;
            let interactive = io::stdin().is_terminal();
            let res = shell::run(&db, interactive);
            db.close()?;
            res?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Replay { manifest, out } => inspect::replay(&manifest, &out),
        Cmd::Grow { device, size } => grow::grow(&device, size),
    }
}

/// Format `device`: check the geometry before touching anything, refuse a device holding data
/// unless `force`, and never replace anything but a regular file. An image is built beside the
/// target and renamed over it only once complete, so a failed format leaves the old file as it
/// was; a block device is formatted in place.
fn format(
    device: &Path,
    size: Option<u64>,
    cluster_size: u64,
    io_unit: u64,
    shards: Option<usize>,
    force: bool,
) -> CliResult {
    let cluster_size = u32::try_from(cluster_size)
        .map_err(|_| blobcask::Error::invalid("cluster size does not fit 32 bits"))?;
    let io_unit = u32::try_from(io_unit)
        .map_err(|_| blobcask::Error::invalid("io unit does not fit 32 bits"))?;
    let target = classify(device)?;
    let dev_size = match &target {
        Target::Block(p) => device_bytes(p)?,
        Target::File(p) => match size {
            Some(s) => s,
            // Reformatting keeps the image's size.
            None => std::fs::metadata(p)?.len().max(1),
        },
        Target::New => size.unwrap_or(1 << 30),
    };
    let mut opts = Options::new(DeviceSpec::Path(device.to_path_buf()));
    opts.create = true;
    opts.device_size = dev_size;
    opts.cluster_size = cluster_size;
    opts.io_unit_size = io_unit;
    if let Some(s) = shards {
        opts.shards = s;
    }
    // Before the geometry checks: they divide by the cluster size.
    opts.validate()?;
    if shards.is_none() {
        // The default shrinks to what the device holds (the error then names 1 shard).
        while opts.shards > 1 && opts.check_new_store(dev_size).is_err() {
            opts.shards -= 1;
        }
    }
    opts.check_new_store(dev_size)?;
    let existing = match &target {
        Target::Block(p) | Target::File(p) => Some(p.clone()),
        Target::New => None,
    };
    if let Some(p) = &existing {
        if !force && !all_zero(p)? {
            return Err(blobcask::Error::invalid(format!(
                "{} already holds data; `format --force` reformats it (its data is lost)",
                device.display()
            ))
            .into());
        }
    }
    let made = |opts: Options| -> Result<blobcask::Stats, blobcask::Error> {
        let db = Db::open(opts)?;
        let stats = db.stats()?;
        db.close()?;
        Ok(stats)
    };
    let stats = match &target {
        Target::Block(p) => {
            if force {
                // Zeroed at its start, the device is formatted afresh.
                let mut f = std::fs::OpenOptions::new().write(true).open(p)?;
                f.write_all(&[0u8; 4096])?;
                f.sync_all()?;
            }
            made(opts)?
        }
        Target::File(_) | Target::New => {
            let dest = existing.unwrap_or_else(|| device.to_path_buf());
            let tmp = beside(&dest);
            opts.device = DeviceSpec::Path(tmp.clone());
            let built = made(opts).and_then(|s| {
                std::fs::File::open(&tmp)?.sync_all()?;
                std::fs::rename(&tmp, &dest)?;
                sync_dir(&dest)?;
                Ok(s)
            });
            match built {
                Ok(s) => s,
                Err(e) => {
                    let _ = std::fs::remove_file(&tmp);
                    return Err(e.into());
                }
            }
        }
    };
    println!(
        "formatted {}: {} shards, io path {}",
        device.display(),
        stats.shards.len(),
        stats.io_path
    );
    Ok(ExitCode::SUCCESS)
}

/// What `format` would write to.
enum Target {
    /// Nothing exists at the path.
    New,
    /// An existing regular file (a symlink resolved to it).
    File(PathBuf),
    /// A block device (a symlink resolved to it).
    Block(PathBuf),
}

/// Refuse anything `format` must never replace: directories, character devices, FIFOs,
/// sockets, dangling symlinks.
fn classify(device: &Path) -> Result<Target, blobcask::Error> {
    use std::os::unix::fs::FileTypeExt;
    match std::fs::symlink_metadata(device) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Target::New),
        Err(e) => return Err(e.into()),
        Ok(_) => {}
    }
    let meta = std::fs::metadata(device).map_err(|e| {
        blobcask::Error::invalid(format!(
            "{}: cannot follow it ({e}); refusing to format it",
            device.display()
        ))
    })?;
    let ft = meta.file_type();
    let real = || std::fs::canonicalize(device);
    if ft.is_file() {
        Ok(Target::File(real()?))
    } else if ft.is_block_device() {
        Ok(Target::Block(real()?))
    } else {
        let kind = if ft.is_dir() {
            "a directory"
        } else if ft.is_char_device() {
            "a character device"
        } else if ft.is_fifo() {
            "a FIFO"
        } else if ft.is_socket() {
            "a socket"
        } else {
            "not a regular file"
        };
        Err(blobcask::Error::invalid(format!(
            "{} is {kind}; `format` writes only to an image file or a block device",
            device.display()
        )))
    }
}

/// A fresh path in `dest`'s directory to build its new image in.
fn beside(dest: &Path) -> PathBuf {
    let name = dest
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    dest.with_file_name(format!(".{name}.format-{}", std::process::id()))
}

/// Make a rename in `p`'s directory durable.
fn sync_dir(p: &Path) -> Result<(), io::Error> {
    match p.parent() {
        Some(d) if !d.as_os_str().is_empty() => std::fs::File::open(d)?.sync_all(),
        _ => std::fs::File::open(".")?.sync_all(),
    }
}

fn device_bytes(p: &Path) -> Result<u64, io::Error> {
    use std::io::Seek;
    std::fs::File::open(p)?.seek(io::SeekFrom::End(0))
}

/// Whether an existing device is empty or entirely zero (nothing to lose).
fn all_zero(p: &Path) -> Result<bool, io::Error> {
    use std::io::Read;
    let mut f = std::fs::File::open(p)?;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            return Ok(true);
        }
        if buf[..n].iter().any(|&b| b != 0) {
            return Ok(false);
        }
    }
}

fn load(store: &StoreArgs, input: &str) -> CliResult {
    let reader: Box<dyn BufRead> = if input == "-" {
        Box::new(io::stdin().lock())
    } else {
        Box::new(io::BufReader::new(std::fs::File::open(input)?))
    };
    let total = if input == "-" {
        None
    } else {
        std::fs::metadata(input).ok().map(|m| m.len())
    };
    let bar = match total {
        Some(n) => {
            let b = ProgressBar::new(n);
            b.set_style(
                ProgressStyle::with_template("{bar:40} {bytes}/{total_bytes} {per_sec} {eta}")
                    .unwrap_or_else(|_| ProgressStyle::default_bar()),
            );
            b
        }
        None => spinner("loading"),
    };
    let db = open(store)?;
    let mut batch = Batched::new(&db);
    let mut count = 0u64;
    for (n, line) in reader.lines().enumerate() {
        let line = line?;
        bar.inc(line.len() as u64 + 1);
        if line.is_empty() {
            continue;
        }
        let (k, v) = tsv::split_line(&line)
            .map_err(|e| blobcask::Error::invalid(format!("{input}:{}: {e}", n + 1)))?;
        batch.put(&k, &v)?;
        count += 1;
    }
    batch.finish()?;
    db.sync()?;
    db.close()?;
    bar.finish_and_clear();
    println!("loaded {count} records");
    Ok(ExitCode::SUCCESS)
}

/// Bulk writes in batches of 256 records, one group commit each.
pub struct Batched<'a> {
    db: &'a Db,
    batch: blobcask::WriteBatch,
}

impl<'a> Batched<'a> {
    pub fn new(db: &'a Db) -> Self {
        Batched {
            db,
            batch: blobcask::WriteBatch::new(),
        }
    }

    pub fn put(&mut self, key: &[u8], value: &[u8]) -> Result<(), blobcask::Error> {
        self.batch.put(key, value);
        if self.batch.len() >= 256 {
            self.db.write_batch(std::mem::take(&mut self.batch))?;
        }
        Ok(())
    }

    pub fn finish(self) -> Result<(), blobcask::Error> {
        if self.batch.is_empty() {
            return Ok(());
        }
        self.db.write_batch(self.batch)
    }
}

fn spinner(msg: &'static str) -> ProgressBar {
    let s = ProgressBar::new_spinner();
    s.set_message(msg);
    s.enable_steady_tick(Duration::from_millis(120));
    s
}

/// Parse `4096`, `64K`, `1M`, `2G` (binary units).
fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (num, mult) = match s.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let m = match c.to_ascii_uppercase() {
                'K' => 1u64 << 10,
                'M' => 1 << 20,
                'G' => 1 << 30,
                'T' => 1 << 40,
                _ => return Err(format!("unknown size suffix in {s:?}")),
            };
            (&s[..i], m)
        }
        _ => (s, 1),
    };
    let n: u64 = num.parse().map_err(|_| format!("not a size: {s:?}"))?;
    n.checked_mul(mult)
        .ok_or_else(|| format!("size {s:?} overflows"))
}

#[cfg(test)]
mod tests {
    use super::parse_size;

    #[test]
    fn sizes_parse_with_binary_suffixes() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("64K"), Ok(65536));
        assert_eq!(parse_size("1m"), Ok(1 << 20));
        assert_eq!(parse_size("2G"), Ok(2 << 30));
        assert!(parse_size("1X").is_err());
        assert!(parse_size("abc").is_err());
    }
}
