// Delta files: a GGUF with general.type "delta". Dense tensors under their model names; a
// sparse one as NAME.idx (I8 bytes: a header with the shape, then its positions as a bitmap or
// LEB128 gaps) with NAME.val (its values) or, ternary (ComPEFT), NAME.sign (a bit per value,
// 1 = negative) with NAME.val holding the one scale. Every field is validated on load.
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "adapt/adapt_internal.h"
#include "kernels/kernels.h"

#define DELTA_VERSION 1
#define IDX_HEADER 42 // encoding u8, n_dims u8, ne[4] u64, nnz u64 (little-endian)
#define IDX_BITMAP 0
#define IDX_GAPS 1
#define MAX_ELEMENTS ((int64_t)1 << 40)

/* ---- writing ------------------------------------------------------------------------------ */

typedef struct {
    void **p;
    int n;
} blobs; // buffers a writer points into until it saves

static void *blob(blobs *b, size_t n) {
    void **np = realloc(b->p, (size_t)(b->n + 1) * sizeof *np);
    if (!np) return NULL;
    b->p = np;
    return b->p[b->n++] = calloc(n ? n : 1, 1);
}

static void put_u64(uint8_t *p, uint64_t v) {
    for (int i = 0; i < 8; i++) p[i] = (uint8_t)(v >> (8 * i));
}

static size_t leb_len(uint64_t v) {
    size_t n = 1;
    while (v >= 0x80) v >>= 7, n++;
    return n;
}

// NAME.idx of t: the smaller of a bitmap and LEB128 gaps.
static uint8_t *encode_idx(const speck_delta_tensor *t, blobs *b, size_t *len) {
    size_t gaps = 0;
    for (int64_t j = 0, prev = -1; j < t->nnz; prev = t->idx[j++])
        gaps += leb_len((uint64_t)(t->idx[j] - prev - 1));
    const size_t bitmap = (size_t)((t->n + 7) / 8);
    const int enc = gaps < bitmap ? IDX_GAPS : IDX_BITMAP;
    *len = IDX_HEADER + (enc == IDX_GAPS ? gaps : bitmap);
    uint8_t *p = blob(b, *len);
    if (!p) return NULL;
    p[0] = (uint8_t)enc, p[1] = (uint8_t)t->n_dims;
    for (int k = 0; k < 4; k++) put_u64(p + 2 + 8 * k, (uint64_t)t->ne[k]);
    put_u64(p + 34, (uint64_t)t->nnz);
    uint8_t *q = p + IDX_HEADER;
    for (int64_t j = 0, prev = -1; j < t->nnz; prev = t->idx[j++]) {
        if (enc == IDX_BITMAP) {
            q[t->idx[j] / 8] |= (uint8_t)(1u << (t->idx[j] % 8));
            continue;
        }
        uint64_t v = (uint64_t)(t->idx[j] - prev - 1);
        for (; v >= 0x80; v >>= 7) *q++ = (uint8_t)(v | 0x80);
        *q++ = (uint8_t)v;
    }
    return p;
}

// n floats as value type vt (F32, F16, BF16).
static void *encode_vals(const float *x, int64_t n, speck_type vt, blobs *b) {
    void *p = blob(b, speck_type_row_size(vt, n));
    if (p) speck_quantize_row(vt, x, p, n);
    return p;
}

