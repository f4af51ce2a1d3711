#!/usr/bin/env python3
"""Constrained output end to end: for several JSON Schemas, `speck serve` with response_format
json_schema (greedy and sampled with several seeds, streamed and not) must finish ("stop") with
text that parses as JSON and validates against the schema under an independent validator
(python3-jsonschema); json_object output parses as an object; a GBNF "grammar" field is obeyed;
bad grammars / schemas / response formats get a 400 with a JSON error body; `speck generate
--json-schema` with drafts prints the same as without.

usage: test_grammar.py SPECK_BINARY MODEL.gguf [quick]
quick (the sanitizer build): greedy + one seed per schema, one sampled accelerated run.
"""
import json
import os
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "reference"))
from skips import missing  # noqa: E402
from test_serve import Server  # noqa: E402

SKIP = 77
passed = failed = 0


def check(cond, msg):
    global passed, failed
    if cond:
        passed += 1
    else:
        failed += 1
        print("FAIL:", msg, flush=True)


# Every string and array is bounded, so a complete answer fits max_tokens whatever the model does.
SCHEMAS = [
    {"type": "object",
     "properties": {"name": {"type": "string", "maxLength": 12},
                    "age": {"type": "integer"},
                    "admin": {"type": "boolean"}},
     "required": ["name", "age"], "additionalProperties": False},
    {"type": "array", "items": {"type": "number"}, "minItems": 1, "maxItems": 3},
    {"type": "object",
     "properties": {"kind": {"enum": ["cat", "dog", 3, None]},
                    "tag": {"const": "v1"},
                    "note": {"type": ["string", "null"], "maxLength": 8},
                    "point": {"$ref": "#/$defs/pt"}},
     "required": ["kind", "tag", "point"],
     "$defs": {"pt": {"type": "object", "description": "a point",
                      "properties": {"x": {"type": "integer"}, "y": {"type": "integer"}},
                      "required": ["x", "y"]}}},
    {"anyOf": [{"type": "null"},
               {"type": "array", "maxItems": 2,
                "items": {"type": "object", "properties": {"ok": {"type": "boolean"}},
                          "required": ["ok"]}}]},
]

PROMPT = "def handler(event):\n    return "


def validate(schema, text, what):
    import jsonschema
    try:
        v = json.loads(text)
    except ValueError as e:
        check(False, "%s: not JSON (%s): %r" % (what, e, text))
        return
    try:
        jsonschema.validate(v, schema)
        check(True, "")
    except jsonschema.ValidationError as e:
        check(False, "%s: %r fails the schema: %s" % (what, text, e.message))


def run_server(s, quick):
    # Schema property test: greedy, then sampled with several seeds; one streamed each.
    for si, schema in enumerate(SCHEMAS):
        rf = {"type": "json_schema", "json_schema": {"name": "s%d" % si, "schema": schema,
                                                     "strict": True}}
        runs = [(0, 0), (1.0, 1), (1.0, 2), (1.2, 3)]
        for temp, seed in runs[:2] if quick else runs:
            st, _, b = s.json("POST", "/v1/completions",
                              {"prompt": PROMPT, "max_tokens": 200, "temperature": temp,
                               "seed": seed, "response_format": rf})
            what = "schema %d temp %g seed %d" % (si, temp, seed)
            check(st == 200, "%s: status %s %s" % (what, st, b))
            if st != 200:
                continue
            c = b["choices"][0]
            check(c["finish_reason"] == "stop", "%s: finish %s: %r" % (what, c["finish_reason"],
                                                                     c["text"]))
            validate(schema, c["text"], what)
        # chat + stream
        st, _, events, done = s.stream("/v1/chat/completions",
                                {"messages": [{"role": "user", "content": "Give JSON."}],
                                 "max_tokens": 200, "temperature": 0.8, "seed": 7,
                                 "stream": True, "response_format": rf})
        text = "".join(e["choices"][0]["delta"].get("content") or ""
                       for e in events if e.get("choices"))
        fins = [e["choices"][0].get("finish_reason") for e in events if e.get("choices")]
        check(done and "stop" in fins, "schema %d stream: finish %s" % (si, fins))
        validate(schema, text, "schema %d streamed chat" % si)

    # json_object: an object whenever it finishes.
    n_stop = 0
    for seed in range(2 if quick else 4):
        st, _, b = s.json("POST", "/v1/completions",
                          {"prompt": PROMPT, "max_tokens": 240, "temperature": 0.7, "seed": seed,
                           "response_format": {"type": "json_object"}})
        check(st == 200, "json_object: status %s" % st)
        if st == 200 and b["choices"][0]["finish_reason"] == "stop":
            n_stop += 1
            try:
                check(isinstance(json.loads(b["choices"][0]["text"]), dict), "json_object: not an object")
            except ValueError:
                check(False, "json_object: not JSON: %r" % b["choices"][0]["text"])
        elif st == 200:
            check(b["choices"][0]["text"].lstrip().startswith("{"), "json_object: no '{'")
    check(n_stop >= 1, "json_object: no sample finished in 240 tokens")

    # llama-server's fields: grammar (GBNF) and json_schema.
    st, _, b = s.json("POST", "/v1/completions",
                      {"prompt": "Answer: ", "max_tokens": 20, "temperature": 1.0, "seed": 5,
                       "grammar": 'root ::= ("yes" | "no") "!" # comment\n'})
    check(st == 200 and b["choices"][0]["text"] in ("yes!", "no!")
          and b["choices"][0]["finish_reason"] == "stop", "grammar field: %s %s" % (st, b))
    st, _, b = s.json("POST", "/v1/completions",
                      {"prompt": "n = ", "max_tokens": 50, "temperature": 0,
                       "json_schema": {"type": "integer"}})
    check(st == 200 and isinstance(json.loads(b["choices"][0]["text"]), int),
          "json_schema field: %s %s" % (st, b))

    # Bad input: 400 with an error body that says what is wrong.
    bad = [
        ({"grammar": "root ::= [a-"}, "line 1 column 10"),
        ({"grammar": "root ::= x"}, "undefined rule 'x'"),
        ({"grammar": 5}, "'grammar' must be a string"),
        ({"response_format": {"type": "json_schema",
                              "json_schema": {"name": "x", "schema": {"type": "string",
                                                                      "pattern": "^a"}}}},
         "unsupported keyword 'pattern'"),
        ({"response_format": {"type": "json_schema", "json_schema": {"name": "x"}}},
         "json_schema needs"),
        ({"response_format": {"type": "xml"}}, "type 'xml'"),
        ({"response_format": {"type": "json_object"}, "grammar": "root ::= \"a\""}, "give one"),
        ({"json_schema": {"$ref": "#/$defs/none"}}, "$ref"),
    ]
    for extra, want in bad:
        body = {"prompt": "x", "max_tokens": 4}
        body.update(extra)
        st, _, b = s.json("POST", "/v1/completions", body)
        msg = (b or {}).get("error", {}).get("message", "")
        check(st == 400 and want in msg, "%s: expected 400 with %r, got %s %s" % (extra, want, st, b))
    st, _, _ = s.json("GET", "/health")
    check(st == 200, "server alive after the bad requests")


