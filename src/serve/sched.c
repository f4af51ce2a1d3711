// Continuous batching over a multi-sequence context: requests queue, join the running batch
// between passes, share cached prompt prefixes, and leave when they finish or are cancelled.
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "decode/decode_internal.h"
#include "serve/prefix_cache.h"

typedef struct {
    int64_t id;
    int32_t *tok; // (max_len) prompt, then the generated tokens
    int n_prompt, n_tok, n_gen, max_tokens;
    int fed;       // tokens in the sequence's KV
    int cached;    // of them, taken from the prefix cache at the last admission
    int seq;       // -1 while queued
    int n_reg;     // blocks registered in (or taken from) the prefix cache
    uint64_t hash; // chain hash of block n_reg - 1
    bool cancel, ignore_eos;
    speck_sampler *smp;
    speck_gmatch *gm;      // constrained output, or NULL
    speck_drafter *dr[4];  // accelerated decoding: the request's drafters, NULL-terminated
    int dr_used;           // the one whose chain is in this pass
    speck_draft_tree tree; // this pass's draft chain (n = 0: none)
    speck_sched_cb cb;
    void *user;
} sreq;

struct speck_sched {
    const speck_model *m;
    const speck_vocab *v;
    speck_mctx *mc;
    speck_pcache *pc;       // NULL: no prefix cache
    speck_token_trie *trie; // the vocabulary's, built for the first request with a grammar
    speck_sched_params p;
    speck_spec_params sp; // drafting: kinds, chain length; kinds[0] NONE: off
    int V, bs, max_rows;  // max_rows: output rows of a pass (n_seq, times 1 + max_draft)
    sreq **queue;         // FIFO of waiting requests (preempted ones go to the front)
    int n_queue, cap_queue;
    sreq **run; // (n_seq) running requests, NULL where free; admission order in `order`
    int64_t *order, next_id, clock;
    speck_sched_stats st;
    int32_t *btok, *bseq, *bpos; // (max_batch) the pass's tokens
    int *brow;                   // (max_rows) output rows
    sreq **bout;                 // (max_rows) their requests
    float *logits;               // (max_rows, V)
    float *probs;                // (V) a drafted request's sampling distribution
};

static void req_free(sreq *r) {
    if (!r) return;
    speck_sampler_free(r->smp);
    speck_gmatch_free(r->gm);
    for (int i = 0; i < 4 && r->dr[i]; i++) r->dr[i]->destroy(r->dr[i]);
    free(r->tok);
    free(r);
}

