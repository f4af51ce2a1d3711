// Helpers shared by the fuzz targets and the seed generator: inputs as in-memory files, a scratch
// directory, and the invariants every tokenizer must keep. (Micro artifacts: fuzz_micro.c.)
#define _GNU_SOURCE
#include "fuzz_common.h"

#include <errno.h>
#include <ftw.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "tokenizer/tokenizer_internal.h"

void fuzz_fail(const char *file, int line, const char *cond, const char *fmt, ...) {
    fprintf(stderr, "\n%s:%d: invariant violated: %s\n  ", file, line, cond);
    va_list ap;
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fprintf(stderr, "\n  last speck error: %s\n", speck_last_error());
    abort();
}

void fuzz_setup(void) {
    speck_set_threads(1);
#ifdef SPECK_FUZZ_ISA
    // The fuzz build compiles the AVX-512 kernels without ASan (CMakeLists.txt): run the AVX2 ones,
    // which keep it. A CPU without AVX2 stays on its best (scalar) path.
    (void)speck_set_isa(SPECK_FUZZ_ISA);
#endif
}

int fuzz_memfile(const void *data, size_t size, char *path, size_t path_size) {
    int fd = memfd_create("speck-fuzz", MFD_CLOEXEC);
    if (fd < 0) return -1;
    const uint8_t *p = data;
    for (size_t off = 0; off < size;) {
        ssize_t w = write(fd, p + off, size - off);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) {
            close(fd);
            return -1;
        }
        off += (size_t)w;
    }
    snprintf(path, path_size, "/proc/self/fd/%d", fd);
    return fd;
}

static char g_scratch[256];

static int rm_one(const char *path, const struct stat *st, int flag, struct FTW *ftw) {
    (void)st, (void)flag, (void)ftw;
    return remove(path);
}

static void scratch_cleanup(void) {
    if (g_scratch[0]) nftw(g_scratch, rm_one, 16, FTW_DEPTH | FTW_PHYS);
}

const char *fuzz_scratch(void) {
    if (g_scratch[0]) return g_scratch;
    struct stat st;
    const char *base = stat("/dev/shm", &st) == 0 && S_ISDIR(st.st_mode) ? "/dev/shm" : NULL;
    if (!base) base = getenv("TMPDIR");
    if (!base || !*base) base = "/tmp";
    snprintf(g_scratch, sizeof g_scratch, "%s/speck-fuzz-XXXXXX", base);
    if (!mkdtemp(g_scratch)) {
        fprintf(stderr, "fuzz: cannot create a scratch directory in %s: %s\n", base,
                strerror(errno));
        abort();
    }
    atexit(scratch_cleanup);
    return g_scratch;
}

char *fuzz_path(const char *dir, const char *name) {
    size_t n = strlen(dir) + strlen(name) + 2;
    char *p = malloc(n);
    if (!p) abort();
    snprintf(p, n, "%s/%s", dir, name);
    return p;
}

int fuzz_write(const char *dir, const char *name, const void *data, size_t size) {
    char *path = fuzz_path(dir, name);
    FILE *f = fopen(path, "wb");
    free(path);
    if (!f) return -1;
    int ok = fwrite(data, 1, size, f) == size;
    return fclose(f) == 0 && ok ? 0 : -1;
}

void fuzz_remove(const char *dir, const char *name) {
    char *path = fuzz_path(dir, name);
    nftw(path, rm_one, 16, FTW_DEPTH | FTW_PHYS);
    free(path);
}

uint8_t *fuzz_read(const char *path, size_t *size) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    uint8_t *buf = NULL;
    size_t n = 0, cap = 0;
    for (;;) {
        if (n + 65536 + 1 > cap) {
            cap = (n + 65536 + 1) * 2;
            uint8_t *p = realloc(buf, cap);
            if (!p) abort();
            buf = p;
        }
        size_t r = fread(buf + n, 1, 65536, f);
        n += r;
        if (r < 65536) break;
    }
    fclose(f);
    buf[n] = 0;
    *size = n;
    return buf;
}

fuzz_span fuzz_split(fuzz_span *rest, uint8_t sep) {
    fuzz_span head = *rest;
    const uint8_t *s = rest->n ? memchr(rest->p, sep, rest->n) : NULL;
    if (!s) {
        *rest = (fuzz_span){NULL, 0};
        return head;
    }
    head.n = (size_t)(s - rest->p);
    *rest = (fuzz_span){s + 1, rest->n - head.n - 1};
    return head;
}

char *fuzz_strdup(fuzz_span s) {
    char *r = malloc(s.n + 1);
    if (!r) abort();
    if (s.n) memcpy(r, s.p, s.n);
    r[s.n] = 0;
    return r;
}

/* ---- tokenizer invariants ---- */

bool fuzz_tokenize_may_fail;

