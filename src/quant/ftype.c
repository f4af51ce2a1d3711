// llama-quantize's file types ("Q4_K_M", ...): names, codes and the per-tensor type mix.
//
// The mix rules are llama.cpp's (src/llama-quant.cpp, llama_tensor_get_type_impl) for the
// Llama-family tensors speck has, restated: which tensors get more bits is a fact of the file
// type a llama.cpp user asks for, and matching it keeps speck's files comparable to theirs.
// docs/convert.md has the table.
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include "speck.h"

// LLAMA_FTYPE_MOSTLY_* codes (llama.h), the values general.file_type holds.
enum {
    FT_F32 = 0,
    FT_F16 = 1,
    FT_Q4_0 = 2,
    FT_Q4_1 = 3,
    FT_Q8_0 = 7,
    FT_Q5_0 = 8,
    FT_Q5_1 = 9,
    FT_Q2_K = 10,
    FT_Q3_K_S = 11,
    FT_Q3_K_M = 12,
    FT_Q3_K_L = 13,
    FT_Q4_K_S = 14,
    FT_Q4_K_M = 15,
    FT_Q5_K_S = 16,
    FT_Q5_K_M = 17,
    FT_Q6_K = 18,
    FT_IQ4_NL = 25,
    FT_IQ4_XS = 30,
    FT_BF16 = 32,
    // speck's own file type (no LLAMA_FTYPE_MOSTLY_* near it; llama.cpp cannot load its tensors):
    // DGQ4 matrices, the head in Q6_K as in the K-quant mixes.
    FT_DGQ4 = 1024,
};

typedef struct {
    const char *name;
    int ftype;
    speck_type base;
} ftype_entry;

// Canonical names first (speck_ftype_name returns the first match of a code); the aliases
// llama-quantize accepts ("Q4_K" is Q4_K_M) after them.
static const ftype_entry g_ftypes[] = {
    {"F32", FT_F32, SPECK_TYPE_F32},          {"F16", FT_F16, SPECK_TYPE_F16},
    {"BF16", FT_BF16, SPECK_TYPE_BF16},       {"Q8_0", FT_Q8_0, SPECK_TYPE_Q8_0},
    {"Q4_0", FT_Q4_0, SPECK_TYPE_Q4_0},       {"Q4_1", FT_Q4_1, SPECK_TYPE_Q4_1},
    {"Q5_0", FT_Q5_0, SPECK_TYPE_Q5_0},       {"Q5_1", FT_Q5_1, SPECK_TYPE_Q5_1},
    {"Q2_K", FT_Q2_K, SPECK_TYPE_Q2_K},       {"Q3_K_S", FT_Q3_K_S, SPECK_TYPE_Q3_K},
    {"Q3_K_M", FT_Q3_K_M, SPECK_TYPE_Q3_K},   {"Q3_K_L", FT_Q3_K_L, SPECK_TYPE_Q3_K},
    {"Q4_K_S", FT_Q4_K_S, SPECK_TYPE_Q4_K},   {"Q4_K_M", FT_Q4_K_M, SPECK_TYPE_Q4_K},
    {"Q5_K_S", FT_Q5_K_S, SPECK_TYPE_Q5_K},   {"Q5_K_M", FT_Q5_K_M, SPECK_TYPE_Q5_K},
    {"Q6_K", FT_Q6_K, SPECK_TYPE_Q6_K},       {"IQ4_NL", FT_IQ4_NL, SPECK_TYPE_IQ4_NL},
    {"IQ4_XS", FT_IQ4_XS, SPECK_TYPE_IQ4_XS}, {"Q3_K", FT_Q3_K_M, SPECK_TYPE_Q3_K},
    {"Q4_K", FT_Q4_K_M, SPECK_TYPE_Q4_K},     {"Q5_K", FT_Q5_K_M, SPECK_TYPE_Q5_K},
    {"DGQ4", FT_DGQ4, SPECK_TYPE_DGQ4},
};
#define N_FTYPES (int)(sizeof g_ftypes / sizeof g_ftypes[0])

int speck_ftype_from_name(const char *name) {
    for (int i = 0; i < N_FTYPES; i++)
        if (!strcasecmp(name, g_ftypes[i].name)) return g_ftypes[i].ftype;
    return -1;
}

const char *speck_ftype_name(int ftype) {
    for (int i = 0; i < N_FTYPES; i++)
        if (g_ftypes[i].ftype == ftype) return g_ftypes[i].name;
    return NULL;
}

int speck_ftype_base(int ftype) {
    for (int i = 0; i < N_FTYPES; i++)
        if (g_ftypes[i].ftype == ftype) return (int)g_ftypes[i].base;
    return -1;
}

const char *speck_ftype_list(void) {
    return "Q2_K, Q3_K_S, Q3_K_M (Q3_K), Q3_K_L, Q4_K_S, Q4_K_M (Q4_K), Q5_K_S, Q5_K_M (Q5_K), "
           "Q6_K, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, IQ4_NL, IQ4_XS, F16, BF16, F32, and speck's DGQ4";
}

