// Y = X · Wᵀ for every weight type.
//
// Few tokens (decode, draft verification: n_tok < SMALL_BATCH): the activations are converted
// once to the type the weight dots want, then OpenMP threads split the weight rows and each row
// is dotted with all n_tok activations while it is hot in L1 — the weights, which dominate memory
// traffic, are streamed from DRAM exactly once per call, so verifying k draft tokens costs about
// the same traffic as decoding one.
//
// Many tokens (prefill), Q8_0/Q4_0 weights with an ISA that has an int8 GEMM (AVX-512 VNNI): the
// activations are quantized to Q8_0 once (in parallel over tokens), then threads take strips of
// SPECK_GEMM_ROWS weight rows, repack each into a VNNI-friendly layout in their own scratch (cost
// ~ n_out * n_in, amortized over all tokens) and run the register-blocked kernel over every token
// (see gemm_run_avx512). Results then carry the Q8_0 rounding of the activations, as the
// streaming path's do.
//
// Otherwise (other types, ISAs without the GEMM): OpenBLAS sgemm, on panels of weight rows
// dequantized to f32 (F32 weights are used in place), so the scratch stays a few MiB instead of a
// full f32 copy of W.
//
// Scratch buffers are thread-local and grow on demand (never shrink), so the hot path does not
// allocate; concurrent calls from different threads each use their own buffers. OpenMP worker
// threads only see the buffer through the calling thread's pointer.
#include <cblas.h>
#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/kernels_internal.h"

#define SMALL_BATCH 16 // n_tok below this takes the streaming path (see below)
// The streaming path computes each token's outputs with the same operations whatever n_tok is;
// the prefill paths do not. Speculative decoding needs batch invariance below 16 tokens.
_Static_assert(SMALL_BATCH >= 16, "n_tok < 16 must stay on the batch-invariant streaming path");
#define PANEL_FLOATS (2u << 20)     // f32 values per dequantized weight panel (8 MiB)
#define PARALLEL_MIN_WORK (1 << 15) // weight values below which threads cost more than help

typedef struct {
    void *p;
    size_t size;
} scratch_buf;

static _Thread_local scratch_buf g_act_buf;   // quantized activations (small path)
static _Thread_local scratch_buf g_panel_buf; // dequantized weight panel (prefill path)
static _Thread_local scratch_buf g_rows_buf;  // weight rows unpacked from a panel copy
static _Thread_local scratch_buf g_pack_buf;  // repacked weight strip (int8 GEMM, each thread)

typedef enum { PATH_AUTO, PATH_SMALL, PATH_BLAS, PATH_GEMM } mm_path;
static mm_path g_force = PATH_AUTO; // speck_matmul_force_path()

// A buffer of at least n bytes, 64-byte aligned, or NULL when the allocation fails.
static void *scratch_get(scratch_buf *s, size_t n) {
    if (n <= s->size) return s->p;
    size_t want = (n + 4095) & ~(size_t)4095;
    void *p = aligned_alloc(64, want);
    if (!p) return NULL;
    free(s->p);
    s->p = p;
    s->size = want;
    return p;
}

// Fill Y with NaN so a failed call cannot pass for a result. y: (n_tok, n_out)
static void fail_nomem(float *Y, int64_t n_tok, int64_t n_out) {
    for (int64_t i = 0; i < n_tok * n_out; i++) Y[i] = NAN;
    speck_set_error(SPECK_ERR_NOMEM, "speck_matmul: out of memory for scratch buffers");
}

// Single-token dot of one weight row with one activation row, by type.
static inline float dot_one(const speck_kernel_table *k, speck_type wt, const void *w,
                            const void *a, int64_t n) {
    switch (wt) {
    case SPECK_TYPE_F32:
        return k->dot_f32(w, a, n);
    case SPECK_TYPE_F16:
        return k->dot_f16(w, a, n);
    case SPECK_TYPE_BF16:
        return k->dot_bf16(w, a, n);
    case SPECK_TYPE_Q8_0:
        return k->dot_q8_0(w, a, n);
    case SPECK_TYPE_Q4_0:
        return k->dot_q4_0(w, a, n);
    default:
        break;
    }
    return k->qt[wt].dot ? k->qt[wt].dot(w, a, n) : speck_traits(wt)->dot(w, a, n);
}

// Quantize X into the matmul-internal layout (kernels with mm_* entry points).
// X: (n_tok, n_in) f32 -> a: qs (n_tok, n_in), d, s and qsum (n_tok, n_in / 32), inside buf.
// blk: (n_tok, n_in / 32) Q8_0 block rows, kept (the AVX2 row tiles read them). q4_order:
// within the first floor(nb / 8) * 8 blocks, store each group of 4 blocks as [elements 0-15 of
// the 4 blocks | elements 16-31 of the 4 blocks], the order the AVX-512 Q4_0 kernel unpacks
// nibbles in (see mm_q4_body); otherwise natural order.
static speck_q8_rows quantize_rows(const speck_kernel_table *k, const float *X, int64_t n_tok,
                                   int64_t n_in, char *buf, speck_block_q8_0 *blk, int q4_order) {
    const int64_t nb = n_in / SPECK_QK, grouped = q4_order ? nb / 8 * 8 : 0;
    int8_t *qs = (int8_t *)buf;
    float *d = (float *)(buf + (((size_t)(n_tok * n_in) + 63) & ~(size_t)63));
    float *s = d + n_tok * nb;
    int16_t *qsum = (int16_t *)(s + n_tok * nb);
    // Many tokens (a prefill on the streaming kernels) quantize in parallel; a caller already in
    // a parallel region (the decoder's per-thread copies) does it alone.
#pragma omp parallel for schedule(static) if (n_tok >= 16 && !omp_in_parallel())
    for (int64_t t = 0; t < n_tok; t++) {
        speck_block_q8_0 *blk_t = blk + t * nb;
        k->quantize_q8_0(X + t * n_in, blk_t, n_in);
        int8_t *row = qs + t * n_in;
        for (int64_t b = 0; b < nb; b++) {
            int32_t sum = 0;
            for (int j = 0; j < SPECK_QK; j++) sum += blk_t[b].qs[j];
            if (b < grouped) {
                int8_t *g = row + (b / 4) * 4 * SPECK_QK + (b % 4) * 16;
                memcpy(g, blk_t[b].qs, 16);
                memcpy(g + 64, blk_t[b].qs + 16, 16);
            } else {
                memcpy(row + b * SPECK_QK, blk_t[b].qs, SPECK_QK);
            }
            d[t * nb + b] = speck_fp16_to_fp32(blk_t[b].d);
            s[t * nb + b] = d[t * nb + b] * (float)sum;
            qsum[t * nb + b] = (int16_t)sum;
        }
    }
    return (speck_q8_rows){.qs = qs, .d = d, .s = s, .qsum = qsum, .n = n_in};
}

