#!/usr/bin/python3
"""Check speck's training backward pass and AdamW against PyTorch autograd (float64).

For each tiny model config (make_model.py: GQA, MQA, MHA, tied head, llama3 RoPE scaling, Q8_0
weights dequantized on load) and a random batch, the C tool `train_dump` writes

  * grad mode:   the gradient of the mean next-token cross-entropy for every parameter tensor;
  * adam:K mode: every parameter after K AdamW steps (warmup + cosine schedule, global-norm
                 clipping, weight decay on matrices only) on the same batch;

and this script computes the same with torch autograd / torch.optim.AdamW from the very same
(dequantized) weights via llama_ref.py, then compares per tensor:

  gradients:  relative error ||g_speck - g_ref|| / ||g_ref|| <= 1e-3 (float32 vs float64
              arithmetic gives ~1e-6; a wrong term gives >= 1e-2)
  AdamW:      max |w_speck - w_ref| <= 5e-4 after K steps of lr <= 1e-2 (each step moves a weight
              by up to lr), and ||w_speck - w_ref|| <= 1e-3 ||w_ref - w_0|| per tensor. Adam
              divides by sqrt(v) + eps, so a gradient element of ~1e-9 (next to eps = 1e-8) whose
              float32 value is off by ~1e-9 absolute moves by a visible fraction of lr: observed
              worst element errors are 0.4-1.4e-4, update-norm errors 2-7e-5; a wrong bias
              correction, decay or clip factor gives >= 5e-2.

Mixture of experts: tiny Mixtral-layout models (llama + 4 experts: top-2 renormalised, and
top-3 not renormalised as OLMoE's rule) are checked the same way for the gradient of
cross-entropy + coef x the Switch Transformer load-balancing loss, written here from its
definition (Fedus et al. 2021, as in transformers' load_balancing_loss_func but per layer): for
each layer over the batch's B*T tokens, aux = X * sum_i f_i * P_i, f_i = the fraction of the
N*k token-choices routed to expert i (no gradient: the top-k choice is a constant), P_i = the
mean softmax probability of expert i; the model's aux is the mean over layers. The routing is
transformers' sparse MoE block (llama_ref.py: softmax over all experts, torch.topk, renormalise
when the file says so); the router's gradient flows through the chosen probabilities. coef 0.01
(speck's default) and 1.0 (the load-balancing term then dominates the router's gradient, so a
wrong aux gradient cannot hide under the cross-entropy's). Tolerances as above, plus the
auxiliary loss itself within 1e-5 relative (float32 sums of N*X probabilities). The test also
requires every token's k-th and (k+1)-th router logits to be >= 1e-3 apart in every layer
(smallest gap printed): float32 vs float64 logits differ by ~1e-6, so the two implementations
then choose the same experts and the comparison is of gradients, not of a tie broken
differently.

Export: for models whose RoPE differs from the plain llama's (linear and llama3 scaling by keys,
llama3 as a rope_freqs tensor, qwen2's NEOX rotation), train_dump exports the training model after
0 and 2 AdamW steps. The reference, reading each exported file's own metadata, must give the
source's logits for the 0-step export (max abs difference <= 1e-9: the weights are the same f32
values, so only a changed hyper-parameter can make them differ) and the same RoPE frequencies,
architecture and weights as speck's training model for the 2-step one.

The other families' layers (--arch-only, ctest train_reference_arch): make_model's qwen2 (q/k/v
biases), qwen3 (RMSNorm of each q/k head, head_dim 32 != n_embd / n_head, tied), qwen2moe (biases,
8 experts of 64 != feed_forward_length, top-2 not renormalised, the shared expert of 96 behind
its sigmoid gate), qwen3moe (per-head norms, top-2 renormalised), olmoe (RMSNorm over the whole
q/k rows, not renormalised): llama_ref.py's forward, written from transformers' Qwen2 / Qwen3 /
Qwen2-MoE / Qwen3-MoE / OLMoE modules, under autograd; the same tolerances as above (observed
worst 1-3e-6). That a missing term would fail: each ablated reference (MoeRef.ablate: the q/k
norms' 1/rms as a constant, the shared expert's gate input as a constant) must differ from
speck's gradients by more than TOL_GRAD (observed 0.13-0.28). Exports as above for qwen3,
qwen2moe and olmoe.

Usage: /usr/bin/python3 tests/reference/train_ref.py --dump build/tests/train_dump --workdir DIR
       [--moe-only | --arch-only]
Prints PASS/FAIL per case and `N passed, M failed`; exits 1 on any failure.
"""

