// `speck prune`: rewrite a GGUF model with its layer matrices pruned (zeros in place), the
// calibration statistics (imatrix for Wanda, with the activations' means and variances for
// DSnoT; Hessians for SparseGPT) gathered through the forward pass's matmul hook by src/calib/.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "calib/calib.h"
#include "formats/gguf_internal.h"
#include "formats/gguf_stream.h"
#include "kernels/kernels.h"
#include "quant/quant.h"
#include "sparse/sparse.h"

// Layer matrices (and, when asked, the embedding and head).
static bool prunable(const speck_gguf_tensor *t, const speck_prune_opts *o) {
    if (t->n_dims != 2 || t->ne[1] < 2 || !speck_ftype_quantizes(t->name, t->n_dims)) return false;
    if (!strncmp(t->name, "blk.", 4)) return true;
    return o->embd_head &&
           (!strcmp(t->name, "token_embd.weight") || !strcmp(t->name, "output.weight"));
}

// Types whose zero is stored exactly (no min, a zero level): the source's type is kept.
static bool stores_zero(int t) {
    return t == SPECK_TYPE_F32 || t == SPECK_TYPE_F16 || t == SPECK_TYPE_BF16 ||
           t == SPECK_TYPE_Q8_0 || t == SPECK_TYPE_Q4_0 || t == SPECK_TYPE_Q5_0;
}

static int dense_type_of(const speck_gguf_tensor *t) {
    return stores_zero(t->type) ? t->type : SPECK_TYPE_F16;
}

static int out_type_of(const speck_gguf_tensor *t, const speck_prune_opts *o) {
    return o->out_type >= 0 ? o->out_type : dense_type_of(t);
}

typedef struct {
    speck_imatrix *im; // Wanda, DSnoT
    int n_keys;        // SparseGPT: the distinct inputs, their Hessians and token counts
    char (*keys)[80];
    double **H;
    int64_t *tokens;
} calib_stats;

static void stats_free(calib_stats *c) {
    speck_imatrix_free(c->im);
    for (int k = 0; c->H && k < c->n_keys; k++) free(c->H[k]);
    free(c->H), free(c->keys), free(c->tokens);
}

static int calib_window(const speck_prune_opts *o, const speck_model *m) {
    int ctx = o->calib_ctx > 0 ? o->calib_ctx : speck_model_hparams(m)->n_ctx_train;
    if (o->calib_ctx <= 0 && ctx > 512) ctx = 512;
    return ctx;
}

static int gather(const speck_gguf *g, const char *path, const speck_prune_opts *o, calib_stats *c,
                  bool progress) {
    speck_model *m = speck_model_load(path);
    if (!m) return SPECK_ERR_FORMAT;
    const int ctx = calib_window(o, m);
    int rc = 0;
    if (!o->calib || o->n_calib < ctx || ctx < 16) {
        rc = speck_set_error(SPECK_ERR_ARG,
                             "prune: %s needs calibration text of at least one window of %d "
                             "tokens; it has %lld (a longer --calib text, or a smaller "
                             "--calib-ctx)",
                             o->dsnot_cycles > 0              ? "dsnot"
                             : o->method == SPECK_PRUNE_WANDA ? "wanda"
                                                              : "sparsegpt",
                             ctx, (long long)o->n_calib);
    } else if (o->method == SPECK_PRUNE_WANDA || o->dsnot_cycles > 0) {
        if (!(c->im = speck_imatrix_compute(m, o->calib, o->n_calib, ctx, o->embd_head, "prune",
                                            NULL, NULL)))
            rc = SPECK_ERR_ARG;
    }
    speck_model_free(m);
    if (rc || o->method != SPECK_PRUNE_SPARSEGPT) return rc;
    const int64_t nt = speck_gguf_n_tensors(g);
    const char **kp = calloc((size_t)nt, sizeof *kp);
    int *n_in = calloc((size_t)nt, sizeof *n_in);
    c->keys = calloc((size_t)nt, sizeof *c->keys);
    c->H = calloc((size_t)nt, sizeof *c->H);
    c->tokens = calloc((size_t)nt, sizeof *c->tokens);
    if (!kp || !n_in || !c->keys || !c->H || !c->tokens)
        rc = speck_set_error(SPECK_ERR_NOMEM, "out of memory");
    for (int64_t i = 0; i < nt && !rc; i++) {
        const speck_gguf_tensor *t = speck_gguf_tensor_at(g, i);
        if (!prunable(t, o) || !strcmp(t->name, "token_embd.weight")) continue;
        char key[80];
        calib_input_key(t->name, key, sizeof key);
        int k = 0;
        while (k < c->n_keys && strcmp(c->keys[k], key)) k++;
        if (k < c->n_keys) continue;
        snprintf(c->keys[k], sizeof c->keys[k], "%s", key);
        kp[k] = c->keys[k];
        n_in[k] = (int)t->ne[0];
        if (!(c->H[k] = malloc((size_t)n_in[k] * n_in[k] * sizeof **c->H)))
            rc = speck_set_error(SPECK_ERR_NOMEM, "out of memory for the Hessian of %s (%d x %d)",
                                 key, n_in[k], n_in[k]);
        c->n_keys++;
    }
    speck_quantize_opts qo = {.calib = o->calib, .n_calib = o->n_calib, .calib_ctx = ctx};
    if (!rc && c->n_keys)
        rc = calib_hessians(path, &qo, kp, n_in, c->n_keys, c->H, c->tokens, progress);
    free(kp), free(n_in);
    return rc;
}

