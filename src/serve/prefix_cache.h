// The prefix cache: full KV blocks of computed prompts, keyed by a hash chained over the blocks'
// tokens, kept alive by a reference each and evicted least recently used.
#ifndef SPECK_PREFIX_CACHE_H
#define SPECK_PREFIX_CACHE_H

#include <stdbool.h>
#include <stdint.h>

#include "speck.h"

typedef struct speck_pcache speck_pcache;

speck_pcache *speck_pcache_new(speck_mctx *mc);
void speck_pcache_free(speck_pcache *pc); // drops the cache's references
// The hash of a block of tokens (block_size of them) following a block whose hash is prev
// (0 for the first block).
uint64_t speck_pcache_hash(uint64_t prev, const int32_t *tokens, int n);
// The cached block holding `tokens` after the chain hash prev, or -1.
int speck_pcache_find(speck_pcache *pc, uint64_t prev, const int32_t *tokens);
// Keep block b (full, holding tokens after chain hash prev) in the cache; nothing when an equal
// block is already there.
void speck_pcache_insert(speck_pcache *pc, uint64_t prev, const int32_t *tokens, int b);
// Drop up to n least recently used blocks that only the cache holds; returns how many.
int speck_pcache_evict(speck_pcache *pc, int n);
// Blocks the cache holds, and how many of them only it holds (evictable).
int speck_pcache_size(const speck_pcache *pc);
int speck_pcache_evictable(const speck_pcache *pc);

#endif
