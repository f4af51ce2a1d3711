// Minimal test harness: CHECK records a pass/fail line; test_summary prints the closing
// "N passed, M failed" line ctest logs show, and returns the exit code.
#ifndef SPECK_TEST_UTIL_H
#define SPECK_TEST_UTIL_H

#include <stdio.h>

static int g_pass, g_fail;

#define CHECK(cond, ...)                                                                           \
    do {                                                                                           \
        if (cond) {                                                                                \
            g_pass++;                                                                              \
        } else {                                                                                   \
            g_fail++;                                                                              \
            printf("FAIL %s:%d: ", __FILE__, __LINE__);                                            \
            printf(__VA_ARGS__);                                                                   \
            printf("\n");                                                                          \
        }                                                                                          \
    } while (0)

static inline int test_summary(void) {
    printf("%d passed, %d failed\n", g_pass, g_fail);
    return g_fail ? 1 : 0;
}

#endif
