// S24_Q8 (2:4-sparse, 8-bit): the block is the Q8_0 block of the zero-filled row without its
// zeros; its dot, row kernels (every ISA) and matmul equal the dense Q8_0 computation on the
// zero-filled weights: exactly for the integer parts (each block's int32 sum), bit for bit for
// the whole dot under quant.h's contract (the same float steps on the same integers), and
// within float reordering against speck's own Q8_0 matmul (whose kernels add in another order).
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/kernels.h"
#include "quant/quant.h"
#include "speck.h"
#include "test_util.h"

static uint64_t g_rng = 0x9E3779B97F4A7C15ULL;
static float frand(void) { // roughly N(0, 1) from a xorshift: the sum of 4 uniforms, centred
    float s = 0;
    for (int i = 0; i < 4; i++) {
        g_rng ^= g_rng << 13, g_rng ^= g_rng >> 7, g_rng ^= g_rng << 17;
        s += (float)(g_rng >> 40) / (float)(1 << 24);
    }
    return (s - 2.0f) * 1.7f;
}

// Rows (rows, n) zeroed to a random 2:4 pattern (some groups with fewer than 2 nonzeros too).
static void make_24(float *w, int64_t rows, int64_t n) {
    for (int64_t i = 0; i < rows * n; i += 4) {
        for (int j = 0; j < 4; j++) w[i + j] = frand();
        const int a = (int)((g_rng >> 20) % 4), b = (a + 1 + (int)((g_rng >> 30) % 3)) % 4;
        for (int j = 0; j < 4; j++)
            if (j != a && j != b) w[i + j] = 0;
        if ((g_rng >> 50) % 16 == 0) w[i + a] = 0; // a group with one nonzero
    }
}

// quant.h's contract on Q8_0 blocks: each block's int32 sum times (d_w * d_a), in block order.
static float dense_contract(const speck_block_q8_0 *w, const speck_block_q8_0 *a, int64_t n,
                            int32_t *isums) {
    float acc = 0;
    for (int64_t b = 0; b < n / 32; b++) {
        int32_t s = 0;
        for (int j = 0; j < 32; j++) s += (int32_t)w[b].qs[j] * a[b].qs[j];
        if (isums) isums[b] = s;
        acc += (speck_fp16_to_fp32(w[b].d) * speck_fp16_to_fp32(a[b].d)) * (float)s;
    }
    return acc;
}

static void test_blocks(int64_t n) {
    float *w = malloc((size_t)n * sizeof *w), *y1 = malloc((size_t)n * sizeof *y1),
          *y2 = malloc((size_t)n * sizeof *y2), *x = malloc((size_t)n * sizeof *x);
    speck_block_s24_q8 *s = malloc((size_t)(n / 32) * sizeof *s);
    speck_block_q8_0 *q = malloc((size_t)(n / 32) * sizeof *q),
                     *a = malloc((size_t)(n / 32) * sizeof *a);
    make_24(w, 1, n);
    CHECK(speck_quantize(SPECK_TYPE_S24_Q8, w, s, 1, n, NULL) == 0, "quantize s24_q8 n=%lld",
          (long long)n);
    speck_quantize_row_q8_0_ref(w, q, n);
    speck_dequantize_row(SPECK_TYPE_S24_Q8, s, y1, n);
    speck_dequantize_row(SPECK_TYPE_Q8_0, q, y2, n);
    CHECK(!memcmp(y1, y2, (size_t)n * sizeof *y1),
          "n=%lld: s24_q8 dequantizes to the Q8_0 values of the zero-filled row", (long long)n);
    int ok_d = 1;
    for (int64_t b = 0; b < n / 32; b++) ok_d &= s[b].d == q[b].d;
    CHECK(ok_d, "n=%lld: the same scales as Q8_0", (long long)n);
    for (int64_t j = 0; j < n; j++) x[j] = frand();
    speck_quantize_row(SPECK_TYPE_Q8_0, x, a, n);
    const float dd = dense_contract(q, a, n, NULL);
    const float sd = speck_dot_s24_q8_ref(s, a, n);
    CHECK(memcmp(&dd, &sd, 4) == 0, "n=%lld: reference dot %.9g == dense contract %.9g",
          (long long)n, (double)sd, (double)dd);
    CHECK(memcmp(&dd, &(float){speck_vec_dot(SPECK_TYPE_S24_Q8, s, a, n)}, 4) == 0,
          "n=%lld: speck_vec_dot (%s) == dense contract", (long long)n, speck_kernels_isa());
    // A row that is not 2:4: the quantizer keeps the 2 largest |x| of each group.
    for (int64_t j = 0; j < n; j++) w[j] = frand();
    speck_quantize(SPECK_TYPE_S24_Q8, w, s, 1, n, NULL);
    speck_dequantize_row(SPECK_TYPE_S24_Q8, s, y1, n);
    int ok = 1;
    for (int64_t g = 0; g < n; g += 4) {
        int nz = 0;
        for (int j = 0; j < 4; j++) nz += y1[g + j] != 0;
        float lo_kept = INFINITY, hi_drop = 0;
        for (int j = 0; j < 4; j++) {
            if (y1[g + j] != 0)
                lo_kept = fminf(lo_kept, fabsf(w[g + j]));
            else
                hi_drop = fmaxf(hi_drop, fabsf(w[g + j]));
        }
        ok &= nz <= 2 && (nz < 2 || hi_drop <= lo_kept);
    }
    CHECK(ok, "n=%lld: a dense row is stored as its 2 largest of every 4", (long long)n);
    free(w), free(y1), free(y2), free(x), free(s), free(q), free(a);
}

