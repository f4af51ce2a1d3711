// The OpenAI-compatible API's JSON: request validation into a prompt and settings, stop-string
// scanning, and the bodies of completions, stream chunks and errors (no HTTP here).
#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "serve/api.h"

#define FAIL(code, ...)                                                                            \
    do {                                                                                           \
        snprintf(err, errsz, __VA_ARGS__);                                                         \
        status = code;                                                                             \
        goto done;                                                                                 \
    } while (0)

void speck_api_req_free(speck_api_req *r) {
    free(r->prompt);
    for (int i = 0; i < r->n_stop; i++) free(r->stop[i]);
    speck_grammar_free(r->grammar);
    memset(r, 0, sizeof *r);
}

// Tokens of text (malloc'd in *ids); count, or -1.
static int tokenize(const speck_vocab *v, const char *text, size_t len, bool add_special,
                    int32_t **ids) {
    int64_t cap = (int64_t)len + 8, n;
    *ids = malloc((size_t)cap * sizeof(int32_t));
    if (!*ids) return -1;
    n = speck_tokenize(v, text, len, add_special, true, *ids, cap);
    if (n > cap) { // cannot happen for byte-fallback vocabularies, but stay safe
        int32_t *p = realloc(*ids, (size_t)n * sizeof(int32_t));
        if (!p) return -1;
        *ids = p;
        n = speck_tokenize(v, text, len, add_special, true, *ids, n);
    }
    return n < 0 || n > 1 << 30 ? -1 : (int)n;
}

// A number field: absent -> *out untouched, 0; not a number -> -1.
static int get_num(const cJSON *o, const char *key, double *out) {
    const cJSON *j = cJSON_GetObjectItemCaseSensitive(o, key);
    if (!j || cJSON_IsNull(j)) return 0;
    if (!cJSON_IsNumber(j) || !isfinite(j->valuedouble)) return -1;
    *out = j->valuedouble;
    return 1;
}

// Text of a message's content: a string, or an array of {"type": "text", "text": str} parts
// (joined). NULL when neither; *owned set when the result is malloc'd.
static const char *content_text(const cJSON *c, char **owned) {
    *owned = NULL;
    if (cJSON_IsString(c)) return c->valuestring;
    if (cJSON_IsNull(c)) return "";
    if (!cJSON_IsArray(c)) return NULL;
    size_t total = 1;
    const cJSON *p;
    cJSON_ArrayForEach(p, c) {
        const cJSON *t = cJSON_GetObjectItemCaseSensitive(p, "text");
        const cJSON *ty = cJSON_GetObjectItemCaseSensitive(p, "type");
        if (!cJSON_IsString(t) || (ty && (!cJSON_IsString(ty) || strcmp(ty->valuestring, "text"))))
            return NULL;
        total += strlen(t->valuestring);
    }
    char *s = malloc(total);
    if (!s) return NULL;
    s[0] = 0;
    cJSON_ArrayForEach(p, c) strcat(s, cJSON_GetObjectItemCaseSensitive(p, "text")->valuestring);
    return *owned = s;
}

// messages -> the prompt text through the chat template (malloc'd), or NULL with err.
static char *render_chat(const speck_api_cfg *cfg, const cJSON *msgs, char *err, size_t errsz) {
    if (!cJSON_IsArray(msgs) || cJSON_GetArraySize(msgs) == 0) {
        snprintf(err, errsz, "'messages' must be a non-empty array");
        return NULL;
    }
    const int n = cJSON_GetArraySize(msgs);
    speck_chat_msg *m = calloc((size_t)n, sizeof *m);
    char **owned = calloc((size_t)n, sizeof(char *));
    char *out = NULL;
    if (!m || !owned) {
        snprintf(err, errsz, "out of memory");
        goto done;
    }
    int i = 0;
    const cJSON *e;
    cJSON_ArrayForEach(e, msgs) {
        const cJSON *role = cJSON_GetObjectItemCaseSensitive(e, "role");
        const cJSON *content = cJSON_GetObjectItemCaseSensitive(e, "content");
        if (!cJSON_IsObject(e) || !cJSON_IsString(role)) {
            snprintf(err, errsz, "messages[%d]: an object with a string 'role' expected", i);
            goto done;
        }
        const char *r = role->valuestring;
        if (strcmp(r, "system") && strcmp(r, "user") && strcmp(r, "assistant") &&
            strcmp(r, "tool") && strcmp(r, "developer")) {
            snprintf(err, errsz, "messages[%d].role: unknown role '%.40s'", i, r);
            goto done;
        }
        const char *text = content ? content_text(content, &owned[i]) : NULL;
        if (!text) {
            snprintf(err, errsz,
                     "messages[%d].content: a string or an array of text parts expected", i);
            goto done;
        }
        m[i].role = strcmp(r, "developer") ? r : "system";
        m[i].content = text;
        i++;
    }
    int64_t need = speck_chat_apply_ex(cfg->tmpl, m, n, NULL, NULL, 0);
    if (need < 0 || !(out = malloc((size_t)need + 1)) ||
        speck_chat_apply_ex(cfg->tmpl, m, n, NULL, out, need + 1) != need) {
        snprintf(err, errsz, "messages: cannot render the chat template: %s", speck_last_error());
        free(out);
        out = NULL;
    }
done:
    for (int k = 0; owned && k < n; k++) free(owned[k]);
    free(owned);
    free(m);
    return out;
}

