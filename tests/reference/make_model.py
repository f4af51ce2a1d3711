#!/usr/bin/python3
"""Write small random-weight GGUF models that exercise one model feature each.

Each Llama config differs from the plain GQA Llama in exactly one respect (attention grouping,
tied output head, Qwen2 biases + NEOX RoPE, a RoPE scaling scheme, a non-default head size,
Mistral's sliding window), so a failing config points at the feature at fault; the other
architectures (qwen3, gemma2, gemma3, phi3) get one config each with everything they add, their
soft-caps and windows small enough that these tiny models feel them. Sizes are tiny so the float64 reference runs in
well under a second, while every row length is a multiple of 32 so that the block-quantized
types (Q8_0, Q4_0) can store every matrix.

Usage: make_model.py --config gqa --type f32 --seed 1 -o out.gguf
"""

from __future__ import annotations

import argparse
import math
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gguf_io as G  # noqa: E402
from llama_ref import llama3_inv_freq  # noqa: E402

BASE = dict(
    arch="llama", n_vocab=300, n_ctx=256, n_embd=64, n_layer=2, n_head=4, n_head_kv=2,
    head_dim=16, n_ff=192, eps=1e-5, rope_base=10000.0, tied=False, qkv_bias=False,
    rope_scaling=None, rope_factor=1.0, rope_freqs_tensor=False,
    explicit_head_dim=False,
    # Architecture features (keys are written only when not None).
    qk_norm=False, post_norms=False, fused=False, window=None, swa_period=None,
    freq_base_swa=None, attn_scale=None, attn_softcap=None, final_softcap=None,
    longrope_orig=None,  # LongRoPE: original context (factor tensors + attn_factor written)
    # Mixture of experts: n_expert > 0 replaces the FFN by a router and stacked experts of
    # n_ff_exp; n_ff_shexp > 0 adds Qwen2-MoE's shared expert; expert_norm writes
    # expert_weights_norm; qk_norm_full: OLMoE's q/k norms over whole rows; experts_only: the
    # weight type applies to the experts only (attention, embeddings and head stay f32).
    n_expert=0, n_expert_used=0, n_ff_exp=64, n_ff_shexp=0, expert_norm=None, qk_norm_full=False,
    experts_only=False,
)

# A window of 8 positions: the 20-token sequences cross it, and the 600-token ones make a
# windowed layer's ring (window + 64 rows) wrap many times.
WINDOW = 8

