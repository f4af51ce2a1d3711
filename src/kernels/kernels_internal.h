// Private to src/kernels/: the per-ISA kernel table the dispatcher fills and the entry points of
// each ISA file. Nothing outside src/kernels/ includes this.
#ifndef SPECK_KERNELS_INTERNAL_H
#define SPECK_KERNELS_INTERNAL_H

#include "kernels/kernels.h"
#include "quant/quant.h"

// Most activation rows a multi-token kernel handles per call (matmul tiles tokens by this).
#define SPECK_MT 4
// Float weight row types, as compile-time constants of the ISA files' inlined kernels.
enum { SPECK_W_F32, SPECK_W_F16, SPECK_W_BF16 };
// Kinds of KV cache rows the attention kernels read, as compile-time constants of their inlined
// bodies: floats, f16 values, Q8_0 and Q4_0 blocks (the block kinds: head sizes a multiple of 32,
// each row its own blocks, dequantized in registers as they are read).
enum { SPECK_KV_F32, SPECK_KV_F16, SPECK_KV_Q8, SPECK_KV_Q4 };
static inline int speck_kv_kind(speck_type t) {
    return t == SPECK_TYPE_F16    ? SPECK_KV_F16
           : t == SPECK_TYPE_Q8_0 ? SPECK_KV_Q8
           : t == SPECK_TYPE_Q4_0 ? SPECK_KV_Q4
                                  : SPECK_KV_F32;
}
// Bytes of n values of kind K (the block kinds: whole blocks, n rounded up to 32).
static inline int64_t speck_kv_bytes(int64_t n, int K) {
    return K == SPECK_KV_F32   ? n * 4
           : K == SPECK_KV_F16 ? n * 2
                               : (n + 31) / 32 * (K == SPECK_KV_Q8 ? 34 : 18);
}
// Address of KV cache row j (rows of ld values, one after the other) of kind K.
static inline const void *speck_kv_row(const void *base, int64_t j, int64_t ld, int K) {
    return (const char *)base + j * speck_kv_bytes(ld, K);
}
// Most token rows a panel kernel call takes (the widest ISA's panel_tokens).
#define SPECK_PT 8
typedef void (*speck_panel_fn)(const void *P, size_t pbytes, int np, const float *x, int64_t ldx,
                               int nt, int64_t n, float *y, int64_t ldy, unsigned m0, unsigned m1,
                               int accumulate);
typedef void (*speck_panel_q_fn)(const void *P, size_t pbytes, int np, int64_t pstep,
                                 const speck_q8_rows *a, int64_t t0, int nt, float *y, int64_t ldy,
                                 unsigned m0, unsigned m1, int accumulate);
// Bytes of one 32-input block of a Q4_0 panel: the 16 rows' 16 nibble bytes as four 64-byte
// groups (group g: each row's bytes 4g .. 4g + 3, rows side by side), then the 16 fp16 scales.
#define SPECK_Q4_PANEL_BLOCK 288
// Q8_0: the 16 rows' 32 values + 128 (as unsigned bytes) as eight 64-byte groups (group g:
// values 4g .. 4g + 3 of each row), then the 16 fp16 scales.
#define SPECK_Q8_PANEL_BLOCK 544
// Prefill int8 GEMM (Q8_0 / Q4_0 weights, n_tok at or above the small-batch threshold).
// Weight rows are repacked per call, one strip of SPECK_GEMM_ROWS rows at a time, into
// SPECK_GEMM_BLOCK_BYTES bytes per 32-value block (the layout is private to the ISA file).
// Activations are Q8_0 values offset to unsigned (q + 128) so that vpdpbusd (unsigned x signed
// bytes) takes them against the signed weights directly; the packed strip carries -128 * sum(w)
// per row and block to undo the offset exactly in int32.
// 48 rows = 3 zmm of rows, so the AVX-512 micro-tile is 3 x 4 tokens of accumulators (measured
// best among 2-4 row vectors x 3-6 tokens on Zen 5).
#define SPECK_GEMM_ROWS 48
#define SPECK_GEMM_BLOCK_BYTES (SPECK_GEMM_ROWS * (SPECK_QK + 2 * 4)) // qs + bias + scale per row

typedef struct {
    const uint8_t *qs; // (n_tok, n) q + 128 per value
    const float *d;    // (n_tok, n / 32) block scales (the stored fp16 widened)
    int64_t n_tok, n;  // n a multiple of 32
} speck_gemm_act;

// A panel kernel of a src/quant/ block type (speck_panel_pack's layout for that type, see
// panel_pack.c): np panels pstep panels apart (pbytes each) times token rows t0 .. t0 + nt - 1 of
// a (prepared for the type), as speck_panel_q_fn.
typedef void (*speck_panel_x_fn)(const void *P, size_t pbytes, int np, int64_t pstep,
                                 const speck_mm_act *a, int64_t t0, int nt, float *y, int64_t ldy,
                                 unsigned m0, unsigned m1, int accumulate);

