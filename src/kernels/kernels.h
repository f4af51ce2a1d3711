// Internal kernel interface: weight types, quantization, dot products and matmul.
//
// Block layouts are byte-identical to llama.cpp / ggml so GGUF tensors are used in place (mmap):
//   Q8_0: 32 values per 34-byte block: { fp16 d; int8 qs[32]; }        x[i] = d * qs[i]
//   Q4_0: 32 values per 18-byte block: { fp16 d; uint8 qs[16]; }
//         x[j] = d * ((qs[j] & 0x0F) - 8), x[j + 16] = d * ((qs[j] >> 4) - 8), j = 0..15
//   F16 is IEEE binary16, BF16 the top 16 bits of an IEEE binary32 (round-to-nearest-even).
#ifndef SPECK_KERNELS_H
#define SPECK_KERNELS_H

#include <stddef.h>
#include <stdint.h>

#include "speck.h"

#define SPECK_QK 32 // values per Q8_0 / Q4_0 block

typedef struct {
    uint16_t d;
    int8_t qs[SPECK_QK];
} speck_block_q8_0;

typedef struct {
    uint16_t d;
    uint8_t qs[SPECK_QK / 2];
} speck_block_q4_0;

_Static_assert(sizeof(speck_block_q8_0) == 34, "Q8_0 block must be 34 bytes");
_Static_assert(sizeof(speck_block_q4_0) == 18, "Q4_0 block must be 18 bytes");

// fp16 / bf16 scalar conversions (exact IEEE semantics, RNE on narrowing).
float speck_fp16_to_fp32(uint16_t h);
uint16_t speck_fp32_to_fp16(float f);
float speck_bf16_to_fp32(uint16_t h);
uint16_t speck_fp32_to_bf16(float f);

// Which SIMD path the dispatcher picked ("avx512", "avx2", "scalar").
const char *speck_kernels_isa(void);
// Force a path for tests/benchmarks: "avx512", "avx2", "scalar". Returns 0, or -1 when the CPU
// lacks it (the current path is kept).
int speck_kernels_force_isa(const char *name);

// Quantize/convert n floats (n a multiple of the block size for Q types) into type t.
// x: (n) -> y: row of speck_type_row_size(t, n) bytes.
void speck_quantize_row(speck_type t, const float *x, void *y, int64_t n);
// y: (n) <- x: row of type t.
void speck_dequantize_row(speck_type t, const void *x, float *y, int64_t n);

// Type the activations must be in to be dotted with weights of type t:
// SPECK_TYPE_Q8_0 for Q8_0 / Q4_0 and the other 32-value block types, SPECK_TYPE_Q8_K for the
// 256-value ones (K-quants, IQ4_XS), SPECK_TYPE_F32 for float weights.
speck_type speck_act_type(speck_type weight_type);

// Dot product of one weight row (type t, n values) with one activation row already converted to
// speck_act_type(t). n is a multiple of 32 for quantized types.
float speck_vec_dot(speck_type t, const void *w, const void *act, int64_t n);
// Attention of one query head over n_keys cached keys/values (rows ld floats apart, hd used):
// out (hd) = softmax(s_j over allowed j) . v with s_j = scale * q . k_j, or, when softcap > 0,
// softcap * tanh(scale * q . k_j / softcap) (Gemma 2's attention-logit soft-capping). q: (hd);
// allow: (n_keys) or NULL; sc: (n_keys) scratch. Returns 0 (out zeroed) when no key is allowed.
// Batch-invariant.
int speck_attend(const float *q, const float *kb, const float *vb, int64_t ld, int hd, int n_keys,
                 float scale, float softcap, const uint8_t *allow, float *sc, float *out);
// The same for gq query heads sharing one key/value head, for nt tokens at once (GQA heads and
// the tokens of a verification pass): query (t, h) at q + t * ldq + h * hd, its output at
// out + t * ldo + h * hd; token t sees keys j < n_keys[t], those with allow[t * lda + j] != 0
// when allow is not NULL. Keys and values: rows of type kv (SPECK_TYPE_F32, SPECK_TYPE_F16, or
// SPECK_TYPE_Q8_0 / SPECK_TYPE_Q4_0 blocks with hd and ld multiples of 32), row j at j times ld
// values' bytes; f16 and block rows are widened exactly (a block's d * q fits a float), so the
// result is the f32 one on the widened rows. sc: (min(nt * gq, 64), sc_ld >= every n_keys[t])
// scratch. Each block of keys is read once for all the queries, and each output is bit-identical
// to the one-query case (for f32 rows: speck_attend). Returns how many queries had no allowed key
// (outputs zeroed).
int speck_attend_group(const float *q, int64_t ldq, int nt, int gq, const int *n_keys,
                       const uint8_t *allow, int64_t lda, const void *kb, const void *vb,
                       speck_type kv, int64_t ld, int hd, float scale, float softcap, float *sc,
                       int64_t sc_ld, float *out, int64_t ldo);

