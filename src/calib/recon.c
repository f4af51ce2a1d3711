// Sequential output reconstruction (speck quantize --method recon): the matrices are quantized
// in the order the forward pass reads them, each so that its output on the calibration text,
// computed from the inputs the already-quantized model produces, matches the unquantized
// model's output -- so the error of earlier layers is compensated instead of passed on.
//
// For a matrix W whose input is x_f in the unquantized model and x_q in the model quantized so
// far, the least-squares weights reproducing W x_f from x_q are W_t = W C^T H^-1 with
// H = sum x_q x_q^T and C = sum x_q x_f^T (damped as GPTQ's H); W_t is then GPTQ-rounded under
// H. Two models run side by side: the unquantized one and one whose matrices are swapped for
// their quantized versions as they are made (speck_model_swap_weight).
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cblas.h>

#include "calib/calib.h"
#include "formats/quant_plan.h"
#include "kernels/kernels.h"
#include "model/model_internal.h"
#include "quant/quant.h"

extern void dpotrf_(const char *uplo, const int *n, double *a, const int *lda, int *info);
extern void dpotrs_(const char *uplo, const int *n, const int *nrhs, const double *a,
                    const int *lda, double *b, const int *ldb, int *info);

typedef struct {
    const char *key; // the input being collected
    int n_in;
    float *xf;       // (ctx, n_in) the unquantized model's input in this window
    int nf;          // its rows
    double *H, *C;   // (n_in, n_in) sums of x_q x_q^T and x_q x_f^T
    float *tmp;      // (n_in, n_in)
    int64_t tokens;
    int err;
} recon_state;

static void hook_float(const char *weight, const float *x, int n, int n_in, void *user) {
    recon_state *s = user;
    char key[80];
    calib_input_key(weight, key, sizeof key);
    if (strcmp(key, s->key) || s->nf) return; // q/k/v (gate/up) share the input: the first
    memcpy(s->xf, x, (size_t)n * n_in * sizeof *x);
    s->nf = n;
}

static void hook_quant(const char *weight, const float *x, int n, int n_in, void *user) {
    recon_state *s = user;
    char key[80];
    calib_input_key(weight, key, sizeof key);
    if (strcmp(key, s->key) || !s->nf || s->err) return;
    if (n != s->nf || n_in != s->n_in) {
        s->err = speck_set_error(SPECK_ERR_FORMAT, "recon: %s: inputs of the two models differ",
                                 key);
        return;
    }
    const size_t nn = (size_t)n_in * n_in;
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, n_in, n_in, n, 1.0f, x, n_in, x, n_in,
                0.0f, s->tmp, n_in);
    for (size_t i = 0; i < nn; i++) s->H[i] += s->tmp[i];
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, n_in, n_in, n, 1.0f, x, n_in, s->xf,
                n_in, 0.0f, s->tmp, n_in);
    for (size_t i = 0; i < nn; i++) s->C[i] += s->tmp[i];
    s->tokens += n;
    s->nf = 0; // consumed: the other matrices of the key read the same x
}

// The order the forward pass reads a layer's inputs.
static int stage_of(const char *key) {
    static const char *order[] = {"attn_in", "attn_output", "ffn_in", "ffn_down"};
    const char *dot = strrchr(key, '.');
    for (int i = 0; i < 4; i++)
        if (dot && !strcmp(dot + 1, order[i])) return i;
    return 4;
}

static int cmp_key(const void *a, const void *b) {
    const char *x = *(const char *const *)a, *y = *(const char *const *)b;
    int lx = 1 << 20, ly = 1 << 20; // the head after every layer
    sscanf(x, "blk.%d.", &lx);
    sscanf(y, "blk.%d.", &ly);
    if (lx != ly) return lx < ly ? -1 : 1;
    return stage_of(x) - stage_of(y);
}