// Compile a schema (JSON text of s) into r->grammar; 200 or 400 naming where.
static int schema_grammar(const cJSON *s, const char *where, speck_api_req *r, char *err,
                          size_t errsz) {
    int status = 200;
    char *txt = cJSON_PrintUnformatted(s);
    if (!txt) FAIL(500, "out of memory");
    if (!(r->grammar = speck_grammar_from_json_schema(txt, strlen(txt))))
        FAIL(400, "%s: %s", where, speck_last_error());
done:
    free(txt);
    return status;
}

// response_format, grammar, json_schema -> r->grammar (at most one of them constrains).
static int parse_constraint(const cJSON *j, speck_api_req *r, char *err, size_t errsz) {
    int status = 200;
    const cJSON *rf = cJSON_GetObjectItemCaseSensitive(j, "response_format");
    const cJSON *gr = cJSON_GetObjectItemCaseSensitive(j, "grammar");
    const cJSON *js = cJSON_GetObjectItemCaseSensitive(j, "json_schema");
    if (cJSON_IsNull(rf)) rf = NULL;
    if (cJSON_IsNull(gr)) gr = NULL;
    if (cJSON_IsNull(js)) js = NULL;
    if (rf) {
        const cJSON *t = cJSON_GetObjectItemCaseSensitive(rf, "type");
        if (!cJSON_IsObject(rf) || !cJSON_IsString(t))
            FAIL(400, "'response_format' must be an object with a string 'type'");
        if (!strcmp(t->valuestring, "text")) rf = NULL;
        else if (strcmp(t->valuestring, "json_object") && strcmp(t->valuestring, "json_schema"))
            FAIL(400, "'response_format': type '%.40s' is not text, json_object or json_schema",
                 t->valuestring);
    }
    if ((rf != NULL) + (gr != NULL) + (js != NULL) > 1)
        FAIL(400, "'response_format', 'grammar' and 'json_schema': give one");
    if (gr) {
        if (!cJSON_IsString(gr)) FAIL(400, "'grammar' must be a string (GBNF)");
        if (!(r->grammar = speck_grammar_parse(gr->valuestring, strlen(gr->valuestring))))
            FAIL(400, "'grammar': %s", speck_last_error());
    } else if (js) {
        return schema_grammar(js, "'json_schema'", r, err, errsz);
    } else if (rf) {
        const cJSON *t = cJSON_GetObjectItemCaseSensitive(rf, "type");
        if (!strcmp(t->valuestring, "json_object")) {
            const cJSON *sc = cJSON_GetObjectItemCaseSensitive(rf, "schema"); // llama-server's
            if (sc && !cJSON_IsNull(sc))
                return schema_grammar(sc, "'response_format'.schema", r, err, errsz);
            if (!(r->grammar = speck_grammar_json_object())) FAIL(500, "%s", speck_last_error());
        } else {
            const cJSON *w = cJSON_GetObjectItemCaseSensitive(rf, "json_schema");
            const cJSON *sc = cJSON_GetObjectItemCaseSensitive(w, "schema");
            if (!cJSON_IsObject(w) || !sc)
                FAIL(400, "'response_format': json_schema needs {\"json_schema\": {\"name\": ..., "
                          "\"schema\": {...}}}");
            return schema_grammar(sc, "'response_format'.json_schema.schema", r, err, errsz);
        }
    }
done:
    return status;
}

