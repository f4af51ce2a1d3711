// The training pass's building blocks, each a forward/backward pair over (rows, features)
// buffers in f32, shared by whole-model training (model_train.c) and adapter training
// (src/adapt/lora_train.c). Matmuls go through OpenBLAS sgemm on the OpenMP pool; elementwise loops
// and attention are OpenMP loops with static schedules, so results depend only on the thread count.
#include <math.h>
#include <omp.h>
#include <string.h>

#include <cblas.h>

#include "core/simd_math.h"
#include "train/train_ops.h"

/* ---- matmul: forward y = x·Wᵀ, backward dx (+)= dy·W, dW += dyᵀ·x --------------------------- */

// GEMMs run on the OpenMP pool: each thread calls a single-threaded OpenBLAS sgemm on its slice
// of rows (speck_blas_single_threaded). Slices depend only on the thread count.

// Rows [r0, r1) of n for this thread (in a parallel region).
void train_slice(int n, int *r0, int *r1) {
    int nt = omp_get_num_threads(), id = omp_get_thread_num();
    *r0 = (int)((int64_t)n * id / nt);
    *r1 = (int)((int64_t)n * (id + 1) / nt);
}

#define GEMM_PAR(mnk) if ((size_t)(mnk) > ((size_t)1 << 18))

// y: (N, n_out) = x: (N, n_in) · W: (n_out, n_in)ᵀ
void train_matmul_forward(float *y, const float *x, const float *W, int N, int n_in, int n_out) {
#pragma omp parallel GEMM_PAR((size_t)N *n_in *n_out)
    {
        int r0, r1;
        train_slice(N, &r0, &r1);
        if (r1 > r0)
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, r1 - r0, n_out, n_in, 1.0f,
                        x + (size_t)r0 * n_in, n_in, W, n_in, 0.0f, y + (size_t)r0 * n_out, n_out);
    }
}

// dx: (N, n_in) = (accumulate ? dx : 0) + dy: (N, n_out) · W: (n_out, n_in);
// dW: (n_out, n_in) += dyᵀ · x: (N, n_in)
void train_matmul_backward(float *dx, float *dW, const float *dy, const float *x, const float *W,
                            int N, int n_in, int n_out, bool accumulate) {
#pragma omp parallel GEMM_PAR((size_t)N *n_in *n_out)
    {
        int r0, r1;
        train_slice(N, &r0, &r1);
        if (r1 > r0)
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, r1 - r0, n_in, n_out, 1.0f,
                        dy + (size_t)r0 * n_out, n_out, W, n_in, accumulate ? 1.0f : 0.0f,
                        dx + (size_t)r0 * n_in, n_in);
        train_slice(n_out, &r0, &r1);
        if (r1 > r0)
            cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, r1 - r0, n_in, N, 1.0f, dy + r0,
                        n_out, x, n_in, 1.0f, dW + (size_t)r0 * n_in, n_in);
    }
}

// dx: (N, n_in) = (accumulate ? dx : 0) + dy: (N, n_out) · W: (n_out, n_in) (no weight gradient)
void train_matmul_backward_dx(float *dx, const float *dy, const float *W, int N, int n_in,
                              int n_out, bool accumulate) {
#pragma omp parallel GEMM_PAR((size_t)N *n_in *n_out)
    {
        int r0, r1;
        train_slice(N, &r0, &r1);
        if (r1 > r0)
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, r1 - r0, n_in, n_out, 1.0f,
                        dy + (size_t)r0 * n_out, n_out, W, n_in, accumulate ? 1.0f : 0.0f,
                        dx + (size_t)r0 * n_in, n_in);
    }
}

// dW: (n_out, n_in) += scale · dyᵀ · x: (N, n_in), dy: (N, n_out) (no input gradient)
void train_matmul_backward_dw(float *dW, const float *dy, const float *x, int N, int n_in,
                              int n_out, float scale) {
#pragma omp parallel GEMM_PAR((size_t)N *n_in *n_out)
    {
        int r0, r1;
        train_slice(n_out, &r0, &r1);
        if (r1 > r0)
            cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, r1 - r0, n_in, N, scale, dy + r0,
                        n_out, x, n_in, 1.0f, dW + (size_t)r0 * n_in, n_in);
    }
}

/* ---- embedding --------------------------------------------------------------------------------
 */

// x: (N, C) = E[tok]; E: (V, C)
void train_embedding_forward(float *x, const float *E, const int32_t *tok, int N, int C) {
    for (int i = 0; i < N; i++)
        memcpy(x + (size_t)i * C, E + (size_t)tok[i] * C, (size_t)C * sizeof(float));
}

