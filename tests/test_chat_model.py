"""The shipped chat model (models/chat.gguf) answers code requests with Python.

Each request goes through `speck chat` (the model's own chat template, greedy, one process per
request so that every answer starts from an empty conversation). An answer counts as code when
Python's own parser accepts it and it defines a function (ast.parse; nothing is run). An answer
should also end its turn by itself (the model emits <|im_end|>: "stopped: end of generation"), and
none may hold chat markup: those are what a model without chat training gets wrong. How many
answers define the function under the requested name is printed, not required.

The requests are every user turn of the validation split of scripts/make_chat_data.py (44): the
functions of the modules the default code model held out, seen neither by the code model nor by
the chat fine-tuning. Thresholds: at least 60 % of the answers parse and 70 % end their turn,
all without markup. Greedy decoding is deterministic, so this measures the shipped file; observed
2026-12-07: 36/44 (82 %) parse, 38/44 (86 %) end their turn, 44/44 clean. The margins (9 and 7
answers) leave room for differently rounded kernels (another ISA, the sanitizer build) to change a
few greedy answers without flaking, while the code model under ChatML (what `speck chat` gave
before) parses 0 and ends 0 of the first five.

usage: test_chat_model.py SPECK MODEL [quick] [--requests FILE.jsonl]
quick (sanitizer builds, ~20x slower): the first five requests, of which (observed 3/5 parse,
5/5 end) at least 2 must parse and 4 end, all without markup.
--requests: the user turns of another make_chat_data.py file instead; prints the rates only.
"""

import ast
import json
import os
import re
import subprocess
import sys

REQUESTS = [
    "Write the method `TimeRE.compile(self, format)`. Return a compiled re object for the "
    "format string.",
    "Can you write a Python function `iscoroutinefunction`? Return True if func is a decorated "
    "coroutine function.",
    "Python: Return True if obj is a coroutine object. Please implement it as "
    "`iscoroutine(obj)`.",
    "Can you write `TimerHandle.when` in Python? Return a scheduled callback time.",
    "Write the method `BaseDefaultEventLoopPolicy.new_event_loop(self)`. Create a new event "
    "loop.",
    "Write a Python function `get_running_loop()`. Return the running event loop.",
    "Write a Python function `get_event_loop_policy()`. Get the current event loop policy.",
    "Write a Python function `set_event_loop_policy(policy)`. Set the current event loop "
    "policy.",
    "Python: Return an asyncio event loop. Please implement it as `get_event_loop()`.",
    "Write a function called set_event_loop: Equivalent to calling "
    "get_event_loop_policy().set_event_loop(loop).",
    "Equivalent to calling get_event_loop_policy().new_event_loop(). Write it as a Python "
    "function named `new_event_loop`.",
    "Python: Equivalent to calling get_event_loop_policy().get_child_watcher(). Please "
    "implement it as `get_child_watcher()`.",
    "Write a Python function `set_child_watcher(watcher)`. Equivalent to calling "
    "get_event_loop_policy().set_child_watcher(watcher).",
    "Python: Edit in the widget window and collect the results. Please implement it as the "
    "method `edit(self, validate=None)`.",
    "Return an object to identify dataclass fields. Write it as a Python function named "
    "`field`.",
    "Write a Python function `is_dataclass(obj)`. Returns True if obj is a dataclass or an "
    "instance of a dataclass.",
    "Write a Python function `asdict(obj, *, dict_factory=dict)`. Return the fields of a "
    "dataclass instance as a new dictionary mapping field names to field values.",
    "Can you write a Python function `astuple`? Return the fields of a dataclass instance as a "
    "new tuple of field values.",
    "Can you write `config.try_compile` in Python? Try to compile a source file built from "
    "'body' and 'headers'.",
    "Python: Dumps a file content into log.info. Please implement it as `dump_file(filename, "
    "head=None)`.",
    "Implement `create_tree` in Python. Create all the empty directories under 'base_dir' "
    "needed to put 'files' there.",
    "Python: Take the full path 'path', and make it a relative path. Please implement it as "
    "`ensure_relative(path)`.",
    "Write a function called fnmatch: Test whether FILENAME matches PATTERN.",
    "Test whether FILENAME matches PATTERN, including case. Write it as a Python function named"
    " `fnmatchcase`.",
    "Write a Python function `invalidate_caches()`. Call the invalidate_caches() method on all "
    "meta path finders stored in sys.meta_path (where implemented).",
    "Implement the `ext_convert` method of a `BaseConfigurator` class in Python. Default "
    "converter for the ext:// protocol.",
    "Write the method `BaseConfigurator.configure_custom(self, config)`. Configure an object "
    "with a user-supplied factory.",
    "Implement the `as_tuple` method of a `BaseConfigurator` class in Python. Utility function "
    "which converts lists to tuples.",
    "Write the method `DictConfigurator.configure_filter(self, config)`. Configure a filter "
    "from a dictionary.",
    "Write the method `DictConfigurator.add_filters(self, filterer, filters)`. Add filters to a"
    " filterer from a list of names.",
    "Can you write `DictConfigurator.add_handlers` in Python? Add handlers to a logger from a "
    "list of names.",
    "Write a method called configure_logger for the class DictConfigurator: Configure a non-"
    "root logger from a dictionary.",
    "Configure a root logger from a dictionary. Write it as the method `configure_root` of "
    "class `DictConfigurator`.",
    "Implement `dictConfig` in Python. Configure logging using a dictionary.",
    "Write a Python function `stopListening()`. Stop the listening server which was created "
    "with a call to listen().",
    "Write the method `Headers.get_all(self, name)`. Return a list of all the values for the "
    "named field.",
    "Get the first header value for 'name', or return 'default'. Write it as the method `get` "
    "of class `Headers`.",
    "Return a list of all the header field names. Write it as the method `keys` of class "
    "`Headers`.",
    "Can you write `Headers.values` in Python? Return a list of all header values.",
    "Write the method `Headers.items(self)`. Get all the header fields and values.",
    "Return first matching header value for 'name', or 'value'. Write it as the method "
    "`setdefault` of class `Headers`.",
    "Write a function called escape: Escape &, <, and > in a string of data.",
    "Write a function called unescape: Unescape &amp;, &lt;, and &gt; in a string of data.",
    "Can you write a Python function `quoteattr`? Escape and quote an attribute value.",
]
MARKUP = ("<|im_start|>", "<|im_end|>", "<|endoftext|>", "<|")