// W_t = W C^T H^-1 (the least-squares solution: each row w_t = H^-1 C w): the weights whose
// output on the quantized path's inputs best matches W's on the unquantized inputs. Written as
// W + W D^T H^-1 with D = C - H (the inputs' difference against the quantized inputs), so that
// the damping H + 0.01 mean(diag H) I, which keeps the solve stable, shrinks only the correction
// and not the weights themselves. W: (rows, n) in place; H, C: (n, n) row-major, H destroyed.
static int retarget(float *W, int64_t rows, int n, double *H, const double *C, float *M32) {
    double *M = malloc((size_t)n * n * sizeof *M);
    float *Wt = malloc((size_t)rows * n * sizeof *Wt);
    if (!M || !Wt) {
        free(M), free(Wt);
        return speck_set_error(SPECK_ERR_NOMEM, "out of memory");
    }
    double mean = 0;
    for (int j = 0; j < n; j++) mean += H[(size_t)j * n + j];
    mean = mean > 0 ? mean / n : 1;
    for (int j = 0; j < n; j++) H[(size_t)j * n + j] += 0.01 * mean;
    // LAPACK reads column-major: the row-major array of C^T is C, the right-hand sides of
    // H X = C; the solution X = H^-1 C comes back as the row-major array of X^T = C^T H^-1.
    for (int i = 0; i < n; i++)
        for (int j = 0; j < n; j++)
            M[(size_t)i * n + j] = C[(size_t)j * n + i] - H[(size_t)j * n + i];
    for (int j = 0; j < n; j++) M[(size_t)j * n + j] += 0.01 * mean; // undo the damping in D
    int info = 0;
    dpotrf_("L", &n, H, &n, &info);
    if (!info) dpotrs_("L", &n, &n, H, &n, M, &n, &info);
    if (info) {
        free(M), free(Wt);
        return speck_set_error(SPECK_ERR_ARG, "recon: the input covariance is singular");
    }
    for (size_t i = 0; i < (size_t)n * n; i++) M32[i] = (float)M[i];
    free(M);
    memcpy(Wt, W, (size_t)rows * n * sizeof *W);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)rows, n, n, 1.0f, W, n, M32, n,
                1.0f, Wt, n);
    memcpy(W, Wt, (size_t)rows * n * sizeof *W);
    free(Wt);
    return 0;
}

