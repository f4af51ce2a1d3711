// Internals shared by the GGUF reader/writer and the model code.
#ifndef SPECK_GGUF_INTERNAL_H
#define SPECK_GGUF_INTERNAL_H

#include <stdio.h>

#include "speck.h"

// Lower-case label of any ggml type id ("q4_k", ...) or "unknown".
const char *speck_gguf_type_label(int type);

// Atomic output files: open a temporary file beside `path`; commit renames it over `path`
// (after fsync), abort removes it. tmp must hold PATH_MAX bytes.
FILE *speck_atomic_open(const char *path, char *tmp, size_t tmp_size);
int speck_atomic_commit(FILE *f, const char *tmp, const char *path);
void speck_atomic_abort(FILE *f, const char *tmp);

#endif
