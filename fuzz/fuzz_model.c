// Fuzz target: loading a model from GGUF (hyper-parameters, tensor shapes and types, panel
// packing), and when it loads, forward passes (one token, then two), sampling from the logits
// and the training loader — on the kernel path the input's last byte picks.
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "fuzz_common.h"

static const char *g_isas[3];
static int g_n_isas;

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc, (void)argv;
    fuzz_setup();
    const char *best = speck_isa();
    static const char *const all[] = {"scalar", "avx2", "avx512"};
    for (int i = 0; i < 3; i++)
        if (speck_set_isa(all[i]) == 0) g_isas[g_n_isas++] = all[i];
    speck_set_isa(best);
    return 0;
}

static void run_model(speck_model *m, uint8_t pick) {
    const speck_hparams *hp = speck_model_hparams(m);
    FUZZ_CHECK(hp->n_vocab > 0 && hp->n_embd > 0 && hp->n_layer > 0 && hp->n_head > 0 &&
                   hp->n_head_kv > 0 && hp->head_dim > 0,
               "loaded hyper-parameters");
    (void)speck_model_bytes_per_token(m);
    (void)speck_model_weight_type(m);
    speck_ctx *c = speck_ctx_new_kv(m, 4, pick & 1 ? SPECK_TYPE_F16 : SPECK_TYPE_F32);
    FUZZ_CHECK(c != NULL, "context of 4 positions");
    float *logits = malloc(2 * (size_t)hp->n_vocab * sizeof *logits);
    if (!logits) abort();
    int32_t tok[2] = {(int32_t)(pick % (unsigned)hp->n_vocab), hp->n_vocab - 1};
    FUZZ_CHECK(speck_forward(c, 1, tok, NULL, NULL, NULL, 0, logits) == 0, "forward of 1 token");
    FUZZ_CHECK(speck_forward(c, 2, tok, NULL, NULL, NULL, 0, logits) == 0, "forward of 2 tokens");
    FUZZ_CHECK(speck_forward(c, 2, tok, NULL, NULL, NULL, 0, logits) != 0,
               "a full context must refuse more tokens");
    FUZZ_CHECK(speck_argmax(logits, hp->n_vocab) < hp->n_vocab, "argmax");
    // Logits of a damaged model may be inf or NaN; the sampler must still return a valid id.
    speck_sampler_params sp = speck_sampler_default();
    sp.temperature = 0.8f, sp.top_k = 5, sp.top_p = 0.9f, sp.min_p = 0.05f;
    sp.repeat_penalty = 1.1f, sp.repeat_last_n = 4;
    speck_sampler *s = speck_sampler_new(&sp, hp->n_vocab);
    FUZZ_CHECK(s != NULL, "sampler");
    speck_sampler_accept(s, tok[0]);
    int32_t id = speck_sampler_sample(s, logits + hp->n_vocab);
    FUZZ_CHECK(id >= 0 && id < hp->n_vocab, "sampled id %d of %d", id, hp->n_vocab);
    speck_sampler_free(s);
    free(logits);
    speck_ctx_free(c);
}

static void run_train(const char *path, uint8_t pick) {
    speck_train_model *tm = speck_train_model_load(path);
    if (!tm) return;
    const speck_train_config *cfg = speck_train_model_config(tm);
    int32_t in[2] = {0, (int32_t)(pick % (unsigned)cfg->n_vocab)}, tg[2] = {in[1], 0};
    float loss;
    if (cfg->n_ctx >= 2)
        FUZZ_CHECK(speck_train_step(tm, in, tg, 1, 2, 1.0f, &loss) == 0, "training step");
    speck_train_model_free(tm);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size == 0) return 0;
    const uint8_t pick = data[size - 1];
    char path[64];
    int fd = fuzz_memfile(data, size, path, sizeof path);
    if (fd < 0) return 0;
    const char *best = speck_isa();
    if (g_n_isas) speck_set_isa(g_isas[pick % g_n_isas]);
    const unsigned flags = (pick >> 2 & 3) == 1   ? SPECK_LOAD_NO_PANELS
                           : (pick >> 2 & 3) == 2 ? SPECK_LOAD_HUGEPAGES
                                                  : 0;
    speck_model *m = speck_model_load_ex(path, flags);
    if (m) {
        run_model(m, pick);
        speck_model_free(m);
        run_train(path, pick);
    }
    speck_set_isa(best);
    close(fd);
    return 0;
}
