// `speck serve`: an OpenAI-compatible HTTP server (libmicrohttpd) over the continuous-batching
// scheduler. One engine thread runs the scheduler's passes; every connection has its own thread
// (libmicrohttpd's thread-per-connection mode), which submits its request and waits for tokens.
// Only the engine thread touches the scheduler: connections hand it new requests and
// cancellations through lists under one lock, which also guards the requests' output and is
// never held during a forward pass. Request bodies are validated and responses written by
// src/serve/api.c. GET / serves the chat page, tools/web/chat.html, compiled in by CMake.
#include <arpa/inet.h>
#include <errno.h>
#include <math.h>
#include <microhttpd.h>
#include <omp.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

#include "cli.h"
#include "serve/api.h"

// tools/web/chat.html, embedded at build time (cmake/embed_file.cmake; NUL-terminated).
extern const unsigned char speck_web_chat_html[];
extern const size_t speck_web_chat_html_len;

typedef struct {
    speck_sched *s;
    const speck_vocab *v;
    speck_api_cfg cfg;
    pthread_mutex_t lock;
    pthread_cond_t work, out; // work for the engine; output for the connections
    bool quit;
    const char *api_key;
    bool webui; // GET / serves the chat page
    size_t max_body;
    int max_queue;
    double timeout;
    uint64_t seed_counter;
    double t_start;
    // Metrics (under lock).
    long long n_req, n_err, n_gen_req;
    double rate; // generated tokens per second over the last few seconds
    speck_sched_stats st; // the scheduler's, after the last pass
    struct job *pending;  // submitted, not yet handed to the scheduler (a list)
    int n_pending;
    long step_delay_ms; // SPECK_SERVE_STEP_DELAY_MS: a pause after each pass, for tests that must
                        // act (stop, disconnect) while an answer is still running on any machine
    int64_t *cancels; // ids to cancel
    int n_cancel, cap_cancel;
} server;

static server g;

// One generation request, shared by its connection and the scheduler (refs: both hold one).
typedef struct job {
    struct job *next; // in g.pending
    bool cancel;      // cancelled before it reached the scheduler
    speck_api_req req;
    char id[48];
    long long created;
    int64_t sid;
    int fd; // the client's socket (disconnect checks)
    int refs;
    speck_detok *dt;
    char *out; // generated text after stop strings; [0, safe) is final
    size_t len, cap, safe, sent;
    float *lp;
    char **lp_tok;
    int n_lp, cap_lp, lp_sent;
    int n_gen, cached;
    const char *finish; // set when done
    bool done;
    double t0, t_first;
    // Streaming: the event bytes waiting to be written.
    char *sse;
    size_t sse_len, sse_off;
    bool started, ended, timed_out;
} job;

typedef struct { // per connection
    char *body;
    size_t len;
    bool too_big;
    int status;
    double t0;
    int prompt_tokens, completion_tokens;
    const char *finish;
    char method[8], url[64];
    void *stream; // the streamed job (a reference), for the log line
} conn;

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static bool grow_buf(char **p, size_t *cap, size_t need) {
    if (need <= *cap) return true;
    size_t c = *cap ? *cap : 256;
    while (c < need) c *= 2;
    char *q = realloc(*p, c);
    if (!q) return false;
    *p = q;
    *cap = c;
    return true;
}

static void job_release(job *j) { // under lock
    if (--j->refs > 0) return;
    speck_api_req_free(&j->req);
    speck_detok_free(j->dt);
    for (int i = 0; i < j->n_lp; i++) free(j->lp_tok[i]);
    free(j->lp), free(j->lp_tok), free(j->out), free(j->sse);
    free(j);
}

// Append generated text, then cut at a stop string (true: found, the request ends).
static bool job_text(job *j, const char *s, size_t n) {
    if (n && grow_buf(&j->out, &j->cap, j->len + n + 1)) {
        memcpy(j->out + j->len, s, n);
        j->len += n;
    }
    size_t safe;
    long at = speck_api_stop_scan(j->out + j->safe, j->len - j->safe, j->req.stop, j->req.n_stop,
                                  &safe);
    if (at >= 0) {
        j->len = j->safe + (size_t)at;
        j->safe = j->len;
        return true;
    }
    j->safe += safe;
    return false;
}

static void job_end(job *j, const char *finish) {
    j->finish = finish;
    j->done = true;
    j->safe = j->len;
    pthread_cond_broadcast(&g.out);
}

// The scheduler's callback (engine thread, under lock).
static bool on_token_locked(job *j, int32_t tok, float lp, speck_finish fin);
static bool on_token(void *user, int32_t tok, float lp, speck_finish fin) {
    pthread_mutex_lock(&g.lock);
    bool go = on_token_locked(user, tok, lp, fin);
    pthread_mutex_unlock(&g.lock);
    return go;
}