speck_sched *speck_sched_new(const speck_model *m, const speck_vocab *v,
                             const speck_sched_params *pp) {
    speck_sched *s = calloc(1, sizeof *s);
    if (!s) goto oom;
    s->m = m;
    s->v = v;
    s->p = pp ? *pp : (speck_sched_params){0};
    speck_sched_params *p = &s->p;
    const speck_hparams *hp = speck_model_hparams(m);
    if (p->n_seq <= 0) p->n_seq = 4;
    if (p->block_size <= 0) p->block_size = 16;
    if (p->max_len <= 0) p->max_len = hp->n_ctx_train < 4096 ? hp->n_ctx_train : 4096;
    if (p->n_blocks <= 0)
        p->n_blocks = p->n_seq * ((p->max_len + p->block_size - 1) / p->block_size);
    if (p->max_batch <= 0) p->max_batch = 256;
    if (p->prefill_chunk <= 0) p->prefill_chunk = 128;
    s->sp = speck_spec_default();
    if (p->draft && speck_spec_parse_kinds(p->draft, s->sp.kinds) < 0) {
        free(s);
        return NULL;
    }
    for (int i = 0; i < 4 && s->sp.kinds[i] != SPECK_DRAFT_NONE; i++)
        if (s->sp.kinds[i] != SPECK_DRAFT_PROMPT && s->sp.kinds[i] != SPECK_DRAFT_ADED) {
            speck_set_error(SPECK_ERR_UNSUPPORTED,
                            "scheduler: the %s drafter does not run in a batch (prompt, aded do)",
                            speck_draft_kind_name(s->sp.kinds[i]));
            free(s);
            return NULL;
        }
    const bool drafting = s->sp.kinds[0] != SPECK_DRAFT_NONE;
    if (p->max_draft <= 0) p->max_draft = 4;
    if (p->max_draft > SPECK_MAX_NODES) p->max_draft = SPECK_MAX_NODES;
    s->sp.max_draft = s->sp.max_nodes = p->max_draft;
    s->max_rows = p->n_seq * (drafting ? 1 + p->max_draft : 1);
    // Every decode, with its whole draft, fits in a pass: a request's drafts then never depend
    // on what runs beside it, nor (sampling) its random stream.
    if (p->max_batch < s->max_rows) p->max_batch = s->max_rows;
    s->V = hp->n_vocab;
    s->bs = p->block_size;
    if (!(s->mc = speck_mctx_new(m, p->n_blocks, p->block_size, p->n_seq, p->max_len))) {
        free(s);
        return NULL;
    }
    if (!p->no_prefix_cache && !(s->pc = speck_pcache_new(s->mc))) goto oom;
    s->run = calloc((size_t)p->n_seq, sizeof(sreq *));
    s->order = calloc((size_t)p->n_seq, sizeof(int64_t));
    s->btok = malloc((size_t)p->max_batch * sizeof(int32_t));
    s->bseq = malloc((size_t)p->max_batch * sizeof(int32_t));
    s->bpos = malloc((size_t)p->max_batch * sizeof(int32_t));
    s->brow = malloc((size_t)s->max_rows * sizeof(int));
    s->bout = malloc((size_t)s->max_rows * sizeof(sreq *));
    s->logits = malloc((size_t)s->max_rows * s->V * sizeof(float));
    s->probs = malloc((size_t)s->V * sizeof(float));
    if (!s->run || !s->order || !s->btok || !s->bseq || !s->bpos || !s->brow || !s->bout ||
        !s->logits || !s->probs)
        goto oom;
    s->st.blocks_total = p->n_blocks;
    return s;
oom:
    speck_sched_free(s);
    speck_set_error(SPECK_ERR_NOMEM, "out of memory creating the scheduler");
    return NULL;
}

// End r (running or not) with `why`, telling its owner unless it already stopped listening.
static void finish(speck_sched *s, sreq *r, speck_finish why, bool tell) {
    if (tell && r->cb) r->cb(r->user, -1, 0.0f, why);
    if (r->seq >= 0) {
        speck_mctx_seq_free(s->mc, r->seq);
        s->run[r->seq] = NULL;
    }
    s->st.requests++;
    req_free(r);
}

void speck_sched_free(speck_sched *s) {
    if (!s) return;
    for (int i = 0; s->run && i < s->p.n_seq; i++)
        if (s->run[i]) finish(s, s->run[i], SPECK_FINISH_CANCEL, true);
    for (int i = 0; i < s->n_queue; i++) finish(s, s->queue[i], SPECK_FINISH_CANCEL, true);
    speck_pcache_free(s->pc);
    speck_token_trie_free(s->trie);
    speck_mctx_free(s->mc);
    free(s->queue), free(s->run), free(s->order), free(s->btok), free(s->bseq), free(s->bpos);
    free(s->brow), free(s->bout), free(s->logits), free(s->probs);
    free(s);
}

int speck_sched_max_len(const speck_sched *s) {
    return s->p.max_len;
}

static int queue_put(speck_sched *s, sreq *r, bool front) {
    if (s->n_queue == s->cap_queue) {
        int cap = s->cap_queue ? 2 * s->cap_queue : 16;
        sreq **q = realloc(s->queue, (size_t)cap * sizeof *q);
        if (!q) return -1;
        s->queue = q;
        s->cap_queue = cap;
    }
    if (front) {
        memmove(s->queue + 1, s->queue, (size_t)s->n_queue * sizeof *s->queue);
        s->queue[0] = r;
    } else {
        s->queue[s->n_queue] = r;
    }
    s->n_queue++;
    return 0;
}

