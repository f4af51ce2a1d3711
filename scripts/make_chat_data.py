#!/usr/bin/env python3
"""Chat fine-tuning data from Debian-shipped Python sources (docstring -> function).

Walks the corpus the default code model was trained on (libpython3.11-stdlib, /usr/lib/python3.11,
every *.py file as `speck train --data DIR --glob '*.py'` lists them) and turns every documented
function or method into one exchange:

    user:      a request built from the docstring's first sentence and the function's name
               (six phrasings, chosen by a hash of the function's place, so reruns are identical)
    assistant: the function's source (decorators included, dedented), with its docstring cut to
               that first sentence

Why keep a one-line docstring in the answer: the base model learned code as "def, docstring,
body"; an answer in that shape restates the request where the body can attend to it, and costs a
line, where the full docstring (often longer than the code) would eat the 256-token context.

Split: the modules the default model held out of its own training (`--val-fraction 0.05`:
a hash of the path relative to the corpus, as src/train/data.c computes it) give the validation
set; every other module gives the training set. So validation functions were seen neither by the
code model nor by the chat fine-tuning. Answers that also occur in the training set (copied
functions) are dropped from validation.

usage: scripts/make_chat_data.py [--corpus DIR] [--out-dir DIR] [--max-chars N]
writes OUT_DIR/chat_train.jsonl and OUT_DIR/chat_valid.jsonl, one {"messages": [...]} per line.
Plain Python 3 standard library only.
"""

import argparse
import ast
import hashlib
import json
import os
import re
import sys
import textwrap

MASK64 = (1 << 64) - 1


def fnv1a(data: bytes) -> int:
    h = 0xCBF29CE484222325
    for b in data:
        h = ((h ^ b) * 0x100000001B3) & MASK64
    return h


def default_model_holds_out(rel: str, frac: float = 0.05) -> bool:
    """src/train/data.c is_val(): the default model's validation modules."""
    h = fnv1a(rel.encode())
    h ^= h >> 29
    return (h % 1000000) < frac * 1e6


def list_files(root: str):
    """Regular *.py files under root, hidden entries skipped, symlinks followed, sorted by path
    (speck train's walk)."""
    out = []

    def walk(rel: str, depth: int):
        path = os.path.join(root, rel) if rel else root
        try:
            names = os.listdir(path)
        except OSError:
            return
        for name in names:
            if name.startswith("."):
                continue
            sub = f"{rel}/{name}" if rel else name
            full = os.path.join(root, sub)
            try:
                st = os.stat(full)
            except OSError:
                continue
            if os.path.isdir(full):
                if depth < 32:
                    walk(sub, depth + 1)
            elif os.path.isfile(full) and name.endswith(".py"):
                out.append(sub)

    walk("", 0)
    return sorted(out, key=lambda s: s.encode())


SENTENCE_END = re.compile(r"(?<=[a-z0-9)\]`'\"])\.(\s|$)")


def first_sentence(doc: str):
    """The docstring's first sentence, on one line, or None when it does not read as a request
    (too short or long, a C-style signature line, doctest, markup)."""
    para = doc.strip().split("\n\n")[0]
    para = " ".join(line.strip() for line in para.splitlines())
    m = SENTENCE_END.search(para)
    s = para[: m.start() + 1] if m else para
    s = s.strip()
    if not (20 <= len(s) <= 160):
        return None
    if re.match(r"^[\w.]+\(.*\)", s) or ">>>" in s or "\\" in s or '"""' in s:
        return None
    if s.endswith(":") or s.lower().startswith(("deprecated", "xxx", "todo", "internal")):
        return None
    if not s[0].isalpha():
        return None
    if not s.endswith((".", "?", "!")):
        s += "."
    return s[0].upper() + s[1:]


FUNC_PHRASES = [
    "Write a Python function `{name}({args})`. {s}",
    "Implement `{name}` in Python. {s}",
    "{s} Write it as a Python function named `{name}`.",
    "Write a function called {name}: {s}",
    "Can you write a Python function `{name}`? {s}",
    "Python: {s} Please implement it as `{name}({args})`.",
]
METHOD_PHRASES = [
    "Write the method `{cls}.{name}({args})`. {s}",
    "Implement the `{name}` method of a `{cls}` class in Python. {s}",
    "{s} Write it as the method `{name}` of class `{cls}`.",
    "Write a method called {name} for the class {cls}: {s}",
    "Can you write `{cls}.{name}` in Python? {s}",
    "Python: {s} Please implement it as the method `{name}({args})`.",
]


def pick(options, key: str) -> str:
    return options[int(hashlib.sha256(key.encode()).hexdigest(), 16) % len(options)]


def request(key: str, cls, name: str, args: str, s: str) -> str:
    if cls:
        return pick(METHOD_PHRASES, key).format(cls=cls, name=name, args=args, s=s)
    return pick(FUNC_PHRASES, key).format(name=name, args=args, s=s)


