// Bit allocation under a size budget: one type per tensor minimizing the summed measured error
// (a multiple-choice knapsack), solved exactly by dynamic programming over the budget.
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "calib/calib.h"

int speck_alloc_solve(int n_items, int n_opt, const double *cost, const int64_t *size,
                      int64_t budget, int64_t unit, int *choice) {
    if (n_items <= 0 || n_opt <= 0 || unit <= 0 || budget < 0)
        return speck_set_error(SPECK_ERR_ARG, "alloc: bad problem");
    const int64_t cap = budget / unit; // capacity in units; sizes round up, so it is never exceeded
    if (cap > (int64_t)1 << 26)
        return speck_set_error(SPECK_ERR_ARG, "alloc: %lld units of budget: use a coarser unit",
                               (long long)cap);
    // best[c]: least cost of the items so far within c units; pick[i][c]: item i's option there.
    double *best = malloc((size_t)(cap + 1) * sizeof *best);
    double *next = malloc((size_t)(cap + 1) * sizeof *next);
    int8_t *pick = malloc((size_t)n_items * (size_t)(cap + 1));
    if (!best || !next || !pick || n_opt > 127) {
        free(best), free(next), free(pick);
        return speck_set_error(SPECK_ERR_NOMEM, "alloc: out of memory");
    }
    for (int64_t c = 0; c <= cap; c++) best[c] = 0;
    for (int i = 0; i < n_items; i++) {
        int8_t *pi = pick + (size_t)i * (size_t)(cap + 1);
        for (int64_t c = 0; c <= cap; c++) next[c] = INFINITY, pi[c] = -1;
        for (int k = 0; k < n_opt; k++) {
            const double ck = cost[(size_t)i * n_opt + k];
            const int64_t s = size[(size_t)i * n_opt + k], u = (s + unit - 1) / unit;
            if (!isfinite(ck) || s < 0 || u > cap) continue;
            for (int64_t c = u; c <= cap; c++) {
                const double v = best[c - u] + ck;
                if (v < next[c]) next[c] = v, pi[c] = (int8_t)k;
            }
        }
        double *t = best;
        best = next, next = t;
    }
    // best[] is non-increasing in c only when every capacity was reachable: take the minimum.
    int64_t c = -1;
    for (int64_t k = 0; k <= cap; k++)
        if (isfinite(best[k]) && (c < 0 || best[k] < best[c])) c = k;
    int rc = 0;
    if (c < 0) {
        rc = speck_set_error(SPECK_ERR_ARG,
                             "alloc: even the smallest types exceed the budget of %lld bytes",
                             (long long)budget);
    } else {
        for (int i = n_items - 1; i >= 0; i--) {
            const int k = pick[(size_t)i * (size_t)(cap + 1) + c];
            choice[i] = k;
            c -= (size[(size_t)i * n_opt + k] + unit - 1) / unit;
        }
    }
    free(best), free(next), free(pick);
    return rc;
}
