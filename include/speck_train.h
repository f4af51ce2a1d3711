// speck training API: models trained and distilled in C, checkpoints, data, the BPE trainer
// (docs/training.md). Part of the public API: include "speck.h", which includes this file.
#ifndef SPECK_PUBLIC_TRAIN_H
#define SPECK_PUBLIC_TRAIN_H

#include "speck.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ------------------------------------------------------------------------------------------ */
/* Training                                                                                    */
/* ------------------------------------------------------------------------------------------ */
//
// Llama-architecture models trained in f32 on CPU (docs/training.md). A speck_train_model owns
// its parameters, their gradients and the AdamW moments, each one contiguous f32 buffer holding
// the tensors in a fixed order (speck_train_tensor_name). The forward pass computes exactly the
// function of speck_forward (RMSNorm, RoPE, GQA causal attention, SwiGLU, tied or untied head),
// and with n_expert > 0 that of a Mixtral-style mixture of experts in every layer's FFN; `arch`
// selects another family's layer (q/k/v biases, q/k norms, Qwen2-MoE's shared expert).

typedef struct {
    int n_vocab, n_ctx, n_embd, n_layer, n_head, n_head_kv, n_ff;
    float norm_eps, rope_freq_base;
    bool tied_output;
    // Mixture of experts (0: a dense FFN): every layer's FFN is a router (n_expert, n_embd) and
    // n_expert SwiGLU experts of width n_ff; each token runs its n_expert_used most probable
    // experts (softmax over all, then top-k; no capacity limit), their outputs weighted by their
    // probabilities, renormalised over the chosen ones when moe_norm (Mixtral; OLMoE does not).
    int n_expert, n_expert_used;
    bool moe_norm;
    // The architecture (docs/training.md, "Architectures"): its GGUF name, "" for "llama". Its
    // description (src/model/arch_*.c) gives the layer's tensors and RoPE layout: "qwen2"
    // (q/k/v biases, NEOX RoPE), "qwen3" (RMSNorm over each q and k head before RoPE),
    // "qwen2moe" (experts plus a shared expert of width n_ff_shexp behind a sigmoid gate; biases),
    // "qwen3moe" (per-head q/k norms, experts), "olmoe" (q/k norms over the whole projections,
    // experts). Families with other layers (gemma, phi3) are refused.
    char arch[32];
    int head_dim;   // 0: n_embd / n_head
    bool qkv_bias;  // q/k/v projections with biases (always for qwen2 and qwen2moe)
    int n_ff_shexp; // the shared expert's width (qwen2moe; required there, 0 elsewhere)
} speck_train_config;

typedef struct speck_train_model speck_train_model;

// Fill a config from a preset's shapes (n_vocab can then be replaced by the tokenizer's); a preset
// with experts gives n_expert, n_expert_used, n_ff = the experts' width and its family's moe_norm.
speck_train_config speck_train_config_from_preset(const speck_preset *p);
// A model with random weights: matrices ~ N(0, 0.02) (output projections scaled by
// 1/sqrt(2 n_layer)), norms 1; identical for a seed whatever the thread count.
speck_train_model *speck_train_model_new(const speck_train_config *cfg, uint64_t seed);
// A model initialised from a GGUF model of any supported type (weights dequantized to f32).
// Architectures llama (with experts: Mixtral), qwen2, qwen3, qwen2moe, qwen3moe, olmoe, without a
// sliding window; the file's RoPE settings are kept.
speck_train_model *speck_train_model_load(const char *path);
void speck_train_model_free(speck_train_model *tm);
const speck_train_config *speck_train_model_config(const speck_train_model *tm);

// Parameter tensors in storage order. shape: (ne1, ne0) row-major, ne1 = 1 for vectors.
int speck_train_n_tensors(const speck_train_model *tm);
const char *speck_train_tensor_name(const speck_train_model *tm, int i); // GGUF tensor name
int64_t speck_train_tensor_numel(const speck_train_model *tm, int i);
// Pointer to tensor i's values (params) or gradient (grad = true).
float *speck_train_tensor(speck_train_model *tm, int i, bool grad);
int64_t speck_train_n_params(const speck_train_model *tm);
float *speck_train_params(speck_train_model *tm); // (n_params)
float *speck_train_grads(speck_train_model *tm);  // (n_params)
void speck_train_zero_grad(speck_train_model *tm);