from __future__ import annotations

import argparse
import math
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
TOL_ADAM = 5e-4
TOL_ADAM_REL = 1e-3
B, T, ADAM_STEPS = 2, 12, 5
CASES = [("gqa", "f32"), ("mqa", "f32"), ("mha", "f32"), ("tied", "f32"), ("llama3", "f32"),
         ("gqa", "q8_0")]
EXPORT_CASES = ["linear", "llama3", "llama3f", "qwen2nb", "mixtral"]
# The other families' layers (make_model's configs): (config, aux coefficient, ablations). Each
# ablation is the reference with one of the layer's gradient terms left out, which speck's
# gradients must then NOT match (so the comparison would see that term missing).
ARCH_CASES = [("qwen2", 0.0, []), ("qwen3", 0.0, ["qk_norm_rstd"]),
              ("qwen2moe", 0.01, ["shared_gate_input"]), ("qwen3moe", 0.01, []),
              ("olmoe", 0.01, ["qk_norm_rstd"])]
# Their exports: one per new tensor kind (per-head norms; biases and the shared expert; whole-row
# norms).
ARCH_EXPORT_CASES = ["qwen3", "qwen2moe", "olmoe"]
# (name, changes to make_model's "mixtral" config, aux coefficient)
MOE_CASES = [("moe-top2", {}, 0.01), ("moe-top3-nonorm", dict(n_expert_used=3, expert_norm=False),
                                       0.01), ("moe-top2-aux1", {}, 1.0)]
TOL_AUX = 1e-5
MIN_MARGIN = 1e-3
TOL_EXPORT = 1e-9


def lr_at(step, lr=1e-2, min_lr=1e-3, warmup=2, total=ADAM_STEPS):
    if warmup > 0 and step < warmup:
        return lr * (step + 1) / warmup
    if total <= warmup:
        return lr
    if step >= total:
        return min_lr
    frac = (step - warmup) / (total - warmup)
    return min_lr + 0.5 * (lr - min_lr) * (1 + math.cos(math.pi * frac))


def trainable(ref: L.LlamaRef) -> dict:
    """name -> leaf tensor requiring grad (the tied head shares token_embd's tensor)."""
    tied = ref.w["output.weight"] is ref.w["token_embd.weight"]
    out = {}
    for name, t in ref.w.items():
        if name == "rope_freqs.weight" or (tied and name == "output.weight"):
            continue
        t.requires_grad_(True)
        out[name] = t
    return out


def batch_loss(ref: L.LlamaRef, tok: np.ndarray) -> torch.Tensor:
    total = 0
    for b in range(tok.shape[0]):
        logits = ref.forward(tok[b, :-1])
        total = total + torch.nn.functional.cross_entropy(
            logits, torch.as_tensor(tok[b, 1:], dtype=torch.int64), reduction="sum")
    return total / (tok.shape[0] * (tok.shape[1] - 1))


def read_dump(d: str, name: str, shape) -> np.ndarray:
    return np.fromfile(os.path.join(d, name + ".f32"), dtype="<f4").reshape(shape)


def compare_grads(tag: str, params: dict, out: str) -> tuple[int, int]:
    """Each parameter's gradient speck dumped in OUT against autograd's (relative error of the
    tensor, <= TOL_GRAD); prints failures and the worst tensor; returns (passed, failed)."""
    passed = failed = 0
    worst = (0.0, "")
    for name, t in params.items():
        gr = t.grad.numpy()
        gc = read_dump(out, name, gr.shape)
        rel = np.linalg.norm(gc - gr) / max(np.linalg.norm(gr), 1e-30)
        if rel > worst[0]:
            worst = (rel, name)
        if not rel <= TOL_GRAD:
            print(f"FAIL {tag} grad {name} rel err {rel:.2e} > {TOL_GRAD}")
            failed += 1
        else:
            passed += 1
    print(f"PASS-INFO {tag} grads: {len(params)} tensors, worst rel err {worst[0]:.2e} "
          f"({worst[1]})")
    return passed, failed