static bool on_token_locked(job *j, int32_t tok, float lp, speck_finish fin) {
    if (fin != SPECK_FINISH_NONE) {
        const char *rest = speck_detok_flush(j->dt);
        if (fin != SPECK_FINISH_CANCEL && rest && job_text(j, rest, strlen(rest)))
            fin = SPECK_FINISH_STOP;
        job_end(j, fin == SPECK_FINISH_LENGTH ? "length"
                   : fin == SPECK_FINISH_STOP ? "stop"
                                              : "cancelled");
        job_release(j);
        return false;
    }
    if (!j->n_gen) {
        j->t_first = now_s();
        const int k = speck_sched_cached_tokens(g.s, j->sid);
        j->cached = k > 0 ? k : 0;
    }
    j->n_gen++;
    if (j->req.logprobs && j->n_lp < j->req.max_tokens) {
        if (j->n_lp == j->cap_lp) {
            j->cap_lp = j->cap_lp ? 2 * j->cap_lp : 64;
            j->lp = realloc(j->lp, (size_t)j->cap_lp * sizeof(float));
            j->lp_tok = realloc(j->lp_tok, (size_t)j->cap_lp * sizeof(char *));
        }
        char piece[256];
        int n = speck_token_to_piece(g.v, tok, piece, sizeof piece - 1);
        piece[n < 0 ? 0 : n > (int)sizeof piece - 1 ? (int)sizeof piece - 1 : n] = 0;
        j->lp[j->n_lp] = lp;
        j->lp_tok[j->n_lp++] = strdup(piece);
    }
    const char *t = speck_detok_push(j->dt, tok);
    if (t && job_text(j, t, strlen(t))) {
        job_end(j, "stop");
        job_release(j);
        return false;
    }
    pthread_cond_broadcast(&g.out);
    return true;
}

// Hand a cancellation to the engine (under lock).
static void cancel_job(job *j) {
    if (j->done) return;
    if (j->sid < 0) {
        j->cancel = true;
    } else {
        if (g.n_cancel == g.cap_cancel) {
            int cap = g.cap_cancel ? 2 * g.cap_cancel : 16;
            int64_t *c = realloc(g.cancels, (size_t)cap * sizeof *c);
            if (!c) return;
            g.cancels = c;
            g.cap_cancel = cap;
        }
        g.cancels[g.n_cancel++] = j->sid;
    }
    pthread_cond_signal(&g.work);
}

// The engine: takes the new requests and cancellations, runs a pass without the lock, repeats.
static void *engine(void *arg) {
    (void)arg;
    omp_set_num_threads(speck_get_threads()); // -t: set on the main thread, not inherited
    double t_prev = now_s();
    long long gen_prev = 0;
    pthread_mutex_lock(&g.lock);
    while (!g.quit) {
        if (!g.st.running && !g.st.queued && !g.pending && !g.n_cancel) {
            g.rate = 0;
            pthread_cond_wait(&g.work, &g.lock);
            t_prev = now_s();
            gen_prev = g.st.gen_tokens;
            continue;
        }
        // New requests, in arrival order (the list is newest first).
        job *rev = NULL;
        while (g.pending) {
            job *j = g.pending;
            g.pending = j->next;
            j->next = rev;
            rev = j;
        }
        g.n_pending = 0;
        for (job *j = rev, *nx; j; j = nx) {
            nx = j->next;
            speck_request q = {.prompt = j->req.prompt, .n_prompt = j->req.n_prompt,
                               .max_tokens = j->req.max_tokens, .sample = j->req.sp,
                               .ignore_eos = j->req.ignore_eos, .grammar = j->req.grammar,
                               .cb = on_token, .user = j};
            if (!j->cancel) j->sid = speck_sched_submit(g.s, &q);
            if (j->cancel || j->sid < 0) { // the scheduler's reference ends here
                if (j->sid < 0 && !j->cancel)
                    fprintf(stderr, "speck serve: %s: %s\n", j->id, speck_last_error());
                job_end(j, j->cancel ? "cancelled" : "error");
                job_release(j);
            }
        }
        for (int i = 0; i < g.n_cancel; i++) speck_sched_cancel(g.s, g.cancels[i]);
        g.n_cancel = 0;
        // /metrics must count the requests just handed over while this pass runs; a snapshot
        // from before the hand-over showed them nowhere (neither pending nor queued).
        speck_sched_get_stats(g.s, &g.st);
        pthread_mutex_unlock(&g.lock);
        int rc = speck_sched_step(g.s); // the callbacks take the lock themselves
        if (rc < 0) fprintf(stderr, "speck serve: pass failed: %s\n", speck_last_error());
        speck_sched_stats st;
        speck_sched_get_stats(g.s, &st);
        if (rc <= 0) { // nothing could run
            struct timespec ts = {0, 2000000};
            nanosleep(&ts, NULL);
        } else if (g.step_delay_ms > 0) { // the tests' slow engine (SPECK_SERVE_STEP_DELAY_MS)
            struct timespec ts = {g.step_delay_ms / 1000, (long)(g.step_delay_ms % 1000) * 1000000L};
            nanosleep(&ts, NULL);
        }
        pthread_mutex_lock(&g.lock);
        g.st = st;
        const double t = now_s();
        if (t - t_prev >= 1.0) {
            g.rate = (double)(st.gen_tokens - gen_prev) / (t - t_prev);
            t_prev = t;
            gen_prev = st.gen_tokens;
        }
    }
    pthread_mutex_unlock(&g.lock);
    return NULL;
}

