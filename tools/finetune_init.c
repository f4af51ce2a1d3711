// `speck finetune --init corda-kpm|corda-ipm`: the CorDA adapter from calibration text and the
// residual base it needs (W − s·B·A written as a model GGUF), which then replaces the base the
// run trains on. See docs/adaptation.md.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli.h"

speck_lora *ft_corda_init(const ft_corda_opts *o, speck_model **m) {
    const char *C = "finetune";
    if (o->reuse_base) { // --resume: the residual base of the interrupted run, as written
        speck_model *b = speck_model_load_ex(o->base_out, SPECK_LOAD_NO_PANELS);
        if (!b) return cli_fail(C), NULL;
        speck_lora *a = speck_lora_new(b, o->rank, o->alpha, o->targets, 0); // checkpoint's
        if (!a) {
            cli_fail(C);
            speck_model_free(b);
            return NULL;
        }
        *m = b;
        return a;
    }
    size_t len;
    char *text = cli_read_file(o->calib, &len);
    if (!text) return cli_fail(C), NULL;
    int64_t n = speck_tokenize(o->voc, text, len, false, false, NULL, 0);
    int32_t *ids = n > 0 ? malloc((size_t)n * sizeof *ids) : NULL;
    if (n > 0 && ids) n = speck_tokenize(o->voc, text, len, false, false, ids, n);
    free(text);
    if (n <= 0 || !ids) {
        free(ids);
        fprintf(stderr, "speck finetune: --calib %s: no tokens\n", o->calib);
        return NULL;
    }
    if (n > o->calib_tokens) n = o->calib_tokens;
    if (!o->quiet)
        fprintf(stderr, "corda: %s covariances from %lld tokens of %s (windows of %d)\n",
                o->kpm ? "KPM" : "IPM", (long long)n, o->calib, o->ctx);
    speck_lora *a = speck_corda_init(*m, ids, n, o->ctx, o->rank, o->alpha, o->targets,
                                     o->kpm ? SPECK_CORDA_KPM : SPECK_CORDA_IPM, !o->quiet);
    free(ids);
    if (!a) {
        char msg[512];
        snprintf(msg, sizeof msg, "%s", speck_last_error());
        fprintf(stderr, "speck finetune: --calib %s: %s\n", o->calib, msg);
        return NULL;
    }
    // The residual base: the adapter merged with scale −1 (its matrices as --type, f32 by
    // default so that residual + adapter is the base to f32 rounding), then trained on.
    const float minus1 = -1.0f;
    speck_model *b = NULL;
    if (speck_lora_merge(o->base_path, &a, &minus1, 1, o->type, o->base_out) ||
        !(b = speck_model_load_ex(o->base_out, SPECK_LOAD_NO_PANELS))) {
        cli_fail(C);
        speck_lora_free(a);
        return NULL;
    }
    if (!o->quiet)
        fprintf(stderr, "corda: residual base W - s*B*A written to %s (%s)\n", o->base_out,
                speck_type_name((speck_type)o->type));
    *m = b;
    return a;
}
