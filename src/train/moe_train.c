// The mixture-of-experts FFN of the training pass, forward and backward side by side (llm.c
// style), in f32. The same function as the inference path (src/model/moe.c, Mixtral's rule):
//   p = softmax(Wr·x) over all X experts; S = the k most probable (ties: the lower index);
//   w_j = p_j / Σ_{m∈S} p_m (norm) or p_j; y = Σ_{j∈S} w_j · Wd_j (silu(Wg_j x) ∘ Wu_j x).
// Capacity-free: every token runs its k experts. The selection S is a constant of the backward
// pass: gradients reach the router through the weights w (and the auxiliary loss through P).
// Token-choices are "slots" grouped by expert, so each expert is one GEMM over its tokens.
//
// Qwen2-MoE adds a shared expert (tshexp_*): a SwiGLU FFN every token runs, its output scaled by
// a sigmoid gate σ(x · w) and added to the routed experts'.
//
// Load balancing (Switch Transformer, Fedus et al. 2021): aux = X · Σ_i f_i · P_i with f_i the
// fraction of the N·k token-choices routed to expert i (a constant) and P_i = mean_t p_t,i.
// Shapes: N tokens, C = n_embd, F = expert width, X experts, k chosen, S = N·k slots.
#include <math.h>
#include <omp.h>
#include <stdint.h>
#include <string.h>

#include "train/moe_train.h"
#include "train/train_ops.h"

static size_t al64(size_t n) {
    return (n + 63) & ~(size_t)63;
}

// Every buffer holds 4-byte values (float or int), each 64-byte aligned within the block.
#define CARVE(ptr, type, count)                                                                    \
    do {                                                                                           \
        if (block) ptr = (type *)(base + used);                                                    \
        used += al64((size_t)(count) * 4);                                                         \
    } while (0)

static size_t acts_layout(const tmoe_shape *s, char *block, tmoe_acts *a) {
    size_t used = 0, N = s->N, S = (size_t)s->N * s->k;
    char *base = block;
    tmoe_acts dummy;
    if (!a) a = &dummy;
    CARVE(a->probs, float, N * s->X);
    CARVE(a->sel, int, N * s->k);
    CARVE(a->wt, float, N * s->k);
    CARVE(a->slot, int, N * s->k);
    CARVE(a->tok, int, S);
    CARVE(a->off, int, s->X + 1);
    CARVE(a->frac, float, s->X);
    CARVE(a->xs, float, S * s->C);
    CARVE(a->g, float, S * s->F);
    CARVE(a->u, float, S * s->F);
    CARVE(a->h, float, S * s->F);
    CARVE(a->ys, float, S * s->C);
    return used;
}

static size_t scratch_layout(const tmoe_shape *s, char *block, tmoe_scratch *d) {
    size_t used = 0, N = s->N, S = (size_t)s->N * s->k;
    char *base = block;
    tmoe_scratch dummy;
    if (!d) d = &dummy;
    CARVE(d->dys, float, S * s->C);
    CARVE(d->dxs, float, S * s->C);
    CARVE(d->dh, float, S * s->F);
    CARVE(d->dg, float, S * s->F);
    CARVE(d->du, float, S * s->F);
    CARVE(d->dz, float, N * s->X);
    CARVE(d->dwt, float, N * s->k);
    return used;
}
#undef CARVE

size_t tmoe_acts_bytes(const tmoe_shape *s) {
    return acts_layout(s, NULL, NULL);
}
void tmoe_acts_at(const tmoe_shape *s, void *block, tmoe_acts *a) {
    acts_layout(s, block, a);
}
size_t tmoe_scratch_bytes(const tmoe_shape *s) {
    return scratch_layout(s, NULL, NULL);
}
void tmoe_scratch_at(const tmoe_shape *s, void *block, tmoe_scratch *d) {
    scratch_layout(s, block, d);
}

/* ---- routing: softmax, top-k, weights; slots grouped by expert ------------------------------ */

