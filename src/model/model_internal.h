// Model internals shared by the loader, the forward pass and (later) training code.
#ifndef SPECK_MODEL_INTERNAL_H
#define SPECK_MODEL_INTERNAL_H

#include "speck.h"

// A weight matrix W: (n_out, n_in), rows of type `type` contiguous in the mapping.
// packed: the same matrix in the panel layout (speck_panel_pack) or NULL; the few-token forward
// path uses it when the ISA has panel kernels. Quantized matrices with panels had their mapped
// rows dropped, so their matmuls read the panels on every path (speck_matmul_panels); data stays
// valid (pages are read from the file again if touched) for everything else.
// lora: the attached adapters' term on this matrix, or NULL (src/adapt/lora_run.c).
typedef struct speck_lora_w speck_lora_w;
typedef struct {
    const void *data;
    speck_type type;
    int64_t n_in, n_out;
    const void *packed;
    const speck_lora_w *lora;
} speck_weight;

// The attached adapters' term on one matrix, all adapters concatenated along the rank:
// y += (x·Aᵀ)·Bt with at = Aᵀ: (n_in, rank) and bt: (rank, n_out), B transposed with each
// adapter's scale folded in (both transposed so that every inner loop is a vector update). target: which of a layer's matrices (speck_lora_target); slot: where its
// x·Aᵀ rows go in a thread's scratch (n tokens x speck_model.lora_rsum floats, target-major).
struct speck_lora_w {
    int rank, target, slot;
    int64_t n_in, n_out;
    const float *at, *bt;
};
// x·Aᵀ -> t: (n, rank); then y[i][o0..o1) += t[i]·Bt[:, o0..o1) for the n rows of y (ldy apart).
void speck_lora_w_xa(const speck_lora_w *w, const float *x, int n, float *t);
void speck_lora_w_add(const speck_lora_w *w, const float *t, int n, int64_t o0, int64_t o1,
                      float *y, int64_t ldy);

#include "model/arch.h"

typedef struct {
    const float *attn_norm, *ffn_norm;           // (n_embd)
    const float *q_norm, *k_norm;                // (head_dim) per-head RMSNorm before RoPE, or NULL
    const float *attn_post_norm, *ffn_post_norm; // (n_embd) output norms, or NULL
    speck_weight wq, wk, wv, wo; // (n_head*hd, n_embd) (n_kv*hd, n_embd) x2 (n_embd, n_head*hd)
    speck_weight wg, wu, wd;     // (n_ff, n_embd) x2, (n_embd, n_ff)
    const float *bq, *bk, *bv;   // Qwen2 biases or NULL
    // Mixture of experts (hp.n_expert > 0), src/model/moe.c:
    speck_weight router;       // (n_expert, n_embd) ffn_gate_inp
    speck_weight *experts;     // (n_expert, 3): each expert's gate, up (n_ff_exp, n_embd) and
                               // down (n_embd, n_ff_exp), slices of the stacked 3-D tensors
    const float *shexp_gate;   // (n_embd) the shared expert's sigmoid gate, or NULL
    speck_weight shexp[3];     // the shared expert's gate, up, down (n_ff_shexp), when present
    int n_swa;                   // this layer's window (hp.n_swa), or 0: the whole cache
    int rope;                    // RoPE table: 0 the model's, 1 the windowed layers' own
} speck_layer;

struct speck_model {
    speck_gguf *g;
    const speck_arch *arch; // the architecture's description
    speck_hparams hp;
    speck_weight tok_embd; // (n_vocab, n_embd)
    speck_weight output;   // (n_vocab, n_embd); == tok_embd when tied
    const float *out_norm; // (n_embd)
    speck_layer *layers;
    float *rope_freq; // (head_dim/2) angle per position unit for each rotated pair, scaling applied
    float *rope_freq_long; // LongRoPE: the same with the long factors (contexts > rope_orig_ctx)
    float *rope_freq_swa;  // the windowed layers' own frequencies (gemma3), or NULL
    const float *rope_factors; // (head_dim/2) the file's rope_freqs.weight divisors, or NULL
    const float *rope_long, *rope_short; // (head_dim/2) LongRoPE's divisors, or NULL
    float **owned;                       // f32 copies of norm/bias vectors stored in other types
    int n_owned;
    void *panels; // the weights' panel copies (speck_weight.packed point into it), or NULL
    struct speck_lora_run *lora; // attached adapters (src/adapt/lora_run.c), or NULL
    int lora_rsum; // Σ over targets of the largest combined rank: a thread's x·Aᵀ scratch per token
    speck_weight *experts; // every layer's experts (speck_layer.experts point into it), or NULL
};

// Write general.architecture, general.name (when set) and every <arch>.* hyper-parameter key the
// loader reads (model.c), so the file loads back with these hparams. The caller adds
// general.file_type, the tokenizer and the tensors (rope_freqs.weight included, when the model
// has one). The one writer for init, convert, train export and checkpoints.
int speck_hparams_write(speck_gguf_writer *w, const speck_hparams *hp);

// Exchange weight `name` of m ("blk.3.ffn_down.weight", "output.weight", "token_embd.weight")
// with *w, which must have its shape: the model computes with w's data and type from then on,
// and *w receives the weight it had, to swap back. w->packed NULL runs the row kernels. For
// calibration between forward passes (src/calib/), never while one runs.
int speck_model_swap_weight(speck_model *m, const char *name, speck_weight *w);

#endif
