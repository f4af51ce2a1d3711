// SpecDec++ acceptance-prediction head: a one-hidden-layer MLP on the draft model's features that
// predicts whether the target accepts a draft token; its file format, weighted-BCE loss and
// gradient, and AdamW training (data collection is accept_collect.c).
//
// Features x (n_in = n_embd + 2) of a draft token: the draft's final hidden state at the position
// that proposed it (after the final norm, speck_ctx_hidden), then the draft's probability of its
// own top token and the entropy (nats) of its next-token distribution. With the standardisation
// (mean, scale) fixed from the training data:
//   u = (x - mean) * scale                          (n_in)
//   a = W1 u + b1,  s = silu(a) = a sigmoid(a)      (n_hidden)
//   z = w2 . s + b2,  p_accept = sigmoid(z)
// Loss over n samples with labels y (1 = accepted), rejections weighted w_rej (SpecDec++ weighs
// the rare class up):
//   w_i = y_i ? 1 : w_rej
//   L   = Σ_i w_i [ -y_i log p_i - (1 - y_i) log(1 - p_i) ] / Σ_i w_i
//   dL/dz_i = w_i (p_i - y_i) / Σ_i w_i
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "speck.h"
#include "train/train_internal.h"

#define ARCH "speck-accept-head"

struct speck_accept_head {
    int n_embd, n_in, n_hidden; // n_in = n_embd + SPECK_ACCEPT_N_EXTRA
    float *mean, *scale;        // (n_in) standardisation of the features
    float *theta;               // (speck_accept_head_n_params) W1, b1, w2, b2
};

// Parameters in one buffer: W1 (n_hidden, n_in) row-major, b1 (n_hidden), w2 (n_hidden), b2 (1).
static float *w1_of(const speck_accept_head *h) {
    return h->theta;
}

int64_t speck_accept_head_n_params(const speck_accept_head *h) {
    return (int64_t)h->n_hidden * (h->n_in + 2) + 1;
}

int speck_accept_head_n_embd(const speck_accept_head *h) {
    return h->n_embd;
}

static double sigmoid(double z) {
    return z >= 0 ? 1.0 / (1.0 + exp(-z)) : exp(z) / (1.0 + exp(z));
}

void speck_accept_features(const float *hidden, int n_embd, const float *logits, int n_vocab,
                           float *x) {
    memcpy(x, hidden, (size_t)n_embd * sizeof *x);
    // top p = 1 / Σ e^(l - max); entropy = log S - Σ (l - max) e^(l - max) / S
    float mx = logits[0];
    for (int i = 1; i < n_vocab; i++) mx = logits[i] > mx ? logits[i] : mx;
    double S = 0, T = 0;
    for (int i = 0; i < n_vocab; i++) {
        const double d = (double)logits[i] - mx, e = exp(d);
        S += e, T += d * e;
    }
    x[n_embd] = (float)(1.0 / S);
    x[n_embd + 1] = (float)(log(S) - T / S);
}

