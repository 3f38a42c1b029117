//! `blobcask chunk create|write|read|rm|ls|stat`, and the chunk part of `blobcask check`.

use std::io::{self, Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use blobcask::chunk::{ChunkError, ChunkOptions, ChunkStore};
use blobcask::Db;

use crate::{open, open_read_only, CliResult, LockArgs, ReadArgs, WriteArgs, EXIT_OK};

#[derive(clap::Subcommand)]
pub enum ChunkCmd {
    /// Create an empty chunk; prints its id.
    #[command(after_help = EXIT_OK)]
    Create {
        #[command(flatten)]
        store: WriteArgs,
        /// The size the chunk is expected to reach (recorded; e.g. 64M).
        #[arg(long, default_value = "0", value_parser = crate::parse_size)]
        hint: u64,
    },
    /// Write stdin (or --file) into chunk ID at --offset.
    #[command(after_help = EXIT_FOUND)]
    Write {
        #[command(flatten)]
        store: WriteArgs,
        /// Chunk id.
        id: u64,
        /// Byte offset in the chunk (e.g. 4096, 1M).
        #[arg(long, default_value = "0", value_parser = crate::parse_size)]
        offset: u64,
        /// Read the data from FILE instead of stdin.
        #[arg(long, value_name = "FILE")]
        file: Option<PathBuf>,
    },
    /// Print --len bytes of chunk ID from --offset (default: to its end) on stdout.
    #[command(after_help = EXIT_FOUND)]
    Read {
        #[command(flatten)]
        store: ViewArgs,
        /// Chunk id.
        id: u64,
        /// Byte offset in the chunk.
        #[arg(long, default_value = "0", value_parser = crate::parse_size)]
        offset: u64,
        /// Bytes to read (default: to the chunk's end).
        #[arg(long, value_parser = crate::parse_size)]
        len: Option<u64>,
    },
    /// Remove chunk ID.
    #[command(after_help = EXIT_FOUND)]
    Rm {
        #[command(flatten)]
        store: WriteArgs,
        /// Chunk id.
        id: u64,
    },
    /// List the chunks: id, size, pages holding data.
    #[command(after_help = EXIT_OK)]
    Ls {
        #[command(flatten)]
        store: ViewArgs,
    },
    /// Show chunk ID: size, size hint, pages holding data.
    #[command(after_help = EXIT_FOUND)]
    Stat {
        #[command(flatten)]
        store: ViewArgs,
        /// Chunk id.
        id: u64,
    },
}

const EXIT_FOUND: &str = "Exit status: 0 ok, 1 no such chunk, 2 error";

/// A store read by a chunk command: the live store, or one of its checkpoints.
#[derive(clap::Args)]
pub struct ViewArgs {
    #[command(flatten)]
    store: ReadArgs,
    /// Read checkpoint NAME (see `blobcask checkpoint`) instead of the live store.
    #[arg(long, value_name = "NAME")]
    checkpoint: Option<String>,
}

fn open_view(v: &ViewArgs) -> Result<Db, Box<dyn std::error::Error>> {
    match &v.checkpoint {
        None => open_read_only(&v.store),
        Some(name) => {
            let opts = crate::store_options(&v.store.device, v.store.salvage, v.store.lock)?;
            Ok(Db::open_checkpoint(opts, name).map_err(crate::in_cli_terms)?)
        }
    }
}

fn chunks(db: &Db) -> Result<ChunkStore, ChunkError> {
    ChunkStore::open(
        db,
        ChunkOptions {
            workers: 1,
            ..ChunkOptions::default()
        },
    )
}

/// Run `f` on the chunk store of `db`, then close both (the chunk store first).
fn with_chunks(db: Db, f: impl FnOnce(&ChunkStore) -> CliResult) -> CliResult {
    let cs = chunks(&db)?;
    let res = f(&cs);
    let closed = cs.close();
    let db_closed = db.close();
    let code = res?;
    closed?;
    db_closed?;
    Ok(code)
}

fn missing(e: &ChunkError) -> bool {
    matches!(e, ChunkError::NotFound(_))
}

fn not_found(id: u64) -> CliResult {
    let _ = writeln!(io::stderr().lock(), "NOT_FOUND: chunk {id}");
    Ok(ExitCode::from(1))
}

pub fn run(cmd: ChunkCmd) -> CliResult {
    match cmd {
        ChunkCmd::Create { store, hint } => with_chunks(open(&store)?, |cs| {
            println!("{}", cs.create(hint)?);
            Ok(ExitCode::SUCCESS)
        }),
        ChunkCmd::Write {
            store,
            id,
            offset,
            file,
        } => {
            let data = match file {
                Some(p) => std::fs::read(&p)
                    .map_err(|e| crate::Failure(format!("--file {}: {e}", p.display())))?,
                None => {
                    let mut v = Vec::new();
                    io::stdin().lock().read_to_end(&mut v)?;
                    v
                }
            };
            with_chunks(open(&store)?, |cs| match cs.write(id, offset, &data) {
                Err(e) if missing(&e) => not_found(id),
                r => {
                    r?;
                    Ok(ExitCode::SUCCESS)
                }
            })
        }
        ChunkCmd::Read {
            store,
            id,
            offset,
            len,
        } => with_chunks(open_view(&store)?, |cs| {
            match cs.read(id, offset, len.unwrap_or(u64::MAX - offset)) {
                Err(e) if missing(&e) => not_found(id),
                r => {
                    io::stdout().lock().write_all(&r?)?;
                    Ok(ExitCode::SUCCESS)
                }
            }
        }),
        ChunkCmd::Rm { store, id } => with_chunks(open(&store)?, |cs| match cs.remove(id) {
            Err(e) if missing(&e) => not_found(id),
            r => {
                r?;
                Ok(ExitCode::SUCCESS)
            }
        }),
        ChunkCmd::Ls { store } => with_chunks(open_view(&store)?, |cs| {
            let mut out = io::stdout().lock();
            for st in cs.iter()? {
                let st = st?;
                writeln!(out, "{}\t{}\t{}", st.id, st.size, st.pages)?;
            }
            Ok(ExitCode::SUCCESS)
        }),
        ChunkCmd::Stat { store, id } => with_chunks(open_view(&store)?, |cs| match cs.stat(id) {
            Err(e) if missing(&e) => not_found(id),
            r => {
                let st = r?;
                println!(
                    "id\t{}\nsize\t{}\nhint\t{}\npages\t{}",
                    st.id, st.size, st.hint, st.pages
                );
                Ok(ExitCode::SUCCESS)
            }
        }),
    }
}

/// The chunk part of `check`: (notes, problems). Opens the store read-only (nothing is
/// written); a store the KV cannot open is the rest of `check`'s to report.
pub fn check(path: &Path, wait: Option<Duration>) -> (Vec<String>, Vec<String>) {
    let store = ReadArgs {
        device: path.to_path_buf(),
        salvage: false,
        lock: LockArgs { wait_lock: wait },
    };
    let db = match open_read_only(&store) {
        Ok(db) => db,
        Err(e) => return (vec![format!("chunk metadata not checked: {e}")], Vec::new()),
    };
    let res = blobcask::chunk::check(&db);
    let _ = db.close();
    match res {
        Ok(c) => {
            let mut notes = c.notes;
            if c.chunks > 0 || c.blobs > 0 {
                notes.push(format!(
                    "{} chunks in {} chunk blobs: {} pages referenced, {} free",
                    c.chunks, c.blobs, c.pages, c.free_pages
                ));
            }
            (notes, c.problems)
        }
        Err(e) => (Vec::new(), vec![format!("chunk metadata: {e}")]),
    }
}
