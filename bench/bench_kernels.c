// Micro-benchmark of speck_matmul: GB/s of weight bytes for decode (n_tok = 1, plus a few small
// batches for draft verification) and GFLOP/s for prefill (n_tok = 512), per weight type.
//
// Built by CMake as `bench_kernels`, or by hand (one line):
//   gcc -O3 -fopenmp -Iinclude -Isrc bench/bench_kernels.c build/libspeck.a $(pkg-config --libs openblas libcjson libpcre2-8) -lm -o bench_kernels
// Run: ./bench_kernels [threads] [isa|best] [hot]   (measure sgemm with `env -u OPENBLAS_CORETYPE`)
//
// Decode streams a set of weight copies larger than any cache (>= 512 MiB in all), cycling
// through them, so the number is DRAM bandwidth as in a real forward pass, not L3 bandwidth.
// With "hot" a single copy is reused (cache-resident: the kernels' compute ceiling).
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "kernels/kernels.h"
#include "speck.h"

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static void fill(float *x, int64_t n, uint64_t seed) {
    for (int64_t i = 0; i < n; i++) {
        seed = seed * 6364136223846793005ull + 1442695040888963407ull;
        x[i] = (float)((seed >> 40) * 0x1p-24) - 0.5f;
    }
}

// W: copies x (n_out, n_in) of type t, each quantized from random floats.
static char *make_weights(speck_type t, int64_t n_out, int64_t n_in, int copies, size_t *bytes) {
    size_t one = speck_type_row_size(t, n_in) * (size_t)n_out;
    char *w = malloc(one * (size_t)copies);
    float *row = malloc((size_t)n_in * sizeof(float));
    for (int64_t r = 0; r < n_out; r++) {
        fill(row, n_in, (uint64_t)r + 1);
        speck_quantize_row(t, row, w + (size_t)r * speck_type_row_size(t, n_in), n_in);
    }
    for (int c = 1; c < copies; c++) memcpy(w + one * (size_t)c, w, one);
    free(row);
    *bytes = one;
    return w;
}

int main(int argc, char **argv) {
    if (argc > 1) speck_set_threads(atoi(argv[1]));
    const int hot = argc > 3 && !strcmp(argv[3], "hot");
    if (argc > 2 && strcmp(argv[2], "best") && speck_kernels_force_isa(argv[2]) != 0) fprintf(stderr, "isa %s unavailable\n", argv[2]);
    printf("isa %s, %d threads, OPENBLAS_CORETYPE=%s\n", speck_kernels_isa(), speck_get_threads(),
           getenv("OPENBLAS_CORETYPE") ? getenv("OPENBLAS_CORETYPE") : "(unset)");
    const speck_type types[] = {SPECK_TYPE_Q4_0, SPECK_TYPE_Q8_0, SPECK_TYPE_F16, SPECK_TYPE_BF16,
                                SPECK_TYPE_F32};
    const int64_t shapes[][2] = {{2048, 2048}, {5632, 2048}};
    const int64_t prefill = 512;
    float *X = malloc((size_t)prefill * 5632 * sizeof(float));
    float *Y = malloc((size_t)prefill * 5632 * sizeof(float));
    fill(X, prefill * 5632, 7);
    for (size_t s = 0; s < 2; s++) {
        const int64_t n_out = shapes[s][0], n_in = shapes[s][1];
        for (size_t ti = 0; ti < sizeof types / sizeof types[0]; ti++) {
            const speck_type t = types[ti];
            size_t one;
            size_t probe = speck_type_row_size(t, n_in) * (size_t)n_out;
            int copies = hot ? 1 : (int)((512u << 20) / probe) + 1;
            char *W = make_weights(t, n_out, n_in, copies, &one);
            printf("%-5s %5lldx%-5lld", speck_type_name(t), (long long)n_out, (long long)n_in);
            // Decode and small batches: GB/s of weight bytes streamed.
            const int64_t toks[] = {1, 4, 16};
            for (size_t k = 0; k < 3; k++) {
                int iters = hot ? 200 : copies * 2;
                speck_matmul(t, W, n_out, n_in, X, toks[k], Y); // warm-up (scratch, threads)
                double t0 = now();
                for (int i = 0; i < iters; i++)
                    speck_matmul(t, W + one * (size_t)(i % copies), n_out, n_in, X, toks[k], Y);
                double dt = now() - t0;
                printf("  n_tok=%-2lld %6.1f GB/s", (long long)toks[k], (double)one * iters / dt * 1e-9);
            }
            // Prefill: GFLOP/s.
            speck_matmul(t, W, n_out, n_in, X, prefill, Y);
            int iters = 3;
            double t0 = now();
            for (int i = 0; i < iters; i++) speck_matmul(t, W, n_out, n_in, X, prefill, Y);
            double dt = now() - t0;
            printf("  n_tok=512 %6.1f GFLOP/s\n", 2.0 * prefill * n_out * n_in * iters / dt * 1e-9);
            free(W);
        }
    }
    free(X), free(Y);
    return 0;
}
