// Function-preserving growth (`speck grow`): a model widened and deepened to larger shapes so
// that it computes the same function (docs/training.md, "Growing a model").
//
// Notation: the source has width E, H query / Hkv kv heads of size d (G = H / Hkv query heads per
// kv head), FFN width F, L layers; the target the same primed. Exact in real arithmetic:
// - Residual stream: target unit j < kE (k = floor(E' / E)) carries source unit j mod E, units
//   from kE on are zero. Every writer of the stream (token embedding, attn_output and ffn_down
//   rows) writes copies and zeros, so the stream stays [x, ..., x, 0] with mean square
//   c^2 mean(x^2), c^2 = kE / E'. With eps' = c^2 eps every RMSNorm divisor is c times the
//   source's; a norm weight's copies hold c g shares (a unit's shares add up to 1), and the
//   readers of the stream (q, k, v, gate, up, output) have copied columns, whose sum over the
//   copies is the source's product. Padding columns multiply exact zeros.
// - Heads: target kv head j copies source kv head j mod Hkv; its G' query heads copy that
//   group's source query heads in turn. A head of size d' = m d keeps source RoPE pair i at
//   pair m i, which rotates at the same frequency (base^(-2i/d) = base^(-2mi/d')); keys are zero
//   on the other pairs, so they add nothing to the scores. Queries are scaled by sqrt(m) to
//   undo the smaller 1/sqrt(d') score scale. Copies of a head output the same values;
//   attn_output's columns of each copy hold a share of the source's column.
// - FFN: unit u copies source unit u mod F (gate, up rows); ffn_down columns hold shares.
// - Layers: source layer l becomes layer floor(l L' / L); the others are identity layers, whose
//   attn_output and ffn_down are zero.
// Shares are random (from the seed) rather than equal, so that copies get different gradients
// when the grown model is trained; weights that cannot reach the output are random too.
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "formats/gguf_internal.h"
#include "formats/gguf_stream.h"
#include "formats/hf_internal.h"
#include "kernels/kernels.h"
#include "model/model_internal.h"

// Weights that cannot influence the output: uniform with this standard deviation (as `speck
// init` and `speck train` initialise), so that training can start moving them.
#define FREE_STD 0.02

typedef struct {
    int E, F, L, H, Hkv, d, G;        // source
    int E2, F2, L2, H2, Hkv2, d2, G2; // target
    int k, m;                         // residual copies, head size ratio
    double c2;                        // k E / E': mean-square ratio of the residual stream
    bool tied;                        // the target's head is tied to the embedding
} shapes;

static int ceil_div(int a, int b) {
    return (a + b - 1) / b;
}

static const char *target_name(const speck_preset *t) {
    return t->name && t->name[0] ? t->name : "target";
}

