// Pre-tokenisation: splitting text into words with the regexes a vocabulary names (PCRE2, UTF +
// Unicode properties, JIT), the GPT-2 byte<->unicode mapping and UTF-8 decoding.
#include <stdlib.h>
#include <string.h>

#include "tokenizer_internal.h"

// GPT-2 family: contractions, letters, numbers, other symbols each optionally after one space.
static const char RE_GPT2[] =
    "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";
// Llama 3 / tiktoken cl100k: case-insensitive contractions, numbers in groups of up to three.
static const char RE_LLAMA3[] =
    "(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|"
    "\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
// Qwen2: as Llama 3 but single digits.
static const char RE_QWEN2[] =
    "(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|"
    "\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
static const char RE_GPT4O[] =
    "[^\\r\\n\\p{L}\\p{N}]?[\\p{Lu}\\p{Lt}\\p{Lm}\\p{Lo}\\p{M}]*[\\p{Ll}\\p{Lm}\\p{Lo}\\p{M}]+"
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)?|[^\\r\\n\\p{L}\\p{N}]?[\\p{Lu}\\p{Lt}\\p{Lm}\\p{Lo}\\p{M}]+"
    "[\\p{Ll}\\p{Lm}\\p{Lo}\\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+"
    "[\\r\\n/]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
static const char RE_TEKKEN[] =
    "[^\\r\\n\\p{L}\\p{N}]?[\\p{Lu}\\p{Lt}\\p{Lm}\\p{Lo}\\p{M}]*[\\p{Ll}\\p{Lm}\\p{Lo}\\p{M}]+|"
    "[^\\r\\n\\p{L}\\p{N}]?[\\p{Lu}\\p{Lt}\\p{Lm}\\p{Lo}\\p{M}]+[\\p{Ll}\\p{Lm}\\p{Lo}\\p{M}]*|"
    "\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n/]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
// DeepSeek LLM lists its Latin/Greek/Cyrillic/... letters explicitly instead of \p{L}.
static const char RE_DEEPSEEK_LETTERS[] =
    "\\s?[A-Za-zµÀ-ÖØ-öø-ƺƼ-ƿǄ-ʓʕ-ʯͰ-ͳͶͷͻ-ͽͿΆΈ-ΊΌΎ-ΡΣ-ϵϷ-ҁҊ-ԯԱ-ՖႠ-ჅᎠ-Ᏽᏸ-ᏽᲐ-ᲺᲽ-"
    "Ჿᴀ-"
    "ᴫᵫ-ᵷᵹ-ᶚḀ-ἕἘ-Ἕ"
    "ἠ-ὅὈ-Ὅὐ-ὗὙὛὝὟ-\\x{1F7D}ᾀ-ᾴᾶ-ᾼ\\x{1FBE}ῂ-ῄῆ-ῌῐ-\\x{1FD3}ῖ-\\x{1FDB}ῠ-Ῥῲ-ῴῶ-ῼℂℇℊ-ℓℕℙ-ℝℤ\\x{2126}"
    "ℨ\\x{212A}-ℭℯ-ℴℹℼ-ℿⅅ-ⅉⅎↃↄⰀ-ⱻⱾ-ⳤⳫ-ⳮⳲⳳꙀ-ꙭ"
    "Ꚁ-ꚛꜢ-ꝯꝱ-ꞇꞋ-ꞎꭰ-ꮿﬀ-ﬆﬓ-ﬗＡ-Ｚａ-ｚ\\x{10400}-\\x{1044F}\\x{104B0}-\\x{104D3}\\x{104D8}-"
    "\\x{"
    "104FB}"
    "\\x{10C80}-\\x{10CB2}\\x{10CC0}-\\x{10CF2}\\x{118A0}-\\x{118DF}\\x{1E900}-\\x{1E943}]+";
static const char RE_CJK_HANGUL[] = "[一-龥ࠀ-一가-퟿]+";

typedef struct {
    const char *names; // '|'-separated tokenizer.ggml.pre values
    const char *re[TOK_MAX_REGEX];
} named_pre;

