// The forward pass over N tokens with explicit positions and an attention mask over the KV cache
// (kv_cache.c), for every architecture: what sets one apart (norm placement, QK-norm,
// activation, soft-caps, windows, embedding scale, RoPE tables) comes from its description
// (arch.h) through the hyper-parameters and the layers' tensors.
#include <math.h>
#include <omp.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cblas.h>

#include "core/simd_math.h"
#include "kernels/kernels.h"
#include "model/ctx_internal.h"

// Batches of at least this many new tokens compute attention with GEMMs.
#define ATT_GEMM_MIN 16
// Query rows per unit of the batch attention.
#define ATT_ROWS 64
// Longest batch run at once: longer causal batches are split (bounded scratch, like llama.cpp's
// micro-batches).
#define UBATCH 512
// Queries per speck_attend_group call on the streaming path: a KV group's heads for a few tokens
// share each read of its keys and values; each thread's score scratch holds this many rows.
#define ATT_GROUP_Q 16

void speck_ctx_set_matmul_hook(speck_ctx *c, speck_matmul_hook fn, void *user) {
    c->hook = fn;
    c->hook_user = user;
}

// The input x (n, n_in) of weight blk.<l>.<w>.weight (l >= 0) or <w>.weight to the hook.
static void observe(const speck_ctx *c, int l, const char *w, const float *x, int n, int n_in) {
    if (!c->hook) return;
    char name[64];
    if (l >= 0)
        snprintf(name, sizeof name, "blk.%d.%s.weight", l, w);
    else
        snprintf(name, sizeof name, "%s.weight", w);
    c->hook(name, x, n, n_in, c->hook_user);
}

static int grow(float **p, size_t n) {
    float *q = realloc(*p, n * sizeof(float));
    if (!q) return -1;
    *p = q;
    return 0;
}

// Whether w runs on the panel kernels (a panel copy exists and the ISA has the kernel).
static bool use_panels(const speck_weight *w) {
    return w->packed && speck_panel_supported(w->type);
}

// Below this many tokens a forward takes the streaming path (>= ATT_GEMM_MIN, so speculative
// verification of < 16 rows is always batch-invariant).
static int stream_max(const speck_model *m) {
    int k = speck_mm_stream_max(speck_model_weight_type(m));
    // Panel kernels beat the prefill paths up to 63 tokens for every type that has them
    // (`speck bench -p N`, two alternating runs each. tinyllama-1.1b Q4_0: pp16 150-154 -> 244-278
    // tok/s, pp24 184-195 -> 260-285, pp32 259-266 -> 274-422, pp48 267-296 -> 389-412, on the
    // AVX2 path pp48 95-102 -> 126-131; the default model pp32 22.7k -> 48-51k, pp48 28.6k ->
    // 50k; smollm2-135m Q8_0 pp48 1.86k -> 2.82k). At 96 tokens the 1.1B's int8 GEMM is as fast
    // or faster (327-435 vs 322-327 tok/s) while the smaller models still gain: 64 is the bound
    // that helps all of them.
    if (use_panels(&m->layers[0].wq) && k < 64) k = 64;
    return k > ATT_GEMM_MIN ? k : ATT_GEMM_MIN;
}

static size_t align64(size_t n) {
    return (n + 63) & ~(size_t)63;
}

// Per-thread scratch of the streaming path for n tokens: (n, n_embd) normalised rows, for
// post-norm models (n, n_embd) of the residual stream, then the largest prepared activation any
// weight type needs.
static size_t tbuf_need(const speck_model *m, int n) {
    const speck_hparams *hp = &m->hp;
    int64_t in = hp->n_ff > hp->n_embd ? hp->n_ff : hp->n_embd;
    const size_t rows = align64((size_t)n * hp->n_embd * sizeof(float));
    return rows * (hp->post_norms ? 2 : 1) + align64(speck_mm_act_bytes_max(n, in)) +
           align64((size_t)n * m->lora_rsum * sizeof(float)); // adapters' x·Aᵀ (lora_rows)
}

// stream: whether this forward takes the streaming path (per-thread buffers) or the batch path.
static int reserve(speck_ctx *c, int n, bool stream) {
    const speck_hparams *hp = &c->m->hp;
    int threads = omp_get_max_threads();
    if (threads > c->scores_threads) {
        if (grow(&c->scores, (size_t)threads * ATT_GROUP_Q * c->n_ctx)) return -1;
        c->scores_threads = threads;
    }
    if (stream && (threads > c->tbuf_threads || tbuf_need(c->m, n) > c->tbuf_bytes)) {
        size_t need = tbuf_need(c->m, n < 4 ? 4 : n);
        if (need < c->tbuf_bytes) need = c->tbuf_bytes;
        int nt = threads > c->tbuf_threads ? threads : c->tbuf_threads;
        char **tb = realloc(c->tbuf, (size_t)nt * sizeof *tb);
        if (!tb) return -1;
        for (int t = c->tbuf_threads; t < nt; t++) tb[t] = NULL;
        c->tbuf = tb;
        c->tbuf_threads = nt;
        for (int t = 0; t < nt; t++) {
            char *p = aligned_alloc(64, need);
            if (!p) {
                c->tbuf_bytes = 0; // some buffers are missing or small: redo all next time
                return -1;
            }
            free(tb[t]);
            tb[t] = p;
        }
        c->tbuf_bytes = need;
    }
    if (c->kv_type != SPECK_TYPE_F32 || c->swa_cap) {
        // Streaming: new rows before they are stored. Batch: the floats of one layer's keys and
        // values, all of them (f16 or block cache) or a windowed layer's held entries and the
        // new ones.
        const size_t hd = (size_t)hp->head_dim, kv2 = 2 * (size_t)hp->n_head_kv * hd;
        const int held = c->n_past < c->swa_cap ? c->n_past : c->swa_cap;
        const size_t need =
            stream ? (size_t)threads * n * hd
                   : kv2 * (size_t)(c->kv_type != SPECK_TYPE_F32 ? c->n_past + n : held + n);
        float **p = stream ? &c->kvt : &c->kvf;
        size_t *cap = stream ? &c->kvt_cap : &c->kvf_cap;
        if (need > *cap) {
            if (grow(p, need)) return -1;
            *cap = need;
        }
    }
    if (!stream && threads > c->att_s_threads) {
        if (grow(&c->att_s, (size_t)threads * ATT_ROWS * c->n_ctx)) return -1;
        c->att_s_threads = threads;
    }
    if (hp->n_swa > 0 && threads > c->allow_threads) { // windowed layers' masks
        uint8_t *a = realloc(c->allow, (size_t)threads * ATT_ROWS * c->n_ctx);
        if (!a) return -1;
        c->allow = a;
        c->allow_threads = threads;
    }
    if (!c->erow && !(c->erow = malloc(speck_type_row_size(c->m->tok_embd.type, hp->n_embd))))
        return -1;
    if (speck_moe_reserve(c, n)) return -1;
    if (n <= c->cap_tok) return 0;
    size_t qd = (size_t)hp->n_head * hp->head_dim, half = (size_t)hp->head_dim / 2;
    if (grow(&c->x, (size_t)n * hp->n_embd) || grow(&c->xn, (size_t)n * hp->n_embd) ||
        (hp->post_norms && grow(&c->xo, (size_t)n * hp->n_embd)) || grow(&c->q, (size_t)n * qd) ||
        grow(&c->att, (size_t)n * qd) || grow(&c->g, (size_t)n * hp->n_ff) ||
        grow(&c->u, (size_t)n * hp->n_ff))
        return -1;
    for (int i = 0; i < 2; i++)
        if (grow(&c->rope_cs[i], (size_t)n * half) || grow(&c->rope_sn[i], (size_t)n * half))
            return -1;
    if (hp->qk_norm_full && grow(&c->kvn, (size_t)n * 3 * c->kv_dim)) return -1;
    c->cap_tok = n;
    return 0;
}

