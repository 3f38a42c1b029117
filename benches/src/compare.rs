//! `db_bench --compare=DIR`: a Markdown table of ratios from the JSON reports that
//! `benches/compare.sh` writes as `DIR/<phase>.<engine>.json`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use serde_json::Value;

use crate::BenchResult;

struct Run {
    engine: String,
    /// benchmark name -> (ops/sec, MB/s)
    rates: Vec<(String, f64, f64)>,
    /// rawdevice figure name -> value
    raw: Vec<(String, f64, String)>,
    reopen: Option<f64>,
    keydir: Option<f64>,
    space_amp: Option<f64>,
    write_amp: Option<f64>,
}

fn load(path: &Path) -> BenchResult<Run> {
    let v: Value = serde_json::from_slice(&std::fs::read(path)?)?;
    let engine = v["engine"].as_str().unwrap_or("?").to_string();
    // A benchmark that runs twice (e.g. readrandom to warm a cache, then measured) shows
    // as `name`, `name #2`, ...
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    let rates = v["results"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|r| {
                    let base = r["name"].as_str().unwrap_or("?").to_string();
                    let n = seen.entry(base.clone()).or_insert(0);
                    *n += 1;
                    let name = match *n {
                        1 => base,
                        k => format!("{base} #{k}"),
                    };
                    (
                        name,
                        r["ops_per_sec"].as_f64().unwrap_or(0.0),
                        r["mb_per_sec"].as_f64().unwrap_or(0.0),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    let raw = v["raw"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|r| {
                    (
                        format!(
                            "{} {}",
                            r["bench"].as_str().unwrap_or("?"),
                            r["name"].as_str().unwrap_or("?")
                        ),
                        r["raw"].as_f64().unwrap_or(0.0),
                        r["unit"].as_str().unwrap_or("").to_string(),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    let s = &v["summary"];
    Ok(Run {
        engine,
        rates,
        raw,
        reopen: s["reopen_seconds"].as_f64(),
        keydir: s["keydir_bytes_per_key"].as_f64(),
        space_amp: s["space_amplification"].as_f64(),
        write_amp: s["write_amplification"].as_f64(),
    })
}

fn opt(v: Option<f64>, prec: usize) -> String {
    v.map(|x| format!("{x:.prec$}"))
        .unwrap_or_else(|| "–".into())
}

/// Build the Markdown report for every `<phase>.<engine>.json` in `dir`.
pub fn markdown(dir: &Path) -> BenchResult<String> {
    // phase -> engine -> run
    let mut phases: BTreeMap<String, Vec<(String, Run)>> = BTreeMap::new();
    let mut files: Vec<_> = std::fs::read_dir(dir)?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    for f in files {
        let stem = f
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or_default()
            .to_string();
        let Some((phase, label)) = stem.rsplit_once('.') else {
            continue;
        };
        let run = load(&f)?;
        phases
            .entry(phase.to_string())
            .or_default()
            .push((label.to_string(), run));
    }
    let mut out = String::new();
    for (phase, mut runs) in phases {
        // blobcask first: it is the numerator of every ratio.
        runs.sort_by_key(|(l, _)| (!l.starts_with("blobcask"), l.clone()));
        let _ = writeln!(out, "### {phase}\n");
        // The base: `blobcask`, else the last `blobcask-*` label (e.g. `blobcask-t8` over
        // `blobcask-t1`, so the sync phase shows the group-commit gain).
        let base = runs
            .iter()
            .position(|(l, _)| l == "blobcask")
            .or_else(|| runs.iter().rposition(|(l, _)| l.starts_with("blobcask")))
            .unwrap_or(0);
        let mut header = "| benchmark |".to_string();
        let mut sep = "|---|".to_string();
        for (i, (l, _)) in runs.iter().enumerate() {
            let _ = write!(header, " {l} ops/s |");
            sep.push_str("---:|");
            if i != base {
                let _ = write!(header, " {} / {l} |", runs[base].0);
                sep.push_str("---:|");
            }
        }
        let _ = writeln!(out, "{header}\n{sep}");
        let names: Vec<String> = runs[base].1.rates.iter().map(|r| r.0.clone()).collect();
        for name in &names {
            let get = |r: &Run| r.rates.iter().find(|x| &x.0 == name).map(|x| x.1);
            let b = get(&runs[base].1);
            let mut row = format!("| {name} |");
            for (i, (_, r)) in runs.iter().enumerate() {
                let v = get(r);
                let _ = write!(row, " {} |", opt(v, 0));
                if i != base {
                    let ratio = match (b, v) {
                        (Some(b), Some(v)) if v > 0.0 => Some(b / v),
                        _ => None,
                    };
                    let _ = write!(row, " {}x |", opt(ratio, 2));
                }
            }
            let _ = writeln!(out, "{row}");
        }
        // Store-level figures.
        let _ = writeln!(
            out,
            "\n| engine | reopen s | keydir B/key beyond key | space amp | write amp |\n|---|---:|---:|---:|---:|"
        );
        for (l, r) in &runs {
            let _ = writeln!(
                out,
                "| {l} ({}) | {} | {} | {} | {} |",
                r.engine,
                opt(r.reopen, 3),
                opt(r.keydir, 1),
                opt(r.space_amp, 2),
                opt(r.write_amp, 2)
            );
        }
        // The engine as a fraction of the device, where the phase measured the device.
        let b = &runs[base].1;
        if !b.raw.is_empty() {
            let _ = writeln!(
                out,
                "\n| device figure | value | blobcask figure | fraction |\n|---|---:|---|---:|"
            );
            for (name, val, unit) in &b.raw {
                let pick = if unit == "MB/s" {
                    b.rates
                        .iter()
                        .find(|r| r.0.starts_with("fill"))
                        .map(|r| (format!("{} MB/s", r.0), r.2))
                } else if name.contains("randread") {
                    b.rates
                        .iter()
                        .rfind(|r| r.0.starts_with("readrandom"))
                        .map(|r| ("readrandom ops/s".to_string(), r.1))
                } else {
                    None
                };
                match pick {
                    Some((what, x)) if *val > 0.0 => {
                        let _ = writeln!(
                            out,
                            "| {name} | {val:.1} {unit} | {what} {x:.1} | {:.3} |",
                            x / val
                        );
                    }
                    _ => {
                        let _ = writeln!(out, "| {name} | {val:.1} {unit} | | |");
                    }
                }
            }
        }
        out.push('\n');
    }
    Ok(out)
}
