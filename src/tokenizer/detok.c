// Ids -> bytes: token pieces with the byte-level mapping / U+2581 spaces / <0xXX> bytes undone,
// whole-sequence decoding, and a streaming decoder that only releases complete UTF-8.
#include <stdlib.h>
#include <string.h>

#include "tokenizer_internal.h"

static int copy_out(char *buf, int size, int at, const char *s, size_t n) {
    for (size_t i = 0; i < n; i++)
        if (at + (int)i < size) buf[at + (int)i] = s[i];
    return at + (int)n;
}

static int byte_token_value(const char *t, uint32_t len) {
    if (len != 6 || t[0] != '<' || t[1] != '0' || t[2] != 'x' || t[5] != '>') return -1;
    int v = 0;
    for (int i = 3; i < 5; i++) {
        char c = t[i];
        int d = c >= '0' && c <= '9'   ? c - '0'
                : c >= 'A' && c <= 'F' ? c - 'A' + 10
                : c >= 'a' && c <= 'f' ? c - 'a' + 10
                                       : -1;
        if (d < 0) return -1;
        v = v * 16 + d;
    }
    return v;
}

int speck_token_to_piece(const speck_vocab *v, int32_t id, char *buf, int size) {
    if (!v || (size > 0 && !buf))
        return speck_set_error(SPECK_ERR_ARG, "speck_token_to_piece: invalid arguments");
    if (id < 0 || id >= v->n_tokens)
        return speck_set_error(SPECK_ERR_RANGE, "token id %d out of range [0, %d)", id,
                               v->n_tokens);
    const char *t = v->text[id];
    uint32_t len = v->text_len[id];
    uint8_t type = v->type[id];
    if (type == TOK_BYTE || (v->byte_fallback && !v->byte_level)) {
        int b = byte_token_value(t, len);
        if (b >= 0 && (type == TOK_BYTE || v->byte_tok[b] == id)) {
            char c = (char)b;
            return copy_out(buf, size, 0, &c, 1);
        }
    }
    // Special and added tokens are shown as written (they are not byte-mapped), except that
    // SentencePiece-style added tokens such as Gemma's "▁▁" runs still stand for spaces.
    if (type == TOK_CONTROL || type == TOK_UNKNOWN ||
        (type == TOK_USER_DEFINED && !v->space_to_meta))
        return copy_out(buf, size, 0, t, len);
    int at = 0;
    if (v->byte_level && type != TOK_USER_DEFINED) {
        for (uint32_t i = 0; i < len;) {
            uint32_t cp;
            int cl = tok_utf8_next(t + i, len - i, &cp);
            int b = cp == 0xFFFFFFFFu ? -1 : tok_unicode_to_byte(cp);
            if (b >= 0) {
                char c = (char)b;
                at = copy_out(buf, size, at, &c, 1);
            } else {
                at = copy_out(buf, size, at, t + i, (size_t)cl);
            }
            i += (uint32_t)cl;
        }
        return at;
    }
    if (v->space_to_meta) {
        for (uint32_t i = 0; i < len;) {
            if (i + 3 <= len && !memcmp(t + i, "\xE2\x96\x81", 3)) {
                at = copy_out(buf, size, at, " ", 1);
                i += 3;
            } else {
                at = copy_out(buf, size, at, t + i, 1);
                i++;
            }
        }
        return at;
    }
    return copy_out(buf, size, 0, t, len);
}

// Piece of id into a growable buffer; drops one leading space when asked.
static int append_piece(const speck_vocab *v, int32_t id, char **buf, size_t *n, size_t *cap,
                        bool strip_space) {
    char small[64];
    int k = speck_token_to_piece(v, id, small, (int)sizeof small);
    if (k < 0) return k;
    if (*n + (size_t)k + 1 > *cap) {
        size_t nc = (*cap ? *cap * 2 : 256) + (size_t)k;
        char *p = realloc(*buf, nc);
        if (!p) return speck_set_error(SPECK_ERR_NOMEM, "detokenizer: out of memory");
        *buf = p;
        *cap = nc;
    }
    if ((size_t)k <= sizeof small)
        memcpy(*buf + *n, small, (size_t)k);
    else
        speck_token_to_piece(v, id, *buf + *n, k);
    size_t skip = strip_space && k > 0 && (*buf)[*n] == ' ';
    if (skip) memmove(*buf + *n, *buf + *n + 1, (size_t)k - 1);
    *n += (size_t)k - skip;
    return SPECK_OK;
}

