// Test driver for tests/reference/alloc_ref.py: the per-block ratio allocations on given inputs.
//
//   alloc_dump ecoflap N SPARSITY MAX   then N lines "size score" on stdin
//   alloc_dump tyr N SPARSITY MAX ROUNDS STEP POP GENS SEED   then N lines "size a c" on stdin:
//       the fitness sum_i a_i (ratio_i - c_i)^2 + coupling * (ratio_0 - ratio_1)^2, coupling
//       the last line's single number
// Prints the N ratios (%.17g), then for tyr the fitness of the result and the number of
// fitness calls; on error the message on stderr, exit 1.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "speck.h"

typedef struct {
    int n;
    const double *a, *c;
    double coupling;
    long calls;
} quad;

static double quad_fitness(const double *r, void *user) {
    quad *q = user;
    double f = 0;
    for (int i = 0; i < q->n; i++) f += q->a[i] * (r[i] - q->c[i]) * (r[i] - q->c[i]);
    if (q->n > 1) f += q->coupling * (r[0] - r[1]) * (r[0] - r[1]);
    q->calls++;
    return f;
}

int main(int argc, char **argv) {
    const bool tyr = argc == 10 && !strcmp(argv[1], "tyr");
    if (!(argc == 5 && !strcmp(argv[1], "ecoflap")) && !tyr) {
        fprintf(stderr, "usage: alloc_dump ecoflap N S MAX | tyr N S MAX ROUNDS STEP POP GENS "
                        "SEED (inputs on stdin)\n");
        return 2;
    }
    const int n = atoi(argv[2]);
    const double s = atof(argv[3]), mx = atof(argv[4]);
    if (n < 1 || n > 4096) return 2;
    int64_t *size = malloc((size_t)n * sizeof *size);
    double *a = malloc((size_t)n * sizeof *a), *c = malloc((size_t)n * sizeof *c);
    double *ratio = malloc((size_t)n * sizeof *ratio);
    if (!size || !a || !c || !ratio) return 2;
    for (int i = 0; i < n; i++) {
        long long sz;
        if (scanf("%lld %lf", &sz, &a[i]) != 2 || (tyr && scanf("%lf", &c[i]) != 1)) return 2;
        size[i] = sz;
    }
    int rc;
    if (!tyr) {
        rc = speck_ecoflap_ratios(n, a, size, s, mx, ratio);
    } else {
        quad q = {n, a, c, 0, 0};
        if (scanf("%lf", &q.coupling) != 1) return 2;
        const speck_tyr_opts o = {atoi(argv[5]), atof(argv[6]), atoi(argv[7]), atoi(argv[8]),
                                  strtoull(argv[9], NULL, 10)};
        rc = speck_tyr_search(n, size, s, mx, &o, quad_fitness, &q, ratio);
        if (!rc) {
            for (int i = 0; i < n; i++) printf("%.17g\n", ratio[i]);
            const long calls = q.calls;
            printf("%.17g\n%ld\n", quad_fitness(ratio, &q), calls);
        }
    }
    if (rc)
        fprintf(stderr, "%s\n", speck_last_error());
    else if (!tyr)
        for (int i = 0; i < n; i++) printf("%.17g\n", ratio[i]);
    free(size), free(a), free(c), free(ratio);
    return rc ? 1 : 0;
}