// probs: (N, X) logits in, probabilities out; sel, wt: (N, k).
static void route_forward(const tmoe_shape *s, tmoe_acts *a) {
    const int X = s->X, k = s->k;
#pragma omp parallel for schedule(static) if ((size_t)s->N * X > PAR_MIN / 4)
    for (int t = 0; t < s->N; t++) {
        float *p = a->probs + (size_t)t * X;
        float mx = p[0];
        for (int e = 1; e < X; e++) mx = p[e] > mx ? p[e] : mx;
        double sum = 0;
        for (int e = 0; e < X; e++) sum += p[e] = expf(p[e] - mx);
        const float inv = (float)(1.0 / sum);
        for (int e = 0; e < X; e++) p[e] *= inv;
        int *sel = a->sel + (size_t)t * k;
        float *wt = a->wt + (size_t)t * k, chosen = 0.0f;
        for (int j = 0; j < k; j++) { // k is small: repeated selection, no sort
            int best = -1;
            for (int e = 0; e < X; e++) {
                bool taken = false;
                for (int m = 0; m < j; m++) taken |= sel[m] == e;
                if (!taken && (best < 0 || p[e] > p[best])) best = e;
            }
            sel[j] = best;
            wt[j] = p[best];
            chosen += p[best];
        }
        if (s->norm)
            for (int j = 0; j < k; j++) wt[j] /= chosen;
    }
    // Slots: counting sort of the choices by expert, tokens in order within an expert.
    const int S = s->N * k;
    memset(a->off, 0, (size_t)(X + 1) * sizeof(int));
    for (int i = 0; i < S; i++) a->off[a->sel[i] + 1]++;
    for (int e = 0; e < X; e++) {
        a->frac[e] = (float)a->off[e + 1] / (float)S;
        a->off[e + 1] += a->off[e];
    }
    int cur[X];
    memcpy(cur, a->off, (size_t)X * sizeof(int));
    for (int i = 0; i < S; i++) {
        const int sl = cur[a->sel[i]]++;
        a->slot[i] = sl;
        a->tok[sl] = i / k;
    }
}

// dz: (N, X) the router logits' gradient from dwt: (N, k) (the output weights' gradient) and the
// auxiliary loss: dP_i/dp_t,i = 1/N, so d(aux_scale · aux)/dp_t,i = aux_scale · X · f_i / N.
static void route_backward(const tmoe_shape *s, const tmoe_acts *a, tmoe_scratch *d,
                           float aux_scale) {
    const int X = s->X, k = s->k;
    const float ca = aux_scale * (float)X / (float)s->N;
#pragma omp parallel for schedule(static) if ((size_t)s->N * X > PAR_MIN / 4)
    for (int t = 0; t < s->N; t++) {
        const float *p = a->probs + (size_t)t * X, *wt = a->wt + (size_t)t * k;
        const float *dwt = d->dwt + (size_t)t * k;
        const int *sel = a->sel + (size_t)t * k;
        float *dz = d->dz + (size_t)t * X; // dp first, then dz in place
        for (int e = 0; e < X; e++) dz[e] = ca * a->frac[e];
        if (s->norm) { // w_j = p_j / σ, σ = Σ_S p: dp_j = (dw_j - Σ_m dw_m w_m) / σ
            double dot = 0, sigma = 0;
            for (int j = 0; j < k; j++) {
                dot += (double)dwt[j] * wt[j];
                sigma += p[sel[j]];
            }
            for (int j = 0; j < k; j++) dz[sel[j]] += (float)((dwt[j] - dot) / sigma);
        } else {
            for (int j = 0; j < k; j++) dz[sel[j]] += dwt[j];
        }
        // softmax: dz_e = p_e (dp_e - Σ_m p_m dp_m)
        double pd = 0;
        for (int e = 0; e < X; e++) pd += (double)p[e] * dz[e];
        for (int e = 0; e < X; e++) dz[e] = p[e] * (dz[e] - (float)pd);
    }
}

/* ---- the layer ------------------------------------------------------------------------------ */

// dx (+)= dy·W; dW += dyᵀ·x unless dW is NULL (frozen weights: LoRA fine-tuning's base).
static void mm_back(float *dx, float *dW, const float *dy, const float *x, const float *W, int N,
                    int n_in, int n_out, bool accumulate) {
    if (dW)
        train_matmul_backward(dx, dW, dy, x, W, N, n_in, n_out, accumulate);
    else
        train_matmul_backward_dx(dx, dy, W, N, n_in, n_out, accumulate);
}

