// Sampler semantics: greedy, temperature, top-k / top-p / min-p, repetition penalty, seeding.
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "speck.h"
#include "test_util.h"

#define V 6

static void probs_of(speck_sampler_params p, const float *logits, float *out) {
    speck_sampler *s = speck_sampler_new(&p, V);
    speck_sampler_probs(s, logits, out);
    speck_sampler_free(s);
}

int main(void) {
    // softmax at T=1 of these logits: ~[0.5, 0.3, 0.15, 0.05, 0, 0] (log-probabilities)
    float lg[V] = {logf(0.5f), logf(0.3f), logf(0.15f), logf(0.05f), -1e9f, -1e9f};
    float p[V];
    speck_sampler_params base = speck_sampler_default();

    probs_of(base, lg, p);
    CHECK(p[0] == 1.0f && p[1] == 0.0f, "greedy is a point mass at the argmax");
    float tie[V] = {1, 3, 3, 0, 0, 0};
    CHECK(speck_argmax(tie, V) == 1, "argmax takes the first of equal maxima");

    speck_sampler_params t1 = base;
    t1.temperature = 1.0f;
    probs_of(t1, lg, p);
    CHECK(fabsf(p[0] - 0.5f) < 1e-5f && fabsf(p[3] - 0.05f) < 1e-5f, "T=1 is the softmax");
    speck_sampler_params t2 = t1;
    t2.temperature = 2.0f;
    probs_of(t2, lg, p);
    // softmax(l / 2) ∝ sqrt(p): 0.5^.5 / (0.5^.5 + 0.3^.5 + 0.15^.5 + 0.05^.5)
    double z = sqrt(0.5) + sqrt(0.3) + sqrt(0.15) + sqrt(0.05);
    CHECK(fabs(p[0] - sqrt(0.5) / z) < 1e-5, "T=2 flattens as softmax(l/T)");

    speck_sampler_params k = t1;
    k.top_k = 2;
    probs_of(k, lg, p);
    CHECK(fabsf(p[0] - 0.625f) < 1e-5f && fabsf(p[1] - 0.375f) < 1e-5f && p[2] == 0.0f,
          "top-k=2 keeps and renormalises the two most likely");
    speck_sampler_params tp = t1;
    tp.top_p = 0.7f;
    probs_of(tp, lg, p);
    CHECK(p[0] > 0 && p[1] > 0 && p[2] == 0.0f,
          "top-p=0.7 keeps the smallest prefix with mass >= 0.7");
    tp.top_p = 0.85f;
    probs_of(tp, lg, p);
    CHECK(p[2] > 0 && p[3] == 0.0f, "top-p=0.85 keeps three");
    speck_sampler_params mp = t1;
    mp.min_p = 0.35f; // threshold 0.175: keeps 0.5 and 0.3
    probs_of(mp, lg, p);
    CHECK(p[1] > 0 && p[2] == 0.0f, "min-p keeps tokens >= min_p * max");

    // Repetition penalty divides a positive logit / multiplies a negative one.
    float pos[V] = {2.0f, 1.9f, 0, 0, 0, 0};
    speck_sampler_params rp = base;
    rp.repeat_penalty = 1.5f;
    speck_sampler *s = speck_sampler_new(&rp, V);
    CHECK(speck_sampler_sample(s, pos) == 0, "without history the max wins");
    speck_sampler_accept(s, 0);
    CHECK(speck_sampler_sample(s, pos) == 1, "penalised token loses (2/1.5 < 1.9)");
    speck_sampler_reset(s);
    CHECK(speck_sampler_sample(s, pos) == 0, "reset clears the history");
    speck_sampler_free(s);

    // Seeds: same seed, same draws; the empirical distribution matches the probabilities.
    speck_sampler *a = speck_sampler_new(&t1, V), *b = speck_sampler_new(&t1, V);
    int same = 1, counts[V] = {0};
    const int N = 40000;
    for (int i = 0; i < N; i++) {
        int x = speck_sampler_sample(a, lg), y = speck_sampler_sample(b, lg);
        same &= x == y;
        counts[x]++;
    }
    CHECK(same, "same seed gives the same sequence");
    // Chi-square with 3 degrees of freedom over the four possible tokens; 16.27 is the 0.1 %
    // critical value, so a correct sampler fails this (fixed-seed) check with p < 0.001.
    double chi = 0, expect[4] = {0.5, 0.3, 0.15, 0.05};
    for (int i = 0; i < 4; i++) chi += pow(counts[i] - N * expect[i], 2) / (N * expect[i]);
    CHECK(chi < 16.27 && counts[4] == 0 && counts[5] == 0,
          "draws follow the distribution (chi2 %.2f)", chi);
    speck_sampler_params other = t1;
    other.seed = 7;
    speck_sampler *c = speck_sampler_new(&other, V);
    speck_sampler_reset(a);
    int differ = 0;
    for (int i = 0; i < 64; i++)
        differ |= speck_sampler_sample(a, lg) != speck_sampler_sample(c, lg);
    CHECK(differ, "a different seed gives a different sequence");
    speck_sampler_free(a);
    speck_sampler_free(b);
    speck_sampler_free(c);
    CHECK(speck_sampler_new(&t1, 0) == NULL, "vocabulary of 0 is rejected");
    return test_summary();
}
