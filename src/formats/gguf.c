// GGUF v2/v3 reader (mmap, fully validated) and atomic writer.
//
// The reader trusts nothing in the file: every length, count, offset and dimension is checked
// against the mapping before use, and arithmetic that could overflow is checked first.
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "speck.h"
#include "formats/gguf_internal.h"
#include "tokenizer/tokenizer_internal.h"

#define GGUF_MAGIC "GGUF"
#define GGUF_DEFAULT_ALIGNMENT 32
#define GGUF_MIN_ALIGNMENT 8
// Bounds that no real file approaches (a few dozen keys, a few thousand tensors); together with
// the file-size bounds below they keep a hostile header from making us allocate absurd amounts
// before the records themselves are checked.
#define GGUF_MAX_KV (1 << 20)
#define GGUF_MAX_TENSORS (1 << 20)
// The smallest records: a key/value is a key length (8), a type (4) and a 1-byte value; a tensor
// record a name length (8), n_dims (4), one dimension (8), a type (4) and an offset (8). A
// header's counts must fit the file at that size each.
#define GGUF_MIN_KV_BYTES 13
#define GGUF_MIN_TENSOR_BYTES 32

typedef struct {
    char *key;
    speck_gguf_vtype type;
    speck_gguf_vtype arr_type;
    uint64_t n;          // array element count (1 for scalars), string length for strings
    const uint8_t *data; // scalar bytes, string bytes, or first array element
    uint64_t *str_off;   // string arrays: offset of each element's length prefix from data
    char *str;           // strings: NUL-terminated copy
} gguf_kv;

// A name and its record's index: keys and tensor names sorted, for duplicate checks and
// logarithmic lookups (a file may hold up to GGUF_MAX_* of them).
typedef struct {
    const char *name;
    int64_t i;
} gguf_name;

struct speck_gguf {
    char *path;
    int fd;
    uint8_t *map;
    size_t size;
    void *anon; // SPECK_LOAD_HUGEPAGES: the anonymous region holding the file (else NULL)
    size_t anon_len;
    uint32_t version;
    size_t alignment;
    size_t data_offset;
    int64_t n_kv, n_tensors;
    gguf_kv *kv;
    speck_gguf_tensor *tensors;
    gguf_name *key_order, *tensor_order; // sorted by name (NULL while parsing)
};

/* ---- type facts for every ggml type, so files with types we cannot compute still open ---- */

typedef struct {
    int block;
    int bytes;
} ggml_type_info;

static ggml_type_info type_info(int t) {
    switch (t) {
    case 0:
        return (ggml_type_info){1, 4}; // F32
    case 1:
        return (ggml_type_info){1, 2}; // F16
    case 2:
        return (ggml_type_info){32, 18}; // Q4_0
    case 3:
        return (ggml_type_info){32, 20}; // Q4_1
    case 6:
        return (ggml_type_info){32, 22}; // Q5_0
    case 7:
        return (ggml_type_info){32, 24}; // Q5_1
    case 8:
        return (ggml_type_info){32, 34}; // Q8_0
    case 9:
        return (ggml_type_info){32, 36}; // Q8_1
    case 10:
        return (ggml_type_info){256, 84}; // Q2_K
    case 11:
        return (ggml_type_info){256, 110};
    case 12:
        return (ggml_type_info){256, 144};
    case 13:
        return (ggml_type_info){256, 176};
    case 14:
        return (ggml_type_info){256, 210};
    case 15:
        return (ggml_type_info){256, 292};
    case 16:
        return (ggml_type_info){256, 66};
    case 17:
        return (ggml_type_info){256, 74};
    case 18:
        return (ggml_type_info){256, 98};
    case 19:
        return (ggml_type_info){256, 50};
    case 20:
        return (ggml_type_info){32, 18};
    case 21:
        return (ggml_type_info){256, 110};
    case 22:
        return (ggml_type_info){256, 82};
    case 23:
        return (ggml_type_info){256, 136};
    case 24:
        return (ggml_type_info){1, 1}; // I8
    case 25:
        return (ggml_type_info){1, 2}; // I16
    case 26:
        return (ggml_type_info){1, 4}; // I32
    case 27:
        return (ggml_type_info){1, 8}; // I64
    case 28:
        return (ggml_type_info){1, 8}; // F64
    case 29:
        return (ggml_type_info){256, 56};
    case 30:
        return (ggml_type_info){1, 2}; // BF16
    case 34:
        return (ggml_type_info){256, 54};
    case 35:
        return (ggml_type_info){256, 66};
    case 39:
        return (ggml_type_info){32, 17}; // MXFP4
    case SPECK_TYPE_S24_Q8:
        return (ggml_type_info){32, 22}; // speck's own 2:4-sparse type (src/sparse/)
    case SPECK_TYPE_DGQ4:
        return (ggml_type_info){256, 138}; // speck's own (src/quant/quant_dgq.c)
    default:
        return (ggml_type_info){0, 0};
    }
}

