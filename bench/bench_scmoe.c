// SCMoE step cost: one decode step of plain decoding, of speck_scmoe (both paths as one two-row
// pass over one shared cache) and of the two paths as two separate one-row passes over two
// contexts (what running the model twice would cost), alternated step by step in one process.
//
//   bench_scmoe MODEL.gguf [STEPS (default 64)] [PROMPT_TOKENS (default 32)] [WEAK_RANK (2)]
//
// Every round times one step of each (the order rotated each round), each appending one token,
// so the three caches grow alike; reported: median seconds per step and the median of the
// per-round ratios to plain decoding (which cancels the VM's drift both saw).
#define _POSIX_C_SOURCE 200809L
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "model/ctx_internal.h"
#include "speck.h"

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

static int cmp(const void *a, const void *b) {
    const double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double median(double *v, int n) {
    qsort(v, (size_t)n, sizeof *v, cmp);
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

static int die(const char *what) {
    fprintf(stderr, "bench_scmoe: %s: %s\n", what, speck_last_error());
    return 1;
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: bench_scmoe MODEL.gguf [STEPS] [PROMPT_TOKENS] [WEAK_RANK]\n");
        return 2;
    }
    const int steps = argc > 2 ? atoi(argv[2]) : 64, np = argc > 3 ? atoi(argv[3]) : 32;
    speck_scmoe_params p = speck_scmoe_default();
    if (argc > 4) p.weak_rank = atoi(argv[4]);
    speck_model *m = speck_model_load(argv[1]);
    if (!m) return die("load");
    const int V = speck_model_hparams(m)->n_vocab, n_ctx = np + steps + 8;
    speck_scmoe *s = speck_scmoe_new(m, n_ctx, SPECK_TYPE_F16, &p);
    speck_ctx *plain = speck_ctx_new_kv(m, n_ctx, SPECK_TYPE_F16);
    speck_ctx *cs = speck_ctx_new_kv(m, n_ctx, SPECK_TYPE_F16);
    speck_ctx *cw = speck_ctx_new_kv(m, n_ctx, SPECK_TYPE_F16);
    float *lg = malloc((size_t)3 * V * sizeof(float));
    int32_t *tok = malloc((size_t)(np + steps) * sizeof(int32_t));
    double *t = malloc((size_t)3 * steps * sizeof(double)), *r = malloc((size_t)2 * steps * sizeof(double));
    if (!s || !plain || !cs || !cw) return die("contexts");
    if (!lg || !tok || !t || !r) return 1;
    for (int i = 0; i < np + steps; i++) tok[i] = (int32_t)((i * 7919 + 13) % V);
    int rank1 = p.weak_rank;
    const int last = np - 1;
    if (speck_scmoe_eval(s, np, tok, lg, NULL, NULL) ||
        speck_forward(plain, np, tok, NULL, NULL, &last, 1, lg) ||
        speck_forward(cs, np, tok, NULL, NULL, &last, 1, lg))
        return die("prefill");
    cw->moe_rank = NULL; // the weak context's prompt: rank-R routing on every row
    {
        int *rk = malloc((size_t)np * sizeof(int));
        for (int i = 0; i < np; i++) rk[i] = rank1;
        cw->moe_rank = rk;
        const int rc = speck_forward(cw, np, tok, NULL, NULL, &last, 1, lg);
        cw->moe_rank = NULL;
        free(rk);
        if (rc) return die("prefill");
    }
    for (int k = 0; k < steps; k++) {
        const int32_t x = tok[np + k];
        double dt[3];
        for (int j = 0; j < 3; j++) {
            const int which = (j + k) % 3;
            const double t0 = now_s();
            int rc = 0;
            if (which == 0)
                rc = speck_forward(plain, 1, &x, NULL, NULL, NULL, 1, lg);
            else if (which == 1)
                rc = speck_scmoe_eval(s, 1, &x, lg, NULL, NULL);
            else {
                rc = speck_forward(cs, 1, &x, NULL, NULL, NULL, 1, lg);
                cw->moe_rank = &rank1;
                if (!rc) rc = speck_forward(cw, 1, &x, NULL, NULL, NULL, 1, lg + V);
                cw->moe_rank = NULL;
                if (!rc) speck_scmoe_scores(lg, lg + V, V, p.alpha, p.beta, lg + 2 * (size_t)V);
            }
            dt[which] = now_s() - t0;
            if (rc) return die("step");
        }
        for (int j = 0; j < 3; j++) t[j * steps + k] = dt[j];
        r[k] = dt[1] / dt[0];
        r[steps + k] = dt[2] / dt[0];
    }
    const char *name[3] = {"plain", "scmoe (one 2-row pass)", "two 1-row passes"};
    printf("%s: %d steps after a %d-token prompt, weak rank %d, %d threads\n\n", argv[1], steps,
           np, p.weak_rank, speck_get_threads());
    printf("| decoding | ms / step (median) | vs plain (median of per-step ratios) |\n"
           "| --- | ---: | ---: |\n");
    for (int j = 0; j < 3; j++)
        printf("| %s | %.2f | %.2fx |\n", name[j], 1e3 * median(t + (size_t)j * steps, steps),
               j ? median(r + (size_t)(j - 1) * steps, steps) : 1.0);
    free(lg), free(tok), free(t), free(r);
    speck_ctx_free(plain), speck_ctx_free(cs), speck_ctx_free(cw);
    speck_scmoe_free(s);
    speck_model_free(m);
    return 0;
}
