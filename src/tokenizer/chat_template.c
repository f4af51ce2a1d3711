// Chat templates: the prompt formats of the common instruction-tuned model families, written out
// in C. Models ship their format as a Jinja template (tokenizer.chat_template); speck does not
// interpret Jinja but recognises which family a template belongs to by its distinctive markers
// and renders that family's format, byte for byte what the reference Jinja produces for plain
// role/content conversations (tests/test_chat_template.c checks this against transformers.js).
#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
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
    const char *bad; // a message or option that is not valid JSON (what it was)
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
static void render_chatml(sink *o, const speck_chat_msg *m, int n, const speck_chat_opts *op) {
    for (int i = 0; i < n; i++) {
        puts_(o, "<|im_start|>");
        puts_(o, m[i].role);
        puts_(o, "\n");
        puts_(o, m[i].content);
        puts_(o, "<|im_end|>\n");
    }
    if (op->add_generation_prompt) puts_(o, "<|im_start|>assistant\n");
}

// JSON as Python's json.dumps (and transformers.js's tojson) writes it: ", " and ": " between
// items, keys in their order, non-ASCII text as it is, integral numbers without a fraction,
// others in their shortest exact form.
static void put_json_string(sink *o, const char *s) {
    puts_(o, "\"");
    for (; *s; s++) {
        const unsigned char c = (unsigned char)*s;
        char e[8];
        if (c == '"' || c == '\\') {
            e[0] = '\\', e[1] = (char)c, e[2] = 0;
        } else if (c == '\n' || c == '\r' || c == '\t' || c == '\b' || c == '\f') {
            e[0] = '\\', e[1] = "nrtbf"[strchr("\n\r\t\b\f", c) - "\n\r\t\b\f"], e[2] = 0;
        } else if (c < 0x20) {
            snprintf(e, sizeof e, "\\u%04x", c);
        } else {
            put(o, s, 1);
            continue;
        }
        puts_(o, e);
    }
    puts_(o, "\"");
}

static void put_json(sink *o, const cJSON *j) {
    char num[40];
    if (cJSON_IsObject(j) || cJSON_IsArray(j)) {
        const bool obj = cJSON_IsObject(j);
        puts_(o, obj ? "{" : "[");
        for (const cJSON *c = j->child; c; c = c->next) {
            if (obj) {
                put_json_string(o, c->string);
                puts_(o, ": ");
            }
            put_json(o, c);
            if (c->next) puts_(o, ", ");
        }
        puts_(o, obj ? "}" : "]");
    } else if (cJSON_IsString(j)) {
        put_json_string(o, j->valuestring);
    } else if (cJSON_IsNumber(j)) {
        const double v = j->valuedouble;
        if (v == floor(v) && fabs(v) < 1e15) {
            snprintf(num, sizeof num, "%.0f", v);
        } else {
            for (int p = 1; p <= 17; p++) // the shortest form that reads back as v
                if (snprintf(num, sizeof num, "%.*g", p, v), strtod(num, NULL) == v) break;
        }
        puts_(o, num);
    } else {
        puts_(o, cJSON_IsTrue(j) ? "true" : cJSON_IsFalse(j) ? "false" : "null");
    }
}

// Text with the characters c removed from the left / right end (Python's lstrip / rstrip).
static const char *lstrip_c(const char *s, const char *e, char c) {
    while (s < e && *s == c) s++;
    return s;
}
static const char *rstrip_c(const char *s, const char *e, char c) {
    while (e > s && e[-1] == c) e--;
    return e;
}

static bool ends_with(const char *s, const char *suffix) {
    size_t n = strlen(s), k = strlen(suffix);
    return n >= k && !memcmp(s + n - k, suffix, k);
}