// Prune tensor t (its rows as floats in W) with the statistics of its input; the embedding
// (no matrix product reads it) and inputs no token reached go by magnitude, without DSnoT.
static int prune_tensor(const speck_gguf_tensor *t, const speck_prune_opts *o, const calib_stats *c,
                        float *W) {
    const int64_t cols = t->ne[0], rows = t->n_elements / cols;
    speck_prune_opts mo = *o;
    const double *H = NULL;
    const float *x2 = NULL, *mean = NULL, *var = NULL;
    if (o->method == SPECK_PRUNE_WANDA || o->dsnot_cycles > 0) {
        int64_t n = 0;
        x2 = c->im ? speck_imatrix_get(c->im, t->name, &n) : NULL;
        if (x2 && (n != cols || speck_imatrix_count(c->im, t->name) <= 0)) x2 = NULL;
        if (x2 && speck_imatrix_moments(c->im, t->name, &mean, &var, NULL)) x2 = NULL;
        if (!x2) mo.method = SPECK_PRUNE_MAGNITUDE, mo.dsnot_cycles = 0;
    } else if (o->method == SPECK_PRUNE_SPARSEGPT) {
        char key[80];
        calib_input_key(t->name, key, sizeof key);
        for (int k = 0; k < c->n_keys; k++)
            if (!strcmp(c->keys[k], key) && c->tokens[k] > 0) H = c->H[k];
        if (!H) mo.method = SPECK_PRUNE_MAGNITUDE;
    }
    return speck_prune_matrix(&mo, W, rows, cols, H, x2, mean, var);
}

static void dequant_rows(const speck_gguf_tensor *t, float *W) {
    const int64_t cols = t->ne[0], rows = t->n_elements / cols;
    const size_t irs = speck_type_row_size((speck_type)t->type, cols);
#pragma omp parallel for schedule(static) if (t->n_elements >= (1 << 16))
    for (int64_t r = 0; r < rows; r++)
        speck_dequantize_row((speck_type)t->type, (const uint8_t *)t->data + (size_t)r * irs,
                             W + r * cols, cols);
}

// Prune t (its rows as floats in W) at sparsity s instead of o's; s that zeroes nothing per
// row (a block the allocation keeps dense) leaves W as it is.
static int prune_at(const speck_gguf_tensor *t, const speck_prune_opts *o, const calib_stats *c,
                    double s, float *W) {
    if (sparse_n_pruned(s, t->ne[0]) <= 0) return 0;
    speck_prune_opts mo = *o;
    mo.sparsity = s;
    return prune_tensor(t, &mo, c, W);
}

// The ratio allocation's view (sparse_pruner): the same matrices, the same local method.
typedef struct {
    const speck_prune_opts *o;
    const calib_stats *c;
} pruner_ctx;

static bool pr_takes(const speck_gguf_tensor *t, void *user) {
    return prunable(t, ((const pruner_ctx *)user)->o);
}

static int pr_prune(const speck_gguf_tensor *t, double s, float *W, void *user) {
    const pruner_ctx *p = user;
    speck_prune_opts mo = *p->o;
    mo.dsnot_report = NULL; // the variants' DSnoT counts are not the output's
    dequant_rows(t, W);
    return prune_at(t, &mo, p->c, s, W);
}

