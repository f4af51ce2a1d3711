// Fine-tuning deltas (src/adapt/delta.c, delta_io.c) on small synthetic f32 GGUF "models":
// extract then apply gives the tuned model bit for bit; DARE keeps ~1-p of a matrix (binomial
// bound), rescales kept values exactly, reproducibly per seed; DAREx-q's factor; ComPEFT keeps
// the top-k magnitudes as ±scale; files round-trip and their sizes reflect the compression;
// bad input (other shapes, other architecture, missing tensors, truncated or corrupted files)
// fails with an error naming the problem and writes nothing.
//
// usage: test_delta WORK_DIR
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "speck.h"
#include "test_util.h"

static long long fsize(const char *p) {
    struct stat st;
    return stat(p, &st) ? -1 : (long long)st.st_size;
}

static uint64_t g_rng = 88172645463325252ULL;
static double urand(void) { // xorshift64, [0, 1)
    g_rng ^= g_rng << 13, g_rng ^= g_rng >> 7, g_rng ^= g_rng << 17;
    return (double)(g_rng >> 11) * 0x1.0p-53;
}
static float nrand(void) {
    double u1 = urand() + 1e-300, u2 = urand();
    return (float)(sqrt(-2 * log(u1)) * cos(6.283185307179586 * u2));
}

#define R 128
#define C 192
// A "model": a matrix w (C, R) in GGUF terms ne {C, R} and a vector n (C) and an unchanged one.
typedef struct {
    float w[R * C], n[C], u[C];
} toy;

static int write_toy(const char *path, const toy *t, const char *arch, int64_t cols) {
    speck_gguf_writer *w = speck_gguf_writer_new();
    speck_gguf_set_str(w, "general.architecture", arch);
    speck_gguf_set_str(w, "general.name", "toy");
    int64_t ne_w[2] = {cols, R * C / cols}, ne_v[1] = {C};
    speck_gguf_add_tensor(w, "blk.0.attn_q.weight", SPECK_TYPE_F32, 2, ne_w, t->w);
    speck_gguf_add_tensor(w, "blk.0.attn_norm.weight", SPECK_TYPE_F32, 1, ne_v, t->n);
    speck_gguf_add_tensor(w, "output_norm.weight", SPECK_TYPE_F32, 1, ne_v, t->u);
    int rc = speck_gguf_writer_save(w, path);
    speck_gguf_writer_free(w);
    return rc;
}

// The tensor's floats from a GGUF file (f32 only), or NULL.
static float *read_tensor(const char *path, const char *name, int64_t n) {
    speck_gguf *g = speck_gguf_open(path);
    if (!g) return NULL;
    const speck_gguf_tensor *t = speck_gguf_find_tensor(g, name);
    float *x = NULL;
    if (t && t->type == SPECK_TYPE_F32 && t->n_elements == n && (x = malloc((size_t)n * 4)))
        memcpy(x, t->data, (size_t)n * 4);
    speck_gguf_close(g);
    return x;
}

static toy g_base, g_tuned, g_tuned2;
static float g_d[R * C]; // tuned − base of the matrix, exactly (double)

static void make_models(void) {
    for (int i = 0; i < R * C; i++) {
        g_base.w[i] = 0.05f * nrand();
        // A fine-tuning step's size; a few weights unchanged.
        g_tuned.w[i] = i % 97 == 0 ? g_base.w[i] : g_base.w[i] + 2e-3f * nrand();
        // Within a factor 2 of the base value: Sterbenz, every difference exact.
        g_tuned2.w[i] = g_base.w[i] * (float)(1.0 + 0.8 * (urand() - 0.5));
        g_d[i] = (float)((double)g_tuned.w[i] - (double)g_base.w[i]);
    }
    for (int i = 0; i < C; i++) {
        g_base.n[i] = 1.0f + 0.1f * nrand();
        g_tuned.n[i] = g_tuned2.n[i] = g_base.n[i] + 1e-3f * nrand();
        g_base.u[i] = g_tuned.u[i] = g_tuned2.u[i] = 1.0f;
    }
}

static bool same_bits(const float *a, const float *b, int64_t n, int64_t *first) {
    for (int64_t i = 0; i < n; i++)
        if (memcmp(&a[i], &b[i], 4)) return *first = i, false;
    return true;
}

