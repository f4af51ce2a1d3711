// speck adaptation API: LoRA adapters, fine-tuning, files, running, merging (docs/adaptation.md).
// Part of the public API: include "speck.h", which includes this file.
#ifndef SPECK_PUBLIC_ADAPT_H
#define SPECK_PUBLIC_ADAPT_H

#include "speck.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ------------------------------------------------------------------------------------------ */
/* Adapters: LoRA fine-tuning, files, running (docs/adaptation.md)                             */
/* ------------------------------------------------------------------------------------------ */
//
// A LoRA adapter adds ΔW = s·B·A to some of a base model's matrices W: (n_out, n_in), with
// A: (rank, n_in), B: (n_out, rank) in f32 and s = alpha / rank (times a user scale when run).
// Only A and B train; the base stays frozen in its stored type (F16, Q8_0, Q4_0, K-quants: with
// a quantized base this is QLoRA). Files: llama.cpp's adapter GGUF (what `llama-cli --lora`
// loads) and Hugging Face PEFT directories.

// The matrices of a layer an adapter can adapt (bit t of a target mask).
typedef enum {
    SPECK_LORA_Q,
    SPECK_LORA_K,
    SPECK_LORA_V,
    SPECK_LORA_O,
    SPECK_LORA_GATE,
    SPECK_LORA_UP,
    SPECK_LORA_DOWN,
    SPECK_LORA_N_TARGETS
} speck_lora_target;

typedef struct speck_lora speck_lora;

// "q,k,v,o,gate,up,down" (or llama.cpp's names attn_q, ..., ffn_down) -> a mask of targets;
// SPECK_ERR_ARG naming an unknown target.
int speck_lora_parse_targets(const char *list, unsigned *mask);
// A new adapter for base m: the targets of every layer at this rank, A drawn as PEFT does
// (uniform in ±1/sqrt(n_in), from seed), B zero (so the adapted model starts as the base).
// Errors: rank outside [1, 4096], no target, alpha <= 0.
speck_lora *speck_lora_new(const speck_model *m, int rank, float alpha, unsigned targets,
                           uint64_t seed);
void speck_lora_free(speck_lora *a);
// Every A then B, (layer, target) order: the trainable vector.
float *speck_lora_params(speck_lora *a);
int64_t speck_lora_n_params(const speck_lora *a);
float speck_lora_alpha(const speck_lora *a);
// Matrix A (b false; (rank, n_in)) or B ((n_out, rank)) of (layer, target), NULL when not
// adapted; *rank its rank and *numel its number of floats (either may be NULL).
float *speck_lora_matrix(speck_lora *a, int layer, int target, bool b, int *rank, int64_t *numel);
int speck_lora_n_layer(const speck_lora *a); // layers the adapter covers (the base may have more)
// Whether the adapter fits base m: same architecture, layer count, matrix shapes. The error
// names the first difference.
int speck_lora_check(const speck_lora *a, const speck_model *m);

// llama.cpp's adapter GGUF: general.type "adapter", general.architecture, adapter.type "lora",
// adapter.lora.alpha, tensors blk.N.attn_q.weight.lora_a (ne {n_in, rank}) and .lora_b
// (ne {rank, n_out}); speck writes them f32 and reads f32, f16, bf16 and q8_0 ones.
speck_lora *speck_lora_load(const char *path);
speck_lora *speck_lora_from_gguf(const speck_gguf *g, const char *path);
int speck_lora_save(const speck_lora *a, const char *path); // atomic (temporary + rename)
// Add the adapter's keys and tensors to a writer (checkpoints add their own after).
int speck_lora_write_gguf(const speck_lora *a, speck_gguf_writer *w);

// Hugging Face PEFT: adapter_config.json (peft_type LORA, r, lora_alpha, target_modules) and
// adapter_model.safetensors (base_model.model.model.layers.N.self_attn.q_proj.lora_A.weight,
// f32). Llama's q/k rows are in Hugging Face's rotate-half order there and interleaved in GGUF:
// B's rows are permuted both ways with the base's head_dim, so the base is needed. Export
// writes a temporary directory renamed into place; import checks the adapter against base.
int speck_lora_export_peft(const speck_lora *a, const speck_model *base, const char *dir);
speck_lora *speck_lora_import_peft(const char *dir, const speck_model *base);

