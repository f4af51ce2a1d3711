// Writes the seed corpus of every fuzz target: micro models, vocabularies, checkpoints, configs,
// texts and conversations in each target's input layout (see the targets' headers), so libFuzzer
// starts from inputs that reach deep into each parser. Usage: fuzz_seeds OUT_DIR
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "fuzz_common.h"

static const char *g_out;
static int g_count;

static void die(const char *what) {
    fprintf(stderr, "fuzz_seeds: %s: %s\n", what, speck_last_error());
    exit(1);
}

static char *target_dir(const char *target) {
    char *d = fuzz_path(g_out, target);
    if (mkdir(d, 0755) && errno != EEXIST) die(d);
    return d;
}

// seed := prefix bytes + data (+ NUL + data2 ...), written as OUT/target/name.
static void seed(const char *target, const char *name, const void *prefix, size_t np,
                 const void *data, size_t n) {
    uint8_t *b = malloc(np + n + 1);
    if (!b) abort();
    if (np) memcpy(b, prefix, np);
    if (n) memcpy(b + np, data, n);
    char *d = target_dir(target);
    if (fuzz_write(d, name, b, np + n)) die(name);
    free(d);
    free(b);
    g_count++;
}

static void seed_file(const char *target, const char *name, uint8_t prefix, bool has_prefix,
                      const char *path) {
    size_t n;
    uint8_t *data = fuzz_read(path, &n);
    if (!data) die(path);
    seed(target, name, &prefix, has_prefix, data, n);
    free(data);
    unlink(path);
}

// Fields joined with NUL bytes after a one-byte prefix.
static void seed_fields(const char *target, const char *name, uint8_t prefix,
                        const char *const *fields, int n) {
    size_t len = 0;
    for (int i = 0; i < n; i++) len += strlen(fields[i]) + 1;
    char *b = malloc(len + 1);
    if (!b) abort();
    size_t k = 0;
    for (int i = 0; i < n; i++) {
        size_t l = strlen(fields[i]);
        memcpy(b + k, fields[i], l);
        k += l;
        if (i + 1 < n) b[k++] = 0;
    }
    seed(target, name, &prefix, 1, b, k);
    free(b);
}

static void models(void) {
    static const struct {
        const char *name;
        fuzz_model_spec spec;
    } m[] = {
        {"llama-f32", {"llama", SPECK_TYPE_F32, false, 0, NULL, false, false}},
        {"llama-f16", {"llama", SPECK_TYPE_F16, false, 0, NULL, false, false}},
        {"llama-bf16", {"llama", SPECK_TYPE_BF16, false, 0, NULL, false, false}},
        {"llama-q8_0", {"llama", SPECK_TYPE_Q8_0, false, 0, NULL, false, false}},
        {"llama-q4_0", {"llama", SPECK_TYPE_Q4_0, false, 0, NULL, false, false}},
        {"qwen2-f16-tied", {"qwen2", SPECK_TYPE_F16, true, 0, NULL, false, false}},
        {"qwen2-q8_0", {"qwen2", SPECK_TYPE_Q8_0, false, 0, NULL, false, false}},
        {"llama-q4_0-tied-ropefreqs", {"llama", SPECK_TYPE_Q4_0, true, 0, NULL, true, false}},
        {"llama-q8_0-linear", {"llama", SPECK_TYPE_Q8_0, false, 0, "linear", false, false}},
        {"llama-f16-llama3", {"llama", SPECK_TYPE_F16, false, 0, "llama3", false, false}},
        {"llama-q4_0-spm", {"llama", SPECK_TYPE_Q4_0, true, FUZZ_VOCAB_SPM, NULL, false, false}},
        {"llama-f32-nonfinite", {"llama", SPECK_TYPE_F32, false, 0, NULL, false, true}},
        {"llama-q8_0-nonfinite", {"llama", SPECK_TYPE_Q8_0, false, 0, NULL, false, true}},
        {"qwen2-bf16-nonfinite", {"qwen2", SPECK_TYPE_BF16, false, 0, NULL, false, true}},
    };
    char *tmp = fuzz_path(fuzz_scratch(), "m.gguf");
    for (size_t i = 0; i < sizeof m / sizeof m[0]; i++) {
        if (fuzz_micro_model(tmp, &m[i].spec, 1 + i)) die(m[i].name);
        size_t n;
        uint8_t *data = fuzz_read(tmp, &n);
        if (!data) die(tmp);
        seed("model", m[i].name, NULL, 0, data, n);
        // The reader's target gets a few of them too (tensor records, alignment, data ranges).
        if (i % 4 == 0 || m[i].spec.vocab) seed("gguf", m[i].name, NULL, 0, data, n);
        free(data);
    }
    fuzz_model_spec bpe = {"llama", SPECK_TYPE_Q4_0, true, FUZZ_VOCAB_BPE, NULL, false, false};
    if (fuzz_micro_model(tmp, &bpe, 99)) die("bpe model");
    seed_file("gguf", "llama-q4_0-bpe", 0, false, tmp);
    free(tmp);
}