// Y = X · Wᵀ, threaded with OpenMP. Call it from outside any parallel region.
// W: (n_out, n_in) rows of type wt, rows contiguous (row stride speck_type_row_size(wt, n_in))
// X: (n_tok, n_in) f32 row-major;  Y: (n_tok, n_out) f32 row-major.
// Small n_tok (decode / draft verification) streams each weight row once and dots it with every
// token; large n_tok (prefill) runs an int8 GEMM on Q8_0-quantized activations for Q8_0/Q4_0
// weights where the ISA has one (AVX-512 VNNI), and OpenBLAS sgemm otherwise (quantized weights
// dequantized first). Below 16 tokens every output row is bit-identical to what n_tok = 1 gives
// for the same activation row (speculative decoding's greedy identity relies on it).
void speck_matmul(speck_type wt, const void *W, int64_t n_out, int64_t n_in, const float *X,
                  int64_t n_tok, float *Y);

// The type speck_matmul rounds the activations to before multiplying, for this weight type and
// token count on the current ISA: SPECK_TYPE_Q8_0 on the streaming and int8 GEMM paths for
// Q8_0/Q4_0 weights, SPECK_TYPE_F32 where it uses f32 activations (tests use it to build the
// reference).
speck_type speck_matmul_act_type(speck_type wt, int64_t n_tok);

// The streaming (few-token) matmul in pieces, for callers that run their own parallel region:
// prepare the activations once per thread, then each thread computes its share of the rows.
// Results are bit-identical to speck_matmul with n_tok < 16.
// Activations in the matmul-internal layout: the Q8_0 values of nt token rows with the block
// headers split off, so a pair of blocks is one aligned 64-byte load and the scales are floats.
// Same numbers as speck_quantize_row(Q8_0) produces (d is the stored fp16 scale, widened). For
// Q4_0 weights the AVX-512 kernel wants the values of each 4-block group (within the first
// floor(nb / 8) * 8 blocks) as [elements 0-15 of the 4 blocks | elements 16-31 of the 4 blocks];
// matmul.c builds that order when it passes Q4_0 rows (see quantize_rows()).
typedef struct {
    const int8_t *qs;    // (n_tok, n) quantized values; rows 64-byte aligned
    const float *d;      // (n_tok, n / 32) block scales
    const float *s;      // (n_tok, n / 32) d * (sum of the block's 32 values), for Q4_0's -8 offset
    const int16_t *qsum; // (n_tok, n / 32) sum of the block's 32 values
    int64_t n;           // values per row, a multiple of 32
} speck_q8_rows;

typedef enum {
    SPECK_MM_F32,         // f32 rows used in place (F32/F16/BF16 weights)
    SPECK_MM_Q8_BLOCKS,   // Q8_0 block rows (Q8_0/Q4_0 weights, ISAs without mm kernels)
    SPECK_MM_Q8_SPLIT,    // split Q8_0 layout for the mm kernels, natural order (Q8_0 weights)
    SPECK_MM_Q8_SPLIT_Q4, // split layout in Q4_0's nibble order (Q4_0 weights)
    SPECK_MM_Q8K,         // Q8_K block rows (the 256-value types: K-quants, IQ4_XS)
} speck_mm_kind;

typedef struct {
    speck_mm_kind kind;
    const float *x;     // SPECK_MM_F32: the caller's X
    const char *blocks; // Q8_0 block rows (SPECK_MM_Q8_BLOCKS, and kept by the split layouts),
                        // or Q8_K block rows (SPECK_MM_Q8K)
    speck_q8_rows rows; // SPECK_MM_Q8_SPLIT*
    int64_t n_tok, n_in;
} speck_mm_act;

// Layout weight type wt needs on the current ISA (matrices of different types but the same kind
// can share one prepared activation).
speck_mm_kind speck_mm_kind_for(speck_type wt);
// Token counts below this are faster on the streaming kernels than on the prefill path for weight
// type wt on this ISA: 16 (SMALL_BATCH) in general; 32 for float weights with multi-token tile
// kernels (AVX-512), which beat dequantize + sgemm up to there (smollm2-135m F32, OpenBLAS
// Zen-tuned: pp32 627 vs 573 tok/s, pp64 764 vs 869; F16 4x256 with OPENBLAS_CORETYPE=Haswell:
// ahead at every n up to 128).
int speck_mm_stream_max(speck_type wt);
// Bytes of buffer speck_mm_act_prepare needs (0 for SPECK_MM_F32).
size_t speck_mm_act_bytes(speck_type wt, int64_t n_tok, int64_t n_in);
// The most any weight type needs (a buffer for whatever matrices share it).
size_t speck_mm_act_bytes_max(int64_t n_tok, int64_t n_in);
// X: (n_tok, n_in) f32 -> a, using buf (64-byte aligned, speck_mm_act_bytes long). X must stay
// alive and unchanged while a is used for SPECK_MM_F32.
void speck_mm_act_prepare(speck_type wt, const float *X, int64_t n_tok, int64_t n_in, void *buf,
                          speck_mm_act *a);
