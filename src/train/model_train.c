// Training forward and backward pass of the Llama layer and its relatives, in f32 (llm.c style:
// every layer is a forward/backward pair side by side, shapes documented). The forward computes
// the same function as speck_forward (src/model/llama.c) over B independent sequences of T tokens.
// Which tensors a layer has comes from the architecture's table (src/model/arch_*.c): q/k/v biases
// (qwen2), RMSNorm of each q/k head (qwen3, qwen3moe) or of the whole projections (olmoe) before
// RoPE, experts (moe_train.c) with Qwen2-MoE's shared expert.
//
// Shapes: N = B*T rows; C = n_embd; H / Hkv heads; hd = head_dim; Qd = H*hd; KVd = Hkv*hd;
// F = n_ff; V = n_vocab. Matmuls y = x·Wᵀ go through OpenBLAS sgemm; elementwise loops and
// attention are OpenMP loops with static schedules, so results depend only on the thread count.
#include <math.h>
#include <omp.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/kernels.h"
#include "model/model_internal.h"
#include "train/moe_train.h"
#include "train/train_internal.h"
#include "train/train_ops.h"


/* ---- activations -------------------------------------------------------------------------- */

typedef struct {
    float *x_in;        // (N, C) residual stream entering the layer
    float *xn1, *rstd1; // (N, C) attn RMSNorm output, (N) its 1/rms
    float *q, *k, *v;   // (N, Qd), (N, KVd), (N, KVd); q, k after RoPE
    float *q_raw, *k_raw;   // (N, Qd), (N, KVd) q, k before their norms (QK-norm only)
    float *rstd_q, *rstd_k; // (rows of the q / k norm: N·H / N·Hkv per head, N whole) 1/rms
    float *att;         // (B, H, T, T) softmax probabilities (upper triangle 0)
    float *ao;          // (N, Qd) attention output before wo
    float *x_mid;       // (N, C) residual after attention
    float *xn2, *rstd2; // (N, C), (N) ffn RMSNorm
    float *g, *u, *h;   // (N, F) gate pre-activation, up, silu(g)*u (dense FFN)
    tmoe_acts moe;      // the mixture of experts' (moe_train.h) instead
    tshexp_acts sh;     // and its shared expert's (Qwen2-MoE)
} tlayer_acts;

struct speck_tacts {
    int B, T;
    tlayer_acts *l;    // (L)
    float *x_final;    // (N, C) residual after the last layer
    float *xf, *rstdf; // (N, C), (N) final norm
    float *logits;     // (N, V) logits -> probabilities -> dlogits
    float *cos, *sin;  // (T, hd/2) RoPE tables for positions 0..T-1
    // backward scratch
    float *dx, *dt;            // (N, C) residual gradient, temporary
    float *dq, *dk, *dv, *dao; // (N, Qd), (N, KVd) x2, (N, Qd)
    float *dqr, *dkr;          // (N, Qd), (N, KVd) before the q/k norms (QK-norm only)
    float *dg, *du, *dh;       // (N, F) (dense FFN)
    tmoe_scratch moe_d;        // experts' backward scratch (moe_train.h)
    tshexp_scratch sh_d;       // the shared expert's
    float *dp;                 // (threads, T, T) attention backward scratch
    int dp_threads;
    void **blocks; // every allocation above, for freeing
    int n_blocks;
};

// The q/k norms' rows and width for N tokens of `heads` heads of hd: per head (N·heads, hd), over
// the whole projection (N, heads·hd) (olmoe).
static void qkn_shape(const speck_train_model *tm, int N, int heads, int *rows, int *cols) {
    const bool full = tm->hp.qk_norm_full;
    *rows = full ? N : N * heads;
    *cols = full ? heads * tm->head_dim : tm->head_dim;
}

// The mixture of experts' shape for a batch of N tokens.
static tmoe_shape moe_shape(const speck_train_config *c, int N) {
    return (tmoe_shape){N, c->n_embd, c->n_ff, c->n_expert, c->n_expert_used, c->moe_norm};
}

static float *acts_alloc(speck_tacts *a, size_t n, int *err) {
    float *p = calloc(n ? n : 1, sizeof(float));
    void **b = realloc(a->blocks, (size_t)(a->n_blocks + 1) * sizeof *b);
    if (!p || !b) {
        free(p);
        if (b) a->blocks = b;
        *err = 1;
        return NULL;
    }
    a->blocks = b;
    b[a->n_blocks++] = p;
    return p;
}

static void acts_free(speck_tacts *a) {
    if (!a) return;
    for (int i = 0; i < a->n_blocks; i++) free(a->blocks[i]);
    free(a->blocks);
    free(a->l);
    free(a);
}

