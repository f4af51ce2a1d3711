// Training internals shared by the forward/backward pass (model_train.c), the optimizer and
// checkpoints (optim.c) and the tokenizer trainer (bpe_train.c).
#ifndef SPECK_TRAIN_INTERNAL_H
#define SPECK_TRAIN_INTERNAL_H

#include "speck.h"

// Names C = n_embd, Qd = n_head*hd, KVd = n_head_kv*hd, F = n_ff, V = n_vocab, L = n_layer,
// Fs = n_ff_shexp. Which tensors a layer has follows the architecture's table (src/model/arch_*.c);
// the others are NULL.
typedef struct {
    float *attn_norm;       // (C)
    float *wq;              // (Qd, C)
    float *wk, *wv;         // (KVd, C)
    float *bq, *bk, *bv;    // (Qd), (KVd), (KVd) q/k/v biases (qwen2), or NULL
    float *q_norm, *k_norm; // (hd) RMSNorm of each q/k head (qwen3), or (Qd), (KVd) of the whole
                            // projection (olmoe); or NULL
    float *wo;              // (C, Qd)
    float *ffn_norm;        // (C)
    float *wg, *wu;         // (F, C), NULL with experts
    float *wd;              // (C, F), NULL with experts
    // Mixture of experts (X = n_expert; the FFN above is NULL): ffn_gate_inp, ffn_*_exps.
    float *router;      // (X, C)
    float *wg_x, *wu_x; // (X, F, C)
    float *wd_x;        // (X, C, F)
    // Qwen2-MoE's shared expert, or NULL: sigmoid(sh_gate · x) · wd_s(silu(wg_s x) ∘ wu_s x).
    float *sh_gate;     // (C)
    float *wg_s, *wu_s; // (Fs, C)
    float *wd_s;        // (C, Fs)
} speck_tlayer;

// Views of one of the flat buffers (params or grads) as the model's tensors.
typedef struct {
    float *tok_embd; // (V, C)
    float *out_norm; // (C)
    float *output;   // (V, C); == tok_embd when tied
    speck_tlayer *layers;
} speck_tweights;

typedef struct {
    char name[48];
    int64_t offset, ne0, ne1, ne2; // ne1 = 1 for vectors; ne2 = n_expert for stacked experts
    int n_dims;                    // 1 vector, 2 matrix, 3 stacked experts (GGUF dims)
    bool is_matrix;                // weight decay applies (unless decay_all)
    bool is_embd;
    int layer;    // its layer, or -1
    size_t field; // layer tensors: offsetof(speck_tlayer, the pointer bound to it)
} speck_ttensor;

// Saved activations for one (B, T) batch shape; see model_train.c for each buffer's shape.
typedef struct speck_tacts speck_tacts;

// N:M sparse training (SR-STE, nm_train.c); off while m == 0. The masked tensors are the layers'
// 2-D matrices (q, k, v, output, gate, up, down: what `speck prune` prunes).
typedef struct {
    int n, m, every; // keep n of every m inputs; masks recomputed every `every` optimizer steps
    float lambda;    // λ_W of the sparse-refined term
    int64_t n_masked; // elements of the masked tensors
    int64_t *moff;    // (n_tensors) offset of tensor i in mask and w; -1: not masked
    uint8_t *mask;    // (n_masked) 1 = kept
    float *w;         // (n_masked) params ⊙ mask: what the forward and backward passes read
    bool stale;       // masks to be recomputed from the dense weights before the next pass
} speck_tnm;

struct speck_train_model {
    speck_train_config cfg;
    // The architecture and every hyper-parameter of the model written on export (the source's
    // for --init-from: RoPE type and scaling, context, name), kept in step with cfg.
    speck_hparams hp;
    int head_dim;
    speck_rope_type rope_type;
    float *rope_freq;    // (head_dim/2)
    float *rope_factors; // (head_dim/2) the source's rope_freqs.weight divisors, or NULL
    int n_tensors;
    speck_ttensor *tensors;
    int64_t n_params;
    float *params, *grads, *adam_m, *adam_v; // (n_params) each; moments zero until first step
    speck_tweights p, g;
    // The weights the passes read: p, or with N:M training p with the masked matrices (nm.w).
    speck_tweights f;
    speck_tnm nm;
    speck_tacts *acts;
    float aux_coef;  // weight of the load-balancing loss in the objective (experts only)
    double aux_loss; // its value in the last forward pass (mean over layers)
    char *src_path; // GGUF the model was loaded from (its tokenizer is the default vocabulary)
    // Optional (sparse fine-tuning, src/adapt/sparse_ft.c): when set, the backward pass gives
    // each matrix's weight gradient to wgrad instead of adding it to grads — the matrix by the
    // offset of its weights in params, with dy: (N, n_out) and x: (N, n_in), dW = dyᵀ·x — and
    // computes no embedding gradient; grads then receives the norms' gradients only.
    void (*wgrad)(void *ctx, int64_t offset, const float *dy, const float *x, int N, int n_in,
                  int n_out);
    void *wgrad_ctx;
};

// AdamW on any flat parameter buffer (speck_adamw_step for whole models, adapter fine-tuning in
// src/adapt/): the gradient norm, then the clip factor for step (errors on a bad step or a
// non-finite norm), then one update per tensor (decay: apply weight decay to it).
double speck_adamw_grad_norm(const float *g, int64_t n);
int speck_adamw_begin(const speck_adamw_params *p, int64_t step, double norm, float *clip);
void speck_adamw_update(const speck_adamw_params *p, int64_t step, float clip, bool decay,
                        float *w, const float *g, float *m, float *v, int64_t n);

// The two halves of speck_train_step around the loss, for losses other than the text
// cross-entropy (distill.c): train_forward_logits runs the forward pass over inputs (B, T) and
// returns the model's logits (B*T, n_vocab), owned by tm (NULL on error, with the error set);
// the caller may overwrite them with dL/dlogits (already scaled) and call train_backward_logits
// with the same batch, which ADDS the parameter gradients.
float *train_forward_logits(speck_train_model *tm, const int32_t *inputs, int B, int T);
void train_backward_logits(speck_train_model *tm, const int32_t *inputs, int B, int T);

// Map the tensor table over a flat buffer.
void speck_tweights_bind(speck_train_model *tm, float *base, speck_tweights *w);

// N:M training (nm_train.c). train_nm_refresh: recompute stale masks, then nm.w = params ⊙ mask
// (before every pass: the dense weights change between passes). train_nm_refine: add
// λ_W (1 - mask) ⊙ W to the gradients of the masked tensors (before the optimizer step).
// train_nm_after_step: optimizer step `step` (0-based) is done; mark the masks stale when the
// next one starts a new period of `every`. train_nm_free releases the state.
void train_nm_refresh(speck_train_model *tm);
void train_nm_refine(speck_train_model *tm);
void train_nm_after_step(speck_train_model *tm, int64_t step);
void train_nm_free(speck_train_model *tm);
// Tensor i's values as training last used them: masked (nm.w) when masked, else params.
const float *train_nm_values(speck_train_model *tm, int i);

#endif
