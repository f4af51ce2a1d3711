// Test driver for tests/reference/sparse_ft_ref.py.
//
//   sparse_ft_dump grad MODEL.gguf TOKENS.i32 B T OUTDIR spiel|s2ft [DENSITY]
//       a sparse fine-tuning run of 3 AdamW steps on the batch (SpIEL: a drop/regrow after step
//       2), then the gradient at the trained positions with δ as trained: OUTDIR/delta.gguf (the
//       delta, f32), OUTDIR/grad.f32 (k floats, the delta's tensors and positions in order),
//       OUTDIR/loss.txt (the loss of that last pass). SpIEL's density (default 0.2) decides the
//       gradient's path: a dense GEMM per matrix read at the positions (>= 1/32), or a dot
//       product per position (below).
//   sparse_ft_dump regrow IN.bin OUT.bin
//       speck_sparse_regrow on IN (int64 k, int64 c, f32 zeta, int64 idx[k], f32 val[k],
//       int64 cand[c], f32 acc[c]); OUT: int64 d, int64 new_idx[k], u8 grown[k]
// TOKENS.i32 holds B rows of T+1 int32 ids: inputs ids 0..T-1, targets ids 1..T of a row.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dump_util.h"
#include "speck.h"

static int regrow(const char *in, const char *out) {
    FILE *f = fopen(in, "rb");
    int64_t kc[2];
    float zeta;
    if (!f || fread(kc, 8, 2, f) != 2 || fread(&zeta, 4, 1, f) != 1 || kc[0] < 1 || kc[1] < 0) {
        fprintf(stderr, "sparse_ft_dump: cannot read %s\n", in);
        return 1;
    }
    const int64_t k = kc[0], c = kc[1];
    int64_t *idx = malloc((size_t)k * 8), *cand = malloc((size_t)(c + 1) * 8);
    float *val = malloc((size_t)k * 4), *acc = malloc((size_t)(c + 1) * 4);
    int64_t *nidx = malloc((size_t)k * 8);
    uint8_t *grown = malloc((size_t)k);
    if (fread(idx, 8, (size_t)k, f) != (size_t)k || fread(val, 4, (size_t)k, f) != (size_t)k ||
        fread(cand, 8, (size_t)c, f) != (size_t)c || fread(acc, 4, (size_t)c, f) != (size_t)c) {
        fprintf(stderr, "sparse_ft_dump: %s is short\n", in);
        return 1;
    }
    fclose(f);
    const int64_t d = speck_sparse_regrow(idx, val, k, cand, acc, c, zeta, nidx, grown);
    f = fopen(out, "wb");
    if (d < 0 || !f || fwrite(&d, 8, 1, f) != 1 || fwrite(nidx, 8, (size_t)k, f) != (size_t)k ||
        fwrite(grown, 1, (size_t)k, f) != (size_t)k || fclose(f)) {
        fprintf(stderr, "sparse_ft_dump: regrow failed or cannot write %s\n", out);
        return 1;
    }
    free(idx), free(cand), free(val), free(acc), free(nidx), free(grown);
    return 0;
}

int main(int argc, char **argv) {
    if (argc == 4 && !strcmp(argv[1], "regrow")) return regrow(argv[2], argv[3]);
    if ((argc != 8 && argc != 9) || strcmp(argv[1], "grad")) {
        fprintf(stderr, "usage: sparse_ft_dump grad MODEL TOKENS B T OUTDIR spiel|s2ft\n"
                        "       sparse_ft_dump regrow IN.bin OUT.bin\n");
        return 2;
    }
    const int B = atoi(argv[4]), T = atoi(argv[5]);
    const char *dir = argv[6];
    speck_set_threads(2);
    speck_train_model *tm = speck_train_model_load(argv[2]);
    if (!tm) return dump_die("sparse_ft_dump", "load");
    speck_sparse_params sp = speck_sparse_default();
    if (speck_sparse_parse_method(argv[7], &sp.method)) return dump_die("sparse_ft_dump", "method");
    sp.density = argc == 9 ? atof(argv[8]) : 0.2, sp.update_every = 2, sp.accum_steps = 2, sp.drop_fraction = 0.4f;
    sp.total_steps = 3, sp.seed = 4;
    if (sp.method == SPECK_SPARSE_S2FT) sp.n_params = speck_train_n_params(tm) / 10;
    speck_sparse_ft *s = speck_sparse_ft_new(tm, &sp);
    if (!s) return dump_die("sparse_ft_dump", "sparse");
    int32_t *tok = malloc((size_t)B * (T + 1) * sizeof *tok);
    int32_t *in = malloc((size_t)B * T * sizeof *in), *tg = malloc((size_t)B * T * sizeof *tg);
    FILE *f = fopen(argv[3], "rb");
    if (!f || fread(tok, sizeof *tok, (size_t)B * (T + 1), f) != (size_t)B * (T + 1)) {
        fprintf(stderr, "sparse_ft_dump: cannot read %s\n", argv[3]);
        return 1;
    }
    fclose(f);
    for (int b = 0; b < B; b++)
        for (int t = 0; t < T; t++) {
            in[b * T + t] = tok[b * (T + 1) + t];
            tg[b * T + t] = tok[b * (T + 1) + t + 1];
        }
    speck_adamw_params p = speck_adamw_default();
    p.lr = 1e-2f, p.min_lr = 1e-3f, p.warmup_steps = 0, p.total_steps = 3, p.weight_decay = 0;
    float loss = 0;
    for (int st = 0; st < 4; st++) {
        if (st == 3) p.lr = p.min_lr = 0; // the gradient at δ as trained; nothing moves
        speck_train_zero_grad(tm);
        if (speck_train_step(tm, in, tg, B, T, 1.0f, &loss) ||
            speck_sparse_ft_step(s, &p, st, NULL))
            return dump_die("sparse_ft_dump", "step");
    }
    char path[1024];
    snprintf(path, sizeof path, "%s/delta.gguf", dir);
    speck_delta *d = speck_sparse_ft_delta(s);
    if (!d || speck_delta_save(d, path, SPECK_TYPE_F32)) return dump_die("sparse_ft_dump", "save");
    speck_delta_free(d);
    if (dump_write_f32(dir, "grad", speck_sparse_ft_grad(s), speck_sparse_ft_n_params(s))) {
        fprintf(stderr, "sparse_ft_dump: cannot write into %s\n", dir);
        return 1;
    }
    snprintf(path, sizeof path, "%s/loss.txt", dir);
    f = fopen(path, "w");
    if (!f) return 1;
    fprintf(f, "%.9g\n", loss);
    fclose(f);
    speck_sparse_ft_free(s);
    speck_train_model_free(tm);
    free(tok), free(in), free(tg);
    return 0;
}
