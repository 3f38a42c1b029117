//! `blobcask shell`: a line-oriented prompt over an open store.
//!
//! Every command prints exactly one result line: `OK`, the value (escaped as everywhere in
//! the CLI, so it stays on one line), `NOT_FOUND`, or `ERR <message>`. Interactive sessions get
//! line editing, and a history saved to `~/.blobcask_history` only when asked for (`--history`),
//! never with values in it (`put KEY` only); piped input gets no prompt, so scripts can read
//! results line by line.

use std::io::{self, BufRead, Write};

use blobcask::Db;

use crate::tsv;

const HELP: &str = "commands: put KEY VALUE | get KEY | delete KEY | contains KEY | \
                    keys [PREFIX] | sync | merge | stats | help | quit";

/// Run the prompt until `quit` or end of input; `history` keeps a history file.
pub fn run(db: &Db, interactive: bool, history: bool) -> io::Result<()> {
    if interactive {
        return run_interactive(db, history);
    }
    let stdin = io::stdin();
    let mut out = io::stdout().lock();
    for line in stdin.lock().lines() {
        let line = line?;
        match execute(db, &line) {
            Reply::Quit => break,
            Reply::Nothing => {}
            Reply::Line(s) => {
                writeln!(out, "{s}")?;
                out.flush()?;
            }
        }
    }
    Ok(())
}

fn run_interactive(db: &Db, keep: bool) -> io::Result<()> {
    let mut rl = rustyline::DefaultEditor::new().map_err(io::Error::other)?;
    let history = keep
        .then(|| std::env::var_os("HOME"))
        .flatten()
        .map(|h| std::path::PathBuf::from(h).join(".blobcask_history"));
    if let Some(h) = &history {
        let _ = rl.load_history(h);
    }
    let mut out = io::stdout().lock();
    writeln!(out, "{HELP}")?;
    loop {
        match rl.readline("blobcask> ") {
            Ok(line) => {
                if !line.trim().is_empty() {
                    let _ = rl.add_history_entry(without_value(&line));
                }
                match execute(db, &line) {
                    Reply::Quit => break,
                    Reply::Nothing => {}
                    Reply::Line(s) => writeln!(out, "{s}")?,
                }
            }
            Err(rustyline::error::ReadlineError::Interrupted)
            | Err(rustyline::error::ReadlineError::Eof) => break,
            Err(e) => return Err(io::Error::other(e)),
        }
    }
    if let Some(h) = &history {
        let _ = rl.save_history(h);
    }
    Ok(())
}

/// A command line as history keeps it: a `put` loses its value (values may be secrets).
fn without_value(line: &str) -> String {
    let t = line.trim();
    let mut words = t.split_whitespace();
    match (words.next(), words.next()) {
        (Some(cmd), Some(key)) if matches!(cmd.to_ascii_lowercase().as_str(), "put" | "set") => {
            format!("{cmd} {key}")
        }
        _ => t.to_string(),
    }
}

#[derive(Debug, PartialEq)]
pub enum Reply {
    Line(String),
    Nothing,
    Quit,
}

/// Execute one command line. Keys and values may use the TSV escapes (`\x20` for a space in
/// a key); a value is the rest of the line after the key.
pub fn execute(db: &Db, line: &str) -> Reply {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return Reply::Nothing;
    }
    let (cmd, rest) = line.split_once(char::is_whitespace).unwrap_or((line, ""));
    let rest = rest.trim_start();
    match run_cmd(db, &cmd.to_ascii_lowercase(), rest) {
        Ok(r) => r,
        Err(e) => Reply::Line(format!("ERR {e}")),
    }
}

fn run_cmd(db: &Db, cmd: &str, rest: &str) -> Result<Reply, String> {
    let one_key = |rest: &str| -> Result<Vec<u8>, String> {
        let mut it = rest.split_whitespace();
        match (it.next(), it.next()) {
            (Some(k), None) => tsv::unescape(k),
            _ => Err(format!("{cmd} takes exactly one key")),
        }
    };
    let err = |e: blobcask::Error| e.to_string();
    let reply = match cmd {
        "put" | "set" => {
            let (k, v) = rest
                .split_once(char::is_whitespace)
                .ok_or("put takes a key and a value")?;
            db.put(&tsv::unescape(k)?, &tsv::unescape(v)?)
                .map_err(err)?;
            "OK".to_string()
        }
        "get" => match db.get(&one_key(rest)?).map_err(err)? {
            Some(v) => tsv::escape(&v),
            None => "NOT_FOUND".to_string(),
        },
        "delete" | "del" => {
            let k = one_key(rest)?;
            if db.contains(&k).map_err(err)? {
                db.delete(&k).map_err(err)?;
                "OK".to_string()
            } else {
                "NOT_FOUND".to_string()
            }
        }
        "contains" => match db.contains(&one_key(rest)?).map_err(err)? {
            true => "OK".to_string(),
            false => "NOT_FOUND".to_string(),
        },
        "keys" => {
            let prefix = tsv::unescape(rest.trim())?;
            let mut keys = db.keys().map_err(err)?;
            keys.retain(|k| k.starts_with(&prefix));
            keys.sort();
            keys.iter()
                .map(|k| tsv::escape(k))
                .collect::<Vec<_>>()
                .join("\t")
        }
        "sync" => {
            db.sync().map_err(err)?;
            "OK".to_string()
        }
        "merge" => {
            db.merge().map_err(err)?;
            "OK".to_string()
        }
        "stats" => {
            let s = db.stats().map_err(err)?;
            format!(
                "keys={} blobs={} keydir_bytes_per_key={:.1}",
                s.keys,
                s.blobs.len(),
                s.keydir_bytes_per_key
            )
        }
        "help" | "?" => HELP.to_string(),
        "quit" | "exit" => return Ok(Reply::Quit),
        other => return Err(format!("unknown command {other:?} ({HELP})")),
    };
    Ok(Reply::Line(reply))
}

#[cfg(test)]
mod tests {
    use super::without_value;

    #[test]
    fn history_keeps_no_values() {
        assert_eq!(without_value("  put k s3cret value "), "put k");
        assert_eq!(without_value("SET k v"), "SET k");
        assert_eq!(without_value("get k"), "get k");
        assert_eq!(without_value("keys"), "keys");
    }
}
