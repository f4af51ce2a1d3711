// CFSP structured pruning (Wang et al. 2024): drop whole FFN intermediate channels ranked by an
// activation-weighted score from one calibration pass, writing a smaller dense model.
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "formats/gguf_internal.h"
#include "formats/gguf_stream.h"
#include "quant/quant.h"
#include "sparse/sparse.h"

// The score of speck_cfsp_channel_scores (include/speck_quant.h states it). Relative terms:
// each down row i shares 1 among the channels by |Wd_ij| * a_j, each up / gate input column i
// shares 1 among the channels by |W_ji|; a channel's mean share over the n_embd rows/columns
// times a_j.
void speck_cfsp_channel_scores(const float *wg, const float *wu, const float *wd, const float *x2,
                               int64_t n_embd, int64_t n_ff, double *score) {
    const int64_t E = n_embd, F = n_ff;
    double *a = malloc((size_t)F * sizeof *a), *col = calloc((size_t)E, sizeof *col);
    if (!a || !col) {
        for (int64_t j = 0; j < F; j++) score[j] = 0;
        free(a), free(col);
        return;
    }
    for (int64_t j = 0; j < F; j++) {
        a[j] = sqrt(x2[j] > 0 ? (double)x2[j] : 0.0);
        score[j] = 0;
    }
    // down: (E, F); row i normalised across the channels.
    for (int64_t i = 0; i < E; i++) {
        const float *r = wd + i * F;
        double s = 0;
        for (int64_t j = 0; j < F; j++) s += fabs((double)r[j]) * a[j];
        if (s > 0)
            for (int64_t j = 0; j < F; j++) score[j] += fabs((double)r[j]) * a[j] / s;
    }
    // up, gate: (F, E); input column i normalised across the channels (rows).
    const float *ws[2] = {wu, wg};
    for (int w = 0; w < 2; w++) {
        if (!ws[w]) continue;
        memset(col, 0, (size_t)E * sizeof *col);
        for (int64_t j = 0; j < F; j++)
            for (int64_t i = 0; i < E; i++) col[i] += fabs((double)ws[w][j * E + i]);
        for (int64_t j = 0; j < F; j++) {
            double s = 0;
            for (int64_t i = 0; i < E; i++)
                if (col[i] > 0) s += fabs((double)ws[w][j * E + i]) / col[i];
            score[j] += s;
        }
    }
    for (int64_t j = 0; j < F; j++) score[j] = score[j] / (double)E * a[j];
    free(a), free(col);
}

int speck_cfsp_width(int64_t n_ff, double ratio, int align, int64_t *keep) {
    if (!(ratio > 0 && ratio < 1))
        return speck_set_error(SPECK_ERR_ARG,
                               "cfsp: ratio %g is outside (0, 1) (the fraction of each layer's "
                               "FFN channels removed, e.g. 25%%)",
                               ratio);
    if (align < 1) align = 32;
    const int64_t k = n_ff - sparse_n_pruned(ratio, n_ff);
    const int64_t ka = (k + align / 2) / align * align; // nearest multiple, halves up
    if (ka <= 0)
        return speck_set_error(SPECK_ERR_ARG,
                               "cfsp: ratio %g removes every FFN channel (%lld of %lld kept, "
                               "rounded to a multiple of %d: 0)",
                               ratio, (long long)k, (long long)n_ff, align);
    if (ka >= n_ff)
        return speck_set_error(SPECK_ERR_ARG,
                               "cfsp: ratio %g removes no FFN channel once the width %lld is "
                               "rounded to a multiple of %d (a larger ratio or a smaller --align)",
                               ratio, (long long)k, align);
    *keep = ka;
    return 0;
}

typedef struct {
    double s;
    int64_t j;
} chan;

static int by_score(const void *x, const void *y) { // descending score, ties: lower index first
    const chan *a = x, *b = y;
    if (a->s != b->s) return a->s > b->s ? -1 : 1;
    return (a->j > b->j) - (a->j < b->j);
}

static int by_index(const void *x, const void *y) {
    const int64_t a = *(const int64_t *)x, b = *(const int64_t *)y;
    return (a > b) - (a < b);
}