static int plan_shapes(const speck_hparams *s, const speck_preset *t, shapes *p) {
    const char *tn = target_name(t);
    *p = (shapes){.E = s->n_embd,
                  .F = s->n_ff,
                  .L = s->n_layer,
                  .H = s->n_head,
                  .Hkv = s->n_head_kv,
                  .d = s->head_dim,
                  .E2 = t->n_embd,
                  .F2 = t->n_ff,
                  .L2 = t->n_layer,
                  .H2 = t->n_head,
                  .Hkv2 = t->n_head_kv};
    if (p->E <= 0 || p->H <= 0 || p->Hkv <= 0 || p->d <= 0 || p->H % p->Hkv)
        return speck_set_error(SPECK_ERR_ARG, "grow: invalid source hyper-parameters");
    p->G = p->H / p->Hkv;
    const struct {
        const char *key;
        int src, dst;
    } sizes[] = {{"n_embd", p->E, p->E2},
                 {"n_ff", p->F, p->F2},
                 {"n_layer", p->L, p->L2},
                 {"n_head", p->H, p->H2}};
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
        if (sizes[i].dst <= 0 || sizes[i].dst > (1 << 20))
            return speck_set_error(SPECK_ERR_ARG, "cannot grow to %s: %s %d is out of range", tn,
                                   sizes[i].key, sizes[i].dst);
        if (sizes[i].dst < sizes[i].src)
            return speck_set_error(SPECK_ERR_ARG,
                                   "cannot grow to %s: %s %d is smaller than the source's %d "
                                   "(growth only adds units, heads and layers)",
                                   tn, sizes[i].key, sizes[i].dst, sizes[i].src);
    }
    if (p->Hkv2 <= 0 || p->Hkv2 > p->H2)
        return speck_set_error(SPECK_ERR_ARG, "cannot grow to %s: n_head_kv %d is not in 1..n_head",
                               tn, p->Hkv2);
    if (p->E2 % p->H2)
        return speck_set_error(SPECK_ERR_ARG,
                               "cannot grow to %s: n_embd %d is not a multiple of n_head %d (the "
                               "head size is n_embd / n_head)",
                               tn, p->E2, p->H2);
    if (p->H2 % p->Hkv2)
        return speck_set_error(SPECK_ERR_ARG,
                               "cannot grow to %s: n_head %d is not a multiple of n_head_kv %d", tn,
                               p->H2, p->Hkv2);
    p->d2 = p->E2 / p->H2;
    p->G2 = p->H2 / p->Hkv2;
    if (p->d2 % p->d)
        return speck_set_error(
            SPECK_ERR_ARG,
            "cannot grow to %s exactly: head size %d (n_embd / n_head) is not a "
            "multiple of the source's %d: RoPE turns pair i of a head at base^(-2i/head_size), "
            "so a source pair keeps its frequency only at target pair "
            "i * %d / %d, which must be a whole number",
            tn, p->d2, p->d, p->d2, p->d);
    // Each source kv head needs target kv heads of its own (two heads' keys cannot share one:
    // each frequency has one pair per head), enough of them to seat its G query heads.
    const int need = p->Hkv * ceil_div(p->G, p->G2);
    if (p->Hkv2 < need)
        return speck_set_error(
            SPECK_ERR_ARG,
            "cannot grow to %s exactly: %d kv heads with %d query heads each cannot hold the "
            "source's %d kv heads "
            "with %d query heads each: every source kv head needs kv heads of its own (keys of "
            "two heads cannot share one, each RoPE frequency has one pair per head), %d of them "
            "to seat its query heads, so n_head_kv must be at least %d",
            tn, p->Hkv2, p->G2, p->Hkv, p->G, ceil_div(p->G, p->G2), need);
    p->k = p->E2 / p->E;
    p->m = p->d2 / p->d;
    p->c2 = (double)p->k * p->E / p->E2;
    p->tied = s->tied_output && t->tied_output;
    return 0;
}

// Copies of each source unit among n target units mapped by src: the fewest and most.
static void copy_range(const int *src, int n, int n_src, int *lo, int *hi) {
    int *cnt = calloc((size_t)n_src, sizeof *cnt);
    *lo = *hi = 0;
    if (!cnt) return;
    for (int i = 0; i < n; i++)
        if (src[i] >= 0) cnt[src[i]]++;
    *lo = *hi = cnt[0];
    for (int i = 1; i < n_src; i++) {
        if (cnt[i] < *lo) *lo = cnt[i];
        if (cnt[i] > *hi) *hi = cnt[i];
    }
    free(cnt);
}

// The source query head of target query head t: kv head j's copy j / Hkv of source kv head
// j mod Hkv seats that group's query heads in turn, continuing where its previous copy stopped.
static int head_source(const shapes *p, int t) {
    const int j = t / p->G2, slot = (j / p->Hkv) * p->G2 + t % p->G2;
    return (j % p->Hkv) * p->G + slot % p->G;
}

