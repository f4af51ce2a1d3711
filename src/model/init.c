// `speck init`: models with the exact shapes of real checkpoints and random weights. Decode and
// prefill speed do not depend on weight values, so these are the speed benchmarks' models; the
// `tiny` preset is the test suite's.
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/statvfs.h>

#include "formats/gguf_internal.h"
#include "formats/gguf_stream.h"
#include "tokenizer/tokenizer_internal.h"
#include "kernels/kernels.h"
#include "model/arch.h"
#include "model/model_internal.h"
#include "speck.h"

static const speck_preset g_presets[] = {
    // name, arch, vocab, ctx, embd, layers, heads, kv heads, ff, rope base, eps, tied, bias,
    // head size (0: embd / heads), window (0: the architecture's), experts, used, expert FFN,
    // shared expert FFN
    {"tiny", "llama", 512, 512, 64, 2, 4, 2, 192, 10000.0f, 1e-5f, false, false, 0, 0, 0, 0, 0, 0},
    {"tiny-qwen2", "qwen2", 512, 512, 64, 2, 4, 1, 192, 1000000.0f, 1e-6f, true, true, 0, 0, 0, 0,
     0, 0},
    {"tiny-mistral", "llama", 512, 512, 64, 2, 4, 2, 192, 10000.0f, 1e-5f, false, false, 0, 32, 0,
     0, 0, 0},
    {"tiny-qwen3", "qwen3", 512, 512, 64, 2, 4, 2, 192, 1000000.0f, 1e-6f, true, false, 32, 0, 0, 0,
     0, 0},
    {"tiny-gemma2", "gemma2", 512, 512, 64, 2, 4, 2, 192, 10000.0f, 1e-6f, true, false, 32, 32, 0,
     0, 0, 0},
    {"tiny-gemma3", "gemma3", 512, 512, 64, 6, 4, 1, 192, 1000000.0f, 1e-6f, true, false, 32, 32, 0,
     0, 0, 0},
    {"tiny-phi3", "phi3", 512, 512, 64, 2, 4, 4, 192, 10000.0f, 1e-5f, false, false, 0, 0, 0, 0, 0,
     0},
    {"smollm2-135m", "llama", 49152, 8192, 576, 30, 9, 3, 1536, 100000.0f, 1e-5f, true, false, 0, 0,
     0, 0, 0, 0},
    {"qwen2.5-0.5b", "qwen2", 151936, 32768, 896, 24, 14, 2, 4864, 1000000.0f, 1e-6f, true, true, 0,
     0, 0, 0, 0, 0},
    {"qwen3-0.6b", "qwen3", 151936, 40960, 1024, 28, 16, 8, 3072, 1000000.0f, 1e-6f, true, false,
     128, 0, 0, 0, 0, 0},
    {"gemma3-1b", "gemma3", 262144, 32768, 1152, 26, 4, 1, 6912, 1000000.0f, 1e-6f, true, false,
     256, 512, 0, 0, 0, 0},
    {"tinyllama-1.1b", "llama", 32000, 2048, 2048, 22, 32, 4, 5632, 10000.0f, 1e-5f, false, false,
     0, 0, 0, 0, 0, 0},
    {"gemma2-2b", "gemma2", 256000, 8192, 2304, 26, 8, 4, 9216, 10000.0f, 1e-6f, true, false, 256,
     4096, 0, 0, 0, 0},
    // Phi-3-mini-4k: every layer windowed (2047), as its config says.
    {"phi3-mini", "phi3", 32064, 4096, 3072, 32, 32, 32, 8192, 10000.0f, 1e-5f, false, false, 0,
     2047, 0, 0, 0, 0},
    // Mixtures of experts: ..., experts, used, expert FFN, shared expert FFN. Tiny ones for the
    // tests; OLMoE-1B-7B (64 experts of 1024, top 8, q/k norms over whole rows) and
    // Qwen3-30B-A3B (128 experts of 768, top 8; ~17 GB in Q4_0).
    // Mixtral: llama.cpp's llama architecture sizes experts by feed_forward_length.
    {"tiny-mixtral", "llama", 512, 512, 64, 2, 4, 2, 64, 10000.0f, 1e-5f, false, false, 0, 0, 4, 2,
     64, 0},
    {"tiny-qwen2moe", "qwen2moe", 512, 512, 64, 2, 4, 2, 192, 1000000.0f, 1e-6f, false, true, 0, 0,
     8, 2, 64, 96},
    {"tiny-qwen3moe", "qwen3moe", 512, 512, 64, 2, 4, 2, 192, 1000000.0f, 1e-6f, false, false, 32,
     0, 8, 2, 64, 0},
    {"tiny-olmoe", "olmoe", 512, 512, 64, 2, 4, 4, 64, 10000.0f, 1e-5f, false, false, 0, 0, 8, 2,
     64, 0},
    {"olmoe-1b-7b", "olmoe", 50304, 4096, 2048, 16, 16, 16, 1024, 10000.0f, 1e-5f, false, false, 0,
     0, 64, 8, 1024, 0},
    {"qwen3-30b-a3b", "qwen3moe", 151936, 40960, 2048, 48, 32, 4, 6144, 1000000.0f, 1e-6f, false,
     false, 128, 0, 128, 8, 768, 0},
    {NULL, NULL, 0, 0, 0, 0, 0, 0, 0, 0, 0, false, false, 0, 0, 0, 0, 0, 0},
};

