// LoRA / QLoRA fine-tuning: the Llama layer's forward and backward (with qwen2's q/k/v biases,
// qwen3's / olmoe's q/k norms, and the mixtures of experts of Mixtral, qwen2moe, qwen3moe and
// olmoe frozen in f32 copies) through a frozen base kept in its stored type (each product dequantizes a block of the matrix's rows at a time), with the
// adapter's A and B in f32; AdamW from speck train (optim.c); checkpoints.
//
// Shapes: N = B*T rows; C = n_embd; H / Hkv heads; hd = head_dim; Qd = H*hd; KVd = Hkv*hd;
// F = n_ff; V = n_vocab; r = a matrix's rank. An adapted matrix W: (n_out, n_in) computes
// y = x·Wᵀ + s·(x̃·Aᵀ)·Bᵀ, x̃ = x with LoRA dropout (x when off or when evaluating).
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cblas.h>

#include "adapt/adapt_internal.h"
#include "kernels/kernels.h"
#include "train/moe_train.h"
#include "train/train_internal.h"
#include "train/train_ops.h"

#define NT SPECK_LORA_N_TARGETS
#define GEMM_PAR(mnk) if ((size_t)(mnk) > ((size_t)1 << 18))
#define WCHUNK_FLOATS ((int64_t)1 << 18) // a frozen matrix is dequantized this much at a time

typedef struct {
    float *x_in;        // (N, C) residual stream entering the layer
    float *xn1, *rstd1; // (N, C), (N) attention RMSNorm
    float *q, *k, *v;   // (N, Qd), (N, KVd) x2; q, k after RoPE
    float *q_raw, *k_raw;   // (N, Qd), (N, KVd) before the q/k norms (qwen3), or NULL
    float *rstd_q, *rstd_k; // (N·H), (N·Hkv) their 1/rms (per head), or (N) over whole rows
    float *att;         // (B, H, T, T) softmax probabilities
    float *ao;          // (N, Qd) attention output
    float *x_mid;       // (N, C) residual after attention
    float *xn2, *rstd2; // (N, C), (N) FFN RMSNorm
    float *g, *u, *h;   // (N, F)
    tmoe_acts moe;      // with experts instead (moe_train.h)
    tshexp_acts sh;     // and the shared expert's
    float *t[NT];       // (N, r) x̃·Aᵀ of each adapted matrix, or NULL
} llayer;

// A layer's mixture of experts as f32 copies of the frozen base (dequantized once at creation):
// router (X, C), experts (X, Fx, C) x2 and (X, C, Fx), the shared expert's gate (C) and matrices
// (Fs, C) x2, (C, Fs) or NULL. The adapters train the attention; the experts stay as they are.
typedef struct {
    float *router, *wg_x, *wu_x, *wd_x, *sh_gate, *wg_s, *wu_s, *wd_s;
} lmoe;

struct speck_lora_trainer {
    const speck_model *m;
    speck_lora *a;
    float dropout;
    uint64_t seed, rng_key;
    bool train; // this pass draws dropout masks (a training step, not an evaluation)
    int block_share; // Block-LoRA: A's K blocks tied (block_lora.c); 1 = plain LoRA
    float *grads, *adam_m, *adam_v; // (n_params) each, the adapter's layout
    int B, T, dp_threads;
    llayer *l;                      // (L)
    float *x_final, *xf, *rstdf;    // (N, C), (N, C), (N)
    float *logits;                  // (N, V)
    float *cos, *sin;               // (T, hd/2)
    float *dx, *dt, *dq, *dk, *dv, *dao, *dg, *du, *dh, *dp;
    float *dqr, *dkr; // (N, Qd), (N, KVd) before the q/k norms (QK-norm only)
    lmoe *moe_w;               // (L) with experts, else NULL
    tmoe_scratch moe_d;        // the experts' backward scratch
    tshexp_scratch sh_d;       // the shared expert's
    float *dlt; // (N, max r) gradient of x̃·Aᵀ
    float *xd;  // (N, max n_in) x̃, and dx's adapter term under dropout
    float *wbuf; // (WCHUNK_FLOATS or one 16-row block) dequantized rows of a frozen matrix
    void **blocks;
    int n_blocks;
};

static float *alloc_f(speck_lora_trainer *tr, size_t n, int *err) {
    float *p = calloc(n ? n : 1, sizeof(float));
    void **b = realloc(tr->blocks, (size_t)(tr->n_blocks + 1) * sizeof *b);
    if (!p || !b) {
        free(p);
        if (b) tr->blocks = b;
        *err = 1;
        return NULL;
    }
    tr->blocks = b;
    b[tr->n_blocks++] = p;
    return p;
}

static void acts_free(speck_lora_trainer *tr) {
    for (int i = 0; i < tr->n_blocks; i++) free(tr->blocks[i]);
    free(tr->blocks);
    tr->blocks = NULL, tr->n_blocks = 0;
    free(tr->l);
    tr->l = NULL;
    tr->B = tr->T = 0;
}

static const speck_lora_mat *mat_of(const speck_lora_trainer *tr, int l, int t) {
    if (l >= tr->a->n_layer) return NULL;
    const speck_lora_mat *mt = &tr->a->m[l * NT + t];
    return mt->rank ? mt : NULL;
}

static int64_t chunk_rows(const speck_weight *w) {
    int64_t r = WCHUNK_FLOATS / w->n_in;
    r = r < 16 ? 16 : r;
    return r < w->n_out ? r : w->n_out;
}