// Qwen3's template (its tokenizer_config.json): ChatML; a system turn listing the tools (one
// JSON object per line) when there are tools; an assistant turn's reasoning (reasoning_content,
// or the text of a <think> block in content) is shown only for the turns after the last real
// user query (one not made of a <tool_response>), and the final one always gets a <think> block;
// tool calls follow as <tool_call> JSON; consecutive "tool" messages form one user turn of
// <tool_response> blocks. The generation prompt, with thinking off, opens with an empty block.
static void render_qwen3(sink *o, const speck_chat_msg *m, int n, const speck_chat_opts *op) {
    const bool sys0 = n > 0 && is_role(&m[0], "system");
    if (op->tools) {
        cJSON *tools = cJSON_Parse(op->tools);
        if (!cJSON_IsArray(tools)) {
            cJSON_Delete(tools);
            o->bad = "the tool list";
            return;
        }
        puts_(o, "<|im_start|>system\n");
        if (sys0) {
            puts_(o, m[0].content);
            puts_(o, "\n\n");
        }
        puts_(o, "# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
                 "You are provided with function signatures within <tools></tools> XML tags:\n"
                 "<tools>");
        for (const cJSON *t = tools->child; t; t = t->next) {
            puts_(o, "\n");
            put_json(o, t);
        }
        puts_(o, "\n</tools>\n\nFor each function call, return a json object with function name "
                 "and arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n"
                 "{\"name\": <function-name>, \"arguments\": <args-json-object>}\n"
                 "</tool_call><|im_end|>\n");
        cJSON_Delete(tools);
    } else if (sys0) {
        puts_(o, "<|im_start|>system\n");
        puts_(o, m[0].content);
        puts_(o, "<|im_end|>\n");
    }
    int last_query = n - 1; // the last user message that is not a tool response
    for (int i = n - 1; i >= 0; i--)
        if (is_role(&m[i], "user") && !(!strncmp(m[i].content, "<tool_response>", 15) &&
                                        ends_with(m[i].content, "</tool_response>"))) {
            last_query = i;
            break;
        }
    for (int i = 0; i < n; i++) {
        const char *c = m[i].content;
        if (is_role(&m[i], "user") || (is_role(&m[i], "system") && i > 0)) {
            puts_(o, "<|im_start|>");
            puts_(o, m[i].role);
            puts_(o, "\n");
            puts_(o, c);
            puts_(o, "<|im_end|>\n");
        } else if (is_role(&m[i], "assistant")) {
            // content: after the last </think>, leading newlines dropped; reasoning: before the
            // first </think> and after the last <think> there, trailing / leading newlines dropped.
            const char *cb = c, *ce = c + strlen(c), *rb = "", *re = rb;
            const char *rc = op->reasoning_content ? op->reasoning_content[i] : NULL;
            const char *calls_json = op->tool_calls ? op->tool_calls[i] : NULL;
            if (rc) {
                rb = rc, re = rb + strlen(rb);
            } else if (strstr(c, "</think>")) {
                const char *first = strstr(c, "</think>"), *last = first;
                for (const char *p = first; (p = strstr(p + 1, "</think>"));) last = p;
                cb = lstrip_c(last + 8, ce, '\n');
                re = rstrip_c(c, first, '\n');
                rb = c;
                for (const char *p = c; (p = strstr(p, "<think>")) && p < re; p += 7) rb = p + 7;
                rb = lstrip_c(rb, re, '\n');
            }
            puts_(o, "<|im_start|>assistant\n");
            if (i > last_query && (i == n - 1 || re > rb)) {
                puts_(o, "<think>\n");
                const char *sb = lstrip_c(rb, re, '\n'), *se = rstrip_c(sb, re, '\n');
                put(o, sb, (size_t)(se - sb));
                puts_(o, "\n</think>\n\n");
                cb = lstrip_c(cb, ce, '\n');
            }
            put(o, cb, (size_t)(ce - cb));
            if (calls_json) {
                cJSON *calls = cJSON_Parse(calls_json);
                if (!cJSON_IsArray(calls)) {
                    cJSON_Delete(calls);
                    o->bad = "an assistant message's tool_calls";
                    return;
                }
                for (const cJSON *call = calls->child; call; call = call->next) {
                    if (call != calls->child || ce > cb) puts_(o, "\n");
                    const cJSON *f = cJSON_GetObjectItemCaseSensitive(call, "function");
                    const cJSON *tc = f ? f : call;
                    const cJSON *name = cJSON_GetObjectItemCaseSensitive(tc, "name");
                    const cJSON *args = cJSON_GetObjectItemCaseSensitive(tc, "arguments");
                    puts_(o, "<tool_call>\n{\"name\": \"");
                    puts_(o, cJSON_IsString(name) ? name->valuestring : "");
                    puts_(o, "\", \"arguments\": ");
                    if (cJSON_IsString(args))
                        puts_(o, args->valuestring);
                    else if (args)
                        put_json(o, args);
                    puts_(o, "}\n</tool_call>");
                }
                cJSON_Delete(calls);
            }
            puts_(o, "<|im_end|>\n");
        } else if (is_role(&m[i], "tool")) {
            if (i == 0 || !is_role(&m[i - 1], "tool")) puts_(o, "<|im_start|>user");
            puts_(o, "\n<tool_response>\n");
            puts_(o, c);
            puts_(o, "\n</tool_response>");
            if (i == n - 1 || !is_role(&m[i + 1], "tool")) puts_(o, "<|im_end|>\n");
        }
    }
    if (op->add_generation_prompt) {
        puts_(o, "<|im_start|>assistant\n");
        if (op->disable_thinking) puts_(o, "<think>\n\n</think>\n\n");
    }
}

