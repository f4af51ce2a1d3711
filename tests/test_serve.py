#!/usr/bin/env python3
"""`speck serve` through a real socket (standard library only): OpenAI-compatible bodies and
server-sent event streams, finish reasons, stop strings across token boundaries, usage counts,
seeds, batch independence, cancellation on disconnect, and bad input (invalid JSON, wrong types,
negative max_tokens, context overflow, unknown model, huge bodies, 200 connections opened and
dropped, a full queue, a missing API key) answered with a 4xx/5xx JSON error while the server
keeps serving; the chat page at / is tools/web/chat.html byte for byte, with or without a key.

usage: test_serve.py SPECK_BINARY MODEL.gguf [quick]
"""
import http.client
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time

SKIP = 77
passed = failed = 0


def check(cond, msg):
    global passed, failed
    if cond:
        passed += 1
    else:
        failed += 1
        print("FAIL:", msg, flush=True)


class Server:
    def __init__(self, binary, model, *args):
        self.log = tempfile.NamedTemporaryFile("w+", suffix=".log", delete=False)
        self.p = subprocess.Popen([binary, "serve", "-m", model, "--port", "0", *args],
                                  stdout=subprocess.DEVNULL, stderr=self.log)
        self.port = None
        for _ in range(600):
            time.sleep(0.05)
            with open(self.log.name) as f:
                m = re.search(r"http://127\.0\.0\.1:(\d+)", f.read())
            if m:
                self.port = int(m.group(1))
                break
            if self.p.poll() is not None:
                break
        if not self.port:
            with open(self.log.name) as f:
                raise RuntimeError("server did not start: " + f.read())

    def request(self, method, path, body=None, headers=None, timeout=60):
        c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        data = body if isinstance(body, (bytes, type(None))) else json.dumps(body).encode()
        c.request(method, path, body=data, headers=headers or {})
        r = c.getresponse()
        raw = r.read()
        c.close()
        return r.status, dict(r.getheaders()), raw

    def json(self, method, path, body=None, headers=None):
        st, h, raw = self.request(method, path, body, headers)
        try:
            return st, h, json.loads(raw)
        except ValueError:
            return st, h, None

    def stream(self, path, body):
        """The events of a streamed request: a list of parsed JSON chunks, and whether [DONE]
        closed it."""
        st, h, raw = self.request("POST", path, body)
        events, done = [], False
        for block in raw.decode().split("\n\n"):
            if not block.strip():
                continue
            check(block.startswith("data: "), "event without 'data: ': %r" % block[:80])
            payload = block[6:]
            if payload == "[DONE]":
                done = True
                continue
            check(not done, "an event after [DONE]")
            events.append(json.loads(payload))
        return st, h, events, done

    def stop(self):
        self.p.terminate()
        try:
            rc = self.p.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.p.kill()
            rc = self.p.wait()
        with open(self.log.name) as f:
            log = f.read()
        os.unlink(self.log.name)
        return rc, log


def metrics(s):
    st, _, raw = s.request("GET", "/metrics")
    out = {}
    for line in raw.decode().splitlines():
        if line and not line.startswith("#"):
            k, v = line.split()
            out[k] = float(v)
    return out


def is_error_body(b, status):
    return (isinstance(b, dict) and isinstance(b.get("error"), dict)
            and isinstance(b["error"].get("message"), str) and b["error"].get("code") == status)


