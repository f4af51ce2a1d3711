// speck compression API: quantization, calibration and pruning (docs/quantization.md, docs/calibration.md, docs/sparsity.md).
// Part of the public API: include "speck.h", which includes this file.
#ifndef SPECK_PUBLIC_QUANT_H
#define SPECK_PUBLIC_QUANT_H

#include "speck.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ------------------------------------------------------------------------------------------ */
/* Quantization: llama-quantize's file types, importance matrices, calibration (docs/convert.md) */
/* ------------------------------------------------------------------------------------------ */

// llama-quantize's file types. A name as llama-quantize takes it (case-insensitive): Q2_K,
// Q3_K_S, Q3_K_M, Q3_K_L, Q4_K_S, Q4_K_M, Q5_K_S, Q5_K_M, Q6_K, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1,
// IQ4_NL, IQ4_XS, F16, BF16, F32, and the aliases Q3_K, Q4_K, Q5_K of the _M mixes -> its
// general.file_type code (llama.cpp's LLAMA_FTYPE_MOSTLY_*), or -1. Also speck's own DGQ4
// (code 1024: DGQ4 matrices, the head in Q6_K; llama.cpp cannot load such a file).
int speck_ftype_from_name(const char *name);
const char *speck_ftype_name(int ftype); // canonical name; NULL for a code speck does not write
int speck_ftype_base(int ftype);         // the speck_type most matrices get; -1 if unknown
const char *speck_ftype_list(void);      // the names, for messages
// Whether a file type conversion touches a tensor: matrices named "*weight" except norms (as
// llama-quantize); vectors and everything else keep their type.
bool speck_ftype_quantizes(const char *name, int n_dims);
// What a file type's per-tensor mix depends on.
typedef struct {
    const char *arch;      // general.architecture
    int n_layer, n_head, n_head_kv;
    bool has_output;       // false: token_embd doubles as the head and is treated as it
    bool has_imatrix;      // a few rules (Q4_0/Q5_0, IQ4 ffn_down) differ with an imatrix
} speck_mix_info;
// The type llama-quantize's mix gives matrix `name` (rows of ne0 values) in a file of type
// ftype, before the fallback for rows the type's block does not divide (speck_type_for_row).
// The rules (which tensors get more bits) are listed in docs/convert.md.
speck_type speck_ftype_tensor_type(int ftype, const speck_mix_info *mi, const char *name,
                                   int64_t ne0);

// Importance matrices, in llama.cpp's imatrix file formats: per weight matrix, the sum over
// calibration tokens of each input column's squared activation, and the number of tokens.
typedef struct speck_imatrix speck_imatrix;
// Read either format llama-imatrix writes: GGUF (general.type "imatrix"; tensors NAME.in_sum2
// (n_in, n_mat) and NAME.counts (1, n_mat) f32; imatrix.datasets / chunk_count / chunk_size) or
// the legacy binary ("dat": i32 entries, then per entry i32 name length, name, i32 ncall, i32
// n, n f32 of sum/count*ncall; then optionally i32 chunks, i32 length, dataset name). Every
// count, length and value is validated (finite, >= 0); errors name the file and entry.
speck_imatrix *speck_imatrix_load(const char *path);
// The same from n bytes in memory (`what` names them in messages): the fuzzing entry point.
speck_imatrix *speck_imatrix_parse(const void *data, size_t n, const char *what);
void speck_imatrix_free(speck_imatrix *im);
int speck_imatrix_n_entries(const speck_imatrix *im);
const char *speck_imatrix_entry_name(const speck_imatrix *im, int i);
// Per-column mean squared activation of matrix `name` (sum / tokens, n_in values: what
// llama-quantize hands its quantizers), or NULL when the file has no entry for it. *n_in may be
// NULL.
const float *speck_imatrix_get(const speck_imatrix *im, const char *name, int64_t *n_in);
// Tokens the sums of entry `name` were collected over (0 if absent).
int64_t speck_imatrix_count(const speck_imatrix *im, const char *name);
// Per-column mean E[x_j] and variance E[x_j^2] - E[x_j]^2 of matrix `name`'s input (n_in
// values each, owned by im), for DSnoT. Only an imatrix collected by speck_imatrix_compute has
// them: it also sums the activations themselves, which neither file format stores (llama.cpp
// reads the files; the extra sums are never written). SPECK_ERR_ARG when the entry is absent,
// read from a file, or saw no tokens.
int speck_imatrix_moments(const speck_imatrix *im, const char *name, const float **mean,
                          const float **var, int64_t *n_in);