const char *speck_gguf_type_label(int t) {
    static const char *names[] = {
        [0] = "f32",     [1] = "f16",      [2] = "q4_0",   [3] = "q4_1",    [6] = "q5_0",
        [7] = "q5_1",    [8] = "q8_0",     [9] = "q8_1",   [10] = "q2_k",   [11] = "q3_k",
        [12] = "q4_k",   [13] = "q5_k",    [14] = "q6_k",  [15] = "q8_k",   [16] = "iq2_xxs",
        [17] = "iq2_xs", [18] = "iq3_xxs", [19] = "iq1_s", [20] = "iq4_nl", [21] = "iq3_s",
        [22] = "iq2_s",  [23] = "iq4_xs",  [24] = "i8",    [25] = "i16",    [26] = "i32",
        [27] = "i64",    [28] = "f64",     [29] = "iq1_m", [30] = "bf16",   [34] = "tq1_0",
        [35] = "tq2_0",  [39] = "mxfp4"};
    if (t >= 0 && t < (int)(sizeof names / sizeof names[0]) && names[t]) return names[t];
    if (t == SPECK_TYPE_S24_Q8) return "s24_q8";
    if (t == SPECK_TYPE_DGQ4) return "dgq4";
    return "unknown";
}

size_t speck_gguf_vtype_size(speck_gguf_vtype t) {
    switch (t) {
    case SPECK_GGUF_UINT8:
    case SPECK_GGUF_INT8:
    case SPECK_GGUF_BOOL:
        return 1;
    case SPECK_GGUF_UINT16:
    case SPECK_GGUF_INT16:
        return 2;
    case SPECK_GGUF_UINT32:
    case SPECK_GGUF_INT32:
    case SPECK_GGUF_FLOAT32:
        return 4;
    case SPECK_GGUF_UINT64:
    case SPECK_GGUF_INT64:
    case SPECK_GGUF_FLOAT64:
        return 8;
    default:
        return 0;
    }
}

static const char *vtype_name(speck_gguf_vtype t) {
    static const char *n[] = {"u8",   "i8",  "u16",   "i16", "u32", "i32", "f32",
                              "bool", "str", "array", "u64", "i64", "f64"};
    return (unsigned)t < 13 ? n[t] : "?";
}

/* ---- reading ---- */

typedef struct {
    const uint8_t *p, *end;
    const char *path;
} cursor;

static int need(cursor *c, uint64_t n, const char *what) {
    if ((uint64_t)(c->end - c->p) < n)
        return speck_set_error(SPECK_ERR_FORMAT,
                               "%s: truncated file: %s needs %" PRIu64 " bytes, %zu left", c->path,
                               what, n, (size_t)(c->end - c->p));
    return 0;
}

static int rd_u32(cursor *c, uint32_t *v, const char *what) {
    if (need(c, 4, what)) return SPECK_ERR_FORMAT;
    memcpy(v, c->p, 4);
    c->p += 4;
    return 0;
}

static int rd_u64(cursor *c, uint64_t *v, const char *what) {
    if (need(c, 8, what)) return SPECK_ERR_FORMAT;
    memcpy(v, c->p, 8);
    c->p += 8;
    return 0;
}

// String: uint64 length + bytes (no NUL in the file).
static int rd_str(cursor *c, const uint8_t **s, uint64_t *len, const char *what) {
    if (rd_u64(c, len, what) || need(c, *len, what)) return SPECK_ERR_FORMAT;
    *s = c->p;
    c->p += *len;
    return 0;
}

static char *dup_n(const uint8_t *s, uint64_t n) {
    char *r = malloc(n + 1);
    if (!r) return NULL;
    memcpy(r, s, n);
    r[n] = 0;
    return r;
}

