// LQ-LoRA initialisation (Guo et al. 2023, "LQ-LoRA: Low-rank Plus Quantized Matrix
// Decomposition for Efficient Language Model Finetuning"): each adapted W ≈ Q + L1·L2, Q a
// quantized frozen base matrix and L1·L2 = s·B·A the adapter's starting point, found by
// alternating from Q⁰ = 0:  L^t = the best rank-r approximation of W − Q^{t−1} (SVD),
// Q^t = quantize(W − L^t), stopping when the error ||W − Q − L||_F stops decreasing (the paper's
// rule). Data-aware variant: the error is weighted by column importance D = diag(√imp_j) (an
// imatrix's mean squared input activations: the paper's Fisher weighting with its row factor
// fixed to 1), the low-rank step then being the SVD of (W − Q)·D unscaled by D⁻¹. A bit budget
// picks one type per matrix minimizing the summed final errors (the paper's integer linear
// program, solved exactly by speck_alloc_solve, src/calib/alloc.c).
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cblas.h>

#include "adapt/adapt_internal.h"
#include "calib/calib.h"
#include "formats/gguf_internal.h"
#include "formats/gguf_stream.h"
#include "kernels/kernels.h"

#define NT SPECK_LORA_N_TARGETS

// LAPACK (OpenBLAS exports it), column-major.
extern void dgesdd_(const char *jobz, const int *m, const int *n, double *a, const int *lda,
                    double *s, double *u, const int *ldu, double *vt, const int *ldvt,
                    double *work, const int *lwork, int *iwork, int *info);

// Importance weights below this fraction of their mean are raised to it: a column no
// calibration token reached would otherwise get D⁻¹ = ∞ in the unscaling.
#define LQ_WEIGHT_FLOOR 1e-4

typedef struct {
    int no, ni, k;
    double *M, *S, *Up, *VTp, *work;
    int *iwork;
    int lwork;
} svd_ws;

static void svd_free(svd_ws *s) {
    free(s->M), free(s->S), free(s->Up), free(s->VTp), free(s->work), free(s->iwork);
}

static int svd_init(svd_ws *s, int no, int ni) {
    memset(s, 0, sizeof *s);
    s->no = no, s->ni = ni, s->k = no < ni ? no : ni;
    s->M = malloc((size_t)no * ni * sizeof *s->M);
    s->S = malloc((size_t)s->k * sizeof *s->S);
    s->Up = malloc((size_t)ni * s->k * sizeof *s->Up);
    s->VTp = malloc((size_t)s->k * no * sizeof *s->VTp);
    s->iwork = malloc((size_t)8 * s->k * sizeof *s->iwork);
    if (!s->M || !s->S || !s->Up || !s->VTp || !s->iwork) return -1;
    int lwork = -1, info = 0;
    double wq = 0;
    dgesdd_("S", &s->ni, &s->no, s->M, &s->ni, s->S, s->Up, &s->ni, s->VTp, &s->k, &wq, &lwork,
            s->iwork, &info);
    s->lwork = info ? 1 : (int)wq;
    return (s->work = malloc((size_t)(s->lwork > 1 ? s->lwork : 1) * sizeof *s->work)) ? 0 : -1;
}

// SVD of s->M (row-major (no, ni)), overwritten. Read as column-major it is Mᵀ = U' Σ V'ᵀ, so
// M = V' Σ U'ᵀ: M's right singular vectors are Up's columns (contiguous, Up[c * ni + j]), its
// left ones VTp[o * k + c]; S descending.
static int svd_run(svd_ws *s) {
    int info = 0;
    dgesdd_("S", &s->ni, &s->no, s->M, &s->ni, s->S, s->Up, &s->ni, s->VTp, &s->k, s->work,
            &s->lwork, s->iwork, &info);
    return info;
}

