// Minimal test harness: CHECK records a pass/fail line; test_missing a part that could not run;
// test_summary prints the closing "N passed, M failed" line ctest logs show, and returns the exit
// code. Plus the file readers the tests share.
#ifndef SPECK_TEST_UTIL_H
#define SPECK_TEST_UTIL_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>

// Exit status of a test that did not (fully) run: tests/CMakeLists.txt gives every test
// SKIP_RETURN_CODE 77, so ctest reports it as skipped rather than passed.
#define TEST_SKIP_CODE 77

static int g_pass, g_fail, g_skip;

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

// True under continuous integration (CI set, as CI services do, to anything but "", "0" or
// "false"): there every dependency must be installed, so a missing one is a failure.
static inline int test_ci(void) {
    const char *ci = getenv("CI");
    return ci && *ci && strcmp(ci, "0") != 0 && strcasecmp(ci, "false") != 0;
}

// Checks that cannot run because `what` is missing; `how` says how to get it. Outside CI the
// test then reports itself skipped (unless something failed); under CI this is a failure.
static inline void test_missing(const char *what, const char *how) {
    if (test_ci()) {
        g_fail++;
        printf("FAIL (CI is set, so a missing dependency fails): %s not found; %s\n", what, how);
    } else {
        g_skip++;
        printf("SKIP: %s not found; %s\n", what, how);
    }
}

// The test's scratch directory (it fills test_work) and paths in it: the last 16 stay valid.
static char test_work[1024];
static inline const char *test_path(const char *name) {
    static char buf[16][1200];
    static int k;
    k = (k + 1) % 16;
    snprintf(buf[k], sizeof buf[k], "%s/%s", test_work, name);
    return buf[k];
}

static inline int test_file_exists(const char *p) {
    struct stat st;
    return stat(p, &st) == 0;
}

// Failures first; then a skip, even if other checks passed, so a partly run test never shows
// as passed.
static inline int test_summary(void) {
    if (g_skip)
        printf("%d passed, %d failed, %d skipped\n", g_pass, g_fail, g_skip);
    else
        printf("%d passed, %d failed\n", g_pass, g_fail);
    return g_fail ? 1 : g_skip ? TEST_SKIP_CODE : 0;
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