static int read_kv(speck_gguf *g, cursor *c, gguf_kv *kv, int64_t idx) {
    const uint8_t *ks;
    uint64_t klen;
    char what[64];
    snprintf(what, sizeof what, "key #%" PRId64, idx);
    if (rd_str(c, &ks, &klen, what)) return SPECK_ERR_FORMAT;
    if (memchr(ks, 0, klen))
        return speck_set_error(SPECK_ERR_FORMAT, "%s: key #%" PRId64 " contains a NUL byte",
                               g->path, idx);
    if (!(kv->key = dup_n(ks, klen))) return speck_set_error(SPECK_ERR_NOMEM, "out of memory");
    uint32_t t;
    if (rd_u32(c, &t, kv->key)) return SPECK_ERR_FORMAT;
    kv->type = (speck_gguf_vtype)t;
    kv->n = 1;
    if (t == SPECK_GGUF_STRING) {
        if (rd_str(c, &kv->data, &kv->n, kv->key)) return SPECK_ERR_FORMAT;
        if (!(kv->str = dup_n(kv->data, kv->n)))
            return speck_set_error(SPECK_ERR_NOMEM, "out of memory");
        return 0;
    }
    if (t == SPECK_GGUF_ARRAY) {
        uint32_t at;
        if (rd_u32(c, &at, kv->key) || rd_u64(c, &kv->n, kv->key)) return SPECK_ERR_FORMAT;
        kv->arr_type = (speck_gguf_vtype)at;
        kv->data = c->p;
        if (at == SPECK_GGUF_STRING) {
            // Each element needs at least its 8-byte length, which bounds n before allocating.
            if (kv->n > (uint64_t)(c->end - c->p) / 8)
                return speck_set_error(SPECK_ERR_FORMAT,
                                       "%s: truncated file: key '%s': string array of %" PRIu64
                                       " elements runs past the end of the file",
                                       g->path, kv->key, kv->n);
            kv->str_off = malloc((kv->n ? kv->n : 1) * sizeof(uint64_t));
            if (!kv->str_off) return speck_set_error(SPECK_ERR_NOMEM, "out of memory");
            for (uint64_t j = 0; j < kv->n; j++) {
                const uint8_t *s;
                uint64_t len;
                kv->str_off[j] = (uint64_t)(c->p - kv->data);
                if (rd_str(c, &s, &len, kv->key)) return SPECK_ERR_FORMAT;
            }
            return 0;
        }
        size_t es = speck_gguf_vtype_size(kv->arr_type);
        if (!es)
            return speck_set_error(SPECK_ERR_FORMAT, "%s: key '%s': invalid array element type %u",
                                   g->path, kv->key, at);
        if (kv->n > UINT64_MAX / es || need(c, kv->n * es, kv->key)) {
            return speck_set_error(SPECK_ERR_FORMAT,
                                   "%s: truncated file: key '%s': array of %" PRIu64
                                   " elements runs past the end of the file",
                                   g->path, kv->key, kv->n);
        }
        c->p += kv->n * es;
        return 0;
    }
    size_t es = speck_gguf_vtype_size(kv->type);
    if (!es)
        return speck_set_error(SPECK_ERR_FORMAT, "%s: key '%s': invalid value type %u", g->path,
                               kv->key, t);
    if (need(c, es, kv->key)) return SPECK_ERR_FORMAT;
    kv->data = c->p;
    c->p += es;
    return 0;
}

static int read_tensor(speck_gguf *g, cursor *c, speck_gguf_tensor *t, int64_t idx) {
    const uint8_t *ns;
    uint64_t nlen;
    char what[64];
    snprintf(what, sizeof what, "tensor #%" PRId64, idx);
    if (rd_str(c, &ns, &nlen, what)) return SPECK_ERR_FORMAT;
    if (memchr(ns, 0, nlen))
        return speck_set_error(SPECK_ERR_FORMAT,
                               "%s: the name of tensor #%" PRId64 " contains a NUL byte", g->path,
                               idx);
    char *name = dup_n(ns, nlen);
    if (!name) return speck_set_error(SPECK_ERR_NOMEM, "out of memory");
    t->name = name;
    uint32_t nd;
    if (rd_u32(c, &nd, name)) return SPECK_ERR_FORMAT;
    if (nd < 1 || nd > 4)
        return speck_set_error(SPECK_ERR_FORMAT, "%s: tensor '%s': %u dimensions (must be 1..4)",
                               g->path, name, nd);
    t->n_dims = (int)nd;
    int64_t n_el = 1;
    for (int d = 0; d < 4; d++) t->ne[d] = 1;
    for (uint32_t d = 0; d < nd; d++) {
        uint64_t v;
        if (rd_u64(c, &v, name)) return SPECK_ERR_FORMAT;
        if (v > (uint64_t)INT64_MAX || (v && (uint64_t)n_el > (uint64_t)INT64_MAX / v))
            return speck_set_error(SPECK_ERR_FORMAT,
                                   "%s: tensor '%s': dimensions overflow (ne[%u] = %" PRIu64 ")",
                                   g->path, name, d, v);
        t->ne[d] = (int64_t)v;
        n_el *= (int64_t)v;
    }
    t->n_elements = n_el;
    uint32_t type;
    if (rd_u32(c, &type, name) || rd_u64(c, &t->offset, name)) return SPECK_ERR_FORMAT;
    t->type = (int)type;
    ggml_type_info ti = type_info((int)type);
    if (!ti.block)
        return speck_set_error(SPECK_ERR_FORMAT, "%s: tensor '%s': unknown tensor type %u", g->path,
                               name, type);
    if (t->ne[0] % ti.block)
        return speck_set_error(SPECK_ERR_FORMAT,
                               "%s: tensor '%s': row length %" PRId64
                               " is not a multiple of the %s block size %d",
                               g->path, name, t->ne[0], speck_gguf_type_label(t->type), ti.block);
    uint64_t blocks = (uint64_t)n_el / (uint64_t)ti.block;
    if (blocks > SIZE_MAX / (uint64_t)ti.bytes)
        return speck_set_error(SPECK_ERR_FORMAT, "%s: tensor '%s': size overflows", g->path, name);
    t->n_bytes = (size_t)(blocks * (uint64_t)ti.bytes);
    return 0;
}

