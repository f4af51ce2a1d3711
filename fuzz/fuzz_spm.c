// Fuzz target: encoding and decoding arbitrary bytes with SentencePiece-style vocabularies
// (score-driven merges, byte fallback, the U+2581 space, special and user-defined tokens). The
// first byte picks the vocabulary and the add_special / parse_special flags, the rest is text.
#include <stdlib.h>

#include "fuzz_common.h"

#define N_SLOTS 8
static speck_vocab *g_vocab[N_SLOTS];
static int g_micro; // slots filled by micro vocabularies (always present)

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc, (void)argv;
    fuzz_setup();
    g_vocab[0] = fuzz_vocab_micro(FUZZ_VOCAB_SPM, NULL, true);
    g_vocab[1] = fuzz_vocab_micro(FUZZ_VOCAB_SPM, NULL, false);
    g_vocab[2] = fuzz_vocab_micro_hf(1);
    g_vocab[3] = fuzz_vocab_micro_hf(2);
    g_micro = 4;
    // A real SentencePiece vocabulary when ../shared is there; its slot falls back to a micro
    // one otherwise, so a saved input picks the same kind of vocabulary everywhere.
    g_vocab[4] = fuzz_vocab_shared("ggml-vocab-llama-spm.gguf");
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size == 0) return 0;
    const uint8_t sel = data[0];
    const int slot = sel % N_SLOTS;
    const speck_vocab *v = g_vocab[slot] ? g_vocab[slot] : g_vocab[slot % g_micro];
    fuzz_tokenize_check(v, (const char *)data + 1, size - 1, sel & 16, sel & 32, false);
    return 0;
}
