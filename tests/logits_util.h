// Helpers of the adapter tests (test_lora.c, test_adapt_init.c): logits of a token sequence from
// a fresh context, and the largest absolute difference of two logit arrays.
#ifndef SPECK_LOGITS_UTIL_H
#define SPECK_LOGITS_UTIL_H

#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "speck.h"

// (n, n_vocab) logits, malloc'd; NULL (and a line printed) when the forward pass fails.
static inline float *run_logits(speck_model *m, const int32_t *tok, int n) {
    const int V = speck_model_hparams(m)->n_vocab;
    float *lg = malloc((size_t)n * V * sizeof(float));
    speck_ctx *c = speck_ctx_new(m, 256);
    if (!c || !lg || speck_forward(c, n, tok, NULL, NULL, NULL, 0, lg)) {
        printf("forward failed: %s\n", speck_last_error());
        free(lg);
        lg = NULL;
    }
    speck_ctx_free(c);
    return lg;
}

// max |a - b| over n values; *scale (if given) = max |b|.
static inline double max_abs(const float *a, const float *b, size_t n, double *scale) {
    double d = 0, s = 0;
    for (size_t i = 0; i < n; i++) {
        d = fmax(d, fabs((double)a[i] - b[i]));
        s = fmax(s, fabs((double)b[i]));
    }
    if (scale) *scale = s;
    return d;
}

#endif