static int acts_reserve(speck_train_model *tm, int B, int T) {
    speck_tacts *a = tm->acts;
    if (a && a->B == B && a->T == T && a->dp_threads >= omp_get_max_threads()) return 0;
    acts_free(a);
    tm->acts = NULL;
    const speck_train_config *c = &tm->cfg;
    size_t N = (size_t)B * T, C = c->n_embd, hd = tm->head_dim, Qd = (size_t)c->n_head * hd,
           KVd = (size_t)c->n_head_kv * hd, F = c->n_ff, V = c->n_vocab, half = hd / 2;
    a = calloc(1, sizeof *a);
    if (!a) return speck_set_error(SPECK_ERR_NOMEM, "train: out of memory");
    a->B = B, a->T = T;
    int err = 0;
    a->l = calloc((size_t)c->n_layer, sizeof *a->l);
    if (!a->l) err = 1;
    for (int l = 0; !err && l < c->n_layer; l++) {
        tlayer_acts *la = &a->l[l];
        la->x_in = acts_alloc(a, N * C, &err);
        la->xn1 = acts_alloc(a, N * C, &err);
        la->rstd1 = acts_alloc(a, N, &err);
        la->q = acts_alloc(a, N * Qd, &err);
        la->k = acts_alloc(a, N * KVd, &err);
        la->v = acts_alloc(a, N * KVd, &err);
        if (tm->hp.qk_norm) {
            la->q_raw = acts_alloc(a, N * Qd, &err);
            la->k_raw = acts_alloc(a, N * KVd, &err);
            la->rstd_q = acts_alloc(a, N * c->n_head, &err);
            la->rstd_k = acts_alloc(a, N * c->n_head_kv, &err);
        }
        la->att = acts_alloc(a, (size_t)B * c->n_head * T * T, &err);
        la->ao = acts_alloc(a, N * Qd, &err);
        la->x_mid = acts_alloc(a, N * C, &err);
        la->xn2 = acts_alloc(a, N * C, &err);
        la->rstd2 = acts_alloc(a, N, &err);
        if (c->n_expert) {
            const tmoe_shape sh = moe_shape(c, (int)N);
            float *blk = acts_alloc(a, tmoe_acts_bytes(&sh) / sizeof(float), &err);
            if (blk) tmoe_acts_at(&sh, blk, &la->moe);
            if (c->n_ff_shexp) {
                const size_t Fs = c->n_ff_shexp;
                la->sh.sg = acts_alloc(a, N, &err);
                la->sh.g = acts_alloc(a, N * Fs, &err);
                la->sh.u = acts_alloc(a, N * Fs, &err);
                la->sh.h = acts_alloc(a, N * Fs, &err);
                la->sh.ys = acts_alloc(a, N * C, &err);
            }
        } else {
            la->g = acts_alloc(a, N * F, &err);
            la->u = acts_alloc(a, N * F, &err);
            la->h = acts_alloc(a, N * F, &err);
        }
    }
    a->dp_threads = omp_get_max_threads();
    a->x_final = acts_alloc(a, N * C, &err);
    a->xf = acts_alloc(a, N * C, &err);
    a->rstdf = acts_alloc(a, N, &err);
    a->logits = acts_alloc(a, N * V, &err);
    a->cos = acts_alloc(a, (size_t)T * half, &err);
    a->sin = acts_alloc(a, (size_t)T * half, &err);
    a->dx = acts_alloc(a, N * C, &err);
    a->dt = acts_alloc(a, N * C, &err);
    a->dq = acts_alloc(a, N * Qd, &err);
    a->dk = acts_alloc(a, N * KVd, &err);
    a->dv = acts_alloc(a, N * KVd, &err);
    a->dao = acts_alloc(a, N * Qd, &err);
    if (tm->hp.qk_norm) {
        a->dqr = acts_alloc(a, N * Qd, &err);
        a->dkr = acts_alloc(a, N * KVd, &err);
    }
    if (c->n_expert) {
        const tmoe_shape sh = moe_shape(c, (int)N);
        float *blk = acts_alloc(a, tmoe_scratch_bytes(&sh) / sizeof(float), &err);
        if (blk) tmoe_scratch_at(&sh, blk, &a->moe_d);
        if (c->n_ff_shexp) {
            const size_t Fs = c->n_ff_shexp;
            a->sh_d.dys = acts_alloc(a, N * C, &err);
            a->sh_d.dh = acts_alloc(a, N * Fs, &err);
            a->sh_d.dg = acts_alloc(a, N * Fs, &err);
            a->sh_d.du = acts_alloc(a, N * Fs, &err);
            a->sh_d.dz = acts_alloc(a, N, &err);
        }
    } else {
        a->dg = acts_alloc(a, N * F, &err);
        a->du = acts_alloc(a, N * F, &err);
        a->dh = acts_alloc(a, N * F, &err);
    }
    a->dp = acts_alloc(a, (size_t)a->dp_threads * T * T, &err);
    if (err) {
        acts_free(a);
        return speck_set_error(SPECK_ERR_NOMEM,
                               "train: out of memory for the activations of a %d x %d batch", B, T);
    }
    // Same angles as llama.c's rope(): cos/sin of (double)pos * freq, rounded to float.
    for (int t = 0; t < T; t++)
        for (size_t j = 0; j < half; j++) {
            double ang = (double)t * tm->rope_freq[j];
            a->cos[t * half + j] = (float)cos(ang);
            a->sin[t * half + j] = (float)sin(ang);
        }
    tm->acts = a;
    return 0;
}

/* ---- the model ---------------------------------------------------------------------------- */

// Per-row loss sum in double; deterministic because of the fixed static schedule.
static int check_batch(speck_train_model *tm, const int32_t *in, const int32_t *tg, int B, int T) {
    const speck_train_config *c = &tm->cfg;
    if (B <= 0 || T <= 0)
        return speck_set_error(SPECK_ERR_ARG, "train: batch %d x %d is empty", B, T);
    if (T > c->n_ctx)
        return speck_set_error(SPECK_ERR_RANGE, "train: sequence length %d exceeds n_ctx %d", T,
                               c->n_ctx);
    for (size_t i = 0; i < (size_t)B * T; i++)
        if (in[i] < 0 || in[i] >= c->n_vocab || (tg && (tg[i] < -1 || tg[i] >= c->n_vocab)))
            return speck_set_error(SPECK_ERR_RANGE,
                                   "train: token id %d at %zu out of range [0, %d) (vocabulary "
                                   "and model do not match?)",
                                   in[i] < 0 || in[i] >= c->n_vocab ? in[i] : tg[i], i, c->n_vocab);
    train_nm_refresh(tm); // the masked copies follow the dense weights' last update
    return acts_reserve(tm, B, T);
}

// Positions with a target (-1 masks one: fine-tuning prompts); the loss is their mean.
static int n_valid(const int32_t *tg, int N) {
    int n = 0;
    for (int i = 0; i < N; i++) n += tg[i] >= 0;
    return n;
}