// dE: (V, C) += scatter of dx: (N, C) by tok. Threads own column slices (no races, fixed order).
void train_embedding_backward(float *dE, const float *dx, const int32_t *tok, int N, int C) {
#pragma omp parallel if ((size_t)N * C > PAR_MIN)
    {
        int nt = omp_get_num_threads(), id = omp_get_thread_num();
        int c0 = C * id / nt, c1 = C * (id + 1) / nt;
        for (int i = 0; i < N; i++) {
            float *d = dE + (size_t)tok[i] * C;
            const float *s = dx + (size_t)i * C;
            for (int j = c0; j < c1; j++) d[j] += s[j];
        }
    }
}

/* ---- RMSNorm: y = x * r * w, r = 1/sqrt(mean(x²) + eps) ------------------------------------- */

// y, x: (N, C); w: (C); rstd: (N)
void train_rmsnorm_forward(float *y, float *rstd, const float *x, const float *w, int N, int C,
                            float eps) {
#pragma omp parallel for schedule(static) if ((size_t)N * C > PAR_MIN)
    for (int i = 0; i < N; i++) {
        const float *xi = x + (size_t)i * C;
        float *yi = y + (size_t)i * C;
        float r = (float)(1.0 / sqrt(speck_sum_sq(xi, C) / C + eps));
        rstd[i] = r;
        for (int j = 0; j < C; j++) yi[j] = xi[j] * r * w[j];
    }
}

// dx: (N, C) (+)= r w dy - x r³/C Σ_k dy_k w_k x_k;  dw: (C) += Σ_rows dy x r
void train_rmsnorm_backward(float *dx, float *dw, const float *dy, const float *x, const float *w,
                             const float *rstd, int N, int C, bool accumulate) {
#pragma omp parallel for schedule(static) if ((size_t)N * C > PAR_MIN)
    for (int i = 0; i < N; i++) {
        const float *xi = x + (size_t)i * C, *dyi = dy + (size_t)i * C;
        float *dxi = dx + (size_t)i * C;
        float r = rstd[i];
        double dot = 0;
        for (int j = 0; j < C; j++) dot += (double)dyi[j] * w[j] * xi[j];
        float k = (float)(dot * r * r * r / C);
        for (int j = 0; j < C; j++) {
            float v = r * w[j] * dyi[j] - xi[j] * k;
            dxi[j] = accumulate ? dxi[j] + v : v;
        }
    }
    if (!dw) return;
#pragma omp parallel if ((size_t)N * C > PAR_MIN)
    {
        int nt = omp_get_num_threads(), id = omp_get_thread_num();
        int c0 = C * id / nt, c1 = C * (id + 1) / nt;
        for (int i = 0; i < N; i++) {
            const float *xi = x + (size_t)i * C, *dyi = dy + (size_t)i * C;
            float r = rstd[i];
            for (int j = c0; j < c1; j++) dw[j] += dyi[j] * xi[j] * r;
        }
    }
}

/* ---- RoPE: rotate pair j of every head by angle t * freq[j] ------------------------------- */

// x: (B*T, nh*hd) in place; cos, sin: (T, hd/2). inverse: rotate by -angle (the backward pass:
// a rotation's transpose is its inverse).
void train_rope_apply(float *x, const float *cos_t, const float *sin_t, int B, int T, int nh,
                       int hd, speck_rope_type type, bool inverse) {
    int half = hd / 2;
    float sgn = inverse ? -1.0f : 1.0f;
#pragma omp parallel for schedule(static) if ((size_t)B * T * nh * hd > PAR_MIN)
    for (int i = 0; i < B * T; i++) {
        const float *cs = cos_t + (size_t)(i % T) * half, *sn = sin_t + (size_t)(i % T) * half;
        for (int h = 0; h < nh; h++) {
            float *v = x + ((size_t)i * nh + h) * hd;
            for (int j = 0; j < half; j++) {
                int a = type == SPECK_ROPE_NEOX ? j : 2 * j;
                int b = type == SPECK_ROPE_NEOX ? j + half : 2 * j + 1;
                float x0 = v[a], x1 = v[b], s = sgn * sn[j];
                v[a] = x0 * cs[j] - x1 * s;
                v[b] = x0 * s + x1 * cs[j];
            }
        }
    }
}

/* ---- causal self-attention with GQA ------------------------------------------------------- */
// Query head h reads kv head h / (H/Hkv). Scores scale 1/sqrt(hd).

