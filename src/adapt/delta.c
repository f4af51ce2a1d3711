// Fine-tuning deltas: tuned − base extracted tensor by tensor, compressed by DARE / DAREx-q
// (random drop and rescale) or ComPEFT (top-k magnitude, then sign × one scale), applied back
// onto a base GGUF. The file format is in delta_io.c; docs/adaptation.md has both.
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "adapt/adapt_internal.h"
#include "formats/gguf_internal.h"
#include "formats/gguf_stream.h"
#include "kernels/kernels.h"

/* ---- the in-memory delta ------------------------------------------------------------------ */

speck_delta_tensor *speck_delta_push(speck_delta *d, const char *name, int n_dims,
                                     const int64_t *ne) {
    speck_delta_tensor *t = realloc(d->t, (size_t)(d->n + 1) * sizeof *t);
    if (!t) return NULL;
    d->t = t;
    t = &d->t[d->n];
    memset(t, 0, sizeof *t);
    if (!(t->name = strdup(name))) return NULL;
    d->n++;
    t->n_dims = n_dims;
    t->n = 1;
    for (int k = 0; k < 4; k++) {
        t->ne[k] = k < n_dims ? ne[k] : 1;
        t->n *= t->ne[k];
    }
    t->nnz = -1;
    return t;
}

void speck_delta_free(speck_delta *d) {
    if (!d) return;
    for (int i = 0; i < d->n; i++) {
        free(d->t[i].name);
        free(d->t[i].idx);
        free(d->t[i].val);
    }
    free(d->t);
    free(d);
}

const char *speck_delta_method_name(speck_delta_method m) {
    static const char *names[] = {"dense", "dare", "darex-q", "compeft", "sft"};
    return (unsigned)m < 5 ? names[m] : "?";
}

void speck_delta_get_info(const speck_delta *d, speck_delta_info *in) {
    memset(in, 0, sizeof *in);
    in->method = d->method, in->arch = d->arch, in->p = d->p, in->rescale = d->rescale;
    in->seed = d->seed, in->density = d->density, in->alpha = d->alpha;
    in->n_tensors = d->n;
    in->sft = d->sft, in->base_fp = d->base_fp;
    for (int i = 0; i < d->n; i++) {
        const speck_delta_tensor *t = &d->t[i];
        const int64_t k = t->nnz < 0 ? t->n : t->nnz;
        in->n_elements += t->n;
        in->n_stored += k;
        for (int64_t j = 0; j < k; j++) in->n_nonzero += t->val[j] != 0;
    }
}

/* ---- extract ------------------------------------------------------------------------------ */

static const char *arch_of(const speck_gguf *g) {
    int64_t k = speck_gguf_find_key(g, "general.architecture");
    const char *a = k >= 0 && speck_gguf_kv_type(g, k) == SPECK_GGUF_STRING
                        ? speck_gguf_get_str(g, k)
                        : NULL;
    return a ? a : "";
}

// x: (n) floats of tensor t (any type speck reads); SPECK_ERR_* set on failure.
static float *to_f32(const speck_gguf_tensor *t, const char *path) {
    if (!speck_type_name(t->type) || t->ne[0] % speck_type_block_size((speck_type)t->type)) {
        speck_set_error(SPECK_ERR_UNSUPPORTED, "%s: tensor %s has a type speck cannot read (%d)",
                        path, t->name, t->type);
        return NULL;
    }
    float *x = malloc((size_t)(t->n_elements ? t->n_elements : 1) * sizeof *x);
    if (!x) {
        speck_set_error(SPECK_ERR_NOMEM, "%s: out of memory for %s", path, t->name);
        return NULL;
    }
    const int64_t cols = t->ne[0], rows = t->n_elements / cols;
    const size_t rs = speck_type_row_size((speck_type)t->type, cols);
#pragma omp parallel for schedule(static) if (t->n_elements > (1 << 16))
    for (int64_t r = 0; r < rows; r++)
        speck_dequantize_row((speck_type)t->type, (const uint8_t *)t->data + rs * (size_t)r,
                             x + (size_t)r * cols, cols);
    return x;
}