static void gguf_free_contents(speck_gguf *g) {
    if (g->kv)
        for (int64_t i = 0; i < g->n_kv; i++) {
            free(g->kv[i].key);
            free(g->kv[i].str_off);
            free(g->kv[i].str);
        }
    if (g->tensors)
        for (int64_t i = 0; i < g->n_tensors; i++) free((char *)g->tensors[i].name);
    free(g->kv);
    free(g->tensors);
    free(g->key_order);
    free(g->tensor_order);
}

void speck_gguf_close(speck_gguf *g) {
    if (!g) return;
    gguf_free_contents(g);
    if (g->anon)
        munmap(g->anon, g->anon_len);
    else if (g->map && g->map != MAP_FAILED)
        munmap(g->map, g->size);
    if (g->fd >= 0) close(g->fd);
    free(g->path);
    free(g);
}

static int by_name(const void *a, const void *b) {
    const gguf_name *x = a, *y = b;
    int c = strcmp(x->name, y->name);
    return c ? c : (x->i > y->i) - (x->i < y->i);
}

// The n keys (or tensor names) sorted; NULL with an error when two are equal, as llama.cpp
// refuses them too (which of two values would a reader take?).
static gguf_name *sort_names(speck_gguf *g, int64_t n, bool keys, const char *what) {
    gguf_name *s = malloc((size_t)(n ? n : 1) * sizeof *s);
    if (!s) {
        speck_set_error(SPECK_ERR_NOMEM, "out of memory");
        return NULL;
    }
    for (int64_t i = 0; i < n; i++) s[i] = (gguf_name){keys ? g->kv[i].key : g->tensors[i].name, i};
    qsort(s, (size_t)n, sizeof *s, by_name);
    for (int64_t i = 1; i < n; i++)
        if (!strcmp(s[i - 1].name, s[i].name)) {
            speck_set_error(SPECK_ERR_FORMAT,
                            "%s: duplicate %s '%s' (#%" PRId64 " and #%" PRId64 ")", g->path, what,
                            s[i].name, s[i - 1].i, s[i].i);
            free(s);
            return NULL;
        }
    return s;
}

static int64_t find_name(const gguf_name *s, int64_t n, const char *name) {
    for (int64_t lo = 0, hi = n; lo < hi;) {
        const int64_t mid = lo + (hi - lo) / 2;
        const int c = strcmp(name, s[mid].name);
        if (!c) return s[mid].i;
        if (c < 0)
            hi = mid;
        else
            lo = mid + 1;
    }
    return -1;
}

static int by_offset(const void *a, const void *b) {
    const speck_gguf_tensor *x = *(speck_gguf_tensor *const *)a,
                            *y = *(speck_gguf_tensor *const *)b;
    if (x->offset != y->offset) return x->offset < y->offset ? -1 : 1;
    return (x->n_bytes > y->n_bytes) - (x->n_bytes < y->n_bytes);
}

// No two tensors may share a byte of data: sorted by offset, each starts at or after the end of
// the one before (empty tensors overlap nothing). llama.cpp refuses such files as well; speck
// would otherwise compute with two weights aliasing the same bytes without a word.
static int check_overlaps(speck_gguf *g) {
    const int64_t n = g->n_tensors;
    speck_gguf_tensor **s = malloc((size_t)(n ? n : 1) * sizeof *s);
    if (!s) return speck_set_error(SPECK_ERR_NOMEM, "out of memory");
    for (int64_t i = 0; i < n; i++) s[i] = &g->tensors[i];
    qsort(s, (size_t)n, sizeof *s, by_offset);
    int rc = 0;
    const speck_gguf_tensor *prev = NULL;
    for (int64_t i = 0; i < n && !rc; i++) {
        if (!s[i]->n_bytes) continue;
        if (prev && s[i]->offset < prev->offset + prev->n_bytes)
            rc = speck_set_error(SPECK_ERR_FORMAT,
                                 "%s: tensors '%s' and '%s' overlap: data [%" PRIu64 ", %" PRIu64
                                 ") and [%" PRIu64 ", %" PRIu64 ")",
                                 g->path, prev->name, s[i]->name, prev->offset,
                                 prev->offset + (uint64_t)prev->n_bytes, s[i]->offset,
                                 s[i]->offset + (uint64_t)s[i]->n_bytes);
        prev = s[i];
    }
    free(s);
    return rc;
}