// Every entry must name a matrix of the model with as many columns: an imatrix made for another
// model is refused with an error naming the imatrix file, the entry, the model and both sizes.
int speck_imatrix_check(const speck_imatrix *im, const speck_gguf *model);
// Write atomically as GGUF (dat = false) or legacy .dat (dat = true).
int speck_imatrix_save(const speck_imatrix *im, const char *path, bool dat);
// Collect one: run `tokens` through the model in consecutive windows of n_ctx tokens (each from
// an empty cache, like llama-imatrix's chunks), summing the squared inputs of every matrix
// product of the layers (and of the head when with_output). dataset: recorded in the file.
// progress(done, total, user) after each window, or NULL.
speck_imatrix *speck_imatrix_compute(const speck_model *m, const int32_t *tokens, int64_t n,
                                     int n_ctx, bool with_output, const char *dataset,
                                     void (*progress)(int64_t done, int64_t total, void *user),
                                     void *user);

// Observe the input of every matrix product of speck_forward (calibration). fn gets the weight's
// name ("blk.3.ffn_down.weight"), its input x: (n, n_in), from the calling thread between the
// operations. While a hook is set every forward takes the batch path. NULL turns it off; unset,
// it costs one test per product.
typedef void (*speck_matmul_hook)(const char *weight, const float *x, int n, int n_in,
                                  void *user);
void speck_ctx_set_matmul_hook(speck_ctx *c, speck_matmul_hook fn, void *user);

// Quality of a model against a reference's saved log-probabilities, measured as llama.cpp's
// llama-perplexity measures it: the text in chunks of n_ctx tokens, each run from an empty cache
// (BOS replacing its first token when the vocabulary adds one), each scored on its second half
// (positions n_ctx/2 .. n_ctx-2 predicting the next token, so every scored token sees at least
// n_ctx/2 tokens of context).
typedef struct {
    int64_t n_scored;          // tokens scored
    int n_ctx, n_chunks;
    double nll, nll_err;       // mean negative log-likelihood (nats/token), its standard error;
                               // perplexity = exp(nll)
    bool has_base;             // a base file was read; then:
    double nll_base;           // the base model's mean nll on the same tokens
    double ln_ppl_ratio;       // nll - nll_base = ln(PPL / PPL_base), and its standard error
    double ln_ppl_ratio_err;   // (the two nlls are correlated token by token)
    double kld, kld_err;       // mean KL(base || model) in nats per token, standard error
    double kld_median, kld_p99, kld_max;
    double top1;               // fraction of positions where both rank the same token first
} speck_kld_result;
// Run the model over tokens (n_tokens; at least 2 chunks) or, with base_in, over the tokens and
// chunking stored in that file, comparing with its log-probabilities. base_out: write this
// model's log-probabilities (atomically). Both files are llama-perplexity's
// --kl-divergence-base format: either program's file serves the other. A file made with another
// vocabulary size, truncated or damaged is an error naming it. progress(done, total) per chunk.
int speck_eval_kld(const speck_model *m, const int32_t *tokens, int64_t n_tokens, int n_ctx,
                   const char *base_in, const char *base_out, speck_kld_result *res,
                   void (*progress)(int64_t done, int64_t total, void *user), void *user);