// Whether the client closed its end (a read that would return end of file).
static bool client_gone(int fd) {
    char c;
    if (fd < 0) return false;
    ssize_t r = recv(fd, &c, 1, MSG_PEEK | MSG_DONTWAIT);
    return r == 0 || (r < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR);
}

// Wait (under lock) up to 100 ms for output; cancel the request when its client is gone or it
// ran past the timeout. Returns false when the client is gone.
static bool job_wait(job *j) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_nsec += 100000000;
    if (ts.tv_nsec >= 1000000000) ts.tv_sec++, ts.tv_nsec -= 1000000000;
    pthread_cond_timedwait(&g.out, &g.lock, &ts);
    if (j->done) return true;
    if (client_gone(j->fd)) {
        cancel_job(j);
        return false;
    }
    if (g.timeout > 0 && now_s() - j->t0 > g.timeout && !j->timed_out) {
        j->timed_out = true;
        cancel_job(j);
    }
    return true;
}

static char *final_json(const job *j, bool chunk, bool usage, const char *text, size_t n,
                        const char *finish, int lp0, int lp1, bool first) {
    speck_api_out o = {.kind = j->req.kind, .id = j->id, .model = g.cfg.model_id,
                       .created = j->created, .text = text, .text_len = n, .finish = finish,
                       .prompt_tokens = j->req.n_prompt, .completion_tokens = j->n_gen,
                       .cached_tokens = j->cached, .chunk = chunk, .usage = usage,
                       .first = first};
    if (j->req.logprobs && lp1 > lp0) {
        o.lp = j->lp + lp0;
        o.lp_tok = (const char *const *)j->lp_tok + lp0;
        o.n_lp = lp1 - lp0;
    }
    return speck_api_response_json(&o);
}

static void sse_raw(job *j, const char *s, size_t n) {
    char *p = realloc(j->sse, j->sse_len + n);
    if (!p) return;
    j->sse = p;
    memcpy(p + j->sse_len, s, n);
    j->sse_len += n;
}

// One server-sent event: "data: JSON" and a blank line.
static void sse_add(job *j, char *json) {
    if (!json) return;
    sse_raw(j, "data: ", 6);
    sse_raw(j, json, strlen(json));
    sse_raw(j, "\n\n", 2);
    free(json);
}

// The stream's next bytes (libmicrohttpd's content reader, the connection's thread).
static ssize_t stream_reader(void *cls, uint64_t pos, char *buf, size_t max) {
    (void)pos;
    job *j = cls;
    pthread_mutex_lock(&g.lock);
    for (;;) {
        if (j->sse_off < j->sse_len) {
            size_t n = j->sse_len - j->sse_off < max ? j->sse_len - j->sse_off : max;
            memcpy(buf, j->sse + j->sse_off, n);
            j->sse_off += n;
            if (j->sse_off == j->sse_len) j->sse_off = j->sse_len = 0;
            pthread_mutex_unlock(&g.lock);
            return (ssize_t)n;
        }
        if (j->ended) {
            pthread_mutex_unlock(&g.lock);
            return MHD_CONTENT_READER_END_OF_STREAM;
        }
        if (!j->started && j->req.kind == SPECK_API_CHAT) { // the role first, as OpenAI does
            sse_add(j, final_json(j, true, false, "", 0, NULL, 0, 0, true));
            j->started = true;
            continue;
        }
        j->started = true;
        if (j->safe > j->sent) {
            sse_add(j, final_json(j, true, false, j->out + j->sent, j->safe - j->sent, NULL,
                                  j->lp_sent, j->n_lp, false));
            j->sent = j->safe;
            j->lp_sent = j->n_lp;
            continue;
        }
        if (j->done) {
            sse_add(j, final_json(j, true, false, NULL, 0, j->finish, j->lp_sent, j->n_lp, false));
            j->lp_sent = j->n_lp;
            if (j->req.include_usage) sse_add(j, final_json(j, true, true, NULL, 0, NULL, 0, 0,
                                                           false));
            sse_raw(j, "data: [DONE]\n\n", 14);
            j->ended = true;
            continue;
        }
        if (!job_wait(j)) {
            pthread_mutex_unlock(&g.lock);
            return MHD_CONTENT_READER_END_WITH_ERROR;
        }
    }
}

static void stream_free(void *cls) {
    job *j = cls;
    pthread_mutex_lock(&g.lock);
    cancel_job(j);
    job_release(j);
    pthread_mutex_unlock(&g.lock);
}

