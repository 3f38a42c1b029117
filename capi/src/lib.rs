//! The C API of blobcask: open a store, put/get/delete, batches, iteration, sync, merge and
//! statistics, with a status code per call and a message per failure. `include/blobcask.h`
//! is generated from this file by cbindgen (its header comment states who frees what).
//!
//! Every entry point checks its pointers, never unwinds into C (a panic becomes
//! `BLOBCASK_INTERNAL`), and leaves a message for [`blobcask_last_error`] when it fails.
#![allow(non_camel_case_types)]

use std::cell::RefCell;
use std::ffi::{c_char, CStr, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;
use std::time::Duration;

use blobcask::{Db, DeviceSpec, Error, Options, SyncPolicy, WriteBatch};

/// The result of every call.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum blobcask_status {
    /// Done.
    BLOBCASK_OK = 0,
    /// The key has no value (get), or an iterator is at its end.
    BLOBCASK_NOT_FOUND = 1,
    /// A NULL pointer, an oversized key or value, or an option out of range.
    BLOBCASK_INVALID_ARGUMENT = 2,
    /// The device failed a read, write or flush.
    BLOBCASK_IO = 3,
    /// Bytes on the device do not hold what was written (reported, never served).
    BLOBCASK_CORRUPTION = 4,
    /// The device is full (deletes and merge make room).
    BLOBCASK_NO_SPACE = 5,
    /// Another process holds the store.
    BLOBCASK_LOCKED = 6,
    /// The store was opened read-only.
    BLOBCASK_READ_ONLY = 7,
    /// The store is closed, or an earlier write failed and writes are refused until reopened.
    BLOBCASK_CLOSED = 8,
    /// The device holds no blobstore, or one this build cannot use.
    BLOBCASK_NOT_A_STORE = 9,
    /// Anything else, including a bug caught at the boundary.
    BLOBCASK_INTERNAL = 10,
}

use blobcask_status::*;

/// When a write is durable (`blobcask_options_set_sync`).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum blobcask_sync_mode {
    /// Acknowledged after the device flush that covers it.
    BLOBCASK_SYNC_ALWAYS = 0,
    /// As ALWAYS, gathering concurrent writers into one flush (the default).
    BLOBCASK_SYNC_GROUP = 1,
    /// Acknowledged after the device write; durable at the next sync, merge or close.
    BLOBCASK_SYNC_NEVER = 2,
}

/// Options of `blobcask_open`.
pub struct blobcask_options {
    path: PathBuf,
    create: bool,
    read_only: bool,
    device_size: u64,
    shards: usize,
    cache_bytes: Option<usize>,
    sync: blobcask_sync_mode,
}

/// An open store.
pub struct blobcask_db {
    db: Db,
}

/// Puts and deletes applied atomically by `blobcask_write`.
pub struct blobcask_batch {
    batch: WriteBatch,
}

/// A streaming iteration over live pairs (log order, not key order).
pub struct blobcask_iter {
    it: blobcask::Iter,
}

/// Statistics of a store (`blobcask_stats`).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct blobcask_statistics {
    /// Live keys.
    pub keys: u64,
    /// Bytes of records the keys point at.
    pub live_bytes: u64,
    /// Bytes of overwritten and deleted records not yet merged away.
    pub dead_bytes: u64,
    /// Key and value bytes written by the application.
    pub user_bytes: u64,
    /// Bytes written to the device.
    pub device_bytes: u64,
    /// Merges since open.
    pub merges: u64,
    /// Clusters of the device, and how many are free.
    pub total_clusters: u64,
    pub free_clusters: u64,
}

thread_local! {
    static LAST_ERROR: RefCell<CString> = RefCell::new(CString::default());
}

fn set_error(msg: &str) {
    let c = CString::new(msg.replace('\0', " ")).unwrap_or_default();
    LAST_ERROR.with(|e| *e.borrow_mut() = c);
}

