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

// CorDA initialisation (Yang et al. 2024, docs/adaptation.md): for each adapted W: (n_out, n_in)
// the covariance C = Σ x xᵀ of its input over the calibration tokens (run through m in windows
// of ctx), Cd = C + damp·mean(diag C)·I (damp 0.01, doubled until Cd is positive definite),
// W·Cd = U Σ Vᵀ, and the adapter takes r components σ_c u_c (v_cᵀ Cd⁻¹) split with equal norms:
// b_c = g_c u_c, a_c = g_c x_c / ||x_c||, x_c = Cd⁻¹ v_c, g_c = √(σ_c ||x_c|| / s) (s = alpha /
// rank; the paper's √σ_c on each side leaves the balance to C's scale): KPM the r smallest
// (calibrate on the base's own domain: its large components stay frozen), IPM the r largest
// (calibrate on the task's data). The base must then become W − s·B·A (speck_lora_merge with
// scale −1) so the adapted model starts as the base. Fewer tokens than max(ctx, the widest
// adapted input) are refused (C would be singular by construction).
typedef enum { SPECK_CORDA_KPM, SPECK_CORDA_IPM } speck_corda_mode;
speck_lora *speck_corda_init(const speck_model *m, const int32_t *tokens, int64_t n_tokens,
                             int ctx, int rank, float alpha, unsigned targets,
                             speck_corda_mode mode, bool progress);
// One matrix: W (n_out, n_in) row-major f32, C (n_in, n_in) float64 (not modified) -> a (rank,
// n_in), b (n_out, rank) under scale s; *damp: the damping used (fraction of the mean diagonal).
int speck_corda_factor(const float *W, int64_t n_out, int64_t n_in, const double *C, int rank,
                       speck_corda_mode mode, float scale, float *a, float *b, double *damp);

// LQ-LoRA initialisation (Guo et al. 2023, docs/adaptation.md): each adapted W ≈ Q + s·B·A, Q
// quantized (the new base, frozen) and s·B·A the adapter's start, by alternating from Q = 0:
// L = the best rank-r approximation of (W − Q)·D (SVD; D = diag(√imp) with imp a matrix's
// importance, an imatrix's mean squared inputs normalised to mean 1, or D = I), unscaled by
// D⁻¹; Q = quantize(W − L) (imp steering the quantizer's scale searches); stopping when
// ||(W − Q − L)·D||_F stops decreasing (the first iterate that does not improve is dropped) or
// after max_iter. Factors split as CorDA's (equal norms). max_iter 0: Q = quantize(W) and a, b
// untouched (plain QLoRA). W: (n_out, n_in) f32; a: (rank, n_in), b: (n_out, rank) written when
// max_iter > 0; q: n_out rows of speck_type_row_size(type, n_in) bytes; err (max_iter, or 1
// when 0): ||(W − Q − L)·D||² / ||W·D||² per iteration run, *n_iter of them.
typedef struct {
    speck_type type;         // Q's type (its block must divide n_in)
    int rank, max_iter;
    float scale;             // the adapter's alpha / rank
    const float *col_weight; // (n_in) importance or NULL
    // 0: the exact SVD (LAPACK dgesdd of the whole matrix) at every alternation; > 0: a
    // truncated one by subspace iteration with this many power rounds per alternation,
    // warm-started from the previous alternation's subspace (rank + 8 vectors): for matrices
    // whose full SVD is too slow to repeat. The test bounds its error against the exact one.
    int svd_power;
} speck_lqlora_params;
int speck_lqlora_factor(const float *W, int64_t n_out, int64_t n_in,
                        const speck_lqlora_params *p, float *a, float *b, void *q, double *err,
                        int *n_iter);
