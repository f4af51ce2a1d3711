// Adapter internals shared by the files of src/adapt/: the in-memory LoRA adapter, the targets'
// names, the adapter run state a model carries while adapters are attached.
#ifndef SPECK_ADAPT_INTERNAL_H
#define SPECK_ADAPT_INTERNAL_H

#include "model/model_internal.h"
#include "speck.h"

// One adapted matrix W: (n_out, n_in): ΔW = scale · B·A with a: (rank, n_in), b: (n_out, rank)
// (llama.cpp's lora_a ne = {n_in, rank}, lora_b ne = {rank, n_out}; PEFT's lora_A.weight
// (rank, in), lora_B.weight (out, rank)). rank 0: the matrix is not adapted.
typedef struct {
    int rank;
    int64_t n_in, n_out;
    float *a, *b;
} speck_lora_mat;

struct speck_lora {
    char arch[32];     // general.architecture of the base
    int n_layer;       // layers the table covers (the base may have more only if untouched)
    float alpha;       // adapter.lora.alpha; scale = alpha / rank (alpha 0: scale 1, as llama.cpp)
    speck_lora_mat *m; // (n_layer, SPECK_LORA_N_TARGETS)
    float *data;       // every matrix's a then b, in (layer, target) order: the trainable vector
    int64_t n_params;
};

// GGUF name of a target's weight after "blk.N." ("attn_q"), and its short name ("q").
const char *speck_lora_target_gguf(int t);
const char *speck_lora_target_short(int t);
// The base weight a target adapts.
const speck_weight *speck_lora_base_weight(const speck_model *m, int l, int t);
// Allocate an adapter whose matrices have the given ranks ((n_layer, targets), 0 = none) and the
// base's shapes; data zero.
speck_lora *speck_lora_alloc(const char *arch, int n_layer, const int *ranks,
                             const int64_t *n_in, const int64_t *n_out, float alpha);
// speck_lora_from_gguf ignoring tensors whose names start with skip (a checkpoint's moments).
speck_lora *speck_lora_from_gguf_skip(const speck_gguf *g, const char *path, const char *skip);
// Scale of matrix mt under the adapter's alpha and a user scale (llama.cpp's rule).
static inline float speck_lora_scale(const speck_lora *a, const speck_lora_mat *mt, float user) {
    return a->alpha != 0 ? user * a->alpha / (float)mt->rank : user;
}

// A fine-tuning delta (delta.c, delta_io.c). One tensor: dense (nnz < 0, val: (n) values) or
// sparse (idx: (nnz) increasing flat positions, val: (nnz) values; ternary: every |val| is
// scale, stored as sign bits). ne as in GGUF (ne[0] fastest).
typedef struct {
    char *name;
    int n_dims;
    int64_t ne[4], n;
    int64_t nnz;
    int64_t *idx;
    float *val;
    bool ternary;
    float scale;
} speck_delta_tensor;

struct speck_delta {
    char arch[64];
    speck_delta_method method;
    float p, rescale, density, alpha;
    uint64_t seed;
    char sft[16];     // SFT: "spiel", "s2ft", "sum"
    uint64_t base_fp; // speck_delta_base_fp of the base it was trained on; 0: unknown
    int n;
    speck_delta_tensor *t;
};

// A fingerprint of a base model, independent of what a delta touches: FNV-1a 64 of the f32 bit
// patterns of the first 4096 values of token_embd.weight (dequantized) and all of
// output_norm.weight. emb/norm: those values, n_emb/n_norm of them. Never 0.
uint64_t speck_delta_base_fp(const float *emb, int64_t n_emb, const float *norm, int64_t n_norm);
#define SPECK_DELTA_FP_EMB 4096
// The same of a base GGUF (0: it lacks token_embd or output_norm, or speck cannot read them).
uint64_t speck_delta_gguf_fp(const speck_gguf *g);

// Append an empty tensor (name copied); NULL when out of memory.
speck_delta_tensor *speck_delta_push(speck_delta *d, const char *name, int n_dims,
                                     const int64_t *ne);

#endif