static void gguf_misc(void) {
    char *tmp = fuzz_path(fuzz_scratch(), "v.gguf");
    if (fuzz_micro_vocab(tmp, FUZZ_VOCAB_SPM, NULL, true)) die("spm vocab");
    seed_file("gguf", "vocab-spm", 0, false, tmp);
    static const char *const pre[] = {"llama-bpe", "qwen2", "gpt-2", "smollm", "deepseek-llm"};
    for (int i = 0; i < 5; i++) {
        if (fuzz_micro_vocab(tmp, FUZZ_VOCAB_BPE, pre[i], false)) die("bpe vocab");
        char name[64];
        snprintf(name, sizeof name, "vocab-bpe-%s", pre[i]);
        seed_file("gguf", name, 0, false, tmp);
    }
    // Every value type, arrays of each, a wider alignment and tensors of each type.
    speck_gguf_writer *w = speck_gguf_writer_new();
    if (!w) abort();
    int rc = 0;
    rc |= speck_gguf_set_str(w, "general.architecture", "llama");
    rc |= speck_gguf_set_u32(w, "general.alignment", 64);
    rc |= speck_gguf_set_u32(w, "a.u32", 7);
    rc |= speck_gguf_set_i32(w, "a.i32", -7);
    rc |= speck_gguf_set_u64(w, "a.u64", 1ull << 40);
    rc |= speck_gguf_set_f32(w, "a.f32", 0.5f);
    rc |= speck_gguf_set_bool(w, "a.bool", true);
    rc |= speck_gguf_set_str(w, "a.str", "text with \"quotes\", \\, \n and \xe2\x96\x81");
    static const uint8_t bytes[16] = {1, 2, 3, 250, 255};
    const speck_gguf_vtype vt[] = {SPECK_GGUF_UINT8,   SPECK_GGUF_INT8,   SPECK_GGUF_UINT16,
                                   SPECK_GGUF_INT16,   SPECK_GGUF_UINT32, SPECK_GGUF_INT32,
                                   SPECK_GGUF_FLOAT32, SPECK_GGUF_BOOL,   SPECK_GGUF_UINT64,
                                   SPECK_GGUF_INT64,   SPECK_GGUF_FLOAT64};
    for (size_t i = 0; i < sizeof vt / sizeof vt[0]; i++) {
        char key[32];
        snprintf(key, sizeof key, "arr.%zu", i);
        rc |= speck_gguf_set_arr(w, key, vt[i], bytes, 2);
    }
    const char *strs[] = {"a", "", "\xff\xfe", "<|im_start|>"};
    rc |= speck_gguf_set_arr_str(w, "arr.str", strs, NULL, 4);
    const speck_type types[] = {SPECK_TYPE_F32, SPECK_TYPE_F16, SPECK_TYPE_BF16, SPECK_TYPE_Q8_0,
                                SPECK_TYPE_Q4_0};
    static uint8_t blocks[5][256];
    for (int i = 0; i < 5; i++) {
        char name[32];
        snprintf(name, sizeof name, "t.%s", speck_type_name(types[i]));
        const int64_t ne[2] = {32, 2};
        rc |= speck_gguf_add_tensor(w, name, types[i], 2, ne, blocks[i]);
    }
    if (rc || speck_gguf_writer_save(w, tmp)) die("all-types gguf");
    speck_gguf_writer_free(w);
    seed_file("gguf", "all-types", 0, false, tmp);
    free(tmp);
}