static enum MHD_Result reply(struct MHD_Connection *c, conn *cs, int status, char *body,
                             const char *type) {
    struct MHD_Response *r =
        MHD_create_response_from_buffer(strlen(body), body, MHD_RESPMEM_MUST_FREE);
    MHD_add_response_header(r, "Content-Type", type);
    if (status == 503) MHD_add_response_header(r, "Retry-After", "1");
    if (status == 401) MHD_add_response_header(r, "WWW-Authenticate", "Bearer");
    enum MHD_Result ok = MHD_queue_response(c, (unsigned)status, r);
    MHD_destroy_response(r);
    cs->status = status;
    return ok;
}

static enum MHD_Result reply_error(struct MHD_Connection *c, conn *cs, int status,
                                   const char *msg) {
    return reply(c, cs, status, speck_api_error_json(status, msg), "application/json");
}

// The chat page. It needs no key (it asks the user for one and sends it with its API calls).
// Its policy lets it talk to this server only, and never be framed by another site.
static enum MHD_Result reply_page(struct MHD_Connection *c, conn *cs) {
    struct MHD_Response *r = MHD_create_response_from_buffer(
        speck_web_chat_html_len, (void *)speck_web_chat_html, MHD_RESPMEM_PERSISTENT);
    MHD_add_response_header(r, "Content-Type", "text/html; charset=utf-8");
    MHD_add_response_header(r, "Cache-Control", "no-cache");
    MHD_add_response_header(r, "X-Content-Type-Options", "nosniff");
    MHD_add_response_header(r, "Referrer-Policy", "no-referrer");
    MHD_add_response_header(r, "Content-Security-Policy",
                            "default-src 'none'; script-src 'unsafe-inline'; style-src "
                            "'unsafe-inline'; connect-src 'self'; img-src data:; base-uri "
                            "'none'; form-action 'none'; frame-ancestors 'none'");
    enum MHD_Result ok = MHD_queue_response(c, MHD_HTTP_OK, r);
    MHD_destroy_response(r);
    cs->status = 200;
    return ok;
}

static char *metrics_text(void) {
    const speck_sched_stats st = g.st;
    char *b = malloc(8192);
    if (!b) return NULL;
    const double hit = st.prompt_tokens ? (double)st.cached_tokens / st.prompt_tokens : 0;
    snprintf(b, 8192,
             "# HELP speck_requests_total HTTP requests served.\n# TYPE speck_requests_total "
             "counter\nspeck_requests_total %lld\n"
             "# HELP speck_requests_failed_total Requests answered with a 4xx/5xx status.\n"
             "# TYPE speck_requests_failed_total counter\nspeck_requests_failed_total %lld\n"
             "# HELP speck_generation_requests_total Completion requests finished.\n"
             "# TYPE speck_generation_requests_total counter\n"
             "speck_generation_requests_total %lld\n"
             "# HELP speck_prompt_tokens_total Prompt tokens admitted (cached ones included).\n"
             "# TYPE speck_prompt_tokens_total counter\nspeck_prompt_tokens_total %lld\n"
             "# HELP speck_prompt_tokens_cached_total Prompt tokens taken from the prefix cache.\n"
             "# TYPE speck_prompt_tokens_cached_total counter\n"
             "speck_prompt_tokens_cached_total %lld\n"
             "# HELP speck_prefix_cache_hit_ratio Cached share of the prompt tokens.\n"
             "# TYPE speck_prefix_cache_hit_ratio gauge\nspeck_prefix_cache_hit_ratio %.4f\n"
             "# HELP speck_generated_tokens_total Tokens generated.\n"
             "# TYPE speck_generated_tokens_total counter\nspeck_generated_tokens_total %lld\n"
             "# HELP speck_tokens_per_second Generated tokens per second (last second).\n"
             "# TYPE speck_tokens_per_second gauge\nspeck_tokens_per_second %.2f\n"
             "# HELP speck_forward_passes_total Forward passes run.\n"
             "# TYPE speck_forward_passes_total counter\nspeck_forward_passes_total %lld\n"
             "# HELP speck_draft_tokens_total Draft tokens verified (--draft).\n"
             "# TYPE speck_draft_tokens_total counter\nspeck_draft_tokens_total %lld\n"
             "# HELP speck_draft_tokens_accepted_total Draft tokens accepted.\n"
             "# TYPE speck_draft_tokens_accepted_total counter\n"
             "speck_draft_tokens_accepted_total %lld\n"
             "# HELP speck_preemptions_total Requests preempted for KV blocks.\n"
             "# TYPE speck_preemptions_total counter\nspeck_preemptions_total %lld\n"
             "# HELP speck_queue_length Requests waiting (not yet in the batch).\n# TYPE speck_queue_length gauge\n"
             "speck_queue_length %d\n"
             "# HELP speck_requests_running Requests in the batch.\n"
             "# TYPE speck_requests_running gauge\nspeck_requests_running %d\n"
             "# HELP speck_kv_blocks_used KV blocks in use (cached ones included).\n"
             "# TYPE speck_kv_blocks_used gauge\nspeck_kv_blocks_used %d\n"
             "# HELP speck_kv_blocks_cached KV blocks held by the prefix cache.\n"
             "# TYPE speck_kv_blocks_cached gauge\nspeck_kv_blocks_cached %d\n"
             "# HELP speck_kv_blocks_total KV blocks in the pool.\n"
             "# TYPE speck_kv_blocks_total gauge\nspeck_kv_blocks_total %d\n",
             g.n_req, g.n_err, g.n_gen_req, (long long)st.prompt_tokens,
             (long long)st.cached_tokens, hit, (long long)st.gen_tokens, g.rate,
             (long long)st.passes, (long long)st.drafted, (long long)st.draft_accepted,
             (long long)st.preempted, st.queued + g.n_pending, st.running,
             st.blocks_used, st.blocks_cached, st.blocks_total);
    return b;
}

