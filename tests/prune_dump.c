// Test driver for tests/reference/sparse_ref.py: one matrix pruned by speck_prune_matrix.
//
//   prune_dump METHOD SPARSITY ROWS COLS W.f32 H.f64 X2.f32 OUT.f32 [MEAN.f32 VAR.f32 CYCLES THR]
// W: (ROWS, COLS) f32; H: (COLS, COLS) f64, the calibration inputs' X^T X (SparseGPT);
// X2: (COLS) f32, the inputs' squared norms (Wanda); OUT: the pruned W, f32. METHOD
// magnitude+dsnot or wanda+dsnot also reads MEAN and VAR (COLS) f32, the inputs' per-column
// means and variances, and runs DSnoT with CYCLES and the threshold THR.
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "speck.h"

static void *read_all(const char *path, long *bytes) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    *bytes = ftell(f);
    fseek(f, 0, SEEK_SET);
    void *p = malloc((size_t)*bytes + 8);
    if (p && fread(p, 1, (size_t)*bytes, f) != (size_t)*bytes) free(p), p = NULL;
    fclose(f);
    return p;
}

int main(int argc, char **argv) {
    const bool dsnot = argc == 13 && strstr(argv[1], "+dsnot");
    if (argc != 9 && !dsnot) {
        fprintf(stderr, "usage: prune_dump METHOD SPARSITY ROWS COLS W H X2 OUT "
                        "[MEAN VAR CYCLES THR]\n");
        return 2;
    }
    speck_prune_opts o = {.out_type = -1};
    o.method = !strncmp(argv[1], "magnitude", 9) ? SPECK_PRUNE_MAGNITUDE
               : !strncmp(argv[1], "wanda", 5)   ? SPECK_PRUNE_WANDA
                                                 : SPECK_PRUNE_SPARSEGPT;
    if (dsnot) o.dsnot_cycles = atoi(argv[11]), o.dsnot_threshold = atof(argv[12]);
    if (speck_prune_parse_sparsity(argv[2], &o)) {
        fprintf(stderr, "prune_dump: %s\n", speck_last_error());
        return 2;
    }
    const long rows = atol(argv[3]), cols = atol(argv[4]);
    long nw, nh, nx, nm = cols * 4, nv = cols * 4;
    float *W = read_all(argv[5], &nw), *x2 = read_all(argv[7], &nx);
    float *mean = dsnot ? read_all(argv[9], &nm) : NULL,
          *var = dsnot ? read_all(argv[10], &nv) : NULL;
    double *H = read_all(argv[6], &nh);
    if (!W || !H || !x2 || nw != rows * cols * 4 || nh != cols * cols * 8 || nx != cols * 4 ||
        (dsnot && (!mean || !var)) || nm != cols * 4 || nv != cols * 4) {
        fprintf(stderr, "prune_dump: bad arguments or files\n");
        return 2;
    }
    const int rc = speck_prune_matrix(&o, W, rows, cols, H, x2, mean, var);
    FILE *f = rc ? NULL : fopen(argv[8], "wb");
    const int bad = rc || !f || fwrite(W, 4, (size_t)(rows * cols), f) != (size_t)(rows * cols);
    if (bad) fprintf(stderr, "prune_dump: %s\n", speck_last_error());
    if (f) fclose(f);
    free(W), free(H), free(x2), free(mean), free(var);
    return bad;
}
