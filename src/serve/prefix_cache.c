// The prefix cache: full KV blocks of computed prompts, keyed by a hash chained over the blocks'
// tokens, kept alive by a reference each and evicted least recently used.
#include <stdlib.h>
#include <string.h>

#include "serve/prefix_cache.h"

struct speck_pcache {
    speck_mctx *mc;
    int bs, nb, nbuckets, size;
    int *bucket;        // (nbuckets) first block of the chain, or -1
    int *next;          // (nb) next block in its bucket
    bool *in;           // (nb) whether the block is in the cache
    uint64_t *prev;     // (nb) chain hash of the block before
    uint64_t *hash;     // (nb) chain hash of the block
    int32_t *tok;       // (nb, bs) the block's tokens (a hash match is checked against them)
    uint64_t *used, tick;
};

uint64_t speck_pcache_hash(uint64_t prev, const int32_t *tokens, int n) {
    uint64_t h = prev ^ 0x9e3779b97f4a7c15ull; // FNV-1a over the token bytes, seeded by prev
    for (int i = 0; i < n; i++) {
        uint32_t t = (uint32_t)tokens[i];
        for (int k = 0; k < 4; k++) h = (h ^ ((t >> (8 * k)) & 0xff)) * 0x100000001b3ull;
    }
    return h ? h : 1;
}

speck_pcache *speck_pcache_new(speck_mctx *mc) {
    speck_pcache *pc = calloc(1, sizeof *pc);
    if (!pc) return NULL;
    pc->mc = mc;
    pc->bs = speck_mctx_block_size(mc);
    pc->nb = speck_mctx_n_blocks(mc);
    pc->nbuckets = 2 * pc->nb + 1;
    pc->bucket = malloc((size_t)pc->nbuckets * sizeof(int));
    pc->next = malloc((size_t)pc->nb * sizeof(int));
    pc->in = calloc((size_t)pc->nb, sizeof(bool));
    pc->prev = calloc((size_t)pc->nb, sizeof(uint64_t));
    pc->hash = calloc((size_t)pc->nb, sizeof(uint64_t));
    pc->used = calloc((size_t)pc->nb, sizeof(uint64_t));
    pc->tok = malloc((size_t)pc->nb * pc->bs * sizeof(int32_t));
    if (!pc->bucket || !pc->next || !pc->in || !pc->prev || !pc->hash || !pc->used || !pc->tok) {
        speck_pcache_free(pc);
        return NULL;
    }
    for (int i = 0; i < pc->nbuckets; i++) pc->bucket[i] = -1;
    return pc;
}

void speck_pcache_free(speck_pcache *pc) {
    if (!pc) return;
    for (int b = 0; pc->in && b < pc->nb; b++)
        if (pc->in[b]) speck_mctx_block_unref(pc->mc, b);
    free(pc->bucket), free(pc->next), free(pc->in), free(pc->prev), free(pc->hash);
    free(pc->used), free(pc->tok);
    free(pc);
}

int speck_pcache_find(speck_pcache *pc, uint64_t prev, const int32_t *tokens) {
    const uint64_t h = speck_pcache_hash(prev, tokens, pc->bs);
    for (int b = pc->bucket[h % (uint64_t)pc->nbuckets]; b >= 0; b = pc->next[b])
        if (pc->hash[b] == h && pc->prev[b] == prev &&
            !memcmp(pc->tok + (size_t)b * pc->bs, tokens, (size_t)pc->bs * sizeof(int32_t))) {
            pc->used[b] = ++pc->tick;
            return b;
        }
    return -1;
}

void speck_pcache_insert(speck_pcache *pc, uint64_t prev, const int32_t *tokens, int b) {
    if (b < 0 || b >= pc->nb || pc->in[b] || speck_pcache_find(pc, prev, tokens) >= 0) return;
    const uint64_t h = speck_pcache_hash(prev, tokens, pc->bs);
    const size_t k = h % (uint64_t)pc->nbuckets;
    pc->in[b] = true;
    pc->prev[b] = prev;
    pc->hash[b] = h;
    memcpy(pc->tok + (size_t)b * pc->bs, tokens, (size_t)pc->bs * sizeof(int32_t));
    pc->next[b] = pc->bucket[k];
    pc->bucket[k] = b;
    pc->used[b] = ++pc->tick;
    pc->size++;
    speck_mctx_block_ref(pc->mc, b);
}

static void unlink_block(speck_pcache *pc, int b) {
    int *at = &pc->bucket[pc->hash[b] % (uint64_t)pc->nbuckets];
    while (*at != b) at = &pc->next[*at];
    *at = pc->next[b];
    pc->in[b] = false;
    pc->size--;
    speck_mctx_block_unref(pc->mc, b);
}

int speck_pcache_evict(speck_pcache *pc, int n) {
    int done = 0;
    while (done < n) {
        int best = -1;
        for (int b = 0; b < pc->nb; b++)
            if (pc->in[b] && speck_mctx_block_refs(pc->mc, b) == 1 &&
                (best < 0 || pc->used[b] < pc->used[best]))
                best = b;
        if (best < 0) break;
        unlink_block(pc, best);
        done++;
    }
    return done;
}

int speck_pcache_size(const speck_pcache *pc) {
    return pc->size;
}

int speck_pcache_evictable(const speck_pcache *pc) {
    int n = 0;
    for (int b = 0; b < pc->nb; b++) n += pc->in[b] && speck_mctx_block_refs(pc->mc, b) == 1;
    return n;
}