speck_accept_head *speck_accept_head_new(int n_embd, int n_hidden, uint64_t seed) {
    if (n_embd <= 0 || n_hidden <= 0 || n_embd > (1 << 16) || n_hidden > 4096) {
        speck_set_error(SPECK_ERR_ARG, "accept head: bad shape (n_embd %d, n_hidden %d)", n_embd,
                        n_hidden);
        return NULL;
    }
    speck_accept_head *h = calloc(1, sizeof *h);
    if (!h) goto oom;
    h->n_embd = n_embd;
    h->n_in = n_embd + SPECK_ACCEPT_N_EXTRA;
    h->n_hidden = n_hidden;
    h->mean = calloc((size_t)h->n_in, sizeof(float));
    h->scale = malloc((size_t)h->n_in * sizeof(float));
    h->theta = calloc((size_t)speck_accept_head_n_params(h), sizeof(float));
    if (!h->mean || !h->scale || !h->theta) goto oom;
    for (int i = 0; i < h->n_in; i++) h->scale[i] = 1.0f;
    // W1 ~ N(0, 1/n_in), w2 ~ N(0, 1/n_hidden) (Box-Muller on a 64-bit LCG), biases 0.
    uint64_t r = seed * 0x9E3779B97F4A7C15ULL + 1;
    float *w1 = w1_of(h), *w2 = w1 + (size_t)n_hidden * h->n_in + n_hidden;
    for (int64_t i = 0; i < (int64_t)n_hidden * (h->n_in + 1); i++) {
        r = r * 6364136223846793005ULL + 1442695040888963407ULL;
        const double u1 = ((r >> 11) + 0.5) / 9007199254740992.0;
        r = r * 6364136223846793005ULL + 1442695040888963407ULL;
        const double u2 = (r >> 11) / 9007199254740992.0;
        const double g = sqrt(-2 * log(u1)) * cos(6.283185307179586 * u2);
        if (i < (int64_t)n_hidden * h->n_in)
            w1[i] = (float)(g / sqrt(h->n_in));
        else
            w2[i - (int64_t)n_hidden * h->n_in] = (float)(g / sqrt(n_hidden));
    }
    return h;
oom:
    speck_accept_head_free(h);
    speck_set_error(SPECK_ERR_NOMEM, "out of memory");
    return NULL;
}

void speck_accept_head_free(speck_accept_head *h) {
    if (!h) return;
    free(h->mean), free(h->scale), free(h->theta);
    free(h);
}

// z for one sample x (n_in); u, a, s (n_hidden each, may alias nothing) receive the intermediates.
static double head_logit(const speck_accept_head *h, const float *theta, const float *x, float *u,
                         float *a, float *s) {
    const int ni = h->n_in, nh = h->n_hidden;
    const float *w1 = theta, *b1 = w1 + (size_t)nh * ni, *w2 = b1 + nh, *b2 = w2 + nh;
    for (int j = 0; j < ni; j++) u[j] = (x[j] - h->mean[j]) * h->scale[j];
    double z = b2[0];
    for (int k = 0; k < nh; k++) {
        const float *row = w1 + (size_t)k * ni;
        float acc = b1[k];
        for (int j = 0; j < ni; j++) acc += row[j] * u[j];
        a[k] = acc;
        s[k] = (float)(acc * sigmoid(acc));
        z += (double)w2[k] * s[k];
    }
    return z;
}

float speck_accept_head_prob(const speck_accept_head *h, const float *x) {
    // head_logit without the intermediates: u is formed on the fly, row by row
    const int ni = h->n_in, nh = h->n_hidden;
    const float *w1 = h->theta, *b1 = w1 + (size_t)nh * ni, *w2 = b1 + nh, *b2 = w2 + nh;
    double z = b2[0];
    for (int k = 0; k < nh; k++) {
        const float *row = w1 + (size_t)k * ni;
        float acc = b1[k];
        for (int j = 0; j < ni; j++) acc += row[j] * ((x[j] - h->mean[j]) * h->scale[j]);
        z += (double)w2[k] * (acc * sigmoid(acc));
    }
    return (float)sigmoid(z);
}