int speck_cfsp_select(const double *score, int64_t n_ff, int64_t keep, int64_t *kept) {
    chan *c = malloc((size_t)n_ff * sizeof *c);
    if (!c) return speck_set_error(SPECK_ERR_NOMEM, "out of memory");
    for (int64_t j = 0; j < n_ff; j++) c[j] = (chan){isnan(score[j]) ? -INFINITY : score[j], j};
    qsort(c, (size_t)n_ff, sizeof *c, by_score);
    for (int64_t k = 0; k < keep; k++) kept[k] = c[k].j;
    qsort(kept, (size_t)keep, sizeof *kept, by_index);
    free(c);
    return 0;
}

// Per layer: the FFN tensors and the channels kept; the attention tensors and, when heads are
// pruned, the rows of q (and columns of attn_output) and of k / v kept.
typedef struct {
    const speck_gguf_tensor *g, *u, *d, *gb, *ub;
    int64_t *kept;
    const speck_gguf_tensor *q, *k, *v, *o, *qb, *kb, *vb;
    int64_t *qrows, *kvrows;
} layer;

// Attention shape: heads, KV heads, head width; with heads pruned, the KV groups kept.
typedef struct {
    int64_t n_head, n_kv, hd, keep_kv;
} heads;

static const speck_gguf_tensor *find(const speck_gguf *g, int l, const char *what) {
    char name[96];
    snprintf(name, sizeof name, "blk.%d.%s", l, what);
    return speck_gguf_find_tensor(g, name);
}

static float *rows_f32(const speck_gguf_tensor *t) {
    const int64_t cols = t->ne[0], rows = t->n_elements / cols;
    float *w = malloc((size_t)t->n_elements * sizeof *w);
    if (!w) return NULL;
    const size_t rs = speck_type_row_size((speck_type)t->type, cols);
    for (int64_t r = 0; r < rows; r++)
        speck_dequantize_row((speck_type)t->type, (const uint8_t *)t->data + (size_t)r * rs,
                             w + r * cols, cols);
    return w;
}

// The model's layers' FFN tensors, checked: dense gate (optional) / up (F, E) and down (E, F)
// in types speck reads, down's type able to store rows of `keep` values.
static int check_layers(const speck_gguf *g, const char *path, int n_layer, int64_t F, int64_t E,
                        int64_t keep, layer *L) {
    for (int l = 0; l < n_layer; l++) {
        layer *y = &L[l];
        y->g = find(g, l, "ffn_gate.weight"), y->u = find(g, l, "ffn_up.weight");
        y->d = find(g, l, "ffn_down.weight");
        y->gb = find(g, l, "ffn_gate.bias"), y->ub = find(g, l, "ffn_up.bias");
        if (!y->u || !y->d)
            return speck_set_error(SPECK_ERR_ARG,
                                   "%s: layer %d has no dense FFN (blk.%d.ffn_up / ffn_down): cfsp "
                                   "prunes dense FFN channels (not MoE experts)",
                                   path, l, l);
        const speck_gguf_tensor *ts[3] = {y->g, y->u, y->d};
        for (int k = 0; k < 3; k++) {
            const speck_gguf_tensor *t = ts[k];
            if (!t) continue;
            const bool down = k == 2;
            if (t->n_dims != 2 || t->ne[0] != (down ? F : E) || t->ne[1] != (down ? E : F))
                return speck_set_error(SPECK_ERR_FORMAT,
                                       "%s: tensor '%s' is %lld x %lld, not (%lld, %lld) as "
                                       "feed_forward_length %lld says (fused gate/up is not "
                                       "supported)",
                                       path, t->name, (long long)t->ne[1], (long long)t->ne[0],
                                       (long long)(down ? E : F), (long long)(down ? F : E),
                                       (long long)F);
            if (!speck_traits(t->type))
                return speck_set_error(SPECK_ERR_FORMAT,
                                       "%s: tensor '%s' has type %s, which "
                                       "speck cannot read",
                                       path, t->name, speck_gguf_type_label(t->type));
            if (down && keep % speck_type_block_size((speck_type)t->type))
                return speck_set_error(SPECK_ERR_ARG,
                                       "%s: tensor '%s' (%s) cannot hold rows of %lld values "
                                       "(blocks of %lld): choose --align as a multiple of it",
                                       path, t->name, speck_type_name(t->type), (long long)keep,
                                       (long long)speck_type_block_size((speck_type)t->type));
        }
        const speck_gguf_tensor *bs[2] = {y->gb, y->ub};
        for (int k = 0; k < 2; k++)
            if (bs[k] && (bs[k]->type != SPECK_TYPE_F32 || bs[k]->n_elements != F))
                return speck_set_error(SPECK_ERR_FORMAT, "%s: tensor '%s' is not f32 of %lld", path,
                                       bs[k]->name, (long long)F);
    }
    return 0;
}

