//! Seeds, scale and replay: every randomized case runs from one `u64` seed, prints it when it
//! fails, and replays alone with `SEED=<seed> cargo test -p blobcask-tests --test <suite>`.
//!
//! - `SEED=<n>` (decimal or `0x` hex): run only that seed in every seeded loop of the suite.
//! - `TORTURE_SCALE=<k>`: multiply every case count by `k` (`ci/torture.sh` uses 100).
//! - `TORTURE_BASE=<n>`: shift the seed sequence (nightly runs pick a fresh base).

use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

/// Parse a seed written in decimal or `0x` hex.
pub fn parse_seed(s: &str) -> Option<u64> {
    let s = s.trim();
    match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(h) => u64::from_str_radix(h, 16).ok(),
        None => s.parse().ok(),
    }
}

/// The seed forced by `SEED`, if any.
pub fn forced_seed() -> Option<u64> {
    std::env::var("SEED").ok().and_then(|s| parse_seed(&s))
}

/// `TORTURE_SCALE` (default 1).
pub fn scale() -> u64 {
    std::env::var("TORTURE_SCALE")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .filter(|&k| k >= 1)
        .unwrap_or(1)
}

fn base() -> u64 {
    std::env::var("TORTURE_BASE")
        .ok()
        .and_then(|s| parse_seed(&s))
        .unwrap_or(0)
}

/// SplitMix64: independent seeds from (stream, index).
pub fn mix(a: u64, b: u64) -> u64 {
    let mut z = a ^ b.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn name_hash(name: &str) -> u64 {
    name.bytes().fold(0xCBF2_9CE4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01B3)
    })
}

/// A generator for one case.
pub fn rng(seed: u64) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(seed)
}

/// The seeds a loop named `name` runs: `count * scale()` of them, or only `SEED`.
pub fn seeds(name: &str, count: u64) -> Vec<u64> {
    if let Some(s) = forced_seed() {
        return vec![s];
    }
    let stream = mix(name_hash(name), base());
    (0..count * scale()).map(|i| mix(stream, i)).collect()
}

/// Run `case` once per seed of [`seeds`]; a failing case prints its seed and how to replay it,
/// then the panic propagates. Returns the number of cases run.
pub fn run_seeded(suite: &str, name: &str, count: u64, mut case: impl FnMut(u64)) -> u64 {
    let seeds = seeds(name, count);
    for &seed in &seeds {
        if let Err(p) = catch_unwind(AssertUnwindSafe(|| case(seed))) {
            eprintln!(
                "\n*** {name} FAILED with seed {seed:#x}; replay with:\n    \
                 SEED={seed:#x} cargo test -p blobcask-tests --test {suite} -- {name}\n"
            );
            resume_unwind(p);
        }
    }
    seeds.len() as u64
}

/// Print a one-line summary of a suite's case count and time (shown with `--nocapture`).
pub fn report(name: &str, cases: u64, t0: std::time::Instant) {
    eprintln!("{name}: {cases} cases in {:.1?}", t0.elapsed());
}