static int has_mm(const speck_kernel_table *k, speck_type wt) {
    return (wt == SPECK_TYPE_Q4_0 && k->mm_q4_0) || (wt == SPECK_TYPE_Q8_0 && k->mm_q8_0);
}

// Activation layout the streaming kernels want for weight type wt on the current ISA. An ISA
// with quantized panel kernels but no mm_* row kernels (AVX2) gets the natural split layout,
// which also keeps the Q8_0 block rows its row tiles read, so one prepared activation serves
// a layer's panels and rows alike.
static speck_mm_kind mm_kind(const speck_kernel_table *k, speck_type wt) {
    const speck_type at = speck_act_type(wt);
    if (at == SPECK_TYPE_Q8_K) return SPECK_MM_Q8K;
    if (at != SPECK_TYPE_Q8_0) return SPECK_MM_F32;
    // The other 32-value types: the split layout (natural order) where the ISA has row kernels.
    if (speck_type_is_extra(wt)) return k->qt[wt].mm ? SPECK_MM_Q8_SPLIT : SPECK_MM_Q8_BLOCKS;
    if (!has_mm(k, wt))
        return k->mm_panel_q4_0 || k->mm_panel_q8_0 ? SPECK_MM_Q8_SPLIT : SPECK_MM_Q8_BLOCKS;
    return wt == SPECK_TYPE_Q4_0 ? SPECK_MM_Q8_SPLIT_Q4 : SPECK_MM_Q8_SPLIT;
}

speck_mm_kind speck_mm_kind_for(speck_type wt) {
    return mm_kind(speck_kernels_get(), wt);
}

typedef void (*float_tile_fn)(const void *, size_t, int, const float *, int64_t, int, int64_t,
                              float *);

// The ISA's float tile kernel for weight type wt, or NULL (quantized types, ISAs without tiles).
static float_tile_fn float_tiles(const speck_kernel_table *k, speck_type wt) {
    return wt == SPECK_TYPE_F32    ? k->mm_f32
           : wt == SPECK_TYPE_F16  ? k->mm_f16
           : wt == SPECK_TYPE_BF16 ? k->mm_bf16
                                   : NULL;
}

typedef void (*quant_tile_fn)(const void *, size_t, int, const void *, size_t, int, int64_t,
                              float *);

// The ISA's quantized tile kernel for weight type wt over Q8_0 block activations, or NULL.
static quant_tile_fn quant_tiles(const speck_kernel_table *k, speck_type wt) {
    return wt == SPECK_TYPE_Q4_0   ? k->mm_qtile_q4_0
           : wt == SPECK_TYPE_Q8_0 ? k->mm_qtile_q8_0
                                   : NULL;
}

int speck_mm_stream_max(speck_type wt) {
    const speck_kernel_table *k = speck_kernels_get();
    // Measured on AVX-512 only; the AVX2 tiles are half as wide, so they keep the general bound.
    return float_tiles(k, wt) && k->mm_f32 == speck_kernels_avx512.mm_f32 ? 2 * SMALL_BATCH
                                                                       : SMALL_BATCH;
}

// Layout of the buffer: Q8_0 block rows (n_tok, n_in / 32) first (also the quantizer's scratch
// for the split layout), then for the split layouts qs | d | s (see quantize_rows).
size_t speck_mm_act_bytes(speck_type wt, int64_t n_tok, int64_t n_in) {
    const speck_mm_kind kind = speck_mm_kind_for(wt);
    if (kind == SPECK_MM_F32) return 0;
    if (kind == SPECK_MM_Q8K)
        return (speck_type_row_size(SPECK_TYPE_Q8_K, n_in) * (size_t)n_tok + 63) & ~(size_t)63;
    const size_t arow = speck_type_row_size(SPECK_TYPE_Q8_0, n_in);
    const size_t blocks = (arow * (size_t)n_tok + 63) & ~(size_t)63;
    if (kind == SPECK_MM_Q8_BLOCKS) return blocks;
    return blocks + (size_t)(n_tok * n_in) + 64 +
           (2 * sizeof(float) + sizeof(int16_t)) * (size_t)(n_tok * (n_in / SPECK_QK));
}

size_t speck_mm_act_bytes_max(int64_t n_tok, int64_t n_in) {
    // One weight type of each activation layout; Q8_K rows only exist when n_in allows them.
    const speck_type types[] = {SPECK_TYPE_Q4_0, SPECK_TYPE_Q8_0, SPECK_TYPE_Q4_1, SPECK_TYPE_Q4_K};
    size_t m = 0;
    for (size_t i = 0; i < sizeof types / sizeof types[0]; i++) {
        const size_t b = speck_mm_act_bytes(types[i], n_tok, n_in);
        m = b > m ? b : m;
    }
    return m;
}

