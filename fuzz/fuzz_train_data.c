// Fuzz target: training data — a corpus of text files tokenized into train/validation streams,
// its token cache read back and batches sampled; or a damaged token cache. The first byte picks
// the mode: even, a corpus (NUL-separated files); odd, a cache file.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "fuzz_common.h"

static speck_vocab *g_vocab;
static char *g_corpus, *g_cache, *g_fixed, *g_fixed_cache;
static uint8_t g_key[8]; // the cache key of the fixed corpus (bytes 8..16 of its cache)

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc, (void)argv;
    fuzz_setup();
    g_vocab = fuzz_vocab_micro(FUZZ_VOCAB_BPE, "gpt-2", false);
    g_corpus = fuzz_path(fuzz_scratch(), "corpus");
    g_cache = fuzz_path(fuzz_scratch(), "corpus.cache");
    g_fixed = fuzz_path(fuzz_scratch(), "fixed");
    g_fixed_cache = fuzz_path(fuzz_scratch(), "fixed.cache");
    // A fixed corpus whose cache file the cache mode replaces: the key must match for the file
    // to be read at all, so the target writes it into every fuzzed cache.
    static const char text[] = "def hello(world):\n    return world + 1\n";
    speck_token_data d;
    if (mkdir(g_fixed, 0700) || fuzz_write(g_fixed, "a.txt", text, sizeof text - 1) ||
        speck_token_data_build(g_fixed, "*.txt", g_vocab, 0.0, g_fixed_cache, &d))
        abort();
    speck_token_data_free(&d);
    size_t n;
    uint8_t *c = fuzz_read(g_fixed_cache, &n);
    if (!c || n < 16) abort();
    memcpy(g_key, c + 8, 8);
    free(c);
    return 0;
}

static void check_data(const speck_token_data *d) {
    const int32_t nv = speck_vocab_n_tokens(g_vocab);
    for (int64_t i = 0; i < d->n_train; i++)
        FUZZ_CHECK(d->train[i] >= 0 && d->train[i] < nv, "train token %d", d->train[i]);
    for (int64_t i = 0; i < d->n_val; i++)
        FUZZ_CHECK(d->val[i] >= 0 && d->val[i] < nv, "validation token %d", d->val[i]);
    int32_t in[4], tg[4];
    for (int b = 0; b < 3; b++)
        if (speck_token_data_sample(d, 7, b, 0, b, 4, in, tg) == 0)
            for (int t = 0; t < 4; t++)
                FUZZ_CHECK(in[t] >= 0 && in[t] < nv && tg[t] >= 0 && tg[t] < nv, "sample");
}

static void corpus(fuzz_span rest, double val) {
    fuzz_remove(fuzz_scratch(), "corpus");
    unlink(g_cache);
    if (mkdir(g_corpus, 0700)) abort();
    char *sub = fuzz_path(g_corpus, "sub");
    if (mkdir(sub, 0700)) abort();
    static const char *const names[] = {"a.txt", "b.txt", "sub/c.txt", "d.md", "sub/e.txt"};
    for (int i = 0; i < 5 && rest.p; i++) {
        fuzz_span f = fuzz_split(&rest, 0);
        if (fuzz_write(g_corpus, names[i], f.p, f.n)) abort();
    }
    free(sub);
    speck_token_data d, again;
    if (speck_token_data_build(g_corpus, "*.txt", g_vocab, val, g_cache, &d)) return;
    FUZZ_CHECK(!d.from_cache, "first build came from a cache");
    check_data(&d);
    // The second build reads the cache: identical streams.
    FUZZ_CHECK(speck_token_data_build(g_corpus, "*.txt", g_vocab, val, g_cache, &again) == 0,
               "rebuild from the cache");
    FUZZ_CHECK(again.from_cache && again.n_train == d.n_train && again.n_val == d.n_val &&
                   !memcmp(again.train, d.train, (size_t)d.n_train * 4) &&
                   (!d.n_val || !memcmp(again.val, d.val, (size_t)d.n_val * 4)),
               "the cache gave different tokens");
    speck_token_data_free(&again);
    speck_token_data_free(&d);
}

static void cache(const uint8_t *data, size_t size) {
    uint8_t *c = malloc(size + 1);
    if (!c) abort();
    memcpy(c, data, size);
    if (size >= 16) memcpy(c + 8, g_key, 8);
    char tmp[] = "fixed.cache";
    if (fuzz_write(fuzz_scratch(), tmp, c, size)) abort();
    free(c);
    speck_token_data d;
    if (speck_token_data_build(g_fixed, "*.txt", g_vocab, 0.0, g_fixed_cache, &d) == 0) {
        check_data(&d);
        speck_token_data_free(&d);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size == 0) return 0;
    if (data[0] % 2)
        cache(data + 1, size - 1);
    else
        corpus((fuzz_span){data + 1, size - 1}, data[0] / 2 % 2 ? 0.5 : 0.0);
    return 0;
}
