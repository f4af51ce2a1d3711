// Sparse fine-tuning: SpIEL (random positions, drop by |δ|, regrow by accumulated gradient) and
// S2FT (the attn_output / ffn_down columns of random heads and channels), as a delta over k
// positions trained with AdamW on speck train's gradient read at them (docs/adaptation.md).
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cblas.h>

#include "adapt/adapt_internal.h"
#include "train/train_internal.h"
#include "train/train_ops.h"

typedef struct {
    int ti;           // tensor of the training model
    int64_t n, k;     // its elements; trained positions
    int64_t off;      // first of its k values in the flat arrays
    int64_t *idx;     // (k) increasing positions in the tensor
    int64_t c;        // SpIEL-AG: candidates for regrowth
    int64_t *cand;    // (c) increasing positions, all inactive
    float *acc;       // (c) gradient summed since the candidates were chosen
    bool chosen;      // candidates chosen in this step already (several micro-batches)
    int64_t ncols;    // S2FT: the positions are these whole columns of every row, row-major
    int64_t *cols;    // (ncols) increasing
} sft_mat;

struct speck_sparse_ft {
    speck_train_model *tm;
    speck_sparse_params p;
    int n;
    sft_mat *t;
    int64_t k;
    float *val, *base, *m, *v, *g; // (k) each: δ, W0 there, AdamW moments, gradient
    float *last_g;                 // (k) the gradient the last step used (tests)
    uint64_t base_fp;
    int64_t step;           // the optimizer step the backward passes now belong to
    float *xt, *dyt, *dense; // scratch: x and dy transposed, one matrix's dense dW
    size_t cap_xt, cap_dyt, cap_dense;
    int err;                // an allocation failed inside the backward pass
};

speck_sparse_params speck_sparse_default(void) {
    return (speck_sparse_params){.method = SPECK_SPARSE_SPIEL,
                                 .density = 0.01,
                                 .targets = (1u << SPECK_LORA_N_TARGETS) - 1,
                                 .update_every = 20,
                                 .accum_steps = 5,
                                 .drop_fraction = 0.2f,
                                 .total_steps = 1,
                                 .seed = 1};
}

int speck_sparse_parse_method(const char *name, speck_sparse_method *m) {
    if (!strcmp(name, "spiel")) *m = SPECK_SPARSE_SPIEL;
    else if (!strcmp(name, "s2ft")) *m = SPECK_SPARSE_S2FT;
    else
        return speck_set_error(SPECK_ERR_ARG,
                               "sparse fine-tuning: unknown method '%s' (want spiel or s2ft)", name);
    return 0;
}

static uint64_t splitmix(uint64_t *s) {
    uint64_t z = (*s += 0x9E3779B97F4A7C15ULL);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}

// Uniform in [0, 1) from 53 bits.
static double uniform(uint64_t *s) { return (double)(splitmix(s) >> 11) * (1.0 / 9007199254740992.0); }

// k of [0, n) uniformly at random, increasing (Knuth's selection sampling, Algorithm S).
static void choose_sorted(int64_t n, int64_t k, uint64_t seed, int64_t *out) {
    int64_t got = 0;
    for (int64_t j = 0; j < n && got < k; j++)
        if ((double)(n - j) * uniform(&seed) < (double)(k - got)) out[got++] = j;
}

static int find_tensor(const speck_train_model *tm, const char *name) {
    for (int i = 0; i < tm->n_tensors; i++)
        if (!strcmp(tm->tensors[i].name, name)) return i;
    return -1;
}

static sft_mat *push_mat(speck_sparse_ft *s, int ti, int64_t k) {
    sft_mat *t = &s->t[s->n++];
    t->ti = ti, t->k = k;
    t->n = s->tm->tensors[ti].ne0 * s->tm->tensors[ti].ne1;
    t->idx = malloc((size_t)(k ? k : 1) * sizeof *t->idx);
    return t->idx ? t : NULL;
}

