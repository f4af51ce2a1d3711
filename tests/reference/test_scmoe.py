#!/usr/bin/python3
"""SCMoE (self-contrast decoding of a mixture of experts) against the float64 reference.

For make_model.py's mixtures of experts (f32 weights), speck's scmoe_dump runs a prompt and then
greedy steps on the contrast scores; for the prompt and every step this recomputes, with
llama_ref.py, the strong logits (the usual top-k routing), the weak logits (rank-k routing: only
the expert the router ranks weak_rank-th, weighted as the family weighs one chosen expert) and
the scores of Shi et al. 2024 from those reference logits:

    score(v) = (1 + beta) z_strong(v) - beta z_weak(v)   if p_strong(v) >= alpha max p_strong
               -inf                                      otherwise

Tolerances. The logits: within 1e-4 x scale (scale = max(1, max |reference logit|)), the bound of
forward_reference for f32 weights (speck's f32 arithmetic against float64 over these tiny
models: ~1e-6). The scores: (1 + 2 beta) times that (each score mixes two logits). The mask: the
same tokens kept, except a token within that tolerance of the cut-off. The chosen token: the
reference's argmax, unless the reference's best two scores are within twice the score tolerance.
The reference follows speck's chosen tokens, so one near-tie cannot cascade.

It also checks, through the CLI: beta = 0 gives output token-identical to plain greedy decoding;
--scmoe on a dense model and a weak rank beyond the experts fail with clear messages; and that the
contrast does something (over the configs, some step's scores pick another token than the strong
logits alone).
"""

from __future__ import annotations

import argparse
import math
import os
import subprocess
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import make_model as MM  # noqa: E402
from llama_ref import LlamaRef  # noqa: E402

CONFIGS = ("mixtral", "qwen2moe", "olmoe", "qwen3moe")
TOL = 1e-4
STEPS = 6


def ref_scores(zs: np.ndarray, zw: np.ndarray, alpha: float, beta: float) -> np.ndarray:
    ps = np.exp(zs - zs.max())  # unnormalised: the mask compares to the max only
    out = (1 + beta) * zs - beta * zw
    return np.where(ps >= alpha * ps.max(), out, -np.inf)


def run_case(dump: str, path: str, prompt: list[int], alpha: float, beta: float, rank: int,
             steps: int, work: str, tag: str) -> tuple[list[str], int]:
    """Failures, and how many steps the contrast changed the choice."""
    out = os.path.join(work, tag + ".f32")
    r = subprocess.run([dump, path, out, ",".join(map(str, prompt)), str(alpha), str(beta),
                        str(rank), str(steps)], capture_output=True, text=True)
    if r.returncode:
        return [f"{tag}: scmoe_dump failed: {r.stderr.strip()}"], 0
    chosen = [int(t) for t in r.stdout.strip().split(",")]
    strong, weak = LlamaRef.from_file(path), LlamaRef.from_file(path)
    weak.weak_rank = rank
    V = strong.hp.n_vocab
    got = np.fromfile(out, dtype="<f4").reshape(steps + 1, 3, V).astype(np.float64)
    fails, changed = [], 0
    # One causal forward over the whole sequence speck chose gives every step's row (the reference
    # follows speck's tokens, so one near-tie cannot cascade).
    seq = list(prompt) + chosen[:-1]
    all_s, all_w = strong.forward(seq).numpy(), weak.forward(seq).numpy()
    for i in range(steps + 1):
        zs, zw = all_s[len(prompt) - 1 + i], all_w[len(prompt) - 1 + i]
        scale = max(1.0, float(np.abs(zs).max()), float(np.abs(zw).max()))
        tol = TOL * scale
        for what, ref, mine in (("strong", zs, got[i, 0]), ("weak", zw, got[i, 1])):
            err = float(np.abs(ref - mine).max())
            if err > tol:
                fails.append(f"{tag} step {i}: {what} logits off by {err:.3g} > {tol:.3g}")
        rs = ref_scores(zs, zw, alpha, beta)
        ms = got[i, 2]
        stol = (1 + 2 * beta) * tol
        cut = zs.max() + math.log(alpha)
        near = np.abs(zs - cut) <= tol  # a token this close to the cut-off may fall either side
        kept_r, kept_m = np.isfinite(rs), np.isfinite(ms)
        if ((kept_r != kept_m) & ~near).any():
            fails.append(f"{tag} step {i}: mask differs at tokens "
                         f"{np.nonzero((kept_r != kept_m) & ~near)[0][:8].tolist()}")
        both = kept_r & kept_m
        err = float(np.abs(rs[both] - ms[both]).max())
        if err > stol:
            fails.append(f"{tag} step {i}: scores off by {err:.3g} > {stol:.3g}")
        order = np.sort(rs[kept_r])[::-1]
        tie = len(order) > 1 and order[0] - order[1] <= 2 * stol
        if chosen[i] != int(np.argmax(rs)) and not tie:
            fails.append(f"{tag} step {i}: chose {chosen[i]}, reference {int(np.argmax(rs))}")
        changed += int(np.argmax(rs)) != int(np.argmax(zs))
    return fails, changed


