// Building blocks of the f32 training pass (train_ops.c), shared by whole-model training and
// adapter fine-tuning: N = rows (B*T tokens), shapes in each comment.
#ifndef SPECK_TRAIN_OPS_H
#define SPECK_TRAIN_OPS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "speck.h"

// Loops with less work than this many element-operations run on one thread: a parallel region
// costs microseconds, and far more on a loaded machine.
#define PAR_MIN 32768

// Rows [r0, r1) of n for this thread (inside a parallel region).
void train_slice(int n, int *r0, int *r1);
// y: (N, n_out) = x: (N, n_in) · W: (n_out, n_in)ᵀ
void train_matmul_forward(float *y, const float *x, const float *W, int N, int n_in, int n_out);
// dx: (N, n_in) = (accumulate ? dx : 0) + dy·W; dW: (n_out, n_in) += dyᵀ·x
void train_matmul_backward(float *dx, float *dW, const float *dy, const float *x, const float *W,
                           int N, int n_in, int n_out, bool accumulate);
// The two halves of train_matmul_backward alone (frozen weights need no dW; adapters scale it).
void train_matmul_backward_dx(float *dx, const float *dy, const float *W, int N, int n_in,
                              int n_out, bool accumulate);
void train_matmul_backward_dw(float *dW, const float *dy, const float *x, int N, int n_in,
                              int n_out, float scale);
// x: (N, C) = E[tok]; dE: (V, C) += scatter of dx by tok
void train_embedding_forward(float *x, const float *E, const int32_t *tok, int N, int C);
void train_embedding_backward(float *dE, const float *dx, const int32_t *tok, int N, int C);
// y = x * r * w, r = 1/sqrt(mean(x²) + eps); y, x: (N, C); w: (C); rstd: (N)
void train_rmsnorm_forward(float *y, float *rstd, const float *x, const float *w, int N, int C,
                           float eps);
// dx (+)= ...; dw += ... (dw NULL: a frozen norm, no weight gradient)
void train_rmsnorm_backward(float *dx, float *dw, const float *dy, const float *x, const float *w,
                            const float *rstd, int N, int C, bool accumulate);
// x: (B*T, nh*hd) rotated in place by the (T, hd/2) tables; inverse for the backward pass.
void train_rope_apply(float *x, const float *cos_t, const float *sin_t, int B, int T, int nh,
                      int hd, speck_rope_type type, bool inverse);
// Causal GQA attention. q: (N, H*hd); k, v: (N, Hkv*hd); att: (B, H, T, T); out: (N, H*hd)
void train_attention_forward(float *out, float *att, const float *q, const float *k,
                             const float *v, int B, int T, int H, int Hkv, int hd);
// dq, dk, dv overwritten; dp_scratch: (threads, T, T)
void train_attention_backward(float *dq, float *dk, float *dv, float *dp_scratch,
                              const float *dout, const float *att, const float *q, const float *k,
                              const float *v, int B, int T, int H, int Hkv, int hd);
// h = silu(g) * u over n values, and its gradients
void train_swiglu_forward(float *h, const float *g, const float *u, size_t n);
void train_swiglu_backward(float *dg, float *du, const float *dh, const float *g, const float *u,
                           size_t n);
// y: (N, n) += b: (n) on every row; db: (n) += the column sums of dy: (N, n)
void train_bias_forward(float *y, const float *b, int N, int n);
void train_bias_backward(float *db, const float *dy, int N, int n);
// out = a + b over n values
void train_residual_forward(float *out, const float *a, const float *b, size_t n);
// logits: (N, V) -> probabilities in place; returns Σ -log p[target] over rows whose target is
// >= 0 (a negative target masks its row: no loss, and no gradient below).
double train_crossentropy_forward(float *logits, const int32_t *targets, int N, int V);
// probs: (N, V) -> dlogits = scale * (p - onehot(target)) in place; masked rows 0.
void train_crossentropy_backward(float *probs, const int32_t *targets, int N, int V, float scale);

#endif
