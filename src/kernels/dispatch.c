// Run-time choice of the SIMD path and the public per-row entry points.
//
// The table is picked once, by a constructor, before main() and before any thread exists, so the
// hot paths read a plain pointer without synchronisation. speck_kernels_force_isa() (tests,
// benchmarks) swaps it; it must not race with running kernels.
#include <cpuid.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/kernels_internal.h"

static const speck_kernel_table *g_table = &speck_kernels_scalar;

// F16C and AVX-512 VNNI straight from CPUID: clang's __builtin_cpu_supports (14) knows neither
// name (the fuzz build uses clang). The OS-support (XSAVE state) checks come with "avx2" and
// "avx512f", which both compilers know.
static int cpuid_bit(unsigned leaf, int reg, int bit) {
    unsigned r[4];
    if (!__get_cpuid_count(leaf, 0, &r[0], &r[1], &r[2], &r[3])) return 0;
    return (int)(r[reg] >> bit & 1);
}
#define HAS_F16C() cpuid_bit(1, 2, 29)       // CPUID.1:ECX[29]
#define HAS_AVX512VNNI() cpuid_bit(7, 2, 11) // CPUID.(7,0):ECX[11]
#define HAS_AVX512VBMI() cpuid_bit(7, 2, 1)  // CPUID.(7,0):ECX[1]

static int cpu_has_avx512(void) {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512vl") && HAS_AVX512VNNI() &&
           __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx2") &&
           __builtin_cpu_supports("fma") && HAS_F16C() &&
           __builtin_cpu_supports("bmi2"); // every AVX-512 CPU has it (the S24_Q8 kernel)
}

static int cpu_has_avx2(void) {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && HAS_F16C() &&
           __builtin_cpu_supports("bmi2"); // every AVX2 CPU has it (the S24_Q8 kernel)
}

// The AVX-512 table for CPUs without VBMI (Skylake-X, Cascade Lake): the S24_Q8 panel kernel
// (vpermb, vpmultishiftqb) replaced by the AVX2 one (panel_s24_avx2.c), 3x the AVX-512 row
// kernel's speed (bench_qkernels, one thread, Zen 5: 5.4 / 7.6 / 15.3 against 16.2 / 27.9 / 42.8
// ns per 256 weights at 1 / 2 / 4 tokens). rows_prefill still sends every batch to the small
// path, which now reads the panels.
static speck_kernel_table g_avx512_novbmi;
static speck_qt_kernels g_qt_novbmi[SPECK_TYPE_ID_MAX];

static const speck_kernel_table *avx512_table(void) {
    if (HAS_AVX512VBMI()) return &speck_kernels_avx512;
    if (!g_avx512_novbmi.name) {
        memcpy(g_qt_novbmi, speck_qt_avx512, sizeof g_qt_novbmi);
        speck_qt_kernels *s = &g_qt_novbmi[SPECK_TYPE_S24_Q8];
        const speck_qt_kernels *v = &speck_qt_avx2[SPECK_TYPE_S24_Q8];
        s->panel = v->panel;
        s->panel_tokens = v->panel_tokens;
        memcpy(s->panel_group, v->panel_group, sizeof s->panel_group);
        s->panel_spread = v->panel_spread;
        s->panel_prefill = v->panel_prefill;
        g_avx512_novbmi = speck_kernels_avx512;
        g_avx512_novbmi.qt = g_qt_novbmi;
    }
    return &g_avx512_novbmi;
}

static const speck_kernel_table *best_table(void) {
    if (cpu_has_avx512()) return avx512_table();
    if (cpu_has_avx2()) return &speck_kernels_avx2;
    return &speck_kernels_scalar;
}

__attribute__((constructor)) static void kernels_init(void) {
    g_table = best_table();
}

const speck_kernel_table *speck_kernels_get(void) {
    return g_table;
}

const char *speck_kernels_isa(void) {
    return g_table->name;
}

int speck_kernels_force_isa(const char *name) {
    if (!name) return -1;
    if (!strcmp(name, "scalar")) {
        g_table = &speck_kernels_scalar;
        return 0;
    }
    if (!strcmp(name, "avx2") && cpu_has_avx2()) {
        g_table = &speck_kernels_avx2;
        return 0;
    }
    if (!strcmp(name, "avx512") && cpu_has_avx512()) {
        g_table = avx512_table();
        return 0;
    }
    return -1;
}

int speck_set_isa(const char *name) {
    if (speck_kernels_force_isa(name))
        return speck_set_error(SPECK_ERR_UNSUPPORTED, "kernel path '%s': %s (this CPU runs %s)",
                               name ? name : "(null)",
                               name && (!strcmp(name, "avx2") || !strcmp(name, "avx512"))
                                   ? "this CPU lacks its instructions"
                                   : "unknown (avx512, avx2 or scalar)",
                               cpu_has_avx512() ? "avx512, avx2 and scalar"
                               : cpu_has_avx2() ? "avx2 and scalar"
                                                : "scalar");
    return 0;
}

const char *speck_isa(void) {
    return g_table->name;
}

speck_type speck_act_type(speck_type weight_type) {
    const speck_type_traits *t = speck_traits(weight_type);
    return t ? t->act : SPECK_TYPE_F32;
}

