// `speck chat`: interactive multi-turn chat with a model's chat template, streaming replies.
//
// The KV cache is kept across turns. Each turn the whole conversation is re-rendered with the
// template, and only the text past what the cache already holds is tokenized and prefilled.
// What the cache holds is tracked as text (the rendered prompt plus the reply pieces exactly as
// generated), with each cached token's end offset in it; where a template renders an earlier
// turn differently from what was cached (Llama 3 and Gemma trim replies, for instance), the
// cache is cut back to the last token that ends before the first differing byte and the rest is
// prefilled again, so the model always sees exactly the template's rendering from there on.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli.h"

typedef struct {
    char *data;
    size_t len, cap;
} buf;

static void buf_add(buf *b, const char *s, size_t n) {
    if (b->len + n + 1 > b->cap) {
        b->cap = (b->len + n + 1) * 2;
        b->data = realloc(b->data, b->cap);
        if (!b->data) {
            fprintf(stderr, "speck chat: out of memory\n");
            exit(1);
        }
    }
    memcpy(b->data + b->len, s, n);
    b->len += n;
    b->data[b->len] = 0;
}

typedef struct {
    speck_chat_msg *m;
    int n, cap;
} conversation;

static void conv_add(conversation *c, const char *role, const char *content, size_t len) {
    if (c->n == c->cap) {
        c->cap = c->cap ? 2 * c->cap : 16;
        c->m = realloc(c->m, (size_t)c->cap * sizeof *c->m);
        if (!c->m) {
            fprintf(stderr, "speck chat: out of memory\n");
            exit(1);
        }
    }
    char *s = malloc(len + 1);
    if (!s) {
        fprintf(stderr, "speck chat: out of memory\n");
        exit(1);
    }
    memcpy(s, content, len);
    s[len] = 0;
    c->m[c->n++] = (speck_chat_msg){role, s};
}

static void conv_truncate(conversation *c, int n) {
    while (c->n > n) free((char *)c->m[--c->n].content);
}

// What the KV cache holds: text, and for each cached token the end of its text in it.
typedef struct {
    buf text;
    size_t *end;
    int n, cap;
} cache_text;

static void cache_push(cache_text *k, size_t end) {
    if (k->n == k->cap) {
        k->cap = k->cap ? 2 * k->cap : 1024;
        k->end = realloc(k->end, (size_t)k->cap * sizeof *k->end);
        if (!k->end) {
            fprintf(stderr, "speck chat: out of memory\n");
            exit(1);
        }
    }
    k->end[k->n++] = end;
}

static void help(void) {
    printf("usage: speck chat [-m MODEL.gguf] [options]\n\n"
           "Chat with a model: type a message, the reply streams back; the conversation goes on\n"
           "until end of input (Ctrl-D). The prompt format comes from the model's chat template\n"
           "(tokenizer.chat_template), recognised as one of speck's built-in formats; ChatML when\n"
           "the model has none. Commands: /reset clears the conversation, /exit quits.\n"
           "Without -m: $SPECK_MODEL, else models/chat.gguf (the code model tuned to answer\n"
           "requests), else models/default.gguf.\n\n"
           "  --template NAME        prompt format: chatml, llama2, llama3, mistral, gemma, phi3,\n"
           "                         zephyr (default: detected from the model)\n"
           "  --system TEXT          system message\n"
           "  -n, --n-predict N      most tokens per reply (default 512)\n"
           "  --temp T               temperature; 0 = greedy (default 0)\n"
           "  --top-k K, --top-p P, --min-p M   sampling filters (default off)\n"
           "  --repeat-penalty R     penalise the last --repeat-last-n (64) tokens (default 1)\n"
           "  --seed S               sampler seed (default 42)\n"
           "  -c, --ctx N            context size (default: model's, at most 4096)\n"
           "  --kv-type T            KV cache values: f16 (default), f32 (twice the memory),\n"
           "                         q8_0 or q4_0 (0.53x / 0.28x f16's; also -ctk/-ctv T)\n"
           "  --lora FILE[:SCALE]    apply a LoRA adapter unmerged (repeatable; docs/adaptation.md)\n"
           "  -t, --threads N        threads (default: all cores)\n"
           "  --hugepages            read the weights into transparent huge pages\n"
           "  --stats                print timings to stderr after each reply\n");
}

