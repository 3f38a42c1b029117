//! `blobcask`: use, inspect, check and repair a store on an image file or a block device.
//!
//! Behaves like RocksDB's `ldb`: one key/value encoding everywhere (`tsv.rs`), exit status 0
//! found / 1 not found / 2 error for every command, read-only commands under a shared lock, and
//! a closed output pipe ends a command quietly. Nothing here prints with `println!` (which
//! panics on a closed pipe): every write goes through an `io::Write` whose error is returned.

use std::io::{self, BufRead, IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use blobcask::{Db, DeviceSpec, Options, SyncPolicy};
use clap::{Parser, Subcommand, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};

mod checkpoint;
mod chunk;
mod grow;
mod inspect;
mod records;
mod shell;
mod tsv;

use tsv::Encoding;

/// The key/value encoding and the limits (the limits are the engine's defaults, checked by a
/// test against `Options::default()`).
macro_rules! encoding_help {
    () => {
        "Keys and values, in arguments and in output alike: printable ASCII as is; tab, newline, \
         carriage return and backslash as \\t \\n \\r \\\\; any other byte as \\xHH, so what \
         `keys`, `scan` and `dump` print can be passed back to `get`, `put` and `delete`. With \
         --hex: plain hex instead. Keys hold 1 to 1024 bytes, values at most 16 MiB (16777216 \
         bytes)."
    };
}

macro_rules! exit_help {
    ($what:literal) => {
        concat!(
            "Exit status: ",
            $what,
            ". A closed output pipe (`| head`) ends the command quietly with status 0."
        )
    };
}

/// Exit status of commands that find nothing in particular.
const EXIT_OK: &str = exit_help!("0 ok, 2 error");
const EXIT_OK_KV: &str = concat!(encoding_help!(), "\n\n", exit_help!("0 ok, 2 error"));

/// A Bitcask-style key-value store on an SPDK-format blobstore.
#[derive(Parser)]
#[command(
    name = "blobcask",
    version,
    about,
    long_about = None,
    after_help = concat!(
        encoding_help!(),
        "\n\n",
        exit_help!(
            "0 success (key found), 1 not found (`get`/`delete` of a missing key, `blob` of a \
             missing id, `check` that found problems), 2 error (bad arguments, a damaged, foreign \
             or locked store, I/O)"
        ),
        "\n\nRead-only commands (get, keys, scan, dump, stats, check, blobs, blob) take a shared \
         lock: any number of them run at once, but not beside a writer (put, delete, load, \
         merge, shell, repair, format), which holds the lock alone. --wait-lock waits for it."
    )
)]
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

/// Waiting for the store's lock.
#[derive(clap::Args, Clone, Copy)]
struct LockArgs {
    /// Wait for another process's lock on the store instead of failing after half a second:
    /// forever, or with `--wait-lock=SECS` at most SECS seconds.
    #[arg(long, value_name = "SECS", num_args = 0..=1, require_equals = true,
          default_missing_value = "forever", value_parser = parse_wait)]
    wait_lock: Option<Duration>,
}

/// A store opened to read: a shared lock, nothing written to the device.
#[derive(clap::Args, Clone)]
struct ReadArgs {
    /// Image file or block device holding the store.
    device: PathBuf,
    /// Read even if a data log is damaged: skip the damaged ranges and keep every valid record
    /// after them (older values may come back; the ranges skipped are printed on stderr).
    #[arg(long)]
    salvage: bool,
    #[command(flatten)]
    lock: LockArgs,
}

/// A store opened to write: the lock alone.
#[derive(clap::Args, Clone)]
struct WriteArgs {
    /// Image file or block device holding the store.
    device: PathBuf,
    /// Durability of writes.
    #[arg(long, value_enum, default_value = "always")]
    sync: SyncArg,
    /// Open even if a data log is damaged: skip the damaged ranges and keep every valid record
    /// after them (older values may come back; the ranges skipped are printed on stderr).
    #[arg(long)]
    salvage: bool,
    #[command(flatten)]
    lock: LockArgs,
}

/// The key/value encoding.
#[derive(clap::Args, Clone, Copy)]
struct CodecArgs {
    /// Keys and values in hex (arguments, input lines and output) instead of the escaped form.
    #[arg(long)]
    hex: bool,
}

/// Which records `scan` and `keys` visit.
#[derive(clap::Args, Clone)]
struct SelectArgs {
    /// Only keys that start with PREFIX.
    #[arg(long)]
    prefix: Option<String>,
    /// Only keys at or after KEY.
    #[arg(long, value_name = "KEY")]
    from: Option<String>,
    /// Only keys before KEY (exclusive).
    #[arg(long, value_name = "KEY")]
    to: Option<String>,
    /// At most N records.
    #[arg(long, value_name = "N")]
    limit: Option<u64>,
}

