// GGUF reader/writer round trips and every kind of broken file: each must fail with an error
// that names the file and the problem, never crash (this test also runs under ASan+UBSan).
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "formats/gguf_internal.h"
#include "kernels/kernels.h"
#include "speck.h"
#include "test_util.h"

static char dir[256];

static const char *tmp(const char *name) {
    static char buf[4][512];
    static int k;
    k = (k + 1) % 4;
    snprintf(buf[k], sizeof buf[k], "%s/%s", dir, name);
    return buf[k];
}

static void write_bytes(const char *path, const void *p, size_t n) {
    FILE *f = fopen(path, "wb");
    fwrite(p, 1, n, f);
    fclose(f);
}

static unsigned char *read_all(const char *path, size_t *n) {
    FILE *f = fopen(path, "rb");
    fseek(f, 0, SEEK_END);
    *n = (size_t)ftell(f);
    fseek(f, 0, SEEK_SET);
    unsigned char *p = malloc(*n);
    if (fread(p, 1, *n, f) != *n) *n = 0;
    fclose(f);
    return p;
}

// Open must fail and the error must mention both the file and `what`, whether the file is mapped
// or read into huge pages.
static void expect_open_error(const char *path, const char *what, const char *label) {
    for (unsigned flags = 0; flags <= SPECK_LOAD_HUGEPAGES; flags += SPECK_LOAD_HUGEPAGES) {
        speck_gguf *g = speck_gguf_open_ex(path, flags);
        int ok = g == NULL && strstr(speck_last_error(), path) && strstr(speck_last_error(), what);
        CHECK(ok, "%s%s: %s", label, flags ? " (hugepages)" : "",
              g ? "opened" : speck_last_error());
        speck_gguf_close(g);
    }
}

// A model read into huge pages holds the same bytes and computes the same logits as the mapped
// file. Both loaded without panel copies (the mapped one would get Q8_0 panels, a different
// kernel: its logits are compared within float rounding below).
static void test_hugepages_load(void) {
    const char *path = tmp("huge.gguf");
    CHECK(speck_init_model(speck_preset_find("tiny"), SPECK_TYPE_Q8_0, 3, path) == 0, "init tiny");
    speck_model *a = speck_model_load_ex(path, SPECK_LOAD_NO_PANELS),
                *b = speck_model_load_ex(path, SPECK_LOAD_HUGEPAGES | SPECK_LOAD_NO_PANELS);
    CHECK(a && b, "load mapped and into huge pages: %s", a && b ? "ok" : speck_last_error());
    if (a && b) {
        const speck_gguf *ga = speck_model_gguf(a), *gb = speck_model_gguf(b);
        int same = speck_gguf_n_tensors(ga) == speck_gguf_n_tensors(gb);
        for (int64_t i = 0; same && i < speck_gguf_n_tensors(ga); i++) {
            const speck_gguf_tensor *ta = speck_gguf_tensor_at(ga, i),
                                    *tb = speck_gguf_tensor_at(gb, i);
            same = ta->n_bytes == tb->n_bytes && ta->data != tb->data &&
                   !memcmp(ta->data, tb->data, ta->n_bytes);
        }
        CHECK(same, "huge-page copy holds every tensor's bytes");
        int V = speck_model_hparams(a)->n_vocab;
        float *la = malloc((size_t)V * sizeof(float)), *lb = malloc((size_t)V * sizeof(float));
        speck_ctx *ca = speck_ctx_new(a, 32), *cb = speck_ctx_new(b, 32);
        int32_t toks[3] = {1, 7, 42};
        int none = 0; // no output rows for the prompt
        int ok = ca && cb && !speck_forward(ca, 3, toks, NULL, NULL, &none, 0, NULL) &&
                 !speck_forward(cb, 3, toks, NULL, NULL, &none, 0, NULL);
        ok = ok && !speck_forward(ca, 1, toks, NULL, NULL, NULL, 1, la) &&
             !speck_forward(cb, 1, toks, NULL, NULL, NULL, 1, lb) &&
             !memcmp(la, lb, (size_t)V * sizeof(float));
        CHECK(ok, "same logits from the huge-page copy");
        // The default load (mapped, Q8_0 panels where the CPU has the kernel; their rows'
        // pages dropped) agrees within float rounding: 1e-5 x the logit scale.
        speck_model *p = speck_model_load(path);
        speck_ctx *cp = p ? speck_ctx_new(p, 32) : NULL;
        ok = cp && !speck_forward(cp, 3, toks, NULL, NULL, &none, 0, NULL) &&
             !speck_forward(cp, 1, toks, NULL, NULL, NULL, 1, la);
        double err = 0, scale = 1;
        for (int i = 0; ok && i < V; i++) {
            err = fmax(err, fabs((double)la[i] - lb[i]));
            scale = fmax(scale, fabs((double)lb[i]));
        }
        CHECK(ok && err <= 1e-5 * scale, "default load (panels) matches: max error %.2e", err);
        speck_ctx_free(cp), speck_model_free(p);
        speck_ctx_free(ca), speck_ctx_free(cb), free(la), free(lb);
    }
    speck_model_free(a);
    speck_model_free(b);
}

static void expect_load_error(const char *path, const char *what, const char *label) {
    speck_model *m = speck_model_load(path);
    int ok = m == NULL && strstr(speck_last_error(), path) && strstr(speck_last_error(), what);
    CHECK(ok, "%s: %s", label, m ? "loaded" : speck_last_error());
    speck_model_free(m);
}