def run(args, model: str, tok_path: str, out: str, mode: str, export: str | None = None):
    os.makedirs(out, exist_ok=True)
    subprocess.run([args.dump, model, tok_path, str(B), str(T), out, mode] +
                   ([export] if export else []), check=True)


def check_export(args, cfg: str) -> tuple[int, int]:
    """Export after 0 and 2 steps; the files must describe the source's model (see the top)."""
    passed = failed = 0
    model = M.make_model(cfg, os.path.join(args.workdir, f"export-{cfg}.gguf"), "f32", seed=4)
    src = G.read_gguf(model)
    tok = np.random.default_rng(8).integers(0, M.config(cfg)["n_vocab"], size=(B, T + 1))
    tok_path = os.path.join(args.workdir, f"export-{cfg}.i32")
    tok.astype("<i4").tofile(tok_path)
    src_ref = L.LlamaRef(src.kv, src.tensors)
    src_hp = L.hparams_from_gguf(src.kv, src.tensors)
    for steps in (0, 2):
        out = os.path.join(args.workdir, f"export-{cfg}-{steps}")
        path = out + ".gguf"
        run(args, model, tok_path, out, f"adam:{steps}", path)
        g = G.read_gguf(path)
        hp = L.hparams_from_gguf(g.kv, g.tensors)
        ok = (hp.arch == src_hp.arch and hp.rope_neox == src_hp.rope_neox and
              hp.rope_pos_scale == src_hp.rope_pos_scale and
              np.array_equal(hp.rope_inv_freq, src_hp.rope_inv_freq) and
              hp.n_ctx_train == src_hp.n_ctx_train)
        print(f"{'PASS' if ok else 'FAIL'} export {cfg} after {steps} steps: architecture "
              f"{hp.arch} (source {src_hp.arch}), position scale {hp.rope_pos_scale} (source "
              f"{src_hp.rope_pos_scale}), RoPE frequencies "
              f"{'equal' if np.array_equal(hp.rope_inv_freq, src_hp.rope_inv_freq) else 'differ'}")
        passed, failed = passed + ok, failed + (not ok)
        if steps == 0:
            with torch.no_grad():
                a = src_ref.forward(tok[0])
                b = L.LlamaRef(g.kv, g.tensors).forward(tok[0])
            err = float((a - b).abs().max())
            ok = err <= TOL_EXPORT
            print(f"{'PASS' if ok else 'FAIL'} export {cfg}: logits of the exported model vs "
                  f"the source: max abs diff {err:.2e} (tol {TOL_EXPORT})")
        else:
            bad = [n for n in g.tensors if n != "rope_freqs.weight" and not np.array_equal(
                np.asarray(g.tensors[n], dtype=np.float32).reshape(-1),
                read_dump(out, n, (-1,)))]
            ok = not bad
            print(f"{'PASS' if ok else 'FAIL'} export {cfg}: exported weights equal the trained "
                  f"ones{'' if ok else ' except ' + ', '.join(bad)}")
        passed, failed = passed + ok, failed + (not ok)
    return passed, failed


