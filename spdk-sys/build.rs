//! Finds an installed SPDK through pkg-config, generates bindings with bindgen and emits the
//! link flags SPDK needs.
//!
//! * Without the `bind` feature nothing is probed: the crate is empty and bindgen is not even
//!   compiled (the default workspace build).
//! * With `bind` but no SPDK on the pkg-config path the crate is empty too, and exactly one
//!   `cargo:warning` line says why.
//! * With SPDK, `cfg(spdk_present)` is set for this crate and `DEP_SPDK_PRESENT=1`,
//!   `DEP_SPDK_INCLUDE=<dirs>` reach the build scripts of dependents (ffi-shim).
//!
//! `SPDK_DIR=<prefix>` puts `<prefix>/lib/pkgconfig` (and `<prefix>/build/lib/pkgconfig` for
//! an uninstalled build tree) in front of `PKG_CONFIG_PATH`.

fn main() {
    println!("cargo::rustc-check-cfg=cfg(spdk_present)");
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=wrapper.h");
    println!("cargo:rerun-if-env-changed=SPDK_DIR");
    println!("cargo:rerun-if-env-changed=PKG_CONFIG_PATH");
    #[cfg(feature = "bind")]
    bind::run();
}

#[cfg(feature = "bind")]
mod bind {
    use std::collections::BTreeSet;
    use std::env;
    use std::path::{Path, PathBuf};

    /// SPDK libraries probed, in link order. The first one decides whether SPDK is present.
    /// Subsystem (`spdk_event_*`) and bdev module libraries register themselves from object
    /// constructors, which is why every SPDK archive is linked whole.
    const REQUIRED: &[&str] = &[
        "spdk_blob_bdev",
        "spdk_blob",
        "spdk_bdev",
        "spdk_bdev_malloc",
        "spdk_bdev_aio",
        "spdk_event_bdev",
        "spdk_event_accel",
        "spdk_event_iobuf",
        "spdk_init",
        "spdk_thread",
        "spdk_env_dpdk",
        "spdk_json",
        "spdk_jsonrpc",
        "spdk_rpc",
        "spdk_log",
        "spdk_util",
    ];
    /// Modules linked when this SPDK build has them.
    const OPTIONAL: &[&str] = &[
        "spdk_bdev_uring",
        "spdk_bdev_nvme",
        "spdk_event_keyring",
        "spdk_event_sock",
        "spdk_event_vmd",
        "spdk_sock_posix",
    ];

    pub fn run() {
        if let Ok(dir) = env::var("SPDK_DIR") {
            let dir = PathBuf::from(dir);
            let mut paths = vec![dir.join("lib/pkgconfig"), dir.join("build/lib/pkgconfig")];
            if let Some(old) = env::var_os("PKG_CONFIG_PATH") {
                paths.extend(env::split_paths(&old));
            }
            if let Ok(joined) = env::join_paths(paths) {
                env::set_var("PKG_CONFIG_PATH", joined);
            }
        }

        let probe = |name: &str| {
            pkg_config::Config::new()
                .cargo_metadata(false)
                .statik(true)
                .env_metadata(false)
                .probe(name)
        };

        let mut libs = Vec::new();
        for name in REQUIRED {
            match probe(name) {
                Ok(lib) => libs.push(lib),
                Err(e) => {
                    let why = match e {
                        pkg_config::Error::Failure { .. }
                        | pkg_config::Error::ProbeFailure { .. } => {
                            format!("{name}.pc is not on the pkg-config path")
                        }
                        other => other
                            .to_string()
                            .lines()
                            .find(|l| !l.trim().is_empty())
                            .unwrap_or("pkg-config failed")
                            .trim()
                            .to_owned(),
                    };
                    println!(
                        "cargo:warning=spdk-sys: SPDK not found ({why}); building without \
                         SPDK (set PKG_CONFIG_PATH or SPDK_DIR to an SPDK install)"
                    );
                    return;
                }
            }
        }
        for name in OPTIONAL {
            if let Ok(lib) = probe(name) {
                libs.push(lib);
            }
        }
        let sys = match probe("spdk_syslibs") {
            Ok(l) => l,
            Err(e) => {
                println!(
                    "cargo:warning=spdk-sys: spdk_syslibs.pc missing ({e}); building without SPDK"
                );
                return;
            }
        };
        libs.push(sys);
        let dpdk = pkg_config::Config::new()
            .cargo_metadata(false)
            .env_metadata(false)
            .probe("libdpdk")
            .ok();

        let mut search: Vec<PathBuf> = Vec::new();
        let mut include: Vec<PathBuf> = Vec::new();
        for lib in libs.iter().chain(dpdk.iter()) {
            for p in &lib.link_paths {
                if !search.contains(p) {
                    search.push(p.clone());
                }
            }
            for p in &lib.include_paths {
                if !include.contains(p) {
                    include.push(p.clone());
                }
            }
        }
        emit_links(&libs, dpdk.as_ref(), &search);

        let version = libs
            .iter()
            .find(|l| !l.version.is_empty())
            .map(|l| l.version.clone())
            .unwrap_or_default();
        generate(&include);

        println!("cargo:rustc-cfg=spdk_present");
        println!("cargo:present=1");
        println!("cargo:version={version}");
        let inc = env::join_paths(&include)
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        println!("cargo:include={inc}");
    }