static void describe(const speck_hparams *s, const shapes *p, char *desc, size_t size) {
    if (!desc || !size) return;
    int *hs = malloc((size_t)(p->H2 + p->Hkv2) * sizeof *hs);
    int qlo = 0, qhi = 0, klo = 0, khi = 0;
    if (hs) {
        for (int t = 0; t < p->H2; t++) hs[t] = head_source(p, t);
        for (int j = 0; j < p->Hkv2; j++) hs[p->H2 + j] = j % p->Hkv;
        copy_range(hs, p->H2, p->H, &qlo, &qhi);
        copy_range(hs + p->H2, p->Hkv2, p->Hkv, &klo, &khi);
        free(hs);
    }
    char q[24], kv[24], e[48], f[48];
    snprintf(q, sizeof q, qlo == qhi ? "x%d" : "x%d-%d", qlo, qhi);
    snprintf(kv, sizeof kv, klo == khi ? "x%d" : "x%d-%d", klo, khi);
    const int pad = p->E2 - p->k * p->E, rest = p->F2 % p->F;
    if (pad)
        snprintf(e, sizeof e, "units x%d + %d zero units", p->k, pad);
    else
        snprintf(e, sizeof e, "units x%d", p->k);
    if (rest)
        snprintf(f, sizeof f, "units x%d, %d of them x%d", p->F2 / p->F, rest, p->F2 / p->F + 1);
    else
        snprintf(f, sizeof f, "units x%d", p->F2 / p->F);
    snprintf(desc, size,
             "n_embd %d -> %d (%s), n_ff %d -> %d (%s), heads %d/%d of %d -> %d/%d of %d (query "
             "heads %s, kv heads %s, RoPE pair i -> %di), layers %d -> %d (%d identity), rms eps "
             "%g -> %g, %s head",
             p->E, p->E2, e, p->F, p->F2, f, p->H, p->Hkv, p->d, p->H2, p->Hkv2, p->d2, q, kv, p->m,
             p->L, p->L2, p->L2 - p->L, s->norm_eps, (double)(float)(s->norm_eps * p->c2),
             p->tied ? "tied" : "separate");
}

int speck_grow_check(const speck_hparams *src, const speck_preset *target, char *desc,
                     size_t desc_size) {
    if (!src || !target) return speck_set_error(SPECK_ERR_ARG, "grow: no source or target");
    shapes p;
    int err = plan_shapes(src, target, &p);
    if (!err) describe(src, &p, desc, desc_size);
    return err;
}

/* ---- building the tensors ---- */

static uint64_t mix64(uint64_t x) {
    x += 0x9e3779b97f4a7c15ULL;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
    return x ^ (x >> 31);
}

// Uniform in [0, 1).
static double draw(uint64_t key) {
    return (double)(mix64(key) >> 11) * 0x1.0p-53;
}

// A tensor's random stream: from the seed and its name, so it does not depend on the order.
static uint64_t name_key(uint64_t seed, const char *name) {
    uint64_t h = 0xcbf29ce484222325ULL;
    for (; *name; name++) h = (h ^ (uint8_t)*name) * 0x100000001b3ULL;
    return mix64(h ^ mix64(seed));
}

static float free_value(uint64_t key, int64_t r, int64_t c) {
    const double u = draw(key ^ mix64((uint64_t)r * 0x100000001b3ULL ^ mix64((uint64_t)c)));
    return (float)((2 * u - 1) * FREE_STD * sqrt(3.0));
}

// Which source entry each entry of a target tensor axis (rows or columns) takes.
typedef struct {
    const int *src;      // (n) source index, -1 for none; NULL: the same index
    const double *scale; // (n) factor of the mapped entries, NULL: 1
    double mul;          // factor of every mapped entry
    bool none;           // no entry is mapped (new layers)
    bool random;         // unmapped entries are free random values (else zero)
} axis;

static axis ax_map(const int *src, const double *scale, double mul, bool random) {
    return (axis){src, scale, mul, false, random};
}
static axis ax_none(bool random) {
    return (axis){NULL, NULL, 1, true, random};
}