int speck_delta_save(const speck_delta *d, const char *path, speck_type vt) {
    if (vt != SPECK_TYPE_F32 && vt != SPECK_TYPE_F16 && vt != SPECK_TYPE_BF16)
        return speck_set_error(SPECK_ERR_ARG, "delta save: values must be f32, f16 or bf16");
    speck_gguf_writer *w = speck_gguf_writer_new();
    blobs b = {0};
    int err = !w;
    err = err || speck_gguf_set_str(w, "general.type", "delta");
    err = err || speck_gguf_set_str(w, "general.architecture", d->arch);
    err = err || speck_gguf_set_u32(w, "delta.version", DELTA_VERSION);
    err = err || speck_gguf_set_str(w, "delta.method", speck_delta_method_name(d->method));
    if (d->method == SPECK_DELTA_DARE || d->method == SPECK_DELTA_DAREX_Q) {
        err = err || speck_gguf_set_f32(w, "delta.dare.p", d->p);
        err = err || speck_gguf_set_u64(w, "delta.dare.seed", d->seed);
        err = err || speck_gguf_set_f32(w, "delta.dare.rescale", d->rescale);
    }
    if (d->method == SPECK_DELTA_COMPEFT) {
        err = err || speck_gguf_set_f32(w, "delta.compeft.density", d->density);
        err = err || speck_gguf_set_f32(w, "delta.compeft.alpha", d->alpha);
    }
    if (d->method == SPECK_DELTA_SFT)
        err = err || speck_gguf_set_str(w, "delta.sft.method", d->sft[0] ? d->sft : "sum");
    if (d->base_fp) err = err || speck_gguf_set_u64(w, "delta.base.fingerprint", d->base_fp);
    if (err) {
        speck_gguf_writer_free(w);
        return speck_set_error(SPECK_ERR_NOMEM, "delta save: out of memory");
    }
    char nm[512];
    for (int i = 0; i < d->n && !err; i++) {
        const speck_delta_tensor *t = &d->t[i];
        if (t->nnz < 0) {
            void *v = encode_vals(t->val, t->n, vt, &b);
            err = v ? speck_gguf_add_tensor(w, t->name, vt, t->n_dims, t->ne, v) : SPECK_ERR_NOMEM;
            continue;
        }
        size_t len;
        uint8_t *idx = encode_idx(t, &b, &len);
        int64_t ne = (int64_t)len;
        snprintf(nm, sizeof nm, "%s.idx", t->name);
        err = idx ? speck_gguf_add_tensor(w, nm, SPECK_GGUF_TYPE_I8, 1, &ne, idx) : SPECK_ERR_NOMEM;
        if (err) break;
        void *v;
        if (t->ternary) {
            ne = (t->nnz + 7) / 8;
            uint8_t *sg = blob(&b, (size_t)ne);
            if (!sg) {
                err = SPECK_ERR_NOMEM;
                break;
            }
            for (int64_t j = 0; j < t->nnz; j++)
                if (t->val[j] < 0) sg[j / 8] |= (uint8_t)(1u << (j % 8));
            snprintf(nm, sizeof nm, "%s.sign", t->name);
            if ((err = speck_gguf_add_tensor(w, nm, SPECK_GGUF_TYPE_I8, 1, &ne, sg))) break;
            ne = 1;
            v = encode_vals(&t->scale, 1, SPECK_TYPE_F32, &b);
            snprintf(nm, sizeof nm, "%s.val", t->name);
            err = v ? speck_gguf_add_tensor(w, nm, SPECK_TYPE_F32, 1, &ne, v) : SPECK_ERR_NOMEM;
        } else {
            ne = t->nnz;
            v = encode_vals(t->val, t->nnz, vt, &b);
            snprintf(nm, sizeof nm, "%s.val", t->name);
            err = v ? speck_gguf_add_tensor(w, nm, vt, 1, &ne, v) : SPECK_ERR_NOMEM;
        }
    }
    if (err == SPECK_ERR_NOMEM) speck_set_error(err, "delta save: out of memory");
    if (!err) err = speck_gguf_writer_save(w, path);
    speck_gguf_writer_free(w);
    for (int i = 0; i < b.n; i++) free(b.p[i]);
    free(b.p);
    return err;
}

/* ---- reading ------------------------------------------------------------------------------ */

static uint64_t get_u64(const uint8_t *p) {
    uint64_t v = 0;
    for (int i = 0; i < 8; i++) v |= (uint64_t)p[i] << (8 * i);
    return v;
}

// A key of the expected kind or an error naming it; *k its index.
static int want_key(const speck_gguf *g, const char *path, const char *key, bool str,
                    int64_t *k) {
    *k = speck_gguf_find_key(g, key);
    if (*k < 0) return speck_set_error(SPECK_ERR_FORMAT, "%s: delta file lacks key %s", path, key);
    const speck_gguf_vtype vt = speck_gguf_kv_type(g, *k);
    const bool ok = str ? vt == SPECK_GGUF_STRING
                        : vt != SPECK_GGUF_STRING && vt != SPECK_GGUF_ARRAY;
    if (!ok) return speck_set_error(SPECK_ERR_FORMAT, "%s: key %s has the wrong type", path, key);
    return 0;
}

static int want_f32(const speck_gguf *g, const char *path, const char *key, float lo, float hi,
                    float *out) {
    int64_t k;
    int err = want_key(g, path, key, false, &k);
    if (err) return err;
    const double v = speck_gguf_get_float(g, k);
    if (!(v >= lo && v <= hi))
        return speck_set_error(SPECK_ERR_FORMAT, "%s: %s = %g outside [%g, %g]", path, key, v,
                               (double)lo, (double)hi);
    *out = (float)v;
    return 0;
}