static enum MHD_Result generate(struct MHD_Connection *c, conn *cs, speck_api_kind kind) {
    char err[512];
    job *j = calloc(1, sizeof *j);
    if (!j) return reply_error(c, cs, 500, "out of memory");
    int status = speck_api_parse(&g.cfg, kind, cs->body ? cs->body : "", cs->len, &j->req, err,
                                 sizeof err);
    if (status != 200) {
        speck_api_req_free(&j->req);
        free(j);
        return reply_error(c, cs, status, err);
    }
    j->dt = speck_detok_new(g.v);
    const union MHD_ConnectionInfo *ci =
        MHD_get_connection_info(c, MHD_CONNECTION_INFO_CONNECTION_FD);
    j->fd = ci ? ci->connect_fd : -1;
    j->created = (long long)time(NULL);
    j->t0 = now_s();
    j->refs = 2;
    cs->prompt_tokens = j->req.n_prompt;
    j->sid = -1;
    pthread_mutex_lock(&g.lock);
    if (g.st.queued + g.n_pending >= g.max_queue) {
        pthread_mutex_unlock(&g.lock);
        speck_api_req_free(&j->req);
        speck_detok_free(j->dt);
        free(j);
        return reply_error(c, cs, 503, "the server is busy: the request queue is full");
    }
    static long long serial;
    snprintf(j->id, sizeof j->id, "%s-%lld-%lld", kind == SPECK_API_CHAT ? "chatcmpl" : "cmpl",
             j->created, ++serial);
    if (!j->req.has_seed) j->req.sp.seed = g.seed_counter++;
    j->next = g.pending;
    g.pending = j;
    g.n_pending++;
    g.n_gen_req++;
    pthread_cond_signal(&g.work);
    if (j->req.stream) {
        pthread_mutex_unlock(&g.lock);
        struct MHD_Response *r =
            MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 16384, stream_reader, j,
                                              stream_free);
        MHD_add_response_header(r, "Content-Type", "text/event-stream");
        MHD_add_response_header(r, "Cache-Control", "no-cache");
        enum MHD_Result ok = MHD_queue_response(c, MHD_HTTP_OK, r);
        MHD_destroy_response(r);
        cs->status = 200;
        pthread_mutex_lock(&g.lock);
        j->refs++;
        cs->stream = j;
        pthread_mutex_unlock(&g.lock);
        return ok;
    }
    bool alive = true;
    while (!j->done && alive) alive = job_wait(j);
    while (!j->done) job_wait(j); // cancelled: its end comes with the next pass
    char *body = final_json(j, false, true, j->out ? j->out : "", j->len, j->finish, 0, j->n_lp,
                            false);
    cs->completion_tokens = j->n_gen;
    cs->finish = j->finish;
    job_release(j);
    pthread_mutex_unlock(&g.lock);
    if (!alive) {
        free(body);
        cs->status = 499; // client closed the connection (nginx's code, for the log)
        return MHD_NO;
    }
    return reply(c, cs, 200, body, "application/json");
}

