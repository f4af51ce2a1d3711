// Importance matrices in llama.cpp's file formats (GGUF and the legacy .dat): reading (from a
// file or memory, fully validated), writing, checking against a model, and collecting one from
// calibration text through the forward pass's matmul hook (which also keeps the plain column
// sums, for DSnoT's means and variances; they stay in memory, the files hold only llama.cpp's
// fields).
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "formats/gguf_internal.h"
#include "speck.h"

typedef struct {
    char *name;    // the weight's tensor name
    int64_t n;     // input columns
    double *sum;   // (n) sums of squared activations
    int64_t count; // tokens summed (legacy files: the call count, see parse_dat)
    float *mean;   // (n) sum / count, made on first use
    double *sum1;  // (n) sums of the activations themselves: collected entries only (NULL when
                   // read from a file; neither format has them)
    float *xmean, *xvar; // (n) sum1 / count and sum / count - xmean^2, made on first use
} im_entry;

struct speck_imatrix {
    im_entry *e;
    int n, cap;
    char **datasets;
    int n_datasets;
    int64_t chunk_count, chunk_size;
    char *source; // the file (or what) it was read from, for messages; NULL if computed
};

void speck_imatrix_free(speck_imatrix *im) {
    if (!im) return;
    for (int i = 0; i < im->n; i++) {
        im_entry *e = &im->e[i];
        free(e->name), free(e->sum), free(e->mean), free(e->sum1), free(e->xmean), free(e->xvar);
    }
    for (int i = 0; i < im->n_datasets; i++) free(im->datasets[i]);
    free(im->datasets);
    free(im->source);
    free(im->e);
    free(im);
}

static im_entry *find(const speck_imatrix *im, const char *name) {
    for (int i = 0; i < im->n; i++)
        if (!strcmp(im->e[i].name, name)) return &im->e[i];
    return NULL;
}

// A new zeroed entry of n columns (the caller has checked the name is not there yet).
static im_entry *add(speck_imatrix *im, const char *name, size_t name_len, int64_t n) {
    if (im->n == im->cap) {
        const int cap = im->cap ? 2 * im->cap : 64;
        im_entry *e = realloc(im->e, (size_t)cap * sizeof *e);
        if (!e) return NULL;
        im->e = e, im->cap = cap;
    }
    im_entry *e = &im->e[im->n];
    *e = (im_entry){.n = n};
    e->name = malloc(name_len + 1);
    e->sum = calloc((size_t)n, sizeof *e->sum);
    if (!e->name || !e->sum) {
        free(e->name), free(e->sum);
        return NULL;
    }
    memcpy(e->name, name, name_len);
    e->name[name_len] = 0;
    im->n++;
    return e;
}

static int add_dataset(speck_imatrix *im, const char *s, size_t len) {
    char **d = realloc(im->datasets, (size_t)(im->n_datasets + 1) * sizeof *d);
    if (!d) return SPECK_ERR_NOMEM;
    im->datasets = d;
    if (!(d[im->n_datasets] = malloc(len + 1))) return SPECK_ERR_NOMEM;
    memcpy(d[im->n_datasets], s, len);
    d[im->n_datasets++][len] = 0;
    return 0;
}

int speck_imatrix_n_entries(const speck_imatrix *im) {
    return im->n;
}
const char *speck_imatrix_entry_name(const speck_imatrix *im, int i) {
    return i >= 0 && i < im->n ? im->e[i].name : NULL;
}

int64_t speck_imatrix_count(const speck_imatrix *im, const char *name) {
    const im_entry *e = find(im, name);
    return e ? e->count : 0;
}

const float *speck_imatrix_get(const speck_imatrix *im, const char *name, int64_t *n_in) {
    im_entry *e = find(im, name);
    if (!e) return NULL;
    if (!e->mean) {
        if (!(e->mean = malloc((size_t)e->n * sizeof *e->mean))) return NULL;
        // No tokens: every column equally important, as llama-quantize reads such an entry.
        for (int64_t j = 0; j < e->n; j++)
            e->mean[j] = e->count > 0 ? (float)(e->sum[j] / (double)e->count) : 1.0f;
    }
    if (n_in) *n_in = e->n;
    return e->mean;
}

