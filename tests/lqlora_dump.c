// Test driver for tests/reference/lqlora_ref.py: one matrix's LQ-LoRA decomposition.
//
//   lqlora_dump W.f32 N_OUT N_IN TYPE RANK ITERS SCALE IMP.f32|- OUTDIR [SVD_POWER]
//
// SVD_POWER > 0: the truncated SVD (subspace iteration) instead of the exact one.
// Runs speck_lqlora_factor and writes OUTDIR/a.f32 (rank, n_in), b.f32 (n_out, rank), q.bin
// (Q's raw blocks, for the reference's own dequantizer) and err.f32 (the error of each
// iteration run).
#include <stdio.h>
#include <stdlib.h>

#include "dump_util.h"
#include "speck.h"

static float *read_f32(const char *path, size_t n) {
    float *x = malloc(n * sizeof *x);
    FILE *f = fopen(path, "rb");
    if (!x || !f || fread(x, sizeof *x, n, f) != n) {
        fprintf(stderr, "lqlora_dump: cannot read %zu floats from %s\n", n, path);
        exit(1);
    }
    fclose(f);
    return x;
}

int main(int argc, char **argv) {
    if (argc != 10 && argc != 11) {
        fprintf(stderr, "usage: lqlora_dump W N_OUT N_IN TYPE RANK ITERS SCALE IMP|- OUTDIR [SVD_POWER]\n");
        return 2;
    }
    const int no = atoi(argv[2]), ni = atoi(argv[3]), rank = atoi(argv[5]), it = atoi(argv[6]);
    const int t = speck_type_from_name(argv[4]);
    if (t < 0) return fprintf(stderr, "lqlora_dump: unknown type %s\n", argv[4]), 2;
    speck_set_threads(1);
    float *W = read_f32(argv[1], (size_t)no * ni);
    float *imp = argv[8][0] == '-' ? NULL : read_f32(argv[8], (size_t)ni);
    float *a = calloc((size_t)rank * ni, sizeof *a), *b = calloc((size_t)no * rank, sizeof *b);
    const size_t qb = speck_type_row_size((speck_type)t, ni) * (size_t)no;
    void *q = malloc(qb);
    double err[1001];
    float errf[1001];
    int n = 0;
    speck_lqlora_params p = {(speck_type)t, rank, it, (float)atof(argv[7]), imp,
                             argc == 11 ? atoi(argv[10]) : 0};
    if (!a || !b || !q || it > 1000) return 1;
    if (speck_lqlora_factor(W, no, ni, &p, a, b, q, err, &n)) return dump_die("lqlora_dump", "factor");
    for (int i = 0; i < (n ? n : 1); i++) errf[i] = (float)err[i];
    char path[1024];
    snprintf(path, sizeof path, "%s/q.bin", argv[9]);
    FILE *f = fopen(path, "wb");
    if (!f || fwrite(q, 1, qb, f) != qb || fclose(f) ||
        dump_write_f32(argv[9], "a", a, (int64_t)rank * ni) ||
        dump_write_f32(argv[9], "b", b, (int64_t)no * rank) ||
        dump_write_f32(argv[9], "err", errf, n ? n : 1)) {
        fprintf(stderr, "lqlora_dump: cannot write to %s\n", argv[9]);
        return 1;
    }
    free(W), free(imp), free(a), free(b), free(q);
    return 0;
}
