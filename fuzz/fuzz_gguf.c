// Fuzz target: the GGUF reader (header, key/values, tensor records, data ranges), the value
// rendering of `speck info`, the vocabulary built from tokenizer.ggml.* keys, and its export to
// tokenizer.json (which speck must read back).
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "formats/gguf_internal.h"
#include "formats/hf_internal.h"
#include "fuzz_common.h"

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc, (void)argv;
    fuzz_setup();
    return 0;
}

// [p, p + n) must lie inside the file's bytes.
static void check_inside(const speck_gguf *g, const void *p, uint64_t n, const char *what) {
    const uint8_t *b = speck_gguf_bytes(g), *q = p;
    const size_t size = speck_gguf_file_size(g);
    FUZZ_CHECK(q >= b && (size_t)(q - b) <= size && n <= size - (size_t)(q - b),
               "%s: [%td, +%llu) outside the %zu-byte file", what, q - b, (unsigned long long)n,
               size);
}

static void walk_metadata(const speck_gguf *g) {
    char buf[512];
    for (int64_t i = 0; i < speck_gguf_n_kv(g); i++) {
        const char *key = speck_gguf_key(g, i);
        FUZZ_CHECK(key != NULL, "key %lld", (long long)i);
        FUZZ_CHECK(speck_gguf_find_key(g, key) <= i, "find_key('%s') past its first entry", key);
        speck_gguf_value_str(g, i, buf, sizeof buf, 8);
        FUZZ_CHECK(strlen(buf) < sizeof buf, "value_str overflow");
        speck_gguf_value_str(g, i, buf, 16, 3); // the shortest buffer it renders into
        speck_gguf_vtype t = speck_gguf_kv_type(g, i);
        if (t == SPECK_GGUF_STRING) {
            FUZZ_CHECK(speck_gguf_get_str(g, i) != NULL, "string key without a string");
        } else if (t == SPECK_GGUF_ARRAY) {
            const int64_t n = speck_gguf_arr_n(g, i);
            FUZZ_CHECK(n >= 0, "array count");
            if (speck_gguf_arr_type(g, i) == SPECK_GGUF_STRING) {
                for (int64_t j = 0; j < n && j < 4096; j++) {
                    uint64_t len;
                    const char *s = speck_gguf_arr_str(g, i, j, &len);
                    FUZZ_CHECK(s != NULL, "string %lld of %lld", (long long)j, (long long)n);
                    check_inside(g, s, len, "array string");
                }
            } else {
                const void *p = speck_gguf_arr_data(g, i);
                check_inside(g, p, (uint64_t)n * speck_gguf_vtype_size(speck_gguf_arr_type(g, i)),
                             "array data");
            }
        } else {
            (void)speck_gguf_get_int(g, i);
            (void)speck_gguf_get_float(g, i);
        }
    }
}

static void walk_tensors(const speck_gguf *g) {
    // Every tensor inside the file, aligned, and no two sharing a byte (pairs checked among the
    // first 256: inputs this small rarely hold more).
    const int64_t n = speck_gguf_n_tensors(g);
    for (int64_t i = 0; i < n; i++) {
        const speck_gguf_tensor *t = speck_gguf_tensor_at(g, i);
        FUZZ_CHECK(t && t->name && t->n_dims >= 1 && t->n_dims <= 4, "tensor %lld", (long long)i);
        check_inside(g, t->data, t->n_bytes, t->name);
        FUZZ_CHECK(t->offset % speck_gguf_alignment(g) == 0, "'%s' misaligned", t->name);
        FUZZ_CHECK(speck_gguf_find_tensor(g, t->name) == t, "duplicate name '%s'", t->name);
    }
    for (int64_t i = 0; i < n && i < 256; i++)
        for (int64_t j = i + 1; j < n && j < 256; j++) {
            const speck_gguf_tensor *a = speck_gguf_tensor_at(g, i),
                                    *b = speck_gguf_tensor_at(g, j);
            const uint8_t *pa = a->data, *pb = b->data;
            FUZZ_CHECK(!a->n_bytes || !b->n_bytes || pa + a->n_bytes <= pb || pb + b->n_bytes <= pa,
                       "tensors '%s' and '%s' overlap", a->name, b->name);
        }
}

static void check_vocab(const speck_gguf *g) {
    speck_vocab *v = speck_vocab_from_gguf(g);
    if (!v) return;
    static const char text[] = "Hello world! 123 <|im_start|>user\n\xe4\xb8\xad\xe6\x96\x87 "
                               "\xc3\xa9t\xff\xfe  <s>x</s>";
    fuzz_tokenize_check(v, text, sizeof text - 1, true, true, false);
    fuzz_tokenize_check(v, text, sizeof text - 1, false, false, false);
    const char *ct = speck_vocab_chat_template(v);
    if (ct) (void)speck_chat_template_detect(ct);
    // What speck exports it must read back.
    char *dir = fuzz_path(fuzz_scratch(), "export");
    fuzz_remove(fuzz_scratch(), "export");
    if (mkdir(dir, 0700) == 0 && hf_tokenizer_from_gguf(g, dir, 64) == 0) {
        speck_vocab *back = speck_vocab_load(dir);
        FUZZ_CHECK(back != NULL, "exported tokenizer.json does not load back");
        FUZZ_CHECK(speck_vocab_n_tokens(back) <= speck_vocab_n_tokens(v) + 1,
                   "exported %d tokens, read back %d", speck_vocab_n_tokens(v),
                   speck_vocab_n_tokens(back));
        speck_vocab_free(back);
    }
    free(dir);
    speck_vocab_free(v);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    char path[64];
    int fd = fuzz_memfile(data, size, path, sizeof path);
    if (fd < 0) return 0;
    speck_gguf *g = speck_gguf_open(path);
    if (g) {
        FUZZ_CHECK(speck_gguf_file_size(g) == size, "file size");
        walk_metadata(g);
        walk_tensors(g);
        check_vocab(g);
        speck_gguf_close(g);
    } else {
        FUZZ_CHECK(speck_last_error()[0] != 0, "failure without a message");
    }
    close(fd);
    return 0;
}
