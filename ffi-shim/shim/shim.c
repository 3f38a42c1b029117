/*
 * blobcask ffi-shim: the C side of the bridge between SPDK callbacks and Rust futures.
 *
 * SPDK reports completions through several callback shapes (cb_arg, bserrno), (cb_arg, id,
 * bserrno), (cb_arg, handle, bserrno), (rc, ctx), (bdev_io, success, ctx). Every trampoline
 * here funnels them into one Rust function, ffi_shim_complete(record, rc, value, ptr), where
 * `record` is the reference-counted completion record the Rust side handed us as cb_arg.
 * The shim also fills SPDK option structs (whose layout and opts_size rules we keep out of
 * Rust) and wraps macros that bindgen cannot see.
 *
 * Every function here must be called on the SPDK thread the Rust side documents (the
 * metadata thread for store and blob metadata calls, a channel's thread for its I/O).
 */

#include <spdk/stdinc.h>
#include <spdk/env.h>
#include <spdk/thread.h>
#include <spdk/log.h>
#include <spdk/blob.h>
#include <spdk/blob_bdev.h>
#include <spdk/bdev.h>
#include <spdk/init.h>
#include <spdk/rpc.h>
#include <spdk/version.h>

/* The Rust completion function (ffi-shim/src/real/completion.rs), registered once at start-up
 * with shim_set_complete so that this file has no link-time reference into Rust. It consumes
 * the one reference of `rec` that was handed to SPDK as cb_arg. */
typedef void (*shim_complete_fn)(void *rec, int rc, uint64_t value, void *ptr);
static shim_complete_fn g_complete;

void
shim_set_complete(shim_complete_fn fn)
{
	g_complete = fn;
}

static void
ffi_shim_complete(void *rec, int rc, uint64_t value, void *ptr)
{
	if (rec != NULL) {
		g_complete(rec, rc, value, ptr);
	}
}

/* ---- trampolines ------------------------------------------------------------------- */

static void
tr_op(void *rec, int bserrno)
{
	ffi_shim_complete(rec, bserrno, 0, NULL);
}

static void
noop_op(void *arg, int bserrno)
{
	(void)arg;
	(void)bserrno;
}

static void
tr_id(void *rec, spdk_blob_id id, int bserrno)
{
	ffi_shim_complete(rec, bserrno, id, NULL);
}

static void
tr_blob(void *rec, struct spdk_blob *blob, int bserrno)
{
	ffi_shim_complete(rec, bserrno, 0, blob);
}

static void
tr_bs(void *rec, struct spdk_blob_store *bs, int bserrno)
{
	ffi_shim_complete(rec, bserrno, 0, bs);
}

static void
tr_bdev_io(struct spdk_bdev_io *io, bool success, void *rec)
{
	spdk_bdev_free_io(io);
	ffi_shim_complete(rec, success ? 0 : -EIO, 0, NULL);
}

static void
tr_subsystem_init(int rc, void *rec)
{
	if (rc == 0) {
		/* Without spdk_app_start nobody moves the RPC layer to its runtime state; bdev
		 * construction methods (bdev_malloc_create, bdev_aio_create, ...) need it. */
		spdk_rpc_set_state(SPDK_RPC_RUNTIME);
	}
	ffi_shim_complete(rec, rc, 0, NULL);
}

static void
tr_config(int rc, void *rec)
{
	ffi_shim_complete(rec, rc, 0, NULL);
}

static void
tr_fini(void *rec)
{
	ffi_shim_complete(rec, 0, 0, NULL);
}

/* Hot-remove and resize events of the bdevs we open. We only log them: the store keeps its
 * descriptor until unload, and I/O to a removed bdev fails with -EIO / -ENODEV. */
static void
bdev_event(enum spdk_bdev_event_type type, struct spdk_bdev *bdev, void *ctx)
{
	(void)ctx;
	SPDK_NOTICELOG("blobcask: bdev %s event %d\n", spdk_bdev_get_name(bdev), (int)type);
}

/* ---- environment --------------------------------------------------------------------- */

const char *
shim_spdk_version(void)
{
	return SPDK_VERSION_STRING;
}

/* Run `fn` at exit(), before the destructors of SPDK's and DPDK's libraries: the reactor
 * must stop polling before they tear down what it polls. */
int
shim_atexit(void (*fn)(void))
{
	return atexit(fn);
}

uint64_t
shim_blobid_invalid(void)
{
	return SPDK_BLOBID_INVALID;
}

