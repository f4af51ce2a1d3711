// One-shot pruning of one weight matrix: magnitude, Wanda and SparseGPT masks (unstructured or
// N:M), SparseGPT's error compensation under the inverse Hessian's Cholesky factor, DSnoT's
// prune-and-grow mask refinement on top of magnitude or Wanda.
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cblas.h>

#include "calib/calib.h"
#include "sparse/sparse.h"

int64_t sparse_n_pruned(double s, int64_t n) {
    return (int64_t)floor(s * (double)n + 0.5);
}

int speck_prune_parse_sparsity(const char *s, speck_prune_opts *o) {
    char *end;
    if (!s || !*s) return speck_set_error(SPECK_ERR_ARG, "sparsity: empty (50%%, 0.6 or 2:4)");
    if (strchr(s, ':')) {
        long n = strtol(s, &end, 10), m;
        if (end == s || *end != ':') goto bad;
        const char *p = end + 1;
        m = strtol(p, &end, 10);
        if (end == p || *end) goto bad;
        if (n < 1 || m < 2 || n >= m || m > 64)
            return speck_set_error(SPECK_ERR_ARG,
                                   "sparsity '%s': N:M needs 1 <= N < M <= 64 (at most N of "
                                   "every M consecutive weights kept, e.g. 2:4)",
                                   s);
        o->nm_n = (int)n, o->nm_m = (int)m, o->sparsity = 1.0 - (double)n / (double)m;
        return 0;
    }
    double v = strtod(s, &end);
    if (end == s) goto bad;
    if (*end == '%' && !end[1])
        v /= 100;
    else if (*end)
        goto bad;
    if (!(v > 0 && v < 1))
        return speck_set_error(SPECK_ERR_ARG,
                               "sparsity '%s' is outside (0, 1) (the fraction of weights "
                               "zeroed: 50%%, 0.6, or N:M such as 2:4)",
                               s);
    o->sparsity = v, o->nm_n = o->nm_m = 0;
    return 0;
bad:
    return speck_set_error(SPECK_ERR_ARG,
                           "sparsity '%s': expected a percentage (50%%), a fraction (0.6) or "
                           "N:M (2:4)",
                           s);
}

typedef struct {
    double s;
    int64_t i;
} scored;

static int cmp_scored(const void *a, const void *b) {
    const scored *x = a, *y = b;
    if (x->s != y->s) return x->s < y->s ? -1 : 1;
    return x->i < y->i ? -1 : x->i > y->i;
}

// Set mask[j] = 1 for the k lowest of score[0..n) (ties: the lower index first). tmp: (n).
static void select_lowest(const double *score, int64_t n, int64_t k, scored *tmp, uint8_t *mask) {
    if (k <= 0) return;
    for (int64_t j = 0; j < n; j++) tmp[j] = (scored){score[j], j};
    qsort(tmp, (size_t)n, sizeof *tmp, cmp_scored);
    for (int64_t j = 0; j < k && j < n; j++) mask[tmp[j].i] = 1;
}

// Column statistics of one matrix's input: x2 (Wanda's ||x_j||^2, or a positive multiple),
// mean and var (DSnoT's E[x_j], Var[x_j]); NULL where a method does not read them.
typedef struct {
    const float *x2, *mean, *var;
} col_stats;

// Per-row scratch of the mask selection and DSnoT (cols entries each).
typedef struct {
    double *sc, *d;
    scored *tmp, *grow, *cut;
    uint8_t *mask, *kept0;
} row_buf;

static void row_buf_free(row_buf *b) {
    free(b->sc), free(b->d), free(b->tmp), free(b->grow), free(b->cut), free(b->mask),
        free(b->kept0);
}

static bool row_buf_alloc(row_buf *b, int64_t cols, bool dsnot) {
    const size_t n = (size_t)cols;
    *b = (row_buf){
        .sc = malloc(n * sizeof *b->sc), .tmp = malloc(n * sizeof *b->tmp), .mask = malloc(n)};
    if (dsnot) {
        b->d = malloc(n * sizeof *b->d), b->grow = malloc(n * sizeof *b->grow);
        b->cut = malloc(n * sizeof *b->cut), b->kept0 = malloc(n);
    }
    return b->sc && b->tmp && b->mask && (!dsnot || (b->d && b->grow && b->cut && b->kept0));
}