// Minimal hand-built GGUF with one tensor, to corrupt header fields precisely.
static size_t build_raw(unsigned char *b, uint32_t version, uint32_t n_dims, uint64_t ne0,
                        uint64_t ne1, uint32_t type, uint64_t offset, size_t data_bytes) {
    size_t p = 0;
#define PUT(v)                                                                                     \
    do {                                                                                           \
        memcpy(b + p, &(v), sizeof(v));                                                            \
        p += sizeof(v);                                                                            \
    } while (0)
    memcpy(b, "GGUF", 4);
    p = 4;
    uint64_t nt = 1, nkv = 1, klen = 4, slen = 5, nlen = 1;
    uint32_t str = 8;
    PUT(version);
    PUT(nt);
    PUT(nkv);
    PUT(klen);
    memcpy(b + p, "name", 4), p += 4;
    PUT(str);
    PUT(slen);
    memcpy(b + p, "hello", 5), p += 5;
    PUT(nlen);
    b[p++] = 't';
    PUT(n_dims);
    PUT(ne0);
    if (n_dims > 1) PUT(ne1);
    PUT(type);
    PUT(offset);
    while (p % 32) b[p++] = 0;
    memset(b + p, 0, data_bytes);
    return p + data_bytes;
#undef PUT
}

static void test_raw_corruptions(void) {
    unsigned char b[4096];
    size_t n = build_raw(b, 3, 2, 4, 2, 0, 0, 32);
    write_bytes(tmp("ok.gguf"), b, n);
    speck_gguf *g = speck_gguf_open(tmp("ok.gguf"));
    CHECK(g && speck_gguf_n_tensors(g) == 1 && speck_gguf_tensor_at(g, 0)->n_bytes == 32,
          "hand-built file opens: %s", g ? "ok" : speck_last_error());
    if (g) {
        int64_t k = speck_gguf_find_key(g, "name");
        CHECK(k >= 0 && !strcmp(speck_gguf_get_str(g, k), "hello"), "string value read back");
    }
    speck_gguf_close(g);

    for (size_t cut = 0; cut < n; cut += (cut < 80 ? 3 : 16)) {
        write_bytes(tmp("cut.gguf"), b, cut);
        speck_gguf *h = speck_gguf_open(tmp("cut.gguf"));
        if (h) {
            CHECK(0, "truncated at %zu bytes opened", cut);
            speck_gguf_close(h);
        }
    }
    CHECK(1, "truncations at every header position rejected");
    write_bytes(tmp("cut.gguf"), b, n - 8);
    expect_open_error(tmp("cut.gguf"), "beyond the end", "tensor data cut short");
    write_bytes(tmp("empty.gguf"), b, 0);
    expect_open_error(tmp("empty.gguf"), "empty", "empty file");
    memcpy(b, "GGUX", 4);
    write_bytes(tmp("magic.gguf"), b, n);
    expect_open_error(tmp("magic.gguf"), "magic", "wrong magic");
    n = build_raw(b, 4, 2, 4, 2, 0, 0, 32);
    write_bytes(tmp("version.gguf"), b, n);
    expect_open_error(tmp("version.gguf"), "version 4", "unsupported version");
    n = build_raw(b, 3, 2, 4, 2, 0, 4096, 32);
    write_bytes(tmp("offset.gguf"), b, n);
    expect_open_error(tmp("offset.gguf"), "beyond the end", "tensor data beyond the file");
    n = build_raw(b, 3, 2, (uint64_t)1 << 62, (uint64_t)1 << 62, 0, 0, 32);
    write_bytes(tmp("dims.gguf"), b, n);
    expect_open_error(tmp("dims.gguf"), "overflow", "overflowing dimensions");
    n = build_raw(b, 3, 2, 4, 2, 200, 0, 32);
    write_bytes(tmp("type.gguf"), b, n);
    expect_open_error(tmp("type.gguf"), "unknown tensor type 200", "unknown tensor type");
    n = build_raw(b, 3, 7, 4, 2, 0, 0, 32);
    write_bytes(tmp("ndims.gguf"), b, n);
    expect_open_error(tmp("ndims.gguf"), "dimensions", "too many dimensions");
    n = build_raw(b, 3, 2, 4, 2, 0, 3, 32);
    write_bytes(tmp("align.gguf"), b, n);
    expect_open_error(tmp("align.gguf"), "aligned", "misaligned tensor offset");
    n = build_raw(b, 3, 2, 33, 1, 8, 0, 64);
    write_bytes(tmp("block.gguf"), b, n);
    expect_open_error(tmp("block.gguf"), "block size", "row not a multiple of the block size");
    expect_open_error(tmp("does-not-exist.gguf"), "cannot open", "missing file");
}

/* ---- hostile headers: the validation rules of docs/fuzzing.md ---- */

// A GGUF assembled field by field, so that counts, names and offsets can lie.
typedef struct {
    unsigned char *b;
    size_t n;
} raw;

static void raw_put(raw *r, const void *p, size_t n) {
    memcpy(r->b + r->n, p, n);
    r->n += n;
}
static void raw_u32(raw *r, uint32_t v) {
    raw_put(r, &v, 4);
}
static void raw_u64(raw *r, uint64_t v) {
    raw_put(r, &v, 8);
}
static void raw_str(raw *r, const char *s, size_t n) {
    raw_u64(r, n);
    raw_put(r, s, n);
}
// Header with the counts as given (they need not match what follows).
static void raw_header(raw *r, uint64_t n_tensors, uint64_t n_kv) {
    r->n = 0;
    raw_put(r, "GGUF", 4);
    raw_u32(r, 3);
    raw_u64(r, n_tensors);
    raw_u64(r, n_kv);
}
static void raw_kv_u32(raw *r, const char *key, uint32_t v) {
    raw_str(r, key, strlen(key));
    raw_u32(r, SPECK_GGUF_UINT32);
    raw_u32(r, v);
}
// A 1-D f32 tensor of n values at offset (relative to the data section).
static void raw_tensor(raw *r, const char *name, size_t name_len, uint64_t n, uint64_t offset) {
    raw_str(r, name, name_len);
    raw_u32(r, 1);
    raw_u64(r, n);
    raw_u32(r, SPECK_TYPE_F32);
    raw_u64(r, offset);
}
// Pad to the data section (alignment a) and append data_bytes zero bytes.
static void raw_data(raw *r, size_t a, size_t data_bytes) {
    while (r->n % a) r->b[r->n++] = 0;
    memset(r->b + r->n, 0, data_bytes);
    r->n += data_bytes;
}