// Means and variances in float64 from the sums, then rounded once (the variance clamped at 0:
// the subtraction can cancel below it by rounding).
static bool make_moments(im_entry *e) {
    if (e->xmean) return true;
    float *m = malloc((size_t)e->n * sizeof *m), *v = malloc((size_t)e->n * sizeof *v);
    if (!m || !v) {
        free(m), free(v);
        return false;
    }
    for (int64_t j = 0; j < e->n; j++) {
        const double mu = e->sum1[j] / (double)e->count;
        const double var = e->sum[j] / (double)e->count - mu * mu;
        m[j] = (float)mu, v[j] = (float)(var > 0 ? var : 0);
    }
    e->xmean = m, e->xvar = v;
    return true;
}

int speck_imatrix_moments(const speck_imatrix *im, const char *name, const float **mean,
                          const float **var, int64_t *n_in) {
    im_entry *e = find(im, name);
    if (!e || !e->sum1 || e->count <= 0)
        return speck_set_error(SPECK_ERR_ARG,
                               "imatrix: no activation means for '%s' (%s; files hold only "
                               "sums of squares)",
                               name,
                               !e        ? "no such entry"
                               : e->sum1 ? "no tokens"
                                         : "read from a file");
    if (!make_moments(e)) return speck_set_error(SPECK_ERR_NOMEM, "out of memory");
    *mean = e->xmean, *var = e->xvar;
    if (n_in) *n_in = e->n;
    return 0;
}

/* ---- reading ---- */

// Bounded little-endian reads over the legacy format's bytes.
typedef struct {
    const uint8_t *p, *end;
} rd;

static bool rd_i32(rd *r, int32_t *v) {
    if (r->end - r->p < 4) return false;
    memcpy(v, r->p, 4);
    r->p += 4;
    return true;
}

// Values must be finite and >= 0: they are sums of squares.
static int check_values(const char *what, const char *name, const float *v, int64_t n) {
    for (int64_t j = 0; j < n; j++)
        if (!(v[j] >= 0) || !isfinite(v[j]))
            return speck_set_error(SPECK_ERR_FORMAT,
                                   "%s: entry '%s': value %lld is %g (sums of squares are finite "
                                   "and >= 0)",
                                   what, name, (long long)j, (double)v[j]);
    return 0;
}

// The legacy format: stored values are sum / tokens * ncall with the count ncall, so keeping
// them as the sums with count = ncall gives llama-quantize's weights (value / ncall) back.
static int parse_dat(speck_imatrix *im, const uint8_t *data, size_t n, const char *what) {
    rd r = {data, data + n};
    int32_t n_entries;
    if (!rd_i32(&r, &n_entries) || n_entries < 1)
        return speck_set_error(SPECK_ERR_FORMAT,
                               "%s: not an imatrix file (neither GGUF nor a legacy .dat with "
                               "at least one entry)",
                               what);
    for (int32_t i = 0; i < n_entries; i++) {
        int32_t len, ncall, nval;
        if (!rd_i32(&r, &len) || len < 1 || len > 4096 || r.end - r.p < len)
            return speck_set_error(SPECK_ERR_FORMAT, "%s: entry %d: bad name length", what, i);
        const char *name = (const char *)r.p;
        r.p += len;
        if (memchr(name, 0, (size_t)len))
            return speck_set_error(SPECK_ERR_FORMAT, "%s: entry %d: NUL in the name", what, i);
        if (!rd_i32(&r, &ncall) || !rd_i32(&r, &nval) || ncall < 0 || nval < 1 ||
            (size_t)(r.end - r.p) / 4 < (size_t)nval)
            return speck_set_error(SPECK_ERR_FORMAT,
                                   "%s: entry %d ('%.*s'): bad call or value count, or the file "
                                   "ends inside its values",
                                   what, i, len, name);
        for (int k = 0; k < im->n; k++)
            if ((int32_t)strlen(im->e[k].name) == len && !memcmp(im->e[k].name, name, (size_t)len))
                return speck_set_error(SPECK_ERR_FORMAT, "%s: entry '%.*s' appears twice", what,
                                       len, name);
        im_entry *e = add(im, name, (size_t)len, nval);
        float *v = malloc((size_t)nval * sizeof *v);
        if (!e || !v) {
            free(v);
            return speck_set_error(SPECK_ERR_NOMEM, "out of memory");
        }
        memcpy(v, r.p, (size_t)nval * 4);
        r.p += (size_t)nval * 4;
        int rc = check_values(what, e->name, v, nval);
        for (int32_t j = 0; j < nval; j++) e->sum[j] = v[j];
        free(v);
        if (rc) return rc;
        e->count = ncall;
    }
    // Optional trailer: the chunk count and the dataset's name.
    int32_t chunks, len;
    if (rd_i32(&r, &chunks)) {
        im->chunk_count = chunks > 0 ? chunks : 0;
        if (rd_i32(&r, &len) && len > 0 && r.end - r.p >= len)
            return add_dataset(im, (const char *)r.p, (size_t)len);
    }
    return 0;
}

