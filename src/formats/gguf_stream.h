// Streaming GGUF output: the header is written from a speck_gguf_writer whose tensors were added
// with NULL data (only shapes and types), then each tensor's bytes are appended in order, so a
// converter holds one tensor (or one row) at a time instead of the whole model.
#ifndef SPECK_GGUF_STREAM_H
#define SPECK_GGUF_STREAM_H

#include <stddef.h>
#include <stdint.h>

#include "speck.h"

// gguf_write.c: serialize the header (fixing tensor offsets); *out is malloc'd.
int speck_gguf_writer_header(speck_gguf_writer *w, uint8_t **out, size_t *len);
int64_t speck_gguf_writer_n_tensors(const speck_gguf_writer *w);
size_t speck_gguf_writer_tensor_bytes(const speck_gguf_writer *w, int64_t i);

typedef struct speck_gguf_stream speck_gguf_stream;

// Write w's header to a temporary file beside path. w must outlive the stream.
speck_gguf_stream *speck_gguf_stream_open(speck_gguf_writer *w, const char *path);
// Append n bytes of tensor data; the stream tracks tensor boundaries and inserts the alignment
// padding. Writing more bytes than the tensors hold is an error.
int speck_gguf_stream_write(speck_gguf_stream *s, const void *data, size_t n);
// Check every tensor was written in full, fsync and rename into place. Frees s (also on error,
// when the temporary file is removed).
int speck_gguf_stream_close(speck_gguf_stream *s);
// Give up: remove the temporary file and free s (NULL is fine).
void speck_gguf_stream_abort(speck_gguf_stream *s);

#endif
