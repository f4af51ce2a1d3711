// safetensors reader: one file or a sharded set (model.safetensors.index.json), mmap'd and fully
// validated before any tensor is handed out.
//
// File layout: u64 little-endian header length N, N bytes of JSON
//   {"__metadata__": {...}, "NAME": {"dtype": "BF16", "shape": [r, c], "data_offsets": [b, e]}}
// then the data region; offsets are relative to its start. Like the GGUF reader, nothing in the
// file is trusted: lengths, offsets and sizes are checked against the mapping with overflow-safe
// arithmetic, and tensors may neither overlap nor leave the data region.
#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "formats/hf_internal.h"
#include "speck.h"

// A header larger than this is not a real checkpoint (the biggest published ones are ~1 MB);
// the bound keeps a hostile length from making us allocate before the file-size check.
#define ST_MAX_HEADER (100u << 20)

typedef struct {
    char *path;
    uint8_t *map;
    size_t size;
} st_file;

struct speck_st {
    st_file *files;
    int n_files;
    speck_st_tensor *t;
    int64_t n, cap;
    int64_t *order; // tensor indices sorted by name (set once every file is read)
};

static int dtype_of(const char *s, speck_type *t, size_t *es) {
    if (!strcmp(s, "F32"))
        *t = SPECK_TYPE_F32, *es = 4;
    else if (!strcmp(s, "F16"))
        *t = SPECK_TYPE_F16, *es = 2;
    else if (!strcmp(s, "BF16"))
        *t = SPECK_TYPE_BF16, *es = 2;
    else
        return -1;
    return 0;
}

static int by_offset(const void *a, const void *b) {
    const speck_st_tensor *x = *(speck_st_tensor *const *)a, *y = *(speck_st_tensor *const *)b;
    const uint8_t *p = x->data, *q = y->data;
    return p < q ? -1 : p > q;
}

static int push_tensor(speck_st *s, const speck_st_tensor *t) {
    if (s->n == s->cap) {
        int64_t cap = s->cap ? s->cap * 2 : 64;
        speck_st_tensor *p = realloc(s->t, (size_t)cap * sizeof *p);
        if (!p) return speck_set_error(SPECK_ERR_NOMEM, "out of memory");
        s->t = p;
        s->cap = cap;
    }
    s->t[s->n++] = *t;
    return 0;
}

