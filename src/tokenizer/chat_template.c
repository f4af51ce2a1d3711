// Chat templates: the prompt formats of the common instruction-tuned model families, written out
// in C. Models ship their format as a Jinja template (tokenizer.chat_template); speck does not
// interpret Jinja but recognises which family a template belongs to by its distinctive markers
// and renders that family's format, byte for byte what the reference Jinja produces for plain
// role/content conversations (tests/test_chat_template.c checks this against transformers.js).
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "speck.h"

/* ---------------------------------------------------------------------------------------- */
/* Output                                                                                    */
/* ---------------------------------------------------------------------------------------- */

// snprintf-like sink: counts every byte, stores what fits (leaving room for the NUL).
typedef struct {
    char *buf;
    int64_t size, n;
    bool nomem;
} sink;

static void put(sink *o, const char *s, size_t len) {
    if (o->buf && o->n < o->size - 1) {
        size_t room = (size_t)(o->size - 1 - o->n);
        memcpy(o->buf + o->n, s, len < room ? len : room);
    }
    o->n += (int64_t)len;
}

static void puts_(sink *o, const char *s) {
    put(o, s, strlen(s));
}

// Whitespace as both Jinja's Python `strip`/`trim` and transformers.js's JS `trim` see it: ASCII
// \t \n \v \f \r and space, plus the Unicode spaces the two agree on (NBSP, U+1680,
// U+2000..U+200A, U+2028, U+2029, U+202F, U+205F, U+3000). Returns the byte length of the
// whitespace character at s (0 if none); ws_len_before: of the one ending at s + n.
static size_t ws_len(const unsigned char *s, size_t n) {
    if (n >= 1 && ((s[0] >= 9 && s[0] <= 13) || s[0] == ' ')) return 1;
    if (n >= 2 && s[0] == 0xC2 && s[1] == 0xA0) return 2;
    if (n >= 3) {
        unsigned cp = ((s[0] & 0x0Fu) << 12) | ((s[1] & 0x3Fu) << 6) | (s[2] & 0x3Fu);
        if ((s[0] & 0xF0) != 0xE0 || (s[1] & 0xC0) != 0x80 || (s[2] & 0xC0) != 0x80) return 0;
        if (cp == 0x1680 || (cp >= 0x2000 && cp <= 0x200A) || cp == 0x2028 || cp == 0x2029 ||
            cp == 0x202F || cp == 0x205F || cp == 0x3000)
            return 3;
    }
    return 0;
}

static size_t ws_len_before(const unsigned char *s, size_t n) {
    if (n >= 1 && ws_len(s + n - 1, 1)) return 1;
    if (n >= 2 && ws_len(s + n - 2, 2) == 2) return 2;
    if (n >= 3 && ws_len(s + n - 3, 3) == 3) return 3;
    return 0;
}

// Text with leading and trailing whitespace removed (Jinja `| trim`, Python `.strip()`).
static void put_trimmed_n(sink *o, const char *s, size_t n) {
    const unsigned char *p = (const unsigned char *)s;
    size_t k;
    while (n && (k = ws_len(p, n))) p += k, n -= k;
    while (n && (k = ws_len_before(p, n))) n -= k;
    put(o, (const char *)p, n);
}

static void put_trimmed(sink *o, const char *s) {
    put_trimmed_n(o, s, strlen(s));
}

static bool is_role(const speck_chat_msg *m, const char *role) {
    return !strcmp(m->role, role);
}

/* ---------------------------------------------------------------------------------------- */
/* Formats                                                                                   */
/* ---------------------------------------------------------------------------------------- */

// ChatML (Qwen, many fine-tunes): <|im_start|>role\ncontent<|im_end|>\n, no BOS, nothing trimmed.
static void render_chatml(sink *o, const speck_chat_msg *m, int n, bool gen) {
    for (int i = 0; i < n; i++) {
        puts_(o, "<|im_start|>");
        puts_(o, m[i].role);
        puts_(o, "\n");
        puts_(o, m[i].content);
        puts_(o, "<|im_end|>\n");
    }
    if (gen) puts_(o, "<|im_start|>assistant\n");
}

// Llama 3 / 3.x: BOS, then a header per message; contents are trimmed.
static void render_llama3(sink *o, const speck_chat_msg *m, int n, bool gen) {
    puts_(o, "<|begin_of_text|>");
    for (int i = 0; i < n; i++) {
        puts_(o, "<|start_header_id|>");
        puts_(o, m[i].role);
        puts_(o, "<|end_header_id|>\n\n");
        put_trimmed(o, m[i].content);
        puts_(o, "<|eot_id|>");
    }
    if (gen) puts_(o, "<|start_header_id|>assistant<|end_header_id|>\n\n");
}

