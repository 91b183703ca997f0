"""Safetensors element decoding in pure Python: small tensors' values without importing torch.

``kvcore inspect`` and ``kvcore plugins`` answer in a fraction of a second because they never
import torch (2-5 s). What they read of tensor data is tiny (KV-cache scales: one value, or one
per KV head; zero points), so the standard library decodes it:

- ``F64``, ``F32``, ``F16``: IEEE 754 binary64 / binary32 / binary16, which ``struct`` reads
  (``d``, ``f``, ``e``), little-endian as safetensors stores them.
- ``BF16``: the upper half of a binary32, so two zero bytes below it make the float32.
- ``F8_E5M2``: the upper byte of a binary16 (same sign, 5 exponent bits and bias 15), so a
  zero byte below it makes the float16; infinities and NaNs come out as torch's.
- ``F8_E4M3`` (torch's ``float8_e4m3fn``): sign, 4 exponent bits (bias 7), 3 mantissa bits;
  exponent 0 is subnormal (``m/8 * 2**-6``), no infinities, and only ``S.1111.111`` is NaN
  (max 448). Decoded through a 256-entry table computed from that rule.
- ``F8_E8M0`` (``float8_e8m0fnu``): a bare exponent, ``2**(e - 127)``; ``0xFF`` is NaN.
- integers and ``BOOL``: ``struct``'s little-endian integer codes.

Every float dtype here but ``F64`` is exactly representable in float32 and float64, so the
Python floats returned are the values torch reads; ``as_float32`` rounds as ``.to(torch.float32)``
does, for the F64 case. tests/cli/test_decode.py checks all of it bit for bit against torch.
"""

from __future__ import annotations

import array
import math
import struct

__all__ = ["FLOAT_DTYPES", "ITEMSIZES", "as_float32", "decode"]

_STRUCT_CODES = {
    "F64": "d", "F32": "f", "F16": "e",
    "I64": "q", "I32": "i", "I16": "h", "I8": "b",
    "U64": "Q", "U32": "I", "U16": "H", "U8": "B",
    "BOOL": "?",
}
ITEMSIZES: dict[str, int] = {
    "F64": 8, "F32": 4, "F16": 2, "BF16": 2, "F8_E4M3": 1, "F8_E5M2": 1, "F8_E8M0": 1,
    "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U64": 8, "U32": 4, "U16": 2, "U8": 1, "BOOL": 1,
}
"""Bytes per element of every safetensors dtype kvcore reads."""
FLOAT_DTYPES = frozenset({"F64", "F32", "F16", "BF16", "F8_E4M3", "F8_E5M2", "F8_E8M0"})
"""The floating-point ones: what a KV-cache scale may be stored as."""


def _e4m3(byte: int) -> float:
    sign = -1.0 if byte & 0x80 else 1.0
    exponent, mantissa = (byte >> 3) & 0xF, byte & 0x7
    if exponent == 0xF and mantissa == 0x7:
        return math.nan
    if exponent == 0:
        return sign * mantissa / 8 * 2.0**-6
    return sign * (1 + mantissa / 8) * 2.0 ** (exponent - 7)


_E4M3 = tuple(_e4m3(byte) for byte in range(256))
_E8M0 = tuple(math.nan if byte == 0xFF else 2.0 ** (byte - 127) for byte in range(256))


def decode(dtype: str, data: bytes) -> list[float] | list[int] | list[bool]:
    """The elements of ``data`` (safetensors ``dtype``, little-endian) as Python numbers, in order.

    ``len(data)`` must be a multiple of the dtype's item size; an unknown dtype is a ``KeyError``
    (headers are validated before any data is read, so neither happens on a checkpoint's tensor).
    """
    count = len(data) // ITEMSIZES[dtype]
    if dtype == "BF16":
        return list(struct.unpack(f"<{count}f", _widen(data, 2)))
    if dtype == "F8_E5M2":
        return list(struct.unpack(f"<{count}e", _widen(data, 1)))
    if dtype == "F8_E4M3":
        return [_E4M3[byte] for byte in data]
    if dtype == "F8_E8M0":
        return [_E8M0[byte] for byte in data]
    return list(struct.unpack(f"<{count}{_STRUCT_CODES[dtype]}", data))


def _widen(data: bytes, width: int) -> bytes:
    """Each ``width``-byte element as the upper half of a ``2 * width``-byte one (zeros below)."""
    out = bytearray(2 * len(data))
    for i in range(width):  # little-endian: the element's bytes go to the top half
        out[width + i :: 2 * width] = data[i::width]
    return bytes(out)


def as_float32(values: list[float]) -> list[float]:
    """``values`` rounded to float32 (nearest even; past float32's range, infinite), as torch converts."""
    return array.array("f", values).tolist()