    fn has_static(name: &str, search: &[PathBuf]) -> bool {
        search
            .iter()
            .any(|d| d.join(format!("lib{name}.a")).is_file())
    }

    /// SPDK archives are linked whole (constructors register bdev modules and subsystems);
    /// DPDK and system libraries are linked as shared libraries. Debian's DPDK loads its
    /// drivers (mempool ring etc.) from its plugin directory at EAL start-up.
    fn emit_links(
        libs: &[pkg_config::Library],
        dpdk: Option<&pkg_config::Library>,
        search: &[PathBuf],
    ) {
        for p in search {
            println!("cargo:rustc-link-search=native={}", p.display());
        }
        let mut seen = BTreeSet::new();
        let mut statics = Vec::new();
        let mut dylibs = Vec::new();
        for name in libs.iter().chain(dpdk).flat_map(|l| l.libs.iter()) {
            if !seen.insert(name.clone()) {
                continue;
            }
            if name.starts_with("spdk_") && has_static(name, search) {
                statics.push(name.clone());
            } else {
                dylibs.push(name.clone());
            }
        }
        if statics.is_empty() {
            println!(
                "cargo:warning=spdk-sys: no static SPDK libraries found; linking shared ones \
                 (bdev modules need -C link-arg=-Wl,--no-as-needed)"
            );
        }
        for s in &statics {
            println!("cargo:rustc-link-lib=static:+whole-archive,-bundle={s}");
        }
        for d in &dylibs {
            println!("cargo:rustc-link-lib=dylib={d}");
        }
    }

    fn generate(include: &[PathBuf]) {
        let out = PathBuf::from(env::var("OUT_DIR").expect("OUT_DIR is set by cargo"));
        let mut b = bindgen::Builder::default()
            .header("wrapper.h")
            .parse_callbacks(Box::new(bindgen::CargoCallbacks::new()))
            .allowlist_function("spdk_(blob|bs|bdev|env|thread|log|subsystem|rpc|json|io_channel|poller|ring|dma|zmalloc|malloc|free|realloc|get_thread|set_thread|get_ticks|get_ticks_hz|delay_us|unaffinitize_thread|xattr|mempool)_?.*")
            .allowlist_function("spdk_(put|get)_io_channel|spdk_io_channel_get_thread")
            .allowlist_type("spdk_(blob|bs|bdev|env|thread|log).*")
            .allowlist_var("SPDK_(BLOB|BS|BDEV|ENV|THREAD|LOG|VERSION|MALLOC|DEFAULT)_.*")
            // Packed NVMe/SCSI structs holding aligned unions cannot be represented in Rust;
            // we never touch them, so they stay opaque.
            .opaque_type("spdk_nvme_.*")
            .opaque_type("spdk_nvmf_.*")
            .opaque_type("spdk_scsi_.*")
            .opaque_type("spdk_bdev_io")
            .opaque_type("spdk_bdev_ext_io_opts")
            .blocklist_function("spdk_bdev_(nvme|zcopy|io_get_nvme|scsi).*")
            .derive_default(true)
            .layout_tests(true)
            .generate_comments(false)
            .prepend_enum_name(false);
        for i in include {
            b = b.clang_arg(format!("-I{}", i.display()));
        }
        if cfg!(target_arch = "x86_64") {
            b = b.clang_arg("-march=native");
        }
        let bindings = match b.generate() {
            Ok(bindings) => bindings,
            Err(e) => panic!("spdk-sys: bindgen failed over wrapper.h: {e}"),
        };
        let dest: &Path = &out.join("bindings.rs");
        if let Err(e) = bindings.write_to_file(dest) {
            panic!("spdk-sys: writing {}: {e}", dest.display());
        }
    }
}