const speck_preset *speck_presets(void) {
    return g_presets;
}

const speck_preset *speck_preset_find(const char *name) {
    for (const speck_preset *p = g_presets; p->name; p++)
        if (!strcmp(p->name, name)) return p;
    return NULL;
}

/* ---- byte-level BPE vocabulary of any size ---- */

typedef struct {
    char **tokens;
    char **merges;
    int32_t *types;
    int n_tokens, n_merges;
} vocab_build;

static void vocab_free(vocab_build *v, int n) {
    for (int i = 0; v->tokens && i < n; i++) free(v->tokens[i]);
    for (int i = 0; v->merges && i < v->n_merges; i++) free(v->merges[i]);
    free(v->tokens);
    free(v->merges);
    free(v->types);
}

// Tokens: the 256 byte tokens, then merged tokens built from an alphabet of 63 symbols (letters,
// digits, 'Ġ' = space) — pairs, then triples — each with the merge that creates it, then the
// control tokens `specials` (NULL-terminated), "<|endoftext|>" last. Tokenizers (speck's,
// llama.cpp's) load it as GPT-2 BPE.
static int build_vocab(int n_vocab, const char *const *specials, vocab_build *v) {
    memset(v, 0, sizeof *v);
    int n_special = 0;
    while (specials[n_special]) n_special++;
    if (n_vocab < 256 + n_special + 2)
        return speck_set_error(SPECK_ERR_ARG, "vocabulary too small");
    v->tokens = calloc((size_t)n_vocab, sizeof(char *));
    v->merges = calloc((size_t)n_vocab, sizeof(char *));
    v->types = calloc((size_t)n_vocab, sizeof(int32_t));
    if (!v->tokens || !v->merges || !v->types) return SPECK_ERR_NOMEM;
    char alpha[63][3];
    int na = 0;
    {
        char s[3];
        int len = tok_byte_to_unicode(' ', s); // GPT-2's printable stand-in for a space
        memcpy(alpha[na], s, (size_t)len);
        alpha[na++][len] = 0;
        for (int c = 'a'; c <= 'z'; c++) alpha[na][0] = (char)c, alpha[na++][1] = 0;
        for (int c = 'A'; c <= 'Z'; c++) alpha[na][0] = (char)c, alpha[na++][1] = 0;
        for (int c = '0'; c <= '9'; c++) alpha[na][0] = (char)c, alpha[na++][1] = 0;
    }
    int n = 0;
    for (int b = 0; b < 256; b++) {
        char s[4] = {0};
        tok_byte_to_unicode((uint8_t)b, s);
        v->tokens[n] = strdup(s);
        v->types[n++] = 1; // NORMAL
    }
    int target = n_vocab - 1 - n_special;
    for (int i = 0; i < na && n < target; i++)
        for (int j = 0; j < na && n < target; j++) {
            char t[16], m[16];
            snprintf(t, sizeof t, "%s%s", alpha[i], alpha[j]);
            snprintf(m, sizeof m, "%s %s", alpha[i], alpha[j]);
            v->tokens[n] = strdup(t);
            v->types[n++] = 1;
            v->merges[v->n_merges++] = strdup(m);
        }
    for (int i = 0; i < na && n < target; i++)
        for (int j = 0; j < na && n < target; j++)
            for (int k = 0; k < na && n < target; k++) {
                char t[16], m[16];
                snprintf(t, sizeof t, "%s%s%s", alpha[i], alpha[j], alpha[k]);
                snprintf(m, sizeof m, "%s%s %s", alpha[i], alpha[j], alpha[k]);
                v->tokens[n] = strdup(t);
                v->types[n++] = 1;
                v->merges[v->n_merges++] = strdup(m);
            }
    // Past 63^3 the vocabulary is padded with unreachable user-defined tokens.
    while (n < target) {
        char t[32];
        snprintf(t, sizeof t, "<|pad%d|>", n);
        v->tokens[n] = strdup(t);
        v->types[n++] = 4;
    }
    for (int i = 0; i < n_special; i++) {
        v->tokens[n] = strdup(specials[i]);
        v->types[n++] = 3; // CONTROL
    }
    v->tokens[n] = strdup("<|endoftext|>");
    v->types[n++] = 3; // CONTROL
    v->n_tokens = n;
    for (int i = 0; i < n; i++)
        if (!v->tokens[i]) return SPECK_ERR_NOMEM;
    for (int i = 0; i < v->n_merges; i++)
        if (!v->merges[i]) return SPECK_ERR_NOMEM;
    return 0;
}

