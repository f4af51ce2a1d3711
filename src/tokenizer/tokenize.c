// speck_tokenize: special-token partition, per-segment normalisation, BOS/EOS, and dispatch to
// the score-driven (spm.c) or rank-driven (bpe.c) merge step.
#include <stdlib.h>
#include <string.h>

#include "tokenizer_internal.h"

int tok_out_push(tok_out *o, int32_t id) {
    if (o->n == o->cap) {
        int64_t nc = o->cap ? o->cap * 2 : 256;
        int32_t *p = realloc(o->ids, (size_t)nc * sizeof *p);
        if (!p) return speck_set_error(SPECK_ERR_NOMEM, "tokenizer: out of memory");
        o->ids = p;
        o->cap = nc;
    }
    o->ids[o->n++] = id;
    return SPECK_OK;
}

// Normalise one segment for SentencePiece-style vocabularies: optional dummy prefix U+2581 and
// every ' ' turned into U+2581.
static char *meta_normalize(const speck_vocab *v, const char *s, size_t len, size_t *out_len) {
    size_t spaces = 0;
    if (v->space_to_meta)
        for (size_t i = 0; i < len; i++) spaces += s[i] == ' ';
    size_t n = len + spaces * 2 + (v->prefix_meta ? 3 : 0);
    char *o = malloc(n + 1);
    if (!o) return NULL;
    size_t k = 0;
    if (v->prefix_meta) {
        memcpy(o, "\xE2\x96\x81", 3);
        k = 3;
    }
    for (size_t i = 0; i < len; i++) {
        if (v->space_to_meta && s[i] == ' ') {
            memcpy(o + k, "\xE2\x96\x81", 3);
            k += 3;
        } else {
            o[k++] = s[i];
        }
    }
    o[k] = 0;
    *out_len = k;
    return o;
}

static int encode_segment(const speck_vocab *v, const char *s, size_t len, tok_out *out) {
    if (len == 0) return SPECK_OK;
    char *nfc = NULL;
    if (v->nfc) {
        size_t nl;
        int rc = tok_nfc(s, len, &nfc, &nl);
        if (rc) return rc;
        s = nfc;
        len = nl;
    }
    int rc;
    if (v->space_to_meta || v->prefix_meta) {
        size_t ml;
        char *m = meta_normalize(v, s, len, &ml);
        if (!m) {
            free(nfc);
            return speck_set_error(SPECK_ERR_NOMEM, "tokenizer: out of memory");
        }
        rc = v->algo == ALGO_SPM_SCORES ? tok_spm_encode(v, m, ml, out)
                                        : tok_bpe_encode(v, m, ml, out);
        free(m);
    } else {
        rc = v->algo == ALGO_SPM_SCORES ? tok_spm_encode(v, s, len, out)
                                        : tok_bpe_encode(v, s, len, out);
    }
    free(nfc);
    return rc;
}

static bool is_ws(char c) {
    return c == ' ' || c == '\t' || c == '\n' || c == '\r';
}

// Longest special token starting at text[pos] that the caller allows; -1 if none.
static int32_t special_at(const speck_vocab *v, const char *text, size_t len, size_t pos,
                          bool parse_special, size_t *mlen) {
    uint8_t b = (uint8_t)text[pos];
    for (int32_t k = v->sp_lens_start[b]; k < v->sp_lens_start[b + 1]; k++) {
        uint32_t l = v->sp_lens[k];
        if (l > len - pos) continue;
        int32_t id = tok_find_special(v, text + pos, l);
        if (id < 0) continue;
        if (!parse_special && v->type[id] != TOK_USER_DEFINED) continue;
        *mlen = l;
        return id;
    }
    return -1;
}

int64_t speck_tokenize(const speck_vocab *v, const char *text, size_t len, bool add_special,
                       bool parse_special, int32_t *ids, int64_t max_ids) {
    if (!v || (!text && len) || (max_ids > 0 && !ids) || max_ids < 0)
        return speck_set_error(SPECK_ERR_ARG, "speck_tokenize: invalid arguments");
    tok_out out = {0};
    int rc = SPECK_OK;
    if (add_special && v->add_bos && v->bos >= 0 && (rc = tok_out_push(&out, v->bos))) goto done;

    bool scan = v->n_special > 0 && (parse_special || v->n_user_defined > 0);
    size_t seg = 0, pos = 0;
    while (scan && pos < len) {
        size_t ml = 0;
        int32_t id =
            v->sp_lens_start[(uint8_t)text[pos]] == v->sp_lens_start[(uint8_t)text[pos] + 1]
                ? -1
                : special_at(v, text, len, pos, parse_special, &ml);
        if (id < 0) {
            pos++;
            continue;
        }
        // HF added tokens may swallow whitespace on either side (lstrip / rstrip).
        size_t seg_end = pos, next = pos + ml;
        if (v->sp_lstrip && v->sp_lstrip[id])
            while (seg_end > seg && is_ws(text[seg_end - 1])) seg_end--;
        if (v->sp_rstrip && v->sp_rstrip[id])
            while (next < len && is_ws(text[next])) next++;
        if ((rc = encode_segment(v, text + seg, seg_end - seg, &out))) goto done;
        if ((rc = tok_out_push(&out, id))) goto done;
        seg = pos = next;
    }
    if ((rc = encode_segment(v, text + seg, len - seg, &out))) goto done;
    if (add_special && v->add_eos && v->eos >= 0 && (rc = tok_out_push(&out, v->eos))) goto done;
done:
    if (rc) {
        free(out.ids);
        return rc;
    }
    int64_t n = out.n;
    if (n > 0 && max_ids > 0) memcpy(ids, out.ids, (size_t)(n < max_ids ? n : max_ids) * 4);
    free(out.ids);
    return n;
}
