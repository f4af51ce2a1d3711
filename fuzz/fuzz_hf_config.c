// Fuzz target: a Hugging Face config.json, converted (with a fixed micro checkpoint and
// tokenizer beside it) to GGUF as `speck convert` does, then loaded and run for one token. The
// first byte picks the checkpoint (Llama / Qwen2 layout, dtype) and the output type.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "fuzz_common.h"

static char *g_dir[4], *g_out;

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc, (void)argv;
    fuzz_setup();
    g_out = fuzz_path(fuzz_scratch(), "converted.gguf");
    static const speck_type dt[4] = {SPECK_TYPE_F16, SPECK_TYPE_BF16, SPECK_TYPE_F32,
                                     SPECK_TYPE_F16};
    const int nv = fuzz_micro_tokenizer_n(0);
    char *tj = fuzz_micro_tokenizer_json(0), *tc = fuzz_micro_tokenizer_config(0);
    for (int k = 0; k < 4; k++) {
        char name[16];
        snprintf(name, sizeof name, "hf%d", k);
        g_dir[k] = fuzz_path(fuzz_scratch(), name);
        if (mkdir(g_dir[k], 0700)) abort();
        size_t n;
        uint8_t *st = fuzz_micro_safetensors(k == 3, nv, dt[k], 0, 1, &n);
        if (fuzz_write(g_dir[k], "model.safetensors", st, n) ||
            fuzz_write(g_dir[k], "tokenizer.json", tj, strlen(tj)) ||
            fuzz_write(g_dir[k], "tokenizer_config.json", tc, strlen(tc)))
            abort();
        free(st);
    }
    free(tj), free(tc);
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size == 0) return 0;
    const uint8_t pick = data[0];
    const char *dir = g_dir[pick % 4];
    if (fuzz_write(dir, "config.json", data + 1, size - 1)) abort();
    static const int types[] = {-1, SPECK_TYPE_Q8_0, SPECK_TYPE_Q4_0, SPECK_TYPE_BF16};
    fuzz_convert_and_run(dir, g_out, types[pick / 4 % 4]);
    return 0;
}
