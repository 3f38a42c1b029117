//! `blobcask checkpoint create|list|delete|dump`: checkpoints of a closed store.

use std::io::{self, Write as _};
use std::path::PathBuf;
use std::process::ExitCode;

use blobcask::Db;

use crate::tsv::Encoding;
use crate::{store_options, CliResult, CodecArgs, LockArgs, EXIT_OK};

#[derive(clap::Subcommand)]
pub enum CkptCmd {
    /// Freeze the store as checkpoint NAME: blobstore snapshots of its blobs (no data is
    /// copied; later writes to the store cost a cluster copy the first time they touch one).
    #[command(after_help = EXIT_OK)]
    Create {
        /// Image file or block device holding the store.
        store: PathBuf,
        /// Checkpoint name (1 to 255 bytes).
        name: String,
        #[command(flatten)]
        lock: LockArgs,
    },
    /// List the checkpoints: name, creation time (unix ms), snapshot blobs.
    #[command(after_help = EXIT_OK)]
    List {
        /// Image file or block device holding the store.
        store: PathBuf,
        #[command(flatten)]
        lock: LockArgs,
    },
    /// Delete checkpoint NAME, freeing the clusters only it held.
    #[command(after_help = EXIT_OK)]
    Delete {
        /// Image file or block device holding the store.
        store: PathBuf,
        /// Checkpoint name (1 to 255 bytes).
        name: String,
        #[command(flatten)]
        lock: LockArgs,
    },
    /// Print every key and value of checkpoint NAME, as `dump` does for the store.
    #[command(after_help = EXIT_OK)]
    Dump {
        /// Image file or block device holding the store.
        store: PathBuf,
        /// Checkpoint name (1 to 255 bytes).
        name: String,
        #[command(flatten)]
        codec: CodecArgs,
        #[command(flatten)]
        lock: LockArgs,
    },
}

pub fn run(cmd: CkptCmd) -> CliResult {
    match cmd {
        CkptCmd::Create { store, name, lock } => {
            let c = Db::create_checkpoint(store_options(&store, false, lock)?, &name)?;
            println!(
                "created checkpoint {:?}: {} snapshot blobs",
                c.name,
                c.blobs.len()
            );
        }
        CkptCmd::List { store, lock } => {
            let mut out = io::stdout().lock();
            for c in Db::list_checkpoints(store_options(&store, false, lock)?)? {
                writeln!(out, "{}\t{}\t{}", c.name, c.created_ms, c.blobs.len())?;
            }
        }
        CkptCmd::Delete { store, name, lock } => {
            Db::delete_checkpoint(store_options(&store, false, lock)?, &name)?;
            println!("deleted checkpoint {name:?}");
        }
        CkptCmd::Dump {
            store,
            name,
            codec,
            lock,
        } => {
            let enc = Encoding::new(codec.hex);
            let db = Db::open_checkpoint(store_options(&store, false, lock)?, &name)?;
            let mut out = io::BufWriter::with_capacity(1 << 16, io::stdout().lock());
            let res = crate::records::dump(&db, |k, v| {
                writeln!(out, "{}\t{}", enc.encode(k), enc.encode(v))
                    .map_err(Box::<dyn std::error::Error>::from)
            });
            let res = res.and_then(|_| Ok(out.flush()?));
            let closed = db.close();
            res?;
            closed?;
        }
    }
    Ok(ExitCode::SUCCESS)
}
