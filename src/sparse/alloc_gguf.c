// speck prune --alloc: per-block sparsity ratios measured on the model. ECoFLaP: zeroth-order
// gradient estimates (two forward passes per perturbation of one matrix) give each block an
// importance; Týr: a search over pruned variants of the blocks scored by the calibration KL
// divergence from the dense model. The ratio arithmetic is src/sparse/layer_ratios.c.
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "calib/calib.h"
#include "formats/gguf_internal.h"
#include "model/model_internal.h"
#include "sparse/sparse.h"

#define ZO_EPS 1e-3          // ECoFLaP's perturbation scale (the authors' noise_eps)
#define BASE_MAX (64u << 20) // at most this many stored dense log-probabilities (Týr's KL)

int sparse_block_of(const char *name) {
    int l, k = 0;
    if (sscanf(name, "blk.%d.%n", &l, &k) != 1 || k == 0 || l < 0) return -1;
    return l;
}

// The model with its calibration windows: NLL of one window, KL of all from the dense model.
typedef struct {
    speck_model *m;
    speck_ctx *c;
    int ctx, windows, n_vocab;
    const int32_t *tokens;
    float *base;   // (windows * ctx, n_vocab) dense log-probabilities (Týr) or NULL
    float *logits; // (ctx, n_vocab)
} evaluator;

static int forward_window(evaluator *e, int w, float *out) {
    speck_ctx_truncate(e->c, 0);
    int rc =
        speck_forward(e->c, e->ctx, e->tokens + (size_t)w * e->ctx, NULL, NULL, NULL, e->ctx, out);
    if (!rc) calib_log_softmax_rows(out, e->ctx, e->n_vocab);
    return rc;
}

// Mean next-token negative log-likelihood over window w's ctx - 1 predictions; NaN on error.
static double nll(evaluator *e, int w) {
    if (forward_window(e, w, e->logits)) return NAN;
    const int32_t *t = e->tokens + (size_t)w * e->ctx;
    double s = 0;
    for (int r = 0; r + 1 < e->ctx; r++) s -= e->logits[(size_t)r * e->n_vocab + t[r + 1]];
    return s / (e->ctx - 1);
}

// Mean KL(dense || model) per position over every window; NaN on error.
static double kld(evaluator *e) {
    double sum = 0;
    for (int w = 0; w < e->windows; w++) {
        if (forward_window(e, w, e->logits)) return NAN;
        sum += calib_kld_rows(e->base + (size_t)w * e->ctx * e->n_vocab, e->logits, e->ctx,
                              e->n_vocab);
    }
    return sum / ((double)e->windows * e->ctx);
}

static void evaluator_free(evaluator *e) {
    if (e->c) speck_ctx_free(e->c);
    if (e->m) speck_model_free(e->m);
    free(e->base), free(e->logits);
}

static int evaluator_open(evaluator *e, const char *path, const speck_prune_opts *o, bool base) {
    if (!(e->m = speck_model_load(path))) return SPECK_ERR_FORMAT;
    e->n_vocab = speck_model_hparams(e->m)->n_vocab;
    e->ctx = o->calib_ctx > 0 ? o->calib_ctx : speck_model_hparams(e->m)->n_ctx_train;
    if (o->calib_ctx <= 0 && e->ctx > 512) e->ctx = 512;
    const int want = o->alloc_windows > 0 ? o->alloc_windows : 4;
    e->windows = e->ctx >= 16 && o->calib ? (int)(o->n_calib / e->ctx) : 0;
    if (e->windows > want) e->windows = want;
    while (base && e->windows > 1 && (size_t)e->windows * e->ctx * e->n_vocab > BASE_MAX)
        e->windows--;
    e->tokens = o->calib;
    if (e->windows < 1)
        return speck_set_error(SPECK_ERR_ARG,
                               "prune: --alloc needs calibration text of at least one window of "
                               "%d tokens; it has %lld",
                               e->ctx, (long long)o->n_calib);
    if (!(e->c = speck_ctx_new(e->m, e->ctx)) ||
        !(e->logits = malloc((size_t)e->ctx * e->n_vocab * sizeof *e->logits)) ||
        (base && !(e->base = malloc((size_t)e->windows * e->ctx * e->n_vocab * sizeof *e->base))))
        return speck_set_error(SPECK_ERR_NOMEM, "out of memory");
    for (int w = 0; base && w < e->windows; w++) {
        int rc = forward_window(e, w, e->base + (size_t)w * e->ctx * e->n_vocab);
        if (rc) return rc;
    }
    return 0;
}

