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
        {"llama-q4_1", {"llama", SPECK_TYPE_Q4_1, false, 0, NULL, false, false}},
        {"llama-q5_0", {"llama", SPECK_TYPE_Q5_0, false, 0, NULL, false, false}},
        {"qwen2-q5_1", {"qwen2", SPECK_TYPE_Q5_1, false, 0, NULL, false, false}},
        {"llama-iq4_nl-tied", {"llama", SPECK_TYPE_IQ4_NL, true, 0, NULL, false, false}},
        {"llama-q5_0-nonfinite", {"llama", SPECK_TYPE_Q5_0, false, 0, NULL, false, true}},
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
    // A mixture of experts (Mixtral's layout: llama + router + stacked experts), small: the
    // forward's routing and the training step's experts (run_train) see fuzzed files too.
    speck_preset moe = *speck_preset_find("tiny-mixtral");
    moe.name = "fuzz-mixtral", moe.n_vocab = 260, moe.n_embd = 32, moe.n_layer = 1;
    moe.n_head = 2, moe.n_head_kv = 1, moe.n_ff = moe.n_ff_exp = 32, moe.n_ctx_train = 64;
    if (speck_init_model(&moe, SPECK_TYPE_Q8_0, 5, tmp)) die("moe model");
    seed_file("model", "mixtral-q8_0", 0, false, tmp);
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
    // Every type speck computes with, in rows of 256 values (the K-quants' super-block).
    static uint8_t blocks[2 * 256 * 4];
    for (int t = 0; t < 64; t++) {
        const char *tn = speck_type_name(t);
        if (!tn) continue;
        char name[32];
        snprintf(name, sizeof name, "t.%s", tn);
        const int64_t ne[2] = {256, 2};
        rc |= speck_gguf_add_tensor(w, name, (speck_type)t, 2, ne, blocks);
    }
    if (rc || speck_gguf_writer_save(w, tmp)) die("all-types gguf");
    speck_gguf_writer_free(w);
    seed_file("gguf", "all-types", 0, false, tmp);
    free(tmp);
}