// Truncated SVD by subspace iteration (Halko, Martinsson & Tropp 2011, Algorithm 4.4) for
// matrices too large for a full SVD at every alternation: k = rank + oversampling right
// vectors Ω (ni, k), warm-started from the previous alternation's (W − Q changes little
// between alternations), `power` rounds of Ω ← orth(Mᵀ orth(M Ω)), then Qy = orth(M Ω), the
// small SVD of Qyᵀ M (k, ni) = Ub Σ Vbᵀ, and M ≈ (Qy Ub) Σ Vbᵀ.
#define LQ_OVERSAMPLE 8

typedef struct {
    int no, ni, k, power;
    double *om, *y, *bm; // Ω (ni, k), Y (no, k), B (k, ni), all row-major
    svd_ws small;        // of B
    bool warm;
} rsvd_ws;

static void rsvd_free(rsvd_ws *r) {
    free(r->om), free(r->y), free(r->bm);
    svd_free(&r->small);
}

static int rsvd_init(rsvd_ws *r, int no, int ni, int rank, int power) {
    memset(r, 0, sizeof *r);
    const int kmax = no < ni ? no : ni;
    r->no = no, r->ni = ni, r->power = power;
    r->k = rank + LQ_OVERSAMPLE < kmax ? rank + LQ_OVERSAMPLE : kmax;
    r->om = malloc((size_t)ni * r->k * sizeof *r->om);
    r->y = malloc((size_t)no * r->k * sizeof *r->y);
    r->bm = malloc((size_t)r->k * ni * sizeof *r->bm);
    if (!r->om || !r->y || !r->bm || svd_init(&r->small, r->k, ni)) return -1;
    // Cold start: Gaussian Ω from a fixed seed (splitmix64 + Box-Muller), so runs repeat.
    uint64_t x = 0x9E3779B97F4A7C15ULL;
    for (size_t i = 0; i < (size_t)ni * r->k; i++) {
        double u[2];
        for (int h = 0; h < 2; h++) {
            uint64_t z = (x += 0x9E3779B97F4A7C15ULL);
            z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
            z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
            u[h] = ((double)((z ^ (z >> 31)) >> 11) + 0.5) / 9007199254740992.0;
        }
        r->om[i] = sqrt(-2 * log(u[0])) * cos(6.283185307179586 * u[1]);
    }
    return 0;
}

// Columns of X (n, k) row-major made orthonormal (Gram-Schmidt, twice for stability); a
// column with nothing left becomes zero.
static void orth_cols(double *X, int n, int k) {
    for (int c = 0; c < k; c++) {
        for (int pass = 0; pass < 2; pass++)
            for (int c2 = 0; c2 < c; c2++) {
                double dot = 0;
                for (int j = 0; j < n; j++) dot += X[(size_t)j * k + c2] * X[(size_t)j * k + c];
                for (int j = 0; j < n; j++) X[(size_t)j * k + c] -= dot * X[(size_t)j * k + c2];
            }
        double nn = 0;
        for (int j = 0; j < n; j++) nn += X[(size_t)j * k + c] * X[(size_t)j * k + c];
        nn = sqrt(nn);
        const double inv = nn > 1e-300 ? 1 / nn : 0;
        for (int j = 0; j < n; j++) X[(size_t)j * k + c] *= inv;
    }
}

// Top components of M (no, ni): S (k) descending, right vectors in r->small.Up (c * ni + j),
// left ones written to U (no, k) row-major. Ω keeps the right vectors for the next call.
static int rsvd_run(rsvd_ws *r, const double *M, double *U) {
    const int no = r->no, ni = r->ni, k = r->k;
    for (int it = 0; it < r->power; it++) {
        cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, no, k, ni, 1.0, M, ni, r->om, k,
                    0.0, r->y, k);
        orth_cols(r->y, no, k);
        cblas_dgemm(CblasRowMajor, CblasTrans, CblasNoTrans, ni, k, no, 1.0, M, ni, r->y, k, 0.0,
                    r->om, k);
        orth_cols(r->om, ni, k);
    }
    cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, no, k, ni, 1.0, M, ni, r->om, k, 0.0,
                r->y, k);
    orth_cols(r->y, no, k);
    cblas_dgemm(CblasRowMajor, CblasTrans, CblasNoTrans, k, ni, no, 1.0, r->y, k, M, ni, 0.0,
                r->small.M, ni);
    int info = svd_run(&r->small);
    if (info) return info;
    // U = Qy · Ub, Ub the small SVD's left vectors (VTp[i * k + c]).
    cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, no, k, k, 1.0, r->y, k, r->small.VTp,
                r->small.k, 0.0, U, k);
    for (int c = 0; c < k; c++) // warm start: Ω = the right vectors
        for (int j = 0; j < ni; j++) r->om[(size_t)j * k + c] = r->small.Up[(size_t)c * ni + j];
    return 0;
}

