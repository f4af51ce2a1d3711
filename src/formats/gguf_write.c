// GGUF v3 writer. Everything is collected in memory (tensor data by reference) and written in one
// pass to a temporary file that is renamed over the target only once complete.
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "quant/quant.h"
#include "speck.h"
#include "formats/gguf_internal.h"
#include "formats/gguf_stream.h"

#define ALIGN 32

typedef struct {
    char *key;
    uint8_t *val; // serialized type + value, exactly as in the file
    size_t len;
} wkv;

typedef struct {
    char *name;
    speck_type type;
    int n_dims;
    int64_t ne[4];
    const void *data;
    size_t n_bytes;
    uint64_t offset;
} wtensor;

struct speck_gguf_writer {
    wkv *kv;
    int64_t n_kv, cap_kv;
    wtensor *t;
    int64_t n_t, cap_t;
};

typedef struct {
    uint8_t *p;
    size_t n, cap;
    int oom;
} buf;

static void put(buf *b, const void *src, size_t n) {
    if (b->oom) return;
    if (b->n + n > b->cap) {
        size_t cap = b->cap ? b->cap * 2 : 64;
        while (cap < b->n + n) cap *= 2;
        uint8_t *p = realloc(b->p, cap);
        if (!p) {
            b->oom = 1;
            return;
        }
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->n, src, n);
    b->n += n;
}

static void put_u32(buf *b, uint32_t v) {
    put(b, &v, 4);
}
static void put_u64(buf *b, uint64_t v) {
    put(b, &v, 8);
}
static void put_str(buf *b, const char *s, uint64_t n) {
    put_u64(b, n);
    put(b, s, n);
}

speck_gguf_writer *speck_gguf_writer_new(void) {
    speck_gguf_writer *w = calloc(1, sizeof *w);
    if (!w) speck_set_error(SPECK_ERR_NOMEM, "out of memory");
    return w;
}

void speck_gguf_writer_free(speck_gguf_writer *w) {
    if (!w) return;
    for (int64_t i = 0; i < w->n_kv; i++) {
        free(w->kv[i].key);
        free(w->kv[i].val);
    }
    for (int64_t i = 0; i < w->n_t; i++) free(w->t[i].name);
    free(w->kv);
    free(w->t);
    free(w);
}

// Takes ownership of b's bytes; a key set twice keeps its first position with the new value.
// general.alignment is never written: this writer (and gguf_stream.c) always aligns to 32, the
// format's default, and a copied key of another value would make the output unreadable.
static int set_kv(speck_gguf_writer *w, const char *key, buf *b) {
    if (b->oom) {
        free(b->p);
        return speck_set_error(SPECK_ERR_NOMEM, "out of memory");
    }
    if (!strcmp(key, "general.alignment")) {
        free(b->p);
        return 0;
    }
    for (int64_t i = 0; i < w->n_kv; i++)
        if (!strcmp(w->kv[i].key, key)) {
            free(w->kv[i].val);
            w->kv[i].val = b->p;
            w->kv[i].len = b->n;
            return 0;
        }
    if (w->n_kv == w->cap_kv) {
        int64_t cap = w->cap_kv ? w->cap_kv * 2 : 32;
        wkv *kv = realloc(w->kv, (size_t)cap * sizeof *kv);
        if (!kv) {
            free(b->p);
            return speck_set_error(SPECK_ERR_NOMEM, "out of memory");
        }
        w->kv = kv;
        w->cap_kv = cap;
    }
    w->kv[w->n_kv++] = (wkv){strdup(key), b->p, b->n};
    return 0;
}

static int set_scalar(speck_gguf_writer *w, const char *key, speck_gguf_vtype t, const void *v,
                      size_t n) {
    buf b = {0};
    put_u32(&b, (uint32_t)t);
    put(&b, v, n);
    return set_kv(w, key, &b);
}

int speck_gguf_set_u32(speck_gguf_writer *w, const char *key, uint32_t v) {
    return set_scalar(w, key, SPECK_GGUF_UINT32, &v, 4);
}
int speck_gguf_set_i32(speck_gguf_writer *w, const char *key, int32_t v) {
    return set_scalar(w, key, SPECK_GGUF_INT32, &v, 4);
}
int speck_gguf_set_u64(speck_gguf_writer *w, const char *key, uint64_t v) {
    return set_scalar(w, key, SPECK_GGUF_UINT64, &v, 8);
}
int speck_gguf_set_f32(speck_gguf_writer *w, const char *key, float v) {
    return set_scalar(w, key, SPECK_GGUF_FLOAT32, &v, 4);
}
int speck_gguf_set_bool(speck_gguf_writer *w, const char *key, bool v) {
    uint8_t b = v;
    return set_scalar(w, key, SPECK_GGUF_BOOL, &b, 1);
}

