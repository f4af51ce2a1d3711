// The levels view of the block types, for rounding methods that choose each value's level
// themselves under scales set once per block (GPTQ, src/calib/gptq.c): every element's value is
// A * g(L) + B, where L is its stored level, g(L) = L - off or the IQ4 grid K[L], and A, B come
// from the block's (sub-block's) scales, computed with the dequantizer's float operations so the
// value is the dequantizer's bit for bit. Layouts: quant.h.
#include <string.h>

#include "quant/quant.h"

static inline float h2f(uint16_t h) {
    return speck_fp16_to_fp32(h);
}

int speck_levels_info(speck_type t, speck_levels_facts *li) {
    static const struct {
        speck_type t;
        int nlev, off;
        bool grid;
    } tab[] = {
        // Q8_0 levels start at 1 (stored -127): ggml's quantizer never writes -128, and SIMD
        // kernels elsewhere may take |q| in 8 bits.
        {SPECK_TYPE_Q4_0, 16, 8, false},   {SPECK_TYPE_Q4_1, 16, 0, false},
        {SPECK_TYPE_Q5_0, 32, 16, false},  {SPECK_TYPE_Q5_1, 32, 0, false},
        {SPECK_TYPE_Q8_0, 256, 128, false}, {SPECK_TYPE_IQ4_NL, 16, 0, true},
        {SPECK_TYPE_Q2_K, 4, 0, false},    {SPECK_TYPE_Q3_K, 8, 4, false},
        {SPECK_TYPE_Q4_K, 16, 0, false},   {SPECK_TYPE_Q5_K, 32, 0, false},
        {SPECK_TYPE_Q6_K, 64, 32, false},  {SPECK_TYPE_IQ4_XS, 16, 0, true},
        {SPECK_TYPE_DGQ4, 16, 8, false},
    };
    for (size_t i = 0; i < sizeof tab / sizeof tab[0]; i++)
        if (tab[i].t == t) {
            li->nlev = tab[i].nlev;
            li->lmin = t == SPECK_TYPE_Q8_0 ? 1 : 0;
            li->off = tab[i].off;
            li->has_min = t == SPECK_TYPE_Q4_1 || t == SPECK_TYPE_Q5_1 || t == SPECK_TYPE_Q2_K ||
                          t == SPECK_TYPE_Q4_K || t == SPECK_TYPE_Q5_K;
            li->grid = tab[i].grid ? speck_iq4_values : NULL;
            return 0;
        }
    return -1;
}

// 32 nibbles of a 32-value block: element j low nibble of qs[j], element j + 16 high nibble.
static void get_nib32(const uint8_t *qs, uint8_t *L) {
    for (int j = 0; j < 16; j++) L[j] = qs[j] & 0xF, L[j + 16] = qs[j] >> 4;
}
static void set_nib32(uint8_t *qs, const uint8_t *L) {
    for (int j = 0; j < 16; j++) qs[j] = (uint8_t)((L[j] & 0xF) | (L[j + 16] << 4));
}
// Bit 4 of 32 levels in a little-endian u32 (Q5_0 / Q5_1's qh).
static void get_qh32(const uint8_t *qh, uint8_t *L) {
    for (int j = 0; j < 32; j++) L[j] |= (uint8_t)(((qh[j / 8] >> (j % 8)) & 1) << 4);
}
static void set_qh32(uint8_t *qh, const uint8_t *L) {
    memset(qh, 0, 4);
    for (int j = 0; j < 32; j++) qh[j / 8] |= (uint8_t)(((L[j] >> 4) & 1) << (j % 8));
}
// Q2_K / Q3_K low 2 bits: element 128h + 32s + l in bits 2s of qs[32h + l].
static void get_crumbs(const uint8_t *qs, uint8_t *L) {
    for (int e = 0; e < 256; e++) {
        const int h = e / 128, s = e % 128 / 32, l = e % 32;
        L[e] = (qs[32 * h + l] >> (2 * s)) & 3;
    }
}
static void set_crumbs(uint8_t *qs, const uint8_t *L) {
    memset(qs, 0, 64);
    for (int e = 0; e < 256; e++) {
        const int h = e / 128, s = e % 128 / 32, l = e % 32;
        qs[32 * h + l] |= (uint8_t)((L[e] & 3) << (2 * s));
    }
}
// Q4_K / Q5_K nibbles: element 64c + l low nibble of qs[32c + l], 64c + 32 + l its high nibble;
// Q5_K's bit 4: element 64c + l in bit 2c of qh[l], 64c + 32 + l in bit 2c + 1.
static void get_q45k(const uint8_t *qs, const uint8_t *qh, uint8_t *L) {
    for (int c = 0; c < 4; c++)
        for (int l = 0; l < 32; l++) {
            L[64 * c + l] = qs[32 * c + l] & 0xF;
            L[64 * c + 32 + l] = qs[32 * c + l] >> 4;
            if (qh) {
                L[64 * c + l] |= (uint8_t)(((qh[l] >> (2 * c)) & 1) << 4);
                L[64 * c + 32 + l] |= (uint8_t)(((qh[l] >> (2 * c + 1)) & 1) << 4);
            }
        }
}
static void set_q45k(uint8_t *qs, uint8_t *qh, const uint8_t *L) {
    if (qh) memset(qh, 0, 32);
    for (int c = 0; c < 4; c++)
        for (int l = 0; l < 32; l++) {
            qs[32 * c + l] = (uint8_t)((L[64 * c + l] & 0xF) | ((L[64 * c + 32 + l] & 0xF) << 4));
            if (qh)
                qh[l] |= (uint8_t)((((L[64 * c + l] >> 4) & 1) << (2 * c)) |
                                   (((L[64 * c + 32 + l] >> 4) & 1) << (2 * c + 1)));
        }
}
// Q6_K: half h, l 0..31: elements 128h + l + 32k (k 0..3) are the low nibbles of ql[64h + l],
// ql[64h + 32 + l] and the high nibbles of the same, bits 4..5 from bits 2k of qh[32h + l].
static void get_q6k(const speck_block_q6_k *b, uint8_t *L) {
    for (int h = 0; h < 2; h++)
        for (int l = 0; l < 32; l++) {
            const uint8_t q0 = b->ql[64 * h + l], q1 = b->ql[64 * h + 32 + l], hb = b->qh[32 * h + l];
            const uint8_t lo[4] = {q0 & 0xF, q1 & 0xF, q0 >> 4, q1 >> 4};
            for (int k = 0; k < 4; k++)
                L[128 * h + 32 * k + l] = (uint8_t)(lo[k] | (((hb >> (2 * k)) & 3) << 4));
        }
}
static void set_q6k(speck_block_q6_k *b, const uint8_t *L) {
    for (int h = 0; h < 2; h++)
        for (int l = 0; l < 32; l++) {
            const uint8_t *e = L + 128 * h + l; // e[32k]
            b->ql[64 * h + l] = (uint8_t)((e[0] & 0xF) | ((e[64] & 0xF) << 4));
            b->ql[64 * h + 32 + l] = (uint8_t)((e[32] & 0xF) | ((e[96] & 0xF) << 4));
            b->qh[32 * h + l] = (uint8_t)((e[0] >> 4) | ((e[32] >> 4) << 2) | ((e[64] >> 4) << 4) |
                                          ((e[96] >> 4) << 6));
        }
}

