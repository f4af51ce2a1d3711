// Architecture descriptions: what sets one model family apart, as data that the one loader
// (model.c), the one forward pass (llama.c), the hyper-parameter writer (hparams.c) and the
// Hugging Face converters (hf_convert.c, hf_export.c) read. Each family has one file holding its
// descriptions — arch_llama.c (llama, Mistral's window, SmolLM), arch_qwen.c (qwen2, qwen3),
// arch_gemma.c (gemma2, gemma3), arch_phi3.c — so "what is Gemma 3 in speck" is one file:
// its layer structure, tensors (GGUF and Hugging Face names, shapes) and the keys it reads.
#ifndef SPECK_ARCH_H
#define SPECK_ARCH_H

#include <cjson/cJSON.h>
#include <stdbool.h>

#include "speck.h"

// Where a layer tensor goes in speck_layer (model_internal.h). Fused tensors are split at load
// into the row ranges of their parts: the forward pass only ever sees q/k/v and gate/up.
// Whatever the table says, a GGUF file may hold q/k/v (and their biases) fused as attn_qkv or as
// three tensors, as llama.cpp accepts for every architecture.
typedef enum {
    SLOT_ATTN_NORM,      // (n_embd) RMSNorm before attention
    SLOT_Q_NORM,         // (head_dim) RMSNorm of each q head before RoPE
    SLOT_K_NORM,         // (head_dim) likewise for k
    SLOT_ATTN_POST_NORM, // (n_embd) RMSNorm of the attention output before the residual add
    SLOT_FFN_NORM,       // (n_embd) RMSNorm before the FFN
    SLOT_FFN_POST_NORM,  // (n_embd) RMSNorm of the FFN output before the residual add
    SLOT_WQ,             // (n_head hd, n_embd)
    SLOT_WK,             // (n_head_kv hd, n_embd)
    SLOT_WV,             // (n_head_kv hd, n_embd)
    SLOT_WQKV,           // the three fused: (q + 2 kv rows, n_embd)
    SLOT_BQ,             // biases of q, k, v
    SLOT_BK,
    SLOT_BV,
    SLOT_WO,  // (n_embd, n_head hd) attention output
    SLOT_WG,  // (n_ff, n_embd) gate
    SLOT_WU,  // (n_ff, n_embd) up
    SLOT_WGU, // gate and up fused: (2 n_ff, n_embd), gate rows first (Phi-3's ffn_up)
    SLOT_WD,  // (n_embd, n_ff) down
    // A mixture of experts (FFN kind SPECK_FFN_MOE): the router, the experts stacked as 3-D
    // tensors (n_expert matrices one after the other, TD_EXPERTS), the shared expert.
    SLOT_ROUTER,   // (n_expert, n_embd) ffn_gate_inp
    SLOT_WG_EXPS,  // (n_expert x (n_ff_exp, n_embd)) gate of every expert
    SLOT_WU_EXPS,  // (n_expert x (n_ff_exp, n_embd)) up
    SLOT_WD_EXPS,  // (n_expert x (n_embd, n_ff_exp)) down
    SLOT_SH_GATE,  // (n_embd) the shared expert's gate: its output times sigmoid(gate · x)
    SLOT_WG_SH,    // (n_ff_shexp, n_embd) the shared expert's gate, up, down
    SLOT_WU_SH,
    SLOT_WD_SH,
} speck_slot;

// Sizes the tensor shapes are written in.
typedef enum {
    DIM_0, DIM_E, DIM_HD, DIM_Q, DIM_KV, DIM_QKV, DIM_F, DIM_2F,
    DIM_X,  // n_expert
    DIM_FX, // n_ff_exp
    DIM_FS, // n_ff_shexp
} speck_dim;

// Tensor flags.
#define TD_OPTIONAL 1u // may be absent (biases)
#define TD_NORM 2u    // a norm weight: Hugging Face may store it shifted (speck_arch.hf_norm_shift)
#define TD_PERMUTE 4u // q/k rows: HF rotate-half layout -> GGUF interleaved pairs (NORMAL RoPE)
#define TD_EXPERTS 8u // one (rows, cols) matrix per expert, stacked: GGUF [cols, rows, n_expert]
#define TD_DENSE 16u  // only in layers without experts (n_expert = 0: Llama without Mixtral's)
#define TD_MOE 32u    // only in layers with experts (n_expert > 0)
#define TD_SHARED 64u // only with a shared expert (n_ff_shexp > 0)

// One layer tensor: GGUF name after "blk.N.", Hugging Face name after "model.layers.N." (with a
// %d for the expert of TD_EXPERTS tensors, which Hugging Face stores one per expert), shape
// (rows, cols) — cols DIM_0 for a vector of `rows` values.
typedef struct {
    speck_slot slot;
    const char *gguf, *hf;
    speck_dim rows, cols;
    unsigned flags;
} speck_tensor_desc;

// How the GGUF key suffix (after "ARCH.") maps to a speck_hparams field; the loader reads it
// (default `def` when absent), speck_hparams_write writes it. Only keys beyond the ones every
// architecture has (context_length, embedding_length, ... in model.c / hparams.c).
typedef enum { KEY_INT, KEY_FLOAT } speck_key_type;
typedef struct {
    const char *gguf;
    size_t offset; // offsetof(speck_hparams, field)
    speck_key_type type;
} speck_key_desc;