void fuzz_tokenize_check(const speck_vocab *v, const char *text, size_t len, bool add_special,
                         bool parse_special, bool round_trip) {
    const int32_t n_tok = speck_vocab_n_tokens(v);
    int64_t cap = (int64_t)len / 2 + 4; // often too small: the second call path is checked too
    int32_t *ids = malloc((size_t)cap * sizeof *ids);
    if (!ids) abort();
    int64_t n = speck_tokenize(v, text, len, add_special, parse_special, ids, cap);
    if (n < 0 && fuzz_tokenize_may_fail) {
        FUZZ_CHECK(speck_last_error()[0] != 0, "tokenize failed without a message");
        free(ids);
        return;
    }
    FUZZ_CHECK(n >= 0, "speck_tokenize failed on %zu bytes", len);
    if (n > cap) {
        free(ids);
        ids = malloc((size_t)n * sizeof *ids);
        if (!ids) abort();
        int64_t again = speck_tokenize(v, text, len, add_special, parse_special, ids, n);
        FUZZ_CHECK(again == n, "second call gave %lld ids, first %lld", (long long)again,
                   (long long)n);
    }
    for (int64_t i = 0; i < n; i++)
        FUZZ_CHECK(ids[i] >= 0 && ids[i] < n_tok, "id %d at %lld outside [0, %d)", ids[i],
                   (long long)i, n_tok);
    int64_t need = speck_detokenize(v, ids, n, NULL, 0);
    FUZZ_CHECK(need >= 0, "speck_detokenize failed");
    char *out = malloc((size_t)need + 1);
    if (!out) abort();
    FUZZ_CHECK(speck_detokenize(v, ids, n, out, need + 1) == need && out[need] == 0,
               "detokenize into an exact buffer");
    char small[4];
    FUZZ_CHECK(speck_detokenize(v, ids, n, small, sizeof small) == need &&
                   small[need < 3 ? need : 3] == 0,
               "detokenize into a short buffer");
    // Streamed text must add up to the one-call text.
    speck_detok *d = speck_detok_new(v);
    if (!d) abort();
    size_t sn = 0;
    char *streamed = malloc((size_t)need + 1);
    if (!streamed) abort();
    for (int64_t i = 0; i <= n; i++) {
        const char *s = i < n ? speck_detok_push(d, ids[i]) : speck_detok_flush(d);
        FUZZ_CHECK(s != NULL, "detok push of id %d", i < n ? ids[i] : -1);
        size_t k = strlen(s);
        FUZZ_CHECK(sn + k <= (size_t)need, "streamed text longer than the decoded text");
        memcpy(streamed + sn, s, k);
        sn += k;
    }
    // NUL bytes end a streamed chunk (it is a C string), so compare only NUL-free texts.
    if (!memchr(out, 0, (size_t)need))
        FUZZ_CHECK(sn == (size_t)need && !memcmp(streamed, out, sn),
                   "streamed text (%zu bytes) differs from decoded text (%lld bytes)", sn,
                   (long long)need);
    FUZZ_CHECK(speck_detok_push(d, n_tok) == NULL && speck_detok_push(d, -1) == NULL,
               "out-of-range ids must be refused");
    speck_detok_free(d);
    free(streamed);
    for (int64_t i = 0; i < n; i++) {
        char piece[8];
        int k = speck_token_to_piece(v, ids[i], piece, sizeof piece);
        FUZZ_CHECK(k >= 0, "token_to_piece(%d)", ids[i]);
    }
    FUZZ_CHECK(speck_token_to_piece(v, n_tok, small, sizeof small) < 0,
               "token_to_piece out of range");
    if (round_trip)
        FUZZ_CHECK((size_t)need == len && !memcmp(out, text, len),
                   "decode(encode(text)) != text (%zu -> %lld bytes)", len, (long long)need);
    free(out);
    free(ids);
}

/* ---- Hugging Face conversion ---- */

void fuzz_convert_and_run(const char *dir, const char *out, int type) {
    struct stat st;
    if (speck_hf_convert(dir, out, type, false) != 0) {
        FUZZ_CHECK(stat(out, &st) != 0, "a failed conversion left %s behind", out);
        return;
    }
    speck_model *m = speck_model_load(out);
    FUZZ_CHECK(m != NULL, "the converted model does not load");
    speck_ctx *c = speck_ctx_new(m, 2);
    FUZZ_CHECK(c != NULL, "context");
    const int nv = speck_model_hparams(m)->n_vocab;
    float *logits = malloc((size_t)nv * sizeof *logits);
    if (!logits) abort();
    int32_t tok = nv - 1;
    FUZZ_CHECK(speck_forward(c, 1, &tok, NULL, NULL, NULL, 0, logits) == 0, "forward");
    free(logits);
    speck_ctx_free(c);
    speck_model_free(m);
    unlink(out);
}
