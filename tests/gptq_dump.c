// Test driver for tests/reference/quantize_ref.py (part gptq): GPTQ or plain rounding of a
// matrix into a block type, with the Hessian from given calibration inputs.
//
//   gptq_dump TYPE gptq|gptq-plain|rtn ROWS COLS W.f32 H.f64 OUT
// W: (ROWS, COLS) f32, H: (COLS, COLS) f64, the calibration inputs' X^T X; OUT: the rows in TYPE.
// gptq: scale searches weighted by diag(H) (what speck quantize --method gptq does);
// gptq-plain: unweighted searches; rtn: speck_quantize weighted by diag(H).
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "calib/calib.h"
#include "speck.h"

static float *read_f32(const char *path, long *n) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    *n = ftell(f) / 4;
    fseek(f, 0, SEEK_SET);
    float *p = malloc((size_t)*n * 4 + 4);
    if (p && fread(p, 4, (size_t)*n, f) != (size_t)*n) free(p), p = NULL;
    fclose(f);
    return p;
}

int main(int argc, char **argv) {
    if (argc != 8) {
        fprintf(stderr, "usage: gptq_dump TYPE gptq|gptq-plain|rtn ROWS COLS W H OUT\n");
        return 2;
    }
    const int t = speck_type_from_name(argv[1]);
    const long rows = atol(argv[3]), cols = atol(argv[4]);
    long nw, nh;
    float *W = read_f32(argv[5], &nw);
    double *H = (double *)read_f32(argv[6], &nh); // 8-byte values: twice as many 4-byte words
    if (t < 0 || !W || !H || nw != rows * cols || nh != 2 * cols * cols) {
        fprintf(stderr, "gptq_dump: bad arguments or files\n");
        return 2;
    }
    const size_t bytes = speck_type_row_size((speck_type)t, cols) * (size_t)rows;
    void *out = malloc(bytes);
    int rc;
    if (!strcmp(argv[2], "rtn")) {
        float *imp = malloc((size_t)cols * sizeof *imp);
        for (long j = 0; j < cols; j++) imp[j] = (float)H[j * cols + j];
        rc = speck_quantize((speck_type)t, W, out, rows, cols, imp);
        free(imp);
    } else {
        rc = speck_gptq((speck_type)t, W, rows, cols, H, 0.01, strcmp(argv[2], "gptq-plain"),
                        out);
    }
    FILE *f = fopen(argv[7], "wb");
    if (rc || !f || fwrite(out, 1, bytes, f) != bytes) {
        fprintf(stderr, "gptq_dump: %s\n", speck_last_error());
        return 1;
    }
    fclose(f);
    free(W), free(H), free(out);
    return 0;
}
