// CorDA initialisation (Yang et al. 2024, "CorDA: Context-Oriented Decomposition Adaptation"):
// LoRA factors from the SVD of W·C, C the covariance of the matrix's input over calibration text,
// multiplied back by C⁻¹; the base keeps W − s·B·A, so the adapted model starts as the base.
//
// W: (n_out, n_in); C = Σ x xᵀ: (n_in, n_in); Cd = C + damp·I; W·Cd = U Σ Vᵀ, so
// W = Σ_c σ_c u_c (v_cᵀ Cd⁻¹). A component's factors: b_c = g_c u_c, a_c = g_c x̂_c with
// x_c = Cd⁻¹ v_c, x̂_c = x_c / ||x_c||, g_c = √(σ_c ||x_c|| / s) (s = the adapter's alpha / rank,
// so s·b_c·a_c is the component). KPM (knowledge-preserved mode,
// calibration on the base's own domain) takes the r smallest σ; IPM (instruction-previewed mode,
// calibration on the task's data) the r largest.
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cblas.h>

#include "adapt/adapt_internal.h"
#include "calib/calib.h"
#include "kernels/kernels.h"

#define NT SPECK_LORA_N_TARGETS

// LAPACK (OpenBLAS exports it), column-major.
extern void dpotrf_(const char *uplo, const int *n, double *a, const int *lda, int *info);
extern void dpotrs_(const char *uplo, const int *n, const int *nrhs, const double *a,
                    const int *lda, double *b, const int *ldb, int *info);
extern void dgesdd_(const char *jobz, const int *m, const int *n, double *a, const int *lda,
                    double *s, double *u, const int *ldu, double *vt, const int *ldvt,
                    double *work, const int *lwork, int *iwork, int *info);