static int parse(speck_gguf *g) {
    cursor c = {g->map, g->map + g->size, g->path};
    if (g->size < 4 || memcmp(g->map, GGUF_MAGIC, 4) != 0)
        return speck_set_error(SPECK_ERR_FORMAT, "%s: not a GGUF file (bad magic)", g->path);
    c.p += 4;
    if (rd_u32(&c, &g->version, "version")) return SPECK_ERR_FORMAT;
    if (g->version != 2 && g->version != 3)
        return speck_set_error(SPECK_ERR_UNSUPPORTED,
                               "%s: GGUF version %u is not supported (2 or 3)", g->path,
                               g->version);
    uint64_t nt, nkv;
    if (rd_u64(&c, &nt, "tensor count") || rd_u64(&c, &nkv, "key/value count"))
        return SPECK_ERR_FORMAT;
    if (nt > GGUF_MAX_TENSORS || nkv > GGUF_MAX_KV)
        return speck_set_error(SPECK_ERR_FORMAT,
                               "%s: implausible header (%" PRIu64 " tensors, %" PRIu64
                               " keys; at most %d each)",
                               g->path, nt, nkv, GGUF_MAX_TENSORS);
    const uint64_t left = (uint64_t)(c.end - c.p);
    if (nkv * GGUF_MIN_KV_BYTES + nt * GGUF_MIN_TENSOR_BYTES > left)
        return speck_set_error(SPECK_ERR_FORMAT,
                               "%s: truncated file: the header's tensor count %" PRIu64
                               " and key/value count %" PRIu64 " need more than the %" PRIu64
                               " bytes left",
                               g->path, nt, nkv, left);
    g->kv = calloc(nkv ? nkv : 1, sizeof *g->kv);
    g->tensors = calloc(nt ? nt : 1, sizeof *g->tensors);
    if (!g->kv || !g->tensors) return speck_set_error(SPECK_ERR_NOMEM, "out of memory");
    for (uint64_t i = 0; i < nkv; i++) {
        g->n_kv = (int64_t)i + 1;
        if (read_kv(g, &c, &g->kv[i], (int64_t)i)) return SPECK_ERR_FORMAT;
    }
    if (!(g->key_order = sort_names(g, g->n_kv, true, "key"))) return SPECK_ERR_FORMAT;
    g->alignment = GGUF_DEFAULT_ALIGNMENT;
    int64_t ai = speck_gguf_find_key(g, "general.alignment");
    if (ai >= 0) {
        if (g->kv[ai].type != SPECK_GGUF_UINT32)
            return speck_set_error(SPECK_ERR_FORMAT, "%s: general.alignment must be u32", g->path);
        uint32_t a;
        memcpy(&a, g->kv[ai].data, 4);
        if (a == 0 || (a & (a - 1)))
            return speck_set_error(SPECK_ERR_FORMAT,
                                   "%s: general.alignment = %u is not a power of two", g->path, a);
        // Tensor data is read in place as f32 / f16 / ... values: each must start aligned for
        // its widest element (8 bytes), which smaller alignments do not guarantee.
        if (a < GGUF_MIN_ALIGNMENT)
            return speck_set_error(SPECK_ERR_UNSUPPORTED,
                                   "%s: general.alignment = %u is below %d, which speck needs to "
                                   "read tensors in place",
                                   g->path, a, GGUF_MIN_ALIGNMENT);
        g->alignment = a;
    }
    for (uint64_t i = 0; i < nt; i++) {
        g->n_tensors = (int64_t)i + 1;
        if (read_tensor(g, &c, &g->tensors[i], (int64_t)i)) return SPECK_ERR_FORMAT;
    }
    if (!(g->tensor_order = sort_names(g, g->n_tensors, false, "tensor name")))
        return SPECK_ERR_FORMAT;
    size_t hdr = (size_t)(c.p - g->map);
    g->data_offset = (hdr + g->alignment - 1) / g->alignment * g->alignment;
    if (nt && g->data_offset > g->size)
        return speck_set_error(SPECK_ERR_FORMAT, "%s: truncated file: no tensor data section",
                               g->path);
    for (uint64_t i = 0; i < nt; i++) {
        speck_gguf_tensor *t = &g->tensors[i];
        if (t->offset % g->alignment)
            return speck_set_error(SPECK_ERR_FORMAT,
                                   "%s: tensor '%s': offset %" PRIu64 " is not %zu-aligned",
                                   g->path, t->name, t->offset, g->alignment);
        uint64_t avail = g->size - g->data_offset;
        if (t->offset > avail || t->n_bytes > avail - t->offset)
            return speck_set_error(SPECK_ERR_FORMAT,
                                   "%s: tensor '%s': data [%" PRIu64 ", %" PRIu64
                                   ") lies beyond the end of the file (%zu bytes of data)",
                                   g->path, t->name, t->offset, t->offset + (uint64_t)t->n_bytes,
                                   (size_t)avail);
        t->data = g->map + g->data_offset + t->offset;
    }
    return check_overlaps(g);
}