int speck_lqlora_factor(const float *W, int64_t n_out, int64_t n_in,
                        const speck_lqlora_params *p, float *a, float *b, void *q, double *err,
                        int *n_iter) {
    const int64_t k = n_out < n_in ? n_out : n_in;
    const int rank = p->rank;
    if (p->max_iter < 0 || p->max_iter > 1000 || !(p->scale > 0) ||
        (p->max_iter > 0 && (rank < 1 || rank > k)))
        return speck_set_error(SPECK_ERR_ARG,
                               "LQ-LoRA: rank %d (must be in [1, %lld] for a (%lld, %lld) "
                               "matrix), %d iterations or scale %g invalid",
                               rank, (long long)k, (long long)n_out, (long long)n_in,
                               p->max_iter, p->scale);
    if (n_in > 65536 || n_out > 65536 || n_in % speck_type_block_size(p->type) ||
        !speck_type_block_size(p->type))
        return speck_set_error(SPECK_ERR_ARG,
                               "LQ-LoRA: a (%lld, %lld) matrix cannot be stored as %s (rows must "
                               "be a multiple of its block)",
                               (long long)n_out, (long long)n_in,
                               speck_type_name(p->type) ? speck_type_name(p->type) : "?");
    const int no = (int)n_out, ni = (int)n_in;
    const size_t nw = (size_t)no * ni, qbytes = speck_type_row_size(p->type, ni) * (size_t)no;
    double *d = malloc((size_t)ni * sizeof *d);       // D: √ of the importance, mean-1 scaled
    float *R = malloc(nw * sizeof *R), *Qf = malloc(nw * sizeof *Qf); // residual, Q dequantized
    float *a1 = malloc((size_t)rank * ni * sizeof *a1), *b1 = malloc((size_t)no * rank * sizeof *b1);
    void *q1 = malloc(qbytes);
    svd_ws s = {0};
    rsvd_ws rs = {0};
    double *Ut = NULL, *Md = NULL; // the truncated SVD's left vectors (no, rs.k), its input
    const bool trunc = p->svd_power > 0 && p->max_iter > 0;
    int rc = 0;
    if (!d || !R || !Qf || !a1 || !b1 || !q1 ||
        (p->max_iter > 0 && !trunc && svd_init(&s, no, ni)) ||
        (trunc && (rsvd_init(&rs, no, ni, rank, p->svd_power) ||
                   !(Ut = malloc((size_t)no * rs.k * sizeof *Ut)) ||
                   !(Md = malloc(nw * sizeof *Md))))) {
        rc = speck_set_error(SPECK_ERR_NOMEM, "LQ-LoRA: out of memory for a (%d, %d) matrix", no,
                             ni);
        goto done;
    }
    for (int j = 0; j < ni; j++) d[j] = 1;
    if (p->col_weight) {
        double mean = 0;
        for (int j = 0; j < ni; j++) mean += p->col_weight[j] > 0 ? p->col_weight[j] : 0;
        mean /= ni;
        if (!(mean > 0) || !isfinite(mean)) {
            rc = speck_set_error(SPECK_ERR_ARG, "LQ-LoRA: the importance weights are zero or not "
                                                "finite (no calibration activation reached the "
                                                "matrix)");
            goto done;
        }
        for (int j = 0; j < ni; j++) {
            double w = p->col_weight[j] / mean;
            d[j] = sqrt(w > LQ_WEIGHT_FLOOR ? w : LQ_WEIGHT_FLOOR);
        }
    }
    double wnorm = 0;
    for (size_t i = 0; i < nw; i++) {
        const double x = W[i] * d[i % ni];
        wnorm += x * x;
    }
    if (!(wnorm > 0)) wnorm = 1;
    // The quantizer gets the importance too (llama-quantize's weighted scale searches).
    const float *imp = p->col_weight;
    // Iteration 0 of the paper's loop is Q = quantize(W) with no low-rank part: what plain
    // QLoRA starts from, and the answer when max_iter is 0.
    double prev = INFINITY;
    int it = 0;
    if (p->max_iter == 0) {
        rc = speck_quantize(p->type, W, q, no, ni, imp);
        if (!rc && err) {
            for (int64_t r = 0; r < no; r++)
                speck_dequantize_row(p->type, (const uint8_t *)q + qbytes / no * r,
                                     Qf + (size_t)r * ni, ni);
            double e = 0;
            for (size_t i = 0; i < nw; i++) {
                const double x = (W[i] - Qf[i]) * d[i % ni];
                e += x * x;
            }
            err[0] = e / wnorm;
        }
        if (n_iter) *n_iter = 0;
        goto done;
    }
    memset(Qf, 0, nw * sizeof *Qf); // Q⁰ = 0
    for (it = 1; it <= p->max_iter; it++) {
        // L = rank-r SVD of (W − Q)·D, unscaled: L = U_r Σ_r (V_rᵀ D⁻¹).
        double *M = trunc ? Md : s.M;
        for (size_t i = 0; i < nw; i++) M[i] = ((double)W[i] - Qf[i]) * d[i % ni];
        int info = trunc ? rsvd_run(&rs, M, Ut) : svd_run(&s);
        // Right vectors (c * ni + j), singular values, left vectors (o * lk + c).
        const double *Vr = trunc ? rs.small.Up : s.Up, *Sv = trunc ? rs.small.S : s.S;
        const double *Ul = trunc ? Ut : s.VTp;
        const int lk = trunc ? rs.k : s.k;
        if (info) {
            rc = speck_set_error(SPECK_ERR_ARG, "LQ-LoRA: the SVD did not converge (%d)", info);
            goto done;
        }
        // Factors, CorDA's equal-norm split: x_c = D⁻¹ v_c, b_c = g u_c, a_c = g x_c / |x_c|,
        // g = √(σ_c |x_c| / s), so s·b_c·a_c = σ_c u_c x_cᵀ.
        for (int c = 0; c < rank; c++) {
            const double *v = Vr + (size_t)c * ni;
            double nx = 0;
            for (int j = 0; j < ni; j++) nx += (v[j] / d[j]) * (v[j] / d[j]);
            nx = sqrt(nx);
            const double g = sqrt(Sv[c] * nx / (double)p->scale);
            for (int j = 0; j < ni; j++) a1[(size_t)c * ni + j] = (float)(g * v[j] / d[j] / nx);
            for (int o = 0; o < no; o++)
                b1[(size_t)o * rank + c] = (float)(g * Ul[(size_t)o * lk + c]);
        }
        // R = W − s·B·A (the floats the base file's matrix is quantized from), Q = quantize(R).
#pragma omp parallel for schedule(static)
        for (int o = 0; o < no; o++) {
            float *r = R + (size_t)o * ni;
            for (int j = 0; j < ni; j++) r[j] = W[(size_t)o * ni + j];
            for (int c = 0; c < rank; c++) {
                const float f = p->scale * b1[(size_t)o * rank + c];
                const float *ac = a1 + (size_t)c * ni;
                for (int j = 0; j < ni; j++) r[j] -= f * ac[j];
            }
        }
        if ((rc = speck_quantize(p->type, R, q1, no, ni, imp))) goto done;
        const size_t qrow = qbytes / (size_t)no;
#pragma omp parallel for schedule(static)
        for (int o = 0; o < no; o++)
            speck_dequantize_row(p->type, (const uint8_t *)q1 + qrow * (size_t)o,
                                 Qf + (size_t)o * ni, ni);
        // Error ||(W − Q − L)·D||² / ||W·D||² = ||(R − Q)·D||² / ||W·D||².
        double e = 0;
        for (size_t i = 0; i < nw; i++) {
            const double x = ((double)R[i] - Qf[i]) * d[i % ni];
            e += x * x;
        }
        e /= wnorm;
        if (err) err[it - 1] = e;
        if (!isfinite(e)) {
            rc = speck_set_error(SPECK_ERR_ARG, "LQ-LoRA: the decomposition's error is not finite "
                                                "(a weight or an importance is NaN or Inf)");
            goto done;
        }
        if (!(e < prev)) break; // the paper stops when the error increases: keep the last
        prev = e;
        memcpy(a, a1, (size_t)rank * ni * sizeof *a);
        memcpy(b, b1, (size_t)no * rank * sizeof *b);
        memcpy(q, q1, qbytes);
    }
    // Iterations run: all max_iter, or up to the one that did not improve (then dropped).
    if (n_iter) *n_iter = it > p->max_iter ? p->max_iter : it;
done:
    svd_free(&s);
    rsvd_free(&rs);
    free(Ut), free(Md);
    free(d), free(R), free(Qf), free(a1), free(b1), free(q1);
    return rc;
}