def rename(examples, fraction: float, max_chars: int):
    """Give `fraction` of the examples (chosen by hash) another training function's name, in the
    request and on the answer's def line. The code model saw every training function in
    pretraining and may recall its name from the description instead of copying it from the
    request: with the names shuffled, copying is the only way to the right def line. Tried on
    2026-12-07 (fraction 0.5, otherwise the shipped run): it did not help — 1 of the 44
    validation answers used the requested name (shipped model: 2), 33 parsed (36), validation
    loss 2.789 (2.779) — so the default is 0 (docs/adaptation.md, "The chat model")."""
    names = [ex[3][1] for ex in examples]
    out = []
    for i, (key, req, ans, (cls, name, args, s)) in enumerate(examples):
        h = int(hashlib.sha256(("rename:" + key).encode()).hexdigest(), 16)
        if (h % 1000) >= fraction * 1000:
            out.append((key, req, ans))
            continue
        for k in range(1, 50):
            new = names[(i + len(names) // 2 + k * 7919) % len(names)]
            if new != name and not re.search(rf"\b{re.escape(new)}\b", ans):
                break
        else:
            out.append((key, req, ans))
            continue
        ans2 = re.sub(rf"^(\s*(?:async\s+)?def\s+){re.escape(name)}\b", rf"\g<1>{new}", ans,
                      count=1, flags=re.M)
        req2 = request(key, cls, new, args, s)
        if ans2 == ans or len(req2) + len(ans2) > max_chars:
            out.append((key, req, ans))
        else:
            out.append((key, req2, ans2))
    return out


def is_trivial(body) -> bool:
    """Only pass / ... / raise NotImplementedError after the docstring: nothing to learn."""
    rest = body[1:]
    if not rest:
        return True
    if len(rest) == 1:
        st = rest[0]
        if isinstance(st, ast.Pass):
            return True
        if isinstance(st, ast.Expr) and isinstance(st.value, ast.Constant):
            return True
        if isinstance(st, ast.Raise) and "NotImplementedError" in ast.dump(st):
            return True
    return False


def function_answer(lines, node, summary: str):
    """The function's source with the docstring replaced by a one-line summary, dedented, or
    None when it cannot be cut cleanly (the docstring shares a line with other code)."""
    doc = node.body[0]
    start = min([node.lineno] + [d.lineno for d in node.decorator_list])
    if doc.lineno <= node.lineno or (len(node.body) > 1 and node.body[1].lineno <= doc.end_lineno):
        return None
    indent = re.match(r"\s*", lines[doc.lineno - 1]).group(0)
    src = (lines[start - 1 : doc.lineno - 1] + [f'{indent}"""{summary}"""\n']
           + lines[doc.end_lineno : node.end_lineno])
    text = textwrap.dedent("".join(src)).rstrip() + "\n"
    try:
        ast.parse(text)
    except SyntaxError:
        return None
    return text


def examples_of(root: str, rel: str, max_chars: int):
    path = os.path.join(root, rel)
    try:
        with open(path, encoding="utf-8") as f:
            src = f.read()
        tree = ast.parse(src)
    except (SyntaxError, UnicodeDecodeError, ValueError):
        return []
    lines = src.splitlines(keepends=True)
    out = []

    def visit(node, cls):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.ClassDef) and cls is None:
                visit(child, child.name)
            elif isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                name = child.name
                if name.startswith("_"):
                    continue
                doc = ast.get_docstring(child, clean=True)
                if not doc or is_trivial(child.body):
                    continue
                s = first_sentence(doc)
                if not s:
                    continue
                answer = function_answer(lines, child, s)
                if not answer:
                    continue
                args = ast.unparse(child.args)
                key = f"{rel}:{cls or ''}.{name}"
                req = request(key, cls, name, args, s)
                if len(req) + len(answer) > max_chars:
                    continue
                out.append((key, req, answer, (cls, name, args, s)))

    visit(tree, None)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--corpus", default="/usr/lib/python3.11")
    ap.add_argument("--out-dir", default=".")
    # request + answer: ~200 tokens of the default model's vocabulary (these exchanges average ~3
    # characters a token), leaving the rest of its 256-token context to the chat markup.
    ap.add_argument("--max-chars", type=int, default=600)
    ap.add_argument("--rename-fraction", type=float, default=0.0,
                    help="share of training exchanges given another function's name (rename())")
    a = ap.parse_args()
    if not os.path.isdir(a.corpus):
        sys.exit(f"make_chat_data.py: {a.corpus}: no such directory (scripts/deps.sh --train)")
    files = list_files(a.corpus)
    train, valid = [], []
    n_val_files = 0
    for rel in files:
        held = default_model_holds_out(rel)
        n_val_files += held
        (valid if held else train).extend(examples_of(a.corpus, rel, a.max_chars))
    # One copy of each answer; an answer seen in training is not a held-out one.
    seen, tr = set(), []
    for ex in train:
        if ex[2] not in seen:
            seen.add(ex[2])
            tr.append(ex)
    va = []
    for ex in valid:
        if ex[2] not in seen:
            seen.add(ex[2])
            va.append(ex)
    # Training examples in a fixed pseudo-random order (not grouped by module).
    tr.sort(key=lambda ex: hashlib.sha256(ex[0].encode()).hexdigest())
    tr = rename(tr, a.rename_fraction, a.max_chars)
    va = [ex[:3] for ex in va]
    os.makedirs(a.out_dir, exist_ok=True)
    for name, exs in (("chat_train.jsonl", tr), ("chat_valid.jsonl", va)):
        path = os.path.join(a.out_dir, name)
        tmp = path + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            for _, req, ans in exs:
                msgs = [{"role": "user", "content": req}, {"role": "assistant", "content": ans}]
                f.write(json.dumps({"messages": msgs}, ensure_ascii=False) + "\n")
        os.replace(tmp, path)
    print(f"{len(files)} files ({n_val_files} held out by the default model): "
          f"{len(tr)} training and {len(va)} validation exchanges "
          f"({sum(len(r) + len(x) for _, r, x in tr)} and {sum(len(r) + len(x) for _, r, x in va)} "
          f"characters) in {a.out_dir}")


if __name__ == "__main__":
    main()