int calib_recon(const speck_gguf *g, const char *path, const speck_quantize_opts *o,
                void *plan_v, bool progress) {
    quant_plan *plan = plan_v;
    const int64_t nt = speck_gguf_n_tensors(g);
    speck_model *mf = speck_model_load(path), *mq = speck_model_load(path);
    if (!mf || !mq) {
        speck_model_free(mf), speck_model_free(mq);
        return SPECK_ERR_FORMAT;
    }
    const speck_hparams *hp = speck_model_hparams(mf);
    int ctx = o->calib_ctx > 0 ? o->calib_ctx : hp->n_ctx_train;
    if (ctx > 512 && o->calib_ctx <= 0) ctx = 512;
    const int64_t windows = o->n_calib / ctx;
    int rc = 0, n_keys = 0, max_n = 0;
    const char **keys = calloc((size_t)nt, sizeof *keys);
    char(*kbuf)[80] = calloc((size_t)nt, sizeof *kbuf);
    speck_ctx *cf = speck_ctx_new(mf, ctx), *cq = speck_ctx_new(mq, ctx);
    float *logits = malloc((size_t)ctx * hp->n_vocab * sizeof *logits);
    recon_state s = {0};
    if (!keys || !kbuf || !cf || !cq || !logits) rc = speck_set_error(SPECK_ERR_NOMEM, "oom");
    if (!rc && windows < 1)
        rc = speck_set_error(SPECK_ERR_ARG, "recon: %lld calibration tokens make no window of %d",
                             (long long)o->n_calib, ctx);
    // The inputs to reconstruct: those of the converted matrices with levels (block types).
    for (int64_t i = 0; i < nt && !rc; i++) {
        const speck_gguf_tensor *t = speck_gguf_tensor_at(g, i);
        speck_levels_facts li;
        if (plan[i].type == t->type || t->n_dims != 2 ||
            !speck_ftype_quantizes(t->name, t->n_dims) ||
            speck_levels_info((speck_type)plan[i].type, &li) || !strcmp(t->name, "token_embd.weight"))
            continue;
        char key[80];
        calib_input_key(t->name, key, sizeof key);
        int k = 0;
        while (k < n_keys && strcmp(keys[k], key)) k++;
        if (k == n_keys) {
            snprintf(kbuf[k], sizeof kbuf[k], "%s", key);
            keys[n_keys++] = kbuf[k];
        }
        if (t->ne[0] > max_n) max_n = (int)t->ne[0];
    }
    qsort(keys, (size_t)n_keys, sizeof *keys, cmp_key);
    const size_t nn = (size_t)max_n * max_n;
    s.xf = malloc((size_t)ctx * max_n * sizeof *s.xf);
    s.H = malloc(nn * sizeof *s.H), s.C = malloc(nn * sizeof *s.C);
    s.tmp = malloc(nn * sizeof *s.tmp);
    float *M32 = malloc(nn * sizeof *M32);
    if (!rc && (!s.xf || !s.H || !s.C || !s.tmp || !M32))
        rc = speck_set_error(SPECK_ERR_NOMEM, "recon: out of memory");
    // The token embedding is no matrix product: rounded as llama-quantize does (imatrix weights
    // if any), and swapped in first so that every later matrix compensates for it too.
    for (int64_t i = 0; i < nt && !rc; i++) {
        const speck_gguf_tensor *t = speck_gguf_tensor_at(g, i);
        if (strcmp(t->name, "token_embd.weight") || plan[i].type == t->type || hp->tied_output)
            continue;
        const int64_t cols = t->ne[0], rows = t->n_elements / cols;
        const speck_type qt = (speck_type)plan[i].type;
        float *W = malloc((size_t)t->n_elements * sizeof *W);
        void *out = malloc(speck_type_row_size(qt, cols) * (size_t)rows);
        if (!W || !out) {
            free(W), free(out);
            rc = speck_set_error(SPECK_ERR_NOMEM, "out of memory");
            break;
        }
        const size_t rs = speck_type_row_size((speck_type)t->type, cols);
        for (int64_t r = 0; r < rows; r++)
            speck_dequantize_row((speck_type)t->type, (const uint8_t *)t->data + (size_t)r * rs,
                                 W + r * cols, cols);
        int64_t ni = 0;
        const float *imp = o->imatrix ? speck_imatrix_get(o->imatrix, t->name, &ni) : NULL;
        rc = speck_quantize(qt, W, out, rows, cols, imp && ni == cols ? imp : NULL);
        speck_weight sw = {out, qt, cols, rows, NULL};
        if (!rc) rc = speck_model_swap_weight(mq, t->name, &sw);
        free(W);
        if (rc) {
            free(out);
        } else {
            free(plan[i].data);
            plan[i].data = out;
        }
    }
    speck_ctx_set_matmul_hook(cf, hook_float, &s);
    speck_ctx_set_matmul_hook(cq, hook_quant, &s);
    for (int k = 0; k < n_keys && !rc; k++) {
        // This input's statistics on both paths, window by window.
        s.key = keys[k];
        s.n_in = 0;
        for (int64_t i = 0; i < nt && !s.n_in; i++) {
            char key[80];
            calib_input_key(speck_gguf_tensor_at(g, i)->name, key, sizeof key);
            if (!strcmp(key, keys[k])) s.n_in = (int)speck_gguf_tensor_at(g, i)->ne[0];
        }
        memset(s.H, 0, (size_t)s.n_in * s.n_in * sizeof *s.H);
        memset(s.C, 0, (size_t)s.n_in * s.n_in * sizeof *s.C);
        s.tokens = 0;
        for (int64_t w = 0; w < windows && !rc; w++) {
            const int32_t *tok = o->calib + w * ctx;
            s.nf = 0;
            speck_ctx_truncate(cf, 0);
            speck_ctx_truncate(cq, 0);
            rc = speck_forward(cf, ctx, tok, NULL, NULL, NULL, ctx, logits);
            if (!rc) rc = speck_forward(cq, ctx, tok, NULL, NULL, NULL, ctx, logits);
            if (!rc) rc = s.err;
        }
        // Each matrix reading it: retarget, GPTQ under the quantized path's H, swap it in.
        for (int64_t i = 0; i < nt && !rc && s.tokens; i++) {
            const speck_gguf_tensor *t = speck_gguf_tensor_at(g, i);
            char key[80];
            calib_input_key(t->name, key, sizeof key);
            if (strcmp(key, keys[k]) || !strcmp(t->name, "token_embd.weight")) continue;
            const int64_t cols = t->ne[0], rows = t->n_elements / cols;
            const speck_type qt = (speck_type)plan[i].type;
            float *W = malloc((size_t)t->n_elements * sizeof *W);
            double *Hc = malloc((size_t)cols * cols * sizeof *Hc);
            void *out = malloc(speck_type_row_size(qt, cols) * (size_t)rows);
            if (!W || !Hc || !out) {
                free(W), free(Hc), free(out);
                rc = speck_set_error(SPECK_ERR_NOMEM, "out of memory");
                break;
            }
            const size_t rs = speck_type_row_size((speck_type)t->type, cols);
            for (int64_t r = 0; r < rows; r++)
                speck_dequantize_row((speck_type)t->type,
                                     (const uint8_t *)t->data + (size_t)r * rs, W + r * cols,
                                     cols);
            memcpy(Hc, s.H, (size_t)cols * cols * sizeof *Hc);
            rc = retarget(W, rows, (int)cols, Hc, s.C, M32);
            if (!rc) rc = speck_gptq(qt, W, rows, cols, s.H, 0.01, true, out);
            speck_weight sw = {out, qt, cols, rows, NULL};
            if (!rc) rc = speck_model_swap_weight(mq, t->name, &sw);
            free(W), free(Hc);
            if (rc) {
                free(out);
                break;
            }
            free(plan[i].data);
            plan[i].data = out; // the quantized model computes with it until the end
            if (progress)
                fprintf(stderr, "\rrecon: %-32s %-7s (%lld tokens)", t->name,
                        speck_type_name(qt), (long long)s.tokens);
        }
    }
    if (progress) fprintf(stderr, "\n");
    speck_ctx_free(cf), speck_ctx_free(cq);
    speck_model_free(mf), speck_model_free(mq);
    free(keys), free(kbuf), free(logits), free(s.xf), free(s.H), free(s.C), free(s.tmp), free(M32);
    return rc;
}
