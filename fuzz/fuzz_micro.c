// Micro models, vocabularies, tokenizer.json files and Hugging Face checkpoints, small enough
// for a fuzzer to mutate: the seeds, the fixed parts of multi-file targets, and the models of
// tests/test_nonfinite.c.
#define _GNU_SOURCE
#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "formats/gguf_internal.h"
#include "fuzz_common.h"
#include "kernels/kernels.h"
#include "tokenizer/tokenizer_internal.h"

/* ---- micro vocabularies ---- */

#define META "\xE2\x96\x81"

// Merges (left, right) of both micro vocabularies, in rank order; each result becomes a token.
// SentencePiece spelling (▁ for a space); the byte-level one swaps in Ġ / Ċ.
static const char *const MERGES[][2] = {
    {META, "t"},
    {"h", "e"},
    {META "t", "he"},
    {META, "a"},
    {"i", "n"},
    {"e", "r"},
    {META, "s"},
    {"o", "n"},
    {META, "w"},
    {META, META},
    {META META, META META},
    {"l", "l"},
    {"e", "ll"},
    {"ell", "o"},
    {META, "h"},
    {META "h", "ello"},
    {"o", "r"},
    {META "w", "or"},
    {"l", "d"},
    {META "wor", "ld"},
    {"n", "g"},
    {"i", "ng"},
    {"1", "2"},
    {"12", "3"},
    {META, "1"},
    {"\n", "\n"},
    {"d", "e"},
    {META, "de"},
    {"f", " "},
    {"\xC3\xA9", "t"},
    {"\xE4\xB8\xAD", "\xE6\x96\x87"},
    {META, "\xE4\xB8\xAD\xE6\x96\x87"},
    {"'", "s"},
};
#define N_MERGES (int)(sizeof MERGES / sizeof MERGES[0])

// Single characters every merge is built from (SentencePiece spelling).
static const char *const CHARS[] = {
    META,
    "a",
    "b",
    "c",
    "d",
    "e",
    "f",
    "g",
    "h",
    "i",
    "j",
    "k",
    "l",
    "m",
    "n",
    "o",
    "p",
    "q",
    "r",
    "s",
    "t",
    "u",
    "v",
    "w",
    "x",
    "y",
    "z",
    "A",
    "B",
    "C",
    "T",
    "H",
    "0",
    "1",
    "2",
    "3",
    ".",
    ",",
    "!",
    "?",
    "'",
    "\"",
    "(",
    ")",
    "-",
    ":",
    "\n",
    " ",
    "\xC3\xA9",
    "\xE4\xB8\xAD",
    "\xE6\x96\x87",
    "\xF0\x9F\x98\x80",
};
#define N_CHARS (int)(sizeof CHARS / sizeof CHARS[0])

typedef struct {
    char **text;
    int32_t *type;
    float *score;
    int n, cap;
    char **merges; // "left right", byte-level or SentencePiece spelling
    int n_merges;
} vlist;

static int vl_find(const vlist *l, const char *s) {
    for (int i = 0; i < l->n; i++)
        if (!strcmp(l->text[i], s)) return i;
    return -1;
}

static void vl_add(vlist *l, const char *s, int32_t type, float score) {
    if (vl_find(l, s) >= 0) return;
    if (l->n == l->cap) {
        l->cap = l->cap ? 2 * l->cap : 512;
        l->text = realloc(l->text, (size_t)l->cap * sizeof *l->text);
        l->type = realloc(l->type, (size_t)l->cap * sizeof *l->type);
        l->score = realloc(l->score, (size_t)l->cap * sizeof *l->score);
        if (!l->text || !l->type || !l->score) abort();
    }
    l->text[l->n] = strdup(s);
    l->type[l->n] = type;
    l->score[l->n++] = score;
}

static void vl_free(vlist *l) {
    for (int i = 0; i < l->n; i++) free(l->text[i]);
    for (int i = 0; i < l->n_merges; i++) free(l->merges[i]);
    free(l->text);
    free(l->type);
    free(l->score);
    free(l->merges);
}

// Byte-level spelling of SentencePiece-spelled text: ▁ is a space, then every byte mapped.
static char *byte_level(const char *s) {
    char *o = malloc(strlen(s) * 2 + 1);
    if (!o) abort();
    size_t k = 0;
    for (size_t i = 0; s[i];) {
        uint8_t b = (uint8_t)s[i];
        if (!strncmp(s + i, META, 3)) {
            b = ' ';
            i += 3;
        } else {
            i++;
        }
        k += (size_t)tok_byte_to_unicode(b, o + k);
    }
    o[k] = 0;
    return o;
}

static void add_merge(vlist *l, const char *a, const char *b) {
    l->merges = realloc(l->merges, (size_t)(l->n_merges + 1) * sizeof *l->merges);
    if (!l->merges) abort();
    size_t n = strlen(a) + strlen(b) + 2;
    char *m = malloc(n);
    if (!m) abort();
    snprintf(m, n, "%s %s", a, b);
    l->merges[l->n_merges++] = m;
}