class MoeRef(L.LlamaRef):
    """llama_ref's model, also keeping each MoE layer's router probabilities and top-k choices
    of every forward pass (routing[layer prefix] = [(probs (n, X), top_i (n, k)), ...]).

    ablate (ARCH_CASES) leaves one gradient term out of the backward pass, the forward unchanged:
      qk_norm_rstd       the q/k norms' 1/rms treated as a constant (no gradient through the
                         mean square back into the q/k projections);
      shared_gate_input  the shared expert's sigmoid gate sees its input as a constant (no
                         gradient from the gate back into the layer's input)."""

    def __init__(self, *a, ablate=None, **k):
        super().__init__(*a, **k)
        self.routing = {}
        self.ablate = ablate

    def rms_norm(self, x, w):
        if self.ablate == "qk_norm_rstd" and any(
                w is t for n, t in self.w.items() if n.endswith(("attn_q_norm.weight",
                                                                 "attn_k_norm.weight"))):
            r = torch.rsqrt((x * x).mean(-1, keepdim=True) + self.hp.norm_eps)
            return x * r.detach() * w
        return super().rms_norm(x, w)

    def moe(self, h, p):
        if not self.ablate:  # (the ablated passes are compared only, not routed)
            probs = torch.softmax(self.linear(h, p + "ffn_gate_inp"), dim=-1)
            top_i = torch.topk(probs, self.hp.n_expert_used, dim=-1).indices
            self.routing.setdefault(p, []).append((probs, top_i))
        key = p + "ffn_gate_inp_shexp.weight"
        if self.ablate != "shared_gate_input" or key not in self.w:
            return super().moe(h, p)
        gw = self.w.pop(key)  # the routed experts alone, then the shared one by hand
        try:
            out = super().moe(h, p)
        finally:
            self.w[key] = gw
        g = torch.sigmoid(h.detach() @ gw.reshape(-1))[:, None]
        y = self.linear(torch.nn.functional.silu(self.linear(h, p + "ffn_gate_shexp"))
                        * self.linear(h, p + "ffn_up_shexp"), p + "ffn_down_shexp")
        return out + g * y


def aux_loss(ref: MoeRef) -> torch.Tensor:
    """The load-balancing loss of the passes since ref.routing was cleared (see the top)."""
    X, k = ref.hp.n_expert, ref.hp.n_expert_used
    per_layer = []
    for p, passes in ref.routing.items():
        probs = torch.cat([a for a, _ in passes])            # (N, X)
        top_i = torch.cat([b for _, b in passes])            # (N, k)
        counts = torch.bincount(top_i.reshape(-1), minlength=X).to(probs.dtype)
        f = counts / (probs.shape[0] * k)                    # fractions of the token-choices
        P = probs.mean(0)                                    # mean router probabilities
        per_layer.append(X * (f * P).sum())
    return torch.stack(per_layer).mean()


def check_moe(args, name: str, changes: dict, coef: float) -> tuple[int, int]:
    passed = failed = 0
    c = dict(M.config("mixtral"), **changes)
    c["name"] = name
    kv, tensors = M.build(c, "f32", seed=5)
    model = os.path.join(args.workdir, name + ".gguf")
    G.write_gguf(model, kv, tensors)
    tok = np.random.default_rng(9).integers(0, c["n_vocab"], size=(B, T + 1)).astype("<i4")
    tok_path = os.path.join(args.workdir, name + ".i32")
    tok.tofile(tok_path)
    g = G.read_gguf(model)
    ref = MoeRef(g.kv, g.tensors)
    params = trainable(ref)
    margin = math.inf
    total_ce = 0
    for b in range(B):
        logits = ref.forward(tok[b, :-1])
        margin = min(margin, float(torch.stack(ref.last_margins).min()))
        total_ce = total_ce + torch.nn.functional.cross_entropy(
            logits, torch.as_tensor(tok[b, 1:], dtype=torch.int64), reduction="sum")
    ce = total_ce / (B * T)
    aux = aux_loss(ref)
    (ce + coef * aux).backward()
    ok = margin >= MIN_MARGIN
    print(f"{'PASS' if ok else 'FAIL'} {name}: smallest top-k router-logit gap {margin:.2e} "
          f"(>= {MIN_MARGIN})")
    passed, failed = passed + ok, failed + (not ok)
    out = os.path.join(args.workdir, name + "-grad")
    run(args, model, tok_path, out, f"grad:{coef}")
    c_loss = float(open(os.path.join(out, "loss.txt")).read())
    c_aux = float(open(os.path.join(out, "aux.txt")).read())
    ok = (abs(c_loss - ce.item()) <= 1e-5 * max(1.0, abs(ce.item())) and
          abs(c_aux - aux.item()) <= TOL_AUX * abs(aux.item()))
    print(f"{'PASS' if ok else 'FAIL'} {name} loss speck {c_loss:.7f} ref {ce.item():.7f}, "
          f"aux speck {c_aux:.7f} ref {aux.item():.7f}")
    passed, failed = passed + ok, failed + (not ok)
    p, f = compare_grads(f"{name} (aux x {coef})", params, out)
    return passed + p, failed + f