static void forward(speck_train_model *tm, const int32_t *in, const int32_t *tg, int B, int T,
                    float *loss) {
    const speck_train_config *c = &tm->cfg;
    speck_tacts *a = tm->acts;
    const speck_tweights *w = &tm->f; // N:M training: the masked matrices
    int N = B * T, C = c->n_embd, hd = tm->head_dim, H = c->n_head, Hkv = c->n_head_kv;
    int Qd = H * hd, KVd = Hkv * hd, F = c->n_ff, V = c->n_vocab;
    const tmoe_shape sh = moe_shape(c, N);
    double aux = 0;
    train_embedding_forward(a->l[0].x_in, w->tok_embd, in, N, C);
    for (int l = 0; l < c->n_layer; l++) {
        tlayer_acts *la = &a->l[l];
        const speck_tlayer *wl = &w->layers[l];
        float *x_out = l + 1 < c->n_layer ? a->l[l + 1].x_in : a->x_final;
        train_rmsnorm_forward(la->xn1, la->rstd1, la->x_in, wl->attn_norm, N, C, c->norm_eps);
        // q, k (+ biases; QK-norm: into q_raw, k_raw, then normalised into q, k), v
        float *qp = wl->q_norm ? la->q_raw : la->q, *kp = wl->k_norm ? la->k_raw : la->k;
        train_matmul_forward(qp, la->xn1, wl->wq, N, C, Qd);
        train_matmul_forward(kp, la->xn1, wl->wk, N, C, KVd);
        train_matmul_forward(la->v, la->xn1, wl->wv, N, C, KVd);
        if (wl->bq) train_bias_forward(qp, wl->bq, N, Qd);
        if (wl->bk) train_bias_forward(kp, wl->bk, N, KVd);
        if (wl->bv) train_bias_forward(la->v, wl->bv, N, KVd);
        if (wl->q_norm) {
            int rows, cols;
            qkn_shape(tm, N, H, &rows, &cols);
            train_rmsnorm_forward(la->q, la->rstd_q, qp, wl->q_norm, rows, cols, c->norm_eps);
            qkn_shape(tm, N, Hkv, &rows, &cols);
            train_rmsnorm_forward(la->k, la->rstd_k, kp, wl->k_norm, rows, cols, c->norm_eps);
        }
        train_rope_apply(la->q, a->cos, a->sin, B, T, H, hd, tm->rope_type, false);
        train_rope_apply(la->k, a->cos, a->sin, B, T, Hkv, hd, tm->rope_type, false);
        train_attention_forward(la->ao, la->att, la->q, la->k, la->v, B, T, H, Hkv, hd);
        train_matmul_forward(a->dt, la->ao, wl->wo, N, Qd, C);
        train_residual_forward(la->x_mid, la->x_in, a->dt, (size_t)N * C);
        train_rmsnorm_forward(la->xn2, la->rstd2, la->x_mid, wl->ffn_norm, N, C, c->norm_eps);
        if (c->n_expert) {
            aux += tmoe_forward(&sh, &la->moe, a->dt, la->xn2, wl->router, wl->wg_x, wl->wu_x,
                                wl->wd_x);
            if (wl->sh_gate)
                tshexp_forward(&la->sh, a->dt, la->xn2, wl->sh_gate, wl->wg_s, wl->wu_s, wl->wd_s,
                               N, C, c->n_ff_shexp);
        } else {
            train_matmul_forward(la->g, la->xn2, wl->wg, N, C, F);
            train_matmul_forward(la->u, la->xn2, wl->wu, N, C, F);
            train_swiglu_forward(la->h, la->g, la->u, (size_t)N * F);
            train_matmul_forward(a->dt, la->h, wl->wd, N, F, C);
        }
        train_residual_forward(x_out, la->x_mid, a->dt, (size_t)N * C);
    }
    tm->aux_loss = c->n_expert ? aux / c->n_layer : 0.0;
    train_rmsnorm_forward(a->xf, a->rstdf, a->x_final, w->out_norm, N, C, c->norm_eps);
    train_matmul_forward(a->logits, a->xf, w->output, N, C, V);
    if (!tg) return; // train_forward_logits: the caller takes the logits
    const int nv = n_valid(tg, N);
    *loss = nv ? (float)(train_crossentropy_forward(a->logits, tg, N, V) / nv) : 0.0f;
}

// dx = dy·W (accumulated or not); dW += dyᵀ·x, or the weight gradient handed to tm->wgrad.
static void matmul_back(speck_train_model *tm, float *dx, float *dW, const float *dy,
                        const float *x, const float *W, int N, int n_in, int n_out, bool acc) {
    if (!tm->wgrad) {
        train_matmul_backward(dx, dW, dy, x, W, N, n_in, n_out, acc);
        return;
    }
    train_matmul_backward_dx(dx, dy, W, N, n_in, n_out, acc);
    tm->wgrad(tm->wgrad_ctx, W - tm->params, dy, x, N, n_in, n_out);
}