// The experts' shape for N tokens (no auxiliary loss: the router is frozen).
static tmoe_shape moe_shape(const speck_hparams *hp, int N) {
    return (tmoe_shape){N, hp->n_embd, hp->n_ff_exp, hp->n_expert, hp->n_expert_used,
                        hp->moe_norm};
}

static int acts_reserve(speck_lora_trainer *tr, int B, int T) {
    if (tr->B == B && tr->T == T && tr->dp_threads >= omp_get_max_threads()) return 0;
    acts_free(tr);
    const speck_hparams *hp = &tr->m->hp;
    size_t N = (size_t)B * T, C = hp->n_embd, hd = hp->head_dim, Qd = (size_t)hp->n_head * hd,
           KVd = (size_t)hp->n_head_kv * hd, F = hp->n_ff, V = hp->n_vocab, half = hd / 2;
    int err = 0;
    if (!(tr->l = calloc((size_t)hp->n_layer, sizeof *tr->l))) err = 1;
    size_t max_r = 1, max_in = C > F ? C : F, wb = 0;
    if (Qd > max_in) max_in = Qd; // attn_output's input (qwen3: Qd != C)
    for (int l = 0; !err && l < hp->n_layer; l++) {
        llayer *la = &tr->l[l];
        la->x_in = alloc_f(tr, N * C, &err);
        la->xn1 = alloc_f(tr, N * C, &err);
        la->rstd1 = alloc_f(tr, N, &err);
        la->q = alloc_f(tr, N * Qd, &err);
        la->k = alloc_f(tr, N * KVd, &err);
        la->v = alloc_f(tr, N * KVd, &err);
        if (hp->qk_norm) {
            la->q_raw = alloc_f(tr, N * Qd, &err);
            la->k_raw = alloc_f(tr, N * KVd, &err);
            la->rstd_q = alloc_f(tr, N * hp->n_head, &err);
            la->rstd_k = alloc_f(tr, N * hp->n_head_kv, &err);
        }
        la->att = alloc_f(tr, (size_t)B * hp->n_head * T * T, &err);
        la->ao = alloc_f(tr, N * Qd, &err);
        la->x_mid = alloc_f(tr, N * C, &err);
        la->xn2 = alloc_f(tr, N * C, &err);
        la->rstd2 = alloc_f(tr, N, &err);
        if (hp->n_expert) {
            const tmoe_shape sh = moe_shape(hp, (int)N);
            float *blk = alloc_f(tr, tmoe_acts_bytes(&sh) / sizeof(float), &err);
            if (blk) tmoe_acts_at(&sh, blk, &la->moe);
            if (hp->n_ff_shexp) {
                const size_t Fs = hp->n_ff_shexp;
                la->sh.sg = alloc_f(tr, N, &err);
                la->sh.g = alloc_f(tr, N * Fs, &err);
                la->sh.u = alloc_f(tr, N * Fs, &err);
                la->sh.h = alloc_f(tr, N * Fs, &err);
                la->sh.ys = alloc_f(tr, N * C, &err);
            }
        } else {
            la->g = alloc_f(tr, N * F, &err);
            la->u = alloc_f(tr, N * F, &err);
            la->h = alloc_f(tr, N * F, &err);
        }
        for (int t = 0; t < NT; t++) {
            const speck_lora_mat *mt = mat_of(tr, l, t);
            const speck_weight *w = speck_lora_base_weight(tr->m, l, t);
            if (w->type != SPECK_TYPE_F32 && (size_t)(chunk_rows(w) * w->n_in) > wb)
                wb = (size_t)(chunk_rows(w) * w->n_in);
            if (!mt) continue;
            la->t[t] = alloc_f(tr, N * mt->rank, &err);
            if ((size_t)mt->rank > max_r) max_r = (size_t)mt->rank;
        }
    }
    const speck_weight *ow = &tr->m->output;
    if (ow->type != SPECK_TYPE_F32 && (size_t)(chunk_rows(ow) * ow->n_in) > wb)
        wb = (size_t)(chunk_rows(ow) * ow->n_in);
    tr->dp_threads = omp_get_max_threads();
    tr->x_final = alloc_f(tr, N * C, &err);
    tr->xf = alloc_f(tr, N * C, &err);
    tr->rstdf = alloc_f(tr, N, &err);
    tr->logits = alloc_f(tr, N * V, &err);
    tr->cos = alloc_f(tr, (size_t)T * half, &err);
    tr->sin = alloc_f(tr, (size_t)T * half, &err);
    tr->dx = alloc_f(tr, N * C, &err);
    tr->dt = alloc_f(tr, N * C, &err);
    tr->dq = alloc_f(tr, N * Qd, &err);
    tr->dk = alloc_f(tr, N * KVd, &err);
    tr->dv = alloc_f(tr, N * KVd, &err);
    tr->dao = alloc_f(tr, N * Qd, &err);
    if (hp->qk_norm) {
        tr->dqr = alloc_f(tr, N * Qd, &err);
        tr->dkr = alloc_f(tr, N * KVd, &err);
    }
    if (hp->n_expert) {
        const tmoe_shape sh = moe_shape(hp, (int)N);
        float *blk = alloc_f(tr, tmoe_scratch_bytes(&sh) / sizeof(float), &err);
        if (blk) tmoe_scratch_at(&sh, blk, &tr->moe_d);
        if (hp->n_ff_shexp) {
            const size_t Fs = hp->n_ff_shexp;
            tr->sh_d.dys = alloc_f(tr, N * C, &err);
            tr->sh_d.dh = alloc_f(tr, N * Fs, &err);
            tr->sh_d.dg = alloc_f(tr, N * Fs, &err);
            tr->sh_d.du = alloc_f(tr, N * Fs, &err);
            tr->sh_d.dz = alloc_f(tr, N, &err);
        }
    } else {
        tr->dg = alloc_f(tr, N * F, &err);
        tr->du = alloc_f(tr, N * F, &err);
        tr->dh = alloc_f(tr, N * F, &err);
    }
    tr->dp = alloc_f(tr, (size_t)tr->dp_threads * T * T, &err);
    tr->dlt = alloc_f(tr, N * max_r, &err);
    tr->xd = alloc_f(tr, N * max_in, &err);
    tr->wbuf = alloc_f(tr, wb, &err);
    if (err) {
        acts_free(tr);
        return speck_set_error(SPECK_ERR_NOMEM,
                               "finetune: out of memory for the activations of a %d x %d batch", B,
                               T);
    }
    tr->B = B, tr->T = T;
    for (int t = 0; t < T; t++)
        for (size_t j = 0; j < half; j++) {
            double ang = (double)t * tr->m->rope_freq[j];
            tr->cos[t * half + j] = (float)cos(ang);
            tr->sin[t * half + j] = (float)sin(ang);
        }
    return 0;
}