static void test_round_trip(void) {
    char base[1200], tuned[1200], t2[1200];
    snprintf(base, sizeof base, "%s", test_path("base.gguf"));
    snprintf(tuned, sizeof tuned, "%s", test_path("tuned.gguf"));
    snprintf(t2, sizeof t2, "%s", test_path("t2.gguf"));
    CHECK(!write_toy(base, &g_base, "llama", C) && !write_toy(tuned, &g_tuned, "llama", C) &&
              !write_toy(t2, &g_tuned2, "llama", C),
          "write toys: %s", speck_last_error());
    const toy *tv[2] = {&g_tuned, &g_tuned2};
    const char *tp[2] = {tuned, t2};
    for (int k = 0; k < 2; k++) {
        int64_t inexact = -1;
        speck_delta *d = speck_delta_extract(base, tp[k], &inexact);
        CHECK(d != NULL, "extract: %s", speck_last_error());
        if (!d) return;
        speck_delta_info in;
        speck_delta_get_info(d, &in);
        // The unchanged vector is left out: 2 tensors.
        CHECK(in.n_tensors == 2 && in.n_elements == R * C + C && in.method == SPECK_DELTA_DENSE,
              "info: %d tensors, %lld elements", in.n_tensors, (long long)in.n_elements);
        CHECK(!speck_delta_save(d, test_path("d.gguf"), SPECK_TYPE_F32), "save: %s",
              speck_last_error());
        speck_delta_free(d);
        d = speck_delta_load(test_path("d.gguf"));
        CHECK(d != NULL, "load: %s", speck_last_error());
        if (!d) return;
        CHECK(!speck_delta_apply(base, d, 1.0f, -1, test_path("applied.gguf")), "apply: %s",
              speck_last_error());
        speck_delta_free(d);
        float *w = read_tensor(test_path("applied.gguf"), "blk.0.attn_q.weight", R * C);
        float *n = read_tensor(test_path("applied.gguf"), "blk.0.attn_norm.weight", C);
        float *u = read_tensor(test_path("applied.gguf"), "output_norm.weight", C);
        CHECK(w && n && u, "applied tensors");
        if (w && n && u) {
            int64_t at = -1;
            // Inexact elements (no f32 d with base + d == tuned) are counted by extract; with
            // these models there are none: a 2e-3 step rarely crosses a weight over 0, and
            // where it does a nudged d still lands on the tuned value (checked: 0 here).
            CHECK(inexact == 0, "model %d: %lld inexact elements", k, (long long)inexact);
            CHECK(same_bits(w, tv[k]->w, R * C, &at), "model %d: matrix differs at %lld: %.9g vs "
                  "%.9g", k, (long long)at, at >= 0 ? w[at] : 0, at >= 0 ? tv[k]->w[at] : 0);
            CHECK(same_bits(n, tv[k]->n, C, &at), "model %d: vector differs at %lld", k,
                  (long long)at);
            CHECK(same_bits(u, g_base.u, C, &at), "model %d: untouched vector differs", k);
        }
        free(w), free(n), free(u);
    }
}

static bool mentions(const char *what) {
    return strstr(speck_last_error(), what) != NULL;
}