static void backward(speck_train_model *tm, const int32_t *in, const int32_t *tg, int B, int T,
                     float grad_scale) {
    const speck_train_config *c = &tm->cfg;
    speck_tacts *a = tm->acts;
    // N:M training: dx through the masked matrices; dW is dL/dW̃, applied to the dense W
    // (straight-through).
    const speck_tweights *w = &tm->f, *g = &tm->g;
    int N = B * T, C = c->n_embd, hd = tm->head_dim, H = c->n_head, Hkv = c->n_head_kv;
    int Qd = H * hd, KVd = Hkv * hd, F = c->n_ff, V = c->n_vocab;
    if (tg) { // else train_backward_logits: a->logits already holds dL/dlogits
        const int nv = n_valid(tg, N);
        train_crossentropy_backward(a->logits, tg, N, V, nv ? grad_scale / nv : 0.0f);
    }
    // head: dxf = dlogits·W_out; dW_out += dlogitsᵀ·xf (into dE when tied)
    matmul_back(tm, a->dt, g->output, a->logits, a->xf, w->output, N, C, V, false);
    train_rmsnorm_backward(a->dx, g->out_norm, a->dt, a->x_final, w->out_norm, a->rstdf, N, C, false);
    // a->dx holds dL/dx_out of the current layer; each block adds its branch gradient.
    for (int l = c->n_layer - 1; l >= 0; l--) {
        tlayer_acts *la = &a->l[l];
        const speck_tlayer *wl = &w->layers[l], *gl = &g->layers[l];
        // FFN branch: x_out = x_mid + wd(swiglu(wg xn2, wu xn2)), or + moe(xn2)
        if (c->n_expert) {
            const tmoe_shape sh = moe_shape(c, N);
            tmoe_backward(&sh, &la->moe, &a->moe_d, a->dt, gl->router, gl->wg_x, gl->wu_x,
                          gl->wd_x, a->dx, la->xn2, wl->router, wl->wg_x, wl->wu_x, wl->wd_x,
                          grad_scale * tm->aux_coef / c->n_layer);
            if (wl->sh_gate)
                tshexp_backward(&la->sh, &a->sh_d, a->dt, gl->sh_gate, gl->wg_s, gl->wu_s,
                                gl->wd_s, a->dx, la->xn2, wl->sh_gate, wl->wg_s, wl->wu_s,
                                wl->wd_s, N, C, c->n_ff_shexp);
        } else {
            matmul_back(tm, a->dh, gl->wd, a->dx, la->h, wl->wd, N, F, C, false);
            train_swiglu_backward(a->dg, a->du, a->dh, la->g, la->u, (size_t)N * F);
            matmul_back(tm, a->dt, gl->wg, a->dg, la->xn2, wl->wg, N, C, F, false);
            matmul_back(tm, a->dt, gl->wu, a->du, la->xn2, wl->wu, N, C, F, true);
        }
        train_rmsnorm_backward(a->dx, gl->ffn_norm, a->dt, la->x_mid, wl->ffn_norm, la->rstd2, N, C,
                         true);
        // attention branch: x_mid = x_in + wo(attn(rope(wq xn1), rope(wk xn1), wv xn1))
        matmul_back(tm, a->dao, gl->wo, a->dx, la->ao, wl->wo, N, Qd, C, false);
        train_attention_backward(a->dq, a->dk, a->dv, a->dp, a->dao, la->att, la->q, la->k, la->v, B, T,
                           H, Hkv, hd);
        train_rope_apply(a->dq, a->cos, a->sin, B, T, H, hd, tm->rope_type, true);
        train_rope_apply(a->dk, a->cos, a->sin, B, T, Hkv, hd, tm->rope_type, true);
        float *dq = a->dq, *dk = a->dk; // the projections' output gradients
        if (wl->q_norm) {
            int rows, cols;
            qkn_shape(tm, N, H, &rows, &cols);
            train_rmsnorm_backward(a->dqr, gl->q_norm, a->dq, la->q_raw, wl->q_norm, la->rstd_q,
                                   rows, cols, false);
            qkn_shape(tm, N, Hkv, &rows, &cols);
            train_rmsnorm_backward(a->dkr, gl->k_norm, a->dk, la->k_raw, wl->k_norm, la->rstd_k,
                                   rows, cols, false);
            dq = a->dqr, dk = a->dkr;
        }
        if (gl->bq) train_bias_backward(gl->bq, dq, N, Qd);
        if (gl->bk) train_bias_backward(gl->bk, dk, N, KVd);
        if (gl->bv) train_bias_backward(gl->bv, a->dv, N, KVd);
        matmul_back(tm, a->dt, gl->wq, dq, la->xn1, wl->wq, N, C, Qd, false);
        matmul_back(tm, a->dt, gl->wk, dk, la->xn1, wl->wk, N, C, KVd, true);
        matmul_back(tm, a->dt, gl->wv, a->dv, la->xn1, wl->wv, N, C, KVd, true);
        train_rmsnorm_backward(a->dx, gl->attn_norm, a->dt, la->x_in, wl->attn_norm, la->rstd1, N, C,
                         true);
    }
    if (!tm->wgrad) train_embedding_backward(g->tok_embd, a->dx, in, N, C);
}

int speck_train_loss(speck_train_model *tm, const int32_t *inputs, const int32_t *targets, int B,
                     int T, float *loss) {
    int err = check_batch(tm, inputs, targets, B, T);
    if (err) return err;
    speck_blas_single_threaded();
    forward(tm, inputs, targets, B, T, loss);
    return 0;
}

int speck_train_step(speck_train_model *tm, const int32_t *inputs, const int32_t *targets, int B,
                     int T, float grad_scale, float *loss) {
    int err = check_batch(tm, inputs, targets, B, T);
    if (err) return err;
    speck_blas_single_threaded();
    forward(tm, inputs, targets, B, T, loss);
    backward(tm, inputs, targets, B, T, grad_scale);
    return 0;
}

float *train_forward_logits(speck_train_model *tm, const int32_t *inputs, int B, int T) {
    if (check_batch(tm, inputs, NULL, B, T)) return NULL;
    speck_blas_single_threaded();
    forward(tm, inputs, NULL, B, T, NULL);
    return tm->acts->logits;
}

void train_backward_logits(speck_train_model *tm, const int32_t *inputs, int B, int T) {
    backward(tm, inputs, NULL, B, T, 1.0f);
}

/* ---- parameters: layout, creation, loading ------------------------------------------------ */

void speck_tweights_bind(speck_train_model *tm, float *base, speck_tweights *w) {
    int i = 0;
    w->tok_embd = base + tm->tensors[i++].offset;
    w->out_norm = base + tm->tensors[i++].offset;
    w->output = tm->cfg.tied_output ? w->tok_embd : base + tm->tensors[i++].offset;
    memset(w->layers, 0, (size_t)tm->cfg.n_layer * sizeof *w->layers);
    for (; i < tm->n_tensors; i++) {
        const speck_ttensor *t = &tm->tensors[i];
        *(float **)((char *)&w->layers[t->layer] + t->field) = base + t->offset;
    }
}