def cli(speck: str, *args) -> subprocess.CompletedProcess:
    return subprocess.run([speck, *args], capture_output=True, text=True, errors="replace")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dump", required=True, help="tests' scmoe_dump binary")
    ap.add_argument("--speck", required=True, help="the speck CLI")
    ap.add_argument("--workdir", required=True)
    a = ap.parse_args(argv)
    os.makedirs(a.workdir, exist_ok=True)
    rng = np.random.default_rng(7)
    fails, changed, cases = [], 0, 0
    for cfg in CONFIGS:
        path = MM.make_model(cfg, os.path.join(a.workdir, cfg + ".gguf"), "f32", 3)
        V = MM.config(cfg)["n_vocab"]
        n_exp = MM.config(cfg)["n_expert"]
        # A 5-token prompt (both paths in one pass from the start) and a 20-token one (the
        # prompt's two passes, then joint steps); the paper's defaults, top-1 as the weak path
        # with a stronger contrast and a looser mask, the lowest rank with a tighter mask.
        for prompt_len, alpha, beta, rank in ((5, 0.1, 0.5, 2), (20, 0.05, 1.0, 1),
                                              (5, 0.5, 0.3, n_exp)):
            prompt = rng.integers(1, V, prompt_len).tolist()
            tag = f"{cfg}-p{prompt_len}-a{alpha}-b{beta}-r{rank}"
            f, c = run_case(a.dump, path, prompt, alpha, beta, rank, STEPS, a.workdir, tag)
            fails += f
            changed += c
            cases += 1
            print(f"{tag}: {'ok' if not f else 'FAIL'} ({c} of {STEPS + 1} choices moved by the contrast)")
        # beta = 0: plain greedy decoding, token for token.
        ids = ",".join(map(str, rng.integers(1, V, 6).tolist()))
        plain = cli(a.speck, "generate", "-m", path, "--ids", ids, "-n", "24", "--no-stats")
        zero = cli(a.speck, "generate", "-m", path, "--ids", ids, "-n", "24", "--no-stats",
                   "--scmoe", "--scmoe-beta", "0")
        if plain.returncode or zero.returncode or plain.stdout != zero.stdout:
            fails.append(f"{cfg}: --scmoe-beta 0 differs from plain greedy decoding:\n"
                         f"  plain {plain.stdout.strip()!r}\n  scmoe {zero.stdout.strip()!r} "
                         f"{zero.stderr.strip()}")
        bad = cli(a.speck, "generate", "-m", path, "--ids", ids, "-n", "2", "--scmoe-weak",
                  str(n_exp + 1))
        if bad.returncode == 0 or f"outside 1..{n_exp}" not in bad.stderr:
            fails.append(f"{cfg}: weak rank {n_exp + 1} not refused clearly: {bad.stderr!r}")
    dense = MM.make_model("gqa", os.path.join(a.workdir, "dense.gguf"), "f32", 3)
    r = cli(a.speck, "generate", "-m", dense, "--ids", "1,2,3", "-n", "2", "--scmoe")
    if r.returncode == 0 or "dense model" not in r.stderr:
        fails.append(f"--scmoe on a dense model not refused clearly: {r.stderr!r}")
    r = cli(a.speck, "bench-decode", "-m", dense, "--prompts", "/dev/null", "--scmoe")
    if r.returncode == 0:
        fails.append("bench-decode --scmoe on a dense model did not fail")
    # A test of the contrast needs the contrast to matter somewhere.
    if changed == 0:
        fails.append("the contrast never changed a choice: these models cannot tell SCMoE from "
                     "greedy decoding")
    for f in fails:
        print("FAIL:", f)
    print(f"{cases} cases, {changed} choices moved by the contrast; "
          f"{'all ok' if not fails else f'{len(fails)} failures'}")
    return 1 if fails else 0


if __name__ == "__main__":
    sys.exit(main())