// SpIEL: the budget split over the target matrices in proportion to their sizes.
static int init_spiel(speck_sparse_ft *s, int64_t want) {
    const speck_train_model *tm = s->tm;
    int tis[4096];
    int nt = 0;
    int64_t total = 0;
    char nm[64];
    for (int l = 0; l < tm->cfg.n_layer; l++)
        for (int t = 0; t < SPECK_LORA_N_TARGETS; t++) {
            if (!(s->p.targets >> t & 1)) continue;
            snprintf(nm, sizeof nm, "blk.%d.%s.weight", l, speck_lora_target_gguf(t));
            const int ti = find_tensor(tm, nm);
            if (ti < 0 || nt == 4096) continue;
            tis[nt++] = ti;
            total += tm->tensors[ti].ne0 * tm->tensors[ti].ne1;
        }
    if (!nt) return speck_set_error(SPECK_ERR_ARG, "sparse fine-tuning: no target matrices");
    if (want < 0) want = (int64_t)llround(s->p.density * (double)total);
    if (want < 1 || want > total)
        return speck_set_error(SPECK_ERR_ARG,
                               "sparse fine-tuning: %lld trained parameters, the targets hold %lld",
                               (long long)want, (long long)total);
    if (!(s->t = calloc((size_t)nt, sizeof *s->t)))
        return speck_set_error(SPECK_ERR_NOMEM, "sparse fine-tuning: out of memory");
    int64_t given = 0, cum = 0;
    for (int i = 0; i < nt; i++) {
        const int64_t n = tm->tensors[tis[i]].ne0 * tm->tensors[tis[i]].ne1;
        // Cumulative rounding: the shares sum to want exactly.
        cum += n;
        const int64_t end = (int64_t)((long double)want * (long double)cum / (long double)total);
        int64_t k = (i == nt - 1 ? want : end) - given;
        if (k > n) k = n;
        sft_mat *t = push_mat(s, tis[i], k);
        if (!t) return speck_set_error(SPECK_ERR_NOMEM, "sparse fine-tuning: out of memory");
        uint64_t seed = s->p.seed * 0x9E3779B97F4A7C15ULL + (uint64_t)tis[i];
        choose_sorted(n, k, seed, t->idx);
        given += k;
    }
    return 0;
}

// A random subset of size k of [0, n), increasing (partial Fisher-Yates, then sort).
static int cmp_i64(const void *a, const void *b) {
    const int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}
static int64_t *random_subset(int64_t n, int64_t k, uint64_t *seed) {
    int64_t *p = malloc((size_t)(n ? n : 1) * sizeof *p);
    if (!p) return NULL;
    for (int64_t j = 0; j < n; j++) p[j] = j;
    for (int64_t j = 0; j < k; j++) {
        const int64_t r = j + (int64_t)(splitmix(seed) % (uint64_t)(n - j));
        const int64_t x = p[j];
        p[j] = p[r], p[r] = x;
    }
    qsort(p, (size_t)k, sizeof *p, cmp_i64);
    return p;
}

