// Fuzz target: a Hugging Face tokenizer.json (and, after a NUL byte, a tokenizer_config.json)
// loaded into a vocabulary, used to encode and decode, and converted to GGUF tokenizer keys as
// `speck convert` does — which speck must read back.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "formats/hf_internal.h"
#include "fuzz_common.h"

static char *g_dir, *g_json, *g_gguf;

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc, (void)argv;
    fuzz_setup();
    g_dir = fuzz_path(fuzz_scratch(), "tok");
    g_json = fuzz_path(g_dir, "tokenizer.json");
    g_gguf = fuzz_path(fuzz_scratch(), "vocab.gguf");
    fuzz_tokenize_may_fail = true;
    if (mkdir(g_dir, 0700)) abort();
    return 0;
}

static void convert_back(const speck_vocab *v) {
    speck_gguf_writer *w = speck_gguf_writer_new();
    if (!w) abort();
    const int32_t n = speck_vocab_n_tokens(v);
    if (speck_gguf_set_str(w, "general.architecture", "llama")) abort();
    if (hf_tokenizer_to_gguf(w, g_dir, n) == 0 && speck_gguf_writer_save(w, g_gguf) == 0) {
        speck_vocab *back = speck_vocab_load(g_gguf);
        FUZZ_CHECK(back != NULL, "converted tokenizer keys do not load back");
        FUZZ_CHECK(speck_vocab_n_tokens(back) == n, "%d tokens converted, %d read back", n,
                   speck_vocab_n_tokens(back));
        speck_vocab_free(back);
        unlink(g_gguf);
    }
    speck_gguf_writer_free(w);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    fuzz_span rest = {data, size};
    fuzz_span tj = fuzz_split(&rest, 0);
    if (fuzz_write(g_dir, "tokenizer.json", tj.p, tj.n)) abort();
    if (rest.p) {
        if (fuzz_write(g_dir, "tokenizer_config.json", rest.p, rest.n)) abort();
    } else {
        fuzz_remove(g_dir, "tokenizer_config.json");
    }
    speck_vocab *v = speck_vocab_load(g_json);
    if (!v) {
        FUZZ_CHECK(speck_last_error()[0] != 0, "failure without a message");
        return 0;
    }
    static const char text[] = "Hello world! 123 <|im_start|>user\n\xe4\xb8\xad\xe6\x96\x87 "
                               "\xc3\xa9t\xff\xfe  <s>x</s> <tool>";
    fuzz_tokenize_check(v, text, sizeof text - 1, true, true, false);
    fuzz_tokenize_check(v, text, sizeof text - 1, false, false, false);
    const char *ct = speck_vocab_chat_template(v);
    if (ct) (void)speck_chat_template_detect(ct);
    convert_back(v);
    speck_vocab_free(v);
    return 0;
}
