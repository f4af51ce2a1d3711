// The Llama-family forward pass over N tokens with explicit positions and an attention mask over
// the KV cache, plus the cache itself (truncate / compact for rejected draft tokens).
#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include <cblas.h>

#include "kernels/kernels.h"
#include "model/model_internal.h"

// Batches of at least this many new tokens compute attention with GEMMs.
#define ATT_GEMM_MIN 16

// Elementwise loops outside src/kernels get AVX-512/AVX2 clones picked at load time (ifunc), so
// the generic x86-64 binary still runs them at full width.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && !defined(__SANITIZE_ADDRESS__)
#define SPECK_MULTIVERSION __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define SPECK_MULTIVERSION
#endif

struct speck_ctx {
    const speck_model *m;
    int n_ctx, n_past;
    int kv_dim;     // n_head_kv * head_dim
    float **k, **v; // per layer: (n_ctx, kv_dim)
    // Scratch grown on demand to the largest batch seen.
    int cap;        // tokens the scratch below holds
    float *x, *xn;  // (n, n_embd)
    float *q;       // (n, n_head*hd)
    float *att;     // (n, n_head*hd)
    float *g, *u;   // (n, n_ff)
    float *scores;  // (threads, n_ctx)
    float *att_s;   // (cap, n_ctx) attention probabilities of a batch
    int scores_threads;
};

speck_ctx *speck_ctx_new(const speck_model *m, int n_ctx) {
    const speck_hparams *hp = &m->hp;
    if (n_ctx <= 0) n_ctx = hp->n_ctx_train < 4096 ? hp->n_ctx_train : 4096;
    speck_ctx *c = calloc(1, sizeof *c);
    if (!c) goto oom;
    c->m = m;
    c->n_ctx = n_ctx;
    c->kv_dim = hp->n_head_kv * hp->head_dim;
    c->k = calloc((size_t)hp->n_layer, sizeof(float *));
    c->v = calloc((size_t)hp->n_layer, sizeof(float *));
    if (!c->k || !c->v) goto oom;
    for (int l = 0; l < hp->n_layer; l++) {
        // calloc of large blocks maps zero pages lazily: only the part of the context actually
        // used becomes resident.
        c->k[l] = calloc((size_t)n_ctx * c->kv_dim, sizeof(float));
        c->v[l] = calloc((size_t)n_ctx * c->kv_dim, sizeof(float));
        if (!c->k[l] || !c->v[l]) goto oom;
    }
    return c;
oom:
    speck_ctx_free(c);
    speck_set_error(SPECK_ERR_NOMEM, "out of memory allocating a %d-position KV cache", n_ctx);
    return NULL;
}

void speck_ctx_free(speck_ctx *c) {
    if (!c) return;
    for (int l = 0; c->k && l < c->m->hp.n_layer; l++) free(c->k[l]);
    for (int l = 0; c->v && l < c->m->hp.n_layer; l++) free(c->v[l]);
    free(c->k);
    free(c->v);
    free(c->x);
    free(c->xn);
    free(c->q);
    free(c->att);
    free(c->g);
    free(c->u);
    free(c->scores);
    free(c->att_s);
    free(c);
}

int speck_ctx_n_ctx(const speck_ctx *c) { return c->n_ctx; }
int speck_ctx_n_past(const speck_ctx *c) { return c->n_past; }

int speck_ctx_truncate(speck_ctx *c, int n) {
    if (n < 0 || n > c->n_past)
        return speck_set_error(SPECK_ERR_RANGE, "truncate to %d: cache holds %d entries", n,
                               c->n_past);
    c->n_past = n;
    return 0;
}

int speck_ctx_compact(speck_ctx *c, const int *idx, int n) {
    for (int i = 0; i < n; i++)
        if (idx[i] < 0 || idx[i] >= c->n_past || (i && idx[i] <= idx[i - 1]))
            return speck_set_error(SPECK_ERR_RANGE,
                                   "compact: index %d (%d) must be increasing and < %d", i,
                                   idx[i], c->n_past);
    size_t row = (size_t)c->kv_dim * sizeof(float);
    // idx[i] >= i, so moving rows forward in order never overwrites a row still to be read.
    for (int l = 0; l < c->m->hp.n_layer; l++)
        for (int i = 0; i < n; i++)
            if (idx[i] != i) {
                memcpy(c->k[l] + (size_t)i * c->kv_dim, c->k[l] + (size_t)idx[i] * c->kv_dim, row);
                memcpy(c->v[l] + (size_t)i * c->kv_dim, c->v[l] + (size_t)idx[i] * c->kv_dim, row);
            }
    c->n_past = n;
    return 0;
}

