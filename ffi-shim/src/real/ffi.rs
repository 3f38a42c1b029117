//! Declarations of the C shim (`shim/shim.c`). Opaque SPDK objects travel as `*mut c_void`;
//! their real types are in `spdk_sys`.

use std::ffi::{c_char, c_int, c_void};

/// The Rust completion function the shim calls for every callback.
pub type CompleteFn =
    unsafe extern "C" fn(rec: *mut c_void, rc: c_int, value: u64, ptr: *mut c_void);

extern "C" {
    pub fn shim_set_complete(f: CompleteFn);
    pub fn shim_spdk_version() -> *const c_char;
    pub fn shim_blobid_invalid() -> u64;
    pub fn shim_atexit(f: extern "C" fn()) -> c_int;
    pub fn shim_env_start(
        name: *const c_char,
        core_mask: *const c_char,
        no_huge: c_int,
        mem_size_mb: c_int,
        no_pci: c_int,
    ) -> c_int;
    pub fn shim_log_level(level: c_int);
    pub fn shim_subsystem_init(rec: *mut c_void);
    pub fn shim_load_config(json: *const c_char, len: usize, rec: *mut c_void);

    pub fn shim_bs_dev_create(bdev_name: *const c_char, dev: *mut *mut c_void) -> c_int;
    pub fn shim_bs_init(
        dev: *mut c_void,
        cluster_sz: u32,
        num_md_pages: u32,
        bstype: *const c_char,
        clear_method: c_int,
        md_page_size: u32,
        rec: *mut c_void,
    );
    pub fn shim_bs_load(
        dev: *mut c_void,
        bstype: *const c_char,
        force_recover: c_int,
        rec: *mut c_void,
    );
    pub fn shim_bs_unload(bs: *mut c_void, rec: *mut c_void);
    pub fn shim_bs_set_super(bs: *mut c_void, id: u64, rec: *mut c_void);
    pub fn shim_bs_grow_live(bs: *mut c_void, rec: *mut c_void);
    pub fn shim_bs_get_super(bs: *mut c_void, rec: *mut c_void);
    pub fn shim_bs_get_bstype(bs: *mut c_void, out: *mut c_char);

    #[allow(clippy::too_many_arguments)]
    pub fn shim_create_blob(
        bs: *mut c_void,
        num_clusters: u64,
        thin: c_int,
        extent_table: c_int,
        clear_method: c_int,
        n_xattrs: usize,
        names: *const *const c_char,
        values: *const *const c_void,
        lens: *const usize,
        rec: *mut c_void,
    );
    pub fn shim_open_blob(bs: *mut c_void, id: u64, rec: *mut c_void);
    pub fn shim_close_blob(blob: *mut c_void, rec: *mut c_void);
    pub fn shim_delete_blob(bs: *mut c_void, id: u64, rec: *mut c_void);
    pub fn shim_resize_blob(blob: *mut c_void, clusters: u64, rec: *mut c_void);
    pub fn shim_sync_md(blob: *mut c_void, rec: *mut c_void);
    pub fn shim_blob_ids(bs: *mut c_void, rec: *mut c_void);
    pub fn shim_free(p: *mut c_void);

    pub fn shim_blob_read(
        blob: *mut c_void,
        ch: *mut c_void,
        buf: *mut c_void,
        offset: u64,
        len: u64,
        rec: *mut c_void,
    );
    pub fn shim_blob_write(
        blob: *mut c_void,
        ch: *mut c_void,
        buf: *mut c_void,
        offset: u64,
        len: u64,
        rec: *mut c_void,
    );
    pub fn shim_blob_unmap(
        blob: *mut c_void,
        ch: *mut c_void,
        offset: u64,
        len: u64,
        rec: *mut c_void,
    );
    pub fn shim_blob_write_zeroes(
        blob: *mut c_void,
        ch: *mut c_void,
        offset: u64,
        len: u64,
        rec: *mut c_void,
    );

    pub fn shim_bdev_open(name: *const c_char, desc: *mut *mut c_void) -> c_int;
    pub fn shim_bdev_close(desc: *mut c_void);
    pub fn shim_bdev_block_size(name: *const c_char) -> u32;
    pub fn shim_bdev_num_blocks(name: *const c_char) -> u64;
    pub fn shim_bdev_flush(desc: *mut c_void, ch: *mut c_void, rec: *mut c_void);
    pub fn shim_bdev_zero_all(name: *const c_char, rec: *mut c_void);
}