// out (dim) = x / rms(x) * w; x, w: (dim)
SPECK_MULTIVERSION
static void rmsnorm_row(float *out, const float *x, const float *w, int dim, float eps) {
    float s = (float)(1.0 / sqrt(speck_sum_sq(x, dim) / dim + eps));
    for (int j = 0; j < dim; j++) out[j] = x[j] * s * w[j];
}

// out: (n, dim) = x / rms(x) * w, per row; x: (n, dim), w: (dim)
static void rmsnorm(float *out, const float *x, const float *w, int n, int dim, float eps) {
#pragma omp parallel for schedule(static) if (n > 1)
    for (int i = 0; i < n; i++)
        rmsnorm_row(out + (size_t)i * dim, x + (size_t)i * dim, w, dim, eps);
}

// cs, sn: (n, hd / 2) cosine and sine of each position's angle for every rotated pair, times
// mscale (LongRoPE's attention factor; 1 otherwise). pos: (n), or NULL for first, first + 1, ...
static void rope_tables(float *cs, float *sn, const int32_t *pos, int first, int n, int hd,
                        const float *freq, float mscale) {
    int half = hd / 2;
#pragma omp parallel for schedule(static) if (n > 1)
    for (int i = 0; i < n; i++)
        for (int j = 0; j < half; j++) {
            double a = (double)(pos ? pos[i] : first + i) * freq[j];
            cs[(size_t)i * half + j] = (float)(cos(a) * mscale);
            sn[(size_t)i * half + j] = (float)(sin(a) * mscale);
        }
}

// Rotate one head in place. v: (hd); cs, sn: (hd / 2) for its token's position.
static void rope_head(float *v, const float *cs, const float *sn, int hd, speck_rope_type type) {
    int half = hd / 2;
    for (int j = 0; j < half; j++) {
        // NORMAL rotates adjacent pairs, NEOX pairs split across the two halves.
        int a = type == SPECK_ROPE_NEOX ? j : 2 * j;
        int b = type == SPECK_ROPE_NEOX ? j + half : 2 * j + 1;
        float x0 = v[a], x1 = v[b];
        v[a] = x0 * cs[j] - x1 * sn[j];
        v[b] = x0 * sn[j] + x1 * cs[j];
    }
}

// Rotate every head of x in place, each first RMS-normalised with weights norm (hd) when norm is
// not NULL (QK-norm). x: (n, n_heads * hd); cs, sn: (n, hd / 2)
static void rope(float *x, const float *cs, const float *sn, int n, int n_heads, int hd,
                 speck_rope_type type, const float *norm, float eps) {
#pragma omp parallel for schedule(static) if (n > 1)
    for (int i = 0; i < n; i++)
        for (int h = 0; h < n_heads; h++) {
            float *v = x + ((size_t)i * n_heads + h) * hd;
            if (norm) rmsnorm_row(v, v, norm, hd, eps);
            rope_head(v, cs + (size_t)i * (hd / 2), sn + (size_t)i * (hd / 2), hd, type);
        }
}

static void add_bias(float *x, const float *b, int n, int dim) {
    if (!b) return;
    for (int i = 0; i < n; i++)
        for (int j = 0; j < dim; j++) x[(size_t)i * dim + j] += b[j];
}

// Row softmax over the allowed entries of s (n_total), in place; masked entries become 0.
// Returns false when nothing is allowed.
SPECK_MULTIVERSION
static bool softmax_masked(float *s, int n_total, int limit, const uint8_t *mi) {
    float mx = -INFINITY;
    if (mi)
        for (int j = 0; j < limit; j++) s[j] = mi[j] ? s[j] : -INFINITY;
    for (int j = 0; j < limit; j++) mx = s[j] > mx ? s[j] : mx;
    for (int j = limit; j < n_total; j++) s[j] = 0.0f;
    if (mx == -INFINITY) {
        for (int j = 0; j < limit; j++) s[j] = 0.0f;
        return false;
    }
    float sum = 0.0f; // masked entries: e^-inf = 0 (speck_exp_poly flushes below -87.3)
    for (int j = 0; j < limit; j++) {
        s[j] = speck_exp_poly(s[j] - mx);
        sum += s[j];
    }
    const float inv = 1.0f / sum;
    for (int j = 0; j < limit; j++) s[j] *= inv;
    return true;
}

// s (n) -> c tanh(s / c): soft-capped logits, tanh from e = e^(-2|x|) as (1 - e) / (1 + e)
// with x's sign (absolute error ~1e-7 c).
SPECK_MULTIVERSION
static void softcap_row(float *s, size_t n, float c) {
    const float inv = 1.0f / c;
    for (size_t j = 0; j < n; j++) {
        const float x = s[j] * inv, e = speck_exp_poly(-2.0f * fabsf(x));
        s[j] = copysignf((1.0f - e) / (1.0f + e), x) * c;
    }
}