static void test_dare(void) {
    char base[1200], tuned[1200]; // test_path's buffers are reused
    snprintf(base, sizeof base, "%s", test_path("base.gguf"));
    snprintf(tuned, sizeof tuned, "%s", test_path("tuned.gguf"));
    const int64_t n = R * C;
    int64_t nz = 0;
    for (int64_t i = 0; i < n; i++) nz += g_d[i] != 0;
    const float ps[3] = {0.5f, 0.9f, 0.99f};
    int64_t *first_idx = NULL, first_nnz = 0;
    for (int pi = 0; pi < 3; pi++) {
        const float p = ps[pi];
        speck_delta *d = speck_delta_extract(base, tuned, NULL);
        CHECK(d && !speck_delta_dare(d, p, 7, 0), "dare %g: %s", p, speck_last_error());
        if (!d) return;
        CHECK(!speck_delta_save(d, test_path("dare.gguf"), SPECK_TYPE_F32), "save");
        speck_delta_free(d);
        d = speck_delta_load(test_path("dare.gguf"));
        CHECK(d != NULL, "load dare: %s", speck_last_error());
        if (!d) return;
        speck_delta_info in;
        speck_delta_get_info(d, &in);
        CHECK(in.method == SPECK_DELTA_DARE && in.p == p && in.seed == 7, "dare info");
        // Kept ~ Binomial(nz, 1-p) (+ the dense vector's C): within 5 standard deviations
        // (a false failure has probability ~6e-7).
        const double mean = nz * (1.0 - p), sd = sqrt(nz * p * (1.0 - p));
        const double kept = (double)(in.n_stored - C);
        CHECK(fabs(kept - mean) <= 5 * sd, "p %g: kept %.0f of %lld, expected %.0f +- %.0f", p,
              kept, (long long)nz, mean, 5 * sd);
        CHECK(!speck_delta_apply(base, d, 1.0f, -1, test_path("applied.gguf")), "apply dare: %s",
              speck_last_error());
        speck_delta_free(d);
        float *w = read_tensor(test_path("applied.gguf"), "blk.0.attn_q.weight", n);
        if (!w) {
            CHECK(0, "read applied");
            return;
        }
        // Kept: base + d·(1/(1-p)) with the same f32 operations; dropped: base exactly.
        const float f = 1.0f / (1.0f - p);
        int64_t bad = 0, n_kept = 0, *idx = malloc((size_t)n * sizeof *idx);
        for (int64_t i = 0; i < n; i++) {
            const float kept_v = g_base.w[i] + g_d[i] * f;
            if (w[i] == g_base.w[i] && g_d[i] * f != 0 && kept_v != g_base.w[i]) continue;
            if (w[i] != kept_v) bad++;
            else if (g_d[i] != 0) idx[n_kept++] = i;
        }
        CHECK(bad == 0, "p %g: %lld elements neither base nor base + d/(1-p)", p, (long long)bad);
        if (pi == 1) first_idx = idx, first_nnz = n_kept;
        else free(idx);
        free(w);
    }
    // Seed: the same seed, the same mask; another seed, another mask.
    speck_delta *a = speck_delta_extract(base, tuned, NULL), *b = speck_delta_extract(base, tuned, NULL);
    speck_delta *c = speck_delta_extract(base, tuned, NULL);
    CHECK(a && b && c && !speck_delta_dare(a, 0.9f, 7, 0) && !speck_delta_dare(b, 0.9f, 7, 0) &&
              !speck_delta_dare(c, 0.9f, 8, 0),
          "dare seeds");
    if (a && b && c) {
        speck_delta_save(a, test_path("s1.gguf"), SPECK_TYPE_F32);
        speck_delta_save(b, test_path("s2.gguf"), SPECK_TYPE_F32);
        speck_delta_save(c, test_path("s3.gguf"), SPECK_TYPE_F32);
        size_t l1, l2, l3;
        char *f1 = test_read_file(test_path("s1.gguf"), &l1), *f2 = test_read_file(test_path("s2.gguf"), &l2);
        char *f3 = test_read_file(test_path("s3.gguf"), &l3);
        CHECK(f1 && f2 && l1 == l2 && !memcmp(f1, f2, l1), "same seed, same file");
        CHECK(f3 && !(l1 == l3 && !memcmp(f1, f3, l1)), "another seed, another file");
        free(f1), free(f2), free(f3);
        // The file's index stream decodes to the kept positions seen in the applied model.
        speck_delta *ld = speck_delta_load(test_path("s1.gguf"));
        speck_delta_info in;
        if (ld) speck_delta_get_info(ld, &in);
        CHECK(ld && in.n_stored - C == first_nnz, "kept positions: %lld vs %lld",
              ld ? (long long)(in.n_stored - C) : -1LL, (long long)first_nnz);
        speck_delta_free(ld);
    }
    free(first_idx);
    // DAREx-q: kept values times 1/q.
    speck_delta_dare(c, 0.99f, 3, 1.0f / 0.05f); // c is compressed: refused
    CHECK(strstr(speck_last_error(), "already compressed") != NULL, "compress twice: %s",
          speck_last_error());
    speck_delta_free(a), speck_delta_free(b), speck_delta_free(c);
    a = speck_delta_extract(base, tuned, NULL);
    CHECK(a && !speck_delta_dare(a, 0.99f, 3, 1.0f / 0.05f) &&
              !speck_delta_apply(base, a, 1.0f, -1, test_path("applied.gguf")),
          "darex-q: %s", speck_last_error());
    speck_delta_info in;
    if (a) speck_delta_get_info(a, &in);
    CHECK(a && in.method == SPECK_DELTA_DAREX_Q && in.rescale == 1.0f / 0.05f, "darex info");
    speck_delta_free(a);
    float *w = read_tensor(test_path("applied.gguf"), "blk.0.attn_q.weight", n);
    int64_t bad = 0, kept = 0;
    for (int64_t i = 0; w && i < n; i++) {
        const float kv = g_base.w[i] + g_d[i] * (1.0f / 0.05f);
        if (w[i] == g_base.w[i]) continue;
        kept++;
        bad += w[i] != kv;
    }
    CHECK(w && bad == 0 && kept > 0, "darex-q values: %lld bad of %lld", (long long)bad,
          (long long)kept);
    free(w);
    a = speck_delta_extract(base, tuned, NULL);
    CHECK(a && speck_delta_dare(a, 1.0f, 1, 0) != 0 && mentions("drop rate"), "p = 1 refused");
    speck_delta_free(a);
}

