// Fuzz target: adapters and fine-tuning data. The first byte picks the mode: 0, JSONL / text
// fine-tuning data (speck_ft_data_parse, chatml); 1, a LoRA adapter GGUF (speck_lora_load, then
// checked against, attached to and run on a micro model); 2, a PEFT directory (the bytes before
// the first NUL are adapter_config.json, the rest adapter_model.safetensors) imported for the
// micro model.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "fuzz_common.h"

static speck_vocab *g_vocab;
static speck_model *g_model;
static char *g_peft;

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc, (void)argv;
    fuzz_setup();
    g_vocab = fuzz_vocab_micro(FUZZ_VOCAB_BPE, "gpt-2", false);
    char *mp = fuzz_path(fuzz_scratch(), "adapter-base.gguf");
    fuzz_model_spec spec = {"llama", SPECK_TYPE_F32, false, FUZZ_VOCAB_BPE, NULL, false, false};
    if (fuzz_micro_model(mp, &spec, 3) || !(g_model = speck_model_load(mp))) abort();
    free(mp);
    g_peft = fuzz_path(fuzz_scratch(), "peft");
    return 0;
}

static void data(const uint8_t *p, size_t n) {
    speck_ft_data d;
    if (speck_ft_data_parse((const char *)p, n, "fuzz.jsonl", g_vocab, "chatml", &d)) return;
    const int32_t nv = speck_vocab_n_tokens(g_vocab);
    FUZZ_CHECK(d.n_examples > 0 && d.start[0] == 0 && d.start[d.n_examples] == d.n, "examples");
    for (int i = 0; i < d.n_examples; i++)
        FUZZ_CHECK(d.start[i] < d.start[i + 1] && d.train[d.start[i]] == 0, "example %d", i);
    for (int64_t i = 0; i < d.n; i++)
        FUZZ_CHECK(d.tok[i] >= 0 && d.tok[i] < nv && d.train[i] <= 1, "token %lld",
                   (long long)i);
    speck_ft_data_free(&d);
}

// An adapter that loaded: it fits the micro model or is refused; if it fits it runs, and its
// file round trip gives the same numbers.
static void use(speck_lora *a) {
    if (speck_lora_check(a, g_model) == 0) {
        FUZZ_CHECK(speck_model_lora_add((speck_model *)g_model, a, 0.5f) == 0, "attach");
        speck_ctx *c = speck_ctx_new(g_model, 16);
        float logits[4096];
        int32_t tok[2] = {1, 2};
        if (c && speck_model_hparams(g_model)->n_vocab * 2 <= 4096)
            speck_forward(c, 2, tok, NULL, NULL, NULL, 0, logits);
        speck_ctx_free(c);
        speck_model_lora_clear((speck_model *)g_model);
    }
    char *p = fuzz_path(fuzz_scratch(), "again.gguf");
    if (speck_lora_save(a, p) == 0) {
        speck_lora *b = speck_lora_load(p);
        FUZZ_CHECK(b && speck_lora_n_params(b) == speck_lora_n_params(a) &&
                       !memcmp(speck_lora_params(a), speck_lora_params(b),
                               (size_t)speck_lora_n_params(a) * sizeof(float)),
                   "saved adapter reads back differently");
        speck_lora_free(b);
    }
    free(p);
}

static void adapter(const uint8_t *p, size_t n) {
    char path[256];
    int fd = fuzz_memfile(p, n, path, sizeof path);
    if (fd < 0) return;
    speck_lora *a = speck_lora_load(path);
    close(fd);
    if (a) use(a);
    speck_lora_free(a);
}

static void peft(fuzz_span rest) {
    fuzz_remove(fuzz_scratch(), "peft");
    if (mkdir(g_peft, 0700)) abort();
    fuzz_span cfg = fuzz_split(&rest, 0);
    if (fuzz_write(g_peft, "adapter_config.json", cfg.p, cfg.n) ||
        fuzz_write(g_peft, "adapter_model.safetensors", rest.p ? rest.p : (const uint8_t *)"",
                   rest.p ? rest.n : 0))
        abort();
    speck_lora *a = speck_lora_import_peft(g_peft, g_model);
    if (a) {
        FUZZ_CHECK(speck_lora_check(a, g_model) == 0, "an imported adapter does not fit");
        use(a);
    }
    speck_lora_free(a);
}

int LLVMFuzzerTestOneInput(const uint8_t *data_, size_t size) {
    if (size == 0) return 0;
    switch (data_[0] % 3) {
    case 0: data(data_ + 1, size - 1); break;
    case 1: adapter(data_ + 1, size - 1); break;
    default: peft((fuzz_span){data_ + 1, size - 1}); break;
    }
    return 0;
}