// kind FUZZ_VOCAB_SPM: <unk> <s> </s>, 256 <0xXX> byte tokens, characters, merge results
// (scored by rank), specials. FUZZ_VOCAB_BPE: the 256 byte tokens, characters and merge
// results in byte-level spelling, merges, specials.
static void build_vlist(vlist *l, int kind) {
    memset(l, 0, sizeof *l);
    if (kind == FUZZ_VOCAB_SPM) {
        vl_add(l, "<unk>", TOK_UNKNOWN, 0);
        vl_add(l, "<s>", TOK_CONTROL, 0);
        vl_add(l, "</s>", TOK_CONTROL, 0);
        for (int b = 0; b < 256; b++) {
            char t[8];
            snprintf(t, sizeof t, "<0x%02X>", b);
            vl_add(l, t, TOK_BYTE, 0);
        }
        for (int i = 0; i < N_CHARS; i++)
            if (strcmp(CHARS[i], " ")) vl_add(l, CHARS[i], TOK_NORMAL, -1000.0f - (float)i);
        for (int k = 0; k < N_MERGES; k++) {
            if (!strcmp(MERGES[k][1], " ")) continue; // no spaces in SentencePiece pieces
            char m[64];
            snprintf(m, sizeof m, "%s%s", MERGES[k][0], MERGES[k][1]);
            vl_add(l, MERGES[k][0], TOK_NORMAL, -2000.0f);
            vl_add(l, MERGES[k][1], TOK_NORMAL, -2000.0f);
            vl_add(l, m, TOK_NORMAL, -(float)k);
            add_merge(l, MERGES[k][0], MERGES[k][1]);
        }
        vl_add(l, "<|im_start|>", TOK_CONTROL, 0);
        vl_add(l, "<|im_end|>", TOK_CONTROL, 0);
        vl_add(l, "<start_of_turn>", TOK_CONTROL, 0);
        vl_add(l, "<end_of_turn>", TOK_CONTROL, 0);
        vl_add(l, "<tool>", TOK_USER_DEFINED, 0);
        vl_add(l, META META META, TOK_USER_DEFINED, 0);
        return;
    }
    for (int b = 0; b < 256; b++) {
        char t[4] = {0};
        tok_byte_to_unicode((uint8_t)b, t);
        vl_add(l, t, TOK_NORMAL, 0);
    }
    for (int k = 0; k < N_MERGES; k++) {
        char *a = byte_level(MERGES[k][0]), *b = byte_level(MERGES[k][1]);
        size_t n = strlen(a) + strlen(b) + 1;
        char *m = malloc(n);
        if (!m) abort();
        snprintf(m, n, "%s%s", a, b);
        vl_add(l, m, TOK_NORMAL, 0);
        add_merge(l, a, b);
        free(a), free(b), free(m);
    }
    vl_add(l, "<|endoftext|>", TOK_CONTROL, 0);
    vl_add(l, "<|im_start|>", TOK_CONTROL, 0);
    vl_add(l, "<|im_end|>", TOK_CONTROL, 0);
    vl_add(l, "<|eot_id|>", TOK_CONTROL, 0);
    vl_add(l, "<tool_call>", TOK_USER_DEFINED, 0);
}

static int add_vocab_keys(speck_gguf_writer *w, int kind, const char *pre, bool add_prefix,
                          int *n_tokens) {
    vlist l;
    build_vlist(&l, kind);
    int rc = 0;
    rc |= speck_gguf_set_str(w, "tokenizer.ggml.model", kind == FUZZ_VOCAB_SPM ? "llama" : "gpt2");
    if (pre) rc |= speck_gguf_set_str(w, "tokenizer.ggml.pre", pre);
    rc |=
        speck_gguf_set_arr_str(w, "tokenizer.ggml.tokens", (const char *const *)l.text, NULL, l.n);
    rc |= speck_gguf_set_arr(w, "tokenizer.ggml.token_type", SPECK_GGUF_INT32, l.type, l.n);
    if (kind == FUZZ_VOCAB_SPM) {
        rc |= speck_gguf_set_arr(w, "tokenizer.ggml.scores", SPECK_GGUF_FLOAT32, l.score, l.n);
        rc |= speck_gguf_set_bool(w, "tokenizer.ggml.add_space_prefix", add_prefix);
        rc |= speck_gguf_set_u32(w, "tokenizer.ggml.bos_token_id", 1);
        rc |= speck_gguf_set_u32(w, "tokenizer.ggml.eos_token_id", 2);
        rc |= speck_gguf_set_u32(w, "tokenizer.ggml.unknown_token_id", 0);
        rc |= speck_gguf_set_bool(w, "tokenizer.ggml.add_bos_token", true);
    } else {
        rc |= speck_gguf_set_arr_str(w, "tokenizer.ggml.merges", (const char *const *)l.merges,
                                     NULL, l.n_merges);
        int eot = vl_find(&l, "<|endoftext|>");
        rc |= speck_gguf_set_u32(w, "tokenizer.ggml.bos_token_id", (uint32_t)eot);
        rc |= speck_gguf_set_u32(w, "tokenizer.ggml.eos_token_id", (uint32_t)eot);
        rc |= speck_gguf_set_u32(w, "tokenizer.ggml.eot_token_id",
                                 (uint32_t)vl_find(&l, "<|eot_id|>"));
    }
    rc |= speck_gguf_set_str(w, "tokenizer.chat_template",
                             "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}"
                             "<|im_end|>\n{% endfor %}");
    *n_tokens = l.n;
    vl_free(&l);
    return rc ? SPECK_ERR_NOMEM : 0;
}