// Mean next-token cross-entropy of B sequences of T tokens.
//   inputs, targets: (B, T) ids; targets[b][t] is the token after inputs[b][t], or -1 to mask
//   the position (no loss, no gradient: `speck finetune --full` masks prompts); the mean is
//   over the unmasked positions (0 when there are none).
// speck_train_step also back-propagates, ADDING grad_scale * d(loss)/d(param) to the gradients
// (grad_scale = 1/k for k accumulated micro-batches). T must be <= n_ctx.
// A mixture of experts also minimises coef · aux (speck_train_set_aux_coef): the gradients are
// those of loss + coef · aux, while *loss stays the cross-entropy (comparable with a dense model).
int speck_train_loss(speck_train_model *tm, const int32_t *inputs, const int32_t *targets, int B,
                     int T, float *loss);
int speck_train_step(speck_train_model *tm, const int32_t *inputs, const int32_t *targets, int B,
                     int T, float grad_scale, float *loss);
// The Switch Transformer load-balancing loss of the last forward pass (0 for a dense model):
// per layer n_expert · Σ_i f_i · P_i over the batch's B·T tokens (masked ones too: they are
// routed), f_i the fraction of the token-choices that went to expert i, P_i the mean router
// probability of expert i; averaged over the layers, so 1 is perfect balance and n_expert /
// n_expert_used total collapse. The top-k choice is a constant: gradients flow through P only.
double speck_train_aux_loss(const speck_train_model *tm);
// Its coefficient in the objective (default 0.01; 0 turns it off). Fails when coef < 0.
int speck_train_set_aux_coef(speck_train_model *tm, float coef);

typedef struct {
    float lr;         // peak learning rate
    float min_lr;     // cosine floor
    int warmup_steps; // linear warmup from lr/warmup to lr
    int total_steps;  // cosine decay ends here (min_lr afterwards)
    float beta1, beta2, eps;
    float weight_decay; // decoupled (AdamW); applied to matrices only unless decay_all
    bool decay_all;     // also decay norms and the token embedding
    float grad_clip;    // clip the global gradient norm to this; <= 0: off
} speck_adamw_params;

speck_adamw_params speck_adamw_default(void); // lr 1e-3, betas 0.9/0.95, eps 1e-8, wd 0.1, clip 1
// Learning rate at optimizer step `step` (0-based).
float speck_lr_at(const speck_adamw_params *p, int64_t step);
// Global L2 norm of the gradients.
double speck_train_grad_norm(speck_train_model *tm);
// Clip the gradients, then one AdamW update as step number `step` (0-based; bias correction
// uses step + 1) — the same arithmetic as torch.optim.AdamW. *grad_norm (may be NULL) gets the
// norm before clipping.
int speck_adamw_step(speck_train_model *tm, const speck_adamw_params *p, int64_t step,
                     float *grad_norm);

// N:M sparse training with SR-STE (Zhou et al. 2021; docs/sparsity.md, "Trained sparsity"):
// the layers' 2-D matrices (q, k, v, output, gate, up, down, as `speck prune` chooses them) are
// used as W̃ = W ⊙ E, E keeping the n largest |w| of every m consecutive inputs of a row (ties:
// the lower position). The forward and backward passes read W̃; the gradient stored for W is
// dL/dW̃ (straight-through estimator), and speck_adamw_step first adds the sparse-refined term
// lambda · (1 - E) ⊙ W to it (before clipping), then updates the dense W. E is recomputed from
// the dense W before the first pass and after every `every`-th optimizer step (steps numbered
// from 0: after steps every-1, 2·every-1, ...). Exports write W̃; checkpoints the dense W.
typedef struct {
    int n, m;     // 1 <= n < m <= 64; m = 0 turns N:M training off
    int every;    // mask period in optimizer steps (>= 1; the paper recomputes every step)
    float lambda; // λ_W >= 0 (the paper's 2e-4; 0 is the plain straight-through estimator)
} speck_nm_params;

// Start (or, with p NULL or p->m == 0, stop) N:M training. SPECK_ERR_ARG when n, m, every or
// lambda are out of range, or a masked matrix's rows are not a multiple of m (naming it).
int speck_train_set_nm(speck_train_model *tm, const speck_nm_params *p);
speck_nm_params speck_train_nm(const speck_train_model *tm); // m == 0 when off
// Tensor i's current mask (numel bytes, 1 = kept), or NULL when tensor i is not masked.
const uint8_t *speck_train_nm_mask(speck_train_model *tm, int i);

// Online logit distillation (docs/training.md, "Distilled draft models"): a student (a draft
// model) learns a teacher's next-token distributions instead of the text's next tokens, the
// teacher run forward (no gradient) on the same batch. Per position with a target, p/q the
// teacher's/student's softmax(logits / T), r the student's softmax(logits):
//   loss = mean[(1 - ce_weight) T² KL(p || q) + ce_weight (-log r[target])]
// (T² keeps the gradient's size as T grows.) Targets of -1 mask positions, as in training.
typedef struct {
    float temperature; // T > 0; 1 = the distributions the models sample from
    float ce_weight;   // in [0, 1]: 0 pure distillation, 1 ordinary text training
} speck_distill_params;