fn status_of(e: &Error) -> blobcask_status {
    match e {
        Error::InvalidArgument(_) | Error::KeyTooLarge { .. } | Error::ValueTooLarge { .. } => {
            BLOBCASK_INVALID_ARGUMENT
        }
        Error::Full | Error::NoMetadataSpace(_) => BLOBCASK_NO_SPACE,
        Error::Corruption { .. } | Error::DamagedLog { .. } => BLOBCASK_CORRUPTION,
        Error::Locked(_) | Error::Busy(_) => BLOBCASK_LOCKED,
        Error::ReadOnly(_) => BLOBCASK_READ_ONLY,
        Error::Closed | Error::Poisoned | Error::BadHandle => BLOBCASK_CLOSED,
        Error::NotABlobstore(_) | Error::BstypeMismatch { .. } | Error::Unsupported(_) => {
            BLOBCASK_NOT_A_STORE
        }
        Error::Io(_) | Error::Device(_) | Error::Blobstore(_) => BLOBCASK_IO,
        _ => BLOBCASK_INTERNAL,
    }
}

/// Run `f`, turning an error or a panic into a status and a message.
fn guard(f: impl FnOnce() -> Result<blobcask_status, Failure>) -> blobcask_status {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(s)) => s,
        Ok(Err(Failure(status, msg))) => {
            set_error(&msg);
            status
        }
        Err(_) => {
            set_error("internal error: a panic was caught at the C boundary");
            BLOBCASK_INTERNAL
        }
    }
}

/// A failed call: its status and message.
struct Failure(blobcask_status, String);

impl From<Error> for Failure {
    fn from(e: Error) -> Self {
        let mut msg = e.to_string();
        let mut src = std::error::Error::source(&e);
        while let Some(s) = src {
            msg.push_str(": ");
            msg.push_str(&s.to_string());
            src = s.source();
        }
        Failure(status_of(&e), msg)
    }
}

fn invalid(what: &str) -> Failure {
    Failure(BLOBCASK_INVALID_ARGUMENT, what.to_string())
}

/// The bytes at `ptr`, `len` long (`ptr` may be NULL when `len` is 0).
///
/// # Safety
/// `ptr` must be valid for reads of `len` bytes for the duration of the call.
unsafe fn bytes<'a>(ptr: *const u8, len: usize, what: &str) -> Result<&'a [u8], Failure> {
    if len == 0 {
        return Ok(&[]);
    }
    if ptr.is_null() {
        return Err(invalid(&format!("{what} is NULL with length {len}")));
    }
    // SAFETY: non-null, and the caller promises `len` readable bytes.
    Ok(unsafe { std::slice::from_raw_parts(ptr, len) })
}

/// # Safety
/// `p` must be NULL or point at a live object made by this library.
unsafe fn obj<'a, T>(p: *const T, what: &str) -> Result<&'a T, Failure> {
    // SAFETY: the caller promises a live object or NULL.
    unsafe { p.as_ref() }.ok_or_else(|| invalid(&format!("{what} is NULL")))
}

/// # Safety
/// As [`obj`], and no other reference to the object is in use.
unsafe fn obj_mut<'a, T>(p: *mut T, what: &str) -> Result<&'a mut T, Failure> {
    // SAFETY: the caller promises a live, unaliased object or NULL.
    unsafe { p.as_mut() }.ok_or_else(|| invalid(&format!("{what} is NULL")))
}

/// Free a `Box` this library handed out as a raw pointer (NULL is ignored).
///
/// # Safety
/// `p` must be NULL or come from `Box::into_raw`, freed once.
unsafe fn free_box<T>(p: *mut T) {
    if !p.is_null() {
        // SAFETY: the caller's promise.
        drop(unsafe { Box::from_raw(p) });
    }
}

/// Change one option.
///
/// # Safety
/// As [`obj_mut`].
unsafe fn set_option(
    opts: *mut blobcask_options,
    f: impl FnOnce(&mut blobcask_options),
) -> blobcask_status {
    guard(|| {
        // SAFETY: the caller's promise.
        f(unsafe { obj_mut(opts, "options") }?);
        Ok(BLOBCASK_OK)
    })
}

