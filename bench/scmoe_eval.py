#!/usr/bin/env python3
"""SCMoE against plain greedy decoding on a mixture-of-experts model: held-out perplexity of the
continuations and pass@k on small Python function-completion problems.

1. Held-out perplexity. Prompts from modules of the code corpus the model never saw
   (bench/make_code_prompts.py: the validation split of speck train's rule, each prompt ending
   after a `def` line). Each prompt is continued by N tokens of plain greedy decoding and of
   SCMoE (`speck generate --scmoe`, no stop strings); each continuation is then scored by the
   *plain* model
   (the usual top-k routing) — the float64 reference forward of tests/reference/llama_ref.py on
   the same GGUF, so the scorer is independent of speck — as the mean negative log-likelihood of
   its tokens given the prompt. Lower means the continuation is what the model itself finds more
   likely; the paper's claim is that the contrast picks better tokens, and a large rise here would
   say the contrast drifts away from the model's distribution. Also reported: distinct-token
   ratio of the continuations (degenerate repetition shows as a low ratio).

2. pass@k. PROBLEMS below: a signature and docstring to complete, checked by running the
   completed function against asserts with python3 (a subprocess, 5 s timeout). Greedy pass@1
   for both decodings; with --k K > 1, n = --samples completions per problem sampled at --temp
   (SCMoE samples from the softmax of its contrast scores, the paper's sampling variant) and the
   unbiased pass@k estimator 1 - C(n - c, k) / C(n, k).

usage: bench/scmoe_eval.py -m models/moe.gguf [--speck build/speck] [--n-prompts 40] [-n 48]
                           [--beta 0.5 --alpha 0.1 --weak 2] [--k 1,5 --samples 10 --temp 0.8]
                           [--json OUT]
"""
from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests", "reference"))

# Small function-completion problems: (prompt, tests). The model writes the body.
PROBLEMS = [
    ('def add(a, b):\n    """Return the sum of a and b."""\n',
     "assert add(2, 3) == 5\nassert add(-1, 1) == 0"),
    ('def is_even(n):\n    """Return True if n is even."""\n',
     "assert is_even(4)\nassert not is_even(7)"),
    ('def maximum(items):\n    """Return the largest element of a non-empty list."""\n',
     "assert maximum([3, 9, 2]) == 9\nassert maximum([-5]) == -5"),
    ('def reverse_string(s):\n    """Return s reversed."""\n',
     "assert reverse_string('abc') == 'cba'\nassert reverse_string('') == ''"),
    ('def count_vowels(s):\n    """Return the number of vowels (aeiou) in s."""\n',
     "assert count_vowels('hello') == 2\nassert count_vowels('xyz') == 0"),
    ('def factorial(n):\n    """Return n! for n >= 0."""\n',
     "assert factorial(0) == 1\nassert factorial(5) == 120"),
    ('def fibonacci(n):\n    """Return the n-th Fibonacci number (fibonacci(0) == 0)."""\n',
     "assert fibonacci(0) == 0\nassert fibonacci(10) == 55"),
    ('def is_palindrome(s):\n    """Return True if s reads the same backwards."""\n',
     "assert is_palindrome('level')\nassert not is_palindrome('abc')"),
    ('def square_all(xs):\n    """Return a list of the squares of xs."""\n',
     "assert square_all([1, 2, 3]) == [1, 4, 9]\nassert square_all([]) == []"),
    ('def sum_list(xs):\n    """Return the sum of the numbers in xs."""\n',
     "assert sum_list([1, 2, 3]) == 6\nassert sum_list([]) == 0"),
    ('def first_word(s):\n    """Return the first whitespace-separated word of s."""\n',
     "assert first_word('hello world') == 'hello'\nassert first_word('one') == 'one'"),
    ('def count_items(xs, x):\n    """Return how many times x occurs in xs."""\n',
     "assert count_items([1, 2, 1], 1) == 2\nassert count_items([], 3) == 0"),
    ('def clamp(x, lo, hi):\n    """Return x limited to the range [lo, hi]."""\n',
     "assert clamp(5, 0, 3) == 3\nassert clamp(-1, 0, 3) == 0\nassert clamp(2, 0, 3) == 2"),
    ('def to_upper(s):\n    """Return s in upper case."""\n',
     "assert to_upper('abc') == 'ABC'"),
    ('def unique(xs):\n    """Return the distinct elements of xs in their first order."""\n',
     "assert unique([3, 1, 3, 2, 1]) == [3, 1, 2]"),
    ('def get_default(d, key, default=None):\n    """Return d[key] if key is in d, else default."""\n',
     "assert get_default({'a': 1}, 'a') == 1\nassert get_default({}, 'b', 7) == 7"),
    ('def join_words(words):\n    """Return the words joined by single spaces."""\n',
     "assert join_words(['a', 'b']) == 'a b'\nassert join_words([]) == ''"),
    ('def absolute(x):\n    """Return the absolute value of x."""\n',
     "assert absolute(-3) == 3\nassert absolute(2) == 2"),
    ('def last(items):\n    """Return the last element of items, or None if it is empty."""\n',
     "assert last([1, 2]) == 2\nassert last([]) is None"),
    ('def average(xs):\n    """Return the mean of the numbers in xs."""\n',
     "assert average([1, 2, 3]) == 2\nassert average([4]) == 4"),
]

