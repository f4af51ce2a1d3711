// Training data: tokenize a directory of text files into train/validation token streams (split
// by file), cache them, and sample reproducible batches.
//
// Cache file (little-endian): "SPKTOK01", u64 key, u64 n_train, u64 n_val, u32 files_train,
// u32 files_val, then int32 train[n_train], int32 val[n_val]. key hashes the vocabulary, every
// file's relative path, size and mtime, and val_fraction.
#include <dirent.h>
#include <errno.h>
#include <fnmatch.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "formats/gguf_internal.h"
#include "train/train_internal.h"

typedef struct {
    char **paths; // relative to the root
    int n, cap;
} file_list;

static uint64_t fnv(uint64_t h, const void *p, size_t n) {
    const uint8_t *b = p;
    for (size_t i = 0; i < n; i++) h = (h ^ b[i]) * 0x100000001b3ULL;
    return h;
}

static int list_add(file_list *l, const char *rel) {
    if (l->n == l->cap) {
        int cap = l->cap ? l->cap * 2 : 256;
        char **p = realloc(l->paths, (size_t)cap * sizeof *p);
        if (!p) return -1;
        l->paths = p, l->cap = cap;
    }
    return (l->paths[l->n++] = strdup(rel)) ? 0 : -1;
}

// Recursive walk of root/rel collecting regular files whose base name matches glob.
static int walk(const char *root, const char *rel, const char *glob, file_list *out, int depth) {
    char path[4096];
    snprintf(path, sizeof path, "%s%s%s", root, *rel ? "/" : "", rel);
    DIR *d = opendir(path);
    if (!d)
        return speck_set_error(SPECK_ERR_IO, "%s: cannot open directory: %s", path,
                               strerror(errno));
    struct dirent *e;
    int err = 0;
    while (!err && (e = readdir(d))) {
        if (e->d_name[0] == '.') continue;
        char sub[4096], full[4096];
        if ((size_t)snprintf(sub, sizeof sub, "%s%s%s", rel, *rel ? "/" : "", e->d_name) >=
                sizeof sub ||
            (size_t)snprintf(full, sizeof full, "%s/%s", root, sub) >= sizeof full)
            continue; // path too long
        struct stat st;
        if (stat(full, &st)) continue;
        if (S_ISDIR(st.st_mode)) {
            if (depth < 32) err = walk(root, sub, glob, out, depth + 1);
        } else if (S_ISREG(st.st_mode) && !fnmatch(glob, e->d_name, 0)) {
            if (list_add(out, sub)) err = speck_set_error(SPECK_ERR_NOMEM, "out of memory");
        }
    }
    closedir(d);
    return err;
}