impl SelectArgs {
    fn selection(&self, enc: Encoding) -> Result<records::Selection, Failure> {
        let field = |what: &str, s: &Option<String>| {
            s.as_deref()
                .map(|s| enc.decode(s).map_err(|e| Failure(format!("--{what}: {e}"))))
                .transpose()
        };
        Ok(records::Selection {
            prefix: field("prefix", &self.prefix)?,
            from: field("from", &self.from)?,
            to: field("to", &self.to)?,
            limit: self.limit,
        })
    }
}

#[derive(Subcommand)]
enum Cmd {
    /// Create a store: format an image file (created with --size) or a block device.
    #[command(after_help = EXIT_OK)]
    Format {
        /// Image file (created if missing) or block device to format.
        device: PathBuf,
        /// Size of a new image file, e.g. 1G, 512M (default: an existing image's size, else 1G):
        /// the most the store holds. The file is sparse: it takes space as the store writes.
        #[arg(long, value_parser = parse_size)]
        size: Option<u64>,
        /// Allocate the whole image file now (fallocate) instead of a sparse file, so the
        /// store never finds the file system full.
        #[arg(long)]
        preallocate: bool,
        /// Blobstore cluster size, e.g. 1M, 64K (a multiple of 4K).
        #[arg(long, default_value = "1M", value_parser = parse_cluster_size)]
        cluster_size: u64,
        /// Io unit size: 4096, or 512 (2048, 1024) for a store as SPDK makes on a device with
        /// 512-byte blocks.
        #[arg(long, default_value = "4096", value_parser = parse_size)]
        io_unit: u64,
        /// Number of shards, 1 to 1024 (default: number of cores, fewer if the device cannot
        /// hold them).
        #[arg(long, value_parser = parse_shards)]
        shards: Option<usize>,
        /// Reformat a device that already holds data (it is lost), with the new geometry.
        #[arg(long)]
        force: bool,
    },
    /// Store a value under a key (the value from the command line, stdin or a file).
    #[command(after_help = EXIT_OK_KV)]
    Put {
        #[command(flatten)]
        store: WriteArgs,
        #[command(flatten)]
        codec: CodecArgs,
        /// The key (escaped, or hex with --hex).
        key: String,
        /// The value (escaped, or hex with --hex); `-` reads the raw bytes from stdin (a value
        /// that is a lone dash is written \x2d).
        #[arg(required_unless_present_any = ["value_file", "stdin"])]
        value: Option<String>,
        /// Read the value's raw bytes from PATH.
        #[arg(long, value_name = "PATH", conflicts_with_all = ["value", "stdin"])]
        value_file: Option<PathBuf>,
        /// Read the value's raw bytes from stdin (as VALUE `-` does).
        #[arg(long, conflicts_with = "value")]
        stdin: bool,
    },
    /// Print the value of a key (escaped, or hex with --hex).
    #[command(after_help = concat!(encoding_help!(), "\n\n",
        exit_help!("0 found (the value on stdout), 1 not found (NOT_FOUND on stderr), 2 error")))]
    Get {
        #[command(flatten)]
        store: ReadArgs,
        #[command(flatten)]
        codec: CodecArgs,
        /// The key (escaped, or hex with --hex).
        key: String,
        /// Write the value's bytes unchanged, with no newline (for binary values).
        #[arg(long, conflicts_with = "hex")]
        raw: bool,
    },
    /// Delete a key.
    #[command(after_help = concat!(encoding_help!(), "\n\n",
        exit_help!("0 deleted (OK on stdout), 1 not found (NOT_FOUND on stderr, nothing written), 2 error")))]
    Delete {
        #[command(flatten)]
        store: WriteArgs,
        #[command(flatten)]
        codec: CodecArgs,
        /// The key (escaped, or hex with --hex).
        key: String,
    },
    /// List keys in order, one per line (`scan --keys-only`).
    #[command(after_help = EXIT_OK_KV)]
    Keys {
        #[command(flatten)]
        store: ReadArgs,
        #[command(flatten)]
        codec: CodecArgs,
        #[command(flatten)]
        select: SelectArgs,
    },
    /// Print records in key order as `key<TAB>value` lines, selected by prefix and range.
    #[command(after_help = EXIT_OK_KV)]
    Scan {
        #[command(flatten)]
        store: ReadArgs,
        #[command(flatten)]
        codec: CodecArgs,
        #[command(flatten)]
        select: SelectArgs,
        /// Print only the keys.
        #[arg(long)]
        keys_only: bool,
    },
    /// Import `key<TAB>value` lines (the form `dump` prints) from a file or `-` (stdin).
    #[command(after_help = concat!(encoding_help!(), "\n\n",
        "Records are written in batches of 256. If a line is bad or a write fails, the error names \
         the file and line, how many records were committed (every line before the failing batch) \
         and the line to resume from; with --atomic nothing of the file is written.\n\n",
        exit_help!("0 ok, 2 error")))]
    Load {
        #[command(flatten)]
        store: WriteArgs,
        #[command(flatten)]
        codec: CodecArgs,
        /// File of `key<TAB>value` lines, or `-` for stdin.
        input: String,
        /// All or nothing: check every line first, then write the whole file as one batch.
        #[arg(long)]
        atomic: bool,
    },
    /// Print every record as `key<TAB>value` lines (what `load` reads), in the store's log
    /// order: the data is read sequentially, at the device's speed (`scan` sorts by key).
    #[command(after_help = EXIT_OK_KV)]
    Dump {
        #[command(flatten)]
        store: ReadArgs,
        #[command(flatten)]
        codec: CodecArgs,
    },
    /// Keys, bytes, space, lifetime counters (merges, bytes written) and the data blobs.
    #[command(after_help = EXIT_OK)]
    Stats {
        #[command(flatten)]
        store: ReadArgs,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Merge: rewrite live records, write hints, free dead blobs.
    #[command(after_help = EXIT_OK)]
    Merge {
        #[command(flatten)]
        store: WriteArgs,
    },
    /// Verify a store (read-only): record CRCs, hints against data, masks against metadata.
    #[command(after_help = exit_help!("0 clean, 1 problems found, 2 could not check"))]
    Check {
        /// Image file or block device holding the store.
        device: PathBuf,
        #[command(flatten)]
        lock: LockArgs,
    },
    /// Salvage every readable record into a consistent store; reports what was lost.
    #[command(after_help = EXIT_OK)]
    Repair {
        /// Image file or block device holding the damaged store.
        device: PathBuf,
        /// Write the repaired store to a new image instead of rebuilding in place.
        #[arg(long)]
        output: Option<PathBuf>,
        /// Write a JSON report: damaged ranges, keys lost, keys that may be stale, counts.
        #[arg(long)]
        report: Option<PathBuf>,
    },
    /// List the blobs of any SPDK blobstore image (read-only).
    #[command(after_help = EXIT_OK)]
    Blobs {
        /// Image file or block device holding an SPDK blobstore.
        device: PathBuf,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
        /// The image file of an external snapshot: esnap ID (text, or 0x-hex bytes) = PATH.
        #[arg(long, value_name = "ID=PATH")]
        esnap: Vec<String>,
        #[command(flatten)]
        lock: LockArgs,
    },
    /// Show one blob of any SPDK blobstore image (read-only).
    #[command(after_help = exit_help!("0 shown, 1 no blob with that id, 2 error"))]
    Blob {
        /// Image file or block device holding an SPDK blobstore.
        device: PathBuf,
        /// Blob id, 0x-hex (as `blobs` prints it) or decimal.
        id: String,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
        /// Print the sha256 of io units OFFSET..OFFSET+LEN.
        #[arg(long, value_name = "OFFSET:LEN")]
        read: Option<String>,
        /// The image file of an external snapshot: esnap ID (text, or 0x-hex bytes) = PATH.
        #[arg(long, value_name = "ID=PATH")]
        esnap: Vec<String>,
        #[command(flatten)]
        lock: LockArgs,
    },
    /// Interactive prompt (`put k v`, `get k`, `delete k`, `keys`, `help`); from a pipe it
    /// prints exactly one result line per command.
    #[command(after_help = EXIT_OK_KV)]
    Shell {
        #[command(flatten)]
        store: WriteArgs,
        /// Keep a history of commands in ~/.blobcask_history (values left out: `put KEY`).
        #[arg(long)]
        history: bool,
    },
    /// Run an SPDK fixture manifest's operations on the native blobstore into a new image and
    /// print the image's sha256.
    #[command(after_help = EXIT_OK)]
    Replay {
        /// Fixture manifest (JSON).
        manifest: PathBuf,
        /// New image file to write.
        out: PathBuf,
    },
    /// Grow the blobstore to the device's size (SPDK's live grow): an image file is first
    /// extended to --size; a block device is grown to its current size.
    #[command(after_help = EXIT_OK)]
    Grow {
        /// Image file or block device holding a blobstore.
        device: PathBuf,
        /// New size of an image file, e.g. 2G (default: the file's current size).
        #[arg(long, value_parser = parse_size)]
        size: Option<u64>,
    },
    /// Checkpoints: create, list, delete, dump (the store must not be open elsewhere).
    #[command(after_help = EXIT_OK)]
    Checkpoint {
        #[command(subcommand)]
        cmd: checkpoint::CkptCmd,
    },
    /// Chunks (byte arrays written and read at any offset): create, write, read, rm, ls, stat.
    #[command(after_help = EXIT_OK)]
    Chunk {
        #[command(subcommand)]
        cmd: chunk::ChunkCmd,
    },
}

