#!/usr/bin/env python3
"""Prompts from the held-out modules of the default code model's corpus, for bench-decode.

speck train puts a file in the validation split when an FNV-1a hash of its path relative to
--data falls below --val-fraction (src/train/data.c, is_val); this script applies the same rule,
so the prompts come from modules the model never saw.

Without --categories each prompt is a window of whole lines that ends just after a `def` line,
the natural place to ask for a completion (a JSON string per line). With --categories, n prompts
of each of the task categories Spec-Bench reports, as {"prompt", "category"} objects
(`speck bench-decode --category` reports each):
  completion  the window above;
  editing     a whole function, then a request to repeat it with one identifier renamed, and
              the renamed `def` line: the answer copies most of the prompt with a small change;
  docstring   the lines above a function, its `def` line and docstring: the body is the answer;
  multiturn   a ChatML conversation whose first answer is a held-out function and whose last
              question asks for it again: the answer quotes an earlier turn.

usage: bench/make_code_prompts.py [--data /usr/lib/python3.11] [--val-fraction 0.05] [-n 40]
                                  [--categories] > p.jsonl
"""
import argparse
import builtins
import fnmatch
import json
import keyword
import os
import re

M64 = (1 << 64) - 1


def is_val(rel, frac):
    h = 0xCBF29CE484222325
    for b in rel.encode():
        h = ((h ^ b) * 0x100000001B3) & M64
    h ^= h >> 29
    return (h % 1000000) < frac * 1e6


def files(root, glob):
    out = []
    for d, dirs, fs in os.walk(root):
        dirs[:] = sorted(x for x in dirs if not x.startswith("."))
        for f in fs:
            if f.startswith(".") or not fnmatch.fnmatch(f, glob):
                continue
            out.append(os.path.relpath(os.path.join(d, f), root))
    return sorted(out)


def held_out(a):
    """(path, lines) of each held-out module, in a fixed order."""
    for rel in files(a.data, a.glob):
        if is_val(rel, a.val_fraction):
            with open(os.path.join(a.data, rel), encoding="utf-8", errors="replace") as f:
                yield rel, f.read().split("\n")


def functions(lines):
    """(start, end, indent) of each `def` whose body is 3..40 lines: end is exclusive, after
    trailing blank lines are dropped."""
    out = []
    for i, l in enumerate(lines):
        m = re.match(r"( *)def \w+\(", l)
        if not m:
            continue
        ind = len(m.group(1))
        j = i + 1
        while j < len(lines) and (not lines[j].strip() or
                                  len(lines[j]) - len(lines[j].lstrip()) > ind):
            j += 1
        while j > i + 1 and not lines[j - 1].strip():
            j -= 1
        if 4 <= j - i <= 41:
            out.append((i, j, ind))
    return out


def docstring_end(lines, i, end):
    """Index just after the docstring that opens the function at line i, or None."""
    k = i + 1
    while k < end and lines[k - 1].rstrip().endswith(("(", ",")):  # a def over several lines
        k += 1
    if k >= end:
        return None
    body = lines[k].strip()
    q = body[:3]
    if q not in ('"""', "'''"):
        return None
    if body.count(q) >= 2 and len(body) > 3:
        return k + 1
    for e in range(k + 1, end):
        if q in lines[e]:
            return e + 1
    return None


def rename(func_lines):
    """A (old, new) pair: a local name used at least three times in the function, and a new
    name for it; None when there is none."""
    text = "\n".join(func_lines[1:])
    words = re.findall(r"\b[a-z_][a-z0-9_]{2,}\b", text)
    kw = set(keyword.kwlist) | {"self", "cls", "None", "True", "False"} | set(dir(builtins))
    counts = {}
    for w in words:
        if w not in kw:
            counts[w] = counts.get(w, 0) + 1
    cands = sorted((c, w) for w, c in counts.items() if c >= 3)
    if not cands:
        return None
    old = cands[-1][1]
    return old, old + "_value" if not old.endswith("value") else old + "2"


def categories(modules, n, context, max_func):
    """Up to n prompts per category, each module giving at most one of each. Editing and
    multi-turn prompts repeat a function of at most max_func characters, so that prompt and
    answer fit the default model's 256-token context."""
    got = {c: [] for c in ("completion", "editing", "docstring", "multiturn")}
    for rel, lines in modules:
        funcs = functions(lines)
        if len(funcs) < 2:
            continue
        i = funcs[1][0]
        if len(got["completion"]) < n:
            got["completion"].append("\n".join(lines[max(0, i - context):i + 1]) + "\n")
        for fi, fe, find in funcs:
            d = docstring_end(lines, fi, fe)
            if d and d < fe and len(got["docstring"]) < n:
                lo = max(0, fi - context // 2)
                text = "\n".join(lines[lo:d]) + "\n"
                if len(text) <= 2 * max_func:  # a docstring that fills the context is no prompt
                    got["docstring"].append(text)
                    break
        # Editing and multi-turn take the module's first function with a name to rename, as
        # top-level code (methods dedented).
        for fi, fe, find in funcs:
            func = [l[find:] for l in lines[fi:fe]]
            r = rename(func)
            if not r or len("\n".join(func)) > max_func:
                continue
            old, new = r
            src = "\n".join(func)
            if len(got["editing"]) < n:
                head = re.sub(r"\b%s\b" % old, new, func[0])
                got["editing"].append(src + "\n\n\n# The same function with `%s` renamed to "
                                      "`%s`:\n%s\n" % (old, new, head))
            if len(got["multiturn"]) < n:
                name = re.match(r"def (\w+)", func[0]).group(1)
                got["multiturn"].append(
                    "<|im_start|>user\nWrite the function `%s` from %s.<|im_end|>\n"
                    "<|im_start|>assistant\n```python\n%s\n```<|im_end|>\n"
                    "<|im_start|>user\nShow it again, unchanged.<|im_end|>\n"
                    "<|im_start|>assistant\n```python\n" % (name, rel, src))
            break
        if all(len(v) >= n for v in got.values()):
            break
    for cat, ps in got.items():
        for p in ps:
            yield cat, p


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default="/usr/lib/python3.11")
    ap.add_argument("--glob", default="*.py")
    ap.add_argument("--val-fraction", type=float, default=0.05)
    ap.add_argument("-n", type=int, default=40)
    ap.add_argument("--context-lines", type=int, default=12)
    ap.add_argument("--max-func-chars", type=int, default=320,
                    help="longest function the editing and multiturn prompts repeat")
    ap.add_argument("--categories", action="store_true",
                    help="n prompts of each task category, as {prompt, category} objects")
    a = ap.parse_args()
    if a.categories:
        for cat, prompt in categories(held_out(a), a.n, a.context_lines, a.max_func_chars):
            print(json.dumps({"prompt": prompt, "category": cat}))
        return
    prompts = []
    for rel, lines in held_out(a):
        defs = [i for i, l in enumerate(lines) if l.lstrip().startswith("def ")]
        for i in defs[1:3]:  # a couple per module, spread over modules
            lo = max(0, i - a.context_lines)
            prompts.append("\n".join(lines[lo:i + 1]) + "\n")
        if len(prompts) >= a.n:
            break
    for p in prompts[: a.n]:
        print(json.dumps(p))


if __name__ == "__main__":
    main()