// d with b + d == t in f32 arithmetic, searched a few ulps around t − b; false when none.
static bool exact_diff(float b, float t, float *out) {
    float d = t - b;
    if (b + d == t) return *out = d, true;
    float up = d, dn = d;
    for (int k = 0; k < 4; k++) {
        up = nextafterf(up, INFINITY);
        if (b + up == t) return *out = up, true;
        dn = nextafterf(dn, -INFINITY);
        if (b + dn == t) return *out = dn, true;
    }
    *out = d;
    return false;
}

speck_delta *speck_delta_extract(const char *base_path, const char *tuned_path,
                                 int64_t *n_inexact) {
    speck_gguf *gb = speck_gguf_open(base_path);
    speck_gguf *gt = gb ? speck_gguf_open(tuned_path) : NULL;
    speck_delta *d = calloc(1, sizeof *d);
    int err = !gb || !gt ? SPECK_ERR_FORMAT : 0;
    int64_t inexact = 0;
    if (!err && !d) err = speck_set_error(SPECK_ERR_NOMEM, "delta: out of memory");
    if (!err && strcmp(arch_of(gb), arch_of(gt)))
        err = speck_set_error(SPECK_ERR_ARG,
                              "delta extract: %s is architecture '%s' but %s is '%s'", base_path,
                              arch_of(gb), tuned_path, arch_of(gt));
    if (!err && (!*arch_of(gb) || strlen(arch_of(gb)) >= sizeof d->arch))
        err = speck_set_error(SPECK_ERR_FORMAT, "delta extract: %s: bad general.architecture",
                              base_path);
    if (!err) {
        snprintf(d->arch, sizeof d->arch, "%s", arch_of(gb));
        d->method = SPECK_DELTA_DENSE;
    }
    // The same tensors in both: every base tensor in the tuned model and as many tensors.
    for (int64_t i = 0; !err && i < speck_gguf_n_tensors(gb); i++) {
        const speck_gguf_tensor *b = speck_gguf_tensor_at(gb, i);
        const speck_gguf_tensor *t = speck_gguf_find_tensor(gt, b->name);
        if (!t) {
            err = speck_set_error(SPECK_ERR_ARG, "delta extract: tensor %s of %s is not in %s",
                                  b->name, base_path, tuned_path);
            break;
        }
        bool same = t->n_dims == b->n_dims;
        for (int k = 0; k < 4; k++) same &= t->ne[k] == b->ne[k];
        if (!same)
            err = speck_set_error(SPECK_ERR_ARG,
                                  "delta extract: tensor %s is [%lld, %lld, %lld, %lld] in %s but "
                                  "[%lld, %lld, %lld, %lld] in %s",
                                  b->name, (long long)b->ne[0], (long long)b->ne[1],
                                  (long long)b->ne[2], (long long)b->ne[3], base_path,
                                  (long long)t->ne[0], (long long)t->ne[1], (long long)t->ne[2],
                                  (long long)t->ne[3], tuned_path);
    }
    if (!err && speck_gguf_n_tensors(gb) != speck_gguf_n_tensors(gt)) {
        for (int64_t i = 0; i < speck_gguf_n_tensors(gt); i++) {
            const char *nm = speck_gguf_tensor_at(gt, i)->name;
            if (!speck_gguf_find_tensor(gb, nm)) {
                err = speck_set_error(SPECK_ERR_ARG,
                                      "delta extract: tensor %s of %s is not in %s", nm,
                                      tuned_path, base_path);
                break;
            }
        }
    }
    for (int64_t i = 0; !err && i < speck_gguf_n_tensors(gb); i++) {
        const speck_gguf_tensor *b = speck_gguf_tensor_at(gb, i);
        const speck_gguf_tensor *t = speck_gguf_find_tensor(gt, b->name);
        if (b->type == t->type && b->n_bytes == t->n_bytes &&
            !memcmp(b->data, t->data, b->n_bytes))
            continue; // unchanged (also covers tensors of types speck cannot read)
        float *xb = to_f32(b, base_path), *xt = xb ? to_f32(t, tuned_path) : NULL;
        if (!xb || !xt) {
            free(xb);
            err = SPECK_ERR_UNSUPPORTED;
            break;
        }
        bool any = false;
        int64_t bad = -1;
        for (int64_t j = 0; j < b->n_elements; j++) {
            if (!isfinite(xb[j]) || !isfinite(xt[j])) {
                bad = j;
                break;
            }
            float dj;
            inexact += !exact_diff(xb[j], xt[j], &dj);
            xt[j] = dj;
            any |= dj != 0;
        }
        free(xb);
        if (bad >= 0) {
            free(xt);
            err = speck_set_error(SPECK_ERR_FORMAT,
                                  "delta extract: tensor %s has a non-finite value at %lld",
                                  b->name, (long long)bad);
            break;
        }
        if (!any) {
            free(xt);
            continue;
        }
        speck_delta_tensor *dt = speck_delta_push(d, b->name, b->n_dims, b->ne);
        if (!dt) {
            free(xt);
            err = speck_set_error(SPECK_ERR_NOMEM, "delta: out of memory");
            break;
        }
        dt->val = xt;
    }
    speck_gguf_close(gb);
    speck_gguf_close(gt);
    if (err) {
        speck_delta_free(d);
        return NULL;
    }
    if (n_inexact) *n_inexact = inexact;
    return d;
}

