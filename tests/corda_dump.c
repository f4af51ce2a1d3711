// Test driver for tests/reference/corda_ref.py: the CorDA adapter of a model and its residual base.
//
//   corda_dump MODEL.gguf TOKENS.i32 N CTX RANK ALPHA kpm|ipm OUTDIR
//
// Reads N calibration token ids, runs speck_corda_init (every target, windows of CTX), saves
// OUTDIR/adapter.gguf and the residual base W − s·B·A as OUTDIR/residual.gguf (f32 matrices,
// speck_lora_merge with scale −1).
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dump_util.h"
#include "speck.h"

int main(int argc, char **argv) {
    if (argc != 9) {
        fprintf(stderr, "usage: corda_dump MODEL TOKENS N CTX RANK ALPHA kpm|ipm OUTDIR\n");
        return 2;
    }
    const int n = atoi(argv[3]), ctx = atoi(argv[4]), rank = atoi(argv[5]);
    const float alpha = (float)atof(argv[6]);
    const speck_corda_mode mode = !strcmp(argv[7], "ipm") ? SPECK_CORDA_IPM : SPECK_CORDA_KPM;
    speck_set_threads(2);
    speck_model *m = speck_model_load_ex(argv[1], SPECK_LOAD_NO_PANELS);
    if (!m) return dump_die("corda_dump", argv[1]);
    int32_t *tok = malloc((size_t)n * sizeof *tok);
    FILE *f = fopen(argv[2], "rb");
    if (!tok || !f || fread(tok, sizeof *tok, (size_t)n, f) != (size_t)n) {
        fprintf(stderr, "corda_dump: cannot read %d tokens from %s\n", n, argv[2]);
        return 1;
    }
    fclose(f);
    speck_lora *a = speck_corda_init(m, tok, n, ctx, rank, alpha, (1u << SPECK_LORA_N_TARGETS) - 1,
                                     mode, false);
    if (!a) return dump_die("corda_dump", "corda init");
    char path[1024];
    snprintf(path, sizeof path, "%s/adapter.gguf", argv[8]);
    if (speck_lora_save(a, path)) return dump_die("corda_dump", path);
    snprintf(path, sizeof path, "%s/residual.gguf", argv[8]);
    const float minus1 = -1.0f;
    if (speck_lora_merge(argv[1], &a, &minus1, 1, SPECK_TYPE_F32, path))
        return dump_die("corda_dump", path);
    speck_lora_free(a);
    speck_model_free(m);
    free(tok);
    return 0;
}