/* ---- weights ---- */

static uint64_t mix(uint64_t x) {
    x += 0x9e3779b97f4a7c15ULL;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
    return x ^ (x >> 31);
}

// One tensor of the file: what init generates for it.
typedef enum { GEN_RANDOM, GEN_ONES, GEN_SMALL } gen_kind;
typedef struct {
    char name[96];
    speck_type type;
    int64_t rows, cols, n_mat; // n_mat (rows, cols) matrices stacked (experts); cols 0: a vector
    gen_kind kind;
    uint64_t id; // RNG stream of the tensor
} gen_tensor;

// A (rows, cols) matrix of type t into out. Values are uniform with standard deviation `std`
// around `mean`: the distribution does not matter for speed, and uniform draws keep init fast for
// 1B parameters. Every row has its own RNG stream keyed by (seed, tensor, row), so the file is
// identical for any thread count.
static void random_rows(uint8_t *out, speck_type t, int64_t rows, int64_t cols, uint64_t seed,
                        uint64_t tensor_id, int64_t row0, float mean, float std) {
    size_t rs = speck_type_row_size(t, cols);
    float half = std * sqrtf(3.0f);
#pragma omp parallel
    {
        float *row = malloc((size_t)cols * sizeof(float));
#pragma omp for schedule(static)
        for (int64_t r = 0; r < rows; r++) {
            uint64_t s = mix(seed ^ mix(tensor_id * 0x100000001b3ULL + (uint64_t)(row0 + r)));
            for (int64_t c = 0; c < cols; c++) {
                s = mix(s);
                double u = (double)(s >> 11) * 0x1.0p-53;
                row[c] = mean + (float)((2 * u - 1) * half);
            }
            if (row) speck_quantize_row(t, row, out + rs * (size_t)r, cols);
        }
        free(row);
    }
}