// The output's header: g's metadata with the pruning recorded, its tensors with the pruned
// matrices in their output types (dense: the dense copy's). Grows *max_out (bytes of the
// largest pruned tensor) and *max_el (its elements).
static int make_writer(const speck_gguf *g, const speck_prune_opts *o, const double *ratio,
                       const double *score, int n_layer, bool dense, speck_gguf_writer **out,
                       size_t *max_out, int64_t *max_el) {
    speck_gguf_writer *w = speck_gguf_writer_new();
    if (!w) return speck_set_error(SPECK_ERR_NOMEM, "out of memory");
    const int64_t nt = speck_gguf_n_tensors(g);
    int rc = 0, first = -1;
    for (int64_t i = 0; !rc && i < speck_gguf_n_kv(g); i++)
        if (strcmp(speck_gguf_key(g, i), "general.file_type")) rc = speck_gguf_copy_kv(w, g, i);
    char spars[32];
    if (o->nm_m > 0)
        snprintf(spars, sizeof spars, "%d:%d", o->nm_n, o->nm_m);
    else
        snprintf(spars, sizeof spars, "%g", o->sparsity);
    static const char *const mname[] = {"magnitude", "wanda", "sparsegpt"};
    char method[48];
    snprintf(method, sizeof method, "%s%s", mname[o->method], o->dsnot_cycles > 0 ? "+dsnot" : "");
    if (!rc) rc = speck_gguf_set_str(w, "speck.prune.method", method);
    if (!rc) rc = speck_gguf_set_str(w, "speck.prune.sparsity", spars);
    static const char *const aname[] = {"uniform", "ecoflap", "tyr"};
    if (!rc && ratio) rc = speck_gguf_set_str(w, "speck.prune.alloc", aname[o->alloc]);
    float *buf = ratio ? malloc((size_t)(n_layer ? n_layer : 1) * sizeof *buf) : NULL;
    if (!rc && ratio && !buf) rc = speck_set_error(SPECK_ERR_NOMEM, "out of memory");
    for (int l = 0; !rc && ratio && l < n_layer; l++) buf[l] = (float)ratio[l];
    if (!rc && ratio)
        rc = speck_gguf_set_arr(w, "speck.prune.layer_sparsity", SPECK_GGUF_FLOAT32, buf, n_layer);
    for (int l = 0; !rc && score && o->alloc == SPECK_ALLOC_ECOFLAP && l < n_layer; l++)
        buf[l] = (float)score[l];
    if (!rc && score && o->alloc == SPECK_ALLOC_ECOFLAP)
        rc = speck_gguf_set_arr(w, "speck.prune.layer_score", SPECK_GGUF_FLOAT32, buf, n_layer);
    free(buf);
    for (int64_t i = 0; !rc && i < nt; i++) {
        const speck_gguf_tensor *t = speck_gguf_tensor_at(g, i);
        const bool p = prunable(t, o);
        const int ot = !p ? t->type : dense ? dense_type_of(t) : out_type_of(t, o);
        if (p && first < 0) first = ot;
        rc = speck_gguf_add_tensor(w, t->name, (speck_type)ot, t->n_dims, t->ne, NULL);
        if (p) {
            const size_t ob =
                speck_type_row_size((speck_type)ot, t->ne[0]) * (size_t)(t->n_elements / t->ne[0]);
            if (ob > *max_out) *max_out = ob;
            if (t->n_elements > *max_el) *max_el = t->n_elements;
        }
    }
    // general.file_type: llama.cpp's code of the matrices' type (speck's own types have none).
    const int ft = first >= 0 ? speck_gguf_file_type(first) : -1;
    if (!rc && ft >= 0) rc = speck_gguf_set_u32(w, "general.file_type", (uint32_t)ft);
    if (rc) speck_gguf_writer_free(w), w = NULL;
    *out = w;
    return rc;
}