// Attention of n >= ATT_GEMM_MIN new queries over cache entries [k0, n_total), their keys and
// values given as floats: per (head, chunk of ATT_ROWS queries) S = Q Kᵀ (soft-capped), a row
// softmax and O = P V, the units in parallel with one single-threaded sgemm each (OpenBLAS runs
// serially inside a parallel region): no fork/join per head, and a causal chunk only multiplies
// the keys its last query can see (in a window over sequential positions, and its first query
// can see), which skips the masked half of the square at n_past = 0.
// q, out: (n, n_head*hd); kc, vc: per KV group gstride floats apart, (n_total - k0, hd) rows
// each, entry k0 first; mask: (n, n_total) or NULL (causal); window: the layer's, or 0.
static void attention_gemm(speck_ctx *c, const float *q, float *out, const float *kc,
                           const float *vc, size_t gstride, int n, int n_total, int k0,
                           const uint8_t *mask, int window) {
    const speck_hparams *hp = &c->m->hp;
    const int hd = hp->head_dim, nh = hp->n_head, group = hp->n_head / hp->n_head_kv;
    const int n_past = n_total - n, qd = nh * hd, nch = (n + ATT_ROWS - 1) / ATT_ROWS;
#pragma omp parallel for schedule(dynamic, 1)
    for (int u = 0; u < nh * nch; u++) {
        const int h = u / nch, i0 = u % nch * ATT_ROWS, tid = omp_get_thread_num();
        const int rows = n - i0 < ATT_ROWS ? n - i0 : ATT_ROWS;
        const int khi = mask ? n_total : n_past + i0 + rows;
        int klo = k0;
        if (window && !mask && c->seq_pos && n_past + i0 - window + 1 > klo)
            klo = n_past + i0 - window + 1;
        const int keys = khi - klo;
        const float *kb = kc + (size_t)(h / group) * gstride + (size_t)(klo - k0) * hd;
        const float *vb = vc + (size_t)(h / group) * gstride + (size_t)(klo - k0) * hd;
        float *S = c->att_s + (size_t)tid * ATT_ROWS * c->n_ctx;
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, rows, keys, hd, hp->attn_scale,
                    q + (size_t)i0 * qd + (size_t)h * hd, qd, kb, hd, 0.0f, S, keys);
        if (hp->attn_softcap > 0) softcap_row(S, (size_t)rows * keys, hp->attn_softcap);
        for (int i = 0; i < rows; i++) {
            const int qi = n_past + i0 + i, limit = mask ? keys : qi + 1 - klo;
            const uint8_t *mi = mask ? mask + (size_t)(i0 + i) * n_total + klo : NULL;
            if (window) { // the window, by position, on top of the mask
                uint8_t *a = c->allow + (size_t)tid * ATT_ROWS * c->n_ctx;
                for (int j = 0; j < limit; j++)
                    a[j] = (!mi || mi[j]) && c->kpos[qi] - c->kpos[klo + j] < window;
                mi = a;
            }
            softmax_masked(S + (size_t)i * keys, keys, limit, mi);
        }
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, rows, hd, keys, 1.0f, S, keys, vb,
                    hd, 0.0f, out + (size_t)i0 * qd + (size_t)h * hd, qd);
    }
}

// x (n) += y (n)
SPECK_MULTIVERSION
static void add_inplace(float *x, const float *y, size_t n) {
    for (size_t j = 0; j < n; j++) x[j] += y[j];
}

// g (n) = silu(g) * u
SPECK_MULTIVERSION
static void swiglu(float *g, const float *u, size_t n) {
    for (size_t j = 0; j < n; j++) g[j] = g[j] / (1.0f + speck_exp_poly(-g[j])) * u[j];
}

// g (n) = gelu(g) * u, GELU's tanh form 0.5 x (1 + tanh(y)) = x / (1 + e^(-2y)),
// y = sqrt(2/pi) (x + 0.044715 x^3): the same vectorising shape as SwiGLU.
SPECK_MULTIVERSION
static void geglu(float *g, const float *u, size_t n) {
    const float k = 2.0f * 0.7978845608028654f; // 2 sqrt(2/pi)
    for (size_t j = 0; j < n; j++) {
        const float x = g[j];
        g[j] = x / (1.0f + speck_exp_poly(-k * (x + 0.044715f * x * x * x))) * u[j];
    }
}

void speck_ffn_act(speck_act act, float *g, const float *u, size_t n) {
    if (act == SPECK_ACT_GELU_TANH)
        geglu(g, u, n);
    else
        swiglu(g, u, n);
}

// Quantized weights held in panels had their mapped pages dropped: they are read from the panels.
// Attached adapters (w->lora) add their unmerged term s·(x·Aᵀ)·Bᵀ to the product.
static void matmul(const speck_weight *w, const float *x, int n, float *y) {
    speck_matmul_panels(w->type, w->data, w->packed, w->n_out, w->n_in, x, n, y);
    const speck_lora_w *lw = w->lora;
    if (!lw) return;
#pragma omp parallel if (n > 1)
    {
        float t[64 * 16];
        const int blk = lw->rank <= 16 ? 64 : 1; // tokens per x·Aᵀ block that fits t
        float *tb = lw->rank <= 16 ? t : malloc((size_t)lw->rank * sizeof(float));
#pragma omp for schedule(static)
        for (int i0 = 0; i0 < n; i0 += blk) {
            const int nb = i0 + blk < n ? blk : n - i0;
            if (!tb) continue;
            speck_lora_w_xa(lw, x + (size_t)i0 * w->n_in, nb, tb);
            speck_lora_w_add(lw, tb, nb, 0, w->n_out, y + (size_t)i0 * w->n_out, w->n_out);
        }
        if (tb != t) free(tb);
    }
}

// A thread's prepared activations, reused by the matmuls that read the same rows in one stage,
// and its adapters' x·Aᵀ rows (lt: (n, lora_rsum) floats; lt_key[t]: the term whose rows target
// t's slot holds this pass, each layer's term being a distinct pointer).
typedef struct {
    speck_mm_act a;
    bool valid;
    void *buf;
    float *lt;
    const speck_lora_w *lt_key[SPECK_LORA_N_TARGETS];
} act_slot;

// Rows [o0, o1) of an adapter's term on X added to Y (ldy); x·Aᵀ computed once per pass and
// thread for each adapted matrix (its input is final when its first rows are asked for).
static void lora_rows(act_slot *s, const speck_lora_w *lw, const float *X, int n, int64_t o0,
                      int64_t o1, float *Y, int64_t ldy) {
    float *t = s->lt + (size_t)n * lw->slot;
    if (s->lt_key[lw->target] != lw) {
        speck_lora_w_xa(lw, X, n, t);
        s->lt_key[lw->target] = lw;
    }
    speck_lora_w_add(lw, t, n, o0, o1, Y, ldy);
}

// Prepared activations of X (n, n_in) for weights of type wt, converting only when the slot
// holds another matrix's input or layout. Callers invalidate the slot when X's contents change.
static const speck_mm_act *act_for(act_slot *s, speck_type wt, const float *X, int n, int n_in) {
    if (!s->valid || s->a.x != X || s->a.n_in != n_in || !speck_mm_act_fits(&s->a, wt)) {
        speck_mm_act_prepare(wt, X, n, n_in, s->buf, &s->a);
        s->valid = true;
    }
    return &s->a;
}

// Rows [o0, o1) of w applied to X into Y (ldy), =, or += when accumulate.
static void mm_rows(act_slot *s, const speck_weight *w, const float *X, int n, int64_t o0,
                    int64_t o1, float *Y, int64_t ldy, int accumulate) {
    if (o0 >= o1) return;
    if (use_panels(w)) {
        const speck_mm_act *a = act_for(s, speck_panel_act_type(w->type), X, n, (int)w->n_in);
        speck_mm_panel_rows(w->type, w->packed, a, o0, o1, Y, ldy, accumulate);
    } else {
        speck_mm_rows(w->type, w->data, act_for(s, w->type, X, n, (int)w->n_in), o0, o1, Y, ldy,
                      accumulate);
    }
    if (w->lora) lora_rows(s, w->lora, X, n, o0, o1, Y, ldy);
}

#define ROW_BLOCK 16 // rows per work item of the shared matmuls (row layout)

// Rows per work item for w with n tokens: the panel kernels want several panels per call.
static int64_t item_rows(const speck_weight *w, int n) {
    return use_panels(w) ? speck_panel_rows_per_item(w->type, n) : ROW_BLOCK;
}

