"""Tensors that do not fit the model, and KV-cache scales with impossible values.

Each is refused while planning, so the message names the checkpoint tensor, its file, the
parameter it was headed for, and what to do; and the model is untouched.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from validation_support import FP8_CONFIG, INDEX, checkpoint_tensors, expect_refusal

from kvcore import WeightLoadError
from kvcore.testing import write_checkpoint

FIXTURES = Path(__file__).parents[1] / "fixtures" / "real"
LLMCOMPRESSOR = json.loads((FIXTURES / "llmcompressor/fp8_kv_tensor/config.json").read_text())["quantization_config"]


def _write(directory: Path, tensors: dict[str, torch.Tensor], config: dict[str, object] = FP8_CONFIG) -> Path:
    return write_checkpoint(directory, tensors, quantization_config=config, shards=2)


def _file_of(ckpt: Path, name: str) -> str:
    return str(ckpt / json.loads((ckpt / INDEX).read_text())["weight_map"][name])


def test_shape_mismatch(model: torch.nn.Module, tmp_path: Path) -> None:
    name = "model.layers.1.mlp.up_proj.weight"
    tensors = checkpoint_tensors(model)
    tensors[name] = torch.zeros(64, 64, dtype=torch.bfloat16)
    ckpt = _write(tmp_path, tensors)
    expect_refusal(
        model, ckpt, WeightLoadError, repr(name), _file_of(ckpt, name), f"loading into {name!r}",
        "shape [64, 64]", "shape [128, 64]", "different model config",
    )


@pytest.mark.parametrize("dtype", [torch.int8, torch.float8_e4m3fn, torch.int32])
def test_dtype_mismatch(model: torch.nn.Module, tmp_path: Path, dtype: torch.dtype) -> None:
    name = "model.embed_tokens.weight"
    tensors = checkpoint_tensors(model)
    tensors[name] = torch.ones(256, 64).to(dtype)
    ckpt = _write(tmp_path, tensors)
    expect_refusal(
        model, ckpt, WeightLoadError, repr(name), _file_of(ckpt, name), f"loading into {name!r}",
        "torch.bfloat16", "Build the model with the checkpoint's dtype",
    )


def test_strict_lists_every_unexpected_and_missing_tensor_sorted_with_close_matches(
    model: torch.nn.Module, tmp_path: Path
) -> None:
    tensors = checkpoint_tensors(model)
    tensors["model.layers.0.self_attn.q_proj.wieght"] = tensors["model.layers.0.self_attn.q_proj.weight"].clone()
    tensors["zzz.extra"] = torch.zeros(2)
    tensors["aaa.extra"] = torch.zeros(2)
    tensors["model.layers.1.mlp.down_proj.weigth"] = tensors.pop("model.layers.1.mlp.down_proj.weight")
    del tensors["model.norm.weight"]
    ckpt = _write(tmp_path, tensors)
    error = expect_refusal(
        model, ckpt, WeightLoadError,
        "4 checkpoint tensor(s) match no model parameter",
        "model.layers.0.self_attn.q_proj.wieght in model-0000",
        "(did you mean 'model.layers.0.self_attn.q_proj.weight'?)",
        "2 model parameter(s) are not in the checkpoint",
        "model.layers.1.mlp.down_proj.weight (did you mean 'model.layers.1.mlp.down_proj.weigth'?)",
        str(ckpt), "Nothing was written", "strict=False",
    )
    message = str(error)
    unexpected = ["aaa.extra", "model.layers.0.self_attn.q_proj.wieght", "model.layers.1.mlp.down_proj.weigth"]
    unexpected.append("zzz.extra")
    positions = [message.index(f"  {name}") for name in unexpected]
    assert positions == sorted(positions)
    missing = ["model.layers.1.mlp.down_proj.weight", "model.norm.weight"]
    assert message.index(f"  {missing[0]}") < message.index(f"  {missing[1]}")


@pytest.mark.parametrize(
    ("value", "problem"),
    [(math.nan, "NaN"), (math.inf, "an infinite value"), (-math.inf, "an infinite value"), (0.0, "zero"),
     (-0.0125, "a negative value")],
)
def test_impossible_kv_scale(model: torch.nn.Module, tmp_path: Path, value: float, problem: str) -> None:
    name = "model.layers.1.self_attn.v_scale"
    tensors = checkpoint_tensors(model)
    tensors[name] = torch.tensor(value)
    ckpt = _write(tmp_path, tensors)
    expect_refusal(
        model, ckpt, WeightLoadError, repr(name), _file_of(ckpt, name),
        "loading into 'model.layers.1.self_attn.attn.v_scale'", f"holds {problem}", "re-export the checkpoint",
    )


def test_llm_compressor_uninitialised_q_scale(model: torch.nn.Module, tmp_path: Path) -> None:
    # llm-compressor 0.14 can save q_scale = -1.6e17 when it quantizes attention.
    tensors = checkpoint_tensors(model)
    for layer in range(2):
        for kind in "kv":
            tensors[f"model.layers.{layer}.self_attn.{kind}_scale"] = torch.tensor([0.02], dtype=torch.bfloat16)
        tensors[f"model.layers.{layer}.self_attn.q_scale"] = torch.tensor([-1.6e17], dtype=torch.bfloat16)
    ckpt = _write(tmp_path, tensors, LLMCOMPRESSOR)
    expect_refusal(
        model, ckpt, WeightLoadError, "'model.layers.0.self_attn.q_scale'",
        "loading into 'model.layers.0.self_attn.attn.q_scale'", "a negative value", "e+17", "uninitialised",
        "re-export the checkpoint",
    )


@pytest.mark.parametrize("shape", [(3,), (2, 2), (0,)])
def test_kv_scale_that_is_neither_scalar_nor_per_head(
    model: torch.nn.Module, tmp_path: Path, shape: tuple[int, ...]
) -> None:
    name = "model.layers.0.self_attn.k_scale"
    tensors = checkpoint_tensors(model)
    tensors[name] = torch.full(shape, 0.5)
    ckpt = _write(tmp_path, tensors)
    expect_refusal(
        model, ckpt, WeightLoadError, repr(name), _file_of(ckpt, name),
        "loading into 'model.layers.0.self_attn.attn.k_scale'", f"shape {list(shape)}", "one element",
        "num_kv_heads=2", "re-export the checkpoint",
    )


def test_kv_scale_that_is_not_floating_point(model: torch.nn.Module, tmp_path: Path) -> None:
    name = "model.layers.0.self_attn.k_scale"
    tensors = checkpoint_tensors(model)
    tensors[name] = torch.tensor(3, dtype=torch.int32)
    ckpt = _write(tmp_path, tensors)
    expect_refusal(
        model, ckpt, WeightLoadError, repr(name), "loading into 'model.layers.0.self_attn.attn.k_scale'",
        "dtype I32", "floating point", "Re-export the checkpoint",
    )
