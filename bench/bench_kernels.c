// Micro-benchmark of speck_matmul: GB/s of weight bytes for decode (n_tok = 1, plus a few small
// batches for draft verification) and GFLOP/s for prefill (n_tok = 512), per weight type; for
// Q8_0/Q4_0 the int8 GEMM and the sgemm path side by side.
//
// Built by CMake as `bench_kernels`, or by hand (one line):
//   gcc -O3 -fopenmp -Iinclude -Isrc bench/bench_kernels.c build/libspeck.a $(pkg-config --libs
//   openblas libcjson libpcre2-8) -lm -o bench_kernels
// Run: ./bench_kernels [threads] [isa|best] [hot|sweep|mem] [types]   (measure sgemm with `env -u
// OPENBLAS_CORETYPE`) "sweep" times the small / int8 GEMM / sgemm paths against each other for
// n_tok 8..512. types: a comma list (default q4_0,q8_0,f16,bf16,f32). Types with panel kernels
// on this ISA are timed on their panel copy too (what models decode with), in the same loop.
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

// GFLOP/s of each path per token count around the small-batch threshold (Q8_0 / Q4_0,
// 2048x2048 and 5632x2048), interleaved, best of 7: picks SMALL_BATCH in src/kernels/matmul.c.
static void sweep(const float *X, float *Y) {
    const speck_type types[] = {SPECK_TYPE_Q4_0, SPECK_TYPE_Q8_0};
    const int64_t shapes[][2] = {{2048, 2048}, {5632, 2048}};
    const int64_t toks[] = {8, 16, 20, 24, 28, 32, 48, 64, 128, 512};
    const char *paths[] = {"small", "gemm", "sgemm"};
    for (int ti = 0; ti < 2; ti++) {
        for (int si = 0; si < 2; si++) {
            const int64_t n_out = shapes[si][0], n_in = shapes[si][1];
            size_t one;
            char *W = make_weights(types[ti], n_out, n_in, 1, &one);
            for (size_t k = 0; k < sizeof toks / sizeof toks[0]; k++) {
                double best[3] = {1e30, 1e30, 1e30};
                for (int rep = 0; rep < 7; rep++) {
                    for (int p = 0; p < 3; p++) {
                        speck_matmul_force_path(paths[p]);
                        if (rep == 0) speck_matmul(types[ti], W, n_out, n_in, X, toks[k], Y);
                        double t0 = now();
                        speck_matmul(types[ti], W, n_out, n_in, X, toks[k], Y);
                        double dt = now() - t0;
                        if (dt < best[p]) best[p] = dt;
                    }
                }
                const double flop = 2.0 * (double)(toks[k] * n_out * n_in) * 1e-9;
                printf("%-5s %5lldx%-5lld n_tok=%-4lld GFLOP/s: small %6.1f  gemm %6.1f  sgemm "
                       "%6.1f\n",
                       speck_type_name(types[ti]), (long long)n_out, (long long)n_in,
                       (long long)toks[k], flop / best[0], flop / best[1], flop / best[2]);
            }
            free(W);
        }
    }
    speck_matmul_force_path("auto");
}

