// llama.cpp's logits for a token sequence, for the architecture cross-check
// (bench/crosscheck_llamacpp.py; not part of the build, compiled against a llama.cpp build tree).
//   llamacpp_logits MODEL.gguf N_CTX OUT.f32 TOKENS(comma-separated)
// One causal prefill (batch of all tokens, every row's logits), f32 KV cache, written as raw
// little-endian f32 (rows, n_vocab) like tests/forward_dump.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "llama.h"

int main(int argc, char **argv) {
    if (argc != 5) {
        fprintf(stderr, "usage: llamacpp_logits MODEL N_CTX OUT TOKENS\n");
        return 2;
    }
    llama_token toks[4096];
    int n = 0;
    for (char *s = argv[4]; *s && n < 4096;) {
        char *end;
        toks[n++] = (llama_token)strtol(s, &end, 10);
        s = *end == ',' ? end + 1 : end;
    }
    llama_backend_init();
    struct llama_model_params mp = llama_model_default_params();
    struct llama_model *model = llama_model_load_from_file(argv[1], mp);
    if (!model) return 1;
    struct llama_context_params cp = llama_context_default_params();
    cp.n_ctx = (uint32_t)atoi(argv[2]);
    cp.n_batch = cp.n_ubatch = (uint32_t)n;
    cp.type_k = cp.type_v = GGML_TYPE_F32;
    cp.n_threads = cp.n_threads_batch = 2;
    struct llama_context *ctx = llama_init_from_model(model, cp);
    if (!ctx) return 1;
    struct llama_batch b = llama_batch_init(n, 0, 1);
    for (int i = 0; i < n; i++) {
        b.token[i] = toks[i];
        b.pos[i] = i;
        b.n_seq_id[i] = 1;
        b.seq_id[i][0] = 0;
        b.logits[i] = 1;
    }
    b.n_tokens = n;
    if (llama_decode(ctx, b)) return 1;
    const int nv = llama_vocab_n_tokens(llama_model_get_vocab(model));
    FILE *f = fopen(argv[3], "wb");
    for (int i = 0; i < n; i++) fwrite(llama_get_logits_ith(ctx, i), sizeof(float), (size_t)nv, f);
    fclose(f);
    llama_batch_free(b);
    llama_free(ctx);
    llama_model_free(model);
    return 0;
}