STOPS = ["\ndef ", "\nclass ", "\nif __name__", "\n@", "\nimport ", "\nfrom "]


def generate(a, prompt: str, n: int, scmoe: bool, temp: float = 0.0, seed: int = 42,
             stops: bool = True) -> str:
    cmd = [a.speck, "generate", "-m", a.model, "-p", prompt, "-n", str(n), "--no-stats",
           "--ignore-eos"]
    for s in STOPS if stops else ():
        cmd += ["--stop", s]
    if temp > 0:
        cmd += ["--temp", str(temp), "--seed", str(seed)]
    if scmoe:
        cmd += ["--scmoe", "--scmoe-beta", str(a.beta), "--scmoe-alpha", str(a.alpha),
                "--scmoe-weak", str(a.weak)]
    r = subprocess.run(cmd, capture_output=True, text=True, errors="replace")
    if r.returncode:
        sys.exit(f"scmoe_eval: {' '.join(cmd[:6])} ...: {r.stderr.strip()}")
    out = r.stdout
    if out.endswith("\n"):
        out = out[:-1]  # generate ends its output with a newline
    if not out.startswith(prompt):
        sys.exit("scmoe_eval: generate did not echo the prompt")
    return out[len(prompt):]


def tokenize(a, text: str) -> list[int]:
    r = subprocess.run([a.speck, "tokenize", "-m", a.model, "--ids", text], capture_output=True,
                       text=True, errors="replace")
    if r.returncode:
        sys.exit(f"scmoe_eval: tokenize: {r.stderr.strip()}")
    return [int(t) for t in r.stdout.replace(",", " ").split()]


def body_of(completion: str) -> str:
    """The function body: lines up to the first non-empty line that is not indented."""
    keep = []
    for line in completion.split("\n"):
        if line.strip() and not line.startswith((" ", "\t")):
            break
        keep.append(line)
    return "\n".join(keep)


def passes(prompt: str, completion: str, tests: str) -> bool:
    src = prompt + body_of(completion) + "\n\n" + tests + "\n"
    with tempfile.NamedTemporaryFile("w", suffix=".py", delete=False) as f:
        f.write(src)
        path = f.name
    try:
        r = subprocess.run([sys.executable, path], capture_output=True, timeout=5)
        return r.returncode == 0
    except subprocess.TimeoutExpired:
        return False
    finally:
        os.unlink(path)