double tmoe_forward(const tmoe_shape *s, tmoe_acts *a, float *y, const float *xn, const float *Wr,
                    const float *Wg, const float *Wu, const float *Wd) {
    const int N = s->N, C = s->C, F = s->F, X = s->X, k = s->k;
    const size_t S = (size_t)N * k;
    // router: probs (N, X) = xn · Wrᵀ, then softmax and top-k in place
    train_matmul_forward(a->probs, xn, Wr, N, C, X);
    route_forward(s, a);
    // xs: (S, C) = xn[tok[slot]]
#pragma omp parallel for schedule(static) if (S * C > PAR_MIN)
    for (size_t sl = 0; sl < S; sl++)
        memcpy(a->xs + sl * C, xn + (size_t)a->tok[sl] * C, (size_t)C * sizeof(float));
    // each expert on its slots: g, u: (cnt, F) = xs_e · Wg_eᵀ, xs_e · Wu_eᵀ
    for (int e = 0; e < X; e++) {
        const int o = a->off[e], cnt = a->off[e + 1] - o;
        if (!cnt) continue;
        const size_t we = (size_t)e * F * C;
        train_matmul_forward(a->g + (size_t)o * F, a->xs + (size_t)o * C, Wg + we, cnt, C, F);
        train_matmul_forward(a->u + (size_t)o * F, a->xs + (size_t)o * C, Wu + we, cnt, C, F);
    }
    train_swiglu_forward(a->h, a->g, a->u, S * F);
    // ys: (cnt, C) = h_e · Wd_eᵀ
    for (int e = 0; e < X; e++) {
        const int o = a->off[e], cnt = a->off[e + 1] - o;
        if (cnt)
            train_matmul_forward(a->ys + (size_t)o * C, a->h + (size_t)o * F,
                                 Wd + (size_t)e * C * F, cnt, F, C);
    }
    // y_t = Σ_j wt_tj · ys[slot_tj]
#pragma omp parallel for schedule(static) if (S * C > PAR_MIN)
    for (int t = 0; t < N; t++) {
        float *yt = y + (size_t)t * C;
        memset(yt, 0, (size_t)C * sizeof(float));
        for (int j = 0; j < k; j++) {
            const float w = a->wt[(size_t)t * k + j];
            const float *src = a->ys + (size_t)a->slot[(size_t)t * k + j] * C;
            for (int c = 0; c < C; c++) yt[c] += w * src[c];
        }
    }
    // aux = X · Σ_i f_i · P_i, P_i = mean_t p_t,i (double sums, fixed order)
    double aux = 0;
    for (int e = 0; e < X; e++) {
        double P = 0;
        for (int t = 0; t < N; t++) P += a->probs[(size_t)t * X + e];
        aux += (double)a->frac[e] * (P / N);
    }
    return aux * X;
}

void tmoe_backward(const tmoe_shape *s, const tmoe_acts *a, tmoe_scratch *d, float *dxn,
                   float *dWr, float *dWg, float *dWu, float *dWd, const float *dy,
                   const float *xn, const float *Wr, const float *Wg, const float *Wu,
                   const float *Wd, float aux_scale) {
    const int N = s->N, C = s->C, F = s->F, X = s->X, k = s->k;
    const size_t S = (size_t)N * k;
    // combine: dwt_tj = dy_t · ys[slot]; dys[slot] = wt_tj · dy_t
#pragma omp parallel for schedule(static) if (S * C > PAR_MIN)
    for (int t = 0; t < N; t++) {
        const float *dyt = dy + (size_t)t * C;
        for (int j = 0; j < k; j++) {
            const size_t sl = (size_t)a->slot[(size_t)t * k + j];
            const float w = a->wt[(size_t)t * k + j], *ys = a->ys + sl * C;
            float *dys = d->dys + sl * C;
            double dot = 0;
            for (int c = 0; c < C; c++) {
                dot += (double)dyt[c] * ys[c];
                dys[c] = w * dyt[c];
            }
            d->dwt[(size_t)t * k + j] = (float)dot;
        }
    }
    // down: dh_e = dys_e · Wd_e; dWd_e += dys_eᵀ · h_e
    for (int e = 0; e < X; e++) {
        const int o = a->off[e], cnt = a->off[e + 1] - o;
        if (!cnt) continue;
        const size_t we = (size_t)e * C * F;
        mm_back(d->dh + (size_t)o * F, dWd ? dWd + we : NULL, d->dys + (size_t)o * C,
                a->h + (size_t)o * F, Wd + we, cnt, F, C, false);
    }
    train_swiglu_backward(d->dg, d->du, d->dh, a->g, a->u, S * F);
    // gate, up: dxs_e = dg_e · Wg_e + du_e · Wu_e; dWg_e += dg_eᵀ xs_e; dWu_e += du_eᵀ xs_e
    for (int e = 0; e < X; e++) {
        const int o = a->off[e], cnt = a->off[e + 1] - o;
        if (!cnt) continue;
        const size_t we = (size_t)e * F * C;
        float *dxs = d->dxs + (size_t)o * C;
        const float *xs = a->xs + (size_t)o * C;
        mm_back(dxs, dWg ? dWg + we : NULL, d->dg + (size_t)o * F, xs, Wg + we, cnt, C, F, false);
        mm_back(dxs, dWu ? dWu + we : NULL, d->du + (size_t)o * F, xs, Wu + we, cnt, C, F, true);
    }
    // dxn_t = Σ_j dxs[slot_tj] (each token's own rows: no races, a fixed order)
#pragma omp parallel for schedule(static) if (S * C > PAR_MIN)
    for (int t = 0; t < N; t++) {
        float *dx = dxn + (size_t)t * C;
        memset(dx, 0, (size_t)C * sizeof(float));
        for (int j = 0; j < k; j++) {
            const float *src = d->dxs + (size_t)a->slot[(size_t)t * k + j] * C;
            for (int c = 0; c < C; c++) dx[c] += src[c];
        }
    }
    // router: dz from the weights and the auxiliary loss; dxn += dz · Wr; dWr += dzᵀ · xn
    route_backward(s, a, d, aux_scale);
    mm_back(dxn, dWr, d->dz, xn, Wr, N, C, X, true);
}

