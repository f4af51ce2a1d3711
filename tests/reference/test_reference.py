#!/usr/bin/python3
"""Self-checks of the reference itself (no speck code involved).

The reference is only useful if it is right, so it is checked against facts that do not depend
on how it is written: the GGUF bytes decoded by hand, RoPE in an independent (complex-number)
formulation, a loop-per-head numpy forward, and invariances any correct transformer has
(relative positions, prefix causality, tree mask == per-branch runs, GQA == MHA with duplicated
K/V heads, llama3 keys == rope_freqs tensor).

Run: /usr/bin/python3 tests/reference/test_reference.py   (prints one line per check)
"""

from __future__ import annotations

import math
import os
import struct
import sys
import tempfile

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gguf_io as G  # noqa: E402
import llama_ref as L  # noqa: E402
import make_model as M  # noqa: E402

RESULTS = []


def check(name: str, ok: bool, detail: str = "") -> None:
    RESULTS.append(ok)
    print(f"{'PASS' if ok else 'FAIL'} {name} {detail}".rstrip())


def model(cfg: str, wtype: str = "f32", seed: int = 1,
          tmp: str = "") -> tuple[G.GGUFFile, L.LlamaRef]:
    path = os.path.join(tmp, f"{cfg}_{wtype}_{seed}.gguf")
    M.make_model(cfg, path, wtype, seed)
    g = G.read_gguf(path)
    return g, L.LlamaRef(g.kv, g.tensors)


# ---- GGUF ------------------------------------------------------------------------------------