int64_t speck_sched_submit(speck_sched *s, const speck_request *q) {
    if (!q->prompt || q->n_prompt <= 0)
        return speck_set_error(SPECK_ERR_ARG, "request: empty prompt");
    if (q->max_tokens < 1)
        return speck_set_error(SPECK_ERR_ARG, "request: max_tokens %d < 1", q->max_tokens);
    if (q->n_prompt >= s->p.max_len)
        return speck_set_error(SPECK_ERR_RANGE,
                               "request: the prompt's %d tokens leave no room in the context of "
                               "%d",
                               q->n_prompt, s->p.max_len);
    for (int i = 0; i < q->n_prompt; i++)
        if (q->prompt[i] < 0 || q->prompt[i] >= s->V)
            return speck_set_error(SPECK_ERR_ARG, "request: token id %d out of [0, %d)",
                                   q->prompt[i], s->V);
    if (q->grammar && !s->v)
        return speck_set_error(SPECK_ERR_ARG, "request: a grammar needs the vocabulary");
    if (q->grammar && !s->trie && !(s->trie = speck_token_trie_new(s->v))) return SPECK_ERR_NOMEM;
    speck_gmatch *gm = q->grammar ? speck_gmatch_new(q->grammar, s->trie) : NULL;
    if (q->grammar && !gm) return SPECK_ERR_ARG;
    sreq *r = calloc(1, sizeof *r);
    if (r)
        r->gm = gm;
    else
        speck_gmatch_free(gm);
    bool ok = r && (r->tok = malloc((size_t)s->p.max_len * sizeof(int32_t))) &&
              (r->smp = speck_sampler_new(&q->sample, s->V));
    for (int i = 0; ok && !gm && i < 4 && s->sp.kinds[i] != SPECK_DRAFT_NONE; i++) {
        r->dr[i] = s->sp.kinds[i] == SPECK_DRAFT_PROMPT ? speck_drafter_prompt_new()
                                                        : speck_drafter_aded_new(&s->sp, s->V);
        if ((ok = r->dr[i] != NULL)) r->dr[i]->sampler = r->smp;
    }
    if (!ok || queue_put(s, r, false)) {
        req_free(r);
        return speck_set_error(SPECK_ERR_NOMEM, "out of memory queueing a request");
    }
    memcpy(r->tok, q->prompt, (size_t)q->n_prompt * sizeof(int32_t));
    r->n_prompt = r->n_tok = q->n_prompt;
    r->max_tokens = q->max_tokens;
    r->ignore_eos = q->ignore_eos;
    r->seq = -1;
    r->cb = q->cb;
    r->user = q->user;
    r->id = s->next_id++;
    return r->id;
}

int speck_sched_cancel(speck_sched *s, int64_t id) {
    for (int i = 0; i < s->p.n_seq; i++)
        if (s->run[i] && s->run[i]->id == id) return s->run[i]->cancel = true, 0;
    for (int i = 0; i < s->n_queue; i++)
        if (s->queue[i]->id == id) return s->queue[i]->cancel = true, 0;
    return speck_set_error(SPECK_ERR_ARG, "cancel: no request %lld", (long long)id);
}

int speck_sched_cached_tokens(const speck_sched *s, int64_t id) {
    for (int i = 0; i < s->p.n_seq; i++)
        if (s->run[i] && s->run[i]->id == id) return s->run[i]->cached;
    for (int i = 0; i < s->n_queue; i++)
        if (s->queue[i]->id == id) return s->queue[i]->cached;
    return speck_set_error(SPECK_ERR_ARG, "cached_tokens: no request %lld", (long long)id);
}

// Blocks obtainable now: free ones plus cached ones only the cache holds.
static int blocks_available(const speck_sched *s) {
    return speck_mctx_n_free_blocks(s->mc) + (s->pc ? speck_pcache_evictable(s->pc) : 0);
}

// Make n blocks free (evicting cached ones); false when it cannot.
static bool make_free(speck_sched *s, int n) {
    int lack = n - speck_mctx_n_free_blocks(s->mc);
    if (lack > 0 && s->pc) lack -= speck_pcache_evict(s->pc, lack);
    return lack <= 0;
}

