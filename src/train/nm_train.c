// N:M sparse training with SR-STE (Zhou et al. 2021, "Learning N:M Fine-grained Structured Sparse
// Neural Networks From Scratch"): the passes read W̃ = W ⊙ E, E keeping the N largest |w| of every
// M consecutive inputs of a row; the gradient with respect to W̃ is applied to the dense W
// (straight-through), plus the sparse-refined term λ_W (1 - E) ⊙ W that pulls the pruned weights
// toward zero. See docs/sparsity.md, "Trained sparsity (SR-STE)".
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "train/train_internal.h"

// The layers' 2-D matrices, as `speck prune` chooses them (the router and the stacked experts,
// the embedding, the head and the norms stay dense).
static bool nm_eligible(const speck_ttensor *t) {
    return t->n_dims == 2 && t->is_matrix && !t->is_embd && !strncmp(t->name, "blk.", 4) &&
           !strstr(t->name, "ffn_gate_inp");
}

// Keep the n largest |w| of each group of m (ties: the lower position, as speck prune and the
// S24_Q8 quantizer break them). w, mask: (len), len a multiple of m.
static void select_groups(const float *w, uint8_t *mask, int64_t len, int n, int m) {
    for (int64_t g = 0; g < len; g += m) {
        uint8_t *k = mask + g;
        memset(k, 0, (size_t)m);
        for (int c = 0; c < n; c++) {
            int best = -1;
            for (int j = 0; j < m; j++)
                if (!k[j] && (best < 0 || fabsf(w[g + j]) > fabsf(w[g + best]))) best = j;
            k[best] = 1;
        }
    }
}

// tm->f = tm->p, keeping f's own layer array (alloc_model); returns that array.
static speck_tlayer *bind_forward(speck_train_model *tm) {
    speck_tlayer *fl = tm->f.layers;
    tm->f = tm->p;
    tm->f.layers = fl;
    memcpy(fl, tm->p.layers, (size_t)tm->cfg.n_layer * sizeof *fl);
    return fl;
}

int speck_train_set_nm(speck_train_model *tm, const speck_nm_params *p) {
    if (!p || p->m == 0) { // off: the passes read the dense weights again
        train_nm_free(tm);
        bind_forward(tm);
        return 0;
    }
    if (p->n < 1 || p->m < 2 || p->n >= p->m || p->m > 64)
        return speck_set_error(SPECK_ERR_ARG,
                               "N:M sparsity %d:%d: want 1 <= N < M <= 64 (N weights kept of "
                               "every M consecutive inputs, e.g. 2:4)",
                               p->n, p->m);
    if (p->every < 1)
        return speck_set_error(SPECK_ERR_ARG, "N:M sparsity: mask period %d must be >= 1",
                               p->every);
    if (!(p->lambda >= 0) || !isfinite(p->lambda))
        return speck_set_error(SPECK_ERR_ARG, "N:M sparsity: lambda %g must be >= 0",
                               (double)p->lambda);
    int64_t total = 0;
    for (int i = 0; i < tm->n_tensors; i++) {
        const speck_ttensor *t = &tm->tensors[i];
        if (!nm_eligible(t)) continue;
        if (t->ne0 % p->m)
            return speck_set_error(SPECK_ERR_ARG,
                                   "N:M sparsity %d:%d: %s has rows of %lld inputs, not a "
                                   "multiple of M = %d",
                                   p->n, p->m, t->name, (long long)t->ne0, p->m);
        total += t->ne0 * t->ne1;
    }
    if (total == 0)
        return speck_set_error(SPECK_ERR_ARG, "N:M sparsity: the model has no layer matrices");
    train_nm_free(tm);
    speck_tnm *s = &tm->nm;
    s->moff = malloc((size_t)tm->n_tensors * sizeof *s->moff);
    s->mask = malloc((size_t)total);
    s->w = malloc((size_t)total * sizeof *s->w);
    if (!s->moff || !s->mask || !s->w) {
        train_nm_free(tm);
        return speck_set_error(SPECK_ERR_NOMEM, "N:M sparsity: out of memory for the masks");
    }
    int64_t off = 0;
    for (int i = 0; i < tm->n_tensors; i++) {
        const speck_ttensor *t = &tm->tensors[i];
        s->moff[i] = nm_eligible(t) ? off : -1;
        if (s->moff[i] >= 0) off += t->ne0 * t->ne1;
    }
    s->n = p->n, s->m = p->m, s->every = p->every, s->lambda = p->lambda;
    s->n_masked = total, s->stale = true;
    // The passes read the masked copies of the masked tensors, the params of the others: bind
    // to the params, then move every pointer that lands on a masked tensor.
    speck_tlayer *fl = bind_forward(tm);
    for (int l = 0; l < tm->cfg.n_layer; l++) {
        float **slots[] = {&fl[l].wq, &fl[l].wk,   &fl[l].wv,   &fl[l].wo,  &fl[l].wg,
                           &fl[l].wu, &fl[l].wd,   &fl[l].wg_s, &fl[l].wu_s, &fl[l].wd_s};
        for (size_t k = 0; k < sizeof slots / sizeof *slots; k++) {
            if (!*slots[k]) continue;
            const int64_t o = *slots[k] - tm->params;
            for (int i = 0; i < tm->n_tensors; i++)
                if (tm->tensors[i].offset == o && s->moff[i] >= 0) *slots[k] = s->w + s->moff[i];
        }
    }
    train_nm_refresh(tm);
    return 0;
}

