// Fuzz target: the BPE tokenizer trainer (`speck tokenizer-train`) on arbitrary text: its
// vocabulary must save, load back and encode-decode the text it was trained on exactly. The
// first byte picks the vocabulary size, the number of specials and the minimum pair frequency.
#include <stdlib.h>
#include <unistd.h>

#include "fuzz_common.h"

static char *g_trained;

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc, (void)argv;
    fuzz_setup();
    g_trained = fuzz_path(fuzz_scratch(), "trained.gguf");
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size == 0) return 0;
    const uint8_t pick = data[0];
    const char *text = (const char *)data + 1;
    const size_t n = size - 1, half = n / 2;
    speck_bpe_trainer *t = speck_bpe_trainer_new();
    if (!t) abort();
    // In two parts, as the CLI adds one file at a time.
    if (speck_bpe_trainer_add(t, text, half) == 0 &&
        speck_bpe_trainer_add(t, text + half, n - half) == 0) {
        static const char *const specials[] = {"<|endoftext|>", "<|pad|>"};
        // A few merges only: each scans the trainer's whole 64k-entry pair table, which the
        // coverage instrumentation makes the bulk of an execution.
        speck_bpe_train_params p = {256 + 2 + pick % 8, specials, 1 + pick / 8 % 2,
                                    1 + pick / 16 % 2};
        if (speck_bpe_trainer_save(t, &p, g_trained) == 0) {
            speck_vocab *v = speck_vocab_load(g_trained);
            FUZZ_CHECK(v != NULL, "the trained vocabulary does not load");
            fuzz_tokenize_check(v, text, n, false, false, fuzz_vocab_round_trips(v));
            speck_vocab_free(v);
            unlink(g_trained);
        } else {
            FUZZ_CHECK(speck_last_error()[0] != 0, "failure without a message");
        }
    }
    speck_bpe_trainer_free(t);
    return 0;
}