// Every tensor of the preset's model, in file order, into *out (n of them).
static int plan_tensors(const speck_preset *p, const speck_arch *a, const speck_hparams *hp,
                        speck_type type, gen_tensor **out, int *n) {
    const int per_layer = a->n_layer_tensors;
    gen_tensor *g = calloc((size_t)(3 + per_layer * p->n_layer), sizeof *g);
    if (!g) return SPECK_ERR_NOMEM;
    int k = 0;
    uint64_t tid = 0;
    const int64_t E = p->n_embd;
#define ADD(nm, t, r, c, nmat, kd)                                                                 \
    do {                                                                                           \
        snprintf(g[k].name, sizeof g[k].name, "%s", nm);                                           \
        g[k].type = (t), g[k].rows = (r), g[k].cols = (c), g[k].n_mat = (nmat), g[k].kind = (kd);  \
        g[k++].id = ++tid;                                                                         \
    } while (0)
    // Rows the type's block does not divide take llama-quantize's fallback type.
    ADD("token_embd.weight", speck_type_for_row(type, E), p->n_vocab, E, 1, GEN_RANDOM);
    ADD("output_norm.weight", SPECK_TYPE_F32, E, 0, 1, GEN_ONES);
    if (!p->tied_output)
        ADD("output.weight", speck_type_for_row(type, E), p->n_vocab, E, 1, GEN_RANDOM);
    // Every layer tensor the architecture's description lists for this model: norms 1 (Gemma's
    // GGUF norms are 1 + w: w = 0), biases when the preset has them, matrices random, the router
    // in f32 as llama.cpp's quantizers leave it.
    for (int l = 0; l < p->n_layer; l++)
        for (int i = 0; i < per_layer; i++) {
            const speck_tensor_desc *d = &a->layer[i];
            if (!speck_tensor_in_layer(hp, d)) continue;
            const int64_t rows = speck_dim_size(d->rows, hp), cols = speck_dim_size(d->cols, hp);
            const bool bias = d->slot == SLOT_BQ || d->slot == SLOT_BK || d->slot == SLOT_BV;
            if (bias && !p->qkv_bias) continue;
            char nm[96];
            snprintf(nm, sizeof nm, "blk.%d.%s", l, d->gguf);
            if (bias || d->slot == SLOT_SH_GATE)
                ADD(nm, SPECK_TYPE_F32, rows, 0, 1, GEN_SMALL);
            else if (!cols)
                ADD(nm, SPECK_TYPE_F32, rows, 0, 1, GEN_ONES);
            else if (d->slot == SLOT_ROUTER)
                ADD(nm, SPECK_TYPE_F32, rows, cols, 1, GEN_RANDOM);
            else
                ADD(nm, speck_type_for_row(type, cols), rows, cols,
                    d->flags & TD_EXPERTS ? hp->n_expert : 1, GEN_RANDOM);
        }
#undef ADD
    *out = g;
    *n = k;
    return 0;
}

// Whether the file system of path has room for `need` bytes; an error saying how much is free
// otherwise (checked before the first byte is written: qwen3-30b-a3b in Q4_0 is ~17 GB).
static int check_space(const char *path, uint64_t need) {
    char dir[4096];
    snprintf(dir, sizeof dir, "%s", path);
    char *slash = strrchr(dir, '/');
    if (!slash)
        snprintf(dir, sizeof dir, ".");
    else if (slash == dir)
        dir[1] = 0;
    else
        *slash = 0;
    struct statvfs st;
    // Cannot tell (or a pseudo file system such as /proc, which reports no blocks at all): the
    // write will say what is wrong.
    if (statvfs(dir, &st) || st.f_blocks == 0) return 0;
    const uint64_t avail = (uint64_t)st.f_bavail * st.f_frsize;
    if (avail < need + ((uint64_t)64 << 20))
        return speck_set_error(SPECK_ERR_IO,
                               "init: %s needs %.2f GB but only %.2f GB are free on its file "
                               "system",
                               path, need / 1e9, avail / 1e9);
    return 0;
}