// How tensor t is cut: 0 unchanged, 1 rows (1-D: entries) idx[0..n), 2 columns idx[0..n).
static int lookup(const layer *L, int n_layer, const heads *h, int64_t keep,
                  const speck_gguf_tensor *t, const int64_t **idx, int64_t *n) {
    const int64_t nq = h->keep_kv * (h->n_head / h->n_kv) * h->hd, nkv = h->keep_kv * h->hd;
    for (int i = 0; i < n_layer; i++) {
        const layer *y = &L[i];
        if (t == y->g || t == y->u || t == y->gb || t == y->ub || t == y->d) {
            *idx = y->kept, *n = keep;
            return t == y->d ? 2 : 1;
        }
        if (!y->qrows) continue;
        if (t == y->q || t == y->qb || t == y->o) {
            *idx = y->qrows, *n = nq;
            return t == y->o ? 2 : 1;
        }
        if (t == y->k || t == y->v || t == y->kb || t == y->vb) {
            *idx = y->kvrows, *n = nkv;
            return 1;
        }
    }
    return 0;
}

// Attention tensors of every layer, checked, when heads are pruned: separate q, k, v (not
// fused), attn_output's type able to hold rows of the kept query width.
static int check_attn(const speck_gguf *g, const char *path, int n_layer, int64_t E, const heads *h,
                      layer *L) {
    const int64_t Hq = h->n_head * h->hd, Hk = h->n_kv * h->hd,
                  nq = h->keep_kv * (h->n_head / h->n_kv) * h->hd;
    for (int l = 0; l < n_layer; l++) {
        layer *y = &L[l];
        y->q = find(g, l, "attn_q.weight"), y->k = find(g, l, "attn_k.weight");
        y->v = find(g, l, "attn_v.weight"), y->o = find(g, l, "attn_output.weight");
        y->qb = find(g, l, "attn_q.bias"), y->kb = find(g, l, "attn_k.bias");
        y->vb = find(g, l, "attn_v.bias");
        if (!y->q || !y->k || !y->v || !y->o)
            return speck_set_error(SPECK_ERR_ARG,
                                   "%s: layer %d has no separate attn_q / attn_k / attn_v / "
                                   "attn_output: --heads needs them (fused attn_qkv is not "
                                   "supported)",
                                   path, l);
        const speck_gguf_tensor *ts[4] = {y->q, y->k, y->v, y->o};
        const int64_t want[4][2] = {{E, Hq}, {E, Hk}, {E, Hk}, {Hq, E}};
        for (int k = 0; k < 4; k++) {
            const speck_gguf_tensor *t = ts[k];
            if (t->n_dims != 2 || t->ne[0] != want[k][0] || t->ne[1] != want[k][1])
                return speck_set_error(SPECK_ERR_FORMAT,
                                       "%s: tensor '%s' is %lld x %lld, not "
                                       "%lld x %lld",
                                       path, t->name, (long long)t->ne[1], (long long)t->ne[0],
                                       (long long)want[k][1], (long long)want[k][0]);
            if (!speck_traits(t->type))
                return speck_set_error(SPECK_ERR_FORMAT,
                                       "%s: tensor '%s' has type %s, which "
                                       "speck cannot read",
                                       path, t->name, speck_gguf_type_label(t->type));
        }
        if (nq % speck_type_block_size((speck_type)y->o->type))
            return speck_set_error(SPECK_ERR_ARG, "%s: tensor '%s' (%s) cannot hold rows of %lld",
                                   path, y->o->name, speck_type_name(y->o->type), (long long)nq);
        const speck_gguf_tensor *bs[3] = {y->qb, y->kb, y->vb};
        for (int k = 0; k < 3; k++)
            if (bs[k] && (bs[k]->type != SPECK_TYPE_F32 || bs[k]->n_elements != (k ? Hk : Hq)))
                return speck_set_error(SPECK_ERR_FORMAT, "%s: tensor '%s' is not f32 of %lld", path,
                                       bs[k]->name, (long long)(k ? Hk : Hq));
    }
    return 0;
}