void speck_mm_act_prepare(speck_type wt, const float *X, int64_t n_tok, int64_t n_in, void *buf,
                          speck_mm_act *a) {
    const speck_kernel_table *k = speck_kernels_get();
    *a = (speck_mm_act){.kind = mm_kind(k, wt), .x = X, .n_tok = n_tok, .n_in = n_in};
    if (a->kind == SPECK_MM_F32) return;
    char *b = buf;
    if (a->kind == SPECK_MM_Q8K) {
        const size_t krow = speck_type_row_size(SPECK_TYPE_Q8_K, n_in);
#pragma omp parallel for schedule(static) if (n_tok >= 16 && !omp_in_parallel())
        for (int64_t t = 0; t < n_tok; t++)
            k->quantize_q8_k(X + t * n_in, (speck_block_q8_k *)(b + (size_t)t * krow), n_in);
        a->blocks = b;
        return;
    }
    const size_t arow = speck_type_row_size(SPECK_TYPE_Q8_0, n_in);
    if (a->kind == SPECK_MM_Q8_BLOCKS) {
        for (int64_t t = 0; t < n_tok; t++)
            k->quantize_q8_0(X + t * n_in, (speck_block_q8_0 *)(b + (size_t)t * arow), n_in);
        a->blocks = b;
        return;
    }
    const size_t blocks = (arow * (size_t)n_tok + 63) & ~(size_t)63;
    a->rows = quantize_rows(k, X, n_tok, n_in, b + blocks, (speck_block_q8_0 *)b,
                            a->kind == SPECK_MM_Q8_SPLIT_Q4);
    a->blocks = b;
}

int speck_mm_act_fits(const speck_mm_act *a, speck_type wt) {
    return a->kind == speck_mm_kind_for(wt);
}

// One speck_mm_rows call's tile kernels and operands (tiles: mm_float, else mm_quant).
typedef struct {
    float_tile_fn mm_float;
    quant_tile_fn mm_quant;
    const void *W;
    size_t wrow;
    const float *x;  // f32 activations (mm_float)
    const char *act; // quantized activation rows (mm_quant), arow bytes each
    size_t arow;
    int64_t n_in, n_tok;
    int T; // tokens per tile
    float *Y;
    int64_t ldy;
    int accumulate;
} row_tiles;

// The tile of rows o, o + step, ..., o + (rows - 1) * step for all tokens, T at a time.
static void row_tile(const row_tiles *t, int64_t o, int64_t step, int rows) {
    const char *w = (const char *)t->W + (size_t)o * t->wrow;
    for (int64_t t0 = 0; t0 < t->n_tok; t0 += t->T) {
        const int nt = (int)(t->n_tok - t0 < t->T ? t->n_tok - t0 : t->T);
        float out[16];
        if (t->mm_float)
            t->mm_float(w, t->wrow * step, rows, t->x + t0 * t->n_in, t->n_in, nt, t->n_in, out);
        else
            t->mm_quant(w, t->wrow * step, rows, t->act + t0 * t->arow, t->arow, nt, t->n_in, out);
        for (int j = 0; j < nt; j++)
            for (int r = 0; r < rows; r++) {
                float *y = t->Y + (t0 + j) * t->ldy + o + r * step;
                *y = t->accumulate ? *y + out[j * rows + r] : out[j * rows + r];
            }
    }
}

// speck_mm_rows for the block types of src/quant/: the ISA's one-row kernel for up to SPECK_MT
// tokens at a time where it has one (and a was prepared for it), else per-token dots on the
// activation blocks. Both give the same bits (quant.h's contract).
static void mm_rows_qt(const speck_kernel_table *k, speck_type wt, const void *W,
                       const speck_mm_act *a, int64_t o0, int64_t o1, float *Y, int64_t ldy,
                       int accumulate) {
    const int64_t n_in = a->n_in, n_tok = a->n_tok;
    const size_t wrow = speck_type_row_size(wt, n_in);
    const speck_qt_kernels *q = &k->qt[wt];
    const int use_mm = q->mm && a->kind == mm_kind(k, wt) && a->kind != SPECK_MM_Q8_BLOCKS;
    const size_t arow = speck_type_row_size(speck_act_type(wt), n_in);
    for (int64_t o = o0; o < o1; o++) {
        const char *w = (const char *)W + (size_t)o * wrow;
        for (int64_t t = 0; t < n_tok; t += SPECK_MT) {
            const int nt = (int)(n_tok - t < SPECK_MT ? n_tok - t : SPECK_MT);
            float out[SPECK_MT];
            if (use_mm)
                q->mm(w, a, t, nt, out);
            else
                for (int j = 0; j < nt; j++)
                    out[j] = dot_one(k, wt, w, a->blocks + (size_t)(t + j) * arow, n_in);
            for (int j = 0; j < nt; j++) {
                float *y = Y + (t + j) * ldy + o;
                *y = accumulate ? *y + out[j] : out[j];
            }
        }
    }
}

