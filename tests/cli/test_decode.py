"""The pure-Python decoder (kvcore/_checkpoint/decode.py) reads every element as torch does, bit for bit.

Exhaustive for the 8- and 16-bit dtypes (every byte pattern), hypothesis for the wider ones.
Values are compared as float64 bit patterns; a NaN only has to be a NaN (its payload is not a
value anyone reads).
"""

from __future__ import annotations

import math
import struct

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from kvcore._checkpoint.decode import FLOAT_DTYPES, ITEMSIZES, as_float32, decode

TORCH = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2, "F8_E8M0": torch.float8_e8m0fnu,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8,
    "U64": torch.uint64, "U32": torch.uint32, "U16": torch.uint16, "U8": torch.uint8, "BOOL": torch.bool,
}
NARROW = sorted(d for d in TORCH if ITEMSIZES[d] <= 2 and d != "BOOL")
WIDE = sorted(d for d in TORCH if ITEMSIZES[d] > 2)


def _torch_values(dtype: str, data: bytes) -> list[object]:
    tensor = torch.frombuffer(bytearray(data), dtype=TORCH[dtype])
    if dtype in FLOAT_DTYPES:
        return tensor.to(torch.float64).tolist()
    return tensor.tolist() if dtype not in ("U16", "U32", "U64") else [int(v) for v in _unsigned(tensor)]


def _unsigned(tensor: torch.Tensor) -> list[int]:
    # tolist() of torch's barely supported unsigned types goes through int64: read the bytes instead.
    width = tensor.element_size()
    raw = tensor.view(torch.uint8).tolist()
    return [int.from_bytes(bytes(raw[i : i + width]), "little") for i in range(0, len(raw), width)]


def _same(ours: list[object], theirs: list[object]) -> None:
    assert len(ours) == len(theirs)
    for i, (a, b) in enumerate(zip(ours, theirs, strict=True)):
        if isinstance(b, float):
            assert isinstance(a, float), (i, a, b)
            if math.isnan(b):
                assert math.isnan(a), (i, a, b)
            else:
                assert struct.pack("<d", a) == struct.pack("<d", b), (i, a, b)  # -0.0 != 0.0 here
        else:
            assert a == b and type(a) is type(b), (i, a, b)


@pytest.mark.parametrize("dtype", NARROW)
def test_every_8_and_16_bit_pattern_decodes_as_torch_reads_it(dtype: str) -> None:
    width = ITEMSIZES[dtype]
    data = b"".join(n.to_bytes(width, "little") for n in range(256**width))
    _same(decode(dtype, data), _torch_values(dtype, data))


def test_bool_bytes_decode_as_torch_reads_them() -> None:
    _same(decode("BOOL", b"\x00\x01"), _torch_values("BOOL", b"\x00\x01"))


@pytest.mark.parametrize("dtype", WIDE)
@settings(max_examples=300, deadline=None)
@given(data=st.binary(min_size=8, max_size=64))
def test_wide_dtypes_decode_as_torch_reads_them(dtype: str, data: bytes) -> None:
    data = data[: len(data) - len(data) % ITEMSIZES[dtype]]
    _same(decode(dtype, data), _torch_values(dtype, data))


@settings(max_examples=500, deadline=None)
@given(value=st.floats(allow_nan=False, width=64))
def test_float64_rounds_to_float32_as_torch_converts(value: float) -> None:
    theirs = torch.tensor([value], dtype=torch.float64).to(torch.float32).tolist()
    _same(as_float32([value]), theirs)


def test_the_edges_of_float32_round_as_torch_does() -> None:
    biggest = struct.unpack("<f", b"\xff\xff\x7f\x7f")[0]
    edges = [biggest, math.nextafter(biggest, math.inf), 3.5e38, 1e300, 1e-46, 7e-46, -0.0, 5e-324]
    _same(as_float32(edges), torch.tensor(edges, dtype=torch.float64).to(torch.float32).tolist())


def test_e4m3_reads_the_values_its_definition_gives() -> None:
    # Independent of torch: the max 448 (0.1111.110), the smallest subnormal 2^-9, NaN only at S.1111.111.
    assert decode("F8_E4M3", bytes([0x7E, 0x01, 0xFE, 0x38])) == [448.0, 2.0**-9, -448.0, 1.0]
    assert [math.isnan(v) for v in decode("F8_E4M3", bytes([0x7F, 0xFF, 0x78]))] == [True, True, False]