// Start the queue's first request: attach its cached prefix blocks.
static void admit(speck_sched *s) {
    sreq *r = s->queue[0];
    memmove(s->queue, s->queue + 1, (size_t)(--s->n_queue) * sizeof *s->queue);
    r->seq = speck_mctx_seq_new(s->mc);
    s->run[r->seq] = r;
    s->order[r->seq] = s->clock++;
    s->st.prompt_tokens += r->n_tok; // counted again when a preempted request returns
    r->fed = 0;
    r->cached = 0;
    r->n_reg = 0;
    r->hash = 0;
    if (!s->pc) return;
    // Whole blocks of the tokens to feed, leaving at least one to compute (it gives the logits).
    int blocks[4096], n = 0;
    const int lim = (r->n_tok - 1) / s->bs;
    uint64_t h = 0;
    while (n < lim && n < 4096) {
        const int32_t *t = r->tok + (size_t)n * s->bs;
        const int b = speck_pcache_find(s->pc, h, t);
        if (b < 0) break;
        blocks[n++] = b;
        h = speck_pcache_hash(h, t, s->bs);
    }
    if (n && speck_mctx_seq_attach(s->mc, r->seq, blocks, n) == 0) {
        r->fed = r->cached = n * s->bs;
        r->n_reg = n;
        r->hash = h;
        s->st.cached_tokens += r->fed;
    }
}

// Preempt the most recently admitted running request other than `keep`: back to the queue's
// front, its KV dropped (recomputed when it runs again, with the same numbers).
static bool preempt(speck_sched *s, const sreq *keep) {
    int best = -1;
    for (int i = 0; i < s->p.n_seq; i++)
        if (s->run[i] && s->run[i] != keep && (best < 0 || s->order[i] > s->order[best])) best = i;
    if (best < 0) return false;
    sreq *r = s->run[best];
    speck_mctx_seq_free(s->mc, r->seq);
    s->run[best] = NULL;
    r->seq = -1;
    queue_put(s, r, true);
    s->st.preempted++;
    return true;
}

static int blocks_needed(const speck_sched *s, const sreq *r, int add) {
    const int len = speck_mctx_seq_len(s->mc, r->seq);
    return (len + add + s->bs - 1) / s->bs - (len + s->bs - 1) / s->bs;
}

// log sum exp(logits): log p(t) = logits[t] - this.
static double log_norm(const float *lg, int V) {
    float mx = lg[0];
    for (int i = 1; i < V; i++) mx = lg[i] > mx ? lg[i] : mx;
    double sum = 0;
    for (int i = 0; i < V; i++) sum += exp((double)lg[i] - mx);
    return mx + log(sum);
}

// The request's draft chain for this pass (r->tree; its length returned): the first of its
// drafters with a proposal, up to max_draft tokens, fewer where the request's output or context
// ends sooner (the bonus token always comes).
static int draft(speck_sched *s, sreq *r) {
    int budget = s->p.max_draft;
    if (budget > r->max_tokens - r->n_gen - 1) budget = r->max_tokens - r->n_gen - 1;
    if (budget > s->p.max_len - r->n_tok - 1) budget = s->p.max_len - r->n_tok - 1;
    r->tree.n = 0;
    for (int i = 0; i < 4 && r->dr[i]; i++) r->dr[i]->update(r->dr[i], r->tok, r->n_tok);
    for (int i = 0; i < 4 && r->dr[i] && budget > 0; i++) {
        if (r->dr[i]->propose(r->dr[i], r->tok, r->n_tok, budget, budget, &s->sp, &r->tree)) {
            r->tree.n = 0; // a drafter's failure (out of memory) costs only its draft
            continue;
        }
        if (r->tree.n > 0) {
            r->dr_used = i;
            break;
        }
    }
    int k = 0; // a chain: what follows the first branch point is dropped
    while (k < r->tree.n && k < budget && r->tree.parent[k] == k - 1) k++;
    return r->tree.n = k;
}

// A generated token (sampled and accepted by r's sampler) to r's owner; false when it ended r.
static bool emit(speck_sched *s, sreq *r, int32_t t, float logprob) {
    s->st.gen_tokens++;
    if (s->v && !r->ignore_eos && speck_vocab_is_eog(s->v, t)) {
        finish(s, r, SPECK_FINISH_STOP, true);
        return false;
    }
    if (r->gm && speck_gmatch_accept(r->gm, t)) { // the mask allowed it: cannot happen
        finish(s, r, SPECK_FINISH_STOP, true);
        return false;
    }
    r->tok[r->n_tok++] = t;
    r->n_gen++;
    if (r->cb && !r->cb(r->user, t, logprob, SPECK_FINISH_NONE)) {
        finish(s, r, SPECK_FINISH_CANCEL, false);
        return false;
    }
    if (r->gm && speck_gmatch_done(r->gm)) { // the grammar is complete and takes no more
        finish(s, r, SPECK_FINISH_STOP, true);
        return false;
    }
    if (r->n_gen >= r->max_tokens || r->n_tok >= s->p.max_len) {
        finish(s, r, SPECK_FINISH_LENGTH, true);
        return false;
    }
    return true;
}