// Parse one tensor entry of file f (data region [data, data + data_size)).
static int parse_entry(speck_st *s, const st_file *f, const cJSON *e, const uint8_t *data,
                       uint64_t data_size) {
    const char *name = e->string, *path = f->path;
    if (!cJSON_IsObject(e))
        return speck_set_error(SPECK_ERR_FORMAT, "%s: tensor '%s': entry is not an object", path,
                               name);
    const cJSON *dt = cJSON_GetObjectItemCaseSensitive(e, "dtype");
    const cJSON *sh = cJSON_GetObjectItemCaseSensitive(e, "shape");
    const cJSON *of = cJSON_GetObjectItemCaseSensitive(e, "data_offsets");
    if (!cJSON_IsString(dt) || !cJSON_IsArray(sh) || !cJSON_IsArray(of) ||
        cJSON_GetArraySize(of) != 2)
        return speck_set_error(SPECK_ERR_FORMAT,
                               "%s: tensor '%s': needs dtype, shape and data_offsets [begin, end]",
                               path, name);
    speck_st_tensor t = {0};
    size_t es;
    if (dtype_of(dt->valuestring, &t.type, &es))
        return speck_set_error(SPECK_ERR_UNSUPPORTED,
                               "%s: tensor '%s': dtype %s is not supported (F32, F16, BF16)", path,
                               name, dt->valuestring);
    int nd = cJSON_GetArraySize(sh);
    if (nd > 8)
        return speck_set_error(SPECK_ERR_UNSUPPORTED, "%s: tensor '%s': %d dimensions (max 8)",
                               path, name, nd);
    t.n_dims = nd;
    uint64_t n = 1;
    for (int d = 0; d < nd; d++) {
        const cJSON *x = cJSON_GetArrayItem(sh, d);
        // Integers up to 2^53 survive cJSON's double; anything larger is rejected anyway.
        if (!cJSON_IsNumber(x) || x->valuedouble < 0 || x->valuedouble > 9007199254740992.0 ||
            x->valuedouble != (double)(int64_t)x->valuedouble)
            return speck_set_error(SPECK_ERR_FORMAT, "%s: tensor '%s': shape[%d] is not a size",
                                   path, name, d);
        t.shape[d] = (int64_t)x->valuedouble;
        if (t.shape[d] && n > UINT64_MAX / (uint64_t)t.shape[d] / es)
            return speck_set_error(SPECK_ERR_FORMAT, "%s: tensor '%s': shape overflows", path,
                                   name);
        n *= (uint64_t)t.shape[d];
    }
    uint64_t off[2];
    for (int k = 0; k < 2; k++) {
        const cJSON *x = cJSON_GetArrayItem(of, k);
        if (!cJSON_IsNumber(x) || x->valuedouble < 0 || x->valuedouble > 9007199254740992.0 ||
            x->valuedouble != (double)(uint64_t)x->valuedouble)
            return speck_set_error(SPECK_ERR_FORMAT,
                                   "%s: tensor '%s': data_offsets[%d] is not an offset", path, name,
                                   k);
        off[k] = (uint64_t)x->valuedouble;
    }
    if (off[0] > off[1] || off[1] > data_size)
        return speck_set_error(SPECK_ERR_FORMAT,
                               "%s: tensor '%s': data_offsets [%" PRIu64 ", %" PRIu64
                               "] out of bounds (data section is %" PRIu64 " bytes)",
                               path, name, off[0], off[1], data_size);
    if (off[1] - off[0] != n * es)
        return speck_set_error(SPECK_ERR_FORMAT,
                               "%s: tensor '%s': %" PRIu64 " bytes of data but shape x %s needs "
                               "%" PRIu64,
                               path, name, off[1] - off[0], dt->valuestring, n * es);
    t.n_elements = (int64_t)n;
    t.n_bytes = (size_t)(n * es);
    t.data = data + off[0];
    t.file = f->path;
    if (!(t.name = strdup(name))) return speck_set_error(SPECK_ERR_NOMEM, "out of memory");
    int rc = push_tensor(s, &t);
    if (rc) free((char *)t.name);
    return rc;
}

static int open_file(speck_st *s, const char *path) {
    st_file *files = realloc(s->files, (size_t)(s->n_files + 1) * sizeof *files);
    if (!files) return speck_set_error(SPECK_ERR_NOMEM, "out of memory");
    s->files = files;
    st_file *f = &files[s->n_files];
    memset(f, 0, sizeof *f);
    if (!(f->path = strdup(path))) return speck_set_error(SPECK_ERR_NOMEM, "out of memory");
    s->n_files++;
    int fd = open(path, O_RDONLY);
    if (fd < 0) return speck_set_error(SPECK_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        close(fd);
        return speck_set_error(SPECK_ERR_IO, "%s: not a regular file", path);
    }
    f->size = (size_t)st.st_size;
    if (f->size < 8) {
        close(fd);
        return speck_set_error(SPECK_ERR_FORMAT,
                               "%s: truncated file: %zu bytes, too short for the header length",
                               path, f->size);
    }
    void *m = mmap(NULL, f->size, PROT_READ, MAP_SHARED, fd, 0);
    close(fd); // the mapping keeps the file alive
    if (m == MAP_FAILED)
        return speck_set_error(SPECK_ERR_IO, "%s: mmap: %s", path, strerror(errno));
    f->map = m;
    uint64_t hlen;
    memcpy(&hlen, f->map, 8); // little-endian host (x86-64 / arm64)
    if (hlen > f->size - 8)
        return speck_set_error(SPECK_ERR_FORMAT,
                               "%s: header length %" PRIu64 " runs past the end of the file "
                               "(%zu bytes): truncated or not a safetensors file",
                               path, hlen, f->size);
    if (hlen > ST_MAX_HEADER || hlen < 2)
        return speck_set_error(SPECK_ERR_FORMAT, "%s: implausible header length %" PRIu64, path,
                               hlen);
    const char *end = NULL;
    cJSON *h = cJSON_ParseWithLengthOpts((const char *)f->map + 8, (size_t)hlen, &end, 0);
    if (!cJSON_IsObject(h)) {
        size_t at = h || !end ? 0 : (size_t)(end - ((const char *)f->map + 8));
        cJSON_Delete(h);
        return speck_set_error(SPECK_ERR_FORMAT, "%s: header is not a JSON object (near byte %zu)",
                               path, at);
    }
    const uint8_t *data = f->map + 8 + hlen;
    uint64_t data_size = f->size - 8 - hlen;
    int64_t first = s->n;
    int rc = 0;
    const cJSON *e;
    cJSON_ArrayForEach(e, h) {
        if (!strcmp(e->string, "__metadata__")) continue;
        if ((rc = parse_entry(s, f, e, data, data_size))) break;
    }
    cJSON_Delete(h);
    if (rc) return rc;
    // Overlap check: sort this file's tensors by start; each must begin at or after the end of
    // the previous one (empty tensors overlap nothing).
    int64_t nt = s->n - first;
    speck_st_tensor **idx = malloc((size_t)(nt + 1) * sizeof *idx);
    if (!idx) return speck_set_error(SPECK_ERR_NOMEM, "out of memory");
    for (int64_t i = 0; i < nt; i++) idx[i] = &s->t[first + i];
    qsort(idx, (size_t)nt, sizeof *idx, by_offset);
    const uint8_t *prev_end = data;
    const char *prev = NULL;
    for (int64_t i = 0; i < nt && !rc; i++) {
        const uint8_t *b = idx[i]->data;
        if (idx[i]->n_bytes && b < prev_end)
            rc = speck_set_error(SPECK_ERR_FORMAT, "%s: tensors '%s' and '%s' overlap", path, prev,
                                 idx[i]->name);
        if (idx[i]->n_bytes) prev_end = b + idx[i]->n_bytes, prev = idx[i]->name;
    }
    free(idx);
    return rc;
}