CONFIGS = {
    "gqa": {},
    "mqa": dict(n_head_kv=1),
    "mha": dict(n_head_kv=4),
    "tied": dict(tied=True),
    "qwen2": dict(arch="qwen2", qkv_bias=True, rope_base=1e6, eps=1e-6),
    # Qwen2's NEOX RoPE without the biases (what speck can train).
    "qwen2nb": dict(arch="qwen2", rope_base=1e6, eps=1e-6),
    # Llama 3.1 scaling described by metadata keys only (frequencies computed by the loader).
    "llama3": dict(rope_scaling="llama3", rope_factor=8.0),
    # The same scaling the way llama.cpp's converter ships it: a rope_freqs.weight tensor of
    # per-frequency divisors and no scaling keys. Must give the same logits as "llama3".
    "llama3f": dict(rope_scaling="llama3", rope_factor=8.0, rope_freqs_tensor=True),
    "linear": dict(rope_scaling="linear", rope_factor=2.0),
    # head_dim given by attention.key_length and != n_embd / n_head (q width 128 != n_embd 64).
    "headdim": dict(head_dim=32, explicit_head_dim=True),
    # Mistral v0.1: every layer windowed (llama.attention.sliding_window).
    "mistral": dict(window=WINDOW),
    # Qwen3: RMSNorm over each q / k head, NEOX, head_dim 32 != n_embd / n_head as in Qwen3.
    "qwen3": dict(arch="qwen3", qk_norm=True, rope_base=1e6, eps=1e-6, head_dim=32,
                  explicit_head_dim=True, tied=True),
    # Gemma 2: post-norms, GeGLU, sqrt(n_embd) embeddings, query_pre_attn_scalar 24 (not the
    # head size), soft-caps that bend these models' scores (~+-2) and logits (~+-3), layer 0
    # windowed and layer 1 global (the default pattern 2).
    "gemma2": dict(arch="gemma2", post_norms=True, tied=True, eps=1e-6, window=WINDOW,
                   attn_scale=24 ** -0.5, attn_softcap=1.5, final_softcap=2.0),
    # Gemma 3: QK-norm too, no attention soft-cap; layers 0, 1, 3 windowed (pattern 3) with
    # their own unscaled RoPE base, layer 2 global with base 1e6 and linear scaling 2.
    "gemma3": dict(arch="gemma3", post_norms=True, qk_norm=True, tied=True, eps=1e-6,
                   n_layer=4, window=WINDOW, swa_period=3, rope_base=1e6, freq_base_swa=1e4,
                   rope_scaling="linear", rope_factor=2.0, final_softcap=2.5),
    # Phi-3: fused attn_qkv and gate/up; LongRoPE factors for an original context of 2048, so
    # speck's 1024-position test context takes the short ones...
    "phi3": dict(arch="phi3", fused=True, n_ctx=4096, longrope_orig=2048),
    # ... and of 64, so it takes the long ones.
    "phi3long": dict(arch="phi3", fused=True, n_ctx=4096, longrope_orig=64),
    # Mixtures of experts (tiny: 4-8 experts of 64, top 2; llama.cpp's llama and olmoe size the
    # experts by feed_forward_length, so those configs set it to the experts' 64): Mixtral (llama with experts, softmax
    # over the top-k), Qwen2-MoE (biases, no renormalisation, a shared expert of 96 behind a
    # sigmoid gate), Qwen3-MoE (per-head q/k norms, renormalised), OLMoE (q/k norms over whole
    # rows, not renormalised), and OLMoE with expert_weights_norm = true in the file.
    "mixtral": dict(n_expert=4, n_expert_used=2, n_ff=64),
    "qwen2moe": dict(arch="qwen2moe", qkv_bias=True, rope_base=1e6, eps=1e-6, n_expert=8,
                     n_expert_used=2, n_ff_shexp=96),
    "qwen3moe": dict(arch="qwen3moe", qk_norm=True, rope_base=1e6, eps=1e-6, head_dim=32,
                     explicit_head_dim=True, n_expert=8, n_expert_used=2),
    "olmoe": dict(arch="olmoe", qk_norm=True, qk_norm_full=True, n_head_kv=4, n_expert=8,
                  n_expert_used=2, n_ff=64),
    "olmoenorm": dict(arch="olmoe", qk_norm=True, qk_norm_full=True, n_head_kv=4, n_expert=8,
                      n_expert_used=3, expert_norm=True, n_ff=64),
    # Quantized experts with f32 attention, embeddings and head (the tests' q4_0 / q4_k runs of
    # this config): the first layer's routing then sees float inputs as in the reference.
    "qexperts": dict(arch="qwen3moe", qk_norm=True, rope_base=1e6, eps=1e-6, n_expert=8,
                     n_expert_used=2, experts_only=True),
}
MOE_CONFIGS = ("mixtral", "qwen2moe", "qwen3moe", "olmoe", "olmoenorm", "qexperts")

# speck's forward_dump context (positions), which decides LongRoPE's factors.
DUMP_CTX = 1024


def longrope_long(c: dict) -> bool:
    """Whether an engine with a DUMP_CTX context uses the long LongRoPE factors (llama.cpp and
    speck switch when the context exceeds the original one)."""
    return bool(c["longrope_orig"]) and DUMP_CTX > c["longrope_orig"]