// Rows [o0, o1) of Y = X · Wᵀ from prepared activations; each row is dotted with every token
// while it is hot in L1.
void speck_mm_rows(speck_type wt, const void *W, const speck_mm_act *a, int64_t o0, int64_t o1,
                   float *Y, int64_t ldy, int accumulate) {
    const speck_kernel_table *k = speck_kernels_get();
    if (speck_type_is_extra(wt)) {
        mm_rows_qt(k, wt, W, a, o0, o1, Y, ldy, accumulate);
        return;
    }
    const int64_t n_in = a->n_in, n_tok = a->n_tok;
    const size_t wrow = speck_type_row_size(wt, n_in);
    // Split activations go to the mm_* row kernels where the ISA has them; otherwise (AVX2, whose
    // Q4_0 panels want them split) their Q8_0 block rows go to the tiles or dots.
    const int split =
        (a->kind == SPECK_MM_Q8_SPLIT || a->kind == SPECK_MM_Q8_SPLIT_Q4) && has_mm(k, wt);
    const float_tile_fn mm_float = a->kind == SPECK_MM_F32 ? float_tiles(k, wt) : NULL;
    const quant_tile_fn mm_quant = a->kind != SPECK_MM_F32 && !split ? quant_tiles(k, wt) : NULL;
    const char *act = a->kind == SPECK_MM_F32 ? (const char *)a->x : a->blocks;
    const size_t arow = a->kind == SPECK_MM_F32 ? (size_t)n_in * sizeof(float)
                                                : speck_type_row_size(SPECK_TYPE_Q8_0, n_in);
    if (mm_float || mm_quant) {
        // Tiles of R rows x T tokens; a row block stays in L1 across the token groups.
        // The shared matmuls' 16-row work items split into whole tiles for every T.
        const int T = (int)(n_tok < SPECK_MT ? n_tok : SPECK_MT);
        const int R = mm_float ? k->mm_tile_rows[T] : k->mm_q_tile_rows[T];
        const row_tiles rt = {.mm_float = mm_float,
                              .mm_quant = mm_quant,
                              .W = W,
                              .wrow = wrow,
                              .x = a->x,
                              .act = act,
                              .arow = arow,
                              .n_in = n_in,
                              .n_tok = n_tok,
                              .T = T,
                              .Y = Y,
                              .ldy = ldy,
                              .accumulate = accumulate};
        // Tiles of up to mm_tile_spread rows take them from that many equal parts of the range,
        // a row of each: each row's weight stream then runs on through its part (prefetched by
        // the tile kernel) instead of the tile's rows being one stream. smollm2-135m F32,
        // speck_forward over 128 cached tokens, alternated in one process against 16-row
        // (AVX-512) / 8-row (AVX2) adjacent tiles: AVX-512 1 / 4 / 8 tokens 10.6-10.9 -> 9.0-9.6
        // / 20.7-20.8 -> 12.1-12.6 / 27.6-28.1 -> 17.4-18.5 ms; AVX2 12.4-12.5 -> 9.5-9.6 /
        // 24.1-25.0 -> 12.2-12.7 ms. Eight or sixteen spread rows were slower than four.
        const int64_t L = R > 1 && R <= k->mm_tile_spread ? (o1 - o0) / R : 0;
        int64_t o = o0;
        if (L > 1) {
            for (int64_t i = 0; i < L; i++) row_tile(&rt, o0 + i, L, R);
            o = o0 + R * L;
        }
        for (; o < o1; o += R) row_tile(&rt, o, 1, (int)(o1 - o < R ? o1 - o : R));
        return;
    }
    for (int64_t o = o0; o < o1; o++) {
        const char *w = (const char *)W + (size_t)o * wrow;
        if (split) {
            // Groups of up to SPECK_MT tokens; the row stays in L1 across groups.
            for (int64_t t = 0; t < n_tok; t += SPECK_MT) {
                const int nt = (int)(n_tok - t < SPECK_MT ? n_tok - t : SPECK_MT);
                float out[SPECK_MT];
                if (wt == SPECK_TYPE_Q4_0)
                    k->mm_q4_0((const speck_block_q4_0 *)w, &a->rows, t, nt, out);
                else
                    k->mm_q8_0((const speck_block_q8_0 *)w, &a->rows, t, nt, out);
                for (int j = 0; j < nt; j++) {
                    float *y = Y + (t + j) * ldy + o;
                    *y = accumulate ? *y + out[j] : out[j];
                }
            }
        } else {
            for (int64_t t = 0; t < n_tok; t++) {
                const float r = dot_one(k, wt, w, act + (size_t)t * arow, n_in);
                float *y = Y + t * ldy + o;
                *y = accumulate ? *y + r : r;
            }
        }
    }
}

static size_t elem_size(speck_type wt) {
    return wt == SPECK_TYPE_F32 ? 4 : 2;
}

static speck_panel_fn panel_fn(const speck_kernel_table *k, speck_type wt) {
    return wt == SPECK_TYPE_F32    ? k->mm_panel_f32
           : wt == SPECK_TYPE_F16  ? k->mm_panel_f16
           : wt == SPECK_TYPE_BF16 ? k->mm_panel_bf16
                                   : NULL;
}

// Quantized types whose panels replace their rows (their activations are quantized too).
static int is_quant(speck_type wt) {
    return wt == SPECK_TYPE_Q4_0 || wt == SPECK_TYPE_Q8_0 || speck_type_is_extra(wt);
}

static speck_panel_q_fn panel_q_fn(const speck_kernel_table *k, speck_type wt) {
    return wt == SPECK_TYPE_Q4_0   ? k->mm_panel_q4_0
           : wt == SPECK_TYPE_Q8_0 ? k->mm_panel_q8_0
                                   : NULL;
}

speck_type speck_panel_act_type(speck_type wt) {
    if (speck_type_is_extra(wt)) return wt; // the layout its row kernels take
    return is_quant(wt) ? SPECK_TYPE_Q8_0 : wt; // Q8_0's split layout: natural order
}

int speck_panel_supported(speck_type wt) {
    const speck_kernel_table *k = speck_kernels_get();
    if (speck_type_is_extra(wt)) return k->qt[wt].panel != NULL && speck_qt_panel_layout(wt);
    return is_quant(wt) ? panel_q_fn(k, wt) != NULL : panel_fn(k, wt) != NULL;
}

// Bytes of one panel (16 rows) of n_in inputs.
static size_t panel_stride(speck_type wt, int64_t n_in) {
    if (speck_type_is_extra(wt)) return 16 * speck_type_row_size(wt, n_in);
    if (wt == SPECK_TYPE_Q4_0) return (size_t)(n_in / SPECK_QK) * SPECK_Q4_PANEL_BLOCK;
    if (wt == SPECK_TYPE_Q8_0) return (size_t)(n_in / SPECK_QK) * SPECK_Q8_PANEL_BLOCK;
    return (size_t)16 * (size_t)n_in * elem_size(wt);
}

size_t speck_panel_bytes(speck_type wt, int64_t n_out, int64_t n_in) {
    return (size_t)((n_out + 15) / 16) * panel_stride(wt, n_in);
}

// One 16-row panel (rows of which exist: `rows`): dst[k * 16 + j] = row j's element k, zeros for
// missing rows. Typed copies (one element per store) keep packing a 10 MB model at a few ms.
#define PANEL_PACK(T)                                                                              \
    static void pack_panel_##T(const T *W, int64_t n_in, int rows, T *dst) {                       \
        for (int j = 0; j < 16; j++) {                                                             \
            const T *src = W + (size_t)j * (size_t)n_in;                                           \
            if (j < rows)                                                                          \
                for (int64_t k = 0; k < n_in; k++) dst[k * 16 + j] = src[k];                       \
            else                                                                                   \
                for (int64_t k = 0; k < n_in; k++) dst[k * 16 + j] = 0;                            \
        }                                                                                          \
    }