static _Thread_local const speck_st *t_sort;

static int by_name(const void *a, const void *b) {
    const int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    const int c = strcmp(t_sort->t[x].name, t_sort->t[y].name);
    return c ? c : (x > y) - (x < y);
}

// Sort the tensors by name, refusing a name that repeats; lookups then take log n (a header may
// list a million tensors: pairwise comparisons would take hours).
static int sort_names(speck_st *s) {
    free(s->order);
    if (!(s->order = malloc((size_t)(s->n ? s->n : 1) * sizeof *s->order)))
        return speck_set_error(SPECK_ERR_NOMEM, "out of memory");
    for (int64_t i = 0; i < s->n; i++) s->order[i] = i;
    t_sort = s;
    qsort(s->order, (size_t)s->n, sizeof *s->order, by_name);
    for (int64_t i = 1; i < s->n; i++) {
        const speck_st_tensor *a = &s->t[s->order[i - 1]], *b = &s->t[s->order[i]];
        if (!strcmp(a->name, b->name))
            return speck_set_error(SPECK_ERR_FORMAT, "%s: tensor '%s' appears twice (also in %s)",
                                   b->file, b->name, a->file);
    }
    return 0;
}

static bool is_dir(const char *p) {
    struct stat st;
    return stat(p, &st) == 0 && S_ISDIR(st.st_mode);
}

static bool exists(const char *p) {
    struct stat st;
    return stat(p, &st) == 0;
}