#define HUGE_PAGE ((size_t)2 << 20)

// The whole file read into anonymous memory on 2 MiB boundaries, advised as transparent huge
// pages: a decode step then streams the weights through 512x fewer TLB entries and without the
// hardware prefetchers stopping at every 4 KiB page boundary, as they do on a file mapping whose
// page cache holds small folios. Read-only once filled.
static int load_anon(speck_gguf *g) {
    size_t len = (g->size + HUGE_PAGE - 1) / HUGE_PAGE * HUGE_PAGE + HUGE_PAGE;
    void *base = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (base == MAP_FAILED)
        return speck_set_error(SPECK_ERR_NOMEM, "%s: cannot allocate %zu bytes for the weights: %s",
                               g->path, g->size, strerror(errno));
    g->anon = base;
    g->anon_len = len;
    uint8_t *p = (uint8_t *)(((uintptr_t)base + HUGE_PAGE - 1) & ~(uintptr_t)(HUGE_PAGE - 1));
#ifdef MADV_HUGEPAGE
    madvise(p, g->size, MADV_HUGEPAGE); // advice only: without THP the copy still works
#endif
    for (size_t off = 0; off < g->size;) {
        ssize_t r = pread(g->fd, p + off, g->size - off, (off_t)off);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0)
            return speck_set_error(SPECK_ERR_IO, "%s: read failed at byte %zu: %s", g->path, off,
                                   r ? strerror(errno) : "file shrank while loading");
        off += (size_t)r;
    }
    mprotect(base, len, PROT_READ);
    g->map = p;
    return 0;
}

const uint8_t *speck_gguf_bytes(const speck_gguf *g) {
    return g->map;
}

int speck_gguf_file_mapped(const speck_gguf *g) {
    return !g->anon && g->map;
}

int speck_gguf_release(speck_gguf *g, const void *p, size_t len) {
    if (!speck_gguf_file_mapped(g)) return -1; // an anonymous copy would lose the data
    const uintptr_t page = 4096, lo = ((uintptr_t)p + page - 1) & ~(page - 1),
                    hi = ((uintptr_t)p + len) & ~(page - 1);
    if (hi > lo) madvise((void *)lo, hi - lo, MADV_DONTNEED); // re-read from the file if touched
    return 0;
}

speck_gguf *speck_gguf_open(const char *path) {
    return speck_gguf_open_ex(path, 0);
}