static int cmp_desc(const void *a, const void *b) {
    float x = *(const float *)a, y = *(const float *)b;
    return (x < y) - (x > y);
}

static void test_compeft(void) {
    char base[1200], tuned[1200]; // test_path's buffers are reused
    snprintf(base, sizeof base, "%s", test_path("base.gguf"));
    snprintf(tuned, sizeof tuned, "%s", test_path("tuned.gguf"));
    const int64_t n = R * C;
    float *mag = malloc((size_t)n * sizeof *mag);
    for (int64_t i = 0; i < n; i++) mag[i] = fabsf(g_d[i]);
    qsort(mag, (size_t)n, sizeof *mag, cmp_desc);
    for (int k = 0; k < 2; k++) {
        const float dens = k ? 0.05f : 0.1f;
        const int64_t want = (int64_t)ceil((double)dens * n);
        const float thr = mag[want - 1];
        double sum = 0;
        for (int64_t i = 0; i < want; i++) sum += mag[i];
        speck_delta *d = speck_delta_extract(base, tuned, NULL);
        CHECK(d && !speck_delta_compeft(d, dens, 0) &&
                  !speck_delta_save(d, test_path("c.gguf"), SPECK_TYPE_BF16),
              "compeft: %s", speck_last_error());
        speck_delta_free(d);
        d = speck_delta_load(test_path("c.gguf"));
        CHECK(d && !speck_delta_apply(base, d, 1.0f, -1, test_path("applied.gguf")), "apply: %s",
              speck_last_error());
        speck_delta_info in;
        if (d) speck_delta_get_info(d, &in);
        CHECK(d && in.n_stored - C == want, "density %g: %lld kept, want %lld", dens,
              d ? (long long)(in.n_stored - C) : -1LL, (long long)want);
        speck_delta_free(d);
        // Kept: the top-k magnitudes, each moved by sign(d) · scale, scale the mean kept |d|
        // (in f32: base + s rounds; compare with the same f32 sum).
        const float s = (float)(sum / (double)want);
        float *w = read_tensor(test_path("applied.gguf"), "blk.0.attn_q.weight", n);
        int64_t bad = 0, kept = 0;
        for (int64_t i = 0; w && i < n; i++) {
            const bool top = fabsf(g_d[i]) >= thr;
            const float e = top ? g_base.w[i] + (g_d[i] > 0 ? s : -s) : g_base.w[i];
            kept += top;
            bad += w[i] != e;
        }
        CHECK(w && bad == 0 && kept == want, "compeft %g: %lld elements differ", dens,
              (long long)bad);
        free(w);
        // Size: an index byte or so plus a sign bit per kept element, one scale per tensor.
        const long long sz = fsize(test_path("c.gguf"));
        CHECK(sz > 0 && sz < 2 * want + 8 * C + 4096, "compeft file %lld bytes for %lld kept", sz,
              (long long)want);
    }
    free(mag);
    // --scale A: A · std(delta).
    speck_delta *d = speck_delta_extract(base, tuned, NULL);
    CHECK(d && !speck_delta_compeft(d, 0.1f, 2.0f) &&
              !speck_delta_apply(base, d, 1.0f, -1, test_path("applied.gguf")),
          "compeft alpha");
    speck_delta_free(d);
    double s1 = 0, s2 = 0;
    for (int64_t i = 0; i < n; i++) s1 += g_d[i], s2 += (double)g_d[i] * g_d[i];
    const float sd = (float)(2.0 * sqrt(s2 / n - (s1 / n) * (s1 / n)));
    float *w = read_tensor(test_path("applied.gguf"), "blk.0.attn_q.weight", n);
    int64_t bad = 0;
    for (int64_t i = 0; w && i < n; i++)
        if (w[i] != g_base.w[i])
            bad += fabsf(fabsf(w[i] - g_base.w[i]) - sd) > 1e-6f * fabsf(g_base.w[i]) + 1e-9f;
    CHECK(w && bad == 0, "compeft alpha 2: %lld values are not ±2 std", (long long)bad);
    free(w);
    d = speck_delta_extract(base, tuned, NULL);
    CHECK(d && speck_delta_compeft(d, 0.0f, 0) != 0 && mentions("density"), "density 0 refused");
    speck_delta_free(d);
}