// Candidates of the bit budget: K-quants (and Q8_0) for rows of 256-multiples, the 32-value
// types otherwise; an option whose block does not divide the rows costs INFINITY.
static const speck_type CAND[] = {SPECK_TYPE_Q2_K, SPECK_TYPE_Q3_K, SPECK_TYPE_Q4_K,
                                  SPECK_TYPE_Q5_K, SPECK_TYPE_Q6_K, SPECK_TYPE_Q4_0,
                                  SPECK_TYPE_Q5_0, SPECK_TYPE_Q8_0};
#define N_CAND ((int)(sizeof CAND / sizeof CAND[0]))

static bool cand_fits(speck_type t, int64_t n_in) {
    if (n_in % speck_type_block_size(t)) return false;
    // the 32-value 4/5-bit types only where no K-quant fits (they would duplicate Q4_K / Q5_K)
    return !((t == SPECK_TYPE_Q4_0 || t == SPECK_TYPE_Q5_0) && n_in % 256 == 0);
}

// Matrices whose smaller side exceeds this get the truncated SVD (2 power rounds): the full
// SVD of a 2048 x 5632 matrix costs seconds, at every alternation.
#define LQ_EXACT_MAX 1024
static int svd_power_for(int64_t n_out, int64_t n_in) {
    return (n_out < n_in ? n_out : n_in) > LQ_EXACT_MAX ? 2 : 0;
}