static enum MHD_Result handle(void *cls, struct MHD_Connection *c, const char *url,
                              const char *method, const char *version, const char *data,
                              size_t *data_size, void **con_cls) {
    (void)cls, (void)version;
    conn *cs = *con_cls;
    if (!cs) { // the first call: headers only
        if (!(cs = calloc(1, sizeof *cs))) return MHD_NO;
        cs->t0 = now_s();
        snprintf(cs->method, sizeof cs->method, "%s", method);
        snprintf(cs->url, sizeof cs->url, "%s", url);
        *con_cls = cs;
        const char *cl = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Content-Length");
        if (cl && strtod(cl, NULL) > (double)g.max_body) cs->too_big = true;
        return MHD_YES;
    }
    if (*data_size) {
        if (!cs->too_big && cs->len + *data_size <= g.max_body) {
            char *b = realloc(cs->body, cs->len + *data_size + 1);
            if (b) {
                memcpy(b + cs->len, data, *data_size);
                cs->body = b;
                cs->len += *data_size;
                b[cs->len] = 0;
            } else {
                cs->too_big = true;
            }
        } else {
            cs->too_big = true;
        }
        *data_size = 0;
        return MHD_YES;
    }
    if (cs->too_big) {
        char msg[128];
        snprintf(msg, sizeof msg, "the request body is larger than %zu bytes", g.max_body);
        return reply_error(c, cs, 413, msg);
    }
    const bool get = !strcmp(method, "GET"), post = !strcmp(method, "POST");
    if (g.webui && (!strcmp(url, "/") || !strcmp(url, "/index.html"))) {
        if (!get && strcmp(method, "HEAD")) return reply_error(c, cs, 405, "use GET");
        return reply_page(c, cs);
    }
    if (!strcmp(url, "/health")) {
        if (!get) return reply_error(c, cs, 405, "use GET");
        return reply(c, cs, 200, strdup("{\"status\":\"ok\"}"), "application/json");
    }
    if (g.api_key) {
        const char *a = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Authorization");
        if (!a || strncmp(a, "Bearer ", 7) || strcmp(a + 7, g.api_key))
            return reply_error(c, cs, 401, "a valid API key is required (Authorization: Bearer)");
    }
    char err[512];
    if (!strcmp(url, "/v1/models") || !strcmp(url, "/models")) {
        if (!get) return reply_error(c, cs, 405, "use GET");
        char *b = malloc(512);
        snprintf(b, 512,
                 "{\"object\":\"list\",\"data\":[{\"id\":\"%s\",\"object\":\"model\",\"created\":"
                 "%lld,\"owned_by\":\"speck\",\"meta\":{\"n_ctx\":%d}}]}",
                 g.cfg.model_id, (long long)time(NULL), g.cfg.max_len);
        return reply(c, cs, 200, b, "application/json");
    }
    if (!strcmp(url, "/metrics")) {
        if (!get) return reply_error(c, cs, 405, "use GET");
        pthread_mutex_lock(&g.lock);
        char *b = metrics_text();
        pthread_mutex_unlock(&g.lock);
        return b ? reply(c, cs, 200, b, "text/plain; version=0.0.4")
                 : reply_error(c, cs, 500, "out of memory");
    }
    const bool tok = !strcmp(url, "/tokenize"), detok = !strcmp(url, "/detokenize");
    if (tok || detok) {
        if (!post) return reply_error(c, cs, 405, "use POST");
        char *out = NULL;
        int st = tok ? speck_api_tokenize(g.v, cs->body ? cs->body : "", cs->len, &out, err,
                                          sizeof err)
                     : speck_api_detokenize(g.v, cs->body ? cs->body : "", cs->len, &out, err,
                                            sizeof err);
        if (st != 200 || !out) return reply_error(c, cs, st != 200 ? st : 500, err);
        return reply(c, cs, 200, out, "application/json");
    }
    const bool chat = !strcmp(url, "/v1/chat/completions") || !strcmp(url, "/chat/completions");
    const bool cmpl = !strcmp(url, "/v1/completions") || !strcmp(url, "/completions");
    if (chat || cmpl) {
        if (!post) return reply_error(c, cs, 405, "use POST");
        return generate(c, cs, chat ? SPECK_API_CHAT : SPECK_API_COMPLETION);
    }
    snprintf(err, sizeof err, "no such endpoint: %s %.64s", method, url);
    return reply_error(c, cs, 404, err);
}

// One log line per request, when its connection is done with it.
static void completed(void *cls, struct MHD_Connection *c, void **con_cls,
                      enum MHD_RequestTerminationCode why) {
    (void)cls, (void)c;
    conn *cs = *con_cls;
    if (!cs) return;
    char ts[32];
    time_t t = time(NULL);
    strftime(ts, sizeof ts, "%Y-%m-%dT%H:%M:%SZ", gmtime(&t));
    const int status = cs->status ? cs->status : why == MHD_REQUEST_TERMINATED_COMPLETED_OK
                                                    ? 0
                                                    : 499;
    pthread_mutex_lock(&g.lock);
    g.n_req++;
    if (status >= 400) g.n_err++;
    job *j = cs->stream;
    if (j) {
        cs->completion_tokens = j->n_gen;
        cs->finish = j->done ? j->finish : "cancelled";
        job_release(j);
    }
    pthread_mutex_unlock(&g.lock);
    fprintf(stderr, "%s %s %s %d %.3fs prompt=%d completion=%d finish=%s%s\n", ts, cs->method,
            cs->url, status, now_s() - cs->t0, cs->prompt_tokens, cs->completion_tokens,
            cs->finish ? cs->finish : "-",
            why == MHD_REQUEST_TERMINATED_COMPLETED_OK ? "" : " (connection closed early)");
    free(cs->body);
    free(cs);
    *con_cls = NULL;
}