// S2FT: per layer h heads (their head_dim columns of attn_output) and f channels (columns of
// ffn_down), the same share of the budget in every layer; h from the share of the budget the
// attention side holds, f the rest.
static int init_s2ft(speck_sparse_ft *s, int64_t want) {
    const speck_train_model *tm = s->tm;
    const int L = tm->cfg.n_layer, H = tm->cfg.n_head, hd = tm->head_dim;
    const int64_t C = tm->cfg.n_embd, F = tm->cfg.n_ff, Qd = (int64_t)H * hd;
    const int64_t total = (int64_t)L * C * (Qd + F);
    if (want < 0) want = (int64_t)llround(s->p.density * (double)total);
    if (want < C || want > total)
        return speck_set_error(SPECK_ERR_ARG,
                               "sparse fine-tuning: s2ft trains whole columns of %lld: %lld "
                               "parameters asked, attn_output and ffn_down hold %lld",
                               (long long)C, (long long)want, (long long)total);
    if (!(s->t = calloc((size_t)2 * L, sizeof *s->t)))
        return speck_set_error(SPECK_ERR_NOMEM, "sparse fine-tuning: out of memory");
    uint64_t seed = s->p.seed * 0x9E3779B97F4A7C15ULL + 0x5332;
    char nm[64];
    for (int l = 0; l < L; l++) {
        const int64_t cols = (want / C) / L + (l < (want / C) % L); // this layer's columns
        int64_t h = (int64_t)floor((double)cols * (double)Qd / (double)(Qd + F) / hd + 0.5);
        if (h > H) h = H;
        int64_t f = cols - h * hd;
        if (f < 0) h = cols / hd, f = cols - h * hd;
        if (f > F) f = F;
        int64_t *heads = random_subset(H, h, &seed), *chans = random_subset(F, f, &seed);
        snprintf(nm, sizeof nm, "blk.%d.attn_output.weight", l);
        const int to = find_tensor(tm, nm);
        snprintf(nm, sizeof nm, "blk.%d.ffn_down.weight", l);
        const int td = find_tensor(tm, nm);
        sft_mat *a = heads && chans && to >= 0 && td >= 0 ? push_mat(s, to, C * h * hd) : NULL;
        sft_mat *b = a ? push_mat(s, td, C * f) : NULL;
        if (b && (!(a->cols = malloc((size_t)(h * hd + 1) * sizeof *a->cols)) ||
                  !(b->cols = malloc((size_t)(f + 1) * sizeof *b->cols))))
            b = NULL;
        if (b) {
            a->ncols = h * hd, b->ncols = f;
            for (int64_t j = 0; j < h; j++)
                for (int e = 0; e < hd; e++) a->cols[j * hd + e] = heads[j] * hd + e;
            memcpy(b->cols, chans, (size_t)f * sizeof *chans);
            // W: (C, Qd) row r, the columns of head j: r·Qd + j·hd + [0, hd).
            int64_t q = 0;
            for (int64_t r = 0; r < C; r++)
                for (int64_t j = 0; j < h; j++)
                    for (int e = 0; e < hd; e++) a->idx[q++] = r * Qd + heads[j] * hd + e;
            q = 0;
            for (int64_t r = 0; r < C; r++)
                for (int64_t j = 0; j < f; j++) b->idx[q++] = r * F + chans[j];
        }
        free(heads), free(chans);
        if (!b)
            return to < 0 || td < 0
                       ? speck_set_error(SPECK_ERR_ARG, "sparse fine-tuning: layer %d lacks "
                                                        "attn_output or ffn_down", l)
                       : speck_set_error(SPECK_ERR_NOMEM, "sparse fine-tuning: out of memory");
    }
    return 0;
}

static void weight_grad(void *ctx, int64_t offset, const float *dy, const float *x, int N,
                        int n_in, int n_out);

speck_sparse_ft *speck_sparse_ft_new(speck_train_model *tm, const speck_sparse_params *p) {
    if (p->n_params <= 0 && !(p->density > 0 && p->density <= 1)) {
        speck_set_error(SPECK_ERR_ARG, "sparse fine-tuning: density %g outside (0, 1]",
                        p->density);
        return NULL;
    }
    if (tm->cfg.n_expert) {
        speck_set_error(SPECK_ERR_UNSUPPORTED,
                        "sparse fine-tuning: models with experts are not supported");
        return NULL;
    }
    if (p->method != SPECK_SPARSE_SPIEL && p->method != SPECK_SPARSE_S2FT) {
        speck_set_error(SPECK_ERR_ARG, "sparse fine-tuning: unknown method %d", (int)p->method);
        return NULL;
    }
    if (p->drop_fraction < 0 || p->drop_fraction > 1 || p->update_every < 0 ||
        p->accum_steps < 1) {
        speck_set_error(SPECK_ERR_ARG, "sparse fine-tuning: drop fraction in [0, 1], update "
                                       "interval >= 0 and accumulation steps >= 1 required");
        return NULL;
    }
    speck_sparse_ft *s = calloc(1, sizeof *s);
    if (!s) {
        speck_set_error(SPECK_ERR_NOMEM, "sparse fine-tuning: out of memory");
        return NULL;
    }
    s->tm = tm, s->p = *p;
    const int64_t want = p->n_params > 0 ? p->n_params : -1;
    int err = p->method == SPECK_SPARSE_S2FT ? init_s2ft(s, want) : init_spiel(s, want);
    for (int i = 0; !err && i < s->n; i++) s->t[i].off = s->k, s->k += s->t[i].k;
    const size_t bytes = (size_t)(s->k ? s->k : 1) * sizeof(float);
    if (!err && (!(s->val = calloc(1, bytes)) || !(s->base = malloc(bytes)) ||
                 !(s->m = calloc(1, bytes)) || !(s->v = calloc(1, bytes)) ||
                 !(s->g = calloc(1, bytes)) || !(s->last_g = calloc(1, bytes))))
        err = speck_set_error(SPECK_ERR_NOMEM, "sparse fine-tuning: out of memory");
    for (int i = 0; !err && i < s->n; i++) {
        const sft_mat *t = &s->t[i];
        const float *w = tm->params + tm->tensors[t->ti].offset;
        for (int64_t j = 0; j < t->k; j++) s->base[t->off + j] = w[t->idx[j]];
    }
    if (!err) {
        const int e = find_tensor(tm, "token_embd.weight"), o = find_tensor(tm, "output_norm.weight");
        if (e >= 0 && o >= 0)
            s->base_fp = speck_delta_base_fp(
                tm->params + tm->tensors[e].offset, tm->tensors[e].ne0 * tm->tensors[e].ne1,
                tm->params + tm->tensors[o].offset, tm->tensors[o].ne0);
    }
    if (err) {
        speck_sparse_ft_free(s);
        return NULL;
    }
    tm->wgrad = weight_grad, tm->wgrad_ctx = s;
    return s;
}