# Llama 3.1 scaling constants used by the llama3 configs. With head_dim 16 and base 1e4 the
# wavelengths are 6.3, 20, 63, 199, ... so orig_ctx 64 / high 4 = 16 and 64 / low 1 = 64 put
# one frequency in the kept band, two in the interpolated band and five in the scaled band.
LLAMA3_LOW, LLAMA3_HIGH, LLAMA3_ORIG_CTX = 1.0, 4.0, 64

TYPES = ("f32", "f16", "bf16", "q8_0", "q4_0")
# The other block types, and "mix": a llama.cpp-Q4_K_M-like file holding every block type at
# once (see MIX). Types with 256-value super-blocks (and mix) use widened models (WIDE) so that
# every row length is a multiple of 256.
QTYPES = ("q4_1", "q5_0", "q5_1", "iq4_nl", "q2_k", "q3_k", "q4_k", "q5_k", "q6_k", "iq4_xs",
          "dgq4", "mix")
ALL_TYPES = TYPES + QTYPES
WIDE = dict(n_embd=256, n_ff=512)
# mix: Q4_K matrices, a Q6_K head and Q6_K attn_v / ffn_down in layer 0 (as llama.cpp's Q4_K_M
# does in some layers), and one matrix of each other block type.
MIX_DEFAULT = "q4_k"
MIX = {"output.weight": "q6_k", "blk.0.attn_v.weight": "q6_k", "blk.0.ffn_down.weight": "q6_k",
       "blk.0.attn_k.weight": "q5_0", "blk.0.ffn_gate.weight": "iq4_xs",
       "blk.0.attn_output.weight": "q8_0", "blk.1.attn_q.weight": "q3_k",
       "blk.1.attn_k.weight": "q4_1", "blk.1.attn_v.weight": "q5_1",
       "blk.1.attn_output.weight": "iq4_nl", "blk.1.ffn_gate.weight": "q2_k",
       "blk.1.ffn_up.weight": "q5_k", "blk.1.ffn_down.weight": "q4_0"}


def wide(wtype: str) -> bool:
    return wtype == "mix" or (wtype in G.TYPE_FROM_NAME and
                              G._BLOCK[G.TYPE_FROM_NAME[wtype]][0] == 256)


# Configurations run only when named (not in the default set): windowed models with head size
# 32, for KV caches in 32-value blocks (Q8_0 / Q4_0) over sliding-window rings.
EXTRA_CONFIGS = {
    "mistral32": dict(window=WINDOW, head_dim=32, explicit_head_dim=True),
    "gemma2hd32": dict(arch="gemma2", post_norms=True, tied=True, eps=1e-6, window=WINDOW,
                       attn_scale=24 ** -0.5, attn_softcap=1.5, final_softcap=2.0, head_dim=32,
                       explicit_head_dim=True),
}


def config(name: str) -> dict:
    known = {**CONFIGS, **EXTRA_CONFIGS}
    if name not in known:
        raise SystemExit(f"unknown config {name!r}; known: {', '.join(known)}")
    c = dict(BASE)
    c.update(known[name])
    c["name"] = name
    return c


def gpt2_byte_chars() -> list[str]:
    """The GPT-2 byte-level BPE alphabet: printable Latin-1 bytes map to themselves, the other
    bytes to consecutive code points from U+0100, in byte order. Entry b is byte b's token."""
    printable = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
                 + list(range(ord("®"), ord("ÿ") + 1)))
    chars, extra = [], 0
    for b in range(256):
        if b in printable:
            chars.append(chr(b))
        else:
            chars.append(chr(256 + extra))
            extra += 1
    return chars