static int parse_gguf(speck_imatrix *im, const speck_gguf *g, const char *what) {
    const int64_t kd = speck_gguf_find_key(g, "imatrix.datasets");
    if (kd >= 0 && speck_gguf_kv_type(g, kd) == SPECK_GGUF_ARRAY &&
        speck_gguf_arr_type(g, kd) == SPECK_GGUF_STRING)
        for (int64_t j = 0; j < speck_gguf_arr_n(g, kd); j++) {
            uint64_t len;
            const char *s = speck_gguf_arr_str(g, kd, j, &len);
            if (s && add_dataset(im, s, (size_t)len)) return SPECK_ERR_NOMEM;
        }
    const int64_t kc = speck_gguf_find_key(g, "imatrix.chunk_count");
    const int64_t ks = speck_gguf_find_key(g, "imatrix.chunk_size");
    im->chunk_count = kc >= 0 ? speck_gguf_get_int(g, kc) : 0;
    im->chunk_size = ks >= 0 ? speck_gguf_get_int(g, ks) : 0;
    for (int64_t i = 0; i < speck_gguf_n_tensors(g); i++) {
        const speck_gguf_tensor *t = speck_gguf_tensor_at(g, i);
        const size_t len = strlen(t->name), sl = strlen(".in_sum2");
        if (len <= sl || strcmp(t->name + len - sl, ".in_sum2")) {
            if (len > strlen(".counts") && !strcmp(t->name + len - strlen(".counts"), ".counts"))
                continue; // checked with its sums
            return speck_set_error(SPECK_ERR_FORMAT,
                                   "%s: tensor '%s' is neither NAME.in_sum2 nor NAME.counts (not "
                                   "an imatrix file?)",
                                   what, t->name);
        }
        char cname[256];
        if (len - sl + strlen(".counts") >= sizeof cname)
            return speck_set_error(SPECK_ERR_FORMAT, "%s: tensor name '%s' too long", what,
                                   t->name);
        snprintf(cname, sizeof cname, "%.*s.counts", (int)(len - sl), t->name);
        const speck_gguf_tensor *c = speck_gguf_find_tensor(g, cname);
        if (!c)
            return speck_set_error(SPECK_ERR_FORMAT, "%s: '%s' has no '%s'", what, t->name, cname);
        // Dense matrices only: one count (MoE files hold one row of sums per expert).
        if (t->type != SPECK_TYPE_F32 || c->type != SPECK_TYPE_F32 || t->n_elements != t->ne[0] ||
            c->n_elements != 1 || t->ne[0] < 1)
            return speck_set_error(SPECK_ERR_FORMAT,
                                   "%s: entry '%.*s': expected f32 sums of shape (n_in, 1) and "
                                   "one f32 count (per-expert entries are not supported)",
                                   what, (int)(len - sl), t->name);
        float cnt;
        memcpy(&cnt, c->data, 4);
        // Below 2^31: the legacy format stores counts as int32 (a file accepted here must be
        // writable in both formats).
        if (!(cnt >= 0) || !(cnt < 2147483648.0f))
            return speck_set_error(SPECK_ERR_FORMAT,
                                   "%s: entry '%.*s': count %g is out of range (0 to 2^31 - 1)",
                                   what, (int)(len - sl), t->name, (double)cnt);
        im_entry *e = add(im, t->name, len - sl, t->ne[0]);
        if (!e) return speck_set_error(SPECK_ERR_NOMEM, "out of memory");
        const float *v = t->data; // GGUF tensor data is aligned
        int rc = check_values(what, e->name, v, t->ne[0]);
        if (rc) return rc;
        for (int64_t j = 0; j < t->ne[0]; j++) e->sum[j] = v[j];
        e->count = (int64_t)llround(cnt);
    }
    if (im->n == 0)
        return speck_set_error(SPECK_ERR_FORMAT, "%s: no imatrix entries (NAME.in_sum2 tensors)",
                               what);
    return 0;
}

