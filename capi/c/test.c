/* The C API's behaviour test, run by `cargo test -p blobcask-capi` (tests/c_api.rs compiles
 * it with the system C compiler, and again under AddressSanitizer and UBSan when the compiler
 * has them). Usage: test DIR (a scratch directory). Exit 0 when every check holds. */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "blobcask.h"

static int failures = 0;

#define EXPECT(cond)                                                                    \
    do {                                                                                \
        if (!(cond)) {                                                                  \
            fprintf(stderr, "%s:%d: expected %s (last error: %s)\n", __FILE__, __LINE__, \
                    #cond, blobcask_last_error());                                      \
            failures++;                                                                 \
        }                                                                               \
    } while (0)

#define B(s) ((const uint8_t *)(s)), strlen(s)

static blobcask_db *open_at(const char *path, int read_only, blobcask_status *status) {
    blobcask_options *o = blobcask_options_new(path);
    EXPECT(o != NULL);
    EXPECT(blobcask_options_set_device_size(o, 64u << 20) == BLOBCASK_OK);
    EXPECT(blobcask_options_set_shards(o, 2) == BLOBCASK_OK);
    EXPECT(blobcask_options_set_sync(o, BLOBCASK_SYNC_ALWAYS) == BLOBCASK_OK);
    EXPECT(blobcask_options_set_read_only(o, read_only) == BLOBCASK_OK);
    blobcask_db *db = NULL;
    *status = blobcask_open(o, &db);
    blobcask_options_free(o);
    return db;
}

static int get_eq(blobcask_db *db, const char *key, const char *want) {
    uint8_t *v = NULL;
    size_t n = 0;
    blobcask_status s = blobcask_get(db, B(key), &v, &n);
    int ok = want == NULL ? (s == BLOBCASK_NOT_FOUND && v == NULL)
                          : (s == BLOBCASK_OK && n == strlen(want) && memcmp(v, want, n) == 0);
    blobcask_free_value(v, n);
    return ok;
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: test DIR\n");
        return 2;
    }
    char path[4096];
    snprintf(path, sizeof path, "%s/c-test.img", argv[1]);
    blobcask_status s;

    /* Version and status names are static strings. */
    EXPECT(strlen(blobcask_version()) > 0);
    EXPECT(strcmp(blobcask_status_name(BLOBCASK_NOT_FOUND), "not found") == 0);

    /* Opening a missing file without create fails with a message and writes nothing. */
    {
        blobcask_options *o = blobcask_options_new(path);
        blobcask_options_set_create(o, 0);
        blobcask_db *db = (blobcask_db *)1;
        s = blobcask_open(o, &db);
        blobcask_options_free(o);
        EXPECT(s != BLOBCASK_OK && s != BLOBCASK_INTERNAL);
        EXPECT(db == NULL);
        EXPECT(strlen(blobcask_last_error()) > 0);
        FILE *f = fopen(path, "r");
        EXPECT(f == NULL);
        if (f) fclose(f);
    }

    blobcask_db *db = open_at(path, 0, &s);
    EXPECT(s == BLOBCASK_OK && db != NULL);
    if (db == NULL) return 1;

    /* put / get / delete, empty values, binary keys. */
    EXPECT(blobcask_put(db, B("alpha"), B("one")) == BLOBCASK_OK);
    EXPECT(blobcask_put(db, B("alpha"), B("two")) == BLOBCASK_OK);
    EXPECT(blobcask_put(db, B("empty"), NULL, 0) == BLOBCASK_OK);
    const uint8_t bin[] = {0, 1, 2, 0, 255};
    EXPECT(blobcask_put(db, bin, sizeof bin, bin, sizeof bin) == BLOBCASK_OK);
    EXPECT(get_eq(db, "alpha", "two"));
    EXPECT(get_eq(db, "empty", ""));
    EXPECT(get_eq(db, "missing", NULL));
    {
        uint8_t *v = NULL;
        size_t n = 0;
        EXPECT(blobcask_get(db, bin, sizeof bin, &v, &n) == BLOBCASK_OK);
        EXPECT(n == sizeof bin && memcmp(v, bin, n) == 0);
        blobcask_free_value(v, n);
    }
    EXPECT(blobcask_delete(db, B("alpha")) == BLOBCASK_OK);
    EXPECT(get_eq(db, "alpha", NULL));
    EXPECT(blobcask_delete(db, B("never-there")) == BLOBCASK_OK);

    /* Bad input: typed errors with a message, nothing written. */
    EXPECT(blobcask_put(NULL, B("k"), B("v")) == BLOBCASK_INVALID_ARGUMENT);
    EXPECT(blobcask_put(db, NULL, 3, B("v")) == BLOBCASK_INVALID_ARGUMENT);
    EXPECT(strstr(blobcask_last_error(), "NULL") != NULL);
    {
        size_t big = 2000;
        uint8_t *k = calloc(big, 1);
        EXPECT(blobcask_put(db, k, big, B("v")) == BLOBCASK_INVALID_ARGUMENT);
        free(k);
        uint8_t *v = NULL;
        EXPECT(blobcask_get(db, B("alpha"), &v, NULL) == BLOBCASK_INVALID_ARGUMENT);
    }

    /* A batch applies all of its operations. */
    blobcask_batch *b = blobcask_batch_new();
    char key[32], val[32];
    for (int i = 0; i < 100; i++) {
        snprintf(key, sizeof key, "batch:%03d", i);
        snprintf(val, sizeof val, "value %d", i);
        EXPECT(blobcask_batch_put(b, B(key), B(val)) == BLOBCASK_OK);
    }
    EXPECT(blobcask_batch_delete(b, B("empty")) == BLOBCASK_OK);
    EXPECT(blobcask_batch_count(b) == 101);
    EXPECT(blobcask_write(db, b) == BLOBCASK_OK);
    EXPECT(blobcask_batch_clear(b) == BLOBCASK_OK);
    EXPECT(blobcask_batch_count(b) == 0);
    blobcask_batch_free(b);
    EXPECT(get_eq(db, "batch:042", "value 42"));
    EXPECT(get_eq(db, "empty", NULL));

    /* Iteration over a prefix: every batch key once, with its value. */
    {
        blobcask_iter *it = NULL;
        EXPECT(blobcask_iter_new(db, B("batch:"), &it) == BLOBCASK_OK);
        int seen[100] = {0}, n = 0;
        const uint8_t *k, *v;
        size_t kl, vl;
        while ((s = blobcask_iter_next(it, &k, &kl, &v, &vl)) == BLOBCASK_OK) {
            int i = -1;
            EXPECT(kl == 9 && memcmp(k, "batch:", 6) == 0);
            if (sscanf((const char *)k + 6, "%3d", &i) == 1 && i >= 0 && i < 100) {
                seen[i]++;
                snprintf(val, sizeof val, "value %d", i);
                EXPECT(vl == strlen(val) && memcmp(v, val, vl) == 0);
            }
            n++;
        }
        EXPECT(s == BLOBCASK_NOT_FOUND);
        EXPECT(n == 100);
        for (int i = 0; i < 100; i++) EXPECT(seen[i] == 1);
        blobcask_iter_free(it);
    }

    EXPECT(blobcask_sync(db) == BLOBCASK_OK);
    EXPECT(blobcask_merge(db) == BLOBCASK_OK);
    blobcask_statistics st;
    EXPECT(blobcask_stats(db, &st) == BLOBCASK_OK);
    EXPECT(st.keys == 101);
    EXPECT(st.free_clusters <= st.total_clusters && st.total_clusters > 0);

    /* A second writer is refused while the store is open. */
    {
        blobcask_status s2;
        blobcask_db *other = open_at(path, 0, &s2);
        EXPECT(s2 == BLOBCASK_LOCKED && other == NULL);
    }
    EXPECT(blobcask_close(db) == BLOBCASK_OK);

    /* Reopened read-only: everything acknowledged is there, writes are refused. */
    db = open_at(path, 1, &s);
    EXPECT(s == BLOBCASK_OK && db != NULL);
    if (db == NULL) return 1;
    EXPECT(get_eq(db, "batch:099", "value 99"));
    EXPECT(get_eq(db, "alpha", NULL));
    EXPECT(blobcask_put(db, B("k"), B("v")) == BLOBCASK_READ_ONLY);
    EXPECT(blobcask_close(db) == BLOBCASK_OK);

    /* Free functions take NULL. */
    blobcask_options_free(NULL);
    blobcask_batch_free(NULL);
    blobcask_iter_free(NULL);
    blobcask_free_value(NULL, 0);
    EXPECT(blobcask_close(NULL) == BLOBCASK_OK);

    if (failures) fprintf(stderr, "%d check(s) failed\n", failures);
    else printf("all C API checks passed\n");
    return failures ? 1 : 0;
}
