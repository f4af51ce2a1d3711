// Private helpers for elementwise loops outside src/kernels: multiversioning and an exp that
// vectorises.
#ifndef SPECK_SIMD_MATH_H
#define SPECK_SIMD_MATH_H

#include <math.h>
#include <stdint.h>
#include <string.h>

// Elementwise loops get AVX-512/AVX2 clones picked at load time (ifunc), so the generic x86-64
// binary still runs them at full width.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) &&                             \
    !defined(__SANITIZE_ADDRESS__)
#define SPECK_MULTIVERSION                                                                         \
    __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define SPECK_MULTIVERSION
#endif

// e^x without a library call, so that loops over it vectorise (libm's expf was ~5 % of a decode
// step of the default model in SwiGLU, and most of the sampler's softmax): Cody-Waite
// reduction, the Cephes expf polynomial (~1 ulp), 2^n built in the exponent field. Below
// -87.3 (where e^x leaves the normal floats) the result is 0, as for -inf; above 88.72 (where
// it leaves the floats) +inf; NaN stays NaN. Between 88 and 88.72 it stays at e^88.
// Every float gives a defined result: a comparison with NaN is false, so the clamps send NaN to
// -87 and the exponent built from it stays in range (converting NaN to an integer, or shifting
// a negative one, would be undefined; weights from a hostile file make NaN activations).
static inline float speck_exp_poly(float x) {
    const float zero = x < -87.3f ? 0.0f : 1.0f;
    float c = x > -87.0f ? x : -87.0f;
    c = c < 88.0f ? c : 88.0f;
    const float n = rintf(c * 1.44269504088896341f);
    float r = c - n * 0.693359375f;
    r = r - n * -2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * (r * r) + r + 1.0f;
    const uint32_t bits = (uint32_t)((int32_t)n + 127) << 23;
    float scale;
    memcpy(&scale, &bits, sizeof scale);
    const float y = x > 88.7228394f ? INFINITY : p * scale * zero;
    return x == x ? y : x;
}

// Σ x[j]² in double, in 16 lanes combined in a fixed order: the same value from every clone,
// and a vectorised loop (one running double sum is a chain of dependent adds: ~1000 cycles on
// a 256-wide row, 7 % of an 8-token pass of the default model in its RMSNorms).
static inline double speck_sum_sq(const float *x, int n) {
    double acc[16] = {0};
    int j = 0;
    for (; j + 16 <= n; j += 16)
        for (int k = 0; k < 16; k++) acc[k] += (double)x[j + k] * x[j + k];
    for (; j < n; j++) acc[j % 16] += (double)x[j] * x[j];
    for (int k = 0; k < 8; k++) acc[k] += acc[k + 8];
    for (int k = 0; k < 4; k++) acc[k] += acc[k + 4];
    return (acc[0] + acc[2]) + (acc[1] + acc[3]);
}

#endif