// Kernels of one block type of src/quant/ (speck_kernel_table.qt, indexed by type id). Every
// result follows the dot contract of quant.h, so all ISAs (and rows and panels) give the same
// bits.
typedef struct {
    // One weight row . one activation row of blocks (Q8_0 for the 32-value types, Q8_K for the
    // 256-value ones); n values.
    float (*dot)(const void *w, const void *a, int64_t n);
    // One weight row . token rows t0 .. t0 + nt - 1 (nt 1..SPECK_MT) of a (prepared in the
    // layout speck_mm_kind_for gives); out: (nt). NULL: per-token dots.
    void (*mm)(const void *w, const speck_mm_act *a, int64_t t0, int nt, float *out);
    // Row dequantization x: n / block-size blocks -> y: (n). NULL: the reference.
    void (*to_f32)(const void *x, float *y, int64_t n);
    // Panel kernel (NULL: none on this ISA), most tokens per call, panels per call for nt
    // tokens, and whether a call's panels come from separate parts of a row range.
    speck_panel_x_fn panel;
    int panel_tokens;
    int panel_group[SPECK_PT + 1];
    int panel_spread;
    // 1: the panel kernels also beat dequantize + sgemm on large batches (prefill), so every
    // token count takes them.
    int panel_prefill;
    // 1: the row kernel (mm) takes large batches too, instead of dequantize + sgemm.
    int rows_prefill;
} speck_qt_kernels;

// Panel layouts of the src/quant/ block types (panel_pack.c; the same on every ISA): rows
// (<= 16) consecutive rows W of nb blocks <-> one panel of 16 * nb blocks' bytes, missing rows
// zero. Whether t has a panel layout.
int speck_qt_panel_layout(speck_type t);
void speck_qt_panel_pack(speck_type t, const void *W, int64_t nb, int rows, void *dst);
void speck_qt_panel_unpack(speck_type t, const void *src, int64_t nb, int j0, int rows, void *W);