/// A message for the user (the CLI's own errors).
#[derive(Debug)]
pub struct Failure(pub String);

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Failure {}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli.cmd) {
        Ok(code) => code,
        // A reader that went away (`keys | head`) is not an error of ours.
        Err(e) if broken_pipe(e.as_ref()) => ExitCode::SUCCESS,
        Err(e) => {
            let mut err = io::stderr().lock();
            let _ = writeln!(err, "error: {e}");
            match e.downcast_ref::<blobcask::Error>() {
                Some(blobcask::Error::NotABlobstore(_)) => {
                    let _ = writeln!(
                        err,
                        "hint: `blobcask format` makes a new store; if this device held a store \
                         whose metadata is damaged, `blobcask check` diagnoses it and \
                         `blobcask repair` recovers its records"
                    );
                }
                Some(blobcask::Error::Locked(_)) => {
                    let _ = writeln!(
                        err,
                        "hint: --wait-lock waits until the other process lets go of the store"
                    );
                }
                _ => {}
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

/// Open to write: the lock alone.
fn open(store: &WriteArgs) -> Result<Db, Box<dyn std::error::Error>> {
    let mut opts = store_options(&store.device, store.salvage, store.lock)?;
    opts.sync = store.sync.into();
    Ok(report_damage(Db::open(opts).map_err(in_cli_terms)?)?)
}

/// Open for a command that changes nothing: a shared lock, and the device is never written,
/// not even at close.
fn open_read_only(store: &ReadArgs) -> Result<Db, Box<dyn std::error::Error>> {
    let opts = store_options(&store.device, store.salvage, store.lock)?;
    Ok(report_damage(
        Db::open_read_only(opts).map_err(in_cli_terms)?,
    )?)
}

/// An open error told with the CLI's commands rather than the library's options (the hint
/// printed by `main` names `blobcask format`).
fn in_cli_terms(e: blobcask::Error) -> blobcask::Error {
    match e {
        blobcask::Error::NotABlobstore(m) if m.contains("Options::create") => {
            blobcask::Error::NotABlobstore("the device holds no blobstore".into())
        }
        e => e,
    }
}

fn store_options(device: &Path, salvage: bool, lock: LockArgs) -> Result<Options, Failure> {
    if !device.exists() {
        return Err(Failure(format!(
            "{} does not exist; `blobcask format {}` creates a store",
            device.display(),
            device.display()
        )));
    }
    let mut opts = Options::new(DeviceSpec::Path(device.to_path_buf()));
    opts.create = false;
    opts.lock_wait = lock.wait_lock;
    if salvage {
        opts.recovery = blobcask::RecoveryMode::Salvage;
    }
    Ok(opts)
}

/// Say what a salvage open skipped.
fn report_damage(db: Db) -> Result<Db, blobcask::Error> {
    let mut err = io::stderr().lock();
    for d in db.damage()? {
        let _ = writeln!(
            err,
            "salvage: skipped {} damaged bytes at offset {} of blob {:#x} (shard {})",
            d.len, d.offset, d.blob, d.shard
        );
    }
    Ok(db)
}

/// The limits of keys and values (the engine's defaults; the CLI opens with them).
struct Limits {
    key: usize,
    value: usize,
}

impl Limits {
    fn new() -> Self {
        let o = Options::default();
        Limits {
            key: o.max_key_size,
            value: o.max_value_size,
        }
    }

    fn check(&self, key: &[u8], value: Option<&[u8]>) -> Result<(), blobcask::Error> {
        if key.is_empty() {
            return Err(blobcask::Error::invalid("empty key"));
        }
        if key.len() > self.key {
            return Err(blobcask::Error::KeyTooLarge {
                len: key.len(),
                max: self.key,
            });
        }
        match value {
            Some(v) if v.len() > self.value => Err(blobcask::Error::ValueTooLarge {
                len: v.len(),
                max: self.value,
            }),
            _ => Ok(()),
        }
    }
}

fn decode_arg(enc: Encoding, what: &str, s: &str) -> Result<Vec<u8>, Failure> {
    enc.decode(s).map_err(|e| Failure(format!("{what}: {e}")))
}

/// Read at most `max` + 1 bytes (enough to refuse a value over the limit without reading it
/// all).
fn read_value(r: impl Read, max: usize) -> io::Result<Vec<u8>> {
    let mut v = Vec::new();
    r.take(max as u64 + 1).read_to_end(&mut v)?;
    Ok(v)
}

/// NOT_FOUND on stderr, exit status 1: the same for every command that looks a key up.
fn not_found() -> CliResult {
    let _ = writeln!(io::stderr().lock(), "NOT_FOUND");
    Ok(ExitCode::from(1))
}

fn run(cmd: Cmd) -> CliResult {
    match cmd {
        Cmd::Format {
            device,
            size,
            preallocate,
            cluster_size,
            io_unit,
            shards,
            force,
        } => format(
            &device,
            Geometry {
                size,
                preallocate,
                cluster_size,
                io_unit,
                shards,
            },
            force,
        ),
        Cmd::Put {
            store,
            codec,
            key,
            value,
            value_file,
            stdin,
        } => {
            let enc = Encoding::new(codec.hex);
            let limits = Limits::new();
            let key = decode_arg(enc, "key", &key)?;
            let value = if let Some(p) = value_file {
                let f = std::fs::File::open(&p)
                    .map_err(|e| Failure(format!("--value-file {}: {e}", p.display())))?;
                read_value(f, limits.value)?
            } else if stdin || value.as_deref() == Some("-") {
                read_value(io::stdin().lock(), limits.value)?
            } else {
                decode_arg(enc, "value", value.as_deref().unwrap_or_default())?
            };
            limits.check(&key, Some(&value))?;
            let db = open(&store)?;
            db.put(&key, &value)?;
            db.close()?;
            writeln!(io::stdout().lock(), "OK")?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Get {
            store,
            codec,
            key,
            raw,
        } => {
            let enc = Encoding::new(codec.hex);
            let key = decode_arg(enc, "key", &key)?;
            let db = open_read_only(&store)?;
            let v = db.get(&key)?;
            db.close()?;
            let Some(v) = v else { return not_found() };
            let mut out = io::stdout().lock();
            if raw {
                out.write_all(&v)?;
            } else {
                writeln!(out, "{}", enc.encode(&v))?;
            }
            out.flush()?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Delete { store, codec, key } => {
            let enc = Encoding::new(codec.hex);
            let key = decode_arg(enc, "key", &key)?;
            Limits::new().check(&key, None)?;
            let db = open(&store)?;
            let existed = db.contains(&key)?;
            if existed {
                db.delete(&key)?;
            }
            db.close()?;
            if !existed {
                return not_found();
            }
            writeln!(io::stdout().lock(), "OK")?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Keys {
            store,
            codec,
            select,
        } => scan(&store, codec, &select, true),
        Cmd::Scan {
            store,
            codec,
            select,
            keys_only,
        } => scan(&store, codec, &select, keys_only),
        Cmd::Load {
            store,
            codec,
            input,
            atomic,
        } => load(&store, Encoding::new(codec.hex), &input, atomic),
        Cmd::Dump { store, codec } => dump(&store, codec),
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
            let merged = db.merge();
            spinner.finish_and_clear();
            merged?;
            let after = db.stats()?;
            db.close()?;
            writeln!(
                io::stdout().lock(),
                "merged in {:.2?}: {} blobs -> {} blobs, dead bytes {} -> {}",
                t.elapsed(),
                before.blobs.len(),
                after.blobs.len(),
                before.blobs.iter().map(|b| b.dead_bytes).sum::<u64>(),
                after.blobs.iter().map(|b| b.dead_bytes).sum::<u64>(),
            )?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Check { device, lock } => inspect::check(&device, lock.wait_lock),
        Cmd::Repair {
            device,
            output,
            report,
        } => inspect::repair(&device, output.as_deref(), report.as_deref()),
        Cmd::Blobs {
            device,
            json,
            esnap,
            lock,
        } => inspect::blobs(&device, json, &esnap, lock.wait_lock),
        Cmd::Blob {
            device,
            id,
            json,
            read,
            esnap,
            lock,
        } => inspect::blob(&device, &id, json, read.as_deref(), &esnap, lock.wait_lock),
        Cmd::Shell { store, history } => {
            let db = open(&store)?;
            let interactive = io::stdin().is_terminal();
            let res = shell::run(&db, interactive, history);
            db.close()?;
            res?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Replay { manifest, out } => inspect::replay(&manifest, &out),
        Cmd::Grow { device, size } => grow::grow(&device, size),
        Cmd::Checkpoint { cmd } => checkpoint::run(cmd),
        Cmd::Chunk { cmd } => chunk::run(cmd),
    }
}

/// `scan`, `keys` and `dump`: records in key order, one line each.
fn scan(store: &ReadArgs, codec: CodecArgs, select: &SelectArgs, keys_only: bool) -> CliResult {
    let enc = Encoding::new(codec.hex);
    let sel = select.selection(enc)?;
    let db = open_read_only(store)?;
    let mut out = io::BufWriter::with_capacity(1 << 16, io::stdout().lock());
    let res = records::scan(&db, &sel, keys_only, |k, v| {
        let r = match v {
            None => writeln!(out, "{}", enc.encode(k)),
            Some(v) => writeln!(out, "{}\t{}", enc.encode(k), enc.encode(v)),
        };
        r.map_err(Box::<dyn std::error::Error>::from)
    });
    let res = res.and_then(|_| Ok(out.flush()?));
    let closed = db.close();
    res?;
    closed?;
    Ok(ExitCode::SUCCESS)
}

/// `dump`: every record, streamed in log order.
fn dump(store: &ReadArgs, codec: CodecArgs) -> CliResult {
    let enc = Encoding::new(codec.hex);
    let db = open_read_only(store)?;
    let mut out = io::BufWriter::with_capacity(1 << 16, io::stdout().lock());
    let res = records::dump(&db, |k, v| {
        writeln!(out, "{}\t{}", enc.encode(k), enc.encode(v))
            .map_err(Box::<dyn std::error::Error>::from)
    });
    let res = res.and_then(|_| Ok(out.flush()?));
    let closed = db.close();
    res?;
    closed?;
    Ok(ExitCode::SUCCESS)
}

/// Format `device`: check the geometry before touching anything, refuse a device holding data
/// unless `force`, and never replace anything but a regular file. An image is built beside the
/// target and renamed over it only once complete, so a failed format leaves the old file as it
/// was; a block device is formatted in place.
/// What `format` makes.
struct Geometry {
    size: Option<u64>,
    preallocate: bool,
    cluster_size: u64,
    io_unit: u64,
    shards: Option<usize>,
}

fn format(device: &Path, geometry: Geometry, force: bool) -> CliResult {
    let Geometry {
        size,
        preallocate,
        cluster_size,
        io_unit,
        shards,
    } = geometry;
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
    opts.preallocate = preallocate;
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
    writeln!(
        io::stdout().lock(),
        "formatted {}: {} shards, io path {}",
        device.display(),
        stats.shards.len(),
        stats.io_path
    )?;
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

/// Where a failed `load` stopped; the message tells how to resume.
#[derive(Debug)]
struct LoadError {
    input: String,
    /// The line the error is about (1-based).
    line: u64,
    /// Records written before the failure, and the line the next run should start at.
    committed: u64,
    resume_at: u64,
    atomic: bool,
    source: Box<dyn std::error::Error>,
}

impl std::fmt::Display for LoadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}: {}; ", self.input, self.line, self.source)?;
        if self.atomic {
            write!(f, "nothing was written (--atomic)")
        } else if self.committed == 0 {
            write!(f, "nothing was written")
        } else {
            write!(
                f,
                "{} records were committed (every record before line {}); resume from line {} \
                 (`tail -n +{} FILE | blobcask load DEVICE -`)",
                self.committed, self.resume_at, self.resume_at, self.resume_at
            )
        }
    }
}

impl std::error::Error for LoadError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(self.source.as_ref())
    }
}

/// Records per batch of a non-atomic load (one group commit each).
const LOAD_BATCH: usize = 256;

/// `blobcask load`: `key<TAB>value` lines in batches of [`LOAD_BATCH`]; or, `atomic`, every
/// line checked first and the whole file written as one batch.
fn load(store: &WriteArgs, enc: Encoding, input: &str, atomic: bool) -> CliResult {
    let name = if input == "-" { "<stdin>" } else { input };
    let mut reader: Box<dyn BufRead> = if input == "-" {
        Box::new(io::stdin().lock())
    } else {
        let f = std::fs::File::open(input).map_err(|e| Failure(format!("{input}: {e}")))?;
        Box::new(io::BufReader::with_capacity(1 << 20, f))
    };
    let total = (input != "-")
        .then(|| std::fs::metadata(input).ok().map(|m| m.len()))
        .flatten();
    let limits = Limits::new();
    let db = open(store)?;
    let mut bar = Progress::new(total);
    let mut st = LoadState {
        input: name.to_string(),
        atomic,
        committed: 0,
        resume_at: 1,
        batch: blobcask::WriteBatch::new(),
        batch_first: 1,
    };
    let mut line_no = 0u64;
    let mut buf = Vec::new();
    let res = (|| -> Result<(), LoadError> {
        loop {
            buf.clear();
            let n = reader
                .read_until(b'\n', &mut buf)
                .map_err(|e| st.fail(&db, line_no + 1, e.into()))?;
            if n == 0 {
                break;
            }
            line_no += 1;
            bar.advance(n as u64);
            let line = buf.strip_suffix(b"\n").unwrap_or(&buf);
            if line.is_empty() || line == b"\r" {
                continue;
            }
            let (k, v) = std::str::from_utf8(line)
                .map_err(|_| {
                    "the line is not UTF-8 (write other bytes as \\xHH, or use --hex)".to_string()
                })
                .and_then(|l| enc.split_line(l))
                .map_err(|e| st.fail(&db, line_no, Failure(e).into()))?;
            limits
                .check(&k, Some(&v))
                .map_err(|e| st.fail(&db, line_no, e.into()))?;
            if st.batch.is_empty() {
                st.batch_first = line_no;
            }
            st.batch.put(&k, &v);
            if !atomic && st.batch.len() >= LOAD_BATCH {
                st.commit(&db, line_no)?;
            }
            bar.record();
        }
        st.commit(&db, line_no)?;
        db.sync().map_err(|e| LoadError {
            input: st.input.clone(),
            line: line_no,
            committed: 0,
            resume_at: 1,
            atomic,
            source: e.into(),
        })
    })();
    bar.finish();
    let closed = db.close();
    res?;
    closed?;
    writeln!(io::stdout().lock(), "loaded {} records", st.committed)?;
    Ok(ExitCode::SUCCESS)
}

struct LoadState {
    input: String,
    atomic: bool,
    /// Records written so far, and the first line not yet written.
    committed: u64,
    resume_at: u64,
    batch: blobcask::WriteBatch,
    /// Line of the batch's first record.
    batch_first: u64,
}

impl LoadState {
    /// Write the pending batch, which ends at line `last`.
    fn commit(&mut self, db: &Db, last: u64) -> Result<(), LoadError> {
        if self.batch.is_empty() {
            self.resume_at = last + 1;
            return Ok(());
        }
        let n = self.batch.len() as u64;
        let first = self.batch_first;
        match db.write_batch(std::mem::take(&mut self.batch)) {
            Ok(()) => {
                self.committed += n;
                self.resume_at = last + 1;
                Ok(())
            }
            Err(e) => Err(self.error(first, e.into())),
        }
    }

    /// A failure at `line`: what was read before it is committed first (unless atomic), so
    /// the message can say "every record before line N".
    fn fail(&mut self, db: &Db, line: u64, e: Box<dyn std::error::Error>) -> LoadError {
        if !self.atomic {
            if let Err(flush) = self.commit(db, line - 1) {
                return flush;
            }
        }
        self.error(line, e)
    }

    fn error(&self, line: u64, source: Box<dyn std::error::Error>) -> LoadError {
        LoadError {
            input: self.input.clone(),
            line,
            committed: if self.atomic { 0 } else { self.committed },
            resume_at: self.resume_at,
            atomic: self.atomic,
            source,
        }
    }
}

/// A progress display on stderr, only when stderr is a terminal: input bytes (MiB, MiB/s) and
/// records (records/s).
struct Progress {
    bar: ProgressBar,
    t0: Instant,
    records: u64,
}

impl Progress {
    fn new(total: Option<u64>) -> Self {
        let bar = if !io::stderr().is_terminal() {
            ProgressBar::hidden()
        } else if let Some(n) = total {
            let b = ProgressBar::new(n);
            b.set_style(
                ProgressStyle::with_template(
                    "{bar:30} {binary_bytes}/{binary_total_bytes} {binary_bytes_per_sec} \
                     {msg} eta {eta}",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
            );
            b
        } else {
            let b = ProgressBar::new_spinner();
            b.set_style(
                ProgressStyle::with_template(
                    "{spinner} {binary_bytes} {binary_bytes_per_sec} {msg}",
                )
                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
            );
            b
        };
        Progress {
            bar,
            t0: Instant::now(),
            records: 0,
        }
    }

    fn advance(&self, bytes: u64) {
        self.bar.inc(bytes);
    }

    fn record(&mut self) {
        self.records += 1;
        if self.records.is_multiple_of(4096) {
            self.bar.set_message(rate(self.records, self.t0.elapsed()));
        }
    }

    fn finish(&self) {
        self.bar.finish_and_clear();
    }
}

/// `1234567 records (45.6k records/s)`: whole records, a rate with a unit and three digits.
fn rate(records: u64, elapsed: Duration) -> String {
    let secs = elapsed.as_secs_f64();
    let per = if secs > 0.0 {
        records as f64 / secs
    } else {
        0.0
    };
    let (v, unit) = if per >= 1e6 {
        (per / 1e6, "M")
    } else if per >= 1e3 {
        (per / 1e3, "k")
    } else {
        (per, "")
    };
    format!("{records} records ({v:.1}{unit} records/s)")
}

fn spinner(msg: &'static str) -> ProgressBar {
    if !io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let s = ProgressBar::new_spinner();
    s.set_style(
        ProgressStyle::with_template("{spinner} {msg} {elapsed}")
            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
    );
    s.set_message(msg);
    s.enable_steady_tick(Duration::from_millis(120));
    s
}

/// `--wait-lock` without a value waits forever.
fn parse_wait(s: &str) -> Result<Duration, String> {
    if s == "forever" {
        return Ok(Duration::MAX);
    }
    s.parse::<f64>()
        .ok()
        .filter(|v| v.is_finite() && *v >= 0.0)
        .map(Duration::from_secs_f64)
        .ok_or_else(|| format!("not a number of seconds: {s:?}"))
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

/// `--cluster-size`: a size, a multiple of 4 KiB that fits 32 bits.
fn parse_cluster_size(s: &str) -> Result<u64, String> {
    let n = parse_size(s)?;
    if n == 0 || n % 4096 != 0 || n > u64::from(u32::MAX) {
        return Err(format!("{s:?} is not a multiple of 4K below 4G"));
    }
    Ok(n)
}

/// `--shards`: 1 to 1024, the engine's maximum (which `Options::validate` enforces as well).
fn parse_shards(s: &str) -> Result<usize, String> {
    let max = 1024;
    s.parse::<usize>()
        .ok()
        .filter(|n| (1..=max).contains(n))
        .ok_or_else(|| format!("{s:?} is not a shard count from 1 to {max}"))
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
    use super::*;

    #[test]
    fn the_help_states_the_engine_limits() {
        let o = Options::default();
        let help = encoding_help!();
        assert!(
            help.contains(&format!("1 to {} bytes", o.max_key_size)),
            "{help}"
        );
        assert!(
            help.contains(&format!("({} bytes)", o.max_value_size)),
            "{help}"
        );
        assert_eq!(o.max_value_size, 16 << 20, "the help says 16 MiB");
    }

    #[test]
    fn rates_have_units_and_few_digits() {
        assert_eq!(
            rate(7_112_154, Duration::from_secs(1)),
            "7112154 records (7.1M records/s)"
        );
        assert_eq!(
            rate(500, Duration::from_secs(2)),
            "500 records (250.0 records/s)"
        );
        assert_eq!(parse_wait("forever"), Ok(Duration::MAX));
        assert_eq!(parse_wait("1.5"), Ok(Duration::from_millis(1500)));
        assert!(parse_wait("-1").is_err());
    }

    #[test]
    fn the_cli_is_well_formed_and_every_argument_has_help() {
        use clap::CommandFactory;
        let cmd = Cli::command();
        cmd.clone().debug_assert();
        for sub in cmd.get_subcommands() {
            assert!(
                sub.get_after_help().is_some(),
                "{} lacks exit codes",
                sub.get_name()
            );
            for a in sub.get_arguments() {
                assert!(
                    a.get_help().is_some(),
                    "{} {} has no help",
                    sub.get_name(),
                    a.get_id()
                );
            }
            let read_only = [
                "get", "keys", "scan", "dump", "stats", "check", "blobs", "blob",
            ];
            if read_only.contains(&sub.get_name()) {
                assert!(
                    sub.get_arguments().all(|a| a.get_id() != "sync"),
                    "{} offers --sync",
                    sub.get_name()
                );
            }
        }
    }

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