static int cmp_str(const void *a, const void *b) {
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static bool is_val(const char *rel, double frac) {
    uint64_t h = fnv(0xcbf29ce484222325ULL, rel, strlen(rel));
    h ^= h >> 29;
    return (double)(h % 1000000) < frac * 1e6;
}

static uint64_t vocab_key(const speck_vocab *v) {
    uint64_t h = 0xcbf29ce484222325ULL;
    int32_t n = speck_vocab_n_tokens(v);
    h = fnv(h, &n, sizeof n);
    for (int32_t i = 0; i < n; i++) {
        const char *t = speck_vocab_token_text(v, i);
        h = fnv(h, t, strlen(t) + 1);
    }
    return h;
}

typedef struct {
    int32_t *d;
    int64_t n, cap;
} ibuf;

static int ibuf_reserve(ibuf *b, int64_t extra) {
    if (b->n + extra <= b->cap) return 0;
    int64_t cap = b->cap ? b->cap : 1 << 16;
    while (cap < b->n + extra) cap *= 2;
    int32_t *d = realloc(b->d, (size_t)cap * sizeof *d);
    if (!d) return -1;
    b->d = d, b->cap = cap;
    return 0;
}

static int tokenize_file(const char *path, const speck_vocab *v, ibuf *out) {
    FILE *f = fopen(path, "rb");
    if (!f) return speck_set_error(SPECK_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
    long len = fseek(f, 0, SEEK_END) == 0 ? ftell(f) : -1; // -1: not seekable (a pipe, ...)
    char *text = len >= 0 && fseek(f, 0, SEEK_SET) == 0 ? malloc((size_t)len + 1) : NULL;
    if (!text || fread(text, 1, (size_t)len, f) != (size_t)len) {
        free(text);
        fclose(f);
        return speck_set_error(SPECK_ERR_IO, "%s: read failed", path);
    }
    fclose(f);
    int err = 0;
    // Tokens never outnumber bytes (+ specials); one pass with a buffer of that size.
    if (ibuf_reserve(out, len + 2)) err = speck_set_error(SPECK_ERR_NOMEM, "out of memory");
    if (!err) {
        int64_t n = speck_tokenize(v, text, (size_t)len, false, false, out->d + out->n, len + 2);
        if (n < 0)
            err = (int)n;
        else if (n > len + 2)
            err = speck_set_error(SPECK_ERR_FORMAT, "%s: tokenizer overflow", path);
        else
            out->n += n;
    }
    free(text);
    int32_t eos = speck_vocab_eos(v);
    if (!err && eos >= 0 && len > 0) { // documents are separated by EOS
        if (ibuf_reserve(out, 1)) return speck_set_error(SPECK_ERR_NOMEM, "out of memory");
        out->d[out->n++] = eos;
    }
    return err;
}

#define CACHE_HEADER 40 // magic, key, n_train, n_val, files_train, files_val

// A cache that does not hold exactly what its header says, or holds an id outside the
// vocabulary (a damaged file, or one written for another vocabulary whose key collides), is
// ignored and rebuilt: the ids index the embedding table when training.
static int cache_read(const char *path, uint64_t key, int32_t n_vocab, speck_token_data *out) {
    FILE *f = fopen(path, "rb");
    if (!f) return -1;
    char magic[8];
    uint64_t k, nt, nv;
    uint32_t ft, fv;
    long size = fseek(f, 0, SEEK_END) == 0 ? ftell(f) : -1;
    int ok = size >= CACHE_HEADER && fseek(f, 0, SEEK_SET) == 0 && fread(magic, 1, 8, f) == 8 &&
             !memcmp(magic, "SPKTOK01", 8) && fread(&k, 8, 1, f) == 1 && k == key &&
             fread(&nt, 8, 1, f) == 1 && fread(&nv, 8, 1, f) == 1 && fread(&ft, 4, 1, f) == 1 &&
             fread(&fv, 4, 1, f) == 1 && nt <= (uint64_t)(size - CACHE_HEADER) / 4 &&
             nv == (uint64_t)(size - CACHE_HEADER) / 4 - nt && (size - CACHE_HEADER) % 4 == 0;
    if (ok) {
        out->train = malloc((size_t)(nt ? nt : 1) * 4);
        out->val = malloc((size_t)(nv ? nv : 1) * 4);
        ok = out->train && out->val && fread(out->train, 4, nt, f) == nt &&
             fread(out->val, 4, nv, f) == nv;
    }
    for (uint64_t i = 0; ok && i < nt + nv; i++) {
        int32_t id = i < nt ? out->train[i] : out->val[i - nt];
        ok = id >= 0 && id < n_vocab;
    }
    fclose(f);
    if (!ok) {
        free(out->train), free(out->val);
        out->train = out->val = NULL;
        return -1;
    }
    out->n_train = (int64_t)nt, out->n_val = (int64_t)nv;
    out->n_files_train = (int)ft, out->n_files_val = (int)fv;
    out->from_cache = true;
    return 0;
}

static int cache_write(const char *path, uint64_t key, const speck_token_data *d) {
    char tmp[4096];
    FILE *f = speck_atomic_open(path, tmp, sizeof tmp);
    if (!f) return SPECK_ERR_IO;
    uint64_t nt = (uint64_t)d->n_train, nv = (uint64_t)d->n_val;
    uint32_t ft = (uint32_t)d->n_files_train, fv = (uint32_t)d->n_files_val;
    fwrite("SPKTOK01", 1, 8, f);
    fwrite(&key, 8, 1, f), fwrite(&nt, 8, 1, f), fwrite(&nv, 8, 1, f);
    fwrite(&ft, 4, 1, f), fwrite(&fv, 4, 1, f);
    if (nt) fwrite(d->train, 4, nt, f);
    if (nv) fwrite(d->val, 4, nv, f);
    return speck_atomic_commit(f, tmp, path);
}

int speck_token_data_build(const char *dir, const char *glob, const speck_vocab *v,
                           double val_fraction, const char *cache_path, speck_token_data *out) {
    memset(out, 0, sizeof *out);
    if (!(val_fraction >= 0 && val_fraction < 1))
        return speck_set_error(SPECK_ERR_ARG, "data: validation fraction %g not in [0, 1)",
                               val_fraction);
    struct stat st;
    if (stat(dir, &st))
        return speck_set_error(SPECK_ERR_IO, "%s: cannot read corpus: %s", dir, strerror(errno));
    file_list fl = {0};
    int err = 0;
    if (S_ISDIR(st.st_mode)) {
        err = walk(dir, "", glob ? glob : "*", &fl, 0);
    } else if (list_add(&fl, "")) {
        err = speck_set_error(SPECK_ERR_NOMEM, "out of memory");
    }
    if (!err && fl.n == 0)
        err = speck_set_error(SPECK_ERR_ARG, "%s: no files match '%s' (empty corpus)", dir,
                              glob ? glob : "*");
    if (!err) qsort(fl.paths, (size_t)fl.n, sizeof *fl.paths, cmp_str);
    uint64_t key = vocab_key(v);
    key = fnv(key, &val_fraction, sizeof val_fraction);
    char full[4096];
    for (int i = 0; !err && i < fl.n; i++) {
        snprintf(full, sizeof full, "%s%s%s", dir, *fl.paths[i] ? "/" : "", fl.paths[i]);
        if (stat(full, &st)) {
            err = speck_set_error(SPECK_ERR_IO, "%s: %s", full, strerror(errno));
            break;
        }
        key = fnv(key, fl.paths[i], strlen(fl.paths[i]) + 1);
        key = fnv(key, &st.st_size, sizeof st.st_size);
        key = fnv(key, &st.st_mtime, sizeof st.st_mtime);
    }
    if (!err && !(cache_path && cache_read(cache_path, key, speck_vocab_n_tokens(v), out) == 0)) {
        ibuf tr = {0}, va = {0};
        for (int i = 0; !err && i < fl.n; i++) {
            snprintf(full, sizeof full, "%s%s%s", dir, *fl.paths[i] ? "/" : "", fl.paths[i]);
            bool val = *fl.paths[i] && is_val(fl.paths[i], val_fraction);
            err = tokenize_file(full, v, val ? &va : &tr);
            if (val)
                out->n_files_val++;
            else
                out->n_files_train++;
        }
        out->train = tr.d, out->n_train = tr.n, out->val = va.d, out->n_val = va.n;
        if (!err && cache_path) err = cache_write(cache_path, key, out);
    }
    if (!err && out->n_train == 0)
        err = speck_set_error(SPECK_ERR_ARG,
                              "%s: the training split holds no tokens (empty files, or every file "
                              "went to validation)",
                              dir);
    for (int i = 0; i < fl.n; i++) free(fl.paths[i]);
    free(fl.paths);
    if (err) speck_token_data_free(out);
    return err;
}

void speck_token_data_free(speck_token_data *d) {
    free(d->train);
    free(d->val);
    memset(d, 0, sizeof *d);
}

static uint64_t mix(uint64_t x) {
    x += 0x9e3779b97f4a7c15ULL;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
    return x ^ (x >> 31);
}

int speck_token_data_sample(const speck_token_data *d, uint64_t seed, int64_t step, int micro,
                            int b, int T, int32_t *in, int32_t *tg) {
    if (d->n_train < (int64_t)T + 1)
        return speck_set_error(SPECK_ERR_ARG,
                               "data: the training split has %lld tokens, fewer than the "
                               "sequence length + 1 = %d",
                               (long long)d->n_train, T + 1);
    uint64_t r = mix(mix(mix(mix(seed) ^ (uint64_t)step) ^ (uint64_t)micro) ^ (uint64_t)b);
    int64_t off = (int64_t)(r % (uint64_t)(d->n_train - T));
    memcpy(in, d->train + off, (size_t)T * sizeof *in);
    memcpy(tg, d->train + off + 1, (size_t)T * sizeof *tg);
    return 0;
}