typedef struct {
    const char *name;
    // One weight row · one activation row; n values (a multiple of 32 for Q types).
    float (*dot_f32)(const float *w, const float *x, int64_t n);
    float (*dot_f16)(const uint16_t *w, const float *x, int64_t n);
    float (*dot_bf16)(const uint16_t *w, const float *x, int64_t n);
    float (*dot_q8_0)(const speck_block_q8_0 *w, const speck_block_q8_0 *x, int64_t n);
    float (*dot_q4_0)(const speck_block_q4_0 *w, const speck_block_q8_0 *x, int64_t n);
    // One weight row · token rows t0 .. t0 + nt - 1 (nt 1..SPECK_MT) of a; out: (nt). NULL: the
    // matmul uses the Q8_0-block path above instead.
    void (*mm_q4_0)(const speck_block_q4_0 *w, const speck_q8_rows *a, int64_t t0, int nt,
                    float *out);
    void (*mm_q8_0)(const speck_block_q8_0 *w, const speck_q8_rows *a, int64_t t0, int nt,
                    float *out);
    // A tile of Q4_0 / Q8_0 weight rows (n values, rows wrow bytes apart) times nt (1..SPECK_MT)
    // Q8_0 block activation rows a + t * arow bytes (SPECK_MM_Q8_BLOCKS), rows <=
    // mm_q_tile_rows[nt]; out[t * rows + r]. Batch invariant like the float tiles below. NULL:
    // per-row dots instead.
    void (*mm_qtile_q4_0)(const void *w, size_t wrow, int rows, const void *a, size_t arow, int nt,
                          int64_t n, float *out);
    void (*mm_qtile_q8_0)(const void *w, size_t wrow, int rows, const void *a, size_t arow, int nt,
                          int64_t n, float *out);
    int mm_q_tile_rows[SPECK_MT + 1];
    // A tile of float weight rows (F32 / F16 / BF16, n values, rows wrow bytes apart) times nt
    // (1..SPECK_MT) f32 activation rows x + t * ldx, rows <= mm_tile_rows[nt];
    // out[t * rows + r]. Each result's arithmetic does not depend on the tile's shape (batch
    // invariance). NULL: per-row dots instead.
    void (*mm_f32)(const void *w, size_t wrow, int rows, const float *x, int64_t ldx, int nt,
                   int64_t n, float *out);
    void (*mm_f16)(const void *w, size_t wrow, int rows, const float *x, int64_t ldx, int nt,
                   int64_t n, float *out);
    void (*mm_bf16)(const void *w, size_t wrow, int rows, const float *x, int64_t ldx, int nt,
                    int64_t n, float *out);
    // Rows per tile for a call whose token groups hold T tokens (index T = 1..SPECK_MT): the
    // matmul hands the float tile kernels row blocks of this size (fewer at the end).
    int mm_tile_rows[SPECK_MT + 1];
    // Tiles of at most this many rows take them from separate equal parts of a row range (one
    // weight stream each) rather than adjacent rows; each row's result is the same either way.
    int mm_tile_spread;
    // Panel kernels for float weights repacked by speck_panel_pack (16-row panels, k-major).
    // np (1..panel_group[nt]) consecutive panels, pbytes apart, of n inputs each, times nt
    // (1..panel_tokens) f32 token rows x + t * ldx: y[t * ldy + 16 * p + j] (=, or += when
    // accumulate) for row j of panel p, except the lanes outside mask m0 in the first panel and
    // outside m1 in the last. Each output is one FMA chain over k in order, so its value does not
    // depend on np, nt or the grouping (batch invariance). NULL: no panel kernels on this ISA.
    speck_panel_fn mm_panel_f32, mm_panel_f16, mm_panel_bf16;
    int panel_tokens;              // most tokens per call (index bound of panel_group)
    int panel_group[SPECK_PT + 1]; // most panels per call for nt tokens (>= 8 FMA chains)
    // Q4_0 / Q8_0 panels (speck_panel_pack): the same with the activations quantized, token
    // rows t0 .. t0 + nt - 1 (nt 1..panel_q_tokens) of a (natural order, SPECK_MM_Q8_SPLIT).
    speck_panel_q_fn mm_panel_q4_0, mm_panel_q8_0;
    int panel_q_tokens;
    int panel_q_group[2][SPECK_PT + 1]; // [0]: Q4_0, [1]: Q8_0
    // 1: a call's panels are taken from separate equal parts of a row range, one weight stream
    // each, rather than adjacent (speck_mm_panel_rows); either way each row's result is the same.
    int panel_q_spread[2]; // [0]: Q4_0, [1]: Q8_0
    // Prefill GEMM, NULL where the ISA has none (matmul then uses sgemm).
    // gemm_pack: rows (1..SPECK_GEMM_ROWS) weight rows of type wt (Q8_0 or Q4_0), row stride wrow
    // bytes, n_in values each -> dst: (n_in / 32) * SPECK_GEMM_BLOCK_BYTES bytes, 64-byte aligned.
    void (*gemm_pack)(speck_type wt, const void *w, size_t wrow, int rows, int64_t n_in, void *dst);
    // gemm_run: y[t * ldy + r] = sum over the row of packed row r times activation row t, for
    // t < a->n_tok and r < rows (the packed strip's rows; nothing else in y is touched).
    void (*gemm_run)(const void *packed, int rows, const speck_gemm_act *a, float *y, int64_t ldy);
    // Attention of one query head over keys j < n_keys (k_j = kb + j * ld, v_j = vb + j * ld,
    // each hd floats): out (hd) = sum_j softmax_j(s_j) v_j over the allowed keys, s_j = scale *
    // q . k_j soft-capped to softcap * tanh(s_j / softcap) when softcap > 0
    // (allow: (n_keys) bytes, nonzero = allowed; NULL = all). sc: (n_keys) scratch. Returns 0 and
    // zeroes out when no key is allowed. A query's result depends only on its own inputs, not on
    // which other queries or heads run alongside (batch invariance of the decode path).
    int (*attend)(const float *q, const float *kb, const float *vb, int64_t ld, int hd, int n_keys,
                  float scale, float softcap, const uint8_t *allow, float *sc, float *out);
    // Attention of several queries over the same keys (speck_attend_group), keys and values f32,
    // f16, Q8_0 or Q4_0; NULL: speck_attend once per query on f32 rows. Returns how many queries
    // had no allowed key.
    int (*attend_group)(const float *q, int64_t ldq, int nt, int gq, const int *n_keys,
                        const uint8_t *allow, int64_t lda, const void *kb, const void *vb,
                        speck_type kv, int64_t ld, int hd, float scale, float softcap, float *sc,
                        int64_t sc_ld, float *out, int64_t ldo);
    // Activation quantization (must be bit-identical across ISAs) and row conversions.
    void (*quantize_q8_0)(const float *x, speck_block_q8_0 *y, int64_t n);
    void (*f16_to_f32)(const uint16_t *x, float *y, int64_t n);
    void (*bf16_to_f32)(const uint16_t *x, float *y, int64_t n);
    void (*q8_0_to_f32)(const speck_block_q8_0 *x, float *y, int64_t n);
    void (*q4_0_to_f32)(const speck_block_q4_0 *x, float *y, int64_t n);
    // Q8_K activation quantization (x: (n) -> n / 256 blocks), bit-identical to
    // speck_quant_q8_k_ref.
    void (*quantize_q8_k)(const float *x, speck_block_q8_k *y, int64_t n);
    // Kernels of the src/quant/ block types, SPECK_TYPE_ID_MAX entries indexed by type id (NULL
    // members: the scalar reference).
    const speck_qt_kernels *qt;
} speck_kernel_table;