static void help(void) {
    printf("usage: speck serve [-m MODEL.gguf] [options]\n\n"
           "An OpenAI-compatible HTTP server with continuous batching: POST /v1/completions,\n"
           "POST /v1/chat/completions (stream or not), GET /v1/models, GET /health,\n"
           "GET /metrics (Prometheus), POST /tokenize, POST /detokenize (docs/serving.md),\n"
           "and a chat page at GET /. Without -m: $SPECK_MODEL, else models/chat.gguf (the code\n"
           "model tuned to answer requests), else models/default.gguf.\n\n"
           "  --host H            address to bind (default 127.0.0.1; any other needs --api-key)\n"
           "  --port N            port (default 8080; 0 picks a free one, printed at start)\n"
           "  --parallel N        requests decoded together (default 4)\n"
           "  -c, --ctx N         positions per request, prompt + output (default: the model's,\n"
           "                      at most 4096)\n"
           "  --kv-blocks N       KV blocks of 16 positions in the pool (default parallel * ctx / 16)\n"
           "  --batch N           tokens per forward pass (default 256)\n"
           "  --chunk N           prompt tokens per request per pass (default 128)\n"
           "  --no-prefix-cache   do not reuse the KV blocks of earlier prompts\n"
           "  --draft LIST        accelerated decoding per request: prompt, aded or prompt,aded\n"
           "                      (lossless; grammar-constrained requests decode without)\n"
           "  --draft-max N       longest draft chain per request and pass (default 4)\n"
           "  --queue N           requests waiting before 503 (default 64)\n"
           "  --max-body BYTES    largest request body (default 1048576; larger: 413)\n"
           "  --timeout S         a request ends after S seconds (default 600; 0: never)\n"
           "  --api-key KEY       require 'Authorization: Bearer KEY' (all but /health and\n"
           "                      the chat page, which asks for the key)\n"
           "  --no-webui          do not serve the chat page at /\n"
           "  --template NAME     chat format (default: detected from the model)\n"
           "  --max-tokens N      default max_tokens (default 512)\n"
           "  -t, --threads N     threads (default: all cores)\n");
}