static void safetensors(void) {
    static const speck_type dt[] = {SPECK_TYPE_F16, SPECK_TYPE_BF16, SPECK_TYPE_F32};
    for (int q = 0; q < 2; q++)
        for (int i = 0; i < 3; i++) {
            size_t n;
            uint8_t *b = fuzz_micro_safetensors(q, 16, dt[i], 0, 1, &n);
            char name[64];
            snprintf(name, sizeof name, "file-%s-%s", q ? "qwen2" : "llama",
                     speck_type_name(dt[i]));
            seed("safetensors", name, (uint8_t[]){0}, 1, b, n);
            free(b);
        }
    size_t n;
    uint8_t *b = fuzz_micro_safetensors(false, 16, SPECK_TYPE_F16, 1, 2, &n);
    seed("safetensors", "file-shard2", (uint8_t[]){0}, 1, b, n);
    free(b);
    char *idx = fuzz_micro_st_index(false, 2);
    seed("safetensors", "index", (uint8_t[]){1}, 1, idx, strlen(idx));
    free(idx);
    const int nv = fuzz_micro_tokenizer_n(0);
    for (int t = 0; t < 4; t++) { // mode 2, each output type
        b = fuzz_micro_safetensors(false, nv, t % 2 ? SPECK_TYPE_BF16 : SPECK_TYPE_F16, 0, 1, &n);
        char name[32];
        snprintf(name, sizeof name, "convert-%d", t);
        seed("safetensors", name, (uint8_t[]){(uint8_t)(2 + 3 * t)}, 1, b, n);
        free(b);
    }
}

static void configs(void) {
    const int nv = fuzz_micro_tokenizer_n(0);
    static const char *const scaling[] = {NULL, "linear", "llama3", NULL};
    for (int k = 0; k < 4; k++)
        for (int t = 0; t < 4; t += 1 + (k != 0)) {
            char *c = fuzz_micro_config_json(k == 3, nv, scaling[k]);
            char name[32];
            snprintf(name, sizeof name, "config-%d-%d", k, t);
            seed("hf_config", name, (uint8_t[]){(uint8_t)(k + 4 * t)}, 1, c, strlen(c));
            free(c);
        }
}

static void tokenizer_json(void) {
    for (int v = 0; v < 3; v++) {
        char *tj = fuzz_micro_tokenizer_json(v);
        char name[32];
        snprintf(name, sizeof name, "tokenizer-%d", v);
        seed("tokenizer_json", name, NULL, 0, tj, strlen(tj));
        for (int c = 0; c < 2; c++) {
            char *tc = fuzz_micro_tokenizer_config(c);
            size_t a = strlen(tj), b = strlen(tc);
            char *both = malloc(a + b + 1);
            if (!both) abort();
            memcpy(both, tj, a);
            both[a] = 0;
            memcpy(both + a + 1, tc, b);
            snprintf(name, sizeof name, "tokenizer-%d-config-%d", v, c);
            seed("tokenizer_json", name, NULL, 0, both, a + b + 1);
            free(both);
            free(tc);
        }
        free(tj);
    }
}

static const char *const TEXTS[] = {
    "Hello world",
    " leading space and  two  spaces",
    "tabs\tand\nnew lines\r\n\n\n",
    "def hello(world):\n    return world + 123456\n",
    "I'm sure it's 12 o'clock, isn't it?",
    "\xe4\xb8\xad\xe6\x96\x87 caf\xc3\xa9 \xf0\x9f\x98\x80 \xe2\x96\x81\xe2\x96\x81",
    "<s>a</s><|im_start|>user\nhi<|im_end|><tool><tool_call><|endoftext|>",
    "\xff\xfe\xc3 broken \xe4\xb8 utf-8 \xed\xa0\x80",
    "",
};
#define N_TEXTS (int)(sizeof TEXTS / sizeof TEXTS[0])