static const named_pre NAMED[] = {
    {"llama3|llama-v3|llama-bpe|falcon3|falcon-h1|pixtral|midm-2.0|lfm2|dbrx|smaug-bpe",
     {RE_LLAMA3}},
    {"gpt-2|gpt2|mpt|phi-2|olmo|jais|trillion|granite-docling|roberta-bpe|jina-es|jina-de|"
     "jina-v1-en|jina-v2-es|jina-v2-de|jina-v2-code|gigachat",
     {RE_GPT2}},
    {"starcoder|refact|command-r|smollm|codeshell|exaone|minerva-7b", {"\\p{N}", RE_GPT2}},
    {"falcon", {"[\\p{P}\\$\\+<=>\\^~\\|`]+", RE_GPT2, "[0-9][0-9][0-9]"}},
    {"deepseek-llm",
     {"[\\r\\n]", RE_DEEPSEEK_LETTERS, "\\s?[!-/:-~！-／：-～‘-‟　-。]+", "\\s+$", RE_CJK_HANGUL,
      "\\p{N}+"}},
    {"deepseek-coder", {"[\\r\\n]", "\\s?\\p{L}+", "\\s?\\p{P}+", RE_CJK_HANGUL, "\\p{N}"}},
    {"deepseek-v3|hunyuan-dense",
     {"\\p{N}{1,3}", "[一-龥぀-ゟ゠-ヿ]+",
      "[!\"#$%&'()*+,\\-./:;<=>?@\\[\\\\\\]^_`{|}~][A-Za-z]+|[^\\r\\n\\p{L}\\p{P}\\p{S}]?"
      "[\\p{L}\\p{M}]+| ?[\\p{P}\\p{S}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"}},
    {"qwen2|qwen35|deepseek-r1-qwen|megrez|stablelm2", {RE_QWEN2}},
    {"chatglm-bpe", {RE_LLAMA3}},
    {"poro-chat|bloom|gpt3-finnish", {" ?[^(\\s|.,!?…。，、।۔،)]+"}},
    {"viking", {" ?[^(\\s|.,!?…。，、।۔،)]+", "\\p{N}"}},
    {"tekken", {RE_TEKKEN}},
    {"gpt-4o|llama4", {RE_GPT4O}},
    // What llama.cpp applies to a BPE vocabulary naming no (or an unknown) pre-tokenizer.
    {"default", {"[\\p{P}\\$\\+<=>\\^~\\|]+", RE_GPT2, "\\p{N}+", "[0-9][0-9][0-9]"}},
};

static bool name_in_list(const char *list, const char *name) {
    size_t n = strlen(name);
    for (const char *p = list; *p;) {
        const char *e = strchr(p, '|');
        size_t l = e ? (size_t)(e - p) : strlen(p);
        if (l == n && !memcmp(p, name, n)) return true;
        if (!e) break;
        p = e + 1;
    }
    return false;
}

int tok_pretok_add(tok_pretok *p, const char *pattern, const char *src) {
    if (p->n >= TOK_MAX_REGEX)
        return speck_set_error(SPECK_ERR_UNSUPPORTED, "%s: pre-tokenizer: more than %d regexes",
                               src, TOK_MAX_REGEX);
    int err;
    PCRE2_SIZE off;
    // MATCH_INVALID_UTF: arbitrary bytes may be encoded; invalid sequences simply never match
    // and end up in the gaps between matches, which are kept as words of their own.
    pcre2_code *re =
        pcre2_compile((PCRE2_SPTR)pattern, PCRE2_ZERO_TERMINATED,
                      PCRE2_UTF | PCRE2_UCP | PCRE2_MATCH_INVALID_UTF, &err, &off, NULL);
    if (!re) {
        PCRE2_UCHAR msg[256];
        pcre2_get_error_message(err, msg, sizeof msg);
        return speck_set_error(SPECK_ERR_FORMAT, "%s: pre-tokenizer: regex error at offset %zu: %s",
                               src, (size_t)off, (const char *)msg);
    }
    pcre2_jit_compile(re, PCRE2_JIT_COMPLETE); // falls back to the interpreter if unavailable
    p->re[p->n++] = re;
    return SPECK_OK;
}

