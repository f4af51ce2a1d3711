// Running adapters unmerged: attaching them to a model (one combined term per adapted matrix)
// and the small kernels the forward pass calls for y += s·(x·Aᵀ)·Bᵀ (src/model/llama.c).
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "adapt/adapt_internal.h"
#include "core/simd_math.h"

// The adapters attached to a model, their combined terms (layer, target) and their storage.
struct speck_lora_run {
    int n_adapters;
    speck_lora_w *w; // (n_layer, SPECK_LORA_N_TARGETS); rank 0 where no adapter touches it
    float **bufs;    // (n_layer * targets) each term's a then bt
    // The attached adapters themselves (copies) with their scales, to rebuild on the next add.
    speck_lora **src;
    float *scales;
};

// t: (n, rank) = x: (n, n_in) · A (at: (n_in, rank)): 16 ranks at a time held in one vector,
// one multiply-add per input value, no reductions.
SPECK_MULTIVERSION
void speck_lora_w_xa(const speck_lora_w *w, const float *x, int n, float *t) {
    const int r = w->rank;
    for (int i = 0; i < n; i++) {
        float *ti = t + (size_t)i * r;
        const float *xi = x + (size_t)i * w->n_in;
        int k0 = 0;
        for (; k0 + 16 <= r; k0 += 16) {
            float acc[16] = {0};
            for (int64_t j = 0; j < w->n_in; j++) {
                const float c = xi[j], *a = w->at + (size_t)j * r + k0;
                for (int k = 0; k < 16; k++) acc[k] += c * a[k];
            }
            memcpy(ti + k0, acc, sizeof acc);
        }
        for (int k = k0; k < r; k++) {
            float acc = 0.0f;
            for (int64_t j = 0; j < w->n_in; j++) acc += xi[j] * w->at[(size_t)j * r + k];
            ti[k] = acc;
        }
    }
}

// y[i][o0..o1) += Σ_k t[i][k] · bt[k][o0..o1)
SPECK_MULTIVERSION
void speck_lora_w_add(const speck_lora_w *w, const float *t, int n, int64_t o0, int64_t o1,
                      float *y, int64_t ldy) {
    for (int i = 0; i < n; i++) {
        float *yi = y + (size_t)i * ldy;
        const float *ti = t + (size_t)i * w->rank;
        for (int k = 0; k < w->rank; k++) {
            const float c = ti[k], *b = w->bt + (size_t)k * w->n_out;
            for (int64_t o = o0; o < o1; o++) yi[o] += c * b[o];
        }
    }
}

static void run_free(speck_model *m) {
    struct speck_lora_run *r = m->lora;
    if (!r) return;
    const int nm = m->hp.n_layer * SPECK_LORA_N_TARGETS;
    for (int l = 0; l < m->hp.n_layer; l++) {
        speck_layer *ly = &m->layers[l];
        speck_weight *w[SPECK_LORA_N_TARGETS] = {&ly->wq, &ly->wk, &ly->wv, &ly->wo,
                                                 &ly->wg, &ly->wu, &ly->wd};
        for (int t = 0; t < SPECK_LORA_N_TARGETS; t++) w[t]->lora = NULL;
    }
    for (int i = 0; r->bufs && i < nm; i++) free(r->bufs[i]);
    for (int i = 0; i < r->n_adapters; i++) speck_lora_free(r->src[i]);
    free(r->bufs);
    free(r->w);
    free(r->src);
    free(r->scales);
    free(r);
    m->lora = NULL;
    m->lora_rsum = 0;
}

void speck_model_lora_clear(speck_model *m) {
    run_free(m);
}

int speck_model_lora_count(const speck_model *m) {
    return m->lora ? m->lora->n_adapters : 0;
}

static speck_lora *lora_copy(const speck_lora *a) {
    int nm = a->n_layer * SPECK_LORA_N_TARGETS;
    int *ranks = malloc((size_t)nm * sizeof *ranks);
    int64_t *ni = malloc((size_t)nm * sizeof *ni), *no = malloc((size_t)nm * sizeof *no);
    speck_lora *c = NULL;
    if (ranks && ni && no) {
        for (int i = 0; i < nm; i++)
            ranks[i] = a->m[i].rank, ni[i] = a->m[i].n_in, no[i] = a->m[i].n_out;
        c = speck_lora_alloc(a->arch, a->n_layer, ranks, ni, no, a->alpha);
        if (c) memcpy(c->data, a->data, (size_t)a->n_params * sizeof(float));
    } else {
        speck_set_error(SPECK_ERR_NOMEM, "LoRA: out of memory");
    }
    free(ranks);
    free(ni);
    free(no);
    return c;
}