int speck_init_model(const speck_preset *p, speck_type type, uint64_t seed, const char *path) {
    if (!speck_type_name(type))
        return speck_set_error(SPECK_ERR_ARG, "init: unsupported weight type %d", (int)type);
    speck_gguf_writer *w = speck_gguf_writer_new();
    if (!w) return SPECK_ERR_NOMEM;
    vocab_build v = {0};
    gen_tensor *ts = NULL;
    int nt = 0;
    const speck_arch *a = speck_arch_find(p->arch);
    // llama.cpp sets the attributes of Phi-3's special tokens in any model whose name says phi3,
    // and fails when they are missing.
    static const char *const none[] = {NULL}, *const phi3[] = {"<unk>", "<s>", "</s>", NULL};
    int err = a ? build_vocab(p->n_vocab, strcmp(p->arch, "phi3") ? none : phi3, &v)
                : speck_set_error(SPECK_ERR_ARG, "init: preset '%s': unknown architecture %s",
                                  p->name, p->arch);
    speck_hparams hp = {.n_vocab = p->n_vocab,
                        .n_ctx_train = p->n_ctx_train,
                        .n_embd = p->n_embd,
                        .n_layer = p->n_layer,
                        .n_head = p->n_head,
                        .n_head_kv = p->n_head_kv,
                        .head_dim = p->head_dim ? p->head_dim : p->n_embd / p->n_head,
                        .n_ff = p->n_ff,
                        .norm_eps = p->norm_eps,
                        .rope_freq_base = p->rope_freq_base,
                        .rope_scale_factor = 1.0f,
                        .tied_output = p->tied_output,
                        .qkv_bias = p->qkv_bias};
    if (!err) {
        snprintf(hp.arch, sizeof hp.arch, "%s", p->arch);
        snprintf(hp.name, sizeof hp.name, "speck-init %s (random weights, seed %llu)", p->name,
                 (unsigned long long)seed);
        speck_arch_defaults(a, &hp);
        if (p->n_swa) hp.n_swa = p->n_swa;
        hp.n_expert = p->n_expert;
        hp.n_expert_used = p->n_expert_used;
        hp.n_ff_exp = p->n_ff_exp;
        hp.n_ff_shexp = p->n_ff_shexp;
        err = speck_hparams_write(w, &hp);
    }
    if (!err) {
        err |= speck_gguf_set_u32(w, "general.file_type", (uint32_t)speck_gguf_file_type(type));
        err |= speck_gguf_set_str(w, "tokenizer.ggml.model", "gpt2");
        err |= speck_gguf_set_str(w, "tokenizer.ggml.pre", "gpt-2");
        err |= speck_gguf_set_arr_str(w, "tokenizer.ggml.tokens", (const char *const *)v.tokens,
                                      NULL, v.n_tokens);
        err |= speck_gguf_set_arr(w, "tokenizer.ggml.token_type", SPECK_GGUF_INT32, v.types,
                                  v.n_tokens);
        err |= speck_gguf_set_arr_str(w, "tokenizer.ggml.merges", (const char *const *)v.merges,
                                      NULL, v.n_merges);
        err |= speck_gguf_set_u32(w, "tokenizer.ggml.bos_token_id", (uint32_t)(v.n_tokens - 1));
        err |= speck_gguf_set_u32(w, "tokenizer.ggml.eos_token_id", (uint32_t)(v.n_tokens - 1));
        err |= speck_gguf_set_bool(w, "tokenizer.ggml.add_bos_token", false);
        if (err) err = SPECK_ERR_NOMEM;
    }
    if (!err) err = plan_tensors(p, a, &hp, type, &ts, &nt);
    // The header first (shapes only), then each tensor generated and appended in turn: memory
    // stays at one tensor (one expert), whatever the model's size.
    uint64_t total = 0;
    for (int i = 0; !err && i < nt; i++) {
        const gen_tensor *t = &ts[i];
        int64_t ne[3] = {t->cols ? t->cols : t->rows, t->rows, t->n_mat};
        const int nd = !t->cols ? 1 : t->n_mat > 1 ? 3 : 2;
        err = speck_gguf_add_tensor(w, t->name, t->type, nd, ne, NULL);
        total += speck_gguf_writer_tensor_bytes(w, i) + 64;
    }
    if (!err) err = check_space(path, total);
    speck_gguf_stream *st = err ? NULL : speck_gguf_stream_open(w, path);
    if (!err && !st) err = SPECK_ERR_IO;
    uint8_t *buf = NULL;
    size_t cap = 0;
    for (int i = 0; !err && i < nt; i++) {
        const gen_tensor *t = &ts[i];
        const int64_t cols = t->cols ? t->cols : t->rows, rows = t->cols ? t->rows : 1;
        const size_t bytes = speck_type_row_size(t->type, cols) * (size_t)rows;
        if (bytes > cap) {
            free(buf);
            if (!(buf = malloc(cap = bytes))) {
                err = speck_set_error(SPECK_ERR_NOMEM, "init: out of memory");
                break;
            }
        }
        for (int64_t e = 0; !err && e < t->n_mat; e++) {
            if (t->kind == GEN_ONES) {
                for (int64_t j = 0; j < cols; j++) ((float *)buf)[j] = 1.0f;
            } else {
                random_rows(buf, t->type, rows, cols, seed, t->id, e * rows, 0.0f, 0.02f);
            }
            err = speck_gguf_stream_write(st, buf, bytes);
        }
    }
    free(buf);
    if (st) {
        if (err)
            speck_gguf_stream_abort(st);
        else
            err = speck_gguf_stream_close(st);
    }
    if (err == SPECK_ERR_NOMEM) speck_set_error(err, "init: out of memory");
    speck_gguf_writer_free(w);
    free(ts);
    vocab_free(&v, p->n_vocab);
    return err;
}