// The layer tensors training knows: where each architecture-table slot (src/model/arch.h) binds.
static const struct {
    speck_slot slot;
    size_t field;
} train_slots[] = {
    {SLOT_ATTN_NORM, offsetof(speck_tlayer, attn_norm)},
    {SLOT_WQ, offsetof(speck_tlayer, wq)},
    {SLOT_WK, offsetof(speck_tlayer, wk)},
    {SLOT_WV, offsetof(speck_tlayer, wv)},
    {SLOT_BQ, offsetof(speck_tlayer, bq)},
    {SLOT_BK, offsetof(speck_tlayer, bk)},
    {SLOT_BV, offsetof(speck_tlayer, bv)},
    {SLOT_Q_NORM, offsetof(speck_tlayer, q_norm)},
    {SLOT_K_NORM, offsetof(speck_tlayer, k_norm)},
    {SLOT_WO, offsetof(speck_tlayer, wo)},
    {SLOT_FFN_NORM, offsetof(speck_tlayer, ffn_norm)},
    {SLOT_WG, offsetof(speck_tlayer, wg)},
    {SLOT_WU, offsetof(speck_tlayer, wu)},
    {SLOT_WD, offsetof(speck_tlayer, wd)},
    {SLOT_ROUTER, offsetof(speck_tlayer, router)},
    {SLOT_WG_EXPS, offsetof(speck_tlayer, wg_x)},
    {SLOT_WU_EXPS, offsetof(speck_tlayer, wu_x)},
    {SLOT_WD_EXPS, offsetof(speck_tlayer, wd_x)},
    {SLOT_SH_GATE, offsetof(speck_tlayer, sh_gate)},
    {SLOT_WG_SH, offsetof(speck_tlayer, wg_s)},
    {SLOT_WU_SH, offsetof(speck_tlayer, wu_s)},
    {SLOT_WD_SH, offsetof(speck_tlayer, wd_s)},
};

// Where slot binds in speck_tlayer; false when training has no such tensor.
static bool slot_field(speck_slot slot, size_t *field) {
    for (size_t i = 0; i < sizeof train_slots / sizeof *train_slots; i++)
        if (train_slots[i].slot == slot) return *field = train_slots[i].field, true;
    return false;
}

static bool is_bias(speck_slot s) {
    return s == SLOT_BQ || s == SLOT_BK || s == SLOT_BV;
}

// The architecture's layer is the training pass's (pre-norm, SiLU-gated FFN, plain attention,
// only the tensors of train_slots); else what it has beyond, for the error.
static const char *arch_untrainable(const speck_arch *a) {
    if (a->act != SPECK_ACT_SILU) return "a GeGLU FFN";
    if (a->embd_scale) return "scaled embeddings";
    if (a->attn_softcap > 0 || a->final_softcap > 0) return "soft-capped logits";
    if (a->attn_scale) return "its own attention scale";
    if (a->swa_window > 0) return "a sliding window";
    size_t f;
    for (int i = 0; i < a->n_layer_tensors; i++)
        if (!slot_field(a->layer[i].slot, &f))
            return a->layer[i].slot == SLOT_ATTN_POST_NORM || a->layer[i].slot == SLOT_FFN_POST_NORM
                       ? "post-norms"
                       : "fused projections";
    return NULL;
}

static const char *cfg_arch(const speck_train_config *c) {
    return c->arch[0] ? c->arch : "llama";
}

static int head_dim_of(const speck_train_config *c) {
    return c->head_dim > 0 ? c->head_dim : c->n_embd / c->n_head;
}

static int validate_config(const speck_train_config *c) {
    if (c->n_vocab < 2 || c->n_ctx < 1 || c->n_embd < 2 || c->n_layer < 1 || c->n_head < 1 ||
        c->n_head_kv < 1 || c->n_ff < 1 || c->head_dim < 0 || c->n_ff_shexp < 0)
        return speck_set_error(SPECK_ERR_ARG, "train config: every size must be positive");
    if (c->head_dim == 0 && c->n_embd % c->n_head)
        return speck_set_error(SPECK_ERR_ARG,
                               "train config: n_embd %d must split into %d heads of even size",
                               c->n_embd, c->n_head);
    if (head_dim_of(c) % 2)
        return speck_set_error(SPECK_ERR_ARG, "train config: head size %d must be even",
                               head_dim_of(c));
    if (c->n_head % c->n_head_kv)
        return speck_set_error(SPECK_ERR_ARG,
                               "train config: n_head_kv %d does not divide n_head %d", c->n_head_kv,
                               c->n_head);
    if (!(c->norm_eps > 0) || !(c->rope_freq_base > 0))
        return speck_set_error(SPECK_ERR_ARG, "train config: norm_eps and rope base must be > 0");
    if (c->n_expert < 0 || c->n_expert > 256 ||
        (c->n_expert > 0 && (c->n_expert_used < 1 || c->n_expert_used > c->n_expert)))
        return speck_set_error(SPECK_ERR_ARG,
                               "train config: %d experts, %d used per token: want 1 <= used <= "
                               "experts <= 256 (or 0 experts: a dense FFN)",
                               c->n_expert, c->n_expert_used);
    if (!memchr(c->arch, 0, sizeof c->arch))
        return speck_set_error(SPECK_ERR_ARG, "train config: architecture name not terminated");
    const speck_arch *a = speck_arch_find(cfg_arch(c));
    const char *why = a ? arch_untrainable(a) : NULL;
    if (!a || why)
        return speck_set_error(SPECK_ERR_UNSUPPORTED,
                               "train config: architecture '%s' %s%s (speck trains llama, qwen2, "
                               "qwen3, qwen2moe, qwen3moe, olmoe)",
                               cfg_arch(c), a ? "cannot be trained: it has " : "is unknown",
                               a ? why : "");
    if ((a->ffn == SPECK_FFN_DENSE && c->n_expert) || (a->ffn == SPECK_FFN_MOE && !c->n_expert))
        return speck_set_error(SPECK_ERR_ARG, "train config: architecture %s %s experts",
                               a->name, c->n_expert ? "has no" : "needs");
    const bool shared = c->n_expert && a->moe && a->moe->shared;
    if (shared != (c->n_ff_shexp > 0))
        return speck_set_error(SPECK_ERR_ARG,
                               "train config: architecture %s %s a shared expert (n_ff_shexp %d)",
                               a->name, shared ? "needs" : "has no", c->n_ff_shexp);
    return 0;
}

