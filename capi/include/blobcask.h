/*
 * blobcask C API. Generated from capi/src/lib.rs by cbindgen; do not edit
 * (`cargo test -p blobcask-capi` fails when this file is stale and says how to renew it).
 *
 * Ownership, in one place:
 * - Every object made by a *_new or *_open function is freed by the matching *_free or
 *   blobcask_close, exactly once; NULL is accepted by every free function.
 * - A value returned by blobcask_get is the caller's: free it with blobcask_free_value.
 * - Pointers a blobcask_iter hands out belong to the iterator and stay valid until the next
 *   call on it or its free.
 * - blobcask_last_error's string belongs to the library and the calling thread; it stays
 *   valid until the next call that fails on that thread.
 * - Inputs (keys, values, paths) are only read during the call.
 *
 * Threads: a blobcask_db may be used from many threads at once; a blobcask_batch, a
 * blobcask_iter and a blobcask_options from one thread at a time.
 */

#ifndef BLOBCASK_H
#define BLOBCASK_H

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

// The result of every call.
typedef enum blobcask_status {
  // Done.
  BLOBCASK_OK = 0,
  // The key has no value (get), or an iterator is at its end.
  BLOBCASK_NOT_FOUND = 1,
  // A NULL pointer, an oversized key or value, or an option out of range.
  BLOBCASK_INVALID_ARGUMENT = 2,
  // The device failed a read, write or flush.
  BLOBCASK_IO = 3,
  // Bytes on the device do not hold what was written (reported, never served).
  BLOBCASK_CORRUPTION = 4,
  // The device is full (deletes and merge make room).
  BLOBCASK_NO_SPACE = 5,
  // Another process holds the store.
  BLOBCASK_LOCKED = 6,
  // The store was opened read-only.
  BLOBCASK_READ_ONLY = 7,
  // The store is closed, or an earlier write failed and writes are refused until reopened.
  BLOBCASK_CLOSED = 8,
  // The device holds no blobstore, or one this build cannot use.
  BLOBCASK_NOT_A_STORE = 9,
  // Anything else, including a bug caught at the boundary.
  BLOBCASK_INTERNAL = 10,
} blobcask_status;

// When a write is durable (`blobcask_options_set_sync`).
typedef enum blobcask_sync_mode {
  // Acknowledged after the device flush that covers it.
  BLOBCASK_SYNC_ALWAYS = 0,
  // As ALWAYS, gathering concurrent writers into one flush (the default).
  BLOBCASK_SYNC_GROUP = 1,
  // Acknowledged after the device write; durable at the next sync, merge or close.
  BLOBCASK_SYNC_NEVER = 2,
} blobcask_sync_mode;

// Puts and deletes applied atomically by `blobcask_write`.
typedef struct blobcask_batch blobcask_batch;

// An open store.
typedef struct blobcask_db blobcask_db;

// A streaming iteration over live pairs (log order, not key order).
typedef struct blobcask_iter blobcask_iter;

// Options of `blobcask_open`.
typedef struct blobcask_options blobcask_options;

// Statistics of a store (`blobcask_stats`).
typedef struct blobcask_statistics {
  // Live keys.
  uint64_t keys;
  // Bytes of records the keys point at.
  uint64_t live_bytes;
  // Bytes of overwritten and deleted records not yet merged away.
  uint64_t dead_bytes;
  // Key and value bytes written by the application.
  uint64_t user_bytes;
  // Bytes written to the device.
  uint64_t device_bytes;
  // Merges since open.
  uint64_t merges;
  // Clusters of the device, and how many are free.
  uint64_t total_clusters;
  uint64_t free_clusters;
} blobcask_statistics;