void speck_cfsp_group_scores(const float *wq, const float *wo, const float *x2, int64_t n_embd,
                             int n_head, int n_head_kv, int head_dim, double *score) {
    const int64_t Hq = (int64_t)n_head * head_dim, per = Hq / n_head_kv;
    double *c = malloc((size_t)Hq * sizeof *c);
    for (int g = 0; g < n_head_kv; g++) score[g] = 0;
    if (!c) return;
    speck_cfsp_channel_scores(NULL, wq, wo, x2, n_embd, Hq, c);
    for (int64_t j = 0; j < Hq; j++) score[j / per] += c[j];
    free(c);
}

// Layer l's kept KV groups from attn_output's input statistics: the rows of q (and columns of
// attn_output) and of k / v they own.
static int select_heads(const speck_imatrix *im, const heads *h, int64_t E, layer *y, int l,
                        bool progress) {
    int64_t n = 0;
    const int64_t Hq = h->n_head * h->hd, G = h->n_head / h->n_kv;
    const float *x2 = speck_imatrix_get(im, y->o->name, &n);
    if (!x2 || n != Hq || speck_imatrix_count(im, y->o->name) <= 0)
        return speck_set_error(SPECK_ERR_ARG, "cfsp: no calibration statistics for %s", y->o->name);
    float *wq = rows_f32(y->q), *wo = rows_f32(y->o);
    double *sc = malloc((size_t)h->n_kv * sizeof *sc);
    int64_t *kg = malloc((size_t)h->keep_kv * sizeof *kg);
    y->qrows = malloc((size_t)(h->keep_kv * G * h->hd) * sizeof *y->qrows);
    y->kvrows = malloc((size_t)(h->keep_kv * h->hd) * sizeof *y->kvrows);
    int rc = 0;
    if (!wq || !wo || !sc || !kg || !y->qrows || !y->kvrows)
        rc = speck_set_error(SPECK_ERR_NOMEM, "out of memory");
    if (!rc) {
        speck_cfsp_group_scores(wq, wo, x2, E, (int)h->n_head, (int)h->n_kv, (int)h->hd, sc);
        rc = speck_cfsp_select(sc, h->n_kv, h->keep_kv, kg);
    }
    for (int64_t k = 0; !rc && k < h->keep_kv; k++) {
        for (int64_t r = 0; r < h->hd; r++) y->kvrows[k * h->hd + r] = kg[k] * h->hd + r;
        for (int64_t r = 0; r < G * h->hd; r++) y->qrows[k * G * h->hd + r] = kg[k] * G * h->hd + r;
    }
    if (!rc && progress) {
        fprintf(stderr, "prune: cfsp: layer %d keeps KV heads", l);
        for (int64_t k = 0; k < h->keep_kv; k++) fprintf(stderr, " %lld", (long long)kg[k]);
        fprintf(stderr, " of %lld\n", (long long)h->n_kv);
    }
    free(wq), free(wo), free(sc), free(kg);
    return rc;
}