/* ---- frozen products: the base matrix in its stored type ---------------------------------- */

// buf: (n, n_in) = rows [r0, r0 + n) of w as floats
static void dequant_rows(const speck_weight *w, int64_t r0, int64_t n, float *buf) {
    const size_t rs = speck_type_row_size(w->type, w->n_in);
#pragma omp parallel for schedule(static) if (n * w->n_in > PAR_MIN)
    for (int64_t r = 0; r < n; r++)
        speck_dequantize_row(w->type, (const uint8_t *)w->data + rs * (size_t)(r0 + r),
                             buf + (size_t)r * w->n_in, w->n_in);
}

// y: (N, n_out) = x: (N, n_in) · Wᵀ
static void frozen_forward(speck_lora_trainer *tr, const speck_weight *w, const float *x, int N,
                           float *y) {
    const int n_in = (int)w->n_in, n_out = (int)w->n_out;
    if (w->type == SPECK_TYPE_F32) {
        train_matmul_forward(y, x, (const float *)w->data, N, n_in, n_out);
        return;
    }
    const int64_t cr = chunk_rows(w);
    for (int64_t c0 = 0; c0 < n_out; c0 += cr) {
        const int nc = (int)(c0 + cr < n_out ? cr : n_out - c0);
        dequant_rows(w, c0, nc, tr->wbuf);
        const float *W = tr->wbuf;
#pragma omp parallel GEMM_PAR((size_t)N *n_in *nc)
        {
            int r0, r1;
            train_slice(N, &r0, &r1);
            if (r1 > r0)
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, r1 - r0, nc, n_in, 1.0f,
                            x + (size_t)r0 * n_in, n_in, W, n_in, 0.0f,
                            y + (size_t)r0 * n_out + c0, n_out);
        }
    }
}

// dx: (N, n_in) = (accumulate ? dx : 0) + dy: (N, n_out) · W
static void frozen_backward_dx(speck_lora_trainer *tr, const speck_weight *w, const float *dy,
                               int N, float *dx, bool accumulate) {
    const int n_in = (int)w->n_in, n_out = (int)w->n_out;
    if (w->type == SPECK_TYPE_F32) {
        train_matmul_backward_dx(dx, dy, (const float *)w->data, N, n_in, n_out, accumulate);
        return;
    }
    const int64_t cr = chunk_rows(w);
    for (int64_t c0 = 0; c0 < n_out; c0 += cr) {
        const int nc = (int)(c0 + cr < n_out ? cr : n_out - c0);
        const float beta = accumulate || c0 > 0 ? 1.0f : 0.0f;
        dequant_rows(w, c0, nc, tr->wbuf);
        const float *W = tr->wbuf;
#pragma omp parallel GEMM_PAR((size_t)N *n_in *nc)
        {
            int r0, r1;
            train_slice(N, &r0, &r1);
            if (r1 > r0)
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, r1 - r0, n_in, nc, 1.0f,
                            dy + (size_t)r0 * n_out + c0, n_out, W, n_in, beta,
                            dx + (size_t)r0 * n_in, n_in);
        }
    }
}

/* ---- adapted products ---------------------------------------------------------------------- */

static uint64_t mix64(uint64_t x) {
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
    return x ^ (x >> 31);
}

// Dropout keep mask of element j of (layer, target) under the trainer's key: the same draw in
// the forward and the backward pass, with nothing stored.
static inline bool keep(const speck_lora_trainer *tr, uint64_t base, size_t j) {
    uint64_t h = mix64(base + (uint64_t)j * 0x9E3779B97F4A7C15ULL);
    return (double)(h >> 11) * 0x1.0p-53 >= tr->dropout;
}

static uint64_t mask_base(const speck_lora_trainer *tr, int l, int t) {
    return mix64(tr->seed * 0x100000001b3ULL ^ mix64(tr->rng_key + 1) ^
                 ((uint64_t)(l * NT + t + 1) << 40));
}