int fuzz_micro_vocab(const char *path, int kind, const char *pre, bool add_prefix) {
    speck_gguf_writer *w = speck_gguf_writer_new();
    if (!w) return SPECK_ERR_NOMEM;
    int n;
    int rc = speck_gguf_set_str(w, "general.architecture", "llama");
    if (!rc) rc = add_vocab_keys(w, kind, pre, add_prefix, &n);
    if (!rc) rc = speck_gguf_writer_save(w, path);
    speck_gguf_writer_free(w);
    return rc;
}

speck_vocab *fuzz_vocab_micro(int kind, const char *pre, bool add_prefix) {
    char name[96];
    snprintf(name, sizeof name, "vocab-%d-%s-%d.gguf", kind, pre ? pre : "none", add_prefix);
    char *path = fuzz_path(fuzz_scratch(), name);
    speck_vocab *v = NULL;
    if (fuzz_micro_vocab(path, kind, pre, add_prefix) == 0) v = speck_vocab_load(path);
    if (!v) {
        fprintf(stderr, "fuzz: micro vocabulary %s: %s\n", name, speck_last_error());
        abort();
    }
    unlink(path);
    free(path);
    return v;
}

speck_vocab *fuzz_vocab_micro_hf(int variant) {
    char name[32];
    snprintf(name, sizeof name, "hf-tokenizer-%d", variant);
    char *dir = fuzz_path(fuzz_scratch(), name), *tj = fuzz_micro_tokenizer_json(variant),
         *tc = fuzz_micro_tokenizer_config(variant);
    speck_vocab *v = NULL;
    if (mkdir(dir, 0700) == 0 && fuzz_write(dir, "tokenizer.json", tj, strlen(tj)) == 0 &&
        fuzz_write(dir, "tokenizer_config.json", tc, strlen(tc)) == 0)
        v = speck_vocab_load(dir);
    if (!v) {
        fprintf(stderr, "fuzz: micro tokenizer.json %d: %s\n", variant, speck_last_error());
        abort();
    }
    fuzz_remove(fuzz_scratch(), name);
    free(dir), free(tj), free(tc);
    return v;
}

speck_vocab *fuzz_vocab_shared(const char *file) {
    char *path = fuzz_path(SPECK_FUZZ_SHARED "/vocab", file);
    struct stat st;
    speck_vocab *v = stat(path, &st) == 0 ? speck_vocab_load(path) : NULL;
    free(path);
    return v;
}

bool fuzz_vocab_round_trips(const speck_vocab *v) {
    if (!v->byte_level || v->nfc) return false;
    // Every byte must map to a normal token: an added token standing for a byte's character
    // (DeepSeek's "ÿ", "À", ... for bytes valid UTF-8 never holds) decodes as written.
    for (int b = 0; b < 256; b++)
        if (v->bl_id[b] < 0 || v->type[v->bl_id[b]] != TOK_NORMAL) return false;
    return true;
}

/* ---- micro models ---- */

