// Fine-tuning data: plain text or JSONL ({"text"}, {"prompt","completion"}, chat {"messages"})
// tokenized into one packed stream with a per-token loss mask.
#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "speck.h"

typedef struct {
    speck_ft_data *d;
    int64_t cap, ex_cap;
} builder;

static int push(builder *b, const int32_t *ids, int64_t n, uint8_t train) {
    speck_ft_data *d = b->d;
    if (d->n + n > b->cap) {
        int64_t cap = b->cap ? b->cap : 4096;
        while (cap < d->n + n) cap *= 2;
        int32_t *t = realloc(d->tok, (size_t)cap * sizeof *t);
        if (t) d->tok = t;
        uint8_t *m = realloc(d->train, (size_t)cap);
        if (m) d->train = m;
        if (!t || !m) return speck_set_error(SPECK_ERR_NOMEM, "finetune data: out of memory");
        b->cap = cap;
    }
    memcpy(d->tok + d->n, ids, (size_t)n * sizeof *ids);
    memset(d->train + d->n, train, (size_t)n);
    d->n += n;
    return 0;
}

static int push_text(builder *b, const speck_vocab *v, const char *s, size_t len, bool special,
                     uint8_t train) {
    if (!len) return 0;
    int64_t n = speck_tokenize(v, s, len, false, special, NULL, 0);
    if (n < 0) return (int)n;
    int32_t *ids = malloc((size_t)(n ? n : 1) * sizeof *ids);
    if (!ids) return speck_set_error(SPECK_ERR_NOMEM, "finetune data: out of memory");
    n = speck_tokenize(v, s, len, false, special, ids, n);
    int err = n < 0 ? (int)n : push(b, ids, n, train);
    free(ids);
    return err;
}

static int push_id(builder *b, int32_t id, uint8_t train) {
    return id >= 0 ? push(b, &id, 1, train) : 0;
}

// Open example i at the current end of the stream.
static int begin_example(builder *b) {
    speck_ft_data *d = b->d;
    if (d->n_examples + 2 > b->ex_cap) {
        int64_t cap = b->ex_cap ? b->ex_cap * 2 : 256;
        int64_t *s = realloc(d->start, (size_t)cap * sizeof *s);
        if (!s) return speck_set_error(SPECK_ERR_NOMEM, "finetune data: out of memory");
        d->start = s, b->ex_cap = cap;
    }
    d->start[d->n_examples] = d->n;
    return 0;
}

// Close the open example: predicting its first token (from the previous example) never counts.
static void end_example(builder *b) {
    speck_ft_data *d = b->d;
    int64_t s = d->start[d->n_examples];
    if (d->n > s) {
        d->train[s] = 0;
        d->start[++d->n_examples] = d->n;
    }
}

static int64_t render(const char *tmpl, const speck_chat_msg *msgs, int n, bool gen, char **out) {
    int64_t need = speck_chat_apply(tmpl, msgs, n, gen, NULL, 0);
    if (need < 0) return need;
    char *buf = malloc((size_t)need + 1);
    if (!buf) return speck_set_error(SPECK_ERR_NOMEM, "finetune data: out of memory");
    speck_chat_apply(tmpl, msgs, n, gen, buf, need + 1);
    *out = buf;
    return need;
}

// A chat example: the rendered conversation, trained on each assistant turn's text (what the
// conversation up to it adds after the generation prompt).
static int chat_example(builder *b, const speck_vocab *v, const char *tmpl, const cJSON *arr,
                        const char *path, int64_t line) {
    int n = cJSON_GetArraySize(arr), err = 0, n_asst = 0;
    if (n < 1)
        return speck_set_error(SPECK_ERR_FORMAT, "%s:%lld: \"messages\" is empty", path,
                               (long long)line);
    speck_chat_msg *msgs = calloc((size_t)n, sizeof *msgs);
    if (!msgs) return speck_set_error(SPECK_ERR_NOMEM, "finetune data: out of memory");
    for (int i = 0; i < n && !err; i++) {
        const cJSON *mo = cJSON_GetArrayItem(arr, i);
        const cJSON *r = cJSON_GetObjectItemCaseSensitive(mo, "role");
        const cJSON *c = cJSON_GetObjectItemCaseSensitive(mo, "content");
        if (!cJSON_IsString(r) || !cJSON_IsString(c))
            err = speck_set_error(SPECK_ERR_FORMAT,
                                  "%s:%lld: message %d needs string \"role\" and \"content\"", path,
                                  (long long)line, i);
        else
            msgs[i].role = r->valuestring, msgs[i].content = c->valuestring;
    }
    char *full = NULL;
    int64_t nf = err ? -1 : render(tmpl, msgs, n, false, &full), pos = 0;
    if (!err && nf < 0) err = (int)nf;
    for (int i = 0; i < n && !err; i++) {
        if (strcmp(msgs[i].role, "assistant")) continue;
        n_asst++;
        char *p = NULL, *f = NULL;
        int64_t np = render(tmpl, msgs, i, true, &p), nq = np < 0 ? np : render(tmpl, msgs, i + 1,
                                                                                false, &f);
        if (np < 0 || nq < 0)
            err = (int)(np < 0 ? np : nq);
        else if (np < pos || nq < np || nq > nf || memcmp(full, f, (size_t)nq) ||
                 memcmp(full, p, (size_t)np))
            err = speck_set_error(SPECK_ERR_FORMAT,
                                  "%s:%lld: the %s template does not render this conversation "
                                  "turn by turn (cannot find assistant message %d)",
                                  path, (long long)line, tmpl, i);
        else {
            err = push_text(b, v, full + pos, (size_t)(np - pos), true, 0);
            if (!err) err = push_text(b, v, full + np, (size_t)(nq - np), true, 1);
            pos = nq;
        }
        free(p);
        free(f);
    }
    if (!err && n_asst == 0)
        err = speck_set_error(SPECK_ERR_FORMAT, "%s:%lld: no assistant message to learn", path,
                              (long long)line);
    if (!err) err = push_text(b, v, full + pos, (size_t)(nf - pos), true, 0);
    free(full);
    free(msgs);
    return err;
}