int
shim_env_start(const char *name, const char *core_mask, int no_huge, int mem_size_mb,
	       int no_pci)
{
	struct spdk_env_opts opts;

	memset(&opts, 0, sizeof(opts));
	opts.opts_size = sizeof(opts);
	spdk_env_opts_init(&opts);
	opts.name = name;
	opts.core_mask = core_mask;
	opts.no_huge = no_huge != 0;
	if (mem_size_mb > 0) {
		opts.mem_size = mem_size_mb;
	}
	opts.no_pci = no_pci != 0;
	/* Unlink hugepage files right after mapping them: a killed process then leaks none. */
	opts.unlink_hugepage = !opts.no_huge;
	return spdk_env_init(&opts);
}

void
shim_log_level(int print_level)
{
	spdk_log_set_print_level((enum spdk_log_level)print_level);
	spdk_log_set_level((enum spdk_log_level)print_level);
}

void
shim_subsystem_init(void *rec)
{
	spdk_subsystem_init(tr_subsystem_init, rec);
}

void
shim_subsystem_fini(void *rec)
{
	spdk_subsystem_fini(tr_fini, rec);
}

/* `json` is copied by SPDK before this returns. */
void
shim_load_config(const char *json, size_t len, void *rec)
{
	spdk_subsystem_load_config((void *)json, (ssize_t)len, tr_config, rec, true);
}

/* ---- blobstore ----------------------------------------------------------------------- */

int
shim_bs_dev_create(const char *bdev_name, struct spdk_bs_dev **dev)
{
	return spdk_bdev_create_bs_dev_ext(bdev_name, bdev_event, NULL, dev);
}

void
shim_bs_dev_destroy(struct spdk_bs_dev *dev)
{
	dev->destroy(dev);
}

/* num_md_pages 0 = SPDK's default (one per cluster); md_page_size 0 = automatic. */
void
shim_bs_init(struct spdk_bs_dev *dev, uint32_t cluster_sz, uint32_t num_md_pages,
	     const char *bstype, int clear_method, uint32_t md_page_size, void *rec)
{
	struct spdk_bs_opts opts;

	spdk_bs_opts_init(&opts, sizeof(opts));
	opts.cluster_sz = cluster_sz;
	if (num_md_pages != 0) {
		opts.num_md_pages = num_md_pages;
	}
	memcpy(opts.bstype.bstype, bstype, SPDK_BLOBSTORE_TYPE_LENGTH);
	opts.clear_method = (enum bs_clear_method)clear_method;
	if (md_page_size != 0) {
		opts.md_page_size = md_page_size;
	}
	spdk_bs_init(dev, &opts, tr_bs, rec);
}

void
shim_bs_load(struct spdk_bs_dev *dev, const char *bstype, int force_recover, void *rec)
{
	struct spdk_bs_opts opts;

	spdk_bs_opts_init(&opts, sizeof(opts));
	memcpy(opts.bstype.bstype, bstype, SPDK_BLOBSTORE_TYPE_LENGTH);
	opts.force_recover = force_recover ? 1 : 0;
	spdk_bs_load(dev, &opts, tr_bs, rec);
}

void
shim_bs_unload(struct spdk_blob_store *bs, void *rec)
{
	spdk_bs_unload(bs, tr_op, rec);
}

void
shim_bs_set_super(struct spdk_blob_store *bs, uint64_t id, void *rec)
{
	spdk_bs_set_super(bs, id, tr_op, rec);
}

void
shim_bs_grow_live(struct spdk_blob_store *bs, void *rec)
{
	spdk_bs_grow_live(bs, tr_op, rec);
}

void
shim_bs_get_super(struct spdk_blob_store *bs, void *rec)
{
	spdk_bs_get_super(bs, tr_id, rec);
}

void
shim_bs_get_bstype(struct spdk_blob_store *bs, char *out)
{
	struct spdk_bs_type t = spdk_bs_get_bstype(bs);

	memcpy(out, t.bstype, SPDK_BLOBSTORE_TYPE_LENGTH);
}

/* ---- blob creation with xattrs ------------------------------------------------------- */

struct create_ctx {
	void *rec;
	size_t count;
	const char *const *names;
	const void *const *values;
	const size_t *lens;
};

static void
create_get_value(void *arg, const char *name, const void **value, size_t *value_len)
{
	struct create_ctx *ctx = arg;
	size_t i;

	*value = NULL;
	*value_len = 0;
	for (i = 0; i < ctx->count; i++) {
		if (strcmp(ctx->names[i], name) == 0) {
			*value = ctx->values[i];
			*value_len = ctx->lens[i];
			return;
		}
	}
}

static void
tr_create(void *arg, spdk_blob_id id, int bserrno)
{
	struct create_ctx *ctx = arg;
	void *rec = ctx->rec;

	free(ctx);
	ffi_shim_complete(rec, bserrno, id, NULL);
}

