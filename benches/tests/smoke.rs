//! Smoke test: every workload of the tool on small inputs, on RAM-only stores, so CI
//! exercises the code paths (no timing assertions).

use blobcask_bench::{run, Config};
use clap::Parser;

const ALL: &str = "fillseq,fillrandom,overwrite,readrandom,readmissing,readseq,\
readrandomwriterandom,readwhilewriting,deleterandom,stats,compact,reopen";

fn cfg(args: &[&str]) -> Config {
    let mut v = vec!["db_bench", "--quiet", "--seed=42"];
    v.extend_from_slice(args);
    Config::parse_from(v)
}

#[test]
fn every_workload_on_the_hashmap_baseline() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("out.json");
    let c = cfg(&[
        "--engine=hashmap",
        "--num=2000",
        "--threads=2",
        "--histogram",
        &format!("--benchmarks={ALL}"),
        &format!("--json={}", json.display()),
    ]);
    let r = run(&c).unwrap();
    assert_eq!(r.results.len(), 9);
    let fill = &r.results[0];
    assert_eq!((fill.name.as_str(), fill.ops), ("fillseq", 2000));
    assert!(fill.latency.is_some());
    let rr = r.results.iter().find(|o| o.name == "readrandom").unwrap();
    assert_eq!(rr.message, "(2000 of 2000 found)");
    let rm = r.results.iter().find(|o| o.name == "readmissing").unwrap();
    assert!(rm.message.starts_with("(0 of"));
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    assert_eq!(v["results"].as_array().unwrap().len(), 9);
}

#[test]
fn rawdevice_and_blobraw_on_memory() {
    let c = cfg(&[
        "--backend=memory",
        "--benchmarks=rawdevice,blobraw",
        "--raw_bytes=16M",
        "--raw_ops=64",
    ]);
    let r = run(&c).unwrap();
    assert!(r.raw.iter().any(|f| f.bench == "rawdevice"));
    let blob: Vec<_> = r.raw.iter().filter(|f| f.bench == "blobraw").collect();
    assert_eq!(blob.len(), 5);
    assert!(blob.iter().all(|f| f.ratio.is_some()));
}

#[test]
fn unknown_benchmark_is_an_error() {
    let c = cfg(&["--engine=hashmap", "--benchmarks=fillseq,nosuch"]);
    assert!(run(&c).is_err());
}

#[test]
fn every_workload_on_blobcask_memory() {
    let c = cfg(&[
        "--backend=memory",
        "--num=1500",
        "--threads=2",
        "--shards=2",
        "--histogram",
        "--device_size=64M",
        &format!("--benchmarks={ALL}"),
    ]);
    let r = run(&c).unwrap();
    assert_eq!(r.results.len(), 9);
    let rr = r.results.iter().find(|o| o.name == "readrandom").unwrap();
    assert_eq!(rr.message, "(1500 of 1500 found)");
    // The explicit `reopen` benchmark recovered the memory store.
    assert!(r.summary.reopen_seconds.is_some());
    assert!(r.summary.keydir_bytes_per_key.is_some());
}

#[test]
fn multireadrandom_on_blobcask_memory_counts_keys_and_finds_them() {
    let c = cfg(&[
        "--backend=memory",
        "--num=3000",
        "--reads=1000",
        "--batch_size=7",
        "--shards=2",
        "--device_size=64M",
        "--histogram",
        "--reopen=0",
        "--benchmarks=fillseq,multireadrandom",
    ]);
    let r = run(&c).unwrap();
    let m = r
        .results
        .iter()
        .find(|o| o.name == "multireadrandom")
        .unwrap();
    // An op is a key (1000 = 142 batches of 7 and one of 6), every one of them present.
    assert_eq!(m.ops, 1000);
    assert_eq!(m.message, "(1000 of 1000 found)");
    assert_eq!(m.bytes, 1000 * (16 + 100));
    assert!(m.latency.is_some());
}

#[test]
fn multireadrandom_counts_missing_keys() {
    // Keys 0..500 written, then read at random from 0..1000 on the same memory store.
    let db = "/smoke-multiread-missing";
    let fill = cfg(&[
        "--backend=memory",
        "--num=500",
        "--shards=2",
        "--device_size=64M",
        "--reopen=0",
        "--benchmarks=fillseq",
        &format!("--db={db}"),
    ]);
    run(&fill).unwrap();
    let read = cfg(&[
        "--backend=memory",
        "--num=1000",
        "--reads=2000",
        "--shards=2",
        "--device_size=64M",
        "--reopen=0",
        "--use_existing_db",
        "--benchmarks=multireadrandom",
        &format!("--db={db}"),
    ]);
    let r = run(&read).unwrap();
    let m = &r.results[0];
    assert_eq!(m.ops, 2000);
    let found: u64 = m.message[1..].split(' ').next().unwrap().parse().unwrap();
    assert!(found > 0 && found < 2000, "{}", m.message);
    assert_eq!(m.bytes, found * (16 + 100));
}

#[test]
fn rawread_on_memory_reports_qd1_qd32_and_the_batch() {
    let c = cfg(&[
        "--backend=memory",
        "--benchmarks=rawread",
        "--raw_bytes=16M",
        "--raw_ops=64",
        "--batch_size=8",
    ]);
    let r = run(&c).unwrap();
    let names: Vec<&str> = r.raw.iter().map(|f| f.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "seqwrite 1M (fill)",
            "seqread 1M QD4",
            "randread 4K QD1",
            "randread 4K QD8",
            "randread 4K QD32"
        ]
    );
    assert!(r.raw.iter().all(|f| f.raw > 0.0));
}

#[test]
fn every_binary_prints_its_version() {
    for bin in [
        env!("CARGO_BIN_EXE_db_bench"),
        env!("CARGO_BIN_EXE_hotpath"),
    ] {
        let o = std::process::Command::new(bin)
            .arg("--version")
            .output()
            .unwrap();
        assert!(o.status.success(), "{bin} --version failed");
        let out = String::from_utf8_lossy(&o.stdout);
        assert!(out.contains(env!("CARGO_PKG_VERSION")), "{bin}: {out}");
    }
}