double speck_accept_head_loss(const speck_accept_head *h, const float *X, const uint8_t *y,
                              int64_t n, float w_rej, float *grad) {
    const int ni = h->n_in, nh = h->n_hidden;
    float *u = malloc((size_t)(ni + 2 * nh) * sizeof *u);
    if (!u || n <= 0) {
        free(u);
        return NAN;
    }
    float *a = u + ni, *s = a + nh;
    const float *w2 = h->theta + (size_t)nh * ni + nh;
    float *g1 = grad, *gb1 = grad ? g1 + (size_t)nh * ni : NULL, *gw2 = grad ? gb1 + nh : NULL,
          *gb2 = grad ? gw2 + nh : NULL;
    double W = 0;
    for (int64_t i = 0; i < n; i++) W += y[i] ? 1.0 : w_rej;
    double L = 0;
    for (int64_t i = 0; i < n; i++) {
        const float *x = X + (size_t)i * ni;
        const double z = head_logit(h, h->theta, x, u, a, s), wi = (y[i] ? 1.0 : w_rej) / W;
        // -log sigmoid(z) = softplus(-z), -log(1 - sigmoid(z)) = softplus(z), stable forms
        const double sp = z > 0 ? z + log1p(exp(-z)) : log1p(exp(z)); // softplus(z)
        L += wi * (y[i] ? sp - z : sp);
        if (!grad) continue;
        const double dz = wi * (sigmoid(z) - (y[i] ? 1.0 : 0.0));
        gb2[0] += (float)dz;
        for (int k = 0; k < nh; k++) {
            gw2[k] += (float)(dz * s[k]);
            const double sg = sigmoid(a[k]);
            const float da = (float)(dz * w2[k] * sg * (1 + a[k] * (1 - sg))); // silu'
            gb1[k] += da;
            float *row = g1 + (size_t)k * ni;
            for (int j = 0; j < ni; j++) row[j] += da * u[j];
        }
    }
    free(u);
    return L;
}

/* ------------------------------------------------------------------------------------------ */
/* File: a GGUF of f32 tensors, validated on load                                              */
/* ------------------------------------------------------------------------------------------ */

int speck_accept_head_save(const speck_accept_head *h, const char *path) {
    speck_gguf_writer *w = speck_gguf_writer_new();
    if (!w) return speck_set_error(SPECK_ERR_NOMEM, "out of memory");
    const int ni = h->n_in, nh = h->n_hidden;
    const float *w1 = h->theta, *b1 = w1 + (size_t)nh * ni, *w2 = b1 + nh, *b2 = w2 + nh;
    const int64_t ne_in[1] = {ni}, ne_w1[2] = {ni, nh}, ne_h[1] = {nh}, ne_1[1] = {1};
    int rc = speck_gguf_set_str(w, "general.architecture", ARCH);
    if (!rc) rc = speck_gguf_set_u32(w, ARCH ".n_embd", (uint32_t)h->n_embd);
    if (!rc) rc = speck_gguf_set_u32(w, ARCH ".n_hidden", (uint32_t)nh);
    if (!rc) rc = speck_gguf_set_str(w, ARCH ".features", "hidden,top_prob,entropy");
    if (!rc) rc = speck_gguf_add_tensor(w, "accept.mean", SPECK_TYPE_F32, 1, ne_in, h->mean);
    if (!rc) rc = speck_gguf_add_tensor(w, "accept.scale", SPECK_TYPE_F32, 1, ne_in, h->scale);
    if (!rc) rc = speck_gguf_add_tensor(w, "accept.w1", SPECK_TYPE_F32, 2, ne_w1, w1);
    if (!rc) rc = speck_gguf_add_tensor(w, "accept.b1", SPECK_TYPE_F32, 1, ne_h, b1);
    if (!rc) rc = speck_gguf_add_tensor(w, "accept.w2", SPECK_TYPE_F32, 1, ne_h, w2);
    if (!rc) rc = speck_gguf_add_tensor(w, "accept.b2", SPECK_TYPE_F32, 1, ne_1, b2);
    if (!rc) rc = speck_gguf_writer_save(w, path);
    speck_gguf_writer_free(w);
    return rc;
}

static int get_u32(const speck_gguf *g, const char *key, int lo, int hi, int *out) {
    int64_t k = speck_gguf_find_key(g, key);
    if (k < 0)
        return speck_set_error(SPECK_ERR_FORMAT, "%s: missing key %s", speck_gguf_path(g), key);
    if (speck_gguf_kv_type(g, k) != SPECK_GGUF_UINT32 && speck_gguf_kv_type(g, k) != SPECK_GGUF_INT32)
        return speck_set_error(SPECK_ERR_FORMAT, "%s: key %s is not an integer", speck_gguf_path(g),
                               key);
    int64_t v = speck_gguf_get_int(g, k);
    if (v < lo || v > hi)
        return speck_set_error(SPECK_ERR_FORMAT, "%s: key %s = %lld outside [%d, %d]",
                               speck_gguf_path(g), key, (long long)v, lo, hi);
    *out = (int)v;
    return 0;
}