int speck_api_parse(const speck_api_cfg *cfg, speck_api_kind kind, const char *body, size_t len,
                    speck_api_req *r, char *err, size_t errsz) {
    memset(r, 0, sizeof *r);
    r->kind = kind;
    r->sp = speck_sampler_default();
    r->sp.temperature = 1.0f; // OpenAI's default
    int status = 200;
    char *text = NULL;
    cJSON *j = cJSON_ParseWithLength(body, len);
    if (!j) FAIL(400, "the body is not valid JSON");
    if (!cJSON_IsObject(j)) FAIL(400, "the body must be a JSON object");
    const cJSON *model = cJSON_GetObjectItemCaseSensitive(j, "model");
    if (model && !cJSON_IsNull(model)) {
        if (!cJSON_IsString(model)) FAIL(400, "'model' must be a string");
        if (*model->valuestring && strcmp(model->valuestring, cfg->model_id))
            FAIL(404, "the model '%.100s' does not exist (this server has '%.100s')",
                 model->valuestring, cfg->model_id);
    }
    const cJSON *n = cJSON_GetObjectItemCaseSensitive(j, "n");
    if (n && !cJSON_IsNull(n) && (!cJSON_IsNumber(n) || n->valuedouble != 1))
        FAIL(400, "'n': only 1 choice per request is supported");
    if ((status = parse_constraint(j, r, err, errsz)) != 200) goto done;
    // The prompt.
    if (kind == SPECK_API_CHAT) {
        if (!(text = render_chat(cfg, cJSON_GetObjectItemCaseSensitive(j, "messages"), err,
                                 errsz))) {
            status = 400;
            goto done;
        }
        r->n_prompt = tokenize(cfg->vocab, text, strlen(text), false, &r->prompt);
    } else {
        const cJSON *p = cJSON_GetObjectItemCaseSensitive(j, "prompt");
        if (cJSON_IsArray(p) && cJSON_GetArraySize(p) == 1 &&
            cJSON_IsString(cJSON_GetArrayItem(p, 0)))
            p = cJSON_GetArrayItem(p, 0);
        if (cJSON_IsString(p)) {
            r->n_prompt = tokenize(cfg->vocab, p->valuestring, strlen(p->valuestring), true,
                                   &r->prompt);
        } else if (cJSON_IsArray(p) && cJSON_GetArraySize(p) > 0) { // token ids
            const int np = cJSON_GetArraySize(p), nv = speck_vocab_n_tokens(cfg->vocab);
            if (np > cfg->max_len) FAIL(400, "'prompt': %d tokens, the context is %d", np,
                                        cfg->max_len);
            if (!(r->prompt = malloc((size_t)np * sizeof(int32_t)))) FAIL(500, "out of memory");
            int i = 0;
            const cJSON *e;
            cJSON_ArrayForEach(e, p) {
                if (!cJSON_IsNumber(e) || e->valuedouble != floor(e->valuedouble) ||
                    e->valuedouble < 0 || e->valuedouble >= nv)
                    FAIL(400, "'prompt'[%d]: a token id in [0, %d) expected", i, nv);
                r->prompt[i++] = e->valueint;
            }
            r->n_prompt = np;
        } else {
            FAIL(400, "'prompt' must be a string, an array of one string, or of token ids");
        }
    }
    if (r->n_prompt < 0) FAIL(400, "the prompt cannot be tokenized");
    if (r->n_prompt == 0) FAIL(400, "the prompt is empty");
    // Settings.
    double v = -1;
    int got = get_num(j, kind == SPECK_API_CHAT && cJSON_GetObjectItemCaseSensitive(
                                                       j, "max_completion_tokens")
                             ? "max_completion_tokens"
                             : "max_tokens",
                      &v);
    if (got < 0) FAIL(400, "'max_tokens' must be an integer");
    if (got && (v != floor(v) || v < 1))
        FAIL(400, "'max_tokens' must be a positive integer (got %g)", v);
    const int room = cfg->max_len - r->n_prompt;
    if (room < 1)
        FAIL(400,
             "this model's maximum context length is %d tokens; the prompt has %d tokens, "
             "leaving no room for a completion",
             cfg->max_len, r->n_prompt);
    if (got && v > room)
        FAIL(400,
             "this model's maximum context length is %d tokens; the prompt has %d tokens and "
             "max_tokens is %.0f (at most %d)",
             cfg->max_len, r->n_prompt, v, room);
    r->max_tokens = got ? (int)v : cfg->default_max_tokens < room ? cfg->default_max_tokens : room;
    v = 1.0;
    if ((got = get_num(j, "temperature", &v)) < 0 || v < 0 || v > 2)
        FAIL(400, "'temperature' must be a number in [0, 2]");
    r->sp.temperature = (float)v;
    v = 1.0;
    if (get_num(j, "top_p", &v) < 0 || v <= 0 || v > 1)
        FAIL(400, "'top_p' must be a number in (0, 1]");
    r->sp.top_p = (float)v;
    v = 0;
    if (get_num(j, "top_k", &v) < 0 || v < 0 || v != floor(v) || v > 1e9)
        FAIL(400, "'top_k' must be a non-negative integer");
    r->sp.top_k = (int)v;
    v = 0;
    if (get_num(j, "min_p", &v) < 0 || v < 0 || v > 1) FAIL(400, "'min_p' must be in [0, 1]");
    r->sp.min_p = (float)v;
    v = 0;
    if ((got = get_num(j, "seed", &v)) < 0 || v != floor(v) || fabs(v) > 9.007199254740992e15)
        FAIL(400, "'seed' must be an integer");
    r->has_seed = got;
    r->sp.seed = (uint64_t)(int64_t)v;
    const cJSON *st = cJSON_GetObjectItemCaseSensitive(j, "stream");
    if (st && !cJSON_IsNull(st) && !cJSON_IsBool(st)) FAIL(400, "'stream' must be a boolean");
    r->stream = cJSON_IsTrue(st);
    const cJSON *ie = cJSON_GetObjectItemCaseSensitive(j, "ignore_eos");
    if (ie && !cJSON_IsNull(ie) && !cJSON_IsBool(ie)) FAIL(400, "'ignore_eos' must be a boolean");
    r->ignore_eos = cJSON_IsTrue(ie);
    const cJSON *so = cJSON_GetObjectItemCaseSensitive(j, "stream_options");
    if (so && !cJSON_IsNull(so)) {
        const cJSON *iu = cJSON_GetObjectItemCaseSensitive(so, "include_usage");
        if (!cJSON_IsObject(so) || (iu && !cJSON_IsBool(iu)))
            FAIL(400, "'stream_options' must be {\"include_usage\": bool}");
        r->include_usage = cJSON_IsTrue(iu);
    }
    const cJSON *lp = cJSON_GetObjectItemCaseSensitive(j, "logprobs");
    if (lp && !cJSON_IsNull(lp)) {
        if (kind == SPECK_API_CHAT) {
            if (!cJSON_IsBool(lp)) FAIL(400, "'logprobs' must be a boolean");
            r->logprobs = cJSON_IsTrue(lp);
        } else {
            if (!cJSON_IsNumber(lp) || lp->valuedouble != floor(lp->valuedouble) ||
                lp->valuedouble < 0 || lp->valuedouble > 5)
                FAIL(400, "'logprobs' must be an integer in [0, 5]");
            r->logprobs = lp->valueint > 0 ? 1 : 0;
        }
    }
    const cJSON *stop = cJSON_GetObjectItemCaseSensitive(j, "stop");
    if (stop && !cJSON_IsNull(stop)) {
        if (cJSON_IsString(stop)) {
            if (*stop->valuestring && !(r->stop[r->n_stop++] = strdup(stop->valuestring)))
                FAIL(500, "out of memory");
        } else if (cJSON_IsArray(stop) && cJSON_GetArraySize(stop) <= SPECK_API_MAX_STOP) {
            const cJSON *e;
            cJSON_ArrayForEach(e, stop) {
                if (!cJSON_IsString(e) || !*e->valuestring)
                    FAIL(400, "'stop' entries must be non-empty strings");
                if (!(r->stop[r->n_stop++] = strdup(e->valuestring))) FAIL(500, "out of memory");
            }
        } else {
            FAIL(400, "'stop' must be a string or an array of up to %d strings",
                 SPECK_API_MAX_STOP);
        }
    }
done:
    free(text);
    cJSON_Delete(j);
    return status;
}