def test_gguf(tmp: str) -> None:
    # Round trip of every metadata type plus odd-sized tensors (forcing alignment padding).
    kv = [
        ("u8", G.GGUF_U8, 200), ("i8", G.GGUF_I8, -5), ("u16", G.GGUF_U16, 60000),
        ("i16", G.GGUF_I16, -30000), ("u32", G.GGUF_U32, 4000000000), ("i32", G.GGUF_I32, -7),
        ("f32", G.GGUF_F32, 0.5), ("b", G.GGUF_BOOL, True), ("s", G.GGUF_STRING, "héllo"),
        ("u64", G.GGUF_U64, 2**63 + 1), ("i64", G.GGUF_I64, -2**40), ("f64", G.GGUF_F64, 0.1),
        ("as", (G.GGUF_ARRAY, G.GGUF_STRING), ["a", "", "ü"]),
        ("ai", (G.GGUF_ARRAY, G.GGUF_I32), [1, -2, 3]),
        ("ae", (G.GGUF_ARRAY, G.GGUF_F32), []),
    ]
    rng = np.random.default_rng(0)
    a = rng.standard_normal((3, 5)).astype(np.float32)
    b = rng.standard_normal(7).astype(np.float32)
    path = os.path.join(tmp, "kv.gguf")
    G.write_gguf(path, kv, [("a", a, G.F32), ("b", b, G.F16)])
    g = G.read_gguf(path)
    ok = all(g.kv[k] == v for k, _, v in kv) and g.kv["general.alignment"] == 32
    ok &= g.tensor_ne["a"] == [5, 3] and np.array_equal(g.tensors["a"], a)
    ok &= np.array_equal(g.tensors["b"], b.astype(np.float16).astype(np.float32))
    ok &= g.data_offset % 32 == 0 and os.path.getsize(path) % 32 == 0
    check("gguf kv/tensor round trip", bool(ok))

    # Decode the header by hand with struct (independent of the reader).
    raw = open(path, "rb").read()
    magic, ver, nt, nkv = struct.unpack_from("<4sIQQ", raw, 0)
    klen = struct.unpack_from("<Q", raw, 24)[0]
    key = raw[32:32 + klen]
    vtype, val = struct.unpack_from("<IB", raw, 32 + klen)
    check("gguf header bytes", (magic, ver, nt, nkv, key, vtype, val)
          == (b"GGUF", 3, 2, len(kv) + 1, b"u8", 0, 200))

    # Quantized blocks checked against the format definition, element by element.
    x = rng.standard_normal(64).astype(np.float32)
    x[5] = -4.0  # largest magnitude in block 0 is negative: Q4_0's d must then be positive
    q8 = G.quantize(x, G.Q8_0)
    q4 = G.quantize(x, G.Q4_0)
    ok = len(q8) == 2 * 34 and len(q4) == 2 * 18
    for blk in range(2):
        xb = x[32 * blk:32 * blk + 32]
        d8 = np.frombuffer(q8[34 * blk:34 * blk + 2], "<f2")[0]
        qs8 = np.frombuffer(q8[34 * blk + 2:34 * blk + 34], np.int8)
        ok &= abs(float(d8) - np.abs(xb).max() / 127) <= 1e-3 * float(d8)
        ok &= np.all(np.abs(float(d8) * qs8 - xb) <= 0.5 * float(d8) * 1.01 + 1e-6)
        d4 = float(np.frombuffer(q4[18 * blk:18 * blk + 2], "<f2")[0])
        qs4 = np.frombuffer(q4[18 * blk + 2:18 * blk + 18], np.uint8)
        m = xb[np.abs(xb).argmax()]
        ok &= abs(d4 - m / -8) <= 1e-3 * abs(d4)
        lo = d4 * ((qs4 & 15).astype(np.float32) - 8)
        hi = d4 * ((qs4 >> 4).astype(np.float32) - 8)
        dec = np.concatenate([lo, hi])
        ok &= np.all(np.abs(dec - xb) <= 0.5 * abs(d4) * 1.01 + 1e-6)
        ok &= np.allclose(dec, G.dequantize(q4, G.Q4_0, 64)[32 * blk:32 * blk + 32])
    ok &= float(np.frombuffer(q4[0:2], "<f2")[0]) > 0 and qs4.size == 16
    check("q8_0/q4_0 block layout and error bound", bool(ok))

    # Q4_0 edge: the max-magnitude value encodes to exactly -8 (nibble 0); an all-zero block.
    z = np.zeros(32, np.float32)
    z[3] = 2.0
    dec = G.dequantize(G.quantize(z, G.Q4_0), G.Q4_0, 32)
    dz = G.dequantize(G.quantize(np.zeros(32, np.float32), G.Q8_0), G.Q8_0, 32)
    check("q4_0 exact extreme / zero block", dec[3] == 2.0 and np.all(dec[np.arange(32) != 3] == 0)
          and np.all(dz == 0))

    # bf16: round to nearest even on the 16 dropped bits.
    v = np.array([1.0, 1.0 + 2**-8, 1.0 + 3 * 2**-8, -2.5, 1.0 + 2**-8 + 2**-20], np.float32)
    got = G.dequantize(G.quantize(v, G.BF16), G.BF16, 5)
    want = np.array([1.0, 1.0, 1.0 + 4 * 2**-8, -2.5, 1.0 + 2**-7], np.float32)
    check("bf16 rounding", np.array_equal(got, want), f"{got}")

    # Model files: every type reads back close to the f32 weights, biases/norms stay exact.
    g32, _ = model("qwen2", "f32", tmp=tmp)
    for t, tol in (("f16", 1e-3), ("bf16", 8e-3), ("q8_0", 1e-2), ("q4_0", 0.15)):
        gq, _ = model("qwen2", t, tmp=tmp)
        w = "blk.1.ffn_down.weight"
        rel = np.abs(gq.tensors[w] - g32.tensors[w]).max() / np.abs(g32.tensors[w]).max()
        exact = all(np.array_equal(gq.tensors[n], g32.tensors[n])
                    for n in ("blk.0.attn_q.bias", "output_norm.weight"))
        ok = rel < tol and exact and gq.tensor_types[w] == G.TYPE_FROM_NAME[t]
        check(f"model file {t}", bool(ok), f"max rel weight err {rel:.2e}")


# ---- RoPE ------------------------------------------------------------------------------------