bool speck_ftype_quantizes(const char *name, int n_dims) {
    const size_t n = strlen(name);
    // llama-quantize converts matrices named "*weight" except norms; vectors keep their type.
    return n_dims >= 2 && n >= 6 && !strcmp(name + n - 6, "weight") &&
           !strstr(name, "_norm.weight");
}

// llama.cpp's heuristic for the layers that get more bits in the _M mixes: the first and last
// eighth and every third layer between.
static bool use_more_bits(int i, int n) {
    return i < n / 8 || i >= 7 * n / 8 || (i - n / 8) % 3 == 2;
}

speck_type speck_ftype_tensor_type(int ftype, const speck_mix_info *mi, const char *name,
                                   int64_t ne0) {
    const speck_type base = (speck_type)speck_ftype_base(ftype);
    // Float and Q8_0 files keep every matrix in the one type, head and embeddings included.
    if (speck_type_block_size(base) == 1) return base;
    int layer = -1;
    if (sscanf(name, "blk.%d.", &layer) != 1) layer = -1;
    const int n = mi->n_layer;
    const int gqa = mi->n_head_kv > 0 ? mi->n_head / mi->n_head_kv : 1;
    const bool is70b = !strcmp(mi->arch, "llama") && n == 80 && mi->n_head != mi->n_head_kv;
    speck_type t = base;
    const bool output = !strcmp(name, "output.weight");
    const bool embd = !strcmp(name, "token_embd.weight");
    if (output || (embd && !mi->has_output)) {
        // The head (or the embedding that doubles as it) in Q6_K, or Q8_0 when the row does not
        // fit the base type's block.
        if (ne0 % speck_type_block_size(base)) return SPECK_TYPE_Q8_0;
        return base == SPECK_TYPE_Q8_0 ? base : SPECK_TYPE_Q6_K;
    }
    if (embd) return base;
    if (strstr(name, "attn_v.weight")) {
        const int i = layer; // llama.cpp counts attn_v tensors in layer order: the layer index
        if (ftype == FT_Q2_K)
            t = gqa >= 4 ? SPECK_TYPE_Q4_K : SPECK_TYPE_Q3_K;
        else if (ftype == FT_Q3_K_M)
            t = i < 2 ? SPECK_TYPE_Q5_K : SPECK_TYPE_Q4_K;
        else if (ftype == FT_Q3_K_L)
            t = SPECK_TYPE_Q5_K;
        else if ((ftype == FT_IQ4_NL || ftype == FT_IQ4_XS) && gqa >= 4)
            t = SPECK_TYPE_Q5_K;
        else if ((ftype == FT_Q4_K_M || ftype == FT_Q5_K_M) && use_more_bits(i, n))
            t = SPECK_TYPE_Q6_K;
        else if (ftype == FT_Q4_K_S && i < 4)
            t = SPECK_TYPE_Q5_K;
        // 70B: 8 heads share each attn_v, so it is 8x smaller than attn_q and worth more bits.
        if (is70b && (t == SPECK_TYPE_Q3_K || t == SPECK_TYPE_Q4_K)) t = SPECK_TYPE_Q5_K;
    } else if (strstr(name, "ffn_down")) {
        const int i = layer;
        if (ftype == FT_Q2_K)
            t = SPECK_TYPE_Q3_K;
        else if (ftype == FT_Q3_K_M)
            t = i < n / 16 ? SPECK_TYPE_Q5_K : SPECK_TYPE_Q4_K;
        else if (ftype == FT_Q3_K_L)
            t = SPECK_TYPE_Q5_K;
        else if (ftype == FT_Q4_K_M) {
            if (use_more_bits(i, n)) t = SPECK_TYPE_Q6_K;
        } else if (i < n / 8 && (ftype == FT_IQ4_NL || ftype == FT_IQ4_XS) && !mi->has_imatrix)
            t = SPECK_TYPE_Q5_K;
        else if (ftype == FT_Q5_K_M && use_more_bits(i, n))
            t = SPECK_TYPE_Q6_K;
        else if (ftype == FT_Q4_K_S && i < n / 8)
            t = SPECK_TYPE_Q5_K;
        else if ((ftype == FT_Q4_0 || ftype == FT_Q5_0) && mi->has_imatrix && i < n / 8)
            // with an imatrix, the first ffn_down layers take the variant with a min
            t = ftype == FT_Q4_0 ? SPECK_TYPE_Q4_1 : SPECK_TYPE_Q5_1;
    } else if (strstr(name, "attn_output.weight")) {
        if (ftype == FT_Q2_K)
            t = SPECK_TYPE_Q3_K;
        else if (ftype == FT_Q3_K_M)
            t = SPECK_TYPE_Q4_K;
        else if (ftype == FT_Q3_K_L)
            t = SPECK_TYPE_Q5_K;
    } else if (strstr(name, "attn_qkv.weight")) {
        if (ftype == FT_Q3_K_M || ftype == FT_Q3_K_L)
            t = SPECK_TYPE_Q4_K;
        else if (ftype == FT_Q4_K_M)
            t = SPECK_TYPE_Q5_K;
        else if (ftype == FT_Q5_K_M)
            t = SPECK_TYPE_Q6_K;
    }
    return t;
}
