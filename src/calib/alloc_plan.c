// Mixed precision under a bit budget (speck quantize --target-bpw): each converted matrix's
// sensitivity to each candidate type is measured on calibration text -- the KL divergence from
// the full-precision model's next-token distributions when that one matrix is quantized so --
// and the per-matrix types that minimize the summed sensitivities within the budget are chosen
// exactly (multiple-choice knapsack, speck_alloc_solve). Quantizing one layer at a time and
// adding the losses is the AdaQuant / HAWQ-style integer program: it assumes the matrices'
// errors do not interact, which holds to first order for small perturbations.
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "calib/calib.h"
#include "formats/quant_plan.h"
#include "kernels/kernels.h"
#include "model/model_internal.h"
#include "quant/quant.h"

// Candidate types by row length: 256-value super-blocks where they fit, else 32-value blocks.
static const speck_type CAND_K[] = {SPECK_TYPE_Q2_K, SPECK_TYPE_Q3_K, SPECK_TYPE_IQ4_XS,
                                    SPECK_TYPE_Q4_K, SPECK_TYPE_Q5_K, SPECK_TYPE_Q6_K,
                                    SPECK_TYPE_Q8_0};
static const speck_type CAND_32[] = {SPECK_TYPE_Q4_0, SPECK_TYPE_IQ4_NL, SPECK_TYPE_Q5_0,
                                     SPECK_TYPE_Q5_1, SPECK_TYPE_Q8_0};
#define N_OPT 7
// Calibration windows the sensitivities are measured on (the KL divergence of a window's every
// position; each measurement is one pass over them).
#define SENS_WINDOWS 8

typedef struct {
    speck_model *m;
    speck_ctx *c;
    int ctx, windows, n_vocab;
    const int32_t *tokens;
    float *base;   // (windows * ctx, n_vocab) log-probabilities of the unquantized model
    float *logits; // (ctx, n_vocab)
} sens_eval;

void calib_log_softmax_rows(float *x, int rows, int n) {
#pragma omp parallel for schedule(static)
    for (int r = 0; r < rows; r++) {
        float *l = x + (size_t)r * n, mx = l[0];
        for (int i = 1; i < n; i++) mx = l[i] > mx ? l[i] : mx;
        double s = 0;
        for (int i = 0; i < n; i++) s += exp((double)l[i] - mx);
        const float ls = (float)log(s) + mx;
        for (int i = 0; i < n; i++) l[i] -= ls;
    }
}

double calib_kld_rows(const float *base, const float *logp, int rows, int n) {
    double s = 0;
#pragma omp parallel for schedule(static) reduction(+ : s)
    for (int r = 0; r < rows; r++) {
        const float *lb = base + (size_t)r * n, *lq = logp + (size_t)r * n;
        double k = 0;
        for (int i = 0; i < n; i++) k += exp((double)lb[i]) * ((double)lb[i] - lq[i]);
        s += k;
    }
    return s;
}

// Mean KL(base || model) per position over the windows, with the model as it stands.
static int kld_now(sens_eval *e, double *out) {
    double sum = 0;
    for (int w = 0; w < e->windows; w++) {
        speck_ctx_truncate(e->c, 0);
        int rc = speck_forward(e->c, e->ctx, e->tokens + (size_t)w * e->ctx, NULL, NULL, NULL,
                               e->ctx, e->logits);
        if (rc) return rc;
        calib_log_softmax_rows(e->logits, e->ctx, e->n_vocab);
        sum += calib_kld_rows(e->base + (size_t)w * e->ctx * e->n_vocab, e->logits, e->ctx,
                              e->n_vocab);
    }
    *out = sum / ((double)e->windows * e->ctx);
    return 0;
}