// Whether a was prepared in the layout weight type wt needs.
int speck_mm_act_fits(const speck_mm_act *a, speck_type wt);
// Y[t * ldy + o] (=, or += when accumulate) row o of W · token t of a, for o in [o0, o1).
// W: (n_out, a->n_in) of type wt.
void speck_mm_rows(speck_type wt, const void *W, const speck_mm_act *a, int64_t o0, int64_t o1,
                   float *Y, int64_t ldy, int accumulate);
// Panel layouts for the few-token matmul: rows in panels of 16 (the last padded with zero rows).
// F32 / F16 / BF16: each panel stored input-major — the 16 rows' values at input k side by side,
// same element type; the kernel multiplies 16 rows by a broadcast activation per FMA with no
// horizontal sums, every output one FMA chain over k (batch-invariant). On small models, whose
// matmuls are compute-bound (weights in cache), this runs ~2x the row layout's tiles.
// Q4_0 / Q8_0 (AVX-512 VNNI): per 32-input block the 16 rows' bytes in 64-byte groups (group g:
// each row's bytes 4g .. 4g + 3; Q4_0 four groups of nibble pairs, Q8_0 eight groups of values
// + 128) then their 16 fp16 scales — the rows' bytes reordered, so that one vpdpbusd multiplies
// 16 rows by 4 broadcast activation bytes: ~2x the row kernels' rate, which was below the
// memory bandwidth. model.c keeps such copies (see there for when).
// Whether the current ISA has panel kernels for wt.
int speck_panel_supported(speck_type wt);
// The type to prepare activations for (speck_mm_act_prepare) when running wt's panels.
speck_type speck_panel_act_type(speck_type wt);
// Bytes of the panel copy of a (n_out, n_in) matrix of type wt.
size_t speck_panel_bytes(speck_type wt, int64_t n_out, int64_t n_in);
// W: (n_out, n_in) rows of type wt -> P (speck_panel_bytes long).
void speck_panel_pack(speck_type wt, const void *W, int64_t n_out, int64_t n_in, void *P);
// Rows [o0, o0 + rows) of a Q4_0 / Q8_0 matrix back from its panel copy P into dst, in the row
// layout.
void speck_panel_unpack(speck_type wt, const void *P, int64_t n_in, int64_t o0, int64_t rows,
                        void *dst);
// Rows per work item that keeps the panel kernel at full width for n_tok tokens (a multiple of
// 16); split row ranges on multiples of 16.
int64_t speck_panel_rows_per_item(speck_type wt, int64_t n_tok);
// Like speck_mm_rows, from the panel copy P of W (a prepared for speck_panel_act_type(wt); any
// o0 <= o1). Results equal for every n_tok and row range (not bit-equal to speck_mm_rows').
void speck_mm_panel_rows(speck_type wt, const void *P, const speck_mm_act *a, int64_t o0,
                         int64_t o1, float *Y, int64_t ldy, int accumulate);
// speck_matmul with the panel copy P (or NULL) of a Q4_0 / Q8_0 matrix W used instead of W's rows
// on every path (the model drops the mapped pages of quantized weights it holds in panels). For
// float types P is ignored: their rows stay.
void speck_matmul_panels(speck_type wt, const void *W, const void *P, int64_t n_out, int64_t n_in,
                         const float *X, int64_t n_tok, float *Y);
// Inside an OpenMP parallel region: this thread's contiguous share [*i0, *i1) of n items.
void speck_thread_share(int64_t n, int64_t *i0, int64_t *i1);
// OpenBLAS single-threaded: speck calls sgemm from its own OpenMP threads, each on a slice (two
// thread pools spinning against each other lost a third or more of the time on 2 cores).
// OpenBLAS built on OpenMP runs single-threaded inside a parallel region by itself, and its
// openblas_set_num_threads would set OpenMP's thread count for everyone: left alone.
void speck_blas_single_threaded(void);

// Tests/benchmarks: force the path speck_matmul takes whatever n_tok is: "small" (streaming),
// "sgemm", "gemm" (int8 GEMM; types or ISAs without one fall back to the automatic choice), or
// "auto" (the default). Returns 0, or -1 for an unknown name. Must not race with running matmuls.
int speck_matmul_force_path(const char *name);

#endif