// Llama 2 chat (Meta's template): every user turn opens with BOS and [INST]; the system message
// goes inside the first turn between <<SYS>> markers, and the whole turn text is stripped;
// assistant turns are " " + stripped content + " </s>". Other roles render nothing, and there is
// no generation prompt: the prompt already ends with [/INST]. An empty system message still
// gives an empty <<SYS>> block, as with Python's Jinja ("" != false) and Meta's reference code.
static void render_llama2(sink *o, const speck_chat_msg *m, int n, bool gen) {
    (void)gen;
    const char *sys = n > 0 && is_role(&m[0], "system") ? m[0].content : NULL;
    for (int i = sys ? 1 : 0, k = 0; i < n; i++, k++) {
        bool user = is_role(&m[i], "user"), asst = is_role(&m[i], "assistant");
        if (!user && !asst) continue;
        puts_(o, user ? "<s>[INST] " : " ");
        if (k == 0 && sys) {
            // strip() applies to the whole "<<SYS>>\n" + system + "\n<</SYS>>\n\n" + content,
            // so an empty content also loses the blank line after <</SYS>>.
            size_t ls = strlen(sys), lc = strlen(m[i].content);
            static const char open[] = "<<SYS>>\n", close[] = "\n<</SYS>>\n\n";
            size_t lo = sizeof open - 1, lz = sizeof close - 1;
            char *cat = malloc(lo + ls + lz + lc);
            if (!cat) {
                o->nomem = true;
                return;
            }
            memcpy(cat, open, lo);
            memcpy(cat + lo, sys, ls);
            memcpy(cat + lo + ls, close, lz);
            memcpy(cat + lo + ls + lz, m[i].content, lc);
            put_trimmed_n(o, cat, lo + ls + lz + lc);
            free(cat);
        } else {
            put_trimmed(o, m[i].content);
        }
        puts_(o, user ? " [/INST]" : " </s>");
    }
}

// Mistral Instruct (v1 format): BOS once, [INST] ... [/INST] around user turns, assistant
// replies followed by </s>. A non-empty system message is prepended to the first turn when that
// is a user turn, separated by a blank line. Nothing is trimmed; no generation prompt.
static void render_mistral(sink *o, const speck_chat_msg *m, int n, bool gen) {
    (void)gen;
    const char *sys = n > 0 && is_role(&m[0], "system") ? m[0].content : NULL;
    int first = sys ? 1 : 0;
    puts_(o, "<s>");
    for (int i = first; i < n; i++) {
        if (is_role(&m[i], "user")) {
            puts_(o, "[INST] ");
            if (sys && *sys && i == first) {
                puts_(o, sys);
                puts_(o, "\n\n");
            }
            puts_(o, m[i].content);
            puts_(o, " [/INST]");
        } else if (is_role(&m[i], "assistant")) {
            puts_(o, m[i].content);
            puts_(o, "</s>");
        }
    }
}

// Gemma 2 / 3: BOS, turns between <start_of_turn> and <end_of_turn>, the assistant is called
// "model", a system message is folded into the first turn followed by a blank line (it has no
// role of its own); contents are trimmed, the system text is not.
static void render_gemma(sink *o, const speck_chat_msg *m, int n, bool gen) {
    const char *sys = n > 0 && is_role(&m[0], "system") ? m[0].content : NULL;
    puts_(o, "<bos>");
    for (int i = sys ? 1 : 0; i < n; i++) {
        puts_(o, "<start_of_turn>");
        puts_(o, is_role(&m[i], "assistant") ? "model" : m[i].role);
        puts_(o, "\n");
        if (sys && i == 1) {
            puts_(o, sys);
            puts_(o, "\n\n");
        }
        put_trimmed(o, m[i].content);
        puts_(o, "<end_of_turn>\n");
    }
    if (gen) puts_(o, "<start_of_turn>model\n");
}

// Phi-3 / Phi-3.5 and Zephyr share one shape, <|role|>\ncontent<END>\n for system, user and
// assistant, and no BOS; they differ in what closes a turn: <|end|> (Phi-3), the EOS </s> (Zephyr).
static void render_role_tags(sink *o, const speck_chat_msg *m, int n, bool gen, const char *end) {
    for (int i = 0; i < n; i++) {
        if (!is_role(&m[i], "system") && !is_role(&m[i], "user") && !is_role(&m[i], "assistant"))
            continue;
        puts_(o, "<|");
        puts_(o, m[i].role);
        puts_(o, "|>\n");
        puts_(o, m[i].content);
        puts_(o, end);
        puts_(o, "\n");
    }
    if (gen) puts_(o, "<|assistant|>\n");
}

