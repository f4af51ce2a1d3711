// Internals shared by the Hugging Face converter files (hf_convert.c, hf_export.c,
// hf_tokenizer.c).
#ifndef SPECK_HF_INTERNAL_H
#define SPECK_HF_INTERNAL_H

#include <cjson/cJSON.h>
#include <stdbool.h>
#include <stdint.h>

#include "speck.h"

// Read and parse a JSON file; NULL with an error naming the file.
cJSON *hf_read_json(const char *path);
// Write a cJSON tree to path (pretty-printed), plain file (the caller's directory is temporary).
int hf_write_json(const cJSON *j, const char *path);

// tokenizer.json (+ tokenizer_config.json) in dir -> tokenizer.ggml.* keys and
// tokenizer.chat_template, with the token list padded to n_vocab entries (the embedding rows).
int hf_tokenizer_to_gguf(speck_gguf_writer *w, const char *dir, int64_t n_vocab);
// GGUF tokenizer.ggml.* keys -> tokenizer.json + tokenizer_config.json in dir. n_ctx goes to
// model_max_length.
int hf_tokenizer_from_gguf(const speck_gguf *g, const char *dir, int n_ctx);

#endif

// Rows [r0, r0 + n) of a (rows, cols) matrix converted from src (type st, whole tensor) into
// dst (type dt, n rows), in parallel. qk_head_dim > 0 reorders rows inside each head of that
// size: dir = +1 from Hugging Face's rotate-half layout to GGUF "llama"'s interleaved one,
// dir = -1 back.
void hf_convert_rows(const void *src, speck_type st, void *dst, speck_type dt, int64_t r0,
                     int64_t n, int64_t cols, int qk_head_dim, int dir);
// Drop a read-only mapped range's pages from this process (they are re-read if touched again),
// so converting a checkpoint keeps RSS near one tensor's worth rather than the whole file.
void hf_release(const void *p, size_t n);

// Progress bar on stderr: tensor i of n, bytes read, MB/s.
typedef struct {
    bool on;
    int64_t n;
    double t0, last;
    size_t bytes;
} hf_progress;
void hf_progress_start(hf_progress *p, bool on, int64_t n);
void hf_progress_step(hf_progress *p, int64_t i, const char *name, size_t bytes);
void hf_progress_end(hf_progress *p, const char *what);