/// The message of the last call that failed on this thread ("" if none). Owned by the
/// library; valid until the next failing call on this thread.
#[no_mangle]
pub extern "C" fn blobcask_last_error() -> *const c_char {
    LAST_ERROR.with(|e| e.borrow().as_ptr())
}

/// The library version ("major.minor.patch"), a static string.
#[no_mangle]
pub extern "C" fn blobcask_version() -> *const c_char {
    static V: &str = concat!(env!("CARGO_PKG_VERSION"), "\0");
    V.as_ptr().cast()
}

/// New options for the image file or block device at `path` (a NUL-terminated string):
/// create it if missing (1 GiB image), group commit, shards = cores, the default cache.
/// NULL if `path` is NULL or not UTF-8. Free with `blobcask_options_free`.
///
/// # Safety
/// `path` must be NULL or a NUL-terminated string.
#[no_mangle]
pub unsafe extern "C" fn blobcask_options_new(path: *const c_char) -> *mut blobcask_options {
    if path.is_null() {
        set_error("path is NULL");
        return std::ptr::null_mut();
    }
    // SAFETY: non-null and NUL-terminated by the caller's promise.
    let Ok(p) = unsafe { CStr::from_ptr(path) }.to_str() else {
        set_error("path is not UTF-8");
        return std::ptr::null_mut();
    };
    let d = Options::default();
    Box::into_raw(Box::new(blobcask_options {
        path: PathBuf::from(p),
        create: true,
        read_only: false,
        device_size: d.device_size,
        shards: d.shards,
        cache_bytes: None,
        sync: blobcask_sync_mode::BLOBCASK_SYNC_GROUP,
    }))
}

/// Free options (NULL is ignored).
///
/// # Safety
/// `opts` must be NULL or come from `blobcask_options_new`, freed once.
#[no_mangle]
pub unsafe extern "C" fn blobcask_options_free(opts: *mut blobcask_options) {
    // SAFETY: made by `blobcask_options_new` (or NULL), freed once.
    unsafe { free_box(opts) }
}

/// Create the image file (and format it) when it does not exist. Default: 1.
///
/// # Safety
/// `opts` must be NULL or live.
#[no_mangle]
pub unsafe extern "C" fn blobcask_options_set_create(
    opts: *mut blobcask_options,
    create: bool,
) -> blobcask_status {
    // SAFETY: the caller promises a live object or NULL.
    unsafe { set_option(opts, |o| o.create = create) }
}

/// Open for reading only (shared lock; every write fails BLOBCASK_READ_ONLY; nothing is
/// written to the device). Default: 0.
///
/// # Safety
/// `opts` must be NULL or live.
#[no_mangle]
pub unsafe extern "C" fn blobcask_options_set_read_only(
    opts: *mut blobcask_options,
    read_only: bool,
) -> blobcask_status {
    // SAFETY: the caller promises a live object or NULL.
    unsafe { set_option(opts, |o| o.read_only = read_only) }
}

/// Size of an image file created by open, in bytes. Default: 1 GiB.
///
/// # Safety
/// `opts` must be NULL or live.
#[no_mangle]
pub unsafe extern "C" fn blobcask_options_set_device_size(
    opts: *mut blobcask_options,
    bytes: u64,
) -> blobcask_status {
    // SAFETY: the caller promises a live object or NULL.
    unsafe { set_option(opts, |o| o.device_size = bytes) }
}

/// Shards of a new store (an existing store keeps its count). Default: the cores.
///
/// # Safety
/// `opts` must be NULL or live.
#[no_mangle]
pub unsafe extern "C" fn blobcask_options_set_shards(
    opts: *mut blobcask_options,
    shards: usize,
) -> blobcask_status {
    if shards == 0 {
        set_error("shards must be at least 1");
        return BLOBCASK_INVALID_ARGUMENT;
    }
    // SAFETY: the caller promises a live object or NULL.
    unsafe { set_option(opts, |o| o.shards = shards) }
}