PANEL_PACK(uint16_t)
PANEL_PACK(uint32_t)

// Q4_0: rows (<= 16) consecutive rows of nb blocks <-> one panel (SPECK_Q4_PANEL_BLOCK per block).
// Missing rows pack as zero nibbles with a zero scale, which contribute nothing.
static void pack_panel_q4(const speck_block_q4_0 *W, int64_t nb, int rows, uint8_t *dst) {
    for (int64_t b = 0; b < nb; b++, dst += SPECK_Q4_PANEL_BLOCK) {
        memset(dst, 0, SPECK_Q4_PANEL_BLOCK);
        for (int j = 0; j < rows; j++) {
            const speck_block_q4_0 *blk = W + (size_t)j * (size_t)nb + b;
            for (int g = 0; g < 4; g++) memcpy(dst + 64 * g + 4 * j, blk->qs + 4 * g, 4);
            memcpy(dst + 256 + 2 * j, &blk->d, 2);
        }
    }
}

static void unpack_panel_q4(const uint8_t *src, int64_t nb, int j0, int rows, speck_block_q4_0 *W) {
    for (int64_t b = 0; b < nb; b++, src += SPECK_Q4_PANEL_BLOCK)
        for (int j = j0; j < j0 + rows; j++) {
            speck_block_q4_0 *blk = W + (size_t)(j - j0) * (size_t)nb + b;
            for (int g = 0; g < 4; g++) memcpy(blk->qs + 4 * g, src + 64 * g + 4 * j, 4);
            memcpy(&blk->d, src + 256 + 2 * j, 2);
        }
}

// Q8_0: values stored + 128 (sign bit flipped) so that vpdpbusd takes them as unsigned bytes;
// missing rows pack as 128s (value 0) with a zero scale.
static void pack_panel_q8(const speck_block_q8_0 *W, int64_t nb, int rows, uint8_t *dst) {
    for (int64_t b = 0; b < nb; b++, dst += SPECK_Q8_PANEL_BLOCK) {
        memset(dst, 0x80, SPECK_Q8_PANEL_BLOCK - 32);
        memset(dst + SPECK_Q8_PANEL_BLOCK - 32, 0, 32);
        for (int j = 0; j < rows; j++) {
            const speck_block_q8_0 *blk = W + (size_t)j * (size_t)nb + b;
            for (int i = 0; i < SPECK_QK; i++)
                dst[64 * (i / 4) + 4 * j + i % 4] = (uint8_t)blk->qs[i] ^ 0x80;
            memcpy(dst + SPECK_Q8_PANEL_BLOCK - 32 + 2 * j, &blk->d, 2);
        }
    }
}

static void unpack_panel_q8(const uint8_t *src, int64_t nb, int j0, int rows, speck_block_q8_0 *W) {
    for (int64_t b = 0; b < nb; b++, src += SPECK_Q8_PANEL_BLOCK)
        for (int j = j0; j < j0 + rows; j++) {
            speck_block_q8_0 *blk = W + (size_t)(j - j0) * (size_t)nb + b;
            for (int g = 0; g < SPECK_QK / 4; g++) { // 4 values at a time (prefill unpacks it all)
                uint32_t v;
                memcpy(&v, src + 64 * g + 4 * j, 4);
                v ^= 0x80808080u;
                memcpy(blk->qs + 4 * g, &v, 4);
            }
            memcpy(&blk->d, src + SPECK_Q8_PANEL_BLOCK - 32 + 2 * j, 2);
        }
}

void speck_panel_pack(speck_type wt, const void *W, int64_t n_out, int64_t n_in, void *P) {
    const size_t pbytes = panel_stride(wt, n_in), wrow = speck_type_row_size(wt, n_in);
#pragma omp parallel for schedule(static) if (n_out * n_in >= PARALLEL_MIN_WORK)
    for (int64_t p = 0; p < (n_out + 15) / 16; p++) {
        const int rows = (int)(n_out - 16 * p < 16 ? n_out - 16 * p : 16);
        const char *src = (const char *)W + (size_t)(16 * p) * wrow;
        char *dst = (char *)P + (size_t)p * pbytes;
        if (speck_type_is_extra(wt))
            speck_qt_panel_pack(wt, src, n_in / speck_type_block_size(wt), rows, dst);
        else if (wt == SPECK_TYPE_Q4_0)
            pack_panel_q4((const speck_block_q4_0 *)src, n_in / SPECK_QK, rows, (uint8_t *)dst);
        else if (wt == SPECK_TYPE_Q8_0)
            pack_panel_q8((const speck_block_q8_0 *)src, n_in / SPECK_QK, rows, (uint8_t *)dst);
        else if (elem_size(wt) == 2)
            pack_panel_uint16_t((const uint16_t *)src, n_in, rows, (uint16_t *)dst);
        else
            pack_panel_uint32_t((const uint32_t *)src, n_in, rows, (uint32_t *)dst);
    }
}

void speck_panel_unpack(speck_type wt, const void *P, int64_t n_in, int64_t o0, int64_t rows,
                        void *dst) {
    const size_t pbytes = panel_stride(wt, n_in), wrow = speck_type_row_size(wt, n_in);
    for (int64_t r = o0; r < o0 + rows;) {
        const int64_t p = r / 16;
        const int j0 = (int)(r - 16 * p);
        const int n = (int)(16 - j0 < o0 + rows - r ? 16 - j0 : o0 + rows - r);
        const char *src = (const char *)P + (size_t)p * pbytes;
        char *out = (char *)dst + (size_t)(r - o0) * wrow;
        if (speck_type_is_extra(wt))
            speck_qt_panel_unpack(wt, src, n_in / speck_type_block_size(wt), j0, n, out);
        else if (wt == SPECK_TYPE_Q4_0)
            unpack_panel_q4((const uint8_t *)src, n_in / SPECK_QK, j0, n, (speck_block_q4_0 *)out);
        else
            unpack_panel_q8((const uint8_t *)src, n_in / SPECK_QK, j0, n, (speck_block_q8_0 *)out);
        r += n;
    }
}