static inline bool ax_src(const axis *a, int64_t i, int64_t *s, double *f) {
    if (a->none) return false;
    const int64_t v = a->src ? a->src[i] : i;
    if (v < 0) return false;
    *s = v;
    *f = (a->scale ? a->scale[i] : 1.0) * a->mul;
    return true;
}

typedef struct {
    const speck_model *m;
    shapes p;
    speck_type type;
    uint64_t seed;
    int *res_src;   // (E') source unit of each residual unit, -1 for padding
    int *ff_src;    // (F') source FFN unit
    int *head_src;  // (H') source query head
    int *pair_src;  // (d'/2) source RoPE pair of each target pair, -1 for none
    int *q_src;     // (H' d') source q row (head * d + dim), -1 for a dimension the source lacks
    int *kv_src;    // (Hkv' d') source k / v row, likewise
    int *layer_src; // (L') source layer, -1 for an identity layer
    double *unit;   // scratch (max(E', F', H')): shares per unit
    double *scale;  // scratch (max(E', F', H' d')): per-entry factors of one tensor
    double *sum;    // scratch (max(E, F, H)): per source unit sums
    int pass;       // 0: declare the tensors, 1: compute and write them
    speck_gguf_writer *w;
    speck_gguf_stream *st;
    uint8_t *buf;
    size_t buf_size;
    hf_progress pr;
    int64_t n_tensors;
} grow;

// Shares of the copies: unit u copies source unit src[u]; share[u] = w_u / (sum of w over the
// copies of src[u]) with w uniform in [0.5, 1.5), so a source unit's shares add up to 1.
static void shares(grow *g, const int *src, int n, int n_src, uint64_t key, double *share) {
    for (int i = 0; i < n_src; i++) g->sum[i] = 0;
    for (int u = 0; u < n; u++) {
        share[u] = 0.5 + draw(key ^ mix64(0x5eedULL + (uint64_t)u));
        if (src[u] >= 0) g->sum[src[u]] += share[u];
    }
    for (int u = 0; u < n; u++) share[u] = src[u] >= 0 ? share[u] / g->sum[src[u]] : 0;
}

static int step(grow *g, const char *name, size_t bytes) {
    hf_progress_step(&g->pr, g->n_tensors++, name, bytes);
    return 0;
}

static int emit_vector(grow *g, const char *name, const float *src, int64_t n, const axis *a,
                       float fill) {
    if (g->pass == 0) {
        g->n_tensors++;
        return speck_gguf_add_tensor(g->w, name, SPECK_TYPE_F32, 1, (int64_t[]){n}, NULL);
    }
    float *v = malloc((size_t)n * sizeof *v);
    if (!v) return speck_set_error(SPECK_ERR_NOMEM, "grow: out of memory");
    for (int64_t j = 0; j < n; j++) {
        int64_t s;
        double f;
        v[j] = src && ax_src(a, j, &s, &f) ? (float)((double)src[s] * f) : fill;
    }
    int rc = speck_gguf_stream_write(g->st, v, (size_t)n * sizeof *v);
    free(v);
    return rc ? rc : step(g, name, (size_t)n * sizeof(float));
}

