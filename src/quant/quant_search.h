// Scale searches shared by the quantizers in src/quant/ (private to that folder).
//
// Each returns the scale of a group of n values and writes its integer levels; they are the
// searches llama.cpp's quantizers run, with the same float operations in the same order, so the
// chosen levels and scales are the same bit for bit.
#ifndef SPECK_QUANT_SEARCH_H
#define SPECK_QUANT_SEARCH_H

#include <stdint.h>
#include <string.h>

// Round to nearest, ties to even, for |v| <= 2^22: adding 1.5 * 2^23 leaves the rounded integer
// in the low mantissa bits (the FPU rounds the addition). Larger |v| give garbage, as in ggml.
static inline int speck_nearest_int(float v) {
    const float t = v + 12582912.f;
    int32_t i;
    memcpy(&i, &t, sizeof i);
    return (i & 0x007fffff) - 0x00400000;
}

// Signed levels L in [0, 2 nmax) for x ~ scale * (L - nmax). rmse_type 0: one pass from the
// largest magnitude; 1: importance-weighted least squares over 19 candidate scales (weights qw,
// or x^2 when qw is NULL); negative: one least-squares step then the mean of the two estimates.
float speck_make_qx(int n, int nmax, const float *x, int8_t *L, int rmse_type, const float *qw);
// Q3_K's per-sub-block search: levels in [0, 2 nmax), optionally refined by coordinate descent
// on the x^2-weighted error.
float speck_make_q3(int n, int nmax, const float *x, int8_t *L, int do_rmse);
// Asymmetric levels L in [0, nmax] for x ~ scale * L - min (min >= 0 returned in *the_min):
// candidate scales (nmax + rmin + rdelta * i) / (max - min), i = 0..nstep, each refit by
// weighted least squares; error |d| (use_mad) or d^2. weights must not be NULL.
float speck_make_qkx2(int n, int nmax, const float *x, const float *weights, uint8_t *L,
                      float *the_min, uint8_t *Laux, float rmin, float rdelta, int nstep,
                      int use_mad);
// The same with weights x^2 when weights is NULL and max <= min treated as a constant group.
float speck_make_qkx3(int n, int nmax, const float *x, const float *weights, uint8_t *L,
                      float *the_min, uint8_t *Laux, float rmin, float rdelta, int nstep,
                      int use_mad);
// Unsigned levels L in [0, nmax] for x >= 0 (a super-block's sub-block scales or mins),
// weighted by w: 9 candidate scales, then coordinate descent.
float speck_make_qp(int n, int nmax, const float *x, uint8_t *L, const float *w);
// Index of the grid value (val: n increasing int8) nearest to x (ties to the upper one).
int speck_grid_index(int n, const int8_t *val, float x);

#endif
