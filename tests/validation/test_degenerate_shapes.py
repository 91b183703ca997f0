"""Shapes no tensor can have, and scales with no element: named errors before any write.

A zero-element tensor passes the byte-size check whatever its other dimensions are, so a
dimension of 2^63 (or dimensions whose product overflows torch's 64-bit strides) must be
refused by the header check, not by ``torch.empty`` after planning. A KV-cache scale with no
element, or an attention with no KV head, must be refused before anything is written.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from validation_support import FP8_CONFIG, checkpoint_tensors, expect_refusal, rewrite_header

import kvcore
from kvcore import CheckpointError, WeightLoadError
from kvcore.testing import write_checkpoint

SCALE = "model.layers.0.self_attn.k_scale"


def _single(tmp_path: Path, model: torch.nn.Module) -> Path:
    return write_checkpoint(tmp_path / "ckpt", checkpoint_tensors(model), quantization_config=FP8_CONFIG)


@pytest.mark.parametrize("shape", [[0, 2**63], [2**64, 0], [0, 2**62, 4], [0] + [2**32] * 3],
                         ids=["2^63", "2^64", "strides", "product"])
@pytest.mark.parametrize("name", [SCALE, "model.norm.weight", "extra"])
def test_zero_element_tensor_with_an_impossible_shape(
    tmp_path: Path, model: torch.nn.Module, shape: list[int], name: str
) -> None:
    ckpt = _single(tmp_path, model)

    def edit(header: dict) -> dict:
        header[name] = {**header.get(name, {"dtype": "F32"}), "shape": shape, "data_offsets": [0, 0]}
        return header

    rewrite_header(ckpt / "model.safetensors", edit)
    for strict in (True, False):
        expect_refusal(model, ckpt, CheckpointError, repr(name), "2^63", "no tensor can have that shape",
                       strict=strict)


def test_zero_element_tensor_of_an_ordinary_shape_is_fine(tmp_path: Path, model: torch.nn.Module) -> None:
    ckpt = _single(tmp_path, model)
    rewrite_header(ckpt / "model.safetensors",
                   lambda h: {**h, "extra": {"dtype": "F32", "shape": [0, 2**62], "data_offsets": [0, 0]}})
    with pytest.warns(UserWarning, match="extra"):
        report = kvcore.load(model, ckpt, strict=False)
    assert report.unexpected == ["extra"]


@pytest.mark.parametrize("shape", [[0], [0, 1], [2, 0]])
def test_zero_element_scale_is_refused_before_any_write(
    tmp_path: Path, model: torch.nn.Module, shape: list[int]
) -> None:
    ckpt = _single(tmp_path, model)
    rewrite_header(ckpt / "model.safetensors",
                   lambda h: {**h, SCALE: {"dtype": "F32", "shape": shape, "data_offsets": [0, 0]}})
    for strict in (True, False):
        expect_refusal(model, ckpt, WeightLoadError, repr(SCALE), f"has shape {shape}", strict=strict)


@pytest.mark.parametrize(
    ("args", "field"),
    [((8, 16, 0), "num_kv_heads"), ((0, 16), "num_heads"), ((8, 0), "head_size"), ((8, 16, -2), "num_kv_heads"),
     ((8, 16, True), "num_kv_heads"), ((8, 16, 2.5), "num_kv_heads")],
)
def test_attention_without_heads_is_refused_at_construction(args: tuple, field: str) -> None:
    with pytest.raises(ValueError, match=f"{field} must be a positive integer"):
        kvcore.Attention(*args)


def test_attention_accepts_int_like_head_counts() -> None:
    attn = kvcore.Attention(torch.tensor(8).item(), 16, torch.tensor(2).item())
    assert (attn.num_heads, attn.num_kv_heads) == (8, 2)


def test_zero_element_scale_into_an_attention_claiming_no_kv_head(tmp_path: Path, model: torch.nn.Module) -> None:
    """Even an attention whose head count was zeroed after construction gets a named error before any write."""
    for module in model.modules():
        if isinstance(module, kvcore.Attention):
            module.num_kv_heads = 0
    ckpt = _single(tmp_path, model)
    rewrite_header(ckpt / "model.safetensors",
                   lambda h: {**h, SCALE: {"dtype": "F32", "shape": [0], "data_offsets": [0, 0]}})
    expect_refusal(model, ckpt, WeightLoadError, repr(SCALE), "has shape [0]")