/* ---- compression -------------------------------------------------------------------------- */

static uint64_t mix64(uint64_t x) {
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
    return x ^ (x >> 31);
}

static uint64_t fnv1a(const char *s) {
    uint64_t h = 0xcbf29ce484222325ULL;
    for (; *s; s++) h = (h ^ (uint8_t)*s) * 0x100000001b3ULL;
    return h;
}

static int need_dense(const speck_delta *d, const char *what) {
    if (d->method != SPECK_DELTA_DENSE)
        return speck_set_error(SPECK_ERR_ARG, "delta %s: the delta is already compressed (%s)",
                               what, speck_delta_method_name(d->method));
    return 0;
}

static bool is_matrix(const speck_delta_tensor *t) {
    return t->n_dims >= 2 && t->n > t->ne[0];
}

// Keep the positions where keep[j] (values val[j] · factor), dropping zeros: t becomes sparse.
static int sparsify(speck_delta_tensor *t, const uint8_t *keep, float factor) {
    int64_t k = 0;
    for (int64_t j = 0; j < t->n; j++) k += keep[j] && t->val[j] != 0;
    int64_t *idx = malloc((size_t)(k ? k : 1) * sizeof *idx);
    float *val = malloc((size_t)(k ? k : 1) * sizeof *val);
    if (!idx || !val) {
        free(idx), free(val);
        return speck_set_error(SPECK_ERR_NOMEM, "delta: out of memory for %s", t->name);
    }
    k = 0;
    for (int64_t j = 0; j < t->n; j++)
        if (keep[j] && t->val[j] != 0) idx[k] = j, val[k++] = t->val[j] * factor;
    free(t->val);
    t->val = val, t->idx = idx, t->nnz = k;
    return 0;
}

// Drop tensors left with no value.
static void drop_empty(speck_delta *d) {
    int o = 0;
    for (int i = 0; i < d->n; i++) {
        if (d->t[i].nnz == 0) {
            free(d->t[i].name), free(d->t[i].idx), free(d->t[i].val);
            continue;
        }
        d->t[o++] = d->t[i];
    }
    d->n = o;
}