/* The arrays stay owned by the caller's completion record until the callback has run. */
void
shim_create_blob(struct spdk_blob_store *bs, uint64_t num_clusters, int thin, int extent_table,
		 int clear_method, size_t n_xattrs, const char *const *names,
		 const void *const *values, const size_t *lens, void *rec)
{
	struct spdk_blob_opts opts;
	struct create_ctx *ctx = calloc(1, sizeof(*ctx));

	if (ctx == NULL) {
		ffi_shim_complete(rec, -ENOMEM, 0, NULL);
		return;
	}
	ctx->rec = rec;
	ctx->count = n_xattrs;
	ctx->names = names;
	ctx->values = values;
	ctx->lens = lens;

	spdk_blob_opts_init(&opts, sizeof(opts));
	opts.num_clusters = num_clusters;
	opts.thin_provision = thin != 0;
	opts.use_extent_table = extent_table != 0;
	opts.clear_method = (enum blob_clear_method)clear_method;
	opts.xattrs.count = n_xattrs;
	opts.xattrs.names = (char **)names;
	opts.xattrs.ctx = ctx;
	opts.xattrs.get_value = create_get_value;
	spdk_bs_create_blob_ext(bs, &opts, tr_create, ctx);
}

/* ---- blob metadata ------------------------------------------------------------------- */

void
shim_open_blob(struct spdk_blob_store *bs, uint64_t id, void *rec)
{
	spdk_bs_open_blob(bs, id, tr_blob, rec);
}

void
shim_close_blob(struct spdk_blob *blob, void *rec)
{
	spdk_blob_close(blob, tr_op, rec);
}

void
shim_delete_blob(struct spdk_blob_store *bs, uint64_t id, void *rec)
{
	spdk_bs_delete_blob(bs, id, tr_op, rec);
}

void
shim_resize_blob(struct spdk_blob *blob, uint64_t clusters, void *rec)
{
	spdk_blob_resize(blob, clusters, tr_op, rec);
}

void
shim_sync_md(struct spdk_blob *blob, void *rec)
{
	spdk_blob_sync_md(blob, tr_op, rec);
}

/* ---- iteration: collects every blob id, then completes once ------------------------- */

struct iter_ctx {
	void *rec;
	struct spdk_blob_store *bs;
	uint64_t *ids;
	size_t len;
	size_t cap;
};

static void
tr_iter(void *arg, struct spdk_blob *blob, int bserrno)
{
	struct iter_ctx *ctx = arg;
	void *rec = ctx->rec;

	if (bserrno == 0) {
		if (ctx->len == ctx->cap) {
			size_t cap = ctx->cap ? ctx->cap * 2 : 64;
			uint64_t *ids = realloc(ctx->ids, cap * sizeof(uint64_t));

			if (ids == NULL) {
				/* Stop here; the blob handed to us is closed by the next iter_next
				 * only, so close it ourselves. */
				spdk_blob_close(blob, noop_op, NULL);
				free(ctx->ids);
				free(ctx);
				ffi_shim_complete(rec, -ENOMEM, 0, NULL);
				return;
			}
			ctx->ids = ids;
			ctx->cap = cap;
		}
		ctx->ids[ctx->len++] = spdk_blob_get_id(blob);
		spdk_bs_iter_next(ctx->bs, blob, tr_iter, ctx);
		return;
	}
	if (bserrno == -ENOENT) {
		/* End of iteration. Ownership of ids passes to Rust (freed by shim_free). */
		uint64_t *ids = ctx->ids;
		size_t len = ctx->len;

		free(ctx);
		ffi_shim_complete(rec, 0, len, ids);
		return;
	}
	free(ctx->ids);
	free(ctx);
	ffi_shim_complete(rec, bserrno, 0, NULL);
}

void
shim_blob_ids(struct spdk_blob_store *bs, void *rec)
{
	struct iter_ctx *ctx = calloc(1, sizeof(*ctx));

	if (ctx == NULL) {
		ffi_shim_complete(rec, -ENOMEM, 0, NULL);
		return;
	}
	ctx->rec = rec;
	ctx->bs = bs;
	spdk_bs_iter_first(bs, tr_iter, ctx);
}

void
shim_free(void *p)
{
	free(p);
}

/* ---- data I/O (channel thread) -------------------------------------------------------- */

void
shim_blob_read(struct spdk_blob *blob, struct spdk_io_channel *ch, void *buf, uint64_t offset,
	       uint64_t len, void *rec)
{
	spdk_blob_io_read(blob, ch, buf, offset, len, tr_op, rec);
}

