// Unicode NFC (canonical decomposition, canonical ordering, canonical composition) for the
// tokenizer.json normalizer Qwen2/3 use. Tables come from nfc_tables.h (generated).
// Invalid UTF-8 bytes pass through unchanged and block composition across them.
#include <stdlib.h>
#include <string.h>

#include "tokenizer_internal.h"
#include "nfc_tables.h"

#define RAW_BYTE 0x80000000u // marks an invalid input byte kept as is
#define N_CCC (sizeof NFC_CCC / sizeof NFC_CCC[0])
#define N_DECOMP (sizeof NFC_DECOMP / sizeof NFC_DECOMP[0])
#define N_COMPOSE (sizeof NFC_COMPOSE / sizeof NFC_COMPOSE[0])

#define S_BASE 0xAC00u
#define L_BASE 0x1100u
#define V_BASE 0x1161u
#define T_BASE 0x11A7u
#define L_COUNT 19u
#define V_COUNT 21u
#define T_COUNT 28u
#define N_COUNT (V_COUNT * T_COUNT)
#define S_COUNT (L_COUNT * N_COUNT)

static int ccc(uint32_t cp) {
    if (cp < 0x300 || (cp & RAW_BYTE)) return 0;
    size_t lo = 0, hi = N_CCC;
    while (lo < hi) {
        size_t m = (lo + hi) / 2;
        if (cp < NFC_CCC[m][0])
            hi = m;
        else if (cp > NFC_CCC[m][1])
            lo = m + 1;
        else
            return (int)NFC_CCC[m][2];
    }
    return 0;
}

static const uint32_t *decomp_of(uint32_t cp) {
    size_t lo = 0, hi = N_DECOMP;
    while (lo < hi) {
        size_t m = (lo + hi) / 2;
        if (cp < NFC_DECOMP[m][0])
            hi = m;
        else if (cp > NFC_DECOMP[m][0])
            lo = m + 1;
        else
            return NFC_DECOMP[m];
    }
    return NULL;
}

static uint32_t compose(uint32_t a, uint32_t b) {
    if (a >= L_BASE && a < L_BASE + L_COUNT && b >= V_BASE && b < V_BASE + V_COUNT)
        return S_BASE + ((a - L_BASE) * V_COUNT + (b - V_BASE)) * T_COUNT;
    if (a >= S_BASE && a < S_BASE + S_COUNT && (a - S_BASE) % T_COUNT == 0 && b > T_BASE &&
        b < T_BASE + T_COUNT)
        return a + (b - T_BASE);
    size_t lo = 0, hi = N_COMPOSE;
    while (lo < hi) {
        size_t m = (lo + hi) / 2;
        if (a < NFC_COMPOSE[m][0] || (a == NFC_COMPOSE[m][0] && b < NFC_COMPOSE[m][1]))
            hi = m;
        else if (a > NFC_COMPOSE[m][0] || b > NFC_COMPOSE[m][1])
            lo = m + 1;
        else
            return NFC_COMPOSE[m][2];
    }
    return 0;
}

// Full canonical decomposition of cp appended to buf (which has room: at most 4 per cp, since
// Unicode's deepest canonical decomposition has 4 code points).
static size_t decompose(uint32_t cp, uint32_t *buf, size_t n) {
    if (cp >= S_BASE && cp < S_BASE + S_COUNT) {
        uint32_t s = cp - S_BASE;
        buf[n++] = L_BASE + s / N_COUNT;
        buf[n++] = V_BASE + (s % N_COUNT) / T_COUNT;
        if (s % T_COUNT) buf[n++] = T_BASE + s % T_COUNT;
        return n;
    }
    const uint32_t *d = cp >= 0xC0 && !(cp & RAW_BYTE) ? decomp_of(cp) : NULL;
    if (!d) {
        buf[n++] = cp;
        return n;
    }
    n = decompose(d[1], buf, n);
    if (d[2]) n = decompose(d[2], buf, n);
    return n;
}

static size_t put_utf8(uint32_t cp, char *o) {
    if (cp & RAW_BYTE) {
        o[0] = (char)(cp & 0xFF);
        return 1;
    }
    if (cp < 0x80) return o[0] = (char)cp, 1;
    if (cp < 0x800) return o[0] = (char)(0xC0 | cp >> 6), o[1] = (char)(0x80 | (cp & 0x3F)), 2;
    if (cp < 0x10000) {
        o[0] = (char)(0xE0 | cp >> 12);
        o[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
        o[2] = (char)(0x80 | (cp & 0x3F));
        return 3;
    }
    o[0] = (char)(0xF0 | cp >> 18);
    o[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
    o[2] = (char)(0x80 | ((cp >> 6) & 0x3F));
    o[3] = (char)(0x80 | (cp & 0x3F));
    return 4;
}

int tok_nfc(const char *in, size_t len, char **out, size_t *out_len) {
    // Text made only of code points below U+0300 is already NFC (nothing there composes with a
    // following character that is also below U+0300), so most input skips the work.
    bool simple = true;
    for (size_t i = 0; i < len && simple; i++) simple = (uint8_t)in[i] < 0xCC;
    uint32_t *cps = NULL;
    char *o = NULL;
    if (simple) {
        o = malloc(len + 1);
        if (!o) goto nomem;
        memcpy(o, in, len);
        *out = o;
        *out_len = len;
        return SPECK_OK;
    }
    cps = malloc((len * 4 + 4) * sizeof *cps);
    if (!cps) goto nomem;
    size_t n = 0;
    for (size_t i = 0; i < len;) {
        uint32_t cp;
        int l = tok_utf8_next(in + i, len - i, &cp);
        if (cp == 0xFFFFFFFFu) cp = RAW_BYTE | (uint8_t)in[i];
        n = decompose(cp, cps, n);
        i += (size_t)l;
    }
    // Canonical ordering: stable insertion sort of each run of non-starters by class.
    for (size_t i = 1; i < n; i++) {
        int c = ccc(cps[i]);
        if (!c) continue;
        size_t j = i;
        uint32_t x = cps[i];
        while (j > 0 && ccc(cps[j - 1]) > c) {
            cps[j] = cps[j - 1];
            j--;
        }
        cps[j] = x;
    }
    // Canonical composition.
    size_t k = 0;
    long starter = -1;
    int last_cc = 0;
    for (size_t i = 0; i < n; i++) {
        uint32_t c = cps[i];
        int cc = ccc(c);
        if (starter >= 0 && !(c & RAW_BYTE)) {
            bool adjacent = (size_t)starter == k - 1;
            if (adjacent || (last_cc != 0 && last_cc < cc)) {
                uint32_t comp = compose(cps[starter], c);
                if (comp) {
                    cps[starter] = comp;
                    continue;
                }
            }
        }
        if (cc == 0) {
            starter = (c & RAW_BYTE) ? -1 : (long)k;
            last_cc = 0;
        } else {
            last_cc = cc;
        }
        cps[k++] = c;
    }
    o = malloc(k * 4 + 1);
    if (!o) goto nomem;
    size_t m = 0;
    for (size_t i = 0; i < k; i++) m += put_utf8(cps[i], o + m);
    free(cps);
    *out = o;
    *out_len = m;
    return SPECK_OK;
nomem:
    free(cps);
    return speck_set_error(SPECK_ERR_NOMEM, "tokenizer: out of memory");
}