def test_rope(tmp: str) -> None:
    for cfg in ("gqa", "qwen2", "linear", "llama3"):
        _, m = model(cfg, tmp=tmp)
        hp = m.hp
        x = torch.randn(7, 3, hp.head_dim, dtype=torch.float64)
        pos = torch.tensor([0, 1, 2, 5, 17, 100, 255])
        got = m.rope(x, pos)
        # Independent form: pair i as a complex number times exp(i * angle).
        ang = pos[:, None].double() * hp.rope_pos_scale * torch.from_numpy(hp.rope_inv_freq)
        rot = torch.polar(torch.ones_like(ang), ang)[:, None, :]
        d2 = hp.head_dim // 2
        if hp.rope_neox:
            z = torch.complex(x[..., :d2], x[..., d2:]) * rot
            want = torch.cat([z.real, z.imag], -1)
        else:
            z = torch.complex(x[..., 0::2], x[..., 1::2]) * rot
            want = torch.stack([z.real, z.imag], -1).flatten(-2)
        err = (got - want).abs().max().item()
        check(f"rope {cfg} vs complex form", err < 1e-12, f"{err:.1e}")

    # The frequencies themselves, from the definitions.
    _, m = model("gqa", tmp=tmp)
    want = np.array([10000.0 ** (-2 * i / 16) for i in range(8)])
    check("rope base freqs", np.allclose(m.hp.rope_inv_freq, want, rtol=1e-15))
    _, m3 = model("llama3", tmp=tmp)
    r = want / m3.hp.rope_inv_freq  # divisor per frequency
    # wavelengths 6.3 (kept), 19.9 and 62.8 (interpolated), >= 199 (divided by 8)
    ok = abs(r[0] - 1) < 1e-12 and np.allclose(r[3:], 8) and 1 < r[1] < r[2] < 8
    sm = (64 / (2 * math.pi / want[1]) - 1) / 3
    ok &= abs(m3.hp.rope_inv_freq[1] - ((1 - sm) * want[1] / 8 + sm * want[1])) < 1e-15
    check("llama3 scaled freqs", bool(ok), f"divisors {np.round(r, 3)}")
    _, ml = model("linear", tmp=tmp)
    check("linear scaling", ml.hp.rope_pos_scale == 0.5)


# ---- forward ---------------------------------------------------------------------------------

