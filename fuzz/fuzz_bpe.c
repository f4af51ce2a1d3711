// Fuzz target: encoding and decoding arbitrary bytes with byte-level BPE vocabularies (every
// pre-tokenizer regex set speck knows, rank-driven merges, special and user-defined tokens),
// checking that decoding gives the text back where it must. The first byte picks the vocabulary
// and the add_special / parse_special flags, the rest is text.
#include <stdlib.h>

#include "fuzz_common.h"
#include "tokenizer/tokenizer_internal.h"

#define N_SLOTS 32
static speck_vocab *g_vocab[N_SLOTS];
static int g_micro; // slots filled by micro vocabularies (always present)

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc, (void)argv;
    fuzz_setup();
    // The micro vocabulary under each named pre-tokenizer (tokenizer.ggml.pre), and none.
    static const char *const pre[] = {
        "gpt-2",       "llama-bpe", "qwen2",       "deepseek-llm", "deepseek-coder",
        "deepseek-v3", "falcon",    "starcoder",   "tekken",       "gpt-4o",
        "viking",      "poro-chat", "chatglm-bpe", "no-such-name", NULL,
    };
    const int n_pre = (int)(sizeof pre / sizeof pre[0]);
    for (int i = 0; i < n_pre; i++)
        g_vocab[g_micro++] = fuzz_vocab_micro(FUZZ_VOCAB_BPE, pre[i], 0);
    g_vocab[g_micro++] = fuzz_vocab_micro_hf(0);
    // Real vocabularies when ../shared is there; their slots fall back to micro ones otherwise,
    // so a saved input picks the same kind of vocabulary everywhere.
    static const char *const real[] = {
        "ggml-vocab-gpt-2.gguf",    "ggml-vocab-starcoder.gguf",    "ggml-vocab-falcon.gguf",
        "ggml-vocab-mpt.gguf",      "ggml-vocab-deepseek-llm.gguf", "ggml-vocab-refact.gguf",
        "ggml-vocab-gpt-neox.gguf",
    };
    for (int i = 0; i < (int)(sizeof real / sizeof real[0]); i++)
        g_vocab[g_micro + i] = fuzz_vocab_shared(real[i]);
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size == 0) return 0;
    const uint8_t sel = data[0];
    const int slot = sel % N_SLOTS;
    const speck_vocab *v = g_vocab[slot] ? g_vocab[slot] : g_vocab[slot % g_micro];
    const bool add = sel & 64, parse = sel & 128;
    fuzz_tokenize_check(v, (const char *)data + 1, size - 1, add, parse,
                        !add && !parse && fuzz_vocab_round_trips(v));
    return 0;
}
