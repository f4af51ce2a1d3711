// GPTQ (Frantar et al. 2022, "Optimal Brain Quantization" applied column by column) into
// llama.cpp's block types: the columns of a weight matrix are rounded in order, and each
// column's rounding error is fed forward onto the columns not yet rounded, weighted by the
// inverse Hessian of the layer's squared output error, H = sum over calibration tokens of x x^T.
// Each block's scales (and mins) are chosen when the loop reaches it, by the type's own quantizer
// (llama-quantize's search, importance-weighted) run on the error-compensated weights; the
// levels inside are then chosen column by column.
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include <cblas.h>

#include "calib/calib.h"
#include "quant/quant.h"

// LAPACK (OpenBLAS exports it): Cholesky factorization and inverse from it, column-major.
extern void dpotrf_(const char *uplo, const int *n, double *a, const int *lda, int *info);
extern void dpotri_(const char *uplo, const int *n, double *a, const int *lda, int *info);

// (calib.h) Row-major arrays are the transposes of LAPACK's column-major view: a column-major lower factor
// L (A = L L^T) reads as the row-major upper triangle L^T.
int calib_inverse_cholesky(double *A, int n) {
    int info = 0;
    dpotrf_("L", &n, A, &n, &info);
    if (!info) dpotri_("L", &n, A, &n, &info);
    if (info) return -1;
    for (int i = 0; i < n; i++) // the inverse sits in the row-major upper triangle: mirror it
        for (int j = 0; j < i; j++) A[(size_t)i * n + j] = A[(size_t)j * n + i];
    dpotrf_("L", &n, A, &n, &info);
    if (info) return -1;
    for (int i = 0; i < n; i++)
        for (int j = 0; j < i; j++) A[(size_t)i * n + j] = 0;
    return 0;
}

// The level of value w on element grid (A, B): nearest of the representable values, ties to the
// lower level.
static inline int best_level(const speck_levels_facts *li, float A, float B, float w) {
    if (A == 0) return li->lmin; // every level decodes to B
    int L;
    if (li->grid) {
        const float v = w / A; // grid increasing; A may be negative
        L = li->lmin;
        float be = INFINITY;
        for (int k = li->lmin; k < li->nlev; k++) {
            const float e = fabsf(v - li->grid[k]);
            if (e < be) be = e, L = k;
        }
        return L;
    }
    L = (int)lrintf((w - B) / A) + li->off;
    if (L < li->lmin) L = li->lmin;
    if (L > li->nlev - 1) L = li->nlev - 1;
    // The rounding of B can make a neighbour the nearer value: compare exactly.
    int best = L;
    float be = fabsf(w - speck_levels_value(li, A, B, L));
    for (int k = L - 1; k <= L + 1; k += 2) {
        if (k < li->lmin || k >= li->nlev) continue;
        const float e = fabsf(w - speck_levels_value(li, A, B, k));
        if (e < be) be = e, best = k;
    }
    return best;
}

static inline float level_value(const speck_levels_facts *li, float A, float B, int L) {
    return speck_levels_value(li, A, B, L);
}

int speck_gptq(speck_type t, const float *W0, int64_t rows, int64_t cols, const double *H,
               double damp, bool weighted, void *out) {
    const speck_type_traits *tr = speck_traits(t);
    speck_levels_facts li;
    if (!tr || !tr->quant || speck_levels_info(t, &li) || cols % tr->block)
        return speck_set_error(SPECK_ERR_ARG, "gptq: type %s cannot take rows of %lld",
                               speck_type_name(t) ? speck_type_name(t) : "?", (long long)cols);
    const int n = (int)cols, bs = tr->block;
    const size_t rs = speck_type_row_size(t, cols);
    double *Hd = malloc((size_t)n * n * sizeof *Hd);
    float *W = malloc((size_t)rows * n * sizeof *W), *U = malloc((size_t)n * n * sizeof *U);
    float *imp = malloc((size_t)n * sizeof *imp), *E = malloc((size_t)rows * bs * sizeof *E);
    if (!Hd || !W || !U || !imp || !E) {
        free(Hd), free(W), free(U), free(imp), free(E);
        return speck_set_error(SPECK_ERR_NOMEM, "gptq: out of memory for %d columns", n);
    }
    memcpy(Hd, H, (size_t)n * n * sizeof *Hd);
    memcpy(W, W0, (size_t)rows * n * sizeof *W);
    // Columns no token ever activated carry no information: zero weight, unit curvature.
    double mean = 0;
    for (int j = 0; j < n; j++) mean += Hd[(size_t)j * n + j];
    mean /= n;
    for (int j = 0; j < n; j++) {
        double *hjj = &Hd[(size_t)j * n + j];
        imp[j] = (float)(*hjj / (mean > 0 ? mean : 1));
        if (*hjj <= 0) {
            *hjj = 1;
            for (int64_t r = 0; r < rows; r++) W[r * n + j] = 0;
        }
        *hjj += damp * (mean > 0 ? mean : 1);
    }
    if (calib_inverse_cholesky(Hd, n)) {
        free(Hd), free(W), free(U), free(imp), free(E);
        return speck_set_error(SPECK_ERR_ARG, "gptq: the Hessian is not positive definite "
                                              "(too little calibration data? raise the damping)");
    }
    for (size_t i = 0; i < (size_t)n * n; i++) U[i] = (float)Hd[i];
    free(Hd);
    int rc = 0;
    for (int i1 = 0; i1 < n && !rc; i1 += bs) {
        const int i2 = i1 + bs;
#pragma omp parallel for schedule(static) if (rows * bs * bs >= (1 << 18))
        for (int64_t r = 0; r < rows; r++) {
            float *w = W + r * n, *e = E + r * bs;
            uint8_t *blk = (uint8_t *)out + (size_t)r * rs + (size_t)(i1 / bs) * tr->bytes;
            float A[256], B[256];
            uint8_t L[256];
            // The block's scales from the weights as they stand now (errors of the columns
            // before it already folded in).
            tr->quant(w + i1, blk, bs, weighted ? imp + i1 : NULL);
            speck_levels_get(t, blk, bs, A, B, L);
            for (int j = i1; j < i2; j++) {
                const int k = j - i1;
                L[k] = (uint8_t)best_level(&li, A[k], B[k], w[j]);
                const float err = (w[j] - level_value(&li, A[k], B[k], L[k])) / U[(size_t)j * n + j];
                const float *u = U + (size_t)j * n;
                for (int c = j + 1; c < i2; c++) w[c] -= err * u[c];
                e[k] = err;
            }
            speck_levels_set(t, blk, bs, L);
        }
        // The block's errors onto every later column at once (the "lazy batch" update).
        if (i2 < n)
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)rows, n - i2, bs, -1.0f, E,
                        bs, U + (size_t)i1 * n + i2, n, 1.0f, W + i2, n);
    }
    free(W), free(U), free(imp), free(E);
    return rc;
}