// This thread's rows [*o0, *o1) of n under the speck_balancer's cuts, split on multiples of 16 (the
// panel boundaries).
static void share16(const speck_balancer *b, int tid, int nth, int64_t n, int64_t *o0,
                    int64_t *o1) {
    int64_t a, e;
    speck_balance_range(b, tid, nth, (n + 15) / 16, &a, &e);
    *o0 = 16 * a < n ? 16 * a : n;
    *o1 = 16 * e < n ? 16 * e : n;
}

// Inside forward_stream's parallel region: this thread's share of w's rows applied to X into Y
// (ldy); the ticks it took are added to *busy (the balancer's measure). No barrier at the end.
static void mm_shared(act_slot *s, const speck_balancer *b, int tid, int nth, const speck_weight *w,
                      const float *X, int n, float *Y, int64_t ldy, int accumulate,
                      uint64_t *busy) {
    const uint64_t t0 = speck_ticks();
    int64_t r0, r1;
    share16(b, tid, nth, w->n_out, &r0, &r1);
    mm_rows(s, w, X, n, r0, r1, Y, ldy, accumulate);
    *busy += speck_ticks() - t0;
}

// Rows of heads [h0, h1) of w for the n tokens of xn, with bias b, QK-norm (norm, or NULL) and
// (rope) layer l's RoPE applied: head h of token i lands at y + i * ld + h * hd.
static void head_rows(speck_ctx *c, int l, const speck_weight *w, const float *b, const float *norm,
                      bool rope, act_slot *act, const float *xn, int n, int h0, int h1, float *y,
                      int64_t ld) {
    const speck_hparams *hp = &c->m->hp;
    const int hd = hp->head_dim, half = hd / 2, rt = c->m->layers[l].rope;
    mm_rows(act, w, xn, n, (int64_t)h0 * hd, (int64_t)h1 * hd, y, ld, 0);
    for (int i = 0; i < n; i++)
        for (int h = h0; h < h1; h++) {
            float *v = y + (size_t)i * ld + (size_t)h * hd;
            if (b)
                for (int j = 0; j < hd; j++) v[j] += b[h * hd + j];
            if (norm) rmsnorm_row(v, v, norm, hd, hp->norm_eps);
            if (rope)
                rope_head(v, c->rope_cs[rt] + (size_t)i * half, c->rope_sn[rt] + (size_t)i * half,
                          hd, hp->rope_type);
        }
}

// Rows of heads [h0, h1) of Q (which 0), or of KV groups [h0, h1) of K (1) or V (2), for the n
// tokens of xn, with bias, QK-norm and (Q, K) RoPE applied; K/V rows land directly in layer l's
// cache when it is a full f32 one, else through kt ((n, head_dim) floats of this thread's).
static void qkv_heads(speck_ctx *c, int l, act_slot *act, const float *xn, int n, int which, int h0,
                      int h1, float *kt) {
    const speck_layer *ly = &c->m->layers[l];
    const int hd = c->m->hp.head_dim;
    if (which == 0) {
        head_rows(c, l, &ly->wq, ly->bq, ly->q_norm, true, act, xn, n, h0, h1, c->q,
                  (int64_t)c->m->hp.n_head * hd);
        return;
    }
    void *cache = which == 1 ? c->k[l] : c->v[l];
    const bool direct = c->kv_type == SPECK_TYPE_F32 && c->cap[l] == c->n_ctx;
    for (int g = h0; g < h1; g++) { // one group at a time: its rows are hd values apart
        float *y = direct ? (float *)kv_at(c, l, cache, g, c->n_past) : kt;
        head_rows(c, l, which == 1 ? &ly->wk : &ly->wv, which == 1 ? ly->bk : ly->bv,
                  which == 1 ? ly->k_norm : NULL, which == 1, act, xn, n, g, g + 1,
                  y - (size_t)g * hd, hd);
        if (!direct) speck_kv_store(c, l, cache, g, c->n_past, kt, hd, n);
    }
}

// A windowed layer's allow mask for new tokens [t0, t1) over its cache slots [0, ns): slot s holds
// the entry j of [lo, n_total) with j = s mod cap (a full cache: j = s); token t may see it when
// the causal order or the mask lets it and the positions are less than the window apart.
// allow: (t1 - t0, ns); returns ns.
static int window_allow(const speck_ctx *c, int l, const uint8_t *mask, int n_total, int t0, int t1,
                        uint8_t *allow) {
    const int cap = c->cap[l], w = c->m->layers[l].n_swa, ns = n_total < cap ? n_total : cap;
    const int lo = cap < c->n_ctx ? swa_held_from(c, n_total) : 0, s0 = lo % cap;
    for (int t = t0; t < t1; t++) {
        const int qi = c->n_past + t;
        const int32_t qp = c->kpos[qi];
        uint8_t *a = allow + (size_t)(t - t0) * ns;
        memset(a, 0, (size_t)ns);
        for (int j = lo, s = s0; j < n_total; j++, s = s + 1 == cap ? 0 : s + 1)
            a[s] = (mask ? mask[(size_t)t * n_total + j] != 0 : j <= qi) && qp - c->kpos[j] < w;
    }
    return ns;
}

// Attention of query heads [h0, h1) of KV group g for new tokens [t0, t1) over layer l's cache
// into c->att (mask: (n, n_total) or NULL for causal), in one call that reads each block of the
// group's keys and values once for all of them. (t1 - t0) * (h1 - h0) <= ATT_GROUP_Q.
// sc: (ATT_GROUP_Q, n_ctx) scratch; allow: (ATT_GROUP_Q, n_ctx) scratch for windowed layers.
static void attend_unit(speck_ctx *c, int l, const uint8_t *mask, int n_total, int g, int h0,
                        int h1, int t0, int t1, float *sc, uint8_t *allow) {
    const speck_hparams *hp = &c->m->hp;
    const int hd = hp->head_dim;
    const size_t qd = (size_t)hp->n_head * hd;
    int nk[ATT_GROUP_Q];
    const uint8_t *al = mask ? mask + (size_t)t0 * n_total : NULL;
    int64_t lda = n_total;
    if (c->m->layers[l].n_swa) {
        lda = window_allow(c, l, mask, n_total, t0, t1, allow);
        al = allow;
        for (int t = t0; t < t1; t++) nk[t - t0] = (int)lda;
    } else {
        for (int t = t0; t < t1; t++) nk[t - t0] = mask ? n_total : c->n_past + t + 1;
    }
    speck_attend_group(c->q + t0 * qd + (size_t)h0 * hd, (int64_t)qd, t1 - t0, h1 - h0, nk, al, lda,
                       kv_at(c, l, c->k[l], g, 0), kv_at(c, l, c->v[l], g, 0), c->kv_type, hd, hd,
                       hp->attn_scale, hp->attn_softcap, sc, c->n_ctx,
                       c->att + t0 * qd + (size_t)h0 * hd, (int64_t)qd);
}

// How forward_stream cuts a layer's attention into attend_unit calls: units of (KV group, chunk
// of tc tokens, part of hc heads), numbered group-major, ntc chunks and parts parts per group.
// A unit reads its group's keys and values once: whole groups as long as every thread gets a
// unit (smollm2's 3 groups on 2 threads at 1000 cached tokens: 5.6 ms per 1-token pass, against
// 6.4 with the groups' heads split to balance the threads); heads are split only when there are
// fewer units than threads (MQA).
typedef struct {
    int hc, tc, ntc, parts;
} att_units;