// A (rows, cols) matrix: entry (r, c) is source w's (row of r, column of c) times both factors;
// an unmapped row is random or zero as rows says, else an unmapped column as cols says.
static int emit_matrix(grow *g, const char *name, const speck_weight *w, int64_t rows, int64_t cols,
                       const axis *ra, const axis *ca) {
    if (g->pass == 0) {
        g->n_tensors++;
        return speck_gguf_add_tensor(g->w, name, g->type, 2, (int64_t[]){cols, rows}, NULL);
    }
    const uint64_t key = name_key(g->seed, name);
    const size_t rs = speck_type_row_size(g->type, cols);
    const int64_t chunk = g->buf_size / rs > 0 ? (int64_t)(g->buf_size / rs) : 1;
    const size_t src_rs = w ? speck_type_row_size(w->type, w->n_in) : 0;
    int rc = 0;
    for (int64_t r0 = 0; r0 < rows && !rc; r0 += chunk) {
        const int64_t n = rows - r0 < chunk ? rows - r0 : chunk;
        int nomem = 0;
#pragma omp parallel reduction(| : nomem)
        {
            float *srow = w ? malloc((size_t)w->n_in * sizeof *srow) : NULL;
            float *row = malloc((size_t)cols * sizeof *row);
            const bool ok = row && (!w || srow);
            nomem |= !ok;
#pragma omp for schedule(static)
            for (int64_t r = r0; r < r0 + n; r++) {
                if (!ok) continue;
                int64_t sr, sc;
                double rf, cf;
                if (!w || !ax_src(ra, r, &sr, &rf)) {
                    for (int64_t c = 0; c < cols; c++)
                        row[c] = ra->random ? free_value(key, r, c) : 0.0f;
                } else {
                    speck_dequantize_row(w->type, (const uint8_t *)w->data + (size_t)sr * src_rs,
                                         srow, w->n_in);
                    for (int64_t c = 0; c < cols; c++)
                        row[c] = ax_src(ca, c, &sc, &cf) ? (float)((double)srow[sc] * rf * cf)
                                 : ca->random            ? free_value(key, r, c)
                                                         : 0.0f;
                }
                speck_quantize_row(g->type, row, g->buf + (size_t)(r - r0) * rs, cols);
            }
            free(srow);
            free(row);
        }
        rc = nomem ? speck_set_error(SPECK_ERR_NOMEM, "grow: out of memory")
                   : speck_gguf_stream_write(g->st, g->buf, (size_t)n * rs);
    }
    return rc ? rc : step(g, name, rs * (size_t)rows);
}

// An RMSNorm weight (E'): copies hold c * g * share, padding units 1 (they scale exact zeros).
static int emit_norm(grow *g, const char *name, const float *src) {
    const shapes *p = &g->p;
    if (g->pass == 1) {
        shares(g, g->res_src, p->E2, p->E, name_key(g->seed, name), g->scale);
        for (int j = 0; j < p->E2; j++) g->scale[j] *= sqrt(p->c2);
    }
    const axis a = ax_map(g->res_src, g->scale, 1, false);
    return emit_vector(g, name, src, p->E2, &a, 1.0f);
}