speck_imatrix *speck_imatrix_parse(const void *data, size_t n, const char *what) {
    speck_imatrix *im = calloc(1, sizeof *im);
    if (!im) {
        speck_set_error(SPECK_ERR_NOMEM, "out of memory");
        return NULL;
    }
    int rc = (im->source = strdup(what)) ? 0 : speck_set_error(SPECK_ERR_NOMEM, "out of memory");
    if (rc) {
    } else if (n >= 4 && !memcmp(data, "GGUF", 4)) {
        speck_gguf *g = speck_gguf_open_mem(data, n, what);
        rc = g ? parse_gguf(im, g, what) : SPECK_ERR_FORMAT;
        speck_gguf_close(g);
    } else {
        rc = parse_dat(im, data, n, what);
    }
    if (rc) {
        speck_imatrix_free(im);
        return NULL;
    }
    return im;
}

speck_imatrix *speck_imatrix_load(const char *path) {
    FILE *f = fopen(path, "rb");
    if (!f) {
        speck_set_error(SPECK_ERR_IO, "%s: cannot open", path);
        return NULL;
    }
    size_t cap = 1 << 16, n = 0, got;
    uint8_t *buf = malloc(cap);
    while (buf && (got = fread(buf + n, 1, cap - n, f)) > 0) {
        n += got;
        if (n == cap) {
            uint8_t *b = realloc(buf, cap *= 2);
            if (!b) free(buf);
            buf = b;
        }
    }
    const bool bad = ferror(f);
    fclose(f);
    if (!buf || bad) {
        free(buf);
        speck_set_error(bad ? SPECK_ERR_IO : SPECK_ERR_NOMEM, "%s: read failed", path);
        return NULL;
    }
    speck_imatrix *im = speck_imatrix_parse(buf, n, path);
    free(buf);
    return im;
}

int speck_imatrix_check(const speck_imatrix *im, const speck_gguf *model) {
    const char *im_path = im->source ? im->source : "imatrix";
    for (int i = 0; i < im->n; i++) {
        const speck_gguf_tensor *t = speck_gguf_find_tensor(model, im->e[i].name);
        if (!t)
            return speck_set_error(SPECK_ERR_ARG,
                                   "%s: entry '%s' names no tensor of %s (an imatrix made for "
                                   "another model?)",
                                   im_path, im->e[i].name, speck_gguf_path(model));
        if (t->ne[0] != im->e[i].n)
            return speck_set_error(SPECK_ERR_ARG,
                                   "%s: entry '%s' has %lld columns, the tensor in %s %lld (an "
                                   "imatrix made for another model?)",
                                   im_path, im->e[i].name, (long long)im->e[i].n,
                                   speck_gguf_path(model), (long long)t->ne[0]);
    }
    return 0;
}

/* ---- writing ---- */

static int cmp_entry(const void *a, const void *b) {
    return strcmp(((const im_entry *)a)->name, ((const im_entry *)b)->name);
}