static int score_layers(const char *path, const speck_cfsp_opts *o, int n_layer, int64_t F,
                        int64_t E, int64_t keep, const heads *h, layer *L, bool progress) {
    speck_model *m = speck_model_load(path);
    if (!m) return SPECK_ERR_FORMAT;
    int ctx = o->calib_ctx > 0 ? o->calib_ctx : speck_model_hparams(m)->n_ctx_train;
    if (o->calib_ctx <= 0 && ctx > 512) ctx = 512;
    int rc = 0;
    speck_imatrix *im = NULL;
    if (!o->calib || o->n_calib < ctx || ctx < 16)
        rc = speck_set_error(SPECK_ERR_ARG,
                             "cfsp: needs calibration text of at least one window of %d "
                             "tokens; it has %lld (a longer --calib text, or a smaller "
                             "--calib-ctx)",
                             ctx, (long long)o->n_calib);
    else if (!(im = speck_imatrix_compute(m, o->calib, o->n_calib, ctx, false, "cfsp", NULL, NULL)))
        rc = SPECK_ERR_ARG;
    speck_model_free(m);
    double *score = rc ? NULL : malloc((size_t)F * sizeof *score);
    if (!rc && !score) rc = speck_set_error(SPECK_ERR_NOMEM, "out of memory");
    for (int l = 0; l < n_layer && !rc; l++) {
        int64_t n = 0;
        const float *x2 = speck_imatrix_get(im, L[l].d->name, &n);
        if (!x2 || n != F || speck_imatrix_count(im, L[l].d->name) <= 0) {
            rc = speck_set_error(SPECK_ERR_ARG, "cfsp: no calibration statistics for %s",
                                 L[l].d->name);
            break;
        }
        float *wg = L[l].g ? rows_f32(L[l].g) : NULL, *wu = rows_f32(L[l].u),
              *wd = rows_f32(L[l].d);
        if (!wu || !wd || (L[l].g && !wg)) rc = speck_set_error(SPECK_ERR_NOMEM, "out of memory");
        if (!rc) speck_cfsp_channel_scores(wg, wu, wd, x2, E, F, score);
        free(wg), free(wu), free(wd);
        if (!rc && !(L[l].kept = malloc((size_t)keep * sizeof *L[l].kept)))
            rc = speck_set_error(SPECK_ERR_NOMEM, "out of memory");
        if (!rc) rc = speck_cfsp_select(score, F, keep, L[l].kept);
        if (!rc && h->keep_kv < h->n_kv) rc = select_heads(im, h, E, &L[l], l, progress);
        if (!rc && progress) {
            double kept = 0, all = 0;
            for (int64_t j = 0; j < F; j++) all += score[j];
            for (int64_t k = 0; k < keep; k++) kept += score[L[l].kept[k]];
            fprintf(stderr,
                    "prune: cfsp: layer %d keeps %lld of %lld channels (%.1f %% of the "
                    "score)\n",
                    l, (long long)keep, (long long)F, all > 0 ? 100 * kept / all : 0);
        }
    }
    free(score);
    speck_imatrix_free(im);
    return rc;
}

// Tensor t with only the kept rows (kind 1: bytes copied; 1-D f32: entries) or columns (kind
// 2: requantized in its type).
static int write_pruned(speck_gguf_stream *s, const speck_gguf_tensor *t, int kind,
                        const int64_t *kept, int64_t keep) {
    int rc = 0;
    if (kind == 1 && t->n_dims == 2) {
        const size_t rs = speck_type_row_size((speck_type)t->type, t->ne[0]);
        for (int64_t k = 0; k < keep && !rc; k++)
            rc = speck_gguf_stream_write(s, (const uint8_t *)t->data + (size_t)kept[k] * rs, rs);
        return rc;
    }
    if (kind == 1) {
        float v;
        for (int64_t k = 0; k < keep && !rc; k++) {
            memcpy(&v, (const uint8_t *)t->data + (size_t)kept[k] * sizeof v, sizeof v);
            rc = speck_gguf_stream_write(s, &v, sizeof v);
        }
        return rc;
    }
    const int64_t F = t->ne[0], E = t->ne[1];
    const size_t ors = speck_type_row_size((speck_type)t->type, keep);
    float *w = rows_f32(t), *row = malloc((size_t)keep * sizeof *row);
    uint8_t *buf = malloc(ors);
    if (!w || !row || !buf) rc = speck_set_error(SPECK_ERR_NOMEM, "out of memory");
    for (int64_t i = 0; i < E && !rc; i++) {
        for (int64_t k = 0; k < keep; k++) row[k] = w[i * F + kept[k]];
        rc = speck_quantize((speck_type)t->type, row, buf, 1, keep, NULL);
        if (!rc) rc = speck_gguf_stream_write(s, buf, ors);
    }
    free(w), free(row), free(buf);
    return rc;
}