static void test_sizes(void) {
    char base[1200], tuned[1200]; // test_path's buffers are reused
    snprintf(base, sizeof base, "%s", test_path("base.gguf"));
    snprintf(tuned, sizeof tuned, "%s", test_path("tuned.gguf"));
    speck_delta *d = speck_delta_extract(base, tuned, NULL);
    CHECK(d && !speck_delta_save(d, test_path("dense16.gguf"), SPECK_TYPE_F16), "dense f16");
    CHECK(d && !speck_delta_dare(d, 0.9f, 1, 0) &&
              !speck_delta_save(d, test_path("dare90.gguf"), SPECK_TYPE_BF16),
          "dare 0.9");
    speck_delta_free(d);
    // 10 % kept: ~1 byte of gap + 2 bytes of value each, against 2 bytes for every element.
    const long long dense = fsize(test_path("dense16.gguf")), sparse = fsize(test_path("dare90.gguf"));
    CHECK(sparse > 0 && sparse * 5 < dense, "DARE 0.9 file %lld bytes vs dense f16 %lld", sparse,
          dense);
}

// A writer holding a DARE delta file's keys (p 0.5, seed 1), for hand-made tensors.
static speck_gguf_writer *dare_writer(void) {
    speck_gguf_writer *w = speck_gguf_writer_new();
    speck_gguf_set_str(w, "general.type", "delta");
    speck_gguf_set_str(w, "general.architecture", "llama");
    speck_gguf_set_u32(w, "delta.version", 1);
    speck_gguf_set_str(w, "delta.method", "dare");
    speck_gguf_set_f32(w, "delta.dare.p", 0.5f);
    speck_gguf_set_f32(w, "delta.dare.rescale", 2.0f);
    speck_gguf_set_u64(w, "delta.dare.seed", 1);
    return w;
}

