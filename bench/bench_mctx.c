// Decode throughput of many sequences in one pass (speck_mctx) against the same sequences
// decoded one at a time with speck_forward (one context each), at batch sizes 1..N, the
// sequences at a given depth. Both runs in the same process, alternating, median of repeats.
// usage: bench_mctx MODEL.gguf [DEPTH=64] [STEPS=32] [REPEATS=5] [BATCHES=1,4,16]
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "speck.h"

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static int cmp(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: bench_mctx MODEL.gguf [DEPTH] [STEPS] [REPEATS] [BATCHES]\n");
        return 2;
    }
    const int depth = argc > 2 ? atoi(argv[2]) : 64, steps = argc > 3 ? atoi(argv[3]) : 32;
    const int reps = argc > 4 ? atoi(argv[4]) : 5;
    const char *batches = argc > 5 ? argv[5] : "1,4,16";
    speck_model *m = speck_model_load(argv[1]);
    if (!m) {
        fprintf(stderr, "bench_mctx: %s\n", speck_last_error());
        return 1;
    }
    const int V = speck_model_hparams(m)->n_vocab, len = depth + steps + 1;
    printf("| batch | one pass for all (tok/s) | one context each (tok/s) | ratio |\n");
    printf("| --- | --- | --- | --- |\n");
    for (const char *p = batches; *p;) {
        const int B = atoi(p);
        p = strchr(p, ',') ? strchr(p, ',') + 1 : p + strlen(p);
        float *lg = malloc((size_t)B * V * sizeof(float));
        int32_t *tok = malloc((size_t)B * depth * sizeof(int32_t));
        int32_t *sq = malloc((size_t)B * depth * sizeof(int32_t));
        int32_t *ps = malloc((size_t)B * depth * sizeof(int32_t));
        double tb[64], ts[64];
        int none = 0; // no logits for the prefill
        for (int r = 0; r < reps && r < 64; r++) {
            // Batched: B sequences prefilled to depth, then `steps` passes of B tokens.
            speck_mctx *mc = speck_mctx_new(m, B * ((len + 15) / 16), 16, B, len);
            for (int s = 0; s < B; s++) speck_mctx_seq_new(mc);
            for (int i = 0; i < B * depth; i++)
                tok[i] = (i * 7 + 3) % V, sq[i] = i / depth, ps[i] = i % depth;
            for (int c = 0; c < B * depth; c += 256) {
                const int n = B * depth - c < 256 ? B * depth - c : 256;
                speck_mctx_forward(mc, n, tok + c, sq + c, ps + c, &none, 0, lg);
            }
            double t0 = now();
            for (int k = 0; k < steps; k++) {
                for (int s = 0; s < B; s++) tok[s] = (k + s) % V, sq[s] = s, ps[s] = depth + k;
                speck_mctx_forward(mc, B, tok, sq, ps, NULL, 0, lg);
            }
            tb[r] = B * steps / (now() - t0);
            speck_mctx_free(mc);
            // One context per sequence, decoded in turn.
            speck_ctx **cs = malloc((size_t)B * sizeof *cs);
            for (int s = 0; s < B; s++) {
                cs[s] = speck_ctx_new(m, len);
                speck_forward(cs[s], depth, tok, NULL, NULL, &none, 0, lg);
            }
            t0 = now();
            for (int k = 0; k < steps; k++)
                for (int s = 0; s < B; s++) {
                    int32_t t = (k + s) % V;
                    speck_forward(cs[s], 1, &t, NULL, NULL, NULL, 0, lg);
                }
            ts[r] = B * steps / (now() - t0);
            for (int s = 0; s < B; s++) speck_ctx_free(cs[s]);
            free(cs);
        }
        qsort(tb, (size_t)reps, sizeof(double), cmp);
        qsort(ts, (size_t)reps, sizeof(double), cmp);
        printf("| %d | %.0f | %.0f | %.2f |\n", B, tb[reps / 2], ts[reps / 2],
               tb[reps / 2] / ts[reps / 2]);
        fflush(stdout);
        free(lg), free(tok), free(sq), free(ps);
    }
    speck_model_free(m);
    return 0;
}