// Allocate everything for config c; params zero.
static speck_train_model *alloc_model(const speck_train_config *c) {
    if (validate_config(c)) return NULL;
    const speck_arch *arch = speck_arch_find(cfg_arch(c));
    speck_train_model *tm = calloc(1, sizeof *tm);
    if (!tm) goto oom;
    tm->cfg = *c;
    int hd = tm->head_dim = tm->cfg.head_dim = head_dim_of(c); // explicit: checkpoints compare
    snprintf(tm->cfg.arch, sizeof tm->cfg.arch, "%s", arch->name);
    tm->hp = (speck_hparams){.n_vocab = c->n_vocab,
                             .n_ctx_train = c->n_ctx,
                             .n_embd = c->n_embd,
                             .n_layer = c->n_layer,
                             .n_head = c->n_head,
                             .n_head_kv = c->n_head_kv,
                             .head_dim = hd,
                             .n_ff = c->n_ff,
                             .norm_eps = c->norm_eps,
                             .rope_freq_base = c->rope_freq_base,
                             .rope_scale_factor = 1.0f,
                             .tied_output = c->tied_output,
                             .qkv_bias = c->qkv_bias,
                             .n_expert = c->n_expert,
                             .n_expert_used = c->n_expert ? c->n_expert_used : 0,
                             .n_ff_exp = c->n_expert ? c->n_ff : 0,
                             .n_ff_shexp = c->n_ff_shexp,
                             .bos_id = -1,
                             .eos_id = -1};
    snprintf(tm->hp.arch, sizeof tm->hp.arch, "%s", arch->name);
    speck_arch_defaults(arch, &tm->hp); // RoPE layout, attention scale, which QK-norm
    tm->hp.moe_norm = c->n_expert && c->moe_norm;
    tm->rope_type = tm->hp.rope_type;
    tm->aux_coef = 0.01f;
    int64_t C = c->n_embd, V = c->n_vocab;
    tm->rope_freq = malloc((size_t)(hd / 2) * sizeof(float));
    tm->tensors = calloc((size_t)(3 + arch->n_layer_tensors * c->n_layer), sizeof *tm->tensors);
    tm->p.layers = calloc((size_t)c->n_layer, sizeof(speck_tlayer));
    tm->g.layers = calloc((size_t)c->n_layer, sizeof(speck_tlayer));
    speck_tlayer *f_layers = calloc((size_t)c->n_layer, sizeof(speck_tlayer));
    tm->f.layers = f_layers;
    if (!tm->rope_freq || !tm->tensors || !tm->p.layers || !tm->g.layers || !f_layers) goto oom;
    for (int j = 0; j < hd / 2; j++)
        tm->rope_freq[j] = (float)pow((double)c->rope_freq_base, -2.0 * j / hd);
    int64_t off = 0;
#define ADD3(nm, x, r, cols, mat, emb)                                                             \
    do {                                                                                           \
        speck_ttensor *t = &tm->tensors[tm->n_tensors++];                                          \
        snprintf(t->name, sizeof t->name, "%s", nm);                                               \
        t->offset = off, t->ne0 = cols, t->ne1 = r, t->ne2 = x, t->is_matrix = mat;                \
        t->is_embd = emb, t->n_dims = (x) > 0 ? 3 : (mat) ? 2 : 1, t->layer = -1;                  \
        if (!t->ne2) t->ne2 = 1;                                                                   \
        off += (int64_t)(r) * (cols) * t->ne2;                                                     \
    } while (0)
#define ADD(nm, r, cols, mat, emb) ADD3(nm, 0, r, cols, mat, emb)
    ADD("token_embd.weight", V, C, true, true);
    ADD("output_norm.weight", 1, C, false, false);
    if (!c->tied_output) ADD("output.weight", V, C, true, false);
    // Each layer: the architecture's tensors in its table's order (biases when configured).
    for (int l = 0; l < c->n_layer; l++)
        for (int i = 0; i < arch->n_layer_tensors; i++) {
            const speck_tensor_desc *d = &arch->layer[i];
            size_t field = 0;
            if (!speck_tensor_in_layer(&tm->hp, d) || (is_bias(d->slot) && !c->qkv_bias) ||
                !slot_field(d->slot, &field))
                continue;
            char n[48];
            snprintf(n, sizeof n, "blk.%d.%s", l, d->gguf);
            const int64_t rows = speck_dim_size(d->rows, &tm->hp);
            if (d->cols == DIM_0) // a vector (norm, bias, the shared expert's gate)
                ADD(n, 1, rows, false, false);
            else
                ADD3(n, (d->flags & TD_EXPERTS) ? c->n_expert : 0, rows,
                     speck_dim_size(d->cols, &tm->hp), true, false);
            tm->tensors[tm->n_tensors - 1].layer = l;
            tm->tensors[tm->n_tensors - 1].field = field;
        }
#undef ADD
#undef ADD3
    tm->n_params = off;
    tm->params = calloc((size_t)off, sizeof(float));
    tm->grads = calloc((size_t)off, sizeof(float));
    tm->adam_m = calloc((size_t)off, sizeof(float));
    tm->adam_v = calloc((size_t)off, sizeof(float));
    if (!tm->params || !tm->grads || !tm->adam_m || !tm->adam_v) goto oom;
    speck_tweights_bind(tm, tm->params, &tm->p);
    speck_tweights_bind(tm, tm->grads, &tm->g);
    tm->f = tm->p; // dense training reads the params (speck_train_set_nm rebinds)
    tm->f.layers = f_layers;
    memcpy(f_layers, tm->p.layers, (size_t)c->n_layer * sizeof *f_layers);
    return tm;
oom:
    speck_train_model_free(tm);
    speck_set_error(SPECK_ERR_NOMEM, "train: out of memory for the parameters");
    return NULL;
}