// Each (batch, head) is two GEMMs (single-threaded OpenBLAS inside the OpenMP loop) over the
// strided rows of q, k, v: S = scale·Q·Kᵀ (the whole T x T square; the causal upper triangle is
// then set to 0 after the softmax, a 2x waste that GEMM speed repays many times over a loop),
// O = P·V.

// q: (N, Qd); k, v: (N, KVd); att: (B, H, T, T); out: (N, Qd)
void train_attention_forward(float *out, float *att, const float *q, const float *k,
                             const float *v, int B, int T, int H, int Hkv, int hd) {
    int Qd = H * hd, KVd = Hkv * hd, group = H / Hkv;
    float scale = 1.0f / sqrtf((float)hd);
#pragma omp parallel for collapse(2) schedule(static) if ((size_t)B * H * T * T * hd > 2 * PAR_MIN)
    for (int b = 0; b < B; b++)
        for (int h = 0; h < H; h++) {
            int kh = h / group;
            const float *Q = q + (size_t)b * T * Qd + (size_t)h * hd;
            const float *K = k + (size_t)b * T * KVd + (size_t)kh * hd;
            const float *V = v + (size_t)b * T * KVd + (size_t)kh * hd;
            float *P = att + ((size_t)b * H + h) * T * T;
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, T, T, hd, scale, Q, Qd, K, KVd,
                        0.0f, P, T);
            for (int t = 0; t < T; t++) {
                float *p = P + (size_t)t * T, mx = -INFINITY;
                for (int s2 = 0; s2 <= t; s2++) mx = p[s2] > mx ? p[s2] : mx;
                double sum = 0;
                for (int s2 = 0; s2 <= t; s2++) {
                    p[s2] = expf(p[s2] - mx);
                    sum += p[s2];
                }
                float inv = (float)(1.0 / sum);
                for (int s2 = 0; s2 <= t; s2++) p[s2] *= inv;
                for (int s2 = t + 1; s2 < T; s2++) p[s2] = 0.0f;
            }
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, T, hd, T, 1.0f, P, T, V, KVd,
                        0.0f, out + (size_t)b * T * Qd + (size_t)h * hd, Qd);
        }
}

// dq: (N, Qd); dk, dv: (N, KVd) (overwritten); dout: (N, Qd); dp_scratch: (threads, T, T).
// One task per (batch, kv head): the query heads of a group add into the same dk/dv rows in a
// fixed order, so there are no races and the sums do not depend on the schedule.
//   dV += Pᵀ·dO;  dP = dO·Vᵀ;  dS = scale·P∘(dP - Σ_s P dP);  dQ = dS·K;  dK += dSᵀ·Q
void train_attention_backward(float *dq, float *dk, float *dv, float *dp_scratch,
                              const float *dout, const float *att, const float *q, const float *k,
                              const float *v, int B, int T, int H, int Hkv, int hd) {
    int Qd = H * hd, KVd = Hkv * hd, group = H / Hkv;
    float scale = 1.0f / sqrtf((float)hd);
#pragma omp parallel for collapse(2) schedule(static) if ((size_t)B * H * T * T * hd > 2 * PAR_MIN)
    for (int b = 0; b < B; b++)
        for (int kh = 0; kh < Hkv; kh++) {
            float *dS = dp_scratch + (size_t)omp_get_thread_num() * T * T;
            const float *K = k + (size_t)b * T * KVd + (size_t)kh * hd;
            const float *V = v + (size_t)b * T * KVd + (size_t)kh * hd;
            float *dK = dk + (size_t)b * T * KVd + (size_t)kh * hd;
            float *dV = dv + (size_t)b * T * KVd + (size_t)kh * hd;
            for (int h = kh * group; h < (kh + 1) * group; h++) {
                const float beta = h == kh * group ? 0.0f : 1.0f; // the group's first head sets
                const float *P = att + ((size_t)b * H + h) * T * T;
                const float *dO = dout + (size_t)b * T * Qd + (size_t)h * hd;
                const float *Q = q + (size_t)b * T * Qd + (size_t)h * hd;
                cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, T, hd, T, 1.0f, P, T, dO, Qd,
                            beta, dV, KVd);
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, T, T, hd, 1.0f, dO, Qd, V,
                            KVd, 0.0f, dS, T);
                for (int t = 0; t < T; t++) {
                    const float *p = P + (size_t)t * T;
                    float *d = dS + (size_t)t * T;
                    double psum = 0;
                    for (int s2 = 0; s2 <= t; s2++) psum += (double)d[s2] * p[s2];
                    for (int s2 = 0; s2 <= t; s2++) d[s2] = p[s2] * (d[s2] - (float)psum) * scale;
                    for (int s2 = t + 1; s2 < T; s2++) d[s2] = 0.0f;
                }
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, T, hd, T, 1.0f, dS, T, K,
                            KVd, 0.0f, dq + (size_t)b * T * Qd + (size_t)h * hd, Qd);
                cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, T, hd, T, 1.0f, dS, T, Q, Qd,
                            beta, dK, KVd);
            }
        }
}

