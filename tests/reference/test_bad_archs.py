#!/usr/bin/python3
"""Damaged models of the new architectures: speck must refuse each with a message naming the
file and the key or tensor at fault (exit != 0), through GGUF (forward_dump) and through
`speck convert` of a Hugging Face directory.

Usage (ctest): test_bad_archs.py --speck build/speck --dump build/tests/forward_dump --workdir DIR
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gguf_io as G  # noqa: E402
import hf_reference as H  # noqa: E402
import make_model as M  # noqa: E402

RESULTS = []


def check(ok: bool, what: str) -> None:
    RESULTS.append(ok)
    print(("PASS " if ok else "FAIL ") + what, flush=True)


def gguf(work: str, tag: str, cfg: str, drop=(), kv_over=None, tensors_over=None) -> str:
    """make_model's config with tensors dropped / keys replaced or added."""
    kv, tensors = M.build(M.config(cfg), "f32", 1)
    tensors = [t for t in tensors if t[0] not in drop]
    if tensors_over:
        tensors = [(n, tensors_over.get(n, a), ty) for n, a, ty in tensors]
    if kv_over:
        kv = [(k, t, v) for k, t, v in kv if k not in kv_over]
        kv += [(k, tv[0], tv[1]) for k, tv in kv_over.items()]
    path = os.path.join(work, tag + ".gguf")
    G.write_gguf(path, kv, tensors)
    return path


def dump_fails(a, path: str, want: list[str], what: str, mode="prefill", n=4) -> None:
    out = os.path.join(os.path.dirname(path), "out.f32")
    p = subprocess.run([a.dump, path, mode, out, ",".join(["5"] * n)], capture_output=True,
                       text=True, timeout=120)
    err = p.stderr.strip()
    check(p.returncode != 0 and all(w in err for w in want), f"{what}: rc {p.returncode}, "
          f"'{err[:220]}'")