// The whole model: every targeted matrix decomposed as above, the adapter returned and the new
// base (m's file with those matrices replaced by their Q, every other key and tensor copied)
// written atomically to base_out. bpw 0: every matrix as type; bpw > 0: one type per matrix
// among Q2_K..Q6_K and Q8_0 (Q4_0 / Q5_0 / Q8_0 for rows that are not 256-multiples) minimizing
// the summed ||(W − Q − L)·D||² within bpw bits per adapted weight (the paper's integer program,
// solved exactly by the knapsack of quantize --target-bpw); it runs the decomposition once per
// candidate. imatrix: entries named blk.N.attn_q.weight ..., or NULL.
typedef struct {
    int rank;
    float alpha;
    unsigned targets;
    speck_type type;
    double bpw;
    int max_iter;                 // 0: the plain QLoRA baseline (B = 0, A drawn from seed)
    uint64_t seed;
    const speck_imatrix *imatrix;
    bool progress;
} speck_lqlora_opts;
typedef struct {
    int n_matrices;
    double bpw;        // of the adapted matrices as written
    double err;        // Σ ||(W − Q − L)·D||² over them
    double err_quant;  // Σ ||(W − quantize(W))·D||² with the same types (the QLoRA base's)
} speck_lqlora_report;
speck_lora *speck_lqlora_init(const speck_model *m, const speck_lqlora_opts *o,
                              const char *base_out, speck_lqlora_report *report);

// Block-LoRA (Zhou et al. 2025, docs/adaptation.md): each rank-r adapter split into K blocks,
// ΔW = s·Σ_i B_i·A_s, the down-projection block A_s: (r/K, n_in) shared by the K up-projection
// blocks B_i: (n_out, r/K). In memory and in checkpoints the adapter is expanded (A = K tied
// copies of A_s); speck_lora_trainer_set_block_share makes the trainer sum the copies' gradients
// and update A_s once. check: every rank a multiple of K; tie: copy block 0 of every A to the
// others; fold: grads' A blocks summed into block 0 (the others zeroed; folding twice changes
// nothing); n_trainable: the distinct parameters; collapse: the equal rank-r/K LoRA
// (B' = Σ_i B_i, A' = A_s, alpha / K) that every LoRA runner (llama.cpp too) loads.
int speck_lora_block_check(const speck_lora *a, int K);
void speck_lora_block_tie(speck_lora *a, int K);
void speck_lora_block_fold(const speck_lora *a, int K, float *grads);
int64_t speck_lora_block_n_trainable(const speck_lora *a, int K);
speck_lora *speck_lora_block_collapse(const speck_lora *a, int K);

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
// Block-LoRA with K shared blocks (1: plain LoRA): checks the ranks, ties A's blocks; AdamW
// then folds the gradients (speck_lora_block_fold) and updates each shared block once.
int speck_lora_trainer_set_block_share(speck_lora_trainer *tr, int K);
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

/* ------------------------------------------------------------------------------------------ */
/* Fine-tuning deltas: extract, compress (DARE, DAREx-q, ComPEFT), apply (docs/adaptation.md)   */
/* ------------------------------------------------------------------------------------------ */
//
// A delta holds tuned − base for every tensor of a model that fine-tuning changed (absent
// tensors: zero), in f32 while in memory. Compression keeps vectors (norms) dense and sparsifies
// matrices (2-D tensors):
//   DARE ("Language Models are Super Mario", Yu et al. 2024): drop each element with probability
//   p, multiply the kept ones by 1/(1-p) (the expected delta is unchanged);
//   DAREx-q ("DARE the Extreme", Deng et al. 2025): the same mask, kept ones times 1/q for a
//   chosen q > 1-p (a smaller factor: at p = 0.99 1/(1-p) = 100 overshoots);
//   ComPEFT (Yadav et al. 2023): keep the top density·n elements by magnitude, then store only
//   their signs and one magnitude per tensor: alpha · std(delta), or (alpha <= 0) the mean kept
//   magnitude, which minimises the squared error against the dense delta.
// Files: GGUF with general.type "delta" (keys and the sparse layout in docs/adaptation.md); a
// sparse tensor's positions cost ~1 byte each (gap-coded) or n/8 bytes (a bitmap), whichever
// is smaller; values f16/f32, ComPEFT 1 sign bit each plus the scale.
typedef struct speck_delta speck_delta;

typedef enum {
    SPECK_DELTA_DENSE,
    SPECK_DELTA_DARE,
    SPECK_DELTA_DAREX_Q,
    SPECK_DELTA_COMPEFT,
    SPECK_DELTA_SFT, // trained sparse (SpIEL, S2FT, or a sum of deltas): plain sparse values
} speck_delta_method;