void speck_levels_get(speck_type t, const void *y, int64_t n, float *A, float *B, uint8_t *L) {
    const speck_type_traits *tr = speck_traits(t);
    const int64_t nb = n / tr->block;
    for (int64_t i = 0; i < nb; i++) {
        const uint8_t *blk = (const uint8_t *)y + i * tr->bytes;
        float *a = A + i * tr->block, *bb = B + i * tr->block;
        uint8_t *l = L + i * tr->block;
        switch (t) {
        case SPECK_TYPE_Q4_0:
        case SPECK_TYPE_IQ4_NL: {
            const speck_block_iq4_nl *b = (const void *)blk; // same layout as Q4_0
            get_nib32(b->qs, l);
            for (int j = 0; j < 32; j++) a[j] = h2f(b->d), bb[j] = 0;
            break;
        }
        case SPECK_TYPE_Q4_1: {
            const speck_block_q4_1 *b = (const void *)blk;
            get_nib32(b->qs, l);
            for (int j = 0; j < 32; j++) a[j] = h2f(b->d), bb[j] = h2f(b->m);
            break;
        }
        case SPECK_TYPE_Q5_0: {
            const speck_block_q5_0 *b = (const void *)blk;
            get_nib32(b->qs, l);
            get_qh32(b->qh, l);
            for (int j = 0; j < 32; j++) a[j] = h2f(b->d), bb[j] = 0;
            break;
        }
        case SPECK_TYPE_Q5_1: {
            const speck_block_q5_1 *b = (const void *)blk;
            get_nib32(b->qs, l);
            get_qh32(b->qh, l);
            for (int j = 0; j < 32; j++) a[j] = h2f(b->d), bb[j] = h2f(b->m);
            break;
        }
        case SPECK_TYPE_Q8_0: {
            const speck_block_q8_0 *b = (const void *)blk;
            for (int j = 0; j < 32; j++)
                l[j] = (uint8_t)(b->qs[j] + 128), a[j] = h2f(b->d), bb[j] = 0;
            break;
        }
        case SPECK_TYPE_Q2_K: {
            const speck_block_q2_k *b = (const void *)blk;
            get_crumbs(b->qs, l);
            const float d = h2f(b->d), dmin = h2f(b->dmin);
            for (int e = 0; e < 256; e++)
                a[e] = d * (b->scales[e / 16] & 0xF), bb[e] = -(dmin * (b->scales[e / 16] >> 4));
            break;
        }
        case SPECK_TYPE_Q3_K: {
            const speck_block_q3_k *b = (const void *)blk;
            get_crumbs(b->qs, l);
            const float d = h2f(b->d);
            for (int e = 0; e < 256; e++) {
                const int h = e / 128, s = e % 128 / 32;
                l[e] |= (uint8_t)(((b->hmask[e % 32] >> (4 * h + s)) & 1) << 2);
                a[e] = d * (speck_q3k_scale(b->scales, e / 16) - 32), bb[e] = 0;
            }
            break;
        }
        case SPECK_TYPE_Q4_K:
        case SPECK_TYPE_Q5_K: {
            const bool five = t == SPECK_TYPE_Q5_K;
            const speck_block_q4_k *b4 = (const void *)blk;
            const speck_block_q5_k *b5 = (const void *)blk;
            const uint8_t *sc = five ? b5->scales : b4->scales;
            get_q45k(five ? b5->qs : b4->qs, five ? b5->qh : NULL, l);
            const float d = h2f(five ? b5->d : b4->d), dmin = h2f(five ? b5->dmin : b4->dmin);
            for (int j = 0; j < 8; j++) {
                uint8_t s, m;
                speck_k4_scale_min(sc, j, &s, &m);
                for (int k = 0; k < 32; k++) a[32 * j + k] = d * s, bb[32 * j + k] = -(dmin * m);
            }
            break;
        }
        case SPECK_TYPE_Q6_K: {
            const speck_block_q6_k *b = (const void *)blk;
            get_q6k(b, l);
            const float d = h2f(b->d);
            for (int e = 0; e < 256; e++) a[e] = d * b->scales[e / 16], bb[e] = 0;
            break;
        }
        case SPECK_TYPE_DGQ4: {
            const speck_block_dgq4 *b = (const void *)blk;
            get_q45k(b->qs, NULL, l);
            const float d = h2f(b->d);
            for (int e = 0; e < 256; e++) a[e] = d * (float)b->sc[e / 32], bb[e] = 0;
            break;
        }
        case SPECK_TYPE_IQ4_XS: {
            const speck_block_iq4_xs *b = (const void *)blk;
            for (int j = 0; j < 8; j++) {
                get_nib32(b->qs + 16 * j, l + 32 * j);
                const float dl = h2f(b->d) * (speck_iq4xs_scale(b, j) - 32);
                for (int k = 0; k < 32; k++) a[32 * j + k] = dl, bb[32 * j + k] = 0;
            }
            break;
        }
        default:
            break;
        }
    }
}

