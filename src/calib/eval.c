// Quality of a (quantized) model against a reference's saved log-probabilities, measured as
// llama.cpp's llama-perplexity measures it and in its --kl-divergence-base file format, so
// either program can make the base file and either can compare against it.
//
// File: "_logits_", u32 n_ctx, i32 n_vocab, i32 n_chunk, i32 tokens[n_chunk * n_ctx], then per
// chunk and per scored position (n_ctx - 1 - n_ctx / 2 of them) nv = 2 * ceil(n_vocab / 2) + 4
// u16: f32 scale, f32 min_log_prob, then log_prob[i] ~ min_log_prob + scale * u16[i] (logits
// below max - 16 stored as 0).
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "formats/gguf_internal.h"
#include "speck.h"

// Round to nearest (ties to even) as llama-perplexity's nearest_int does, for v in [0, 65535].
static inline uint16_t nearest_u16(float v) {
    return (uint16_t)lrintf(v);
}

// Row statistics of logits l (n): max, log of sum exp(l - max) (double).
static void lse(const float *l, int n, float *mx, double *ls) {
    float m = l[0];
    for (int i = 1; i < n; i++) m = l[i] > m ? l[i] : m;
    double s = 0;
    for (int i = 0; i < n; i++) s += exp((double)l[i] - m);
    *mx = m, *ls = log(s);
}

// The base file's stored form of a row of logits (nv u16 at out).
static void encode_row(const float *l, int n, uint16_t *out) {
    float mx, mn = l[0];
    double ls;
    lse(l, n, &mx, &ls);
    for (int i = 1; i < n; i++) mn = l[i] < mn ? l[i] : mn;
    if (mn < mx - 16) mn = mx - 16; // ranks below e^-16 of the top are stored as the floor
    const float scale = (mx - mn) / 65535.f, min_lp = (float)(mn - mx - ls);
    memcpy(out, &scale, 4);
    memcpy(out + 2, &min_lp, 4);
    uint16_t *q = out + 4;
    for (int i = 0; i < n; i++)
        q[i] = scale > 0 && l[i] > mn ? nearest_u16((l[i] - mn) / scale) : 0;
    for (int i = n; i < 2 * ((n + 1) / 2); i++) q[i] = 0;
}

typedef struct {
    double kld, nll, nll_base;
    int top, top_base;
} row_cmp;

// KL(base || model) of one position, as llama-perplexity sums it (base terms above e^-16).
static row_cmp compare_row(const float *l, int n, const uint16_t *base, int target) {
    row_cmp r = {0};
    float mx, scale, min_lp;
    double ls;
    lse(l, n, &mx, &ls);
    memcpy(&scale, base, 4);
    memcpy(&min_lp, base + 2, 4);
    const uint16_t *q = base + 4;
    r.nll = mx + ls - l[target];
    r.nll_base = -((double)scale * q[target] + min_lp);
    double best = -INFINITY, best_base = -INFINITY;
    for (int i = 0; i < n; i++) {
        const double lpb = (double)scale * q[i] + min_lp, lp = (double)l[i] - mx - ls;
        if (lpb > best_base) best_base = lpb, r.top_base = i;
        if (l[i] > best) best = l[i], r.top = i;
        if (lpb > -16) r.kld += exp(lpb) * (lpb - lp);
    }
    return r;
}