// Sharded checkpoint: open every shard the weight_map names and check that each listed tensor
// is in the shard it names.
static int open_index(speck_st *s, const char *index) {
    cJSON *j = hf_read_json(index);
    if (!j) return SPECK_ERR_FORMAT;
    const cJSON *wm = cJSON_GetObjectItemCaseSensitive(j, "weight_map");
    int rc = 0;
    if (!cJSON_IsObject(wm) || !wm->child) {
        cJSON_Delete(j);
        return speck_set_error(SPECK_ERR_FORMAT, "%s: weight_map: missing or empty", index);
    }
    char dir[PATH_MAX];
    snprintf(dir, sizeof dir, "%s", index);
    char *slash = strrchr(dir, '/');
    if (slash)
        slash[1] = 0;
    else
        dir[0] = 0;
    const cJSON *e;
    cJSON_ArrayForEach(e, wm) {
        if (!cJSON_IsString(e) || !e->valuestring[0] || strstr(e->valuestring, "..") ||
            e->valuestring[0] == '/') {
            rc = speck_set_error(SPECK_ERR_FORMAT, "%s: weight_map[\"%s\"]: bad shard name", index,
                                 e->string);
            break;
        }
        char path[PATH_MAX];
        snprintf(path, sizeof path, "%s%s", dir, e->valuestring);
        bool seen = false;
        for (int i = 0; i < s->n_files && !seen; i++) seen = !strcmp(s->files[i].path, path);
        if (seen) continue;
        if (!exists(path)) {
            rc = speck_set_error(SPECK_ERR_IO,
                                 "%s: weight_map names shard '%s' (for tensor '%s'), which does "
                                 "not exist",
                                 index, e->valuestring, e->string);
            break;
        }
        if ((rc = open_file(s, path))) break;
    }
    if (!rc) rc = sort_names(s);
    for (e = wm->child; !rc && e; e = e->next) {
        const speck_st_tensor *t = speck_st_find(s, e->string);
        if (!t)
            rc = speck_set_error(SPECK_ERR_FORMAT,
                                 "%s: tensor '%s' is listed in the index but "
                                 "missing from shard '%s'",
                                 index, e->string, e->valuestring);
        else if (strcmp(strrchr(t->file, '/') ? strrchr(t->file, '/') + 1 : t->file,
                        strrchr(e->valuestring, '/') ? strrchr(e->valuestring, '/') + 1
                                                     : e->valuestring))
            rc = speck_set_error(SPECK_ERR_FORMAT,
                                 "%s: tensor '%s' is listed in shard '%s' but "
                                 "found in '%s'",
                                 index, e->string, e->valuestring, t->file);
    }
    cJSON_Delete(j);
    return rc;
}

speck_st *speck_st_open(const char *path) {
    if (!path) {
        speck_set_error(SPECK_ERR_ARG, "speck_st_open: NULL path");
        return NULL;
    }
    speck_st *s = calloc(1, sizeof *s);
    if (!s) {
        speck_set_error(SPECK_ERR_NOMEM, "out of memory");
        return NULL;
    }
    int rc;
    size_t n = strlen(path);
    if (is_dir(path)) {
        char p[PATH_MAX];
        snprintf(p, sizeof p, "%s/model.safetensors.index.json", path);
        if (exists(p))
            rc = open_index(s, p);
        else {
            snprintf(p, sizeof p, "%s/model.safetensors", path);
            rc = exists(p) ? open_file(s, p)
                           : speck_set_error(SPECK_ERR_IO,
                                             "%s: no model.safetensors or "
                                             "model.safetensors.index.json in the directory",
                                             path);
        }
    } else if (n > 5 && !strcmp(path + n - 5, ".json")) {
        rc = open_index(s, path);
    } else {
        rc = open_file(s, path);
    }
    if (!rc && !s->order) rc = sort_names(s);
    if (rc) {
        speck_st_close(s);
        return NULL;
    }
    return s;
}

void speck_st_close(speck_st *s) {
    if (!s) return;
    for (int64_t i = 0; i < s->n; i++) free((char *)s->t[i].name);
    for (int i = 0; i < s->n_files; i++) {
        if (s->files[i].map) munmap(s->files[i].map, s->files[i].size);
        free(s->files[i].path);
    }
    free(s->files);
    free(s->t);
    free(s->order);
    free(s);
}

int64_t speck_st_n_tensors(const speck_st *s) {
    return s->n;
}

const speck_st_tensor *speck_st_tensor_at(const speck_st *s, int64_t i) {
    return i >= 0 && i < s->n ? &s->t[i] : NULL;
}

const speck_st_tensor *speck_st_find(const speck_st *s, const char *name) {
    for (int64_t lo = 0, hi = s->n; lo < hi;) {
        const int64_t mid = lo + (hi - lo) / 2;
        const speck_st_tensor *t = &s->t[s->order[mid]];
        const int c = strcmp(name, t->name);
        if (!c) return t;
        if (c < 0)
            hi = mid;
        else
            lo = mid + 1;
    }
    return NULL;
}

size_t speck_st_largest_file(const speck_st *s) {
    size_t m = 0;
    for (int i = 0; i < s->n_files; i++)
        if (s->files[i].size > m) m = s->files[i].size;
    return m;
}
