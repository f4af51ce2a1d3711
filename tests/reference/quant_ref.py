#!/usr/bin/python3
"""Independent numpy dequantizers for the GGUF block types, and the test of speck's against them.

Written from the block layouts as published with the GGUF format (the struct definitions and
element orders; see docs/quantization.md), not from speck's C code: every type is decoded here
with whole-array numpy operations in a different shape from speck's loops, so a shared misreading
is unlikely.

Test (ctest `quant_reference`): random blocks of every type -- random bytes, with the fp16 scale
fields replaced in some blocks by extreme values (+-65504, subnormals), zero, negative zero, +-Inf
and NaNs -- are dequantized by speck (tests/quant_dump, on each kernel path the CPU has) and here,
and must agree bit for bit. The one exception is NaN: IEEE 754 does not fix which NaN an
operation on NaNs returns (x86 keeps the first operand's payload, and a compiler may swap the
operands of a commutative operation), so any NaN matches any NaN; a NaN against a number, or any
other bit difference (signed zeros included), fails. Bit-exactness is the right target: each
value is the exact product of its integer factors and fp16 scales with at most one rounding (the
subtraction of a min), so every correct implementation gives the same float.

It then quantizes Gaussian rows (plus outlier rows, constant and zero rows) with speck's
quantizers and checks, with this file's dequantizer, that the error stays under a per-type bound
(QUANT_RMSE below, with the reasoning). bench/quant_vs_ggml.py (not a test) checks that speck's
quantizers write the very bytes llama.cpp's do.

Usage: quant_ref.py --dump build/tests/quant_dump [--type q4_k,q6_k] [--isa avx2] [-v]
Prints PASS/FAIL lines and `N passed, M failed`; exits 1 on failure.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile

import numpy as np

# ggml type ids, values per block and bytes per block.
TYPES = {
    "q4_0": (2, 32, 18), "q4_1": (3, 32, 20), "q5_0": (6, 32, 22), "q5_1": (7, 32, 24),
    "q8_0": (8, 32, 34), "q2_k": (10, 256, 84), "q3_k": (11, 256, 110), "q4_k": (12, 256, 144),
    "q5_k": (13, 256, 176), "q6_k": (14, 256, 210), "iq4_nl": (20, 32, 18),
    "iq4_xs": (23, 256, 136),
    "dgq4": (101, 256, 138),  # speck's own Dual-Grained Quantization type (no ggml id)
}

# The 16 levels of the IQ4_NL / IQ4_XS grid.
IQ4_GRID = np.array([-127, -104, -83, -65, -49, -35, -22, -10,
                     1, 13, 25, 38, 53, 69, 89, 113], dtype=np.float32)


def f16(b: np.ndarray, off: int) -> np.ndarray:
    """The little-endian fp16 at byte `off` of each block (rows of b), widened to float32."""
    return b[:, off:off + 2].copy().view("<f2").reshape(-1).astype(np.float32)


def nibbles32(qs: np.ndarray) -> np.ndarray:
    """(nb, 16) bytes -> (nb, 32) 4-bit values: byte j holds element j (low) and j + 16 (high)."""
    return np.concatenate([qs & 0xF, qs >> 4], axis=1)


def bits(u: np.ndarray, nbits: int) -> np.ndarray:
    """(nb, k) bytes -> (nb, k * 8) bits, least significant bit of each byte first."""
    return np.unpackbits(u, axis=1, bitorder="little")[:, : u.shape[1] * 8][:, :nbits]


def deq_q4_0(b):
    d = f16(b, 0)[:, None]
    return (nibbles32(b[:, 2:18]).astype(np.float32) - np.float32(8)) * d


def deq_q4_1(b):
    d, m = f16(b, 0)[:, None], f16(b, 2)[:, None]
    return nibbles32(b[:, 4:20]).astype(np.float32) * d + m


def deq_q5(b, has_min):
    off = 4 if has_min else 2
    d = f16(b, 0)[:, None]
    hi = bits(b[:, off:off + 4], 32)  # bit j of the 32-bit qh is element j's fifth bit
    q = (nibbles32(b[:, off + 4:off + 20]) | (hi << 4)).astype(np.float32)
    if has_min:
        return q * d + f16(b, 2)[:, None]
    return (q - np.float32(16)) * d


def deq_q8_0(b):
    return b[:, 2:34].view(np.int8).astype(np.float32) * f16(b, 0)[:, None]


def deq_iq4_nl(b):
    return IQ4_GRID[nibbles32(b[:, 2:18])] * f16(b, 0)[:, None]


def crumbs_256(qs: np.ndarray) -> np.ndarray:
    """Q2_K / Q3_K low bits: (nb, 64) bytes -> (nb, 256) 2-bit values. Each half of 128 values
    takes 32 bytes; value 32s + l of the half is bits 2s..2s+1 of byte l."""
    nb = qs.shape[0]
    q = qs.reshape(nb, 2, 1, 32)
    shifts = np.array([0, 2, 4, 6], dtype=np.uint8).reshape(1, 1, 4, 1)
    return ((q >> shifts) & 3).reshape(nb, 256)


def deq_q2_k(b):
    sc = b[:, 0:16]
    q = crumbs_256(b[:, 16:80]).astype(np.float32).reshape(-1, 16, 16)  # 16 sub-blocks of 16
    d, dmin = f16(b, 80)[:, None, None], f16(b, 82)[:, None, None]
    dl = d * (sc & 0xF).astype(np.float32)[:, :, None]
    ml = dmin * (sc >> 4).astype(np.float32)[:, :, None]
    return (dl * q - ml).reshape(-1, 256)


def q3k_scales(s: np.ndarray) -> np.ndarray:
    """(nb, 12) scale bytes -> (nb, 16) signed scales (6 bits, minus 32)."""
    lo = np.concatenate([s[:, 0:8] & 0xF, s[:, 0:8] >> 4], axis=1)  # scales 0-7, 8-15
    j = np.arange(16)
    hi = (s[:, 8 + j % 4] >> (2 * (j // 4))) & 3
    return (lo | (hi << 4)).astype(np.int32) - 32


def deq_q3_k(b):
    hmask, qs, d = b[:, 0:32], b[:, 32:96], f16(b, 108)
    nb = b.shape[0]
    low = crumbs_256(qs).astype(np.int32)
    # Element 32k + l (k = 0..7) has its high bit in bit k of hmask[l].
    hb = ((hmask[:, None, :] >> np.arange(8, dtype=np.uint8)[None, :, None]) & 1).reshape(nb, 256)
    q = (low - np.where(hb == 1, 0, 4)).astype(np.float32).reshape(nb, 16, 16)
    dl = d[:, None] * q3k_scales(b[:, 96:108]).astype(np.float32)
    return (dl[:, :, None] * q).reshape(nb, 256)


def k4_scales(s: np.ndarray):
    """Q4_K / Q5_K: (nb, 12) bytes -> (nb, 8) scales and (nb, 8) mins, 6 bits each."""
    sc = np.empty((s.shape[0], 8), dtype=np.int32)
    mn = np.empty_like(sc)
    sc[:, :4], mn[:, :4] = s[:, 0:4] & 63, s[:, 4:8] & 63
    sc[:, 4:] = (s[:, 8:12] & 0xF) | ((s[:, 0:4] >> 6) << 4)
    mn[:, 4:] = (s[:, 8:12] >> 4) | ((s[:, 4:8] >> 6) << 4)
    return sc.astype(np.float32), mn.astype(np.float32)


def deq_q45_k(b, five):
    nb = b.shape[0]
    d, dmin = f16(b, 0)[:, None], f16(b, 2)[:, None]
    sc, mn = k4_scales(b[:, 4:16])
    qs = b[:, 48:176] if five else b[:, 16:144]
    # 4 chunks of 64 values: 32 low nibbles, then the 32 high nibbles of the same bytes.
    c = qs.reshape(nb, 4, 1, 32)
    q = np.concatenate([c & 0xF, c >> 4], axis=2).reshape(nb, 256).astype(np.int32)
    if five:
        qh = b[:, 16:48]  # value 32k + l: bit k of qh[l]
        hb = ((qh[:, None, :] >> np.arange(8, dtype=np.uint8)[None, :, None]) & 1).reshape(nb, 256)
        q = q | (hb.astype(np.int32) << 4)
    q = q.astype(np.float32).reshape(nb, 8, 32)
    dl, ml = (d * sc)[:, :, None], (dmin * mn)[:, :, None]
    return (dl * q - ml).reshape(nb, 256)


def deq_q6_k(b):
    nb = b.shape[0]
    ql, qh = b[:, 0:128].reshape(nb, 2, 64), b[:, 128:192].reshape(nb, 2, 32)
    sc = b[:, 192:208].view(np.int8).astype(np.float32)
    d = f16(b, 208)
    # Per half: value groups 0..3 of 32 = low nibbles of ql[0:32], ql[32:64], high nibbles of
    # the same; top bits from the 2-bit fields 0..3 of qh.
    low = np.stack([ql[:, :, :32] & 0xF, ql[:, :, 32:] & 0xF, ql[:, :, :32] >> 4,
                    ql[:, :, 32:] >> 4], axis=2)
    top = np.stack([(qh >> s) & 3 for s in (0, 2, 4, 6)], axis=2)
    q = (low | (top << 4)).astype(np.int32).reshape(nb, 256) - 32
    dl = (d[:, None] * sc)  # (nb, 16), one per 16 values
    return (np.repeat(dl, 16, axis=1) * q.astype(np.float32))


def deq_iq4_xs(b):
    nb = b.shape[0]
    d = f16(b, 0)
    sh = b[:, 2:4].copy().view("<u2").reshape(-1).astype(np.int32)
    sl = b[:, 4:8]
    j = np.arange(8)
    ls = ((sl[:, j // 2] >> (4 * (j % 2))) & 0xF).astype(np.int32) | (((sh[:, None] >> (2 * j)) & 3) << 4)
    dl = d[:, None] * (ls - 32).astype(np.float32)  # (nb, 8)
    q = nibbles32(b[:, 8:136].reshape(nb * 8, 16)).reshape(nb, 8, 32)
    return (dl[:, :, None] * IQ4_GRID[q]).reshape(nb, 256)


def deq_dgq4(b):
    # { fp16 d; i8 sc[8]; u8 qs[128] }: x = (d * sc[e // 32]) * (q - 8), nibbles in Q4_K's order
    # (values 64c .. 64c + 31 the low nibbles of qs[32c .. 32c + 31], the next 32 the high ones).
    nb = b.shape[0]
    d = f16(b, 0)
    sc = b[:, 2:10].view(np.int8).astype(np.float32)
    c = b[:, 10:138].reshape(nb, 4, 32)
    q = np.stack([c & 0xF, c >> 4], axis=2).reshape(nb, 8, 32).astype(np.float32) - 8
    return ((d[:, None] * sc)[:, :, None] * q).reshape(nb, 256)


DEQUANT = {
    "q4_0": deq_q4_0, "q4_1": deq_q4_1, "q5_0": lambda b: deq_q5(b, False),
    "q5_1": lambda b: deq_q5(b, True), "q8_0": deq_q8_0, "q2_k": deq_q2_k, "q3_k": deq_q3_k,
    "q4_k": lambda b: deq_q45_k(b, False), "q5_k": lambda b: deq_q45_k(b, True),
    "q6_k": deq_q6_k, "iq4_nl": deq_iq4_nl, "iq4_xs": deq_iq4_xs, "dgq4": deq_dgq4,
}
def dequantize_any(name: str, raw) -> np.ndarray:
    """Like dequantize, for callers holding a buffer (memoryview, bytes)."""
    return dequantize(name, bytes(raw))


# ---- simple quantizers (for writing test models) ----------------------------------------------
# Plain round-to-nearest encoders, no scale search: any valid encoding serves the forward-pass
# tests, which dequantize whatever bytes the file holds. Writing the layouts from the other
# direction also checks this file's reading of them (quantize -> dequantize must be close).

def _h(v) -> np.ndarray:
    """float values -> (k, 2) bytes of little-endian fp16."""
    return np.asarray(v, dtype=np.float32).astype("<f2").view(np.uint8).reshape(-1, 2)


def _hv(v) -> np.ndarray:
    """The float32 value each fp16 rounding stores."""
    return np.asarray(v, dtype=np.float32).astype("<f2").astype(np.float32)


def _div(a, b):
    """a / b, 0 where b == 0."""
    a, b = np.broadcast_arrays(np.asarray(a, np.float32), np.asarray(b, np.float32))
    return np.divide(a, b, out=np.zeros(a.shape, np.float32), where=b != 0)


def _signed_max(x, axis):
    """The value of largest magnitude along axis (its sign kept)."""
    i = np.abs(x).argmax(axis=axis)
    return np.take_along_axis(x, np.expand_dims(i, axis), axis).squeeze(axis)


def _pack_nib32(q):
    """(nb, 32) levels 0..15 -> (nb, 16) bytes, element j low / j + 16 high."""
    return (q[:, :16] | (q[:, 16:] << 4)).astype(np.uint8)


def _bits_to_bytes(b, nbytes):
    """(nb, nbytes * 8) bits, element k -> bit k % 8 of byte k // 8."""
    return np.packbits(b.astype(np.uint8), axis=1, bitorder="little")[:, :nbytes]