int speck_gguf_prune_cfsp(const char *in_path, const char *out_path, const speck_cfsp_opts *o,
                          bool progress) {
    speck_gguf *g = speck_gguf_open(in_path);
    if (!g) return SPECK_ERR_FORMAT;
    int rc = 0;
    const int64_t ka = speck_gguf_find_key(g, "general.architecture");
    const char *arch = ka >= 0 ? speck_gguf_get_str(g, ka) : NULL;
    char kf[160], kb[160], ke[160];
    snprintf(kf, sizeof kf, "%s.feed_forward_length", arch ? arch : "");
    snprintf(kb, sizeof kb, "%s.block_count", arch ? arch : "");
    snprintf(ke, sizeof ke, "%s.embedding_length", arch ? arch : "");
    const int64_t if_ = speck_gguf_find_key(g, kf), ib = speck_gguf_find_key(g, kb),
                  ie = speck_gguf_find_key(g, ke);
    if (!arch || if_ < 0 || ib < 0 || ie < 0)
        rc = speck_set_error(SPECK_ERR_FORMAT, "%s: no general.architecture, %s, %s or %s", in_path,
                             kf, kb, ke);
    else if (speck_gguf_kv_type(g, if_) == SPECK_GGUF_ARRAY)
        rc = speck_set_error(SPECK_ERR_ARG,
                             "%s: %s is per layer (an array): cfsp needs one "
                             "width",
                             in_path, kf);
    const int64_t F = rc ? 0 : speck_gguf_get_int(g, if_), E = rc ? 0 : speck_gguf_get_int(g, ie);
    const int n_layer = rc ? 0 : (int)speck_gguf_get_int(g, ib);
    if (!rc && (F < 2 || E < 1 || n_layer < 1 || n_layer > 100000))
        rc = speck_set_error(SPECK_ERR_FORMAT, "%s: %s %lld, %s %lld, %s %d", in_path, kf,
                             (long long)F, ke, (long long)E, kb, n_layer);
    int64_t keep = 0;
    if (!rc) rc = speck_cfsp_width(F, o->ratio, o->align, &keep);
    // Attention shape (llama.cpp's keys: head_count, head_count_kv, key_length).
    char kh[160], kk[160], kl[160], kv[160];
    snprintf(kh, sizeof kh, "%s.attention.head_count", arch ? arch : "");
    snprintf(kk, sizeof kk, "%s.attention.head_count_kv", arch ? arch : "");
    snprintf(kl, sizeof kl, "%s.attention.key_length", arch ? arch : "");
    snprintf(kv, sizeof kv, "%s.attention.value_length", arch ? arch : "");
    heads h = {1, 1, 1, 1};
    const bool hp = o->head_ratio != 0;
    if (!rc && hp) {
        const int64_t ih = speck_gguf_find_key(g, kh), ik = speck_gguf_find_key(g, kk),
                      il = speck_gguf_find_key(g, kl);
        if (ih < 0 || speck_gguf_kv_type(g, ih) == SPECK_GGUF_ARRAY ||
            (ik >= 0 && speck_gguf_kv_type(g, ik) == SPECK_GGUF_ARRAY))
            rc = speck_set_error(SPECK_ERR_ARG,
                                 "%s: --heads needs one %s (and %s) for all "
                                 "layers",
                                 in_path, kh, kk);
        h.n_head = rc ? 1 : speck_gguf_get_int(g, ih);
        h.n_kv = rc ? 1 : ik >= 0 ? speck_gguf_get_int(g, ik) : h.n_head;
        h.hd = !rc && il >= 0 ? speck_gguf_get_int(g, il) : h.n_head > 0 ? E / h.n_head : 0;
        const int64_t iv = speck_gguf_find_key(g, kv);
        if (!rc && iv >= 0 && speck_gguf_get_int(g, iv) != h.hd)
            rc = speck_set_error(SPECK_ERR_ARG, "%s: %s differs from the key width %lld", in_path,
                                 kv, (long long)h.hd);
        if (!rc && (h.n_head < 1 || h.n_kv < 1 || h.n_head % h.n_kv || h.hd < 1))
            rc = speck_set_error(SPECK_ERR_FORMAT, "%s: %lld heads, %lld KV heads of width %lld",
                                 in_path, (long long)h.n_head, (long long)h.n_kv, (long long)h.hd);
        if (!rc && !(o->head_ratio > 0 && o->head_ratio < 1))
            rc = speck_set_error(SPECK_ERR_ARG, "cfsp: heads ratio %g is outside (0, 1)",
                                 o->head_ratio);
        h.keep_kv = h.n_kv - sparse_n_pruned(o->head_ratio, h.n_kv);
        if (!rc && (h.keep_kv < 1 || h.keep_kv >= h.n_kv))
            rc = speck_set_error(SPECK_ERR_ARG,
                                 "cfsp: heads ratio %g keeps %lld of %lld KV "
                                 "heads (at least one must go and one stay)",
                                 o->head_ratio, (long long)h.keep_kv, (long long)h.n_kv);
    }
    layer *L = rc ? NULL : calloc((size_t)n_layer, sizeof *L);
    if (!rc && !L) rc = speck_set_error(SPECK_ERR_NOMEM, "out of memory");
    if (!rc) rc = check_layers(g, in_path, n_layer, F, E, keep, L);
    if (!rc && hp) rc = check_attn(g, in_path, n_layer, E, &h, L);
    if (!rc) rc = score_layers(in_path, o, n_layer, F, E, keep, &h, L, progress);
    const int64_t G = h.n_head / h.n_kv;
    // Header: the source's metadata with the new width and the pruning recorded.
    speck_gguf_writer *w = rc ? NULL : speck_gguf_writer_new();
    if (!rc && !w) rc = speck_set_error(SPECK_ERR_NOMEM, "out of memory");
    for (int64_t i = 0; !rc && i < speck_gguf_n_kv(g); i++) {
        const char *k = speck_gguf_key(g, i);
        if (strcmp(k, kf) && strncmp(k, "speck.prune.", 12) &&
            (!hp || (strcmp(k, kh) && strcmp(k, kk) && strcmp(k, kl) && strcmp(k, kv))))
            rc = speck_gguf_copy_kv(w, g, i);
    }
    if (!rc) rc = speck_gguf_set_u32(w, kf, (uint32_t)keep);
    if (!rc && hp) rc = speck_gguf_set_u32(w, kh, (uint32_t)(h.keep_kv * G));
    if (!rc && hp) rc = speck_gguf_set_u32(w, kk, (uint32_t)h.keep_kv);
    if (!rc && hp) rc = speck_gguf_set_u32(w, kl, (uint32_t)h.hd);
    if (!rc && hp) rc = speck_gguf_set_u32(w, kv, (uint32_t)h.hd);
    if (!rc && hp) rc = speck_gguf_set_f32(w, "speck.prune.heads", (float)o->head_ratio);
    if (!rc) rc = speck_gguf_set_str(w, "speck.prune.method", "cfsp");
    if (!rc) rc = speck_gguf_set_f32(w, "speck.prune.ratio", (float)o->ratio);
    const int64_t nt = rc ? 0 : speck_gguf_n_tensors(g);
    int64_t before = 0, after = 0;
    for (int64_t i = 0; !rc && i < nt; i++) {
        const speck_gguf_tensor *t = speck_gguf_tensor_at(g, i);
        int64_t ne[4] = {t->ne[0], t->ne[1], t->ne[2], t->ne[3]};
        const int64_t *idx;
        int64_t n;
        const int kind = lookup(L, n_layer, &h, keep, t, &idx, &n);
        before += t->n_elements;
        if (kind == 2 || (kind == 1 && t->n_dims == 1))
            ne[0] = n;
        else if (kind == 1)
            ne[1] = n;
        after += ne[0] * ne[1] * ne[2] * ne[3];
        rc = speck_gguf_add_tensor(w, t->name, (speck_type)t->type, t->n_dims, ne, NULL);
    }
    speck_gguf_stream *s = rc ? NULL : speck_gguf_stream_open(w, out_path);
    if (!rc && !s) rc = SPECK_ERR_IO;
    for (int64_t i = 0; !rc && i < nt; i++) {
        const speck_gguf_tensor *t = speck_gguf_tensor_at(g, i);
        const int64_t *idx;
        int64_t n;
        const int kind = lookup(L, n_layer, &h, keep, t, &idx, &n);
        if (kind)
            rc = write_pruned(s, t, kind, idx, n);
        else
            rc = speck_gguf_stream_write(s, t->data, t->n_bytes);
    }
    if (!rc) {
        rc = speck_gguf_stream_close(s);
        s = NULL;
    }
    speck_gguf_stream_abort(s);
    if (!rc && progress)
        fprintf(stderr,
                "prune: cfsp: feed_forward_length %lld -> %lld in %d layers; %lld -> %lld "
                "parameters (%.1f %% fewer)\n",
                (long long)F, (long long)keep, n_layer, (long long)before, (long long)after,
                100.0 * (double)(before - after) / (double)(before ? before : 1));
    if (!rc && progress && hp)
        fprintf(stderr, "prune: cfsp: heads %lld / %lld KV -> %lld / %lld\n", (long long)h.n_head,
                (long long)h.n_kv, (long long)(h.keep_kv * G), (long long)h.keep_kv);
    for (int l = 0; L && l < n_layer; l++) free(L[l].kept), free(L[l].qrows), free(L[l].kvrows);
    free(L);
    speck_gguf_writer_free(w);
    speck_gguf_close(g);
    return rc;
}
