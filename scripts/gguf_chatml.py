#!/usr/bin/env python3
"""Give a GGUF model without chat tokens the ChatML format: its end-of-text token becomes
<|im_end|> and tokenizer.chat_template holds ChatML's Jinja template.

The default code model's 4096-token vocabulary has one special token, <|endoftext|> (BOS = EOS,
id 4095), which the model learned to predict where a document ends and to read as the start of a
new one. Renamed <|im_end|>, the same token closes a ChatML turn: speck's tokenizer reads the
template's "<|im_end|>" as that one CONTROL token, chat and serve stop on it (it is the EOS), and
the model already knows its embedding and output row, so no tensor changes shape (Qwen's chat
models also make <|im_end|> their EOS). <|im_start|> stays plain text (seven ordinary tokens): the
model never has to predict it, since generation stops at the turn's end.

Only metadata changes: tensor descriptions and data are copied byte for byte (their offsets are
relative to the data section). Written to a temporary name, then renamed.

usage: scripts/gguf_chatml.py IN.gguf OUT.gguf [--name NAME]
Plain Python 3 standard library only.
"""

import argparse
import os
import struct
import sys

CHATML_JINJA = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

# GGUF metadata value types: struct format of the scalars; 8 = string, 9 = array.
SCALAR = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q",
          12: "d"}
STRING, ARRAY = 8, 9
TOKEN_CONTROL = 3


class Bad(Exception):
    pass


class Reader:
    def __init__(self, data: bytes, path: str):
        self.d, self.p, self.path = data, 0, path

    def take(self, n: int) -> bytes:
        if n < 0 or self.p + n > len(self.d):
            raise Bad(f"{self.path}: truncated at byte {self.p} (need {n} more)")
        b = self.d[self.p : self.p + n]
        self.p += n
        return b

    def num(self, fmt: str):
        return struct.unpack("<" + fmt, self.take(struct.calcsize(fmt)))[0]

    def string(self) -> str:
        raw = self.take(self.num("Q"))
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise Bad(f"{self.path}: a string at byte {self.p} is not UTF-8") from None

    def value(self, t: int):
        if t == STRING:
            return self.string()
        if t == ARRAY:
            et, n = self.num("I"), self.num("Q")
            if et == ARRAY:
                raise Bad(f"{self.path}: nested arrays are not supported")
            return (et, [self.value(et) for _ in range(n)])
        if t not in SCALAR:
            raise Bad(f"{self.path}: unknown metadata type {t} at byte {self.p}")
        return self.num(SCALAR[t])


def pack_str(s: str) -> bytes:
    b = s.encode("utf-8")
    return struct.pack("<Q", len(b)) + b


def pack_value(t: int, v) -> bytes:
    if t == STRING:
        return pack_str(v)
    if t == ARRAY:
        et, items = v
        return struct.pack("<IQ", et, len(items)) + b"".join(pack_value(et, x) for x in items)
    return struct.pack("<" + SCALAR[t], v)


def convert(src: str, dst: str, name: str | None):
    with open(src, "rb") as f:
        data = f.read()
    r = Reader(data, src)
    if r.take(4) != b"GGUF":
        raise Bad(f"{src}: not a GGUF file")
    version = r.num("I")
    if version not in (2, 3):
        raise Bad(f"{src}: GGUF version {version} (2 or 3 expected)")
    n_tensors, n_kv = r.num("Q"), r.num("Q")
    kv = {}
    for _ in range(n_kv):
        key = r.string()
        t = r.num("I")
        kv[key] = (t, r.value(t))
    infos_start = r.p
    for _ in range(n_tensors):
        r.string()
        nd = r.num("I")
        r.take(8 * nd + 4 + 8)
    infos = data[infos_start : r.p]
    align = kv.get("general.alignment", (4, 32))[1]
    data_start = (r.p + align - 1) // align * align
    if data_start > len(data):
        raise Bad(f"{src}: no data section")

    if "tokenizer.ggml.eos_token_id" not in kv or "tokenizer.ggml.tokens" not in kv:
        raise Bad(f"{src}: no tokenizer.ggml.tokens / tokenizer.ggml.eos_token_id")
    eos = kv["tokenizer.ggml.eos_token_id"][1]
    tokens = kv["tokenizer.ggml.tokens"][1][1]
    if not 0 <= eos < len(tokens):
        raise Bad(f"{src}: tokenizer.ggml.eos_token_id {eos} is not a token")
    if "<|im_end|>" in tokens and tokens.index("<|im_end|>") != eos:
        raise Bad(f"{src}: the vocabulary has <|im_end|> already (id {tokens.index('<|im_end|>')})")
    tokens[eos] = "<|im_end|>"
    if "tokenizer.ggml.token_type" in kv:
        kv["tokenizer.ggml.token_type"][1][1][eos] = TOKEN_CONTROL
    kv["tokenizer.chat_template"] = (STRING, CHATML_JINJA)
    if name:
        kv["general.name"] = (STRING, name)

    head = bytearray(b"GGUF" + struct.pack("<IQQ", 3, n_tensors, len(kv)))
    for key, (t, v) in kv.items():
        head += pack_str(key) + struct.pack("<I", t) + pack_value(t, v)
    head += infos
    head += b"\0" * ((-len(head)) % align)
    tmp = f"{dst}.tmp.{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            f.write(head)
            f.write(data[data_start:])
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, dst)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("input")
    ap.add_argument("output")
    ap.add_argument("--name", help="general.name of the output")
    a = ap.parse_args()
    try:
        convert(a.input, a.output, a.name)
    except (Bad, OSError) as e:
        sys.exit(f"gguf_chatml.py: {e}")


if __name__ == "__main__":
    main()