static void test_bad_input(void) {
    char base[1200], tuned[1200]; // test_path's buffers are reused
    snprintf(base, sizeof base, "%s", test_path("base.gguf"));
    snprintf(tuned, sizeof tuned, "%s", test_path("tuned.gguf"));
    // Another shape of the same tensor.
    CHECK(!write_toy(test_path("reshaped.gguf"), &g_tuned, "llama", C / 2), "reshaped");
    CHECK(!speck_delta_extract(base, test_path("reshaped.gguf"), NULL) &&
              mentions("blk.0.attn_q.weight"),
          "shape mismatch: %s", speck_last_error());
    CHECK(!write_toy(test_path("qwen.gguf"), &g_tuned, "qwen2", C), "other arch");
    CHECK(!speck_delta_extract(base, test_path("qwen.gguf"), NULL) && mentions("architecture"),
          "arch mismatch: %s", speck_last_error());
    // Applying: onto a base of another shape / architecture; nothing written.
    speck_delta *d = speck_delta_extract(base, tuned, NULL);
    unlink(test_path("out.gguf"));
    CHECK(d && speck_delta_apply(test_path("reshaped.gguf"), d, 1.0f, -1, test_path("out.gguf")) &&
              mentions("blk.0.attn_q.weight") && !test_file_exists(test_path("out.gguf")),
          "apply onto another shape: %s", speck_last_error());
    CHECK(d && speck_delta_apply(test_path("qwen.gguf"), d, 1.0f, -1, test_path("out.gguf")) &&
              mentions("qwen2") && !test_file_exists(test_path("out.gguf")),
          "apply onto another arch: %s", speck_last_error());
    // A model file is not a delta.
    CHECK(!speck_delta_load(base) && mentions("general.type"), "model as delta: %s",
          speck_last_error());
    // Truncated delta files: every cut refused (the GGUF reader or the delta loader).
    CHECK(d && !speck_delta_dare(d, 0.9f, 1, 0) &&
              !speck_delta_save(d, test_path("dare.gguf"), SPECK_TYPE_BF16),
          "dare for truncation");
    speck_delta_free(d);
    size_t len;
    char *buf = test_read_file(test_path("dare.gguf"), &len);
    int refused = 0, tried = 0;
    for (size_t cut = 0; buf && cut < len; cut += len / 23 + 1, tried++) {
        FILE *f = fopen(test_path("cut.gguf"), "wb");
        fwrite(buf, 1, cut, f);
        fclose(f);
        speck_delta *x = speck_delta_load(test_path("cut.gguf"));
        refused += x == NULL;
        speck_delta_free(x);
    }
    CHECK(buf && refused == tried, "truncated: %d of %d refused", refused, tried);
    free(buf);
    // Hand-made sparse tensors: a bad encoding byte, a position past the end, a count that
    // disagrees with the stream, a value count that disagrees with the positions.
    struct {
        uint8_t enc;
        uint64_t ne0, nnz;
        uint8_t payload[4];
        int n_payload;
        int64_t n_vals;
        const char *what;
    } cases[] = {
        {7, 8, 1, {0}, 1, 1, "encoding"},
        {1, 8, 1, {9}, 1, 1, "past the end"},
        {1, 8, 2, {0}, 1, 2, "positions"},
        {1, 8, 2, {0, 0}, 2, 3, "values"},
        {0, 8, 1, {0x03}, 1, 1, "more bits"},
        {1, 0, 1, {0}, 1, 1, "dimension"},
    };
    for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
        uint8_t blob[64] = {0};
        blob[0] = cases[k].enc, blob[1] = 1;
        for (int b = 0; b < 8; b++) {
            blob[2 + b] = (uint8_t)(cases[k].ne0 >> (8 * b));
            blob[34 + b] = (uint8_t)(cases[k].nnz >> (8 * b));
        }
        for (int b = 0; b < 3; b++) blob[10 + 8 * b] = 1; // ne[1..3] = 1
        memcpy(blob + 42, cases[k].payload, (size_t)cases[k].n_payload);
        float vals[4] = {1, 2, 3, 4};
        speck_gguf_writer *w = dare_writer();
        int64_t ne = 42 + cases[k].n_payload, nv = cases[k].n_vals;
        speck_gguf_add_tensor(w, "x.weight.idx", SPECK_GGUF_TYPE_I8, 1, &ne, blob);
        speck_gguf_add_tensor(w, "x.weight.val", SPECK_TYPE_F32, 1, &nv, vals);
        CHECK(!speck_gguf_writer_save(w, test_path("bad.gguf")), "write bad %zu", k);
        speck_gguf_writer_free(w);
        speck_delta *x = speck_delta_load(test_path("bad.gguf"));
        CHECK(!x && mentions("x.weight") && mentions(cases[k].what), "case %s: %s",
              cases[k].what, x ? "loaded" : speck_last_error());
        speck_delta_free(x);
    }
    // The well-formed version of the same file loads: positions 0 and 2 (gaps 0, 1).
    {
        uint8_t blob[64] = {0};
        blob[0] = 1, blob[1] = 1, blob[2] = 8, blob[34] = 2, blob[43] = 1;
        for (int b = 0; b < 3; b++) blob[10 + 8 * b] = 1;
        float vals[2] = {1, 2};
        speck_gguf_writer *w = dare_writer();
        int64_t ne = 44, nv = 2;
        speck_gguf_add_tensor(w, "x.weight.idx", SPECK_GGUF_TYPE_I8, 1, &ne, blob);
        speck_gguf_add_tensor(w, "x.weight.val", SPECK_TYPE_F32, 1, &nv, vals);
        speck_gguf_writer_save(w, test_path("good.gguf"));
        speck_gguf_writer_free(w);
        speck_delta *x = speck_delta_load(test_path("good.gguf"));
        speck_delta_info in;
        if (x) speck_delta_get_info(x, &in);
        CHECK(x && in.n_elements == 8 && in.n_stored == 2, "hand-made delta: %s",
              x ? "wrong counts" : speck_last_error());
        speck_delta_free(x);
    }
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: test_delta WORK_DIR\n");
        return 2;
    }
    snprintf(test_work, sizeof test_work, "%s", argv[1]);
    mkdir(test_work, 0755);
    make_models();
    test_round_trip();
    test_dare();
    test_compeft();
    test_sizes();
    test_bad_input();
    return test_summary();
}
