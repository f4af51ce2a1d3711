// Test driver for tests/reference/quant_ref.py: speck's row dequantization and quantization of
// raw block data, so the independent numpy implementation can check them byte for byte.
//
//   quant_dump dequant TYPE IN.bin OUT.f32            blocks -> little-endian f32 values
//   quant_dump quantize TYPE IN.f32 OUT.bin N [IMP]   rows of N values -> blocks (IMP: N f32
//                                                     importance weights per column)
// Env SPECK_TEST_ISA=scalar|avx2|avx512 runs on that kernel path (exit 3 if the CPU lacks it).
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/kernels.h"
#include "speck.h"

static void *read_all(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    void *buf = malloc(n > 0 ? (size_t)n : 1);
    if (buf && n > 0 && fread(buf, 1, (size_t)n, f) != (size_t)n) {
        free(buf);
        buf = NULL;
    }
    fclose(f);
    *len = n > 0 ? (size_t)n : 0;
    return buf;
}

static int write_all(const char *path, const void *p, size_t len) {
    FILE *f = fopen(path, "wb");
    int ok = f && fwrite(p, 1, len, f) == len;
    if (f) fclose(f);
    return ok ? 0 : 1;
}

int main(int argc, char **argv) {
    if (argc < 5) {
        fprintf(stderr, "usage: quant_dump dequant|quantize TYPE IN OUT [N [IMP]]\n");
        return 2;
    }
    const char *isa = getenv("SPECK_TEST_ISA");
    if (isa && *isa && speck_kernels_force_isa(isa) != 0) {
        fprintf(stderr, "quant_dump: this CPU cannot run the %s kernels\n", isa);
        return 3;
    }
    const int t = speck_type_from_name(argv[2]);
    if (t < 0) {
        fprintf(stderr, "quant_dump: unknown type %s\n", argv[2]);
        return 2;
    }
    size_t len;
    void *in = read_all(argv[3], &len);
    if (!in) {
        fprintf(stderr, "quant_dump: cannot read %s\n", argv[3]);
        return 1;
    }
    const int64_t bs = speck_type_block_size((speck_type)t), bb = speck_type_block_bytes((speck_type)t);
    int rc = 1;
    if (!strcmp(argv[1], "dequant")) {
        const int64_t n = (int64_t)(len / (size_t)bb) * bs;
        float *y = malloc((size_t)n * sizeof(float) + 1);
        speck_dequantize_row((speck_type)t, in, y, n);
        rc = write_all(argv[4], y, (size_t)n * sizeof(float));
        free(y);
    } else if (!strcmp(argv[1], "quantize") && argc >= 6) {
        const int64_t n = atoll(argv[5]), rows = (int64_t)(len / sizeof(float)) / n;
        float *imp = NULL;
        if (argc >= 7) {
            size_t il;
            imp = read_all(argv[6], &il);
            if (!imp || il != (size_t)n * sizeof(float)) {
                fprintf(stderr, "quant_dump: %s must hold %lld floats\n", argv[6], (long long)n);
                return 1;
            }
        }
        const size_t rs = speck_type_row_size((speck_type)t, n);
        void *y = malloc(rs * (size_t)rows + 1);
        if (speck_quantize((speck_type)t, in, y, rows, n, imp)) {
            fprintf(stderr, "quant_dump: %s\n", speck_last_error());
            return 1;
        }
        rc = write_all(argv[4], y, rs * (size_t)rows);
        free(y);
        free(imp);
    } else {
        fprintf(stderr, "quant_dump: unknown mode %s\n", argv[1]);
        return 2;
    }
    free(in);
    return rc;
}