static att_units attention_units(int group, int nkv, int n, int nth) {
    att_units a;
    a.hc = group < ATT_GROUP_Q ? group : ATT_GROUP_Q;
    a.tc = ATT_GROUP_Q / a.hc;
    a.ntc = (n + a.tc - 1) / a.tc;
    if (nkv * a.ntc * ((group + a.hc - 1) / a.hc) < nth) {
        int parts = (nth + nkv * a.ntc - 1) / (nkv * a.ntc);
        parts = parts < group ? parts : group;
        a.hc = (group + parts - 1) / parts;
    }
    a.parts = (group + a.hc - 1) / a.hc;
    return a;
}

// Unit u of a (see attention_units) for the n new tokens.
static void attend_unit_at(speck_ctx *c, int l, const uint8_t *mask, int n, int n_total,
                           const att_units *a, int u, float *sc, uint8_t *allow) {
    const int group = c->m->hp.n_head / c->m->hp.n_head_kv;
    const int g = u / (a->ntc * a->parts), t = u / a->parts % a->ntc * a->tc;
    const int h = g * group + u % a->parts * a->hc;
    attend_unit(c, l, mask, n_total, g, h,
                h + a->hc < (g + 1) * group ? h + a->hc : (g + 1) * group, t,
                t + a->tc < n ? t + a->tc : n, sc, allow);
}

// Norms over whole q and k rows (olmoe), streaming path: KV groups [g0, g1) of the n new tokens'
// raw projections (q in c->att, k and v in c->kvn) -> their q heads biased, normalised with the
// whole row's RMS and rotated into c->q, their k and v rows (k likewise) into layer l's cache.
static void qk_full_norm(speck_ctx *c, int l, int n, int g0, int g1) {
    const speck_layer *ly = &c->m->layers[l];
    const speck_hparams *hp = &c->m->hp;
    const int hd = hp->head_dim, half = hd / 2, group = hp->n_head / hp->n_head_kv;
    const int qd = hp->n_head * hd, kvd = c->kv_dim, rt = ly->rope;
    if (g0 >= g1) return;
    for (int i = 0; i < n; i++) {
        const float *cs = c->rope_cs[rt] + (size_t)i * half, *sn = c->rope_sn[rt] + (size_t)i * half;
        for (int which = 0; which < 2; which++) {
            const int d = which ? kvd : qd, h0 = which ? g0 : g0 * group, h1 = which ? g1 : g1 * group;
            const float *raw = which ? c->kvn + (size_t)i * 3 * kvd : c->att + (size_t)i * qd;
            float *out = which ? c->kvn + (size_t)i * 3 * kvd + 2 * kvd : c->q + (size_t)i * qd;
            const float *b = which ? ly->bk : ly->bq, *w = which ? ly->k_norm : ly->q_norm;
            double ss = 0;
            for (int j = 0; j < d; j++) {
                const float v = raw[j] + (b ? b[j] : 0.0f);
                ss += (double)v * v;
            }
            const float inv = (float)(1.0 / sqrt(ss / d + hp->norm_eps));
            for (int h = h0; h < h1; h++) {
                float *v = out + (size_t)h * hd;
                for (int j = h * hd; j < (h + 1) * hd; j++)
                    v[j - h * hd] = (raw[j] + (b ? b[j] : 0.0f)) * inv * w[j];
                rope_head(v, cs, sn, hd, hp->rope_type);
            }
        }
    }
    for (int g = g0; g < g1; g++) {
        float *vb = c->kvn + kvd + (size_t)g * hd;
        if (ly->bv)
            for (int i = 0; i < n; i++)
                for (int j = 0; j < hd; j++) vb[(size_t)i * 3 * kvd + j] += ly->bv[g * hd + j];
        speck_kv_store(c, l, c->k[l], g, c->n_past, c->kvn + 2 * kvd + (size_t)g * hd, 3 * kvd, n);
        speck_kv_store(c, l, c->v[l], g, c->n_past, vb, 3 * kvd, n);
    }
}