static int grow(float **p, size_t n) {
    float *q = realloc(*p, n * sizeof(float));
    if (!q) return -1;
    *p = q;
    return 0;
}

static int reserve(speck_ctx *c, int n) {
    const speck_hparams *hp = &c->m->hp;
    int threads = omp_get_max_threads();
    if (threads > c->scores_threads) {
        if (grow(&c->scores, (size_t)threads * c->n_ctx)) return -1;
        c->scores_threads = threads;
    }
    if (n <= c->cap) return 0;
    size_t qd = (size_t)hp->n_head * hp->head_dim;
    if (grow(&c->x, (size_t)n * hp->n_embd) || grow(&c->xn, (size_t)n * hp->n_embd) ||
        grow(&c->q, (size_t)n * qd) || grow(&c->att, (size_t)n * qd) ||
        grow(&c->g, (size_t)n * hp->n_ff) || grow(&c->u, (size_t)n * hp->n_ff) ||
        (n >= ATT_GEMM_MIN && grow(&c->att_s, (size_t)n * c->n_ctx)))
        return -1;
    c->cap = n;
    return 0;
}

// out: (n, dim) = x / rms(x) * w, per row; x: (n, dim), w: (dim)
SPECK_MULTIVERSION
static void rmsnorm(float *out, const float *x, const float *w, int n, int dim, float eps) {
#pragma omp parallel for schedule(static) if (n > 1)
    for (int i = 0; i < n; i++) {
        const float *xi = x + (size_t)i * dim;
        float *oi = out + (size_t)i * dim;
        double ss = 0;
        for (int j = 0; j < dim; j++) ss += (double)xi[j] * xi[j];
        float s = (float)(1.0 / sqrt(ss / dim + eps));
        for (int j = 0; j < dim; j++) oi[j] = xi[j] * s * w[j];
    }
}

// Rotate every head of x in place. x: (n, n_heads * hd); pos: (n)
static void rope(float *x, const int32_t *pos, int n, int n_heads, int hd, const float *freq,
                 speck_rope_type type) {
    int half = hd / 2;
#pragma omp parallel for schedule(static) if (n > 1)
    for (int i = 0; i < n; i++) {
        float cs[512], sn[512]; // head_dim <= 1024
        for (int j = 0; j < half; j++) {
            double a = (double)pos[i] * freq[j];
            cs[j] = (float)cos(a);
            sn[j] = (float)sin(a);
        }
        for (int h = 0; h < n_heads; h++) {
            float *v = x + ((size_t)i * n_heads + h) * hd;
            for (int j = 0; j < half; j++) {
                // NORMAL rotates adjacent pairs, NEOX pairs split across the two halves.
                int a = type == SPECK_ROPE_NEOX ? j : 2 * j;
                int b = type == SPECK_ROPE_NEOX ? j + half : 2 * j + 1;
                float x0 = v[a], x1 = v[b];
                v[a] = x0 * cs[j] - x1 * sn[j];
                v[b] = x0 * sn[j] + x1 * cs[j];
            }
        }
    }
}

static void add_bias(float *x, const float *b, int n, int dim) {
    if (!b) return;
    for (int i = 0; i < n; i++)
        for (int j = 0; j < dim; j++) x[(size_t)i * dim + j] += b[j];
}

// Row softmax over the allowed entries of s (n_total), in place; masked entries become 0.
// Returns false when nothing is allowed.
static bool softmax_masked(float *s, int n_total, int limit, const uint8_t *mi) {
    float mx = -INFINITY;
    for (int j = 0; j < limit; j++) {
        if (mi && !mi[j]) s[j] = -INFINITY;
        if (s[j] > mx) mx = s[j];
    }
    for (int j = limit; j < n_total; j++) s[j] = 0.0f;
    if (mx == -INFINITY) {
        for (int j = 0; j < limit; j++) s[j] = 0.0f;
        return false;
    }
    double sum = 0;
    for (int j = 0; j < limit; j++) {
        float p = s[j] == -INFINITY ? 0.0f : expf(s[j] - mx);
        s[j] = p;
        sum += p;
    }
    float inv = (float)(1.0 / sum);
    for (int j = 0; j < limit; j++) s[j] *= inv;
    return true;
}