void speck_sparse_ft_free(speck_sparse_ft *s) {
    if (!s) return;
    if (s->tm->wgrad_ctx == s) s->tm->wgrad = NULL, s->tm->wgrad_ctx = NULL;
    free(s->last_g), free(s->xt), free(s->dyt), free(s->dense);
    for (int i = 0; i < s->n; i++)
        free(s->t[i].idx), free(s->t[i].cand), free(s->t[i].acc), free(s->t[i].cols);
    free(s->t);
    free(s->val), free(s->base), free(s->m), free(s->v), free(s->g);
    free(s);
}

int64_t speck_sparse_ft_n_params(const speck_sparse_ft *s) { return s->k; }
const float *speck_sparse_ft_grad(const speck_sparse_ft *s) { return s->last_g; }

/* ---- SpIEL's drop and regrow -------------------------------------------------------------- */

typedef struct {
    float key;
    int64_t pos;
    int64_t i;
} ranked;

// Ascending key, then ascending position.
static int cmp_ranked(const void *a, const void *b) {
    const ranked *x = a, *y = b;
    if (x->key != y->key) return x->key < y->key ? -1 : 1;
    return (x->pos > y->pos) - (x->pos < y->pos);
}

int64_t speck_sparse_regrow(const int64_t *idx, const float *val, int64_t k, const int64_t *cand,
                            const float *acc, int64_t c, float zeta, int64_t *new_idx,
                            uint8_t *grown) {
    int64_t d = (int64_t)floor((double)zeta * (double)k);
    if (d > c) d = c;
    if (d < 0) d = 0;
    ranked *r = malloc((size_t)((k > c ? k : c) + 1) * sizeof *r);
    uint8_t *dropped = calloc((size_t)k + 1, 1);
    int64_t *gpos = malloc((size_t)(d + 1) * sizeof *gpos);
    if (!r || !dropped || !gpos) {
        free(r), free(dropped), free(gpos);
        return -1;
    }
    // Drop: the d smallest |δ| (ties: the lower position first).
    for (int64_t j = 0; j < k; j++) r[j] = (ranked){fabsf(val[j]), idx[j], j};
    qsort(r, (size_t)k, sizeof *r, cmp_ranked);
    for (int64_t j = 0; j < d; j++) dropped[r[j].i] = 1;
    // Grow: the d largest |Σ g| among the candidates (ties: the lower position first).
    for (int64_t j = 0; j < c; j++) r[j] = (ranked){-fabsf(acc[j]), cand[j], j};
    qsort(r, (size_t)c, sizeof *r, cmp_ranked);
    for (int64_t j = 0; j < d; j++) gpos[j] = r[j].pos;
    qsort(gpos, (size_t)d, sizeof *gpos, cmp_i64);
    // Merge the kept (increasing) with the grown (increasing; disjoint from the active set).
    int64_t a = 0, b = 0, q = 0;
    while (q < k) {
        while (a < k && dropped[a]) a++;
        if (b == d || (a < k && idx[a] < gpos[b]))
            grown[q] = 0, new_idx[q++] = idx[a++];
        else
            grown[q] = 1, new_idx[q++] = gpos[b++];
    }
    free(r), free(dropped), free(gpos);
    return d;
}

