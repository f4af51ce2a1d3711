// Errors, threads, version and tensor-type facts shared by the whole library.
#include <omp.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include "quant/quant.h"
#include "speck.h"

static _Thread_local char g_err[1024];

const char *speck_last_error(void) {
    return g_err;
}

void speck_clear_error(void) {
    g_err[0] = 0;
}

// Formatted aside first: an argument may be the current message itself (adding context to an
// error from a callee), and vsnprintf into the buffer it reads from is undefined.
int speck_set_error(int code, const char *fmt, ...) {
    char msg[sizeof g_err];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    memcpy(g_err, msg, strlen(msg) + 1);
    return code;
}

static int g_threads = 0;

void speck_set_threads(int n) {
    g_threads = n > 0 ? n : omp_get_num_procs();
    omp_set_num_threads(g_threads);
}

int speck_get_threads(void) {
    return g_threads > 0 ? g_threads : omp_get_max_threads();
}

const char *speck_version(void) {
    return SPECK_VERSION_STR;
}

const char *speck_type_name(int type) {
    const speck_type_traits *t = speck_traits(type);
    return t ? t->name : NULL;
}

int speck_type_from_name(const char *name) {
    for (int t = 0; t < SPECK_TYPE_ID_MAX; t++)
        if (speck_type_name(t) && !strcasecmp(name, speck_type_name(t))) return t;
    return -1;
}

int64_t speck_type_block_size(speck_type t) {
    const speck_type_traits *tr = speck_traits(t);
    return tr ? tr->block : 1;
}

int64_t speck_type_block_bytes(speck_type t) {
    const speck_type_traits *tr = speck_traits(t);
    return tr ? tr->bytes : 0;
}

size_t speck_type_row_size(speck_type t, int64_t n) {
    return (size_t)(n / speck_type_block_size(t)) * (size_t)speck_type_block_bytes(t);
}