// How `speck_gguf_quantize` rounds each matrix.
typedef enum {
    SPECK_QMETHOD_RTN = 0,  // llama-quantize's algorithms (scale searches weighted by the imatrix)
    SPECK_QMETHOD_GPTQ = 1, // error feedback over columns under a calibration Hessian (GPTQ)
    SPECK_QMETHOD_RECON = 2, // GPTQ in forward order, each matrix retargeted to reproduce the
                             // unquantized model's output from the quantized model's inputs
} speck_quant_method;

// What speck_gguf_quantize did with one tensor (opts.on_tensor).
typedef struct {
    const char *name;
    int index, n_tensors; // this tensor's position in the file
    int src_type, type;   // before and after
    int wanted;           // the type the mix/options asked for (!= type: fell back)
    int64_t n_elements, ne0;
    size_t bytes;         // after
    double err;           // ||W - Q||^2 / ||W||^2 (column-weighted by the imatrix when given);
                          // -1 when not measured (opts.measure) or not converted
} speck_quant_tensor_info;

// Rewrite a GGUF model (or a Hugging Face directory, converted first into an unlinked
// temporary file in $TMPDIR) with its matrices in other types, like llama.cpp's llama-quantize:
// with ftype, each matrix gets the type that file type's mix gives it (speck_ftype_tensor_type);
// without, every matrix takes `type`. token_embd.weight / output.weight take embd_type /
// output_type when >= 0. Rows a type's block does not divide fall back as llama-quantize does
// (speck_type_for_row; the tensor info's `wanted` says so). Vectors (norms, biases) and every
// metadata key are copied; general.file_type is set (ftype, or the q projections' type). A
// quantized tensor that would change to another quantized type is refused (SPECK_ERR_ARG)
// unless allow_requantize, since the rounding errors add up (to f32/f16/bf16 it is simply
// dequantized); a tensor in a type speck cannot read is an error naming it when it would have
// to change, and copied otherwise. Streams into a temporary file renamed into place (a failure
// leaves no file); the source's pages are dropped as they are written.
typedef struct {
    speck_type type;       // every matrix, when ftype is 0
    int embd_type;         // token_embd.weight: a speck_type, or -1 for the mix / `type`
    int output_type;       // output.weight: a speck_type, or -1 for the mix / `type`
    bool allow_requantize; // convert quantized tensors to another quantized type too
    int ftype;             // llama-quantize file type (speck_ftype_from_name): its per-tensor
                           // mix; 0 (F32's code, which has no mix): every matrix in `type`
    const speck_imatrix *imatrix; // importance weights for the scale searches, or NULL
    speck_quant_method method;
    const int32_t *calib;  // calibration tokens (method GPTQ, target_bpw), n_calib of them,
    int64_t n_calib;       // in windows of calib_ctx (0: the model's context, at most 512)
    int calib_ctx;
    double target_bpw;     // > 0: choose per-matrix types to minimize the measured error at
                           // this many bits per weight (over all tensors; docs/convert.md)
    bool measure;          // compute each tensor's err for on_tensor
    void (*on_tensor)(const speck_quant_tensor_info *ti, void *user); // after each tensor
    // target_bpw: every candidate type of every matrix, with its size and measured KL
    // divergence, once the choice is made (chosen: the type the matrix gets).
    void (*on_candidate)(const char *tensor, int type, int64_t bytes, double kld, bool chosen,
                         void *user);
    void *user;
} speck_quantize_opts;
int speck_gguf_quantize(const char *in_path, const char *out_path, const speck_quantize_opts *opts,
                        bool progress);

/* ------------------------------------------------------------------------------------------ */
/* Pruning (src/sparse/): zero weights so that fewer bytes are read per token                  */
/* ------------------------------------------------------------------------------------------ */

typedef enum {
    SPECK_PRUNE_MAGNITUDE = 0, // the smallest |W_ij| of each row
    SPECK_PRUNE_WANDA = 1,     // the smallest |W_ij| * ||x_j|| of each row (Sun et al. 2023)
    SPECK_PRUNE_SPARSEGPT = 2, // OBS mask selection + error compensation (Frantar & Alistarh 2023)
} speck_prune_method;

