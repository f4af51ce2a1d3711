// speck — a C engine that runs, compresses and adapts transformer language models on CPU.
//
// This header is the whole public API and reads as its manual.
//
// Conventions
//   * Every function that can fail returns an int status (SPECK_OK = 0, a negative speck_err
//     otherwise) or NULL, and records a human-readable message naming the file/field and the
//     problem, retrievable with speck_last_error(). Library code never exits or aborts on bad
//     input; only the CLI turns errors into exit codes.
//   * Tensor shapes are written row-major as (rows, cols): a weight (n_out, n_in) holds n_out rows
//     of n_in values each — the same element order as GGUF's ne[0] = n_in, ne[1] = n_out.
//   * Threads: OpenMP; speck_set_threads() sets how many every call uses.
#ifndef SPECK_H
#define SPECK_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ------------------------------------------------------------------------------------------ */
/* Errors, threads, version                                                                    */
/* ------------------------------------------------------------------------------------------ */

typedef enum {
    SPECK_OK = 0,
    SPECK_ERR_IO = -1,          // cannot open/read/write a file
    SPECK_ERR_FORMAT = -2,      // malformed file contents
    SPECK_ERR_UNSUPPORTED = -3, // valid but not supported (type, architecture, version)
    SPECK_ERR_ARG = -4,         // invalid argument from the caller
    SPECK_ERR_NOMEM = -5,       // allocation failed
    SPECK_ERR_RANGE = -6,       // index / position / context out of range
} speck_err;