def arch_objective(ref: MoeRef, tok: np.ndarray, coef: float):
    """(cross-entropy, aux, objective, smallest router-logit gap) of the batch; aux 0 for a dense
    model."""
    margin = math.inf
    total_ce = 0
    for b in range(tok.shape[0]):
        logits = ref.forward(tok[b, :-1])
        if ref.hp.n_expert and ref.last_margins:
            margin = min(margin, float(torch.stack(ref.last_margins).min()))
        total_ce = total_ce + torch.nn.functional.cross_entropy(
            logits, torch.as_tensor(tok[b, 1:], dtype=torch.int64), reduction="sum")
    ce = total_ce / (tok.shape[0] * (tok.shape[1] - 1))
    aux = aux_loss(ref) if ref.hp.n_expert and not ref.ablate else torch.zeros((),
                                                                                 dtype=ce.dtype)
    return ce, aux, ce + coef * aux, margin


def check_arch(args, cfg: str, coef: float, ablations: list) -> tuple[int, int]:
    """Gradients of a qwen2 / qwen3 / qwen2moe / qwen3moe / olmoe model against autograd (as
    check_moe), then each ablated reference, which must differ from speck's by > TOL_GRAD."""
    passed = failed = 0
    model = M.make_model(cfg, os.path.join(args.workdir, f"arch-{cfg}.gguf"), "f32", seed=6)
    tok = np.random.default_rng(10).integers(0, M.config(cfg)["n_vocab"],
                                             size=(B, T + 1)).astype("<i4")
    tok_path = os.path.join(args.workdir, f"arch-{cfg}.i32")
    tok.tofile(tok_path)
    g = G.read_gguf(model)
    ref = MoeRef(g.kv, g.tensors)
    params = trainable(ref)
    ce, aux, obj, margin = arch_objective(ref, tok, coef)
    obj.backward()
    if ref.hp.n_expert:
        ok = margin >= MIN_MARGIN
        print(f"{'PASS' if ok else 'FAIL'} {cfg}: smallest top-k router-logit gap {margin:.2e} "
              f"(>= {MIN_MARGIN})")
        passed, failed = passed + ok, failed + (not ok)
    out = os.path.join(args.workdir, f"arch-{cfg}-grad")
    run(args, model, tok_path, out, f"grad:{coef}" if ref.hp.n_expert else "grad")
    c_loss = float(open(os.path.join(out, "loss.txt")).read())
    c_aux = float(open(os.path.join(out, "aux.txt")).read())
    ok = (abs(c_loss - ce.item()) <= 1e-5 * max(1.0, abs(ce.item())) and
          abs(c_aux - aux.item()) <= TOL_AUX * max(abs(aux.item()), 1e-30))
    print(f"{'PASS' if ok else 'FAIL'} {cfg} loss speck {c_loss:.7f} ref {ce.item():.7f}, "
          f"aux speck {c_aux:.7f} ref {aux.item():.7f}")
    passed, failed = passed + ok, failed + (not ok)
    p, f = compare_grads(f"{cfg}", params, out)
    passed, failed = passed + p, failed + f
    for ab in ablations:
        aref = MoeRef(g.kv, g.tensors, ablate=ab)
        aparams = trainable(aref)
        arch_objective(aref, tok, coef)[2].backward()
        worst = (0.0, "")
        for name, t in aparams.items():
            gr = t.grad.numpy()
            rel = np.linalg.norm(read_dump(out, name, gr.shape) - gr) / max(np.linalg.norm(gr),
                                                                             1e-30)
            worst = max(worst, (rel, name))
        ok = worst[0] > TOL_GRAD
        print(f"{'PASS' if ok else 'FAIL'} {cfg} without the {ab} term: speck's gradients "
              f"differ from it by {worst[0]:.2e} ({worst[1]}) > {TOL_GRAD}")
        passed, failed = passed + ok, failed + (not ok)
    return passed, failed


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dump", required=True)
    ap.add_argument("--workdir", required=True)
    ap.add_argument("--moe-only", action="store_true", help="only the mixture-of-experts cases")
    ap.add_argument("--arch-only", action="store_true",
                    help="only the other families' layers (ARCH_CASES and their exports), which "
                         "the default run leaves out")
    args = ap.parse_args()
    os.makedirs(args.workdir, exist_ok=True)
    torch.set_num_threads(2)
    passed = failed = 0
    for cfg, wtype in [] if args.moe_only or args.arch_only else CASES:
        tag = f"{cfg}-{wtype}"
        model = M.make_model(cfg, os.path.join(args.workdir, tag + ".gguf"), wtype, seed=3)
        rng = np.random.default_rng(7)
        n_vocab = M.config(cfg)["n_vocab"]
        tok = rng.integers(0, n_vocab, size=(B, T + 1)).astype("<i4")
        tok_path = os.path.join(args.workdir, tag + ".i32")
        tok.tofile(tok_path)

        # ---- gradients ----
        g = G.read_gguf(model)
        ref = L.LlamaRef(g.kv, g.tensors)
        params = trainable(ref)
        loss = batch_loss(ref, tok)
        loss.backward()
        out = os.path.join(args.workdir, tag + "-grad")
        run(args, model, tok_path, out, "grad")
        c_loss = float(open(os.path.join(out, "loss.txt")).read())
        ok = abs(c_loss - loss.item()) <= 1e-5 * max(1.0, abs(loss.item()))
        print(f"{'PASS' if ok else 'FAIL'} {tag} loss speck {c_loss:.7f} ref {loss.item():.7f}")
        passed, failed = passed + ok, failed + (not ok)
        p, f = compare_grads(tag, params, out)
        passed, failed = passed + p, failed + f

        # ---- AdamW ----
        ref = L.LlamaRef(g.kv, g.tensors)
        params = trainable(ref)
        decay = [t for n, t in params.items() if t.dim() == 2 and n != "token_embd.weight"]
        no_decay = [t for n, t in params.items() if not (t.dim() == 2 and n != "token_embd.weight")]
        opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1},
                                 {"params": no_decay, "weight_decay": 0.0}],
                                lr=1e-2, betas=(0.9, 0.95), eps=1e-8)
        for step in range(ADAM_STEPS):
            opt.zero_grad()
            batch_loss(ref, tok).backward()
            torch.nn.utils.clip_grad_norm_(list(params.values()), 0.5)
            for grp in opt.param_groups:
                grp["lr"] = lr_at(step)
            opt.step()
        out = os.path.join(args.workdir, tag + "-adam")
        run(args, model, tok_path, out, f"adam:{ADAM_STEPS}")
        worst, worst_rel = 0.0, 0.0
        for name, t in params.items():
            w = t.detach().numpy()
            wc = read_dump(out, name, w.shape)
            err = float(np.abs(wc - w).max())
            moved = np.linalg.norm(w - g.tensors[name].reshape(w.shape))
            rel = float(np.linalg.norm(wc - w) / max(moved, 1e-30))
            worst, worst_rel = max(worst, err), max(worst_rel, rel)
            if not (err <= TOL_ADAM and rel <= TOL_ADAM_REL):
                print(f"FAIL {tag} adamw {name} max abs err {err:.2e} (tol {TOL_ADAM}), "
                      f"update rel err {rel:.2e} (tol {TOL_ADAM_REL})")
                failed += 1
            else:
                passed += 1
        print(f"PASS-INFO {tag} adamw {ADAM_STEPS} steps: worst max abs err {worst:.2e}, "
              f"worst update rel err {worst_rel:.2e}")
    for name, changes, coef in [] if args.arch_only else MOE_CASES:
        p, f = check_moe(args, name, changes, coef)
        passed, failed = passed + p, failed + f
    for cfg, coef, ablations in ARCH_CASES if args.arch_only else []:
        p, f = check_arch(args, cfg, coef, ablations)
        passed, failed = passed + p, failed + f
    for cfg in (["mixtral"] if args.moe_only else ARCH_EXPORT_CASES
                if args.arch_only else EXPORT_CASES):
        p, f = check_export(args, cfg)
        passed, failed = passed + p, failed + f
    print(f"{passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