speck_gguf *speck_gguf_open_ex(const char *path, unsigned flags) {
    speck_gguf *g = calloc(1, sizeof *g);
    if (!g) {
        speck_set_error(SPECK_ERR_NOMEM, "out of memory");
        return NULL;
    }
    g->fd = -1;
    g->path = strdup(path);
    g->fd = open(path, O_RDONLY);
    if (g->fd < 0) {
        speck_set_error(SPECK_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
        goto fail;
    }
    struct stat st;
    if (fstat(g->fd, &st) || !S_ISREG(st.st_mode)) {
        speck_set_error(SPECK_ERR_IO, "%s: not a regular file", path);
        goto fail;
    }
    g->size = (size_t)st.st_size;
    if (g->size == 0) {
        speck_set_error(SPECK_ERR_FORMAT, "%s: empty file (not a GGUF file)", path);
        goto fail;
    }
    if (flags & SPECK_LOAD_HUGEPAGES) {
        if (load_anon(g)) goto fail;
    } else {
        g->map = mmap(NULL, g->size, PROT_READ, MAP_SHARED, g->fd, 0);
        if (g->map == MAP_FAILED) {
            g->map = NULL;
            speck_set_error(SPECK_ERR_IO, "%s: mmap failed: %s", path, strerror(errno));
            goto fail;
        }
        // Advice only: pages this mapping faults in from disk are read into 2 MiB page-cache
        // folios, which the kernel maps with one TLB entry each (measured: a freshly read 600 MB
        // file ends up ~97 % PMD-mapped with it, ~90 % without). Pages already cached keep
        // their size.
#ifdef MADV_HUGEPAGE
        madvise(g->map, g->size, MADV_HUGEPAGE);
#endif
    }
    if (parse(g)) goto fail;
    return g;
fail:
    speck_gguf_close(g);
    return NULL;
}

const char *speck_gguf_path(const speck_gguf *g) {
    return g->path;
}
uint32_t speck_gguf_version(const speck_gguf *g) {
    return g->version;
}
size_t speck_gguf_file_size(const speck_gguf *g) {
    return g->size;
}
size_t speck_gguf_alignment(const speck_gguf *g) {
    return g->alignment;
}
int64_t speck_gguf_n_kv(const speck_gguf *g) {
    return g->n_kv;
}
const char *speck_gguf_key(const speck_gguf *g, int64_t i) {
    return g->kv[i].key;
}

int64_t speck_gguf_find_key(const speck_gguf *g, const char *key) {
    return g->key_order ? find_name(g->key_order, g->n_kv, key) : -1;
}

speck_gguf_vtype speck_gguf_kv_type(const speck_gguf *g, int64_t i) {
    return g->kv[i].type;
}
speck_gguf_vtype speck_gguf_arr_type(const speck_gguf *g, int64_t i) {
    return g->kv[i].arr_type;
}

int64_t speck_gguf_arr_n(const speck_gguf *g, int64_t i) {
    return g->kv[i].type == SPECK_GGUF_ARRAY ? (int64_t)g->kv[i].n : 0;
}

const void *speck_gguf_arr_data(const speck_gguf *g, int64_t i) {
    return g->kv[i].type == SPECK_GGUF_ARRAY && g->kv[i].arr_type != SPECK_GGUF_STRING
               ? g->kv[i].data
               : NULL;
}

const char *speck_gguf_arr_str(const speck_gguf *g, int64_t i, int64_t j, uint64_t *len) {
    const gguf_kv *kv = &g->kv[i];
    if (kv->type != SPECK_GGUF_ARRAY || kv->arr_type != SPECK_GGUF_STRING || j < 0 ||
        (uint64_t)j >= kv->n)
        return NULL;
    const uint8_t *p = kv->data + kv->str_off[j];
    memcpy(len, p, 8);
    return (const char *)p + 8;
}

// Value of a scalar of type t at p, as double / int64.
static double scalar_f(speck_gguf_vtype t, const uint8_t *p) {
    union {
        uint8_t u8;
        int8_t i8;
        uint16_t u16;
        int16_t i16;
        uint32_t u32;
        int32_t i32;
        float f32;
        uint64_t u64;
        int64_t i64;
        double f64;
    } v;
    memcpy(&v, p, speck_gguf_vtype_size(t));
    switch (t) {
    case SPECK_GGUF_UINT8:
        return v.u8;
    case SPECK_GGUF_BOOL:
        return v.u8 != 0;
    case SPECK_GGUF_INT8:
        return v.i8;
    case SPECK_GGUF_UINT16:
        return v.u16;
    case SPECK_GGUF_INT16:
        return v.i16;
    case SPECK_GGUF_UINT32:
        return v.u32;
    case SPECK_GGUF_INT32:
        return v.i32;
    case SPECK_GGUF_FLOAT32:
        return v.f32;
    case SPECK_GGUF_UINT64:
        return (double)v.u64;
    case SPECK_GGUF_INT64:
        return (double)v.i64;
    case SPECK_GGUF_FLOAT64:
        return v.f64;
    default:
        return 0;
    }
}

static int64_t scalar_i(speck_gguf_vtype t, const uint8_t *p) {
    if (t == SPECK_GGUF_UINT64 || t == SPECK_GGUF_INT64) {
        int64_t v;
        memcpy(&v, p, 8);
        return v;
    }
    // A float key converts toward zero, saturating at int64's range and NaN giving 0: the plain
    // conversion of such values is undefined (a file can hold bos_token_id = 1e27 as f32).
    const double f = scalar_f(t, p);
    if (!(f == f)) return 0;
    if (f >= 9223372036854775808.0) return INT64_MAX;
    if (f < -9223372036854775808.0) return INT64_MIN;
    return (int64_t)f;
}

int64_t speck_gguf_get_int(const speck_gguf *g, int64_t i) {
    const gguf_kv *kv = &g->kv[i];
    return speck_gguf_vtype_size(kv->type) ? scalar_i(kv->type, kv->data) : 0;
}

double speck_gguf_get_float(const speck_gguf *g, int64_t i) {
    const gguf_kv *kv = &g->kv[i];
    return speck_gguf_vtype_size(kv->type) ? scalar_f(kv->type, kv->data) : 0;
}

const char *speck_gguf_get_str(const speck_gguf *g, int64_t i) {
    return g->kv[i].type == SPECK_GGUF_STRING ? g->kv[i].str : NULL;
}

// Append printable text of n bytes of s to buf: control characters, bytes that are not part of
// valid UTF-8 (a damaged or non-text string), quotes and backslashes escaped, so the value reads
// back unambiguously and a terminal never receives raw bytes. Stops before a character that does
// not fit.
static void put_text(char *buf, size_t size, size_t *pos, const char *s, uint64_t n) {
    for (uint64_t k = 0; k < n && *pos + 5 < size;) {
        unsigned char ch = (unsigned char)s[k];
        uint32_t cp;
        const int len = tok_utf8_next(s + k, (size_t)(n - k), &cp);
        if (cp == 0xFFFFFFFFu || ch < 32 || ch == 127) {
            if (ch == '\n')
                *pos += (size_t)snprintf(buf + *pos, size - *pos, "\\n");
            else
                *pos += (size_t)snprintf(buf + *pos, size - *pos, "\\x%02x", ch);
            k++;
            continue;
        }
        const size_t esc = ch == '"' || ch == '\\';
        if (*pos + esc + (size_t)len + 5 >= size) break;
        if (esc) buf[(*pos)++] = '\\';
        memcpy(buf + *pos, s + k, (size_t)len);
        *pos += (size_t)len;
        k += (uint64_t)len;
    }
    buf[*pos < size ? *pos : size - 1] = 0;
}

static void put_scalar(char *buf, size_t size, size_t *pos, speck_gguf_vtype t, const uint8_t *p) {
    if (*pos >= size) return;
    int w;
    if (t == SPECK_GGUF_FLOAT32 || t == SPECK_GGUF_FLOAT64)
        w = snprintf(buf + *pos, size - *pos, "%g", scalar_f(t, p));
    else if (t == SPECK_GGUF_BOOL)
        w = snprintf(buf + *pos, size - *pos, "%s", *p ? "true" : "false");
    else if (t == SPECK_GGUF_UINT64)
        w = snprintf(buf + *pos, size - *pos, "%" PRIu64, (uint64_t)scalar_i(t, p));
    else
        w = snprintf(buf + *pos, size - *pos, "%" PRId64, scalar_i(t, p));
    *pos += w > 0 ? (size_t)w : 0;
    if (*pos >= size) *pos = size - 1;
}

char *speck_gguf_value_str(const speck_gguf *g, int64_t i, char *buf, size_t size, int max_items) {
    const gguf_kv *kv = &g->kv[i];
    size_t pos = 0;
    buf[0] = 0;
    if (size < 16) return buf;
    if (kv->type == SPECK_GGUF_STRING) {
        buf[pos++] = '"';
        put_text(buf, size - 2, &pos, (const char *)kv->data, kv->n);
        buf[pos++] = '"';
        buf[pos] = 0;
        return buf;
    }
    if (kv->type != SPECK_GGUF_ARRAY) {
        put_scalar(buf, size, &pos, kv->type, kv->data);
        return buf;
    }
    pos += (size_t)snprintf(buf, size, "[%s x %" PRIu64 "] ", vtype_name(kv->arr_type), kv->n);
    for (uint64_t j = 0; j < kv->n && (int)j < max_items && pos + 8 < size; j++) {
        if (j) pos += (size_t)snprintf(buf + pos, size - pos, ", ");
        if (kv->arr_type == SPECK_GGUF_STRING) {
            uint64_t len = 0;
            const char *s = speck_gguf_arr_str(g, i, (int64_t)j, &len);
            buf[pos++] = '"';
            put_text(buf, size - 8, &pos, s, len);
            buf[pos++] = '"';
            buf[pos] = 0;
        } else {
            put_scalar(buf, size, &pos, kv->arr_type,
                       kv->data + j * speck_gguf_vtype_size(kv->arr_type));
        }
    }
    if (kv->n > (uint64_t)max_items && pos + 5 < size) snprintf(buf + pos, size - pos, ", ...");
    return buf;
}

int64_t speck_gguf_n_tensors(const speck_gguf *g) {
    return g->n_tensors;
}

const speck_gguf_tensor *speck_gguf_tensor_at(const speck_gguf *g, int64_t i) {
    return i >= 0 && i < g->n_tensors ? &g->tensors[i] : NULL;
}

const speck_gguf_tensor *speck_gguf_find_tensor(const speck_gguf *g, const char *name) {
    const int64_t i = g->tensor_order ? find_name(g->tensor_order, g->n_tensors, name) : -1;
    return i >= 0 ? &g->tensors[i] : NULL;
}

speck_gguf *speck_gguf_open_mem(const void *data, size_t n, const char *name) {
    speck_gguf *g = calloc(1, sizeof *g);
    if (!g || !(g->path = strdup(name))) {
        free(g);
        speck_set_error(SPECK_ERR_NOMEM, "out of memory");
        return NULL;
    }
    g->fd = -1;
    g->size = n;
    // A private copy (page-aligned, like a mapping): the caller's buffer may go away, and tensor
    // data pointers must stay valid and aligned as in a file.
    g->anon_len = n ? n : 1;
    g->anon = mmap(NULL, g->anon_len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (g->anon == MAP_FAILED) {
        g->anon = NULL;
        speck_set_error(SPECK_ERR_NOMEM, "%s: cannot allocate %zu bytes", name, n);
        speck_gguf_close(g);
        return NULL;
    }
    if (n) memcpy(g->anon, data, n);
    mprotect(g->anon, g->anon_len, PROT_READ);
    g->map = g->anon;
    if (!n) {
        speck_set_error(SPECK_ERR_FORMAT, "%s: empty (not a GGUF file)", name);
        speck_gguf_close(g);
        return NULL;
    }
    if (parse(g)) {
        speck_gguf_close(g);
        return NULL;
    }
    return g;
}