def test_gguf(a, work: str) -> None:
    dump_fails(a, gguf(work, "no-post-norm", "gemma3", drop=("blk.1.post_ffw_norm.weight",)),
               ["no-post-norm.gguf", "blk.1.post_ffw_norm.weight", "missing"],
               "gemma3 without a post-FFN norm")
    dump_fails(a, gguf(work, "no-k-norm", "qwen3", drop=("blk.0.attn_k_norm.weight",)),
               ["blk.0.attn_k_norm.weight", "missing"], "qwen3 without a k norm")
    dump_fails(a, gguf(work, "window-ctx", "mistral",
                       kv_over={"llama.attention.sliding_window": (G.GGUF_U32, 300)}),
               ["window-ctx.gguf", "'llama.attention.sliding_window' = 300",
                "'llama.context_length' = 256"], "window larger than the context")
    dump_fails(a, gguf(work, "window-float", "gemma2",
                       kv_over={"gemma2.attention.sliding_window": (G.GGUF_F32, 8.5)}),
               ["'gemma2.attention.sliding_window' must be an integer"], "window not an integer")
    pattern = [True, False, False, True]  # layers 1 and 2 global: no period gives that
    dump_fails(a, gguf(work, "pattern", "gemma3", kv_over={
        "gemma3.attention.sliding_window_pattern": ((G.GGUF_ARRAY, G.GGUF_BOOL), pattern)}),
               ["'gemma3.attention.sliding_window_pattern'", "layer 2"],
               "irregular per-layer window pattern")
    kv, tensors = M.build(M.config("phi3"), "f32", 1)
    qkv = dict((n, t) for n, t, _ in tensors)["blk.0.attn_qkv.weight"]
    dump_fails(a, gguf(work, "qkv-shape", "phi3",
                       tensors_over={"blk.0.attn_qkv.weight": qkv[:-16]}),
               ["blk.0.attn_qkv.weight", "shape"], "phi3 fused q/k/v of the wrong shape")
    dump_fails(a, gguf(work, "no-longrope", "phi3", drop=("rope_factors_short.weight",)),
               ["rope_factors_short.weight", "missing"], "LongRoPE without its short factors")
    dump_fails(a, gguf(work, "arch", "gqa",
                       kv_over={"general.architecture": (G.GGUF_STRING, "gpt2")}),
               ["'gpt2' is not supported", "gemma3", "phi3"], "unknown architecture")
    # Mixtures of experts: counts that do not match the tensors, top-k beyond the experts, a
    # missing count, a shared expert's tensor missing, experts stored 2-D.
    dump_fails(a, gguf(work, "moe-count", "qwen3moe",
                       kv_over={"qwen3moe.expert_count": (G.GGUF_U32, 6)}),
               ["moe-count.gguf", "blk.0.ffn_gate_inp.weight", "'qwen3moe.expert_count' = 6"],
               "expert_count not matching the router")
    kv, tensors = M.build(M.config("olmoe"), "f32", 1)
    exps = dict((n, t) for n, t, _ in tensors)["blk.1.ffn_up_exps.weight"]
    dump_fails(a, gguf(work, "moe-exps", "olmoe",
                       tensors_over={"blk.1.ffn_up_exps.weight": exps[:7]}),
               ["blk.1.ffn_up_exps.weight", "'olmoe.expert_count' = 8"],
               "expert tensor with fewer experts than expert_count")
    dump_fails(a, gguf(work, "moe-ff", "qwen3moe",
                       kv_over={"qwen3moe.expert_feed_forward_length": (G.GGUF_U32, 96)}),
               ["blk.0.ffn_gate_exps.weight", "'qwen3moe.expert_feed_forward_length' = 96"],
               "expert FFN width not matching the tensors")
    dump_fails(a, gguf(work, "moe-ff-llama", "mixtral",
                       kv_over={"llama.feed_forward_length": (G.GGUF_U32, 96)}),
               ["blk.0.ffn_gate_exps.weight", "expected [64, 96, 4]"],
               "Mixtral's feed_forward_length not matching its experts")
    dump_fails(a, gguf(work, "moe-topk", "qwen2moe",
                       kv_over={"qwen2moe.expert_used_count": (G.GGUF_U32, 9)}),
               ["'qwen2moe.expert_used_count' = 9", "'qwen2moe.expert_count' = 8"],
               "top-k larger than the expert count")
    dump_fails(a, gguf(work, "moe-topk0", "olmoe",
                       kv_over={"olmoe.expert_used_count": (G.GGUF_U32, 0)}),
               ["'olmoe.expert_used_count' = 0"], "top-k of zero")
    kv, _ = M.build(M.config("qwen3moe"), "f32", 1)
    path = os.path.join(work, "moe-nocount.gguf")
    G.write_gguf(path, [x for x in kv if x[0] != "qwen3moe.expert_count"],
                 M.build(M.config("qwen3moe"), "f32", 1)[1])
    dump_fails(a, path, ["missing required key 'qwen3moe.expert_count'"],
               "MoE architecture without expert_count")
    dump_fails(a, gguf(work, "moe-shexp", "qwen2moe", drop=("blk.1.ffn_down_shexp.weight",)),
               ["blk.1.ffn_down_shexp.weight", "missing"], "shared expert without its down")
    dump_fails(a, gguf(work, "moe-2d", "mixtral",
                       tensors_over={"blk.0.ffn_down_exps.weight": exps[0]}),
               ["blk.0.ffn_down_exps.weight", "shape"], "experts stored as one 2-D matrix")
    # A windowed layer's ring holds window + 64 entries: rolling 600 tokens back to 100 needs
    # entries it no longer has.
    dump_fails(a, gguf(work, "ring", "mistral"), ["truncate to 100", "sliding-window"],
               "truncate past what a ring holds", mode="truncate:100", n=600)


def hf_dir(work: str, tag: str, case: str, over: dict, node: str) -> str:
    cfg = H.case_config(H.CASES[case])
    cfg.update(over)
    for k in [k for k, v in over.items() if v is H.DROP]:
        del cfg[k]
    d = os.path.join(work, "hf-" + tag)
    shutil.rmtree(d, ignore_errors=True)
    H.write_hf_dir(d, cfg, H.hf_weights(cfg, "F32", False, 1), 1, None)
    return d