int cmd_chat(int argc, char **argv) {
    const char *path = NULL, *tmpl_arg = NULL, *system_msg = NULL;
    int n_predict = 512, n_ctx = 0;
    bool stats = false;
    speck_sampler_params sp = speck_sampler_default();
    for (int i = 1; i < argc; i++) {
        const char *v;
        if (cli_flag(argv[i], "--help", "-h")) {
            help();
            return 0;
        } else if (cli_opt(argc, argv, &i, "--model", "-m", &v))
            path = v;
        else if (cli_opt(argc, argv, &i, "--template", NULL, &v))
            tmpl_arg = v;
        else if (cli_opt(argc, argv, &i, "--system", NULL, &v))
            system_msg = v;
        else if (cli_opt(argc, argv, &i, "--n-predict", "-n", &v))
            n_predict = (int)cli_int("chat", "-n", v, 1, 1 << 20);
        else if (cli_opt(argc, argv, &i, "--ctx", "-c", &v))
            n_ctx = (int)cli_int("chat", "--ctx", v, 1, 1 << 24);
        else if (cli_sampler_opt("chat", argc, argv, &i, &sp))
            continue;
        else if (cli_flag(argv[i], "--stats", NULL))
            stats = true;
        else {
            fprintf(stderr, "speck chat: unknown option '%s' (speck chat --help)\n", argv[i]);
            return 2;
        }
    }
    const char *tmpl = NULL;
    if (tmpl_arg && !(tmpl = speck_chat_template_name(tmpl_arg))) {
        fprintf(stderr,
                "speck chat: --template: unknown format '%s' (chatml, llama2, llama3, mistral, "
                "gemma, phi3, zephyr)\n",
                tmpl_arg);
        return 2;
    }
    if (!(path = cli_chat_model_path("chat", path))) return 2;
    speck_model *m = cli_load_model(path);
    if (!m) return cli_fail("chat");
    const speck_hparams *hp = speck_model_hparams(m);
    speck_vocab *vocab = speck_vocab_from_gguf(speck_model_gguf(m));
    int rc = 1;
    speck_ctx *ctx = NULL;
    speck_sampler *smp = NULL;
    speck_detok *dt = NULL;
    float *logits = NULL;
    int32_t *toks = NULL;
    char *line = NULL;
    size_t line_cap = 0;
    conversation conv = {0};
    cache_text kv = {0};
    buf full = {0}, reply = {0};
    if (!vocab) {
        fprintf(stderr, "speck chat: %s: no usable tokenizer: %s\n", path, speck_last_error());
        goto done;
    }
    if (!tmpl) {
        const char *model_tmpl = speck_vocab_chat_template(vocab);
        tmpl = speck_chat_template_detect(model_tmpl);
        if (!tmpl) {
            tmpl = "chatml";
            fprintf(stderr, "speck chat: %s: %s; using chatml (--template to choose)\n", path,
                    model_tmpl ? "chat template not recognised" : "no chat template");
        }
    }
    ctx = speck_ctx_new_kv(m, n_ctx, cli_kv_type);
    smp = speck_sampler_new(&sp, hp->n_vocab);
    logits = malloc((size_t)hp->n_vocab * sizeof(float));
    if (!ctx || !smp || !logits) {
        cli_fail("chat");
        goto done;
    }
    int n_sys = 0;
    if (system_msg) {
        conv_add(&conv, "system", system_msg, strlen(system_msg));
        n_sys = 1;
    }
    bool tty = isatty(0);
    if (tty)
        fprintf(stderr, "speck chat: %s, template %s, context %d (/reset, /exit, Ctrl-D)\n", path,
                tmpl, speck_ctx_n_ctx(ctx));
    for (;;) {
        if (tty) {
            fputs("> ", stdout);
            fflush(stdout);
        }
        ssize_t got = getline(&line, &line_cap, stdin);
        if (got < 0) break;
        while (got > 0 && (line[got - 1] == '\n' || line[got - 1] == '\r')) line[--got] = 0;
        if (!got) continue;
        if (!strcmp(line, "/exit") || !strcmp(line, "/quit")) break;
        if (!strcmp(line, "/reset")) {
            conv_truncate(&conv, n_sys);
            speck_ctx_truncate(ctx, 0);
            kv.n = 0;
            kv.text.len = 0;
            speck_sampler_reset(smp);
            fprintf(stderr, "speck chat: conversation cleared\n");
            continue;
        }
        conv_add(&conv, "user", line, (size_t)got);
        // Render the conversation and find where it departs from what the cache holds.
        int64_t need = speck_chat_apply(tmpl, conv.m, conv.n, true, NULL, 0);
        if (need < 0) {
            cli_fail("chat");
            goto done;
        }
        if ((size_t)need + 1 > full.cap) {
            full.cap = (size_t)need + 1;
            full.data = realloc(full.data, full.cap);
            if (!full.data) {
                fprintf(stderr, "speck chat: out of memory\n");
                goto done;
            }
        }
        speck_chat_apply(tmpl, conv.m, conv.n, true, full.data, need + 1);
        full.len = (size_t)need;
        size_t p = 0;
        while (p < kv.text.len && p < full.len && kv.text.data[p] == full.data[p]) p++;
        int keep = 0;
        while (keep < kv.n && kv.end[keep] <= p) keep++;
        // A sliding-window model's cache cannot go back past its rings: then it starts over.
        if (keep > 0 && keep < kv.n && keep < speck_ctx_truncate_floor(ctx)) keep = 0;
        size_t from = keep ? kv.end[keep - 1] : 0;
        const char *rest = full.data + from;
        size_t rest_len = full.len - from;
        // Sized by a counting call: SentencePiece vocabularies can yield more tokens than bytes
        // (a dummy-prefix token per text segment). Slot 0 is kept free for a BOS.
        int64_t n_new = speck_tokenize(vocab, rest, rest_len, false, true, NULL, 0);
        int32_t *grown = n_new >= 0 ? realloc(toks, ((size_t)n_new + 2) * sizeof *toks) : NULL;
        if (!grown) {
            cli_fail("chat");
            goto done;
        }
        toks = grown;
        n_new = speck_tokenize(vocab, rest, rest_len, false, true, toks + 1, n_new + 1);
        // The templates that want a BOS write it; others (ChatML, Phi-3, Zephyr) get one only if
        // the vocabulary asks for it, and never twice.
        int32_t *t = toks + 1;
        int32_t bos = speck_vocab_bos(vocab);
        if (keep == 0 && speck_vocab_add_bos(vocab) && (n_new == 0 || t[0] != bos)) {
            *--t = bos;
            n_new++;
        }
        if (n_new == 0) { // cannot happen with the built-in formats: a turn always adds text
            fprintf(stderr, "speck chat: the template added no text for this message\n");
            conv_truncate(&conv, conv.n - 1);
            continue;
        }
        if (keep + n_new + 1 > speck_ctx_n_ctx(ctx)) {
            fprintf(stderr,
                    "speck chat: context full (%d of %d tokens): message dropped; /reset to "
                    "start over or raise -c\n",
                    keep + (int)n_new, speck_ctx_n_ctx(ctx));
            conv_truncate(&conv, conv.n - 1);
            continue;
        }
        speck_ctx_truncate(ctx, keep);
        kv.n = keep;
        kv.text.len = from;
        buf_add(&kv.text, rest, rest_len);
        double t0 = cli_now();
        int last = (int)n_new - 1;
        if (speck_forward(ctx, (int)n_new, t, NULL, NULL, &last, 1, logits)) {
            cli_fail("chat");
            goto done;
        }
        for (int64_t i = 0; i < n_new; i++) {
            cache_push(&kv, kv.text.len); // text offsets inside the new part are not tracked
            speck_sampler_accept(smp, t[i]);
        }
        double t1 = cli_now();
        // Generate the reply. A fresh detokenizer per reply: its leading-space handling is for
        // the start of a text.
        speck_detok_free(dt);
        if (!(dt = speck_detok_new(vocab))) {
            cli_fail("chat");
            goto done;
        }
        reply.len = 0;
        buf_add(&reply, "", 0);
        int n_gen = 0;
        const char *why = "length";
        while (n_gen < n_predict) {
            int32_t tok = speck_sampler_sample(smp, logits);
            n_gen++;
            speck_sampler_accept(smp, tok);
            if (speck_vocab_is_eog(vocab, tok)) {
                why = "end of generation";
                break;
            }
            const char *s = speck_detok_push(dt, tok);
            if (s && *s) {
                fputs(s, stdout);
                fflush(stdout);
                buf_add(&reply, s, strlen(s));
            }
            if (n_gen == n_predict) break;
            if (speck_ctx_n_past(ctx) >= speck_ctx_n_ctx(ctx)) {
                why = "context full";
                break;
            }
            if (speck_forward(ctx, 1, &tok, NULL, NULL, NULL, 0, logits)) {
                cli_fail("chat");
                goto done;
            }
            char piece[256];
            int pn = speck_token_to_piece(vocab, tok, piece, sizeof piece);
            if (pn > (int)sizeof piece) {
                char *big = malloc((size_t)pn);
                speck_token_to_piece(vocab, tok, big, pn);
                buf_add(&kv.text, big, (size_t)pn);
                free(big);
            } else if (pn > 0) {
                buf_add(&kv.text, piece, (size_t)pn);
            }
            cache_push(&kv, kv.text.len);
        }
        const char *tail = speck_detok_flush(dt);
        if (tail && *tail) {
            fputs(tail, stdout);
            buf_add(&reply, tail, strlen(tail));
        }
        fputs("\n", stdout);
        fflush(stdout);
        conv_add(&conv, "assistant", reply.data, reply.len);
        double t2 = cli_now();
        if (!strcmp(why, "context full"))
            fprintf(stderr, "speck chat: context full; /reset to start over or raise -c\n");
        if (stats)
            fprintf(stderr,
                    "speck: prefill %d tokens in %.3f s; reply %d tokens in %.3f s (%.1f tok/s); "
                    "stopped: %s; context %d/%d\n",
                    (int)n_new, t1 - t0, n_gen, t2 - t1, n_gen / (t2 - t1 > 0 ? t2 - t1 : 1e-9),
                    why, speck_ctx_n_past(ctx), speck_ctx_n_ctx(ctx));
    }
    rc = 0;
done:
    conv_truncate(&conv, 0);
    free(conv.m);
    free(kv.text.data);
    free(kv.end);
    free(full.data);
    free(reply.data);
    free(line);
    free(toks);
    free(logits);
    speck_detok_free(dt);
    speck_sampler_free(smp);
    speck_ctx_free(ctx);
    speck_vocab_free(vocab);
    speck_model_free(m);
    return rc;
}