// speck_matmul on S24_Q8 against the contract on the dense Q8_0 blocks (bit for bit below 16
// tokens, where every ISA's row kernel follows it), and against speck's dense matmul of the
// zero-filled weights with the same activation rounding (Q8_0 below 16 tokens, f32 on the
// prefill path): float reordering only, 1e-5 of the sum of |terms|.
static void test_matmul(const char *isa, int64_t rows, int64_t n, int64_t nt) {
    float *w = malloc((size_t)(rows * n) * sizeof *w), *x = malloc((size_t)(nt * n) * sizeof *x);
    float *ys = malloc((size_t)(nt * rows) * sizeof *ys),
          *yd = malloc((size_t)(nt * rows) * sizeof *yd);
    const size_t srs = speck_type_row_size(SPECK_TYPE_S24_Q8, n),
                 qrs = speck_type_row_size(SPECK_TYPE_Q8_0, n);
    char *s = malloc(srs * (size_t)rows), *q = malloc(qrs * (size_t)rows);
    speck_block_q8_0 *a = malloc((size_t)(n / 32) * sizeof *a);
    make_24(w, rows, n);
    for (int64_t i = 0; i < nt * n; i++) x[i] = frand();
    speck_quantize(SPECK_TYPE_S24_Q8, w, s, rows, n, NULL);
    speck_quantize(SPECK_TYPE_Q8_0, w, q, rows, n, NULL);
    speck_matmul(SPECK_TYPE_S24_Q8, s, rows, n, x, nt, ys);
    // The dense baseline with the activations rounded as the S24_Q8 path rounds them: Q8_0
    // activations on the streaming path; f32 on the prefill path (dequantize + sgemm).
    float *wd = malloc((size_t)(rows * n) * sizeof *wd);
    for (int64_t r = 0; r < rows; r++)
        speck_dequantize_row(SPECK_TYPE_Q8_0, q + (size_t)r * qrs, wd + r * n, n);
    if (speck_matmul_act_type(SPECK_TYPE_S24_Q8, nt) == SPECK_TYPE_F32)
        speck_matmul(SPECK_TYPE_F32, wd, rows, n, x, nt, yd);
    else
        speck_matmul(SPECK_TYPE_Q8_0, q, rows, n, x, nt, yd);
    free(wd);
    int exact = 1, close = 1;
    double worst = 0;
    for (int64_t t = 0; t < nt; t++) {
        speck_quantize_row(SPECK_TYPE_Q8_0, x + t * n, a, n);
        for (int64_t r = 0; r < rows; r++) {
            const float ref =
                dense_contract((const speck_block_q8_0 *)(q + (size_t)r * qrs), a, n, NULL);
            const float got = ys[t * rows + r];
            exact &= memcmp(&ref, &got, 4) == 0;
            double mag = 0;
            for (int64_t j = 0; j < n; j++) mag += fabs((double)w[r * n + j] * x[t * n + j]);
            const double dev = fabs((double)got - yd[t * rows + r]) / (mag > 0 ? mag : 1);
            if (dev > worst) worst = dev;
            close &= dev <= 1e-5;
        }
    }
    if (nt < 16)
        CHECK(exact, "%s %lldx%lld, %lld tokens: S24_Q8 matmul == dense contract bit for bit", isa,
              (long long)rows, (long long)n, (long long)nt);
    CHECK(close,
          "%s %lldx%lld, %lld tokens: S24_Q8 matmul == dense matmul of the zero-filled "
          "weights within 1e-5 of sum|w x| (worst %.2g)",
          isa, (long long)rows, (long long)n, (long long)nt, worst);
    free(w), free(x), free(ys), free(yd), free(s), free(q), free(a);
}

int main(void) {
    CHECK(speck_type_row_size(SPECK_TYPE_S24_Q8, 256) == 8 * 22, "22 bytes per 32 weights");
    CHECK(speck_type_from_name("s24_q8") == SPECK_TYPE_S24_Q8, "type name");
    const int64_t ns[] = {32, 96, 256, 2080};
    for (int i = 0; i < 4; i++) test_blocks(ns[i]);
    const char *isas[] = {"avx512", "avx2", "scalar"};
    for (int i = 0; i < 3; i++) {
        if (speck_kernels_force_isa(isas[i])) {
            printf("(ISA %s not on this CPU: not run)\n", isas[i]);
            continue;
        }
        for (int64_t nt = 1; nt <= 15; nt++) test_matmul(isas[i], 37, 288, nt);
        test_matmul(isas[i], 19, 2080, 3);
        test_matmul(isas[i], 40, 256, 20); // the prefill path
    }
    return test_summary();
}
