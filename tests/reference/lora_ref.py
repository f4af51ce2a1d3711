#!/usr/bin/python3
"""Check speck's LoRA / QLoRA gradients against PyTorch autograd (float64).

For each case (tiny model from make_model.py, base weights stored as f32, Q8_0 or Q4_0, a set of
adapted matrices), the C tool `lora_dump` builds an adapter (A as speck_lora_new draws it, B a
fixed non-zero pattern), saves it, and writes the gradient of the mean next-token cross-entropy
for every lora_a / lora_b plus the loss. This script reads the same base (dequantized: a
quantized base is frozen in its stored type, so the function both sides differentiate uses the
dequantized values) and the saved adapter, puts W + (alpha / r)·B·A into the reference model
(written from the model definition in llama_ref.py, not from speck's C) and compares:

  loss:       |loss_speck - loss_ref| <= 1e-5 max(1, |loss|)
  gradients:  ||g_speck - g_ref|| / ||g_ref|| <= 1e-3 per matrix (float32 vs float64 arithmetic
              gives ~1e-6; a missing scale, a transposed factor or a wrong term gives >= 1e-2)

The Block-LoRA case (share K, Zhou et al. 2025, "One Head Eight Arms"): B's rank columns are K
blocks B_i (n_out, r/K) and every down-projection block is one shared A_s (r/K, n_in), so
delta W = (alpha / r) sum_i B_i A_s. The reference builds that sum with A_s as ONE leaf (autograd
adds its K uses) and compares with speck's folded gradient of the shared block; the saved
adapter's A must hold K identical copies of A_s.

The "masked" case drops the targets of half of row 0 and of every odd position of row 1 on both
sides (torch: ignore_index): the loss is the mean over the remaining positions only, and the
gradients come only from them (loss masking of prompts and non-assistant turns).

Usage: /usr/bin/python3 tests/reference/lora_ref.py --dump build/tests/lora_dump --workdir DIR
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gguf_io as G  # noqa: E402
import llama_ref as L  # noqa: E402
import make_model as M  # noqa: E402

TOL_GRAD = 1e-3
TOL_LOSS = 1e-5
B, T = 2, 12
RANK, ALPHA = 4, 8.0
# (config, base type, targets, masked, Block-LoRA shared blocks)
CASES = [("gqa", "f32", "q,k,v,o,gate,up,down", False, 1),
         ("mqa", "f32", "q,v,down", False, 1),
         ("gqa", "q8_0", "q,k,v,o,gate,up,down", False, 1),
         ("gqa", "q4_0", "q,k,v,o,gate,up,down", False, 1),
         ("qwen2", "f32", "q,k,v,o", False, 1),
         # Qwen3: per-head q/k norms (frozen) between the adapted q/k and RoPE, head_dim 32 !=
         # n_embd / n_head so attn_output's input is wider than the model.
         ("qwen3", "f32", "q,k,v,o,gate,up,down", False, 1),
         # Mixtures of experts: the attention adapted, the router, experts and shared expert
         # frozen (qwen2moe: biases, 8 experts, the shared expert's gate; olmoe: whole-row q/k
         # norms, its experts stored as Q8_0). No load-balancing loss (the router is frozen).
         ("qwen2moe", "f32", "q,k,v,o", False, 1),
         ("olmoe", "q8_0", "q,k,v,o", False, 1),
         ("gqa", "f32", "q,k,v,o,gate,up,down", True, 1),
         ("gqa", "f32", "q,k,v,o,gate,up,down", False, 2),
         ("gqa", "q8_0", "q,v,down", False, 4)]
GG = ["attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down"]


def mask_targets(tgt: np.ndarray) -> np.ndarray:
    t = tgt.copy()
    t[0, :T // 2] = -100
    t[1, 1::2] = -100
    return t


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dump", required=True)
    ap.add_argument("--workdir", required=True)
    args = ap.parse_args()
    os.makedirs(args.workdir, exist_ok=True)
    torch.set_num_threads(2)
    passed = failed = 0
    for cfg, wtype, targets, masked, share in CASES:
        tag = (f"{cfg}-{wtype}-{targets.replace(',', '')}{'-masked' if masked else ''}"
               f"{f'-share{share}' if share > 1 else ''}")
        model = M.make_model(cfg, os.path.join(args.workdir, f"{cfg}-{wtype}.gguf"), wtype, seed=3)
        rng = np.random.default_rng(11)
        tok = rng.integers(0, M.config(cfg)["n_vocab"], size=(B, T + 1)).astype("<i4")
        tok_path = os.path.join(args.workdir, tag + ".i32")
        tok.tofile(tok_path)
        out = os.path.join(args.workdir, tag)
        os.makedirs(out, exist_ok=True)
        subprocess.run([args.dump, model, tok_path, str(B), str(T), out, str(RANK), str(ALPHA),
                        targets] + (["mask"] if masked else [])
                       + ([f"share={share}"] if share > 1 else []), check=True)

        g = G.read_gguf(model)
        ad = G.read_gguf(os.path.join(out, "adapter.gguf"))
        assert ad.kv["general.type"] == "adapter" and ad.kv["adapter.type"] == "lora"
        alpha = float(ad.kv["adapter.lora.alpha"])
        ref = L.LlamaRef(g.kv, g.tensors)
        leaves = {}
        for name in ad.tensors:
            if not name.endswith(".lora_a"):
                continue
            wname = name[:-len(".lora_a")]
            a_np = np.asarray(ad.tensors[name], dtype=np.float64)
            b = torch.from_numpy(np.asarray(ad.tensors[wname + ".lora_b"],
                                            dtype=np.float64)).requires_grad_()
            assert a_np.shape[0] == b.shape[1] == RANK
            q = RANK // share
            for i in range(1, share):  # the saved A: K identical copies of the shared block
                if not np.array_equal(a_np[i * q:(i + 1) * q], a_np[:q]):
                    print(f"FAIL {tag}: {name} block {i} differs from the shared block 0")
                    failed += 1
            a = torch.from_numpy(a_np[:q].copy()).requires_grad_()
            leaves[name], leaves[wname + ".lora_b"] = a, b
            delta = sum(b[:, i * q:(i + 1) * q] @ a for i in range(share))
            ref.w[wname] = ref.w[wname] + (alpha / RANK) * delta
        tgt = tok[:, 1:].astype(np.int64)
        if masked:
            tgt = mask_targets(tgt)
        total, count = 0, int((tgt >= 0).sum())
        margin = float("inf")
        for r in range(B):
            logits = ref.forward(tok[r, :-1])
            if ref.hp.n_expert and ref.last_margins:
                margin = min(margin, float(torch.stack(ref.last_margins).min()))
            total = total + torch.nn.functional.cross_entropy(
                logits, torch.as_tensor(tgt[r]), ignore_index=-100, reduction="sum")
        loss = total / count
        loss.backward()
        if ref.hp.n_expert:  # both sides must choose the same experts (see train_ref.py)
            ok = margin >= 1e-3
            print(f"{'PASS' if ok else 'FAIL'} {tag}: smallest top-k router-logit gap "
                  f"{margin:.2e} (>= 1e-3)")
            passed, failed = passed + ok, failed + (not ok)
        c_loss = float(open(os.path.join(out, "loss.txt")).read())
        ok = abs(c_loss - loss.item()) <= TOL_LOSS * max(1.0, abs(loss.item()))
        print(f"{'PASS' if ok else 'FAIL'} {tag} loss speck {c_loss:.7f} ref {loss.item():.7f}")
        passed, failed = passed + ok, failed + (not ok)
        n_expect = 2 * ref.hp.n_layer * len(targets.split(","))  # (quantized MoE: 1 layer)
        ok = len(leaves) == n_expect
        if not ok:
            print(f"FAIL {tag}: adapter has {len(leaves)} matrices, expected {n_expect}")
            failed += 1
        worst = (0.0, "")
        for name, t in leaves.items():
            gr = t.grad.numpy()
            gc = np.fromfile(os.path.join(out, name + ".f32"), dtype="<f4").reshape(gr.shape)
            rel = np.linalg.norm(gc - gr) / max(np.linalg.norm(gr), 1e-30)
            if rel > worst[0]:
                worst = (rel, name)
            if not rel <= TOL_GRAD:
                print(f"FAIL {tag} grad {name} rel err {rel:.2e} > {TOL_GRAD}")
                failed += 1
            else:
                passed += 1
        print(f"PASS-INFO {tag} grads: {len(leaves)} matrices, worst rel err {worst[0]:.2e} "
              f"({worst[1]})")
    print(f"{passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