int speck_corda_factor(const float *W, int64_t n_out, int64_t n_in, const double *C, int rank,
                       speck_corda_mode mode, float scale, float *a, float *b, double *damp_out) {
    const int64_t k = n_out < n_in ? n_out : n_in;
    if (rank < 1 || rank > k)
        return speck_set_error(SPECK_ERR_ARG,
                               "CorDA: rank %d must be in [1, %lld] for a (%lld, %lld) matrix",
                               rank, (long long)k, (long long)n_out, (long long)n_in);
    if (n_in > 65536 || n_out > 65536 || !(scale > 0))
        return speck_set_error(SPECK_ERR_ARG, "CorDA: matrix (%lld, %lld) or scale %g invalid",
                               (long long)n_out, (long long)n_in, scale);
    const int ni = (int)n_in, no = (int)n_out, kk = (int)k;
    double mean = 0;
    for (int i = 0; i < ni; i++) mean += C[(size_t)i * ni + i];
    mean /= ni;
    if (!(mean > 0) || !isfinite(mean))
        return speck_set_error(SPECK_ERR_ARG,
                               "CorDA: the input covariance is zero or not finite (no "
                               "calibration activations reached this matrix)");
    double *Cd = malloc((size_t)ni * ni * sizeof *Cd), *M = malloc((size_t)no * ni * sizeof *M);
    double *Wd = malloc((size_t)no * ni * sizeof *Wd), *S = malloc((size_t)kk * sizeof *S);
    double *Up = malloc((size_t)ni * kk * sizeof *Up), *VTp = malloc((size_t)kk * no * sizeof *VTp);
    double *L = malloc((size_t)ni * ni * sizeof *L);
    int *iwork = malloc((size_t)8 * kk * sizeof *iwork);
    double *work = NULL;
    int rc = 0, info = 0;
    if (!Cd || !M || !Wd || !S || !Up || !VTp || !L || !iwork) {
        rc = speck_set_error(SPECK_ERR_NOMEM, "CorDA: out of memory");
        goto done;
    }
    // Damping: 1 % of the mean diagonal (as CorDA's released code and GPTQ), doubled until Cd
    // has a Cholesky factor L (lower triangle, column-major; Cd is symmetric, so row- and
    // column-major agree).
    double damp = 0.01;
    for (int tries = 0;; tries++, damp *= 2) {
        for (size_t i = 0; i < (size_t)ni * ni; i++) Cd[i] = C[i];
        for (int i = 0; i < ni; i++) Cd[(size_t)i * ni + i] += damp * mean;
        memcpy(L, Cd, (size_t)ni * ni * sizeof *L);
        dpotrf_("L", &ni, L, &ni, &info);
        if (!info) break;
        if (tries == 30) {
            rc = speck_set_error(SPECK_ERR_ARG, "CorDA: the input covariance is not positive "
                                                "definite even with damping %g", damp);
            goto done;
        }
    }
    if (damp_out) *damp_out = damp;
    // M = W·Cd, row-major (n_out, n_in).
    for (size_t i = 0; i < (size_t)no * ni; i++) Wd[i] = W[i];
    cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, no, ni, ni, 1.0, Wd, ni, Cd, ni, 0.0, M,
                ni);
    // The row-major M is the column-major Mᵀ (n_in, n_out) = U' Σ V'ᵀ, so M = V' Σ U'ᵀ: the
    // right singular vectors of M are U''s columns (contiguous), the left ones V''s, which read
    // row-major as VTp[o * k + c].
    int lwork = -1;
    double wq;
    dgesdd_("S", &ni, &no, M, &ni, S, Up, &ni, VTp, &kk, &wq, &lwork, iwork, &info);
    lwork = info ? 0 : (int)wq;
    if (!info && !(work = malloc((size_t)(lwork > 1 ? lwork : 1) * sizeof *work))) {
        rc = speck_set_error(SPECK_ERR_NOMEM, "CorDA: out of memory");
        goto done;
    }
    if (!info) dgesdd_("S", &ni, &no, M, &ni, S, Up, &ni, VTp, &kk, work, &lwork, iwork, &info);
    if (info) {
        rc = speck_set_error(SPECK_ERR_ARG, "CorDA: the SVD of W·C did not converge (%d)", info);
        goto done;
    }
    // Chosen components c0 .. c0 + rank - 1 (descending σ either way).
    const int c0 = mode == SPECK_CORDA_KPM ? kk - rank : 0;
    // X = Cd⁻¹ V (the chosen columns): column i is (v_cᵀ Cd⁻¹)ᵀ, Cd being symmetric.
    double *X = Up + (size_t)c0 * ni;
    dpotrs_("L", &ni, &rank, L, &ni, X, &ni, &info);
    if (info) {
        rc = speck_set_error(SPECK_ERR_ARG, "CorDA: solving with the covariance failed (%d)", info);
        goto done;
    }
    // The split between B and A: equal norms, ||b_c|| = ||a_c|| = √(σ_c ||Cd⁻¹ v_c|| / s). The
    // paper splits √σ_c to each side, which leaves the balance to C's overall scale (tokens
    // summed, activation size): on the default model that made ||a_c|| / ||b_c|| ~ 1e-4 and the
    // first AdamW steps (which move every element by about lr) diverged. The product is the same.
    for (int i = 0; i < rank; i++) {
        const double *x = X + (size_t)i * ni;
        double nx = 0;
        for (int j = 0; j < ni; j++) nx += x[j] * x[j];
        nx = sqrt(nx);
        const double g = sqrt(S[c0 + i] * nx / (double)scale);
        for (int j = 0; j < ni; j++) a[(size_t)i * ni + j] = (float)(g * x[j] / nx);
        for (int o = 0; o < no; o++)
            b[(size_t)o * rank + i] = (float)(g * VTp[(size_t)o * kk + c0 + i]);
    }
done:
    free(Cd), free(M), free(Wd), free(S), free(Up), free(VTp), free(L), free(iwork), free(work);
    return rc;
}

// The input key of matrix t of layer l ("blk.3.attn_in" for q, k, v).
static void input_key(int l, int t, char *key, size_t n) {
    char w[96];
    snprintf(w, sizeof w, "blk.%d.%s.weight", l, speck_lora_target_gguf(t));
    calib_input_key(w, key, n);
}

