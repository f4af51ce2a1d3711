// Fuzz target: constrained output (src/grammar/) — GBNF text through speck_grammar_parse, or a
// JSON Schema through speck_json_schema_to_gbnf, then a matcher over a micro vocabulary driven
// for a few steps. Input: a selector byte (bit 0: 0 GBNF, 1 JSON Schema; the other bits pick
// which allowed token to take at each step), then the text.
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz_common.h"

static speck_vocab *g_vocab;
static speck_token_trie *g_trie;

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc, (void)argv;
    fuzz_setup();
    g_vocab = fuzz_vocab_micro(FUZZ_VOCAB_BPE, "llama-bpe", false);
    g_trie = g_vocab ? speck_token_trie_new(g_vocab) : NULL;
    FUZZ_CHECK(g_trie != NULL, "token trie: %s", speck_last_error());
    return 0;
}

// A few steps: the mask and the matcher agree on every token; take one of the allowed.
static void drive(speck_grammar *g, unsigned pick) {
    speck_gmatch *m = speck_gmatch_new(g, g_trie);
    if (!m) return; // too ambiguous: refused with an error
    const int n = speck_vocab_n_tokens(g_vocab);
    float *lg = malloc((size_t)n * sizeof *lg);
    FUZZ_CHECK(lg != NULL, "out of memory");
    for (int step = 0; step < 6 && !speck_gmatch_done(m); step++) {
        for (int i = 0; i < n; i++) lg[i] = 0.0f;
        int n_ok = speck_gmatch_mask(m, lg), seen = 0, take = -1;
        for (int32_t i = 0; i < n; i++) {
            const bool allowed = lg[i] == 0.0f;
            FUZZ_CHECK(speck_gmatch_check(m, &i, 1) == (allowed ? 1 : 0),
                       "token %d: mask says %d, the matcher disagrees", i, allowed);
            if (allowed && (take < 0 || (unsigned)seen++ == pick % 7)) take = i;
        }
        FUZZ_CHECK(n_ok >= 0, "mask failed");
        if (take < 0) break;
        FUZZ_CHECK(speck_gmatch_accept(m, take) == 0, "an allowed token %d was rejected", take);
        pick = pick * 31 + 7;
    }
    free(lg);
    speck_gmatch_free(m);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 1 || size > 4096) return 0;
    const uint8_t sel = data[0];
    const char *text = (const char *)data + 1;
    const size_t len = size - 1;
    speck_grammar *g;
    if (sel & 1) {
        char *gbnf = speck_json_schema_to_gbnf(text, len);
        if (!gbnf) return 0;
        g = speck_grammar_parse(gbnf, strlen(gbnf));
        // a schema that converts must give a grammar that parses (or is left-recursive:
        // a schema whose $ref reaches itself before any character)
        FUZZ_CHECK(g || strstr(speck_last_error(), "left-recursive"),
                   "converted schema does not parse: %s\n%.2000s", speck_last_error(), gbnf);
        free(gbnf);
    } else {
        g = speck_grammar_parse(text, len);
    }
    if (!g) return 0;
    drive(g, sel >> 1);
    speck_grammar_free(g);
    return 0;
}
