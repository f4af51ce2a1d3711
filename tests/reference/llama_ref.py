"""Plain-PyTorch reference forward pass for Llama-family models (architectures "llama", "qwen2").

This is the accurate, obviously-correct side of speck's forward-pass tests: no KV cache, no
kernels, no fusion; everything in float64 by default so that the reference's own rounding is
negligible next to speck's float32 arithmetic. It follows llama.cpp's conventions for tensor
names, metadata keys and RoPE layouts, so a model that llama.cpp and speck agree on should
match this too.

The forward is stateless: it takes the whole token list with explicit positions and an (n, n)
boolean attention mask. A KV cache, chunked prefill, truncation and token trees are all just
particular masks/positions, so every speck mode can be checked against this one function.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class HParams:
    arch: str
    n_vocab: int
    n_ctx_train: int
    n_embd: int
    n_layer: int
    n_head: int
    n_head_kv: int
    head_dim: int
    n_ff: int
    norm_eps: float
    rope_base: float
    rope_neox: bool              # True: rotate (x[i], x[i+d/2]); False: rotate (x[2i], x[2i+1])
    rope_inv_freq: np.ndarray    # (head_dim/2,) float64, all scaling already applied
    rope_pos_scale: float        # positions are multiplied by this (linear scaling: 1/factor)


def _get(kv: dict, key: str, default=None, required=True):
    if key in kv:
        return kv[key]
    if default is None and required:
        raise KeyError(f"missing metadata key {key!r}")
    return default


def llama3_inv_freq(inv_freq: np.ndarray, factor: float, low: float, high: float,
                    orig_ctx: float) -> np.ndarray:
    """Llama 3.1 frequency scaling: long wavelengths are slowed down by `factor`, short ones
    kept, and the band in between interpolated smoothly in 1/wavelength."""
    out = np.empty_like(inv_freq)
    low_wavelen = orig_ctx / low     # longer than this: fully scaled
    high_wavelen = orig_ctx / high   # shorter than this: untouched
    for i, f in enumerate(inv_freq):
        wavelen = 2 * math.pi / f
        if wavelen < high_wavelen:
            out[i] = f
        elif wavelen > low_wavelen:
            out[i] = f / factor
        else:
            smooth = (orig_ctx / wavelen - low) / (high - low)
            out[i] = (1 - smooth) * f / factor + smooth * f
    return out


def hparams_from_gguf(kv: dict, tensors: dict) -> HParams:
    arch = kv["general.architecture"]
    if arch not in ("llama", "qwen2"):
        raise ValueError(f"unsupported architecture {arch!r}")
    a = arch + "."
    n_embd = int(_get(kv, a + "embedding_length"))
    n_head = int(_get(kv, a + "attention.head_count"))
    head_dim = int(_get(kv, a + "attention.key_length", n_embd // n_head))
    base = float(_get(kv, a + "rope.freq_base", 10000.0))
    half = head_dim // 2
    inv_freq = base ** (-2.0 * np.arange(half, dtype=np.float64) / head_dim)

    pos_scale = 1.0
    scaling = _get(kv, a + "rope.scaling.type", required=False)
    factor = float(_get(kv, a + "rope.scaling.factor", 1.0, required=False))
    if "rope_freqs.weight" in tensors:
        # How llama.cpp actually ships Llama 3.1 scaling: per-frequency divisors precomputed by
        # the converter. It takes precedence over any scaling keys.
        ff = np.asarray(tensors["rope_freqs.weight"], dtype=np.float64).reshape(-1)
        if ff.size != half:
            raise ValueError(f"rope_freqs.weight has {ff.size} entries, expected {half}")
        inv_freq = inv_freq / ff
    elif scaling == "llama3":
        inv_freq = llama3_inv_freq(
            inv_freq, factor,
            float(_get(kv, a + "rope.scaling.low_freq_factor")),
            float(_get(kv, a + "rope.scaling.high_freq_factor")),
            float(_get(kv, a + "rope.scaling.original_context_length")))
    elif scaling == "linear":
        pos_scale = 1.0 / factor
    elif scaling not in (None, "none"):
        raise ValueError(f"unsupported rope scaling {scaling!r}")

    return HParams(
        arch=arch,
        n_vocab=int(tensors["token_embd.weight"].shape[0]),
        n_ctx_train=int(_get(kv, a + "context_length")),
        n_embd=n_embd,
        n_layer=int(_get(kv, a + "block_count")),
        n_head=n_head,
        n_head_kv=int(_get(kv, a + "attention.head_count_kv", n_head)),
        head_dim=head_dim,
        n_ff=int(_get(kv, a + "feed_forward_length")),
        norm_eps=float(_get(kv, a + "attention.layer_norm_rms_epsilon")),
        rope_base=base,
        # llama.cpp: LLM_ARCH_LLAMA uses LLAMA_ROPE_TYPE_NORM, LLM_ARCH_QWEN2 uses NEOX.
        rope_neox=(arch == "qwen2"),
        rope_inv_freq=inv_freq,
        rope_pos_scale=pos_scale,
    )


class LlamaRef:
    """Weights as float64 torch tensors plus hyper-parameters; call forward()."""

    def __init__(self, kv: dict, tensors: dict, dtype=torch.float64, q8_inputs=()):
        """q8_inputs: weight names (e.g. "blk.0.ffn_up") whose matmul inputs are rounded
        through Q8_0 first, emulating engines that quantize activations on the fly for
        quantized weights (ggml's vec_dot_type). Used only to size test tolerances."""
        self.hp = hparams_from_gguf(kv, tensors)
        self.dtype = dtype
        # Round cached keys and values to f16 (as a speck context with an f16 KV cache stores
        # them); set after construction.
        self.kv_f16 = False
        self.q8_inputs = set(q8_inputs)
        self.w = {k: torch.from_numpy(np.asarray(v)).to(dtype) for k, v in tensors.items()}
        if "output.weight" not in self.w:  # tied output head
            self.w["output.weight"] = self.w["token_embd.weight"]

    @classmethod
    def from_file(cls, path: str, dtype=torch.float64) -> "LlamaRef":
        from gguf_io import read_gguf
        g = read_gguf(path)
        return cls(g.kv, g.tensors, dtype)

    # ---- building blocks --------------------------------------------------------------------

    def rms_norm(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return x / torch.sqrt((x * x).mean(-1, keepdim=True) + self.hp.norm_eps) * w

    def rope(self, x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """x: (n, heads, head_dim); pos: (n,). Rotation by angle pos * inv_freq[i] of pair i."""
        hp = self.hp
        inv = torch.from_numpy(hp.rope_inv_freq).to(self.dtype)
        ang = (pos.to(self.dtype) * hp.rope_pos_scale)[:, None] * inv[None, :]  # (n, d/2)
        cos, sin = torch.cos(ang)[:, None, :], torch.sin(ang)[:, None, :]
        if hp.rope_neox:
            a, b = x[..., : hp.head_dim // 2], x[..., hp.head_dim // 2:]
            return torch.cat([a * cos - b * sin, a * sin + b * cos], dim=-1)
        a, b = x[..., 0::2], x[..., 1::2]
        return torch.stack([a * cos - b * sin, a * sin + b * cos], dim=-1).flatten(-2)

    def linear(self, x: torch.Tensor, name: str) -> torch.Tensor:
        if name in self.q8_inputs:
            x = q8_0_roundtrip(x)
        y = x @ self.w[name + ".weight"].T
        bias = self.w.get(name + ".bias")
        return y + bias if bias is not None else y

    # ---- forward ------------------------------------------------------------------------------

    def forward(self, tokens, positions=None, mask=None) -> torch.Tensor:
        """Logits (n, n_vocab) for every row.

        tokens:    n token ids
        positions: n RoPE positions (default 0..n-1)
        mask:      (n, n) bool, mask[i, j] = row i may attend to row j (default causal)
        """
        hp = self.hp
        tok = torch.as_tensor(np.asarray(tokens, dtype=np.int64))
        n = tok.shape[0]
        pos = torch.arange(n) if positions is None else torch.as_tensor(np.asarray(positions))
        if mask is None:
            mask = torch.ones(n, n, dtype=torch.bool).tril()
        mask = torch.as_tensor(np.asarray(mask, dtype=bool))
        if mask.shape != (n, n):
            raise ValueError(f"mask shape {tuple(mask.shape)} != ({n}, {n})")
        if not bool(mask.any(dim=1).all()):
            raise ValueError("a row of the mask attends to nothing")

        group = hp.n_head // hp.n_head_kv
        x = self.w["token_embd.weight"][tok]  # (n, n_embd)
        for il in range(hp.n_layer):
            p = f"blk.{il}."
            h = self.rms_norm(x, self.w[p + "attn_norm.weight"])
            q = self.linear(h, p + "attn_q").view(n, hp.n_head, hp.head_dim)
            k = self.linear(h, p + "attn_k").view(n, hp.n_head_kv, hp.head_dim)
            v = self.linear(h, p + "attn_v").view(n, hp.n_head_kv, hp.head_dim)
            q, k = self.rope(q, pos), self.rope(k, pos)
            if self.kv_f16:
                k, v = k.half().to(self.dtype), v.half().to(self.dtype)
            # GQA: query head hq reads kv head hq // group (consecutive query heads share one).
            k = k.repeat_interleave(group, dim=1)
            v = v.repeat_interleave(group, dim=1)
            scores = torch.einsum("ihd,jhd->hij", q, k) / math.sqrt(hp.head_dim)
            scores = scores.masked_fill(~mask[None], float("-inf"))
            attn = torch.softmax(scores, dim=-1)
            o = torch.einsum("hij,jhd->ihd", attn, v).reshape(n, hp.n_head * hp.head_dim)
            x = x + self.linear(o, p + "attn_output")

            h = self.rms_norm(x, self.w[p + "ffn_norm.weight"])
            g = self.linear(h, p + "ffn_gate")
            u = self.linear(h, p + "ffn_up")
            x = x + self.linear(torch.nn.functional.silu(g) * u, p + "ffn_down")

        x = self.rms_norm(x, self.w["output_norm.weight"])
        return self.linear(x, "output")


def q8_0_roundtrip(x: torch.Tensor) -> torch.Tensor:
    """x rounded through Q8_0 along its last dimension (blocks of 32, fp16 scale)."""
    b = x.reshape(*x.shape[:-1], -1, 32).to(torch.float32)
    d = b.abs().amax(-1, keepdim=True) / 127
    inv = torch.where(d > 0, 1 / d, torch.zeros_like(d))
    v = b * inv
    q = torch.trunc(v + torch.copysign(torch.full_like(v, 0.5), v))  # C roundf
    y = d.to(torch.float16).to(torch.float32) * q
    return y.reshape(x.shape).to(x.dtype)


# --------------------------------------------------------------------------------------------
# Helpers that turn speck's cache-based modes into (tokens, positions, mask) for forward()
# --------------------------------------------------------------------------------------------

def tree_layout(n_prefix: int, parents: list[int]):
    """Positions and (n, n) mask of a prefix followed by a token tree in one sequence.

    parents[i] is the index (among the tree tokens) of node i's parent, or -1 for a root,
    i.e. a child of the last prefix token. Parents must precede children. A tree node sees the
    whole prefix, its ancestors and itself, at position n_prefix + depth.
    """
    m = len(parents)
    n = n_prefix + m
    mask = np.tril(np.ones((n, n), dtype=bool))
    mask[n_prefix:, n_prefix:] = False
    pos = np.arange(n)
    depth = [0] * m
    for i, par in enumerate(parents):
        if not (-1 <= par < i):
            raise ValueError(f"tree node {i} has invalid parent {par}")
        depth[i] = 0 if par < 0 else depth[par] + 1
        pos[n_prefix + i] = n_prefix + depth[i]
        j = i
        while j >= 0:  # walk up to the root, marking every ancestor visible
            mask[n_prefix + i, n_prefix + j] = True
            j = parents[j]
    return pos, mask


def tree_paths(parents: list[int]) -> list[list[int]]:
    """Root-to-node path (tree indices) for each node."""
    paths = []
    for i in range(len(parents)):
        path, j = [], i
        while j >= 0:
            path.append(j)
            j = parents[j]
        paths.append(path[::-1])
    return paths