// xd: (N, n_in) = x with dropout (kept values scaled by 1/(1-p))
static void dropout_apply(const speck_lora_trainer *tr, int l, int t, const float *x, size_t n,
                          float *xd) {
    const uint64_t base = mask_base(tr, l, t);
    const float s = 1.0f / (1.0f - tr->dropout);
#pragma omp parallel for schedule(static) if (n > PAR_MIN)
    for (size_t j = 0; j < n; j++) xd[j] = keep(tr, base, j) ? x[j] * s : 0.0f;
}

static bool use_dropout(const speck_lora_trainer *tr) {
    return tr->train && tr->dropout > 0;
}

// y: (N, n_out) = x·Wᵀ (+ bias) + s·(x̃·Aᵀ)·Bᵀ for matrix t of layer l; x: (N, n_in)
static void lin_forward(speck_lora_trainer *tr, int l, int t, const float *x, int N, float *y) {
    const speck_weight *w = speck_lora_base_weight(tr->m, l, t);
    const speck_layer *ly = &tr->m->layers[l];
    const int n_in = (int)w->n_in, n_out = (int)w->n_out;
    frozen_forward(tr, w, x, N, y);
    const float *bias = t == SPECK_LORA_Q ? ly->bq : t == SPECK_LORA_K ? ly->bk
                        : t == SPECK_LORA_V ? ly->bv : NULL;
    if (bias) train_bias_forward(y, bias, N, n_out);
    const speck_lora_mat *mt = mat_of(tr, l, t);
    if (!mt) return;
    const float *xin = x;
    if (use_dropout(tr)) {
        dropout_apply(tr, l, t, x, (size_t)N * n_in, tr->xd);
        xin = tr->xd;
    }
    float *lt = tr->l[l].t[t]; // (N, r)
    const int r = mt->rank;
    const float s = speck_lora_scale(tr->a, mt, 1.0f);
    train_matmul_forward(lt, xin, mt->a, N, n_in, r);
#pragma omp parallel GEMM_PAR((size_t)N *n_out *r)
    {
        int r0, r1;
        train_slice(N, &r0, &r1);
        if (r1 > r0) // y += s · lt · Bᵀ
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, r1 - r0, n_out, r, s,
                        lt + (size_t)r0 * r, r, mt->b, r, 1.0f, y + (size_t)r0 * n_out, n_out);
    }
}

// From dy: (N, n_out): dx: (N, n_in) (+)= dy·W + s·(dy·B)·A (through dropout); dA, dB added.
static void lin_backward(speck_lora_trainer *tr, int l, int t, const float *x, const float *dy,
                         int N, float *dx, bool accumulate) {
    const speck_weight *w = speck_lora_base_weight(tr->m, l, t);
    const int n_in = (int)w->n_in, n_out = (int)w->n_out;
    frozen_backward_dx(tr, w, dy, N, dx, accumulate);
    const speck_lora_mat *mt = mat_of(tr, l, t);
    if (!mt) return;
    const int r = mt->rank;
    const float s = speck_lora_scale(tr->a, mt, 1.0f);
    float *gA = tr->grads + (mt->a - tr->a->data), *gB = tr->grads + (mt->b - tr->a->data);
    // dB += s · dyᵀ·lt; dlt = s · dy·B
    train_matmul_backward_dw(gB, dy, tr->l[l].t[t], N, r, n_out, s);
    train_matmul_backward_dx(tr->dlt, dy, mt->b, N, r, n_out, false);
    for (size_t j = 0; j < (size_t)N * r; j++) tr->dlt[j] *= s;
    // dA += dltᵀ·x̃
    const float *xin = x;
    if (use_dropout(tr)) {
        dropout_apply(tr, l, t, x, (size_t)N * n_in, tr->xd);
        xin = tr->xd;
    }
    train_matmul_backward_dw(gA, tr->dlt, xin, N, n_in, r, 1.0f);
    if (!use_dropout(tr)) { // dx += dlt·A
        train_matmul_backward_dx(dx, tr->dlt, mt->a, N, n_in, r, true);
        return;
    }
    train_matmul_backward_dx(tr->xd, tr->dlt, mt->a, N, n_in, r, false);
    const uint64_t base = mask_base(tr, l, t);
    const float sc = 1.0f / (1.0f - tr->dropout);
    const size_t n = (size_t)N * n_in;
#pragma omp parallel for schedule(static) if (n > PAR_MIN)
    for (size_t j = 0; j < n; j++)
        if (keep(tr, base, j)) dx[j] += tr->xd[j] * sc;
}

/* ---- the model ------------------------------------------------------------------------------ */

// The frozen q/k norms' rows and width for N tokens of `heads` heads: per head (N·heads, hd), or
// the whole projection (N, heads·hd) (olmoe).
static void qkn_shape(const speck_hparams *hp, int N, int heads, int *rows, int *cols) {
    *rows = hp->qk_norm_full ? N : N * heads;
    *cols = hp->qk_norm_full ? heads * hp->head_dim : hp->head_dim;
}