int speck_delta_dare(speck_delta *d, float p, uint64_t seed, float rescale) {
    int err = need_dense(d, "dare");
    if (err) return err;
    if (!(p >= 0 && p < 1))
        return speck_set_error(SPECK_ERR_ARG, "delta dare: drop rate %g outside [0, 1)", p);
    if (!(rescale <= 0 || isfinite(rescale)))
        return speck_set_error(SPECK_ERR_ARG, "delta dare: bad rescale factor %g", rescale);
    const float factor = rescale > 0 ? rescale : 1.0f / (1.0f - p);
    for (int i = 0; i < d->n && !err; i++) {
        speck_delta_tensor *t = &d->t[i];
        if (!is_matrix(t)) continue;
        uint8_t *keep = malloc((size_t)t->n);
        if (!keep) return speck_set_error(SPECK_ERR_NOMEM, "delta: out of memory");
        const uint64_t key = mix64(seed ^ mix64(fnv1a(t->name)));
#pragma omp parallel for schedule(static) if (t->n > (1 << 16))
        for (int64_t j = 0; j < t->n; j++) {
            const uint64_t h = mix64(key + (uint64_t)(j + 1) * 0x9E3779B97F4A7C15ULL);
            keep[j] = (double)(h >> 11) * 0x1.0p-53 >= (double)p;
        }
        err = sparsify(t, keep, factor);
        free(keep);
    }
    if (err) return err;
    drop_empty(d);
    d->method = rescale > 0 ? SPECK_DELTA_DAREX_Q : SPECK_DELTA_DARE;
    d->p = p, d->seed = seed, d->rescale = factor;
    return 0;
}

// The k-th largest of x[0..n) (k in [1, n]); x is reordered.
static float kth_largest(float *x, int64_t n, int64_t k) {
    int64_t lo = 0, hi = n - 1, want = k - 1;
    while (lo < hi) {
        const float piv = x[lo + (hi - lo) / 2];
        int64_t i = lo, j = hi;
        while (i <= j) {
            while (x[i] > piv) i++;
            while (x[j] < piv) j--;
            if (i <= j) {
                float tmp = x[i];
                x[i] = x[j], x[j] = tmp;
                i++, j--;
            }
        }
        if (want <= j)
            hi = j;
        else if (want >= i)
            lo = i;
        else
            return x[want];
    }
    return x[want];
}

int speck_delta_compeft(speck_delta *d, float density, float alpha) {
    int err = need_dense(d, "compeft");
    if (err) return err;
    if (!(density > 0 && density <= 1))
        return speck_set_error(SPECK_ERR_ARG, "delta compeft: density %g outside (0, 1]",
                               density);
    if (!isfinite(alpha))
        return speck_set_error(SPECK_ERR_ARG, "delta compeft: bad scale %g", alpha);
    for (int i = 0; i < d->n && !err; i++) {
        speck_delta_tensor *t = &d->t[i];
        if (!is_matrix(t)) continue;
        int64_t k = (int64_t)ceil((double)density * (double)t->n);
        k = k < 1 ? 1 : k > t->n ? t->n : k;
        float *mag = malloc((size_t)t->n * sizeof *mag);
        uint8_t *keep = calloc((size_t)t->n, 1);
        if (!mag || !keep) {
            free(mag), free(keep);
            return speck_set_error(SPECK_ERR_NOMEM, "delta: out of memory");
        }
        double s1 = 0, s2 = 0;
        for (int64_t j = 0; j < t->n; j++) {
            mag[j] = fabsf(t->val[j]);
            s1 += t->val[j], s2 += (double)t->val[j] * t->val[j];
        }
        const float thr = kth_largest(mag, t->n, k);
        // Ties at the threshold: the first ones in index order, up to k.
        int64_t above = 0;
        for (int64_t j = 0; j < t->n; j++) above += fabsf(t->val[j]) > thr;
        int64_t ties = k - above;
        double kept_mag = 0;
        int64_t n_kept = 0;
        for (int64_t j = 0; j < t->n; j++) {
            const float a = fabsf(t->val[j]);
            keep[j] = a > thr || (a == thr && ties-- > 0);
            if (keep[j] && a != 0) kept_mag += a, n_kept++;
        }
        free(mag);
        const double mean = s1 / (double)t->n;
        const double sd = sqrt(fmax(s2 / (double)t->n - mean * mean, 0.0));
        const float scale = alpha > 0 ? (float)(alpha * sd)
                                      : (float)(n_kept ? kept_mag / (double)n_kept : 0.0);
        for (int64_t j = 0; j < t->n; j++)
            t->val[j] = t->val[j] > 0 ? scale : t->val[j] < 0 ? -scale : 0.0f;
        err = sparsify(t, keep, 1.0f);
        free(keep);
        t->ternary = true, t->scale = scale;
        if (scale == 0) t->nnz = 0;
    }
    if (err) return err;
    drop_empty(d);
    d->method = SPECK_DELTA_COMPEFT;
    d->density = density, d->alpha = alpha > 0 ? alpha : 0;
    return 0;
}