static uint64_t rng_next(uint64_t *s) {
    uint64_t z = (*s += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

// Uniform in [-a, a).
static float rng_f(uint64_t *s, float a) {
    return a * (float)((double)(rng_next(s) >> 11) * 0x1.0p-52 - 1.0);
}

typedef struct {
    void **bufs;
    int n;
} buflist;

static void *bl_keep(buflist *b, void *p) {
    b->bufs = realloc(b->bufs, (size_t)(b->n + 1) * sizeof *b->bufs);
    if (!b->bufs || !p) abort();
    b->bufs[b->n++] = p;
    return p;
}

// Overwrite a few values of a row of type t with inf / -inf / NaN (for quantized types: the
// block scales).
static void plant_nonfinite(void *row, speck_type t, int64_t n, uint64_t *s) {
    const int64_t at = (int64_t)(rng_next(s) % (uint64_t)n);
    const int kind = (int)(rng_next(s) % 3);
    const float f = kind == 0 ? INFINITY : kind == 1 ? -INFINITY : NAN;
    if (t == SPECK_TYPE_F32) {
        ((float *)row)[at] = f;
    } else if (t == SPECK_TYPE_F16) {
        ((uint16_t *)row)[at] = speck_fp32_to_fp16(f);
    } else if (t == SPECK_TYPE_BF16) {
        ((uint16_t *)row)[at] = speck_fp32_to_bf16(f);
    } else {
        const size_t bb = (size_t)speck_type_block_bytes(t);
        const uint16_t h = speck_fp32_to_fp16(f);
        memcpy((uint8_t *)row + bb * (size_t)(at / 32), &h, 2); // d comes first in both blocks
    }
}

static int add_weight(speck_gguf_writer *w, buflist *keep, const char *name, speck_type t,
                      int64_t n_in, int64_t n_out, float scale, float base, bool nonfinite,
                      uint64_t *s) {
    const size_t rs = speck_type_row_size(t, n_in);
    uint8_t *data = bl_keep(keep, malloc(rs * (size_t)n_out));
    float *row = malloc((size_t)n_in * sizeof *row);
    if (!row) abort();
    for (int64_t r = 0; r < n_out; r++) {
        for (int64_t j = 0; j < n_in; j++) row[j] = base + rng_f(s, scale);
        speck_quantize_row(t, row, data + rs * (size_t)r, n_in);
    }
    free(row);
    if (nonfinite)
        for (int k = 0; k < 2; k++)
            plant_nonfinite(data + rs * (rng_next(s) % (uint64_t)n_out), t, n_in, s);
    int64_t ne[2] = {n_in, n_out};
    return speck_gguf_add_tensor(w, name, t, n_out > 1 ? 2 : 1, ne, data);
}

int fuzz_micro_model(const char *path, const fuzz_model_spec *sp, uint64_t seed) {
    speck_gguf_writer *w = speck_gguf_writer_new();
    if (!w) return SPECK_ERR_NOMEM;
    buflist keep = {0};
    uint64_t s = seed;
    const char *a = sp->arch;
    char k[128];
#define KEY(x) (snprintf(k, sizeof k, "%s." x, a), k)
    int rc = 0;
    rc |= speck_gguf_set_str(w, "general.architecture", a);
    rc |= speck_gguf_set_str(w, "general.name", "fuzz-micro");
    rc |= speck_gguf_set_u32(w, "general.alignment", 32);
    rc |= speck_gguf_set_u32(w, "general.file_type", (uint32_t)speck_gguf_file_type(sp->type));
    rc |= speck_gguf_set_u32(w, KEY("context_length"), 64);
    rc |= speck_gguf_set_u32(w, KEY("embedding_length"), FUZZ_EMBD);
    rc |= speck_gguf_set_u32(w, KEY("block_count"), FUZZ_LAYERS);
    rc |= speck_gguf_set_u32(w, KEY("feed_forward_length"), FUZZ_FF);
    rc |= speck_gguf_set_u32(w, KEY("attention.head_count"), FUZZ_HEADS);
    rc |= speck_gguf_set_u32(w, KEY("attention.head_count_kv"), FUZZ_HEADS_KV);
    rc |= speck_gguf_set_u32(w, KEY("rope.dimension_count"), FUZZ_HEAD_DIM);
    rc |= speck_gguf_set_f32(w, KEY("attention.layer_norm_rms_epsilon"), 1e-5f);
    rc |= speck_gguf_set_f32(w, KEY("rope.freq_base"), 10000.0f);
    if (sp->rope_scaling) {
        rc |= speck_gguf_set_str(w, KEY("rope.scaling.type"), sp->rope_scaling);
        rc |= speck_gguf_set_f32(w, KEY("rope.scaling.factor"), 4.0f);
        if (!strcmp(sp->rope_scaling, "llama3")) {
            rc |= speck_gguf_set_f32(w, KEY("rope.scaling.low_freq_factor"), 1.0f);
            rc |= speck_gguf_set_f32(w, KEY("rope.scaling.high_freq_factor"), 4.0f);
            rc |= speck_gguf_set_u32(w, KEY("rope.scaling.original_context_length"), 32);
        }
    }
#undef KEY
    int n_vocab = FUZZ_VOCAB_BARE;
    if (sp->vocab && !rc) rc = add_vocab_keys(w, sp->vocab, "gpt-2", true, &n_vocab);
    const speck_type t = sp->type;
    const bool nf = sp->nonfinite;
    const int64_t E = FUZZ_EMBD, Q = FUZZ_HEADS * FUZZ_HEAD_DIM, KV = FUZZ_HEADS_KV * FUZZ_HEAD_DIM,
                  F = FUZZ_FF;
    const speck_type f32 = SPECK_TYPE_F32;
    rc = rc ? rc : add_weight(w, &keep, "token_embd.weight", t, E, n_vocab, 1.0f, 0, nf, &s);
    if (sp->rope_freqs)
        rc = rc ? rc
                : add_weight(w, &keep, "rope_freqs.weight", f32, FUZZ_HEAD_DIM / 2, 1, 0.5f, 2.0f,
                             false, &s);
    rc = rc ? rc : add_weight(w, &keep, "output_norm.weight", f32, E, 1, 0.1f, 1.0f, nf, &s);
    if (!sp->tied)
        rc = rc ? rc : add_weight(w, &keep, "output.weight", t, E, n_vocab, 0.2f, 0, nf, &s);
    for (int l = 0; l < FUZZ_LAYERS && !rc; l++) {
        char n[64];
#define W(name, type, n_in, n_out, scale, base)                                                    \
    (snprintf(n, sizeof n, "blk.%d." name, l),                                                     \
     rc = rc ? rc : add_weight(w, &keep, n, type, n_in, n_out, scale, base, nf, &s))
        W("attn_norm.weight", f32, E, 1, 0.1f, 1.0f);
        W("attn_q.weight", t, E, Q, 0.3f, 0);
        W("attn_k.weight", t, E, KV, 0.3f, 0);
        W("attn_v.weight", t, E, KV, 0.3f, 0);
        if (!strcmp(a, "qwen2")) {
            W("attn_q.bias", f32, Q, 1, 0.1f, 0);
            W("attn_k.bias", f32, KV, 1, 0.1f, 0);
            W("attn_v.bias", f32, KV, 1, 0.1f, 0);
        }
        W("attn_output.weight", t, Q, E, 0.3f, 0);
        W("ffn_norm.weight", f32, E, 1, 0.1f, 1.0f);
        W("ffn_gate.weight", t, E, F, 0.3f, 0);
        W("ffn_up.weight", t, E, F, 0.3f, 0);
        W("ffn_down.weight", t, F, E, 0.3f, 0);
#undef W
    }
    if (!rc) rc = speck_gguf_writer_save(w, path);
    speck_gguf_writer_free(w);
    for (int i = 0; i < keep.n; i++) free(keep.bufs[i]);
    free(keep.bufs);
    return rc;
}

/* ---- Hugging Face tokenizer.json / tokenizer_config.json ---- */

static const char RE_LLAMA3_HF[] =
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| "
    "?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";

static cJSON *obj_type(const char *type) {
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "type", type);
    return o;
}

static cJSON *added_token(int id, const char *content, bool special) {
    cJSON *o = cJSON_CreateObject();
    cJSON_AddNumberToObject(o, "id", id);
    cJSON_AddStringToObject(o, "content", content);
    cJSON_AddBoolToObject(o, "single_word", false);
    cJSON_AddBoolToObject(o, "lstrip", false);
    cJSON_AddBoolToObject(o, "rstrip", false);
    cJSON_AddBoolToObject(o, "normalized", false);
    cJSON_AddBoolToObject(o, "special", special);
    return o;
}

static cJSON *tokenizer_json(int variant, int *n_out) {
    vlist l;
    build_vlist(&l, variant == 0 ? FUZZ_VOCAB_BPE : FUZZ_VOCAB_SPM);
    cJSON *root = cJSON_CreateObject(), *model = obj_type("BPE"), *vocab = cJSON_CreateObject();
    cJSON *merges = cJSON_CreateArray(), *added = cJSON_CreateArray();
    cJSON_AddStringToObject(root, "version", "1.0");
    int n_model = 0;
    for (int i = 0; i < l.n; i++) {
        // Control / user-defined tokens are added tokens; the byte-level ones get ids after the
        // model vocabulary (as Llama 3 / Qwen do), the SentencePiece ones keep theirs.
        bool special =
            l.type[i] == TOK_CONTROL || l.type[i] == TOK_USER_DEFINED || l.type[i] == TOK_UNKNOWN;
        if (!special || variant != 0) cJSON_AddNumberToObject(vocab, l.text[i], n_model++);
    }
    int next = n_model;
    for (int i = 0; i < l.n; i++) {
        bool ctl = l.type[i] == TOK_CONTROL || l.type[i] == TOK_UNKNOWN;
        if (!ctl && l.type[i] != TOK_USER_DEFINED) continue;
        int id = variant == 0 ? next++ : vl_find(&l, l.text[i]);
        cJSON_AddItemToArray(added, added_token(id, l.text[i], ctl));
    }
    if (variant == 2) cJSON_AddItemToArray(added, added_token(next++, "<image>", true));
    for (int k = 0; k < l.n_merges; k++) {
        if (variant == 0) {
            cJSON_AddItemToArray(merges, cJSON_CreateString(l.merges[k]));
        } else { // the newer [left, right] form
            char *sp = strchr(l.merges[k] + 1, ' ');
            *sp = 0;
            cJSON *pair = cJSON_CreateArray();
            cJSON_AddItemToArray(pair, cJSON_CreateString(l.merges[k]));
            cJSON_AddItemToArray(pair, cJSON_CreateString(sp + 1));
            cJSON_AddItemToArray(merges, pair);
            *sp = ' ';
        }
    }
    cJSON_AddItemToObject(root, "added_tokens", added);
    if (variant == 0) {
        cJSON_AddNullToObject(root, "normalizer");
        cJSON *seq = obj_type("Sequence"), *list = cJSON_CreateArray();
        cJSON *split = obj_type("Split"), *pat = cJSON_CreateObject();
        cJSON_AddStringToObject(pat, "Regex", RE_LLAMA3_HF);
        cJSON_AddItemToObject(split, "pattern", pat);
        cJSON_AddStringToObject(split, "behavior", "Isolated");
        cJSON_AddBoolToObject(split, "invert", false);
        cJSON *bl = obj_type("ByteLevel");
        cJSON_AddBoolToObject(bl, "add_prefix_space", false);
        cJSON_AddBoolToObject(bl, "trim_offsets", true);
        cJSON_AddBoolToObject(bl, "use_regex", false);
        cJSON_AddItemToArray(list, split);
        cJSON_AddItemToArray(list, bl);
        cJSON_AddItemToObject(seq, "pretokenizers", list);
        cJSON_AddItemToObject(root, "pre_tokenizer", seq);
        cJSON *pp = obj_type("TemplateProcessing"), *single = cJSON_CreateArray();
        cJSON *st = cJSON_CreateObject(), *sti = cJSON_CreateObject();
        cJSON_AddStringToObject(sti, "id", "<|endoftext|>");
        cJSON_AddNumberToObject(sti, "type_id", 0);
        cJSON_AddItemToObject(st, "SpecialToken", sti);
        cJSON *sq = cJSON_CreateObject(), *sqi = cJSON_CreateObject();
        cJSON_AddStringToObject(sqi, "id", "A");
        cJSON_AddNumberToObject(sqi, "type_id", 0);
        cJSON_AddItemToObject(sq, "Sequence", sqi);
        cJSON_AddItemToArray(single, st);
        cJSON_AddItemToArray(single, sq);
        cJSON_AddItemToObject(pp, "single", single);
        cJSON_AddItemToObject(root, "post_processor", pp);
        cJSON_AddItemToObject(root, "decoder", obj_type("ByteLevel"));
        cJSON_AddBoolToObject(model, "ignore_merges", true);
    } else {
        // SentencePiece style: prepend ▁ (variant 1), spaces become ▁ (both).
        cJSON *rep = obj_type("Replace"), *pat = cJSON_CreateObject();
        cJSON_AddStringToObject(pat, "String", " ");
        cJSON_AddItemToObject(rep, "pattern", pat);
        cJSON_AddStringToObject(rep, "content", META);
        cJSON *norm = rep;
        if (variant == 1) {
            norm = obj_type("Sequence");
            cJSON *list = cJSON_CreateArray(), *prep = obj_type("Prepend");
            cJSON_AddStringToObject(prep, "prepend", META);
            cJSON_AddItemToArray(list, prep);
            cJSON_AddItemToArray(list, rep);
            cJSON_AddItemToObject(norm, "normalizers", list);
        }
        cJSON_AddItemToObject(root, "normalizer", norm);
        if (variant == 2) {
            cJSON *split = obj_type("Split"), *sp = cJSON_CreateObject();
            cJSON_AddStringToObject(sp, "String", " ");
            cJSON_AddItemToObject(split, "pattern", sp);
            cJSON_AddStringToObject(split, "behavior", "MergedWithPrevious");
            cJSON_AddBoolToObject(split, "invert", false);
            cJSON_AddItemToObject(root, "pre_tokenizer", split);
        } else {
            cJSON_AddNullToObject(root, "pre_tokenizer");
        }
        cJSON *dec = obj_type("Sequence"), *dl = cJSON_CreateArray();
        cJSON *drep = obj_type("Replace"), *dpat = cJSON_CreateObject();
        cJSON_AddStringToObject(dpat, "String", META);
        cJSON_AddItemToObject(drep, "pattern", dpat);
        cJSON_AddStringToObject(drep, "content", " ");
        cJSON_AddItemToArray(dl, drep);
        cJSON_AddItemToArray(dl, obj_type("ByteFallback"));
        cJSON_AddItemToArray(dl, obj_type("Fuse"));
        if (variant == 1) {
            cJSON *strip = obj_type("Strip");
            cJSON_AddStringToObject(strip, "content", " ");
            cJSON_AddNumberToObject(strip, "start", 1);
            cJSON_AddNumberToObject(strip, "stop", 0);
            cJSON_AddItemToArray(dl, strip);
        }
        cJSON_AddItemToObject(dec, "decoders", dl);
        cJSON_AddItemToObject(root, "decoder", dec);
        cJSON_AddStringToObject(model, "unk_token", "<unk>");
        cJSON_AddBoolToObject(model, "fuse_unk", true);
        cJSON_AddBoolToObject(model, "byte_fallback", true);
    }
    cJSON_AddItemToObject(model, "vocab", vocab);
    cJSON_AddItemToObject(model, "merges", merges);
    cJSON_AddItemToObject(root, "model", model);
    *n_out = next;
    vl_free(&l);
    return root;
}

char *fuzz_micro_tokenizer_json(int variant) {
    int n;
    cJSON *j = tokenizer_json(variant, &n);
    char *s = cJSON_PrintUnformatted(j);
    cJSON_Delete(j);
    if (!s) abort();
    return s;
}

int fuzz_micro_tokenizer_n(int variant) {
    int n;
    cJSON_Delete(tokenizer_json(variant, &n));
    return n;
}

char *fuzz_micro_tokenizer_config(int variant) {
    cJSON *c = cJSON_CreateObject();
    if (variant == 0) {
        cJSON_AddStringToObject(c, "bos_token", "<|endoftext|>");
        cJSON_AddStringToObject(c, "eos_token", "<|im_end|>");
        cJSON_AddBoolToObject(c, "add_bos_token", false);
        cJSON_AddStringToObject(c, "chat_template",
                                "{% for message in messages %}{{'<|im_start|>' + message['role'] "
                                "+ '\\n' + message['content'] + '<|im_end|>' + '\\n'}}"
                                "{% endfor %}");
    } else {
        cJSON *b = cJSON_CreateObject();
        cJSON_AddStringToObject(b, "content", "<s>");
        cJSON_AddItemToObject(c, "bos_token", b);
        cJSON *e = cJSON_CreateObject();
        cJSON_AddStringToObject(e, "content", "</s>");
        cJSON_AddItemToObject(c, "eos_token", e);
        cJSON_AddStringToObject(c, "unk_token", "<unk>");
        cJSON_AddBoolToObject(c, "add_bos_token", true);
        cJSON_AddBoolToObject(c, "add_eos_token", false);
        cJSON *list = cJSON_CreateArray(), *d = cJSON_CreateObject();
        cJSON_AddStringToObject(d, "name", "default");
        cJSON_AddStringToObject(d, "template",
                                "{{ bos_token }}{% for m in messages %}<start_of_turn>{{ m.role }}"
                                "\n{{ m.content | trim }}<end_of_turn>\n{% endfor %}");
        cJSON_AddItemToArray(list, d);
        cJSON_AddItemToObject(c, "chat_template", list);
    }
    char *s = cJSON_PrintUnformatted(c);
    cJSON_Delete(c);
    if (!s) abort();
    return s;
}

/* ---- Hugging Face checkpoint ---- */

typedef struct {
    char name[96];
    int64_t rows, cols; // cols = 0: a vector
    float base;         // norms 1, everything else ~0
} hf_tensor;

static int hf_tensors(bool qwen2, int n_vocab, hf_tensor *t) {
    const int64_t E = FUZZ_EMBD, Q = FUZZ_HEADS * FUZZ_HEAD_DIM, KV = FUZZ_HEADS_KV * FUZZ_HEAD_DIM,
                  F = FUZZ_FF;
    int n = 0;
#define T(nm, r, c, b)                                                                             \
    (snprintf(t[n].name, sizeof t[n].name, "%s", nm), t[n].rows = r, t[n].cols = c, t[n++].base = b)
    T("model.embed_tokens.weight", n_vocab, E, 0);
    T("model.norm.weight", E, 0, 1);
    if (!qwen2) T("lm_head.weight", n_vocab, E, 0);
    for (int l = 0; l < FUZZ_LAYERS; l++) {
#define L(sfx, r, c, b)                                                                            \
    (snprintf(t[n].name, sizeof t[n].name, "model.layers.%d." sfx, l), t[n].rows = r,              \
     t[n].cols = c, t[n++].base = b)
        L("input_layernorm.weight", E, 0, 1);
        L("self_attn.q_proj.weight", Q, E, 0);
        L("self_attn.k_proj.weight", KV, E, 0);
        L("self_attn.v_proj.weight", KV, E, 0);
        if (qwen2) {
            L("self_attn.q_proj.bias", Q, 0, 0);
            L("self_attn.k_proj.bias", KV, 0, 0);
            L("self_attn.v_proj.bias", KV, 0, 0);
        }
        L("self_attn.o_proj.weight", E, Q, 0);
        L("post_attention_layernorm.weight", E, 0, 1);
        L("mlp.gate_proj.weight", F, E, 0);
        L("mlp.up_proj.weight", F, E, 0);
        L("mlp.down_proj.weight", E, F, 0);
#undef L
    }
#undef T
    return n;
}

#define HF_MAX_TENSORS 32

char *fuzz_micro_config_json(bool qwen2, int n_vocab, const char *rope_scaling) {
    cJSON *c = cJSON_CreateObject(), *arch = cJSON_CreateArray();
    cJSON_AddItemToArray(arch, cJSON_CreateString(qwen2 ? "Qwen2ForCausalLM" : "LlamaForCausalLM"));
    cJSON_AddItemToObject(c, "architectures", arch);
    cJSON_AddStringToObject(c, "model_type", qwen2 ? "qwen2" : "llama");
    cJSON_AddStringToObject(c, "hidden_act", "silu");
    cJSON_AddNumberToObject(c, "hidden_size", FUZZ_EMBD);
    cJSON_AddNumberToObject(c, "intermediate_size", FUZZ_FF);
    cJSON_AddNumberToObject(c, "num_hidden_layers", FUZZ_LAYERS);
    cJSON_AddNumberToObject(c, "num_attention_heads", FUZZ_HEADS);
    cJSON_AddNumberToObject(c, "num_key_value_heads", FUZZ_HEADS_KV);
    cJSON_AddNumberToObject(c, "max_position_embeddings", 64);
    cJSON_AddNumberToObject(c, "vocab_size", n_vocab);
    cJSON_AddNumberToObject(c, "rms_norm_eps", 1e-5);
    cJSON_AddNumberToObject(c, "rope_theta", 10000.0);
    cJSON_AddBoolToObject(c, "tie_word_embeddings", qwen2);
    cJSON_AddStringToObject(c, "torch_dtype", "float16");
    if (rope_scaling) {
        cJSON *rs = cJSON_CreateObject();
        cJSON_AddStringToObject(rs, "rope_type", rope_scaling);
        cJSON_AddNumberToObject(rs, "factor", 4.0);
        if (!strcmp(rope_scaling, "llama3")) {
            cJSON_AddNumberToObject(rs, "low_freq_factor", 1.0);
            cJSON_AddNumberToObject(rs, "high_freq_factor", 4.0);
            cJSON_AddNumberToObject(rs, "original_max_position_embeddings", 32);
        }
        cJSON_AddItemToObject(c, "rope_scaling", rs);
    }
    char *s = cJSON_Print(c);
    cJSON_Delete(c);
    if (!s) abort();
    return s;
}

static void shard_name(char *buf, size_t n, int shard, int n_shards) {
    if (n_shards <= 1)
        snprintf(buf, n, "model.safetensors");
    else
        snprintf(buf, n, "model-%05d-of-%05d.safetensors", shard + 1, n_shards);
}

uint8_t *fuzz_micro_safetensors(bool qwen2, int n_vocab, speck_type dtype, int shard, int n_shards,
                                size_t *size) {
    hf_tensor t[HF_MAX_TENSORS];
    const int nt = hf_tensors(qwen2, n_vocab, t);
    const char *dname = dtype == SPECK_TYPE_F32 ? "F32" : dtype == SPECK_TYPE_BF16 ? "BF16" : "F16";
    const size_t es = dtype == SPECK_TYPE_F32 ? 4 : 2;
    cJSON *h = cJSON_CreateObject(), *meta = cJSON_CreateObject();
    cJSON_AddStringToObject(meta, "format", "pt");
    cJSON_AddItemToObject(h, "__metadata__", meta);
    size_t off = 0;
    for (int i = 0; i < nt; i++) {
        if (n_shards > 1 && i % n_shards != shard) continue;
        const size_t bytes = (size_t)t[i].rows * (size_t)(t[i].cols ? t[i].cols : 1) * es;
        cJSON *e = cJSON_CreateObject(), *shape = cJSON_CreateArray(), *offs = cJSON_CreateArray();
        cJSON_AddStringToObject(e, "dtype", dname);
        cJSON_AddItemToArray(shape, cJSON_CreateNumber((double)t[i].rows));
        if (t[i].cols) cJSON_AddItemToArray(shape, cJSON_CreateNumber((double)t[i].cols));
        cJSON_AddItemToObject(e, "shape", shape);
        cJSON_AddItemToArray(offs, cJSON_CreateNumber((double)off));
        cJSON_AddItemToArray(offs, cJSON_CreateNumber((double)(off + bytes)));
        cJSON_AddItemToObject(e, "data_offsets", offs);
        cJSON_AddItemToObject(h, t[i].name, e);
        off += bytes;
    }
    char *hs = cJSON_PrintUnformatted(h);
    cJSON_Delete(h);
    if (!hs) abort();
    const size_t hl = (strlen(hs) + 7) / 8 * 8; // padded with spaces, as the Python writer does
    uint8_t *buf = malloc(8 + hl + off);
    if (!buf) abort();
    const uint64_t hl64 = hl;
    memcpy(buf, &hl64, 8);
    memset(buf + 8, ' ', hl);
    memcpy(buf + 8, hs, strlen(hs));
    free(hs);
    uint64_t s = 0x5eed + (uint64_t)shard;
    uint8_t *p = buf + 8 + hl;
    for (int i = 0; i < nt; i++) {
        if (n_shards > 1 && i % n_shards != shard) continue;
        const int64_t n = t[i].rows * (t[i].cols ? t[i].cols : 1);
        for (int64_t j = 0; j < n; j++) {
            const float v = t[i].base + rng_f(&s, 0.2f);
            if (dtype == SPECK_TYPE_F32) {
                memcpy(p, &v, 4);
            } else {
                uint16_t h16 =
                    dtype == SPECK_TYPE_BF16 ? speck_fp32_to_bf16(v) : speck_fp32_to_fp16(v);
                memcpy(p, &h16, 2);
            }
            p += es;
        }
    }
    *size = 8 + hl + off;
    return buf;
}

char *fuzz_micro_st_index(bool qwen2, int n_shards) {
    hf_tensor t[HF_MAX_TENSORS];
    const int nt = hf_tensors(qwen2, 16, t);
    cJSON *j = cJSON_CreateObject(), *meta = cJSON_CreateObject(), *wm = cJSON_CreateObject();
    cJSON_AddNumberToObject(meta, "total_size", 0);
    cJSON_AddItemToObject(j, "metadata", meta);
    for (int i = 0; i < nt; i++) {
        char f[64];
        shard_name(f, sizeof f, i % n_shards, n_shards);
        cJSON_AddStringToObject(wm, t[i].name, f);
    }
    cJSON_AddItemToObject(j, "weight_map", wm);
    char *s = cJSON_Print(j);
    cJSON_Delete(j);
    if (!s) abort();
    return s;
}
