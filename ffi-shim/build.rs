//! Compiles the C shim (`shim/shim.c`) when spdk-sys found SPDK, and sets `cfg(spdk_present)`
//! for this crate. spdk-sys passes its findings through `links = "spdk"` metadata:
//! `DEP_SPDK_PRESENT` and `DEP_SPDK_INCLUDE`.

fn main() {
    println!("cargo::rustc-check-cfg=cfg(spdk_present)");
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=shim/shim.c");
    #[cfg(feature = "spdk")]
    shim();
}

#[cfg(feature = "spdk")]
fn shim() {
    if std::env::var("DEP_SPDK_PRESENT").as_deref() != Ok("1") {
        return;
    }
    let mut build = cc::Build::new();
    build
        .file("shim/shim.c")
        .warnings(true)
        .extra_warnings(true)
        .flag_if_supported("-Wno-unused-parameter")
        .flag_if_supported("-Wno-missing-field-initializers");
    if let Some(inc) = std::env::var_os("DEP_SPDK_INCLUDE") {
        for dir in std::env::split_paths(&inc) {
            build.include(dir);
        }
    }
    if cfg!(target_arch = "x86_64") {
        // SPDK's headers use SSE4.2 intrinsics (e.g. crc32c) behind this baseline.
        build.flag_if_supported("-march=native");
    }
    build.compile("blobcask_ffi_shim");
    println!("cargo:rustc-cfg=spdk_present");
}