int speck_gguf_set_str(speck_gguf_writer *w, const char *key, const char *v) {
    buf b = {0};
    put_u32(&b, SPECK_GGUF_STRING);
    put_str(&b, v, strlen(v));
    return set_kv(w, key, &b);
}

int speck_gguf_set_arr(speck_gguf_writer *w, const char *key, speck_gguf_vtype vtype,
                       const void *data, int64_t n) {
    size_t es = speck_gguf_vtype_size(vtype);
    if (!es || n < 0)
        return speck_set_error(SPECK_ERR_ARG, "gguf writer: key '%s': bad array type", key);
    buf b = {0};
    put_u32(&b, SPECK_GGUF_ARRAY);
    put_u32(&b, (uint32_t)vtype);
    put_u64(&b, (uint64_t)n);
    put(&b, data, es * (size_t)n);
    return set_kv(w, key, &b);
}

int speck_gguf_set_arr_str(speck_gguf_writer *w, const char *key, const char *const *strs,
                           const uint64_t *lens, int64_t n) {
    buf b = {0};
    put_u32(&b, SPECK_GGUF_ARRAY);
    put_u32(&b, SPECK_GGUF_STRING);
    put_u64(&b, (uint64_t)n);
    for (int64_t i = 0; i < n; i++) put_str(&b, strs[i], lens ? lens[i] : strlen(strs[i]));
    return set_kv(w, key, &b);
}

int speck_gguf_copy_kv(speck_gguf_writer *w, const speck_gguf *g, int64_t i) {
    const char *key = speck_gguf_key(g, i);
    speck_gguf_vtype t = speck_gguf_kv_type(g, i);
    if (t == SPECK_GGUF_STRING) return speck_gguf_set_str(w, key, speck_gguf_get_str(g, i));
    if (t == SPECK_GGUF_ARRAY) {
        speck_gguf_vtype at = speck_gguf_arr_type(g, i);
        int64_t n = speck_gguf_arr_n(g, i);
        if (at != SPECK_GGUF_STRING)
            return speck_gguf_set_arr(w, key, at, speck_gguf_arr_data(g, i), n);
        buf b = {0};
        put_u32(&b, SPECK_GGUF_ARRAY);
        put_u32(&b, SPECK_GGUF_STRING);
        put_u64(&b, (uint64_t)n);
        for (int64_t j = 0; j < n; j++) {
            uint64_t len;
            const char *s = speck_gguf_arr_str(g, i, j, &len);
            put_str(&b, s, len);
        }
        return set_kv(w, key, &b);
    }
    // Scalars: re-serialize from the typed value so the bytes match exactly.
    size_t es = speck_gguf_vtype_size(t);
    uint8_t v[8] = {0};
    if (t == SPECK_GGUF_FLOAT32) {
        float f = (float)speck_gguf_get_float(g, i);
        memcpy(v, &f, 4);
    } else if (t == SPECK_GGUF_FLOAT64) {
        double d = speck_gguf_get_float(g, i);
        memcpy(v, &d, 8);
    } else {
        int64_t x = speck_gguf_get_int(g, i);
        memcpy(v, &x, es); // little-endian: the low bytes are the narrow value
    }
    return set_scalar(w, key, t, v, es);
}

int speck_gguf_add_tensor(speck_gguf_writer *w, const char *name, speck_type type, int n_dims,
                          const int64_t *ne, const void *data) {
    // ggml's I8 (raw bytes: the sparse index streams of delta files) besides speck's types.
    const bool i8 = (int)type == SPECK_GGUF_TYPE_I8;
    if (n_dims < 1 || n_dims > 4 || (!speck_type_name(type) && !i8))
        return speck_set_error(SPECK_ERR_ARG, "gguf writer: tensor '%s': bad type or dims", name);
    if (!i8 && ne[0] % speck_type_block_size(type))
        return speck_set_error(SPECK_ERR_ARG,
                               "gguf writer: tensor '%s': row length %lld not a multiple of %lld",
                               name, (long long)ne[0], (long long)speck_type_block_size(type));
    if (w->n_t == w->cap_t) {
        int64_t cap = w->cap_t ? w->cap_t * 2 : 64;
        wtensor *t = realloc(w->t, (size_t)cap * sizeof *t);
        if (!t) return speck_set_error(SPECK_ERR_NOMEM, "out of memory");
        w->t = t;
        w->cap_t = cap;
    }
    wtensor *t = &w->t[w->n_t++];
    memset(t, 0, sizeof *t);
    t->name = strdup(name);
    t->type = type;
    t->n_dims = n_dims;
    int64_t rows = 1;
    for (int d = 0; d < 4; d++) t->ne[d] = d < n_dims ? ne[d] : 1;
    for (int d = 1; d < n_dims; d++) rows *= ne[d];
    t->n_bytes = (i8 ? (size_t)ne[0] : speck_type_row_size(type, ne[0])) * (size_t)rows;
    t->data = data;
    return 0;
}