// The loss over positions with a target >= 0 (their count in *n_valid).
static float forward(speck_lora_trainer *tr, const int32_t *in, const int32_t *tg, int B, int T,
                     int64_t *n_valid) {
    const speck_model *m = tr->m;
    const speck_hparams *hp = &m->hp;
    int N = B * T, C = hp->n_embd, hd = hp->head_dim, H = hp->n_head, Hkv = hp->n_head_kv;
    int V = hp->n_vocab;
    const speck_weight *te = &m->tok_embd;
    const size_t rs = speck_type_row_size(te->type, C);
    float *x0 = tr->l[0].x_in;
#pragma omp parallel for schedule(static) if ((size_t)N * C > PAR_MIN)
    for (int i = 0; i < N; i++)
        speck_dequantize_row(te->type, (const uint8_t *)te->data + rs * (size_t)in[i],
                             x0 + (size_t)i * C, C);
    for (int l = 0; l < hp->n_layer; l++) {
        llayer *la = &tr->l[l];
        const speck_layer *ly = &m->layers[l];
        float *x_out = l + 1 < hp->n_layer ? tr->l[l + 1].x_in : tr->x_final;
        train_rmsnorm_forward(la->xn1, la->rstd1, la->x_in, ly->attn_norm, N, C, hp->norm_eps);
        lin_forward(tr, l, SPECK_LORA_Q, la->xn1, N, hp->qk_norm ? la->q_raw : la->q);
        lin_forward(tr, l, SPECK_LORA_K, la->xn1, N, hp->qk_norm ? la->k_raw : la->k);
        lin_forward(tr, l, SPECK_LORA_V, la->xn1, N, la->v);
        if (hp->qk_norm) { // qwen3: RMSNorm of each q / k head (frozen weights) before RoPE
            int rows, cols;
            qkn_shape(hp, N, H, &rows, &cols);
            train_rmsnorm_forward(la->q, la->rstd_q, la->q_raw, ly->q_norm, rows, cols,
                                  hp->norm_eps);
            qkn_shape(hp, N, Hkv, &rows, &cols);
            train_rmsnorm_forward(la->k, la->rstd_k, la->k_raw, ly->k_norm, rows, cols,
                                  hp->norm_eps);
        }
        train_rope_apply(la->q, tr->cos, tr->sin, B, T, H, hd, hp->rope_type, false);
        train_rope_apply(la->k, tr->cos, tr->sin, B, T, Hkv, hd, hp->rope_type, false);
        train_attention_forward(la->ao, la->att, la->q, la->k, la->v, B, T, H, Hkv, hd);
        lin_forward(tr, l, SPECK_LORA_O, la->ao, N, tr->dt);
        train_residual_forward(la->x_mid, la->x_in, tr->dt, (size_t)N * C);
        train_rmsnorm_forward(la->xn2, la->rstd2, la->x_mid, ly->ffn_norm, N, C, hp->norm_eps);
        if (hp->n_expert) { // the frozen experts (and shared expert)
            const lmoe *e = &tr->moe_w[l];
            const tmoe_shape sh = moe_shape(hp, N);
            tmoe_forward(&sh, &la->moe, tr->dt, la->xn2, e->router, e->wg_x, e->wu_x, e->wd_x);
            if (e->sh_gate)
                tshexp_forward(&la->sh, tr->dt, la->xn2, e->sh_gate, e->wg_s, e->wu_s, e->wd_s, N,
                               C, hp->n_ff_shexp);
        } else {
            lin_forward(tr, l, SPECK_LORA_GATE, la->xn2, N, la->g);
            lin_forward(tr, l, SPECK_LORA_UP, la->xn2, N, la->u);
            train_swiglu_forward(la->h, la->g, la->u, (size_t)N * hp->n_ff);
            lin_forward(tr, l, SPECK_LORA_DOWN, la->h, N, tr->dt);
        }
        train_residual_forward(x_out, la->x_mid, tr->dt, (size_t)N * C);
    }
    train_rmsnorm_forward(tr->xf, tr->rstdf, tr->x_final, m->out_norm, N, C, hp->norm_eps);
    frozen_forward(tr, &m->output, tr->xf, N, tr->logits);
    int64_t nv = 0;
    for (int i = 0; i < N; i++) nv += tg[i] >= 0;
    *n_valid = nv;
    double total = train_crossentropy_forward(tr->logits, tg, N, V);
    return nv ? (float)(total / (double)nv) : 0.0f;
}