def tokenizer_kv(n_vocab: int) -> list:
    """A minimal byte-level BPE vocabulary llama.cpp can load: the 256 byte tokens, filler
    tokens, then BOS and EOS as control tokens. No merges: text tokenizes to single bytes."""
    if n_vocab < 258:
        raise ValueError("n_vocab must leave room for 256 byte tokens plus BOS/EOS")
    tokens = gpt2_byte_chars() + [f"tok{i}" for i in range(256, n_vocab - 2)]
    tokens += ["<|bos|>", "<|eos|>"]
    types = [1] * (n_vocab - 2) + [3, 3]  # 1 = normal, 3 = control
    arr = G.GGUF_ARRAY
    return [
        ("tokenizer.ggml.model", G.GGUF_STRING, "gpt2"),
        ("tokenizer.ggml.pre", G.GGUF_STRING, "default"),
        ("tokenizer.ggml.tokens", (arr, G.GGUF_STRING), tokens),
        ("tokenizer.ggml.token_type", (arr, G.GGUF_I32), types),
        ("tokenizer.ggml.merges", (arr, G.GGUF_STRING), []),
        ("tokenizer.ggml.bos_token_id", G.GGUF_U32, n_vocab - 2),
        ("tokenizer.ggml.eos_token_id", G.GGUF_U32, n_vocab - 1),
    ]