typedef enum {
    SPECK_ALLOC_UNIFORM = 0, // every block at the global ratio
    SPECK_ALLOC_ECOFLAP = 1, // zeroth-order block importance -> keep ratios (speck_ecoflap_ratios)
    SPECK_ALLOC_TYR = 2,     // evolutionary search on the calibration KL (speck_tyr_search)
} speck_prune_alloc;

typedef struct {
    speck_prune_method method;
    double sparsity; // unstructured: the fraction of each row zeroed, in (0, 1)
    int nm_n, nm_m;  // N:M (nm_m > 0): at most nm_n nonzeros in every nm_m consecutive inputs
    const int32_t *calib; // calibration tokens (Wanda, SparseGPT) in windows of calib_ctx
    int64_t n_calib;      // (0: the model's context, at most 512)
    int calib_ctx;
    bool embd_head;  // also prune token_embd / output (off: they stay dense)
    int out_type;    // type of the pruned matrices; -1: the source's when it stores 0 exactly
                     // (f32, f16, bf16, q8_0, q4_0, q5_0), else f16
    double damp;     // SparseGPT: added to H's diagonal as a fraction of its mean (0: 0.01)
    int blocksize;   // SparseGPT: columns per mask-selection block (0: 128, the paper's)
    const char *dense_path; // with a sparse out_type (SPECK_TYPE_S24_Q8): also write the same
                            // pruned weights densely here (the default types; llama.cpp runs it)
    // DSnoT (Zhang et al. 2023, "Dynamic Sparse No Training"), on top of a magnitude or Wanda
    // mask: per output row, swap pruned and kept weights (one regrown, one pruned per cycle;
    // N:M: within the regrown weight's group) so that the row's expected output error
    // eps = sum over pruned j of W_j * E[x_j] moves toward 0; no weight value changes. See
    // speck_prune_matrix and docs/sparsity.md for the exact rule.
    int dsnot_cycles;       // > 0: at most this many cycles per row (the paper's 50); 0: off
    double dsnot_threshold; // a row stops once |eps| <= this (0: the paper's 0.1)
    struct speck_dsnot_report *dsnot_report; // optional out: DSnoT's counts are added to it
    // Per-block sparsity (speck prune --alloc; unstructured only): how the global target --
    // `sparsity` of all the blocks' matrices together -- is shared among the transformer
    // blocks; the method above then prunes each block's matrices at its block's ratio. The
    // ratios are printed with progress and stored as speck.prune.layer_sparsity.
    speck_prune_alloc alloc;   // SPECK_ALLOC_UNIFORM (0): every block at `sparsity`
    double max_layer_sparsity; // no block above this (0: max(0.8, sparsity + 0.1), at most 0.99)
    int alloc_windows;         // calibration windows the allocation's losses use (0: 4)
} speck_prune_opts;

// What DSnoT did, summed over the rows it ran on (speck prune prints it).
typedef struct speck_dsnot_report {
    int64_t rows, swaps;     // rows refined, swaps made (one weight regrown + one pruned each)
    double eps0, eps1;       // sum over rows of |eps| before and after
} speck_dsnot_report;