static bool has_suffix(const char *s, const char *suf) {
    size_t n = strlen(s), k = strlen(suf);
    return n > k && !strcmp(s + n - k, suf);
}

// Values of a 1-D (or, dense, any-shape) f32/f16/bf16 tensor, finite; n of them.
static float *read_vals(const speck_gguf_tensor *t, const char *path, int64_t n) {
    if (t->type != SPECK_TYPE_F32 && t->type != SPECK_TYPE_F16 && t->type != SPECK_TYPE_BF16) {
        speck_set_error(SPECK_ERR_FORMAT, "%s: tensor %s: values must be f32, f16 or bf16", path,
                        t->name);
        return NULL;
    }
    if (t->n_elements != n) {
        speck_set_error(SPECK_ERR_FORMAT, "%s: tensor %s holds %lld values, expected %lld", path,
                        t->name, (long long)t->n_elements, (long long)n);
        return NULL;
    }
    float *x = malloc((size_t)(n ? n : 1) * sizeof *x);
    if (!x) {
        speck_set_error(SPECK_ERR_NOMEM, "%s: out of memory for %s", path, t->name);
        return NULL;
    }
    speck_dequantize_row((speck_type)t->type, t->data, x, n);
    for (int64_t j = 0; j < n; j++)
        if (!isfinite(x[j])) {
            free(x);
            speck_set_error(SPECK_ERR_FORMAT, "%s: tensor %s: value %lld is not finite", path,
                            t->name, (long long)j);
            return NULL;
        }
    return x;
}

// Decode NAME.idx into t (shape, nnz, positions).
static int read_idx(const speck_gguf_tensor *ti, const char *path, speck_delta *d,
                    const char *name) {
#define BAD(...) speck_set_error(SPECK_ERR_FORMAT, __VA_ARGS__)
    if (ti->type != SPECK_GGUF_TYPE_I8 || ti->n_dims != 1)
        return BAD("%s: tensor %s must be a 1-D I8 byte stream", path, ti->name);
    const uint8_t *p = ti->data;
    const size_t len = ti->n_bytes;
    if (len < IDX_HEADER) return BAD("%s: tensor %s: truncated header", path, ti->name);
    const int enc = p[0], n_dims = p[1];
    if (enc != IDX_BITMAP && enc != IDX_GAPS)
        return BAD("%s: tensor %s: unknown index encoding %d", path, ti->name, enc);
    if (n_dims < 1 || n_dims > 4)
        return BAD("%s: tensor %s: n_dims %d outside [1, 4]", path, ti->name, n_dims);
    int64_t ne[4], n = 1;
    for (int k = 0; k < 4; k++) {
        const uint64_t v = get_u64(p + 2 + 8 * k);
        // Unsigned comparisons: a dimension above 2^63 was negative as int64_t and passed.
        if (v < 1 || v > (uint64_t)MAX_ELEMENTS || (k >= n_dims && v != 1) ||
            v > (uint64_t)MAX_ELEMENTS / (uint64_t)n)
            return BAD("%s: tensor %s: bad dimension %d (%llu)", path, ti->name, k,
                       (unsigned long long)v);
        ne[k] = (int64_t)v, n *= (int64_t)v;
    }
    const uint64_t nnz = get_u64(p + 34);
    const uint8_t *q = p + IDX_HEADER, *end = p + len;
    // Every position costs at least a byte (gaps) or a bit (bitmap): bounded by the file.
    if (nnz < 1 || nnz > (uint64_t)n ||
        (enc == IDX_GAPS ? nnz > (uint64_t)(end - q) : (uint64_t)(end - q) != (uint64_t)(n + 7) / 8))
        return BAD("%s: tensor %s: %llu positions do not fit %lld elements in %zu bytes", path,
                   ti->name, (unsigned long long)nnz, (long long)n, len);
    speck_delta_tensor *t = speck_delta_push(d, name, n_dims, ne);
    if (!t || !(t->idx = malloc((size_t)nnz * sizeof *t->idx)))
        return speck_set_error(SPECK_ERR_NOMEM, "%s: out of memory", path);
    t->nnz = (int64_t)nnz;
    int64_t k = 0;
    if (enc == IDX_BITMAP) {
        for (int64_t j = 0; j < n; j++)
            if (q[j / 8] >> (j % 8) & 1) {
                if (k == (int64_t)nnz) return BAD("%s: tensor %s: more bits than nnz", path, ti->name);
                t->idx[k++] = j;
            }
        for (int64_t j = n; j < (n + 7) / 8 * 8; j++)
            if (q[j / 8] >> (j % 8) & 1) return BAD("%s: tensor %s: bit past the end", path, ti->name);
    } else {
        int64_t prev = -1;
        while (q < end) {
            uint64_t v = 0;
            int sh = 0;
            for (;; sh += 7) {
                if (q == end || sh > 56)
                    return BAD("%s: tensor %s: bad gap at position %lld", path, ti->name,
                               (long long)k);
                const uint8_t c = *q++;
                v |= (uint64_t)(c & 0x7f) << sh;
                if (!(c & 0x80)) break;
            }
            if (k == (int64_t)nnz || v >= (uint64_t)(n - prev - 1))
                return BAD("%s: tensor %s: position %lld past the end", path, ti->name,
                           (long long)k);
            prev += (int64_t)v + 1;
            t->idx[k++] = prev;
        }
    }
    if (k != (int64_t)nnz)
        return BAD("%s: tensor %s: %lld positions, header says %llu", path, ti->name,
                   (long long)k, (unsigned long long)nnz);
    return 0;
#undef BAD
}