def ask(speck, model, request):
    r = subprocess.run([speck, "chat", "-m", model, "--temp", "0", "-n", "240", "--stats",
                        "--threads", "1"], input=request + "\n", capture_output=True,
                       text=True, timeout=600)
    if r.returncode != 0:
        raise SystemExit(f"FAIL: speck chat exited {r.returncode}: {r.stderr[-500:]}")
    return r.stdout.rstrip("\n"), "stopped: end of generation" in r.stderr


def requested_name(request):
    """The function name a request asks for: `name(...)`, `Class.name`, or "called name"."""
    m = re.search(r"`(?:\w+\.)?(\w+)", request) or re.search(r"called (\w+)", request)
    return m.group(1) if m else None


def defined_name(answer):
    m = re.match(r"\s*(?:@.*\n\s*)*(?:async\s+)?def (\w+)", answer)
    return m.group(1) if m else None


def is_code(answer):
    try:
        tree = ast.parse(answer)
    except (SyntaxError, ValueError):
        return False
    return any(isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) for n in ast.walk(tree))


def main():
    args = [a for a in sys.argv[1:] if a]
    quick = "quick" in args
    rates_only = "--requests" in args
    reqs = REQUESTS[:5] if quick else REQUESTS
    if rates_only:
        path = args[args.index("--requests") + 1]
        with open(path, encoding="utf-8") as f:
            reqs = [json.loads(line)["messages"][0]["content"] for line in f if line.strip()]
    speck, model = args[0], args[1]
    if not os.path.exists(model):
        print(f"SKIP: {model} not found (scripts/train_chat_model.sh makes it)")
        sys.exit(77)
    n_code = n_ended = n_clean = n_named = 0
    for req in reqs:
        answer, ended = ask(speck, model, req)
        code, clean = is_code(answer), not any(m in answer for m in MARKUP)
        n_code += code
        n_ended += ended
        n_clean += clean
        n_named += defined_name(answer) == requested_name(req)
        print(f"{'code' if code else 'NOT CODE'}, {'ended' if ended else 'NOT ENDED'}, "
              f"{'clean' if clean else 'MARKUP'}: {req}")
        if not rates_only:
            print("    " + answer.replace("\n", "\n    "))
    n = len(reqs)
    print(f"{n_code}/{n} answers parse as Python defining a function, {n_ended}/{n} end their "
          f"turn, {n_clean}/{n} free of chat markup, {n_named}/{n} define the requested name")
    if rates_only:
        return
    need_code, need_ended = (2, 4) if quick else (int(0.6 * n + 0.999), int(0.7 * n + 0.999))
    if n_code >= need_code and n_ended >= need_ended and n_clean == n:
        return
    print(f"FAIL: wanted >= {need_code}/{n} parsing, >= {need_ended}/{n} ending their turn, "
          f"{n}/{n} without markup")
    sys.exit(1)


if __name__ == "__main__":
    main()