def naive_forward(g: G.GGUFFile, tokens, positions, mask, long_rope=False) -> np.ndarray:
    """Deliberately plain numpy: one loop per layer/head/row, RoPE by explicit 2x2 rotations,
    the kv head looked up per query head, fused tensors cut by row slices, GELU and tanh written
    out. Shares nothing with LlamaRef but hparams parsing."""
    hp = L.hparams_from_gguf(g.kv, g.tensors)
    W = {k: v.astype(np.float64) for k, v in g.tensors.items()}
    out_w = W.get("output.weight", W["token_embd.weight"])
    n, D = len(tokens), hp.head_dim
    Q, KV, F = hp.n_head * D, hp.n_head_kv * D, hp.n_ff

    def norm(x, w):
        return x / math.sqrt(float(np.mean(x * x)) + hp.norm_eps) * w

    def rope_vec(v, p, inv, ps):
        v = v.copy()
        for i in range(D // 2):
            a = p * ps * inv[i]
            c, s = math.cos(a) * hp.rope_mscale, math.sin(a) * hp.rope_mscale
            j0, j1 = (i, i + D // 2) if hp.rope_neox else (2 * i, 2 * i + 1)
            v[j0], v[j1] = v[j0] * c - v[j1] * s, v[j0] * s + v[j1] * c
        return v

    def lin(x, name):
        y = W[name + ".weight"] @ x
        return y + W[name + ".bias"] if name + ".bias" in W else y

    def cap(s, c):
        return c * math.tanh(s / c) if c > 0 else s

    def act(x):
        if hp.act == "gelu_tanh":
            return 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)))
        return x / (1 + np.exp(-x))

    x = [W["token_embd.weight"][t].copy() * hp.embd_scale for t in tokens]
    for il in range(hp.n_layer):
        p = f"blk.{il}."
        if p + "attn_qkv.weight" in W:  # fused: q rows, k rows, v rows
            qkv = W[p + "attn_qkv.weight"]
            W[p + "attn_q.weight"], W[p + "attn_k.weight"] = qkv[:Q], qkv[Q:Q + KV]
            W[p + "attn_v.weight"] = qkv[Q + KV:]
        if p + "ffn_gate.weight" not in W and not hp.n_expert:  # Phi-3: gate rows, up rows
            up = W[p + "ffn_up.weight"]
            W[p + "ffn_gate.weight"], W[p + "ffn_up.weight"] = up[:F], up[F:]
        windowed = hp.layer_windowed(il)
        if windowed and hp.swa_inv_freq is not None:
            inv, ps = hp.swa_inv_freq, hp.swa_pos_scale
        elif long_rope and hp.long_inv_freq is not None:
            inv, ps = hp.long_inv_freq, hp.rope_pos_scale
        else:
            inv, ps = hp.rope_inv_freq, hp.rope_pos_scale
        h = [norm(xi, W[p + "attn_norm.weight"]) for xi in x]
        q = [lin(hi, p + "attn_q") for hi in h]
        k = [lin(hi, p + "attn_k") for hi in h]
        if hp.qk_norm_full:  # OLMoE: one norm over each whole projection
            q = [norm(qi, W[p + "attn_q_norm.weight"]) for qi in q]
            k = [norm(ki, W[p + "attn_k_norm.weight"]) for ki in k]
        q = [qi.reshape(hp.n_head, D) for qi in q]
        k = [ki.reshape(hp.n_head_kv, D) for ki in k]
        v = [lin(hi, p + "attn_v").reshape(hp.n_head_kv, D) for hi in h]
        if p + "attn_q_norm.weight" in W and not hp.qk_norm_full:
            q = [np.stack([norm(qh, W[p + "attn_q_norm.weight"]) for qh in qi]) for qi in q]
            k = [np.stack([norm(kh, W[p + "attn_k_norm.weight"]) for kh in ki]) for ki in k]
        q = [np.stack([rope_vec(qi[hh], positions[i], inv, ps) for hh in range(hp.n_head)])
             for i, qi in enumerate(q)]
        k = [np.stack([rope_vec(ki[hh], positions[i], inv, ps) for hh in range(hp.n_head_kv)])
             for i, ki in enumerate(k)]
        for i in range(n):
            o = np.zeros(hp.n_head * D)
            for hh in range(hp.n_head):
                kvh = hh * hp.n_head_kv // hp.n_head
                js = [j for j in range(n) if mask[i][j] and
                      (not windowed or positions[i] - positions[j] < hp.window)]
                s = np.array([cap(q[i][hh] @ k[j][kvh] * hp.attn_scale, hp.attn_softcap)
                              for j in js])
                pr = np.exp(s - s.max())
                pr /= pr.sum()
                o[hh * D:(hh + 1) * D] = sum(pr[t] * v[j][kvh] for t, j in enumerate(js))
            o = lin(o, p + "attn_output")
            if p + "post_attention_norm.weight" in W:
                o = norm(o, W[p + "post_attention_norm.weight"])
            x[i] = x[i] + o
        for i in range(n):
            h = norm(x[i], W[p + "ffn_norm.weight"])
            if hp.n_expert:  # experts: the k most probable by a plain sort, one at a time
                z = W[p + "ffn_gate_inp.weight"] @ h
                pr = [math.exp(zj - max(z)) for zj in z]
                pr = [pj / sum(pr) for pj in pr]
                top = sorted(range(hp.n_expert), key=lambda e: -pr[e])[:hp.n_expert_used]
                tot = sum(pr[e] for e in top) if hp.moe_norm else 1.0
                o = np.zeros_like(h)
                for e in top:
                    ge = W[p + "ffn_gate_exps.weight"][e] @ h
                    ue = W[p + "ffn_up_exps.weight"][e] @ h
                    o = o + pr[e] / tot * (W[p + "ffn_down_exps.weight"][e] @ (act(ge) * ue))
                if p + "ffn_gate_inp_shexp.weight" in W:
                    sg = 1 / (1 + math.exp(-float(W[p + "ffn_gate_inp_shexp.weight"] @ h)))
                    gs, us = lin(h, p + "ffn_gate_shexp"), lin(h, p + "ffn_up_shexp")
                    o = o + sg * lin(act(gs) * us, p + "ffn_down_shexp")
                x[i] = x[i] + o
                continue
            gg, uu = lin(h, p + "ffn_gate"), lin(h, p + "ffn_up")
            o = lin(act(gg) * uu, p + "ffn_down")
            if p + "post_ffw_norm.weight" in W:
                o = norm(o, W[p + "post_ffw_norm.weight"])
            x[i] = x[i] + o
    logits = np.stack([out_w @ norm(xi, W["output_norm.weight"]) for xi in x])
    if hp.final_softcap > 0:
        logits = hp.final_softcap * np.tanh(logits / hp.final_softcap)
    return logits