/* ---- SwiGLU: h = silu(g) * u -------------------------------------------------------------- */

// h, g, u: (n)
void train_swiglu_forward(float *h, const float *g, const float *u, size_t n) {
#pragma omp parallel for schedule(static) if (n > PAR_MIN)
    for (size_t j = 0; j < n; j++) h[j] = g[j] / (1.0f + expf(-g[j])) * u[j];
}

// dg, du: (n) from dh: (n)
void train_swiglu_backward(float *dg, float *du, const float *dh, const float *g, const float *u,
                            size_t n) {
#pragma omp parallel for schedule(static) if (n > PAR_MIN)
    for (size_t j = 0; j < n; j++) {
        float sg = 1.0f / (1.0f + expf(-g[j]));
        du[j] = dh[j] * g[j] * sg;
        dg[j] = dh[j] * u[j] * sg * (1.0f + g[j] * (1.0f - sg));
    }
}

/* ---- residual ----------------------------------------------------------------------------- */

// out: (n) = a + b
/* ---- biases ------------------------------------------------------------------------------- */

void train_bias_forward(float *y, const float *b, int N, int n) {
#pragma omp parallel for schedule(static) if ((size_t)N * n > PAR_MIN)
    for (int i = 0; i < N; i++) {
        float *yi = y + (size_t)i * n;
        for (int j = 0; j < n; j++) yi[j] += b[j];
    }
}

// Each thread owns a range of columns and sums them over the rows in order (deterministic).
void train_bias_backward(float *db, const float *dy, int N, int n) {
#pragma omp parallel if ((size_t)N * n > PAR_MIN)
    {
        int nt = omp_get_num_threads(), id = omp_get_thread_num();
        int c0 = n * id / nt, c1 = n * (id + 1) / nt;
        for (int i = 0; i < N; i++) {
            const float *dyi = dy + (size_t)i * n;
            for (int j = c0; j < c1; j++) db[j] += dyi[j];
        }
    }
}

void train_residual_forward(float *out, const float *a, const float *b, size_t n) {
#pragma omp parallel for schedule(static) if (n > PAR_MIN)
    for (size_t j = 0; j < n; j++) out[j] = a[j] + b[j];
}

/* ---- softmax cross-entropy ---------------------------------------------------------------- */

// logits: (N, V) in place -> probabilities; returns Σ_i -log p_i[target_i] (double).
double train_crossentropy_forward(float *logits, const int32_t *targets, int N, int V) {
    double total = 0;
#pragma omp parallel for schedule(static) reduction(+ : total) if ((size_t)N * V > PAR_MIN)
    for (int i = 0; i < N; i++) {
        float *l = logits + (size_t)i * V;
        float mx = l[0];
        for (int j = 1; j < V; j++) mx = l[j] > mx ? l[j] : mx;
        double sum = 0;
        for (int j = 0; j < V; j++) {
            l[j] = expf(l[j] - mx);
            sum += l[j];
        }
        float inv = (float)(1.0 / sum);
        for (int j = 0; j < V; j++) l[j] *= inv;
        if (targets[i] < 0) continue; // masked position (fine-tuning prompts): no loss
        total += -log((double)l[targets[i]] > 0 ? (double)l[targets[i]] : 1e-45);
    }
    return total;
}

// probs: (N, V) in place -> dlogits = scale * (p - onehot(target))
void train_crossentropy_backward(float *probs, const int32_t *targets, int N, int V, float scale) {
#pragma omp parallel for schedule(static) if ((size_t)N * V > PAR_MIN)
    for (int i = 0; i < N; i++) {
        float *p = probs + (size_t)i * V;
        if (targets[i] < 0) { // masked position: no gradient
            memset(p, 0, (size_t)V * sizeof(float));
            continue;
        }
        for (int j = 0; j < V; j++) p[j] *= scale;
        p[targets[i]] -= scale;
    }
}