int tok_pretok_set_named(tok_pretok *p, const char *pre_name, const char *src) {
    const named_pre *np = &NAMED[sizeof NAMED / sizeof NAMED[0] - 1];
    if (pre_name)
        for (size_t i = 0; i < sizeof NAMED / sizeof NAMED[0]; i++)
            if (name_in_list(NAMED[i].names, pre_name)) {
                np = &NAMED[i];
                break;
            }
    for (int i = 0; i < TOK_MAX_REGEX && np->re[i]; i++) {
        int rc = tok_pretok_add(p, np->re[i], src);
        if (rc) return rc;
    }
    return SPECK_OK;
}

void tok_pretok_free(tok_pretok *p) {
    for (int i = 0; i < p->n; i++) pcre2_code_free(p->re[i]);
    p->n = 0;
}

static int push_piece(size_t **pieces, size_t *n, size_t *cap, size_t off, size_t len) {
    if (*n + 2 > *cap) {
        size_t nc = *cap ? *cap * 2 : 64;
        size_t *np = realloc(*pieces, nc * sizeof *np);
        if (!np) return speck_set_error(SPECK_ERR_NOMEM, "tokenizer: out of memory");
        *pieces = np;
        *cap = nc;
    }
    (*pieces)[(*n)++] = off;
    (*pieces)[(*n)++] = len;
    return SPECK_OK;
}

// Every match becomes a word and so does every stretch between matches (HF "Isolated").
static int split_one(const pcre2_code *re, const char *text, size_t off, size_t len,
                     pcre2_match_data *md, pcre2_match_context *mc, size_t **out, size_t *n,
                     size_t *cap) {
    const char *s = text + off;
    size_t pos = 0, last = 0;
    while (pos < len) {
        int rc = pcre2_match(re, (PCRE2_SPTR)s, len, pos, 0, md, mc);
        if (rc == PCRE2_ERROR_NOMATCH) break;
        if (rc == PCRE2_ERROR_JIT_STACKLIMIT) return rc; // caller retries with a bigger stack
        if (rc < 0) {
            PCRE2_UCHAR msg[256];
            pcre2_get_error_message(rc, msg, sizeof msg);
            return speck_set_error(SPECK_ERR_FORMAT, "tokenizer: regex match failed: %s",
                                   (const char *)msg);
        }
        PCRE2_SIZE *ov = pcre2_get_ovector_pointer(md);
        size_t ms = ov[0], me = ov[1];
        if (me <= ms) { // empty match: step over one character and keep looking
            uint32_t cp;
            pos = (ms > pos ? ms : pos) + (size_t)tok_utf8_next(s + pos, len - pos, &cp);
            continue;
        }
        if (ms > last && push_piece(out, n, cap, off + last, ms - last)) return SPECK_ERR_NOMEM;
        if (push_piece(out, n, cap, off + ms, me - ms)) return SPECK_ERR_NOMEM;
        last = pos = me;
    }
    if (last < len && push_piece(out, n, cap, off + last, len - last)) return SPECK_ERR_NOMEM;
    return SPECK_OK;
}