// Few tokens (decode, draft verification): the whole forward is one OpenMP parallel region.
// Each thread normalises and quantises the activations itself (cheaper than waiting for one
// thread to do it), weight rows are split between threads, and bias, QK-norm, RoPE, residual
// adds and the FFN activation are applied to each thread's own rows as they are produced, so a
// layer needs only five barriers: after Q/K/V, attention, the output projection, gate/up, and
// down — four when the threads divide the KV groups between them. Post-norm models (Gemma)
// normalise a block's whole output before adding it: the projections write it to c->xo, and
// every thread adds it, normalised, to a residual stream of its own (the same arithmetic on
// every thread, so the copies agree), which costs no barrier more. Row splits are static, so each
// core keeps reading the same weight rows and cache slices pass after pass: on a machine whose
// cores do not share a last-level cache (this project's VM), a row another core read last time is a
// remote fetch (dynamic/guided splits were 7-9 % slower on the default model's 1- and 4-token
// passes). Every token's arithmetic is the same whatever n is (speculative decoding relies on it).
// c->x: (n, n_embd) embeddings in; logits: (n_out, n_vocab) out.
static void forward_stream(speck_ctx *c, int n, const uint8_t *mask, const int *out_rows, int n_out,
                           float *logits) {
    const speck_model *m = c->m;
    const speck_hparams *hp = &m->hp;
    const int E = hp->n_embd, hd = hp->head_dim, nh = hp->n_head;
    const int nkv = hp->n_head_kv, group = nh / nkv, F = hp->n_ff;
    const int n_past = c->n_past, n_total = n_past + n;
    const bool post = hp->post_norms;
    speck_balance_begin(&c->bal, omp_get_max_threads());
#pragma omp parallel
    {
        const int tid = omp_get_thread_num(), nth = omp_get_num_threads();
        const bool own_groups = nkv % nth == 0;
        uint64_t busy = 0; // ticks on the balanced matmuls
        const size_t rows_bytes = align64((size_t)n * E * sizeof(float));
        float *xn = (float *)c->tbuf[tid]; // (n, E) this thread's normalised rows
        // (n, E) the residual stream: shared, or this thread's own copy (post-norm models)
        float *xr = post ? (float *)(c->tbuf[tid] + rows_bytes) : c->x;
        act_slot act = {.buf = c->tbuf[tid] + rows_bytes * (post ? 2 : 1)};
        act.lt = (float *)(c->tbuf[tid] + c->tbuf_bytes -
                           align64((size_t)n * m->lora_rsum * sizeof(float)));
        float *sc = c->scores + (size_t)tid * ATT_GROUP_Q * c->n_ctx;
        uint8_t *allow = c->allow ? c->allow + (size_t)tid * ATT_ROWS * c->n_ctx : NULL;
        float *kt = c->kvt ? c->kvt + (size_t)tid * n * hd : NULL; // new K/V rows before storing
        const att_units au = attention_units(group, nkv, n, nth);
        if (post) memcpy(xr, c->x, (size_t)n * E * sizeof(float));
        for (int l = 0; l < hp->n_layer; l++) {
            const speck_layer *ly = &m->layers[l];
            for (int i = 0; i < n; i++)
                rmsnorm_row(xn + (size_t)i * E, xr + (size_t)i * E, ly->attn_norm, E, hp->norm_eps);
            act.valid = false;
            if (hp->qk_norm_full) {
                // Norms over whole q and k rows (olmoe): the projections first, then each
                // thread normalises and rotates its groups' heads and stores their K/V rows.
                float *kvn = c->kvn;
                mm_shared(&act, &c->bal, tid, nth, &ly->wq, xn, n, c->att, nh * hd, 0, &busy);
                mm_shared(&act, &c->bal, tid, nth, &ly->wk, xn, n, kvn, 3 * c->kv_dim, 0, &busy);
                mm_shared(&act, &c->bal, tid, nth, &ly->wv, xn, n, kvn + c->kv_dim, 3 * c->kv_dim,
                          0, &busy);
                speck_barrier_wait(&c->bar, nth);
                qk_full_norm(c, l, n, nkv * tid / nth, nkv * (tid + 1) / nth);
                speck_barrier_wait(&c->bar, nth);
#pragma omp for schedule(dynamic, 1) nowait
                for (int u = 0; u < nkv * au.ntc * au.parts; u++)
                    attend_unit_at(c, l, mask, n, n_total, &au, u, sc, allow);
            } else if (own_groups) {
                // Each thread owns whole KV groups: their Q/K/V rows, then their heads'
                // attention. No barrier between (nothing crosses threads), and a group's cache
                // slices are written and read by the same core, in the same pass and the next.
                const int g0 = nkv * tid / nth, g1 = nkv * (tid + 1) / nth;
                qkv_heads(c, l, &act, xn, n, 0, g0 * group, g1 * group, kt);
                qkv_heads(c, l, &act, xn, n, 1, g0, g1, kt);
                qkv_heads(c, l, &act, xn, n, 2, g0, g1, kt);
                const int per_group = au.ntc * au.parts;
                for (int u = g0 * per_group; u < g1 * per_group; u++)
                    attend_unit_at(c, l, mask, n, n_total, &au, u, sc, allow);
            } else {
                // Q, K and V in units of a few heads (as many as fill a panel kernel's work
                // item; one head on the row layout), then the attention units, shared dynamically.
                const int hpu = item_rows(&ly->wq, n) > hd ? (int)(item_rows(&ly->wq, n) / hd) : 1;
                const int uq = (nh + hpu - 1) / hpu, ukv = (nkv + hpu - 1) / hpu;
#pragma omp for schedule(dynamic, 1) nowait
                for (int u = 0; u < uq + 2 * ukv; u++) {
                    const int which = u < uq ? 0 : u < uq + ukv ? 1 : 2;
                    const int h0 = (u - (which == 0 ? 0 : which == 1 ? uq : uq + ukv)) * hpu;
                    const int nmax = which ? nkv : nh;
                    qkv_heads(c, l, &act, xn, n, which, h0, h0 + hpu < nmax ? h0 + hpu : nmax, kt);
                }
                speck_barrier_wait(&c->bar, nth);
#pragma omp for schedule(dynamic, 1) nowait
                for (int u = 0; u < nkv * au.ntc * au.parts; u++)
                    attend_unit_at(c, l, mask, n, n_total, &au, u, sc, allow);
            }
            speck_barrier_wait(&c->bar, nth);
            mm_shared(&act, &c->bal, tid, nth, &ly->wo, c->att, n, post ? c->xo : c->x, E, !post,
                      &busy);
            speck_barrier_wait(&c->bar, nth);
            for (int i = 0; i < n; i++) {
                float *xi = xr + (size_t)i * E, *ni = xn + (size_t)i * E;
                if (post) { // xr += norm(attention output), then the FFN's norm of it
                    rmsnorm_row(ni, c->xo + (size_t)i * E, ly->attn_post_norm, E, hp->norm_eps);
                    add_inplace(xi, ni, (size_t)E);
                }
                rmsnorm_row(ni, xi, ly->ffn_norm, E, hp->norm_eps);
            }
            act.valid = false;
            if (hp->n_expert > 0) {
                speck_moe_stream(c, l, xn, n, post ? c->xo : c->x, !post, tid, nth);
            } else {
                int64_t o0, o1; // gate rows, then the same up rows, then the activation on them
                const uint64_t t0 = speck_ticks();
                share16(&c->bal, tid, nth, F, &o0, &o1);
                mm_rows(&act, &ly->wg, xn, n, o0, o1, c->g, F, 0);
                mm_rows(&act, &ly->wu, xn, n, o0, o1, c->u, F, 0);
                for (int i = 0; i < n; i++)
                    speck_ffn_act(hp->ffn_act, c->g + (size_t)i * F + o0, c->u + (size_t)i * F + o0,
                            (size_t)(o1 - o0));
                busy += speck_ticks() - t0;
            }
            if (hp->n_expert == 0) {
                speck_barrier_wait(&c->bar, nth);
                mm_shared(&act, &c->bal, tid, nth, &ly->wd, c->g, n, post ? c->xo : c->x, E,
                          !post, &busy);
            }
            act.valid = false; // g is rewritten by the next layer at the same address
            speck_barrier_wait(&c->bar, nth);
            for (int i = 0; post && i < n; i++) { // xr += norm(FFN output)
                rmsnorm_row(xn + (size_t)i * E, c->xo + (size_t)i * E, ly->ffn_post_norm, E,
                            hp->norm_eps);
                add_inplace(xr + (size_t)i * E, xn + (size_t)i * E, (size_t)E);
            }
        }
        // Only the requested rows go through the (large) output head.
        for (int r = 0; r < n_out; r++)
            rmsnorm_row(xn + (size_t)r * E, xr + (size_t)(out_rows ? out_rows[r] : r) * E,
                        m->out_norm, E, hp->norm_eps);
        act.valid = false;
        if (n_out > 0) {
            mm_shared(&act, &c->bal, tid, nth, &m->output, xn, n_out, logits, hp->n_vocab, 0,
                      &busy);
            if (hp->final_softcap > 0) { // this thread's columns of every row
                int64_t r0, r1;
                share16(&c->bal, tid, nth, hp->n_vocab, &r0, &r1);
                for (int r = 0; r < n_out && r1 > r0; r++)
                    softcap_row(logits + (size_t)r * hp->n_vocab + r0, (size_t)(r1 - r0),
                                hp->final_softcap);
            }
        }
        if (tid < SPECK_BAL_MAX) c->bal.busy[tid] = busy;
    }
    speck_balance_end(&c->bal);
}

