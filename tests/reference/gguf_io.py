"""Minimal GGUF v3 reader/writer used by speck's reference tests.

Written from the published format description only, so that it is independent of both speck's C
reader and llama.cpp's gguf-py: a disagreement between this file and speck points at a real bug
in one of them rather than at a shared misreading.

Layout (all little-endian):
    magic "GGUF", u32 version, u64 n_tensors, u64 n_kv
    n_kv x   { string key, u32 value_type, value }
    n_tensors x { string name, u32 n_dims, u64 ne[n_dims], u32 ggml_type, u64 offset }
    padding to `general.alignment` (default 32), then the data section; every tensor offset
    (relative to the data section) is a multiple of the alignment as well.
A string is u64 length + bytes (no terminator). ne[0] is the fastest-varying dimension, so a
tensor with ne = [n_in, n_out] is the numpy array of shape (n_out, n_in).

Public API:
    read_gguf(path)  -> GGUFFile(version, kv, kv_types, tensors, tensor_types, tensor_ne, alignment)
    write_gguf(path, kv, tensors, alignment=32)
    quantize(x, ggml_type) / dequantize(raw_bytes, ggml_type, n) for the supported types.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

import numpy as np

import quant_ref as QR

# --------------------------------------------------------------------------------------------
# Type numbering (identical to the file format; do not renumber)
# --------------------------------------------------------------------------------------------

# Metadata value types.
GGUF_U8, GGUF_I8, GGUF_U16, GGUF_I16 = 0, 1, 2, 3
GGUF_U32, GGUF_I32, GGUF_F32, GGUF_BOOL = 4, 5, 6, 7
GGUF_STRING, GGUF_ARRAY = 8, 9
GGUF_U64, GGUF_I64, GGUF_F64 = 10, 11, 12

# Fixed-size scalar value types -> struct format character.
_SCALAR_FMT = {
    GGUF_U8: "B", GGUF_I8: "b", GGUF_U16: "H", GGUF_I16: "h",
    GGUF_U32: "I", GGUF_I32: "i", GGUF_F32: "f", GGUF_BOOL: "?",
    GGUF_U64: "Q", GGUF_I64: "q", GGUF_F64: "d",
}
# Same, as numpy dtypes, for reading/writing arrays in one go.
_SCALAR_DTYPE = {
    GGUF_U8: "<u1", GGUF_I8: "<i1", GGUF_U16: "<u2", GGUF_I16: "<i2",
    GGUF_U32: "<u4", GGUF_I32: "<i4", GGUF_F32: "<f4", GGUF_BOOL: "<u1",
    GGUF_U64: "<u8", GGUF_I64: "<i8", GGUF_F64: "<f8",
}

# Tensor (ggml) types supported here: the float types, Q8_0 and Q4_0 below, and every block type
# of quant_ref.py (its own dequantizers and simple encoders).
F32, F16, Q4_0, Q8_0, BF16 = 0, 1, 2, 8, 30
TYPE_NAMES = {F32: "f32", F16: "f16", Q4_0: "q4_0", Q8_0: "q8_0", BF16: "bf16"}
QK = 32  # values per block of Q8_0 / Q4_0
# (values per block, bytes per block)
_BLOCK = {F32: (1, 4), F16: (1, 2), BF16: (1, 2), Q8_0: (QK, 2 + QK), Q4_0: (QK, 2 + QK // 2)}
for _name, (_id, _bs, _bytes) in QR.TYPES.items():
    if _id not in TYPE_NAMES:
        TYPE_NAMES[_id] = _name
        _BLOCK[_id] = (_bs, _bytes)
TYPE_FROM_NAME = {v: k for k, v in TYPE_NAMES.items()}

DEFAULT_ALIGNMENT = 32
MAGIC = b"GGUF"


def row_bytes(ggml_type: int, n: int) -> int:
    """Bytes taken by n consecutive values of ggml_type (n a multiple of the block size)."""
    per_block, nbytes = _BLOCK[ggml_type]
    if n % per_block:
        raise ValueError(f"{TYPE_NAMES[ggml_type]}: {n} values is not a multiple of {per_block}")
    return n // per_block * nbytes


# --------------------------------------------------------------------------------------------
# Quantization. Formulas follow the ggml reference quantizers, computed in float32 like the C
# code so that requantizing the same data gives the same bytes.
# --------------------------------------------------------------------------------------------

def _round_half_away(v: np.ndarray) -> np.ndarray:
    # C's roundf() rounds halves away from zero; numpy's round() rounds them to even.
    return np.trunc(v + np.copysign(np.float32(0.5), v))


def _f32_to_bf16_bits(x: np.ndarray) -> np.ndarray:
    """Round-to-nearest-even truncation of float32 to its top 16 bits (NaN kept quiet)."""
    u = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32).astype(np.uint64)
    is_nan = (u & 0x7FFFFFFF) > 0x7F800000
    rounded = (u + 0x7FFF + ((u >> 16) & 1)) >> 16
    out = np.where(is_nan, (u >> 16) | 0x40, rounded)
    return out.astype(np.uint16)


def quantize(x: np.ndarray, ggml_type: int) -> bytes:
    """Encode a float array (any shape, row-major) as ggml_type and return the raw bytes."""
    x = np.ascontiguousarray(x, dtype=np.float32).reshape(-1)
    if ggml_type == F32:
        return x.astype("<f4").tobytes()
    if ggml_type == F16:
        return x.astype("<f2").tobytes()
    if ggml_type == BF16:
        return _f32_to_bf16_bits(x).astype("<u2").tobytes()
    if ggml_type in _BLOCK and ggml_type not in (Q8_0, Q4_0):
        return QR.quantize(TYPE_NAMES[ggml_type], x)
    if ggml_type not in (Q8_0, Q4_0):
        raise ValueError(f"unsupported tensor type {ggml_type}")
    if x.size % QK:
        raise ValueError(f"{x.size} values is not a multiple of the block size {QK}")
    blocks = x.reshape(-1, QK)
    nb = blocks.shape[0]
    if ggml_type == Q8_0:
        amax = np.abs(blocks).max(axis=1)
        d = amax / np.float32(127)
        inv = np.divide(np.float32(1), d, out=np.zeros_like(d), where=d != 0)
        q = _round_half_away(blocks * inv[:, None]).astype(np.int8)
        out = np.empty((nb, 2 + QK), dtype=np.uint8)
        out[:, :2] = d.astype("<f2").reshape(nb, 1).view(np.uint8)
        out[:, 2:] = q.view(np.uint8)
        return out.tobytes()
    # Q4_0: the scale is signed so that the largest-magnitude value maps exactly onto -8,
    # using the full asymmetric range [-8, 7] of a nibble.
    idx = np.abs(blocks).argmax(axis=1)  # first index on ties, like the C loop's strict '>'
    m = blocks[np.arange(nb), idx]
    d = m / np.float32(-8)
    inv = np.divide(np.float32(1), d, out=np.zeros_like(d), where=d != 0)
    v = blocks * inv[:, None] + np.float32(8.5)
    # The C code casts a (positive) float to int: truncation toward zero.
    q = np.minimum(15, np.trunc(v).astype(np.int32)).astype(np.uint8)
    out = np.empty((nb, 2 + QK // 2), dtype=np.uint8)
    out[:, :2] = d.astype("<f2").reshape(nb, 1).view(np.uint8)
    out[:, 2:] = q[:, : QK // 2] | (q[:, QK // 2:] << 4)
    return out.tobytes()


def dequantize(raw: bytes | memoryview | np.ndarray, ggml_type: int, n: int) -> np.ndarray:
    """Decode n values of ggml_type from raw bytes into a flat float32 array."""
    buf = np.frombuffer(raw, dtype=np.uint8, count=row_bytes(ggml_type, n))
    if ggml_type == F32:
        return buf.view("<f4").astype(np.float32)
    if ggml_type == F16:
        return buf.view("<f2").astype(np.float32)
    if ggml_type == BF16:
        return (buf.view("<u2").astype(np.uint32) << 16).view(np.float32)
    nb = n // QK
    if ggml_type == Q8_0:
        blk = buf.reshape(nb, 2 + QK)
        d = blk[:, :2].copy().view("<f2").astype(np.float32)  # (nb, 1)
        q = blk[:, 2:].view(np.int8).astype(np.float32)
        return (d * q).reshape(-1)
    if ggml_type == Q4_0:
        blk = buf.reshape(nb, 2 + QK // 2)
        d = blk[:, :2].copy().view("<f2").astype(np.float32)
        qs = blk[:, 2:]
        # Low nibbles hold values 0..15 of the block, high nibbles values 16..31.
        q = np.concatenate([qs & 15, qs >> 4], axis=1).astype(np.float32) - 8
        return (d * q).reshape(-1)
    if ggml_type in _BLOCK:
        return QR.dequantize(TYPE_NAMES[ggml_type], buf.tobytes())
    raise ValueError(f"unsupported tensor type {ggml_type}")


# --------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------

@dataclass
class GGUFFile:
    version: int
    alignment: int
    kv: dict = field(default_factory=dict)            # key -> python value (arrays as lists)
    kv_types: dict = field(default_factory=dict)      # key -> value type (ARRAY: (9, elem type))
    tensors: dict = field(default_factory=dict)       # name -> float32 ndarray, dequantized
    tensor_types: dict = field(default_factory=dict)  # name -> ggml type id
    tensor_ne: dict = field(default_factory=dict)     # name -> ne list as in the file
    data_offset: int = 0                              # file offset of the data section


class _Reader:
    def __init__(self, data: bytes):
        self.data = data
        self.pos = 0

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise ValueError(f"GGUF truncated: need {n} bytes at offset {self.pos}")
        b = self.data[self.pos:self.pos + n]
        self.pos += n
        return b

    def scalar(self, vtype: int):
        fmt = "<" + _SCALAR_FMT[vtype]
        return struct.unpack(fmt, self.take(struct.calcsize(fmt)))[0]

    def string(self) -> str:
        n = self.scalar(GGUF_U64)
        return self.take(n).decode("utf-8")

    def value(self, vtype: int):
        if vtype == GGUF_STRING:
            return self.string()
        if vtype == GGUF_ARRAY:
            etype = self.scalar(GGUF_U32)
            n = self.scalar(GGUF_U64)
            if etype == GGUF_STRING:
                return etype, [self.string() for _ in range(n)]
            if etype == GGUF_ARRAY:
                return etype, [self.value(GGUF_ARRAY)[1] for _ in range(n)]
            dt = np.dtype(_SCALAR_DTYPE[etype])
            arr = np.frombuffer(self.take(n * dt.itemsize), dtype=dt)
            vals = arr.astype(bool) if etype == GGUF_BOOL else arr
            return etype, vals.tolist()
        if vtype not in _SCALAR_FMT:
            raise ValueError(f"unknown GGUF value type {vtype} at offset {self.pos}")
        return self.scalar(vtype)


def read_gguf(path: str, dequant: bool = True) -> GGUFFile:
    """Parse a GGUF v2/v3 file. Tensors are returned dequantized to float32 numpy arrays shaped
    (ne[n-1], ..., ne[0]); with dequant=False the `tensors` dict is left empty."""
    with open(path, "rb") as f:
        data = f.read()
    r = _Reader(data)
    if r.take(4) != MAGIC:
        raise ValueError(f"{path}: not a GGUF file (bad magic)")
    version = r.scalar(GGUF_U32)
    if version not in (2, 3):
        raise ValueError(f"{path}: unsupported GGUF version {version}")
    n_tensors = r.scalar(GGUF_U64)
    n_kv = r.scalar(GGUF_U64)

    out = GGUFFile(version=version, alignment=DEFAULT_ALIGNMENT)
    for _ in range(n_kv):
        key = r.string()
        vtype = r.scalar(GGUF_U32)
        val = r.value(vtype)
        if vtype == GGUF_ARRAY:
            etype, val = val
            out.kv_types[key] = (GGUF_ARRAY, etype)
        else:
            out.kv_types[key] = vtype
        if key in out.kv:
            raise ValueError(f"{path}: duplicate key {key!r}")
        out.kv[key] = val
    if "general.alignment" in out.kv:
        out.alignment = int(out.kv["general.alignment"])
        if out.alignment <= 0 or out.alignment & (out.alignment - 1):
            raise ValueError(f"{path}: general.alignment {out.alignment} is not a power of two")

    infos = []
    for _ in range(n_tensors):
        name = r.string()
        n_dims = r.scalar(GGUF_U32)
        ne = [r.scalar(GGUF_U64) for _ in range(n_dims)]
        ttype = r.scalar(GGUF_U32)
        offset = r.scalar(GGUF_U64)
        if offset % out.alignment:
            raise ValueError(f"{path}: tensor {name!r} offset {offset} is not aligned")
        infos.append((name, ne, ttype, offset))

    a = out.alignment
    out.data_offset = (r.pos + a - 1) // a * a
    for name, ne, ttype, offset in infos:
        out.tensor_types[name] = ttype
        out.tensor_ne[name] = ne
        if not dequant:
            continue
        if ttype not in _BLOCK:
            raise ValueError(f"{path}: tensor {name!r} has unsupported type {ttype}")
        n = int(np.prod(ne)) if ne else 1
        start = out.data_offset + offset
        nbytes = row_bytes(ttype, n)
        if start + nbytes > len(data):
            raise ValueError(f"{path}: tensor {name!r} data runs past the end of the file")
        flat = dequantize(memoryview(data)[start:start + nbytes], ttype, n)
        out.tensors[name] = flat.reshape(tuple(reversed(ne)))
    return out


# --------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------

def _pack_string(s: str | bytes) -> bytes:
    b = s.encode("utf-8") if isinstance(s, str) else s
    return struct.pack("<Q", len(b)) + b


def _pack_value(vtype, value) -> bytes:
    """vtype is a value type, or (GGUF_ARRAY, elem_type) for arrays."""
    if isinstance(vtype, tuple):
        _, etype = vtype
        head = struct.pack("<IQ", etype, len(value))
        if etype == GGUF_STRING:
            return head + b"".join(_pack_string(s) for s in value)
        if etype == GGUF_ARRAY:
            raise ValueError("nested arrays are not supported by this writer")
        return head + np.asarray(value).astype(_SCALAR_DTYPE[etype]).tobytes()
    if vtype == GGUF_STRING:
        return _pack_string(value)
    return struct.pack("<" + _SCALAR_FMT[vtype], value)


def write_gguf(path: str, kv, tensors, alignment: int | None = None) -> None:
    """Write a GGUF v3 file.

    kv:      list of (key, vtype, value); vtype is a GGUF_* scalar/string type, or the tuple
             (GGUF_ARRAY, elem_type) with value a list. general.alignment is taken from here if
             present (it must then be a u32), else `alignment` (default 32) is used and written.
    tensors: list of (name, array, ggml_type); the array's numpy shape (…, ne[1], ne[0]) gives
             the GGUF ne in reverse order, and it is converted/quantized to ggml_type.
    """
    kv = list(kv)
    keys = [k for k, _, _ in kv]
    if len(set(keys)) != len(keys):
        raise ValueError("duplicate metadata keys")
    if "general.alignment" in keys:
        align = int(next(v for k, _, v in kv if k == "general.alignment"))
    else:
        align = alignment or DEFAULT_ALIGNMENT
        kv.append(("general.alignment", GGUF_U32, align))

    head = bytearray(MAGIC)
    head += struct.pack("<IQQ", 3, len(tensors), len(kv))
    for key, vtype, value in kv:
        t = vtype[0] if isinstance(vtype, tuple) else vtype
        head += _pack_string(key) + struct.pack("<I", t) + _pack_value(vtype, value)

    blobs = []
    offset = 0
    for name, arr, ttype in tensors:
        arr = np.asarray(arr, dtype=np.float32)
        ne = list(reversed(arr.shape)) or [1]
        blob = quantize(arr, ttype)
        head += _pack_string(name) + struct.pack("<I", len(ne))
        head += struct.pack(f"<{len(ne)}Q", *ne) + struct.pack("<IQ", ttype, offset)
        blobs.append((offset, blob))
        offset += (len(blob) + align - 1) // align * align

    data_start = (len(head) + align - 1) // align * align
    with open(path, "wb") as f:
        f.write(head)
        f.write(b"\0" * (data_start - len(head)))
        pos = 0
        for off, blob in blobs:
            f.write(b"\0" * (off - pos))
            f.write(blob)
            pos = off + len(blob)
        # Pad the last tensor too, so the file ends on an alignment boundary as llama.cpp's do.
        f.write(b"\0" * (offset - pos))