// DSnoT (Zhang et al. 2023) on one row w (cols) whose first mask is mask (1 = pruned); the rule
// is speck_prune_matrix's comment in speck_quant.h. b->sc holds the Wanda scores |w_j| *
// sqrt(x2_j). Only mask changes; rep gets the row's counts.
static void dsnot_row(const speck_prune_opts *o, const float *w, int64_t cols, const col_stats *st,
                      row_buf *b, speck_dsnot_report *rep) {
    const double thr = o->dsnot_threshold > 0 ? o->dsnot_threshold : 0.1;
    double *d = b->d, eps = 0;
    for (int64_t j = 0; j < cols; j++) {
        d[j] = (double)w[j] * (double)st->mean[j];
        if (b->mask[j]) eps += d[j];
        b->kept0[j] = !b->mask[j];
    }
    rep->rows++, rep->eps0 += fabs(eps);
    if (!(fabs(eps) > thr)) {
        rep->eps1 += fabs(eps);
        return;
    }
    const double s = eps > 0 ? 1.0 : -1.0;
    int64_t ng = 0, nc = 0;
    for (int64_t j = 0; j < cols; j++) {
        if (b->mask[j] && s * d[j] > 0) {
            const double v = st->var[j] > 1e-30 ? (double)st->var[j] : 1e-30;
            b->grow[ng++] = (scored){-(s * d[j] / v), j};
        } else if (!b->mask[j] && s * d[j] < 0 && o->nm_m == 0) {
            b->cut[nc++] = (scored){b->sc[j], j};
        }
    }
    qsort(b->grow, (size_t)ng, sizeof *b->grow, cmp_scored);
    if (o->nm_m == 0) qsort(b->cut, (size_t)nc, sizeof *b->cut, cmp_scored);
    int64_t ig = 0, ic = 0;
    for (int cyc = 0; cyc < o->dsnot_cycles && fabs(eps) > thr; cyc++) {
        if (ig >= ng) break;
        const int64_t g = b->grow[ig++].i;
        int64_t p = -1;
        if (o->nm_m == 0) {
            if (ic >= nc) break;
            p = b->cut[ic++].i;
        } else {
            const int64_t g0 = g - g % o->nm_m;
            for (int64_t j = g0; j < g0 + o->nm_m; j++)
                if (b->kept0[j] && !b->mask[j] && s * d[j] < 0 && (p < 0 || b->sc[j] < b->sc[p]))
                    p = j;
            if (p < 0) continue; // no weight of g's group can go in its place
        }
        const double after = eps + d[p] - d[g];
        if (!(s * after > 0)) break; // the swap would flip (or zero) the sign of eps
        b->mask[g] = 0, b->mask[p] = 1, eps = after;
        rep->swaps++;
    }
    rep->eps1 += fabs(eps);
}

// Magnitude and Wanda (score |W_ij|, times sqrt(x2_j) when wanda): one comparison group per
// row (unstructured) or per N:M group; then DSnoT when o->dsnot_cycles > 0.
static int prune_scored(const speck_prune_opts *o, float *W, int64_t rows, int64_t cols,
                        bool wanda, const col_stats *st) {
    if (cols < 1 || rows < 1) return 0;
    const bool dsnot = o->dsnot_cycles > 0;
    int oom = 0;
#pragma omp parallel reduction(+ : oom) if (rows * cols >= (1 << 16))
    {
        row_buf b;
        speck_dsnot_report rep = {0};
        const bool ok = row_buf_alloc(&b, cols, dsnot);
        oom += !ok;
#pragma omp for schedule(static)
        for (int64_t r = 0; r < rows; r++) {
            if (!ok) continue;
            float *w = W + r * cols;
            for (int64_t j = 0; j < cols; j++) {
                b.sc[j] = fabs((double)w[j]) * (wanda ? sqrt((double)st->x2[j]) : 1.0);
                b.mask[j] = 0;
            }
            if (o->nm_m > 0)
                for (int64_t g = 0; g < cols; g += o->nm_m)
                    select_lowest(b.sc + g, o->nm_m, o->nm_m - o->nm_n, b.tmp, b.mask + g);
            else
                select_lowest(b.sc, cols, sparse_n_pruned(o->sparsity, cols), b.tmp, b.mask);
            if (dsnot) {
                if (!wanda)
                    for (int64_t j = 0; j < cols; j++)
                        b.sc[j] = fabs((double)w[j]) * sqrt((double)st->x2[j]);
                dsnot_row(o, w, cols, st, &b, &rep);
            }
            for (int64_t j = 0; j < cols; j++)
                if (b.mask[j]) w[j] = 0;
        }
        row_buf_free(&b);
        if (dsnot && o->dsnot_report) {
#pragma omp critical(speck_dsnot_report)
            {
                speck_dsnot_report *t = o->dsnot_report;
                t->rows += rep.rows, t->swaps += rep.swaps, t->eps0 += rep.eps0,
                    t->eps1 += rep.eps1;
            }
        }
    }
    return oom ? speck_set_error(SPECK_ERR_NOMEM, "prune: out of memory") : 0;
}