typedef struct {
    int k;              // layer * NT + target
    int64_t n_out, n_in;
    const float *imp;   // (n_in) importance or NULL
    speck_type type;    // chosen
    void *q;            // the quantized matrix, as written
} lq_mat;

// W of matrix k of m, dequantized: (n_out, n_in).
static void load_w(const speck_model *m, int k, float *W) {
    const speck_weight *w = speck_lora_base_weight(m, k / NT, k % NT);
    const size_t rs = speck_type_row_size(w->type, w->n_in);
    for (int64_t r = 0; r < w->n_out; r++)
        speck_dequantize_row(w->type, (const uint8_t *)w->data + rs * (size_t)r,
                             W + (size_t)r * w->n_in, w->n_in);
}

// ||W·D||², D as speck_lqlora_factor scales it (importance / its mean, floored, square-rooted).
static double weighted_norm2(const float *W, int64_t no, int64_t ni, const float *imp) {
    double mean = 0, s = 0;
    for (int64_t j = 0; imp && j < ni; j++) mean += imp[j] > 0 ? imp[j] : 0;
    mean /= (double)ni;
    for (int64_t j = 0; j < ni; j++) {
        double w = imp && mean > 0 ? imp[j] / mean : 1, c = 0;
        w = w > LQ_WEIGHT_FLOOR ? w : LQ_WEIGHT_FLOOR;
        for (int64_t o = 0; o < no; o++) c += (double)W[o * ni + j] * W[o * ni + j];
        s += c * w;
    }
    return s;
}