static void tokenize_texts(void) {
    for (int i = 0; i < N_TEXTS; i++) {
        char name[32];
        for (int s = 0; s < 5; s++) { // fuzz_spm: slots 0-4, flag bits 16 and 32
            uint8_t sel = (uint8_t)(s | (i % 4) << 4);
            snprintf(name, sizeof name, "text-%d-%d", i, s);
            seed("spm", name, &sel, 1, TEXTS[i], strlen(TEXTS[i]));
        }
        for (int s = 0; s < 23; s += 1 + (i % 2)) { // fuzz_bpe: slots 0-22, flag bits 64, 128
            uint8_t sel = (uint8_t)(s | (i % 4) << 6);
            snprintf(name, sizeof name, "text-%d-%d", i, s);
            seed("bpe", name, &sel, 1, TEXTS[i], strlen(TEXTS[i]));
        }
    }
}

static void chats(void) {
    static const char *const src[] = {
        "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>{% endfor %}",
        "<|start_header_id|>{{ role }}<|end_header_id|>\n\n{{ content }}<|eot_id|>",
        "<start_of_turn>{{ role }}\n{{ content }}<end_of_turn>",
        "[INST] <<SYS>>\n{{ system }}\n<</SYS>>\n\n{{ user }} [/INST]",
        "[INST] {{ user }} [/INST]",
        "<|user|>\n{{ content }}<|end|>",
        "<|user|>\n{{ content }}</s>",
        "llama3",
        "Qwen2",
        "no template here",
    };
    for (size_t i = 0; i < sizeof src / sizeof src[0]; i++) {
        const char *conv[] = {src[i],
                              "system",
                              "Be brief.",
                              "user",
                              "Hi!",
                              "assistant",
                              "  Hello there.  ",
                              "user",
                              "\xe2\x80\x83 trim me \xc2\xa0",
                              "tool",
                              "{\"x\": 1}"};
        char name[32];
        snprintf(name, sizeof name, "chat-%zu", i);
        seed_fields("chat", name, (uint8_t)(i * 5), conv, 11);
        snprintf(name, sizeof name, "chat-%zu-short", i);
        seed_fields("chat", name, (uint8_t)(i * 5 + 1), conv, 5);
    }
}

static void train_data(void) {
    const char *corpus[] = {"def f(x):\n    return x\n", "class A:\n    pass\n", "", "# notes",
                            "print('hello world')\n"};
    seed_fields("train_data", "corpus", 0, corpus, 5);
    seed_fields("train_data", "corpus-val", 2, corpus, 5);
    // A real cache of a small corpus (the target writes the key of its own corpus into it).
    speck_vocab *v = fuzz_vocab_micro(FUZZ_VOCAB_BPE, "gpt-2", false);
    char *dir = fuzz_path(fuzz_scratch(), "corpus"), *cache = fuzz_path(fuzz_scratch(), "c.bin");
    if (mkdir(dir, 0700) || fuzz_write(dir, "a.txt", corpus[0], strlen(corpus[0])) ||
        fuzz_write(dir, "b.txt", corpus[1], strlen(corpus[1])))
        die(dir);
    speck_token_data d;
    if (speck_token_data_build(dir, "*.txt", v, 0.0, cache, &d)) die("token data");
    speck_token_data_free(&d);
    speck_vocab_free(v);
    seed_file("train_data", "cache", 1, true, cache);
    free(dir), free(cache);
    for (int i = 0; i < N_TEXTS; i++) {
        char name[32];
        snprintf(name, sizeof name, "text-%d", i);
        uint8_t pick = (uint8_t)(i * 7);
        seed("tokenizer_train", name, &pick, 1, TEXTS[i], strlen(TEXTS[i]));
    }
}

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: %s OUT_DIR\n", argv[0]);
        return 2;
    }
    fuzz_setup();
    g_out = argv[1];
    if (mkdir(g_out, 0755) && errno != EEXIST) die(g_out);
    models();
    gguf_misc();
    safetensors();
    configs();
    tokenizer_json();
    tokenize_texts();
    chats();
    train_data();
    printf("fuzz_seeds: %d seeds in %s\n", g_count, g_out);
    return 0;
}
