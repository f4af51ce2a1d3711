// Tests for src/kernels: fp16/bf16 conversions, Q8_0/Q4_0 quantization (error bounds and exact
// llama.cpp byte layout), every SIMD path against the scalar reference, speck_matmul against a
// double-precision reference on the streaming (n_tok < 16), int8 GEMM (AVX-512, Q8_0/Q4_0) and
// sgemm paths, batch invariance of matmul rows below 16 tokens, and attention on every ISA.
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/kernels.h"
#include "speck.h"

static int g_pass, g_fail;

static void check(int ok, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void check(int ok, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    printf("%s: ", ok ? "PASS" : "FAIL");
    vprintf(fmt, ap);
    printf("\n");
    va_end(ap);
    if (ok)
        g_pass++;
    else
        g_fail++;
}

/* ---------------------------------------------------------------------------------------- */
/* Helpers                                                                                   */
/* ---------------------------------------------------------------------------------------- */

static uint64_t g_rng = 0x9E3779B97F4A7C15ull;

static uint64_t rng_u64(void) { // splitmix64
    uint64_t z = (g_rng += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

static float rng_uniform(void) {
    return (float)((rng_u64() >> 40) * 0x1p-24) * 2.0f - 1.0f;
}

// Values with varying magnitude per 32-block (realistic for weights and activations, and it
// exercises very different scales across blocks).
static void fill_random(float *x, int64_t n, float scale) {
    float block_scale = scale;
    for (int64_t i = 0; i < n; i++) {
        if (i % 32 == 0)
            block_scale = scale * (0.05f + 2.0f * (float)((rng_u64() >> 40) * 0x1p-24));
        x[i] = rng_uniform() * block_scale;
    }
}

static uint32_t f2u(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}

static float u2f(uint32_t u) {
    float f;
    memcpy(&f, &u, 4);
    return f;
}

static const speck_type all_types[] = {SPECK_TYPE_F32, SPECK_TYPE_F16, SPECK_TYPE_BF16,
                                       SPECK_TYPE_Q8_0, SPECK_TYPE_Q4_0};
#define N_TYPES 5

/* ---------------------------------------------------------------------------------------- */
/* fp16 / bf16                                                                               */
/* ---------------------------------------------------------------------------------------- */

static void test_fp16(void) {
    static const struct {
        uint32_t f;
        uint16_t h;
        const char *what;
    } cases[] = {
        {0x00000000, 0x0000, "+0"},
        {0x80000000, 0x8000, "-0"},
        {0x3f800000, 0x3c00, "1"},
        {0xc0000000, 0xc000, "-2"},
        {0x3eaaaaab, 0x3555, "1/3"},
        {0x477fe000, 0x7bff, "65504 (max)"},
        {0x477fefff, 0x7bff, "just below 65520"},
        {0x477ff000, 0x7c00, "65520 ties to inf (65504 is odd)"},
        {0x7f7fffff, 0x7c00, "FLT_MAX -> inf"},
        {0x7f800000, 0x7c00, "+inf"},
        {0xff800000, 0xfc00, "-inf"},
        {0x3f801000, 0x3c00, "1+2^-11 tie to even (down)"},
        {0x3f803000, 0x3c02, "1+3*2^-11 tie to even (up)"},
        {0x3f801001, 0x3c01, "just above tie"},
        {0x38800000, 0x0400, "2^-14 smallest normal"},
        {0x387fc000, 0x03ff, "largest subnormal"},
        {0x33800000, 0x0001, "2^-24 smallest subnormal"},
        {0x33000000, 0x0000, "2^-25 ties to 0"},
        {0x33000001, 0x0001, "just above 2^-25"},
        {0x33c00000, 0x0002, "3*2^-25 ties to 2"},
        {0x34200000, 0x0002, "5*2^-25 ties to 2"},
        {0xb3c00000, 0x8002, "-3*2^-25"},
        {0x387fe000, 0x0400, "subnormal rounding up into the smallest normal"},
        {0x00000001, 0x0000, "fp32 denormal -> 0"},
    };
    int ok = 1;
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        uint16_t h = speck_fp32_to_fp16(u2f(cases[i].f));
        if (h != cases[i].h) {
            ok = 0;
            printf("  fp32->fp16 %s: got 0x%04x want 0x%04x\n", cases[i].what, h, cases[i].h);
        }
    }
    check(ok, "fp32->fp16 special values, subnormals and ties");

    uint16_t hn = speck_fp32_to_fp16(NAN);
    check((hn & 0x7c00) == 0x7c00 && (hn & 0x03ff) != 0, "fp32->fp16 NaN stays NaN (0x%04x)", hn);

    // fp16 -> fp32 exhaustively: compare with the value computed from the definition, and the
    // round trip must be the identity for every non-NaN half.
    int ok_val = 1, ok_rt = 1;
    for (uint32_t h = 0; h < 65536; h++) {
        float f = speck_fp16_to_fp32((uint16_t)h);
        int e = (h >> 10) & 31, m = h & 1023;
        double mag = e == 0 ? ldexp(m, -24) : ldexp(1024 + m, e - 25);
        double want = (h & 0x8000) ? -mag : mag;
        if (e == 31) {
            if (m == 0 ? !(isinf(f) && (f < 0) == !!(h & 0x8000)) : !isnan(f)) ok_val = 0;
            continue;
        }
        if ((double)f != want || !!signbit(f) != !!(h & 0x8000)) ok_val = 0;
        if (speck_fp32_to_fp16(f) != h) ok_rt = 0;
    }
    check(ok_val, "fp16->fp32 exact for all 65536 halves");
    check(ok_rt, "fp16->fp32->fp16 round trip is the identity");

    // Random floats against the definition of round-to-nearest-even: the result must be one of
    // the two neighbouring halves and the nearer one (the even one on a tie).
    int ok_rne = 1;
    for (int i = 0; i < 2000000 && ok_rne; i++) {
        float f = u2f((uint32_t)rng_u64());
        if (isnan(f) || fabsf(f) >= 65520.0f) continue;
        uint16_t h = speck_fp32_to_fp16(f);
        double v = speck_fp16_to_fp32(h);
        double err = fabs(v - f);
        uint16_t hs[2] = {(uint16_t)(h + 1), (uint16_t)(h - 1)}; // neighbours (same sign)
        for (int k = 0; k < 2; k++) {
            if ((hs[k] & 0x7fff) > 0x7bff || (hs[k] & 0x8000) != (h & 0x8000)) continue;
            double e2 = fabs((double)speck_fp16_to_fp32(hs[k]) - f);
            if (e2 < err || (e2 == err && (h & 1))) ok_rne = 0;
        }
        if (!ok_rne) printf("  fp32->fp16 of %a gave 0x%04x\n", f, h);
    }
    check(ok_rne, "fp32->fp16 is nearest-even on 2M random floats");
}

static void test_bf16(void) {
    static const struct {
        uint32_t f;
        uint16_t h;
        const char *what;
    } cases[] = {
        {0x3f800000, 0x3f80, "1"},
        {0x3f808000, 0x3f80, "tie to even (down)"},
        {0x3f818000, 0x3f82, "tie to even (up)"},
        {0x3f808001, 0x3f81, "just above tie"},
        {0x7f7fffff, 0x7f80, "FLT_MAX rounds to inf"},
        {0x7f800000, 0x7f80, "+inf"},
        {0xff800000, 0xff80, "-inf"},
        {0x00018000, 0x0002, "subnormal tie to even (up)"},
        {0x00008000, 0x0000, "subnormal tie to even (down)"},
        {0x80000000, 0x8000, "-0"},
    };
    int ok = 1;
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        uint16_t h = speck_fp32_to_bf16(u2f(cases[i].f));
        if (h != cases[i].h) {
            ok = 0;
            printf("  fp32->bf16 %s: got 0x%04x want 0x%04x\n", cases[i].what, h, cases[i].h);
        }
    }
    check(ok, "fp32->bf16 special values and ties");
    uint16_t hn = speck_fp32_to_bf16(u2f(0x7f800001)); // signalling NaN with payload in low bits
    check((hn & 0x7f80) == 0x7f80 && (hn & 0x7f) != 0, "fp32->bf16 NaN stays NaN (0x%04x)", hn);
    int ok_all = 1;
    for (uint32_t h = 0; h < 65536; h++) {
        float f = speck_bf16_to_fp32((uint16_t)h);
        if (f2u(f) != h << 16) ok_all = 0;
        if (!isnan(f) && speck_fp32_to_bf16(f) != h) ok_all = 0;
    }
    check(ok_all, "bf16->fp32 exact and round trip for all 65536 values");
}

/* ---------------------------------------------------------------------------------------- */
/* Quantization                                                                              */
/* ---------------------------------------------------------------------------------------- */

static void test_layout(void) {
    // Q8_0 with amax = 127 so d = 1 exactly (fp16 0x3c00, stored little-endian 00 3c) and
    // q = roundf(x): halves round away from zero.
    float x[32];
    for (int j = 0; j < 32; j++) x[j] = (float)(j - 16);
    x[0] = 127.0f, x[1] = -127.0f, x[2] = 2.5f, x[3] = -2.5f, x[4] = 0.5f, x[5] = -0.5f,
    x[6] = 1.49f, x[7] = -100.51f;
    uint8_t want8[34] = {0x00, 0x3c,        127, (uint8_t)-127, 3, (uint8_t)-3,
                         1,    (uint8_t)-1, 1,   (uint8_t)-101};
    for (int j = 8; j < 32; j++) want8[2 + j] = (uint8_t)(int8_t)(j - 16);
    uint8_t got8[34];
    speck_quantize_row(SPECK_TYPE_Q8_0, x, got8, 32);
    check(!memcmp(got8, want8, 34), "Q8_0 known block: exact 34 bytes (isa %s)",
          speck_kernels_isa());

    // Q4_0 with max = -8 (x[0]) so d = max / -8 = 1 and q = min(15, trunc(x + 8.5)). x[16] = +8
    // has the same magnitude but comes later, so it does not become max and clamps to 15.
    // Element j -> low nibble of qs[j], element j + 16 -> high nibble.
    float y[32];
    for (int j = 0; j < 16; j++) y[j] = 0.0f, y[j + 16] = 1.0f;
    y[0] = -8.0f, y[16] = 8.0f; // q 0, 15 (clamped)  -> 0xF0
    y[1] = 7.0f, y[17] = -7.0f; // q 15, 1            -> 0x1F
    y[2] = 0.5f, y[18] = -0.5f; // q 9, 8 (half up)   -> 0x89
    y[3] = 3.0f, y[19] = -3.0f; // q 11, 5            -> 0x5B
    uint8_t want4[18] = {0x00, 0x3c, 0xF0, 0x1F, 0x89, 0x5B};
    for (int j = 4; j < 16; j++) want4[2 + j] = 0x98; // 0 -> 8 low, 1 -> 9 high
    uint8_t got4[18];
    speck_quantize_row(SPECK_TYPE_Q4_0, y, got4, 32);
    check(!memcmp(got4, want4, 18), "Q4_0 known block: exact 18 bytes, nibble placement");

    // Negative d: max = +3 gives d = 3 / -8 = -0.375 = fp16 0xB600.
    for (int j = 0; j < 32; j++) y[j] = 0.0f;
    y[5] = 3.0f;
    speck_quantize_row(SPECK_TYPE_Q4_0, y, got4, 32);
    check(got4[0] == 0x00 && got4[1] == 0xB6 && (got4[2 + 5] & 0x0F) == 0,
          "Q4_0 scale sign: max=+3 -> d=-0.375 (bytes %02x %02x), q=0", got4[0], got4[1]);
    float back[32];
    speck_dequantize_row(SPECK_TYPE_Q4_0, got4, back, 32);
    check(back[5] == 3.0f && back[0] == 0.0f, "Q4_0 dequantize of that block: %g %g", back[5],
          back[0]);

    // Zero block: d = 0, all q = 0 (Q8_0) / 8 (Q4_0), dequantizes to zeros.
    for (int j = 0; j < 32; j++) y[j] = 0.0f;
    speck_quantize_row(SPECK_TYPE_Q8_0, y, got8, 32);
    speck_quantize_row(SPECK_TYPE_Q4_0, y, got4, 32);
    // Q4_0's d = 0 / -8 is -0 (fp16 0x8000), exactly as llama.cpp stores it.
    int zok = got8[0] == 0 && got8[1] == 0 && got4[0] == 0 && (got4[1] & 0x7f) == 0;
    for (int j = 0; j < 32; j++) zok &= got8[2 + j] == 0;
    for (int j = 0; j < 16; j++) zok &= got4[2 + j] == 0x88;
    check(zok, "all-zero block quantizes to d=0 (Q4_0 nibbles 8)");
}

// Error bounds, per element, with d the fp16 scale stored in the block:
//  Q8_0: q = round(x / d') with d' = amax/127 unrounded, |x/d' - q| <= 1/2, and the stored
//        d = fp16(d') differs from d' by <= 2^-11 relatively; |q| <= 127, so
//        |x - d*q| <= d'/2 + 127 * |d - d'| <= |d| * (1/2 + 128 * 2^-11) (+ float eps).
//  Q4_0: q = floor(x/d' + 8.5) is round-half-up of x/d' (error <= 1/2) except for the one
//        value of opposite sign to max with |x| = |max| whose x/d' = +8 clamps from 16 to 15
//        (error 1); |q - 8| <= 8, so |x - d*(q-8)| <= |d| * (1/2 + 9 * 2^-11), or
//        |d| * (1 + 9 * 2^-11) for the clamped element.
static void test_quant_error(void) {
    const int64_t n = 32 * 512;
    float *x = malloc(n * sizeof(float)), *y = malloc(n * sizeof(float));
    void *q = malloc(speck_type_row_size(SPECK_TYPE_Q8_0, n));
    fill_random(x, n, 3.0f);
    for (int ti = 0; ti < 2; ti++) {
        speck_type t = ti ? SPECK_TYPE_Q4_0 : SPECK_TYPE_Q8_0;
        speck_quantize_row(t, x, q, n);
        speck_dequantize_row(t, q, y, n);
        double worst = 0.0;
        for (int64_t b = 0; b < n / 32; b++) {
            uint16_t dh;
            memcpy(&dh, (const char *)q + b * speck_type_block_bytes(t), 2);
            double ds = speck_fp16_to_fp32(dh), d = fabs(ds);
            for (int j = 0; j < 32; j++) {
                double e = fabs((double)x[b * 32 + j] - y[b * 32 + j]);
                double bound = ti ? d * (0.5 + 9 * 0x1p-11) : d * (0.5 + 128 * 0x1p-11);
                if (ti && x[b * 32 + j] / ds > 7.5) bound = d * (1 + 9 * 0x1p-11);
                bound += 1e-6 * d + 1e-30;
                if (e / bound > worst) worst = e / bound;
            }
        }
        check(worst <= 1.0, "%s quantize->dequantize error within bound (worst %.3f of bound)",
              speck_type_name(t), worst);
    }
    free(x), free(y), free(q);
}

/* ---------------------------------------------------------------------------------------- */
/* SIMD paths against scalar                                                                 */
/* ---------------------------------------------------------------------------------------- */

// Dot of type t for one weight row and one f32 activation row through the public API, with the
// activation converted as the kernels expect. Returns the dot; sabs gets sum |w_i * a_i| of the
// dequantized operands (the scale of the float rounding error).
static float api_dot(speck_type t, const void *w, const float *x, int64_t n, double *sabs) {
    speck_type at = speck_act_type(t);
    void *a = malloc(speck_type_row_size(at, n) + 64);
    speck_quantize_row(at, x, a, n);
    float r = speck_vec_dot(t, w, a, n);
    if (sabs) {
        float *wd = malloc(n * sizeof(float)), *ad = malloc(n * sizeof(float));
        speck_dequantize_row(t, w, wd, n);
        speck_dequantize_row(at, a, ad, n);
        double s = 0;
        for (int64_t i = 0; i < n; i++) s += fabs((double)wd[i] * ad[i]);
        *sabs = s;
        free(wd), free(ad);
    }
    free(a);
    return r;
}

// Tolerance 1e-5 * sum|w*a|: every path computes the same products exactly (float products of
// f32/f16/bf16 values, or exact int32 block sums) and only the order and grouping of float
// additions differs; each rounding contributes at most 2^-24 relative of a partial sum bounded
// by sum|w*a|, and with tree-shaped/multi-accumulator sums the accumulated factor stays far below
// 1e-5 for n <= 8192 (worst sequential bound n * 2^-24 = 4.9e-4 is never approached: errors are
// random-signed). Quantized paths also scale int32 lane partial sums before adding (one extra
// rounding per block), well within the same bound.
static void test_isa_equivalence(void) {
    const char *isas[] = {"avx2", "avx512"};
    int64_t lens[24] = {32,   64,   96,   128, 160, 224, 256, 288, 4096,
                        4128, 4160, 4192, 1,   7,   15,  17,  33,  100};
    int n_lens = 18;
    for (int i = 0; i < 6; i++) lens[n_lens++] = 32 * (1 + (int64_t)(rng_u64() % 256));
    const int64_t nmax = 8192 + 64;
    float *w = malloc(nmax * sizeof(float)), *x = malloc(nmax * sizeof(float));
    void *wq = malloc(nmax * sizeof(float));
    uint8_t *qa = malloc(nmax * sizeof(float)), *qb = malloc(nmax * sizeof(float));
    float *fa = malloc(nmax * sizeof(float)), *fb = malloc(nmax * sizeof(float));
    for (int ii = 0; ii < 2; ii++) {
        if (speck_kernels_force_isa(isas[ii]) != 0) {
            printf("SKIP: isa %s not available on this CPU\n", isas[ii]);
            continue;
        }
        for (int ti = 0; ti < N_TYPES; ti++) {
            speck_type t = all_types[ti];
            int ok = 1, ok_q = 1, ok_dq = 1;
            double worst = 0;
            for (int li = 0; li < n_lens; li++) {
                int64_t n = lens[li];
                if (n % speck_type_block_size(t)) continue;
                for (int rep = 0; rep < 3; rep++) {
                    fill_random(w, n, rep == 2 ? 100.0f : 1.0f);
                    fill_random(x, n, rep == 1 ? 1e-3f : 1.0f);
                    speck_kernels_force_isa("scalar");
                    speck_quantize_row(t, w, wq, n);
                    double sabs;
                    float ref = api_dot(t, wq, x, n, &sabs);
                    speck_type at = speck_act_type(t);
                    speck_quantize_row(at, x, qa, n);
                    speck_dequantize_row(t, wq, fa, n);
                    speck_kernels_force_isa(isas[ii]);
                    float got = api_dot(t, wq, x, n, NULL);
                    speck_quantize_row(at, x, qb, n);
                    speck_dequantize_row(t, wq, fb, n);
                    double err = fabs((double)got - ref) / (sabs * 1e-5 + 1e-30);
                    if (err > worst) worst = err;
                    if (err > 1.0) {
                        ok = 0;
                        printf("  %s %s n=%lld: %.9g vs scalar %.9g (sum|wx| %g)\n", isas[ii],
                               speck_type_name(t), (long long)n, got, ref, sabs);
                    }
                    if (memcmp(qa, qb, speck_type_row_size(at, n))) ok_q = 0;
                    if (memcmp(fa, fb, n * sizeof(float))) ok_dq = 0;
                }
            }
            check(ok, "%s %s vec_dot equals scalar within 1e-5*sum|w*x| (worst %.3f of tol)",
                  isas[ii], speck_type_name(t), worst);
            check(ok_q, "%s activation quantization for %s bit-identical to scalar", isas[ii],
                  speck_type_name(t));
            check(ok_dq, "%s dequantize_row %s bit-identical to scalar", isas[ii],
                  speck_type_name(t));
        }
    }
    speck_kernels_force_isa("scalar");
    check(!strcmp(speck_kernels_isa(), "scalar"), "force_isa(scalar) switches path");
    check(speck_kernels_force_isa("bogus") == -1 && !strcmp(speck_kernels_isa(), "scalar"),
          "force_isa(unknown) fails and keeps the path");
    free(w), free(x), free(wq), free(qa), free(qb), free(fa), free(fb);
}

/* ---------------------------------------------------------------------------------------- */
/* matmul                                                                                    */
/* ---------------------------------------------------------------------------------------- */

// Y = X · Wᵀ against a double reference. W: (n_out, n_in) quantized from random floats and
// dequantized for the reference; X: (n_tok, n_in); the reference uses the activations rounded the
// way speck_matmul_act_type() says the chosen path rounds them (Q8_0 on the streaming and int8
// GEMM paths for quantized weights, f32 on the sgemm path). Tolerance 1e-4 * sum|w*x| per output
// (float accumulation over n_in <= 4096 terms in sgemm's blocked order: ~sqrt(n) * 2^-24 typical, n
// * 2^-24 = 2.4e-4 worst case never seen).
static int matmul_case(speck_type t, int64_t n_out, int64_t n_in, int64_t n_tok, double *worst) {
    float *wf = malloc(n_out * n_in * sizeof(float));
    float *x = malloc(n_tok * n_in * sizeof(float)), *xr = malloc(n_tok * n_in * sizeof(float));
    float *y = malloc(n_tok * n_out * sizeof(float));
    size_t wrow = speck_type_row_size(t, n_in);
    char *w = malloc(wrow * n_out);
    fill_random(wf, n_out * n_in, 1.0f);
    fill_random(x, n_tok * n_in, 2.0f);
    for (int64_t o = 0; o < n_out; o++) {
        speck_quantize_row(t, wf + o * n_in, w + o * wrow, n_in);
        speck_dequantize_row(t, w + o * wrow, wf + o * n_in, n_in);
    }
    speck_type at = speck_matmul_act_type(t, n_tok);
    void *qa = malloc(speck_type_row_size(SPECK_TYPE_F32, n_in));
    for (int64_t i = 0; i < n_tok; i++) {
        if (speck_matmul_act_type(t, n_tok) != SPECK_TYPE_F32) {
            speck_quantize_row(at, x + i * n_in, qa, n_in);
            speck_dequantize_row(at, qa, xr + i * n_in, n_in);
        } else {
            memcpy(xr + i * n_in, x + i * n_in, n_in * sizeof(float));
        }
    }
    for (int64_t i = 0; i < n_tok * n_out; i++) y[i] = -12345.0f; // every output must be written
    speck_matmul(t, w, n_out, n_in, x, n_tok, y);
    int ok = 1;
    for (int64_t i = 0; i < n_tok; i++) {
        for (int64_t o = 0; o < n_out; o++) {
            double s = 0, sa = 0;
            for (int64_t k = 0; k < n_in; k++) {
                double p = (double)wf[o * n_in + k] * xr[i * n_in + k];
                s += p, sa += fabs(p);
            }
            double err = fabs(y[i * n_out + o] - s) / (1e-4 * sa + 1e-20);
            if (!(err <= *worst)) *worst = isnan(err) ? INFINITY : err;
            if (!(err <= 1.0)) {
                if (ok)
                    printf("  y[%lld,%lld] = %.9g want %.9g\n", (long long)i, (long long)o,
                           y[i * n_out + o], s);
                ok = 0;
            }
        }
    }
    free(wf), free(x), free(xr), free(y), free(w), free(qa);
    return ok;
}

static void test_matmul(void) {
    const int64_t toks[] = {1, 2, 3, 4, 5, 31, 32, 33, 100};
    const char *isas[] = {"scalar", "avx2", "avx512"};
    for (int ii = 0; ii < 3; ii++) {
        if (speck_kernels_force_isa(isas[ii]) != 0) continue;
        for (int ti = 0; ti < N_TYPES; ti++) {
            speck_type t = all_types[ti];
            int ok = 1;
            double worst = 0;
            for (size_t k = 0; k < sizeof toks / sizeof toks[0]; k++) {
                ok &= matmul_case(t, 67, 256, toks[k], &worst);
                ok &= matmul_case(t, 5, 96, toks[k], &worst);  // tail blocks only
                ok &= matmul_case(t, 9, 416, toks[k], &worst); // 8-block groups + 5 tail blocks
            }
            check(ok, "[%s] matmul %s n_tok in {1..5,31,32,33,100} (worst %.3f of tol)", isas[ii],
                  speck_type_name(t), worst);
        }
    }
    // The rest runs on the best path available.
    if (speck_kernels_force_isa("avx512") != 0 && speck_kernels_force_isa("avx2") != 0)
        speck_kernels_force_isa("scalar");
    // Several prefill panels (n_in 4096 -> 512 rows per panel) and an odd token count.
    for (int ti = 0; ti < N_TYPES; ti++) {
        double worst = 0;
        int ok = matmul_case(all_types[ti], 1100, 4096, 33, &worst);
        ok &= matmul_case(all_types[ti], 300, 4096, 3, &worst);
        check(ok, "[%s] matmul %s 1100x4096 (multi-panel prefill) and decode (worst %.3f of tol)",
              speck_kernels_isa(), speck_type_name(all_types[ti]), worst);
    }
    // Degenerate sizes must not crash or write out of bounds.
    float y[4] = {1, 2, 3, 4}, xx[4] = {0};
    speck_matmul(SPECK_TYPE_Q4_0, NULL, 0, 32, xx, 1, y);
    speck_matmul(SPECK_TYPE_F32, NULL, 4, 32, xx, 0, y);
    check(y[0] == 1 && y[3] == 4, "matmul with n_out = 0 / n_tok = 0 writes nothing");
    speck_matmul(SPECK_TYPE_F32, xx, 2, 0, xx, 2, y);
    check(y[0] == 0 && y[1] == 0 && y[2] == 0 && y[3] == 0, "matmul with n_in = 0 gives zeros");
}

// The int8 GEMM prefill path (AVX-512 VNNI) for Q8_0/Q4_0 weights: against the double reference
// (matmul_case, 1e-4 * sum|w*x|) and against the scalar ISA's vec_dot on the same Q8_0
// activations (1e-5 * sum|w*x|: both compute the same exact per-block integer dots, only the
// float scaling and summation order differ). n_out values are not multiples of the 16-row vectors
// or 32-row strips; n_in 416 and 1056 end in partial K chunks (16 blocks) and 13 / 33 blocks.
static int gemm_vs_scalar(speck_type t, int64_t n_out, int64_t n_in, int64_t n_tok, double *worst) {
    const size_t wrow = speck_type_row_size(t, n_in),
                 arow = speck_type_row_size(SPECK_TYPE_Q8_0, n_in);
    float *wf = malloc(n_in * sizeof(float)), *x = malloc(n_tok * n_in * sizeof(float));
    float *y = malloc(n_tok * n_out * sizeof(float)), *wd = malloc(n_in * sizeof(float));
    float *ad = malloc(n_in * sizeof(float));
    char *w = malloc(wrow * n_out), *qa = malloc(arow * n_tok);
    for (int64_t o = 0; o < n_out; o++) {
        fill_random(wf, n_in, 1.0f);
        speck_quantize_row(t, wf, w + o * wrow, n_in);
    }
    fill_random(x, n_tok * n_in, 2.0f);
    speck_matmul(t, w, n_out, n_in, x, n_tok, y); // on the ISA and path the caller forced
    char isa[16];
    snprintf(isa, sizeof isa, "%s", speck_kernels_isa());
    speck_kernels_force_isa("scalar");
    for (int64_t i = 0; i < n_tok; i++)
        speck_quantize_row(SPECK_TYPE_Q8_0, x + i * n_in, qa + i * arow, n_in);
    int ok = 1;
    for (int64_t o = 0; o < n_out && ok; o++) {
        speck_dequantize_row(t, w + o * wrow, wd, n_in);
        for (int64_t i = 0; i < n_tok; i++) {
            const float ref = speck_vec_dot(t, w + o * wrow, qa + i * arow, n_in);
            speck_dequantize_row(SPECK_TYPE_Q8_0, qa + i * arow, ad, n_in);
            double sa = 0;
            for (int64_t k = 0; k < n_in; k++) sa += fabs((double)wd[k] * ad[k]);
            const double err = fabs((double)y[i * n_out + o] - ref) / (1e-5 * sa + 1e-20);
            if (!(err <= *worst)) *worst = isnan(err) ? INFINITY : err;
            if (!(err <= 1.0)) {
                printf("  %s %lldx%lld n_tok %lld: y[%lld,%lld] = %.9g, scalar %.9g\n",
                       speck_type_name(t), (long long)n_out, (long long)n_in, (long long)n_tok,
                       (long long)i, (long long)o, y[i * n_out + o], ref);
                ok = 0;
                break;
            }
        }
    }
    speck_kernels_force_isa(isa);
    free(wf), free(x), free(y), free(wd), free(ad), free(w), free(qa);
    return ok;
}

static void test_gemm(void) {
    if (speck_kernels_force_isa("avx512") != 0) {
        printf("SKIP: int8 GEMM needs avx512 (VNNI)\n");
        return;
    }
    const speck_type qt[] = {SPECK_TYPE_Q8_0, SPECK_TYPE_Q4_0};
    const int64_t toks[] = {16, 17, 32, 33, 34, 35, 100, 512};
    for (int ti = 0; ti < 2; ti++) {
        const speck_type t = qt[ti];
        check(speck_matmul_act_type(t, 16) == SPECK_TYPE_Q8_0 &&
                  speck_matmul_act_type(t, 512) == SPECK_TYPE_Q8_0,
              "[avx512] %s prefill takes Q8_0 activations (int8 GEMM path)", speck_type_name(t));
        int ok = 1, ok_s = 1;
        double worst = 0, worst_s = 0;
        for (size_t k = 0; k < sizeof toks / sizeof toks[0]; k++) {
            ok &= matmul_case(t, 67, 416, toks[k], &worst);
            ok &= matmul_case(t, 17, 1056, toks[k], &worst);
            ok &= matmul_case(t, 1, 64, toks[k], &worst);
            ok_s &= gemm_vs_scalar(t, 67, 416, toks[k], &worst_s);
            ok_s &= gemm_vs_scalar(t, 97, 1056, toks[k], &worst_s);
        }
        ok &= matmul_case(t, 301, 2048, 512, &worst);
        check(ok,
              "[avx512] int8 GEMM %s vs double, n_tok in {16,17,32..35,100,512}, odd n_out (worst "
              "%.3f of tol)",
              speck_type_name(t), worst);
        check(ok_s,
              "[avx512] int8 GEMM %s vs scalar vec_dot on the same Q8_0 activations (worst %.3f of "
              "tol)",
              speck_type_name(t), worst_s);
        // Token tails below one micro-tile, only reachable by forcing the path.
        speck_matmul_force_path("gemm");
        ok = 1, worst = 0;
        for (int64_t n = 1; n <= 7; n++) ok &= gemm_vs_scalar(t, 33, 416, n, &worst);
        speck_matmul_force_path("auto");
        check(ok, "[avx512] int8 GEMM %s forced for n_tok 1..7 (worst %.3f of tol)",
              speck_type_name(t), worst);
    }
}

// Below 16 tokens every row of a batched matmul must be bit-identical to the same row computed
// alone (speculative decoding verifies drafts in a batch and must reproduce greedy decoding).
static void test_batch_invariance(void) {
    const char *isas[] = {"scalar", "avx2", "avx512"};
    // 416: full 64-value steps plus a 32 tail; 100 (float types only): a masked 4-value tail.
    const int64_t n_out = 37, n_ins[] = {416, 100}, nt = 15, n_max = 416;
    float *x = malloc(nt * n_max * sizeof(float)), *wf = malloc(n_max * sizeof(float));
    float *y1 = malloc(nt * n_out * sizeof(float)), *yn = malloc(nt * n_out * sizeof(float));
    char *w = malloc(n_out * n_max * sizeof(float));
    fill_random(x, nt * n_max, 1.0f);
    for (int ii = 0; ii < 3; ii++) {
        if (speck_kernels_force_isa(isas[ii]) != 0) continue;
        for (int ni = 0; ni < 2; ni++)
            for (int ti = 0; ti < N_TYPES; ti++) {
                const speck_type t = all_types[ti];
                const int64_t n_in = n_ins[ni];
                if (n_in % 32 && (t == SPECK_TYPE_Q8_0 || t == SPECK_TYPE_Q4_0)) continue;
                const size_t wrow = speck_type_row_size(t, n_in);
                for (int64_t o = 0; o < n_out; o++) {
                    fill_random(wf, n_in, 1.0f);
                    speck_quantize_row(t, wf, w + o * wrow, n_in);
                }
                for (int64_t i = 0; i < nt; i++)
                    speck_matmul(t, w, n_out, n_in, x + i * n_in, 1, y1 + i * n_out);
                int ok = 1;
                for (int64_t n = 2; n <= nt; n++) {
                    speck_matmul(t, w, n_out, n_in, x, n, yn);
                    if (memcmp(y1, yn, n * n_out * sizeof(float))) {
                        if (ok)
                            printf("  %s %s: n_tok = %lld differs from n_tok = 1\n", isas[ii],
                                   speck_type_name(t), (long long)n);
                        ok = 0;
                    }
                }
                check(ok,
                      "[%s] matmul %s (n_in %lld) rows for n_tok 1..15 bit-identical to n_tok = 1",
                      isas[ii], speck_type_name(t), (long long)n_in);
            }
    }
    free(x), free(wf), free(y1), free(yn), free(w);
}

// One panel matrix P of type t (W dequantized: wf, (n_out, n_in)) against the double reference
// on xref (the activations as the kernel rounds them) for token counts toks and three row ranges
// (whole, cut mid-panel with +=, one row past a panel); rows outside the range must stay as
// they were, and each token alone / the range in two pieces must give bit-identical rows.
// y, y0, y1: (max tokens, n_out) scratch; abuf: activation scratch (or NULL for float types).
typedef struct {
    int ok_ref, ok_keep, ok_inv;
    double worst;
} panel_check;

static void panel_cases(speck_type t, const void *P, const float *wf, const float *x,
                        const float *xref, int64_t n_out, int64_t n_in, const int64_t *toks,
                        int n_toks, void *abuf, float *y, float *y0, float *y1, panel_check *pc) {
    const speck_type at = speck_panel_act_type(t);
    const int64_t r0s[] = {0, 5, 16}, r1s[] = {n_out, n_out - 3, 17 < n_out ? 17 : n_out};
    for (int k = 0; k < n_toks; k++)
        for (int ri = 0; ri < 3; ri++) {
            const int64_t nt = toks[k], o0 = r0s[ri], o1 = r1s[ri];
            const int acc = ri == 1; // accumulate on the mid-panel range
            fill_random(y0, nt * n_out, 1.0f);
            memcpy(y, y0, nt * n_out * sizeof(float));
            speck_mm_act a;
            speck_mm_act_prepare(at, x, nt, n_in, abuf, &a);
            speck_mm_panel_rows(t, P, &a, o0, o1, y, n_out, acc);
            for (int64_t i = 0; i < nt; i++)
                for (int64_t o = 0; o < n_out; o++) {
                    const float got = y[i * n_out + o];
                    if (o < o0 || o >= o1) {
                        pc->ok_keep &= got == y0[i * n_out + o];
                        continue;
                    }
                    double sum = acc ? y0[i * n_out + o] : 0, sa = fabs(sum);
                    for (int64_t kk = 0; kk < n_in; kk++) {
                        const double pr = (double)wf[o * n_in + kk] * xref[i * n_in + kk];
                        sum += pr, sa += fabs(pr);
                    }
                    const double err = fabs(got - sum) / (1e-4 * sa + 1e-20);
                    if (!(err <= pc->worst)) pc->worst = isnan(err) ? INFINITY : err;
                    pc->ok_ref &= err <= 1.0;
                }
            if (acc) continue;
            for (int64_t i = 0; i < nt; i++) {
                speck_mm_act_prepare(at, x + i * n_in, 1, n_in, abuf, &a);
                const int64_t mid = o0 + (o1 - o0) / 3;
                speck_mm_panel_rows(t, P, &a, o0, mid, y1 + i * n_out, n_out, 0);
                speck_mm_panel_rows(t, P, &a, mid, o1, y1 + i * n_out, n_out, 0);
                pc->ok_inv &=
                    !memcmp(y1 + i * n_out + o0, y + i * n_out + o0, (o1 - o0) * sizeof(float));
            }
        }
}

// The panel layout (speck_panel_pack) and its kernels: the packed bytes, results against a
// double reference for token counts across the kernels' token groups and row ranges not on
// panel boundaries, accumulation, untouched rows outside the range, and bit-identical rows
// whatever the token count or range split (the decode path's batch invariance). Tolerance as in
// matmul_case: 1e-4 * sum|w*x| (one float FMA chain over n_in <= 416 terms: <= 2.5e-5 worst).
static void test_panels(void) {
    const char *isas[] = {"scalar", "avx2", "avx512"};
    const speck_type types[] = {SPECK_TYPE_F32, SPECK_TYPE_F16, SPECK_TYPE_BF16};
    const int64_t n_outs[] = {37, 64, 300}, n_ins[] = {1, 7, 100, 416};
    const int64_t max_out = 300, max_in = 416, max_tok = 31;
    float *wf = malloc(max_out * max_in * sizeof(float));
    float *x = malloc(max_tok * max_in * sizeof(float));
    float *y = malloc(max_tok * max_out * sizeof(float)),
          *y0 = malloc(max_tok * max_out * sizeof(float));
    float *y1 = malloc(max_tok * max_out * sizeof(float));
    char *w = malloc(max_out * max_in * 4);
    void *P = malloc(speck_panel_bytes(SPECK_TYPE_F32, max_out, max_in));
    for (int ii = 0; ii < 3; ii++) {
        if (speck_kernels_force_isa(isas[ii]) != 0) continue;
        if (ii == 0) { // no panel kernels on the scalar path: the model keeps the row layout
            check(!speck_panel_supported(SPECK_TYPE_F16) && !speck_panel_supported(SPECK_TYPE_Q8_0),
                  "[scalar] no panel kernels");
            continue;
        }
        for (int ti = 0; ti < 3; ti++) {
            const speck_type t = types[ti];
            const size_t es = t == SPECK_TYPE_F32 ? 4 : 2;
            check(speck_panel_supported(t), "[%s] panel kernels for %s", isas[ii],
                  speck_type_name(t));
            if (!speck_panel_supported(t)) continue;
            int ok_layout = 1;
            panel_check pc = {1, 1, 1, 0};
            for (int oi = 0; oi < 3; oi++)
                for (int ni = 0; ni < 4; ni++) {
                    const int64_t n_out = n_outs[oi], n_in = n_ins[ni];
                    fill_random(wf, n_out * n_in, 1.0f);
                    fill_random(x, max_tok * n_in, 2.0f);
                    for (int64_t o = 0; o < n_out; o++) {
                        speck_quantize_row(t, wf + o * n_in, w + o * n_in * es, n_in);
                        speck_dequantize_row(t, w + o * n_in * es, wf + o * n_in, n_in);
                    }
                    const size_t pb = speck_panel_bytes(t, n_out, n_in);
                    ok_layout &= pb == (size_t)((n_out + 15) / 16) * 16 * n_in * es;
                    memset(P, 0xAB, pb);
                    speck_panel_pack(t, w, n_out, n_in, P);
                    for (int64_t p = 0; p < (n_out + 15) / 16; p++)
                        for (int64_t k = 0; k < n_in; k++)
                            for (int j = 0; j < 16; j++) {
                                const char *e = (const char *)P + ((p * n_in + k) * 16 + j) * es;
                                const int64_t r = 16 * p + j;
                                char zero[4] = {0};
                                ok_layout &= r < n_out ? !memcmp(e, w + (r * n_in + k) * es, es)
                                                       : !memcmp(e, zero, es);
                            }
                    // Token counts around the groups (AVX2 4, AVX-512 8).
                    const int64_t toks[] = {1, 2, 3, 4, 5, 8, 9, 15, 31};
                    panel_cases(t, P, wf, x, x, n_out, n_in, toks, 9, NULL, y, y0, y1, &pc);
                }
            check(ok_layout, "[%s] panel layout of %s: 16-row panels, k-major, zero padding",
                  isas[ii], speck_type_name(t));
            check(pc.ok_ref && pc.ok_keep,
                  "[%s] panel matmul %s: n_tok 1..31, ranges off panel bounds, += (worst %.3f of "
                  "tol), rows outside the range untouched",
                  isas[ii], speck_type_name(t), pc.worst);
            check(pc.ok_inv,
                  "[%s] panel matmul %s rows bit-identical for any n_tok and range split", isas[ii],
                  speck_type_name(t));
        }
    }
    free(wf), free(x), free(y), free(y0), free(y1), free(w), free(P);
}

// Q4_0 / Q8_0 panels on one ISA (AVX-512 VNNI: both; AVX2: Q4_0): the packed bytes (byte groups and
// scales of a known block), unpacking back to the exact rows, results against a double reference on
// the Q8_0-rounded activations (same tolerance as matmul_case), row ranges off panel bounds,
// accumulation, untouched rows, bit-identical rows for any token count / range split, and
// speck_matmul_panels on every path (streaming, int8 GEMM, sgemm) from the panels alone.
static void test_panels_quant(speck_type t, const char *isa) {
    if (speck_kernels_force_isa(isa) != 0 || !speck_panel_supported(t)) {
        printf("SKIP: [%s] no %s panel kernels (on this path or CPU)\n", isa, speck_type_name(t));
        return;
    }
    const int q8 = t == SPECK_TYPE_Q8_0;
    const size_t bb = q8 ? 544 : 288; // bytes per panel block
    const int64_t n_outs[] = {37, 64, 300}, n_ins[] = {32, 96, 416}, max_out = 300, max_in = 416;
    const int64_t max_tok = 33;
    const size_t max_row = speck_type_row_size(t, max_in);
    float *wf = malloc(max_out * max_in * sizeof(float)),
          *x = malloc(max_tok * max_in * sizeof(float));
    float *xr = malloc(max_tok * max_in * sizeof(float));
    float *y = malloc(max_tok * max_out * sizeof(float)),
          *y0 = malloc(max_tok * max_out * sizeof(float));
    float *y1 = malloc(max_tok * max_out * sizeof(float));
    char *w = malloc(max_out * max_row), *back = malloc(max_out * max_row);
    char *P = malloc(speck_panel_bytes(t, max_out, max_in));
    char *qa = malloc(speck_type_row_size(SPECK_TYPE_Q8_0, max_in));
    int ok_layout = 1, ok_unpack = 1, ok_paths = 1;
    panel_check pc = {1, 1, 1, 0};
    for (int oi = 0; oi < 3; oi++)
        for (int ni = 0; ni < 3; ni++) {
            const int64_t n_out = n_outs[oi], n_in = n_ins[ni], nb = n_in / 32;
            const size_t wrow = speck_type_row_size(t, n_in);
            fill_random(wf, n_out * n_in, 1.0f);
            fill_random(x, max_tok * n_in, 2.0f);
            for (int64_t o = 0; o < n_out; o++) {
                speck_quantize_row(t, wf + o * n_in, w + o * wrow, n_in);
                speck_dequantize_row(t, w + o * wrow, wf + o * n_in, n_in);
            }
            for (int64_t i = 0; i < max_tok; i++) { // the activations as the kernel sees them
                speck_quantize_row(SPECK_TYPE_Q8_0, x + i * n_in, qa, n_in);
                speck_dequantize_row(SPECK_TYPE_Q8_0, qa, xr + i * n_in, n_in);
            }
            const size_t pb = speck_panel_bytes(t, n_out, n_in);
            ok_layout &= pb == (size_t)((n_out + 15) / 16) * nb * bb;
            speck_panel_pack(t, w, n_out, n_in, P);
            // Row 17 (panel 1, lane 1), block nb - 1: its byte 4g + i at 64g + 4 + i (Q8_0: the
            // value + 128), scale at bb - 32 + 2; a padding row's lane holds zero (Q8_0: 128).
            if (n_out > 17) {
                const unsigned char *e = (const unsigned char *)P + (size_t)nb * bb + (nb - 1) * bb;
                const char *blk = w + 17 * wrow + (nb - 1) * (q8 ? 34 : 18);
                for (int g = 0; g < (q8 ? 8 : 4); g++)
                    for (int k = 0; k < 4; k++)
                        ok_layout &= e[64 * g + 4 + k] ==
                                     (unsigned char)(blk[2 + 4 * g + k] ^ (q8 ? 0x80 : 0));
                ok_layout &= !memcmp(e + bb - 32 + 2, blk, 2);
            }
            if (n_out % 16) {
                const unsigned char *e = (const unsigned char *)P + (size_t)(n_out / 16) * nb * bb;
                const int j = 15; // lane 15 of the last panel is padding when n_out % 16 != 0
                for (int g = 0; g < (q8 ? 8 : 4); g++)
                    ok_layout &= e[64 * g + 4 * j] == (q8 ? 0x80 : 0) &&
                                 e[64 * g + 4 * j + 3] == (q8 ? 0x80 : 0);
                ok_layout &= !e[bb - 32 + 2 * j] && !e[bb - 32 + 2 * j + 1];
            }
            speck_panel_unpack(t, P, n_in, 0, n_out, back);
            ok_unpack &= !memcmp(back, w, n_out * wrow);
            speck_panel_unpack(t, P, n_in, 5, n_out - 8, back);
            ok_unpack &= !memcmp(back, w + 5 * wrow, (n_out - 8) * wrow);
            const int64_t toks[] = {1, 2, 3, 4, 5, 9, 15};
            void *abuf = malloc(speck_mm_act_bytes(SPECK_TYPE_Q8_0, max_tok, n_in));
            panel_cases(t, P, wf, x, xr, n_out, n_in, toks, 7, abuf, y, y0, y1, &pc);
            free(abuf);
            // speck_matmul_panels with a poisoned row copy: every path must read the panels.
            memset(back, 0x7F, n_out * wrow);
            const char *paths[] = {"small", "gemm", "sgemm"};
            for (int pi = 0; pi < 3; pi++) {
                speck_matmul_force_path(paths[pi]);
                const int64_t nt = pi == 0 ? 3 : 33;
                speck_matmul_panels(t, back, P, n_out, n_in, x, nt, y);
                speck_matmul(t, w, n_out, n_in, x, nt, y1);
                for (int64_t i = 0; i < nt * n_out; i++) {
                    double sa = 0;
                    const int64_t ti = i / n_out, o = i % n_out;
                    for (int64_t kk = 0; kk < n_in; kk++)
                        sa += fabs((double)wf[o * n_in + kk] * x[ti * n_in + kk]);
                    ok_paths &= fabs(y[i] - y1[i]) <= 2e-3 * sa + 1e-6; // Q8_0 vs f32 activations
                }
            }
            speck_matmul_force_path("auto");
        }
    const char *tn = speck_type_name(t);
    check(ok_layout, "[%s] %s panel layout: byte groups, scales, padding rows", isa, tn);
    check(ok_unpack, "[%s] %s panels unpack to the exact rows (whole and offset ranges)", isa, tn);
    check(pc.ok_ref && pc.ok_keep,
          "[%s] %s panel matmul: n_tok 1..15, ranges off panel bounds, += (worst %.3f of "
          "tol), rows outside the range untouched",
          isa, tn, pc.worst);
    check(pc.ok_inv, "[%s] %s panel rows bit-identical for any n_tok and range split", isa, tn);
    check(ok_paths,
          "[%s] %s speck_matmul_panels: streaming, int8 GEMM and sgemm paths read "
          "the panels",
          isa, tn);
    free(wf), free(x), free(xr), free(y), free(y0), free(y1), free(w), free(back), free(P),
        free(qa);
}

// speck_attend on every ISA against a double-precision softmax attention: head sizes with and
// without a 16-lane tail (144: above the unrolled chunk counts), key counts around the 16-key
// blocks, no mask / a random mask / a mask allowing nothing, without and with soft-capped
// scores (cap 5: the scores here reach ~+-10, so the cap bends them).
static void test_attend(void) {
    const char *isas[] = {"scalar", "avx2", "avx512"};
    const int hds[] = {32, 64, 80, 100, 128, 144}, nks[] = {1, 7, 16, 17, 100, 300};
    const int ld = 2 * 144 + 8, max_keys = 300; // keys of one head inside wider cache rows
    float *kv = malloc((size_t)2 * max_keys * ld * sizeof(float)), q[144], out[144], sc[300];
    float *kc = kv, *vc = kv + (size_t)max_keys * ld;
    uint8_t allow[300], none[300] = {0};
    fill_random(kv, (size_t)2 * max_keys * ld, 1.0f);
    for (int j = 0; j < max_keys; j++) allow[j] = (rng_u64() % 3) != 0;
    allow[0] = 0;
    for (int ii = 0; ii < 3; ii++) {
        if (speck_kernels_force_isa(isas[ii]) != 0) continue;
        double worst = 0;
        int ok_none = 1;
        for (int hi = 0; hi < 6; hi++)
            for (int ki = 0; ki < 6; ki++)
                for (int mi = 0; mi < 4; mi++) {
                    const int hd = hds[hi], nk = nks[ki];
                    const uint8_t *m = mi & 1 ? allow : NULL;
                    const float scale = 1.0f / sqrtf((float)hd), cap = mi & 2 ? 5.0f : 0.0f;
                    fill_random(q, hd, 2.0f);
                    const int got =
                        speck_attend(q, kc + 8, vc + 8, ld, hd, nk, scale, cap, m, sc, out);
                    double s[300], mx = -INFINITY, sum = 0;
                    int any = 0;
                    for (int j = 0; j < nk; j++) {
                        if (m && !m[j]) continue;
                        s[j] = 0;
                        for (int d = 0; d < hd; d++) s[j] += (double)kc[8 + j * ld + d] * q[d];
                        s[j] *= scale;
                        if (cap > 0) s[j] = cap * tanh(s[j] / cap);
                        if (s[j] > mx) mx = s[j];
                        any = 1;
                    }
                    if (!any) {
                        int zero = got == 0;
                        for (int d = 0; d < hd; d++) zero &= out[d] == 0.0f;
                        ok_none &= zero;
                        continue;
                    }
                    for (int j = 0; j < nk; j++)
                        if (!m || m[j]) sum += exp(s[j] - mx);
                    for (int d = 0; d < hd; d++) {
                        double ref = 0;
                        for (int j = 0; j < nk; j++)
                            if (!m || m[j]) ref += exp(s[j] - mx) / sum * vc[8 + j * ld + d];
                        const double e = fabs(ref - out[d]);
                        if (!(e <= worst)) worst = e; // NaN propagates to worst
                    }
                    if (got != 1) worst = INFINITY;
                }
        for (int hi = 0; hi < 6; hi++) {
            const int got = speck_attend(q, kc, vc, ld, hds[hi], 17, 1.0f, 0.0f, none, sc, out);
            ok_none &= got == 0 && out[0] == 0.0f && out[hds[hi] - 1] == 0.0f;
        }
        // Outputs are convex combinations of values in [-1, 1]; float scores (error ~1e-6 for
        // |q . k| <= ~20) and a ~1-ulp exp move each weight by ~1e-6 relative: 1e-5 bounds it.
        check(worst <= 1e-5,
              "[%s] attend: head sizes 32..144, 1..300 keys, masks, soft-caps: max abs error "
              "%.2e <= 1e-5",
              isas[ii], worst);
        check(ok_none, "[%s] attend: nothing allowed -> returns 0, output zeroed", isas[ii]);
    }
    free(kv);
}

// speck_attend_group on every ISA: each query's output bit-identical to speck_attend on that
// query alone (the decode path's batch invariance), for head sizes 32, 80 (five chunks of 16),
// 100 (a partial last chunk on every ISA) and 144 (above 128: the generic chunk loop), per-token
// key counts and mask rows (one row allowing nothing), and more queries than one pass holds (gq
// 20 x 5 tokens = 100 > 64). Keys and values in f32, and in f16 (then against speck_attend on the
// same values widened to f32: the conversion is exact).
static void test_attend_group(void) {
    const char *isas[] = {"scalar", "avx2", "avx512"};
    const int hds[] = {32, 80, 100, 144}, gqs[] = {1, 3, 20};
    const int nt = 5, maxk = 90, ld = 3 * 144 + 5, lda = 97, ldq = 20 * 144 + 3;
    const size_t nkv = (size_t)2 * maxk * ld;
    float *kv = malloc(nkv * sizeof(float)), *kvw = malloc(nkv * sizeof(float));
    uint16_t *kv16 = malloc(nkv * sizeof(uint16_t));
    float *q = malloc((size_t)nt * ldq * sizeof(float)),
          *out = malloc((size_t)nt * ldq * sizeof(float));
    float *sc = malloc((size_t)64 * maxk * sizeof(float)), one[144], sc1[96];
    uint8_t allow[5 * 97];
    fill_random(kv, nkv, 1.0f);
    for (size_t i = 0; i < nkv; i++)
        kvw[i] = speck_fp16_to_fp32(kv16[i] = speck_fp32_to_fp16(kv[i]));
    fill_random(q, (size_t)nt * ldq, 2.0f);
    for (int i = 0; i < nt * lda; i++) allow[i] = (rng_u64() % 4) != 0;
    memset(allow + 2 * lda, 0, lda); // token 2 sees nothing; token 0 (one key) sees its key
    allow[0] = 1;
    const int n_keys[5] = {1, 17, 90, 33, 64};
    for (int ii = 0; ii < 3; ii++) {
        if (speck_kernels_force_isa(isas[ii]) != 0) continue;
        int ok[2] = {1, 1};
        for (int f16 = 0; f16 < 2; f16++)
            for (int hi = 0; hi < 4; hi++)
                for (int gi = 0; gi < 3; gi++)
                    for (int mi = 0; mi < 3; mi++) {
                        const int hd = hds[hi], gq = gqs[gi];
                        const uint8_t *m = mi == 1 ? allow : NULL;
                        const float scale = 1.0f / sqrtf((float)hd), cap = mi == 2 ? 5.0f : 0.0f;
                        const size_t ko = 5, vo = (size_t)maxk * ld + 5;
                        const float *kb = (f16 ? kvw : kv) + ko, *vb = (f16 ? kvw : kv) + vo;
                        const int empty = speck_attend_group(
                            q, ldq, nt, gq, n_keys, m, lda, f16 ? (const void *)(kv16 + ko) : kb,
                            f16 ? (const void *)(kv16 + vo) : vb,
                            f16 ? SPECK_TYPE_F16 : SPECK_TYPE_F32, ld, hd, scale, cap, sc, maxk,
                            out, ldq);
                        int want_empty = 0;
                        for (int t = 0; t < nt; t++)
                            for (int h = 0; h < gq; h++) {
                                const int got =
                                    speck_attend(q + t * ldq + h * hd, kb, vb, ld, hd, n_keys[t],
                                                 scale, cap, m ? m + t * lda : NULL, sc1, one);
                                want_empty += !got;
                                ok[f16] &= memcmp(one, out + t * ldq + h * hd,
                                                  (size_t)hd * sizeof(float)) == 0;
                            }
                        ok[f16] &= empty == want_empty && (mi != 1 || want_empty == gq);
                    }
        check(ok[0],
              "[%s] attend_group: every query's output bit-identical to speck_attend alone "
              "(head sizes 32/80/100/144, 1/3/20 heads x 5 tokens, per-token key counts, masks, "
              "soft-caps)",
              isas[ii]);
        check(ok[1],
              "[%s] attend_group on an f16 cache: bit-identical to speck_attend on the "
              "widened values",
              isas[ii]);
    }
    free(kv), free(kvw), free(kv16), free(q), free(out), free(sc);
}

int main(void) {
    printf("kernels: dispatcher picked %s\n", speck_kernels_isa());
    const char *best = speck_kernels_isa();
    char best_name[16];
    snprintf(best_name, sizeof best_name, "%s", best);
    test_fp16();
    test_bf16();
    test_layout();
    test_quant_error();
    test_isa_equivalence();
    test_matmul();
    test_gemm();
    test_batch_invariance();
    test_panels();
    test_panels_quant(SPECK_TYPE_Q4_0, "avx512");
    test_panels_quant(SPECK_TYPE_Q8_0, "avx512");
    test_panels_quant(SPECK_TYPE_Q4_0, "avx2");
    test_panels_quant(SPECK_TYPE_Q8_0, "avx2");
    test_attend();
    test_attend_group();
    speck_kernels_force_isa(best_name);
    printf("%d passed, %d failed\n", g_pass, g_fail);
    return g_fail ? 1 : 0;
}