FILE *speck_atomic_open(const char *path, char *tmp, size_t tmp_size) {
    if ((size_t)snprintf(tmp, tmp_size, "%s.tmp.XXXXXX", path) >= tmp_size) {
        speck_set_error(SPECK_ERR_ARG, "%s: path too long", path);
        return NULL;
    }
    int fd = mkstemp(tmp);
    if (fd < 0) {
        speck_set_error(SPECK_ERR_IO, "%s: cannot create temporary file: %s", path,
                        strerror(errno));
        return NULL;
    }
    fchmod(fd, 0644);
    FILE *f = fdopen(fd, "wb");
    if (!f) {
        close(fd);
        unlink(tmp);
        speck_set_error(SPECK_ERR_IO, "%s: %s", path, strerror(errno));
    }
    return f;
}

void speck_atomic_abort(FILE *f, const char *tmp) {
    if (f) fclose(f);
    unlink(tmp);
}

int speck_atomic_commit(FILE *f, const char *tmp, const char *path) {
    int bad = fflush(f) != 0 || ferror(f) || fsync(fileno(f)) != 0;
    int err = errno;
    if (fclose(f) != 0 && !bad) {
        bad = 1;
        err = errno;
    }
    if (bad || rename(tmp, path) != 0) {
        if (!bad) err = errno;
        unlink(tmp);
        return speck_set_error(SPECK_ERR_IO, "%s: write failed: %s", path, strerror(err));
    }
    return 0;
}

// The header (magic, counts, key/values, tensor records, padding to the data section), shared
// with the streaming writer (gguf_stream.c). Fixes every tensor's offset; *out is malloc'd.
int speck_gguf_writer_header(speck_gguf_writer *w, uint8_t **out, size_t *len) {
    buf h = {0};
    put(&h, "GGUF", 4);
    put_u32(&h, 3);
    put_u64(&h, (uint64_t)w->n_t);
    put_u64(&h, (uint64_t)w->n_kv);
    for (int64_t i = 0; i < w->n_kv; i++) {
        put_str(&h, w->kv[i].key, strlen(w->kv[i].key));
        put(&h, w->kv[i].val, w->kv[i].len);
    }
    uint64_t off = 0;
    for (int64_t i = 0; i < w->n_t; i++) {
        wtensor *t = &w->t[i];
        put_str(&h, t->name, strlen(t->name));
        put_u32(&h, (uint32_t)t->n_dims);
        for (int d = 0; d < t->n_dims; d++) put_u64(&h, (uint64_t)t->ne[d]);
        put_u32(&h, (uint32_t)t->type);
        t->offset = off;
        put_u64(&h, off);
        off += (t->n_bytes + ALIGN - 1) / ALIGN * ALIGN;
    }
    static const uint8_t zeros[ALIGN];
    put(&h, zeros, (ALIGN - h.n % ALIGN) % ALIGN);
    if (h.oom) {
        free(h.p);
        return speck_set_error(SPECK_ERR_NOMEM, "out of memory");
    }
    *out = h.p;
    *len = h.n;
    return 0;
}

int64_t speck_gguf_writer_n_tensors(const speck_gguf_writer *w) {
    return w->n_t;
}
size_t speck_gguf_writer_tensor_bytes(const speck_gguf_writer *w, int64_t i) {
    return w->t[i].n_bytes;
}

int speck_gguf_writer_save(speck_gguf_writer *w, const char *path) {
    buf h = {0};
    int rc = speck_gguf_writer_header(w, &h.p, &h.n);
    if (rc) return rc;
    static const uint8_t zeros[ALIGN];
    char tmp[PATH_MAX];
    FILE *f = speck_atomic_open(path, tmp, sizeof tmp);
    if (!f) {
        free(h.p);
        return SPECK_ERR_IO;
    }
    int ok = fwrite(h.p, 1, h.n, f) == h.n;
    free(h.p);
    for (int64_t i = 0; ok && i < w->n_t; i++) {
        wtensor *t = &w->t[i];
        ok = fwrite(t->data, 1, t->n_bytes, f) == t->n_bytes;
        size_t pad = (ALIGN - t->n_bytes % ALIGN) % ALIGN;
        if (ok && pad) ok = fwrite(zeros, 1, pad, f) == pad;
    }
    if (!ok) {
        int err = errno;
        speck_atomic_abort(f, tmp);
        return speck_set_error(SPECK_ERR_IO, "%s: write failed: %s", path, strerror(err));
    }
    return speck_atomic_commit(f, tmp, path);
}

int speck_gguf_file_type(int t) {
    const speck_type_traits *tr = speck_traits(t);
    return tr && tr->file_type > 0 ? tr->file_type : 0;
}