/* ---- Qwen2-MoE's shared expert ---------------------------------------------------------------- */

void tshexp_forward(tshexp_acts *a, float *y, const float *xn, const float *wgate, const float *Wg,
                    const float *Wu, const float *Wd, int N, int C, int Fs) {
    train_matmul_forward(a->g, xn, Wg, N, C, Fs);
    train_matmul_forward(a->u, xn, Wu, N, C, Fs);
    train_swiglu_forward(a->h, a->g, a->u, (size_t)N * Fs);
    train_matmul_forward(a->ys, a->h, Wd, N, Fs, C);
#pragma omp parallel for schedule(static) if ((size_t)N * C > PAR_MIN)
    for (int t = 0; t < N; t++) {
        const float *x = xn + (size_t)t * C, *ys = a->ys + (size_t)t * C;
        double z = 0;
        for (int c = 0; c < C; c++) z += (double)x[c] * wgate[c];
        const float sg = a->sg[t] = (float)(1.0 / (1.0 + exp(-z)));
        float *yt = y + (size_t)t * C;
        for (int c = 0; c < C; c++) yt[c] += sg * ys[c];
    }
}

void tshexp_backward(const tshexp_acts *a, tshexp_scratch *d, float *dxn, float *dwgate,
                     float *dWg, float *dWu, float *dWd, const float *dy, const float *xn,
                     const float *wgate, const float *Wg, const float *Wu, const float *Wd, int N,
                     int C, int Fs) {
    // gate: dz_t = (dy_t · ys_t) σ (1 - σ); the expert's output gradient dys_t = σ dy_t
#pragma omp parallel for schedule(static) if ((size_t)N * C > PAR_MIN)
    for (int t = 0; t < N; t++) {
        const float *dyt = dy + (size_t)t * C, *ys = a->ys + (size_t)t * C;
        float *dys = d->dys + (size_t)t * C;
        const float sg = a->sg[t];
        double dot = 0;
        for (int c = 0; c < C; c++) {
            dot += (double)dyt[c] * ys[c];
            dys[c] = sg * dyt[c];
        }
        d->dz[t] = (float)(dot * sg * (1.0 - sg));
    }
    // dxn_t += dz_t wgate; dwgate += Σ_t dz_t xn_t (columns by thread, rows in order; NULL:
    // frozen)
#pragma omp parallel for schedule(static) if ((size_t)N * C > PAR_MIN)
    for (int t = 0; t < N; t++) {
        float *dx = dxn + (size_t)t * C;
        for (int c = 0; c < C; c++) dx[c] += d->dz[t] * wgate[c];
    }
#pragma omp parallel if (dwgate && (size_t)N * C > PAR_MIN)
    {
        int nt = omp_get_num_threads(), id = omp_get_thread_num();
        int c0 = C * id / nt, c1 = C * (id + 1) / nt;
        for (int t = 0; dwgate && t < N; t++) {
            const float *x = xn + (size_t)t * C;
            for (int c = c0; c < c1; c++) dwgate[c] += d->dz[t] * x[c];
        }
    }
    // the SwiGLU expert: dh = dys·Wd; dWd += dysᵀ h; dxn += dg·Wg + du·Wu
    mm_back(d->dh, dWd, d->dys, a->h, Wd, N, Fs, C, false);
    train_swiglu_backward(d->dg, d->du, d->dh, a->g, a->u, (size_t)N * Fs);
    mm_back(dxn, dWg, d->dg, xn, Wg, N, C, Fs, true);
    mm_back(dxn, dWu, d->du, xn, Wu, N, C, Fs, true);
}