def _grid_index(v):
    return np.abs(v[..., None] - IQ4_GRID).argmin(axis=-1).astype(np.uint8)


def _roundf(v):
    """C roundf (halves away from zero) of float32 values, exactly: v + 0.5 could round up."""
    r = np.trunc(v)
    return r + np.sign(v) * (np.abs(v - r) >= np.float32(0.5))


def _q32(name, x):
    nb = x.shape[0]
    if name == "q8_0":  # ggml: d = max|x| / 127, levels roundf(x * (1 / d)) (float32 product)
        d = np.abs(x).max(1) / np.float32(127)
        q = _roundf(x * _div(np.float32(1), d)[:, None]).astype(np.int8)
        return np.concatenate([_h(d), q.view(np.uint8)], axis=1)
    if name == "q4_0":  # ggml: d = (the value of largest magnitude) / -8, levels
        # min(15, trunc(x * (1 / d) + 8.5)) in float32, element j low nibble, j + 16 high
        d = _signed_max(x, 1) / np.float32(-8)
        v = x * _div(np.float32(1), d)[:, None] + np.float32(8.5)
        q = np.clip(np.trunc(v), 0, 15).astype(np.uint8)
        return np.concatenate([_h(d), _pack_nib32(q)], axis=1)
    if name in ("q4_1", "q5_1"):
        nmax = 15 if name == "q4_1" else 31
        lo, hi = x.min(1), x.max(1)
        d = (hi - lo) / np.float32(nmax)
        q = np.clip(np.rint(_div(x - lo[:, None], _hv(d)[:, None])), 0, nmax).astype(np.uint8)
        head = [_h(d), _h(lo)]
    elif name == "q5_0":
        d = _signed_max(x, 1) / np.float32(-16)
        q = np.clip(np.rint(_div(x, _hv(d)[:, None])) + 16, 0, 31).astype(np.uint8)
        head = [_h(d)]
    else:  # iq4_nl
        d = _signed_max(x, 1) / np.float32(-127)
        q = _grid_index(_div(x, _hv(d)[:, None]))
        head = [_h(d)]
    parts = head
    if name in ("q5_0", "q5_1"):
        parts.append(_bits_to_bytes(q >> 4, 4))
    parts.append(_pack_nib32(q & 0xF))
    return np.concatenate(parts, axis=1)