// "50%", "0.6" (unstructured) or "2:4" (N:M) into o. 0, or SPECK_ERR_ARG saying what is
// accepted (sparsity outside (0, 1), N >= M, ...).
int speck_prune_parse_sparsity(const char *s, speck_prune_opts *o);
// Prune W (rows, cols) in place. SparseGPT reads H (cols, cols), the sum over calibration
// tokens of x x^T of the matrix's input; Wanda reads x2 (cols), ||x_j||^2 or any positive
// multiple of it (the imatrix's mean squares); magnitude neither (NULL). Every row ends with
// exactly round(sparsity * cols) zeros chosen (N:M: nm_m - nm_n in every group; SparseGPT also
// updates the kept weights). SPECK_ERR_ARG when cols does not split into N:M groups.
//
// DSnoT (o->dsnot_cycles > 0; magnitude or Wanda only) then also reads mean (cols), E[x_j],
// and var (cols), Var[x_j] (speck_imatrix_moments), and x2 for its pruning score |W_j| *
// sqrt(x2_j) (any positive multiple, as Wanda's). Per row, with D_j = W_j * mean_j and
// eps = sum of D_j over the pruned j, s = sign(eps) at the start: the regrow candidates are the
// pruned j with s * D_j > 0, in decreasing s * D_j / var_j (var_j below 1e-30 counts as 1e-30);
// the prune candidates are the kept j with s * D_j < 0 (pruning them moves eps back toward 0),
// in increasing |W_j| * sqrt(x2_j). Each cycle, while |eps| > threshold and fewer than
// dsnot_cycles cycles have run, takes the next regrow candidate g and the next prune candidate
// p (unstructured; N:M: the prune candidate of g's group that the first mask kept and that has
// the lowest |W_j| * sqrt(x2_j); a group with none skips g, using up the cycle) and swaps them,
// eps += D_p - D_g, unless that would make sign(eps) differ from s: then the row stops, as it
// does when a candidate list runs out. So |eps| never grows. Ties go to the lower column. The
// zero count per row (or group) is unchanged.
int speck_prune_matrix(const speck_prune_opts *o, float *W, int64_t rows, int64_t cols,
                       const double *H, const float *x2, const float *mean, const float *var);
// Write in_path's model to out_path with every layer matrix pruned (dense: zeros in place, so
// llama.cpp runs it). OUT appears only when complete.
int speck_gguf_prune(const char *in_path, const char *out_path, const speck_prune_opts *o,
                     bool progress);

// ECoFLaP's coarse step (Sung et al. 2024, "ECoFLaP: Efficient Coarse-to-Fine Layer-Wise
// Pruning"): n groups (transformer blocks) of size[i] weights with importance score[i] >= 0 (the
// mean per weight of (w * g)^2, g the zeroth-order gradient estimate: see docs/sparsity.md)
// share the kept weights K = N - round(sparsity * N), N = sum of sizes: every group keeps at
// least b_i = ceil(size_i * (1 - max_sparsity)), and the rest goes in proportion to the scores,
// keep_i = min(size_i, b_i + lambda * score_i), lambda such that the keeps sum to K (groups that
// fill up keep everything; the others share what is left). ratio[i] = 1 - keep_i / size_i, in
// [0, max_sparsity]. All scores 0: every ratio = sparsity. SPECK_ERR_ARG when max_sparsity is
// below sparsity or not below 1.
int speck_ecoflap_ratios(int n, const double *score, const int64_t *size, double sparsity,
                         double max_sparsity, double *ratio);

// Týr-the-Pruner's search (Li et al. 2025), budget-sized: per-group ratios
// sparsity + k_i * u (k_i integers, u = step / 2^(rounds - 1)) minimising fitness(ratio, user)
// with sum_i size_i * ratio_i held at sparsity * N (each mutation moves one step of sparsity from
// one group to another of the same size) and every ratio in [0, max_sparsity]. Round r
// (coarse to fine) uses the step d = step / 2^r around the best so far, each group within +-2 d
// of it (the "supernet": 5 variants per group); an evolutionary search of `population`
// candidates over `generations`: offspring = a tournament-chosen parent with 1 or 2 mutations,
// the best `population` of parents and offspring survive (candidates seen before are not
// re-evaluated). The start (all at sparsity) is a candidate, so the result's fitness is never
// worse. A fitness of NaN aborts the search (its error stands). Deterministic given seed.
typedef struct {
    int rounds;        // 0: 3
    double step;       // the first round's step (0: 0.1)
    int population;    // 0: 8
    int generations;   // per round (0: 6)
    uint64_t seed;     // 0: 1
} speck_tyr_opts;
typedef double (*speck_ratio_fitness)(const double *ratio, void *user);
int speck_tyr_search(int n, const int64_t *size, double sparsity, double max_sparsity,
                     const speck_tyr_opts *o, speck_ratio_fitness fitness, void *user,
                     double *ratio);