// The Hugging Face side of a family: which config.json classes convert to it and the keys
// beyond the common ones (hf_convert.c reads hidden_size, intermediate_size, ... itself).
typedef struct {
    const char *const *classes; // accepted `architectures[0]`, NULL-terminated
    const char *model_type;     // config.json model_type (also accepted without architectures)
    // config.json -> hp (after the common keys); path names the file in errors. NULL: nothing.
    int (*read)(const cJSON *cfg, const char *path, speck_hparams *hp);
    // hp -> config.json (after the common keys, which export writes); names the class.
    void (*write)(cJSON *cfg, const speck_hparams *hp);
} speck_hf_desc;

// The feed-forward block of a layer. Dense: down(act(gate x) * up x). MoE: a router choosing
// experts per token, each a dense block of its own (src/model/moe.c); DENSE_OR_MOE: experts when
// the file has ARCH.expert_count (Llama: Mixtral).
typedef enum { SPECK_FFN_DENSE = 0, SPECK_FFN_MOE, SPECK_FFN_DENSE_OR_MOE } speck_ffn_kind;

// What a family's mixture of experts does beyond the common router / top-k / experts.
typedef struct {
    bool norm_topk;       // the chosen experts' weights renormalised to sum to 1 (when the file
                          // has no ARCH.expert_weights_norm): Mixtral, Qwen3-MoE
    bool shared;          // a shared expert with a sigmoid gate (Qwen2-MoE)
    bool ff_div_used;     // no expert_feed_forward_length: n_ff / n_expert_used (llama.cpp's
                          // Qwen MoE default), else n_ff
    bool ff_is_n_ff;      // the experts' width is feed_forward_length, whatever
                          // expert_feed_forward_length says (llama.cpp's llama and olmoe)
} speck_moe_desc;

typedef struct {
    const char *name;     // GGUF general.architecture, as llama.cpp names it
    speck_ffn_kind ffn;   // the FFN block
    const speck_moe_desc *moe; // its mixture of experts (ffn MOE, DENSE_OR_MOE), else NULL
    speck_rope_type rope; // NORMAL (adjacent pairs) or NEOX (halves)
    speck_act act;        // FFN activation: down(act(gate x) * up x)
    bool embd_scale;      // token embeddings multiplied by sqrt(n_embd)
    bool qkv_bias;        // q/k/v biases are always there (qwen2): export says so
    bool hf_tied;         // config.json's tie_word_embeddings when it says nothing (Gemma: true)
    float hf_norm_shift;  // Hugging Face norms multiply by (shift + w); GGUF stores shift + w
    int swa_window;       // sliding_window when the file has none (0: no window)
    int swa_period;       // sliding_window_pattern when the file has none (0: every layer)
    float rope_base_swa;  // RoPE base of windowed layers when the file says none (0: the global)
    float attn_softcap;   // soft-caps when the file says none (0: off)
    float final_softcap;
    // 1 / sqrt(query_pre_attn_scalar) when the file has no attention.scale; NULL: 1/sqrt(hd).
    float (*attn_scale)(const speck_hparams *hp);
    // A window of at least the training context is no window (Phi-3 128k files say 262144).
    bool swa_ge_ctx_is_none;
    const speck_tensor_desc *layer; // every tensor of a layer
    int n_layer_tensors;
    const speck_key_desc *keys; // keys this family reads beyond the common ones
    int n_keys;
    speck_hf_desc hf;
} speck_arch;

// Registered architectures, NULL-terminated; lookup by GGUF name (NULL if unknown).
const speck_arch *const *speck_archs(void);
const speck_arch *speck_arch_find(const char *name);
// The family whose Hugging Face classes include `hf_class` (or, when hf_class is NULL or empty,
// whose model_type is `model_type`); NULL if none.
const speck_arch *speck_arch_find_hf(const char *hf_class, const char *model_type);
// Whether layer l is windowed under sliding_window_pattern `period` (0: every layer; P: the
// first P - 1 of every P).
bool speck_swa_pattern_layer(int period, int l);
// "llama, qwen2, ..." for error messages.
const char *speck_arch_names(void);
// Rows of a dimension for hp.
int64_t speck_dim_size(speck_dim d, const speck_hparams *hp);
// The q . k scale hp gets when the file has no attention.scale key.
float speck_arch_default_attn_scale(const speck_arch *a, const speck_hparams *hp);
// Set the fields of hp that the architecture determines, to what they are when the file has no
// key for them (RoPE layout, activation, norms, scales, soft-caps, window). Needs n_embd,
// head_dim, n_layer and rope_freq_base.
void speck_arch_defaults(const speck_arch *a, speck_hparams *hp);

// Families (one file each).
extern const speck_arch speck_arch_llama;
extern const speck_arch speck_arch_qwen2, speck_arch_qwen3;
extern const speck_arch speck_arch_gemma2, speck_arch_gemma3;
extern const speck_arch speck_arch_phi3;
extern const speck_arch speck_arch_qwen2moe, speck_arch_qwen3moe, speck_arch_olmoe;

// config.json helpers shared by the families' hooks: a number (or null / absent -> def) that must
// be positive; 0 on success, an error naming path and key otherwise.
int speck_hf_num(const cJSON *j, const char *key, const char *path, double def, double *out);

// Whether the layers of a model with hp hold tensor d: the dense FFN or the experts, the shared
// expert or not (TD_DENSE / TD_MOE / TD_SHARED).
bool speck_tensor_in_layer(const speck_hparams *hp, const speck_tensor_desc *d);

#endif