/// Read cache bytes (0 disables it). Default: a sixteenth of memory, 32 MiB..1 GiB.
///
/// # Safety
/// `opts` must be NULL or live.
#[no_mangle]
pub unsafe extern "C" fn blobcask_options_set_cache_bytes(
    opts: *mut blobcask_options,
    bytes: usize,
) -> blobcask_status {
    // SAFETY: the caller promises a live object or NULL.
    unsafe { set_option(opts, |o| o.cache_bytes = Some(bytes)) }
}

/// When writes are durable. Default: BLOBCASK_SYNC_GROUP.
///
/// # Safety
/// `opts` must be NULL or live.
#[no_mangle]
pub unsafe extern "C" fn blobcask_options_set_sync(
    opts: *mut blobcask_options,
    sync: blobcask_sync_mode,
) -> blobcask_status {
    // SAFETY: the caller promises a live object or NULL.
    unsafe { set_option(opts, |o| o.sync = sync) }
}

/// Open (or create) the store `opts` describes; `*out` receives the handle (close it with
/// `blobcask_close`). On failure `*out` is NULL and nothing on the device changed.
///
/// # Safety
/// `opts` must be NULL or live; `out` must be NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn blobcask_open(
    opts: *const blobcask_options,
    out: *mut *mut blobcask_db,
) -> blobcask_status {
    guard(|| {
        if out.is_null() {
            return Err(invalid("out is NULL"));
        }
        // SAFETY: checked non-null; the caller promises it is writable.
        unsafe { *out = std::ptr::null_mut() };
        // SAFETY: the caller promises a live object or NULL.
        let o = unsafe { obj(opts, "options") }?;
        let mut opts = Options::new(DeviceSpec::Path(o.path.clone()));
        opts.create = o.create && !o.read_only;
        opts.read_only = o.read_only;
        opts.device_size = o.device_size;
        opts.shards = o.shards;
        if let Some(c) = o.cache_bytes {
            opts.cache_bytes = c;
        }
        opts.sync = match o.sync {
            blobcask_sync_mode::BLOBCASK_SYNC_ALWAYS => SyncPolicy::Always,
            blobcask_sync_mode::BLOBCASK_SYNC_GROUP => SyncPolicy::GroupCommit {
                max_delay: Duration::from_micros(200),
            },
            blobcask_sync_mode::BLOBCASK_SYNC_NEVER => SyncPolicy::Never,
        };
        let db = Db::open(opts)?;
        // SAFETY: checked non-null above.
        unsafe { *out = Box::into_raw(Box::new(blobcask_db { db })) };
        Ok(BLOBCASK_OK)
    })
}

/// Flush, write hints and unload cleanly, then free the handle (also on failure; NULL is
/// ignored). Iterators still open keep the store readable until they are freed.
///
/// # Safety
/// `db` must be NULL or come from `blobcask_open`, closed once, with no call on it running.
#[no_mangle]
pub unsafe extern "C" fn blobcask_close(db: *mut blobcask_db) -> blobcask_status {
    if db.is_null() {
        return BLOBCASK_OK;
    }
    // SAFETY: made by `Box::into_raw` in `blobcask_open`, closed once.
    let h = unsafe { Box::from_raw(db) };
    guard(move || {
        h.db.close()?;
        Ok(BLOBCASK_OK)
    })
}

/// Store `value` under `key` (keys up to 1024 bytes, values up to 16 MiB by default).
///
/// # Safety
/// `db` must be NULL or live; `key`/`value` readable for their lengths.
#[no_mangle]
pub unsafe extern "C" fn blobcask_put(
    db: *const blobcask_db,
    key: *const u8,
    key_len: usize,
    value: *const u8,
    value_len: usize,
) -> blobcask_status {
    guard(|| {
        // SAFETY: the caller's promises, as documented.
        let (h, k, v) = unsafe {
            (
                obj(db, "db")?,
                bytes(key, key_len, "key")?,
                bytes(value, value_len, "value")?,
            )
        };
        h.db.put(k, v)?;
        Ok(BLOBCASK_OK)
    })
}