static int emit_layer(grow *g, int l2) {
    const shapes *p = &g->p;
    const int l = g->layer_src[l2];
    const speck_layer *ly = l >= 0 ? &g->m->layers[l] : NULL;
    const int64_t E2 = p->E2, F2 = p->F2, Q2 = (int64_t)p->H2 * p->d2,
                  KV2 = (int64_t)p->Hkv2 * p->d2;
    char n[96];
#define NAME(s) (snprintf(n, sizeof n, "blk.%d." s, l2), n)
    // Readers of the residual stream: copied columns, free padding columns.
    const axis res_in = ax_map(g->res_src, NULL, 1, true);
    // Writers of the residual stream: copied rows, zero padding rows.
    const axis res_out = ax_map(g->res_src, NULL, 1, false);
    const axis q_rows = ax_map(g->q_src, NULL, sqrt((double)p->m), true);
    const axis k_rows = ax_map(g->kv_src, NULL, 1, false); // zero keys on the new pairs
    const axis v_rows = ax_map(g->kv_src, NULL, 1, true);
    const axis ff_rows = ax_map(g->ff_src, NULL, 1, false);
    const axis none_rand = ax_none(true), none_zero = ax_none(false);
    const bool bias = g->m->hp.qkv_bias;
    int rc = emit_norm(g, NAME("attn_norm.weight"), ly ? ly->attn_norm : NULL);
    if (!rc)
        rc = emit_matrix(g, NAME("attn_q.weight"), ly ? &ly->wq : NULL, Q2, E2,
                         ly ? &q_rows : &none_rand, &res_in);
    if (!rc)
        rc = emit_matrix(g, NAME("attn_k.weight"), ly ? &ly->wk : NULL, KV2, E2,
                         ly ? &k_rows : &none_rand, &res_in);
    if (!rc)
        rc = emit_matrix(g, NAME("attn_v.weight"), ly ? &ly->wv : NULL, KV2, E2,
                         ly ? &v_rows : &none_rand, &res_in);
    if (!rc && bias) rc = emit_vector(g, NAME("attn_q.bias"), ly ? ly->bq : NULL, Q2, &q_rows, 0);
    if (!rc && bias) rc = emit_vector(g, NAME("attn_k.bias"), ly ? ly->bk : NULL, KV2, &k_rows, 0);
    if (!rc && bias) rc = emit_vector(g, NAME("attn_v.bias"), ly ? ly->bv : NULL, KV2, &v_rows, 0);
    if (!rc) {
        // Each query head copy's output columns take its share of the source head's columns.
        NAME("attn_output.weight");
        if (g->pass == 1 && ly) {
            shares(g, g->head_src, p->H2, p->H, name_key(g->seed, n), g->unit);
            for (int64_t i = 0; i < Q2; i++) g->scale[i] = g->unit[i / p->d2];
        }
        const axis o_cols = ax_map(g->q_src, g->scale, 1, false);
        rc = emit_matrix(g, n, ly ? &ly->wo : NULL, E2, Q2, ly ? &res_out : &none_zero, &o_cols);
    }
    if (!rc) rc = emit_norm(g, NAME("ffn_norm.weight"), ly ? ly->ffn_norm : NULL);
    if (!rc)
        rc = emit_matrix(g, NAME("ffn_gate.weight"), ly ? &ly->wg : NULL, F2, E2,
                         ly ? &ff_rows : &none_rand, &res_in);
    if (!rc)
        rc = emit_matrix(g, NAME("ffn_up.weight"), ly ? &ly->wu : NULL, F2, E2,
                         ly ? &ff_rows : &none_rand, &res_in);
    if (!rc) {
        NAME("ffn_down.weight");
        if (g->pass == 1 && ly) shares(g, g->ff_src, p->F2, p->F, name_key(g->seed, n), g->scale);
        const axis d_cols = ax_map(g->ff_src, g->scale, 1, false);
        rc = emit_matrix(g, n, ly ? &ly->wd : NULL, E2, F2, ly ? &res_out : &none_zero, &d_cols);
    }
#undef NAME
    return rc;
}

// Every tensor in file order: declared (pass 0), then computed and streamed (pass 1).
static int emit_all(grow *g) {
    const shapes *p = &g->p;
    const speck_model *m = g->m;
    const int64_t V = m->hp.n_vocab;
    const axis tokens = ax_map(NULL, NULL, 1, false);
    const axis res_in = ax_map(g->res_src, NULL, 1, true);
    const axis res_out = ax_map(g->res_src, NULL, 1, false);
    // The embedding writes the residual stream (copies, zero padding); a tied head reads the
    // same matrix, which is right too: the padding columns meet exact zeros.
    int rc = emit_matrix(g, "token_embd.weight", &m->tok_embd, V, p->E2, &tokens, &res_out);
    if (!rc && m->rope_factors) {
        // Target pair m i has the source pair i's frequency, so also its divisor; the other
        // pairs' keys are zero.
        const axis pairs = ax_map(g->pair_src, NULL, 1, false);
        rc = emit_vector(g, "rope_freqs.weight", m->rope_factors, p->d2 / 2, &pairs, 1.0f);
    }
    if (!rc) rc = emit_norm(g, "output_norm.weight", m->out_norm);
    if (!rc && !p->tied)
        rc = emit_matrix(g, "output.weight", &m->output, V, p->E2, &tokens, &res_in);
    for (int l2 = 0; l2 < p->L2 && !rc; l2++) rc = emit_layer(g, l2);
    return rc;
}