static void expect_raw_error(raw *r, const char *name, const char *what, const char *label) {
    write_bytes(tmp(name), r->b, r->n);
    expect_open_error(tmp(name), what, label);
}

static bool raw_opens(raw *r, const char *name) {
    write_bytes(tmp(name), r->b, r->n);
    speck_gguf *g = speck_gguf_open(tmp(name));
    speck_gguf_close(g);
    return g != NULL;
}

static void test_hostile_headers(void) {
    raw r = {malloc(1 << 20), 0};
    // Tensor data ranges: disjoint opens; the same range, or one reaching into the next, fails
    // and names both tensors (llama.cpp refuses such files; speck loaded them silently).
    raw_header(&r, 2, 0);
    raw_tensor(&r, "a", 1, 8, 0);
    raw_tensor(&r, "b", 1, 8, 32);
    raw_data(&r, 32, 64);
    CHECK(raw_opens(&r, "disjoint.gguf"), "disjoint tensors open: %s", speck_last_error());
    raw_header(&r, 2, 0);
    raw_tensor(&r, "a", 1, 8, 0);
    raw_tensor(&r, "b", 1, 8, 0);
    raw_data(&r, 32, 64);
    expect_raw_error(&r, "same.gguf", "tensors 'a' and 'b' overlap", "two tensors on one range");
    raw_header(&r, 2, 0);
    raw_tensor(&r, "b", 1, 8, 32);
    raw_tensor(&r, "a", 1, 16, 0); // 64 bytes from 0: into b's range, declared after it
    raw_data(&r, 32, 96);
    expect_raw_error(&r, "partial.gguf", "tensors 'a' and 'b' overlap", "partly overlapping");
    raw_header(&r, 2, 0);
    raw_tensor(&r, "a", 1, 8, 0);
    raw_tensor(&r, "empty", 5, 0, 0); // no bytes: overlaps nothing
    raw_data(&r, 32, 32);
    CHECK(raw_opens(&r, "empty.gguf"), "an empty tensor overlaps nothing: %s", speck_last_error());

    // general.alignment: offsets must be multiples of it, and it a power of two.
    raw_header(&r, 1, 1);
    raw_kv_u32(&r, "general.alignment", 64);
    raw_tensor(&r, "t", 1, 8, 64);
    raw_data(&r, 64, 128);
    CHECK(raw_opens(&r, "align64.gguf"), "64-aligned file opens: %s", speck_last_error());
    raw_header(&r, 1, 1);
    raw_kv_u32(&r, "general.alignment", 64);
    raw_tensor(&r, "t", 1, 8, 32);
    raw_data(&r, 64, 128);
    expect_raw_error(&r, "align32.gguf", "offset 32 is not 64-aligned", "offset off alignment");
    raw_header(&r, 0, 1);
    raw_kv_u32(&r, "general.alignment", 48);
    expect_raw_error(&r, "align48.gguf", "general.alignment = 48 is not a power of two",
                     "alignment not a power of two");
    raw_header(&r, 0, 1);
    raw_kv_u32(&r, "general.alignment", 2); // f32 data at odd multiples of 2: misaligned reads
    expect_raw_error(&r, "align2.gguf", "general.alignment = 2 is below 8", "alignment below 8");

    // Counts: a header may not promise more records than the file has bytes for, nor more than
    // the format's bounds, however large the file (no allocation is made for them).
    raw_header(&r, 1 << 20, 0);
    raw_data(&r, 1, 1000);
    expect_raw_error(&r, "ntensors.gguf", "tensor count 1048576", "tensor count beyond the file");
    raw_header(&r, 0, 1 << 20);
    raw_data(&r, 1, 1000);
    expect_raw_error(&r, "nkv.gguf", "key/value count 1048576", "key count beyond the file");
    raw_header(&r, (1 << 20) + 1, 0);
    expect_raw_error(&r, "ntensors_cap.gguf", "implausible header", "tensor count over the cap");
    raw_header(&r, 0, 1);
    raw_str(&r, "strs", 4);
    raw_u32(&r, SPECK_GGUF_ARRAY);
    raw_u32(&r, SPECK_GGUF_STRING);
    raw_u64(&r, (uint64_t)1 << 40);
    raw_data(&r, 1, 64);
    expect_raw_error(&r, "strarr.gguf", "string array of 1099511627776 elements runs past",
                     "string array count beyond the file");
    raw_header(&r, 0, 1);
    raw_str(&r, "u64s", 4);
    raw_u32(&r, SPECK_GGUF_ARRAY);
    raw_u32(&r, SPECK_GGUF_UINT64);
    raw_u64(&r, (uint64_t)1 << 62); // x 8 bytes overflows 64 bits
    raw_data(&r, 1, 64);
    expect_raw_error(&r, "u64arr.gguf", "array of 4611686018427387904 elements runs past",
                     "array size overflowing 64 bits");
    raw_header(&r, 1, 0);
    raw_str(&r, "t", 1);
    raw_u32(&r, 2);
    raw_u64(&r, (uint64_t)1 << 32);
    raw_u64(&r, (uint64_t)1 << 30); // 2^62 elements fit int64; x 4 bytes does not fit size_t
    raw_u32(&r, SPECK_TYPE_F32);
    raw_u64(&r, 0);
    raw_data(&r, 32, 32);
    expect_raw_error(&r, "bytes.gguf", "size overflows", "tensor byte size overflowing");

    // Float keys read as integers (a token id stored as f32): defined for any value.
    raw_header(&r, 0, 4);
    const float fv[4] = {1e27f, -1e27f, NAN, -3.7f};
    for (int i = 0; i < 4; i++) {
        char key[8];
        snprintf(key, sizeof key, "f%d", i);
        raw_str(&r, key, strlen(key));
        raw_u32(&r, SPECK_GGUF_FLOAT32);
        raw_put(&r, &fv[i], 4);
    }
    write_bytes(tmp("floats.gguf"), r.b, r.n);
    speck_gguf *fg = speck_gguf_open(tmp("floats.gguf"));
    CHECK(fg && speck_gguf_get_int(fg, 0) == INT64_MAX && speck_gguf_get_int(fg, 1) == INT64_MIN &&
              speck_gguf_get_int(fg, 2) == 0 && speck_gguf_get_int(fg, 3) == -3,
          "f32 keys as integers saturate (NaN: 0): %s", fg ? "" : speck_last_error());
    speck_gguf_close(fg);

    // Names: unique, without NUL bytes (a C string would silently cut them short).
    raw_header(&r, 0, 2);
    raw_kv_u32(&r, "k", 1);
    raw_kv_u32(&r, "k", 2);
    expect_raw_error(&r, "dupkey.gguf", "duplicate key 'k'", "duplicate key");
    raw_header(&r, 2, 0);
    raw_tensor(&r, "t", 1, 8, 0);
    raw_tensor(&r, "t", 1, 8, 32);
    raw_data(&r, 32, 64);
    expect_raw_error(&r, "duptensor.gguf", "duplicate tensor name 't'", "duplicate tensor name");
    raw_header(&r, 0, 1);
    raw_kv_u32(&r, "general.name", 1);
    r.b[4 + 4 + 16 + 8 + 7] = 0; // "general\0name"
    expect_raw_error(&r, "nulkey.gguf", "key #0 contains a NUL byte", "NUL in a key");
    raw_header(&r, 1, 0);
    raw_tensor(&r, "a\0b", 3, 8, 0);
    raw_data(&r, 32, 32);
    expect_raw_error(&r, "nultensor.gguf", "tensor #0 contains a NUL byte", "NUL in a name");

    // Many tensors: each found by name (lookups are a binary search over the sorted names), and
    // one repeated name among them still caught.
    const int many = 20000;
    raw big = {malloc((size_t)many * (48 + 32) + 4096), 0}; // records + data
    for (int dup = 0; dup < 2; dup++) {
        raw_header(&big, (uint64_t)many, 0);
        char name[32];
        for (int i = 0; i < many; i++) {
            int len = snprintf(name, sizeof name, "blk.%d.w", dup && i == many - 1 ? 77 : i);
            raw_tensor(&big, name, (size_t)len, 8, (uint64_t)i * 32);
        }
        raw_data(&big, 32, (size_t)many * 32);
        write_bytes(tmp("many.gguf"), big.b, big.n);
        if (dup) {
            expect_open_error(tmp("many.gguf"), "duplicate tensor name 'blk.77.w'",
                              "a repeated name among 20000");
            break;
        }
        speck_gguf *g = speck_gguf_open(tmp("many.gguf"));
        bool found = g != NULL;
        for (int i = 0; found && i < many; i++) {
            snprintf(name, sizeof name, "blk.%d.w", i);
            const speck_gguf_tensor *t = speck_gguf_find_tensor(g, name);
            found = t && t->offset == (uint64_t)i * 32;
        }
        CHECK(found && !speck_gguf_find_tensor(g, "blk.20000.w"),
              "every one of 20000 tensors found by name: %s", g ? "" : speck_last_error());
        speck_gguf_close(g);
    }
    free(big.b);

    // The writer aligns to 32 whatever general.alignment it is given, so it leaves the key out
    // (a file copied from a 64-aligned one would otherwise not open).
    speck_gguf_writer *w = speck_gguf_writer_new();
    speck_gguf_set_u32(w, "general.alignment", 64);
    static float data[16];
    const int64_t ne[1] = {16};
    speck_gguf_add_tensor(w, "x", SPECK_TYPE_F32, 1, ne, data);
    speck_gguf_add_tensor(w, "y", SPECK_TYPE_F32, 1, ne, data);
    CHECK(speck_gguf_writer_save(w, tmp("walign.gguf")) == 0, "save");
    speck_gguf_writer_free(w);
    speck_gguf *g = speck_gguf_open(tmp("walign.gguf"));
    CHECK(g && speck_gguf_alignment(g) == 32 && speck_gguf_find_key(g, "general.alignment") < 0,
          "writer drops general.alignment: %s", g ? "" : speck_last_error());
    speck_gguf_close(g);
    free(r.b);
}

