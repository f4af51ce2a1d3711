// Test driver for tests/reference/test_scmoe.py: SCMoE (speck_scmoe_*) on a prompt, then greedy
// steps on the contrast scores, writing for the prompt and every step the strong logits, the weak
// logits and the scores as raw little-endian f32 ((steps + 1) x 3 x n_vocab), and the tokens it
// chose on stdout (comma-separated).
//
//   scmoe_dump MODEL.gguf OUT.f32 TOKENS(comma-separated) ALPHA BETA WEAK_RANK STEPS
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "speck.h"

static int die(const char *what) {
    fprintf(stderr, "scmoe_dump: %s: %s\n", what, speck_last_error());
    return 1;
}

int main(int argc, char **argv) {
    if (argc != 8) {
        fprintf(stderr, "usage: scmoe_dump MODEL OUT TOKENS ALPHA BETA WEAK_RANK STEPS\n");
        return 2;
    }
    int32_t toks[1024];
    int n = 0;
    for (char *s = argv[3], *end; *s && n < 1024; s = *end == ',' ? end + 1 : end) {
        toks[n++] = (int32_t)strtol(s, &end, 10);
        if (end == s) return 2;
    }
    const speck_scmoe_params p = {.alpha = strtof(argv[4], NULL),
                                  .beta = strtof(argv[5], NULL),
                                  .weak_rank = atoi(argv[6])};
    const int steps = atoi(argv[7]);
    speck_model *m = speck_model_load(argv[1]);
    if (!m) return die("load");
    const int V = speck_model_hparams(m)->n_vocab;
    speck_scmoe *s = speck_scmoe_new(m, n + steps + 1, SPECK_TYPE_F32, &p);
    if (!s) return die("scmoe_new");
    float *out = malloc((size_t)3 * V * sizeof(float));
    FILE *f = fopen(argv[2], "wb");
    if (!out || !f) return 1;
    int32_t tok = 0;
    for (int i = 0; i <= steps; i++) {
        if (speck_scmoe_eval(s, i ? 1 : n, i ? &tok : toks, out + 2 * (size_t)V, out,
                             out + (size_t)V))
            return die("eval");
        fwrite(out, sizeof(float), (size_t)3 * V, f);
        const float *sc = out + 2 * (size_t)V;
        tok = 0;
        for (int v = 1; v < V; v++)
            if (sc[v] > sc[tok]) tok = v;
        printf("%s%d", i ? "," : "", tok);
    }
    printf("\n");
    fclose(f);
    free(out);
    speck_scmoe_free(s);
    speck_model_free(m);
    return 0;
}
