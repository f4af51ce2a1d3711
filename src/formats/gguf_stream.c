// Streaming GGUF writer (see gguf_stream.h): header from gguf_write.c, then tensor bytes appended
// in order, with the same atomic temporary-file + rename as speck_gguf_writer_save.
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "formats/gguf_internal.h"
#include "formats/gguf_stream.h"

#define ALIGN 32 // must match gguf_write.c (the header records no general.alignment)

struct speck_gguf_stream {
    speck_gguf_writer *w;
    FILE *f;
    char *path;
    char tmp[PATH_MAX];
    int64_t cur;     // tensor being written
    size_t cur_done; // bytes of it written so far
};

speck_gguf_stream *speck_gguf_stream_open(speck_gguf_writer *w, const char *path) {
    speck_gguf_stream *s = calloc(1, sizeof *s);
    uint8_t *h = NULL;
    size_t hn = 0;
    if (!s || !(s->path = strdup(path))) {
        free(s);
        speck_set_error(SPECK_ERR_NOMEM, "out of memory");
        return NULL;
    }
    s->w = w;
    if (speck_gguf_writer_header(w, &h, &hn) ||
        !(s->f = speck_atomic_open(path, s->tmp, sizeof s->tmp))) {
        free(h);
        free(s->path);
        free(s);
        return NULL;
    }
    int ok = fwrite(h, 1, hn, s->f) == hn;
    free(h);
    if (!ok) {
        int err = errno;
        speck_gguf_stream_abort(s);
        speck_set_error(SPECK_ERR_IO, "%s: write failed: %s", path, strerror(err));
        return NULL;
    }
    return s;
}

// Finish tensors that are complete (padding them), including empty ones.
static int advance(speck_gguf_stream *s) {
    static const uint8_t zeros[ALIGN];
    int64_t nt = speck_gguf_writer_n_tensors(s->w);
    while (s->cur < nt && s->cur_done == speck_gguf_writer_tensor_bytes(s->w, s->cur)) {
        size_t pad = (ALIGN - s->cur_done % ALIGN) % ALIGN;
        if (pad && fwrite(zeros, 1, pad, s->f) != pad)
            return speck_set_error(SPECK_ERR_IO, "%s: write failed: %s", s->path, strerror(errno));
        s->cur++;
        s->cur_done = 0;
    }
    return 0;
}

int speck_gguf_stream_write(speck_gguf_stream *s, const void *data, size_t n) {
    const uint8_t *p = data;
    int64_t nt = speck_gguf_writer_n_tensors(s->w);
    while (n) {
        if (advance(s)) return SPECK_ERR_IO;
        if (s->cur >= nt)
            return speck_set_error(SPECK_ERR_ARG, "%s: more tensor data than the header declares",
                                   s->path);
        size_t room = speck_gguf_writer_tensor_bytes(s->w, s->cur) - s->cur_done;
        size_t k = n < room ? n : room;
        if (fwrite(p, 1, k, s->f) != k)
            return speck_set_error(SPECK_ERR_IO, "%s: write failed: %s", s->path, strerror(errno));
        s->cur_done += k;
        p += k;
        n -= k;
    }
    return advance(s);
}

int speck_gguf_stream_close(speck_gguf_stream *s) {
    int rc = advance(s);
    if (!rc && s->cur != speck_gguf_writer_n_tensors(s->w))
        rc = speck_set_error(SPECK_ERR_ARG, "%s: tensor #%lld was not written in full", s->path,
                             (long long)s->cur);
    if (rc) {
        speck_gguf_stream_abort(s);
        return rc;
    }
    rc = speck_atomic_commit(s->f, s->tmp, s->path);
    free(s->path);
    free(s);
    return rc;
}

void speck_gguf_stream_abort(speck_gguf_stream *s) {
    if (!s) return;
    speck_atomic_abort(s->f, s->tmp);
    free(s->path);
    free(s);
}
