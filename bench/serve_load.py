#!/usr/bin/env python3
"""Load test of an OpenAI-compatible server (speck serve, or llama-server on the same file):
N concurrent clients, each sending streamed /v1/completions requests back to back for a fixed
time; reports aggregate generated tokens/s, time to first token p50/p99, inter-token latency
p50/p99 and errors per concurrency level. Loopback only, bounded in time.

usage: bench/serve_load.py [--speck build/speck] [--llama-server PATH] -m MODEL.gguf
                           [--clients 1,4,16] [--seconds 20] [--max-tokens 64]
                           [--draft prompt,aded]   (also speck serve --draft: drafts in the batch)
       bench/serve_load.py --cached-prefix [--prompt-tokens 1000] [--prefix-tokens 900]
                           [--trials 7] -m MODEL.gguf ...
Each server is started with --parallel equal to the largest client count (-np for llama-server)
and stopped afterwards; the table is printed as Markdown.

--cached-prefix measures time to first token of a prompt of --prompt-tokens tokens whose first
--prefix-tokens tokens an earlier request already sent (the prefix cache holds them), against the
same length with nothing cached. One client; each trial takes a new prefix P (token ids cut from
a tokenized pseudo-random text, so no trial shares anything with another), sends P + A (nothing
cached: an uncached sample) and then P + B (P cached: a cached sample), each with max_tokens 1;
the two kinds alternate, so the machine's drift hits both alike. Reported: medians, the ratio
cached / uncached, and the prompt tokens the server says it took from its cache.
"""
import random
import argparse
import http.client
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time


def pct(v, q):
    if not v:
        return float("nan")
    v = sorted(v)
    return v[min(len(v) - 1, int(q * (len(v) - 1) + 0.5))]


def start(cmd, pattern, port):
    log = tempfile.NamedTemporaryFile("w+", suffix=".log", delete=False)
    p = subprocess.Popen(cmd, stdout=log, stderr=log)
    for _ in range(1200):
        time.sleep(0.1)
        try:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            c.request("GET", "/health")
            if c.getresponse().status == 200:
                return p, log.name
        except OSError:
            pass
        if p.poll() is not None:
            break
    p.kill()
    sys.exit("server did not start: " + open(log.name).read()[-2000:])


def one_request(port, prompt, max_tokens, stats):
    body = json.dumps({"prompt": prompt, "max_tokens": max_tokens, "temperature": 0,
                       "stream": True, "ignore_eos": True, "cache_prompt": True,
                       "n_predict": max_tokens,
                       "stream_options": {"include_usage": True}}).encode()
    t0 = time.perf_counter()
    try:
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
        c.request("POST", "/v1/completions", body, {"Content-Type": "application/json"})
        r = c.getresponse()
        if r.status != 200:
            r.read()
            stats["errors"] += 1
            return
        times, buf, used = [], b"", 0
        while True:
            chunk = r.read1(65536) if hasattr(r, "read1") else r.read(1)
            if not chunk:
                break
            buf += chunk
            while b"\n\n" in buf:
                ev, buf = buf.split(b"\n\n", 1)
                if not ev.startswith(b"data: ") or ev == b"data: [DONE]":
                    continue
                d = json.loads(ev[6:])
                if d.get("usage"):
                    used = d["usage"].get("completion_tokens", 0)
                if d.get("choices") and d["choices"][0].get("text"):
                    times.append(time.perf_counter())
        c.close()
    except (OSError, ValueError):
        stats["errors"] += 1
        return
    if not times:
        stats["errors"] += 1
        return
    stats["ttft"].append(times[0] - t0)
    stats["itl"].extend(b - a for a, b in zip(times, times[1:]))
    stats["chunks"] += used or len(times)  # tokens (the usage chunk), else text chunks


def first_token_time(port, prompt_ids):
    """Seconds from sending a streamed /v1/completions request (token ids, one new token) to
    its first event with a choice; and the prompt tokens served from the cache (usage)."""
    body = json.dumps({"prompt": prompt_ids, "max_tokens": 1, "n_predict": 1, "temperature": 0,
                       "stream": True, "ignore_eos": True, "cache_prompt": True,
                       "stream_options": {"include_usage": True}}).encode()
    t0 = time.perf_counter()
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    c.request("POST", "/v1/completions", body, {"Content-Type": "application/json"})
    r = c.getresponse()
    if r.status != 200:
        sys.exit("cached-prefix request: %d %s" % (r.status, r.read()[:300]))
    first, cached, buf = None, None, b""
    while True:
        chunk = r.read1(65536)
        if not chunk:
            break
        buf += chunk
        while b"\n\n" in buf:
            ev, buf = buf.split(b"\n\n", 1)
            if not ev.startswith(b"data: ") or ev == b"data: [DONE]":
                continue
            d = json.loads(ev[6:])
            if d.get("choices") and first is None:
                first = time.perf_counter() - t0
            u = d.get("usage") or {}
            if u.get("prompt_tokens_details"):
                cached = u["prompt_tokens_details"].get("cached_tokens")
            if "cache_n" in d.get("timings", {}):  # llama-server: prompt tokens reused
                cached = d["timings"]["cache_n"]
    c.close()
    return first, cached