int tok_pretok_split(const tok_pretok *p, const char *text, size_t len, size_t **pieces,
                     size_t *n_pieces, size_t *cap) {
    *n_pieces = 0;
    if (len == 0) return SPECK_OK;
    int rc = push_piece(pieces, n_pieces, cap, 0, len);
    if (rc || p->n == 0) return rc;
    pcre2_match_data *md = pcre2_match_data_create(4, NULL);
    // The default 32 KiB JIT stack suffices for these patterns' simple repeats; only if a match
    // runs out of it (pathological input) is a larger one created, for that call alone.
    pcre2_match_context *mc = NULL;
    pcre2_jit_stack *js = NULL;
    size_t *tmp = NULL, tn = 0, tcap = 0;
    if (!md) {
        rc = speck_set_error(SPECK_ERR_NOMEM, "tokenizer: out of memory");
        goto done;
    }
    for (int r = 0; r < p->n; r++) {
        tn = 0;
        for (size_t i = 0; i < *n_pieces; i += 2) {
            size_t tn0 = tn;
            rc =
                split_one(p->re[r], text, (*pieces)[i], (*pieces)[i + 1], md, mc, &tmp, &tn, &tcap);
            if (rc == PCRE2_ERROR_JIT_STACKLIMIT && !js) {
                mc = pcre2_match_context_create(NULL);
                js = pcre2_jit_stack_create(32 * 1024, 64 * 1024 * 1024, NULL);
                if (!mc || !js) {
                    rc = speck_set_error(SPECK_ERR_NOMEM, "tokenizer: out of memory");
                    goto done;
                }
                pcre2_jit_stack_assign(mc, NULL, js);
                tn = tn0;
                rc = split_one(p->re[r], text, (*pieces)[i], (*pieces)[i + 1], md, mc, &tmp, &tn,
                               &tcap);
            }
            if (rc) goto done;
        }
        size_t *sw = *pieces;
        *pieces = tmp;
        tmp = sw;
        size_t sc = *cap;
        *cap = tcap;
        tcap = sc;
        *n_pieces = tn;
    }
done:
    free(tmp);
    if (js) pcre2_jit_stack_free(js);
    if (mc) pcre2_match_context_free(mc);
    if (md) pcre2_match_data_free(md);
    *n_pieces /= 2;
    return rc;
}

/* GPT-2 byte <-> unicode: printable Latin-1 bytes stand for themselves, the other 68 bytes map
 * in order to U+0100.. so every byte is a visible, non-space character. */
static bool byte_is_self(int b) {
    return (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
}

static uint32_t byte_cp(int b) {
    if (byte_is_self(b)) return (uint32_t)b;
    int n = 0;
    for (int i = 0; i < b; i++) n += !byte_is_self(i);
    return 256u + (uint32_t)n;
}

static char g_enc[256][2];
static uint8_t g_enc_len[256];
static int16_t g_dec[324]; // code points 0..323 -> byte, -1 if not a mapped byte

static void byte_tables_init(void) {
    for (int i = 0; i < 324; i++) g_dec[i] = -1;
    for (int b = 0; b < 256; b++) {
        uint32_t cp = byte_cp(b);
        g_dec[cp] = (int16_t)b;
        if (cp < 0x80) {
            g_enc[b][0] = (char)cp;
            g_enc_len[b] = 1;
        } else {
            g_enc[b][0] = (char)(0xC0 | (cp >> 6));
            g_enc[b][1] = (char)(0x80 | (cp & 0x3F));
            g_enc_len[b] = 2;
        }
    }
}

static pthread_once_t g_byte_once = PTHREAD_ONCE_INIT;

int tok_byte_to_unicode(uint8_t b, char out[2]) {
    pthread_once(&g_byte_once, byte_tables_init);
    out[0] = g_enc[b][0];
    out[1] = g_enc[b][1];
    return g_enc_len[b];
}

int tok_unicode_to_byte(uint32_t cp) {
    pthread_once(&g_byte_once, byte_tables_init);
    return cp < 324 ? g_dec[cp] : -1;
}

int tok_utf8_next(const char *str, size_t len, uint32_t *cp) {
    const uint8_t *s = (const uint8_t *)str;
    uint8_t c = s[0];
    *cp = 0xFFFFFFFFu;
    if (c < 0x80) {
        *cp = c;
        return 1;
    }
    int n;
    uint32_t v, min;
    if (c >= 0xC2 && c <= 0xDF)
        n = 2, v = c & 0x1F, min = 0x80;
    else if (c >= 0xE0 && c <= 0xEF)
        n = 3, v = c & 0x0F, min = 0x800;
    else if (c >= 0xF0 && c <= 0xF4)
        n = 4, v = c & 0x07, min = 0x10000;
    else
        return 1;
    if ((size_t)n > len) return 1;
    for (int i = 1; i < n; i++) {
        if ((s[i] & 0xC0) != 0x80) return 1;
        v = (v << 6) | (s[i] & 0x3F);
    }
    if (v < min || v > 0x10FFFF || (v >= 0xD800 && v <= 0xDFFF)) return 1;
    *cp = v;
    return n;
}
