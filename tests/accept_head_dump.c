// Test driver for tests/reference/accept_head_ref.py (the SpecDec++ acceptance head):
//
//   accept_head_dump loss HEAD.gguf X.f32 Y.u8 N W_REJ OUTDIR
//       loads the head (exit 1 with speck's error on stderr for a bad file), writes
//       OUTDIR/loss.txt, OUTDIR/grad.f32 (dL/dθ: W1, b1, w2, b2) and OUTDIR/prob.f32 (N);
//       exit 3 if the head saved and loaded again predicts anything differently.
//   accept_head_dump features HIDDEN.f32 LOGITS.f32 M E V OUTDIR
//       OUTDIR/feat.f32 (M, E + 2): speck_accept_features of each row.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dump_util.h"
#include "speck.h"

static void *read_all(const char *path, size_t bytes) {
    void *p = malloc(bytes ? bytes : 1);
    FILE *f = fopen(path, "rb");
    if (!p || !f || fread(p, 1, bytes, f) != bytes) {
        fprintf(stderr, "accept_head_dump: cannot read %zu bytes of %s\n", bytes, path);
        exit(1);
    }
    fclose(f);
    return p;
}

static int features(char **argv) {
    const int M = atoi(argv[4]), E = atoi(argv[5]), V = atoi(argv[6]);
    float *h = read_all(argv[2], (size_t)M * E * sizeof(float));
    float *l = read_all(argv[3], (size_t)M * V * sizeof(float));
    float *x = malloc((size_t)M * (E + 2) * sizeof *x);
    for (int i = 0; i < M; i++)
        speck_accept_features(h + (size_t)i * E, E, l + (size_t)i * V, V, x + (size_t)i * (E + 2));
    int rc = dump_write_f32(argv[7], "feat", x, (int64_t)M * (E + 2)) ? 1 : 0;
    free(h), free(l), free(x);
    return rc;
}

int main(int argc, char **argv) {
    if (argc == 8 && !strcmp(argv[1], "features")) return features(argv);
    if (argc != 8 || strcmp(argv[1], "loss")) {
        fprintf(stderr, "usage: accept_head_dump loss HEAD X Y N W_REJ OUTDIR | "
                        "features HIDDEN LOGITS M E V OUTDIR\n");
        return 2;
    }
    speck_accept_head *h = speck_accept_head_load(argv[2]);
    if (!h) return dump_die("accept_head_dump", "load");
    const int64_t N = atoll(argv[5]), ni = speck_accept_head_n_embd(h) + SPECK_ACCEPT_N_EXTRA;
    const float w_rej = (float)atof(argv[6]);
    const char *dir = argv[7];
    float *X = read_all(argv[3], (size_t)N * ni * sizeof(float));
    uint8_t *y = read_all(argv[4], (size_t)N);
    const int64_t np = speck_accept_head_n_params(h);
    float *g = calloc((size_t)np, sizeof *g), *p = malloc((size_t)N * sizeof *p);
    double L = speck_accept_head_loss(h, X, y, N, w_rej, g);
    for (int64_t i = 0; i < N; i++) p[i] = speck_accept_head_prob(h, X + (size_t)i * ni);
    // The head written and read back predicts the same.
    char path[1024];
    snprintf(path, sizeof path, "%s/resaved.gguf", dir);
    speck_accept_head *h2 = NULL;
    if (speck_accept_head_save(h, path) || !(h2 = speck_accept_head_load(path)))
        return dump_die("accept_head_dump", "save and reload");
    for (int64_t i = 0; i < N; i++)
        if (speck_accept_head_prob(h2, X + (size_t)i * ni) != p[i]) {
            fprintf(stderr, "accept_head_dump: sample %lld: the reloaded head differs\n",
                    (long long)i);
            return 3;
        }
    if (dump_write_f32(dir, "grad", g, np) || dump_write_f32(dir, "prob", p, N)) return 1;
    snprintf(path, sizeof path, "%s/loss.txt", dir);
    FILE *f = fopen(path, "w");
    if (!f) return 1;
    fprintf(f, "%.12g\n", L);
    fclose(f);
    speck_accept_head_free(h), speck_accept_head_free(h2);
    free(X), free(y), free(g), free(p);
    return 0;
}
