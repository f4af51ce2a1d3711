#!/usr/bin/python3
"""speck against llama.cpp on the identical files, for every architecture speck runs.

1. Logits: tests/reference/make_model.py's tiny random-weight models (one config per feature,
   f32 weights and KV cache), one 40-token causal prefill in speck (tests/forward_dump), in
   llama.cpp (bench/llamacpp_logits.c, built against a llama.cpp tree) and in the float64
   PyTorch reference: max |difference| / max(1, max|reference logit|) for each pair. The 40
   tokens cross the configs' 8-position windows.
2. Greedy text: `speck init` presets (random weights), `speck generate` vs `llama-simple`, same
   prompt, 48 tokens.

Usage: bench/crosscheck_llamacpp.py --speck build/speck --dump build/tests/forward_dump
           --logits /tmp/llamacpp_logits --llama-bin /tmp/llama.cpp/build/bin [--presets a,b]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests",
                                "reference"))
import gguf_io as G  # noqa: E402
import llama_ref as L  # noqa: E402
import make_model as M  # noqa: E402

# Configs and what differs between the programs by design (empty: nothing).
CONFIGS = {
    "gqa": "",
    "qwen2": "",
    "qwen3": "",
    # make_model's gemma2 sets attention.scale (query_pre_attn_scalar 24), a key llama.cpp's
    # gemma2 does not read: compared with the default scale instead.
    "gemma2-defscale": "",
    "gemma3": "",
    "phi3": "",
    "phi3long": "",
    "mistral": "llama.cpp's llama architecture ignores llama.attention.sliding_window",
    "mixtral": "",
    "qwen2moe": "",
    "qwen3moe": "",
    "olmoe": "",
}


def config(name: str) -> dict:
    if name == "gemma2-defscale":
        c = M.config("gemma2")
        c["attn_scale"] = None
        c["name"] = name
        return c
    return M.config(name)


def logits_table(a, work: str) -> None:
    rng = np.random.default_rng(11)
    toks = rng.integers(0, 256, 40).tolist()
    arg = ",".join(map(str, toks))
    print("| config | speck vs reference | llama.cpp vs reference | speck vs llama.cpp | "
          "greedy argmax rows equal (speck, llama.cpp) | note |")
    print("| --- | ---: | ---: | ---: | ---: | --- |")
    for name, note in CONFIGS.items():
        if a.configs and name not in a.configs.split(","):
            continue
        c = config(name)
        path = os.path.join(work, name + ".gguf")
        kv, tensors = M.build(c, "f32", 1)
        # llama.cpp sets token attributes by model name, expecting Phi-3's special tokens in
        # any model named "phi3": not in these byte vocabularies.
        kv = [(k, t, v.replace("phi3", "p3") if k == "general.name" else v) for k, t, v in kv]
        G.write_gguf(path, kv, tensors)
        g = G.read_gguf(path)
        ref = L.LlamaRef(g.kv, g.tensors)
        ref.long_rope = M.longrope_long(c)
        r = ref.forward(toks).numpy()
        scale = max(1.0, float(np.abs(r).max()))
        outs = {}
        for who, cmd in (("speck", [a.dump, path, "prefill", path + ".s.f32", arg]),
                         ("llama.cpp", [a.logits, path, "prefill", path + ".l.f32", arg,
                                        str(M.DUMP_CTX)])):
            p = subprocess.run(cmd, capture_output=True, text=True,
                               env=dict(os.environ, LD_LIBRARY_PATH=a.llama_bin))
            if p.returncode:
                raise SystemExit(f"{who} failed on {name}: {p.stderr[-400:]}")
            outs[who] = np.fromfile(cmd[3], dtype="<f4").reshape(r.shape).astype(np.float64)
        s, ll = outs["speck"], outs["llama.cpp"]
        same = int((s.argmax(1) == ll.argmax(1)).sum())
        if note and c["window"]:  # where the window never matters, the programs must agree
            w = c["window"] or len(toks)
            note += f" (rows before the window: {np.abs(s[:w] - ll[:w]).max() / scale:.1e})"
        print(f"| {name} | {np.abs(s - r).max() / scale:.1e} | {np.abs(ll - r).max() / scale:.1e} "
              f"| {np.abs(s - ll).max() / scale:.1e} | {same} / {len(toks)} | {note} |",
              flush=True)


def greedy_table(a, work: str) -> None:
    prompt = "The quick brown fox jumps over the lazy dog"
    print("\n| preset | type | speck == llama.cpp (48 greedy tokens) |")
    print("| --- | --- | --- |")
    for preset in a.presets.split(","):
        name, _, wtype = preset.partition(":")
        path = os.path.join(work, f"{name}-{wtype or 'f32'}.gguf")
        subprocess.run([a.speck, "init", "--preset", name, "--type", wtype or "f32", "-o", path],
                       check=True, capture_output=True)
        s = subprocess.run([a.speck, "generate", "-m", path, "-p", prompt, "-n", "48",
                            "--kv-type", "f32"], capture_output=True).stdout
        env = dict(os.environ, LD_LIBRARY_PATH=a.llama_bin)
        ll = subprocess.run([os.path.join(a.llama_bin, "llama-simple"), "-m", path, "-n", "48",
                             prompt], capture_output=True, env=env).stdout
        same = s.strip() == ll.strip()
        print(f"| {name} | {wtype or 'f32'} | {'identical' if same else 'DIFFER'} |", flush=True)
        if not same:
            print(f"  speck:     {s.strip()!r}\n  llama.cpp: {ll.strip()!r}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--speck", required=True)
    ap.add_argument("--dump", required=True)
    ap.add_argument("--logits", required=True, help="bench/llamacpp_logits.c, built")
    ap.add_argument("--llama-bin", required=True)
    ap.add_argument("--presets", default="tiny,tiny-qwen2,tiny-qwen3,tiny-gemma2,tiny-gemma3,"
                                          "tiny-phi3,tiny-mistral,tiny-mixtral,tiny-qwen2moe,"
                                          "tiny-qwen3moe,tiny-olmoe")
    ap.add_argument("--configs", default="", help="only these logits configs (default: all)")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as work:
        logits_table(a, work)
        greedy_table(a, work)
    return 0


if __name__ == "__main__":
    sys.exit(main())