#ifdef __cplusplus
extern "C" {
#endif // __cplusplus

// The message of the last call that failed on this thread ("" if none). Owned by the
// library; valid until the next failing call on this thread.
const char *blobcask_last_error(void);

// The library version ("major.minor.patch"), a static string.
const char *blobcask_version(void);

// New options for the image file or block device at `path` (a NUL-terminated string):
// create it if missing (1 GiB image), group commit, shards = cores, the default cache.
// NULL if `path` is NULL or not UTF-8. Free with `blobcask_options_free`.
//
// # Safety
// `path` must be NULL or a NUL-terminated string.
struct blobcask_options *blobcask_options_new(const char *path);

// Free options (NULL is ignored).
//
// # Safety
// `opts` must be NULL or come from `blobcask_options_new`, freed once.
void blobcask_options_free(struct blobcask_options *opts);

// Create the image file (and format it) when it does not exist. Default: 1.
//
// # Safety
// `opts` must be NULL or live.
enum blobcask_status blobcask_options_set_create(struct blobcask_options *opts, bool create);

// Open for reading only (shared lock; every write fails BLOBCASK_READ_ONLY; nothing is
// written to the device). Default: 0.
//
// # Safety
// `opts` must be NULL or live.
enum blobcask_status blobcask_options_set_read_only(struct blobcask_options *opts, bool read_only);

// Size of an image file created by open, in bytes. Default: 1 GiB.
//
// # Safety
// `opts` must be NULL or live.
enum blobcask_status blobcask_options_set_device_size(struct blobcask_options *opts,
                                                      uint64_t bytes);

// Shards of a new store (an existing store keeps its count). Default: the cores.
//
// # Safety
// `opts` must be NULL or live.
enum blobcask_status blobcask_options_set_shards(struct blobcask_options *opts, size_t shards);

// Read cache bytes (0 disables it). Default: a sixteenth of memory, 32 MiB..1 GiB.
//
// # Safety
// `opts` must be NULL or live.
enum blobcask_status blobcask_options_set_cache_bytes(struct blobcask_options *opts, size_t bytes);

// When writes are durable. Default: BLOBCASK_SYNC_GROUP.
//
// # Safety
// `opts` must be NULL or live.
enum blobcask_status blobcask_options_set_sync(struct blobcask_options *opts,
                                               enum blobcask_sync_mode sync);

// Open (or create) the store `opts` describes; `*out` receives the handle (close it with
// `blobcask_close`). On failure `*out` is NULL and nothing on the device changed.
//
// # Safety
// `opts` must be NULL or live; `out` must be NULL or writable.
enum blobcask_status blobcask_open(const struct blobcask_options *opts, struct blobcask_db **out);

// Flush, write hints and unload cleanly, then free the handle (also on failure; NULL is
// ignored). Iterators still open keep the store readable until they are freed.
//
// # Safety
// `db` must be NULL or come from `blobcask_open`, closed once, with no call on it running.
enum blobcask_status blobcask_close(struct blobcask_db *db);

// Store `value` under `key` (keys up to 1024 bytes, values up to 16 MiB by default).
//
// # Safety
// `db` must be NULL or live; `key`/`value` readable for their lengths.
enum blobcask_status blobcask_put(const struct blobcask_db *db,
                                  const uint8_t *key,
                                  size_t key_len,
                                  const uint8_t *value,
                                  size_t value_len);

// Delete `key` (deleting a missing key is not an error).
//
// # Safety
// `db` must be NULL or live; `key` readable for `key_len` bytes.
enum blobcask_status blobcask_delete(const struct blobcask_db *db,
                                     const uint8_t *key,
                                     size_t key_len);

// The value of `key`: BLOBCASK_OK with `*value`/`*value_len` set (free the value with
// `blobcask_free_value`), or BLOBCASK_NOT_FOUND with `*value` NULL.
//
// # Safety
// `db` must be NULL or live; `key` readable; `value`, `value_len` NULL or writable.
enum blobcask_status blobcask_get(const struct blobcask_db *db,
                                  const uint8_t *key,
                                  size_t key_len,
                                  uint8_t **value,
                                  size_t *value_len);

// Free a value returned by `blobcask_get` (NULL is ignored); `len` is the length it came
// with.
//
// # Safety
// `value` must be NULL or a value from `blobcask_get` with its length, freed once.
void blobcask_free_value(uint8_t *value, size_t len);

// A new, empty batch. Free with `blobcask_batch_free`.
struct blobcask_batch *blobcask_batch_new(void);

// Free a batch (NULL is ignored).
//
// # Safety
// `batch` must be NULL or come from `blobcask_batch_new`, freed once.
void blobcask_batch_free(struct blobcask_batch *batch);

// Add a put to the batch (the bytes are copied).
//
// # Safety
// `batch` must be NULL or live; `key`/`value` readable for their lengths.
enum blobcask_status blobcask_batch_put(struct blobcask_batch *batch,
                                        const uint8_t *key,
                                        size_t key_len,
                                        const uint8_t *value,
                                        size_t value_len);

// Add a delete to the batch.
//
// # Safety
// `batch` must be NULL or live; `key` readable for `key_len` bytes.
enum blobcask_status blobcask_batch_delete(struct blobcask_batch *batch,
                                           const uint8_t *key,
                                           size_t key_len);

// Apply every operation of the batch atomically (all or none, also across a crash). The
// batch is left as it was; `blobcask_batch_clear` empties it for reuse.
//
// # Safety
// `db` and `batch` must be NULL or live.
enum blobcask_status blobcask_write(const struct blobcask_db *db,
                                    const struct blobcask_batch *batch);

// Empty the batch.
//
// # Safety
// `batch` must be NULL or live.
enum blobcask_status blobcask_batch_clear(struct blobcask_batch *batch);

// Operations in the batch (0 for NULL).
//
// # Safety
// `batch` must be NULL or live.
size_t blobcask_batch_count(const struct blobcask_batch *batch);

// Start iterating the live pairs whose key starts with `prefix` (`prefix_len` 0: every
// pair), in log order. `*out` receives the iterator (free it with `blobcask_iter_free`).
//
// # Safety
// `db` must be NULL or live; `prefix` readable; `out` NULL or writable.
enum blobcask_status blobcask_iter_new(const struct blobcask_db *db,
                                       const uint8_t *prefix,
                                       size_t prefix_len,
                                       struct blobcask_iter **out);

// The next pair: BLOBCASK_OK with the four outputs set (the bytes belong to the iterator
// and stay valid until the next call on it), BLOBCASK_NOT_FOUND at the end, or an error for
// the records it concerns (BLOBCASK_CORRUPTION: a damaged record, never served; the next
// call goes on with the others).
//
// # Safety
// `it` must be NULL or live; the outputs NULL or writable.
enum blobcask_status blobcask_iter_next(struct blobcask_iter *it,
                                        const uint8_t **key,
                                        size_t *key_len,
                                        const uint8_t **value,
                                        size_t *value_len);

// Free an iterator (NULL is ignored).
//
// # Safety
// `it` must be NULL or come from `blobcask_iter_new`, freed once.
void blobcask_iter_free(struct blobcask_iter *it);

// Make every acknowledged write durable.
//
// # Safety
// `db` must be NULL or live.
enum blobcask_status blobcask_sync(const struct blobcask_db *db);

// Rewrite the live records of every shard and free what is dead (blocks until done).
//
// # Safety
// `db` must be NULL or live.
enum blobcask_status blobcask_merge(const struct blobcask_db *db);

// Fill `*out` with the store's statistics.
//
// # Safety
// `db` must be NULL or live; `out` NULL or writable.
enum blobcask_status blobcask_stats(const struct blobcask_db *db, struct blobcask_statistics *out);

// A short, static description of a status.
const char *blobcask_status_name(enum blobcask_status status);

#ifdef __cplusplus
}  // extern "C"
#endif  // __cplusplus

#endif  /* BLOBCASK_H */