void
shim_blob_write(struct spdk_blob *blob, struct spdk_io_channel *ch, void *buf, uint64_t offset,
		uint64_t len, void *rec)
{
	spdk_blob_io_write(blob, ch, buf, offset, len, tr_op, rec);
}

void
shim_blob_unmap(struct spdk_blob *blob, struct spdk_io_channel *ch, uint64_t offset,
		uint64_t len, void *rec)
{
	spdk_blob_io_unmap(blob, ch, offset, len, tr_op, rec);
}

void
shim_blob_write_zeroes(struct spdk_blob *blob, struct spdk_io_channel *ch, uint64_t offset,
		       uint64_t len, void *rec)
{
	spdk_blob_io_write_zeroes(blob, ch, offset, len, tr_op, rec);
}

/* ---- bdev descriptor used for device flushes ---------------------------------------------- */

int
shim_bdev_open(const char *name, struct spdk_bdev_desc **desc)
{
	return spdk_bdev_open_ext(name, true, bdev_event, NULL, desc);
}

void
shim_bdev_close(struct spdk_bdev_desc *desc)
{
	spdk_bdev_close(desc);
}

uint32_t
shim_bdev_block_size(const char *name)
{
	struct spdk_bdev *bdev = spdk_bdev_get_by_name(name);

	return bdev ? spdk_bdev_get_block_size(bdev) : 0;
}

uint64_t
shim_bdev_num_blocks(const char *name)
{
	struct spdk_bdev *bdev = spdk_bdev_get_by_name(name);

	return bdev ? spdk_bdev_get_num_blocks(bdev) : 0;
}

/* Flush the whole bdev. Bdevs without a volatile cache (malloc) do not support flush; that
 * is success. */
void
shim_bdev_flush(struct spdk_bdev_desc *desc, struct spdk_io_channel *ch, void *rec)
{
	struct spdk_bdev *bdev = spdk_bdev_desc_get_bdev(desc);
	int rc;

	if (!spdk_bdev_io_type_supported(bdev, SPDK_BDEV_IO_TYPE_FLUSH)) {
		ffi_shim_complete(rec, 0, 0, NULL);
		return;
	}
	rc = spdk_bdev_flush_blocks(desc, ch, 0, spdk_bdev_get_num_blocks(bdev), tr_bdev_io, rec);
	if (rc != 0) {
		ffi_shim_complete(rec, rc, 0, NULL);
	}
}

/* ---- zeroing a whole bdev ------------------------------------------------------------------ */

/* Lets a test reuse a bdev as if it had just been created: a blobstore abandoned on it keeps
 * its descriptor open, so the bdev cannot be deleted, but its blocks can be cleared. */
struct zero_ctx {
	struct spdk_bdev_desc *desc;
	struct spdk_io_channel *ch;
	void *rec;
};

static void
zero_done(struct spdk_bdev_io *io, bool success, void *arg)
{
	struct zero_ctx *z = arg;

	spdk_bdev_free_io(io);
	spdk_put_io_channel(z->ch);
	spdk_bdev_close(z->desc);
	ffi_shim_complete(z->rec, success ? 0 : -EIO, 0, NULL);
	free(z);
}

/* Write zeroes over every block of bdev `name` (emulated by SPDK where the bdev lacks
 * write-zeroes). Completes `rec`; returns nothing, every failure goes through `rec`. */
void
shim_bdev_zero_all(const char *name, void *rec)
{
	struct zero_ctx *z = calloc(1, sizeof(*z));
	struct spdk_bdev *bdev;
	int rc;

	if (z == NULL) {
		ffi_shim_complete(rec, -ENOMEM, 0, NULL);
		return;
	}
	z->rec = rec;
	rc = spdk_bdev_open_ext(name, true, bdev_event, NULL, &z->desc);
	if (rc != 0) {
		free(z);
		ffi_shim_complete(rec, rc, 0, NULL);
		return;
	}
	z->ch = spdk_bdev_get_io_channel(z->desc);
	if (z->ch == NULL) {
		spdk_bdev_close(z->desc);
		free(z);
		ffi_shim_complete(rec, -ENOMEM, 0, NULL);
		return;
	}
	bdev = spdk_bdev_desc_get_bdev(z->desc);
	rc = spdk_bdev_write_zeroes_blocks(z->desc, z->ch, 0, spdk_bdev_get_num_blocks(bdev),
					   zero_done, z);
	if (rc != 0) {
		spdk_put_io_channel(z->ch);
		spdk_bdev_close(z->desc);
		free(z);
		ffi_shim_complete(rec, rc, 0, NULL);
	}
}
