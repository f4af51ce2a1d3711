#!/usr/bin/python3
"""Bigram / trigram baseline perplexity on the validation split of a speck token cache.

The cache is what `speck train` writes (OUT.tokens): "SPKTOK01", u64 key, u64 n_train,
u64 n_val, u32 files_train, u32 files_val, int32 train[n_train], int32 val[n_val].

Models (counts from the training split only), interpolated absolute discounting (d = 0.75,
Kneser-Ney style back-off weights):
  unigram  P1(w)     = (c(w) + 1) / (N + V)
  bigram   P2(w|v)   = max(c(v,w) - d, 0) / c(v) + d * n(v,.) / c(v) * P1(w)      (P1 if c(v) = 0)
  trigram  P3(w|u,v) = max(c(u,v,w) - d, 0) / c(u,v) + d * n(u,v,.) / c(u,v) * P2(w|v)
n(x,.) is the number of distinct successors of context x. A trained model that does not beat
these on the same tokens has learned nothing a count table would not.

usage: ngram_baseline.py CACHE.tokens VOCAB_SIZE [FIRST_N]
FIRST_N: score only the first N validation tokens (e.g. the windows of speck train's val loss).
"""
import struct
import sys

import numpy as np

D = 0.75


def read_cache(path):
    with open(path, "rb") as f:
        head = f.read(40)
        if head[:8] != b"SPKTOK01":
            raise SystemExit(f"{path}: not a speck token cache")
        _, nt, nv, _, _ = struct.unpack("<QQQII", head[8:])
        train = np.fromfile(f, dtype="<i4", count=nt).astype(np.int64)
        val = np.fromfile(f, dtype="<i4", count=nv).astype(np.int64)
    return train, val


def counts(keys):
    u, c = np.unique(keys, return_counts=True)
    return u, c


def lookup(u, c, q):
    i = np.searchsorted(u, q)
    i = np.minimum(i, len(u) - 1)
    return np.where(u[i] == q, c[i], 0)


def main():
    path, V = sys.argv[1], int(sys.argv[2])
    train, val = read_cache(path)
    if len(sys.argv) > 3:
        val = val[: int(sys.argv[3])]
    N = len(train)
    c1 = np.bincount(train, minlength=V).astype(np.float64)
    p1 = (c1 + 1) / (N + V)
    big = train[:-1] * V + train[1:]
    bu, bc = counts(big)
    ctx1 = np.bincount(train[:-1], minlength=V).astype(np.float64)   # c(v) as a context
    succ1 = np.bincount(bu // V, minlength=V).astype(np.float64)     # n(v,.)
    tri = (train[:-2] * V + train[1:-1]) * V + train[2:]
    tu, tc = counts(tri)
    cu, cc = counts(train[:-2] * V + train[1:-1])                    # c(u,v) as a context
    su, sc = counts(tu // V)                                         # n(u,v,.)

    # bigram over all val positions 1..n-1, trigram over 2..n-1 (position 1 uses the bigram)
    def p_bigram(prev, nxt):
        cv = ctx1[prev]
        cvw = lookup(bu, bc, prev * V + nxt).astype(np.float64)
        safe = np.maximum(cv, 1)
        p = np.maximum(cvw - D, 0) / safe + D * succ1[prev] / safe * p1[nxt]
        return np.where(cv > 0, p, p1[nxt])

    pb = p_bigram(val[:-1], val[1:])
    nll_bi = -np.log(pb).mean()
    u, v, w = val[:-2], val[1:-1], val[2:]
    p2 = p_bigram(v, w)
    cuv = lookup(cu, cc, u * V + v).astype(np.float64)
    cuvw = lookup(tu, tc, (u * V + v) * V + w).astype(np.float64)
    nuv = lookup(su, sc, u * V + v).astype(np.float64)
    safe = np.maximum(cuv, 1)
    p3 = np.where(cuv > 0, np.maximum(cuvw - D, 0) / safe + D * nuv / safe * p2, p2)
    nll_tri = -np.concatenate([np.log(pb[:1]), np.log(p3)]).mean()
    print(f"tokens: train {N}, validation {len(val)}; vocabulary {V}")
    print(f"unigram  validation perplexity {np.exp(-np.log(p1[val[1:]]).mean()):.2f}")
    print(f"bigram   validation perplexity {np.exp(nll_bi):.2f}  ({nll_bi:.4f} nats/token)")
    print(f"trigram  validation perplexity {np.exp(nll_tri):.2f}  ({nll_tri:.4f} nats/token)")


if __name__ == "__main__":
    main()