// Copies tensor `name` (f32, exactly the shape ne[0..n_dims)) into dst, checking every value is
// finite.
static int get_tensor(const speck_gguf *g, const char *name, int n_dims, const int64_t *ne,
                      float *dst) {
    const speck_gguf_tensor *t = speck_gguf_find_tensor(g, name);
    const char *path = speck_gguf_path(g);
    if (!t) return speck_set_error(SPECK_ERR_FORMAT, "%s: missing tensor %s", path, name);
    if (t->type != SPECK_TYPE_F32)
        return speck_set_error(SPECK_ERR_FORMAT, "%s: tensor %s has type %d, expected f32", path,
                               name, t->type);
    bool same = t->n_dims == n_dims;
    for (int d = 0; same && d < n_dims; d++) same = t->ne[d] == ne[d];
    if (!same)
        return speck_set_error(SPECK_ERR_FORMAT,
                               "%s: tensor %s has shape [%lld, %lld], expected [%lld, %lld]", path,
                               name, (long long)t->ne[0], (long long)(t->n_dims > 1 ? t->ne[1] : 1),
                               (long long)ne[0], (long long)(n_dims > 1 ? ne[1] : 1));
    memcpy(dst, t->data, (size_t)t->n_elements * sizeof(float));
    for (int64_t i = 0; i < t->n_elements; i++)
        if (!isfinite(dst[i]))
            return speck_set_error(SPECK_ERR_FORMAT, "%s: tensor %s: value %lld is not finite",
                                   path, name, (long long)i);
    return 0;
}

speck_accept_head *speck_accept_head_load(const char *path) {
    speck_gguf *g = speck_gguf_open(path);
    if (!g) return NULL;
    speck_accept_head *h = NULL;
    int64_t k = speck_gguf_find_key(g, "general.architecture");
    const char *arch = k >= 0 && speck_gguf_kv_type(g, k) == SPECK_GGUF_STRING
                           ? speck_gguf_get_str(g, k)
                           : NULL;
    if (!arch || strcmp(arch, ARCH)) {
        speck_set_error(SPECK_ERR_FORMAT,
                        "%s: not an acceptance head (general.architecture is %s, expected " ARCH
                        "; write one with `speck train-accept`)",
                        path, arch ? arch : "missing");
        goto out;
    }
    int n_embd, nh;
    if (get_u32(g, ARCH ".n_embd", 1, 1 << 16, &n_embd) ||
        get_u32(g, ARCH ".n_hidden", 1, 4096, &nh))
        goto out;
    if (!(h = speck_accept_head_new(n_embd, nh, 0))) goto out;
    const int ni = h->n_in;
    float *w1 = h->theta, *b1 = w1 + (size_t)nh * ni, *w2 = b1 + nh, *b2 = w2 + nh;
    const int64_t ne_in[1] = {ni}, ne_w1[2] = {ni, nh}, ne_h[1] = {nh}, ne_1[1] = {1};
    if (get_tensor(g, "accept.mean", 1, ne_in, h->mean) ||
        get_tensor(g, "accept.scale", 1, ne_in, h->scale) ||
        get_tensor(g, "accept.w1", 2, ne_w1, w1) || get_tensor(g, "accept.b1", 1, ne_h, b1) ||
        get_tensor(g, "accept.w2", 1, ne_h, w2) || get_tensor(g, "accept.b2", 1, ne_1, b2)) {
        speck_accept_head_free(h);
        h = NULL;
    }
out:
    speck_gguf_close(g);
    return h;
}

/* ------------------------------------------------------------------------------------------ */
/* Training                                                                                    */
/* ------------------------------------------------------------------------------------------ */

speck_accept_train_params speck_accept_train_default(void) {
    return (speck_accept_train_params){
        .n_hidden = 32, .steps = 2000, .batch = 256, .lr = 3e-3f, .w_rej = 1.0f,
        .weight_decay = 0.01f, .val_fraction = 0.2f, .seed = 1};
}

