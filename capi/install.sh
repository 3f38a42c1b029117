#!/usr/bin/env bash
# Install the C library: header, static and shared library, pkg-config file.
#
#   bash capi/install.sh PREFIX [LIBDIR]
#
# LIBDIR holds libblobcask_c.{a,so} of a build (default: builds them with
# `cargo build --release -p blobcask-capi` and takes target/release). Then
# `cc app.c $(pkg-config --cflags --libs blobcask)` with PKG_CONFIG_PATH=PREFIX/lib/pkgconfig
# (add --static to link the static library).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
prefix="${1:?usage: install.sh PREFIX [LIBDIR]}"
libdir="${2:-}"
if [ -z "$libdir" ]; then
    (cd "$here/.." && cargo build --release -p blobcask-capi)
    libdir="${CARGO_TARGET_DIR:-$here/../target}/release"
fi
version="$(sed -n 's/^version = "\(.*\)"/\1/p' "$here/../Cargo.toml" | head -1)"
mkdir -p "$prefix/include" "$prefix/lib/pkgconfig"
install -m 644 "$here/include/blobcask.h" "$prefix/include/"
install -m 644 "$libdir/libblobcask_c.a" "$prefix/lib/"
if [ -f "$libdir/libblobcask_c.so" ]; then
    install -m 755 "$libdir/libblobcask_c.so" "$prefix/lib/"
fi
sed -e "s|@PREFIX@|$prefix|" -e "s|@VERSION@|${version:-0.0.0}|" \
    "$here/blobcask.pc.in" > "$prefix/lib/pkgconfig/blobcask.pc"
echo "installed blobcask $version into $prefix"