/* ---- apply -------------------------------------------------------------------------------- */

int speck_delta_apply(const char *base_path, const speck_delta *d, float scale, int type,
                      const char *out_path) {
    if (type >= 0 && !speck_type_name(type))
        return speck_set_error(SPECK_ERR_ARG, "delta apply: unsupported type %d", type);
    if (!isfinite(scale)) return speck_set_error(SPECK_ERR_ARG, "delta apply: bad scale");
    speck_gguf *g = speck_gguf_open(base_path);
    if (!g) return SPECK_ERR_FORMAT;
    int err = 0;
    if (strcmp(arch_of(g), d->arch))
        err = speck_set_error(SPECK_ERR_ARG,
                              "delta apply: the delta is for architecture '%s' but %s is '%s'",
                              d->arch, base_path, arch_of(g));
    if (!err && d->base_fp && speck_delta_gguf_fp(g) != d->base_fp)
        err = speck_set_error(SPECK_ERR_ARG,
                              "delta apply: the delta was trained on another base model than %s "
                              "(its token_embd/output_norm fingerprint differs)",
                              base_path);
    const int64_t nt = speck_gguf_n_tensors(g);
    // which[i]: the delta tensor of base tensor i, or -1.
    int *which = malloc((size_t)(nt ? nt : 1) * sizeof *which);
    int *otype = malloc((size_t)(nt ? nt : 1) * sizeof *otype);
    if (!err && (!which || !otype)) err = speck_set_error(SPECK_ERR_NOMEM, "out of memory");
    for (int64_t i = 0; !err && i < nt; i++) which[i] = -1;
    for (int k = 0; !err && k < d->n; k++) {
        const speck_delta_tensor *dt = &d->t[k];
        const speck_gguf_tensor *t = speck_gguf_find_tensor(g, dt->name);
        if (!t) {
            err = speck_set_error(SPECK_ERR_ARG, "delta apply: %s has no tensor %s", base_path,
                                  dt->name);
            break;
        }
        bool same = t->n_dims == dt->n_dims;
        for (int j = 0; j < 4; j++) same &= t->ne[j] == dt->ne[j];
        if (!same) {
            err = speck_set_error(SPECK_ERR_ARG,
                                  "delta apply: tensor %s is [%lld, %lld, %lld, %lld] in %s but "
                                  "[%lld, %lld, %lld, %lld] in the delta",
                                  dt->name, (long long)t->ne[0], (long long)t->ne[1],
                                  (long long)t->ne[2], (long long)t->ne[3], base_path,
                                  (long long)dt->ne[0], (long long)dt->ne[1],
                                  (long long)dt->ne[2], (long long)dt->ne[3]);
            break;
        }
        if (!speck_type_name(t->type) ||
            t->ne[0] % speck_type_block_size((speck_type)t->type)) {
            err = speck_set_error(SPECK_ERR_UNSUPPORTED,
                                  "delta apply: %s: tensor %s has a type speck cannot read",
                                  base_path, dt->name);
            break;
        }
    }
    for (int64_t i = 0; !err && i < nt; i++)
        for (int k = 0; k < d->n; k++)
            if (!strcmp(speck_gguf_tensor_at(g, i)->name, d->t[k].name)) which[i] = k;
    speck_gguf_writer *w = err ? NULL : speck_gguf_writer_new();
    if (!err && !w) err = speck_set_error(SPECK_ERR_NOMEM, "out of memory");
    for (int64_t i = 0; !err && i < speck_gguf_n_kv(g); i++) {
        if (type >= 0 && !strcmp(speck_gguf_key(g, i), "general.file_type")) continue;
        err = speck_gguf_copy_kv(w, g, i);
    }
    if (!err && type >= 0 &&
        speck_gguf_set_u32(w, "general.file_type",
                           (uint32_t)speck_gguf_file_type((speck_type)type)))
        err = speck_set_error(SPECK_ERR_NOMEM, "out of memory");
    for (int64_t i = 0; !err && i < nt; i++) {
        const speck_gguf_tensor *t = speck_gguf_tensor_at(g, i);
        otype[i] = t->type;
        const bool mat = t->n_dims >= 2 && t->ne[1] > 1;
        if (which[i] >= 0 && type >= 0 && mat &&
            t->ne[0] % speck_type_block_size((speck_type)type) == 0)
            otype[i] = type;
        err = speck_gguf_add_tensor(w, t->name, (speck_type)otype[i], t->n_dims, t->ne, NULL);
    }
    speck_gguf_stream *s = err ? NULL : speck_gguf_stream_open(w, out_path);
    if (!err && !s) err = SPECK_ERR_IO;
    for (int64_t i = 0; !err && i < nt; i++) {
        const speck_gguf_tensor *t = speck_gguf_tensor_at(g, i);
        if (which[i] < 0) {
            err = speck_gguf_stream_write(s, t->data, t->n_bytes);
            continue;
        }
        const speck_delta_tensor *dt = &d->t[which[i]];
        float *f = to_f32(t, base_path);
        const int64_t cols = t->ne[0], rows = t->n_elements / cols;
        const size_t ors = speck_type_row_size((speck_type)otype[i], cols);
        uint8_t *q = malloc(ors * (size_t)rows);
        if (!f || !q) {
            free(f), free(q);
            err = f ? speck_set_error(SPECK_ERR_NOMEM, "out of memory for %s", t->name)
                    : SPECK_ERR_NOMEM;
            break;
        }
        // scale 1: a plain f32 sum (the exact round trip of an f32 extract).
        if (dt->nnz < 0) {
            for (int64_t j = 0; j < dt->n; j++)
                f[j] = scale == 1.0f ? f[j] + dt->val[j] : f[j] + scale * dt->val[j];
        } else {
            for (int64_t j = 0; j < dt->nnz; j++)
                f[dt->idx[j]] = scale == 1.0f ? f[dt->idx[j]] + dt->val[j]
                                              : f[dt->idx[j]] + scale * dt->val[j];
        }
#pragma omp parallel for schedule(static)
        for (int64_t r = 0; r < rows; r++)
            speck_quantize_row((speck_type)otype[i], f + (size_t)r * cols, q + ors * r, cols);
        err = speck_gguf_stream_write(s, q, ors * (size_t)rows);
        free(f);
        free(q);
    }
    if (s) {
        if (err)
            speck_gguf_stream_abort(s);
        else
            err = speck_gguf_stream_close(s);
    }
    speck_gguf_writer_free(w);
    free(which);
    free(otype);
    speck_gguf_close(g);
    return err;
}