// Swap the f32 matrix W in for tensor t (and, called again, back out).
static int swap_f32(evaluator *e, const speck_gguf_tensor *t, float *W, speck_weight *sw) {
    *sw = (speck_weight){W, SPECK_TYPE_F32, t->ne[0], t->n_elements / t->ne[0], NULL, NULL};
    return speck_model_swap_weight(e->m, t->name, sw);
}

// Standard normal draws from a counter-based generator (splitmix64, Box-Muller).
static uint64_t mix64(uint64_t z) {
    z += 0x9E3779B97F4A7C15ull;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

static double gauss(uint64_t seed, int64_t i) {
    const uint64_t a = mix64(seed ^ mix64((uint64_t)(i >> 1))), b = mix64(a);
    const double u1 = ((double)(a >> 11) + 1) * 0x1.0p-53, u2 = (double)(b >> 11) * 0x1.0p-53;
    const double r = sqrt(-2 * log(u1));
    return (i & 1) ? r * sin(2 * M_PI * u2) : r * cos(2 * M_PI * u2);
}

// ECoFLaP's block scores: per matrix t, G_t = the mean over the windows of |(L(W + eps z) -
// L(W - eps z)) / (2 eps)|, z ~ N(0, I) drawn anew per window (the zeroth-order estimate of the
// gradient's projection on z, as MeZO forms it), the weights' importance (w G_t)^2, a block's
// score their mean over its weights.
static int ecoflap_scores(const speck_gguf *g, evaluator *e, int n_layer, const int64_t *size,
                          double *score, bool progress) {
    const int64_t nt = speck_gguf_n_tensors(g);
    int rc = 0;
    for (int l = 0; l < n_layer; l++) score[l] = 0;
    for (int64_t i = 0; i < nt && !rc; i++) {
        const speck_gguf_tensor *t = speck_gguf_tensor_at(g, i);
        const int l = sparse_block_of(t->name);
        if (l < 0 || l >= n_layer || t->n_dims != 2 || !size[l]) continue;
        if (!speck_ftype_quantizes(t->name, t->n_dims)) continue;
        float *W0 = calib_tensor_f32(t), *Wp = malloc((size_t)t->n_elements * sizeof *Wp);
        if (!W0 || !Wp) {
            free(W0), free(Wp);
            return speck_set_error(SPECK_ERR_NOMEM, "out of memory");
        }
        double G = 0, w2 = 0;
        for (int64_t j = 0; j < t->n_elements; j++) w2 += (double)W0[j] * W0[j];
        for (int w = 0; w < e->windows && !rc; w++) {
            const uint64_t seed = mix64(((uint64_t)i << 20) ^ (uint64_t)w);
            double L[2];
            for (int sgn = 0; sgn < 2 && !rc; sgn++) {
                const double s = sgn ? -ZO_EPS : ZO_EPS;
#pragma omp parallel for schedule(static) if (t->n_elements >= (1 << 16))
                for (int64_t j = 0; j < t->n_elements; j++)
                    Wp[j] = (float)(W0[j] + s * gauss(seed, j));
                speck_weight sw;
                rc = swap_f32(e, t, Wp, &sw);
                if (rc) break;
                L[sgn] = nll(e, w);
                speck_model_swap_weight(e->m, t->name, &sw); // back
                if (isnan(L[sgn])) rc = SPECK_ERR_ARG;
            }
            if (!rc) G += fabs((L[0] - L[1]) / (2 * ZO_EPS));
        }
        G /= e->windows;
        score[l] += G * G * w2;
        if (progress) fprintf(stderr, "\rprune: ecoflap: %-28s |g.z| %.4g%16s", t->name, G, "");
        free(W0), free(Wp);
    }
    for (int l = 0; l < n_layer; l++) score[l] = size[l] ? score[l] / (double)size[l] : 0;
    if (progress) fprintf(stderr, "\n");
    return rc;
}

// Týr's supernet: each block's matrices pruned at the ratios the search asks for, made once.
typedef struct {
    int layer;
    double ratio;
    float **W; // per matrix of the block (block_t order)
} variant;

typedef struct {
    const speck_gguf *g;
    evaluator *e;
    int n_layer;
    int64_t **block_t; // per block: its matrices' tensor indices, -1 ended
    const sparse_pruner *pr;
    variant *v;
    int n_v, cap_v;
    int64_t evals;
    bool progress;
} tyr_ctx;

static variant *get_variant(tyr_ctx *T, int l, double r) {
    for (int i = 0; i < T->n_v; i++)
        if (T->v[i].layer == l && fabs(T->v[i].ratio - r) < 1e-12) return &T->v[i];
    if (T->n_v == T->cap_v) {
        const int cap = T->cap_v ? 2 * T->cap_v : 32;
        variant *nv = realloc(T->v, (size_t)cap * sizeof *nv);
        if (!nv) return NULL;
        T->v = nv, T->cap_v = cap;
    }
    int nm = 0;
    while (T->block_t[l][nm] >= 0) nm++;
    variant *v = &T->v[T->n_v];
    *v = (variant){l, r, calloc((size_t)nm + 1, sizeof(float *))};
    if (!v->W) return NULL;
    for (int m = 0; m < nm; m++) {
        const speck_gguf_tensor *t = speck_gguf_tensor_at(T->g, T->block_t[l][m]);
        if (!(v->W[m] = malloc((size_t)t->n_elements * sizeof(float))) ||
            T->pr->prune(t, r, v->W[m], T->pr->user)) {
            for (int k = 0; k <= m; k++) free(v->W[k]);
            free(v->W);
            return NULL;
        }
    }
    T->n_v++;
    return v;
}

// The fitness: every block at its ratio's variant, KL divergence from the dense model.
static double tyr_fitness(const double *ratio, void *user) {
    tyr_ctx *T = user;
    int rc = 0, l = 0;
    speck_weight *sw = NULL;
    int64_t n_sw = 0;
    for (int b = 0; b < T->n_layer; b++)
        for (int m = 0; T->block_t[b] && T->block_t[b][m] >= 0; m++) n_sw++;
    if (!(sw = calloc((size_t)n_sw + 1, sizeof *sw))) {
        speck_set_error(SPECK_ERR_NOMEM, "out of memory");
        return NAN;
    }
    int64_t k = 0;
    for (l = 0; l < T->n_layer && !rc; l++) {
        if (!T->block_t[l]) continue;
        variant *v = get_variant(T, l, ratio[l]);
        if (!v) {
            rc = SPECK_ERR_NOMEM;
            break;
        }
        for (int m = 0; T->block_t[l][m] >= 0 && !rc; m++, k++)
            rc = swap_f32(T->e, speck_gguf_tensor_at(T->g, T->block_t[l][m]), v->W[m], &sw[k]);
    }
    const double f = rc ? NAN : kld(T->e);
    // Back (each swap returned the slot's weight; the slots differ, so any order).
    const int64_t back = k;
    k = 0;
    for (int b = 0; b < T->n_layer && k < back; b++)
        for (int m = 0; T->block_t[b] && T->block_t[b][m] >= 0 && k < back; m++, k++)
            speck_model_swap_weight(T->e->m, speck_gguf_tensor_at(T->g, T->block_t[b][m])->name,
                                    &sw[k]);
    free(sw);
    T->evals++;
    if (T->progress && !isnan(f)) {
        fprintf(stderr, "\rprune: tyr: candidate %lld, KL %.5f:", (long long)T->evals, f);
        for (int b = 0; b < T->n_layer && b < 12; b++) fprintf(stderr, " %.3f", ratio[b]);
        fprintf(stderr, "%8s", "");
    }
    if (rc && rc != SPECK_ERR_NOMEM) return NAN;
    if (rc) speck_set_error(SPECK_ERR_NOMEM, "tyr: out of memory for the pruned variants");
    return f;
}

int sparse_layer_ratios(const speck_gguf *g, const char *path, const speck_prune_opts *o,
                        const sparse_pruner *pr, int n_layer, double *ratio, double *score,
                        bool progress) {
    const int64_t nt = speck_gguf_n_tensors(g);
    int64_t *size = calloc((size_t)n_layer, sizeof *size);
    int64_t **block_t = calloc((size_t)n_layer, sizeof *block_t);
    int *cnt = calloc((size_t)n_layer, sizeof *cnt);
    evaluator e = {0};
    tyr_ctx T = {0};
    int rc = 0;
    if (!size || !block_t || !cnt) rc = speck_set_error(SPECK_ERR_NOMEM, "out of memory");
    // The blocks' pruned matrices (what the caller prunes, by prune's own test: it is asked
    // only about layer matrices it accepts).
    for (int64_t i = 0; i < nt && !rc; i++) {
        const speck_gguf_tensor *t = speck_gguf_tensor_at(g, i);
        const int l = sparse_block_of(t->name);
        if (l < 0 || l >= n_layer || !pr->takes(t, pr->user)) continue;
        size[l] += t->n_elements;
        int64_t *nb = realloc(block_t[l], (size_t)(cnt[l] + 2) * sizeof *nb);
        if (!nb) {
            rc = speck_set_error(SPECK_ERR_NOMEM, "out of memory");
            break;
        }
        block_t[l] = nb;
        block_t[l][cnt[l]++] = i;
        block_t[l][cnt[l]] = -1;
    }
    // Blocks without matrices take no part (their ratio is the target's).
    int n = 0;
    int *idx = rc ? NULL : malloc((size_t)n_layer * sizeof *idx);
    int64_t *sz = rc ? NULL : malloc((size_t)n_layer * sizeof *sz);
    double *sc = rc ? NULL : malloc((size_t)n_layer * sizeof *sc),
           *r = rc ? NULL : malloc((size_t)n_layer * sizeof *r);
    if (!rc && (!idx || !sz || !sc || !r)) rc = speck_set_error(SPECK_ERR_NOMEM, "out of memory");
    for (int l = 0; l < n_layer && !rc; l++) {
        ratio[l] = o->sparsity;
        if (score) score[l] = 0;
        if (size[l]) idx[n] = l, sz[n++] = size[l];
    }
    double maxs = o->max_layer_sparsity > 0 ? o->max_layer_sparsity : o->sparsity + 0.1;
    if (o->max_layer_sparsity <= 0) {
        if (maxs < 0.8) maxs = 0.8;
        if (maxs > 0.99) maxs = 0.99;
    }
    if (!rc && !(maxs >= o->sparsity && maxs < 1))
        rc = speck_set_error(SPECK_ERR_ARG,
                             "prune: --max-layer-sparsity %g must be at least --sparsity %g and "
                             "below 1",
                             maxs, o->sparsity);
    if (!rc && n == 0) rc = speck_set_error(SPECK_ERR_ARG, "%s: no blocks to allocate", path);
    if (!rc) rc = evaluator_open(&e, path, o, o->alloc == SPECK_ALLOC_TYR);
    if (!rc && o->alloc == SPECK_ALLOC_ECOFLAP) {
        double *all = calloc((size_t)n_layer, sizeof *all);
        if (!all) rc = speck_set_error(SPECK_ERR_NOMEM, "out of memory");
        if (!rc) rc = ecoflap_scores(g, &e, n_layer, size, all, progress);
        for (int i = 0; i < n && !rc; i++) sc[i] = all[idx[i]];
        if (!rc) rc = speck_ecoflap_ratios(n, sc, sz, o->sparsity, maxs, r);
        for (int i = 0; i < n && !rc && score; i++) score[idx[i]] = sc[i];
        free(all);
    } else if (!rc && o->alloc == SPECK_ALLOC_TYR) {
        T = (tyr_ctx){.g = g,
                      .e = &e,
                      .n_layer = n_layer,
                      .block_t = block_t,
                      .pr = pr,
                      .progress = progress};
        // The fitness indexes ratios by layer: every layer must be one of the searched blocks.
        if (n != n_layer)
            rc = speck_set_error(SPECK_ERR_ARG, "%s: --alloc tyr needs matrices in every block",
                                 path);
        if (!rc) rc = speck_tyr_search(n, sz, o->sparsity, maxs, NULL, tyr_fitness, &T, r);
        if (progress) fprintf(stderr, "\n");
    }
    for (int i = 0; i < n && !rc; i++) ratio[idx[i]] = r[i];
    for (int i = 0; i < T.n_v; i++) {
        for (int m = 0; T.v[i].W && T.v[i].W[m]; m++) free(T.v[i].W[m]);
        free(T.v[i].W);
    }
    free(T.v);
    evaluator_free(&e);
    for (int l = 0; block_t && l < n_layer; l++) free(block_t[l]);
    free(block_t), free(size), free(cnt), free(idx), free(sz), free(sc), free(r);
    return rc;
}