// Rank-based AUC of score s against labels y (ties count half): P(s_pos > s_neg).
static double auc(const float *s, const uint8_t *y, int64_t n) {
    int64_t *idx = malloc((size_t)n * sizeof *idx);
    if (!idx) return NAN;
    for (int64_t i = 0; i < n; i++) idx[i] = i;
    // shell sort by score (n is at most ~1e6)
    for (int64_t gap = n / 2; gap > 0; gap /= 2)
        for (int64_t i = gap; i < n; i++)
            for (int64_t j = i; j >= gap && s[idx[j - gap]] > s[idx[j]]; j -= gap) {
                int64_t t = idx[j];
                idx[j] = idx[j - gap], idx[j - gap] = t;
            }
    double rank_sum = 0;
    int64_t npos = 0;
    for (int64_t i = 0; i < n;) {
        int64_t j = i;
        while (j < n && s[idx[j]] == s[idx[i]]) j++;
        const double r = (i + j + 1) / 2.0; // average 1-based rank of the tie group
        for (int64_t k = i; k < j; k++)
            if (y[idx[k]]) rank_sum += r, npos++;
        i = j;
    }
    free(idx);
    const int64_t nneg = n - npos;
    if (!npos || !nneg) return NAN;
    return (rank_sum - npos * (npos + 1) / 2.0) / ((double)npos * nneg);
}

// Held-out figures of a head on samples X, y: weighted BCE, accuracy at 0.5, AUC of the head
// and of the draft's own top probability (the feature the plain adaptive rule uses).
static void evaluate(const speck_accept_head *h, const float *X, const uint8_t *y, int64_t n,
                     float w_rej, double *bce, double *acc, double *auc_head, double *auc_top) {
    float *p = malloc((size_t)n * sizeof *p), *t = malloc((size_t)n * sizeof *t);
    if (!p || !t || n == 0) {
        free(p), free(t);
        *bce = *acc = *auc_head = *auc_top = NAN;
        return;
    }
    int64_t right = 0;
    for (int64_t i = 0; i < n; i++) {
        p[i] = speck_accept_head_prob(h, X + (size_t)i * h->n_in);
        t[i] = X[(size_t)i * h->n_in + h->n_embd];
        right += (p[i] >= 0.5f) == (y[i] != 0);
    }
    *bce = speck_accept_head_loss(h, X, y, n, w_rej, NULL);
    *acc = (double)right / n;
    *auc_head = auc(p, y, n);
    *auc_top = auc(t, y, n);
    free(p), free(t);
}

