/* The SPDK headers spdk-sys binds. Bindgen allowlists in build.rs pick what is exported. */
#include <spdk/stdinc.h>
#include <spdk/env.h>
#include <spdk/thread.h>
#include <spdk/log.h>
#include <spdk/blob.h>
#include <spdk/blob_bdev.h>
#include <spdk/bdev.h>
#include <spdk/init.h>
#include <spdk/json.h>
#include <spdk/version.h>