// Panels per call of wt's panel kernel for n_tok tokens, which it takes *tg at a time (0 and 0
// where the ISA has no panel kernels for wt).
static int panel_group(const speck_kernel_table *k, speck_type wt, int64_t n_tok, int *tg) {
    if (speck_type_is_extra(wt)) {
        const speck_qt_kernels *q = &k->qt[wt];
        *tg = (int)(n_tok < q->panel_tokens ? n_tok : q->panel_tokens);
        return q->panel ? q->panel_group[*tg] : 0;
    }
    const int quant = is_quant(wt);
    const int tmax = quant ? k->panel_q_tokens : k->panel_tokens;
    *tg = (int)(n_tok < tmax ? n_tok : tmax);
    return quant ? k->panel_q_group[wt == SPECK_TYPE_Q8_0][*tg] : k->panel_group[*tg];
}

int64_t speck_panel_rows_per_item(speck_type wt, int64_t n_tok) {
    int tg;
    const int R = panel_group(speck_kernels_get(), wt, n_tok, &tg);
    return 16 * (R ? R : 1);
}

// One speck_mm_panel_rows call: rows [o0, o1) of panels P (pbytes each) against a into Y.
typedef struct {
    speck_panel_x_fn xfn; // src/quant/ block types, else quantized weights (qfn), else ffn
    speck_panel_q_fn qfn;
    speck_panel_fn ffn;
    const char *P;
    size_t pbytes;
    const speck_mm_act *a;
    float *Y;
    int64_t ldy, o0, o1, p0, p1;
    int TG, R, accumulate;
} panel_job;

// Panels [q, q + np * pstep) step pstep (np <= R) for all tokens, token groups inner so that the
// panels stay in L1 across them; the row masks apply to the range's first and last panel.
static void panel_call(const panel_job *j, int64_t q, int np, int64_t pstep) {
    const int64_t n_tok = j->a->n_tok, n_in = j->a->n_in, last = q + (np - 1) * pstep;
    const unsigned m0 = q == j->p0 ? 0xFFFFu << (j->o0 - 16 * j->p0) & 0xFFFFu : 0xFFFFu;
    const unsigned m1 = last == j->p1 - 1 ? 0xFFFFu >> (16 * j->p1 - j->o1) : 0xFFFFu;
    const char *pp = j->P + (size_t)q * j->pbytes;
    for (int64_t t = 0; t < n_tok; t += j->TG) {
        const int nt = (int)(n_tok - t < j->TG ? n_tok - t : j->TG);
        float *y = j->Y + t * j->ldy + 16 * q;
        if (j->xfn)
            j->xfn(pp, j->pbytes, np, pstep, j->a, t, nt, y, j->ldy, m0, m1, j->accumulate);
        else if (j->qfn)
            j->qfn(pp, j->pbytes, np, pstep, &j->a->rows, t, nt, y, j->ldy, m0, m1, j->accumulate);
        else
            j->ffn(pp, j->pbytes, np, j->a->x + t * n_in, n_in, nt, n_in, y, j->ldy, m0, m1,
                   j->accumulate);
    }
}

void speck_mm_panel_rows(speck_type wt, const void *P, const speck_mm_act *a, int64_t o0,
                         int64_t o1, float *Y, int64_t ldy, int accumulate) {
    if (o0 >= o1) return;
    const speck_kernel_table *k = speck_kernels_get();
    const int quant = is_quant(wt);
    int TG;
    const int R = panel_group(k, wt, a->n_tok, &TG);
    const int extra = speck_type_is_extra(wt);
    panel_job j = {.xfn = extra ? k->qt[wt].panel : NULL,
                   .qfn = quant && !extra ? panel_q_fn(k, wt) : NULL,
                   .ffn = quant ? NULL : panel_fn(k, wt),
                   .P = P,
                   .pbytes = panel_stride(wt, a->n_in),
                   .a = a,
                   .Y = Y,
                   .ldy = ldy,
                   .o0 = o0,
                   .o1 = o1,
                   .p0 = o0 / 16,
                   .p1 = (o1 + 15) / 16,
                   .TG = TG,
                   .R = R,
                   .accumulate = accumulate};
    int64_t p = j.p0;
    const int spread = extra ? k->qt[wt].panel_spread : k->panel_q_spread[wt == SPECK_TYPE_Q8_0];
    if (quant && R > 1 && spread) {
        // The R panels of a call come from R equal consecutive parts of the range's whole
        // panels, so each of the call's R weight streams runs on through its part (the next
        // panel of a part follows in memory) instead of ending every panel (16 rows, 18 KB of
        // tinyllama's Q4_0) and being found again by the hardware prefetchers. A standalone
        // loop over 260 MB of Q4_0 panels on 2 threads: ~11 % more bandwidth, read-only
        // streams reach the read probe's; the 1.1B Q4_0 decodes 5-9 % faster, smollm2-135m Q8_0
        // ~9 %. On AVX2 Q4_0 spreads two panels per call (four spread lost 14 %): the 1.1B
        // decodes 65-69 -> 79-89 tok/s; its Q8_0 panels stay adjacent (no gain measured). A
        // partial first panel goes before, the rest after.
        const int64_t f0 = o0 % 16 ? j.p0 + 1 : j.p0, f1 = o1 % 16 ? j.p1 - 1 : j.p1;
        const int64_t L = f1 > f0 ? (f1 - f0) / R : 0;
        if (L > 1) {
            if (f0 > j.p0) panel_call(&j, j.p0, 1, 1);
            for (int64_t i = 0; i < L; i++) panel_call(&j, f0 + i, R, L);
            p = f0 + R * L;
        }
    }
    for (; p < j.p1; p += R) panel_call(&j, p, (int)(j.p1 - p < R ? j.p1 - p : R), 1);
}

