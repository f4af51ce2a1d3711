// Cross-check tool (not built by CMake, not a test): llama.cpp's logits for a token sequence, in
// tests/forward_dump's format (raw little-endian f32, (tokens, n_vocab)), so bench/compare_logits.py
// and bench/crosscheck_llamacpp.py can put llama.cpp, speck and the PyTorch reference side by side
// on the same GGUF file. f32 KV cache, so only the weights' arithmetic differs.
//
//   gcc -O2 -I$LLAMA/include -I$LLAMA/ggml/include bench/llamacpp_logits.c \
//       -L$LLAMA/build/bin -lllama -Wl,-rpath,$LLAMA/build/bin -o /tmp/llamacpp_logits
//   llamacpp_logits MODEL.gguf MODE OUT.f32 TOKENS [N_CTX]
//     MODE: prefill (one causal batch) | decode (one token per call); TOKENS comma-separated;
//     N_CTX: the context size (default 1024; sliding-window caches are sized from it)
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "llama.h"

int main(int argc, char **argv) {
    if (argc != 5 && argc != 6) {
        fprintf(stderr, "usage: llamacpp_logits MODEL prefill|decode OUT TOKENS [N_CTX]\n");
        return 2;
    }
    llama_token toks[4096];
    int n = 0;
    for (char *s = argv[4]; *s && n < 4096;) {
        char *end;
        toks[n++] = (llama_token)strtol(s, &end, 10);
        s = *end == ',' ? end + 1 : end;
    }
    const int n_ctx = argc == 6 ? atoi(argv[5]) : 1024;
    if (n < 1 || n > n_ctx) {
        fprintf(stderr, "llamacpp_logits: need 1..N_CTX (%d) tokens, got %d\n", n_ctx, n);
        return 2;
    }
    llama_backend_init();
    struct llama_model_params mp = llama_model_default_params();
    struct llama_model *m = llama_model_load_from_file(argv[1], mp);
    if (!m) return 1;
    const int V = llama_vocab_n_tokens(llama_model_get_vocab(m));
    struct llama_context_params cp = llama_context_default_params();
    cp.n_ctx = (uint32_t)n_ctx;
    cp.n_batch = cp.n_ubatch = (uint32_t)n;
    cp.type_k = cp.type_v = GGML_TYPE_F32;
    cp.n_threads = cp.n_threads_batch = 2;
    struct llama_context *c = llama_init_from_model(m, cp);
    if (!c) return 1;
    float *out = malloc((size_t)n * V * sizeof(float));
    if (!out) return 1;
    const int step = strcmp(argv[2], "decode") ? n : 1;
    for (int i = 0; i < n; i += step) {
        const int k = i + step <= n ? step : n - i;
        struct llama_batch b = llama_batch_init(k, 0, 1);
        for (int j = 0; j < k; j++) {
            b.token[j] = toks[i + j];
            b.pos[j] = i + j;
            b.n_seq_id[j] = 1;
            b.seq_id[j][0] = 0;
            b.logits[j] = 1;
        }
        b.n_tokens = k;
        if (llama_decode(c, b)) return 1;
        for (int j = 0; j < k; j++)
            memcpy(out + (size_t)(i + j) * V, llama_get_logits_ith(c, j), (size_t)V * sizeof(float));
        llama_batch_free(b);
    }
    FILE *f = fopen(argv[3], "wb");
    if (!f || fwrite(out, sizeof(float), (size_t)n * V, f) != (size_t)n * V || fclose(f)) return 1;
    free(out);
    llama_free(c);
    llama_model_free(m);
    return 0;
}