static void backward(speck_lora_trainer *tr, const int32_t *tg, int B, int T, float scale) {
    const speck_model *m = tr->m;
    const speck_hparams *hp = &m->hp;
    int N = B * T, C = hp->n_embd, hd = hp->head_dim, H = hp->n_head, Hkv = hp->n_head_kv;
    int F = hp->n_ff, V = hp->n_vocab;
    train_crossentropy_backward(tr->logits, tg, N, V, scale);
    frozen_backward_dx(tr, &m->output, tr->logits, N, tr->dt, false);
    train_rmsnorm_backward(tr->dx, NULL, tr->dt, tr->x_final, m->out_norm, tr->rstdf, N, C, false);
    // Below the lowest adapted layer nothing has a gradient: stop there.
    int lo = hp->n_layer;
    for (int l = 0; l < hp->n_layer && lo == hp->n_layer; l++)
        for (int t = 0; t < NT; t++)
            if (mat_of(tr, l, t)) lo = l;
    for (int l = hp->n_layer - 1; l >= lo; l--) {
        llayer *la = &tr->l[l];
        const speck_layer *ly = &m->layers[l];
        // FFN branch: x_out = x_mid + down(swiglu(gate xn2, up xn2))
        if (hp->n_expert) { // frozen: the input gradient only
            const lmoe *e = &tr->moe_w[l];
            const tmoe_shape sh = moe_shape(hp, N);
            tmoe_backward(&sh, &la->moe, &tr->moe_d, tr->dt, NULL, NULL, NULL, NULL, tr->dx,
                          la->xn2, e->router, e->wg_x, e->wu_x, e->wd_x, 0.0f);
            if (e->sh_gate)
                tshexp_backward(&la->sh, &tr->sh_d, tr->dt, NULL, NULL, NULL, NULL, tr->dx,
                                la->xn2, e->sh_gate, e->wg_s, e->wu_s, e->wd_s, N, C,
                                hp->n_ff_shexp);
        } else {
            lin_backward(tr, l, SPECK_LORA_DOWN, la->h, tr->dx, N, tr->dh, false);
            train_swiglu_backward(tr->dg, tr->du, tr->dh, la->g, la->u, (size_t)N * F);
            lin_backward(tr, l, SPECK_LORA_GATE, la->xn2, tr->dg, N, tr->dt, false);
            lin_backward(tr, l, SPECK_LORA_UP, la->xn2, tr->du, N, tr->dt, true);
        }
        train_rmsnorm_backward(tr->dx, NULL, tr->dt, la->x_mid, ly->ffn_norm, la->rstd2, N, C,
                               true);
        // attention branch
        lin_backward(tr, l, SPECK_LORA_O, la->ao, tr->dx, N, tr->dao, false);
        train_attention_backward(tr->dq, tr->dk, tr->dv, tr->dp, tr->dao, la->att, la->q, la->k,
                                 la->v, B, T, H, Hkv, hd);
        train_rope_apply(tr->dq, tr->cos, tr->sin, B, T, H, hd, hp->rope_type, true);
        train_rope_apply(tr->dk, tr->cos, tr->sin, B, T, Hkv, hd, hp->rope_type, true);
        float *dq = tr->dq, *dk = tr->dk;
        if (hp->qk_norm) {
            int rows, cols;
            qkn_shape(hp, N, H, &rows, &cols);
            train_rmsnorm_backward(tr->dqr, NULL, tr->dq, la->q_raw, ly->q_norm, la->rstd_q, rows,
                                   cols, false);
            qkn_shape(hp, N, Hkv, &rows, &cols);
            train_rmsnorm_backward(tr->dkr, NULL, tr->dk, la->k_raw, ly->k_norm, la->rstd_k, rows,
                                   cols, false);
            dq = tr->dqr, dk = tr->dkr;
        }
        lin_backward(tr, l, SPECK_LORA_Q, la->xn1, dq, N, tr->dt, false);
        lin_backward(tr, l, SPECK_LORA_K, la->xn1, dk, N, tr->dt, true);
        lin_backward(tr, l, SPECK_LORA_V, la->xn1, tr->dv, N, tr->dt, true);
        train_rmsnorm_backward(tr->dx, NULL, tr->dt, la->x_in, ly->attn_norm, la->rstd1, N, C,
                               true);
    }
}

static int check_batch(speck_lora_trainer *tr, const int32_t *in, const int32_t *tg, int B,
                       int T) {
    const speck_hparams *hp = &tr->m->hp;
    if (B <= 0 || T <= 0)
        return speck_set_error(SPECK_ERR_ARG, "finetune: batch %d x %d is empty", B, T);
    if (T > hp->n_ctx_train)
        return speck_set_error(SPECK_ERR_RANGE, "finetune: sequence length %d exceeds n_ctx %d",
                               T, hp->n_ctx_train);
    for (size_t i = 0; i < (size_t)B * T; i++)
        if (in[i] < 0 || in[i] >= hp->n_vocab || tg[i] >= hp->n_vocab)
            return speck_set_error(SPECK_ERR_RANGE,
                                   "finetune: token id %d at %zu out of range [0, %d)",
                                   in[i] < 0 || in[i] >= hp->n_vocab ? in[i] : tg[i], i,
                                   hp->n_vocab);
    return acts_reserve(tr, B, T);
}

int speck_lora_trainer_loss(speck_lora_trainer *tr, const int32_t *in, const int32_t *tg, int B,
                            int T, float *loss) {
    int err = check_batch(tr, in, tg, B, T);
    if (err) return err;
    speck_blas_single_threaded();
    tr->train = false;
    int64_t nv;
    *loss = forward(tr, in, tg, B, T, &nv);
    return 0;
}

int speck_lora_trainer_step(speck_lora_trainer *tr, const int32_t *in, const int32_t *tg, int B,
                            int T, float grad_scale, uint64_t rng_key, float *loss) {
    int err = check_batch(tr, in, tg, B, T);
    if (err) return err;
    speck_blas_single_threaded();
    tr->train = true, tr->rng_key = rng_key;
    int64_t nv;
    *loss = forward(tr, in, tg, B, T, &nv);
    if (nv > 0) backward(tr, tg, B, T, grad_scale / (float)nv);
    tr->train = false;
    return 0;
}

/* ---- creation, optimizer, checkpoints ------------------------------------------------------ */

// A frozen matrix as a new f32 copy of its first `rows` rows (a stacked tensor's first slice:
// its rows continue into the next experts'); NULL when out of memory.
static float *f32_copy(const speck_weight *w, int64_t rows) {
    float *d = malloc((size_t)rows * (size_t)w->n_in * sizeof(float));
    if (d) dequant_rows(w, 0, rows, d);
    return d;
}