/// Delete `key` (deleting a missing key is not an error).
///
/// # Safety
/// `db` must be NULL or live; `key` readable for `key_len` bytes.
#[no_mangle]
pub unsafe extern "C" fn blobcask_delete(
    db: *const blobcask_db,
    key: *const u8,
    key_len: usize,
) -> blobcask_status {
    guard(|| {
        // SAFETY: the caller's promises, as documented.
        let (h, k) = unsafe { (obj(db, "db")?, bytes(key, key_len, "key")?) };
        h.db.delete(k)?;
        Ok(BLOBCASK_OK)
    })
}

/// The value of `key`: BLOBCASK_OK with `*value`/`*value_len` set (free the value with
/// `blobcask_free_value`), or BLOBCASK_NOT_FOUND with `*value` NULL.
///
/// # Safety
/// `db` must be NULL or live; `key` readable; `value`, `value_len` NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn blobcask_get(
    db: *const blobcask_db,
    key: *const u8,
    key_len: usize,
    value: *mut *mut u8,
    value_len: *mut usize,
) -> blobcask_status {
    guard(|| {
        if value.is_null() || value_len.is_null() {
            return Err(invalid("value or value_len is NULL"));
        }
        // SAFETY: checked non-null; the caller promises they are writable.
        unsafe {
            *value = std::ptr::null_mut();
            *value_len = 0;
        }
        // SAFETY: the caller's promises, as documented.
        let (h, k) = unsafe { (obj(db, "db")?, bytes(key, key_len, "key")?) };
        match h.db.get(k)? {
            None => Ok(BLOBCASK_NOT_FOUND),
            Some(v) => {
                let b = v.into_boxed_slice();
                let len = b.len();
                let p = Box::into_raw(b).cast::<u8>();
                // SAFETY: checked non-null above.
                unsafe {
                    *value = p;
                    *value_len = len;
                }
                Ok(BLOBCASK_OK)
            }
        }
    })
}

/// Free a value returned by `blobcask_get` (NULL is ignored); `len` is the length it came
/// with.
///
/// # Safety
/// `value` must be NULL or a value from `blobcask_get` with its length, freed once.
#[no_mangle]
pub unsafe extern "C" fn blobcask_free_value(value: *mut u8, len: usize) {
    if value.is_null() {
        return;
    }
    let slice = std::ptr::slice_from_raw_parts_mut(value, len);
    // SAFETY: made by `Box::into_raw` of a boxed slice of exactly `len` bytes in
    // `blobcask_get`, freed once.
    drop(unsafe { Box::from_raw(slice) });
}

/// A new, empty batch. Free with `blobcask_batch_free`.
#[no_mangle]
pub extern "C" fn blobcask_batch_new() -> *mut blobcask_batch {
    Box::into_raw(Box::new(blobcask_batch {
        batch: WriteBatch::new(),
    }))
}

/// Free a batch (NULL is ignored).
///
/// # Safety
/// `batch` must be NULL or come from `blobcask_batch_new`, freed once.
#[no_mangle]
pub unsafe extern "C" fn blobcask_batch_free(batch: *mut blobcask_batch) {
    // SAFETY: made by `blobcask_batch_new` (or NULL), freed once.
    unsafe { free_box(batch) }
}