// 0, or SPECK_ERR_ARG naming both sizes when the vocabularies differ (only the token count is
// visible here; the CLI also compares the tokens' texts).
int speck_distill_check(const speck_train_model *student, const speck_train_model *teacher);
// One distillation forward + backward on inputs/targets (B, T) as speck_train_step: ADDS
// grad_scale * dloss/dparam to the student's gradients; the teacher's gradients are untouched
// (its activations are overwritten). loss, kl (mean KL(p || q), without T²) and ce (mean text
// cross-entropy of the student) may be NULL.
int speck_distill_step(speck_train_model *student, speck_train_model *teacher,
                       const int32_t *inputs, const int32_t *targets, int B, int T,
                       const speck_distill_params *p, float grad_scale, float *loss, float *kl,
                       float *ce);

// Checkpoints: an f32 model GGUF (loadable by speck_model_load) plus the AdamW moments and the
// step/seed, written atomically (temp file + fsync + rename: a killed write leaves the previous
// checkpoint intact). vocab_path: GGUF whose tokenizer.* keys are copied (NULL: none).
typedef struct {
    int64_t step;  // optimizer steps done
    uint64_t seed; // data/initialisation seed of the run
} speck_train_state;

int speck_train_checkpoint_save(speck_train_model *tm, const speck_train_state *st,
                                const char *vocab_path, const char *path);
// Restore params, moments and state into tm; fails when the checkpoint's shapes differ.
int speck_train_checkpoint_load(speck_train_model *tm, const char *path, speck_train_state *st);
// Write a normal model GGUF (architecture "llama", llama.cpp key names), matrices as `type`
// (f32, f16, bf16, q8_0; norms f32), with the tokenizer.* keys of vocab_path (whose token count
// must equal n_vocab), atomically. With N:M training the masked matrices are written masked
// (keys speck.prune.method "sr-ste", speck.prune.sparsity "N:M"); then type may also be
// SPECK_TYPE_S24_Q8 (2:4 only): the masked matrices in that sparse format, the other matrices
// f16 (llama.cpp cannot load S24_Q8; export f16 as well for a dense copy).
int speck_train_export(speck_train_model *tm, const char *vocab_path, speck_type type,
                       const char *name, const char *path);

// Token data for training: every file under dir whose name matches glob (fnmatch, recursive,
// sorted by path) is tokenized and followed by the vocabulary's EOS (if any). A file goes to the
// validation split when a hash of its path relative to dir falls under val_fraction, so whole
// files (modules) are held out. The result is cached in cache_path (NULL: no cache), reused
// while the vocabulary, the file list, sizes, mtimes and val_fraction are unchanged.
typedef struct {
    int32_t *train, *val;
    int64_t n_train, n_val;
    int n_files_train, n_files_val;
    bool from_cache;
} speck_token_data;

int speck_token_data_build(const char *dir, const char *glob, const speck_vocab *v,
                           double val_fraction, const char *cache_path, speck_token_data *out);
void speck_token_data_free(speck_token_data *d);
// Sample row b of micro-batch `micro` at optimizer step `step`: T+1 consecutive training
// tokens at an offset drawn from (seed, step, micro, b) only, so a resumed run sees the same
// batches. in, tg: (T) each. Fails when the split holds fewer than T+1 tokens.
int speck_token_data_sample(const speck_token_data *d, uint64_t seed, int64_t step, int micro,
                            int b, int T, int32_t *in, int32_t *tg);

// Byte-level BPE tokenizer training (GPT-2 pre-tokenizer, merges by pair frequency).
typedef struct {
    int vocab_size;              // total tokens incl. 256 byte tokens and specials
    const char *const *specials; // special tokens (CONTROL), e.g. "<|endoftext|>"; the first is
    int n_specials;              // also bos/eos
    int min_frequency;           // pairs seen fewer times are not merged (default 2)
} speck_bpe_train_params;

typedef struct speck_bpe_trainer speck_bpe_trainer;
speck_bpe_trainer *speck_bpe_trainer_new(void);
void speck_bpe_trainer_free(speck_bpe_trainer *t);
// Count the pre-tokenized words of a text (call once per file).
int speck_bpe_trainer_add(speck_bpe_trainer *t, const char *text, size_t len);
// Learn merges and write a vocabulary GGUF (tokenizer.ggml.model "gpt2", pre "gpt-2") atomically.
int speck_bpe_trainer_save(speck_bpe_trainer *t, const speck_bpe_train_params *p, const char *path);

#ifdef __cplusplus
}
#endif

#endif