def build(c: dict, wtype: str = "f32", seed: int = 1):
    """Return (kv list, tensor list) for write_gguf. Matrices (token_embd included) use wtype;
    norms, biases and rope_freqs are always f32, as real converters store them."""
    if wide(wtype):
        ff_is_exp = c["n_expert"] and c["n_ff"] == c["n_ff_exp"]
        c = dict(c, **WIDE)
        c["head_dim"] *= 4
        if c["n_expert"]:
            c["n_ff_exp"] = 256
            if ff_is_exp:
                c["n_ff"] = 256
            c["n_ff_shexp"] = 256 if c["n_ff_shexp"] else 0
    et = G.TYPE_FROM_NAME[MIX_DEFAULT if wtype == "mix" else wtype]  # the experts' type
    qt = G.F32 if c["experts_only"] else et
    if c["n_expert"] and wtype not in ("f32", "f16", "bf16") and not c["experts_only"]:
        # Quantized attention moves the router's inputs (activation rounding, see
        # test_forward.py), so a near-tied token may route differently from the reference; with
        # one layer that changes only its own row, which the tests can leave out by its routing
        # gap. (Float weights route exactly as the reference: their configs keep their layers.)
        c = dict(c, n_layer=1)
    rng = np.random.default_rng(seed)
    E, F, D = c["n_embd"], c["n_ff"], c["head_dim"]
    Hq, Hkv = c["n_head"] * D, c["n_head_kv"] * D

    def mat(rows, cols, std=0.1):
        return rng.normal(0.0, std, size=(rows, cols)).astype(np.float32)

    def norm(n):
        return (1.0 + 0.1 * rng.standard_normal(n)).astype(np.float32)

    def bias(n):
        return rng.normal(0.0, 0.1, size=n).astype(np.float32)

    tensors = [("token_embd.weight", mat(c["n_vocab"], E), qt)]
    for il in range(c["n_layer"]):
        p = f"blk.{il}."
        tensors.append((p + "attn_norm.weight", norm(E), G.F32))
        if c["fused"]:  # q, k, v rows in one tensor
            tensors.append((p + "attn_qkv.weight", mat(Hq + 2 * Hkv, E), qt))
        else:
            tensors.append((p + "attn_q.weight", mat(Hq, E), qt))
            tensors.append((p + "attn_k.weight", mat(Hkv, E), qt))
            tensors.append((p + "attn_v.weight", mat(Hkv, E), qt))
        if c["qkv_bias"]:
            tensors.append((p + "attn_q.bias", bias(Hq), G.F32))
            tensors.append((p + "attn_k.bias", bias(Hkv), G.F32))
            tensors.append((p + "attn_v.bias", bias(Hkv), G.F32))
        if c["qk_norm"]:
            tensors.append((p + "attn_q_norm.weight", norm(Hq if c["qk_norm_full"] else D), G.F32))
            tensors.append((p + "attn_k_norm.weight", norm(Hkv if c["qk_norm_full"] else D),
                            G.F32))
        tensors.append((p + "attn_output.weight", mat(E, Hq), qt))
        if c["post_norms"]:
            tensors.append((p + "post_attention_norm.weight", norm(E), G.F32))
        tensors.append((p + "ffn_norm.weight", norm(E), G.F32))
        if c["n_expert"]:
            # Router in f32 (llama.cpp's quantizers keep ffn_gate_inp so); its logits spread
            # ~+-3 (std 3.2 / sqrt(n_embd) on unit-RMS inputs) so that the top-k are mostly well
            # apart. Experts: (n_expert, rows, cols).
            X, FX, FS = c["n_expert"], c["n_ff_exp"], c["n_ff_shexp"]
            tensors.append((p + "ffn_gate_inp.weight", mat(X, E, 3.2 / math.sqrt(E)), G.F32))
            tensors.append((p + "ffn_gate_exps.weight", np.stack([mat(FX, E) for _ in range(X)]),
                            et))
            tensors.append((p + "ffn_up_exps.weight", np.stack([mat(FX, E) for _ in range(X)]),
                            et))
            tensors.append((p + "ffn_down_exps.weight", np.stack([mat(E, FX) for _ in range(X)]),
                            et))
            if FS:
                tensors.append((p + "ffn_gate_inp_shexp.weight", bias(E), G.F32))
                tensors.append((p + "ffn_gate_shexp.weight", mat(FS, E), et))
                tensors.append((p + "ffn_up_shexp.weight", mat(FS, E), et))
                tensors.append((p + "ffn_down_shexp.weight", mat(E, FS), et))
        elif c["fused"]:  # gate rows, then up rows
            tensors.append((p + "ffn_up.weight", mat(2 * F, E), qt))
        else:
            tensors.append((p + "ffn_gate.weight", mat(F, E), qt))
            tensors.append((p + "ffn_up.weight", mat(F, E), qt))
        if not c["n_expert"]:
            tensors.append((p + "ffn_down.weight", mat(E, F), qt))
        if c["post_norms"]:
            tensors.append((p + "post_ffw_norm.weight", norm(E), G.F32))
    tensors.append(("output_norm.weight", norm(E), G.F32))
    if not c["tied"]:
        tensors.append(("output.weight", mat(c["n_vocab"], E), qt))

    a = c["arch"] + "."
    kv = [
        ("general.architecture", G.GGUF_STRING, c["arch"]),
        ("general.name", G.GGUF_STRING, f"speck-test-{c['name']}"),
        ("general.alignment", G.GGUF_U32, 32),
        (a + "vocab_size", G.GGUF_U32, c["n_vocab"]),
        (a + "context_length", G.GGUF_U32, c["n_ctx"]),
        (a + "embedding_length", G.GGUF_U32, E),
        (a + "block_count", G.GGUF_U32, c["n_layer"]),
        (a + "feed_forward_length", G.GGUF_U32, F),
        (a + "attention.head_count", G.GGUF_U32, c["n_head"]),
        (a + "attention.head_count_kv", G.GGUF_U32, c["n_head_kv"]),
        (a + "attention.layer_norm_rms_epsilon", G.GGUF_F32, c["eps"]),
        (a + "rope.freq_base", G.GGUF_F32, c["rope_base"]),
        (a + "rope.dimension_count", G.GGUF_U32, D),
    ]
    if c["explicit_head_dim"]:
        kv.append((a + "attention.key_length", G.GGUF_U32, D))
        kv.append((a + "attention.value_length", G.GGUF_U32, D))

    if c["rope_scaling"] == "linear":
        kv.append((a + "rope.scaling.type", G.GGUF_STRING, "linear"))
        kv.append((a + "rope.scaling.factor", G.GGUF_F32, c["rope_factor"]))
    elif c["rope_scaling"] == "llama3" and not c["rope_freqs_tensor"]:
        kv.append((a + "rope.scaling.type", G.GGUF_STRING, "llama3"))
        kv.append((a + "rope.scaling.factor", G.GGUF_F32, c["rope_factor"]))
        kv.append((a + "rope.scaling.low_freq_factor", G.GGUF_F32, LLAMA3_LOW))
        kv.append((a + "rope.scaling.high_freq_factor", G.GGUF_F32, LLAMA3_HIGH))
        kv.append((a + "rope.scaling.original_context_length", G.GGUF_U32, LLAMA3_ORIG_CTX))
    elif c["rope_scaling"] == "llama3":
        inv = c["rope_base"] ** (-2.0 * np.arange(D // 2) / D)
        scaled = llama3_inv_freq(inv, c["rope_factor"], LLAMA3_LOW, LLAMA3_HIGH, LLAMA3_ORIG_CTX)
        tensors.append(("rope_freqs.weight", (inv / scaled).astype(np.float32), G.F32))

    optional = [("attention.sliding_window", G.GGUF_U32, c["window"]),
                ("attention.sliding_window_pattern", G.GGUF_U32, c["swa_period"]),
                ("rope.freq_base_swa", G.GGUF_F32, c["freq_base_swa"]),
                ("attention.scale", G.GGUF_F32, c["attn_scale"]),
                ("attn_logit_softcapping", G.GGUF_F32, c["attn_softcap"]),
                ("final_logit_softcapping", G.GGUF_F32, c["final_softcap"])]
    kv += [(a + k, t, v) for k, t, v in optional if v is not None]
    if c["n_expert"]:
        kv += [(a + "expert_count", G.GGUF_U32, c["n_expert"]),
               (a + "expert_used_count", G.GGUF_U32, c["n_expert_used"]),
               ]
        if c["arch"] in ("qwen2moe", "qwen3moe"):  # llama, olmoe: feed_forward_length
            kv.append((a + "expert_feed_forward_length", G.GGUF_U32, c["n_ff_exp"]))
        if c["n_ff_shexp"]:
            kv.append((a + "expert_shared_feed_forward_length", G.GGUF_U32, c["n_ff_shexp"]))
        if c["expert_norm"] is not None:
            kv.append((a + "expert_weights_norm", G.GGUF_BOOL, c["expert_norm"]))
    if c["longrope_orig"]:
        # Phi-3's LongRoPE as llama.cpp's converter writes it: per-pair divisors for short and
        # long contexts, the original context, and the attention factor of the paper,
        # sqrt(1 + ln(s) / ln(orig)) with s = context / original context.
        orig = c["longrope_orig"]
        tensors.append(("rope_factors_short.weight",
                        rng.uniform(1.0, 3.0, D // 2).astype(np.float32), G.F32))
        tensors.append(("rope_factors_long.weight",
                        rng.uniform(1.0, 20.0, D // 2).astype(np.float32), G.F32))
        kv.append((a + "rope.scaling.original_context_length", G.GGUF_U32, orig))
        scale = c["n_ctx"] / orig
        kv.append((a + "rope.scaling.attn_factor", G.GGUF_F32,
                   math.sqrt(1 + math.log(scale) / math.log(orig))))

    kv += tokenizer_kv(c["n_vocab"])
    if wtype == "mix":
        tensors = [(n, a, G.TYPE_FROM_NAME[MIX[n]] if n in MIX else t) for n, a, t in tensors]
    return kv, tensors


def make_model(config_name: str, path: str, wtype: str = "f32", seed: int = 1) -> str:
    kv, tensors = build(config(config_name), wtype, seed)
    G.write_gguf(path, kv, tensors)
    return path


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="gqa", choices=sorted({**CONFIGS, **EXTRA_CONFIGS}))
    ap.add_argument("--type", default="f32", choices=ALL_TYPES)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("-o", "--output", required=True)
    args = ap.parse_args(argv)
    make_model(args.config, args.output, args.type, args.seed)
    print(args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
