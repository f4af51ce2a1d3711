// Internals shared by the GGUF reader/writer and the model code.
#ifndef SPECK_GGUF_INTERNAL_H
#define SPECK_GGUF_INTERNAL_H

#include <stdio.h>

#include "speck.h"

// Lower-case label of any ggml type id ("q4_k", ...) or "unknown".
const char *speck_gguf_type_label(int type);

// Bytes of one value of a scalar metadata type (0 for strings, arrays and unknown types).
size_t speck_gguf_vtype_size(speck_gguf_vtype t);

// llama.cpp's general.file_type code for a model whose matrices are of type t (ALL_F32 = 0,
// MOSTLY_F16 = 1, MOSTLY_Q4_0 = 2, MOSTLY_Q8_0 = 7, MOSTLY_BF16 = 32, MOSTLY_Q4_K_S = 14, ...:
// the file_type column of src/quant/quant_types.c).
int speck_gguf_file_type(int t);

// Drop the resident pages of [p, p + len) (inside g's tensor data) from this process: they are
// read from the file again if touched. For weights the model has copied into another layout.
// Returns -1 (and drops nothing) when g holds an anonymous copy of the file (SPECK_LOAD_HUGEPAGES).
int speck_gguf_release(speck_gguf *g, const void *p, size_t len);
// Whether g's tensor data is a mapping of the file (so speck_gguf_release can drop pages).
int speck_gguf_file_mapped(const speck_gguf *g);

// The file's bytes as the reader holds them (the mapping, or the anonymous copy), for the bounds
// checks of tests and fuzz targets: every pointer the accessors return lies inside them.
const uint8_t *speck_gguf_bytes(const speck_gguf *g);
// A GGUF file held in memory (n bytes, copied; `name` stands for the path in messages): the
// same validation as speck_gguf_open.
speck_gguf *speck_gguf_open_mem(const void *data, size_t n, const char *name);

// Atomic output files: open a temporary file beside `path`; commit renames it over `path`
// (after fsync), abort removes it. tmp must hold PATH_MAX bytes.
FILE *speck_atomic_open(const char *path, char *tmp, size_t tmp_size);
int speck_atomic_commit(FILE *f, const char *tmp, const char *path);
void speck_atomic_abort(FILE *f, const char *tmp);

#endif