static int make_maps(grow *g) {
    const shapes *p = &g->p;
    const int Q2 = p->H2 * p->d2, KV2 = p->Hkv2 * p->d2;
    const int nmax = p->E2 > p->F2 ? p->E2 : p->F2;
    const int smax = p->E > p->F ? (p->E > p->H ? p->E : p->H) : (p->F > p->H ? p->F : p->H);
    g->res_src = malloc((size_t)p->E2 * sizeof(int));
    g->ff_src = malloc((size_t)p->F2 * sizeof(int));
    g->head_src = malloc((size_t)p->H2 * sizeof(int));
    g->pair_src = malloc((size_t)(p->d2 / 2) * sizeof(int));
    g->q_src = malloc((size_t)Q2 * sizeof(int));
    g->kv_src = malloc((size_t)KV2 * sizeof(int));
    g->layer_src = malloc((size_t)p->L2 * sizeof(int));
    g->unit = malloc((size_t)(nmax > p->H2 ? nmax : p->H2) * sizeof(double));
    g->scale = malloc((size_t)(nmax > Q2 ? nmax : Q2) * sizeof(double));
    g->sum = malloc((size_t)smax * sizeof(double));
    if (!g->res_src || !g->ff_src || !g->head_src || !g->pair_src || !g->q_src || !g->kv_src ||
        !g->layer_src || !g->unit || !g->scale || !g->sum)
        return speck_set_error(SPECK_ERR_NOMEM, "grow: out of memory");
    for (int j = 0; j < p->E2; j++) g->res_src[j] = j < p->k * p->E ? j % p->E : -1;
    for (int u = 0; u < p->F2; u++) g->ff_src[u] = u % p->F;
    for (int t = 0; t < p->H2; t++) g->head_src[t] = head_source(p, t);
    for (int i = 0; i < p->d2 / 2; i++) g->pair_src[i] = i % p->m ? -1 : i / p->m;
    const bool neox = g->m->hp.rope_type == SPECK_ROPE_NEOX;
    for (int mu = 0; mu < p->d2; mu++) {
        // NORMAL rotates dims (2i, 2i+1) as pair i, NEOX dims (i, i + d/2).
        const int pair = neox ? mu % (p->d2 / 2) : mu / 2, half = neox ? mu / (p->d2 / 2) : mu % 2;
        const int sp = g->pair_src[pair];
        const int dim = sp < 0 ? -1 : neox ? sp + half * (p->d / 2) : 2 * sp + half;
        for (int t = 0; t < p->H2; t++)
            g->q_src[t * p->d2 + mu] = dim < 0 ? -1 : g->head_src[t] * p->d + dim;
        for (int j = 0; j < p->Hkv2; j++)
            g->kv_src[j * p->d2 + mu] = dim < 0 ? -1 : (j % p->Hkv) * p->d + dim;
    }
    for (int l = 0; l < p->L2; l++) g->layer_src[l] = -1;
    for (int l = 0; l < p->L; l++) g->layer_src[(int)((int64_t)l * p->L2 / p->L)] = l;
    return 0;
}

static void grow_free(grow *g) {
    free(g->res_src);
    free(g->ff_src);
    free(g->head_src);
    free(g->pair_src);
    free(g->q_src);
    free(g->kv_src);
    free(g->layer_src);
    free(g->unit);
    free(g->scale);
    free(g->sum);
    free(g->buf);
    speck_gguf_stream_abort(g->st);
    speck_gguf_writer_free(g->w);
}