static uint64_t splitmix(uint64_t *s) {
    uint64_t x = (*s += 0x9e3779b97f4a7c15ULL);
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
    return x ^ (x >> 31);
}

speck_train_model *speck_train_model_new(const speck_train_config *cfg, uint64_t seed) {
    speck_train_model *tm = alloc_model(cfg);
    if (!tm) return NULL;
    float resid_scale = 1.0f / sqrtf(2.0f * cfg->n_layer);
    for (int i = 0; i < tm->n_tensors; i++) {
        const speck_ttensor *t = &tm->tensors[i];
        float *p = tm->params + t->offset;
        int64_t n = t->ne0 * t->ne1 * t->ne2;
        // Norms 1, biases 0; matrices and the shared expert's gate (a linear layer) random.
        if (!t->is_matrix && !strstr(t->name, "ffn_gate_inp_shexp")) {
            const float v = strstr(t->name, ".bias") ? 0.0f : 1.0f;
            for (int64_t j = 0; j < n; j++) p[j] = v;
            continue;
        }
        float std = 0.02f;
        if (strstr(t->name, "attn_output") || strstr(t->name, "ffn_down")) std *= resid_scale;
        uint64_t s = seed * 0x100000001b3ULL + (uint64_t)i * 0x9E3779B97F4A7C15ULL;
        for (int64_t j = 0; j < n; j += 2) { // Box-Muller pairs
            double u1 = ((double)(splitmix(&s) >> 11) + 1.0) * 0x1.0p-53;
            double u2 = (double)(splitmix(&s) >> 11) * 0x1.0p-53;
            double r = sqrt(-2.0 * log(u1));
            p[j] = (float)(std * r * cos(2 * M_PI * u2));
            if (j + 1 < n) p[j + 1] = (float)(std * r * sin(2 * M_PI * u2));
        }
    }
    return tm;
}

speck_train_config speck_train_config_from_preset(const speck_preset *p) {
    speck_train_config c = {.n_vocab = p->n_vocab,
                            .n_ctx = p->n_ctx_train,
                            .n_embd = p->n_embd,
                            .n_layer = p->n_layer,
                            .n_head = p->n_head,
                            .n_head_kv = p->n_head_kv,
                            .n_ff = p->n_ff,
                            .norm_eps = p->norm_eps,
                            .rope_freq_base = p->rope_freq_base,
                            .tied_output = p->tied_output,
                            .head_dim = p->head_dim};
    const speck_arch *a = speck_arch_find(p->arch);
    snprintf(c.arch, sizeof c.arch, "%s", p->arch);
    c.qkv_bias = p->qkv_bias || (a && a->qkv_bias);
    if (p->n_expert > 0) { // the experts' width is the training FFN's (Mixtral's convention)
        c.n_expert = p->n_expert, c.n_expert_used = p->n_expert_used;
        c.n_ff = p->n_ff_exp ? p->n_ff_exp : p->n_ff;
        c.moe_norm = a && a->moe && a->moe->norm_topk; // the family's rule
        c.n_ff_shexp = a && a->moe && a->moe->shared ? (p->n_ff_shexp ? p->n_ff_shexp : p->n_ff) : 0;
    }
    return c;
}

static void copy_weight(float *dst, const speck_weight *w) {
    size_t rs = speck_type_row_size(w->type, w->n_in);
#pragma omp parallel for schedule(static)
    for (int64_t r = 0; r < w->n_out; r++)
        speck_dequantize_row(w->type, (const uint8_t *)w->data + rs * (size_t)r,
                             dst + (size_t)r * w->n_in, w->n_in);
}

static void copy_vec(float *dst, const float *src, int64_t n) {
    if (dst && src) memcpy(dst, src, (size_t)n * sizeof(float));
}

