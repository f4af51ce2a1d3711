// Helpers of the *_dump programs, which run speck on a case and write what the Python reference
// compares (tests/reference/): raw float32 files and the one way they fail.
#ifndef SPECK_DUMP_UTIL_H
#define SPECK_DUMP_UTIL_H

#include <stdint.h>
#include <stdio.h>

#include "speck.h"

// Prints "PROG: WHAT: <speck's last error>" and returns the exit status to use (1).
static inline int dump_die(const char *prog, const char *what) {
    fprintf(stderr, "%s: %s: %s\n", prog, what, speck_last_error());
    return 1;
}

// Writes n floats to DIR/NAME.f32 (native byte order, as numpy.fromfile reads them); 0 or -1.
static inline int dump_write_f32(const char *dir, const char *name, const float *x, int64_t n) {
    char path[1024];
    snprintf(path, sizeof path, "%s/%s.f32", dir, name);
    FILE *f = fopen(path, "wb");
    if (!f || fwrite(x, sizeof(float), (size_t)n, f) != (size_t)n) {
        if (f) fclose(f);
        return -1;
    }
    return fclose(f);
}

#endif