void train_nm_refresh(speck_train_model *tm) {
    speck_tnm *s = &tm->nm;
    if (!s->m) return;
    const bool stale = s->stale;
    for (int i = 0; i < tm->n_tensors; i++) {
        if (s->moff[i] < 0) continue;
        const speck_ttensor *t = &tm->tensors[i];
        const float *w = tm->params + t->offset;
        uint8_t *mask = s->mask + s->moff[i];
        float *out = s->w + s->moff[i];
        const int64_t rows = t->ne1, cols = t->ne0;
#pragma omp parallel for schedule(static) if (rows * cols >= 32768)
        for (int64_t r = 0; r < rows; r++) {
            const float *wr = w + r * cols;
            uint8_t *mr = mask + r * cols;
            if (stale) select_groups(wr, mr, cols, s->n, s->m);
            for (int64_t j = 0; j < cols; j++) out[r * cols + j] = mr[j] ? wr[j] : 0.0f;
        }
    }
    s->stale = false;
}

void train_nm_refine(speck_train_model *tm) {
    speck_tnm *s = &tm->nm;
    if (!s->m || s->lambda == 0) return;
    const float lam = s->lambda;
    for (int i = 0; i < tm->n_tensors; i++) {
        if (s->moff[i] < 0) continue;
        const speck_ttensor *t = &tm->tensors[i];
        const float *w = tm->params + t->offset;
        float *g = tm->grads + t->offset;
        const uint8_t *mask = s->mask + s->moff[i];
        const int64_t n = t->ne0 * t->ne1;
#pragma omp parallel for schedule(static) if (n >= 32768)
        for (int64_t j = 0; j < n; j++)
            if (!mask[j]) g[j] += lam * w[j];
    }
}

void train_nm_after_step(speck_train_model *tm, int64_t step) {
    if (tm->nm.m && (step + 1) % tm->nm.every == 0) tm->nm.stale = true;
}

void train_nm_free(speck_train_model *tm) {
    free(tm->nm.moff);
    free(tm->nm.mask);
    free(tm->nm.w);
    memset(&tm->nm, 0, sizeof tm->nm);
}

const float *train_nm_values(speck_train_model *tm, int i) {
    if (tm->nm.m && tm->nm.moff[i] >= 0) {
        train_nm_refresh(tm);
        return tm->nm.w + tm->nm.moff[i];
    }
    return tm->params + tm->tensors[i].offset;
}

const uint8_t *speck_train_nm_mask(speck_train_model *tm, int i) {
    if (!tm->nm.m || i < 0 || i >= tm->n_tensors || tm->nm.moff[i] < 0) return NULL;
    train_nm_refresh(tm);
    return tm->nm.mask + tm->nm.moff[i];
}

speck_nm_params speck_train_nm(const speck_train_model *tm) {
    return (speck_nm_params){tm->nm.n, tm->nm.m, tm->nm.every, tm->nm.lambda};
}