/// Add a put to the batch (the bytes are copied).
///
/// # Safety
/// `batch` must be NULL or live; `key`/`value` readable for their lengths.
#[no_mangle]
pub unsafe extern "C" fn blobcask_batch_put(
    batch: *mut blobcask_batch,
    key: *const u8,
    key_len: usize,
    value: *const u8,
    value_len: usize,
) -> blobcask_status {
    guard(|| {
        // SAFETY: the caller's promises, as documented.
        let (b, k, v) = unsafe {
            (
                obj_mut(batch, "batch")?,
                bytes(key, key_len, "key")?,
                bytes(value, value_len, "value")?,
            )
        };
        b.batch.put(k, v);
        Ok(BLOBCASK_OK)
    })
}

/// Add a delete to the batch.
///
/// # Safety
/// `batch` must be NULL or live; `key` readable for `key_len` bytes.
#[no_mangle]
pub unsafe extern "C" fn blobcask_batch_delete(
    batch: *mut blobcask_batch,
    key: *const u8,
    key_len: usize,
) -> blobcask_status {
    guard(|| {
        // SAFETY: the caller's promises, as documented.
        let (b, k) = unsafe { (obj_mut(batch, "batch")?, bytes(key, key_len, "key")?) };
        b.batch.delete(k);
        Ok(BLOBCASK_OK)
    })
}

/// Apply every operation of the batch atomically (all or none, also across a crash). The
/// batch is left as it was; `blobcask_batch_clear` empties it for reuse.
///
/// # Safety
/// `db` and `batch` must be NULL or live.
#[no_mangle]
pub unsafe extern "C" fn blobcask_write(
    db: *const blobcask_db,
    batch: *const blobcask_batch,
) -> blobcask_status {
    guard(|| {
        // SAFETY: the caller's promises, as documented.
        let (h, b) = unsafe { (obj(db, "db")?, obj(batch, "batch")?) };
        h.db.write_batch(b.batch.clone())?;
        Ok(BLOBCASK_OK)
    })
}

/// Empty the batch.
///
/// # Safety
/// `batch` must be NULL or live.
#[no_mangle]
pub unsafe extern "C" fn blobcask_batch_clear(batch: *mut blobcask_batch) -> blobcask_status {
    guard(|| {
        // SAFETY: the caller's promise, as documented.
        unsafe { obj_mut(batch, "batch") }?.batch.clear();
        Ok(BLOBCASK_OK)
    })
}

/// Operations in the batch (0 for NULL).
///
/// # Safety
/// `batch` must be NULL or live.
#[no_mangle]
pub unsafe extern "C" fn blobcask_batch_count(batch: *const blobcask_batch) -> usize {
    // SAFETY: the caller's promise, as documented.
    unsafe { batch.as_ref() }.map_or(0, |b| b.batch.len())
}

/// Start iterating the live pairs whose key starts with `prefix` (`prefix_len` 0: every
/// pair), in log order. `*out` receives the iterator (free it with `blobcask_iter_free`).
///
/// # Safety
/// `db` must be NULL or live; `prefix` readable; `out` NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn blobcask_iter_new(
    db: *const blobcask_db,
    prefix: *const u8,
    prefix_len: usize,
    out: *mut *mut blobcask_iter,
) -> blobcask_status {
    guard(|| {
        if out.is_null() {
            return Err(invalid("out is NULL"));
        }
        // SAFETY: checked non-null; the caller promises it is writable.
        unsafe { *out = std::ptr::null_mut() };
        // SAFETY: the caller's promises, as documented.
        let (h, p) = unsafe { (obj(db, "db")?, bytes(prefix, prefix_len, "prefix")?) };
        let it = h.db.iter_prefix(p)?;
        // SAFETY: checked non-null above.
        unsafe { *out = Box::into_raw(Box::new(blobcask_iter { it })) };
        Ok(BLOBCASK_OK)
    })
}