def cached_prefix(port, name, args):
    """The --cached-prefix measurement on one running server (see the module's doc)."""
    rng = random.Random(1234)
    words = ["def", "return", "self", "value", "index", "count", "list", "for", "in", "if",
             "else", "while", "print", "x", "y", "data", "result", "name", "(", ")", ":", "=",
             "+", "1", "0", "None", "True", "import", "os", "path", "line", "text", "\n", "    "]

    def ids(n):
        """n token ids of fresh pseudo-random text, from the server's own tokenizer."""
        out = []
        while len(out) < n:
            text = " ".join(rng.choice(words) for _ in range(2 * n))
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
            c.request("POST", "/tokenize", json.dumps({"content": text, "add_special": False}),
                      {"Content-Type": "application/json"})
            out += json.loads(c.getresponse().read())["tokens"]
            c.close()
        return out[:n]
    n_all, n_pre = args.prompt_tokens, args.prefix_tokens
    first_token_time(port, ids(64))  # warm-up: page the weights in
    unc, cac, got = [], [], []
    for _ in range(args.trials):
        prefix = ids(n_pre)
        t_u, _ = first_token_time(port, prefix + ids(n_all - n_pre))
        t_c, k = first_token_time(port, prefix + ids(n_all - n_pre))
        unc.append(t_u)
        cac.append(t_c)
        got.append(k)
    mu, mc = statistics.median(unc), statistics.median(cac)
    print("| %s | %d | %d | %d | %.0f | %.0f | %.3f | %s |" % (
        name, n_all, n_pre, args.trials, 1e3 * mu, 1e3 * mc, mc / mu,
        "/".join(str(k) for k in sorted(set(got)))), flush=True)


def level(port, n, seconds, prompt_of, max_tokens):
    stats = {"ttft": [], "itl": [], "chunks": 0, "errors": 0, "tokens": 0}
    lock = threading.Lock()
    stop = time.perf_counter() + seconds

    def client(k):
        i = 0
        while time.perf_counter() < stop:
            local = {"ttft": [], "itl": [], "chunks": 0, "errors": 0}
            one_request(port, prompt_of(k, i), max_tokens, local)
            with lock:
                for key in ("ttft", "itl"):
                    stats[key] += local[key]
                stats["chunks"] += local["chunks"]
                stats["errors"] += local["errors"]
            i += 1
    t0 = time.perf_counter()
    ts = [threading.Thread(target=client, args=(k,)) for k in range(n)]
    [t.start() for t in ts]
    [t.join() for t in ts]
    wall = time.perf_counter() - t0
    return stats, wall


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--speck", default="build/speck")
    ap.add_argument("--llama-server", default="/tmp/llama.cpp/build/bin/llama-server")
    ap.add_argument("-m", "--model", default="models/default.gguf")
    ap.add_argument("--clients", default="1,4,16")
    ap.add_argument("--seconds", type=float, default=20)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--ctx", type=int, default=0)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--cached-prefix", action="store_true")
    ap.add_argument("--prompt-tokens", type=int, default=1000)
    ap.add_argument("--prefix-tokens", type=int, default=900)
    ap.add_argument("--trials", type=int, default=7)
    ap.add_argument("--draft", default="",
                    help="also run speck serve --draft LIST (accelerated decoding in the batch)")
    args = ap.parse_args()
    if args.cached_prefix:
        args.clients = "1"
        args.ctx = max(args.ctx, args.prompt_tokens + 16)
    levels = [int(x) for x in args.clients.split(",")]
    np_ = max(levels)
    servers = [("speck", [args.speck, "serve", "-m", args.model, "--port", "18431",
                          "--parallel", str(np_), "--queue", "1024"]
                + (["--ctx", str(args.ctx)] if args.ctx else [])
                + (["-t", str(args.threads)] if args.threads else []), 18431)]
    if args.draft:
        servers.append(("speck --draft " + args.draft,
                        servers[0][1][:5] + ["18433"] + servers[0][1][6:] + ["--draft", args.draft],
                        18433))
    if os.path.exists(args.llama_server):
        servers.append(("llama-server", [args.llama_server, "-m", args.model, "--port", "18432",
                                         "-np", str(np_), "-c", str((args.ctx or 256) * np_)]
                        + (["-t", str(args.threads)] if args.threads else []), 18432))
    else:
        print("(no llama-server at %s: speck only)" % args.llama_server)

    def prompt_of(k, i):  # distinct short prompts (no prefix sharing between clients)
        return "# client %d request %d\ndef f_%d_%d(x):\n" % (k, i, k, i)
    if args.cached_prefix:
        print("| server | prompt tokens | cached prefix | trials | TTFT uncached ms (median) "
              "| TTFT cached ms (median) | ratio | tokens taken from the cache |")
        print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    else:
        print("| server | clients | requests | tokens/s | TTFT p50 ms | TTFT p99 ms | ITL p50 ms "
              "| ITL p99 ms | errors |")
        print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for name, cmd, port in servers:
        p, log = start(cmd, None, port)
        try:
            if args.cached_prefix:
                cached_prefix(port, name, args)
                continue
            for n in levels:
                st, wall = level(port, n, args.seconds, prompt_of, args.max_tokens)
                print("| %s | %d | %d | %.1f | %.0f | %.0f | %.1f | %.1f | %d |" % (
                    name, n, len(st["ttft"]), st["chunks"] / wall, 1e3 * pct(st["ttft"], 0.5),
                    1e3 * pct(st["ttft"], 0.99), 1e3 * pct(st["itl"], 0.5),
                    1e3 * pct(st["itl"], 0.99), st["errors"]), flush=True)
        finally:
            p.terminate()
            p.wait()
            os.unlink(log)


if __name__ == "__main__":
    main()