static int json_line(builder *b, const speck_vocab *v, const char *tmpl, const char *s, size_t len,
                     const char *path, int64_t line) {
    cJSON *j = cJSON_ParseWithLength(s, len);
    int err = 0;
    if (!cJSON_IsObject(j)) {
        cJSON_Delete(j);
        return speck_set_error(SPECK_ERR_FORMAT, "%s:%lld: not a JSON object", path,
                               (long long)line);
    }
    const cJSON *text = cJSON_GetObjectItemCaseSensitive(j, "text");
    const cJSON *pr = cJSON_GetObjectItemCaseSensitive(j, "prompt");
    const cJSON *co = cJSON_GetObjectItemCaseSensitive(j, "completion");
    const cJSON *ms = cJSON_GetObjectItemCaseSensitive(j, "messages");
    const bool bos = speck_vocab_add_bos(v);
    if ((err = begin_example(b))) goto done;
    if (cJSON_IsString(text)) {
        if (bos) err = push_id(b, speck_vocab_bos(v), 0);
        if (!err) err = push_text(b, v, text->valuestring, strlen(text->valuestring), false, 1);
        if (!err) err = push_id(b, speck_vocab_eos(v), 1);
    } else if (cJSON_IsString(pr) && cJSON_IsString(co)) {
        if (bos) err = push_id(b, speck_vocab_bos(v), 0);
        if (!err) err = push_text(b, v, pr->valuestring, strlen(pr->valuestring), false, 0);
        if (!err) err = push_text(b, v, co->valuestring, strlen(co->valuestring), false, 1);
        if (!err) err = push_id(b, speck_vocab_eos(v), 1);
    } else if (cJSON_IsArray(ms)) {
        if (!tmpl)
            err = speck_set_error(SPECK_ERR_ARG,
                                  "%s:%lld: chat data needs a chat template: the model has none "
                                  "speck knows (pass --chat-template NAME)",
                                  path, (long long)line);
        else
            err = chat_example(b, v, tmpl, ms, path, line);
    } else {
        err = speck_set_error(SPECK_ERR_FORMAT,
                              "%s:%lld: expected a string \"text\", strings \"prompt\" and "
                              "\"completion\", or a \"messages\" array",
                              path, (long long)line);
    }
    if (!err) end_example(b);
done:
    cJSON_Delete(j);
    return err;
}

int speck_ft_data_parse(const char *text, size_t len, const char *path, const speck_vocab *v,
                        const char *template_name, speck_ft_data *out) {
    memset(out, 0, sizeof *out);
    builder b = {out, 0, 0};
    const char *tmpl = NULL;
    if (template_name) {
        if (!(tmpl = speck_chat_template_name(template_name)))
            return speck_set_error(SPECK_ERR_ARG, "unknown chat template '%s'", template_name);
    } else {
        tmpl = speck_chat_template_detect(speck_vocab_chat_template(v));
    }
    size_t i = 0;
    while (i < len && isspace((unsigned char)text[i])) i++;
    int err = 0;
    if (i < len && text[i] == '{') { // JSONL
        int64_t line = 1;
        for (size_t p = 0; p < len && !err; line++) {
            const char *nl = memchr(text + p, '\n', len - p);
            size_t e = nl ? (size_t)(nl - text) : len, q = p;
            while (q < e && isspace((unsigned char)text[q])) q++;
            if (q < e) err = json_line(&b, v, tmpl, text + p, e - p, path, line);
            p = e + 1;
        }
    } else if (len) {
        err = begin_example(&b);
        if (!err && speck_vocab_add_bos(v)) err = push_id(&b, speck_vocab_bos(v), 0);
        if (!err) err = push_text(&b, v, text, len, false, 1);
        if (!err) end_example(&b);
    }
    if (!err && out->n_examples == 0)
        err = speck_set_error(SPECK_ERR_FORMAT, "%s: no training text", path);
    if (err) speck_ft_data_free(out);
    return err;
}

int speck_ft_data_load(const char *path, const speck_vocab *v, const char *template_name,
                       speck_ft_data *out) {
    memset(out, 0, sizeof *out);
    FILE *f = fopen(path, "rb");
    if (!f) return speck_set_error(SPECK_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
    size_t cap = 1 << 16, n = 0, got;
    char *buf = malloc(cap);
    while (buf && (got = fread(buf + n, 1, cap - n, f)) > 0) {
        n += got;
        if (n == cap) {
            char *nb = realloc(buf, cap *= 2);
            if (!nb) free(buf);
            buf = nb;
        }
    }
    bool bad = ferror(f);
    fclose(f);
    if (!buf || bad) {
        free(buf);
        return speck_set_error(bad ? SPECK_ERR_IO : SPECK_ERR_NOMEM, "%s: cannot read", path);
    }
    int err = speck_ft_data_parse(buf, n, path, v, template_name, out);
    free(buf);
    return err;
}

void speck_ft_data_free(speck_ft_data *d) {
    free(d->tok);
    free(d->train);
    free(d->start);
    memset(d, 0, sizeof *d);
}
