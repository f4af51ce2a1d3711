// Fuzz target: chat templates — recognising a model's template source and rendering fuzzed
// conversations in every built-in format, then tokenizing the prompt with special tokens parsed
// as `speck chat` does. Input: a flags byte, then NUL-separated fields: the template source (or
// a format name), then role, content, role, content, ...
#include <stdlib.h>
#include <string.h>

#include "fuzz_common.h"

#define MAX_MSGS 16
static speck_vocab *g_bpe, *g_spm;

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc, (void)argv;
    fuzz_setup();
    g_bpe = fuzz_vocab_micro(FUZZ_VOCAB_BPE, "llama-bpe", false);
    g_spm = fuzz_vocab_micro(FUZZ_VOCAB_SPM, NULL, true);
    return 0;
}

static void render(const char *name, const speck_chat_msg *m, int n, bool gen, bool spm) {
    int64_t need = speck_chat_apply(name, m, n, gen, NULL, 0);
    FUZZ_CHECK(need >= 0, "size query for %s", name);
    char *buf = malloc((size_t)need + 1);
    if (!buf) abort();
    FUZZ_CHECK(speck_chat_apply(name, m, n, gen, buf, need + 1) == need && buf[need] == 0,
               "render %s into an exact buffer", name);
    char small[6];
    FUZZ_CHECK(speck_chat_apply(name, m, n, gen, small, sizeof small) == need &&
                   small[need < 5 ? need : 5] == 0,
               "render %s into a short buffer", name);
    FUZZ_CHECK(need < 5 || !memcmp(small, buf, 5), "short buffer holds the prompt's start");
    fuzz_tokenize_check(spm ? g_spm : g_bpe, buf, strlen(buf), false, true, false);
    free(buf);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size == 0) return 0;
    const uint8_t flags = data[0];
    fuzz_span rest = {data + 1, size - 1};
    char *src = fuzz_strdup(fuzz_split(&rest, 0));
    char *fields[2 * MAX_MSGS];
    speck_chat_msg msgs[MAX_MSGS];
    int n = 0;
    while (rest.p && n < MAX_MSGS) {
        fields[2 * n] = fuzz_strdup(fuzz_split(&rest, 0));
        fields[2 * n + 1] = fuzz_strdup(fuzz_split(&rest, 0));
        msgs[n] = (speck_chat_msg){fields[2 * n], fields[2 * n + 1]};
        n++;
    }
    const char *detected = speck_chat_template_detect(src);
    const char *named = speck_chat_template_name(src);
    FUZZ_CHECK(!detected || speck_chat_template_name(detected), "detected an unknown format");
    const char *const *all = speck_chat_templates();
    int n_all = 0;
    while (all[n_all]) n_all++;
    const bool gen = flags & 1, spm = flags & 2;
    if (detected) render(detected, msgs, n, gen, spm);
    if (named) render(named, msgs, n, gen, spm);
    render(all[(flags >> 2) % n_all], msgs, n, gen, spm);
    if (!named) // an unknown name is an error, not a crash
        FUZZ_CHECK(speck_chat_apply(src, msgs, n, gen, NULL, 0) < 0, "unknown name '%s'", src);
    for (int i = 0; i < 2 * n; i++) free(fields[i]);
    free(src);
    return 0;
}