long speck_api_stop_scan(const char *text, size_t len, char *const *stop, int n_stop,
                         size_t *safe) {
    long first = -1;
    size_t hold = 0;
    for (int s = 0; s < n_stop; s++) {
        const size_t sl = strlen(stop[s]);
        if (!sl) continue;
        for (size_t i = 0; i + sl <= len; i++)
            if (!memcmp(text + i, stop[s], sl)) {
                if (first < 0 || (long)i < first) first = (long)i;
                break;
            }
        // The longest tail of text that is a proper prefix of this stop string.
        for (size_t k = sl - 1 < len ? sl - 1 : len; k > hold; k--)
            if (!memcmp(text + len - k, stop[s], k)) {
                hold = k;
                break;
            }
    }
    *safe = first >= 0 ? (size_t)first : len - hold;
    return first;
}

char *speck_api_error_json(int status, const char *msg) {
    cJSON *j = cJSON_CreateObject(), *e = cJSON_AddObjectToObject(j, "error");
    cJSON_AddStringToObject(e, "message", msg);
    cJSON_AddStringToObject(e, "type",
                            status == 401   ? "authentication_error"
                            : status == 404 ? "not_found_error"
                            : status == 503 ? "server_overloaded"
                            : status >= 500 ? "server_error"
                                            : "invalid_request_error");
    cJSON_AddNumberToObject(e, "code", status);
    char *s = cJSON_PrintUnformatted(j);
    cJSON_Delete(j);
    return s;
}