// Rewrite `src` with key `drop` removed, key/value overrides, and tensor `skip` left out.
static void rewrite(const char *src, const char *dst, const char *drop, const char *set_arch,
                    const char *skip) {
    speck_gguf *g = speck_gguf_open(src);
    speck_gguf_writer *w = speck_gguf_writer_new();
    for (int64_t i = 0; i < speck_gguf_n_kv(g); i++)
        if (!drop || strcmp(speck_gguf_key(g, i), drop)) speck_gguf_copy_kv(w, g, i);
    if (set_arch) speck_gguf_set_str(w, "general.architecture", set_arch);
    for (int64_t i = 0; i < speck_gguf_n_tensors(g); i++) {
        const speck_gguf_tensor *t = speck_gguf_tensor_at(g, i);
        if (skip && !strcmp(t->name, skip)) continue;
        speck_gguf_add_tensor(w, t->name, (speck_type)t->type, t->n_dims, t->ne, t->data);
    }
    if (speck_gguf_writer_save(w, dst)) fprintf(stderr, "rewrite: %s\n", speck_last_error());
    speck_gguf_writer_free(w);
    speck_gguf_close(g);
}

// One key/value to set when rewriting a model (the key's old value, if any, is dropped).
typedef struct {
    const char *key;
    speck_gguf_vtype type; // UINT32, UINT64, FLOAT32 or STRING
    uint64_t u;
    float f;
    const char *s;
} kv_set;

