"""End to end through ``kvcore.load``: AMD Quark checkpoints as docs/formats.md describes them.

Scales are 0-dim bf16 ``P.{k,v,q}_proj.output_scale`` and ``P.prob_output_scale``; k == v
unless ``kv_cache_post_rope``. Single file and sharded, and the genuine Quark 0.13 checkpoint.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import torch
from formats_support import (
    FIXTURES,
    LAYERS,
    P,
    assert_unchanged,
    check_load,
    genuine_config,
    model_for,
    module,
    per_layer,
    plain_weights,
    reshard,
    snapshot,
    sources,
)

import kvcore
from kvcore.testing import write_checkpoint

BF16 = torch.bfloat16
FOLDER = "quark/fp8_kv_attn_fp8_eager"
GENUINE = genuine_config(FOLDER)["quantization_config"]
SHARDS = pytest.mark.parametrize("shards", [1, 3], ids=["single", "sharded"])
KV = {"k_scale": "k_proj.output_scale", "v_scale": "v_proj.output_scale"}
ATTENTION = {"q_scale": "q_proj.output_scale", "prob_scale": "prob_output_scale"}


def kv_only_config(*, post_rope: bool = False) -> dict[str, Any]:
    """Quark with KV-cache quantization but no attention quantization."""
    raw = copy.deepcopy(GENUINE)
    del raw["softmax_quant_spec"]
    raw["layer_quant_config"]["*q_proj"]["output_tensors"] = None
    raw["kv_cache_post_rope"] = post_rope
    return raw


def kv_scales(*, equal: bool, seed: int) -> dict[str, torch.Tensor]:
    """``P.k_proj.output_scale`` and ``P.v_proj.output_scale``, equal as Quark writes them unless post-RoPE."""
    k = per_layer("k_proj.output_scale", (), BF16, seed)
    if equal:
        v = {name.replace(".k_proj.", ".v_proj."): value.clone() for name, value in k.items()}
    else:
        v = per_layer("v_proj.output_scale", (), BF16, seed + 1)
    return {**k, **v}


def load_checked(
    tmp_path: Path, tensors: dict[str, torch.Tensor], config: dict[str, Any], shards: int, **leaves: str
) -> tuple[torch.nn.Module, kvcore.LoadReport]:
    model = model_for(scale_dtype=BF16)
    tensors = {**plain_weights(model), **tensors}
    ckpt = write_checkpoint(tmp_path / "ckpt", tensors, quantization_config=config, shards=shards)
    report = kvcore.load(model, ckpt)
    check_load(model, ckpt, report, sources(**leaves))
    assert report.quant_method == "quark" and report.plugins == ["quark"]
    return model, report


@SHARDS
def test_kv_and_attention_quantized(tmp_path: Path, shards: int) -> None:
    tensors = {
        **kv_scales(equal=True, seed=1),
        **per_layer("q_proj.output_scale", (), BF16, seed=3),
        **per_layer("prob_output_scale", (), BF16, seed=4),
    }
    model, _ = load_checked(tmp_path, tensors, GENUINE, shards, **KV, **ATTENTION)
    attention = model.get_submodule(module(1))
    assert float(attention.k_scale) == float(attention.v_scale)


@SHARDS
def test_kv_only_leaves_q_and_prob_at_one(tmp_path: Path, shards: int) -> None:
    load_checked(tmp_path, kv_scales(equal=True, seed=5), kv_only_config(), shards, **KV)


def test_post_rope_k_and_v_differ_and_each_is_kept(tmp_path: Path) -> None:
    _, report = load_checked(tmp_path, kv_scales(equal=False, seed=7), kv_only_config(post_rope=True), 1, **KV)
    for i in range(LAYERS):
        scales = report.kv_scales[module(i)]
        assert scales["k_scale"] != scales["v_scale"]


@pytest.mark.parametrize("present", ["k_scale", "v_scale"])
def test_one_of_k_and_v_serves_for_both(tmp_path: Path, present: str) -> None:
    tensors = per_layer(KV[present], (), BF16, seed=9)
    load_checked(tmp_path, tensors, kv_only_config(), 1, k_scale=KV[present], v_scale=KV[present])


def test_int8_kv_cache_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    config = copy.deepcopy(GENUINE)
    for group in ("*k_proj", "*v_proj"):
        config["kv_cache_quant_config"][group]["output_tensors"]["dtype"] = "int8"
    model = model_for(scale_dtype=BF16)
    tensors = {**plain_weights(model), **kv_scales(equal=True, seed=11)}
    ckpt = write_checkpoint(tmp_path / "ckpt", tensors, quantization_config=config)
    before = snapshot(model)
    with pytest.raises(kvcore.QuantConfigError) as info:
        kvcore.load(model, ckpt)
    message = str(info.value)
    assert "'quark'" in message and "kvcore-quark" in message  # the plugin
    assert str(ckpt / "config.json") in message  # the file
    assert "quantization_config.kv_cache_quant_config.*k_proj.output_tensors.dtype is 'int8'" in message
    assert "fp8_e4m3" in message  # what is supported
    assert_unchanged(model, before)


def test_non_finite_scale_is_refused_naming_the_tensor(tmp_path: Path) -> None:
    model = model_for(scale_dtype=BF16)
    tensors = {**plain_weights(model), **kv_scales(equal=True, seed=13)}
    tensors[f"{P.format(1)}.v_proj.output_scale"] = torch.tensor(float("inf"), dtype=BF16)
    ckpt = write_checkpoint(tmp_path / "ckpt", tensors, quantization_config=kv_only_config())
    before = snapshot(model)
    with pytest.raises(kvcore.WeightLoadError, match=rf"{P.format(1)}\.v_proj\.output_scale"):
        kvcore.load(model, ckpt)
    assert_unchanged(model, before)


@pytest.mark.parametrize("shards", [0, 2, 5], ids=["as shipped", "2 shards", "5 shards"])
def test_genuine_quark_checkpoint(tmp_path: Path, shards: int) -> None:
    ckpt = FIXTURES / FOLDER if shards == 0 else reshard(FOLDER, tmp_path / "ckpt", shards)
    model = model_for(scale_dtype=BF16)
    report = kvcore.load(model, ckpt)
    check_load(model, ckpt, report, sources(**KV, **ATTENTION))
    assert report.quant_method == "quark" and report.plugins == ["quark"]