// tuned − base, tensor by tensor (any stored type, dequantized). The models must have the same
// general.architecture and the same tensors (names and shapes); the error names the first
// difference. For f32 models each stored difference d is chosen so that base + d == tuned
// exactly (d = tuned − base, nudged by an ulp where that sum rounds away; such a d always
// exists when tuned is within a factor 2 of base); *n_inexact (may be NULL) counts elements
// where none does (a weight crossed or neared 0): they are restored within two ulps of
// |tuned − base|, i.e. the step itself to f32 precision.
speck_delta *speck_delta_extract(const char *base_path, const char *tuned_path,
                                 int64_t *n_inexact);
void speck_delta_free(speck_delta *d);
// DARE / DAREx-q on a dense delta: element j of a matrix is kept when a hash of (seed, the
// tensor's name, j) is >= p (reproducible for a seed, independent of threads and tensor order);
// kept values times rescale (<= 0: 1/(1-p), DARE). p in [0, 1).
int speck_delta_dare(speck_delta *d, float p, uint64_t seed, float rescale);
// ComPEFT on a dense delta: density in (0, 1]; alpha as above.
int speck_delta_compeft(speck_delta *d, float density, float alpha);
// Write atomically; dense values and sparse values as value_type (SPECK_TYPE_F32 or F16).
int speck_delta_save(const speck_delta *d, const char *path, speck_type value_type);
// Load and validate every field (errors name the file and the field or tensor).
speck_delta *speck_delta_load(const char *path);
speck_delta *speck_delta_from_gguf(const speck_gguf *g, const char *path);
// base + scale · delta into a copy of the base GGUF (every key and untouched tensor copied);
// changed matrices written as type (-1: the base tensor's type, requantized), vectors keep
// theirs. Errors: another architecture, a delta tensor the base lacks or has in another shape.
// Atomic: nothing is left at out_path on error.
int speck_delta_apply(const char *base_path, const speck_delta *d, float scale, int type,
                      const char *out_path);

typedef struct {
    speck_delta_method method;
    const char *arch;
    float p, rescale;     // DARE / DAREx-q
    uint64_t seed;        // DARE / DAREx-q
    float density, alpha; // ComPEFT
    int n_tensors;        // tensors the delta changes
    int64_t n_elements;   // their elements
    int64_t n_stored;     // elements with a stored value (dense: all; sparse: kept)
    int64_t n_nonzero;    // nonzero values
    const char *sft;      // SFT: "spiel", "s2ft" or "sum"
    uint64_t base_fp;     // fingerprint of the base (0: not recorded)
} speck_delta_info;
void speck_delta_get_info(const speck_delta *d, speck_delta_info *info);
const char *speck_delta_method_name(speck_delta_method m); // "dense", "dare", "darex-q", "compeft", "sft"
// Composition (LT-SFT's rule, Ansell et al. 2022): add d into acc tensor by tensor: a tensor acc
// lacks is copied, one both hold is summed (union of positions; dense when either is dense).
// Both must be for the same architecture and, where both say, the same base (fingerprint).
// acc becomes method "sft" (sub-method "sum") unless both were dense.
int speck_delta_add(speck_delta *acc, const speck_delta *d);
// A new empty delta for an architecture (to add deltas into).
speck_delta *speck_delta_new(const char *arch);
// Load a model with n deltas (files) added to it (`--delta`): their sum is applied onto the base
// in a temporary file ($TMPDIR or /tmp, matrices keep their types as in speck_delta_apply),
// which the model maps and which is unlinked at once; the same weights as `speck delta apply`
// then speck_model_load_ex. n = 0: speck_model_load_ex.
speck_model *speck_model_load_deltas(const char *path, const char *const *deltas, int n,
                                     unsigned flags);