// Every layer's router, experts and shared expert in f32 (moe_w); non-zero when out of memory.
static int moe_dequantize(speck_lora_trainer *tr) {
    const speck_hparams *hp = &tr->m->hp;
    if (!(tr->moe_w = calloc((size_t)hp->n_layer, sizeof *tr->moe_w))) return 1;
    const int64_t X = hp->n_expert;
    for (int l = 0; l < hp->n_layer; l++) {
        const speck_layer *ly = &tr->m->layers[l];
        lmoe *e = &tr->moe_w[l];
        // The experts' matrices are slices of one stacked tensor each: expert 0's rows first.
        if (!(e->router = f32_copy(&ly->router, ly->router.n_out)) ||
            !(e->wg_x = f32_copy(&ly->experts[0], X * ly->experts[0].n_out)) ||
            !(e->wu_x = f32_copy(&ly->experts[1], X * ly->experts[1].n_out)) ||
            !(e->wd_x = f32_copy(&ly->experts[2], X * ly->experts[2].n_out)))
            return 1;
        if (ly->shexp_gate) {
            if (!(e->sh_gate = malloc((size_t)hp->n_embd * sizeof(float))) ||
                !(e->wg_s = f32_copy(&ly->shexp[0], ly->shexp[0].n_out)) ||
                !(e->wu_s = f32_copy(&ly->shexp[1], ly->shexp[1].n_out)) ||
                !(e->wd_s = f32_copy(&ly->shexp[2], ly->shexp[2].n_out)))
                return 1;
            memcpy(e->sh_gate, ly->shexp_gate, (size_t)hp->n_embd * sizeof(float));
        }
    }
    return 0;
}

speck_lora_trainer *speck_lora_trainer_new(const speck_model *m, speck_lora *a, float dropout,
                                           uint64_t seed) {
    const speck_hparams *hp = &m->hp;
    static const char *const archs[] = {"llama", "qwen2", "qwen3", "qwen2moe", "qwen3moe", "olmoe"};
    bool known = false;
    for (size_t i = 0; i < sizeof archs / sizeof *archs; i++) known |= !strcmp(hp->arch, archs[i]);
    if (!known || hp->n_swa > 0 || hp->post_norms || hp->ffn_act != SPECK_ACT_SILU ||
        hp->embd_scale != 1.0f ||
        hp->attn_softcap > 0 || hp->final_softcap > 0 ||
        fabsf(hp->attn_scale * sqrtf((float)hp->head_dim) - 1.0f) > 1e-6f || m->rope_freq_long) {
        speck_set_error(SPECK_ERR_UNSUPPORTED,
                        "finetune: architecture %s%s cannot be fine-tuned by speck (llama, Mixtral, "
                        "qwen2, qwen3, qwen2moe, qwen3moe, olmoe without a sliding window)",
                        hp->arch, hp->n_swa > 0 ? " with a sliding window" : "");
        return NULL;
    }
    if (speck_lora_check(a, m)) return NULL;
    if (!(dropout >= 0 && dropout < 1)) {
        speck_set_error(SPECK_ERR_ARG, "finetune: dropout %g must be in [0, 1)", dropout);
        return NULL;
    }
    speck_lora_trainer *tr = calloc(1, sizeof *tr);
    if (!tr) goto oom;
    tr->m = m, tr->a = a, tr->dropout = dropout, tr->seed = seed, tr->block_share = 1;
    size_t n = (size_t)(a->n_params ? a->n_params : 1);
    tr->grads = calloc(n, sizeof(float));
    tr->adam_m = calloc(n, sizeof(float));
    tr->adam_v = calloc(n, sizeof(float));
    if (!tr->grads || !tr->adam_m || !tr->adam_v) goto oom;
    if (hp->n_expert && moe_dequantize(tr)) goto oom;
    return tr;
oom:
    speck_lora_trainer_free(tr);
    speck_set_error(SPECK_ERR_NOMEM, "finetune: out of memory");
    return NULL;
}

void speck_lora_trainer_free(speck_lora_trainer *tr) {
    if (!tr) return;
    acts_free(tr);
    for (int l = 0; tr->moe_w && l < tr->m->hp.n_layer; l++) {
        lmoe *e = &tr->moe_w[l];
        float *p[] = {e->router, e->wg_x, e->wu_x, e->wd_x, e->sh_gate, e->wg_s, e->wu_s, e->wd_s};
        for (size_t i = 0; i < sizeof p / sizeof *p; i++) free(p[i]);
    }
    free(tr->moe_w);
    free(tr->grads);
    free(tr->adam_m);
    free(tr->adam_v);
    free(tr);
}

float *speck_lora_trainer_grads(speck_lora_trainer *tr) {
    return tr->grads;
}

void speck_lora_trainer_zero_grad(speck_lora_trainer *tr) {
    memset(tr->grads, 0, (size_t)tr->a->n_params * sizeof(float));
}

int speck_lora_trainer_set_block_share(speck_lora_trainer *tr, int K) {
    int err = speck_lora_block_check(tr->a, K);
    if (err) return err;
    tr->block_share = K;
    speck_lora_block_tie(tr->a, K);
    return 0;
}