speck_accept_head *speck_accept_head_train(const float *X, const uint8_t *y, int64_t n, int n_embd,
                                           const speck_accept_train_params *p,
                                           speck_accept_report *rep) {
    const int64_t n_val = (int64_t)(n * p->val_fraction), n_tr = n - n_val;
    if (n_tr < 2 || p->steps < 0 || p->batch < 1 || !(p->lr > 0) || !(p->w_rej > 0)) {
        speck_set_error(SPECK_ERR_ARG,
                        "train-accept: %lld training samples (need 2 or more), steps %d, batch %d, "
                        "lr %g, reject weight %g",
                        (long long)n_tr, p->steps, p->batch, (double)p->lr, (double)p->w_rej);
        return NULL;
    }
    speck_accept_head *h = speck_accept_head_new(n_embd, p->n_hidden, p->seed);
    if (!h) return NULL;
    const int ni = h->n_in, nh = h->n_hidden;
    // Standardise each feature over the training split (scale 1 where it does not vary).
    int64_t n_acc = 0;
    for (int64_t i = 0; i < n_tr; i++) n_acc += y[i] != 0;
    for (int j = 0; j < ni; j++) {
        double m = 0, v = 0;
        for (int64_t i = 0; i < n_tr; i++) m += X[(size_t)i * ni + j];
        m /= n_tr;
        for (int64_t i = 0; i < n_tr; i++) {
            const double d = X[(size_t)i * ni + j] - m;
            v += d * d;
        }
        v /= n_tr;
        h->mean[j] = (float)m;
        h->scale[j] = v > 1e-12 ? (float)(1.0 / sqrt(v)) : 1.0f;
    }
    // b2 starts at the weighted log-odds of acceptance, the best constant predictor.
    const int64_t np_ = speck_accept_head_n_params(h);
    const double pos = (double)n_acc, neg = (double)(n_tr - n_acc) * p->w_rej;
    h->theta[np_ - 1] = (float)log((pos + 0.5) / (neg + 0.5));
    float *grad = calloc((size_t)np_, sizeof *grad), *m = calloc((size_t)np_, sizeof *m),
          *v = calloc((size_t)np_, sizeof *v), *Xb = malloc((size_t)p->batch * ni * sizeof *Xb);
    uint8_t *yb = malloc((size_t)p->batch);
    if (!grad || !m || !v || !Xb || !yb) {
        speck_set_error(SPECK_ERR_NOMEM, "out of memory");
        speck_accept_head_free(h);
        h = NULL;
        goto out;
    }
    speck_adamw_params ap = speck_adamw_default();
    ap.lr = p->lr;
    ap.min_lr = p->lr * 0.1f;
    ap.warmup_steps = p->steps / 20;
    ap.total_steps = p->steps;
    ap.weight_decay = p->weight_decay;
    uint64_t r = p->seed * 0x2545F4914F6CDD1DULL + 7;
    const int bs = p->batch < n_tr ? p->batch : (int)n_tr;
    for (int step = 0; step < p->steps; step++) {
        for (int b = 0; b < bs; b++) { // minibatch drawn with replacement
            r = r * 6364136223846793005ULL + 1442695040888963407ULL;
            const int64_t i = (int64_t)((r >> 33) % (uint64_t)n_tr);
            memcpy(Xb + (size_t)b * ni, X + (size_t)i * ni, (size_t)ni * sizeof *Xb);
            yb[b] = y[i];
        }
        memset(grad, 0, (size_t)np_ * sizeof *grad);
        const double L = speck_accept_head_loss(h, Xb, yb, bs, p->w_rej, grad);
        float clip;
        if (!isfinite(L) ||
            speck_adamw_begin(&ap, step, speck_adamw_grad_norm(grad, np_), &clip)) {
            if (!isfinite(L)) speck_set_error(SPECK_ERR_RANGE, "train-accept: loss diverged");
            speck_accept_head_free(h);
            h = NULL;
            goto out;
        }
        // weight decay on the two matrices only
        float *w1 = h->theta, *b1 = w1 + (size_t)nh * ni, *w2 = b1 + nh, *b2 = w2 + nh;
        const size_t o_b1 = (size_t)nh * ni, o_w2 = o_b1 + nh, o_b2 = o_w2 + nh;
        speck_adamw_update(&ap, step, clip, true, w1, grad, m, v, (int64_t)o_b1);
        speck_adamw_update(&ap, step, clip, false, b1, grad + o_b1, m + o_b1, v + o_b1, nh);
        speck_adamw_update(&ap, step, clip, true, w2, grad + o_w2, m + o_w2, v + o_w2, nh);
        speck_adamw_update(&ap, step, clip, false, b2, grad + o_b2, m + o_b2, v + o_b2, 1);
    }
    if (rep) {
        memset(rep, 0, sizeof *rep);
        rep->n_train = n_tr, rep->n_val = n_val;
        rep->accept_rate = n_tr ? (double)n_acc / n_tr : 0;
        double a, b;
        evaluate(h, X, y, n_tr, p->w_rej, &rep->train_bce, &a, &b, &rep->train_auc_top);
        (void)a, (void)b;
        evaluate(h, X + (size_t)n_tr * ni, y + n_tr, n_val, p->w_rej, &rep->val_bce, &rep->val_acc,
                 &rep->val_auc_head, &rep->val_auc_top);
    }
out:
    free(grad), free(m), free(v), free(Xb), free(yb);
    return h;
}