// Many tokens (prefill, wide trees): one operation at a time, each parallel inside, with GEMMs.
// A windowed layer whose cache is a ring gathers the entries the ring holds and the batch's own
// as floats (storing the new ones into the ring as it goes, where later ones of a long batch
// overwrite earlier ones), so a batch of any length attends within its window.
// c->x: (n, n_embd) embeddings in; logits: (n_out, n_vocab) out.
static void forward_batch(speck_ctx *c, int n, const uint8_t *mask, const int *out_rows, int n_out,
                          float *logits) {
    const speck_model *m = c->m;
    const speck_hparams *hp = &m->hp;
    const int E = hp->n_embd, hd = hp->head_dim, qd = hp->n_head * hd, kvd = c->kv_dim;
    const int nkv = hp->n_head_kv, n_past = c->n_past, n_total = n_past + n;
    for (int l = 0; l < hp->n_layer; l++) {
        const speck_layer *ly = &m->layers[l];
        const float *cs = c->rope_cs[ly->rope], *sn = c->rope_sn[ly->rope];
        const bool ring = c->cap[l] < c->n_ctx;
        const int lo = ring ? swa_held_from(c, n_past) : 0, keys = n_total - lo;
        // (nkv, keys, hd) each; no such scratch for a full f32 cache, which sgemm reads in place
        float *kf = c->kvf, *vf = kf ? kf + (size_t)nkv * keys * hd : NULL;
        rmsnorm(c->xn, c->x, ly->attn_norm, n, E, hp->norm_eps);
        if (c->hook) {
            observe(c, l, "attn_q", c->xn, n, E);
            observe(c, l, "attn_k", c->xn, n, E);
            observe(c, l, "attn_v", c->xn, n, E);
        }
        matmul(&ly->wq, c->xn, n, c->q);
        add_bias(c->q, ly->bq, n, qd);
        if (hp->qk_norm_full) rmsnorm(c->q, c->q, ly->q_norm, n, qd, hp->norm_eps);
        rope(c->q, cs, sn, n, hp->n_head, hd, hp->rope_type, hp->qk_norm_full ? NULL : ly->q_norm,
             hp->norm_eps);
        if (ring) { // the held entries first: the new ones may take their slots
#pragma omp parallel for schedule(static)
            for (int g = 0; g < nkv; g++)
                for (int j = lo; j < n_past; j++) {
                    const size_t at = ((size_t)g * keys + (size_t)(j - lo)) * hd;
                    speck_dequantize_row(c->kv_type, kv_at(c, l, c->k[l], g, j), kf + at, hd);
                    speck_dequantize_row(c->kv_type, kv_at(c, l, c->v[l], g, j), vf + at, hd);
                }
        }
        // New keys, then values, in c->att (free until the attention writes it): (n, kv_dim)
        // rows, copied into the cache's per-group rows (and a ring's floats, as stored).
        for (int kv = 0; kv < 2; kv++) {
            void *cache = kv ? c->v[l] : c->k[l];
            matmul(kv ? &ly->wv : &ly->wk, c->xn, n, c->att);
            add_bias(c->att, kv ? ly->bv : ly->bk, n, kvd);
            if (!kv && hp->qk_norm_full) rmsnorm(c->att, c->att, ly->k_norm, n, kvd, hp->norm_eps);
            if (!kv)
                rope(c->att, cs, sn, n, nkv, hd, hp->rope_type,
                     hp->qk_norm_full ? NULL : ly->k_norm, hp->norm_eps);
#pragma omp parallel for schedule(static)
            for (int g = 0; g < nkv; g++) {
                if (!ring) {
                    speck_kv_store(c, l, cache, g, n_past, c->att + (size_t)g * hd, kvd, n);
                    continue;
                }
                float *dst = (kv ? vf : kf) + ((size_t)g * keys + (size_t)(n_past - lo)) * hd;
                for (int i = 0; i < n; i++) {
                    void *slot = kv_at(c, l, cache, g, n_past + i);
                    speck_quantize_row(c->kv_type, c->att + (size_t)i * kvd + (size_t)g * hd, slot,
                                       hd);
                    speck_dequantize_row(c->kv_type, slot, dst + (size_t)i * hd, hd);
                }
            }
        }
        if (ring) {
            attention_gemm(c, c->q, c->att, kf, vf, (size_t)keys * hd, n, n_total, lo, mask,
                           ly->n_swa);
        } else if (c->kv_type == SPECK_TYPE_F32) {
            attention_gemm(c, c->q, c->att, c->k[l], c->v[l], (size_t)c->n_ctx * hd, n, n_total, 0,
                           mask, ly->n_swa);
        } else { // sgemm reads floats: this layer's cached rows [0, n_total), converted once (a
                 // group's rows are consecutive, blocks included: one conversion of them all)
            vf = c->kvf + (size_t)nkv * n_total * hd;
#pragma omp parallel for schedule(static)
            for (int g = 0; g < nkv; g++) {
                speck_dequantize_row(c->kv_type, kv_at(c, l, c->k[l], g, 0),
                                     kf + (size_t)g * n_total * hd, (int64_t)n_total * hd);
                speck_dequantize_row(c->kv_type, kv_at(c, l, c->v[l], g, 0),
                                     vf + (size_t)g * n_total * hd, (int64_t)n_total * hd);
            }
            attention_gemm(c, c->q, c->att, kf, vf, (size_t)n_total * hd, n, n_total, 0, mask,
                           ly->n_swa);
        }
        observe(c, l, "attn_output", c->att, n, qd);
        matmul(&ly->wo, c->att, n, c->xn);
        if (ly->attn_post_norm) rmsnorm(c->xn, c->xn, ly->attn_post_norm, n, E, hp->norm_eps);
        add_inplace(c->x, c->xn, (size_t)n * E);

        rmsnorm(c->xn, c->x, ly->ffn_norm, n, E, hp->norm_eps);
        if (hp->n_expert > 0) { // the experts write the block's output (post-norm: into xo)
            observe(c, l, "ffn_gate_inp", c->xn, n, E);
            const bool post = ly->ffn_post_norm != NULL;
            speck_moe_batch(c, l, c->xn, n, post ? c->xo : c->x, !post);
            if (post) {
                rmsnorm(c->xo, c->xo, ly->ffn_post_norm, n, E, hp->norm_eps);
                add_inplace(c->x, c->xo, (size_t)n * E);
            }
            continue;
        }
        if (c->hook) {
            observe(c, l, "ffn_gate", c->xn, n, E);
            observe(c, l, "ffn_up", c->xn, n, E);
        }
        matmul(&ly->wg, c->xn, n, c->g);
        matmul(&ly->wu, c->xn, n, c->u);
        const size_t F = (size_t)hp->n_ff;
#pragma omp parallel for schedule(static)
        for (int i = 0; i < n; i++) speck_ffn_act(hp->ffn_act, c->g + i * F, c->u + i * F, F);
        observe(c, l, "ffn_down", c->g, n, (int)F);
        matmul(&ly->wd, c->g, n, c->xn);
        if (ly->ffn_post_norm) rmsnorm(c->xn, c->xn, ly->ffn_post_norm, n, E, hp->norm_eps);
        add_inplace(c->x, c->xn, (size_t)n * E);
    }
    // Only the requested rows go through the (large) output head.
    for (int r = 0; r < n_out; r++) {
        int src = out_rows ? out_rows[r] : r;
        memmove(c->xn + (size_t)r * E, c->x + (size_t)src * E, (size_t)E * sizeof(float));
    }
    rmsnorm(c->xn, c->xn, m->out_norm, n_out, E, hp->norm_eps);
    // A tied head is the embedding matrix: its input is recorded under that tensor's name.
    if (n_out > 0) observe(c, -1, hp->tied_output ? "token_embd" : "output", c->xn, n_out, E);
    matmul(&m->output, c->xn, n_out, logits);
    if (hp->final_softcap > 0) {
#pragma omp parallel for schedule(static)
        for (int r = 0; r < n_out; r++)
            softcap_row(logits + (size_t)r * hp->n_vocab, (size_t)hp->n_vocab, hp->final_softcap);
    }
}

