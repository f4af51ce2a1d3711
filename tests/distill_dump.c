// Test driver for tests/reference/distill_ref.py: one online-distillation step of a student on
// a teacher's distributions (speck_distill_step), dumped as raw little-endian f32 files
// OUTDIR/<tensor name>.f32 (the student's gradients) and OUTDIR/loss.txt ("loss kl ce").
//
//   distill_dump STUDENT.gguf TEACHER.gguf TOKENS.i32 B T OUTDIR TEMP CE_WEIGHT
//
// TOKENS.i32 holds B rows of T+1 int32 ids: inputs are ids 0..T-1, targets ids 1..T of a row. A
// negative id in a target slot masks that position. Exit 1 with speck's error on stderr when the
// step fails (the vocabulary-mismatch case of the test); exit 3 if the teacher's gradients moved.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dump_util.h"
#include "speck.h"

int main(int argc, char **argv) {
    if (argc != 9) {
        fprintf(stderr, "usage: distill_dump STUDENT TEACHER TOKENS B T OUTDIR TEMP CE_WEIGHT\n");
        return 2;
    }
    int B = atoi(argv[4]), T = atoi(argv[5]);
    const char *dir = argv[6];
    speck_distill_params p = {(float)atof(argv[7]), (float)atof(argv[8])};
    speck_set_threads(2);
    speck_train_model *st = speck_train_model_load(argv[1]);
    speck_train_model *te = speck_train_model_load(argv[2]);
    if (!st || !te) return dump_die("distill_dump", "load");
    int32_t *tok = malloc((size_t)B * (T + 1) * sizeof *tok);
    int32_t *in = malloc((size_t)B * T * sizeof *in), *tg = malloc((size_t)B * T * sizeof *tg);
    FILE *f = fopen(argv[3], "rb");
    if (!f || fread(tok, sizeof *tok, (size_t)B * (T + 1), f) != (size_t)B * (T + 1)) {
        fprintf(stderr, "distill_dump: cannot read %s\n", argv[3]);
        return 1;
    }
    fclose(f);
    for (int b = 0; b < B; b++)
        for (int t = 0; t < T; t++) {
            in[b * T + t] = tok[b * (T + 1) + t];
            tg[b * T + t] = tok[b * (T + 1) + t + 1] < 0 ? -1 : tok[b * (T + 1) + t + 1];
            if (in[b * T + t] < 0) in[b * T + t] = 0;
        }
    float loss = 0, kl = 0, ce = 0;
    speck_train_zero_grad(st);
    speck_train_zero_grad(te);
    if (speck_distill_step(st, te, in, tg, B, T, &p, 1.0f, &loss, &kl, &ce)) {
        dump_die("distill_dump", "step");
        speck_train_model_free(st), speck_train_model_free(te);
        free(tok), free(in), free(tg);
        return 1;
    }
    const float *gt = speck_train_grads(te);
    for (int64_t i = 0; i < speck_train_n_params(te); i++)
        if (gt[i] != 0) {
            fprintf(stderr, "distill_dump: the teacher's gradient %lld is %g\n", (long long)i,
                    (double)gt[i]);
            return 3;
        }
    for (int i = 0; i < speck_train_n_tensors(st); i++)
        if (dump_write_f32(dir, speck_train_tensor_name(st, i), speck_train_tensor(st, i, true),
                      speck_train_tensor_numel(st, i))) {
            fprintf(stderr, "distill_dump: cannot write into %s\n", dir);
            return 1;
        }
    char path[1024];
    snprintf(path, sizeof path, "%s/loss.txt", dir);
    f = fopen(path, "w");
    if (!f) return 1;
    fprintf(f, "%.9g %.9g %.9g\n", loss, kl, ce);
    fclose(f);
    speck_train_model_free(st);
    speck_train_model_free(te);
    free(tok), free(in), free(tg);
    return 0;
}
