// The token trie's layout, read by the matcher (src/grammar/matcher.c).
#ifndef SPECK_TRIE_INTERNAL_H
#define SPECK_TRIE_INTERNAL_H

#include <stdint.h>

#include "speck.h"

// Nodes in preorder: a node's children follow it, and `skip` is the index after its subtree.
typedef struct {
    int32_t skip;
    int32_t tok_lo, tok_hi; // sorted[tok_lo, tok_hi): the tokens whose bytes end here
    uint8_t byte;
} speck_trie_node;

struct speck_token_trie {
    int n_vocab;
    char *bytes;         // every token's piece, back to back
    uint32_t *off, *len; // (n_vocab) its bytes (len 0: never allowed)
    int32_t *sorted;     // (n_sorted) the allowed-by-bytes tokens in byte order
    int n_sorted;
    int32_t *eog; // (n_eog) end-of-generation tokens
    int n_eog;
    speck_trie_node *nodes; // (n_nodes) the roots' children start at 0
    int n_nodes;
};

#endif