def main():
    if len(sys.argv) < 3:
        print(__doc__)
        return 2
    binary, model = sys.argv[1], sys.argv[2]
    quick = len(sys.argv) > 3 and sys.argv[3] == "quick"
    if not os.path.exists(model):
        print("SKIP: %s not found" % model)
        return SKIP
    # The main server drafts (prompt lookup, then ADED) for every request, so streams, stop
    # strings and usage are checked with several tokens per pass; the second does not, and gives
    # the same greedy text.
    s = Server(binary, model, "--parallel", "4", "--max-body", "65536", "--draft", "prompt,aded")
    greedy = {"prompt": "def parse_args(argv):\n    parser = argparse.ArgumentParser(",
              "max_tokens": 40, "temperature": 0}
    try:
        run_main(s, quick)
        st, _, b = s.json("POST", "/v1/completions", greedy)
        drafted = b["choices"][0]["text"] if st == 200 else None
        m = metrics(s)
        check(m["speck_draft_tokens_total"] >= m["speck_draft_tokens_accepted_total"] > 0,
              "drafts in /metrics: %s" % {k: v for k, v in m.items() if "draft" in k})
    finally:
        rc, log = s.stop()
    check(rc == 0, "server exit status %s on SIGTERM" % rc)
    lines = [l for l in log.splitlines() if re.match(r"\d{4}-\d\d-\d\dT", l)]
    check(len(lines) >= 20, "one log line per request: only %d lines" % len(lines))
    check("AddressSanitizer" not in log and "runtime error" not in log, "sanitizer report:\n" + log[-3000:])

    s2 = Server(binary, model, "--parallel", "1", "--queue", "1", "--api-key", "sekret")
    try:
        st, _, b = s2.json("POST", "/v1/completions", greedy, {"Authorization": "Bearer sekret"})
        check(st == 200 and drafted is not None and b["choices"][0]["text"] == drafted,
              "greedy text with drafts %r, without %r" % (drafted, b["choices"][0].get("text")))
        run_limits(s2)
    finally:
        rc, log = s2.stop()
    check(rc == 0, "second server exit status %s" % rc)
    check("AddressSanitizer" not in log, "sanitizer report:\n" + log[-3000:])
    print("%d passed, %d failed" % (passed, failed))
    return 1 if failed else 0