// The entries in name order, as llama-imatrix writes them (a copy of the array; names shared).
static im_entry *sorted(const speck_imatrix *im) {
    im_entry *s = malloc((size_t)(im->n ? im->n : 1) * sizeof *s);
    if (s && im->n) {
        memcpy(s, im->e, (size_t)im->n * sizeof *s);
        qsort(s, (size_t)im->n, sizeof *s, cmp_entry);
    }
    return s;
}

static int save_gguf(const speck_imatrix *im, const im_entry *s, const char *path) {
    speck_gguf_writer *w = speck_gguf_writer_new();
    float *vals = NULL;
    int64_t total = 0;
    for (int i = 0; i < im->n; i++) total += s[i].n + 1;
    if (!w || !(vals = malloc((size_t)(total ? total : 1) * sizeof *vals))) {
        speck_gguf_writer_free(w);
        return speck_set_error(SPECK_ERR_NOMEM, "out of memory");
    }
    int rc = speck_gguf_set_str(w, "general.type", "imatrix");
    if (!rc)
        rc = speck_gguf_set_arr_str(w, "imatrix.datasets", (const char *const *)im->datasets, NULL,
                                    im->n_datasets);
    if (!rc) rc = speck_gguf_set_u32(w, "imatrix.chunk_count", (uint32_t)im->chunk_count);
    if (!rc) rc = speck_gguf_set_u32(w, "imatrix.chunk_size", (uint32_t)im->chunk_size);
    float *v = vals;
    for (int i = 0; i < im->n && !rc; i++) {
        char name[300];
        for (int64_t j = 0; j < s[i].n; j++) v[j] = (float)s[i].sum[j];
        v[s[i].n] = (float)s[i].count;
        const int64_t ne[2] = {s[i].n, 1}, ne1[2] = {1, 1};
        snprintf(name, sizeof name, "%s.in_sum2", s[i].name);
        rc = speck_gguf_add_tensor(w, name, SPECK_TYPE_F32, 2, ne, v);
        snprintf(name, sizeof name, "%s.counts", s[i].name);
        if (!rc) rc = speck_gguf_add_tensor(w, name, SPECK_TYPE_F32, 2, ne1, v + s[i].n);
        v += s[i].n + 1;
    }
    if (!rc) rc = speck_gguf_writer_save(w, path);
    speck_gguf_writer_free(w);
    free(vals);
    return rc;
}

// Legacy layout: values sum / count * ncall with ncall = the count in chunks, rounded up (so
// llama-quantize's value / ncall is the mean), then the chunk count and the last dataset.
static int save_dat(const speck_imatrix *im, const im_entry *s, const char *path) {
    char tmp[4096];
    FILE *f = speck_atomic_open(path, tmp, sizeof tmp);
    if (!f) return SPECK_ERR_IO;
    const int64_t cs = im->chunk_size > 0 ? im->chunk_size : 1;
    int32_t n = im->n;
    bool ok = fwrite(&n, 4, 1, f) == 1;
    for (int i = 0; i < im->n && ok; i++) {
        const int32_t len = (int32_t)strlen(s[i].name), nval = (int32_t)s[i].n;
        const int32_t ncall = (int32_t)((s[i].count + cs - 1) / cs);
        ok = fwrite(&len, 4, 1, f) == 1 && fwrite(s[i].name, 1, (size_t)len, f) == (size_t)len &&
             fwrite(&ncall, 4, 1, f) == 1 && fwrite(&nval, 4, 1, f) == 1;
        for (int64_t j = 0; j < s[i].n && ok; j++) {
            const float v = s[i].count > 0
                                ? (float)(s[i].sum[j] / (double)s[i].count * (double)ncall)
                                : 1.0f;
            ok = fwrite(&v, 4, 1, f) == 1;
        }
    }
    const int32_t chunks = (int32_t)im->chunk_count;
    const char *ds = im->n_datasets ? im->datasets[im->n_datasets - 1] : "";
    const int32_t dl = (int32_t)strlen(ds);
    ok = ok && fwrite(&chunks, 4, 1, f) == 1 && fwrite(&dl, 4, 1, f) == 1 &&
         fwrite(ds, 1, (size_t)dl, f) == (size_t)dl;
    if (!ok) {
        speck_atomic_abort(f, tmp);
        return speck_set_error(SPECK_ERR_IO, "%s: write failed", path);
    }
    return speck_atomic_commit(f, tmp, path);
}