// Llama 3 / 3.x: BOS, then a header per message; contents are trimmed.
static void render_llama3(sink *o, const speck_chat_msg *m, int n, const speck_chat_opts *op) {
    puts_(o, "<|begin_of_text|>");
    for (int i = 0; i < n; i++) {
        puts_(o, "<|start_header_id|>");
        puts_(o, m[i].role);
        puts_(o, "<|end_header_id|>\n\n");
        put_trimmed(o, m[i].content);
        puts_(o, "<|eot_id|>");
    }
    if (op->add_generation_prompt) puts_(o, "<|start_header_id|>assistant<|end_header_id|>\n\n");
}

// Llama 2 chat (Meta's template): every user turn opens with BOS and [INST]; the system message
// goes inside the first turn between <<SYS>> markers, and the whole turn text is stripped;
// assistant turns are " " + stripped content + " </s>". Other roles render nothing, and there is
// no generation prompt: the prompt already ends with [/INST]. An empty system message still
// gives an empty <<SYS>> block, as with Python's Jinja ("" != false) and Meta's reference code.
static void render_llama2(sink *o, const speck_chat_msg *m, int n, const speck_chat_opts *op) {
    (void)op;
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
static void render_mistral(sink *o, const speck_chat_msg *m, int n, const speck_chat_opts *op) {
    (void)op;
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
static void render_gemma(sink *o, const speck_chat_msg *m, int n, const speck_chat_opts *op) {
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
    if (op->add_generation_prompt) puts_(o, "<start_of_turn>model\n");
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

static void render_phi3(sink *o, const speck_chat_msg *m, int n, const speck_chat_opts *op) {
    render_role_tags(o, m, n, op->add_generation_prompt, "<|end|>");
}

static void render_zephyr(sink *o, const speck_chat_msg *m, int n, const speck_chat_opts *op) {
    render_role_tags(o, m, n, op->add_generation_prompt, "</s>");
}

typedef struct {
    const char *name;
    void (*render)(sink *, const speck_chat_msg *, int, const speck_chat_opts *);
} tmpl;

static const tmpl TEMPLATES[] = {
    {"chatml", render_chatml}, {"qwen3", render_qwen3},     {"llama2", render_llama2},
    {"llama3", render_llama3}, {"mistral", render_mistral}, {"gemma", render_gemma},
    {"phi3", render_phi3},     {"zephyr", render_zephyr},
};
#define N_TEMPLATES (sizeof TEMPLATES / sizeof TEMPLATES[0])

// Other spellings people use for the same formats.
static const struct {
    const char *alias, *name;
} ALIASES[] = {
    {"qwen", "chatml"},      {"qwen2", "chatml"},   {"qwen3.0", "qwen3"},
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
    static const char *const names[] = {"chatml", "qwen3", "llama2", "llama3", "mistral",
                                        "gemma",  "phi3",  "zephyr", NULL};
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
    if (strstr(s, "<|im_start|>")) return strstr(s, "<think>") ? "qwen3" : "chatml";
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
    const speck_chat_opts op = {.add_generation_prompt = add_generation_prompt};
    return speck_chat_apply_ex(name, msgs, n, &op, buf, size);
}

int64_t speck_chat_apply_ex(const char *name, const speck_chat_msg *msgs, int n,
                            const speck_chat_opts *opts, char *buf, int64_t size) {
    const speck_chat_opts def = {.add_generation_prompt = true};
    if (!opts) opts = &def;
    if (!name) return speck_set_error(SPECK_ERR_ARG, "speck_chat_apply: NULL template name");
    const tmpl *t = find_template(name);
    if (!t)
        return speck_set_error(SPECK_ERR_UNSUPPORTED,
                               "chat template \"%s\": unknown (known: chatml, qwen3, llama2, "
                               "llama3, mistral, gemma, phi3, zephyr)",
                               name);
    if (n < 0 || (n > 0 && !msgs) || size < 0 || (size > 0 && !buf))
        return speck_set_error(SPECK_ERR_ARG, "speck_chat_apply: invalid arguments");
    for (int i = 0; i < n; i++)
        if (!msgs[i].role || !msgs[i].content)
            return speck_set_error(SPECK_ERR_ARG, "speck_chat_apply: message %d: NULL %s", i,
                                   msgs[i].role ? "content" : "role");
    sink o = {buf, size, 0, false, NULL};
    t->render(&o, msgs, n, opts);
    if (o.nomem) return speck_set_error(SPECK_ERR_NOMEM, "chat template %s: out of memory", name);
    if (o.bad)
        return speck_set_error(SPECK_ERR_ARG, "chat template %s: %s is not valid JSON", name,
                               o.bad);
    if (buf && size > 0) buf[o.n < size ? o.n : size - 1] = 0;
    return o.n;
}