def _pack_crumbs(q):
    """(nb, 256) 2-bit levels -> (nb, 64) bytes (the inverse of crumbs_256)."""
    nb = q.shape[0]
    q = q.reshape(nb, 2, 4, 32).astype(np.uint8)
    return (q[:, :, 0] | (q[:, :, 1] << 2) | (q[:, :, 2] << 4) | (q[:, :, 3] << 6)).reshape(nb, 64)


def _high_bits(q, shift):
    """(nb, 256) levels: bit `shift` of element 32k + l -> bit k of byte l."""
    nb = q.shape[0]
    b = ((q.reshape(nb, 8, 32) >> shift) & 1).astype(np.uint8)
    return (b << np.arange(8, dtype=np.uint8)[None, :, None]).sum(axis=1).astype(np.uint8)


def _qk(name, x):
    nb = x.shape[0]
    if name in ("q2_k", "q4_k", "q5_k"):
        nsub = 16 if name == "q2_k" else 8
        nmax, smax = {"q2_k": (3, 15), "q4_k": (15, 63), "q5_k": (31, 63)}[name]
        sub = x.reshape(nb, nsub, -1)
        lo = np.minimum(sub.min(2), 0)
        scale, mins = (sub.max(2) - lo) / np.float32(nmax), -lo
        d, dmin = scale.max(1) / np.float32(smax), mins.max(1) / np.float32(smax)
        sc = np.clip(np.rint(_div(scale, d[:, None])), 0, smax).astype(np.uint8)
        mn = np.clip(np.rint(_div(mins, dmin[:, None])), 0, smax).astype(np.uint8)
        dl = _hv(d)[:, None] * sc.astype(np.float32)
        ml = _hv(dmin)[:, None] * mn.astype(np.float32)
        q = np.clip(np.rint(_div(sub + ml[:, :, None], dl[:, :, None])), 0, nmax)
        q = q.astype(np.uint8).reshape(nb, 256)
        if name == "q2_k":
            return np.concatenate([sc | (mn << 4), _pack_crumbs(q), _h(d), _h(dmin)], axis=1)
        s = np.empty((nb, 12), dtype=np.uint8)
        s[:, 0:4] = sc[:, :4] | ((sc[:, 4:] >> 4) << 6)
        s[:, 4:8] = mn[:, :4] | ((mn[:, 4:] >> 4) << 6)
        s[:, 8:12] = (sc[:, 4:] & 0xF) | ((mn[:, 4:] & 0xF) << 4)
        c = q.reshape(nb, 4, 2, 32)
        qs = ((c[:, :, 0] & 0xF) | ((c[:, :, 1] & 0xF) << 4)).reshape(nb, 128)
        parts = [_h(d), _h(dmin), s] + ([_high_bits(q, 4)] if name == "q5_k" else []) + [qs]
        return np.concatenate(parts, axis=1)
    if name in ("q3_k", "q6_k"):
        lmin, lmax, smin, smax = (-4, 3, -32, 31) if name == "q3_k" else (-32, 31, -128, 127)
        sub = x.reshape(nb, 16, 16)
        scale = _signed_max(sub, 2) / np.float32(lmin)
        D = _signed_max(scale, 1) / np.float32(smin)
        sc = np.clip(np.rint(_div(scale, D[:, None])), smin, smax).astype(np.int32)
        dl = _hv(D)[:, None] * sc.astype(np.float32)
        q = np.clip(np.rint(_div(sub, dl[:, :, None])), lmin, lmax).astype(np.int32)
        q = (q - lmin).reshape(nb, 256).astype(np.uint8)  # 0..7 / 0..63
        if name == "q3_k":
            u = (sc + 32).astype(np.uint8)
            s = np.zeros((nb, 12), dtype=np.uint8)
            s[:, 0:8] = (u[:, 0:8] & 0xF) | ((u[:, 8:16] & 0xF) << 4)
            for j in range(16):
                s[:, 8 + j % 4] |= (u[:, j] >> 4) << (2 * (j // 4))
            return np.concatenate([_high_bits(q, 2), _pack_crumbs(q & 3), s, _h(D)], axis=1)
        h = q.reshape(nb, 2, 4, 32)
        ql = np.concatenate([(h[:, :, 0] & 0xF) | ((h[:, :, 2] & 0xF) << 4),
                             (h[:, :, 1] & 0xF) | ((h[:, :, 3] & 0xF) << 4)], axis=2)
        qh = ((h[:, :, 0] >> 4) | ((h[:, :, 1] >> 4) << 2) | ((h[:, :, 2] >> 4) << 4) |
              ((h[:, :, 3] >> 4) << 6))
        return np.concatenate([ql.reshape(nb, 128), qh.reshape(nb, 64),
                               sc.astype(np.int8).view(np.uint8), _h(D)], axis=1)
    if name == "dgq4":  # group scale = signed max / -8, d = the largest |group scale| / 127
        sub = x.reshape(nb, 8, 32)
        scale = _signed_max(sub, 2) / np.float32(-8)
        D = np.abs(scale).max(1) / np.float32(127)
        sc = np.clip(np.rint(_div(scale, D[:, None])), -127, 127).astype(np.int32)
        dl = _hv(D)[:, None] * sc.astype(np.float32)
        q = (np.clip(np.rint(_div(sub, dl[:, :, None])), -8, 7) + 8).astype(np.uint8)
        c = q.reshape(nb, 4, 2, 32)
        qs = (c[:, :, 0] | (c[:, :, 1] << 4)).reshape(nb, 128)
        return np.concatenate([_h(D), sc.astype(np.int8).view(np.uint8), qs], axis=1)
    # iq4_xs
    sub = x.reshape(nb, 8, 32)
    dj = _signed_max(sub, 2) / np.float32(-127)
    D = _signed_max(dj, 1) / np.float32(-32)
    ls = np.clip(np.rint(_div(dj, D[:, None])), -32, 31).astype(np.int32)
    dl = _hv(D)[:, None] * ls.astype(np.float32)
    q = _grid_index(_div(sub, dl[:, :, None]))
    u = (ls + 32).astype(np.uint16)
    sh = np.zeros(nb, dtype=np.uint16)
    for j in range(8):
        sh |= (u[:, j] >> 4) << (2 * j)
    sl = ((u[:, 0::2] & 0xF) | ((u[:, 1::2] & 0xF) << 4)).astype(np.uint8)
    qs = _pack_nib32(q.reshape(nb * 8, 32)).reshape(nb, 128)
    return np.concatenate([_h(D), sh.astype("<u2").view(np.uint8).reshape(nb, 2), sl, qs], axis=1)


def quantize(name: str, x: np.ndarray) -> bytes:
    """Encode float values (a multiple of the block size, row-major) as type `name`."""
    _, bs, _ = TYPES[name]
    x = np.ascontiguousarray(x, dtype=np.float32).reshape(-1, bs)
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        blocks = _q32(name, x) if bs == 32 else _qk(name, x)
    assert blocks.shape[1] == TYPES[name][2], (name, blocks.shape)
    return blocks.astype(np.uint8).tobytes()



# Byte offsets of each type's fp16 fields (where the special values are planted).
F16_FIELDS = {
    "q4_0": [0], "q4_1": [0, 2], "q5_0": [0], "q5_1": [0, 2], "q8_0": [0], "q2_k": [80, 82],
    "q3_k": [108], "q4_k": [0, 2], "q5_k": [0, 2], "q6_k": [208], "iq4_nl": [0], "iq4_xs": [0],
    "dgq4": [0],
}


def dequantize(name: str, raw: bytes) -> np.ndarray:
    """All blocks of `raw` (type name) as float32 values in element order."""
    _, _, nbytes = TYPES[name]
    b = np.frombuffer(raw, dtype=np.uint8).reshape(-1, nbytes)
    with np.errstate(invalid="ignore", over="ignore"):
        return DEQUANT[name](b).astype(np.float32).reshape(-1)


SPECIAL_F16 = [0x7BFF, 0xFBFF, 0x0001, 0x8001, 0x03FF, 0x0000, 0x8000, 0x7C00, 0xFC00,
               0x7E00, 0xFE00, 0x7C01, 0x7FFF]


def random_blocks(name: str, nb: int, rng) -> bytes:
    """nb random blocks; a third of them get special fp16 values in their scale fields, and the
    rest realistic scales (|d| around 1e-3..1) so that the arithmetic is exercised normally."""
    _, _, nbytes = TYPES[name]
    b = rng.integers(0, 256, size=(nb, nbytes), dtype=np.uint8)
    for off in F16_FIELDS[name]:
        vals = (rng.standard_normal(nb) * 10.0 ** rng.uniform(-3, 0, nb)).astype("<f2")
        special = rng.random(nb) < 0.33
        vals = vals.view(np.uint16)
        vals[special] = rng.choice(SPECIAL_F16, size=int(special.sum()))
        b[:, off:off + 2] = vals.astype("<u2").view(np.uint8).reshape(nb, 2)
    # Blocks that are all zero bytes, and zero bytes with a -0 scale.
    b[0] = 0
    for off in F16_FIELDS[name]:
        b[1, off:off + 2] = [0x00, 0x80]
    return b.tobytes()


def same_bits(a: np.ndarray, b: np.ndarray):
    """(ok, index of the first mismatch or -1): bitwise equal, any NaN equal to any NaN."""
    na, nb_ = np.isnan(a), np.isnan(b)
    eq = (a.view(np.uint32) == b.view(np.uint32)) | (na & nb_)
    if eq.all():
        return True, -1
    return False, int(np.argmin(eq))


# Quantize -> dequantize RMS error relative to the row's RMS, worst of 13 Gaussian rows of 4096
# values. A uniform quantizer with step s has RMS error s / sqrt(12): symmetric types map the
# block's largest magnitude (E ~ 2.07 sigma for 32 Gaussian values, 1.77 for 16) to the end
# level, asymmetric ones span min..max (~4.1 sigma for 32, ~3.5 for 16). Predicted / measured
# worst (speck's quantizers, which write llama.cpp's bytes; plain and importance-weighted alike):
#   q8_0   2.07/127/3.46 = 0.0047 / 0.0055      q6_k  1.77/32/3.46 = 0.016 / 0.022
#   q5_0   2.07/16/3.46  = 0.037  / 0.044       q5_1  4.1/31/3.46  = 0.038 / 0.039
#   q5_k   (as q5_1, searched)    / 0.038       q4_0  2.07/8/3.46  = 0.075 / 0.088
#   q4_1   4.1/15/3.46   = 0.079  / 0.081       q4_k  (as q4_1, searched) / 0.074
#   iq4_nl, iq4_xs (a 16-level grid, denser near 0)  / 0.080
#   q3_k   1.77/4/3.46   = 0.128  / 0.154       q2_k  3.5/3/3.46   = 0.34  / 0.30
#   dgq4   (as q4_0: 8 levels a side per 32 values, the scale an integer multiple of d) / 0.084
# (the extra over the prediction is the fp16 / 4-8-bit rounding of the scales). Bounds are 1.2x
# the measured worst: rounding-level changes pass, while a wrong level, scale or min (errors of
# 2x and more) fails.
QUANT_RMSE = {
    "q8_0": 0.0066, "q6_k": 0.027, "q5_0": 0.053, "q5_1": 0.047, "q5_k": 0.046, "q4_0": 0.106,
    "q4_1": 0.097, "q4_k": 0.089, "iq4_nl": 0.096, "iq4_xs": 0.096, "q3_k": 0.185, "q2_k": 0.365,
    "dgq4": 0.100,
}


def run(cmd, env_isa):
    env = dict(os.environ, SPECK_TEST_ISA=env_isa) if env_isa else dict(os.environ)
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dump", required=True, help="path of the quant_dump executable")
    ap.add_argument("--type", default=",".join(TYPES), help="comma-separated types")
    ap.add_argument("--isa", default="scalar,avx2,avx512", help="kernel paths to check")
    ap.add_argument("--blocks", type=int, default=3000, help="random blocks per type")
    ap.add_argument("-v", "--verbose", action="store_true")
    args = ap.parse_args(argv)
    rng = np.random.default_rng(1234)
    passed = failed = 0
    work = tempfile.mkdtemp(prefix="speck-quant-")

    def report(ok, text):
        nonlocal passed, failed
        passed += ok
        failed += not ok
        if not ok or args.verbose:
            print(("PASS " if ok else "FAIL ") + text, flush=True)

    isas = []
    for isa in args.isa.split(","):
        probe = run([args.dump, "dequant", "q8_0", "/dev/null", "/dev/null"], isa)
        if probe.returncode == 3:
            print(f"SKIP: this CPU cannot run speck's {isa} kernels")
        else:
            isas.append(isa)

    for name in args.type.split(","):
        if name not in TYPES:
            ap.error(f"unknown type {name!r}")
        _, bs, _ = TYPES[name]
        raw = random_blocks(name, args.blocks, rng)
        ref = dequantize(name, raw)
        inp, out = os.path.join(work, f"{name}.bin"), os.path.join(work, f"{name}.f32")
        with open(inp, "wb") as f:
            f.write(raw)
        for isa in isas:
            p = run([args.dump, "dequant", name, inp, out], isa)
            if p.returncode != 0:
                report(False, f"dequant {name} {isa}: quant_dump exit {p.returncode}: {p.stderr}")
                continue
            got = np.fromfile(out, dtype="<f4")
            if got.size != ref.size:
                report(False, f"dequant {name} {isa}: {got.size} values, expected {ref.size}")
                continue
            ok, i = same_bits(got, ref)
            text = f"dequant {name} {isa}: {ref.size} values bit-exact"
            if not ok:
                blk = i // bs
                text = (f"dequant {name} {isa}: value {i} (block {blk}, element {i % bs}) is "
                        f"{got[i]!r} (0x{got.view(np.uint32)[i]:08x}), reference {ref[i]!r} "
                        f"(0x{ref.view(np.uint32)[i]:08x}); block bytes "
                        f"{raw[blk * TYPES[name][2]:(blk + 1) * TYPES[name][2]].hex()}")
            report(ok, text)

        # Quantization error: Gaussian rows, one with outliers, a constant and a zero row.
        n, rows = 4096, 16
        x = rng.standard_normal((rows, n)).astype(np.float32)
        x[1] *= np.float32(1e-3)
        x[2, ::97] *= np.float32(30.0)  # outliers
        x[3] = np.float32(0.5)
        x[4] = 0.0
        xin, qout = os.path.join(work, f"{name}_x.f32"), os.path.join(work, f"{name}_q.bin")
        x.tofile(xin)
        for imp in (None, "imp"):
            cmd = [args.dump, "quantize", name, xin, qout, str(n)]
            tag = "plain"
            if imp:
                w = (rng.random(n) + 0.1).astype(np.float32)
                wpath = os.path.join(work, f"{name}_imp.f32")
                w.tofile(wpath)
                cmd.append(wpath)
                tag = "importance-weighted"
            p = run(cmd, None)
            if p.returncode != 0:
                report(False, f"quantize {name} {tag}: quant_dump exit {p.returncode}: {p.stderr}")
                continue
            raw_q = open(qout, "rb").read()
            y = dequantize(name, raw_q).reshape(rows, n)
            if name in ("q8_0", "q4_0") and not imp:
                # ggml's plain rules, which a Q8_0 / Q4_0 KV cache also rounds by: byte-exact.
                want = quantize(name, x)
                nbad = sum(a != b for a, b in zip(raw_q, want)) + abs(len(raw_q) - len(want))
                report(nbad == 0, f"quantize {name} plain: bytes identical to the numpy "
                                  f"quantizer ({nbad} differ)")
            gauss = [r for r in range(rows) if r not in (2, 3, 4)]
            rel = np.sqrt(((y[gauss] - x[gauss]).astype(np.float64) ** 2).mean(axis=1)) / \
                np.sqrt((x[gauss].astype(np.float64) ** 2).mean(axis=1))
            worst = float(rel.max())
            ok = worst <= QUANT_RMSE[name]
            report(ok, f"quantize {name} {tag}: relative rms error {worst:.4f} "
                       f"(bound {QUANT_RMSE[name]})")
            # Outlier row: the outliers themselves must survive (their block's scale is theirs).
            oerr = float(np.abs(y[2, ::97] - x[2, ::97]).max() / np.abs(x[2, ::97]).max())
            report(oerr < 0.1, f"quantize {name} {tag}: outliers within {oerr:.4f} of the largest")
            cerr = float(np.abs(y[3] - x[3]).max())
            report(cerr < 0.02, f"quantize {name} {tag}: constant row within {cerr:.4g}")
            report(bool(np.all(y[4] == 0)), f"quantize {name} {tag}: zero row stays zero")

    print(f"{passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
