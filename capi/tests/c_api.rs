//! The C API from C: `c/test.c` (behaviour checks) and `c/example.c` (the quickstart) are
//! compiled with the system C compiler (`$CC`, else `cc`) against `include/blobcask.h` and the
//! static library this build made, and run; then again under AddressSanitizer and UBSan when
//! the compiler has them. Installing with `install.sh` and building the example through
//! `pkg-config` is checked too when pkg-config is there. A missing C compiler fails the test:
//! CI installs one.
#![allow(clippy::unwrap_used)] // test code

use std::path::{Path, PathBuf};
use std::process::Command;

fn crate_dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The directory holding `libblobcask_c.a` of this build (`target/<profile>`). `cargo test`
/// builds only the library's rlib for the tests, so the static library is built here when
/// it is missing (once per run; CI builds it beforehand).
fn lib_dir() -> PathBuf {
    static BUILT: std::sync::Mutex<bool> = std::sync::Mutex::new(false);
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().and_then(Path::parent).unwrap().to_path_buf();
    let mut built = BUILT.lock().unwrap_or_else(|e| e.into_inner());
    if !*built && !dir.join("libblobcask_c.a").exists() {
        let target = dir.parent().unwrap();
        let mut cmd = Command::new(env!("CARGO"));
        cmd.args(["build", "--quiet", "-p", "blobcask-capi", "--target-dir"])
            .arg(target)
            .current_dir(crate_dir());
        if dir.file_name().is_some_and(|n| n == "release") {
            cmd.arg("--release");
        }
        let st = cmd.status().unwrap();
        assert!(st.success(), "cargo build -p blobcask-capi failed");
    }
    *built = true;
    assert!(
        dir.join("libblobcask_c.a").exists(),
        "no libblobcask_c.a in {}",
        dir.display()
    );
    dir
}

fn cc() -> String {
    std::env::var("CC").unwrap_or_else(|_| "cc".into())
}

/// Compile `src` to `out` with `extra` flags; the output of a failure.
fn compile(src: &Path, out: &Path, extra: &[&str]) -> Result<(), String> {
    let lib = lib_dir().join("libblobcask_c.a");
    let o = Command::new(cc())
        .args(["-std=c11", "-Wall", "-Wextra", "-Werror", "-g"])
        .args(extra)
        .arg("-I")
        .arg(crate_dir().join("include"))
        .arg(src)
        .arg(&lib)
        .args(["-lpthread", "-ldl", "-lm", "-lrt", "-o"])
        .arg(out)
        .output()
        .map_err(|e| format!("cannot run {}: {e}", cc()))?;
    if o.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&o.stderr).into_owned())
    }
}

fn run(bin: &Path, arg: &Path) -> String {
    let o = Command::new(bin)
        .arg(arg)
        .env("ASAN_OPTIONS", "detect_leaks=1")
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(
        o.status.success(),
        "{} failed ({}):\n{out}\n{}",
        bin.display(),
        o.status,
        String::from_utf8_lossy(&o.stderr)
    );
    out
}

const SANITIZE: &str = "-fsanitize=address,undefined";

/// Whether the compiler links a sanitized program.
fn has_sanitizers(dir: &Path) -> bool {
    let src = dir.join("probe.c");
    std::fs::write(&src, "int main(void) { return 0; }\n").unwrap();
    Command::new(cc())
        .arg(SANITIZE)
        .arg(&src)
        .arg("-o")
        .arg(dir.join("probe"))
        .output()
        .is_ok_and(|o| o.status.success())
        && Command::new(dir.join("probe"))
            .status()
            .is_ok_and(|s| s.success())
}

#[test]
fn the_c_test_passes() {
    let dir = tempfile::tempdir().unwrap();
    let bin = dir.path().join("test");
    compile(&crate_dir().join("c/test.c"), &bin, &[]).unwrap();
    let out = run(&bin, dir.path());
    assert!(out.contains("all C API checks passed"), "{out}");
}

#[test]
fn the_c_test_passes_under_sanitizers() {
    let dir = tempfile::tempdir().unwrap();
    if !has_sanitizers(dir.path()) {
        eprintln!("skipped: {} has no AddressSanitizer/UBSan", cc());
        return;
    }
    let bin = dir.path().join("test-asan");
    compile(&crate_dir().join("c/test.c"), &bin, &[SANITIZE]).unwrap();
    let out = run(&bin, dir.path());
    assert!(out.contains("all C API checks passed"), "{out}");
}

#[test]
fn the_c_example_runs() {
    let dir = tempfile::tempdir().unwrap();
    let bin = dir.path().join("example");
    compile(&crate_dir().join("c/example.c"), &bin, &[]).unwrap();
    let out = run(&bin, &dir.path().join("example.img"));
    let mut lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.first(), Some(&"user:2 = grace"), "{out}");
    lines.remove(0);
    lines.sort_unstable();
    assert_eq!(
        lines,
        ["user:1 = ada", "user:2 = grace", "user:3 = linus"],
        "{out}"
    );
}

#[test]
fn install_sh_and_pkg_config_build_the_example() {
    if Command::new("pkg-config")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("skipped: no pkg-config");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let prefix = dir.path().join("prefix");
    let st = Command::new("bash")
        .arg(crate_dir().join("install.sh"))
        .arg(&prefix)
        .arg(lib_dir())
        .status()
        .unwrap();
    assert!(st.success());
    let flags = Command::new("pkg-config")
        .args(["--cflags", "--libs", "--static", "blobcask"])
        .env("PKG_CONFIG_PATH", prefix.join("lib/pkgconfig"))
        .output()
        .unwrap();
    assert!(flags.status.success(), "{flags:?}");
    let flags = String::from_utf8(flags.stdout).unwrap();
    let bin = dir.path().join("example");
    let o = Command::new(cc())
        .arg(crate_dir().join("c/example.c"))
        .args(flags.split_whitespace())
        .arg(format!("-Wl,-rpath,{}", prefix.join("lib").display()))
        .arg("-o")
        .arg(&bin)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let out = run(&bin, &dir.path().join("pc.img"));
    assert!(out.starts_with("user:2 = grace"), "{out}");
}