def pass_at_k(n: int, c: int, k: int) -> float:
    if n - c < k:
        return 1.0
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-m", "--model", required=True)
    ap.add_argument("--speck", default=os.path.join(HERE, "..", "build", "speck"))
    ap.add_argument("--n-prompts", type=int, default=40, help="held-out prompts")
    ap.add_argument("-n", type=int, default=48, help="tokens per continuation")
    ap.add_argument("--beta", type=float, default=0.5)
    ap.add_argument("--alpha", type=float, default=0.1)
    ap.add_argument("--weak", type=int, default=2)
    ap.add_argument("--k", default="1", help="comma list of k for pass@k (k > 1 samples)")
    ap.add_argument("--samples", type=int, default=10, help="samples per problem for k > 1")
    ap.add_argument("--temp", type=float, default=0.8)
    ap.add_argument("--data", default="/usr/lib/python3.11", help="the corpus (held-out split)")
    ap.add_argument("--json", help="write the results here")
    a = ap.parse_args()
    t0 = time.time()
    res = {"model": a.model, "beta": a.beta, "alpha": a.alpha, "weak_rank": a.weak, "n": a.n}

    # 1. Held-out perplexity of the continuations under the plain model.
    import numpy as np
    import torch
    from llama_ref import LlamaRef
    ref = LlamaRef.from_file(a.model)
    r = subprocess.run([sys.executable, os.path.join(HERE, "make_code_prompts.py"), "--data",
                        a.data, "-n", str(a.n_prompts)], capture_output=True, text=True)
    prompts = [json.loads(l) for l in r.stdout.splitlines() if l.strip()]
    if not prompts:
        sys.exit(f"scmoe_eval: no held-out prompts from {a.data}: {r.stderr.strip()}")
    nll = {"greedy": [], "scmoe": []}
    distinct = {"greedy": [], "scmoe": []}
    same = 0
    for i, p in enumerate(prompts):
        pid = tokenize(a, p)
        conts = {}
        for mode in ("greedy", "scmoe"):
            cont = generate(a, p, a.n, mode == "scmoe", stops=False)  # n tokens, whatever
            conts[mode] = cont
            ids = tokenize(a, p + cont)
            k0 = len(pid) if ids[:len(pid)] == pid else len(pid) - 1  # a merge across the seam
            if len(ids) <= k0:
                continue
            with torch.no_grad():
                lg = ref.forward(ids).numpy()
            lp = lg - lg.max(-1, keepdims=True)
            lp = lp - np.log(np.exp(lp).sum(-1, keepdims=True))
            tok_nll = [-lp[t - 1, ids[t]] for t in range(k0, len(ids))]
            nll[mode].append(float(np.mean(tok_nll)))
            cid = ids[k0:]
            distinct[mode].append(len(set(cid)) / len(cid))
        same += conts["greedy"] == conts["scmoe"]
        print(f"\rheld-out prompt {i + 1}/{len(prompts)}", end="", file=sys.stderr)
    print(file=sys.stderr)
    for mode in ("greedy", "scmoe"):
        m = float(np.mean(nll[mode]))
        res[f"heldout_{mode}"] = {"prompts": len(nll[mode]), "mean_nll": m, "ppl": math.exp(m),
                                  "distinct": float(np.mean(distinct[mode]))}
    res["heldout_identical"] = same
    res["heldout_prompts"] = len(prompts)

    # 2. pass@k on the function-completion problems.
    ks = [int(k) for k in a.k.split(",")]
    for mode in ("greedy", "scmoe"):
        ok = [passes(pr, generate(a, pr, 96, mode == "scmoe"), te) for pr, te in PROBLEMS]
        res[f"pass@1_greedy_{mode}"] = sum(ok) / len(ok)
        if any(k > 1 for k in ks):
            counts = []
            for j, (pr, te) in enumerate(PROBLEMS):
                counts.append(sum(passes(pr, generate(a, pr, 96, mode == "scmoe", a.temp,
                                                      1000 + s), te)
                                  for s in range(a.samples)))
            for k in ks:
                if k <= a.samples:
                    res[f"pass@{k}_t{a.temp}_{mode}"] = float(np.mean(
                        [pass_at_k(a.samples, c, k) for c in counts]))
    res["seconds"] = round(time.time() - t0, 1)
    print(json.dumps(res, indent=1))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(res, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
