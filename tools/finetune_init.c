// `speck finetune --init corda-kpm|corda-ipm|lq-lora`: the CorDA adapter from calibration text
// and the residual base it needs (W − s·B·A written as a model GGUF), or the LQ-LoRA adapter and
// its quantized base; either base then replaces the one the run trains on. See
// docs/adaptation.md.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli.h"

// Calibration text's tokens (at most o->calib_tokens), or NULL with the error shown.
static int32_t *calib_tokens(const ft_corda_opts *o, int64_t *n_out) {
    size_t len;
    char *text = cli_read_file(o->calib, &len);
    if (!text) return cli_fail("finetune"), NULL;
    int64_t n = speck_tokenize(o->voc, text, len, false, false, NULL, 0);
    int32_t *ids = n > 0 ? malloc((size_t)n * sizeof *ids) : NULL;
    if (n > 0 && ids) n = speck_tokenize(o->voc, text, len, false, false, ids, n);
    free(text);
    if (n <= 0 || !ids) {
        free(ids);
        fprintf(stderr, "speck finetune: --calib %s: no tokens\n", o->calib);
        return NULL;
    }
    *n_out = n < o->calib_tokens ? n : o->calib_tokens;
    return ids;
}

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
    int64_t n = 0;
    int32_t *ids = calib_tokens(o, &n);
    if (!ids) return NULL;
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

// `speck finetune --init lq-lora`: W ≈ Q + s·B·A per adapted matrix (src/adapt/lqlora.c), Q
// written as the new base (--type, or a mix under --bits), weighted by --imatrix or by one
// collected from --calib text.
speck_lora *ft_lqlora_init(const ft_corda_opts *o, speck_model **m) {
    const char *C = "finetune";
    if (o->reuse_base) { // --resume: the quantized base of the interrupted run, as written
        speck_model *b = speck_model_load_ex(o->base_out, SPECK_LOAD_NO_PANELS);
        speck_lora *a = b ? speck_lora_new(b, o->rank, o->alpha, o->targets, 0) : NULL;
        if (!a) {
            cli_fail(C);
            speck_model_free(b);
            return NULL;
        }
        *m = b;
        return a;
    }
    speck_imatrix *im = NULL;
    if (o->imatrix) {
        if (!(im = speck_imatrix_load(o->imatrix)) ||
            speck_imatrix_check(im, speck_model_gguf(*m))) {
            char msg[512];
            snprintf(msg, sizeof msg, "%s", speck_last_error());
            fprintf(stderr, "speck finetune: --imatrix %s: %s\n", o->imatrix, msg);
            speck_imatrix_free(im);
            return NULL;
        }
    } else if (o->calib) {
        int64_t n = 0;
        int32_t *ids = calib_tokens(o, &n);
        if (!ids) return NULL;
        if (!o->quiet)
            fprintf(stderr, "lq-lora: importance from %lld tokens of %s (windows of %d)\n",
                    (long long)n, o->calib, o->ctx);
        im = n >= o->ctx ? speck_imatrix_compute(*m, ids, n, o->ctx, false, o->calib, NULL, NULL)
                         : NULL;
        free(ids);
        if (!im) {
            if (n < o->ctx)
                fprintf(stderr, "speck finetune: --calib %s: %lld tokens, fewer than one window "
                                "of %d\n", o->calib, (long long)n, o->ctx);
            else
                fprintf(stderr, "speck finetune: --calib %s: %s\n", o->calib, speck_last_error());
            return NULL;
        }
    }
    speck_lqlora_opts lo = {o->rank, o->alpha, o->targets, (speck_type)o->type, o->bpw,
                            o->max_iter, o->seed, im, !o->quiet};
    speck_lqlora_report rep = {0};
    speck_lora *a = speck_lqlora_init(*m, &lo, o->base_out, &rep);
    const bool weighted = im != NULL;
    speck_imatrix_free(im);
    speck_model *b = NULL;
    if (!a || !(b = speck_model_load_ex(o->base_out, SPECK_LOAD_NO_PANELS))) {
        cli_fail(C);
        speck_lora_free(a);
        return NULL;
    }
    if (!o->quiet)
        fprintf(stderr, "lq-lora: %d matrices at %.3f bits per weight%s; %s error %.4g (plain "
                        "quantization %.4g, %.3fx); base written to %s\n",
                rep.n_matrices, rep.bpw, o->bpw != 0 ? " (mixed)" : "",
                weighted ? "importance-weighted" : "reconstruction", rep.err, rep.err_quant,
                rep.err_quant > 0 ? rep.err / rep.err_quant : 1.0, o->base_out);
    *m = b;
    return a;
}