def run_main(s, quick):
    st, _, b = s.json("GET", "/health")
    check(st == 200 and b == {"status": "ok"}, "/health: %s %s" % (st, b))
    st, _, b = s.json("GET", "/v1/models")
    check(st == 200 and b["object"] == "list" and b["data"][0]["id"] == "default.gguf",
          "/v1/models: %s" % b)
    model_id = b["data"][0]["id"]

    # The chat page: tools/web/chat.html byte for byte (embedded by CMake), at / and /index.html.
    with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tools", "web",
                           "chat.html"), "rb") as f:
        page = f.read()
    for path in ("/", "/index.html"):
        st, h, raw = s.request("GET", path)
        check(st == 200 and h.get("Content-Type", "").startswith("text/html") and raw == page,
              "GET %s: %s %s, %d bytes (the file has %d)" % (path, st, h.get("Content-Type"),
                                                             len(raw), len(page)))
    st, _, b = s.json("POST", "/")
    check(st == 405 and is_error_body(b, 405), "POST / -> %s" % st)

    # Non-streaming completion, greedy: shape, finish_reason, usage.
    prompt = "def parse_args(argv):\n    "
    req = {"model": model_id, "prompt": prompt, "max_tokens": 24, "temperature": 0,
           "logprobs": 1}
    st, _, b = s.json("POST", "/v1/completions", req)
    check(st == 200, "completion status %s %s" % (st, b))
    ch = b["choices"][0]
    text = ch["text"]
    check(b["object"] == "text_completion" and isinstance(text, str), "completion body %s" % b)
    st, _, tk = s.json("POST", "/tokenize", {"content": prompt, "add_special": True})
    check(st == 200 and b["usage"]["prompt_tokens"] == len(tk["tokens"]),
          "usage.prompt_tokens %s vs /tokenize %s" % (b["usage"], tk))
    toks = ch["logprobs"]["tokens"]
    n_gen = b["usage"]["completion_tokens"]
    check(ch["finish_reason"] in ("length", "stop"), "finish_reason %s" % ch["finish_reason"])
    if ch["finish_reason"] == "length":
        check(n_gen == 24, "length finish after %d tokens" % n_gen)
    check(len(toks) == n_gen and all(lp <= 0 for lp in ch["logprobs"]["token_logprobs"]),
          "logprobs: %d tokens for %d generated" % (len(toks), n_gen))
    check(b["usage"]["total_tokens"] == b["usage"]["prompt_tokens"] + n_gen, "total_tokens")
    st, _, dt = s.json("POST", "/detokenize", {"tokens": tk["tokens"]})
    check(st == 200 and dt["content"].endswith(prompt.strip()) or prompt in dt["content"],
          "/detokenize round trip: %r" % dt)

    # The same request streamed: well-formed chunks whose text adds up to the same output.
    st, h, ev, done = s.stream("/v1/completions", dict(req, stream=True,
                                                       stream_options={"include_usage": True}))
    check(st == 200 and h.get("Content-Type", "").startswith("text/event-stream"),
          "stream status/type %s %s" % (st, h))
    check(done, "stream not closed by [DONE]")
    streamed = "".join(e["choices"][0]["text"] for e in ev if e["choices"])
    check(streamed == text, "streamed text %r != non-streamed %r" % (streamed, text))
    fin = [e["choices"][0]["finish_reason"] for e in ev if e["choices"]]
    check(fin.count(None) == len(fin) - 1 and fin[-1] == ch["finish_reason"],
          "finish_reason only on the last chunk: %s" % fin)
    check(all(e["id"] == ev[0]["id"] and e["object"] == "text_completion" for e in ev),
          "chunk ids/objects")
    check(ev[-1]["choices"] == [] and ev[-1]["usage"]["completion_tokens"] == n_gen,
          "usage chunk %s" % ev[-1])

    # Stop string across a token boundary: the last 2 bytes of one token and the first 2 of the
    # next (pieces of >= 2 characters found in the logprobs above).
    stop = None
    for i in range(2, len(toks) - 1):
        a, c = toks[i], toks[i + 1]
        if len(a) >= 2 and len(c) >= 2 and (a + c) in text:
            stop = a[-2:] + c[:2]
            break
    if stop:
        cut = text.index(stop)
        for stream in (False, True):
            r = dict(req, stop=[stop, "@@never@@"], stream=stream)
            if stream:
                st, _, ev, done = s.stream("/v1/completions", r)
                out = "".join(e["choices"][0]["text"] for e in ev if e["choices"])
                f = ev[-1]["choices"][0]["finish_reason"]
            else:
                st, _, b2 = s.json("POST", "/v1/completions", r)
                out, f = b2["choices"][0]["text"], b2["choices"][0]["finish_reason"]
            check(out == text[:cut] and f == "stop",
                  "stop %r (stream=%s): %r finish %s, want %r" % (stop, stream, out, f,
                                                                 text[:cut]))
    else:
        check(False, "no two adjacent tokens of >= 2 characters in %r" % toks)

    # Chat, streamed and not: the same text; the first chunk carries the role.
    creq = {"model": model_id, "messages": [{"role": "system", "content": "Be brief."},
                                            {"role": "user", "content": "Write a loop."}],
            "max_tokens": 16, "temperature": 0}
    st, _, b = s.json("POST", "/v1/chat/completions", creq)
    check(st == 200 and b["object"] == "chat.completion"
          and b["choices"][0]["message"]["role"] == "assistant", "chat body %s" % b)
    ctext = b["choices"][0]["message"]["content"]
    st, _, ev, done = s.stream("/v1/chat/completions", dict(creq, stream=True))
    check(done and ev[0]["choices"][0]["delta"].get("role") == "assistant", "chat stream start")
    check(all(e["object"] == "chat.completion.chunk" for e in ev), "chat chunk objects")
    out = "".join(e["choices"][0]["delta"].get("content", "") for e in ev)
    check(out == ctext, "chat streamed %r != %r" % (out, ctext))
    check(ev[-1]["choices"][0]["finish_reason"] == b["choices"][0]["finish_reason"],
          "chat stream finish_reason")

    # Seeds and batch independence: a sampled request gives the same text alone and among 7
    # concurrent others.
    sreq = {"prompt": "import os\n", "max_tokens": 20, "temperature": 0.9, "top_p": 0.95,
            "seed": 1234}
    alone = s.json("POST", "/v1/completions", sreq)[2]["choices"][0]["text"]
    results = {}

    def worker(k):
        r = sreq if k == 0 else dict(sreq, seed=k, prompt="x = %d\n" % k)
        results[k] = s.json("POST", "/v1/completions", r)[2]["choices"][0]["text"]
    ts = [threading.Thread(target=worker, args=(k,)) for k in range(8)]
    [t.start() for t in ts]
    [t.join() for t in ts]
    check(results.get(0) == alone, "seeded output changed in a batch: %r vs %r" %
          (results.get(0), alone))
    other = s.json("POST", "/v1/completions", dict(sreq, seed=99))[2]["choices"][0]["text"]
    check(other != alone, "seed 99 gave seed 1234's output")

    # Bad input: a JSON error body with the right status, the server keeps going.
    cases = [
        (b"{not json", 400), (b"[1, 2]", 400), (json.dumps({"prompt": 5}).encode(), 400),
        (json.dumps({"prompt": "a", "max_tokens": "ten"}).encode(), 400),
        (json.dumps({"prompt": "a", "max_tokens": -3}).encode(), 400),
        (json.dumps({"prompt": "a", "max_tokens": 0}).encode(), 400),
        (json.dumps({"prompt": "a", "max_tokens": 2.5}).encode(), 400),
        (json.dumps({"prompt": "a", "max_tokens": 100000}).encode(), 400),
        (json.dumps({"prompt": "a", "temperature": "hot"}).encode(), 400),
        (json.dumps({"prompt": "a", "stop": [1]}).encode(), 400),
        (json.dumps({"prompt": "a", "stream": "yes"}).encode(), 400),
        (json.dumps({"prompt": "a", "model": "gpt-4"}).encode(), 404),
        (json.dumps({"prompt": [10 ** 9]}).encode(), 400),
        (b"", 400),
    ]
    for body, want in cases:
        st, _, b = s.json("POST", "/v1/completions", body)
        check(st == want and is_error_body(b, want), "%r -> %s %s (want %s)" % (body[:60], st, b,
                                                                                 want))
    st, _, b = s.json("POST", "/v1/completions", {"prompt": "a", "max_tokens": 100000})
    check("context" in b["error"]["message"], "context error names the context: %s" % b)
    for body in ({"messages": "hi"}, {"messages": []}, {"messages": [{"role": "user"}]},
                 {"messages": [{"role": "wizard", "content": "x"}]}):
        st, _, b = s.json("POST", "/v1/chat/completions", body)
        check(st == 400 and is_error_body(b, 400), "chat %s -> %s %s" % (body, st, b))
    st, _, b = s.json("POST", "/v1/completions", b"{" + b" " * 70000 + b"}")
    check(st == 413 and is_error_body(b, 413), "huge body -> %s" % st)
    st, _, b = s.json("GET", "/v1/completions")
    check(st == 405 and is_error_body(b, 405), "GET completions -> %s" % st)
    st, _, b = s.json("GET", "/nope")
    check(st == 404 and is_error_body(b, 404), "unknown path -> %s" % st)
    st, _, b = s.json("POST", "/tokenize", {"content": 3})
    check(st == 400 and is_error_body(b, 400), "tokenize wrong type -> %s" % st)
    st, _, b = s.json("POST", "/detokenize", {"tokens": [-1]})
    check(st == 400 and is_error_body(b, 400), "detokenize bad id -> %s" % st)

    # 200 connections opened and dropped: nothing, half a request line, headers with a body
    # promised, a whole request closed before the answer.
    n_conn = 60 if quick else 200
    for k in range(n_conn):
        try:
            c = socket.create_connection(("127.0.0.1", s.port), timeout=5)
            if k % 4 == 1:
                c.sendall(b"POST /v1/compl")
            elif k % 4 == 2:
                c.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 500\r\n"
                          b"\r\n{\"prompt\":")
            elif k % 4 == 3:
                body = json.dumps({"prompt": "def f():", "max_tokens": 50}).encode()
                c.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n"
                          % len(body) + body)
            c.close()
        except OSError as e:
            check(False, "connection %d: %s" % (k, e))
    st, _, b = s.json("GET", "/health")
    check(st == 200, "health after dropped connections: %s" % st)
    st, _, b = s.json("POST", "/v1/completions", dict(req, stream=False))
    check(st == 200 and b["choices"][0]["text"] == text, "completion after dropped connections")

    # A client that disconnects mid-stream cancels its request.
    m0 = metrics(s)
    c = socket.create_connection(("127.0.0.1", s.port), timeout=10)
    body = json.dumps({"prompt": "class A:\n", "max_tokens": 200, "stream": True,
                       "temperature": 0.8, "seed": 1}).encode()
    c.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" %
              len(body) + body)
    c.recv(100)
    c.close()
    t0 = time.time()
    while time.time() - t0 < 10:
        m = metrics(s)
        if m["speck_requests_running"] == 0 and m["speck_queue_length"] == 0:
            break
        time.sleep(0.05)
    m1 = metrics(s)
    check(m1["speck_requests_running"] == 0, "the dropped stream still runs")
    check(m1["speck_generated_tokens_total"] - m0["speck_generated_tokens_total"] < 200,
          "the dropped stream ran to its end")

    # Metrics: the families exist; the prefix cache was hit (the same prompts came back).
    for k in ("speck_requests_total", "speck_generated_tokens_total", "speck_tokens_per_second",
              "speck_queue_length", "speck_kv_blocks_used", "speck_prefix_cache_hit_ratio"):
        check(k in m1, "metric %s missing" % k)
    check(m1["speck_prompt_tokens_cached_total"] > 0, "no prefix-cache hits: %s" % m1)


