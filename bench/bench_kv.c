// Micro-benchmark of attention over the KV cache types: one decode token's attention for a
// model's shapes (every layer's KV groups, their query heads at once, as the streaming forward
// calls speck_attend_group) over n cached keys with an f32, f16, Q8_0 and Q4_0 cache, the types
// alternated round by round in one process so that the machine's drift hits all alike.
//
// Built by CMake as `bench_kv`. Run: ./bench_kv [keys,...] [rounds] [layers] [groups] [heads]
// [head_dim] (defaults: 1024,4096; 15; tinyllama-1.1b's 22 layers of 4 KV groups, 8 query heads
// each, head size 64). One thread; each layer's cache is its own buffer, as in a context, and
// the whole cache (all layers) is larger than the caches at 1024 keys and up, so the rows come
// from memory as in a real pass. Prints the median CPU time per token and per cached key and
// layer, and the cache's bytes.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "kernels/kernels.h"
#include "speck.h"

// This thread's CPU time: on a shared machine the wall time of a pass mostly measures the other
// processes' time slices; the CPU time counts only the pass's own (caches are still shared).
static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static int cmp(const void *a, const void *b) {
    const double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

int main(int argc, char **argv) {
    int keys[8] = {1024, 4096}, nkeys = 2;
    if (argc > 1) {
        nkeys = 0;
        for (char *s = strtok(argv[1], ","); s && nkeys < 8; s = strtok(NULL, ","))
            keys[nkeys++] = atoi(s);
    }
    const int rounds = argc > 2 ? atoi(argv[2]) : 15;
    const int layers = argc > 3 ? atoi(argv[3]) : 22, groups = argc > 4 ? atoi(argv[4]) : 4;
    const int heads = argc > 5 ? atoi(argv[5]) : 8, hd = argc > 6 ? atoi(argv[6]) : 64;
    const speck_type types[] = {SPECK_TYPE_F32, SPECK_TYPE_F16, SPECK_TYPE_Q8_0, SPECK_TYPE_Q4_0};
    enum { NTYPES = 4 };
    printf("attention of one token: %d layers x %d KV groups x %d query heads, head size %d, "
           "isa %s, 1 thread, medians of %d rounds of thread CPU time (types alternated)\n",
           layers, groups, heads, hd, speck_kernels_isa(), rounds);
    printf("| keys | KV type | cache MiB | ms per token | ns per key and layer | vs f16 |\n");
    printf("| ---: | --- | ---: | ---: | ---: | ---: |\n");
    float *row = malloc(sizeof(float) * (size_t)hd);
    float *q = malloc(sizeof(float) * (size_t)heads * hd),
          *out = malloc(sizeof(float) * heads * hd);
    for (int i = 0; i < heads * hd; i++) q[i] = (float)(rand() % 2001 - 1000) / 1000.0f;
    for (int ki = 0; ki < nkeys; ki++) {
        const int n = keys[ki];
        float *sc = malloc(sizeof(float) * (size_t)64 * n);
        char **k[NTYPES], **v[NTYPES];
        size_t rowb[NTYPES];
        for (int t = 0; t < NTYPES; t++) {
            rowb[t] = speck_type_row_size(types[t], hd);
            k[t] = malloc(sizeof(char *) * (size_t)layers);
            v[t] = malloc(sizeof(char *) * (size_t)layers);
            for (int l = 0; l < layers; l++) {
                // (groups, n, hd) per layer, as a context stores it
                k[t][l] = malloc(rowb[t] * (size_t)groups * n);
                v[t][l] = malloc(rowb[t] * (size_t)groups * n);
                for (int64_t r = 0; r < (int64_t)groups * n; r++) {
                    for (int d = 0; d < hd; d++) row[d] = (float)(rand() % 2001 - 1000) / 1000.0f;
                    speck_quantize_row(types[t], row, k[t][l] + r * rowb[t], hd);
                    for (int d = 0; d < hd; d++) row[d] = (float)(rand() % 2001 - 1000) / 1000.0f;
                    speck_quantize_row(types[t], row, v[t][l] + r * rowb[t], hd);
                }
            }
        }
        double *ms = malloc(sizeof(double) * NTYPES * rounds);
        const float scale = 0.125f;
        for (int r = 0; r < rounds + 1; r++)
            for (int i = 0; i < NTYPES; i++) {
                const int t = (i + r) % NTYPES; // rotate the order every round
                const double t0 = now();
                for (int l = 0; l < layers; l++)
                    for (int g = 0; g < groups; g++)
                        speck_attend_group(q, 0, 1, heads, &n, NULL, 0,
                                           k[t][l] + (size_t)g * n * rowb[t],
                                           v[t][l] + (size_t)g * n * rowb[t], types[t], hd, hd,
                                           scale, 0.0f, sc, n, out, 0);
                if (r > 0) ms[t * rounds + r - 1] = 1e3 * (now() - t0); // round 0: warm-up
            }
        double med[NTYPES];
        for (int t = 0; t < NTYPES; t++) {
            qsort(ms + t * rounds, (size_t)rounds, sizeof(double), cmp);
            med[t] = ms[t * rounds + rounds / 2];
        }
        for (int t = 0; t < NTYPES; t++)
            printf("| %d | %s | %.1f | %.3f | %.2f | %.2fx |\n", n, speck_type_name(types[t]),
                   2.0 * rowb[t] * groups * n * layers / 1048576.0, med[t],
                   1e6 * med[t] / ((double)n * layers), med[t] / med[1]);
        for (int t = 0; t < NTYPES; t++) {
            for (int l = 0; l < layers; l++) free(k[t][l]), free(v[t][l]);
            free(k[t]), free(v[t]);
        }
        free(ms), free(sc);
    }
    free(row), free(q), free(out);
    return 0;
}