// o (hd) += p * v (hd)
SPECK_MULTIVERSION
static void axpy(float *o, float p, const float *v, int hd) {
    for (int d = 0; d < hd; d++) o[d] += p * v[d];
}

// Attention of the n new queries over cache entries [0, n_total).
// q, out: (n, n_head*hd); cache k, v: (n_ctx, kv_dim); mask: (n, n_total) or NULL (causal).
static void attention(speck_ctx *c, const float *q, float *out, const float *kc, const float *vc,
                      int n, int n_total, const uint8_t *mask) {
    const speck_hparams *hp = &c->m->hp;
    int hd = hp->head_dim, nh = hp->n_head, group = hp->n_head / hp->n_head_kv;
    int n_past = n_total - n, qd = nh * hd;
    float scale = 1.0f / sqrtf((float)hd);
    if (n >= ATT_GEMM_MIN) {
        // Batches (prefill, wide trees): per head S = Q Kᵀ and O = P V as GEMMs.
        for (int h = 0; h < nh; h++) {
            const float *kb = kc + (size_t)(h / group) * hd, *vb = vc + (size_t)(h / group) * hd;
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, n_total, hd, scale,
                        q + (size_t)h * hd, qd, kb, c->kv_dim, 0.0f, c->att_s, n_total);
#pragma omp parallel for schedule(static)
            for (int i = 0; i < n; i++)
                softmax_masked(c->att_s + (size_t)i * n_total, n_total,
                               mask ? n_total : n_past + i + 1,
                               mask ? mask + (size_t)i * n_total : NULL);
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, hd, n_total, 1.0f,
                        c->att_s, n_total, vb, c->kv_dim, 0.0f, out + (size_t)h * hd, qd);
        }
        return;
    }
#pragma omp parallel for collapse(2) schedule(dynamic, 1) if (n * nh > 1)
    for (int i = 0; i < n; i++)
        for (int h = 0; h < nh; h++) {
            float *sc = c->scores + (size_t)omp_get_thread_num() * c->n_ctx;
            const float *qi = q + ((size_t)i * nh + h) * hd;
            const float *kb = kc + (size_t)(h / group) * hd;
            const float *vb = vc + (size_t)(h / group) * hd;
            const uint8_t *mi = mask ? mask + (size_t)i * n_total : NULL;
            int limit = mask ? n_total : n_past + i + 1;
            for (int j = 0; j < limit; j++)
                sc[j] = (mi && !mi[j]) ? -INFINITY
                                       : speck_vec_dot(SPECK_TYPE_F32, kb + (size_t)j * c->kv_dim,
                                                       qi, hd) * scale;
            float *o = out + ((size_t)i * nh + h) * hd;
            memset(o, 0, (size_t)hd * sizeof(float));
            if (!softmax_masked(sc, limit, limit, NULL)) continue; // fully masked: zero output
            for (int j = 0; j < limit; j++)
                if (sc[j] != 0.0f) axpy(o, sc[j], vb + (size_t)j * c->kv_dim, hd);
        }
}

// x (n) += y (n)
SPECK_MULTIVERSION
static void add_inplace(float *x, const float *y, size_t n) {
    for (size_t j = 0; j < n; j++) x[j] += y[j];
}

// g (n) = silu(g) * u
SPECK_MULTIVERSION
static void swiglu(float *g, const float *u, size_t n) {
#pragma omp parallel for schedule(static) if (n > 16384)
    for (size_t j = 0; j < n; j++) g[j] = g[j] / (1.0f + expf(-g[j])) * u[j];
}

static void matmul(const speck_weight *w, const float *x, int n, float *y) {
    speck_matmul(w->type, w->data, w->n_out, w->n_in, x, n, y);
}