static const speck_gguf_tensor *find_sfx(const speck_gguf *g, const char *name, const char *sfx) {
    char nm[512];
    if ((size_t)snprintf(nm, sizeof nm, "%s%s", name, sfx) >= sizeof nm) return NULL;
    return speck_gguf_find_tensor(g, nm);
}

speck_delta *speck_delta_from_gguf(const speck_gguf *g, const char *path) {
    speck_delta *d = calloc(1, sizeof *d);
    if (!d) {
        speck_set_error(SPECK_ERR_NOMEM, "out of memory");
        return NULL;
    }
    int64_t k;
    int err = want_key(g, path, "general.type", true, &k);
    if (!err && strcmp(speck_gguf_get_str(g, k), "delta"))
        err = speck_set_error(SPECK_ERR_FORMAT, "%s: general.type is '%s', not 'delta'", path,
                              speck_gguf_get_str(g, k));
    if (!err && !(err = want_key(g, path, "general.architecture", true, &k))) {
        const char *a = speck_gguf_get_str(g, k);
        if (!*a || strlen(a) >= sizeof d->arch)
            err = speck_set_error(SPECK_ERR_FORMAT, "%s: bad general.architecture", path);
        else
            snprintf(d->arch, sizeof d->arch, "%s", a);
    }
    if (!err && !(err = want_key(g, path, "delta.version", false, &k)) &&
        speck_gguf_get_int(g, k) != DELTA_VERSION)
        err = speck_set_error(SPECK_ERR_FORMAT, "%s: delta.version %lld (speck reads %d)", path,
                              (long long)speck_gguf_get_int(g, k), DELTA_VERSION);
    if (!err && !(err = want_key(g, path, "delta.method", true, &k))) {
        const char *m = speck_gguf_get_str(g, k);
        int i = 0;
        while (i < 5 && strcmp(m, speck_delta_method_name((speck_delta_method)i))) i++;
        if (i == 5)
            err = speck_set_error(SPECK_ERR_FORMAT, "%s: delta.method '%s' is unknown", path, m);
        d->method = (speck_delta_method)i;
    }
    const bool dare = d->method == SPECK_DELTA_DARE || d->method == SPECK_DELTA_DAREX_Q;
    if (!err && dare) {
        err = want_f32(g, path, "delta.dare.p", 0, 0.999999f, &d->p);
        if (!err) err = want_f32(g, path, "delta.dare.rescale", 1e-30f, 1e30f, &d->rescale);
        if (!err && !(err = want_key(g, path, "delta.dare.seed", false, &k)))
            d->seed = (uint64_t)speck_gguf_get_int(g, k);
    }
    if (!err && d->method == SPECK_DELTA_COMPEFT) {
        err = want_f32(g, path, "delta.compeft.density", 1e-30f, 1, &d->density);
        if (!err) err = want_f32(g, path, "delta.compeft.alpha", 0, 1e30f, &d->alpha);
    }
    if (!err && d->method == SPECK_DELTA_SFT && !(err = want_key(g, path, "delta.sft.method", true, &k))) {
        const char *m = speck_gguf_get_str(g, k);
        if (strcmp(m, "spiel") && strcmp(m, "s2ft") && strcmp(m, "sum"))
            err = speck_set_error(SPECK_ERR_FORMAT, "%s: delta.sft.method '%s' is unknown", path, m);
        else
            snprintf(d->sft, sizeof d->sft, "%s", m);
    }
    if (!err && speck_gguf_find_key(g, "delta.base.fingerprint") >= 0 &&
        !(err = want_key(g, path, "delta.base.fingerprint", false, &k)))
        d->base_fp = (uint64_t)speck_gguf_get_int(g, k);
    // Tensors: NAME (dense), NAME.idx + NAME.val [+ NAME.sign] (sparse); nothing else.
    char name[512];
    for (int64_t i = 0; !err && i < speck_gguf_n_tensors(g); i++) {
        const speck_gguf_tensor *t = speck_gguf_tensor_at(g, i);
        const bool sv = has_suffix(t->name, ".val"), ss = has_suffix(t->name, ".sign");
        if (sv || ss) { // belongs to NAME.idx
            const size_t n = strlen(t->name) - (sv ? 4 : 5);
            snprintf(name, sizeof name, "%.*s", (int)n, t->name);
            if (!find_sfx(g, name, ".idx"))
                err = speck_set_error(SPECK_ERR_FORMAT, "%s: tensor %s has no %s.idx", path,
                                      t->name, name);
            continue;
        }
        if (has_suffix(t->name, ".idx")) {
            snprintf(name, sizeof name, "%.*s", (int)(strlen(t->name) - 4), t->name);
            if (d->method == SPECK_DELTA_DENSE) {
                err = speck_set_error(SPECK_ERR_FORMAT, "%s: dense delta with sparse tensor %s",
                                      path, t->name);
                break;
            }
            if (speck_gguf_find_tensor(g, name)) {
                err = speck_set_error(SPECK_ERR_FORMAT, "%s: tensor %s is both dense and sparse",
                                      path, name);
                break;
            }
            if ((err = read_idx(t, path, d, name))) break;
            speck_delta_tensor *dt = &d->t[d->n - 1];
            const speck_gguf_tensor *tv = find_sfx(g, name, ".val"), *tsg = find_sfx(g, name, ".sign");
            if (!tv) {
                err = speck_set_error(SPECK_ERR_FORMAT, "%s: tensor %s.idx has no %s.val", path,
                                      name, name);
                break;
            }
            if ((tsg != NULL) != (d->method == SPECK_DELTA_COMPEFT)) {
                err = speck_set_error(SPECK_ERR_FORMAT, "%s: tensor %s: %s", path, name,
                                      tsg ? "sign bits in a delta that is not compeft"
                                          : "compeft tensor without .sign");
                break;
            }
            if (!tsg) {
                err = (dt->val = read_vals(tv, path, dt->nnz)) ? 0 : SPECK_ERR_FORMAT;
                continue;
            }
            dt->ternary = true;
            float *sc = read_vals(tv, path, 1);
            if (!sc) {
                err = SPECK_ERR_FORMAT;
                break;
            }
            dt->scale = sc[0];
            free(sc);
            if (tsg->type != SPECK_GGUF_TYPE_I8 || tsg->n_dims != 1 ||
                (int64_t)tsg->n_bytes != (dt->nnz + 7) / 8 || !(dt->scale > 0)) {
                err = speck_set_error(SPECK_ERR_FORMAT,
                                      "%s: tensor %s.sign must be %lld I8 bytes with a scale > 0",
                                      path, name, (long long)((dt->nnz + 7) / 8));
                break;
            }
            const uint8_t *sg = tsg->data;
            if (!(dt->val = malloc((size_t)dt->nnz * sizeof *dt->val))) {
                err = speck_set_error(SPECK_ERR_NOMEM, "out of memory");
                break;
            }
            for (int64_t j = 0; j < dt->nnz; j++)
                dt->val[j] = sg[j / 8] >> (j % 8) & 1 ? -dt->scale : dt->scale;
            for (int64_t j = dt->nnz; j < (dt->nnz + 7) / 8 * 8; j++)
                if (sg[j / 8] >> (j % 8) & 1)
                    err = speck_set_error(SPECK_ERR_FORMAT, "%s: tensor %s.sign: bit past the end",
                                          path, name);
            continue;
        }
        speck_delta_tensor *dt = speck_delta_push(d, t->name, t->n_dims, t->ne);
        if (!dt) {
            err = speck_set_error(SPECK_ERR_NOMEM, "out of memory");
            break;
        }
        if (!(dt->val = read_vals(t, path, t->n_elements))) err = SPECK_ERR_FORMAT;
    }
    if (err) {
        speck_delta_free(d);
        return NULL;
    }
    return d;
}

speck_delta *speck_delta_load(const char *path) {
    speck_gguf *g = speck_gguf_open(path);
    if (!g) return NULL;
    speck_delta *d = speck_delta_from_gguf(g, path);
    speck_gguf_close(g);
    return d;
}