int64_t speck_detokenize(const speck_vocab *v, const int32_t *ids, int64_t n, char *buf,
                         int64_t size) {
    if (!v || n < 0 || (n > 0 && !ids) || size < 0 || (size > 0 && !buf))
        return speck_set_error(SPECK_ERR_ARG, "speck_detokenize: invalid arguments");
    char *tmp = NULL;
    size_t len = 0, cap = 0;
    for (int64_t i = 0; i < n; i++) {
        // SentencePiece vocabularies add a dummy-prefix space the first token carries.
        int rc = append_piece(v, ids[i], &tmp, &len, &cap, i == 0 && v->strip_lead_space);
        if (rc) {
            free(tmp);
            return rc;
        }
    }
    if (size > 0) {
        size_t k = len < (size_t)size ? len : (size_t)size - 1;
        if (k) memcpy(buf, tmp, k);
        buf[k] = 0;
    }
    free(tmp);
    return (int64_t)len;
}

/* ---------------------------------------------------------------------------------------- */
/* Streaming                                                                                 */
/* ---------------------------------------------------------------------------------------- */

struct speck_detok {
    const speck_vocab *v;
    char *pend; // bytes not yet released (an incomplete UTF-8 tail)
    size_t n_pend, cap_pend;
    char *out;
    size_t cap_out;
    bool first;
};

speck_detok *speck_detok_new(const speck_vocab *v) {
    if (!v) {
        speck_set_error(SPECK_ERR_ARG, "speck_detok_new: NULL vocabulary");
        return NULL;
    }
    speck_detok *d = calloc(1, sizeof *d);
    if (!d) {
        speck_set_error(SPECK_ERR_NOMEM, "detokenizer: out of memory");
        return NULL;
    }
    d->v = v;
    d->first = true;
    return d;
}

void speck_detok_free(speck_detok *d) {
    if (!d) return;
    free(d->pend);
    free(d->out);
    free(d);
}

// Length of the prefix of s that can be released: everything except a trailing run that is a
// valid beginning of a multi-byte character still missing its continuation bytes.
static size_t complete_prefix(const char *s, size_t n) {
    size_t i = 0;
    while (i < n) {
        uint8_t c = (uint8_t)s[i];
        size_t need = c >= 0xF0 && c <= 0xF4   ? 4
                      : c >= 0xE0 && c <= 0xEF ? 3
                      : c >= 0xC2 && c <= 0xDF ? 2
                                               : 1;
        if (need > 1 && i + need > n) {
            bool cont = true;
            for (size_t k = i + 1; k < n; k++) cont &= ((uint8_t)s[k] & 0xC0) == 0x80;
            if (cont) return i;
        }
        uint32_t cp;
        i += (size_t)tok_utf8_next(s + i, n - i, &cp);
    }
    return n;
}

static const char *release(speck_detok *d, size_t k) {
    if (k + 1 > d->cap_out) {
        size_t nc = k + 64;
        char *p = realloc(d->out, nc);
        if (!p) {
            speck_set_error(SPECK_ERR_NOMEM, "detokenizer: out of memory");
            return NULL;
        }
        d->out = p;
        d->cap_out = nc;
    }
    if (k) memcpy(d->out, d->pend, k);
    d->out[k] = 0;
    if (d->n_pend > k) memmove(d->pend, d->pend + k, d->n_pend - k);
    d->n_pend -= k;
    return d->out;
}

const char *speck_detok_push(speck_detok *d, int32_t id) {
    if (!d) {
        speck_set_error(SPECK_ERR_ARG, "speck_detok_push: NULL detokenizer");
        return NULL;
    }
    if (append_piece(d->v, id, &d->pend, &d->n_pend, &d->cap_pend,
                     d->first && d->v->strip_lead_space))
        return NULL;
    d->first = false;
    return release(d, complete_prefix(d->pend, d->n_pend));
}

const char *speck_detok_flush(speck_detok *d) {
    if (!d) {
        speck_set_error(SPECK_ERR_ARG, "speck_detok_flush: NULL detokenizer");
        return NULL;
    }
    return release(d, d->n_pend);
}
