// The inference context: the KV cache (kv_cache.c) and the forward pass's scratch (llama.c).
#ifndef SPECK_CTX_INTERNAL_H
#define SPECK_CTX_INTERNAL_H

#include <stdbool.h>
#include <stdint.h>

#include "model/model_internal.h"
#include "model/team.h"

// A windowed layer's cache is a ring of n_swa + SWA_SPARE rows: the window of the last new token
// plus the tokens of one streaming pass, which are written before they attend (passes of up to
// 63 tokens; longer batches gather the window instead, llama.c). Truncating back by up to
// SWA_SPARE entries keeps every window whole (speculative decoding rolls back a few).
#define SWA_SPARE 64

struct speck_ctx {
    const speck_model *m;
    int n_ctx, n_past;
    int kv_dim;           // n_head_kv * head_dim
    void **k, **v;        // per layer: (n_head_kv, cap[l], head_dim) of kv_type, see kv_at
    int *cap;             // per layer: rows of its cache: n_ctx, or a windowed layer's ring
    int swa_cap;          // rows of a windowed layer's ring; 0 when no layer is windowed
    int swa_lo;           // windowed layers: the oldest entry their rings still hold
    bool seq_pos;         // every cache entry's RoPE position is its index
    int32_t *kpos;        // (n_ctx) RoPE position of each cache entry (the windows are by position)
    speck_type kv_type;   // SPECK_TYPE_F32, F16, Q8_0 or Q4_0 (blocks along each head's row)
    size_t kv_row;        // bytes of one head's cached row (head_dim values of kv_type)
    const float *freq[2]; // (head_dim / 2) RoPE frequencies: the model's (LongRoPE's short or
                          // long ones for this context), the windowed layers' own
    // Scratch grown on demand to the largest batch seen.
    int cap_tok;                    // tokens the scratch below holds
    float *x, *xn;                  // (n, n_embd)
    uint8_t *erow;                  // one embedding row of the weights' type
    float *xo;                      // (n, n_embd) post-norm models: a block's output
    float *q;                       // (n, n_head*hd)
    float *att;                     // (n, n_head*hd)
    float *g, *u;                   // (n, n_ff)
    float *scores;                  // (threads, ATT_GROUP_Q, n_ctx)
    float *att_s;                   // (threads, ATT_ROWS, n_ctx) attention probabilities of a batch
    uint8_t *allow;                 // (threads, ATT_GROUP_Q or ATT_ROWS, n_ctx) windows' masks
    float *rope_cs[2], *rope_sn[2]; // (cap_tok, head_dim / 2) per frequency table
    int scores_threads, att_s_threads, allow_threads; // threads these hold rows for
    float *kvt; // streaming path, f16 cache or windowed layers: (threads, n, head_dim) new rows
    float *kvf; // batch path: one layer's K and V as floats, (2, n_kv, keys, hd)
    size_t kvt_cap, kvf_cap; // floats allocated
    // Streaming path (n < stream_max()): one buffer per thread, normalised rows, the residual
    // stream of post-norm models, then prepared activations, grown on demand.
    char **tbuf;
    size_t tbuf_bytes;
    int tbuf_threads;
    speck_barrier bar;  // forward_stream's barriers
    speck_balancer bal; // forward_stream's row splits
    speck_matmul_hook hook; // calibration: sees every matrix product's input (batch path only)
    void *hook_user;
    float *kvn; // q/k norms over whole rows (olmoe), streaming path: (n, 3 kv_dim) raw K, raw V,
                // normalised K
    struct speck_moe_scratch *moe; // the mixture of experts' scratch (moe.c), or NULL
    int64_t *expert_counts;        // (n_layer, n_expert) tokens routed to each expert, or NULL
    const int *moe_rank; // (n) of the next pass, or NULL: per token 0 = the usual top-k routing,
                         // r > 0 = only the r-th ranked expert (src/decode/scmoe.c sets it)
    // The last pass's output rows after the final norm (speck_ctx_hidden): a pointer into the
    // scratch that pass used (thread 0's rows on the streaming path, xn on the batch path).
    const float *hidden;
    int n_hidden;
};

// g (n) = act(g) * u (llama.c): the FFN's activation, for dense blocks and experts alike.
void speck_ffn_act(speck_act act, float *g, const float *u, size_t n);

// The mixture-of-experts FFN (moe.c). Scratch for n-token passes (0, or -1: out of memory).
typedef struct speck_moe_scratch speck_moe_scratch;
int speck_moe_reserve(speck_ctx *c, int n);
void speck_moe_free(speck_ctx *c);
// Streaming path, called by every thread of forward_stream's parallel region (tid of nth) with
// its normalised rows xn (n, n_embd), the same on every thread: layer l's experts into y (n,
// n_embd), = or += (accumulate), each thread writing its own columns. Holds two barriers; none
// at the end (the caller's follows).
void speck_moe_stream(speck_ctx *c, int l, const float *xn, int n, float *y, bool accumulate,
                      int tid, int nth);
// Batch path (outside a parallel region; parallel inside): the same for xn (n, n_embd).
void speck_moe_batch(speck_ctx *c, int l, const float *xn, int n, float *y, bool accumulate);

// Layer l's cache (c->k[l] or c->v[l]: (n_head_kv, cap[l], head_dim) of kv_type): KV group g's
// row for cache entry idx — slot idx in a full cache, idx mod cap in a windowed layer's ring. Each
// group's rows are contiguous, so attention streams them without striding over other groups.
static inline void *kv_at(const speck_ctx *c, int l, void *cache, int g, int idx) {
    const int cap = c->cap[l];
    return (char *)cache + ((size_t)g * cap + (size_t)(idx % cap)) * c->kv_row;
}

// Stores n rows of head_dim floats (src, src_ld apart) as layer l's cache entries idx.. of group
// g (rounded to the cache's type: f16, or Q8_0 / Q4_0 blocks).
void speck_kv_store(const speck_ctx *c, int l, void *cache, int g, int idx, const float *src,
                    int64_t src_ld, int n);

// The oldest entry a windowed layer still holds after a pass that filled entries up to n_total.
static inline int swa_held_from(const speck_ctx *c, int n_total) {
    const int lo = n_total - c->swa_cap;
    return lo > c->swa_lo ? lo : c->swa_lo;
}

// The forward pass's per-row operations (llama.c), shared with the multi-sequence forward
// (src/serve/forward_batch.c) so a token's arithmetic is the same on both.
// out (dim) = x / rms(x) * w
void speck_op_rmsnorm_row(float *out, const float *x, const float *w, int dim, float eps);
// Rotate every head of x (n, n_heads * hd) in place, each RMS-normalised first by norm (hd) when
// norm is not NULL; cs, sn: (n, hd / 2).
void speck_op_rope(float *x, const float *cs, const float *sn, int n, int n_heads, int hd,
                   speck_rope_type type, const float *norm, float eps);
// cs, sn: (n, hd / 2) for positions pos (n), times mscale.
void speck_op_rope_tables(float *cs, float *sn, const int32_t *pos, int n, int hd,
                          const float *freq, float mscale);
void speck_op_softcap_row(float *s, size_t n, float c); // s -> c tanh(s / c)
void speck_op_add(float *x, const float *y, size_t n);                     // x += y

#endif