void speck_levels_set(speck_type t, void *y, int64_t n, const uint8_t *L) {
    const speck_type_traits *tr = speck_traits(t);
    const int64_t nb = n / tr->block;
    for (int64_t i = 0; i < nb; i++) {
        uint8_t *blk = (uint8_t *)y + i * tr->bytes;
        const uint8_t *l = L + i * tr->block;
        switch (t) {
        case SPECK_TYPE_Q4_0:
        case SPECK_TYPE_IQ4_NL:
            set_nib32(((speck_block_iq4_nl *)(void *)blk)->qs, l);
            break;
        case SPECK_TYPE_Q4_1:
            set_nib32(((speck_block_q4_1 *)(void *)blk)->qs, l);
            break;
        case SPECK_TYPE_Q5_0:
            set_nib32(((speck_block_q5_0 *)(void *)blk)->qs, l);
            set_qh32(((speck_block_q5_0 *)(void *)blk)->qh, l);
            break;
        case SPECK_TYPE_Q5_1:
            set_nib32(((speck_block_q5_1 *)(void *)blk)->qs, l);
            set_qh32(((speck_block_q5_1 *)(void *)blk)->qh, l);
            break;
        case SPECK_TYPE_Q8_0:
            for (int j = 0; j < 32; j++) ((speck_block_q8_0 *)(void *)blk)->qs[j] = (int8_t)(l[j] - 128);
            break;
        case SPECK_TYPE_Q2_K:
            set_crumbs(((speck_block_q2_k *)(void *)blk)->qs, l);
            break;
        case SPECK_TYPE_Q3_K: {
            speck_block_q3_k *b = (void *)blk;
            uint8_t lo[256];
            for (int e = 0; e < 256; e++) lo[e] = l[e] & 3;
            set_crumbs(b->qs, lo);
            memset(b->hmask, 0, 32);
            for (int e = 0; e < 256; e++) {
                const int h = e / 128, s = e % 128 / 32;
                b->hmask[e % 32] |= (uint8_t)(((l[e] >> 2) & 1) << (4 * h + s));
            }
            break;
        }
        case SPECK_TYPE_Q4_K:
            set_q45k(((speck_block_q4_k *)(void *)blk)->qs, NULL, l);
            break;
        case SPECK_TYPE_Q5_K:
            set_q45k(((speck_block_q5_k *)(void *)blk)->qs, ((speck_block_q5_k *)(void *)blk)->qh, l);
            break;
        case SPECK_TYPE_Q6_K:
            set_q6k((speck_block_q6_k *)(void *)blk, l);
            break;
        case SPECK_TYPE_DGQ4:
            set_q45k(((speck_block_dgq4 *)(void *)blk)->qs, NULL, l);
            break;
        case SPECK_TYPE_IQ4_XS:
            for (int j = 0; j < 8; j++)
                set_nib32(((speck_block_iq4_xs *)(void *)blk)->qs + 16 * j, l + 32 * j);
            break;
        default:
            break;
        }
    }
}