// Streaming path. W: (n_out, n_in) of type wt; X: (n_tok, n_in) f32; Y: (n_tok, n_out). P: W's
// panel copy or NULL.
static void matmul_small(speck_type wt, const void *W, const void *P, int64_t n_out, int64_t n_in,
                         const float *X, int64_t n_tok, float *Y) {
    const speck_type at = P ? speck_panel_act_type(wt) : wt;
    const size_t bytes = speck_mm_act_bytes(at, n_tok, n_in);
    void *buf = bytes ? scratch_get(&g_act_buf, bytes) : NULL;
    if (bytes && !buf) {
        fail_nomem(Y, n_tok, n_out);
        return;
    }
    speck_mm_act a;
    speck_mm_act_prepare(at, X, n_tok, n_in, buf, &a);
    const int parallel = n_out > 1 && n_out * n_in * n_tok >= PARALLEL_MIN_WORK;
#pragma omp parallel if (parallel)
    {
        int64_t o0, o1;
        speck_thread_share((n_out + 15) / 16, &o0, &o1);
        o0 = 16 * o0 < n_out ? 16 * o0 : n_out;
        o1 = 16 * o1 < n_out ? 16 * o1 : n_out;
        if (P)
            speck_mm_panel_rows(wt, P, &a, o0, o1, Y, n_out, 0);
        else
            speck_mm_rows(wt, W, &a, o0, o1, Y, n_out, 0);
    }
}

void speck_thread_share(int64_t n, int64_t *i0, int64_t *i1) {
    const int64_t nth = omp_get_num_threads(), tid = omp_get_thread_num();
    *i0 = n * tid / nth;
    *i1 = n * (tid + 1) / nth;
}

void speck_blas_single_threaded(void) {
    if (openblas_get_parallel() == 1 && openblas_get_num_threads() != 1)
        openblas_set_num_threads(1);
}

// Prefill path. Same shapes as matmul_small. The threads of one OpenMP region each take a slice
// of the rows: they dequantize them into their own scratch and call a single-threaded sgemm on
// them. With OpenBLAS's pthread pool doing the sgemm instead, the OpenMP workers, spinning
// between the dequantizing regions, fought its threads for the cores: a 32-token pass of the
// 1.1B Q4_0 model on the AVX2 path took 2.6-2.9 s (0.8 s with OMP_WAIT_POLICY=passive; 0.49 s
// now).
static void matmul_blas(speck_type wt, const void *W, const void *P, int64_t n_out, int64_t n_in,
                        const float *X, int64_t n_tok, float *Y) {
    speck_blas_single_threaded();
    const size_t wrow = speck_type_row_size(wt, n_in);
    int failed = 0;
#pragma omp parallel
    {
        int64_t r0, r1;
        speck_thread_share(n_out, &r0, &r1);
        if (wt == SPECK_TYPE_F32) {
            if (r1 > r0)
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)n_tok, (int)(r1 - r0),
                            (int)n_in, 1.0f, X, (int)n_in, (const float *)W + r0 * n_in, (int)n_in,
                            0.0f, Y + r0, (int)n_out);
        } else if (r1 > r0) {
            // Panel height: this thread's part of PANEL_FLOATS, at least 64 rows so sgemm keeps
            // a useful N.
            int64_t ph = (int64_t)(PANEL_FLOATS / (size_t)omp_get_num_threads() / (size_t)n_in);
            if (ph < 64) ph = 64;
            if (ph > r1 - r0) ph = r1 - r0;
            float *panel = scratch_get(&g_panel_buf, (size_t)ph * (size_t)n_in * sizeof(float));
            char *row = P ? scratch_get(&g_rows_buf, wrow) : NULL;
            if (!panel || (P && !row)) {
#pragma omp atomic write
                failed = 1;
            }
            for (int64_t o0 = r0; o0 < r1 && panel && (row || !P); o0 += ph) {
                const int64_t rows = r1 - o0 < ph ? r1 - o0 : ph;
                // panel: (rows, n_in) f32 <- W rows o0 .. o0 + rows
                for (int64_t r = 0; r < rows; r++) {
                    const void *src = (const char *)W + (size_t)(o0 + r) * wrow;
                    if (P) { // the row from the panel copy (its mapped pages were dropped)
                        speck_panel_unpack(wt, P, n_in, o0 + r, 1, row);
                        src = row;
                    }
                    speck_dequantize_row(wt, src, panel + r * n_in, n_in);
                }
                // Y[:, o0 : o0 + rows] = X · panelᵀ (ldc = n_out writes the column slice in place)
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)n_tok, (int)rows,
                            (int)n_in, 1.0f, X, (int)n_in, panel, (int)n_in, 0.0f, Y + o0,
                            (int)n_out);
            }
        }
    }
    if (failed) fail_nomem(Y, n_tok, n_out);
}

