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

// Per layer: the FFN tensors and the channels kept.
typedef struct {
    const speck_gguf_tensor *g, *u, *d, *gb, *ub;
    int64_t *kept;
} layer;

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
                return speck_set_error(SPECK_ERR_FORMAT, "%s: tensor '%s' has type %s, which "
                                       "speck cannot read", path, t->name,
                                       speck_gguf_type_label(t->type));
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
                return speck_set_error(SPECK_ERR_FORMAT, "%s: tensor '%s' is not f32 of %lld",
                                       path, bs[k]->name, (long long)F);
    }
    return 0;
}

static bool is_layer_tensor(const layer *L, int n_layer, const speck_gguf_tensor *t, int *l,
                            int *which) {
    for (int i = 0; i < n_layer; i++) {
        const speck_gguf_tensor *ts[5] = {L[i].g, L[i].u, L[i].d, L[i].gb, L[i].ub};
        for (int k = 0; k < 5; k++)
            if (ts[k] == t) return *l = i, *which = k, true;
    }
    return false;
}

static int score_layers(const speck_gguf *g, const char *path, const speck_cfsp_opts *o,
                        int n_layer, int64_t F, int64_t E, int64_t keep, layer *L, bool progress) {
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
        if (!rc && progress) {
            double kept = 0, all = 0;
            for (int64_t j = 0; j < F; j++) all += score[j];
            for (int64_t k = 0; k < keep; k++) kept += score[L[l].kept[k]];
            fprintf(stderr, "prune: cfsp: layer %d keeps %lld of %lld channels (%.1f %% of the "
                    "score)\n", l, (long long)keep, (long long)F, all > 0 ? 100 * kept / all : 0);
        }
    }
    free(score);
    speck_imatrix_free(im);
    return rc;
}

// One layer FFN tensor with only the kept channels: rows of gate / up (bytes copied), columns of
// down (requantized in its type), entries of the biases.
static int write_pruned(speck_gguf_stream *s, const speck_gguf_tensor *t, int which,
                        const int64_t *kept, int64_t keep) {
    int rc = 0;
    if (which == 0 || which == 1) {
        const size_t rs = speck_type_row_size((speck_type)t->type, t->ne[0]);
        for (int64_t k = 0; k < keep && !rc; k++)
            rc = speck_gguf_stream_write(s, (const uint8_t *)t->data + (size_t)kept[k] * rs, rs);
        return rc;
    }
    if (which >= 3) {
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
        rc = speck_set_error(SPECK_ERR_FORMAT, "%s: no general.architecture, %s, %s or %s",
                             in_path, kf, kb, ke);
    else if (speck_gguf_kv_type(g, if_) == SPECK_GGUF_ARRAY)
        rc = speck_set_error(SPECK_ERR_ARG, "%s: %s is per layer (an array): cfsp needs one "
                             "width", in_path, kf);
    const int64_t F = rc ? 0 : speck_gguf_get_int(g, if_), E = rc ? 0 : speck_gguf_get_int(g, ie);
    const int n_layer = rc ? 0 : (int)speck_gguf_get_int(g, ib);
    if (!rc && (F < 2 || E < 1 || n_layer < 1 || n_layer > 100000))
        rc = speck_set_error(SPECK_ERR_FORMAT, "%s: %s %lld, %s %lld, %s %d", in_path, kf,
                             (long long)F, ke, (long long)E, kb, n_layer);
    int64_t keep = 0;
    if (!rc) rc = speck_cfsp_width(F, o->ratio, o->align, &keep);
    layer *L = rc ? NULL : calloc((size_t)n_layer, sizeof *L);
    if (!rc && !L) rc = speck_set_error(SPECK_ERR_NOMEM, "out of memory");
    if (!rc) rc = check_layers(g, in_path, n_layer, F, E, keep, L);
    if (!rc) rc = score_layers(g, in_path, o, n_layer, F, E, keep, L, progress);
    // Header: the source's metadata with the new width and the pruning recorded.
    speck_gguf_writer *w = rc ? NULL : speck_gguf_writer_new();
    if (!rc && !w) rc = speck_set_error(SPECK_ERR_NOMEM, "out of memory");
    for (int64_t i = 0; !rc && i < speck_gguf_n_kv(g); i++) {
        const char *k = speck_gguf_key(g, i);
        if (strcmp(k, kf) && strncmp(k, "speck.prune.", 12)) rc = speck_gguf_copy_kv(w, g, i);
    }
    if (!rc) rc = speck_gguf_set_u32(w, kf, (uint32_t)keep);
    if (!rc) rc = speck_gguf_set_str(w, "speck.prune.method", "cfsp");
    if (!rc) rc = speck_gguf_set_f32(w, "speck.prune.ratio", (float)o->ratio);
    const int64_t nt = rc ? 0 : speck_gguf_n_tensors(g);
    int64_t before = 0, after = 0;
    for (int64_t i = 0; !rc && i < nt; i++) {
        const speck_gguf_tensor *t = speck_gguf_tensor_at(g, i);
        int64_t ne[4] = {t->ne[0], t->ne[1], t->ne[2], t->ne[3]};
        int l, which;
        before += t->n_elements;
        if (is_layer_tensor(L, n_layer, t, &l, &which)) {
            if (which == 2)
                ne[0] = keep;
            else if (which < 2)
                ne[1] = keep;
            else
                ne[0] = keep;
        }
        after += ne[0] * ne[1] * ne[2] * ne[3];
        rc = speck_gguf_add_tensor(w, t->name, (speck_type)t->type, t->n_dims, ne, NULL);
    }
    speck_gguf_stream *s = rc ? NULL : speck_gguf_stream_open(w, out_path);
    if (!rc && !s) rc = SPECK_ERR_IO;
    for (int64_t i = 0; !rc && i < nt; i++) {
        const speck_gguf_tensor *t = speck_gguf_tensor_at(g, i);
        int l, which;
        if (is_layer_tensor(L, n_layer, t, &l, &which))
            rc = write_pruned(s, t, which, L[l].kept, keep);
        else
            rc = speck_gguf_stream_write(s, t->data, t->n_bytes);
    }
    if (!rc) {
        rc = speck_gguf_stream_close(s);
        s = NULL;
    }
    speck_gguf_stream_abort(s);
    if (!rc && progress)
        fprintf(stderr, "prune: cfsp: feed_forward_length %lld -> %lld in %d layers; %lld -> %lld "
                "parameters (%.1f %% fewer)\n", (long long)F, (long long)keep, n_layer,
                (long long)before, (long long)after,
                100.0 * (double)(before - after) / (double)(before ? before : 1));
    for (int l = 0; L && l < n_layer; l++) free(L[l].kept);
    free(L);
    speck_gguf_writer_free(w);
    speck_gguf_close(g);
    return rc;
}