// Candidates of t: the c = min(k, n − k) inactive positions of largest |g| (ties: lower
// position), chosen by a bounded min-heap over the tensor's gradient g.
static int choose_candidates(sft_mat *t, const float *g) {
    int64_t c = t->n - t->k < t->k ? t->n - t->k : t->k;
    free(t->cand), free(t->acc);
    t->cand = malloc((size_t)(c ? c : 1) * sizeof *t->cand);
    t->acc = calloc((size_t)(c ? c : 1), sizeof *t->acc);
    ranked *h = malloc((size_t)(c ? c : 1) * sizeof *h);
    if (!t->cand || !t->acc || !h) {
        free(h);
        return speck_set_error(SPECK_ERR_NOMEM, "sparse fine-tuning: out of memory");
    }
    // Heap order: the root is the worst kept (smallest |g|, then the higher position).
#define WORSE(x, y) ((x).key < (y).key || ((x).key == (y).key && (x).pos > (y).pos))
    int64_t nh = 0, a = 0;
    for (int64_t j = 0; j < t->n && c; j++) {
        if (a < t->k && t->idx[a] == j) {
            a++;
            continue;
        }
        const ranked e = {fabsf(g[j]), j, 0};
        int64_t i;
        if (nh < c) {
            for (i = nh++; i > 0 && WORSE(e, h[(i - 1) / 2]); i = (i - 1) / 2)
                h[i] = h[(i - 1) / 2];
            h[i] = e;
            continue;
        }
        if (!WORSE(h[0], e)) continue;
        for (i = 0;;) { // sift e down from the root
            int64_t ch = 2 * i + 1;
            if (ch >= nh) break;
            if (ch + 1 < nh && WORSE(h[ch + 1], h[ch])) ch++;
            if (!WORSE(h[ch], e)) break;
            h[i] = h[ch], i = ch;
        }
        h[i] = e;
    }
#undef WORSE
    for (int64_t j = 0; j < nh; j++) t->cand[j] = h[j].pos;
    qsort(t->cand, (size_t)nh, sizeof *t->cand, cmp_i64);
    t->c = nh;
    free(h);
    return 0;
}

// The drop-and-regrow of every tensor after step `step`; W restored where dropped.
static int regrow_all(speck_sparse_ft *s, int64_t step) {
    const float zeta = (float)(0.5 * s->p.drop_fraction *
                               (1.0 + cos(3.14159265358979323846 * (double)(step + 1) / (double)s->p.total_steps)));
    for (int i = 0; i < s->n; i++) {
        sft_mat *t = &s->t[i];
        if (!t->k || !t->cand) continue;
        int64_t *nidx = malloc((size_t)t->k * sizeof *nidx);
        uint8_t *grown = malloc((size_t)t->k);
        float *tmp = malloc((size_t)t->k * 4 * sizeof *tmp);
        int64_t d = nidx && grown && tmp ? speck_sparse_regrow(t->idx, s->val + t->off, t->k,
                                                               t->cand, t->acc, t->c, zeta,
                                                               nidx, grown)
                                         : -1;
        if (d < 0) {
            free(nidx), free(grown), free(tmp);
            return speck_set_error(SPECK_ERR_NOMEM, "sparse fine-tuning: out of memory");
        }
        float *w = s->tm->params + s->tm->tensors[t->ti].offset;
        float *val = s->val + t->off, *base = s->base + t->off, *m = s->m + t->off,
              *v = s->v + t->off;
        float *nv = tmp, *nb = tmp + t->k, *nm = tmp + 2 * t->k, *nvv = tmp + 3 * t->k;
        int64_t a = 0;
        for (int64_t q = 0; q < t->k; q++) {
            if (grown[q]) {
                nv[q] = 0, nb[q] = w[nidx[q]], nm[q] = 0, nvv[q] = 0;
                continue;
            }
            while (t->idx[a] != nidx[q]) w[t->idx[a]] = base[a], a++; // dropped: W0 again
            nv[q] = val[a], nb[q] = base[a], nm[q] = m[a], nvv[q] = v[a], a++;
        }
        for (; a < t->k; a++) w[t->idx[a]] = base[a];
        memcpy(val, nv, (size_t)t->k * sizeof *val);
        memcpy(base, nb, (size_t)t->k * sizeof *base);
        memcpy(m, nm, (size_t)t->k * sizeof *m);
        memcpy(v, nvv, (size_t)t->k * sizeof *v);
        memcpy(t->idx, nidx, (size_t)t->k * sizeof *nidx);
        free(nidx), free(grown), free(tmp);
        free(t->cand), free(t->acc);
        t->cand = NULL, t->acc = NULL, t->c = 0;
    }
    return 0;
}