// Int8 GEMM path (k->gemm_pack set, wt Q8_0 or Q4_0). Same shapes as matmul_small.
static void matmul_gemm(const speck_kernel_table *k, speck_type wt, const void *W, const void *P,
                        int64_t n_out, int64_t n_in, const float *X, int64_t n_tok, float *Y) {
    const int64_t nb = n_in / SPECK_QK;
    const size_t wrow = speck_type_row_size(wt, n_in),
                 arow = speck_type_row_size(SPECK_TYPE_Q8_0, n_in);
    // Scratch: qs (n_tok, n_in) u8 | d (n_tok, nb) f32 | Q8_0 blocks (n_tok, nb) the quantizer
    // writes first (a separate row per token so tokens quantize in parallel).
    const size_t off_d = ((size_t)(n_tok * n_in) + 63) & ~(size_t)63;
    const size_t off_blk = (off_d + sizeof(float) * (size_t)(n_tok * nb) + 63) & ~(size_t)63;
    char *buf = scratch_get(&g_act_buf, off_blk + arow * (size_t)n_tok);
    if (!buf) {
        fail_nomem(Y, n_tok, n_out);
        return;
    }
    uint8_t *qs = (uint8_t *)buf;
    float *d = (float *)(buf + off_d);
#pragma omp parallel for schedule(static) if (n_tok * n_in >= PARALLEL_MIN_WORK)
    for (int64_t t = 0; t < n_tok; t++) {
        speck_block_q8_0 *blk = (speck_block_q8_0 *)(buf + off_blk + (size_t)t * arow);
        k->quantize_q8_0(X + t * n_in, blk, n_in);
        for (int64_t b = 0; b < nb; b++) {
            uint8_t *dst = qs + t * n_in + b * SPECK_QK;
            for (int j = 0; j < SPECK_QK; j++) dst[j] = (uint8_t)(blk[b].qs[j] + 128);
            d[t * nb + b] = speck_fp16_to_fp32(blk[b].d);
        }
    }
    const speck_gemm_act act = {.qs = qs, .d = d, .n_tok = n_tok, .n = n_in};
    const int64_t n_strips = (n_out + SPECK_GEMM_ROWS - 1) / SPECK_GEMM_ROWS;
    const size_t pack_bytes = (size_t)nb * SPECK_GEMM_BLOCK_BYTES;
    int failed = 0;
    // Dynamic: strips are equal work, but the cores are shared with other processes.
#pragma omp parallel for schedule(dynamic, 1)
    for (int64_t s = 0; s < n_strips; s++) {
        void *pk = scratch_get(&g_pack_buf, pack_bytes);
        char *rowbuf = P ? scratch_get(&g_rows_buf, (size_t)SPECK_GEMM_ROWS * wrow) : NULL;
        if (!pk || (P && !rowbuf)) {
#pragma omp atomic write
            failed = 1;
            continue;
        }
        const int64_t o0 = s * SPECK_GEMM_ROWS;
        const int rows = (int)(n_out - o0 < SPECK_GEMM_ROWS ? n_out - o0 : SPECK_GEMM_ROWS);
        const char *src = (const char *)W + (size_t)o0 * wrow;
        if (P) { // the strip's rows from the panel copy (its mapped pages were dropped)
            speck_panel_unpack(wt, P, n_in, o0, rows, rowbuf);
            src = rowbuf;
        }
        k->gemm_pack(wt, src, wrow, rows, n_in, pk);
        k->gemm_run(pk, rows, &act, Y + o0, n_out);
    }
    if (failed) fail_nomem(Y, n_tok, n_out);
}

static int has_gemm(const speck_kernel_table *k, speck_type wt) {
    return k->gemm_pack && (wt == SPECK_TYPE_Q8_0 || wt == SPECK_TYPE_Q4_0);
}

// panels: the call reads a panel copy of W.
static mm_path choose_path(const speck_kernel_table *k, speck_type wt, int64_t n_tok, int panels) {
    if (g_force == PATH_SMALL || g_force == PATH_BLAS) return g_force;
    if (g_force == PATH_GEMM && has_gemm(k, wt)) return PATH_GEMM;
    if (n_tok < SMALL_BATCH) return PATH_SMALL;
    if (has_gemm(k, wt)) return PATH_GEMM;
    // The src/quant/ block types have no int8 GEMM, but their panel kernels (several tokens per
    // weight load, a call's panels kept in cache across all the token groups) beat the
    // dequantize + sgemm path at 512 tokens where panel_prefill says so (bench_kernels: on
    // AVX-512 every type, 1.8-4x; on AVX2 Q4_K 1.2-1.35x but not Q6_K; BENCHMARKS.md). Their
    // row kernels do not beat sgemm.
    if (panels && speck_type_is_extra(wt) && k->qt[wt].panel_prefill) return PATH_SMALL;
    // Types whose row kernels take every batch (S24_Q8: Q8_0 activations at every token count,
    // as its dense counterpart's int8 GEMM).
    if (speck_type_is_extra(wt) && k->qt[wt].mm && k->qt[wt].rows_prefill) return PATH_SMALL;
    return PATH_BLAS;
}

speck_type speck_matmul_act_type(speck_type wt, int64_t n_tok) {
    return choose_path(speck_kernels_get(), wt, n_tok, 0) == PATH_BLAS ? SPECK_TYPE_F32
                                                                    : speck_act_type(wt);
}

int speck_matmul_force_path(const char *name) {
    static const char *const names[] = {"auto", "small", "sgemm", "gemm"};
    for (int i = 0; i < 4; i++) {
        if (name && !strcmp(name, names[i])) {
            g_force = (mm_path)i;
            return 0;
        }
    }
    return -1;
}

// W: (n_out, n_in) of type wt; X: (n_tok, n_in) f32; Y: (n_tok, n_out) f32.
void speck_matmul(speck_type wt, const void *W, int64_t n_out, int64_t n_in, const float *X,
                  int64_t n_tok, float *Y) {
    speck_matmul_panels(wt, W, NULL, n_out, n_in, X, n_tok, Y);
}

void speck_matmul_panels(speck_type wt, const void *W, const void *P, int64_t n_out, int64_t n_in,
                         const float *X, int64_t n_tok, float *Y) {
    // Float models keep their rows (their panels are an extra copy): the prefill paths read W.
    if (P && (!is_quant(wt) || !speck_panel_supported(wt))) P = NULL;
    if (n_out <= 0 || n_tok <= 0) return;
    if (n_in <= 0) {
        memset(Y, 0, (size_t)(n_out * n_tok) * sizeof(float));
        return;
    }
    const speck_kernel_table *k = speck_kernels_get();
    switch (choose_path(k, wt, n_tok, P != NULL)) {
    case PATH_GEMM:
        matmul_gemm(k, wt, W, P, n_out, n_in, X, n_tok, Y);
        break;
    case PATH_BLAS:
        matmul_blas(wt, W, P, n_out, n_in, X, n_tok, Y);
        break;
    default:
        matmul_small(wt, W, P, n_out, n_in, X, n_tok, Y);
        break;
    }
}
