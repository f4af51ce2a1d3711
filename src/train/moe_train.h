// The mixture-of-experts FFN of the training pass (moe_train.c): router, capacity-free top-k,
// SwiGLU experts and the load-balancing auxiliary loss, forward and backward.
#ifndef SPECK_MOE_TRAIN_H
#define SPECK_MOE_TRAIN_H

#include <stdbool.h>
#include <stddef.h>

// Names: N tokens, C = n_embd, F = expert width, X = n_expert, k = n_expert_used, S = N·k slots
// (one per token-choice, grouped by expert and within an expert by token).
typedef struct {
    int N, C, F, X, k;
    bool norm; // weights renormalised over the chosen experts
} tmoe_shape;

// Saved activations of one layer.
typedef struct {
    float *probs; // (N, X) router softmax
    int *sel;     // (N, k) chosen experts, most probable first (ties: the lower index)
    float *wt;    // (N, k) their weights in the output
    int *slot;    // (N, k) the slot of each choice
    int *tok;     // (S) the token of each slot
    int *off;     // (X + 1) first slot of each expert
    float *frac;  // (X) f_i: the fraction of the S token-choices that went to expert i
    float *xs;    // (S, C) each slot's input row
    float *g, *u; // (S, F) gate and up pre-activations
    float *h;     // (S, F) silu(g) * u
    float *ys;    // (S, C) each slot's expert output
} tmoe_acts;

// Backward scratch shared by the layers.
typedef struct {
    float *dys, *dxs;     // (S, C)
    float *dh, *dg, *du;  // (S, F)
    float *dz;            // (N, X) router logits' gradient
    float *dwt;           // (N, k)
} tmoe_scratch;

// Bytes of tmoe_acts / tmoe_scratch for a shape, and carving them from one zeroed block.
size_t tmoe_acts_bytes(const tmoe_shape *s);
void tmoe_acts_at(const tmoe_shape *s, void *block, tmoe_acts *a);
size_t tmoe_scratch_bytes(const tmoe_shape *s);
void tmoe_scratch_at(const tmoe_shape *s, void *block, tmoe_scratch *d);

// y: (N, C) = Σ over each token's k choices of weight · expert(xn row); xn: (N, C);
// Wr: (X, C); Wg, Wu: (X, F, C); Wd: (X, C, F). Returns the layer's auxiliary loss
// X · Σ_i f_i · P_i.
double tmoe_forward(const tmoe_shape *s, tmoe_acts *a, float *y, const float *xn, const float *Wr,
                    const float *Wg, const float *Wu, const float *Wd);
// dxn: (N, C) = d/dxn (overwritten); dWr, dWg, dWu, dWd += the weights' gradients (all NULL:
// frozen weights, dxn only); dy: (N, C) the output's gradient; aux_scale: d(objective)/d(this
// layer's auxiliary loss).
void tmoe_backward(const tmoe_shape *s, const tmoe_acts *a, tmoe_scratch *d, float *dxn,
                   float *dWr, float *dWg, float *dWu, float *dWd, const float *dy,
                   const float *xn, const float *Wr, const float *Wg, const float *Wu,
                   const float *Wd, float aux_scale);

// Qwen2-MoE's shared expert (Fs = its width), which every token runs beside the routed ones:
//   y_t += σ(xn_t · wgate) · Wd (silu(Wg xn_t) ∘ Wu xn_t)
// Saved activations: sg: (N) the sigmoid gate; g, u, h: (N, Fs); ys: (N, C) the expert's output.
typedef struct {
    float *sg, *g, *u, *h, *ys;
} tshexp_acts;
// Backward scratch: dys: (N, C); dh, dg, du: (N, Fs); dz: (N).
typedef struct {
    float *dys, *dh, *dg, *du, *dz;
} tshexp_scratch;

// y: (N, C) += the shared expert's gated output; xn: (N, C); wgate: (C); Wg, Wu: (Fs, C);
// Wd: (C, Fs).
void tshexp_forward(tshexp_acts *a, float *y, const float *xn, const float *wgate, const float *Wg,
                    const float *Wu, const float *Wd, int N, int C, int Fs);
// dxn: (N, C) += d/dxn; dwgate, dWg, dWu, dWd += the weights' gradients (all NULL: frozen);
// dy: (N, C) the output's.
void tshexp_backward(const tshexp_acts *a, tshexp_scratch *d, float *dxn, float *dwgate,
                     float *dWg, float *dWu, float *dWd, const float *dy, const float *xn,
                     const float *wgate, const float *Wg, const float *Wu, const float *Wd, int N,
                     int C, int Fs);

#endif