// general.*, the hyper-parameters (the source's with the target's shapes) and the tokenizer.
static int write_header(grow *g, const speck_preset *target) {
    const speck_model *m = g->m;
    const shapes *p = &g->p;
    speck_hparams hp = m->hp;
    hp.n_embd = p->E2;
    hp.n_ff = p->F2;
    hp.n_layer = p->L2;
    hp.n_head = p->H2;
    hp.n_head_kv = p->Hkv2;
    hp.head_dim = p->d2;
    hp.norm_eps = (float)(m->hp.norm_eps * p->c2);
    hp.tied_output = p->tied;
    snprintf(hp.name, sizeof hp.name, "%.60s grown to %.40s", m->hp.name[0] ? m->hp.name : "model",
             target_name(target));
    int rc = speck_hparams_write(g->w, &hp);
    if (!rc &&
        speck_gguf_set_u32(g->w, "general.file_type", (uint32_t)speck_gguf_file_type(g->type)))
        rc = SPECK_ERR_NOMEM;
    const speck_gguf *src = m->g;
    for (int64_t i = 0; i < speck_gguf_n_kv(src) && !rc; i++)
        if (!strncmp(speck_gguf_key(src, i), "tokenizer.", 10))
            rc = speck_gguf_copy_kv(g->w, src, i);
    return rc == SPECK_ERR_NOMEM ? speck_set_error(rc, "grow: out of memory") : rc;
}

int speck_grow_model(const char *src_path, const speck_preset *target, speck_type type,
                     uint64_t seed, bool progress, const char *out_path) {
    if (!src_path || !target || !out_path)
        return speck_set_error(SPECK_ERR_ARG, "grow: no source, target or output path");
    if (!speck_type_name(type))
        return speck_set_error(SPECK_ERR_ARG, "grow: unsupported weight type %d", (int)type);
    speck_model *m = speck_model_load_ex(src_path, SPECK_LOAD_NO_PANELS);
    if (!m) return SPECK_ERR_FORMAT; // the message names the file and the fault
    grow g = {.m = m, .type = type, .seed = seed};
    int rc = plan_shapes(&m->hp, target, &g.p);
    if (rc) {
        char msg[1024];
        snprintf(msg, sizeof msg, "%s", speck_last_error());
        speck_set_error(rc, "%s: %s", src_path, msg);
    }
    const int64_t block = speck_type_block_size(type);
    const int64_t lens[3] = {g.p.E2, g.p.F2, (int64_t)g.p.H2 * g.p.d2};
    for (int i = 0; i < 3 && !rc; i++)
        if (lens[i] % block)
            rc = speck_set_error(SPECK_ERR_ARG,
                                 "%s: cannot grow to %s as %s: row length %lld (n_embd, n_ff or "
                                 "n_head x head size) is not a multiple of its block of %lld "
                                 "values",
                                 src_path, target_name(target), speck_type_name(type),
                                 (long long)lens[i], (long long)block);
    if (!rc) rc = make_maps(&g);
    if (!rc && !(g.w = speck_gguf_writer_new()))
        rc = speck_set_error(SPECK_ERR_NOMEM, "grow: out of memory");
    if (!rc) rc = write_header(&g, target);
    if (!rc) rc = emit_all(&g); // pass 0: declare
    // Rows are built in chunks of ~8 MB of output (at least one row).
    size_t max_row = speck_type_row_size(type, g.p.E2 > g.p.F2 ? g.p.E2 : g.p.F2);
    if ((size_t)g.p.H2 * g.p.d2 > (size_t)g.p.E2 && !rc)
        max_row = speck_type_row_size(type, (int64_t)g.p.H2 * g.p.d2);
    g.buf_size = max_row > (8u << 20) ? max_row : (8u << 20);
    if (!rc && !(g.buf = malloc(g.buf_size)))
        rc = speck_set_error(SPECK_ERR_NOMEM, "grow: out of memory");
    if (!rc && !(g.st = speck_gguf_stream_open(g.w, out_path))) rc = SPECK_ERR_IO;
    if (!rc) {
        hf_progress_start(&g.pr, progress, g.n_tensors);
        g.n_tensors = 0;
        g.pass = 1;
        rc = emit_all(&g);
    }
    if (!rc) {
        rc = speck_gguf_stream_close(g.st); // removes the temporary file itself on failure
        g.st = NULL;
        if (!rc) hf_progress_end(&g.pr, "grow");
    }
    if (rc && g.pr.on) fprintf(stderr, "\n");
    grow_free(&g);
    speck_model_free(m);
    return rc;
}