static void render_phi3(sink *o, const speck_chat_msg *m, int n, bool gen) {
    render_role_tags(o, m, n, gen, "<|end|>");
}

static void render_zephyr(sink *o, const speck_chat_msg *m, int n, bool gen) {
    render_role_tags(o, m, n, gen, "</s>");
}

typedef struct {
    const char *name;
    void (*render)(sink *, const speck_chat_msg *, int, bool);
} tmpl;

static const tmpl TEMPLATES[] = {
    {"chatml", render_chatml},   {"llama2", render_llama2}, {"llama3", render_llama3},
    {"mistral", render_mistral}, {"gemma", render_gemma},   {"phi3", render_phi3},
    {"zephyr", render_zephyr},
};
#define N_TEMPLATES (sizeof TEMPLATES / sizeof TEMPLATES[0])

// Other spellings people use for the same formats.
static const struct {
    const char *alias, *name;
} ALIASES[] = {
    {"qwen", "chatml"},      {"qwen2", "chatml"},   {"qwen3", "chatml"},
    {"llama-2", "llama2"},   {"llama-3", "llama3"}, {"llama3.1", "llama3"},
    {"llama-3.1", "llama3"}, {"gemma2", "gemma"},   {"gemma3", "gemma"},
    {"phi-3", "phi3"},       {"phi3.5", "phi3"},    {"mistral-v1", "mistral"},
};

static const tmpl *find_template(const char *name) {
    for (size_t i = 0; i < sizeof ALIASES / sizeof ALIASES[0]; i++)
        if (!strcasecmp(name, ALIASES[i].alias)) name = ALIASES[i].name;
    for (size_t i = 0; i < N_TEMPLATES; i++)
        if (!strcasecmp(name, TEMPLATES[i].name)) return &TEMPLATES[i];
    return NULL;
}

/* ---------------------------------------------------------------------------------------- */
/* API                                                                                       */
/* ---------------------------------------------------------------------------------------- */

const char *const *speck_chat_templates(void) {
    static const char *const names[] = {"chatml", "llama2", "llama3", "mistral",
                                        "gemma",  "phi3",   "zephyr", NULL};
    return names;
}

const char *speck_chat_template_name(const char *name) {
    const tmpl *t = name ? find_template(name) : NULL;
    return t ? t->name : NULL;
}

const char *speck_chat_template_detect(const char *s) {
    if (!s) return NULL;
    // Most specific markers first: a ChatML or Llama 3 template may mention other formats'
    // tokens in comments or tool sections, never the other way round.
    if (strstr(s, "<|im_start|>")) return "chatml";
    if (strstr(s, "<|start_header_id|>")) return "llama3";
    if (strstr(s, "<start_of_turn>")) return "gemma";
    if (strstr(s, "[INST]")) return strstr(s, "<<SYS>>") ? "llama2" : "mistral";
    if (strstr(s, "<|user|>")) {
        if (strstr(s, "<|end|>")) return "phi3";
        // Zephyr closes turns with the EOS: literally "</s>" or via the eos_token variable.
        if (strstr(s, "</s>") || strstr(s, "eos_token")) return "zephyr";
    }
    return NULL;
}

int64_t speck_chat_apply(const char *name, const speck_chat_msg *msgs, int n,
                         bool add_generation_prompt, char *buf, int64_t size) {
    if (!name) return speck_set_error(SPECK_ERR_ARG, "speck_chat_apply: NULL template name");
    const tmpl *t = find_template(name);
    if (!t)
        return speck_set_error(SPECK_ERR_UNSUPPORTED,
                               "chat template \"%s\": unknown (known: chatml, llama2, llama3, "
                               "mistral, gemma, phi3, zephyr)",
                               name);
    if (n < 0 || (n > 0 && !msgs) || size < 0 || (size > 0 && !buf))
        return speck_set_error(SPECK_ERR_ARG, "speck_chat_apply: invalid arguments");
    for (int i = 0; i < n; i++)
        if (!msgs[i].role || !msgs[i].content)
            return speck_set_error(SPECK_ERR_ARG, "speck_chat_apply: message %d: NULL %s", i,
                                   msgs[i].role ? "content" : "role");
    sink o = {buf, size, 0, false};
    t->render(&o, msgs, n, add_generation_prompt);
    if (o.nomem) return speck_set_error(SPECK_ERR_NOMEM, "chat template %s: out of memory", name);
    if (buf && size > 0) buf[o.n < size ? o.n : size - 1] = 0;
    return o.n;
}