// x: (n) -> y: one row of type t. The activation formats go through the ISA's quantizers (they
// give the same bits on every ISA); weight types through the reference quantizers.
void speck_quantize_row(speck_type t, const float *x, void *y, int64_t n) {
    if (t == SPECK_TYPE_Q8_0) {
        g_table->quantize_q8_0(x, y, n);
    } else if (t == SPECK_TYPE_Q8_K) {
        g_table->quantize_q8_k(x, y, n);
    } else {
        const speck_type_traits *tr = speck_traits(t);
        if (tr && tr->quant) tr->quant(x, y, n, NULL);
    }
}

// x: one row of type t -> y: (n).
void speck_dequantize_row(speck_type t, const void *x, float *y, int64_t n) {
    switch (t) {
    case SPECK_TYPE_F32:
        memcpy(y, x, (size_t)n * sizeof(float));
        return;
    case SPECK_TYPE_F16:
        g_table->f16_to_f32(x, y, n);
        return;
    case SPECK_TYPE_BF16:
        g_table->bf16_to_f32(x, y, n);
        return;
    case SPECK_TYPE_Q8_0:
        g_table->q8_0_to_f32(x, y, n);
        return;
    case SPECK_TYPE_Q4_0:
        g_table->q4_0_to_f32(x, y, n);
        return;
    default:
        break;
    }
    const speck_type_traits *tr = speck_traits(t);
    if (!tr) return;
    if ((int)t < SPECK_TYPE_ID_MAX && g_table->qt[t].to_f32)
        g_table->qt[t].to_f32(x, y, n);
    else
        tr->dequant(x, y, n);
}

// w: one weight row of type t (n values); act: (n) in speck_act_type(t).
float speck_vec_dot(speck_type t, const void *w, const void *act, int64_t n) {
    const speck_kernel_table *k = g_table;
    switch (t) {
    case SPECK_TYPE_F32:
        return k->dot_f32(w, act, n);
    case SPECK_TYPE_F16:
        return k->dot_f16(w, act, n);
    case SPECK_TYPE_BF16:
        return k->dot_bf16(w, act, n);
    case SPECK_TYPE_Q8_0:
        return k->dot_q8_0(w, act, n);
    case SPECK_TYPE_Q4_0:
        return k->dot_q4_0(w, act, n);
    default:
        break;
    }
    if ((int)t >= 0 && (int)t < SPECK_TYPE_ID_MAX && k->qt[t].dot) return k->qt[t].dot(w, act, n);
    const speck_type_traits *tr = speck_traits(t);
    return tr && tr->dot ? tr->dot(w, act, n) : 0.0f;
}

// q: (hd); kb, vb: key/value j at + j * ld; allow, sc: (n_keys); out: (hd).
int speck_attend(const float *q, const float *kb, const float *vb, int64_t ld, int hd, int n_keys,
                 float scale, float softcap, const uint8_t *allow, float *sc, float *out) {
    return speck_attend_group(q, 0, 1, 1, &n_keys, allow, 0, kb, vb, SPECK_TYPE_F32, ld, hd, scale,
                              softcap, sc, 0, out, 0) == 0;
}

// q, out: query/output (t, h) at + t * ldq (ldo) + h * hd; allow: (nt, lda) or NULL;
// sc: (min(nt * gq, 64), sc_ld).
int speck_attend_group(const float *q, int64_t ldq, int nt, int gq, const int *n_keys,
                       const uint8_t *allow, int64_t lda, const void *kb, const void *vb,
                       speck_type kv, int64_t ld, int hd, float scale, float softcap, float *sc,
                       int64_t sc_ld, float *out, int64_t ldo) {
    if (g_table->attend_group)
        return g_table->attend_group(q, ldq, nt, gq, n_keys, allow, lda, kb, vb, kv, ld, hd, scale,
                                     softcap, sc, sc_ld, out, ldo);
    const float *kf = kb, *vf = vb;
    float *conv = NULL;
    if (kv != SPECK_TYPE_F32) { // the one-query kernels read floats: convert the rows seen
        int maxk = 0;
        for (int t = 0; t < nt; t++) maxk = n_keys[t] > maxk ? n_keys[t] : maxk;
        conv = malloc(2 * sizeof(float) * (size_t)maxk * (size_t)hd + 1);
        if (!conv) { // out of memory: zero outputs rather than a crash
            for (int t = 0; t < nt; t++) memset(out + t * ldo, 0, sizeof(float) * (size_t)gq * hd);
            return nt * gq;
        }
        const int kind = speck_kv_kind(kv);
        for (int j = 0; j < maxk; j++) {
            speck_dequantize_row(kv, speck_kv_row(kb, j, ld, kind), conv + (size_t)j * hd, hd);
            speck_dequantize_row(kv, speck_kv_row(vb, j, ld, kind), conv + (size_t)(maxk + j) * hd,
                                 hd);
        }
        kf = conv, vf = conv + (size_t)maxk * hd, ld = hd;
    }
    int empty = 0;
    for (int t = 0; t < nt; t++)
        for (int h = 0; h < gq; h++)
            empty += !g_table->attend(q + t * ldq + (int64_t)h * hd, kf, vf, ld, hd, n_keys[t],
                                      scale, softcap, allow ? allow + t * lda : NULL, sc,
                                      out + t * ldo + (int64_t)h * hd);
    free(conv);
    return empty;
}