// Build the combined terms of adapters src[0..n) into a fresh run and hook them to m's weights.
// Takes ownership of src, its adapters and scales (freed on failure: m then runs the base).
static int build(speck_model *m, speck_lora **src, float *scales, int n) {
    const int L = m->hp.n_layer, nm = L * SPECK_LORA_N_TARGETS;
    struct speck_lora_run *r = calloc(1, sizeof *r);
    if (!r || !(r->w = calloc((size_t)nm, sizeof *r->w)) ||
        !(r->bufs = calloc((size_t)nm, sizeof *r->bufs))) {
        if (r) free(r->w);
        free(r);
        for (int i = 0; i < n; i++) speck_lora_free(src[i]);
        free(src);
        free(scales);
        return speck_set_error(SPECK_ERR_NOMEM, "LoRA: out of memory");
    }
    r->src = src, r->scales = scales, r->n_adapters = n;
    m->lora = r;
    int maxr[SPECK_LORA_N_TARGETS] = {0};
    for (int l = 0; l < L; l++)
        for (int t = 0; t < SPECK_LORA_N_TARGETS; t++) {
            const speck_weight *bw = speck_lora_base_weight(m, l, t);
            speck_lora_w *w = &r->w[l * SPECK_LORA_N_TARGETS + t];
            w->target = t, w->n_in = bw->n_in, w->n_out = bw->n_out;
            for (int i = 0; i < n; i++)
                if (l < src[i]->n_layer) w->rank += src[i]->m[l * SPECK_LORA_N_TARGETS + t].rank;
            if (!w->rank) continue;
            float *buf = malloc((size_t)w->rank * (w->n_in + w->n_out) * sizeof(float));
            if (!buf) {
                run_free(m);
                return speck_set_error(SPECK_ERR_NOMEM, "LoRA: out of memory");
            }
            r->bufs[l * SPECK_LORA_N_TARGETS + t] = buf;
            float *at = buf, *bt = buf + (size_t)w->rank * w->n_in;
            int k0 = 0;
            for (int i = 0; i < n; i++) {
                if (l >= src[i]->n_layer) continue;
                const speck_lora_mat *mt = &src[i]->m[l * SPECK_LORA_N_TARGETS + t];
                if (!mt->rank) continue;
                const float s = speck_lora_scale(src[i], mt, scales[i]);
                for (int k = 0; k < mt->rank; k++)
                    for (int64_t j = 0; j < w->n_in; j++)
                        at[(size_t)j * w->rank + k0 + k] = mt->a[(size_t)k * w->n_in + j];
                for (int k = 0; k < mt->rank; k++)
                    for (int64_t o = 0; o < w->n_out; o++)
                        bt[(size_t)(k0 + k) * w->n_out + o] = s * mt->b[(size_t)o * mt->rank + k];
                k0 += mt->rank;
            }
            w->at = at, w->bt = bt;
            if (w->rank > maxr[t]) maxr[t] = w->rank;
        }
    int slot = 0;
    for (int t = 0; t < SPECK_LORA_N_TARGETS; t++) {
        for (int l = 0; l < L; l++) r->w[l * SPECK_LORA_N_TARGETS + t].slot = slot;
        slot += maxr[t];
    }
    m->lora_rsum = slot;
    for (int l = 0; l < L; l++) {
        speck_layer *ly = &m->layers[l];
        speck_weight *w[SPECK_LORA_N_TARGETS] = {&ly->wq, &ly->wk, &ly->wv, &ly->wo,
                                                 &ly->wg, &ly->wu, &ly->wd};
        for (int t = 0; t < SPECK_LORA_N_TARGETS; t++) {
            speck_lora_w *lw = &r->w[l * SPECK_LORA_N_TARGETS + t];
            w[t]->lora = lw->rank ? lw : NULL;
        }
    }
    return 0;
}

int speck_model_lora_add(speck_model *m, const speck_lora *a, float scale) {
    int err = speck_lora_check(a, m);
    if (err) return err;
    if (!isfinite(scale)) return speck_set_error(SPECK_ERR_ARG, "LoRA: scale is not finite");
    const int n_old = m->lora ? m->lora->n_adapters : 0;
    speck_lora **src = calloc((size_t)n_old + 1, sizeof *src);
    float *scales = calloc((size_t)n_old + 1, sizeof *scales);
    speck_lora *copy = lora_copy(a);
    if (!src || !scales || !copy) {
        free(src);
        free(scales);
        speck_lora_free(copy);
        return speck_set_error(SPECK_ERR_NOMEM, "LoRA: out of memory");
    }
    // Take over the attached copies, then rebuild every term with the new adapter added.
    if (m->lora) {
        memcpy(src, m->lora->src, (size_t)n_old * sizeof *src);
        memcpy(scales, m->lora->scales, (size_t)n_old * sizeof *scales);
        m->lora->n_adapters = 0; // the copies now belong to the new run
    }
    src[n_old] = copy, scales[n_old] = scale;
    run_free(m);
    return build(m, src, scales, n_old + 1);
}