// A string of n bytes (may hold NUL-free text only; cut at the first NUL otherwise).
static cJSON *str_n(const char *s, size_t n) {
    char *t = malloc(n + 1);
    if (!t) return cJSON_CreateString("");
    memcpy(t, s, n);
    t[n] = 0;
    cJSON *j = cJSON_CreateString(t);
    free(t);
    return j;
}

char *speck_api_response_json(const speck_api_out *o) {
    const bool chat = o->kind == SPECK_API_CHAT;
    cJSON *j = cJSON_CreateObject();
    cJSON_AddStringToObject(j, "id", o->id);
    cJSON_AddStringToObject(j, "object", chat ? (o->chunk ? "chat.completion.chunk"
                                                          : "chat.completion")
                                              : "text_completion");
    cJSON_AddNumberToObject(j, "created", (double)o->created);
    cJSON_AddStringToObject(j, "model", o->model);
    cJSON *choices = cJSON_AddArrayToObject(j, "choices");
    if (o->text || o->finish || !o->usage) {
        cJSON *c = cJSON_CreateObject();
        cJSON_AddItemToArray(choices, c);
        cJSON_AddNumberToObject(c, "index", 0);
        cJSON *txt = str_n(o->text ? o->text : "", o->text ? o->text_len : 0);
        if (chat) {
            cJSON *msg = cJSON_AddObjectToObject(c, o->chunk ? "delta" : "message");
            if (!o->chunk || o->first) cJSON_AddStringToObject(msg, "role", "assistant");
            if (o->text || !o->chunk)
                cJSON_AddItemToObject(msg, "content", txt);
            else
                cJSON_Delete(txt);
        } else {
            cJSON_AddItemToObject(c, "text", txt);
        }
        if (o->lp) {
            cJSON *l = cJSON_AddObjectToObject(c, "logprobs");
            if (chat) {
                cJSON *arr = cJSON_AddArrayToObject(l, "content");
                for (int i = 0; i < o->n_lp; i++) {
                    cJSON *e = cJSON_CreateObject();
                    cJSON_AddStringToObject(e, "token", o->lp_tok[i]);
                    cJSON_AddNumberToObject(e, "logprob", o->lp[i]);
                    cJSON_AddArrayToObject(e, "top_logprobs");
                    cJSON_AddItemToArray(arr, e);
                }
            } else {
                cJSON *tk = cJSON_AddArrayToObject(l, "tokens");
                cJSON *tl = cJSON_AddArrayToObject(l, "token_logprobs");
                for (int i = 0; i < o->n_lp; i++) {
                    cJSON_AddItemToArray(tk, cJSON_CreateString(o->lp_tok[i]));
                    cJSON_AddItemToArray(tl, cJSON_CreateNumber(o->lp[i]));
                }
            }
        } else {
            cJSON_AddNullToObject(c, "logprobs");
        }
        if (o->finish)
            cJSON_AddStringToObject(c, "finish_reason", o->finish);
        else
            cJSON_AddNullToObject(c, "finish_reason");
    }
    if (o->usage) {
        cJSON *u = cJSON_AddObjectToObject(j, "usage");
        cJSON_AddNumberToObject(u, "prompt_tokens", o->prompt_tokens);
        cJSON_AddNumberToObject(u, "completion_tokens", o->completion_tokens);
        cJSON_AddNumberToObject(u, "total_tokens", o->prompt_tokens + o->completion_tokens);
        cJSON *d = cJSON_AddObjectToObject(u, "prompt_tokens_details");
        cJSON_AddNumberToObject(d, "cached_tokens", o->cached_tokens);
    } else if (o->chunk) {
        cJSON_AddNullToObject(j, "usage");
    }
    char *s = cJSON_PrintUnformatted(j);
    cJSON_Delete(j);
    return s;
}