// The table in use (chosen once; see dispatch.c).
const speck_kernel_table *speck_kernels_get(void);

// Per-ISA tables. The AVX ones are only dereferenced after the CPU check passes.
extern const speck_kernel_table speck_kernels_scalar;
extern const speck_kernel_table speck_kernels_avx2;
extern const speck_kernel_table speck_kernels_avx512;

// Scalar row helpers shared by all ISAs (the reference semantics).
void speck_quantize_row_q8_0_ref(const float *x, speck_block_q8_0 *y, int64_t n);
void speck_quantize_row_q4_0_ref(const float *x, speck_block_q4_0 *y, int64_t n);
// The block-type kernels of each ISA (src/kernels/quant_*.c; the scalar table's are all NULL).
extern const speck_qt_kernels speck_qt_none[SPECK_TYPE_ID_MAX];
extern const speck_qt_kernels speck_qt_avx2[SPECK_TYPE_ID_MAX];
extern const speck_qt_kernels speck_qt_avx512[SPECK_TYPE_ID_MAX];
// S24_Q8 rows (sparse_avx512.c, sparse_avx2.c), speck_qt_kernels.mm of those tables.
void speck_mm_s24_q8_avx512(const void *w, const speck_mm_act *a, int64_t t0, int nt, float *out);
void speck_mm_s24_q8_avx2(const void *w, const speck_mm_act *a, int64_t t0, int nt, float *out);
void speck_quantize_q8_k_avx2(const float *x, speck_block_q8_k *y, int64_t n);
// Panel kernels (src/kernels/panel_k_avx512.c).
#define SPECK_PANEL_X_DECL(NAME)                                                                   \
    void NAME(const void *P, size_t pbytes, int np, int64_t pstep, const speck_mm_act *a,          \
              int64_t t0, int nt, float *y, int64_t ldy, unsigned m0, unsigned m1, int accumulate)
SPECK_PANEL_X_DECL(speck_panel_q4_k_avx512);
SPECK_PANEL_X_DECL(speck_panel_q5_k_avx512);
SPECK_PANEL_X_DECL(speck_panel_q6_k_avx512);
SPECK_PANEL_X_DECL(speck_panel_q2_k_avx512);
SPECK_PANEL_X_DECL(speck_panel_q3_k_avx512);
SPECK_PANEL_X_DECL(speck_panel_iq4_xs_avx512);
SPECK_PANEL_X_DECL(speck_panel_dgq4_avx512);
// (src/kernels/panel_k_avx2.c)
SPECK_PANEL_X_DECL(speck_panel_q4_k_avx2);
SPECK_PANEL_X_DECL(speck_panel_q6_k_avx2);
// (src/kernels/panel_s24_avx2.c: also the AVX-512 table's on CPUs without VBMI, see dispatch.c)
SPECK_PANEL_X_DECL(speck_panel_s24_q8_avx2);
// (src/kernels/panel_q32_avx512.c)
SPECK_PANEL_X_DECL(speck_panel_q4_1_avx512);
SPECK_PANEL_X_DECL(speck_panel_q5_0_avx512);
SPECK_PANEL_X_DECL(speck_panel_q5_1_avx512);
SPECK_PANEL_X_DECL(speck_panel_iq4_nl_avx512);
// (src/kernels/panel_s24_avx512.c: needs VBMI as well, see dispatch.c)
SPECK_PANEL_X_DECL(speck_panel_s24_q8_avx512);
void speck_quantize_q8_k_avx512(const float *x, speck_block_q8_k *y, int64_t n);
// The AVX-512 table's gemm_pack / gemm_run (src/kernels/gemm_avx512.c).
void speck_gemm_pack_avx512(speck_type wt, const void *w, size_t wrow, int rows, int64_t n_in,
                            void *dst);
void speck_gemm_run_avx512(const void *packed, int rows, const speck_gemm_act *a, float *y,
                           int64_t ldy);
// The AVX-512 table's attend_group (src/kernels/attend_avx512.c).
int speck_attend_group_avx512(const float *q, int64_t ldq, int nt, int gq, const int *n_keys,
                              const uint8_t *allow, int64_t lda, const void *kb, const void *vb,
                              speck_type kv, int64_t ld, int hd, float scale, float softcap,
                              float *sc, int64_t sc_ld, float *out, int64_t ldo);
// Portable attention (the scalar table's attend).
int speck_attend_ref(const float *q, const float *kb, const float *vb, int64_t ld, int hd,
                     int n_keys, float scale, float softcap, const uint8_t *allow, float *sc,
                     float *out);

#endif