static int forward_part(speck_ctx *c, int n, const int32_t *tokens, const int32_t *pos,
                        const uint8_t *mask, const int *out_rows, int n_out, float *logits);

int speck_forward(speck_ctx *c, int n, const int32_t *tokens, const int32_t *pos,
                  const uint8_t *mask, const int *out_rows, int n_out, float *logits) {
    const speck_model *m = c->m;
    const speck_hparams *hp = &m->hp;
    if (n <= 0) return speck_set_error(SPECK_ERR_ARG, "forward: no tokens");
    if (c->n_past + n > c->n_ctx)
        return speck_set_error(SPECK_ERR_RANGE,
                               "forward: %d new tokens do not fit the context (%d of %d used)", n,
                               c->n_past, c->n_ctx);
    for (int i = 0; i < n; i++)
        if (tokens[i] < 0 || tokens[i] >= hp->n_vocab)
            return speck_set_error(SPECK_ERR_RANGE, "forward: token id %d out of range [0, %d)",
                                   tokens[i], hp->n_vocab);
    if (!out_rows) n_out = n;
    if (n_out < 0 || n_out > n)
        return speck_set_error(SPECK_ERR_ARG, "forward: %d output rows for %d tokens", n_out, n);
    for (int i = 0; out_rows && i < n_out; i++)
        if (out_rows[i] < 0 || out_rows[i] >= n)
            return speck_set_error(SPECK_ERR_RANGE, "forward: output row %d out of range [0, %d)",
                                   out_rows[i], n);
    // A long causal batch runs as consecutive batches of at most UBATCH tokens (the scratch
    // grows with the batch: ~80 MB for 1024 tokens of tinyllama-1.1b), when its output rows
    // come in order so that each part's logits are a contiguous slice of the caller's.
    bool ordered = true;
    for (int i = 1; out_rows && i < n_out; i++) ordered &= out_rows[i] >= out_rows[i - 1];
    if (n > UBATCH && !mask && ordered) {
        const int n_past0 = c->n_past;
        int local[UBATCH];
        for (int c0 = 0, r = 0; c0 < n; c0 += UBATCH) {
            const int cn = n - c0 < UBATCH ? n - c0 : UBATCH;
            int k = 0;
            while (out_rows && r + k < n_out && out_rows[r + k] < c0 + cn) {
                local[k] = out_rows[r + k] - c0;
                k++;
            }
            if (forward_part(c, cn, tokens + c0, pos ? pos + c0 : NULL, NULL,
                             out_rows ? local : NULL, out_rows ? k : cn,
                             logits + (size_t)r * hp->n_vocab)) {
                c->n_past = n_past0; // nothing appended
                return speck_set_error(SPECK_ERR_NOMEM, "out of memory");
            }
            r += out_rows ? k : cn;
        }
        return 0;
    }
    if (forward_part(c, n, tokens, pos, mask, out_rows, n_out, logits))
        return speck_set_error(SPECK_ERR_NOMEM, "out of memory");
    return 0;
}

// speck_forward after validation; -1 when the scratch cannot be allocated (nothing appended).
static int forward_part(speck_ctx *c, int n, const int32_t *tokens, const int32_t *pos,
                        const uint8_t *mask, const int *out_rows, int n_out, float *logits) {
    const speck_model *m = c->m;
    const speck_hparams *hp = &m->hp;
    const bool stream = !c->hook && n < stream_max(m);
    if (reserve(c, n, stream)) return -1;
    for (int t = 0; t < 2; t++)
        if (t == 0 || c->freq[1] != c->freq[0])
            rope_tables(c->rope_cs[t], c->rope_sn[t], pos, c->n_past, n, hp->head_dim, c->freq[t],
                        hp->rope_attn_factor);
    for (int i = 0; i < n; i++) {
        const int32_t p = pos ? pos[i] : c->n_past + i;
        c->kpos[c->n_past + i] = p;
        c->seq_pos &= p == c->n_past + i;
    }
    const speck_weight *te = &m->tok_embd;
    const size_t erow = speck_type_row_size(te->type, hp->n_embd);
    // A quantized embedding with panels (a tied head) had its rows dropped: from the panels.
    const bool unpack = te->packed && (te->type == SPECK_TYPE_Q8_0 || te->type == SPECK_TYPE_Q4_0);
    for (int i = 0; i < n; i++) {
        float *x = c->x + (size_t)i * hp->n_embd;
        const uint8_t *row = (const uint8_t *)te->data + erow * tokens[i];
        if (unpack) {
            speck_panel_unpack(te->type, te->packed, hp->n_embd, tokens[i], 1, c->erow);
            row = c->erow;
        }
        speck_dequantize_row(te->type, row, x, hp->n_embd);
        if (hp->embd_scale != 1.0f)
            for (int j = 0; j < hp->n_embd; j++) x[j] *= hp->embd_scale;
    }
    if (stream)
        forward_stream(c, n, mask, out_rows, n_out, logits);
    else
        forward_batch(c, n, mask, out_rows, n_out, logits);
    // Both passes leave the normalised output rows in their scratch: expose them, copying nothing.
    c->hidden = stream ? (const float *)c->tbuf[0] : c->xn;
    c->n_hidden = n_out;
    c->n_past += n;
    if (c->swa_cap) c->swa_lo = swa_held_from(c, c->n_past);
    return 0;
}

const float *speck_ctx_hidden(const speck_ctx *c, int *n_rows) {
    if (n_rows) *n_rows = c->hidden ? c->n_hidden : 0;
    return c->hidden;
}

// The per-row operations of the passes above, for the multi-sequence forward (src/serve/), so
// that its tokens get the same arithmetic as a single-sequence pass.
void speck_op_rmsnorm_row(float *out, const float *x, const float *w, int dim, float eps) {
    rmsnorm_row(out, x, w, dim, eps);
}
void speck_op_rope(float *x, const float *cs, const float *sn, int n, int n_heads, int hd,
                   speck_rope_type type, const float *norm, float eps) {
    rope(x, cs, sn, n, n_heads, hd, type, norm, eps);
}
void speck_op_rope_tables(float *cs, float *sn, const int32_t *pos, int n, int hd,
                          const float *freq, float mscale) {
    rope_tables(cs, sn, pos, 0, n, hd, freq, mscale);
}
void speck_op_softcap_row(float *s, size_t n, float c) {
    softcap_row(s, n, c);
}
void speck_op_add(float *x, const float *y, size_t n) {
    add_inplace(x, y, n);
}