def run_cli(binary, model, quick):
    schema = SCHEMAS[2]
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(schema, f)
    outs = []
    try:
        for draft in ([], ["--draft", "prompt,aded"]):
            p = subprocess.run([binary, "generate", "-m", model, "-p", PROMPT, "-n", "200",
                                "--json-schema", f.name, "--no-stats"] + draft,
                               capture_output=True, text=True, timeout=120)
            check(p.returncode == 0, "generate %s: %s" % (draft, p.stderr))
            outs.append(p.stdout)
        check(outs[0] == outs[1], "generate: drafts changed the output:\n%r\n%r" % tuple(outs))
        text = outs[0][len(PROMPT):].rstrip("\n")
        validate(schema, text, "generate --json-schema")
        # sampled accelerated decoding under the grammar: drafts the grammar rejects are cut (or,
        # sampled by the draft model, rejected by the masked target), and the text validates
        draft_model = os.path.join(os.path.dirname(model), "draft.gguf")
        for draft in (["prompt,aded"], ["model:" + draft_model])[: 1 if quick else 2]:
            if not os.path.exists(draft[0].split(":")[-1]) and draft[0].startswith("model:"):
                continue
            for seed in ("1",) if quick else ("1", "2"):
                p = subprocess.run([binary, "generate", "-m", model, "-p", PROMPT, "-n", "200",
                                    "--json-schema", f.name, "--no-stats", "--temp", "0.9",
                                    "--seed", seed, "--draft"] + draft,
                                   capture_output=True, text=True, timeout=120)
                check(p.returncode == 0, "generate sampled %s: %s" % (draft, p.stderr))
                validate(schema, p.stdout[len(PROMPT):].rstrip("\n"),
                         "generate --temp 0.9 --seed %s --draft %s" % (seed, draft[0]))
        p = subprocess.run([binary, "generate", "-m", model, "-p", "x", "-n", "4",
                            "--grammar-text", "root ::= (\"a\""], capture_output=True, text=True)
        check(p.returncode != 0 and "line 1 column 10" in p.stderr, "generate bad grammar: %s"
              % p.stderr)
    finally:
        os.unlink(f.name)


def main():
    if len(sys.argv) < 3:
        print(__doc__)
        return 2
    binary, model = sys.argv[1], sys.argv[2]
    quick = len(sys.argv) > 3 and sys.argv[3] == "quick"
    if not os.path.exists(model):
        print("SKIP: %s not found" % model)
        return SKIP
    try:
        import jsonschema  # noqa: F401
    except ImportError:
        return missing("python3-jsonschema", "bash scripts/deps.sh --test installs it")
    s = Server(binary, model, "--parallel", "4")
    try:
        run_server(s, quick)
    finally:
        rc, log = s.stop()
    check(rc == 0, "server exit status %s" % rc)
    check("AddressSanitizer" not in log and "runtime error" not in log,
          "sanitizer report:\n" + log[-3000:])
    run_cli(binary, model, quick)
    print("%d passed, %d failed" % (passed, failed))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