static int cmp_f64(const void *a, const void *b) {
    const double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

// Percentile by linear interpolation between order statistics (llama-perplexity's).
static double percentile(const double *v, int64_t n, double f) {
    const double p = f * (double)(n - 1);
    const int64_t i = (int64_t)p;
    return i + 1 < n ? (1 - (p - (double)i)) * v[i] + (p - (double)i) * v[i + 1] : v[n - 1];
}

// The base file's header: n_ctx, n_vocab, n_chunk, and the tokens (malloc'd); validated
// against the model's vocabulary and the file's size.
static int read_header(FILE *f, const char *path, int n_vocab, int *n_ctx, int *n_chunk,
                       int32_t **tokens) {
    char magic[8];
    uint32_t ctx;
    int32_t nv, nc;
    if (fread(magic, 1, 8, f) != 8 || memcmp(magic, "_logits_", 8) || fread(&ctx, 4, 1, f) != 1 ||
        fread(&nv, 4, 1, f) != 1 || fread(&nc, 4, 1, f) != 1)
        return speck_set_error(SPECK_ERR_FORMAT,
                               "%s: not a log-probability file (llama-perplexity "
                               "--kl-divergence-base / speck eval --kld-base-out)",
                               path);
    if (ctx < 4 || ctx > (1u << 20) || nc < 1 || nc > (1 << 24))
        return speck_set_error(SPECK_ERR_FORMAT, "%s: context %u, %d chunks: out of range", path,
                               ctx, nc);
    if (nv != n_vocab)
        return speck_set_error(SPECK_ERR_ARG,
                               "%s: made with a vocabulary of %d tokens, the model has %d (another "
                               "model family?)",
                               path, nv, n_vocab);
    const uint64_t rows = (uint64_t)nc * (ctx - 1 - ctx / 2);
    const uint64_t want = 20 + 4ull * nc * ctx + rows * (2ull * ((nv + 1) / 2) + 4) * 2;
    if (fseek(f, 0, SEEK_END) || (uint64_t)ftell(f) != want || fseek(f, 20, SEEK_SET))
        return speck_set_error(SPECK_ERR_FORMAT,
                               "%s: %d chunks of %u tokens need %llu bytes; the file has another "
                               "size (truncated?)",
                               path, nc, ctx, (unsigned long long)want);
    int32_t *t = malloc((size_t)nc * ctx * sizeof *t);
    if (!t) return speck_set_error(SPECK_ERR_NOMEM, "out of memory");
    if (fread(t, 4, (size_t)nc * ctx, f) != (size_t)nc * ctx) {
        free(t);
        return speck_set_error(SPECK_ERR_IO, "%s: read failed", path);
    }
    for (int64_t i = 0; i < (int64_t)nc * ctx; i++)
        if (t[i] < 0 || t[i] >= n_vocab) {
            const int32_t bad = t[i];
            free(t);
            return speck_set_error(SPECK_ERR_FORMAT, "%s: token %lld is %d, outside [0, %d)", path,
                                   (long long)i, bad, n_vocab);
        }
    *n_ctx = (int)ctx, *n_chunk = nc, *tokens = t;
    return 0;
}

int speck_eval_kld(const speck_model *m, const int32_t *tokens, int64_t n_tokens, int n_ctx,
                   const char *base_in, const char *base_out, speck_kld_result *res,
                   void (*progress)(int64_t done, int64_t total, void *user), void *user) {
    memset(res, 0, sizeof *res);
    const int n_vocab = speck_model_hparams(m)->n_vocab;
    const int nv = 2 * ((n_vocab + 1) / 2) + 4;
    FILE *in = NULL, *out = NULL;
    char tmp[4096];
    int32_t *toks = NULL, *chunk = NULL;
    int *out_rows = NULL;
    float *logits = NULL;
    uint16_t *rows = NULL;
    double *klds = NULL;
    speck_ctx *c = NULL;
    int n_chunk = 0, rc = 0;
    if (base_in) {
        if (!(in = fopen(base_in, "rb")))
            return speck_set_error(SPECK_ERR_IO, "%s: cannot open", base_in);
        if ((rc = read_header(in, base_in, n_vocab, &n_ctx, &n_chunk, &toks))) goto done;
    } else {
        if (n_ctx < 4 || n_tokens < 2 * (int64_t)n_ctx)
            return speck_set_error(SPECK_ERR_ARG,
                                   "eval: need at least 2 chunks of %d tokens (the text has %lld)",
                                   n_ctx, (long long)n_tokens);
        n_chunk = (int)(n_tokens / n_ctx);
    }
    const int first = n_ctx / 2, n_out = n_ctx - 1 - first;
    // BOS replaces each chunk's first token when the vocabulary adds one (llama-perplexity).
    int32_t bos = -1;
    speck_vocab *voc = speck_vocab_from_gguf(speck_model_gguf(m));
    if (voc && speck_vocab_add_bos(voc)) bos = speck_vocab_bos(voc);
    speck_vocab_free(voc);
    const int32_t *all = base_in ? toks : tokens;
    if (!(c = speck_ctx_new(m, n_ctx)) ||
        !(logits = malloc((size_t)n_out * n_vocab * sizeof *logits)) ||
        !(rows = malloc((size_t)n_out * nv * sizeof *rows)) ||
        !(chunk = malloc((size_t)n_ctx * sizeof *chunk)) ||
        !(out_rows = malloc((size_t)n_out * sizeof *out_rows)) ||
        !(klds = malloc((size_t)n_chunk * n_out * sizeof *klds))) {
        rc = speck_set_error(SPECK_ERR_NOMEM, "out of memory");
        goto done;
    }
    if (base_out) {
        if (!(out = speck_atomic_open(base_out, tmp, sizeof tmp))) {
            rc = SPECK_ERR_IO;
            goto done;
        }
        const uint32_t ctx = (uint32_t)n_ctx;
        const int32_t hdr[2] = {n_vocab, n_chunk};
        if (fwrite("_logits_", 1, 8, out) != 8 || fwrite(&ctx, 4, 1, out) != 1 ||
            fwrite(hdr, 4, 2, out) != 2 ||
            fwrite(all, 4, (size_t)n_chunk * n_ctx, out) != (size_t)n_chunk * n_ctx)
            rc = speck_set_error(SPECK_ERR_IO, "%s: write failed", base_out);
    }
    for (int r = 0; r < n_out; r++) out_rows[r] = first + r;
    double nll = 0, nll2 = 0, nllb = 0, nllb2 = 0, nn = 0, kld = 0, kld2 = 0;
    int64_t same = 0, scored = 0;
    for (int k = 0; k < n_chunk && !rc; k++) {
        const int32_t *src = all + (size_t)k * n_ctx;
        memcpy(chunk, src, (size_t)n_ctx * sizeof *chunk);
        if (bos >= 0) chunk[0] = bos;
        speck_ctx_truncate(c, 0);
        if ((rc = speck_forward(c, n_ctx, chunk, NULL, NULL, out_rows, n_out, logits))) break;
        if (in && fread(rows, sizeof *rows, (size_t)n_out * nv, in) != (size_t)n_out * nv) {
            rc = speck_set_error(SPECK_ERR_IO, "%s: read failed in chunk %d", base_in, k);
            break;
        }
#pragma omp parallel for schedule(static) reduction(+ : nll, nll2, nllb, nllb2, nn, kld, kld2, same)
        for (int r = 0; r < n_out; r++) {
            const float *l = logits + (size_t)r * n_vocab;
            const int target = src[first + r + 1];
            if (out) encode_row(l, n_vocab, rows + (size_t)r * nv);
            if (in) {
                const row_cmp x = compare_row(l, n_vocab, rows + (size_t)r * nv, target);
                nll += x.nll, nll2 += x.nll * x.nll, nllb += x.nll_base;
                nllb2 += x.nll_base * x.nll_base, nn += x.nll * x.nll_base;
                kld += x.kld, kld2 += x.kld * x.kld, same += x.top == x.top_base;
                klds[(size_t)k * n_out + r] = x.kld;
            } else {
                float mx;
                double ls;
                lse(l, n_vocab, &mx, &ls);
                const double v = mx + ls - l[target];
                nll += v, nll2 += v * v;
            }
        }
        if (out && fwrite(rows, sizeof *rows, (size_t)n_out * nv, out) != (size_t)n_out * nv)
            rc = speck_set_error(SPECK_ERR_IO, "%s: write failed", base_out);
        scored += n_out;
        if (progress) progress(k + 1, n_chunk, user);
    }
    if (!rc && out) {
        rc = speck_atomic_commit(out, tmp, base_out);
        out = NULL;
    }
    if (rc) goto done;
    const double N = (double)scored;
    res->n_scored = scored, res->n_ctx = n_ctx, res->n_chunks = n_chunk;
    res->nll = nll / N;
    res->nll_err = scored > 1 ? sqrt(fmax(nll2 / N - res->nll * res->nll, 0) / (N - 1)) : 0;
    if (in) {
        res->has_base = true;
        res->nll_base = nllb / N;
        res->kld = kld / N;
        res->kld_err = scored > 1 ? sqrt(fmax(kld2 / N - res->kld * res->kld, 0) / (N - 1)) : 0;
        res->top1 = (double)same / N;
        // ln(PPL/PPL_base): the difference of two correlated means (llama-perplexity's
        // uncertainty, with the covariance of the per-token nlls).
        const double vb = fmax(nllb2 / N - res->nll_base * res->nll_base, 0) / (N - 1);
        const double cov = (nn / N - res->nll * res->nll_base) / (N - 1);
        res->ln_ppl_ratio = res->nll - res->nll_base;
        res->ln_ppl_ratio_err =
            sqrt(fmax(res->nll_err * res->nll_err + vb - 2 * cov, 0));
        qsort(klds, (size_t)scored, sizeof *klds, cmp_f64);
        res->kld_median = percentile(klds, scored, 0.5);
        res->kld_p99 = percentile(klds, scored, 0.99);
        res->kld_max = klds[scored - 1];
    }
done:
    if (out) speck_atomic_abort(out, tmp);
    if (in) fclose(in);
    speck_ctx_free(c);
    free(toks), free(chunk), free(out_rows), free(logits), free(rows), free(klds);
    return rc;
}
