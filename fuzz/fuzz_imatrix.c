// Fuzz target: the importance-matrix reader (llama.cpp's GGUF and legacy .dat imatrix formats,
// src/calib/imatrix.c) from memory; what it accepts must hold finite, non-negative weights and
// survive writing in both formats and reading back unchanged.
// (Written on branch quant-tools before fuzz/ reached main: add "imatrix" to
// SPECK_FUZZ_TARGETS in fuzz/CMakeLists.txt when merging.)
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz_common.h"

static char *g_gguf, *g_dat;

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc, (void)argv;
    fuzz_setup();
    g_gguf = fuzz_path(fuzz_scratch(), "im.gguf");
    g_dat = fuzz_path(fuzz_scratch(), "im.dat");
    return 0;
}

// Every entry of a has the same weights in b (float rounding of sum / count * ncall aside).
static void same_entries(const speck_imatrix *a, const speck_imatrix *b, const char *what) {
    FUZZ_CHECK(speck_imatrix_n_entries(a) == speck_imatrix_n_entries(b), "%s: entry count", what);
    for (int i = 0; i < speck_imatrix_n_entries(a); i++) {
        const char *name = speck_imatrix_entry_name(a, i);
        int64_t na, nb;
        const float *wa = speck_imatrix_get(a, name, &na), *wb = speck_imatrix_get(b, name, &nb);
        FUZZ_CHECK(wa && wb && na == nb, "%s: entry '%s' lost or resized", what, name);
        for (int64_t j = 0; j < na; j++)
            FUZZ_CHECK(fabsf(wa[j] - wb[j]) <= 1e-5f * fmaxf(1.0f, fabsf(wa[j])) ||
                           !isfinite(wa[j] * (float)speck_imatrix_count(a, name)),
                       "%s: '%s'[%lld] %g -> %g", what, name, (long long)j, (double)wa[j],
                       (double)wb[j]);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    speck_imatrix *im = speck_imatrix_parse(data, size, "fuzz input");
    if (!im) {
        FUZZ_CHECK(*speck_last_error() != 0, "rejected without a message");
        return 0;
    }
    for (int i = 0; i < speck_imatrix_n_entries(im); i++) {
        const char *name = speck_imatrix_entry_name(im, i);
        int64_t n;
        const float *w = speck_imatrix_get(im, name, &n);
        FUZZ_CHECK(name && *name && w && n >= 1, "entry %d", i);
        for (int64_t j = 0; j < n; j++)
            FUZZ_CHECK(w[j] >= 0 && !isnan(w[j]), "'%s'[%lld] = %g", name, (long long)j,
                       (double)w[j]);
    }
    if (speck_imatrix_save(im, g_gguf, false) == 0) {
        speck_imatrix *b = speck_imatrix_load(g_gguf);
        FUZZ_CHECK(b != NULL, "its own GGUF output does not load: %s", speck_last_error());
        same_entries(im, b, "GGUF round trip");
        speck_imatrix_free(b);
    }
    if (speck_imatrix_save(im, g_dat, true) == 0) {
        speck_imatrix *b = speck_imatrix_load(g_dat);
        FUZZ_CHECK(b != NULL, "its own .dat output does not load: %s", speck_last_error());
        same_entries(im, b, ".dat round trip");
        speck_imatrix_free(b);
    }
    speck_imatrix_free(im);
    return 0;
}
