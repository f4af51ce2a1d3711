// Fuzz target: safetensors files (header JSON, dtypes, shapes, data offsets), sharded checkpoint
// indexes, and the conversion of a fuzzed checkpoint to GGUF that `speck convert` and loading a
// Hugging Face directory run. The first byte picks the mode: 0 a .safetensors file, 1 an index
// over two fixed shards, 2 the model.safetensors of a directory converted and then loaded.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "fuzz_common.h"

static char *g_index_dir, *g_conv_dir, *g_out;
static volatile unsigned g_sink; // keeps the reads of every tensor byte

static void put(const char *dir, const char *name, const void *p, size_t n) {
    if (fuzz_write(dir, name, p, n)) abort();
}

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc, (void)argv;
    fuzz_setup();
    g_index_dir = fuzz_path(fuzz_scratch(), "index");
    g_conv_dir = fuzz_path(fuzz_scratch(), "convert");
    g_out = fuzz_path(fuzz_scratch(), "converted.gguf");
    if (mkdir(g_index_dir, 0700) || mkdir(g_conv_dir, 0700)) abort();
    for (int s = 0; s < 2; s++) {
        char name[64];
        snprintf(name, sizeof name, "model-%05d-of-00002.safetensors", s + 1);
        size_t n;
        uint8_t *b = fuzz_micro_safetensors(false, 16, SPECK_TYPE_F16, s, 2, &n);
        put(g_index_dir, name, b, n);
        free(b);
    }
    const int nv = fuzz_micro_tokenizer_n(0);
    char *cfg = fuzz_micro_config_json(false, nv, NULL), *tj = fuzz_micro_tokenizer_json(0),
         *tc = fuzz_micro_tokenizer_config(0);
    put(g_conv_dir, "config.json", cfg, strlen(cfg));
    put(g_conv_dir, "tokenizer.json", tj, strlen(tj));
    put(g_conv_dir, "tokenizer_config.json", tc, strlen(tc));
    free(cfg), free(tj), free(tc);
    return 0;
}

static void walk(const speck_st *s) {
    unsigned sum = 0;
    for (int64_t i = 0; i < speck_st_n_tensors(s); i++) {
        const speck_st_tensor *t = speck_st_tensor_at(s, i);
        FUZZ_CHECK(t && t->name && t->n_dims >= 0 && t->n_dims <= 8, "tensor %lld", (long long)i);
        FUZZ_CHECK(speck_st_find(s, t->name) == t, "lookup of '%s'", t->name);
        int64_t n = 1;
        for (int d = 0; d < t->n_dims; d++) n *= t->shape[d];
        FUZZ_CHECK(n == t->n_elements, "'%s': element count", t->name);
        FUZZ_CHECK(t->n_bytes == (size_t)n * (t->type == SPECK_TYPE_F32 ? 4 : 2), "'%s': bytes",
                   t->name);
        // Reading every byte: a range past the mapping faults.
        const uint8_t *p = t->data;
        for (size_t k = 0; k < t->n_bytes; k++) sum += p[k];
    }
    g_sink += sum;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size == 0) return 0;
    const uint8_t mode = data[0] % 3, pick = data[0] / 3;
    data++, size--;
    if (mode == 0) {
        char path[64];
        int fd = fuzz_memfile(data, size, path, sizeof path);
        if (fd < 0) return 0;
        speck_st *s = speck_st_open(path);
        if (s) {
            walk(s);
            speck_st_close(s);
        }
        close(fd);
    } else if (mode == 1) {
        put(g_index_dir, "model.safetensors.index.json", data, size);
        speck_st *s = speck_st_open(g_index_dir);
        if (s) {
            walk(s);
            speck_st_close(s);
        }
    } else {
        static const int types[] = {-1, SPECK_TYPE_F32, SPECK_TYPE_Q8_0, SPECK_TYPE_Q4_0};
        put(g_conv_dir, "model.safetensors", data, size);
        fuzz_convert_and_run(g_conv_dir, g_out, types[pick % 4]);
    }
    return 0;
}
