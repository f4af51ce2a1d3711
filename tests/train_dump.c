// Test driver for tests/reference/train_ref.py: loads a model GGUF into a training model, runs
// a batch, and writes raw little-endian f32 files OUTDIR/<tensor name>.f32 plus OUTDIR/loss.txt.
//
//   train_dump MODEL.gguf TOKENS.i32 B T OUTDIR grad[:COEF]
//       gradients of the mean next-token cross-entropy (one forward + backward); for a mixture
//       of experts, of cross-entropy + COEF (default 0.01) x the load-balancing loss, which goes
//       to OUTDIR/aux.txt
//   train_dump MODEL.gguf TOKENS.i32 B T OUTDIR adam:K
//       the parameters after K AdamW steps on the same batch (schedule and clipping as in
//       train_ref.py: lr 1e-2, min_lr 1e-3, warmup 2, total K, betas 0.9/0.95, eps 1e-8,
//       weight decay 0.1 on matrices but not norms/embeddings, clip 0.5)
//   train_dump MODEL.gguf TOKENS.i32 B T OUTDIR nm:N:M:EVERY:LAMBDA:K
//       N:M training (SR-STE, speck_train_set_nm): K = 0 the gradients of one pass through the
//       masked matrices (as grad); K > 0 the parameters after K AdamW steps as adam:K, plus
//       OUTDIR/grad.<tensor>.f32, the gradients the last step used (with the sparse-refined
//       term), and OUTDIR/mask.<tensor>.f32, the masks of the last step (0/1)
// TOKENS.i32 holds B rows of T+1 int32 ids: inputs are ids 0..T-1, targets ids 1..T of a row.
// A 7th argument OUT.gguf also exports the model as it ends (f32, speck_train_export).
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dump_util.h"
#include "speck.h"

int main(int argc, char **argv) {
    if (argc != 7 && argc != 8) {
        fprintf(stderr,
                "usage: train_dump MODEL TOKENS B T OUTDIR grad[:COEF]|adam:K [OUT.gguf]\n");
        return 2;
    }
    int B = atoi(argv[3]), T = atoi(argv[4]);
    const char *dir = argv[5], *mode = argv[6];
    speck_set_threads(2);
    speck_train_model *tm = speck_train_model_load(argv[1]);
    if (!tm) return dump_die("train_dump", "load");
    int32_t *tok = malloc((size_t)B * (T + 1) * sizeof *tok);
    int32_t *in = malloc((size_t)B * T * sizeof *in), *tg = malloc((size_t)B * T * sizeof *tg);
    FILE *f = fopen(argv[2], "rb");
    if (!f || fread(tok, sizeof *tok, (size_t)B * (T + 1), f) != (size_t)B * (T + 1)) {
        fprintf(stderr, "train_dump: cannot read %s\n", argv[2]);
        return 1;
    }
    fclose(f);
    for (int b = 0; b < B; b++)
        for (int t = 0; t < T; t++) {
            in[b * T + t] = tok[b * (T + 1) + t];
            tg[b * T + t] = tok[b * (T + 1) + t + 1];
        }
    float loss = 0;
    speck_nm_params nm = {0, 0, 1, 0};
    int nm_steps = 0;
    if (!strncmp(mode, "nm:", 3)) {
        if (sscanf(mode + 3, "%d:%d:%d:%f:%d", &nm.n, &nm.m, &nm.every, &nm.lambda, &nm_steps) != 5)
            return dump_die("train_dump", "nm:N:M:EVERY:LAMBDA:K");
        if (speck_train_set_nm(tm, &nm)) return dump_die("train_dump", "nm");
    }
    // Masks of the step about to run (recomputed from the dense weights when due).
    int n_t = speck_train_n_tensors(tm);
    float **masks = calloc((size_t)n_t, sizeof *masks);
    bool grads = !strncmp(mode, "grad", 4) || (nm.m && nm_steps == 0);
    if (!strncmp(mode, "grad:", 5) && speck_train_set_aux_coef(tm, (float)atof(mode + 5)))
        return dump_die("train_dump", "aux coefficient");
    int steps = grads ? 0 : nm.m ? nm_steps : atoi(mode + 5);
    if (grads) {
        speck_train_zero_grad(tm);
        if (speck_train_step(tm, in, tg, B, T, 1.0f, &loss)) return dump_die("train_dump", "step");
    } else {
        speck_adamw_params p = speck_adamw_default();
        p.lr = 1e-2f, p.min_lr = 1e-3f, p.warmup_steps = 2, p.total_steps = steps;
        p.beta1 = 0.9f, p.beta2 = 0.95f, p.eps = 1e-8f, p.weight_decay = 0.1f, p.grad_clip = 0.5f;
        for (int s = 0; s < steps; s++) {
            speck_train_zero_grad(tm);
            if (speck_train_step(tm, in, tg, B, T, 1.0f, &loss)) return dump_die("train_dump", "step");
            for (int i = 0; nm.m && i < n_t; i++) {
                const uint8_t *mk = speck_train_nm_mask(tm, i);
                const int64_t n = speck_train_tensor_numel(tm, i);
                if (!mk) continue;
                if (!masks[i] && !(masks[i] = malloc((size_t)n * sizeof(float)))) return 1;
                for (int64_t j = 0; j < n; j++) masks[i][j] = mk[j];
            }
            if (speck_adamw_step(tm, &p, s, NULL)) return dump_die("train_dump", "adamw");
        }
    }
    for (int i = 0; nm.m && steps > 0 && i < n_t; i++) {
        char name[128];
        snprintf(name, sizeof name, "grad.%s", speck_train_tensor_name(tm, i));
        int e = dump_write_f32(dir, name, speck_train_tensor(tm, i, true),
                               speck_train_tensor_numel(tm, i));
        snprintf(name, sizeof name, "mask.%s", speck_train_tensor_name(tm, i));
        if (masks[i]) e |= dump_write_f32(dir, name, masks[i], speck_train_tensor_numel(tm, i));
        if (e) return dump_die("train_dump", "write");
    }
    for (int i = 0; i < n_t; i++) free(masks[i]);
    free(masks);
    for (int i = 0; i < speck_train_n_tensors(tm); i++)
        if (dump_write_f32(dir, speck_train_tensor_name(tm, i), speck_train_tensor(tm, i, grads),
                      speck_train_tensor_numel(tm, i))) {
            fprintf(stderr, "train_dump: cannot write into %s\n", dir);
            return 1;
        }
    if (argc == 8 && speck_train_export(tm, NULL, SPECK_TYPE_F32, NULL, argv[7]))
        return dump_die("train_dump", "export");
    char path[1024];
    snprintf(path, sizeof path, "%s/loss.txt", dir);
    f = fopen(path, "w");
    if (!f) return 1;
    fprintf(f, "%.9g\n", loss);
    fclose(f);
    snprintf(path, sizeof path, "%s/aux.txt", dir);
    f = fopen(path, "w");
    if (!f) return 1;
    fprintf(f, "%.9g\n", speck_train_aux_loss(tm));
    fclose(f);
    speck_train_model_free(tm);
    free(tok), free(in), free(tg);
    return 0;
}