int speck_forward(speck_ctx *c, int n, const int32_t *tokens, const int32_t *pos,
                  const uint8_t *mask, const int *out_rows, int n_out, float *logits) {
    const speck_model *m = c->m;
    const speck_hparams *hp = &m->hp;
    if (n <= 0) return speck_set_error(SPECK_ERR_ARG, "forward: no tokens");
    if (c->n_past + n > c->n_ctx)
        return speck_set_error(SPECK_ERR_RANGE,
                               "forward: %d new tokens do not fit the context (%d of %d used)", n,
                               c->n_past, c->n_ctx);
    for (int i = 0; i < n; i++)
        if (tokens[i] < 0 || tokens[i] >= hp->n_vocab)
            return speck_set_error(SPECK_ERR_RANGE, "forward: token id %d out of range [0, %d)",
                                   tokens[i], hp->n_vocab);
    if (!out_rows) n_out = n;
    if (n_out < 0 || n_out > n)
        return speck_set_error(SPECK_ERR_ARG, "forward: %d output rows for %d tokens", n_out, n);
    for (int i = 0; out_rows && i < n_out; i++)
        if (out_rows[i] < 0 || out_rows[i] >= n)
            return speck_set_error(SPECK_ERR_RANGE, "forward: output row %d out of range [0, %d)",
                                   out_rows[i], n);
    if (reserve(c, n)) return speck_set_error(SPECK_ERR_NOMEM, "out of memory");
    int32_t *auto_pos = NULL;
    if (!pos) {
        auto_pos = malloc((size_t)n * sizeof *auto_pos);
        if (!auto_pos) return speck_set_error(SPECK_ERR_NOMEM, "out of memory");
        for (int i = 0; i < n; i++) auto_pos[i] = c->n_past + i;
        pos = auto_pos;
    }
    int E = hp->n_embd, hd = hp->head_dim, qd = hp->n_head * hd, kvd = c->kv_dim;
    int n_total = c->n_past + n;
    size_t erow = speck_type_row_size(m->tok_embd.type, E);
    for (int i = 0; i < n; i++)
        speck_dequantize_row(m->tok_embd.type, (const uint8_t *)m->tok_embd.data + erow * tokens[i],
                             c->x + (size_t)i * E, E);

    for (int l = 0; l < hp->n_layer; l++) {
        const speck_layer *ly = &m->layers[l];
        rmsnorm(c->xn, c->x, ly->attn_norm, n, E, hp->norm_eps);
        float *kc = c->k[l] + (size_t)c->n_past * kvd, *vc = c->v[l] + (size_t)c->n_past * kvd;
        matmul(&ly->wq, c->xn, n, c->q);
        matmul(&ly->wk, c->xn, n, kc); // new keys/values land directly in the cache
        matmul(&ly->wv, c->xn, n, vc);
        add_bias(c->q, ly->bq, n, qd);
        add_bias(kc, ly->bk, n, kvd);
        add_bias(vc, ly->bv, n, kvd);
        rope(c->q, pos, n, hp->n_head, hd, m->rope_freq, hp->rope_type);
        rope(kc, pos, n, hp->n_head_kv, hd, m->rope_freq, hp->rope_type);
        attention(c, c->q, c->att, c->k[l], c->v[l], n, n_total, mask);
        matmul(&ly->wo, c->att, n, c->xn);
        add_inplace(c->x, c->xn, (size_t)n * E);

        rmsnorm(c->xn, c->x, ly->ffn_norm, n, E, hp->norm_eps);
        matmul(&ly->wg, c->xn, n, c->g);
        matmul(&ly->wu, c->xn, n, c->u);
        swiglu(c->g, c->u, (size_t)n * hp->n_ff);
        matmul(&ly->wd, c->g, n, c->xn);
        add_inplace(c->x, c->xn, (size_t)n * E);
    }
    // Only the requested rows go through the (large) output head.
    for (int r = 0; r < n_out; r++) {
        int src = out_rows ? out_rows[r] : r;
        memmove(c->xn + (size_t)r * E, c->x + (size_t)src * E, (size_t)E * sizeof(float));
    }
    rmsnorm(c->xn, c->xn, m->out_norm, n_out, E, hp->norm_eps);
    matmul(&m->output, c->xn, n_out, logits);
    c->n_past = n_total;
    free(auto_pos);
    return 0;
}
