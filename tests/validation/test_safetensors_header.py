"""Corrupt safetensors files: each refused from its header, before any parameter is written.

The second shard is the corrupt one, so that a loader which wrote the first shard before
reading the second would be caught by the untouched-model check.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

import pytest
import torch
from validation_support import SHARD_2, expect_refusal, header_of, last_tensor, rewrite_header

from kvcore import CheckpointError
from kvcore._checkpoint.safetensors import MAX_HEADER_BYTES

FIX = "download or export it again"


def _two_same_sized(header: dict[str, Any]) -> tuple[str, str]:
    """Two tensors of the shard with equal byte sizes (the k/v projections of one layer)."""
    names = sorted(n for n in header if n.endswith(("k_proj.weight", "v_proj.weight")))
    return names[0], names[1]


def _some_weight(header: dict[str, Any]) -> str:
    return sorted(n for n in header if n.endswith("k_proj.weight"))[0]


def test_truncated_file(model: torch.nn.Module, ckpt: Path) -> None:
    shard = ckpt / SHARD_2
    culprit = last_tensor(shard)
    shard.write_bytes(shard.read_bytes()[:-10])
    expect_refusal(model, ckpt, CheckpointError, str(shard), repr(culprit), "truncated", FIX)


def test_file_shorter_than_the_length_prefix(model: torch.nn.Module, ckpt: Path) -> None:
    shard = ckpt / SHARD_2
    shard.write_bytes(b"\x10\x00\x00")
    expect_refusal(model, ckpt, CheckpointError, str(shard), "too short", FIX)


def test_header_length_beyond_the_file(model: torch.nn.Module, ckpt: Path) -> None:
    shard = ckpt / SHARD_2
    raw = shard.read_bytes()
    shard.write_bytes(struct.pack("<Q", len(raw)) + raw[8:])
    expect_refusal(model, ckpt, CheckpointError, str(shard), f"the header claims {len(raw)} bytes", FIX)


def test_header_length_beyond_the_cap(model: torch.nn.Module, ckpt: Path) -> None:
    shard = ckpt / SHARD_2
    raw = shard.read_bytes()
    shard.write_bytes(struct.pack("<Q", MAX_HEADER_BYTES + 1) + raw[8:])
    expect_refusal(model, ckpt, CheckpointError, str(shard), f"above the {MAX_HEADER_BYTES} byte cap", FIX)


@pytest.mark.parametrize(
    "header",
    [b"{not json", b"\xff\xfe{}", b"[" * 100_000, b'{"a": 1' + b"0" * 5000 + b"}", b"[1, 2]"],
    ids=["syntax", "not-utf8", "nested-too-deep", "integer-too-long", "not-an-object"],
)
def test_header_not_json(model: torch.nn.Module, ckpt: Path, header: bytes) -> None:
    shard = ckpt / SHARD_2
    rewrite_header(shard, lambda _: header)
    expect_refusal(model, ckpt, CheckpointError, str(shard), "header is", FIX)


def test_header_with_a_tensor_named_twice(model: torch.nn.Module, ckpt: Path) -> None:
    # json.loads keeps the last duplicate silently, and other parsers may keep the first:
    # two readers of one file would disagree about which bytes a tensor is.
    shard = ckpt / SHARD_2
    culprit = _some_weight(header_of(shard)[0])

    def duplicate(header: dict[str, Any]) -> bytes:
        return f"{{{json.dumps(culprit)}: {json.dumps(header[culprit])}, ".encode() + json.dumps(header)[1:].encode()

    rewrite_header(shard, duplicate)
    expect_refusal(model, ckpt, CheckpointError, str(shard), f"key {culprit!r} appears twice", FIX)


@pytest.mark.parametrize("dtype", ["F4", "float32", ["F32"], None])
def test_unknown_dtype(model: torch.nn.Module, ckpt: Path, dtype: Any) -> None:
    shard = ckpt / SHARD_2
    culprit = _some_weight(header_of(shard)[0])
    rewrite_header(shard, lambda h: {**h, culprit: {**h[culprit], "dtype": dtype}})
    expect_refusal(model, ckpt, CheckpointError, str(shard), repr(culprit), f"unknown dtype {dtype!r}", FIX)


@pytest.mark.parametrize("shape", [[-32, -64], [32.0, 64], ["32", 64], [True, 64], "32x64", None])
def test_negative_or_non_integer_shape(model: torch.nn.Module, ckpt: Path, shape: Any) -> None:
    shard = ckpt / SHARD_2
    culprit = _some_weight(header_of(shard)[0])
    rewrite_header(shard, lambda h: {**h, culprit: {**h[culprit], "shape": shape}})
    expect_refusal(model, ckpt, CheckpointError, str(shard), repr(culprit), "non-negative integers", FIX)


def test_offsets_out_of_range(model: torch.nn.Module, ckpt: Path) -> None:
    shard = ckpt / SHARD_2
    header, data = header_of(shard)
    culprit = _some_weight(header)
    begin, end = header[culprit]["data_offsets"]
    moved = [len(data), len(data) + end - begin]  # right size, but past the end of the file
    rewrite_header(shard, lambda h: {**h, culprit: {**h[culprit], "data_offsets": moved}})
    expect_refusal(model, ckpt, CheckpointError, str(shard), repr(culprit), "but the file has only", FIX)


@pytest.mark.parametrize("offsets", [[10, 4], [0], [0, -2048], ["0", "2048"]], ids=["reversed", "one", "neg", "str"])
def test_malformed_offsets(model: torch.nn.Module, ckpt: Path, offsets: list[Any]) -> None:
    shard = ckpt / SHARD_2
    culprit = _some_weight(header_of(shard)[0])
    rewrite_header(shard, lambda h: {**h, culprit: {**h[culprit], "data_offsets": offsets}})
    expect_refusal(model, ckpt, CheckpointError, str(shard), repr(culprit), "data_offsets", FIX)


def test_overlapping_tensors(model: torch.nn.Module, ckpt: Path) -> None:
    shard = ckpt / SHARD_2
    first, second = _two_same_sized(header_of(shard)[0])
    rewrite_header(shard, lambda h: {**h, second: {**h[second], "data_offsets": h[first]["data_offsets"]}})
    expect_refusal(model, ckpt, CheckpointError, str(shard), repr(first), repr(second), "overlap", FIX)


def test_size_not_matching_dtype_times_shape(model: torch.nn.Module, ckpt: Path) -> None:
    shard = ckpt / SHARD_2
    culprit = _some_weight(header_of(shard)[0])
    rewrite_header(shard, lambda h: {**h, culprit: {**h[culprit], "dtype": "F32"}})
    expect_refusal(model, ckpt, CheckpointError, str(shard), repr(culprit), "dtype F32 x shape", FIX)


def test_entry_that_is_not_an_object(model: torch.nn.Module, ckpt: Path) -> None:
    shard = ckpt / SHARD_2
    culprit = _some_weight(header_of(shard)[0])
    rewrite_header(shard, lambda h: {**h, culprit: [1, 2, 3]})
    expect_refusal(model, ckpt, CheckpointError, str(shard), repr(culprit), "not an object", FIX)
