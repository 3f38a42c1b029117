/* The C quickstart: open (or create) a store, write, read, iterate a prefix, batch, close.
 *
 *   cc -I capi/include capi/c/example.c target/release/libblobcask_c.a -lpthread -ldl -lm \
 *      -o example && ./example /tmp/example.img
 * or, after capi/install.sh: cc example.c $(pkg-config --cflags --libs blobcask)
 */
#include <stdio.h>
#include <string.h>

#include "blobcask.h"

static int check(blobcask_status s, const char *what) {
    if (s != BLOBCASK_OK) {
        fprintf(stderr, "%s: %s: %s\n", what, blobcask_status_name(s), blobcask_last_error());
        return 1;
    }
    return 0;
}

int main(int argc, char **argv) {
    const char *path = argc > 1 ? argv[1] : "example.img";
    blobcask_options *opts = blobcask_options_new(path);
    blobcask_options_set_device_size(opts, 64u << 20);
    blobcask_db *db = NULL;
    blobcask_status s = blobcask_open(opts, &db);
    blobcask_options_free(opts);
    if (check(s, "open")) return 1;

    const char *users[][2] = {{"user:1", "ada"}, {"user:2", "grace"}, {"item:1", "lamp"}};
    for (int i = 0; i < 3; i++) {
        if (check(blobcask_put(db, (const uint8_t *)users[i][0], strlen(users[i][0]),
                               (const uint8_t *)users[i][1], strlen(users[i][1])),
                  "put"))
            return 1;
    }

    uint8_t *value = NULL;
    size_t len = 0;
    if (check(blobcask_get(db, (const uint8_t *)"user:2", 6, &value, &len), "get")) return 1;
    printf("user:2 = %.*s\n", (int)len, (const char *)value);
    blobcask_free_value(value, len);

    blobcask_batch *b = blobcask_batch_new();
    blobcask_batch_put(b, (const uint8_t *)"user:3", 6, (const uint8_t *)"linus", 5);
    blobcask_batch_delete(b, (const uint8_t *)"item:1", 6);
    s = blobcask_write(db, b);
    blobcask_batch_free(b);
    if (check(s, "write batch")) return 1;

    blobcask_iter *it = NULL;
    if (check(blobcask_iter_new(db, (const uint8_t *)"user:", 5, &it), "iter")) return 1;
    const uint8_t *k, *v;
    size_t kl, vl;
    while ((s = blobcask_iter_next(it, &k, &kl, &v, &vl)) == BLOBCASK_OK)
        printf("%.*s = %.*s\n", (int)kl, (const char *)k, (int)vl, (const char *)v);
    blobcask_iter_free(it);
    if (s != BLOBCASK_NOT_FOUND && check(s, "iter next")) return 1;

    return check(blobcask_close(db), "close");
}