// SpIEL-AG's window for step: the accum_steps steps ending with a regrow (after the step where
// (step + 1) % update_every == 0, not the run's last); *first: the window's first step.
static bool in_window(const speck_sparse_ft *s, int64_t step, bool *first) {
    const int U = s->p.update_every;
    *first = false;
    if (s->p.method != SPECK_SPARSE_SPIEL || U <= 0 || step + 1 >= s->p.total_steps) return false;
    const int gam = s->p.accum_steps < U ? s->p.accum_steps : U;
    const int64_t ph = (step + 1) % U; // 0: regrow after this step
    *first = ph == (U - gam + 1) % U;
    return ph == 0 || ph > U - gam;
}

static float *scratch(float **p, size_t *cap, size_t n) {
    if (*cap < n) {
        free(*p);
        *cap = 0;
        if (!(*p = malloc(n * sizeof **p))) return NULL;
        *cap = n;
    }
    return *p;
}

// The backward pass's weight gradient of one matrix (tm->wgrad): dW = dyᵀ·x read at the trained
// positions only — a dot product of a dy column and an x column each, over both transposed —
// added to g; in SpIEL-AG's window also at the candidates. The window's first step computes
// this matrix's dense dW once (one matrix at a time, in scratch) to choose the candidates.
static void weight_grad(void *ctx, int64_t offset, const float *dy, const float *x, int N,
                        int n_in, int n_out) {
    speck_sparse_ft *s = ctx;
    sft_mat *t = NULL;
    for (int i = 0; i < s->n && !t; i++)
        if (s->tm->tensors[s->t[i].ti].offset == offset) t = &s->t[i];
    if (!t || !t->k || s->err) return;
    bool first;
    const bool win = in_window(s, s->step, &first);
    float *g = s->g + t->off;
    if (t->ncols) { // S2FT: dW[:, cols] = dyᵀ · x[:, cols], which is g's layout row by row
        float *xs = scratch(&s->xt, &s->cap_xt, (size_t)N * t->ncols);
        if (!xs) {
            s->err = SPECK_ERR_NOMEM;
            return;
        }
        const int64_t nc = t->ncols, *cols = t->cols;
#pragma omp parallel for schedule(static)
        for (int r = 0; r < N; r++)
            for (int64_t j = 0; j < nc; j++) xs[(size_t)r * nc + j] = x[(size_t)r * n_in + cols[j]];
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, n_out, (int)nc, N, 1.0f, dy, n_out,
                    xs, (int)nc, 1.0f, g, (int)nc);
        return;
    }
    // Dense into scratch when choosing candidates, or when the matrix is dense enough that one
    // GEMM beats k dot products (BLAS runs the GEMM ~30x faster per multiply-add than strided
    // dots; on the default model at 7 % density the dots made a step 1.5x slower).
    const bool choose = win && first && !t->chosen;
    if (choose || t->k * 32 >= t->n) {
        float *d = scratch(&s->dense, &s->cap_dense, (size_t)t->n);
        if (d) {
            memset(d, 0, (size_t)t->n * sizeof *d);
            train_matmul_backward_dw(d, dy, x, N, n_in, n_out, 1.0f);
        }
        if (!d || (choose && choose_candidates(t, d))) {
            s->err = SPECK_ERR_NOMEM;
            return;
        }
        t->chosen |= choose;
        for (int64_t j = 0; j < t->k; j++) g[j] += d[t->idx[j]];
        for (int64_t j = 0; win && j < t->c; j++) t->acc[j] += d[t->cand[j]];
        return;
    }
    float *xt = scratch(&s->xt, &s->cap_xt, (size_t)N * n_in);
    float *dyt = scratch(&s->dyt, &s->cap_dyt, (size_t)N * n_out);
    if (!xt || !dyt) {
        s->err = SPECK_ERR_NOMEM;
        return;
    }