static double sampler_uniform(void *smp) {
    return speck_sampler_uniform(smp);
}

// A drafted request's rows (lg: (1 + k, V), the last fed token's then each draft token's): walk
// the chain with the lossless acceptance rule (spec.c's), drop the rejected tail from the KV
// cache, then emit the accepted tokens and the bonus token drawn where the walk stopped.
static void verify(speck_sched *s, sreq *r, const float *lg) {
    const int k = r->tree.n;
    int32_t out[SPECK_MAX_NODES + 1];
    float lp[SPECK_MAX_NODES + 1];
    uint8_t acc[SPECK_MAX_NODES] = {0};
    int n_out = 0;
    for (int cur = -1;;) {
        const float *row = lg + (size_t)(cur + 1) * s->V;
        speck_sampler_probs(r->smp, row, s->probs);
        const int next = speck_spec_accept(&r->tree, cur, s->probs, s->V, sampler_uniform, r->smp);
        const int32_t t = next >= 0 ? r->tree.tok[next] : speck_draw(r->smp, s->probs, s->V);
        speck_sampler_accept(r->smp, t);
        lp[n_out] = (float)(row[t] - log_norm(row, s->V));
        out[n_out++] = t;
        if (next < 0) break;
        acc[next] = 1;
        cur = next;
    }
    const int accepted = n_out - 1;
    s->st.drafted += k;
    s->st.draft_accepted += accepted;
    speck_drafter *d = r->dr[r->dr_used];
    if (d->feedback) d->feedback(d, &r->tree, acc);
    r->fed -= k - accepted; // the fed token and the accepted drafts stay
    speck_mctx_seq_truncate(s->mc, r->seq, r->fed);
    r->tree.n = 0;
    for (int i = 0; i < n_out; i++)
        if (!emit(s, r, out[i], lp[i])) return;
}