// CFSP structured pruning (Wang et al. 2024, "CFSP: An Efficient Structured Pruning Framework
// for LLMs with Coarse-to-Fine Activation Information"): whole FFN intermediate channels are
// removed (rows of gate and up, columns of down), so the output is a smaller dense model that
// any loader runs. One calibration pass gives a_j = ||x_j|| (the root mean square of down's
// input j over the calibration tokens); channel j of a layer with weights gate, up (n_ff,
// n_embd) and down (n_embd, n_ff) scores (the paper's fine-grained score with its exponents
// a = b = c = 1)
//   S_j = a_j / n_embd * sum_i [ |D_ij| a_j / sum_k |D_ik| a_k
//                                + |U_ji| / sum_k |U_ki| + |G_ji| / sum_k |G_ki| ]
// (each term: channel j's share of row i of down, or of input column i of up / gate, among
// all channels). The paper's coarse step (per-block ratios from the angular distance between
// a block's input and output) needs per-layer widths, which llama.cpp's llama architecture
// does not load (it sizes every layer's FFN by the first entry), so every layer keeps the same
// width: the channels with the highest S_j. docs/sparsity.md says more.
typedef struct {
    double ratio;         // fraction of each layer's FFN channels removed, in (0, 1)
    int align;            // the kept width is rounded to a multiple of this (0: 32; paper: 128)
    const int32_t *calib; // calibration tokens, in windows of calib_ctx (0: the model's
    int64_t n_calib;      // context, at most 512)
    int calib_ctx;
    // Also remove this fraction of every layer's KV heads, each with its group of query heads
    // (GQA: query head h reads KV head h / (n_head / n_head_kv)), in (0, 1); 0: heads stay.
    // Not in the paper (it prunes the FFN only): speck applies the same score to the
    // attention, with attn_output's input channels as the channels (gate term absent, q in
    // up's place, attn_output in down's) and a group's score the sum over its query channels.
    double head_ratio;
} speck_cfsp_opts;
// score (n_ff) of every channel as above; x2 (n_ff): down's input mean squares (any positive
// multiple); wg may be NULL (no gate: its term is left out).
void speck_cfsp_channel_scores(const float *wg, const float *wu, const float *wd, const float *x2,
                               int64_t n_embd, int64_t n_ff, double *score);
// Per KV group g (n_head_kv of them): the sum of speck_cfsp_channel_scores(NULL, wq, wo, x2,
// n_embd, n_head * head_dim) over the group's query channels [g, g + 1) * n_head / n_head_kv *
// head_dim. wq: (n_head * head_dim, n_embd), wo: (n_embd, n_head * head_dim), x2: attn_output's
// input mean squares.
void speck_cfsp_group_scores(const float *wq, const float *wo, const float *x2, int64_t n_embd,
                             int n_head, int n_head_kv, int head_dim, double *score);
// Kept width: n_ff - round(ratio * n_ff), rounded to the nearest multiple of align (halves up).
// SPECK_ERR_ARG when ratio is outside (0, 1) or the width would be 0 or n_ff.
int speck_cfsp_width(int64_t n_ff, double ratio, int align, int64_t *keep);
// kept (keep): the indices of the keep highest scores (ties: the lower index), ascending.
int speck_cfsp_select(const double *score, int64_t n_ff, int64_t keep, int64_t *kept);
// Write in_path's model to out_path with every layer's FFN cut to the kept channels and
// feed_forward_length set to the new width (down requantized in its type; gate, up copied).
// Everything is checked and scored before anything is written; OUT appears only when complete.
int speck_gguf_prune_cfsp(const char *in_path, const char *out_path, const speck_cfsp_opts *o,
                          bool progress);

#ifdef __cplusplus
}
#endif
#endif