// Importance matrices collected on a micro model, in both of llama.cpp's formats.
static void imatrices(void) {
    char *mp = fuzz_path(fuzz_scratch(), "im-model.gguf"), *ip = fuzz_path(fuzz_scratch(), "im");
    const fuzz_model_spec spec = {"llama", SPECK_TYPE_F32, false, 0, NULL, false, false};
    if (fuzz_micro_model(mp, &spec, 7)) die("imatrix model");
    speck_model *m = speck_model_load(mp);
    if (!m) die(mp);
    int32_t tok[40];
    for (int i = 0; i < 40; i++) tok[i] = (i * 7) % FUZZ_VOCAB_BARE;
    for (int out = 0; out < 2; out++) {
        speck_imatrix *im = speck_imatrix_compute(m, tok, 40, 16, out, "seed", NULL, NULL);
        if (!im) die("imatrix compute");
        for (int dat = 0; dat < 2; dat++) {
            if (speck_imatrix_save(im, ip, dat)) die("imatrix save");
            char name[32];
            snprintf(name, sizeof name, "%s%s", dat ? "dat" : "gguf", out ? "-output" : "");
            seed_file("imatrix", name, 0, false, ip);
        }
        speck_imatrix_free(im);
    }
    speck_model_free(m);
    free(mp);
    free(ip);
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

// Request bodies of the server's API (selector byte: 0 completion, 1 chat, 2 tokenize,
// 3 detokenize, 4 stop scan).
static void serve_api(void) {
    static const struct {
        uint8_t sel;
        const char *body;
    } B[] = {
        {0, "{\"model\":\"m\",\"prompt\":\"def f(x):\",\"max_tokens\":8,\"temperature\":0.7,"
            "\"top_p\":0.9,\"seed\":3,\"stop\":[\"\\n\\n\",\"return\"],\"logprobs\":1}"},
        {0, "{\"prompt\":[1,2,3],\"stream\":true,\"stream_options\":{\"include_usage\":true}}"},
        {0, "{\"prompt\":\"a\",\"max_tokens\":-1}"},
        {1, "{\"messages\":[{\"role\":\"system\",\"content\":\"Be brief.\"},{\"role\":\"user\","
            "\"content\":[{\"type\":\"text\",\"text\":\"hi\"}]}],\"max_completion_tokens\":4,"
            "\"logprobs\":true,\"stream\":true}"},
        {1, "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"response_format\":"
            "{\"type\":\"json_object\"}}"},
        {2, "{\"content\":\"hello world\",\"add_special\":true}"},
        {3, "{\"tokens\":[1,2,3,40]}"},
    };
    for (size_t i = 0; i < sizeof B / sizeof B[0]; i++) {
        char name[32];
        snprintf(name, sizeof name, "body-%zu", i);
        seed("serve_api", name, &B[i].sel, 1, B[i].body, strlen(B[i].body));
    }
    const char *stop[] = {"hello wor", "ld", "xyz", "\n\n"};
    seed_fields("serve_api", "stop-0", 4, stop, 4);
}

// GBNF grammars (selector 0) and JSON Schemas (selector 1) for fuzz_grammar.
static void grammars(void) {
    static const struct {
        uint8_t sel;
        const char *text;
    } G[] = {
        {0, "root ::= (\"yes\" | \"no\") \"!\""},
        {2, "# list\nroot ::= (\"- \" item)+\nitem ::= [^\\n]+ \"\\n\""},
        {4, "root ::= [a-z]{2,5} ( [0-9]? | \"\\u00e9\" ) .*"},
        {0, "root ::= obj\nobj ::= \"{\" ( str \":\" obj | str )* \"}\"\nstr ::= \"'\" [^']* \"'\""},
        {1, "{\"type\":\"object\",\"properties\":{\"a\":{\"type\":\"string\",\"maxLength\":3},"
            "\"b\":{\"type\":[\"integer\",\"null\"]}},\"required\":[\"a\"]}"},
        {3, "{\"$defs\":{\"n\":{\"type\":\"array\",\"items\":{\"$ref\":\"#/$defs/n\"},"
            "\"maxItems\":2}},\"anyOf\":[{\"$ref\":\"#/$defs/n\"},{\"enum\":[1,\"x\",null]}]}"},
        {5, "{\"type\":\"array\",\"items\":{\"const\":true},\"minItems\":1}"},
    };
    for (size_t i = 0; i < sizeof G / sizeof G[0]; i++) {
        char name[32];
        snprintf(name, sizeof name, "%s-%zu", G[i].sel & 1 ? "schema" : "gbnf", i);
        seed("grammar", name, &G[i].sel, 1, G[i].text, strlen(G[i].text));
    }
}

// Fine-tuning data lines, a LoRA adapter of the micro model and its PEFT directory.
static void adapters(void) {
    static const char jl[] =
        "{\"text\": \"def f(x):\\n    return x\\n\"}\n"
        "{\"prompt\": \"def add(a, b):\\n\", \"completion\": \"    return a + b\\n\"}\n"
        "{\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}, {\"role\": "
        "\"assistant\", \"content\": \"hello\"}]}\n";
    uint8_t pick = 0;
    seed("adapter", "jsonl", &pick, 1, jl, strlen(jl));
    seed("adapter", "text", &pick, 1, "print('hello')\n", 15);
    char *mp = fuzz_path(fuzz_scratch(), "lora-base.gguf");
    char *ap = fuzz_path(fuzz_scratch(), "lora.gguf"), *dir = fuzz_path(fuzz_scratch(), "lora-peft");
    fuzz_model_spec spec = {"llama", SPECK_TYPE_F32, false, FUZZ_VOCAB_BPE, NULL, false, false};
    speck_model *m = fuzz_micro_model(mp, &spec, 3) ? NULL : speck_model_load(mp);
    unsigned targets;
    speck_lora *a = NULL;
    if (!m || speck_lora_parse_targets("q,k,v,o,gate,up,down", &targets) ||
        !(a = speck_lora_new(m, 2, 4.0f, targets, 1)) || speck_lora_save(a, ap) ||
        speck_lora_export_peft(a, m, dir))
        die("adapter seeds");
    seed_file("adapter", "lora", 1, true, ap);
    size_t nc, ns;
    char *c1 = fuzz_path(dir, "adapter_config.json"), *c2 = fuzz_path(dir, "adapter_model.safetensors");
    uint8_t *cfg = fuzz_read(c1, &nc), *st = fuzz_read(c2, &ns);
    uint8_t *both = malloc(nc + 1 + ns);
    if (!cfg || !st || !both) die("peft seed");
    memcpy(both, cfg, nc);
    both[nc] = 0;
    memcpy(both + nc + 1, st, ns);
    pick = 2;
    seed("adapter", "peft", &pick, 1, both, nc + 1 + ns);
    unlink(c1), unlink(c2), rmdir(dir), unlink(mp);
    free(both), free(cfg), free(st), free(c1), free(c2), free(mp), free(ap), free(dir);
    speck_lora_free(a);
    speck_model_free(m);
}

// Deltas between two micro models of the same shapes: dense, DARE (gap-coded and bitmap
// positions), DAREx-q, ComPEFT.
static void deltas(void) {
    char *b = fuzz_path(fuzz_scratch(), "delta-b.gguf"), *t = fuzz_path(fuzz_scratch(), "delta-t.gguf");
    char *o = fuzz_path(fuzz_scratch(), "delta.gguf");
    fuzz_model_spec spec = {"llama", SPECK_TYPE_F32, false, FUZZ_VOCAB_BPE, NULL, false, false};
    if (fuzz_micro_model(b, &spec, 3) || fuzz_micro_model(t, &spec, 4)) die("delta models");
    static const char *names[] = {"dense", "dare90", "dare50", "darexq", "compeft"};
    for (int k = 0; k < 5; k++) {
        speck_delta *d = speck_delta_extract(b, t, NULL);
        int err = !d;
        if (!err && k == 1) err = speck_delta_dare(d, 0.9f, 1, 0);
        if (!err && k == 2) err = speck_delta_dare(d, 0.5f, 2, 0);
        if (!err && k == 3) err = speck_delta_dare(d, 0.99f, 3, 10.0f);
        if (!err && k == 4) err = speck_delta_compeft(d, 0.1f, 0);
        if (err || speck_delta_save(d, o, k ? SPECK_TYPE_BF16 : SPECK_TYPE_F16)) die("delta seed");
        speck_delta_free(d);
        seed_file("delta", names[k], 0, false, o);
    }
    unlink(b), unlink(t);
    free(b), free(t), free(o);
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
    imatrices();
    safetensors();
    configs();
    tokenizer_json();
    tokenize_texts();
    chats();
    train_data();
    serve_api();
    grammars();
    adapters();
    deltas();
    printf("fuzz_seeds: %d seeds in %s\n", g_count, g_out);
    return 0;
}