// SparseGPT (Frantar & Alistarh 2023, Algorithm 1), in float64. U: the upper Cholesky factor of
// the damped inverse Hessian (H^-1 = U^T U). Columns are visited in blocks of bs; an
// unstructured mask is chosen per row when the loop reaches a block, from the compensated
// weights' OBS saliency w^2 / U_jj^2, pruning round(s * i2) - round(s * i1) of the block's
// columns (so each row ends with round(s * cols)); an N:M mask is chosen per group of M when
// the loop reaches its first column. Each column's error (w - q) / U_jj is fed onto the later
// columns of the block at once and onto the columns after the block in one product (the lazy
// batch update).
static int prune_sparsegpt(const speck_prune_opts *o, float *W0, int64_t rows, int64_t cols,
                           const double *H0) {
    const int n = (int)cols;
    int bs = o->blocksize > 0 ? o->blocksize : 128;
    if (o->nm_m > 0 && bs % o->nm_m) bs = (bs / o->nm_m + 1) * o->nm_m;
    const double damp = o->damp > 0 ? o->damp : 0.01;
    double *U = malloc((size_t)n * n * sizeof *U), *W = malloc((size_t)rows * n * sizeof *W);
    double *E = malloc((size_t)rows * bs * sizeof *E);
    if (!U || !W || !E) {
        free(U), free(W), free(E);
        return speck_set_error(SPECK_ERR_NOMEM, "sparsegpt: out of memory for %d columns", n);
    }
    memcpy(U, H0, (size_t)n * n * sizeof *U);
    for (size_t i = 0; i < (size_t)rows * n; i++) W[i] = W0[i];
    // Inputs no calibration token activated: their weights carry nothing (zeroed, so they are
    // the first pruned), unit curvature.
    double mean = 0;
    for (int j = 0; j < n; j++) {
        double *hjj = &U[(size_t)j * n + j];
        if (*hjj <= 0) {
            *hjj = 1;
            for (int64_t r = 0; r < rows; r++) W[r * n + j] = 0;
        }
        mean += *hjj;
    }
    mean /= n;
    for (int j = 0; j < n; j++) U[(size_t)j * n + j] += damp * mean;
    if (calib_inverse_cholesky(U, n)) {
        free(U), free(W), free(E);
        return speck_set_error(SPECK_ERR_ARG, "sparsegpt: the Hessian is not positive definite "
                                              "(too little calibration data?)");
    }
    int oom = 0;
    for (int i1 = 0; i1 < n; i1 += bs) {
        const int i2 = i1 + bs < n ? i1 + bs : n, nb = i2 - i1;
        const int64_t k_blk = sparse_n_pruned(o->sparsity, i2) - sparse_n_pruned(o->sparsity, i1);
#pragma omp parallel reduction(+ : oom) if (rows * nb * nb >= (1 << 18))
        {
            double *sc = malloc((size_t)bs * sizeof *sc);
            scored *tmp = malloc((size_t)bs * sizeof *tmp);
            uint8_t *mask = malloc((size_t)bs);
            oom += !sc || !tmp || !mask;
#pragma omp for schedule(static)
            for (int64_t r = 0; r < rows; r++) {
                if (!sc || !tmp || !mask) continue;
                double *w = W + r * n, *e = E + r * bs;
                memset(mask, 0, (size_t)bs);
                if (o->nm_m == 0) {
                    for (int j = i1; j < i2; j++) {
                        const double d = U[(size_t)j * n + j];
                        sc[j - i1] = w[j] * w[j] / (d * d);
                    }
                    select_lowest(sc, nb, k_blk, tmp, mask);
                }
                for (int j = i1; j < i2; j++) {
                    const int k = j - i1;
                    if (o->nm_m > 0 && k % o->nm_m == 0) {
                        for (int c = 0; c < o->nm_m; c++) {
                            const double d = U[(size_t)(j + c) * n + j + c];
                            sc[c] = w[j + c] * w[j + c] / (d * d);
                        }
                        select_lowest(sc, o->nm_m, o->nm_m - o->nm_n, tmp, mask + k);
                    }
                    const double q = mask[k] ? 0.0 : w[j];
                    const double err = (w[j] - q) / U[(size_t)j * n + j];
                    const double *u = U + (size_t)j * n;
                    for (int c = j + 1; c < i2; c++) w[c] -= err * u[c];
                    w[j] = q;
                    e[k] = err;
                }
            }
            free(sc), free(tmp), free(mask);
        }
        if (oom) break;
        if (i2 < n)
            cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)rows, n - i2, nb, -1.0, E,
                        bs, U + (size_t)i1 * n + i2, n, 1.0, W + i2, n);
    }
    for (size_t i = 0; i < (size_t)rows * n && !oom; i++) W0[i] = (float)W[i];
    free(U), free(W), free(E);
    return oom ? speck_set_error(SPECK_ERR_NOMEM, "sparsegpt: out of memory") : 0;
}