def run_limits(s):
    auth = {"Authorization": "Bearer sekret"}
    st, _, b = s.json("POST", "/v1/completions", {"prompt": "a", "max_tokens": 2})
    check(st == 401 and is_error_body(b, 401), "no API key -> %s" % st)
    st, _, b = s.json("POST", "/v1/completions", {"prompt": "a", "max_tokens": 2},
                      {"Authorization": "Bearer wrong"})
    check(st == 401, "wrong API key -> %s" % st)
    st, _, b = s.json("GET", "/health")
    check(st == 200, "/health needs no key")
    st, _, raw = s.request("GET", "/")
    check(st == 200 and raw.startswith(b"<!doctype html>"), "the chat page needs no key: %s" % st)
    st, _, b = s.json("POST", "/v1/completions", {"prompt": "a", "max_tokens": 2}, auth)
    check(st == 200, "with the key -> %s %s" % (st, b))
    # One running, one queued: the rest of 8 concurrent long requests get 503 + Retry-After.
    got = []

    def worker():
        st, h, b = s.json("POST", "/v1/completions", {"prompt": "def f(x):", "max_tokens": 150,
                                                      "temperature": 0}, auth)
        got.append((st, h.get("Retry-After"), b))
    ts = [threading.Thread(target=worker) for _ in range(8)]
    [t.start() for t in ts]
    [t.join() for t in ts]
    busy = [g for g in got if g[0] == 503]
    check(len(busy) >= 1 and all(g[1] and is_error_body(g[2], 503) for g in busy),
          "queue full: statuses %s" % [g[0] for g in got])
    check(all(g[0] in (200, 503) for g in got), "statuses %s" % [g[0] for g in got])


if __name__ == "__main__":
    sys.exit(main())
