// Micro-benchmark of the block types' few-token kernels: one thread, a cache-resident matrix,
// timed in thread CPU time (so other tenants of a shared machine cost little accuracy), the
// panel kernels (where the ISA has them) and the row kernels, 1 / 2 / 4 tokens. Prints the
// weight bytes per CPU second and ns per 256 weights of one row.
//
// Built by CMake as `bench_qkernels`. Run: ./bench_qkernels [types] [rows]   (types: a comma
// list, default every block type; rows default 256: 256 x 2048 fits the L2 for every type).
// SPECK_ISA=avx2 runs the AVX2 path.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "kernels/kernels.h"
#include "speck.h"

static double cpu_now(void) {
    struct timespec t;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

// Best of 30 timings of 20 calls: seconds per call.
static double time_calls(speck_type t, const void *W, const void *P, const speck_mm_act *a,
                         int64_t n_out, float *y) {
    double best = 1e30;
    for (int rep = 0; rep < 30; rep++) {
        const double t0 = cpu_now();
        for (int i = 0; i < 20; i++) {
            if (P)
                speck_mm_panel_rows(t, P, a, 0, n_out, y, n_out, 0);
            else
                speck_mm_rows(t, W, a, 0, n_out, y, n_out, 0);
        }
        const double dt = (cpu_now() - t0) / 20;
        if (dt < best) best = dt;
    }
    return best;
}

int main(int argc, char **argv) {
    const char *isa = getenv("SPECK_ISA");
    if (isa && speck_set_isa(isa)) {
        fprintf(stderr, "%s\n", speck_last_error());
        return 2;
    }
    char list[256];
    snprintf(list, sizeof list, "%s",
             argc > 1 ? argv[1] : "q4_0,q8_0,q4_1,q5_0,q5_1,iq4_nl,q2_k,q3_k,q4_k,q5_k,q6_k,iq4_xs");
    const int64_t n_out = argc > 2 ? atoll(argv[2]) : 256, n_in = 2048;
    float *x = malloc(4 * n_in * sizeof(float)), *row = malloc(n_in * sizeof(float)),
          *y = malloc(4 * n_out * sizeof(float));
    for (int64_t i = 0; i < 4 * n_in; i++) x[i] = (float)((i * 2654435761u) % 1000) / 500.0f - 1;
    printf("isa %s, one thread, %lld x %lld, thread CPU time, best of 30\n", speck_isa(),
           (long long)n_out, (long long)n_in);
    printf("%-7s %-6s %22s %22s %22s\n", "type", "layout", "1 token", "2 tokens", "4 tokens");
    for (char *tok = strtok(list, ","); tok; tok = strtok(NULL, ",")) {
        const int ti = speck_type_from_name(tok);
        if (ti < 0) {
            fprintf(stderr, "unknown type %s\n", tok);
            return 2;
        }
        const speck_type t = (speck_type)ti;
        const size_t rs = speck_type_row_size(t, n_in);
        char *W = malloc(rs * n_out);
        for (int64_t o = 0; o < n_out; o++) {
            for (int64_t i = 0; i < n_in; i++)
                row[i] = (float)(((o * 7919 + i) * 2654435761u) % 2000) / 1000.0f - 1;
            speck_quantize_row(t, row, W + o * rs, n_in);
        }
        char *P = NULL;
        if (speck_panel_supported(t)) {
            P = aligned_alloc(64, (speck_panel_bytes(t, n_out, n_in) + 63) / 64 * 64);
            speck_panel_pack(t, W, n_out, n_in, P);
        }
        for (int layout = P ? 0 : 1; layout < 2; layout++) {
            const speck_type at = layout == 0 ? speck_panel_act_type(t) : t;
            void *buf = aligned_alloc(64, (speck_mm_act_bytes(at, 4, n_in) + 63) / 64 * 64 + 64);
            printf("%-7s %-6s", tok, layout == 0 ? "panels" : "rows");
            for (int nt = 1; nt <= 4; nt *= 2) {
                speck_mm_act a;
                speck_mm_act_prepare(at, x, nt, n_in, buf, &a);
                const double s = time_calls(t, W, layout == 0 ? P : NULL, &a, n_out, y);
                printf("  %6.1f GB/s %5.2f ns", (double)rs * n_out / s * 1e-9,
                       s * 1e9 / ((double)n_out * n_in / 256));
            }
            printf("\n");
            free(buf);
        }
        free(W);
        free(P);
    }
    free(x), free(row), free(y);
    return 0;
}