int sparse_check_shape(const speck_prune_opts *o, const char *what, int64_t cols) {
    if (o->nm_m > 0 && cols % o->nm_m)
        return speck_set_error(SPECK_ERR_ARG,
                               "%s: rows of %lld values do not split into groups of %d (%d:%d "
                               "needs a row length divisible by %d)",
                               what, (long long)cols, o->nm_m, o->nm_n, o->nm_m, o->nm_m);
    if (o->nm_m == 0 && !(o->sparsity > 0 && o->sparsity < 1))
        return speck_set_error(SPECK_ERR_ARG, "%s: sparsity %g is outside (0, 1)", what,
                               o->sparsity);
    return 0;
}

int speck_prune_matrix(const speck_prune_opts *o, float *W, int64_t rows, int64_t cols,
                       const double *H, const float *x2, const float *mean, const float *var) {
    int rc = sparse_check_shape(o, "prune", cols);
    if (rc) return rc;
    const col_stats st = {x2, mean, var};
    if (o->dsnot_cycles > 0) {
        if (o->method == SPECK_PRUNE_SPARSEGPT)
            return speck_set_error(SPECK_ERR_ARG, "dsnot: runs on magnitude or wanda masks, not "
                                                  "sparsegpt (its weights are updated)");
        if (!x2 || !mean || !var)
            return speck_set_error(SPECK_ERR_ARG,
                                   "dsnot: no input statistics (mean, variance, norms: "
                                   "calibration)");
    }
    switch (o->method) {
    case SPECK_PRUNE_MAGNITUDE:
        return prune_scored(o, W, rows, cols, false, &st);
    case SPECK_PRUNE_WANDA:
        if (!x2) return speck_set_error(SPECK_ERR_ARG, "wanda: no input norms (calibration)");
        return prune_scored(o, W, rows, cols, true, &st);
    case SPECK_PRUNE_SPARSEGPT:
        if (!H) return speck_set_error(SPECK_ERR_ARG, "sparsegpt: no Hessian (calibration)");
        if (cols > (1 << 16))
            return speck_set_error(SPECK_ERR_ARG, "sparsegpt: %lld columns is too many",
                                   (long long)cols);
        return prune_sparsegpt(o, W, rows, cols, H);
    }
    return speck_set_error(SPECK_ERR_ARG, "prune: unknown method %d", (int)o->method);
}