/* ------------------------------------------------------------------------------------------ */
/* Sparse fine-tuning: SpIEL, S2FT (docs/adaptation.md, "Sparse fine-tuning")                  */
/* ------------------------------------------------------------------------------------------ */
//
// Only k chosen elements of the base's matrices train, as a delta δ over them: W = W0 + δ at
// those positions. The optimiser state is the k values, their positions, the base values there
// and their AdamW moments. The forward and backward pass are speck train's f32 model's; while a
// sparse trainer is attached its backward computes each matrix's weight gradient only at the
// trained positions (no dense gradient of the model; docs/adaptation.md).
//   SpIEL (Ansell et al. 2024): k random positions per target matrix (k/n the density); every
//     update_every steps drop the ζ·k active positions of smallest |δ| and regrow as many with
//     the largest accumulated gradient |Σ g| over the last accum_steps steps (SpIEL-AG), among
//     candidates: the k inactive positions of largest |g| in the first of those steps. ζ decays
//     from drop_fraction to 0 by the last step (cosine). Regrown values start at 0 with zero
//     moments; dropped ones return to the base value.
//   S2FT (Yang et al. 2024): per layer a random set of attention heads and FFN channels; the
//     columns of attn_output (head dims) and ffn_down (channels) they feed train, nothing else.
typedef enum { SPECK_SPARSE_SPIEL, SPECK_SPARSE_S2FT } speck_sparse_method;

typedef struct {
    speck_sparse_method method;
    double density;      // trained fraction of the target matrices' elements, in (0, 1]
    int64_t n_params;    // > 0: train this many instead (overrides density)
    unsigned targets;    // SpIEL: SPECK_LORA_* bits (S2FT always trains o and down)
    int update_every;    // SpIEL: steps between drop/regrow (default 20; 0 = never)
    int accum_steps;     // SpIEL-AG: gradient steps accumulated before a regrow (5)
    float drop_fraction; // SpIEL: initial ζ (0.2)
    int total_steps;     // the run's steps (ζ's schedule)
    uint64_t seed;
} speck_sparse_params;

speck_sparse_params speck_sparse_default(void);
// Parse "spiel" / "s2ft"; error naming the method otherwise.
int speck_sparse_parse_method(const char *name, speck_sparse_method *m);

typedef struct speck_sparse_ft speck_sparse_ft;
// Choose the positions over tm's current weights (they become the base W0) and attach to tm:
// from then on speck_train_step's backward adds the gradient at those positions here (and
// gives tm no matrix or embedding gradients) until speck_sparse_ft_free. Errors: density
// outside (0, 1], a budget larger than the targets, a model with experts.
speck_sparse_ft *speck_sparse_ft_new(speck_train_model *tm, const speck_sparse_params *p);
void speck_sparse_ft_free(speck_sparse_ft *s);
int64_t speck_sparse_ft_n_params(const speck_sparse_ft *s);
// After speck_train_step(s) (micro-batches accumulate): clip by the norm of the gradient at the
// trained positions, one AdamW step on δ (weight decay pulls δ to 0), write W0 + δ into tm,
// zero the gradient, then (SpIEL) a drop-and-regrow when due. Steps must come in order from 0.
// *grad_norm may be NULL.
int speck_sparse_ft_step(speck_sparse_ft *s, const speck_adamw_params *p, int64_t step,
                         float *grad_norm);
// The gradient at the trained positions as of the last speck_sparse_ft_step (before clipping),
// in the order of speck_sparse_ft_delta's tensors and positions (tests).
const float *speck_sparse_ft_grad(const speck_sparse_ft *s);
// δ as a sparse delta (method "sft"; positions with δ == 0 are kept, so the mask is whole).
speck_delta *speck_sparse_ft_delta(const speck_sparse_ft *s);
// One drop-and-regrow now, ζ given, from acc (the accumulated gradient at the candidates) —
// the rule speck_sparse_ft_step runs; exposed for the numpy reference test. Works on one
// tensor's arrays: idx (k, increasing) and val (k) of the active set, cand (c, increasing) with
// acc (c); returns in new_idx (k, increasing) the positions kept or grown and in grown (k) 1
// where grown. Drops floor(zeta·k) (at most c).
int64_t speck_sparse_regrow(const int64_t *idx, const float *val, int64_t k, const int64_t *cand,
                            const float *acc, int64_t c, float zeta, int64_t *new_idx,
                            uint8_t *grown);


#ifdef __cplusplus
}
#endif
#endif
