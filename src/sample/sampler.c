// Sampling: repetition penalty, temperature, top-k / top-p / min-p filtering, seeded draws.
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "speck.h"
#include "core/simd_math.h"

struct speck_sampler {
    speck_sampler_params p;
    int n_vocab;
    uint64_t rng[4];
    int32_t *hist; // ring buffer of the last repeat_last_n accepted tokens
    int hist_n, hist_pos;
    float *buf;   // (n_vocab) penalised logits
    int32_t *idx; // (n_vocab) sort order
};

bool speck_sampler_is_greedy(const speck_sampler *s) {
    return s->p.temperature <= 0.0f;
}

speck_sampler_params speck_sampler_default(void) {
    return (speck_sampler_params){.temperature = 0.0f,
                                  .top_k = 0,
                                  .top_p = 1.0f,
                                  .min_p = 0.0f,
                                  .repeat_penalty = 1.0f,
                                  .repeat_last_n = 64,
                                  .seed = 42};
}

// splitmix64 seeds xoshiro256**: any seed, including 0, gives a well-mixed state.
static uint64_t splitmix(uint64_t *x) {
    uint64_t z = (*x += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

static uint64_t rotl(uint64_t x, int k) {
    return (x << k) | (x >> (64 - k));
}

static uint64_t next(uint64_t *s) {
    uint64_t r = rotl(s[1] * 5, 7) * 9, t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return r;
}

double speck_sampler_uniform(speck_sampler *s) {
    return (next(s->rng) >> 11) * 0x1.0p-53;
}

void speck_sampler_reset(speck_sampler *s) {
    uint64_t x = s->p.seed;
    for (int i = 0; i < 4; i++) s->rng[i] = splitmix(&x);
    s->hist_n = s->hist_pos = 0;
}

speck_sampler *speck_sampler_new(const speck_sampler_params *p, int n_vocab) {
    if (n_vocab <= 0) {
        speck_set_error(SPECK_ERR_ARG, "sampler: vocabulary size %d", n_vocab);
        return NULL;
    }
    speck_sampler *s = calloc(1, sizeof *s);
    if (!s) goto oom;
    s->p = p ? *p : speck_sampler_default();
    if (s->p.repeat_last_n < 0) s->p.repeat_last_n = 0;
    s->n_vocab = n_vocab;
    s->buf = malloc((size_t)n_vocab * sizeof(float));
    s->idx = malloc((size_t)n_vocab * sizeof(int32_t));
    s->hist = malloc((size_t)(s->p.repeat_last_n + 1) * sizeof(int32_t));
    if (!s->buf || !s->idx || !s->hist) goto oom;
    speck_sampler_reset(s);
    return s;
oom:
    speck_sampler_free(s);
    speck_set_error(SPECK_ERR_NOMEM, "out of memory");
    return NULL;
}

void speck_sampler_free(speck_sampler *s) {
    if (!s) return;
    free(s->buf);
    free(s->idx);
    free(s->hist);
    free(s);
}

void speck_sampler_accept(speck_sampler *s, int32_t token) {
    if (s->p.repeat_last_n <= 0) return;
    s->hist[s->hist_pos] = token;
    s->hist_pos = (s->hist_pos + 1) % s->p.repeat_last_n;
    if (s->hist_n < s->p.repeat_last_n) s->hist_n++;
}

int32_t speck_argmax(const float *x, int n) {
    int32_t best = 0;
    for (int i = 1; i < n; i++)
        if (x[i] > x[best]) best = i;
    return best;
}

static _Thread_local const float *t_sort_vals;

static int cmp_desc(const void *a, const void *b) {
    float x = t_sort_vals[*(const int32_t *)a], y = t_sort_vals[*(const int32_t *)b];
    if (x != y) return x > y ? -1 : 1;
    return *(const int32_t *)a - *(const int32_t *)b; // stable on ties: lower id first
}

// probs[i] = e^((l[i] - mx) * inv_t); returns their sum, accumulated in 8 double lanes in a
// fixed order (the loops vectorise: libm's expf made this ~19 us per token on a 4096 vocabulary).
SPECK_MULTIVERSION
static double softmax_unnormalised(const float *l, int n, float mx, float inv_t, float *probs) {
    for (int i = 0; i < n; i++) probs[i] = speck_exp_poly((l[i] - mx) * inv_t);
    double acc[8] = {0}, sum = 0;
    int i = 0;
    for (; i + 8 <= n; i += 8)
        for (int j = 0; j < 8; j++) acc[j] += probs[i + j];
    for (int j = 0; j < 8; j++) sum += acc[j];
    for (; i < n; i++) sum += probs[i];
    return sum;
}

void speck_sampler_probs(speck_sampler *s, const float *logits, float *probs) {
    int n = s->n_vocab;
    float *l = s->buf;
    memcpy(l, logits, (size_t)n * sizeof(float));
    // Repetition penalty as in CTRL / llama.cpp: divide positive logits, multiply negative ones,
    // once per distinct token in the window.
    if (s->p.repeat_penalty != 1.0f && s->hist_n > 0) {
        for (int i = 0; i < s->hist_n; i++) {
            int32_t t = s->hist[i];
            if (t < 0 || t >= n) continue;
            int seen = 0;
            for (int j = 0; j < i; j++) seen |= s->hist[j] == t;
            if (seen) continue;
            l[t] = l[t] > 0 ? l[t] / s->p.repeat_penalty : l[t] * s->p.repeat_penalty;
        }
    }
    memset(probs, 0, (size_t)n * sizeof(float));
    if (s->p.temperature <= 0.0f) {
        probs[speck_argmax(l, n)] = 1.0f;
        return;
    }
    const double sum =
        softmax_unnormalised(l, n, l[speck_argmax(l, n)], 1.0f / s->p.temperature, probs);
    for (int i = 0; i < n; i++) probs[i] = (float)(probs[i] / sum);
    int filter = (s->p.top_k > 0 && s->p.top_k < n) || s->p.top_p < 1.0f || s->p.min_p > 0.0f;
    if (!filter) return;
    // Sort candidates by probability (descending), then cut: top-k, min-p (relative to the most
    // likely token), top-p (smallest prefix with mass >= p); renormalise what is kept.
    for (int i = 0; i < n; i++) s->idx[i] = i;
    t_sort_vals = probs;
    qsort(s->idx, (size_t)n, sizeof(int32_t), cmp_desc);
    int keep = n;
    if (s->p.top_k > 0 && s->p.top_k < keep) keep = s->p.top_k;
    if (s->p.min_p > 0.0f) {
        float thr = s->p.min_p * probs[s->idx[0]];
        int k = 1;
        while (k < keep && probs[s->idx[k]] >= thr) k++;
        keep = k;
    }
    if (s->p.top_p < 1.0f) {
        double cum = 0;
        int k = 0;
        while (k < keep) {
            cum += probs[s->idx[k++]];
            if (cum >= s->p.top_p) break;
        }
        keep = k;
    }
    double kept = 0;
    for (int k = 0; k < keep; k++) kept += probs[s->idx[k]];
    for (int k = keep; k < n; k++) probs[s->idx[k]] = 0.0f;
    for (int k = 0; k < keep; k++) probs[s->idx[k]] = (float)(probs[s->idx[k]] / kept);
}

int32_t speck_sampler_sample(speck_sampler *s, const float *logits) {
    int n = s->n_vocab;
    float *probs = malloc((size_t)n * sizeof(float));
    if (!probs) return speck_argmax(logits, n);
    speck_sampler_probs(s, logits, probs);
    double r = speck_sampler_uniform(s), cum = 0;
    int32_t tok = -1, last = 0;
    for (int i = 0; i < n; i++) {
        if (probs[i] <= 0.0f) continue;
        last = i;
        cum += probs[i];
        if (r < cum) {
            tok = i;
            break;
        }
    }
    free(probs);
    return tok >= 0 ? tok : last; // rounding left r above the total: take the last candidate
}