int speck_sched_step(speck_sched *s) {
    // Cancelled requests leave first.
    for (int i = 0; i < s->p.n_seq; i++)
        if (s->run[i] && s->run[i]->cancel) finish(s, s->run[i], SPECK_FINISH_CANCEL, true);
    for (int i = 0; i < s->n_queue; i++)
        if (s->queue[i]->cancel) {
            sreq *r = s->queue[i];
            memmove(s->queue + i, s->queue + i + 1, (size_t)(s->n_queue - i - 1) * sizeof(sreq *));
            s->n_queue--, i--;
            finish(s, r, SPECK_FINISH_CANCEL, true);
        }
    // Admit in order while a slot is free and the pool can hold the request's next chunk.
    for (int slot = 0; slot < s->p.n_seq && s->n_queue; slot++) {
        if (s->run[slot]) continue;
        const sreq *r = s->queue[0];
        const int chunk = r->n_tok < s->p.prefill_chunk ? r->n_tok : s->p.prefill_chunk;
        if ((chunk + s->bs - 1) / s->bs + 1 > blocks_available(s)) break;
        admit(s);
    }
    // Blocks for every decode first: evict cached blocks, else preempt the newest requests (a
    // lone request the pool cannot hold any longer ends as if at its length limit).
    for (;;) {
        int need = 0, running = 0;
        for (int i = 0; i < s->p.n_seq; i++)
            if (s->run[i]) {
                running++;
                if (s->run[i]->n_tok - s->run[i]->fed == 1) need += blocks_needed(s, s->run[i], 1);
            }
        if (make_free(s, need) || running <= 1 || !preempt(s, NULL)) break;
    }
    // The pass: one token of every decoding request (with its draft chain), then prompt chunks
    // within the budget and the free blocks.
    int n = 0, n_out = 0, held = 0; // held: blocks this pass's chunks take
    for (int phase = 0; phase < 2; phase++)
        for (int i = 0; i < s->p.n_seq; i++) {
            sreq *r = s->run[i];
            if (!r) continue;
            const int pending = r->n_tok - r->fed; // <= 0: fed in phase 0
            if (pending <= 0 || (phase == 0) != (pending == 1)) continue;
            r->tree.n = 0;
            int c = pending < s->p.prefill_chunk ? pending : s->p.prefill_chunk;
            if (c > s->p.max_batch - n) c = s->p.max_batch - n;
            if (c <= 0) continue;
            if (phase == 0 && r->dr[0]) {
                const int k = draft(s, r);
                if (k > 0 && k <= s->p.max_batch - n - c &&
                    make_free(s, held + blocks_needed(s, r, c + k)))
                    c += k;
                else
                    r->tree.n = 0; // no blocks to spare for it
            }
            if (!make_free(s, held + blocks_needed(s, r, c))) {
                const int len = speck_mctx_seq_len(s->mc, r->seq);
                const int room =
                    ((len + s->bs - 1) / s->bs + speck_mctx_n_free_blocks(s->mc) - held) * s->bs -
                    len;
                c = room < c ? room : c;
                if (c <= 0) {
                    if (phase == 0) finish(s, r, SPECK_FINISH_LENGTH, true);
                    continue;
                }
            }
            const int len = speck_mctx_seq_len(s->mc, r->seq);
            held += blocks_needed(s, r, c);
            for (int k = 0; k < c; k++) {
                s->btok[n] = k < pending ? r->tok[r->fed + k] : r->tree.tok[k - pending];
                s->bseq[n] = r->seq;
                s->bpos[n] = len + k;
                n++;
            }
            if (c >= pending) // the last token fed: its row, and each draft token's
                for (int k = pending - 1; k < c; k++)
                    s->brow[n_out] = n - c + k, s->bout[n_out++] = r;
            r->fed += c;
        }
    if (n == 0) return 0;
    int rc = speck_mctx_forward(s->mc, n, s->btok, s->bseq, s->bpos, s->brow, n_out, s->logits);
    if (rc) return rc;
    s->st.passes++;
    for (int o = 0, rows; o < n_out; o += rows) {
        sreq *r = s->bout[o]; // may be freed below: its row count is read first
        rows = 1 + r->tree.n;
        float *lg = s->logits + (size_t)o * s->V;
        if (r->tree.n > 0) {
            verify(s, r, lg);
            continue;
        }
        int32_t t = -1;
        if (r->gm && speck_sampler_is_greedy(r->smp)) { // the model's choice, if allowed, is
            t = speck_sampler_sample(r->smp, lg);       // the masked argmax too
            if (speck_gmatch_check(r->gm, &t, 1) != 1) t = -1;
        }
        const double lnorm = log_norm(lg, s->V); // the model's, before any grammar mask
        if (t < 0 && r->gm && speck_gmatch_mask(r->gm, lg) == 0) { // the vocabulary cannot go on
            finish(s, r, SPECK_FINISH_STOP, true);
            continue;
        }
        if (t < 0) t = speck_sampler_sample(r->smp, lg);
        speck_sampler_accept(r->smp, t);
        emit(s, r, t, (float)(lg[t] - lnorm));
    }
    // Full blocks of running requests go to the prefix cache.
    for (int i = 0; s->pc && i < s->p.n_seq; i++) {
        sreq *r = s->run[i];
        if (!r) continue;
        while ((r->n_reg + 1) * s->bs <= r->fed) {
            const int32_t *t = r->tok + (size_t)r->n_reg * s->bs;
            speck_pcache_insert(s->pc, r->hash, t, speck_mctx_seq_block(s->mc, r->seq, r->n_reg));
            r->hash = speck_pcache_hash(r->hash, t, s->bs);
            r->n_reg++;
        }
    }
    return n;
}

void speck_sched_get_stats(const speck_sched *s, speck_sched_stats *st) {
    *st = s->st;
    st->queued = s->n_queue;
    st->running = 0;
    for (int i = 0; i < s->p.n_seq; i++) st->running += s->run[i] != NULL;
    st->blocks_used = s->p.n_blocks - speck_mctx_n_free_blocks(s->mc);
    st->blocks_cached = s->pc ? speck_pcache_size(s->pc) : 0;
}