// Running adapters unmerged: every forward pass of m computes x·Wᵀ + s·(x·Aᵀ)·Bᵀ for each
// attached adapter (s = scale · alpha / rank). The model keeps its own copy (a may be freed).
// Not while a forward pass runs; KV caches computed before hold the old model's keys (clear
// them). speck_model_lora_clear detaches every adapter: the base runs as loaded.
int speck_model_lora_add(speck_model *m, const speck_lora *a, float scale);
void speck_model_lora_clear(speck_model *m);
int speck_model_lora_count(const speck_model *m);

// Bake adapters into a copy of the base GGUF: W + Σ s_i B_i A_i, written as type (-1: each
// matrix keeps its type; merged matrices of a quantized base are requantized), every other
// tensor and key copied. Atomic.
int speck_lora_merge(const char *base_path, speck_lora *const *adapters, const float *scales,
                     int n, int type, const char *out_path);

// Fine-tuning: forward and backward through the frozen base (its matrices dequantized a block
// of rows at a time for each product, never held whole in f32) with the adapter's A and B in f32.
// Architectures llama and qwen2 (no sliding window); others are refused.
typedef struct speck_lora_trainer speck_lora_trainer;
// dropout: LoRA dropout on the adapter branch's input (0 off); seed draws its masks.
speck_lora_trainer *speck_lora_trainer_new(const speck_model *base, speck_lora *a, float dropout,
                                           uint64_t seed);
void speck_lora_trainer_free(speck_lora_trainer *tr);
// inputs, targets: (B, T); a negative target masks its position (no loss, no gradient). The loss
// is the mean over unmasked positions; the step ADDS grad_scale · d(loss)/d(A, B) to the
// gradients. rng_key picks the dropout masks (the CLI passes step and micro-batch).
int speck_lora_trainer_step(speck_lora_trainer *tr, const int32_t *inputs, const int32_t *targets,
                            int B, int T, float grad_scale, uint64_t rng_key, float *loss);
int speck_lora_trainer_loss(speck_lora_trainer *tr, const int32_t *inputs, const int32_t *targets,
                            int B, int T, float *loss);
float *speck_lora_trainer_grads(speck_lora_trainer *tr); // (n_params), the adapter's layout
void speck_lora_trainer_zero_grad(speck_lora_trainer *tr);
// AdamW (the schedule and clipping of speck train; weight decay on A and B).
int speck_lora_trainer_adamw(speck_lora_trainer *tr, const speck_adamw_params *p, int64_t step,
                             float *grad_norm);
// Checkpoint: the adapter GGUF plus adam_m.* / adam_v.* and train.step / train.seed; atomic.
int speck_lora_checkpoint_save(speck_lora_trainer *tr, const speck_train_state *st,
                               const char *path);
int speck_lora_checkpoint_load(speck_lora_trainer *tr, const char *path, speck_train_state *st);

// Fine-tuning data: token stream with a per-token loss mask, examples packed end to end.
// Formats by content: JSONL (every non-empty line a JSON object) with {"text"},
// {"prompt", "completion"} (loss on the completion and the EOS after it) or {"messages": [{"role",
// "content"}...]} rendered with the model's chat template (loss on the assistant turns only);
// anything else is plain text (one example, all trained). A malformed line is an error naming
// the file and line number.
typedef struct {
    int32_t *tok;   // (n) tokens of every example
    uint8_t *train; // (n) 1 where predicting tok[i] counts in the loss
    int64_t n;
    int64_t *start; // (n_examples + 1) example i is tokens [start[i], start[i + 1])
    int n_examples;
} speck_ft_data;
// template_name: a built-in chat template (speck_chat_template_name) for "messages", or NULL
// to detect the vocabulary's.
int speck_ft_data_parse(const char *text, size_t len, const char *path, const speck_vocab *v,
                        const char *template_name, speck_ft_data *out);
int speck_ft_data_load(const char *path, const speck_vocab *v, const char *template_name,
                       speck_ft_data *out);
void speck_ft_data_free(speck_ft_data *d);


#ifdef __cplusplus
}
#endif
#endif
