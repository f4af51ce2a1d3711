// Calibrated quantization for speck_gguf_quantize (quant_plan.h): the calibration tokens are run
// through the source model with the matmul hook collecting each matrix input's Hessian
// H = sum x x^T; GPTQ rounds every matrix that has one (src/calib/gptq.c), and bit allocation
// (src/calib/alloc_plan.c) picks the types before that.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cblas.h>

#include "calib/calib.h"
#include "formats/quant_plan.h"
#include "kernels/kernels.h"
#include "quant/quant.h"

// q, k and v read the same normalised input, as do gate and up: one Hessian each pair/triple.
float *calib_tensor_f32(const speck_gguf_tensor *t) {
    const int64_t cols = t->ne[0], rows = t->n_elements / cols;
    float *W = malloc((size_t)t->n_elements * sizeof *W);
    if (!W) return NULL;
    const size_t rs = speck_type_row_size((speck_type)t->type, cols);
    for (int64_t r = 0; r < rows; r++)
        speck_dequantize_row((speck_type)t->type, (const uint8_t *)t->data + (size_t)r * rs,
                             W + r * cols, cols);
    return W;
}

void calib_input_key(const char *weight, char *key, size_t size) {
    int l;
    char w[64];
    if (sscanf(weight, "blk.%d.%63[^.]", &l, w) == 2) {
        const char *g = !strcmp(w, "attn_q") || !strcmp(w, "attn_k") || !strcmp(w, "attn_v")
                            ? "attn_in"
                        : !strcmp(w, "ffn_gate") || !strcmp(w, "ffn_up") ? "ffn_in"
                                                                          : w;
        snprintf(key, size, "blk.%d.%s", l, g);
    } else {
        snprintf(key, size, "%s", weight);
    }
}

typedef struct {
    char key[80];
    int n;     // input columns
    double *H; // (n, n)
    int64_t tokens;
} hess;

typedef struct {
    hess *h;
    int n_h;
    float *tmp; // (n, n) one call's x^T x
    size_t tmp_cap;
    const float *last_x; // q/k/v and gate/up arrive one after another with the same input
    char last_key[80];
    int err;
} hess_set;

static hess *hess_find(const hess_set *s, const char *key) {
    for (int i = 0; i < s->n_h; i++)
        if (!strcmp(s->h[i].key, key)) return &s->h[i];
    return NULL;
}

static void hess_hook(const char *weight, const float *x, int n, int n_in, void *user) {
    hess_set *s = user;
    char key[80];
    calib_input_key(weight, key, sizeof key);
    hess *h = hess_find(s, key);
    if (!h || s->err) return; // not wanted
    if (x == s->last_x && !strcmp(key, s->last_key)) return; // the same input, counted once
    s->last_x = x;
    snprintf(s->last_key, sizeof s->last_key, "%s", key);
    if (h->n != n_in) {
        s->err = speck_set_error(SPECK_ERR_FORMAT, "calibration: %s has %d inputs, not %d", key,
                                 n_in, h->n);
        return;
    }
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, n_in, n_in, n, 1.0f, x, n_in, x, n_in,
                0.0f, s->tmp, n_in);
    for (size_t i = 0; i < (size_t)n_in * n_in; i++) h->H[i] += s->tmp[i];
    h->tokens += n;
}

int calib_hessians_model(const speck_model *m, const int32_t *tok, int64_t n_tok, int ctx,
                         const char **keys, const int *n_in, int n_keys, double **H,
                         int64_t *tokens, bool progress) {
    const int64_t windows = ctx > 0 ? n_tok / ctx : 0;
    hess_set s = {0};
    int rc = 0, max_n = 0;
    speck_ctx *c = NULL;
    float *logits = NULL;
    if (windows < 1)
        return speck_set_error(SPECK_ERR_ARG,
                               "calibration: %lld tokens make no window of %d (a longer text, or "
                               "--calib-ctx)",
                               (long long)n_tok, ctx);
    for (int i = 0; i < n_keys; i++) max_n = n_in[i] > max_n ? n_in[i] : max_n;
    s.h = calloc((size_t)n_keys, sizeof *s.h);
    s.tmp = malloc((size_t)max_n * max_n * sizeof *s.tmp);
    c = speck_ctx_new(m, ctx);
    logits = malloc((size_t)ctx * speck_model_hparams(m)->n_vocab * sizeof *logits);
    if (!s.h || !s.tmp || !c || !logits) {
        rc = speck_set_error(SPECK_ERR_NOMEM, "calibration: out of memory");
        goto done;
    }
    for (int i = 0; i < n_keys; i++) {
        snprintf(s.h[i].key, sizeof s.h[i].key, "%s", keys[i]);
        s.h[i].n = n_in[i];
        s.h[i].H = H[i];
        memset(H[i], 0, (size_t)n_in[i] * n_in[i] * sizeof *H[i]);
    }
    s.n_h = n_keys;
    speck_ctx_set_matmul_hook(c, hess_hook, &s);
    for (int64_t w = 0; w < windows && !rc; w++) {
        speck_ctx_truncate(c, 0);
        s.last_x = NULL;
        rc = speck_forward(c, ctx, tok + w * ctx, NULL, NULL, NULL, ctx, logits);
        if (!rc) rc = s.err;
        if (progress)
            fprintf(stderr, "\rcalibration: window %lld/%lld", (long long)(w + 1),
                    (long long)windows);
    }
    if (progress) fprintf(stderr, "\n");
    for (int i = 0; i < n_keys && !rc; i++) tokens[i] = s.h[i].tokens;
done:
    free(s.h);
    free(s.tmp);
    free(logits);
    speck_ctx_free(c);
    return rc;
}

