// Fuzz target: fine-tuning delta files (speck_delta_load: keys, dense tensors, sparse index
// streams, sign bits). A delta that loads is described, written back and re-read (the same
// counts), applied onto a micro model (fits or is refused) and, when dense, compressed.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "fuzz_common.h"

static char *g_base, *g_out, *g_again;

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc, (void)argv;
    fuzz_setup();
    g_base = fuzz_path(fuzz_scratch(), "delta-base.gguf");
    g_out = fuzz_path(fuzz_scratch(), "delta-out.gguf");
    g_again = fuzz_path(fuzz_scratch(), "delta-again.gguf");
    fuzz_model_spec spec = {"llama", SPECK_TYPE_F32, false, FUZZ_VOCAB_BPE, NULL, false, false};
    if (fuzz_micro_model(g_base, &spec, 3)) abort();
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    char path[256];
    int fd = fuzz_memfile(data, size, path, sizeof path);
    if (fd < 0) return 0;
    speck_delta *d = speck_delta_load(path);
    close(fd);
    if (!d) return 0;
    speck_delta_info a, b;
    speck_delta_get_info(d, &a);
    FUZZ_CHECK(a.n_stored <= a.n_elements && a.n_nonzero <= a.n_stored, "counts");
    if (speck_delta_save(d, g_again, SPECK_TYPE_F32) == 0) {
        speck_delta *e = speck_delta_load(g_again);
        FUZZ_CHECK(e != NULL, "a saved delta does not load: %s", speck_last_error());
        if (e) {
            speck_delta_get_info(e, &b);
            FUZZ_CHECK(a.n_tensors == b.n_tensors && a.n_elements == b.n_elements &&
                           a.n_stored == b.n_stored && a.method == b.method,
                       "saved delta reads back differently");
        }
        speck_delta_free(e);
        unlink(g_again);
    }
    if (a.n_elements <= (1 << 20)) {
        if (speck_delta_apply(g_base, d, 0.5f, -1, g_out) == 0) unlink(g_out);
        if (a.method == SPECK_DELTA_DENSE) speck_delta_dare(d, 0.5f, 1, 0);
    }
    speck_delta_free(d);
    return 0;
}