int speck_imatrix_save(const speck_imatrix *im, const char *path, bool dat) {
    im_entry *s = sorted(im);
    if (!s) return speck_set_error(SPECK_ERR_NOMEM, "out of memory");
    const int rc = dat ? save_dat(im, s, path) : save_gguf(im, s, path);
    free(s);
    return rc;
}

/* ---- collecting ---- */

typedef struct {
    speck_imatrix *im;
    bool with_output;
    int err;
} collector;

// The hook: add x's columns and squared columns into the weight's entry (created on first
// sight).
static void collect(const char *weight, const float *x, int n, int n_in, void *user) {
    collector *c = user;
    if (c->err || (strncmp(weight, "blk.", 4) && !c->with_output)) return;
    im_entry *e = find(c->im, weight);
    if (!e && (!(e = add(c->im, weight, strlen(weight), n_in)) ||
               !(e->sum1 = calloc((size_t)n_in, sizeof *e->sum1)))) {
        c->err = speck_set_error(SPECK_ERR_NOMEM, "out of memory");
        return;
    }
    double *s = e->sum, *s1 = e->sum1;
#pragma omp parallel for schedule(static) if ((int64_t)n * n_in >= (1 << 16))
    for (int j = 0; j < n_in; j++) {
        double a = 0, b = 0;
        for (int i = 0; i < n; i++) {
            const double v = x[(size_t)i * n_in + j];
            a += v * v, b += v;
        }
        s[j] += a, s1[j] += b;
    }
    e->count += n;
}

speck_imatrix *speck_imatrix_compute(const speck_model *m, const int32_t *tokens, int64_t n,
                                     int n_ctx, bool with_output, const char *dataset,
                                     void (*progress)(int64_t done, int64_t total, void *user),
                                     void *user) {
    if (n_ctx < 16 || n < n_ctx) {
        speck_set_error(SPECK_ERR_ARG,
                        "imatrix: need at least one window of %d tokens (windows of >= 16; the "
                        "text has %lld)",
                        n_ctx, (long long)n);
        return NULL;
    }
    speck_imatrix *im = calloc(1, sizeof *im);
    speck_ctx *c = im ? speck_ctx_new(m, n_ctx) : NULL;
    const int vocab = speck_model_hparams(m)->n_vocab;
    float *logits = malloc((size_t)(with_output ? n_ctx : 1) * (size_t)vocab * sizeof *logits);
    collector col = {im, with_output, 0};
    if (!im || !c || !logits) {
        if (im && c) speck_set_error(SPECK_ERR_NOMEM, "out of memory");
        goto fail;
    }
    speck_ctx_set_matmul_hook(c, collect, &col);
    // Whole windows only, each from an empty cache (llama-imatrix's chunks; the rest is dropped).
    const int64_t windows = n / n_ctx;
    int last = n_ctx - 1;
    for (int64_t w = 0; w < windows; w++) {
        speck_ctx_truncate(c, 0);
        // The head only matters for its input: one row unless it is being recorded.
        if (speck_forward(c, n_ctx, tokens + w * n_ctx, NULL, NULL, with_output ? NULL : &last,
                          with_output ? n_ctx : 1, logits) ||
            col.err)
            goto fail;
        if (progress) progress(w + 1, windows, user);
    }
    im->chunk_count = windows;
    im->chunk_size = n_ctx;
    if (dataset && add_dataset(im, dataset, strlen(dataset))) goto fail;
    speck_ctx_free(c);
    free(logits);
    return im;
fail:
    speck_ctx_free(c);
    free(logits);
    speck_imatrix_free(im);
    return NULL;
}