speck_lora *speck_corda_init(const speck_model *m, const int32_t *tokens, int64_t n_tokens,
                             int ctx, int rank, float alpha, unsigned targets,
                             speck_corda_mode mode, bool progress) {
    const speck_hparams *hp = speck_model_hparams(m);
    if (mode != SPECK_CORDA_KPM && mode != SPECK_CORDA_IPM)
        return speck_set_error(SPECK_ERR_ARG, "CorDA: unknown mode %d", (int)mode), NULL;
    speck_lora *a = speck_lora_new(m, rank, alpha, targets, 0);
    if (!a) return NULL;
    const int nm = hp->n_layer * NT;
    // The distinct inputs of the adapted matrices (q/k/v share one, gate/up another).
    const char **keys = calloc((size_t)nm, sizeof *keys);
    char(*kbuf)[80] = calloc((size_t)nm, sizeof *kbuf);
    int *n_in = calloc((size_t)nm, sizeof *n_in), *key_of = calloc((size_t)nm, sizeof *key_of);
    int n_keys = 0, rc = 0, widest = 0;
    int64_t *tok_seen = calloc((size_t)nm, sizeof *tok_seen);
    double **H = calloc((size_t)nm, sizeof *H);
    float *W = NULL;
    if (!keys || !kbuf || !n_in || !key_of || !tok_seen || !H)
        rc = speck_set_error(SPECK_ERR_NOMEM, "CorDA: out of memory");
    for (int i = 0; i < nm && !rc; i++) {
        speck_lora_mat *mt = &a->m[i];
        if (!mt->rank) continue;
        const int64_t k = mt->n_in < mt->n_out ? mt->n_in : mt->n_out;
        if (rank > k) {
            rc = speck_set_error(SPECK_ERR_ARG, "CorDA: rank %d exceeds blk.%d.%s's smaller side %lld",
                                 rank, i / NT, speck_lora_target_gguf(i % NT), (long long)k);
            break;
        }
        char key[80];
        input_key(i / NT, i % NT, key, sizeof key);
        int j = 0;
        while (j < n_keys && strcmp(keys[j], key)) j++;
        key_of[i] = j;
        if (j < n_keys) continue;
        snprintf(kbuf[j], sizeof kbuf[j], "%s", key);
        keys[j] = kbuf[j];
        n_in[j] = (int)mt->n_in;
        widest = n_in[j] > widest ? n_in[j] : widest;
        if (!(H[j] = malloc((size_t)n_in[j] * n_in[j] * sizeof **H)))
            rc = speck_set_error(SPECK_ERR_NOMEM, "CorDA: out of memory for the covariance of %s",
                                 key);
        n_keys++;
    }
    // C = XᵀX of an n_in-wide input has rank <= the number of tokens: fewer tokens than the
    // widest input leave it singular whatever the damping, so they are refused.
    const int64_t need = ctx > widest ? ctx : widest;
    if (!rc && n_tokens < need)
        rc = speck_set_error(SPECK_ERR_ARG,
                             "CorDA: %lld calibration tokens are too few: at least %lld are needed "
                             "(one window of %d, and the widest adapted input, %d)",
                             (long long)n_tokens, (long long)need, ctx, widest);
    if (!rc)
        rc = calib_hessians_model(m, tokens, n_tokens, ctx, keys, n_in, n_keys, H, tok_seen,
                                  progress);
    int64_t max_w = 0;
    for (int i = 0; i < nm; i++)
        if (a->m[i].rank && a->m[i].n_in * a->m[i].n_out > max_w)
            max_w = a->m[i].n_in * a->m[i].n_out;
    if (!rc && !(W = malloc((size_t)(max_w ? max_w : 1) * sizeof *W)))
        rc = speck_set_error(SPECK_ERR_NOMEM, "CorDA: out of memory");
    double worst = 0;
    for (int i = 0; i < nm && !rc; i++) {
        speck_lora_mat *mt = &a->m[i];
        if (!mt->rank) continue;
        const int j = key_of[i];
        if (!tok_seen[j]) {
            rc = speck_set_error(SPECK_ERR_ARG, "CorDA: no calibration activation reached %s",
                                 keys[j]);
            break;
        }
        const speck_weight *w = speck_lora_base_weight(m, i / NT, i % NT);
        const size_t rs = speck_type_row_size(w->type, w->n_in);
        for (int64_t r = 0; r < w->n_out; r++)
            speck_dequantize_row(w->type, (const uint8_t *)w->data + rs * (size_t)r,
                                 W + (size_t)r * w->n_in, w->n_in);
        double damp;
        rc = speck_corda_factor(W, mt->n_out, mt->n_in, H[j], mt->rank, mode,
                                speck_lora_scale(a, mt, 1.0f), mt->a, mt->b, &damp);
        worst = damp > worst ? damp : worst;
        if (progress)
            fprintf(stderr, "\rcorda: blk.%d.%-12s damping %.2g of the mean diagonal", i / NT,
                    speck_lora_target_gguf(i % NT), damp);
    }
    if (progress && !rc)
        fprintf(stderr, "\ncorda: %d inputs' covariances, largest damping %.2g of the mean "
                        "diagonal\n", n_keys, worst);
    for (int j = 0; H && j < n_keys; j++) free(H[j]);
    free(H), free(keys), free(kbuf), free(n_in), free(key_of), free(tok_seen), free(W);
    if (rc) {
        speck_lora_free(a);
        return NULL;
    }
    return a;
}