def test_forward(tmp: str) -> None:
    rng = np.random.default_rng(7)
    tokens = rng.integers(0, 300, size=12).tolist()
    for cfg in M.CONFIGS:
        g, m = model(cfg, tmp=tmp)
        # A non-causal, irregular mask and shuffled positions stress every path of forward().
        n = len(tokens)
        mask = rng.random((n, n)) < 0.5
        mask[np.arange(n), np.arange(n)] = True
        pos = rng.permutation(40)[:n]
        m.long_rope = M.longrope_long(M.config(cfg))
        got = m.forward(tokens, pos, mask).numpy()
        want = naive_forward(g, tokens, pos, mask, m.long_rope)
        err = np.abs(got - want).max()
        check(f"forward {cfg} vs naive loops", err < 1e-10, f"{err:.1e}")

    # Experts are a set: relabelling them (router rows and expert tensors permuted alike) must
    # not change the logits; and the top-k renormalisation must matter.
    for cfg in ("qwen2moe", "olmoe"):
        g, m = model(cfg, tmp=tmp)
        base = m.forward(tokens).numpy()
        perm = np.random.default_rng(3).permutation(m.hp.n_expert)
        t = dict(g.tensors)
        for il in range(m.hp.n_layer):
            for name in ("ffn_gate_inp", "ffn_gate_exps", "ffn_up_exps", "ffn_down_exps"):
                t[f"blk.{il}.{name}.weight"] = t[f"blk.{il}.{name}.weight"][perm]
        got = L.LlamaRef(g.kv, t).forward(tokens).numpy()
        check(f"experts relabelled {cfg}", np.abs(got - base).max() < 1e-12)
        m.hp.moe_norm = not m.hp.moe_norm
        diff = np.abs(m.forward(tokens).numpy() - base).max()
        check(f"top-k renormalisation matters {cfg}", diff > 1e-2, f"{diff:.1e}")

    for cfg in ("gqa", "qwen2", "llama3"):
        _, m = model(cfg, tmp=tmp)
        full = m.forward(tokens)
        # Causality: a prefix's logits do not depend on later tokens.
        err = (m.forward(tokens[:5]) - full[:5]).abs().max().item()
        check(f"prefix {cfg}", err < 1e-12, f"{err:.1e}")
        # RoPE attention depends only on position differences (with any frequency scaling).
        sh = m.forward(tokens, np.arange(len(tokens)) + 37)
        err = (sh - full).abs().max().item()
        check(f"position shift {cfg}", err < 1e-9, f"{err:.1e}")
        # ...and a position change that is not a global shift must change the result.
        pos = np.arange(len(tokens))
        pos[-1] += 3
        diff = (m.forward(tokens, pos) - full)[-1].abs().max().item()
        check(f"positions matter {cfg}", diff > 1e-3, f"{diff:.1e}")

    # Tree mask in one forward == each root-to-node path run as an ordinary causal sequence (a
    # window by position, as the tree's nodes sit at prefix + depth).
    for cfg in ("gqa", "qwen2", "mistral", "gemma3"):
        _, m = model(cfg, tmp=tmp)
        P, parents = 5, [-1, 0, 0, 1, 1, 2, -1, 6, 7]
        seq = rng.integers(0, 300, size=P + len(parents)).tolist()
        pos, mask = L.tree_layout(P, parents)
        tree = m.forward(seq, pos, mask)
        err = 0.0
        for i, path in enumerate(L.tree_paths(parents)):
            branch = seq[:P] + [seq[P + j] for j in path]
            err = max(err, (m.forward(branch)[-1] - tree[P + i]).abs().max().item())
        check(f"tree == branches {cfg}", err < 1e-12, f"{err:.1e}")

    # Grouping convention: GQA equals MHA whose kv head h holds GQA's kv head h // group.
    g, m = model("gqa", tmp=tmp)
    t2 = dict(g.tensors)
    grp = m.hp.n_head // m.hp.n_head_kv
    for il in range(m.hp.n_layer):
        for w in ("attn_k", "attn_v"):
            a = t2[f"blk.{il}.{w}.weight"].reshape(m.hp.n_head_kv, m.hp.head_dim, -1)
            t2[f"blk.{il}.{w}.weight"] = np.repeat(a, grp, axis=0).reshape(-1, a.shape[-1])
    kv2 = dict(g.kv, **{"llama.attention.head_count_kv": m.hp.n_head})
    err = (L.LlamaRef(kv2, t2).forward(tokens) - m.forward(tokens)).abs().max().item()
    check("gqa == mha with repeated kv heads", err < 1e-12, f"{err:.1e}")

    # Tied head: same weights as an untied model whose output.weight copies token_embd.
    g, m = model("tied", tmp=tmp)
    t2 = dict(g.tensors, **{"output.weight": g.tensors["token_embd.weight"]})
    err = (L.LlamaRef(g.kv, t2).forward(tokens) - m.forward(tokens)).abs().max().item()
    check("tied output head", err < 1e-12 and "output.weight" not in g.tensors, f"{err:.1e}")

    # The two encodings of llama3 scaling give the same model (rope_freqs is stored in f32,
    # hence the 1e-6 allowance), and scaling visibly changes the logits.
    _, a = model("llama3", tmp=tmp)
    _, b = model("llama3f", tmp=tmp)
    _, c = model("gqa", tmp=tmp)
    long = rng.integers(0, 300, size=40).tolist()
    la, lb, lc = a.forward(long), b.forward(long), c.forward(long)
    err = (la - lb).abs().max().item()
    diff = (la - lc).abs().max().item()
    check("llama3 keys == rope_freqs tensor", err < 1e-5 and diff > 1e-2,
          f"{err:.1e} (vs unscaled {diff:.1e})")

    # A window wider than the sequence changes nothing; one inside it does.
    g, m = model("mistral", tmp=tmp)
    _, plain = model("gqa", tmp=tmp)
    err = (m.forward(tokens) - plain.forward(tokens)).abs().max().item()
    diff = (m.forward(long) - plain.forward(long)).abs().max().item()
    check("window 8 changes 12 and 40 tokens", err > 1e-3 and diff > 1e-3,
          f"{err:.1e} {diff:.1e}")
    err = (m.forward(tokens[:8]) - plain.forward(tokens[:8])).abs().max().item()
    check("window 8 over 8 tokens == no window", err < 1e-12, f"{err:.1e}")

    # Phi-3's fused tensors are the separate ones stacked: the same model as qwen2's layout
    # (NEOX, no biases) with q/k/v and gate/up cut apart.
    g, m = model("phi3", tmp=tmp)
    hp = m.hp
    Q, KV, F = hp.n_head * hp.head_dim, hp.n_head_kv * hp.head_dim, hp.n_ff
    t2 = {k: v for k, v in g.tensors.items() if not k.startswith("rope_factors")}
    for il in range(hp.n_layer):
        p = f"blk.{il}."
        qkv, up = t2.pop(p + "attn_qkv.weight"), t2.pop(p + "ffn_up.weight")
        t2.update({p + "attn_q.weight": qkv[:Q], p + "attn_k.weight": qkv[Q:Q + KV],
                   p + "attn_v.weight": qkv[Q + KV:], p + "ffn_gate.weight": up[:F],
                   p + "ffn_up.weight": up[F:]})
    kv2 = {k.replace("phi3.", "qwen2."): v for k, v in g.kv.items() if "rope.scaling" not in k}
    kv2["general.architecture"] = "qwen2"
    ref_q = L.LlamaRef(kv2, t2)
    m.long_rope = False
    # LongRoPE off on the phi3 side: factors of 1 and attention factor 1.
    m.hp.rope_inv_freq = ref_q.hp.rope_inv_freq
    m.hp.rope_mscale = 1.0
    err = (ref_q.forward(tokens) - m.forward(tokens)).abs().max().item()
    check("phi3 fused qkv / gate-up == qwen2 layout split", err < 1e-12, f"{err:.1e}")

    # float32 vs float64 reference: the size of rounding a float32 engine cannot avoid.
    for cfg in ("gqa", "qwen2"):
        g, m = model(cfg, tmp=tmp)
        m32 = L.LlamaRef(g.kv, g.tensors, dtype=torch.float32)
        r64 = m.forward(long)
        err = (m32.forward(long).double() - r64).abs().max().item()
        scale = max(1.0, r64.abs().max().item())
        check(f"float32 rounding {cfg}", err < 1e-4 * scale,
              f"{err:.1e} (scale {scale:.2f}; tolerance used vs speck 1e-4*scale)")


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        test_gguf(tmp)
        test_rope(tmp)
        test_forward(tmp)
    failed = RESULTS.count(False)
    print(f"{len(RESULTS) - failed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
