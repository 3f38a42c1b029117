//! `db_bench`: RocksDB's db_bench for blobcask and its peers. See `db_bench --help`.

use clap::Parser;

fn main() -> std::process::ExitCode {
    let cfg = blobcask_bench::Config::parse();
    match blobcask_bench::run(&cfg) {
        Ok(_) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("db_bench: error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