/// The next pair: BLOBCASK_OK with the four outputs set (the bytes belong to the iterator
/// and stay valid until the next call on it), BLOBCASK_NOT_FOUND at the end, or an error for
/// the records it concerns (BLOBCASK_CORRUPTION: a damaged record, never served; the next
/// call goes on with the others).
///
/// # Safety
/// `it` must be NULL or live; the outputs NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn blobcask_iter_next(
    it: *mut blobcask_iter,
    key: *mut *const u8,
    key_len: *mut usize,
    value: *mut *const u8,
    value_len: *mut usize,
) -> blobcask_status {
    guard(|| {
        if key.is_null() || key_len.is_null() || value.is_null() || value_len.is_null() {
            return Err(invalid("an output pointer is NULL"));
        }
        // SAFETY: the caller's promise, as documented.
        let i = unsafe { obj_mut(it, "iterator") }?;
        match i.it.next_pair() {
            None => Ok(BLOBCASK_NOT_FOUND),
            Some(Err(e)) => Err(e.into()),
            Some(Ok((k, v))) => {
                // SAFETY: checked non-null above; the caller promises they are writable.
                unsafe {
                    *key = k.as_ptr();
                    *key_len = k.len();
                    *value = v.as_ptr();
                    *value_len = v.len();
                }
                Ok(BLOBCASK_OK)
            }
        }
    })
}

/// Free an iterator (NULL is ignored).
///
/// # Safety
/// `it` must be NULL or come from `blobcask_iter_new`, freed once.
#[no_mangle]
pub unsafe extern "C" fn blobcask_iter_free(it: *mut blobcask_iter) {
    // SAFETY: made by `blobcask_iter_new` (or NULL), freed once.
    unsafe { free_box(it) }
}

/// Make every acknowledged write durable.
///
/// # Safety
/// `db` must be NULL or live.
#[no_mangle]
pub unsafe extern "C" fn blobcask_sync(db: *const blobcask_db) -> blobcask_status {
    guard(|| {
        // SAFETY: the caller's promise, as documented.
        unsafe { obj(db, "db") }?.db.sync()?;
        Ok(BLOBCASK_OK)
    })
}

/// Rewrite the live records of every shard and free what is dead (blocks until done).
///
/// # Safety
/// `db` must be NULL or live.
#[no_mangle]
pub unsafe extern "C" fn blobcask_merge(db: *const blobcask_db) -> blobcask_status {
    guard(|| {
        // SAFETY: the caller's promise, as documented.
        unsafe { obj(db, "db") }?.db.merge()?;
        Ok(BLOBCASK_OK)
    })
}

/// Fill `*out` with the store's statistics.
///
/// # Safety
/// `db` must be NULL or live; `out` NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn blobcask_stats(
    db: *const blobcask_db,
    out: *mut blobcask_statistics,
) -> blobcask_status {
    guard(|| {
        // SAFETY: the caller's promises, as documented.
        let (h, o) = unsafe { (obj(db, "db")?, obj_mut(out, "out")?) };
        let s = h.db.stats()?;
        *o = blobcask_statistics {
            keys: s.keys,
            live_bytes: s.live_bytes,
            dead_bytes: s.dead_bytes,
            user_bytes: s.user_bytes,
            device_bytes: s.device_bytes,
            merges: s.merges,
            total_clusters: s.total_clusters,
            free_clusters: s.free_clusters,
        };
        Ok(BLOBCASK_OK)
    })
}

/// A short, static description of a status.
#[no_mangle]
pub extern "C" fn blobcask_status_name(status: blobcask_status) -> *const c_char {
    let s: &'static str = match status {
        BLOBCASK_OK => "ok\0",
        BLOBCASK_NOT_FOUND => "not found\0",
        BLOBCASK_INVALID_ARGUMENT => "invalid argument\0",
        BLOBCASK_IO => "I/O error\0",
        BLOBCASK_CORRUPTION => "corruption\0",
        BLOBCASK_NO_SPACE => "no space\0",
        BLOBCASK_LOCKED => "locked by another process\0",
        BLOBCASK_READ_ONLY => "read-only\0",
        BLOBCASK_CLOSED => "closed\0",
        BLOBCASK_NOT_A_STORE => "not a blobcask store\0",
        BLOBCASK_INTERNAL => "internal error\0",
    };
    s.as_ptr().cast()
}