speck_train_model *speck_train_model_load(const char *path) {
    speck_model *m = speck_model_load(path);
    if (!m) return NULL;
    const speck_hparams *hp = &m->hp;
    speck_train_model *tm = NULL;
    // The training pass: pre-norm blocks, SiLU-gated FFNs or experts (a shared one with its
    // gate), optional q/k/v biases and q/k norms; no post-norms, GeGLU, soft-caps, windows,
    // fused tensors or LongRoPE (arch_untrainable says which).
    const char *why = arch_untrainable(m->arch);
    if (!why && hp->n_swa > 0) why = "a sliding window";
    if (!why && hp->rope_scaling == SPECK_ROPE_SCALING_LONGROPE) why = "LongRoPE";
    if (!why && fabsf(hp->attn_scale * sqrtf((float)hp->head_dim) - 1.0f) > 1e-6f)
        why = "an attention scale other than 1/sqrt(head_dim)";
    if (why) {
        speck_set_error(SPECK_ERR_UNSUPPORTED,
                        "%s: architecture %s with %s cannot be trained by speck (llama, "
                        "Mixtral, qwen2, qwen3, qwen2moe, qwen3moe, olmoe without a window)",
                        path, hp->arch, why);
        goto done;
    }
    speck_train_config c = {.n_vocab = hp->n_vocab,
                            .n_ctx = hp->n_ctx_train,
                            .n_embd = hp->n_embd,
                            .n_layer = hp->n_layer,
                            .n_head = hp->n_head,
                            .n_head_kv = hp->n_head_kv,
                            .n_ff = hp->n_expert > 0 ? hp->n_ff_exp : hp->n_ff,
                            .norm_eps = hp->norm_eps,
                            .rope_freq_base = hp->rope_freq_base,
                            .tied_output = hp->tied_output,
                            .n_expert = hp->n_expert,
                            .n_expert_used = hp->n_expert_used,
                            .moe_norm = hp->n_expert > 0 && hp->moe_norm,
                            .head_dim = hp->head_dim,
                            .qkv_bias = hp->qkv_bias,
                            .n_ff_shexp = hp->n_expert > 0 ? hp->n_ff_shexp : 0};
    snprintf(c.arch, sizeof c.arch, "%s", hp->arch);
    tm = alloc_model(&c);
    if (!tm) goto done;
    tm->rope_type = hp->rope_type;
    tm->hp = *hp;
    memcpy(tm->rope_freq, m->rope_freq, (size_t)(hp->head_dim / 2) * sizeof(float));
    if (m->rope_factors) {
        size_t bytes = (size_t)(hp->head_dim / 2) * sizeof(float);
        if (!(tm->rope_factors = malloc(bytes))) {
            speck_set_error(SPECK_ERR_NOMEM, "out of memory");
            speck_train_model_free(tm);
            tm = NULL;
            goto done;
        }
        memcpy(tm->rope_factors, m->rope_factors, bytes);
    }
    tm->src_path = strdup(path);
    copy_weight(tm->p.tok_embd, &m->tok_embd);
    memcpy(tm->p.out_norm, m->out_norm, (size_t)hp->n_embd * sizeof(float));
    if (!hp->tied_output) copy_weight(tm->p.output, &m->output);
    const int64_t Qd = (int64_t)hp->n_head * hp->head_dim, KVd = (int64_t)hp->n_head_kv * hp->head_dim;
    const int64_t qn = hp->qk_norm_full ? Qd : hp->head_dim, kn = hp->qk_norm_full ? KVd : hp->head_dim;
    for (int l = 0; l < hp->n_layer; l++) {
        const speck_layer *s = &m->layers[l];
        speck_tlayer *d = &tm->p.layers[l];
        memcpy(d->attn_norm, s->attn_norm, (size_t)hp->n_embd * sizeof(float));
        memcpy(d->ffn_norm, s->ffn_norm, (size_t)hp->n_embd * sizeof(float));
        copy_weight(d->wq, &s->wq);
        copy_weight(d->wk, &s->wk);
        copy_weight(d->wv, &s->wv);
        copy_weight(d->wo, &s->wo);
        copy_vec(d->bq, s->bq, Qd);
        copy_vec(d->bk, s->bk, KVd);
        copy_vec(d->bv, s->bv, KVd);
        copy_vec(d->q_norm, s->q_norm, qn);
        copy_vec(d->k_norm, s->k_norm, kn);
        if (hp->n_expert) {
            const size_t ex = (size_t)hp->n_ff_exp * hp->n_embd; // one expert's matrix
            copy_weight(d->router, &s->router);
            for (int e = 0; e < hp->n_expert; e++) {
                copy_weight(d->wg_x + e * ex, &s->experts[3 * e]);
                copy_weight(d->wu_x + e * ex, &s->experts[3 * e + 1]);
                copy_weight(d->wd_x + e * ex, &s->experts[3 * e + 2]);
            }
            if (d->sh_gate) {
                copy_vec(d->sh_gate, s->shexp_gate, hp->n_embd);
                copy_weight(d->wg_s, &s->shexp[0]);
                copy_weight(d->wu_s, &s->shexp[1]);
                copy_weight(d->wd_s, &s->shexp[2]);
            }
        } else {
            copy_weight(d->wg, &s->wg);
            copy_weight(d->wu, &s->wu);
            copy_weight(d->wd, &s->wd);
        }
    }
done:
    speck_model_free(m);
    return tm;
}

void speck_train_model_free(speck_train_model *tm) {
    if (!tm) return;
    acts_free(tm->acts);
    free(tm->rope_freq);
    free(tm->rope_factors);
    free(tm->tensors);
    free(tm->p.layers);
    free(tm->g.layers);
    free(tm->f.layers);
    train_nm_free(tm);
    free(tm->params);
    free(tm->grads);
    free(tm->adam_m);
    free(tm->adam_v);
    free(tm->src_path);
    free(tm);
}

const speck_train_config *speck_train_model_config(const speck_train_model *tm) {
    return &tm->cfg;
}
int speck_train_n_tensors(const speck_train_model *tm) {
    return tm->n_tensors;
}
const char *speck_train_tensor_name(const speck_train_model *tm, int i) {
    return i >= 0 && i < tm->n_tensors ? tm->tensors[i].name : NULL;
}
int64_t speck_train_tensor_numel(const speck_train_model *tm, int i) {
    if (i < 0 || i >= tm->n_tensors) return 0;
    return tm->tensors[i].ne0 * tm->tensors[i].ne1 * tm->tensors[i].ne2;
}
double speck_train_aux_loss(const speck_train_model *tm) {
    return tm->aux_loss;
}
int speck_train_set_aux_coef(speck_train_model *tm, float coef) {
    if (!(coef >= 0) || !isfinite(coef))
        return speck_set_error(SPECK_ERR_ARG, "train: auxiliary loss coefficient %g must be >= 0",
                               (double)coef);
    tm->aux_coef = coef;
    return 0;
}
float *speck_train_tensor(speck_train_model *tm, int i, bool grad) {
    if (i < 0 || i >= tm->n_tensors) return NULL;
    return (grad ? tm->grads : tm->params) + tm->tensors[i].offset;
}
int64_t speck_train_n_params(const speck_train_model *tm) {
    return tm->n_params;
}
float *speck_train_params(speck_train_model *tm) {
    return tm->params;
}
float *speck_train_grads(speck_train_model *tm) {
    return tm->grads;
}
void speck_train_zero_grad(speck_train_model *tm) {
    memset(tm->grads, 0, (size_t)tm->n_params * sizeof(float));
}