int main(int argc, char **argv) {
    if (argc > 1) speck_set_threads(atoi(argv[1]));
    const int do_sweep = argc > 3 && !strcmp(argv[3], "sweep");
    const int hot = argc > 3 && !strcmp(argv[3], "hot");
    if (argc > 2 && strcmp(argv[2], "best") && speck_kernels_force_isa(argv[2]) != 0)
        fprintf(stderr, "isa %s unavailable\n", argv[2]);
    printf("isa %s, %d threads, OPENBLAS_CORETYPE=%s\n", speck_kernels_isa(), speck_get_threads(),
           getenv("OPENBLAS_CORETYPE") ? getenv("OPENBLAS_CORETYPE") : "(unset)");
    speck_type types[32] = {SPECK_TYPE_Q4_0, SPECK_TYPE_Q8_0, SPECK_TYPE_F16, SPECK_TYPE_BF16,
                            SPECK_TYPE_F32};
    size_t n_types = 5;
    if (argc > 4) {
        n_types = 0;
        char list[256];
        snprintf(list, sizeof list, "%s", argv[4]);
        for (char *tok = strtok(list, ","); tok && n_types < 32; tok = strtok(NULL, ",")) {
            const int t = speck_type_from_name(tok);
            if (t < 0) {
                fprintf(stderr, "unknown type %s\n", tok);
                return 2;
            }
            types[n_types++] = (speck_type)t;
        }
    }
    const int64_t shapes[][2] = {{2048, 2048}, {5632, 2048}};
    const int64_t prefill = 512;
    float *X = malloc((size_t)prefill * 5632 * sizeof(float));
    float *Y = malloc((size_t)prefill * 5632 * sizeof(float));
    fill(X, prefill * 5632, 7);
    if (do_sweep) {
        sweep(X, Y);
        free(X), free(Y);
        return 0;
    }
    for (size_t s = 0; s < 2; s++) {
        const int64_t n_out = shapes[s][0], n_in = shapes[s][1];
        for (size_t ti = 0; ti < n_types; ti++) {
            const speck_type t = types[ti];
            size_t one;
            size_t probe = speck_type_row_size(t, n_in) * (size_t)n_out;
            int copies = hot ? 1 : (int)((512u << 20) / probe) + 1;
            char *W = make_weights(t, n_out, n_in, copies, &one);
            printf("%-5s %5lldx%-5lld", speck_type_name(t), (long long)n_out, (long long)n_in);
            // Decode and small batches: GB/s of weight bytes streamed, on the rows and (where the
            // ISA has panel kernels) on panel copies, alternated per pass (shared machines drift).
            const int panels = speck_panel_supported(t) && speck_type_block_size(t) > 1;
            const size_t pb = panels ? speck_panel_bytes(t, n_out, n_in) : 0;
            char *P = panels ? aligned_alloc(64, (pb * (size_t)copies + 63) / 64 * 64) : NULL;
            for (int c = 0; panels && c < copies; c++)
                speck_panel_pack(t, W + one * (size_t)c, n_out, n_in, P + pb * (size_t)c);
            const int64_t toks[] = {1, 4, 16};
            for (size_t k = 0; k < 3; k++) {
                int iters = hot ? 200 : copies * 2;
                double dt[2] = {0, 0};
                speck_matmul(t, W, n_out, n_in, X, toks[k], Y); // warm-up (scratch, threads)
                for (int pass = 0; pass < 4; pass++)
                    for (int v = 0; v < 1 + panels; v++) {
                        double t0 = now();
                        for (int i = 0; i < iters / 4; i++)
                            speck_matmul_panels(t, W + one * (size_t)(i % copies),
                                                v ? P + pb * (size_t)(i % copies) : NULL, n_out,
                                                n_in, X, toks[k], Y);
                        dt[v] += now() - t0;
                    }
                printf("  n_tok=%-2lld %6.1f GB/s", (long long)toks[k],
                       (double)one * (iters / 4 * 4) / dt[0] * 1e-9);
                if (panels) printf(" (panels %6.1f)", (double)one * (iters / 4 * 4) / dt[1] * 1e-9);
            }
            // Prefill: GFLOP/s of the automatic path and, for types with an int8 GEMM, of the
            // sgemm path, interleaved in the same run (shared machines drift), best of 5.
            // Types whose automatic prefill path is not sgemm (the int8 GEMM of Q8_0 / Q4_0, the
            // streaming kernels of the other block types) are timed on sgemm too.
            const int qtype = speck_type_block_size(t) > 1;
            if (getenv("BENCH_NO_PREFILL")) {
                printf("\n");
                free(W), free(P);
                continue;
            }
            const char *paths[] = {"auto", "sgemm"};
            double best[2] = {1e30, 1e30};
            for (int rep = 0; rep < 5; rep++) {
                for (int p = 0; p < (qtype ? 2 : 1); p++) {
                    speck_matmul_force_path(paths[p]);
                    // With the panel copy where there is one, as the model runs it.
                    if (rep == 0) speck_matmul_panels(t, W, P, n_out, n_in, X, prefill, Y);
                    double t0 = now();
                    speck_matmul_panels(t, W, P, n_out, n_in, X, prefill, Y);
                    double dt = now() - t0;
                    if (dt < best[p]) best[p] = dt;
                }
            }
            speck_matmul_force_path("auto");
            const double flop = 2.0 * prefill * n_out * n_in * 1e-9;
            printf("  n_tok=512 %6.1f GFLOP/s", flop / best[0]);
            if (qtype) printf(" (sgemm path %6.1f)", flop / best[1]);
            printf("\n");
            free(W), free(P);
        }
    }
    free(X), free(Y);
    return 0;
}