// The message of the last error on this thread ("" if none).
const char *speck_last_error(void);
// Record an error (printf-style); returns code so callers can `return speck_set_error(...)`.
int speck_set_error(int code, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void speck_clear_error(void);

void speck_set_threads(int n); // <= 0: all cores
int speck_get_threads(void);
// Kernel path: "avx512" (with VNNI), "avx2" (with FMA and F16C) or "scalar"; the best this CPU
// runs is chosen at start-up. speck_set_isa picks another one this CPU runs — to compare paths,
// or to see what a CPU without AVX-512 gets. Call it before loading models (how their weights
// are laid out depends on the path) and while no call is running. Returns 0, or
// SPECK_ERR_UNSUPPORTED (error set) when the name is unknown or this CPU lacks the instructions.
// The CLI reads it from the SPECK_ISA environment variable.
int speck_set_isa(const char *name);
const char *speck_isa(void);
const char *speck_version(void);

/* ------------------------------------------------------------------------------------------ */
/* Tensor types (numbering identical to GGUF / ggml)                                           */
/* ------------------------------------------------------------------------------------------ */

typedef enum {
    SPECK_TYPE_F32 = 0,
    SPECK_TYPE_F16 = 1,
    SPECK_TYPE_Q4_0 = 2,
    SPECK_TYPE_Q4_1 = 3,
    SPECK_TYPE_Q5_0 = 6,
    SPECK_TYPE_Q5_1 = 7,
    SPECK_TYPE_Q8_0 = 8,
    SPECK_TYPE_Q2_K = 10,
    SPECK_TYPE_Q3_K = 11,
    SPECK_TYPE_Q4_K = 12,
    SPECK_TYPE_Q5_K = 13,
    SPECK_TYPE_Q6_K = 14,
    SPECK_TYPE_Q8_K = 15, // activations of the 256-value types' dots; not a storage type
    SPECK_TYPE_IQ4_NL = 20,
    SPECK_TYPE_IQ4_XS = 23,
    SPECK_TYPE_BF16 = 30,
    // speck's own (no ggml id near it; llama.cpp cannot load it): 2:4-sparse rows with 8-bit
    // values, 22 bytes per 32 weights (docs/sparsity.md has the layout).
    SPECK_TYPE_S24_Q8 = 100,
    // speck's Dual-Grained Quantization type: 4-bit weights with int8 scales per 32 under an
    // fp16 scale per 256, 138 bytes per 256 weights (docs/quantization.md has the layout).
    SPECK_TYPE_DGQ4 = 101,
} speck_type;

// "f32", "f16", "bf16", "q8_0", "q4_0", "q4_1", "q5_0", "q5_1", "q2_k", "q3_k", "q4_k", "q5_k",
// "q6_k", "iq4_nl", "iq4_xs", speck's own "s24_q8" and "dgq4", or NULL for a type speck does not
// store (Q8_K, ggml's others).
const char *speck_type_name(int type);
// Parse a name as above (case-insensitive); returns -1 if unknown.
int speck_type_from_name(const char *name);
// Values per block (1 for float types, 32 for Q8_0 / Q4_0 / Q4_1 / Q5_0 / Q5_1 / IQ4_NL, 256 for
// the K-quants, IQ4_XS and Q8_K) and bytes per block (0 for unknown types).
int64_t speck_type_block_size(speck_type t);
int64_t speck_type_block_bytes(speck_type t);
// Bytes of a row of n values (n must be a multiple of the block size).
size_t speck_type_row_size(speck_type t, int64_t n);
// The type a matrix of rows of n_per_row values gets when t is asked for: t when its block
// divides the row, otherwise llama-quantize's fallback (Q2_K / Q3_K -> Q4_0, Q4_K -> Q5_0,
// Q5_K -> Q5_1, Q6_K -> Q8_0, IQ4_XS -> IQ4_NL), and f16 when no block fits.
speck_type speck_type_for_row(speck_type t, int64_t n_per_row);
// Quantize nrow rows of n_per_row floats into type t, rows contiguous: x (nrow, n_per_row) ->
// y (nrow rows of speck_type_row_size(t, n_per_row) bytes). The algorithms are llama-quantize's,
// byte for byte. imp: per-column importance weights (n_per_row values, e.g. an imatrix's) that
// steer the scale searches toward the columns that matter, or NULL. Threaded over rows.
// SPECK_ERR_ARG (error set) for a type speck cannot write or a row its block does not divide.
int speck_quantize(speck_type t, const float *x, void *y, int64_t nrow, int64_t n_per_row,
                   const float *imp);

/* ------------------------------------------------------------------------------------------ */
/* GGUF v3 files                                                                               */
/* ------------------------------------------------------------------------------------------ */

typedef enum {
    SPECK_GGUF_UINT8 = 0,
    SPECK_GGUF_INT8 = 1,
    SPECK_GGUF_UINT16 = 2,
    SPECK_GGUF_INT16 = 3,
    SPECK_GGUF_UINT32 = 4,
    SPECK_GGUF_INT32 = 5,
    SPECK_GGUF_FLOAT32 = 6,
    SPECK_GGUF_BOOL = 7,
    SPECK_GGUF_STRING = 8,
    SPECK_GGUF_ARRAY = 9,
    SPECK_GGUF_UINT64 = 10,
    SPECK_GGUF_INT64 = 11,
    SPECK_GGUF_FLOAT64 = 12,
} speck_gguf_vtype;

typedef struct {
    const char *name; // NUL-terminated copy
    int type;         // speck_type / ggml type id (may be one speck cannot compute with)
    int n_dims;       // 1..4
    int64_t ne[4];    // ne[0] is the fastest-varying (row length)
    int64_t n_elements;
    uint64_t offset; // relative to the start of the data section
    size_t n_bytes;
    const void *data; // pointer into the mapping (read mode)
} speck_gguf_tensor;

typedef struct speck_gguf speck_gguf;

// Open and validate a GGUF file (mmap'd, read-only). Checks magic, version (2 or 3), every
// key/value and tensor record, alignment, and that all tensor data lies inside the file.
speck_gguf *speck_gguf_open(const char *path);

// Load flags.
// SPECK_LOAD_HUGEPAGES: read the file into anonymous memory advised as transparent huge pages
// instead of mapping it. Same resident size (the file's bytes, now counted as anonymous memory;
// the page cache may hold a second, reclaimable copy), about 0.2 s more load time per GB, and
// faster decoding where reading the weights is the bottleneck (BENCHMARKS.md).
#define SPECK_LOAD_HUGEPAGES 1u
// SPECK_LOAD_NO_PANELS (speck_model_load_ex): keep the weights in the file's row layout only.
// By default the few-token (decode / verification) kernels run on a *panel* copy (16 rows
// interleaved, src/kernels/kernels.h) where it pays: float (F32 / F16 / BF16) matrices when they
// total at most 32 MiB — up to 32 MiB more memory, ~1.5-2x faster passes on such compute-bound
// models; and quantized matrices of any size (Q4_0 / Q8_0 on AVX-512 VNNI and AVX2 CPUs, the
// other block types — K-quants, IQ4, Q4_1, Q5_0, Q5_1 — on AVX-512 VNNI) when the file is
// mapped (not
// with SPECK_LOAD_HUGEPAGES), whose mapped pages are then dropped (resident memory stays about
// the file's size; packing takes ~0.5 s per GB; a tied head's embedding lookups read the panels).
#define SPECK_LOAD_NO_PANELS 2u
speck_gguf *speck_gguf_open_ex(const char *path, unsigned flags);
void speck_gguf_close(speck_gguf *g);
const char *speck_gguf_path(const speck_gguf *g);
uint32_t speck_gguf_version(const speck_gguf *g);
size_t speck_gguf_file_size(const speck_gguf *g);
size_t speck_gguf_alignment(const speck_gguf *g);

int64_t speck_gguf_n_kv(const speck_gguf *g);
const char *speck_gguf_key(const speck_gguf *g, int64_t i);
int64_t speck_gguf_find_key(const speck_gguf *g, const char *key); // -1 if absent
speck_gguf_vtype speck_gguf_kv_type(const speck_gguf *g, int64_t i);
// For arrays: the element type and count.
speck_gguf_vtype speck_gguf_arr_type(const speck_gguf *g, int64_t i);
int64_t speck_gguf_arr_n(const speck_gguf *g, int64_t i);
// Raw pointer to fixed-size array elements (not strings), little-endian as in the file. The
// file does not align arrays: read elements with memcpy, never through a typed pointer.
const void *speck_gguf_arr_data(const speck_gguf *g, int64_t i);
// Array of strings: element j (pointer into the mapping, not NUL-terminated) and its length.
const char *speck_gguf_arr_str(const speck_gguf *g, int64_t i, int64_t j, uint64_t *len);
// Scalar value of key i converted to the requested C type (any integer/float/bool type converts,
// floats to integers toward zero, saturating, NaN as 0; false/0 on type mismatch — check
// speck_gguf_kv_type when it matters).
int64_t speck_gguf_get_int(const speck_gguf *g, int64_t i);
double speck_gguf_get_float(const speck_gguf *g, int64_t i);
// String value (NUL-terminated copy owned by g) or NULL if key i is not a string.
const char *speck_gguf_get_str(const speck_gguf *g, int64_t i);
// Render any value as text for `speck info` (arrays abbreviated to max_items); returns buf.
char *speck_gguf_value_str(const speck_gguf *g, int64_t i, char *buf, size_t size, int max_items);

int64_t speck_gguf_n_tensors(const speck_gguf *g);
const speck_gguf_tensor *speck_gguf_tensor_at(const speck_gguf *g, int64_t i);
const speck_gguf_tensor *speck_gguf_find_tensor(const speck_gguf *g, const char *name);

// Writer: collect key/values and tensors, then speck_gguf_writer_save() writes everything to a
// temporary file in the target directory and renames it into place, so a failure never leaves a
// partial file. Tensor data is referenced, not copied: it must stay valid until save returns.
typedef struct speck_gguf_writer speck_gguf_writer;
speck_gguf_writer *speck_gguf_writer_new(void);
void speck_gguf_writer_free(speck_gguf_writer *w);
int speck_gguf_set_u32(speck_gguf_writer *w, const char *key, uint32_t v);
int speck_gguf_set_i32(speck_gguf_writer *w, const char *key, int32_t v);
int speck_gguf_set_u64(speck_gguf_writer *w, const char *key, uint64_t v);
int speck_gguf_set_f32(speck_gguf_writer *w, const char *key, float v);
int speck_gguf_set_bool(speck_gguf_writer *w, const char *key, bool v);
int speck_gguf_set_str(speck_gguf_writer *w, const char *key, const char *v);
// Array of fixed-size elements (vtype not STRING/ARRAY); data is copied.
int speck_gguf_set_arr(speck_gguf_writer *w, const char *key, speck_gguf_vtype vtype,
                       const void *data, int64_t n);
// Array of strings (copied). lens may be NULL for NUL-terminated strings.
int speck_gguf_set_arr_str(speck_gguf_writer *w, const char *key, const char *const *strs,
                           const uint64_t *lens, int64_t n);
// Copy key/value i of an open file (used when rewriting a model).
int speck_gguf_copy_kv(speck_gguf_writer *w, const speck_gguf *g, int64_t i);
// Add a tensor; ne as in speck_gguf_tensor; data holds speck_type_row_size(type, ne[0]) * rows.
// type may also be SPECK_GGUF_TYPE_I8 (ggml's I8: ne[0] raw bytes a row; delta files use it).
#define SPECK_GGUF_TYPE_I8 24
int speck_gguf_add_tensor(speck_gguf_writer *w, const char *name, speck_type type, int n_dims,
                          const int64_t *ne, const void *data);
int speck_gguf_writer_save(speck_gguf_writer *w, const char *path);

/* ------------------------------------------------------------------------------------------ */
/* Models                                                                                      */
/* ------------------------------------------------------------------------------------------ */

typedef enum { SPECK_ROPE_NORMAL = 0, SPECK_ROPE_NEOX = 2 } speck_rope_type;
typedef enum {
    SPECK_ROPE_SCALING_NONE = 0,
    SPECK_ROPE_SCALING_LINEAR = 1,
    SPECK_ROPE_SCALING_LLAMA3 = 2,
    // Phi-3's LongRoPE: per-frequency divisors from the rope_factors_short / rope_factors_long
    // tensors (the long ones for contexts longer than rope_orig_ctx, chosen per context as
    // llama.cpp does), cos and sin multiplied by rope_attn_factor.
    SPECK_ROPE_SCALING_LONGROPE = 3,
} speck_rope_scaling;
// FFN activation: down(act(gate x) * up x).
typedef enum {
    SPECK_ACT_SILU = 0,      // SwiGLU: x sigmoid(x)
    SPECK_ACT_GELU_TANH = 1, // GeGLU with the tanh approximation of GELU (Gemma)
} speck_act;

// A model's hyper-parameters. The architecture's description (src/model/arch_*.c) sets the
// defaults of the fields below `tied_output` that its GGUF keys do not give.
typedef struct {
    char arch[32];  // general.architecture: "llama", "qwen2", "qwen3", "gemma2", "gemma3", "phi3"
    char name[128]; // general.name (may be empty)
    int n_vocab;
    int n_ctx_train; // context length the model was trained for
    int n_embd;      // model width
    int n_layer;
    int n_head;
    int n_head_kv;  // < n_head: GQA; 1: MQA
    int head_dim;   // n_embd / n_head unless the file says otherwise
    int n_ff;       // SwiGLU hidden width
    float norm_eps; // RMSNorm epsilon
    float rope_freq_base;
    speck_rope_type rope_type;
    speck_rope_scaling rope_scaling;
    float rope_scale_factor;    // linear: positions divided by this; llama3: "factor"
    float rope_low_freq_factor; // llama3 scaling
    float rope_high_freq_factor;
    int rope_orig_ctx;  // llama3 / LongRoPE scaling: original_max_position_embeddings
    bool qkv_bias;      // Qwen2-style biases on q/k/v projections
    bool tied_output;   // output head shares token_embd
    int bos_id, eos_id; // -1 if absent
    speck_act ffn_act;  // FFN activation (SwiGLU; Gemma: GeGLU)
    bool qk_norm;       // RMSNorm over each q and k head before RoPE (qwen3, gemma3)
    bool post_norms;    // RMSNorm of the attention and FFN outputs before the residual adds (gemma)
    float embd_scale;   // token embeddings multiplied by this (gemma: sqrt(n_embd); else 1)
    float attn_scale;   // multiplies q . k: 1/sqrt(head_dim) unless the architecture or the file
                        // says otherwise (gemma: 1/sqrt(query_pre_attn_scalar))
    float attn_softcap; // > 0: attention logits s -> c tanh(s / c) (gemma2: 50); 0: off
    float final_softcap;      // > 0: output logits likewise (gemma2: 30); 0: off
    int n_swa;                // > 0: sliding-window attention; a windowed layer's query at position
                              // p sees the keys at positions > p - n_swa; 0: none
    int swa_period;           // which layers are windowed: 0 all; P >= 1 those with l % P < P - 1
                              // (every P-th is global: gemma2 2, gemma3 6; 1 none)
    float rope_freq_base_swa; // RoPE base of the windowed layers (gemma3: 10000; else the global)
    float rope_attn_factor;   // cos and sin of RoPE multiplied by this (LongRoPE); 1 otherwise
    bool qk_norm_full;        // the q/k norms cover the whole q (k) row, not each head (olmoe)
    // Mixture of experts (n_expert > 0; docs/architectures.md): a router (n_expert, n_embd)
    // scores the experts per token, softmax, the n_expert_used best are run (each a SwiGLU block
    // of n_ff_exp) and their outputs summed weighted by their probabilities — renormalised over
    // the chosen ones when moe_norm (Mixtral, Qwen3-MoE) — plus, when n_ff_shexp > 0, a shared
    // expert every token runs, weighted by sigmoid(gate · x) (Qwen2-MoE).
    int n_expert;      // ARCH.expert_count; 0: dense FFN
    int n_expert_used; // ARCH.expert_used_count (top-k)
    int n_ff_exp;      // ARCH.expert_feed_forward_length (default n_ff)
    int n_ff_shexp;    // ARCH.expert_shared_feed_forward_length; 0: no shared expert
    bool moe_norm;     // ARCH.expert_weights_norm: the k weights renormalised to sum to 1
} speck_hparams;

// Whether layer l is a sliding-window layer (n_swa > 0 and the layer is not one of the global
// ones of the swa_period pattern).
bool speck_hparams_layer_swa(const speck_hparams *hp, int l);

typedef struct speck_model speck_model;

// Load a model from a GGUF file (architectures "llama" and "qwen2"). Weights stay in the
// read-only mapping (apart from the panel copies described at SPECK_LOAD_NO_PANELS; norm and
// bias vectors are copied as f32). Errors name the file and the key/tensor at fault.
speck_model *speck_model_load(const char *path);
// The same with SPECK_LOAD_* flags.
speck_model *speck_model_load_ex(const char *path, unsigned flags);
void speck_model_free(speck_model *m);
const speck_hparams *speck_model_hparams(const speck_model *m);
const speck_gguf *speck_model_gguf(const speck_model *m);
// Bytes of all weights read by one decode step (every tensor but token_embd, plus one embedding
// row; of a mixture of experts only the n_expert_used experts a token runs, the active
// parameters) — the numerator of the memory-bandwidth roofline.
size_t speck_model_bytes_per_token(const speck_model *m);
// Bytes of all weight tensors in the file.
size_t speck_model_weight_bytes(const speck_model *m);
// The dominant weight type (of the attention/FFN matrices).
speck_type speck_model_weight_type(const speck_model *m);

/* ------------------------------------------------------------------------------------------ */
/* Inference contexts: KV cache + forward pass                                                 */
/* ------------------------------------------------------------------------------------------ */

typedef struct speck_ctx speck_ctx;

// A context with room for n_ctx cached positions (0: the model's training context, capped at
// 4096). Several contexts may share one model.
speck_ctx *speck_ctx_new(const speck_model *m, int n_ctx);
// The same with the KV cache stored as kv_type: SPECK_TYPE_F32 (what speck_ctx_new uses),
// SPECK_TYPE_F16, which halves the cache's memory and the bytes attention reads per token at the
// cost of rounding keys and values to f16 (relative error <= 2^-11; llama.cpp's default cache
// type), or SPECK_TYPE_Q8_0 / SPECK_TYPE_Q4_0: each head's key and value rows rounded to ggml's
// blocks of 32 (an f16 scale and 8- or 4-bit levels; 0.53x / 0.28x the f16 cache's memory, as
// llama.cpp's --cache-type-k/-v q8_0 / q4_0), which attention reads directly (SPECK_ERR_UNSUPPORTED
// when the head size is not a multiple of 32). Keys and values always share the type. Outputs
// stay batch-invariant, so accelerated decoding stays lossless. Any other type fails with
// SPECK_ERR_ARG.
speck_ctx *speck_ctx_new_kv(const speck_model *m, int n_ctx, speck_type kv_type);
// The element type of the context's KV cache.
speck_type speck_ctx_kv_type(const speck_ctx *c);
void speck_ctx_free(speck_ctx *c);
int speck_ctx_n_ctx(const speck_ctx *c);
// Number of entries currently in the KV cache.
int speck_ctx_n_past(const speck_ctx *c);
// Bytes allocated for the KV cache: n_ctx entries per layer, except that a sliding-window layer
// keeps a ring of its window + 64 entries (pages are faulted in as the cache fills).
size_t speck_ctx_kv_bytes(const speck_ctx *c);
// Mixture of experts: how often each expert was chosen since the context was made or the counts
// were reset, (n_layer, n_expert) row-major, one count per token and chosen expert (decode and
// prefill alike); NULL for a dense model.
const int64_t *speck_ctx_expert_counts(const speck_ctx *c);
void speck_ctx_reset_expert_counts(speck_ctx *c);
// Drop KV entries [n, n_past): rejected draft tokens, or restarting from a shared prefix.
// SPECK_ERR_RANGE (nothing changed) when sliding-window layers no longer hold the window of
// entry n: their rings keep the last window + 64 entries, so rolling back further needs the
// entries computed again (truncate to 0 and run them).
int speck_ctx_truncate(speck_ctx *c, int n);
// The smallest n > 0 that speck_ctx_truncate accepts now: 1, or later when sliding-window rings
// have moved past earlier entries (truncating to 0 is always possible).
int speck_ctx_truncate_floor(const speck_ctx *c);
// Keep only the listed KV entries, in order, so the cache holds idx[0..n) then nothing else
// (idx strictly increasing, all < n_past). Used to keep the accepted path of a token tree.
int speck_ctx_compact(speck_ctx *c, const int *idx, int n);

// One forward pass over n new tokens, appended to the KV cache at entries n_past..n_past+n-1.
//   tokens:    (n) token ids
//   pos:       (n) RoPE positions, or NULL for n_past + i
//   mask:      (n, n_past + n) bytes, 1 = may attend; NULL for causal (token i sees every cached
//              entry and new tokens 0..i). A token-tree mask lets a node see only its ancestors.
//   out_rows:  which of the n rows to return logits for (indices into 0..n-1), or NULL for all
//   n_out:     number of entries in out_rows (ignored when out_rows is NULL)
//   logits:    (n_out or n, n_vocab) f32, written in out_rows order
// A causal batch of more than 512 tokens whose out_rows are in increasing order (or NULL) runs
// as consecutive batches of at most 512, so the working memory stays that of a 512-token batch.
// Fails (nothing appended) when the cache would overflow or a token id is out of range.
int speck_forward(speck_ctx *c, int n, const int32_t *tokens, const int32_t *pos,
                  const uint8_t *mask, const int *out_rows, int n_out, float *logits);

/* ------------------------------------------------------------------------------------------ */
/* Many sequences in one forward pass: a paged KV cache (src/serve/)                            */
/* ------------------------------------------------------------------------------------------ */

// A multi-sequence context: a pool of KV blocks of block_size positions each (every layer's keys
// and values for those positions, f32) shared by up to n_seq sequences. A sequence takes blocks
// from the pool as it grows and gives them back when freed, so memory follows the tokens actually
// held, not n_seq times a worst case. A block may belong to several sequences at once (a shared
// prompt prefix): blocks are reference-counted and return to the pool at zero.
// One speck_mctx_forward runs the new tokens of any number of sequences together: every matrix
// is read once per pass for all of them, and each token attends over its own sequence's blocks.
// A token's results do not depend on what else is in the pass (the matrix products use the
// few-token kernels, whose outputs are the same for every token count): a request's output is
// the same whatever it is batched with, and equals speck_forward decoding it one token at a time.
typedef struct speck_mctx speck_mctx;

// n_blocks blocks of block_size positions (16 or 32 are good: a sequence wastes at most one
// partly filled block); sequences up to max_len positions (0: the model's training context,
// capped at 4096); n_seq sequence slots.
speck_mctx *speck_mctx_new(const speck_model *m, int n_blocks, int block_size, int n_seq,
                           int max_len);
void speck_mctx_free(speck_mctx *mc);
int speck_mctx_block_size(const speck_mctx *mc);
int speck_mctx_n_blocks(const speck_mctx *mc);
int speck_mctx_n_free_blocks(const speck_mctx *mc); // blocks with no reference
int speck_mctx_max_len(const speck_mctx *mc);
int speck_mctx_n_seq(const speck_mctx *mc);
// Bytes of the block pool (allocated up front; pages are touched as blocks are first used).
size_t speck_mctx_kv_bytes(const speck_mctx *mc);

// A free sequence slot (empty sequence), or -1 with SPECK_ERR_RANGE when all are taken.
int speck_mctx_seq_new(speck_mctx *mc);
// End a sequence: its blocks lose one reference each (and return to the pool at zero).
void speck_mctx_seq_free(speck_mctx *mc, int seq);
// Positions a sequence holds.
int speck_mctx_seq_len(const speck_mctx *mc, int seq);
// Drop positions [n, len); blocks no longer needed lose their reference. SPECK_ERR_RANGE when
// n > len, or when position n falls inside a block other sequences share (it would be written).
int speck_mctx_seq_truncate(speck_mctx *mc, int seq, int n);
// The block holding positions [i * block_size, (i + 1) * block_size) of seq.
int speck_mctx_seq_block(const speck_mctx *mc, int seq, int i);
// Give an empty sequence the n full blocks `blocks` (each gains a reference) as its first
// n * block_size positions: a cached prompt prefix. SPECK_ERR_ARG if seq is not empty.
int speck_mctx_seq_attach(speck_mctx *mc, int seq, const int *blocks, int n);
// References held by others than sequences (a prefix cache keeping a block alive).
void speck_mctx_block_ref(speck_mctx *mc, int block);
void speck_mctx_block_unref(speck_mctx *mc, int block);
int speck_mctx_block_refs(const speck_mctx *mc, int block);

// One forward pass over n tokens of any sequences. tokens, seq, pos: (n) each; a token's
// position must be its sequence's length plus the number of its sequence's tokens before it in
// this pass (each sequence appends in order). out_rows/n_out/logits as for speck_forward.
// Fails with nothing changed when a sequence would pass max_len, the pool runs out of blocks
// (SPECK_ERR_NOMEM), or an id or position is wrong.
int speck_mctx_forward(speck_mctx *mc, int n, const int32_t *tokens, const int32_t *seq,
                       const int32_t *pos, const int *out_rows, int n_out, float *logits);

/* ------------------------------------------------------------------------------------------ */
/* Random-weight models with real shapes (`speck init`)                                        */
/* ------------------------------------------------------------------------------------------ */

typedef struct {
    const char *name; // "tiny", "smollm2-135m", ...
    const char *arch; // what the architecture's description does not say is its default
    int n_vocab, n_ctx_train, n_embd, n_layer, n_head, n_head_kv, n_ff;
    float rope_freq_base, norm_eps;
    bool tied_output, qkv_bias;
    int head_dim; // 0: n_embd / n_head
    int n_swa;    // sliding window (0: the architecture's default)
    // Mixture of experts (n_expert 0: dense): experts, chosen per token, their FFN width, the
    // shared expert's (0: none).
    int n_expert, n_expert_used, n_ff_exp, n_ff_shexp;
} speck_preset;

// Presets, terminated by an entry with name == NULL.
const speck_preset *speck_presets(void);
const speck_preset *speck_preset_find(const char *name);

// Write a model with the preset's shapes, weights ~ N(0, 0.02) (norms 1, biases small) from a
// seeded RNG, matrices stored as `type` (rows its block does not divide: speck_type_for_row's
// fallback; norms, biases and MoE routers f32), a byte-level vocabulary of n_vocab tokens,
// atomically to path, one tensor in memory at a time. Fails with SPECK_ERR_IO before writing
// anything when path's file system has not room for the file.
int speck_init_model(const speck_preset *p, speck_type type, uint64_t seed, const char *path);

/* ------------------------------------------------------------------------------------------ */
/* Function-preserving growth (`speck grow`, docs/training.md)                                 */
/* ------------------------------------------------------------------------------------------ */
//
// A model widened and deepened to larger shapes that computes the same function: residual units
// duplicated (padded with zero units when the width is not a multiple, RMSNorm's epsilon scaled
// to match), query heads copied with their output columns split, kv heads copied, each head's
// RoPE pairs moved to the target pair of the same frequency, FFN units duplicated with their
// down-projection columns split, new layers that start as the identity (zero attn_output and
// ffn_down). Copies' shares of a split are random (from the seed) so that training the grown
// model can tell them apart; weights that cannot influence the output (new layers' inputs,
// padding columns, unused head dimensions) are random too, uniform with std 0.02. Exact in real
// arithmetic; in f32 the logits agree to float rounding (tests/reference/test_grow.py).
//
// From `target`: n_embd, n_layer, n_head, n_head_kv, n_ff (head size n_embd / n_head), and a
// tied head when both it and the source have one (a source with a tied head is untied
// otherwise; an untied one stays untied). From the source: architecture, vocabulary and
// tokenizer, context length, RoPE (type, base, scaling), q/k/v biases; the RMSNorm epsilon
// times k * n_embd / n_embd' (k = n_embd' / n_embd rounded down).

// Whether src can grow exactly to target: 0, or SPECK_ERR_ARG naming the shape out of reach and
// why. Reachable: every target size >= the source's; n_embd' a multiple of n_head'; the head
// size a multiple of the source's; n_head' a multiple of n_head_kv'; and
// n_head_kv' >= n_head_kv * ceil(G / G') for G, G' the query heads per kv head of each. desc
// (may be NULL) receives a one-line summary of the construction.
int speck_grow_check(const speck_hparams *src, const speck_preset *target, char *desc,
                     size_t desc_size);
// Write the model of src_path grown to target's shapes, matrices stored as `type` (norms,
// biases f32), streamed to a temporary file renamed to out_path. Quantized types also need
// every row length (n_embd', n_ff', n_head' x head size) to be a multiple of their block of 32.
// progress: a progress bar on stderr.
int speck_grow_model(const char *src_path, const speck_preset *target, speck_type type,
                     uint64_t seed, bool progress, const char *out_path);

/* ------------------------------------------------------------------------------------------ */
/* Tokenizers                                                                                  */
/* ------------------------------------------------------------------------------------------ */

typedef enum { SPECK_VOCAB_SPM = 1, SPECK_VOCAB_BPE = 2 } speck_vocab_type;

typedef struct speck_vocab speck_vocab;

// Build the vocabulary described by a GGUF file's tokenizer.ggml.* keys (model "llama" =
// SentencePiece-style BPE, "gpt2" = byte-level BPE with the pre-tokenizer named by
// tokenizer.ggml.pre).
speck_vocab *speck_vocab_from_gguf(const speck_gguf *g);
// Load from a GGUF file, a Hugging Face tokenizer.json, or a directory holding tokenizer.json
// (and optionally tokenizer_config.json).
speck_vocab *speck_vocab_load(const char *path);
void speck_vocab_free(speck_vocab *v);
speck_vocab_type speck_vocab_kind(const speck_vocab *v);
int32_t speck_vocab_n_tokens(const speck_vocab *v);
int32_t speck_vocab_bos(const speck_vocab *v); // -1 if none
int32_t speck_vocab_eos(const speck_vocab *v); // -1 if none
bool speck_vocab_add_bos(const speck_vocab *v);
bool speck_vocab_add_eos(const speck_vocab *v);
// True for end-of-generation tokens (eos, eot, <|im_end|>, ...).
bool speck_vocab_is_eog(const speck_vocab *v, int32_t id);
// Token text as stored in the vocabulary (e.g. "▁the", "Ġthe", "<0x0A>"), NUL-terminated.
const char *speck_vocab_token_text(const speck_vocab *v, int32_t id);
// The chat template string (tokenizer.chat_template) or NULL.
const char *speck_vocab_chat_template(const speck_vocab *v);

// Encode len bytes of text into ids. add_special: add BOS/EOS as the vocabulary's flags say;
// parse_special: recognise special/added-token text in the input (never otherwise).
// Returns the number of ids produced; when that exceeds max_ids only max_ids were written (call
// again with a larger buffer). Negative speck_err on failure.
int64_t speck_tokenize(const speck_vocab *v, const char *text, size_t len, bool add_special,
                       bool parse_special, int32_t *ids, int64_t max_ids);
// Bytes of token id (byte tokens decoded, ▁ / byte-level mapping undone). Returns the number of
// bytes (written up to size), or a negative speck_err for an out-of-range id.
int speck_token_to_piece(const speck_vocab *v, int32_t id, char *buf, int size);
// Decode ids into text (written up to size, NUL-terminated when room). Returns bytes needed
// (excluding NUL) or a negative speck_err. Leading-space handling follows the vocabulary.
int64_t speck_detokenize(const speck_vocab *v, const int32_t *ids, int64_t n, char *buf,
                         int64_t size);

// Streaming detokenizer: feed ids one at a time and get back only complete UTF-8 text.
typedef struct speck_detok speck_detok;
speck_detok *speck_detok_new(const speck_vocab *v);
void speck_detok_free(speck_detok *d);
// Append id; returns a NUL-terminated string of the newly completed text (valid until the next
// call), "" while a UTF-8 sequence is still incomplete, or NULL on an out-of-range id.
const char *speck_detok_push(speck_detok *d, int32_t id);
// Whatever bytes remain at the end (invalid/incomplete UTF-8 is flushed as-is).
const char *speck_detok_flush(speck_detok *d);

// Chat templates. speck renders the prompt formats of the common instruction-tuned families
// itself (it does not interpret Jinja): "chatml" (Qwen2 and many fine-tunes), "qwen3", "llama2",
// "llama3", "mistral", "gemma", "phi3", "zephyr" (docs/tokenizers.md shows each).
typedef struct {
    const char *role; // "system", "user", "assistant", "tool" (qwen3; others pass through where
                      // the format names roles itself: chatml, llama3, gemma)
    const char *content;
} speck_chat_msg;

// Options of speck_chat_apply_ex. The per-message fields are arrays parallel to the messages
// (entries NULL where a message has none); qwen3 reads them, the other formats ignore them.
typedef struct {
    bool add_generation_prompt; // append the opening of an assistant turn
    bool disable_thinking;      // qwen3: open it with an empty <think></think> block (Qwen3's
                                // enable_thinking = false)
    const char *tools; // qwen3: JSON array of tool definitions for the system prompt, or NULL
    const char *const *reasoning_content; // (n) or NULL: an assistant turn's reasoning (else
                                          // the text of a <think> block in its content)
    const char *const *tool_calls;        // (n) or NULL: an assistant turn's calls, a JSON array of
                                          // {"name", "arguments"} or {"function": {"name",
                                          // "arguments"}} (arguments: an object or a string)
} speck_chat_opts;

// The built-in names, NULL-terminated.
const char *const *speck_chat_templates(void);
// Canonical name for a name or alias ("qwen2" -> "chatml", "Llama-3" -> "llama3"); NULL if unknown.
const char *speck_chat_template_name(const char *name);
// Which built-in format a model's Jinja template (tokenizer.chat_template, or tokenizer_config.json
// "chat_template") is, recognised by its markers: "<|im_start|>" with "<think>" qwen3 / without
// chatml, "<|start_header_id|>" llama3, "<start_of_turn>" gemma, "[INST]" with "<<SYS>>" llama2 /
// without mistral, "<|user|>" with "<|end|>" phi3 / with "</s>" or eos_token zephyr. NULL if none
// matches or s is NULL.
const char *speck_chat_template_detect(const char *template_str);
// Render a conversation as the named format (name or alias) does, byte for byte what the family's
// Jinja template gives for these messages; add_generation_prompt appends the opening of an
// assistant turn. System messages: gemma folds the first one into the first user turn, llama2
// puts it between <<SYS>> markers and mistral before a blank line inside the first [INST].
// Writes up to size bytes (NUL-terminated when size > 0) and returns the bytes needed (excluding
// the NUL), like snprintf; SPECK_ERR_UNSUPPORTED for an unknown name, SPECK_ERR_ARG for NULL
// roles/contents.
// BOS: like the Jinja, llama2, llama3, mistral and gemma output begins with the BOS text ("<s>",
// "<|begin_of_text|>", "<bos>"), so tokenize the result with add_special = false (else the BOS
// appears twice) and parse_special = true (so the markers become their special tokens).
int64_t speck_chat_apply(const char *name, const speck_chat_msg *msgs, int n,
                         bool add_generation_prompt, char *buf, int64_t size);
// The same with options (tools, thinking; opts NULL: a generation prompt, nothing else).
// qwen3 renders Qwen3's template: a system prompt listing the tools, earlier assistant turns
// without their reasoning, the turns after the last user query with it (in <think> blocks),
// tool calls as <tool_call> JSON (objects re-serialised as Python's json.dumps does), "tool"
// messages as <tool_response> blocks of a user turn. SPECK_ERR_ARG for tools / tool_calls that
// are not valid JSON.
int64_t speck_chat_apply_ex(const char *name, const speck_chat_msg *msgs, int n,
                            const speck_chat_opts *opts, char *buf, int64_t size);

/* ------------------------------------------------------------------------------------------ */
/* Sampling                                                                                    */
/* ------------------------------------------------------------------------------------------ */

typedef struct {
    float temperature;    // <= 0: greedy (argmax)
    int top_k;            // <= 0: off
    float top_p;          // >= 1: off
    float min_p;          // <= 0: off
    float repeat_penalty; // 1: off; > 1 penalises tokens seen in the last repeat_last_n
    int repeat_last_n;
    uint64_t seed;
} speck_sampler_params;

speck_sampler_params speck_sampler_default(void); // greedy, all filters off, seed 42

typedef struct speck_sampler speck_sampler;
speck_sampler *speck_sampler_new(const speck_sampler_params *p, int n_vocab);
void speck_sampler_free(speck_sampler *s);
// Record an accepted token (for the repetition penalty history).
void speck_sampler_accept(speck_sampler *s, int32_t token);
void speck_sampler_reset(speck_sampler *s);
// Turn logits (n_vocab) into the final sampling distribution probs (n_vocab) after penalty,
// temperature and the top-k/top-p/min-p filters; for greedy, a point mass at the argmax.
void speck_sampler_probs(speck_sampler *s, const float *logits, float *probs);
// Draw a token from logits (uses speck_sampler_probs and the sampler's RNG).
int32_t speck_sampler_sample(speck_sampler *s, const float *logits);
// Uniform double in [0, 1) from the sampler's seeded RNG.
double speck_sampler_uniform(speck_sampler *s);
// True when the sampler is greedy (temperature <= 0).
bool speck_sampler_is_greedy(const speck_sampler *s);

// Index of the largest value (first on ties).
int32_t speck_argmax(const float *x, int n);

/* ------------------------------------------------------------------------------------------ */
/* Serving: continuous batching (src/serve/)                                                  */
/* ------------------------------------------------------------------------------------------ */

// A continuous-batching scheduler over a speck_mctx (src/serve/sched.c): requests join and leave
// between passes; every pass runs one token of each decoding request, then prompt chunks of the
// others up to a token budget (a long prompt never stalls the running decodes); identical prompt
// prefixes reuse cached KV blocks (a chained hash per block of block_size tokens, blocks kept
// alive by the cache and evicted least recently used when the pool runs short); when the pool is
// still short the newest request is preempted (its blocks freed, its tokens recomputed later,
// which gives the same numbers). Each request samples with its own settings and seed: since a
// token's logits do not depend on the batch, its output is the same whatever runs beside it.
// Not thread-safe: one thread drives it (the server holds a lock around every call).
typedef struct speck_sched speck_sched;

typedef struct {
    int n_seq;         // requests decoded together (0: 4)
    int n_blocks;      // KV blocks in the pool (0: enough for n_seq requests of max_len)
    int block_size;    // positions per block (0: 16)
    int max_len;       // positions per request, prompt + output (0: the model's, <= 4096)
    int max_batch;     // tokens per pass (0: 256)
    int prefill_chunk; // prompt tokens per request per pass (0: 128)
    bool no_prefix_cache;
    // Accelerated decoding per request: "prompt", "aded" or "prompt,aded" (NULL or "none":
    // off). Each decoding request's drafters propose a chain of up to max_draft tokens (0: 4)
    // after its last token; the chain goes into the same pass as more tokens of that sequence,
    // is verified with the lossless acceptance rule (greedy: the same tokens as without drafts;
    // sampling: the same distribution) and its rejected tail is dropped from the KV cache. At
    // most max_draft_tokens (0: 16) draft tokens per pass: with many streams a pass is no longer
    // bound by reading the weights, and extra rows cost their full compute. Requests with a
    // grammar decode without drafts.
    const char *draft;
    int max_draft, max_draft_tokens;
} speck_sched_params;

typedef enum {
    SPECK_FINISH_NONE = 0, // a token, more to come
    SPECK_FINISH_STOP,     // an end-of-generation token (not passed on)
    SPECK_FINISH_LENGTH,   // max_tokens, or the request's max_len reached
    SPECK_FINISH_CANCEL,   // speck_sched_cancel / speck_sched_free
} speck_finish;

// Called from speck_sched_step for every generated token (finish NONE, logprob: its log
// probability under the model's distribution at temperature 1), and once at the end (token -1
// and the reason). Returning false ends the request at once (the scheduler calls it no more).
typedef bool (*speck_sched_cb)(void *user, int32_t token, float logprob, speck_finish finish);

typedef struct {
    const int32_t *prompt; // (n_prompt), copied
    int n_prompt;
    int max_tokens;              // >= 1
    speck_sampler_params sample; // temperature, top_p, ..., seed
    bool ignore_eos;             // end-of-generation tokens do not end it (benchmarks)
    // Constrained output (speck_grammar.h), or NULL: each step's logits are masked to what the
    // grammar allows, and the request stops (SPECK_FINISH_STOP) when the grammar is complete and
    // takes nothing more. Copied at submit; logprobs stay the model's unmasked ones.
    const struct speck_grammar *grammar;
    speck_sched_cb cb;
    void *user;
} speck_request;

typedef struct {
    int64_t requests, prompt_tokens, cached_tokens, gen_tokens, passes, preempted;
    int64_t drafted, draft_accepted; // draft tokens verified, and accepted
    int queued, running, blocks_used, blocks_total, blocks_cached;
} speck_sched_stats;

// vocab decides which tokens end a generation (may be NULL: none do).
speck_sched *speck_sched_new(const speck_model *m, const speck_vocab *v,
                             const speck_sched_params *p);
// Ends every request (callbacks with SPECK_FINISH_CANCEL).
void speck_sched_free(speck_sched *s);
int speck_sched_max_len(const speck_sched *s);
// Queue a request; returns its id (>= 0) or a negative speck_err: SPECK_ERR_RANGE when the prompt
// leaves no room for a token in max_len, SPECK_ERR_ARG for an empty prompt, bad ids or
// max_tokens < 1.
int64_t speck_sched_submit(speck_sched *s, const speck_request *r);
// End a queued or running request at the next step (callback with SPECK_FINISH_CANCEL); 0, or
// SPECK_ERR_ARG for an unknown id.
int speck_sched_cancel(speck_sched *s, int64_t id);
// The prompt tokens a queued or running request took from the prefix cache when it was last
// admitted (0 before that, or without the cache); SPECK_ERR_ARG for an unknown id. Callbacks may
// call it (the server reports it as usage.prompt_tokens_details.cached_tokens).
int speck_sched_cached_tokens(const speck_sched *s, int64_t id);
// Admit what fits, run one pass, deliver its tokens. Returns the tokens the pass ran (0: nothing
// to do) or a negative speck_err.
int speck_sched_step(speck_sched *s);
void speck_sched_get_stats(const speck_sched *s, speck_sched_stats *st);

/* ------------------------------------------------------------------------------------------ */
/* Hugging Face checkpoints: safetensors + config.json <-> GGUF                                */
/* ------------------------------------------------------------------------------------------ */

// One tensor of a safetensors checkpoint. The shape is as in the file: shape[0] outermost, so
// a (rows, cols) weight has shape {rows, cols} (GGUF ne = {cols, rows}).
typedef struct {
    const char *name;
    speck_type type; // F32, F16 or BF16 (other dtypes are rejected when opening)
    int n_dims;      // 0..8
    int64_t shape[8];
    int64_t n_elements;
    size_t n_bytes;
    const void *data; // pointer into the read-only mapping
    const char *file; // the shard holding it
} speck_st_tensor;

typedef struct speck_st speck_st;

// Open a .safetensors file, a model.safetensors.index.json (every shard its weight_map names),
// or a directory holding either. Validates header length, JSON, dtypes, that data_offsets lie in
// the data section without overlapping, that shape x dtype size equals the byte length, that
// every indexed tensor is in the shard named, and that no name repeats.
speck_st *speck_st_open(const char *path);
void speck_st_close(speck_st *s);
int64_t speck_st_n_tensors(const speck_st *s);
const speck_st_tensor *speck_st_tensor_at(const speck_st *s, int64_t i);
const speck_st_tensor *speck_st_find(const speck_st *s, const char *name); // NULL if absent
size_t speck_st_largest_file(const speck_st *s); // bytes of the largest shard

// Convert a Hugging Face directory (config.json, safetensors, tokenizer.json and
// tokenizer_config.json) of a LlamaForCausalLM / MistralForCausalLM / Qwen2ForCausalLM model
// into a GGUF file with llama.cpp's keys and tensor names (llama Q/K rows permuted to
// interleaved RoPE). type: matrices' type (any speck_type_name names), or -1 to keep the
// checkpoint's dtype; norms and biases are f32. Tensors are streamed one at a time into a
// temporary file renamed into place, so memory stays small and a failure leaves no file.
// progress: a progress bar on stderr.
int speck_hf_convert(const char *hf_dir, const char *out_path, int type, bool progress);

// Load a model straight from a Hugging Face directory: it is converted (keeping its dtype) to
// an unlinked temporary GGUF in $TMPDIR (default /tmp), which needs that much free disk while
// the model is loaded, and then mapped like any GGUF.
speck_model *speck_model_load_hf(const char *hf_dir);
// The other way: write config.json, model.safetensors (dtype F32, F16 or BF16), tokenizer.json
// and tokenizer_config.json into out_dir (created; an existing directory is replaced) from a
// GGUF of any architecture convert reads, via a temporary directory renamed into place. A
// mixture of experts' stacked 3-D tensors become transformers' one tensor per expert (Mixtral's
// block_sparse_moe.experts.E.{w1,w3,w2}, the others' mlp.experts.E.{gate,up,down}_proj) and its
// config the class's expert keys.
int speck_hf_export(const char *gguf_path, const char *out_dir, speck_type dtype, bool progress);

/* ------------------------------------------------------------------------------------------ */
/* Accelerated decoding: draft-and-verify with identical output                                */
/* ------------------------------------------------------------------------------------------ */

// Where draft tokens come from. Several may be chained: the first that proposes something wins
// for that step (e.g. prompt lookup first, ADED when it finds nothing).
typedef enum {
    SPECK_DRAFT_NONE = 0,
    SPECK_DRAFT_PROMPT = 1, // n-gram match in prompt + generated text (prompt lookup)
    SPECK_DRAFT_ADED = 2,   // adaptive tri-gram statistics of the model's own output (ADED)
    SPECK_DRAFT_JACOBI = 3, // Jacobi iteration with an n-gram pool from its trajectories
    SPECK_DRAFT_MODEL = 4,  // a smaller model with the same vocabulary
} speck_draft_kind;

typedef struct {
    speck_draft_kind kinds[4];      // tried in order; SPECK_DRAFT_NONE ends the list
    const speck_model *draft_model; // for SPECK_DRAFT_MODEL (same vocabulary as the target)
    int max_draft;                  // longest draft chain (default 4)
    int max_nodes;  // most candidate tokens verified in one pass, all branches (default 4)
    int tree_width; // alternatives at the first draft position: 1 = a chain (default 1)
    float adaptive; // > 0: stop extending a draft once the predicted chance that some draft
                    // token is rejected exceeds this (SpecDec++-style); 0: fixed length
    bool
        auto_budget; // choose the candidates per pass (at most max_nodes) from this
                     // machine's measured cost of verifying n tokens, the drafter's cost and
                     // the observed acceptance (per drafter-confidence bin for cheap
                     // drafters, which then propose a full tree that is pruned); the cost
                     // curve is measured once per decoder. Output stays identical; with sampling,
                     // the random stream then depends on those timings (the distribution does not).
    bool fixed_budget; // sampling only: verify what the drafters propose (up to max_nodes) even
                       // when it does not pay. By default a sampling decoder budgets as
                       // auto_budget does, so that where drafts are rarely accepted it falls back
                       // to plain steps on its own (probing now and then to resume drafting);
                       // greedy decoding budgets this way only with auto_budget.
    int ngram_max;   // prompt lookup: longest suffix n-gram matched (default 3)
    const int32_t *warm_tokens; // ADED: token stream to warm the tri-gram statistics, or NULL
    int64_t n_warm;
} speck_spec_params;

speck_spec_params speck_spec_default(void);
// Parse "prompt", "aded", "jacobi", "model", "none" or a comma list ("prompt,aded") into kinds.
int speck_spec_parse_kinds(const char *s, speck_draft_kind kinds[4]);
const char *speck_draft_kind_name(speck_draft_kind k);

typedef struct {
    int n_prompt, n_generated;
    int n_passes;                       // target forward passes (prefill excluded)
    int n_drafted;                      // candidate tokens verified
    int n_accepted;                     // candidate tokens accepted
    double t_total, t_draft, t_prefill; // seconds
    const char *stop_reason;            // "length", "end of generation", "context full", "callback"
} speck_spec_stats;

// Called for every token as it is accepted; return false to stop generating.
typedef bool (*speck_token_cb)(int32_t token, void *user);

typedef struct speck_decoder speck_decoder;

// A decoder for `model` over context c (cleared on each run). The draft model, when used, gets
// a context of its own.
speck_decoder *speck_decoder_new(const speck_model *model, speck_ctx *c,
                                 const speck_spec_params *p);
void speck_decoder_free(speck_decoder *d);
// Generate up to n_predict tokens after the prompt. With a greedy sampler the output is
// token-identical to plain greedy decoding; otherwise the speculative-sampling acceptance rule
// keeps the output distribution identical to plain sampling with the same settings. eog: token
// predicate for end of generation (NULL: never stop early), stops after emitting that token.
int speck_decode(speck_decoder *d, const int32_t *prompt, int n_prompt, int n_predict,
                 speck_sampler *s, bool (*eog)(int32_t tok, void *user), speck_token_cb cb,
                 void *user, speck_spec_stats *stats);

/* ------------------------------------------------------------------------------------------ */
/* SCMoE: self-contrast decoding of a mixture of experts (docs/decoding.md)                    */
/* ------------------------------------------------------------------------------------------ */
//
// Shi et al. 2024, "Unchosen Experts Can Contribute Too": the same model runs twice, with its
// usual top-k routing (the strong activation) and with a weak one (only the expert the router
// ranks weak_rank-th, "rank-k routing"), each path with its own hidden states and KV cache. The
// next token is chosen from
//     score(v) = (1 + beta) * z_strong(v) - beta * z_weak(v)   where p_strong(v) >= alpha * max p_strong
//     score(v) = -inf                                            elsewhere (the plausibility mask)
// (z: logits). beta = 0 is plain decoding. Both paths run in one forward pass: their tokens are
// one batch over one KV cache holding both paths' entries (a mask keeps each path to its own), so
// every weight — router, attention, the experts both paths chose — is read once per step (the
// router is one two-row product; each row then routes by its path). On olmoe-1b-7b Q4_0 a step
// costs 1.24x a plain one, two separate passes 1.62x (BENCHMARKS.md). A shared expert runs on
// both paths; the weak expert is weighted as the family weighs a chosen one (1 when it
// renormalises the top-k, else its router probability).

typedef struct {
    float alpha;   // plausibility cut-off, (0, 1] (paper: 0.1)
    float beta;    // contrast strength, >= 0 (paper's code default: 0.5)
    int weak_rank; // the weak path runs the expert of this router rank, 1..n_expert (default 2;
                   // 1 = top-1 routing)
} speck_scmoe_params;

speck_scmoe_params speck_scmoe_default(void); // alpha 0.1, beta 0.5, weak_rank 2

// out (n_vocab) = the contrast scores above from the two paths' logits (n_vocab each).
void speck_scmoe_scores(const float *strong, const float *weak, int n_vocab, float alpha,
                        float beta, float *out);

typedef struct speck_scmoe speck_scmoe;
// Both paths over model m, room for n_ctx positions each (0: the model's context, at most 4096;
// the cache holds 2 n_ctx entries of kv_type, see speck_ctx_new_kv). SPECK_ERR_UNSUPPORTED for a
// dense model or one with sliding-window layers; SPECK_ERR_ARG for parameters out of range.
speck_scmoe *speck_scmoe_new(const speck_model *m, int n_ctx, speck_type kv_type,
                             const speck_scmoe_params *p);
void speck_scmoe_free(speck_scmoe *s);
void speck_scmoe_reset(speck_scmoe *s);     // forget the sequence
int speck_scmoe_n_past(const speck_scmoe *s); // positions in each path
// Append n tokens to both paths (one forward pass of 2n tokens) and write the next token's
// contrast scores (n_vocab); strong / weak (n_vocab each, may be NULL) receive the two paths'
// logits.
int speck_scmoe_eval(speck_scmoe *s, int n, const int32_t *tokens, float *scores, float *strong,
                     float *weak);
// Generate up to n_predict tokens after the prompt (s is reset first), each drawn by sampler from
// the contrast scores (greedy: their argmax). eog, cb, stats as for speck_decode (stats'
// n_passes counts the steps; nothing is drafted).
int speck_scmoe_generate(speck_scmoe *s, const int32_t *prompt, int n_prompt, int n_predict,
                         speck_sampler *sampler, bool (*eog)(int32_t tok, void *user),
                         speck_token_cb cb, void *user, speck_spec_stats *stats);

#ifdef __cplusplus
}
#endif

// Training, the compression and adaptation families and constrained output, split out to keep
// this manual readable. Inside the guard, so that each part, which includes this file first,
// finds the parts before it complete (adaptation uses training's optimizer and checkpoints).
#include "speck_train.h"
#include "speck_quant.h"
#include "speck_adapt.h"
#include "speck_grammar.h"
#endif