// The base GGUF: every key and tensor of m's file, the adapted matrices replaced by their Q.
static int write_base(const speck_model *m, const lq_mat *mats, int n, speck_type ftype,
                      const char *out) {
    const speck_gguf *g = speck_model_gguf(m);
    const int64_t nt = speck_gguf_n_tensors(g);
    int *which = malloc((size_t)(nt ? nt : 1) * sizeof *which);
    speck_gguf_writer *w = speck_gguf_writer_new();
    int err = !which || !w ? speck_set_error(SPECK_ERR_NOMEM, "LQ-LoRA: out of memory") : 0;
    for (int64_t i = 0; !err && i < nt; i++) which[i] = -1;
    for (int i = 0; !err && i < n; i++) {
        char nm[96];
        snprintf(nm, sizeof nm, "blk.%d.%s.weight", mats[i].k / NT,
                 speck_lora_target_gguf(mats[i].k % NT));
        const speck_gguf_tensor *t = speck_gguf_find_tensor(g, nm);
        for (int64_t j = 0; t && j < nt; j++)
            if (speck_gguf_tensor_at(g, j) == t) which[j] = i;
        if (!t)
            err = speck_set_error(SPECK_ERR_UNSUPPORTED, "LQ-LoRA: the base has no tensor %s "
                                                         "(fused?)", nm);
    }
    for (int64_t i = 0; !err && i < speck_gguf_n_kv(g); i++)
        if (strcmp(speck_gguf_key(g, i), "general.file_type")) err = speck_gguf_copy_kv(w, g, i);
    if (!err && speck_gguf_set_u32(w, "general.file_type", (uint32_t)speck_gguf_file_type(ftype)))
        err = speck_set_error(SPECK_ERR_NOMEM, "LQ-LoRA: out of memory");
    for (int64_t i = 0; !err && i < nt; i++) {
        const speck_gguf_tensor *t = speck_gguf_tensor_at(g, i);
        err = speck_gguf_add_tensor(w, t->name, which[i] >= 0 ? mats[which[i]].type : (speck_type)t->type,
                                    t->n_dims, t->ne, NULL);
    }
    speck_gguf_stream *s = err ? NULL : speck_gguf_stream_open(w, out);
    if (!err && !s) err = SPECK_ERR_IO;
    for (int64_t i = 0; !err && i < nt; i++) {
        const speck_gguf_tensor *t = speck_gguf_tensor_at(g, i);
        if (which[i] < 0) {
            err = speck_gguf_stream_write(s, t->data, t->n_bytes);
        } else {
            const lq_mat *q = &mats[which[i]];
            err = speck_gguf_stream_write(s, q->q, speck_type_row_size(q->type, q->n_in) *
                                                       (size_t)q->n_out);
        }
    }
    if (s) {
        if (err)
            speck_gguf_stream_abort(s);
        else
            err = speck_gguf_stream_close(s);
    }
    speck_gguf_writer_free(w);
    free(which);
    return err;
}