static void rewrite_kvs(const char *src, const char *dst, const kv_set *set, int n) {
    speck_gguf *g = speck_gguf_open(src);
    speck_gguf_writer *w = speck_gguf_writer_new();
    for (int64_t i = 0; i < speck_gguf_n_kv(g); i++) {
        bool replaced = false;
        for (int k = 0; k < n; k++) replaced |= !strcmp(speck_gguf_key(g, i), set[k].key);
        if (!replaced) speck_gguf_copy_kv(w, g, i);
    }
    for (int k = 0; k < n; k++) {
        if (set[k].type == SPECK_GGUF_UINT32) speck_gguf_set_u32(w, set[k].key, (uint32_t)set[k].u);
        if (set[k].type == SPECK_GGUF_UINT64) speck_gguf_set_u64(w, set[k].key, set[k].u);
        if (set[k].type == SPECK_GGUF_FLOAT32) speck_gguf_set_f32(w, set[k].key, set[k].f);
        if (set[k].type == SPECK_GGUF_STRING) speck_gguf_set_str(w, set[k].key, set[k].s);
    }
    for (int64_t i = 0; i < speck_gguf_n_tensors(g); i++) {
        const speck_gguf_tensor *t = speck_gguf_tensor_at(g, i);
        speck_gguf_add_tensor(w, t->name, (speck_type)t->type, t->n_dims, t->ne, t->data);
    }
    if (speck_gguf_writer_save(w, dst)) fprintf(stderr, "rewrite: %s\n", speck_last_error());
    speck_gguf_writer_free(w);
    speck_gguf_close(g);
}

// Hyper-parameters a hostile file may set: each refused with the key named, before anything
// is allocated from it.
static void test_hostile_hparams(const char *base) {
    const speck_gguf_vtype U32 = SPECK_GGUF_UINT32, U64 = SPECK_GGUF_UINT64,
                           F32 = SPECK_GGUF_FLOAT32, STR = SPECK_GGUF_STRING;
    static const struct {
        const char *label, *want;
        kv_set set[3];
    } cases[] = {
        {"block_count beyond the tensors (a 2^30-entry layer table otherwise)",
         "llama.block_count = 1000000, but the file has only",
         {{"llama.block_count", U32, 1000000, 0, NULL}}},
        {"key_length wrapping around int",
         "'llama.attention.key_length' = 4294967312",
         {{"llama.attention.key_length", U64, (1ull << 32) + 16, 0, NULL}}},
        {"head_count_kv of 0",
         "'llama.attention.head_count_kv' = 0 is out of range",
         {{"llama.attention.head_count_kv", U32, 0, 0, NULL}}},
        {"heads x head dimension over 2^30",
         "1048576 heads x head dimension 2048 is too large",
         {{"llama.attention.head_count", U32, 1 << 20, 0, NULL},
          {"llama.attention.key_length", U32, 2048, 0, NULL},
          {"llama.attention.value_length", U32, 2048, 0, NULL}}},
        {"NaN rope.freq_base",
         "'llama.rope.freq_base' = nan is out of range",
         {{"llama.rope.freq_base", F32, 0, NAN, NULL}}},
        {"negative epsilon",
         "'llama.attention.layer_norm_rms_epsilon' = -1 is out of range",
         {{"llama.attention.layer_norm_rms_epsilon", F32, 0, -1.0f, NULL}}},
        {"infinite linear scaling factor",
         "'llama.rope.scaling.factor' = inf is out of range",
         {{"llama.rope.scaling.type", STR, 0, 0, "linear"},
          {"llama.rope.scaling.factor", F32, 0, INFINITY, NULL}}},
        {"llama3 scaling with high <= low",
         "high_freq_factor must exceed low_freq_factor",
         {{"llama.rope.scaling.type", STR, 0, 0, "llama3"},
          {"llama.rope.scaling.low_freq_factor", F32, 0, 4.0f, NULL},
          {"llama.rope.scaling.high_freq_factor", F32, 0, 4.0f, NULL}}},
    };
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        int n = 0;
        while (n < 3 && cases[c].set[n].key) n++;
        rewrite_kvs(base, tmp("hp.gguf"), cases[c].set, n);
        expect_load_error(tmp("hp.gguf"), cases[c].want, cases[c].label);
    }
}

