// Minimal test harness: CHECK records a pass/fail line; test_summary prints the closing
// "N passed, M failed" line ctest logs show, and returns the exit code. Plus the file readers the
// tests share.
#ifndef SPECK_TEST_UTIL_H
#define SPECK_TEST_UTIL_H

#include <stdio.h>
#include <stdlib.h>

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

// Whole file, NUL-terminated (malloc'd), its length in *len when len is set; NULL if unreadable.
static inline char *test_read_file(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *buf = n >= 0 ? malloc((size_t)n + 1) : NULL;
    if (buf && fread(buf, 1, (size_t)n, f) != (size_t)n) {
        free(buf);
        buf = NULL;
    }
    fclose(f);
    if (buf) buf[n] = 0;
    if (buf && len) *len = (size_t)n;
    return buf;
}

#ifdef cJSON__h // tests that include <cjson/cJSON.h> first
// A JSON file parsed, or NULL if unreadable or malformed.
static inline cJSON *test_load_json(const char *path) {
    size_t n;
    char *buf = test_read_file(path, &n);
    if (!buf) return NULL;
    cJSON *j = cJSON_ParseWithLength(buf, n);
    free(buf);
    return j;
}
#endif

#endif
