# Sourced by ci/test.sh: finds an SPDK for `--features spdk`.
#
# In order: BLOBCASK_SPDK=off skips SPDK; a PKG_CONFIG_PATH that already finds SPDK is used
# as it is; otherwise the shared build script beside the repository
# (../shared/spdk/build.sh, which reuses a finished build at once) builds or finds one.
# Sets SPDK_PREFIX_PC (SPDK's lib/pkgconfig, also put on PKG_CONFIG_PATH) when SPDK is
# usable, or SPDK_WHY_NOT saying why the SPDK suites will be skipped.

find_spdk() {
    local repo=$1 script
    SPDK_PREFIX_PC=""
    SPDK_WHY_NOT=""
    script="$repo/../shared/spdk/build.sh"
    if [ "${BLOBCASK_SPDK:-auto}" = off ]; then
        SPDK_WHY_NOT="BLOBCASK_SPDK=off"
        return 0
    fi
    if pkg-config --exists spdk_blob_bdev 2>/dev/null; then
        SPDK_PREFIX_PC="$(pkg-config --variable=pcfiledir spdk_blob_bdev)"
        echo "SPDK found through PKG_CONFIG_PATH: $SPDK_PREFIX_PC"
        return 0
    fi
    if [ ! -f "$script" ]; then
        SPDK_WHY_NOT="no SPDK: pkg-config finds none and $(cd "$repo/.." && pwd)/shared/spdk/build.sh is absent (README: With SPDK)"
        return 0
    fi
    echo "building SPDK with ../shared/spdk/build.sh (a finished build is reused)"
    local log prefix
    log="$(mktemp)"
    # Its log goes to a file: a fresh build prints thousands of lines.
    if ! prefix="$(bash "$script" 2>"$log" | tail -1)" || [ -z "$prefix" ]; then
        tail -40 "$log" >&2
        echo "ci: ../shared/spdk/build.sh failed (full log: $log)" >&2
        return 1
    fi
    rm -f "$log"
    SPDK_PREFIX_PC="$prefix/lib/pkgconfig"
    export PKG_CONFIG_PATH="$SPDK_PREFIX_PC${PKG_CONFIG_PATH:+:$PKG_CONFIG_PATH}"
    if ! pkg-config --exists spdk_blob_bdev; then
        echo "ci: $prefix holds no usable SPDK (pkg-config cannot find spdk_blob_bdev)" >&2
        return 1
    fi
    echo "SPDK built in $prefix"
}