int speck_lora_trainer_adamw(speck_lora_trainer *tr, const speck_adamw_params *p, int64_t step,
                             float *grad_norm) {
    speck_lora *a = tr->a;
    const int K = tr->block_share;
    // Block-LoRA: the shared block's gradient is the sum over its K uses; the copies' slots are
    // zeroed, so the norm counts each parameter once.
    speck_lora_block_fold(a, K, tr->grads);
    double norm = speck_adamw_grad_norm(tr->grads, a->n_params);
    if (grad_norm) *grad_norm = (float)norm;
    float clip = 1.0f;
    int err = speck_adamw_begin(p, step, norm, &clip);
    if (err) return err;
    for (int i = 0; i < a->n_layer * NT; i++) {
        const speck_lora_mat *mt = &a->m[i];
        if (!mt->rank) continue;
        for (int k = 0; k < 2; k++) {
            float *w = k ? mt->b : mt->a;
            size_t off = (size_t)(w - a->data);
            // A under Block-LoRA: the shared block (block 0) only, copied to the others below.
            const int64_t rows = k ? mt->rank : mt->rank / K;
            speck_adamw_update(p, step, clip, true, w, tr->grads + off, tr->adam_m + off,
                               tr->adam_v + off, rows * (k ? mt->n_out : mt->n_in));
        }
    }
    speck_lora_block_tie(a, K);
    return 0;
}

int speck_lora_checkpoint_save(speck_lora_trainer *tr, const speck_train_state *st,
                               const char *path) {
    speck_gguf_writer *w = speck_gguf_writer_new();
    if (!w) return speck_set_error(SPECK_ERR_NOMEM, "checkpoint: out of memory");
    int err = speck_lora_write_gguf(tr->a, w);
    if (!err && (speck_gguf_set_u64(w, "train.step", (uint64_t)st->step) ||
                 speck_gguf_set_u64(w, "train.seed", st->seed) ||
                 speck_gguf_set_u64(w, "train.block_share", (uint64_t)tr->block_share)))
        err = speck_set_error(SPECK_ERR_NOMEM, "checkpoint: out of memory");
    int64_t ne[1] = {tr->a->n_params};
    if (!err) err = speck_gguf_add_tensor(w, "adam_m", SPECK_TYPE_F32, 1, ne, tr->adam_m);
    if (!err) err = speck_gguf_add_tensor(w, "adam_v", SPECK_TYPE_F32, 1, ne, tr->adam_v);
    if (!err) err = speck_gguf_writer_save(w, path);
    speck_gguf_writer_free(w);
    return err;
}

int speck_lora_checkpoint_load(speck_lora_trainer *tr, const char *path, speck_train_state *st) {
    speck_gguf *g = speck_gguf_open(path);
    if (!g) return SPECK_ERR_IO;
    int err = 0;
    speck_lora *ck = NULL;
    // The adapter reader refuses tensors it does not know: read the moments, then the adapter
    // from the same file with them set aside.
    const speck_gguf_tensor *tm = speck_gguf_find_tensor(g, "adam_m");
    const speck_gguf_tensor *tv = speck_gguf_find_tensor(g, "adam_v");
    int64_t ks = speck_gguf_find_key(g, "train.step");
    if (ks < 0 || !tm || !tv)
        err = speck_set_error(SPECK_ERR_FORMAT, "%s: not a fine-tuning checkpoint", path);
    else if (tm->type != SPECK_TYPE_F32 || tv->type != SPECK_TYPE_F32 ||
             tm->n_elements != tr->a->n_params || tv->n_elements != tr->a->n_params)
        err = speck_set_error(SPECK_ERR_ARG,
                              "%s: checkpoint from another configuration (%lld adapter "
                              "parameters, the run has %lld: same --rank and --targets?)",
                              path, (long long)tm->n_elements, (long long)tr->a->n_params);
    int64_t kb = speck_gguf_find_key(g, "train.block_share");
    if (!err && (kb >= 0 ? speck_gguf_get_int(g, kb) : 1) != tr->block_share)
        err = speck_set_error(SPECK_ERR_ARG,
                              "%s: checkpoint from another configuration (--block-share %lld, the "
                              "run has %d)",
                              path, (long long)(kb >= 0 ? speck_gguf_get_int(g, kb) : 1),
                              tr->block_share);
    if (!err) {
        ck = speck_lora_from_gguf_skip(g, path, "adam_");
        if (!ck) err = SPECK_ERR_FORMAT;
    }
    if (!err) {
        for (int i = 0; i < tr->a->n_layer * NT && !err; i++)
            if (i >= ck->n_layer * NT || ck->m[i].rank != tr->a->m[i].rank)
                err = speck_set_error(SPECK_ERR_ARG,
                                      "%s: checkpoint from another configuration (ranks or "
                                      "targets differ)",
                                      path);
        if (!err && (ck->alpha != tr->a->alpha || ck->n_params != tr->a->n_params))
            err = speck_set_error(SPECK_ERR_ARG,
                                  "%s: checkpoint from another configuration (alpha %g, the run "
                                  "has %g)",
                                  path, ck->alpha, tr->a->alpha);
    }
    if (!err) {
        memcpy(tr->a->data, ck->data, (size_t)ck->n_params * sizeof(float));
        memcpy(tr->adam_m, tm->data, (size_t)tm->n_elements * sizeof(float));
        memcpy(tr->adam_v, tv->data, (size_t)tv->n_elements * sizeof(float));
        st->step = speck_gguf_get_int(g, ks);
        int64_t ki = speck_gguf_find_key(g, "train.seed");
        st->seed = ki >= 0 ? (uint64_t)speck_gguf_get_int(g, ki) : 0;
    }
    speck_lora_free(ck);
    speck_gguf_close(g);
    return err;
}