speck_lora *speck_lqlora_init(const speck_model *m, const speck_lqlora_opts *o,
                              const char *base_out, speck_lqlora_report *rep) {
    const speck_hparams *hp = speck_model_hparams(m);
    if (o->bpw == 0 && (!speck_type_name(o->type) || speck_type_block_size(o->type) < 32))
        return speck_set_error(SPECK_ERR_ARG, "LQ-LoRA: the base type must be a quantized type "
                                              "(Q4_K, Q3_K, Q8_0, ...)"), NULL;
    if (o->bpw != 0 && !(o->bpw >= 2.5 && o->bpw <= 8.5))
        return speck_set_error(SPECK_ERR_ARG, "LQ-LoRA: a budget of %g bits per weight is outside "
                                              "what the candidate types span ([2.5, 8.5])",
                               o->bpw), NULL;
    speck_lora *a = speck_lora_new(m, o->rank, o->alpha, o->targets, o->seed);
    if (!a) return NULL;
    const int nm = hp->n_layer * NT;
    lq_mat *mats = calloc((size_t)nm, sizeof *mats);
    int n = 0, rc = mats ? 0 : speck_set_error(SPECK_ERR_NOMEM, "LQ-LoRA: out of memory");
    int64_t max_w = 1, n_weights = 0;
    for (int k = 0; k < nm && !rc; k++) {
        const speck_lora_mat *mt = &a->m[k];
        if (!mt->rank) continue;
        lq_mat *q = &mats[n++];
        q->k = k, q->n_out = mt->n_out, q->n_in = mt->n_in, q->type = o->type;
        max_w = q->n_out * q->n_in > max_w ? q->n_out * q->n_in : max_w;
        n_weights += q->n_out * q->n_in;
        const int64_t small = q->n_in < q->n_out ? q->n_in : q->n_out;
        if (o->max_iter > 0 && o->rank > small)
            rc = speck_set_error(SPECK_ERR_ARG, "LQ-LoRA: rank %d exceeds blk.%d.%s's smaller "
                                                "side %lld", o->rank, k / NT,
                                 speck_lora_target_gguf(k % NT), (long long)small);
        else if (o->bpw == 0 && q->n_in % speck_type_block_size(o->type))
            rc = speck_set_error(SPECK_ERR_ARG, "LQ-LoRA: blk.%d.%s's rows of %lld values cannot "
                                                "be stored as %s (blocks of %lld)", k / NT,
                                 speck_lora_target_gguf(k % NT), (long long)q->n_in,
                                 speck_type_name(o->type),
                                 (long long)speck_type_block_size(o->type));
        if (!rc && o->imatrix) {
            char name[96];
            int64_t ni = 0;
            snprintf(name, sizeof name, "blk.%d.%s.weight", k / NT, speck_lora_target_gguf(k % NT));
            q->imp = speck_imatrix_get(o->imatrix, name, &ni);
            if (!q->imp || ni != q->n_in)
                rc = speck_set_error(SPECK_ERR_ARG, "LQ-LoRA: the imatrix has %s for %s",
                                     q->imp ? "the wrong width" : "no entry", name);
        }
    }
    float *W = rc ? NULL : malloc((size_t)max_w * sizeof *W);
    if (!rc && !W) rc = speck_set_error(SPECK_ERR_NOMEM, "LQ-LoRA: out of memory");
    double *err_hist = NULL;
    if (!rc && !(err_hist = malloc((size_t)(o->max_iter + 1) * sizeof *err_hist)))
        rc = speck_set_error(SPECK_ERR_NOMEM, "LQ-LoRA: out of memory");
    // The bit budget: every candidate's final error, then the exact knapsack over them.
    if (!rc && o->bpw != 0) {
        double *cost = malloc((size_t)n * N_CAND * sizeof *cost);
        int64_t *size = malloc((size_t)n * N_CAND * sizeof *size);
        int *choice = malloc((size_t)n * sizeof *choice);
        if (!cost || !size || !choice)
            rc = speck_set_error(SPECK_ERR_NOMEM, "LQ-LoRA: out of memory");
        for (int i = 0; i < n && !rc; i++) {
            lq_mat *q = &mats[i];
            speck_lora_mat *mt = &a->m[q->k];
            load_w(m, q->k, W);
            const double wn = weighted_norm2(W, q->n_out, q->n_in, q->imp);
            for (int c = 0; c < N_CAND && !rc; c++) {
                cost[(size_t)i * N_CAND + c] = INFINITY;
                size[(size_t)i * N_CAND + c] = 0;
                if (!cand_fits(CAND[c], q->n_in)) continue;
                const size_t qb = speck_type_row_size(CAND[c], q->n_in) * (size_t)q->n_out;
                void *qbuf = malloc(qb);
                speck_lqlora_params p = {CAND[c], o->rank, o->max_iter,
                                         speck_lora_scale(a, mt, 1.0f), q->imp,
                                         svd_power_for(q->n_out, q->n_in)};
                int it = 0;
                if (!qbuf) rc = speck_set_error(SPECK_ERR_NOMEM, "LQ-LoRA: out of memory");
                if (!rc) rc = speck_lqlora_factor(W, q->n_out, q->n_in, &p, mt->a, mt->b, qbuf,
                                                  err_hist, &it);
                if (!rc) {
                    double best = err_hist[0];
                    for (int t = 1; t < it; t++) best = err_hist[t] < best ? err_hist[t] : best;
                    cost[(size_t)i * N_CAND + c] = best * wn;
                    size[(size_t)i * N_CAND + c] = (int64_t)qb;
                }
                free(qbuf);
            }
            if (o->progress)
                fprintf(stderr, "\rlq-lora: costs of blk.%d.%-12s", q->k / NT,
                        speck_lora_target_gguf(q->k % NT));
        }
        const int64_t budget = (int64_t)(o->bpw * (double)n_weights / 8.0);
        const int64_t unit = budget / 200000 > 1 ? budget / 200000 : 1;
        if (!rc) rc = speck_alloc_solve(n, N_CAND, cost, size, budget, unit, choice);
        for (int i = 0; i < n && !rc; i++) mats[i].type = CAND[choice[i]];
        free(cost), free(size), free(choice);
        if (o->progress && !rc) fprintf(stderr, "\n");
    }
    // The chosen type of each matrix: the decomposition kept (adapter and base).
    double sum_err = 0, sum_q = 0;
    int64_t bytes = 0;
    for (int i = 0; i < n && !rc; i++) {
        lq_mat *q = &mats[i];
        speck_lora_mat *mt = &a->m[q->k];
        const size_t qb = speck_type_row_size(q->type, q->n_in) * (size_t)q->n_out;
        if (!(q->q = malloc(qb))) {
            rc = speck_set_error(SPECK_ERR_NOMEM, "LQ-LoRA: out of memory");
            break;
        }
        bytes += (int64_t)qb;
        load_w(m, q->k, W);
        const double wn = weighted_norm2(W, q->n_out, q->n_in, q->imp);
        speck_lqlora_params p = {q->type, o->rank, 0, speck_lora_scale(a, mt, 1.0f), q->imp,
                                         svd_power_for(q->n_out, q->n_in)};
        int it = 0;
        // Plain quantization first (the QLoRA base's error, for the report) ...
        rc = speck_lqlora_factor(W, q->n_out, q->n_in, &p, mt->a, mt->b, q->q, err_hist, &it);
        if (rc) break;
        const double e0 = err_hist[0];
        sum_q += e0 * wn;
        double best = e0;
        if (o->max_iter > 0) { // ... then the decomposition
            p.max_iter = o->max_iter;
            rc = speck_lqlora_factor(W, q->n_out, q->n_in, &p, mt->a, mt->b, q->q, err_hist, &it);
            if (rc) break;
            best = err_hist[0];
            for (int t = 1; t < it; t++) best = err_hist[t] < best ? err_hist[t] : best;
        }
        sum_err += best * wn;
        if (o->progress)
            fprintf(stderr, "\rlq-lora: blk.%d.%-12s %-5s %2d iterations, error %.4f of "
                            "quantization's", q->k / NT, speck_lora_target_gguf(q->k % NT),
                    speck_type_name(q->type), it, e0 > 0 ? best / e0 : 1.0);
    }
    if (!rc) {
        // The file type: the type holding the most weights.
        speck_type ft = mats[0].type;
        int64_t most = 0;
        for (int c = 0; c < N_CAND; c++) {
            int64_t w = 0;
            for (int i = 0; i < n; i++) w += mats[i].type == CAND[c] ? mats[i].n_in * mats[i].n_out : 0;
            if (w > most) most = w, ft = CAND[c];
        }
        rc = write_base(m, mats, n, o->bpw != 0 ? ft : o->type, base_out);
    }
    if (!rc && rep) {
        rep->n_matrices = n;
        rep->bpw = 8.0 * (double)bytes / (double)(n_weights ? n_weights : 1);
        rep->err = sum_err, rep->err_quant = sum_q;
    }
    if (o->progress && !rc) fprintf(stderr, "\n");
    for (int i = 0; mats && i < n; i++) free(mats[i].q);
    free(mats), free(W), free(err_hist);
    if (rc) {
        speck_lora_free(a);
        return NULL;
    }
    return a;
}