#pragma omp parallel for schedule(static)
    for (int i = 0; i < n_in; i++)
        for (int r = 0; r < N; r++) xt[(size_t)i * N + r] = x[(size_t)r * n_in + i];
#pragma omp parallel for schedule(static)
    for (int o = 0; o < n_out; o++)
        for (int r = 0; r < N; r++) dyt[(size_t)o * N + r] = dy[(size_t)r * n_out + o];
    const int64_t *idx = t->idx;
#pragma omp parallel for schedule(static)
    for (int64_t j = 0; j < t->k; j++)
        g[j] += cblas_sdot(N, dyt + (size_t)(idx[j] / n_in) * N, 1,
                           xt + (size_t)(idx[j] % n_in) * N, 1);
    if (!win || !t->cand) return; // (a window entered after its first step: no candidates)
    const int64_t *cand = t->cand;
    float *acc = t->acc;
#pragma omp parallel for schedule(static)
    for (int64_t j = 0; j < t->c; j++)
        acc[j] += cblas_sdot(N, dyt + (size_t)(cand[j] / n_in) * N, 1,
                             xt + (size_t)(cand[j] % n_in) * N, 1);
}

int speck_sparse_ft_step(speck_sparse_ft *s, const speck_adamw_params *p, int64_t step,
                         float *grad_norm) {
    speck_train_model *tm = s->tm;
    if (s->err) return speck_set_error(s->err, "sparse fine-tuning: out of memory");
    if (step != s->step)
        return speck_set_error(SPECK_ERR_ARG, "sparse fine-tuning: step %lld, expected %lld",
                               (long long)step, (long long)s->step);
    const double norm = speck_adamw_grad_norm(s->g, s->k);
    if (grad_norm) *grad_norm = (float)norm;
    float clip;
    int err = speck_adamw_begin(p, step, norm, &clip);
    if (err) return err;
    speck_adamw_update(p, step, clip, true, s->val, s->g, s->m, s->v, s->k);
    for (int i = 0; i < s->n; i++) {
        sft_mat *t = &s->t[i];
        float *w = tm->params + tm->tensors[t->ti].offset;
        for (int64_t j = 0; j < t->k; j++) w[t->idx[j]] = s->base[t->off + j] + s->val[t->off + j];
        t->chosen = false;
    }
    memcpy(s->last_g, s->g, (size_t)s->k * sizeof *s->g);
    memset(s->g, 0, (size_t)s->k * sizeof *s->g);
    s->step = step + 1;
    bool first;
    if (in_window(s, step, &first) && (step + 1) % s->p.update_every == 0)
        return regrow_all(s, step);
    return 0;
}

speck_delta *speck_sparse_ft_delta(const speck_sparse_ft *s) {
    speck_delta *d = speck_delta_new(s->tm->hp.arch);
    if (!d) return NULL;
    d->method = SPECK_DELTA_SFT;
    snprintf(d->sft, sizeof d->sft, "%s", s->p.method == SPECK_SPARSE_S2FT ? "s2ft" : "spiel");
    d->density = (float)s->p.density, d->seed = s->p.seed, d->base_fp = s->base_fp;
    for (int i = 0; i < s->n; i++) {
        const sft_mat *t = &s->t[i];
        if (!t->k) continue;
        const speck_ttensor *tt = &s->tm->tensors[t->ti];
        const int64_t ne[2] = {tt->ne0, tt->ne1};
        speck_delta_tensor *dt = speck_delta_push(d, tt->name, 2, ne);
        if (!dt || !(dt->idx = malloc((size_t)t->k * sizeof *dt->idx)) ||
            !(dt->val = malloc((size_t)t->k * sizeof *dt->val))) {
            speck_delta_free(d);
            speck_set_error(SPECK_ERR_NOMEM, "sparse fine-tuning: out of memory");
            return NULL;
        }
        memcpy(dt->idx, t->idx, (size_t)t->k * sizeof *dt->idx);
        memcpy(dt->val, s->val + t->off, (size_t)t->k * sizeof *dt->val);
        dt->nnz = t->k;
    }
    return d;
}