int calib_allocate(const speck_gguf *g, const char *model_path, const speck_quantize_opts *o,
                   void *plan_v, bool progress) {
    quant_plan *plan = plan_v;
    const int64_t nt = speck_gguf_n_tensors(g);
    sens_eval e = {0};
    int rc = 0, n_items = 0, n_keys = 0;
    int *item = calloc((size_t)nt, sizeof *item); // item -> tensor index
    speck_type *cand = calloc((size_t)nt * N_OPT, sizeof *cand);
    double *cost = malloc((size_t)nt * N_OPT * sizeof *cost);
    int64_t *size = calloc((size_t)nt * N_OPT, sizeof *size);
    int *choice = calloc((size_t)nt, sizeof *choice);
    const char **keys = calloc((size_t)nt, sizeof *keys);
    char(*kbuf)[80] = calloc((size_t)nt, sizeof *kbuf);
    int *n_in = calloc((size_t)nt, sizeof *n_in);
    int64_t *tokens = calloc((size_t)nt, sizeof *tokens);
    double **H = calloc((size_t)nt, sizeof *H);
    if (!item || !cand || !cost || !size || !choice || !keys || !kbuf || !n_in || !tokens || !H) {
        rc = speck_set_error(SPECK_ERR_NOMEM, "out of memory");
        goto done;
    }
    // The budget over every tensor, as llama-quantize counts bits per weight; what is not
    // allocated (norms, vectors, tensors kept as they are) is taken off it first.
    int64_t elements = 0, fixed = 0;
    for (int64_t i = 0; i < nt; i++) {
        const speck_gguf_tensor *t = speck_gguf_tensor_at(g, i);
        elements += t->n_elements;
        // Items: the matrices a file type converts (their planned type is replaced).
        if (!(t->n_dims == 2 && speck_ftype_quantizes(t->name, t->n_dims))) {
            fixed += (int64_t)speck_type_row_size((speck_type)plan[i].type, t->ne[0]) *
                     (t->n_elements / t->ne[0]);
            continue;
        }
        const speck_type *cs = t->ne[0] % 256 ? CAND_32 : CAND_K;
        const int nc = t->ne[0] % 256 ? (int)(sizeof CAND_32 / sizeof *CAND_32) : N_OPT;
        if (t->ne[0] % 32) { // no block fits: keep the plan's type (its fallback)
            fixed += (int64_t)speck_type_row_size((speck_type)plan[i].type, t->ne[0]) *
                     (t->n_elements / t->ne[0]);
            continue;
        }
        for (int k = 0; k < N_OPT; k++) {
            cand[(size_t)n_items * N_OPT + k] = k < nc ? cs[k] : cs[nc - 1];
            cost[(size_t)n_items * N_OPT + k] = k < nc ? 0 : INFINITY;
            size[(size_t)n_items * N_OPT + k] =
                (int64_t)speck_type_row_size(cand[(size_t)n_items * N_OPT + k], t->ne[0]) *
                (t->n_elements / t->ne[0]);
        }
        item[n_items++] = (int)i;
        if (o->method != SPECK_QMETHOD_RTN) { // each distinct input's Hessian, once
            char key[80];
            calib_input_key(t->name, key, sizeof key);
            int k = 0;
            while (k < n_keys && strcmp(keys[k], key)) k++;
            if (k == n_keys) {
                snprintf(kbuf[k], sizeof kbuf[k], "%s", key);
                keys[k] = kbuf[k];
                n_in[k] = (int)t->ne[0];
                if (!(H[k] = malloc((size_t)n_in[k] * n_in[k] * sizeof **H))) {
                    rc = speck_set_error(SPECK_ERR_NOMEM, "out of memory");
                    goto done;
                }
                n_keys++;
            }
        }
    }
    const int64_t budget = (int64_t)floor(o->target_bpw * (double)elements / 8.0) - fixed;
    if (n_keys && (rc = calib_hessians(model_path, o, keys, n_in, n_keys, H, tokens, progress)))
        goto done;

    // The unquantized model's log-probabilities on the first windows.
    if (!(e.m = speck_model_load(model_path))) {
        rc = SPECK_ERR_FORMAT;
        goto done;
    }
    e.n_vocab = speck_model_hparams(e.m)->n_vocab;
    e.ctx = o->calib_ctx > 0 ? o->calib_ctx : speck_model_hparams(e.m)->n_ctx_train;
    if (e.ctx > 512 && o->calib_ctx <= 0) e.ctx = 512;
    e.windows = (int)(o->n_calib / e.ctx);
    if (e.windows > SENS_WINDOWS) e.windows = SENS_WINDOWS;
    // At most ~256 MB of stored log-probabilities.
    while (e.windows > 1 && (size_t)e.windows * e.ctx * e.n_vocab > (64u << 20)) e.windows--;
    e.tokens = o->calib;
    if (e.windows < 1) {
        rc = speck_set_error(SPECK_ERR_ARG,
                             "--target-bpw: %lld calibration tokens make no "
                             "window of %d",
                             (long long)o->n_calib, e.ctx);
        goto done;
    }
    if (!(e.c = speck_ctx_new(e.m, e.ctx)) ||
        !(e.base = malloc((size_t)e.windows * e.ctx * e.n_vocab * sizeof *e.base)) ||
        !(e.logits = malloc((size_t)e.ctx * e.n_vocab * sizeof *e.logits))) {
        rc = speck_set_error(SPECK_ERR_NOMEM, "out of memory");
        goto done;
    }
    for (int w = 0; w < e.windows && !rc; w++) {
        float *b = e.base + (size_t)w * e.ctx * e.n_vocab;
        speck_ctx_truncate(e.c, 0);
        rc = speck_forward(e.c, e.ctx, e.tokens + (size_t)w * e.ctx, NULL, NULL, NULL, e.ctx, b);
        calib_log_softmax_rows(b, e.ctx, e.n_vocab);
    }
    // Each item in each candidate type, alone in the otherwise unquantized model.
    for (int it = 0; it < n_items && !rc; it++) {
        const speck_gguf_tensor *t = speck_gguf_tensor_at(g, item[it]);
        const int64_t cols = t->ne[0], rows = t->n_elements / cols;
        float *W = calib_tensor_f32(t);
        int64_t qmax = 0;
        for (int k = 0; k < N_OPT; k++)
            if (size[(size_t)it * N_OPT + k] > qmax) qmax = size[(size_t)it * N_OPT + k];
        void *q = malloc((size_t)qmax);
        if (!W || !q) {
            free(W), free(q);
            rc = speck_set_error(SPECK_ERR_NOMEM, "out of memory");
            break;
        }
        char key[80];
        calib_input_key(t->name, key, sizeof key);
        int hk = 0;
        while (hk < n_keys && strcmp(keys[hk], key)) hk++;
        int64_t imp_n = 0;
        const float *imp = o->imatrix ? speck_imatrix_get(o->imatrix, t->name, &imp_n) : NULL;
        if (imp && imp_n != cols) imp = NULL;
        for (int k = 0; k < N_OPT && !rc; k++) {
            const size_t ci = (size_t)it * N_OPT + k;
            if (!isfinite(cost[ci])) continue;
            if (hk < n_keys && tokens[hk])
                rc = speck_gptq(cand[ci], W, rows, cols, H[hk], 0.01, true, q);
            else
                rc = speck_quantize(cand[ci], W, q, rows, cols, imp);
            speck_weight sw = {q, cand[ci], cols, rows, NULL, NULL};
            if (!rc) rc = speck_model_swap_weight(e.m, t->name, &sw);
            if (!rc) {
                rc = kld_now(&e, &cost[ci]);
                speck_model_swap_weight(e.m, t->name, &sw); // back
            }
            if (progress)
                fprintf(stderr, "\rbit allocation: %3d/%d %-28s %-7s KLD %.3e", it + 1, n_items,
                        t->name, speck_type_name(cand[ci]), cost[ci]);
        }
        free(W), free(q);
    }
    if (progress) fprintf(stderr, "\n");
    if (rc) goto done;
    if (budget <= 0) {
        rc = speck_set_error(SPECK_ERR_ARG,
                             "--target-bpw %.3f: the tensors kept as they are "
                             "already take more",
                             o->target_bpw);
        goto done;
    }
    // Sizes in units that keep the dynamic program's table near a million entries.
    int64_t unit = budget >> 20;
    if (unit < 1) unit = 1;
    if ((rc = speck_alloc_solve(n_items, N_OPT, cost, size, budget, unit, choice))) {
        int64_t least = fixed;
        for (int it = 0; it < n_items; it++) least += size[(size_t)it * N_OPT];
        rc = speck_set_error(SPECK_ERR_ARG,
                             "--target-bpw %.3f is below the smallest mix of the candidate types "
                             "(%.3f bits per weight)",
                             o->target_bpw, 8.0 * (double)least / (double)elements);
        goto done;
    }
    for (int it = 0; it < n_items; it++) {
        const speck_type t = cand[(size_t)it * N_OPT + choice[it]];
        plan[item[it]].type = plan[item[it]].wanted = (int)t;
        for (int k = 0; o->on_candidate && k < N_OPT; k++) {
            const size_t ci = (size_t)it * N_OPT + k;
            if (isfinite(cost[ci]))
                o->on_candidate(speck_gguf_tensor_at(g, item[it])->name, (int)cand[ci], size[ci],
                                cost[ci], k == choice[it], o->user);
        }
    }
done:
    if (e.c) speck_ctx_free(e.c);
    if (e.m) speck_model_free(e.m);
    free(e.base), free(e.logits);
    for (int k = 0; H && k < n_keys; k++) free(H[k]);
    free(item), free(cand), free(cost), free(size), free(choice), free(keys), free(kbuf);
    free(n_in), free(tokens), free(H);
    return rc;
}