int speck_gguf_prune(const char *in_path, const char *out_path, const speck_prune_opts *opts,
                     bool progress) {
    // DSnoT's counts go to the caller's report, or to one here for the progress line.
    speck_dsnot_report rep = {0};
    speck_prune_opts oc = *opts;
    if (!oc.dsnot_report) oc.dsnot_report = &rep;
    const speck_prune_opts *o = &oc;
    if (o->method < SPECK_PRUNE_MAGNITUDE || o->method > SPECK_PRUNE_SPARSEGPT)
        return speck_set_error(SPECK_ERR_ARG, "prune: unknown method %d", (int)o->method);
    speck_gguf *g = speck_gguf_open(in_path);
    if (!g) return SPECK_ERR_FORMAT;
    const int64_t nt = speck_gguf_n_tensors(g);
    int rc = 0, n_pruned = 0;
    // Everything checked before anything is computed or written.
    for (int64_t i = 0; i < nt && !rc; i++) {
        const speck_gguf_tensor *t = speck_gguf_tensor_at(g, i);
        if (!prunable(t, o)) continue;
        char what[400];
        snprintf(what, sizeof what, "%s: tensor '%s'", in_path, t->name);
        const int ot = out_type_of(t, o);
        if (!speck_traits(t->type))
            rc = speck_set_error(SPECK_ERR_FORMAT, "%s has type %s, which speck cannot read", what,
                                 speck_gguf_type_label(t->type));
        else if (!speck_traits(ot) || t->ne[0] % speck_type_block_size((speck_type)ot))
            rc = speck_set_error(SPECK_ERR_ARG, "%s: rows of %lld values cannot be written as %s",
                                 what, (long long)t->ne[0],
                                 speck_type_name(ot) ? speck_type_name(ot) : "?");
        else
            rc = sparse_check_shape(o, what, t->ne[0]);
        n_pruned++;
    }
    if (!rc && o->out_type == SPECK_TYPE_S24_Q8 && !(o->nm_n == 2 && o->nm_m == 4))
        rc = speck_set_error(SPECK_ERR_ARG,
                             "prune: type s24_q8 stores 2:4 sparsity only (--sparsity "
                             "2:4)");
    if (!rc && o->dsnot_cycles > 0 && o->method == SPECK_PRUNE_SPARSEGPT)
        rc = speck_set_error(SPECK_ERR_ARG, "prune: dsnot refines magnitude or wanda masks, not "
                                            "sparsegpt's (whose kept weights are updated)");
    if (!rc && o->dense_path && !strcmp(o->dense_path, out_path))
        rc = speck_set_error(SPECK_ERR_ARG, "prune: the dense copy would overwrite %s", out_path);
    if (!rc && !n_pruned)
        rc = speck_set_error(SPECK_ERR_ARG, "%s: no layer matrices to prune", in_path);
    if (!rc && o->alloc != SPECK_ALLOC_UNIFORM && o->nm_m > 0)
        rc = speck_set_error(SPECK_ERR_ARG, "prune: --alloc shares an unstructured sparsity "
                                            "among the blocks, not N:M");
    if (!rc && (o->alloc < SPECK_ALLOC_UNIFORM || o->alloc > SPECK_ALLOC_TYR))
        rc = speck_set_error(SPECK_ERR_ARG, "prune: unknown allocation %d", (int)o->alloc);
    if (!rc && o->alloc == SPECK_ALLOC_UNIFORM && o->max_layer_sparsity != 0)
        rc = speck_set_error(SPECK_ERR_ARG, "prune: a largest block sparsity needs --alloc "
                                            "ecoflap or tyr");
    calib_stats cs = {0};
    if (!rc && (o->method != SPECK_PRUNE_MAGNITUDE || o->dsnot_cycles > 0))
        rc = gather(g, in_path, o, &cs, progress);
    // Per-block ratios: the blocks are those the layer matrices name.
    int n_layer = 0;
    for (int64_t i = 0; i < nt; i++) {
        const int l = sparse_block_of(speck_gguf_tensor_at(g, i)->name);
        if (l >= n_layer && l < (1 << 16)) n_layer = l + 1;
    }
    double *ratio = NULL, *score = NULL;
    if (!rc && o->alloc != SPECK_ALLOC_UNIFORM) {
        ratio = malloc((size_t)(n_layer ? n_layer : 1) * sizeof *ratio);
        score = malloc((size_t)(n_layer ? n_layer : 1) * sizeof *score);
        if (!ratio || !score) rc = speck_set_error(SPECK_ERR_NOMEM, "out of memory");
        const pruner_ctx pc = {o, &cs};
        const sparse_pruner pr = {pr_takes, pr_prune, (void *)&pc};
        if (!rc) rc = sparse_layer_ratios(g, in_path, o, &pr, n_layer, ratio, score, progress);
        if (!rc && progress) {
            fprintf(stderr,
                    "prune: block sparsity (%s):", o->alloc == SPECK_ALLOC_TYR ? "tyr" : "ecoflap");
            for (int l = 0; l < n_layer; l++) fprintf(stderr, " %.4f", ratio[l]);
            fprintf(stderr, "\n");
        }
    }
    const bool two = o->dense_path != NULL;
    speck_gguf_writer *w = NULL, *w2 = NULL;
    size_t max_out = 0;
    int64_t max_el = 0;
    if (!rc) rc = make_writer(g, o, ratio, score, n_layer, false, &w, &max_out, &max_el);
    if (!rc && two) rc = make_writer(g, o, ratio, score, n_layer, true, &w2, &max_out, &max_el);
    float *W = rc ? NULL : malloc((size_t)max_el * sizeof *W);
    uint8_t *buf = rc ? NULL : malloc(max_out ? max_out : 1);
    if (!rc && (!W || !buf)) rc = speck_set_error(SPECK_ERR_NOMEM, "out of memory");
    speck_gguf_stream *s = rc ? NULL : speck_gguf_stream_open(w, out_path);
    if (!rc && !s) rc = SPECK_ERR_IO;
    speck_gguf_stream *s2 = rc || !two ? NULL : speck_gguf_stream_open(w2, o->dense_path);
    if (!rc && two && !s2) rc = SPECK_ERR_IO;
    int64_t zeros = 0, total = 0;
    for (int64_t i = 0; !rc && i < nt; i++) {
        const speck_gguf_tensor *t = speck_gguf_tensor_at(g, i);
        if (!prunable(t, o)) {
            rc = speck_gguf_stream_write(s, t->data, t->n_bytes);
            if (!rc && two) rc = speck_gguf_stream_write(s2, t->data, t->n_bytes);
            continue;
        }
        const int64_t cols = t->ne[0], rows = t->n_elements / cols;
        const int ot = out_type_of(t, o);
        dequant_rows(t, W);
        if (progress)
            fprintf(stderr, "\rprune: %-32s %5lld x %-5lld", t->name, (long long)rows,
                    (long long)cols);
        const int l = sparse_block_of(t->name);
        rc = ratio && l >= 0 ? prune_at(t, o, &cs, ratio[l], W) : prune_tensor(t, o, &cs, W);
        for (int64_t j = 0; !rc && j < t->n_elements; j++) zeros += W[j] == 0;
        total += t->n_elements;
        if (!rc) rc = speck_quantize((speck_type)ot, W, buf, rows, cols, NULL);
        if (!rc)
            rc = speck_gguf_stream_write(s, buf,
                                         speck_type_row_size((speck_type)ot, cols) * (size_t)rows);
        const int dt = dense_type_of(t);
        if (!rc && two) rc = speck_quantize((speck_type)dt, W, buf, rows, cols, NULL);
        if (!rc && two)
            rc = speck_gguf_stream_write(s2, buf,
                                         speck_type_row_size((speck_type)dt, cols) * (size_t)rows);
    }
    if (progress && !rc)
        fprintf(stderr, "\rprune: %d matrices, %.2f %% of their weights zero%20s\n", n_pruned,
                100.0 * (double)zeros / (double)(total ? total : 1), "");
    const speck_dsnot_report *dr = o->dsnot_report;
    if (progress && !rc && o->dsnot_cycles > 0 && dr->rows > 0)
        fprintf(stderr,
                "prune: dsnot: %lld swaps over %lld rows (%.2f per row), mean |expected row "
                "error| %.4g -> %.4g\n",
                (long long)dr->swaps, (long long)dr->rows, (double)dr->swaps / (double)dr->rows,
                dr->eps0 / (double)dr->rows, dr->eps1 / (double)dr->rows);
    if (!rc) {
        rc = speck_gguf_stream_close(s);
        s = NULL;
    }
    if (!rc && two) {
        rc = speck_gguf_stream_close(s2);
        s2 = NULL;
        if (rc) unlink(out_path); // both or neither
    }
    speck_gguf_stream_abort(s);
    speck_gguf_stream_abort(s2);
    speck_gguf_writer_free(w2);
    free(W), free(buf), free(ratio), free(score);
    stats_free(&cs);
    speck_gguf_writer_free(w);
    speck_gguf_close(g);
    return rc;
}