static void test_model_errors(void) {
    char base[512]; // tmp() rotates its buffers: keep our own copy
    snprintf(base, sizeof base, "%s", tmp("tiny.gguf"));
    CHECK(speck_init_model(speck_preset_find("tiny"), SPECK_TYPE_F32, 7, base) == 0,
          "init tiny: %s", speck_last_error());
    speck_model *m = speck_model_load(base);
    CHECK(m != NULL, "tiny model loads: %s", m ? "" : speck_last_error());
    speck_model_free(m);

    // Round trip through the writer reproduces the file byte for byte.
    rewrite(base, tmp("copy.gguf"), NULL, NULL, NULL);
    size_t n1, n2;
    unsigned char *a = read_all(base, &n1), *b = read_all(tmp("copy.gguf"), &n2);
    CHECK(n1 == n2 && !memcmp(a, b, n1), "copy through reader+writer is byte-identical");
    free(a);
    free(b);

    test_hostile_hparams(base);
    rewrite(base, tmp("nokey.gguf"), "llama.block_count", NULL, NULL);
    expect_load_error(tmp("nokey.gguf"), "missing required key 'llama.block_count'",
                      "missing required key");
    rewrite(base, tmp("noarch.gguf"), "general.architecture", NULL, NULL);
    expect_load_error(tmp("noarch.gguf"), "general.architecture", "missing architecture");
    rewrite(base, tmp("arch.gguf"), NULL, "gpt9", NULL);
    expect_load_error(tmp("arch.gguf"), "architecture 'gpt9' is not supported",
                      "unsupported architecture");
    rewrite(base, tmp("notensor.gguf"), NULL, NULL, "blk.1.ffn_down.weight");
    expect_load_error(tmp("notensor.gguf"), "missing tensor 'blk.1.ffn_down.weight'",
                      "missing tensor");

    // Vocabulary shorter than the embedding table.
    speck_gguf *g = speck_gguf_open(base);
    speck_gguf_writer *w = speck_gguf_writer_new();
    for (int64_t i = 0; i < speck_gguf_n_kv(g); i++) {
        if (!strcmp(speck_gguf_key(g, i), "tokenizer.ggml.tokens")) {
            const char *toks[3] = {"a", "b", "c"};
            speck_gguf_set_arr_str(w, "tokenizer.ggml.tokens", toks, NULL, 3);
        } else {
            speck_gguf_copy_kv(w, g, i);
        }
    }
    for (int64_t i = 0; i < speck_gguf_n_tensors(g); i++) {
        const speck_gguf_tensor *t = speck_gguf_tensor_at(g, i);
        int64_t ne[4] = {t->ne[0], t->ne[1], t->ne[2], t->ne[3]};
        // and one tensor with the wrong shape in a second file below
        speck_gguf_add_tensor(w, t->name, (speck_type)t->type, t->n_dims, ne, t->data);
    }
    speck_gguf_writer_save(w, tmp("vocab.gguf"));
    speck_gguf_writer_free(w);
    expect_load_error(tmp("vocab.gguf"), "vocabulary has 3 tokens", "vocab/shape mismatch");

    w = speck_gguf_writer_new();
    for (int64_t i = 0; i < speck_gguf_n_kv(g); i++) speck_gguf_copy_kv(w, g, i);
    for (int64_t i = 0; i < speck_gguf_n_tensors(g); i++) {
        const speck_gguf_tensor *t = speck_gguf_tensor_at(g, i);
        int64_t ne[4] = {t->ne[0], t->ne[1], t->ne[2], t->ne[3]};
        if (!strcmp(t->name, "blk.0.attn_k.weight")) ne[1] /= 2; // pretend fewer kv heads
        speck_gguf_add_tensor(w, t->name, (speck_type)t->type, t->n_dims, ne, t->data);
    }
    speck_gguf_writer_save(w, tmp("shape.gguf"));
    speck_gguf_writer_free(w);
    expect_load_error(tmp("shape.gguf"), "blk.0.attn_k.weight' has shape", "tensor shape mismatch");
    speck_gguf_close(g);

    // A failed save leaves no file behind (directory does not exist -> nothing created).
    w = speck_gguf_writer_new();
    speck_gguf_set_u32(w, "x", 1);
    CHECK(speck_gguf_writer_save(w, tmp("no/such/dir.gguf")) != 0 &&
              access(tmp("no/such/dir.gguf"), F_OK) != 0,
          "save into a missing directory fails cleanly: %s", speck_last_error());
    speck_gguf_writer_free(w);
}

static void test_all_value_types(void) {
    speck_gguf_writer *w = speck_gguf_writer_new();
    speck_gguf_set_u32(w, "u32", 4000000000u);
    speck_gguf_set_i32(w, "i32", -5);
    speck_gguf_set_u64(w, "u64", 1ull << 40);
    speck_gguf_set_f32(w, "f32", 1.5f);
    speck_gguf_set_bool(w, "bool", true);
    speck_gguf_set_str(w, "str", "héllo");
    int16_t arr[3] = {-1, 2, -3};
    speck_gguf_set_arr(w, "arr", SPECK_GGUF_INT16, arr, 3);
    const char *strs[2] = {"x", ""};
    speck_gguf_set_arr_str(w, "strs", strs, NULL, 2);
    // Damaged or non-text bytes, quotes, a control character and a 2-byte character.
    const char *odd[3] = {"a\"b\\c", "\xff\xc3", "\xc3\xa9\n\x7f"};
    speck_gguf_set_arr_str(w, "odd", odd, NULL, 3);
    float data[64];
    for (int i = 0; i < 64; i++) data[i] = (float)i;
    int64_t ne[2] = {32, 2};
    speck_gguf_add_tensor(w, "t", SPECK_TYPE_F32, 2, ne, data);
    CHECK(speck_gguf_writer_save(w, tmp("types.gguf")) == 0, "save all types");
    speck_gguf_writer_free(w);
    speck_gguf *g = speck_gguf_open(tmp("types.gguf"));
    CHECK(g != NULL, "reopen: %s", g ? "" : speck_last_error());
    if (!g) return;
    CHECK(speck_gguf_get_int(g, speck_gguf_find_key(g, "u32")) == 4000000000ll, "u32");
    CHECK(speck_gguf_get_int(g, speck_gguf_find_key(g, "i32")) == -5, "i32");
    CHECK(speck_gguf_get_int(g, speck_gguf_find_key(g, "u64")) == (1ll << 40), "u64");
    CHECK(speck_gguf_get_float(g, speck_gguf_find_key(g, "f32")) == 1.5, "f32");
    CHECK(speck_gguf_get_int(g, speck_gguf_find_key(g, "bool")) == 1, "bool");
    CHECK(!strcmp(speck_gguf_get_str(g, speck_gguf_find_key(g, "str")), "héllo"), "string");
    int64_t ai = speck_gguf_find_key(g, "arr");
    int16_t ad[3] = {0}; // array data sits unaligned in the file: copy, never dereference
    if (speck_gguf_arr_n(g, ai) == 3) memcpy(ad, speck_gguf_arr_data(g, ai), sizeof ad);
    CHECK(speck_gguf_arr_n(g, ai) == 3 && ad[0] == -1 && ad[2] == -3, "i16 array");
    int64_t si = speck_gguf_find_key(g, "strs");
    uint64_t len;
    const char *s0 = speck_gguf_arr_str(g, si, 0, &len);
    CHECK(s0 && len == 1 && *s0 == 'x' && speck_gguf_arr_str(g, si, 1, &len) && len == 0,
          "string array");
    const speck_gguf_tensor *t = speck_gguf_find_tensor(g, "t");
    CHECK(t && t->ne[0] == 32 && t->ne[1] == 2 && ((const float *)t->data)[63] == 63.0f &&
              (uintptr_t)t->data % 32 == 0,
          "tensor data aligned and intact");
    char buf[256];
    speck_gguf_value_str(g, ai, buf, sizeof buf, 8);
    CHECK(strstr(buf, "-1, 2, -3") != NULL, "value_str renders arrays: %s", buf);
    speck_gguf_value_str(g, speck_gguf_find_key(g, "odd"), buf, sizeof buf, 8);
    CHECK(!strcmp(buf, "[str x 3] \"a\\\"b\\\\c\", \"\\xff\\xc3\", \"\xc3\xa9\\n\\x7f\""),
          "value_str escapes quotes, invalid UTF-8 and control bytes: %s", buf);
    for (size_t size = 16; size < sizeof buf; size++) { // cut short: never half a character
        char small[sizeof buf];
        speck_gguf_value_str(g, speck_gguf_find_key(g, "odd"), small, size, 8);
        const char *c3 = strchr(small, '\xc3');
        CHECK(strlen(small) < size && (!c3 || c3[1] == '\xa9'), "value_str in %zu bytes: %s", size,
              small);
    }
    speck_gguf_close(g);
}