def convert_fails(a, d: str, want: list[str], what: str) -> None:
    out_dir = os.path.join(os.path.dirname(d), "bad-out")
    shutil.rmtree(out_dir, ignore_errors=True)
    os.makedirs(out_dir)
    p = subprocess.run([a.speck, "convert", d, "-o", os.path.join(out_dir, "o.gguf"), "--quiet"],
                       capture_output=True, text=True, timeout=300)
    err = p.stderr.strip()
    check(p.returncode != 0 and all(w in err for w in want) and not os.listdir(out_dir),
          f"convert: {what}: rc {p.returncode}, '{err[:220]}'")


def test_hf(a, work: str) -> None:
    n = a.node
    convert_fails(a, hf_dir(work, "qwen3-swa", "qwen3", {"use_sliding_window": True}, n),
                  ["config.json", "use_sliding_window"], "Qwen3 with use_sliding_window")
    convert_fails(a, hf_dir(work, "g3-cap", "gemma3", {"attn_logit_softcapping": 50.0}, n),
                  ["config.json", "attn_logit_softcapping"], "Gemma 3 with an attention soft-cap")
    types = ["full_attention", "sliding_attention", "sliding_attention", "full_attention"]
    convert_fails(a, hf_dir(work, "g3-types", "gemma3", {"layer_types": types}, n),
                  ["config.json", "layer_types", "layer 1"], "irregular layer_types")
    convert_fails(a, hf_dir(work, "g2-act", "gemma2", {"hidden_activation": "relu",
                                                        "hidden_act": H.DROP}, n),
                  ["config.json", "hidden_activation", "relu"], "Gemma with another activation")
    convert_fails(a, hf_dir(work, "phi3-rot", "phi3", {"partial_rotary_factor": 0.75}, n),
                  ["config.json", "partial_rotary_factor"], "Phi-3 with partial RoPE")
    rs = dict(H.case_config(H.CASES["phi3"])["rope_scaling"])
    rs["long_factor"] = rs["long_factor"][:-1]
    convert_fails(a, hf_dir(work, "phi3-factors", "phi3", {"rope_scaling": rs}, n),
                  ["config.json", "long_factor", "head_dim / 2"], "LongRoPE factors too short")
    convert_fails(a, hf_dir(work, "moe-topk", "qwen3moe", {"num_experts_per_tok": 9}, n),
                  ["config.json", "num_experts_per_tok 9", "8 experts"],
                  "top-k larger than the experts")
    d = hf_dir(work, "moe-noexp", "olmoe", {}, n)
    cfg = json.load(open(os.path.join(d, "config.json")))
    del cfg["num_experts"]
    json.dump(cfg, open(os.path.join(d, "config.json"), "w"))
    convert_fails(a, d, ["config.json", "num_experts", "missing"], "OLMoE without num_experts")
    convert_fails(a, hf_dir(work, "moe-sparse", "qwen2moe", {"decoder_sparse_step": 2}, n),
                  ["config.json", "decoder_sparse_step"], "dense layers between sparse ones")
    d = hf_dir(work, "g3-norm", "gemma3", {}, n)
    os.remove(os.path.join(d, "model.safetensors"))
    cfg = json.load(open(os.path.join(d, "config.json")))
    w = H.hf_weights(cfg, "F32", False, 1)
    del w["model.layers.2.post_feedforward_layernorm.weight"]
    H.write_tensors(d, w, 1)
    convert_fails(a, d, ["model.layers.2.post_feedforward_layernorm.weight", "missing"],
                  "Gemma 3 without a post-FFN norm")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--speck", required=True)
    ap.add_argument("--dump", required=True)
    ap.add_argument("--workdir", required=True)
    ap.add_argument("--node", default=os.path.join(os.path.dirname(__file__), "..", "node"))
    a = ap.parse_args(argv)
    os.makedirs(a.workdir, exist_ok=True)
    test_gguf(a, a.workdir)
    test_hf(a, a.workdir)
    failed = RESULTS.count(False)
    print(f"{len(RESULTS) - failed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