int speck_api_tokenize(const speck_vocab *v, const char *body, size_t len, char **out, char *err,
                       size_t errsz) {
    int status = 200;
    int32_t *ids = NULL;
    cJSON *res = NULL, *j = cJSON_ParseWithLength(body, len);
    if (!j) FAIL(400, "the body is not valid JSON");
    const cJSON *c = cJSON_GetObjectItemCaseSensitive(j, "content");
    const cJSON *as = cJSON_GetObjectItemCaseSensitive(j, "add_special");
    if (!cJSON_IsString(c)) FAIL(400, "'content' must be a string");
    if (as && !cJSON_IsBool(as)) FAIL(400, "'add_special' must be a boolean");
    const int n = tokenize(v, c->valuestring, strlen(c->valuestring), cJSON_IsTrue(as), &ids);
    if (n < 0) FAIL(400, "'content' cannot be tokenized");
    res = cJSON_CreateObject();
    cJSON *arr = cJSON_AddArrayToObject(res, "tokens");
    for (int i = 0; i < n; i++) cJSON_AddItemToArray(arr, cJSON_CreateNumber(ids[i]));
    *out = cJSON_PrintUnformatted(res);
done:
    free(ids);
    cJSON_Delete(res);
    cJSON_Delete(j);
    return status;
}

int speck_api_detokenize(const speck_vocab *v, const char *body, size_t len, char **out,
                         char *err, size_t errsz) {
    int status = 200;
    int32_t *ids = NULL;
    char *text = NULL;
    cJSON *res = NULL, *j = cJSON_ParseWithLength(body, len);
    if (!j) FAIL(400, "the body is not valid JSON");
    const cJSON *t = cJSON_GetObjectItemCaseSensitive(j, "tokens");
    if (!cJSON_IsArray(t)) FAIL(400, "'tokens' must be an array of token ids");
    const int n = cJSON_GetArraySize(t), nv = speck_vocab_n_tokens(v);
    if (!(ids = malloc((size_t)(n ? n : 1) * sizeof(int32_t)))) FAIL(500, "out of memory");
    int i = 0;
    const cJSON *e;
    cJSON_ArrayForEach(e, t) {
        if (!cJSON_IsNumber(e) || e->valuedouble != floor(e->valuedouble) || e->valuedouble < 0 ||
            e->valuedouble >= nv)
            FAIL(400, "'tokens'[%d]: a token id in [0, %d) expected", i, nv);
        ids[i++] = e->valueint;
    }
    const int64_t need = speck_detokenize(v, ids, n, NULL, 0);
    if (need < 0 || !(text = malloc((size_t)need + 1))) FAIL(400, "cannot detokenize");
    speck_detokenize(v, ids, n, text, need + 1);
    res = cJSON_CreateObject();
    cJSON_AddItemToObject(res, "content", str_n(text, (size_t)need));
    *out = cJSON_PrintUnformatted(res);
done:
    free(ids);
    free(text);
    cJSON_Delete(res);
    cJSON_Delete(j);
    return status;
}