int calib_hessians(const char *model_path, const speck_quantize_opts *o, const char **keys,
                   const int *n_in, int n_keys, double **H, int64_t *tokens, bool progress) {
    speck_model *m = speck_model_load(model_path);
    if (!m) return SPECK_ERR_FORMAT;
    int ctx = o->calib_ctx > 0 ? o->calib_ctx : speck_model_hparams(m)->n_ctx_train;
    if (ctx > 512 && o->calib_ctx <= 0) ctx = 512;
    int rc = calib_hessians_model(m, o->calib, o->n_calib, ctx, keys, n_in, n_keys, H, tokens,
                                  progress);
    speck_model_free(m);
    return rc;
}

// Whether plan entry p of tensor t is GPTQ-rounded: a block type with levels, converted.
static bool gptq_wanted(const speck_gguf_tensor *t, const quant_plan *p) {
    speck_levels_facts li;
    return p->type != t->type && speck_ftype_quantizes(t->name, t->n_dims) && t->n_dims == 2 &&
           speck_levels_info((speck_type)p->type, &li) == 0;
}

int quant_plan_calibrate(const speck_gguf *g, const char *path, const speck_quantize_opts *o,
                         quant_plan *plan, bool progress) {
    int rc = 0;
    if (o->target_bpw > 0 && (rc = calib_allocate(g, path, o, plan, progress))) return rc;
    if (o->method == SPECK_QMETHOD_RECON) return calib_recon(g, path, o, plan, progress);
    if (o->method != SPECK_QMETHOD_GPTQ) return 0;
    const int64_t nt = speck_gguf_n_tensors(g);
    // The distinct inputs of the matrices to round, and their widths.
    const char **keys = calloc((size_t)nt, sizeof *keys);
    char(*kbuf)[80] = calloc((size_t)nt, sizeof *kbuf);
    int *n_in = calloc((size_t)nt, sizeof *n_in), n_keys = 0;
    int64_t *tokens = calloc((size_t)nt, sizeof *tokens);
    double **H = calloc((size_t)nt, sizeof *H);
    if (!keys || !kbuf || !n_in || !H || !tokens) rc = speck_set_error(SPECK_ERR_NOMEM, "out of memory");
    for (int64_t i = 0; i < nt && !rc; i++) {
        const speck_gguf_tensor *t = speck_gguf_tensor_at(g, i);
        if (!gptq_wanted(t, &plan[i])) continue;
        char key[80];
        calib_input_key(t->name, key, sizeof key);
        int k = 0;
        while (k < n_keys && strcmp(keys[k], key)) k++;
        if (k < n_keys) continue;
        snprintf(kbuf[k], sizeof kbuf[k], "%s", key);
        keys[k] = kbuf[k];
        n_in[k] = (int)t->ne[0];
        if (!(H[k] = malloc((size_t)n_in[k] * n_in[k] * sizeof **H)))
            rc = speck_set_error(SPECK_ERR_NOMEM, "out of memory for the Hessian of %s (%d x %d)",
                                 key, n_in[k], n_in[k]);
        n_keys++;
    }
    if (!rc && n_keys) rc = calib_hessians(path, o, keys, n_in, n_keys, H, tokens, progress);
    // GPTQ every matrix whose input was seen (token_embd's is not a product: it stays RTN).
    for (int64_t i = 0; i < nt && !rc; i++) {
        const speck_gguf_tensor *t = speck_gguf_tensor_at(g, i);
        if (!gptq_wanted(t, &plan[i])) continue;
        char key[80];
        calib_input_key(t->name, key, sizeof key);
        int k = 0;
        while (k < n_keys && strcmp(keys[k], key)) k++;
        if (!tokens[k]) continue;
        const int64_t cols = t->ne[0], rows = t->n_elements / cols;
        float *W = calib_tensor_f32(t);
        void *out = malloc(speck_type_row_size((speck_type)plan[i].type, cols) * (size_t)rows);
        if (!W || !out) {
            free(W), free(out);
            rc = speck_set_error(SPECK_ERR_NOMEM, "out of memory");
            break;
        }
        if (progress)
            fprintf(stderr, "\rgptq: %-32s %-7s", t->name, speck_type_name(plan[i].type));
        rc = speck_gptq((speck_type)plan[i].type, W, rows, cols, H[k], 0.01, true, out);
        free(W);
        if (rc)
            free(out);
        else
            plan[i].data = out;
    }
    if (progress) fprintf(stderr, "\n");
    for (int k = 0; H && k < n_keys; k++) free(H[k]);
    free(H), free(keys), free(kbuf), free(n_in), free(tokens);
    return rc;
}