int cmd_serve(int argc, char **argv) {
    const char *path = NULL, *host = "127.0.0.1", *tmpl_arg = NULL;
    int port = 8080, max_tokens = 512;
    speck_sched_params sp = {.n_seq = 4};
    speck_sampler_params unused = speck_sampler_default();
    g.max_body = 1 << 20;
    g.max_queue = 64;
    g.timeout = 600;
    g.webui = true;
    for (int i = 1; i < argc; i++) {
        const char *v;
        if (cli_flag(argv[i], "--help", "-h")) {
            help();
            return 0;
        } else if (cli_opt(argc, argv, &i, "--model", "-m", &v))
            path = v;
        else if (cli_opt(argc, argv, &i, "--host", NULL, &v))
            host = v;
        else if (cli_opt(argc, argv, &i, "--port", NULL, &v))
            port = (int)cli_int("serve", "--port", v, 0, 65535);
        else if (cli_opt(argc, argv, &i, "--parallel", "-np", &v))
            sp.n_seq = (int)cli_int("serve", "--parallel", v, 1, 1024);
        else if (cli_opt(argc, argv, &i, "--ctx", "-c", &v))
            sp.max_len = (int)cli_int("serve", "--ctx", v, 16, 1 << 20);
        else if (cli_opt(argc, argv, &i, "--kv-blocks", NULL, &v))
            sp.n_blocks = (int)cli_int("serve", "--kv-blocks", v, 1, 1 << 24);
        else if (cli_opt(argc, argv, &i, "--batch", NULL, &v))
            sp.max_batch = (int)cli_int("serve", "--batch", v, 1, 1 << 16);
        else if (cli_opt(argc, argv, &i, "--chunk", NULL, &v))
            sp.prefill_chunk = (int)cli_int("serve", "--chunk", v, 1, 1 << 16);
        else if (cli_flag(argv[i], "--no-prefix-cache", NULL))
            sp.no_prefix_cache = true;
        else if (cli_opt(argc, argv, &i, "--draft", NULL, &v))
            sp.draft = v;
        else if (cli_opt(argc, argv, &i, "--draft-max", NULL, &v))
            sp.max_draft = (int)cli_int("serve", "--draft-max", v, 1, 14);
        else if (cli_flag(argv[i], "--no-webui", NULL))
            g.webui = false;
        else if (cli_opt(argc, argv, &i, "--queue", NULL, &v))
            g.max_queue = (int)cli_int("serve", "--queue", v, 0, 1 << 20);
        else if (cli_opt(argc, argv, &i, "--max-body", NULL, &v))
            g.max_body = (size_t)cli_int("serve", "--max-body", v, 64, 1LL << 32);
        else if (cli_opt(argc, argv, &i, "--timeout", NULL, &v))
            g.timeout = cli_float("serve", "--timeout", v);
        else if (cli_opt(argc, argv, &i, "--api-key", NULL, &v))
            g.api_key = v;
        else if (cli_opt(argc, argv, &i, "--template", NULL, &v))
            tmpl_arg = v;
        else if (cli_opt(argc, argv, &i, "--max-tokens", NULL, &v))
            max_tokens = (int)cli_int("serve", "--max-tokens", v, 1, 1 << 24);
        else if (cli_sampler_opt("serve", argc, argv, &i, &unused))
            continue;
        else {
            fprintf(stderr, "speck serve: unknown option '%s' (speck serve --help)\n", argv[i]);
            return 2;
        }
    }
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    if (inet_pton(AF_INET, host, &addr.sin_addr) != 1) {
        fprintf(stderr, "speck serve: --host: '%s' is not an IPv4 address\n", host);
        return 2;
    }
    if (strncmp(host, "127.", 4) && !g.api_key) {
        fprintf(stderr, "speck serve: binding %s (not loopback) needs --api-key\n", host);
        return 2;
    }
    if (g.api_key && !*g.api_key) {
        fprintf(stderr, "speck serve: --api-key: empty key\n");
        return 2;
    }
    const char *tmpl = NULL;
    if (tmpl_arg && !(tmpl = speck_chat_template_name(tmpl_arg))) {
        fprintf(stderr, "speck serve: --template: unknown format '%s'\n", tmpl_arg);
        return 2;
    }
    if (!(path = cli_chat_model_path("serve", path))) return 2;
    speck_model *m = cli_load_model(path);
    if (!m) return cli_fail("serve");
    speck_vocab *v = speck_vocab_from_gguf(speck_model_gguf(m));
    if (!v) {
        fprintf(stderr, "speck serve: %s: no usable tokenizer: %s\n", path, speck_last_error());
        speck_model_free(m);
        return 1;
    }
    if (!tmpl && !(tmpl = speck_chat_template_detect(speck_vocab_chat_template(v))))
        tmpl = "chatml";
    g.s = speck_sched_new(m, v, &sp);
    if (!g.s) {
        cli_fail("serve");
        speck_vocab_free(v);
        speck_model_free(m);
        return 1;
    }
    const char *base = strrchr(path, '/');
    g.v = v;
    g.cfg = (speck_api_cfg){.vocab = v, .tmpl = tmpl, .model_id = base ? base + 1 : path,
                            .max_len = speck_sched_max_len(g.s),
                            .default_max_tokens = max_tokens};
    g.seed_counter = (uint64_t)time(NULL);
    const char *delay = getenv("SPECK_SERVE_STEP_DELAY_MS");
    g.step_delay_ms = delay ? strtol(delay, NULL, 10) : 0;
    if (g.step_delay_ms < 0 || g.step_delay_ms > 10000) g.step_delay_ms = 0;
    pthread_mutex_init(&g.lock, NULL);
    pthread_cond_init(&g.work, NULL);
    pthread_cond_init(&g.out, NULL);
    sigset_t sigs;
    sigemptyset(&sigs);
    sigaddset(&sigs, SIGINT);
    sigaddset(&sigs, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &sigs, NULL); // every thread inherits it; main waits for them
    signal(SIGPIPE, SIG_IGN);
    pthread_t eng;
    pthread_create(&eng, NULL, engine, NULL);
    struct MHD_Daemon *d = MHD_start_daemon(
        MHD_USE_THREAD_PER_CONNECTION | MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_ERROR_LOG,
        (uint16_t)port, NULL, NULL, handle, NULL, MHD_OPTION_SOCK_ADDR, &addr,
        MHD_OPTION_NOTIFY_COMPLETED, completed, NULL, MHD_OPTION_CONNECTION_LIMIT, 512u,
        MHD_OPTION_CONNECTION_TIMEOUT, 30u, MHD_OPTION_END);
    int rc = 0;
    if (!d) {
        fprintf(stderr, "speck serve: cannot listen on %s:%d: %s\n", host, port, strerror(errno));
        rc = 1;
    } else {
        const union MHD_DaemonInfo *di = MHD_get_daemon_info(d, MHD_DAEMON_INFO_BIND_PORT);
        speck_sched_stats st;
        speck_sched_get_stats(g.s, &st); // the engine waits for work: nothing runs yet
        fprintf(stderr,
                "speck serve: %s on http://%s:%u (model %s, template %s, %d parallel, context "
                "%d, %d KV blocks, %d threads)\n",
                path, host, di ? di->port : (unsigned)port, g.cfg.model_id, tmpl, sp.n_seq,
                g.cfg.max_len, st.blocks_total, speck_get_threads());
        int sig;
        sigwait(&sigs, &sig);
        fprintf(stderr, "speck serve: signal %d, stopping\n", sig);
        MHD_stop_daemon(d);
    }
    pthread_mutex_lock(&g.lock);
    g.quit = true;
    pthread_cond_signal(&g.work);
    pthread_mutex_unlock(&g.lock);
    pthread_join(eng, NULL);
    speck_sched_free(g.s);
    speck_vocab_free(v);
    speck_model_free(m);
    return rc;
}