// No file named like a temporary output (OUT.tmp.XXXXXX) left in the test directory.
static bool no_temporaries(void) {
    char cmd[600];
    snprintf(cmd, sizeof cmd, "ls %s | grep -q '\\.tmp\\.'", dir);
    return system(cmd) != 0;
}

// speck_gguf_quantize on a synthetic file: each matrix holds exactly speck_quantize_row of its
// source rows in the type it should get (its own for the head and embeddings, f16 where 32 does
// not divide a row), vectors and every key are copied, general.file_type follows; then
// requantizing is refused unless allowed, and failures leave no file.
static void test_quantize(void) {
    const char *src = tmp("q_src.gguf"), *out = tmp("q_out.gguf"), *out2 = tmp("q_out2.gguf");
    struct {
        const char *name;
        int n_dims;
        int64_t ne[2];
        speck_type want; // with type q4_0, embeddings f16, head q8_0
    } ts[] = {
        {"token_embd.weight", 2, {64, 8}, SPECK_TYPE_F16},
        {"blk.0.attn_norm.weight", 1, {64, 1}, SPECK_TYPE_F32},
        {"blk.0.attn_q.weight", 2, {64, 4}, SPECK_TYPE_Q4_0},
        {"blk.0.odd.weight", 2, {48, 3}, SPECK_TYPE_F16},
        {"output.weight", 2, {64, 8}, SPECK_TYPE_Q8_0},
    };
    const int nt = (int)(sizeof ts / sizeof ts[0]);
    float *data[5];
    speck_gguf_writer *w = speck_gguf_writer_new();
    const int32_t arr[3] = {-1, 2, -3};
    speck_gguf_set_str(w, "general.architecture", "llama");
    speck_gguf_set_u32(w, "general.file_type", 0);
    speck_gguf_set_arr(w, "test.array", SPECK_GGUF_INT32, arr, 3);
    speck_gguf_set_f32(w, "test.float", 0.25f);
    for (int i = 0; i < nt; i++) {
        const int64_t n = ts[i].ne[0] * ts[i].ne[1];
        data[i] = malloc((size_t)n * sizeof(float));
        for (int64_t j = 0; j < n; j++) data[i][j] = sinf(0.37f * (float)(j + 13 * i)) * 2.0f;
        speck_gguf_add_tensor(w, ts[i].name, SPECK_TYPE_F32, ts[i].n_dims, ts[i].ne, data[i]);
    }
    CHECK(speck_gguf_writer_save(w, src) == 0, "write the quantize source: %s", speck_last_error());
    speck_gguf_writer_free(w);

    speck_quantize_opts o = {
        .type = SPECK_TYPE_Q4_0, .embd_type = SPECK_TYPE_F16, .output_type = SPECK_TYPE_Q8_0};
    CHECK(speck_gguf_quantize(src, out, &o, false) == 0, "quantize to q4_0: %s",
          speck_last_error());
    speck_gguf *a = speck_gguf_open(src), *b = speck_gguf_open(out);
    CHECK(a && b, "open source and quantized files");
    if (a && b) {
        // One key more: general.quantization_version, set as llama-quantize does.
        bool types = true, bytes = true, kv = speck_gguf_n_kv(a) + 1 == speck_gguf_n_kv(b);
        for (int i = 0; i < nt; i++) {
            const speck_gguf_tensor *t = speck_gguf_find_tensor(b, ts[i].name);
            if (!t || t->type != (int)ts[i].want || t->ne[0] != ts[i].ne[0]) {
                types = false;
                continue;
            }
            const size_t rs = speck_type_row_size(ts[i].want, ts[i].ne[0]);
            unsigned char *row = malloc(rs);
            for (int64_t r = 0; r < ts[i].ne[1]; r++) {
                speck_quantize_row(ts[i].want, data[i] + r * ts[i].ne[0], row, ts[i].ne[0]);
                bytes &= !memcmp(row, (const unsigned char *)t->data + r * rs, rs);
            }
            free(row);
        }
        for (int64_t i = 0; kv && i < speck_gguf_n_kv(a); i++) {
            const char *key = speck_gguf_key(a, i);
            const int64_t j = speck_gguf_find_key(b, key);
            char va[256], vb[256];
            kv = j >= 0;
            if (!kv || !strcmp(key, "general.file_type")) continue;
            speck_gguf_value_str(a, i, va, sizeof va, 8);
            speck_gguf_value_str(b, j, vb, sizeof vb, 8);
            kv = !strcmp(va, vb);
        }
        const int64_t ft = speck_gguf_find_key(b, "general.file_type");
        const int64_t qv = speck_gguf_find_key(b, "general.quantization_version");
        CHECK(qv >= 0 && speck_gguf_get_int(b, qv) == 2, "quantize: quantization_version 2");
        CHECK(types, "quantize: matrices q4_0, head q8_0, embeddings f16, a 48-wide matrix f16, "
                     "the norm f32");
        CHECK(bytes, "quantize: every row is speck_quantize_row of its source row");
        CHECK(kv, "quantize: every key copied");
        CHECK(ft >= 0 && speck_gguf_get_int(b, ft) == speck_gguf_file_type(SPECK_TYPE_Q4_0),
              "quantize: general.file_type names the q4_0 matrices");
    }
    speck_gguf_close(a);
    speck_gguf_close(b);

    // Requantizing the q4_0/q8_0 tensors to q8_0 is refused, naming the tensor and the flag;
    // allowed, it works.
    o = (speck_quantize_opts){.type = SPECK_TYPE_Q8_0, .embd_type = -1, .output_type = -1};
    int rc = speck_gguf_quantize(out, out2, &o, false);
    CHECK(rc == SPECK_ERR_ARG && strstr(speck_last_error(), "blk.0.attn_q.weight") &&
              strstr(speck_last_error(), "--allow-requantize") && access(out2, F_OK) != 0,
          "requantize refused without the flag: %s", speck_last_error());
    o.allow_requantize = true;
    CHECK(speck_gguf_quantize(out, out2, &o, false) == 0, "requantize allowed: %s",
          speck_last_error());
    // To f32 the quantized tensors are dequantized, no flag needed.
    o = (speck_quantize_opts){.type = SPECK_TYPE_F32, .embd_type = -1, .output_type = -1};
    CHECK(speck_gguf_quantize(out, out2, &o, false) == 0, "dequantize to f32: %s",
          speck_last_error());
    speck_gguf *q = speck_gguf_open(out), *d = speck_gguf_open(out2);
    const speck_gguf_tensor *tq = q ? speck_gguf_find_tensor(q, "blk.0.attn_q.weight") : NULL,
                            *td = d ? speck_gguf_find_tensor(d, "blk.0.attn_q.weight") : NULL;
    bool deq = tq && td && td->type == SPECK_TYPE_F32 && td->n_bytes == 64 * 4 * sizeof(float);
    float deq_row[64];
    for (int r = 0; deq && r < 4; r++) {
        speck_dequantize_row(SPECK_TYPE_Q4_0,
                             (const char *)tq->data + r * speck_type_row_size(SPECK_TYPE_Q4_0, 64),
                             deq_row, 64);
        deq = !memcmp(deq_row, (const float *)td->data + r * 64, sizeof deq_row);
    }
    CHECK(deq, "dequantized rows equal speck_dequantize_row of the q4_0 rows");
    speck_gguf_close(q);
    speck_gguf_close(d);
    // Quantizing in place is safe: the source stays mapped while its replacement is renamed in.
    o = (speck_quantize_opts){.type = SPECK_TYPE_F16, .embd_type = -1, .output_type = -1};
    CHECK(speck_gguf_quantize(src, src, &o, false) == 0, "quantize a file onto itself: %s",
          speck_last_error());
    speck_gguf *c = speck_gguf_open(src);
    CHECK(c && speck_gguf_find_tensor(c, "blk.0.attn_q.weight")->type == SPECK_TYPE_F16,
          "in place: the file now holds f16 matrices");
    speck_gguf_close(c);

    // Bad input: a missing source, an output directory that does not exist.
    rc = speck_gguf_quantize(tmp("none.gguf"), out2, &o, false);
    CHECK(rc != 0 && strstr(speck_last_error(), "none.gguf"), "missing source named: %s",
          speck_last_error());
    rc = speck_gguf_quantize(src, tmp("nodir/x.gguf"), &o, false);
    CHECK(rc != 0 && strstr(speck_last_error(), "nodir/x.gguf"), "unwritable output named: %s",
          speck_last_error());
    CHECK(no_temporaries(), "no temporary file left behind");

    // A real model: quantized, it loads and its forward pass gives finite logits.
    const char *tiny = tmp("q_tiny.gguf");
    CHECK(speck_init_model(speck_preset_find("tiny"), SPECK_TYPE_F32, 5, tiny) == 0,
          "init tiny: %s", speck_last_error());
    o = (speck_quantize_opts){.type = SPECK_TYPE_Q8_0, .embd_type = -1, .output_type = -1};
    CHECK(speck_gguf_quantize(tiny, out, &o, false) == 0, "quantize tiny to q8_0: %s",
          speck_last_error());
    speck_model *m = speck_model_load(out);
    speck_ctx *ctx = m ? speck_ctx_new(m, 16) : NULL;
    const int V = m ? speck_model_hparams(m)->n_vocab : 0;
    float *logits = malloc((size_t)(V > 0 ? V : 1) * sizeof(float));
    const int32_t toks[3] = {1, 5, 9};
    const int last = 2;
    bool finite = ctx && speck_forward(ctx, 3, toks, NULL, NULL, &last, 1, logits) == 0;
    for (int i = 0; finite && i < V; i++) finite = isfinite(logits[i]);
    CHECK(finite, "the q8_0 model loads and computes finite logits: %s",
          m ? "ok" : speck_last_error());
    free(logits);
    speck_ctx_free(ctx);
    speck_model_free(m);
    for (int i = 0; i < nt; i++) free(data[i]);
}

int main(void) {
    snprintf(dir, sizeof dir, "/tmp/speck-test-gguf-%d", (int)getpid());
    char cmd[300];
    snprintf(cmd, sizeof cmd, "mkdir -p %s", dir);
    if (system(cmd)) return 1;
    test_raw_corruptions();
    test_hostile_headers();
    test_all_value_types();
    test_model_errors();
    test_hugepages_load();
    test_quantize();
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    if (system(cmd)) return 1;
    return test_summary();
}
