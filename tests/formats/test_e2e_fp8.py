"""End to end through ``kvcore.load``: every ``quant_method == "fp8"`` layout of docs/formats.md.

AutoFP8 (``P.k_scale``/``P.v_scale`` () float32, legacy ``P.kv_scale``), Quark's deprecated
fp8 export (() bf16, k == v), block fp8 (no KV scales, ``weight_scale_inv``), single file and
sharded, and the genuine AutoFP8 checkpoint.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import pytest
import torch
from formats_support import (
    FIXTURES,
    LAYERS,
    check_load,
    genuine_config,
    model_for,
    module,
    per_layer,
    plain_weights,
    reshard,
    sources,
)

import kvcore
from kvcore.testing import FP8Linear, write_checkpoint

F32, BF16 = torch.float32, torch.bfloat16
AUTOFP8 = genuine_config("autofp8/head_k_v_scale")["quantization_config"]
QUARK_FP8_EXPORT = {
    "quant_method": "fp8",
    "activation_scheme": "static",
    "kv_cache_scheme": "static",
    "ignored_layers": ["lm_head"],
    "export": {"kv_cache_group": ["*k_proj", "*v_proj"], "pack_method": "reorder"},
}
BLOCK_FP8 = {"quant_method": "fp8", "activation_scheme": "dynamic", "weight_block_size": [128, 128]}
SHARDS = pytest.mark.parametrize("shards", [1, 3], ids=["single", "sharded"])


def load_checked(
    tmp_path: Path, model: torch.nn.Module, tensors: dict[str, torch.Tensor], config: dict, shards: int, **leaves: str
) -> kvcore.LoadReport:
    ckpt = write_checkpoint(tmp_path / "ckpt", tensors, quantization_config=config, shards=shards)
    report = kvcore.load(model, ckpt)
    check_load(model, ckpt, report, sources(**leaves))
    assert report.quant_method == "fp8" and report.plugins == ["fp8"]
    return report


@SHARDS
def test_autofp8_k_and_v(tmp_path: Path, shards: int) -> None:
    model = model_for(scale_dtype=F32)
    kv = {**per_layer("k_scale", (), F32, seed=1), **per_layer("v_scale", (), F32, seed=2)}
    load_checked(tmp_path, model, {**plain_weights(model), **kv}, AUTOFP8, shards, k_scale="k_scale", v_scale="v_scale")


@SHARDS
def test_autofp8_legacy_kv_scale_serves_for_k_and_v(tmp_path: Path, shards: int) -> None:
    model = model_for(scale_dtype=F32)
    tensors = {**plain_weights(model), **per_layer("kv_scale", (), F32, seed=3)}
    load_checked(tmp_path, model, tensors, AUTOFP8, shards, k_scale="kv_scale", v_scale="kv_scale")


@SHARDS
def test_quark_deprecated_fp8_export(tmp_path: Path, shards: int) -> None:
    model = model_for(scale_dtype=BF16)
    k = per_layer("k_scale", (), BF16, seed=4)
    v = {name.replace(".k_scale", ".v_scale"): value.clone() for name, value in k.items()}  # Quark writes k == v
    tensors = {**plain_weights(model), **k, **v}
    load_checked(tmp_path, model, tensors, QUARK_FP8_EXPORT, shards, k_scale="k_scale", v_scale="v_scale")
    assert float(model.get_submodule(module(0)).k_scale) == float(model.get_submodule(module(0)).v_scale)


@pytest.mark.parametrize("present", ["k_scale", "v_scale"])
def test_one_of_k_and_v_serves_for_both(tmp_path: Path, present: str) -> None:
    model = model_for(scale_dtype=F32)
    tensors = {**plain_weights(model), **per_layer(present, (), F32, seed=5)}
    load_checked(tmp_path, model, tensors, AUTOFP8, 1, k_scale=present, v_scale=present)


def block_fp8_model(kv_cache_dtype: str) -> torch.nn.Module:
    """Weights as HF FineGrainedFP8 / DeepSeek store them: fp8 ``weight`` and ``weight_scale_inv`` per 128x128 block."""
    model = model_for(kv_cache_dtype=kv_cache_dtype)
    for linear in model.modules():
        if isinstance(linear, FP8Linear):
            del linear.weight_scale, linear.input_scale  # dynamic activations: no input_scale
            rows, cols = (math.ceil(n / 128) for n in linear.weight.shape)
            linear.weight_scale_inv = torch.nn.Parameter(torch.zeros(rows, cols), requires_grad=False)
    return model


@SHARDS
def test_block_fp8_has_no_kv_scales_and_warns_per_layer_with_an_fp8_cache(tmp_path: Path, shards: int) -> None:
    model = block_fp8_model("fp8")
    tensors = plain_weights(model)
    assert any(name.endswith("weight_scale_inv") for name in tensors)
    ckpt = write_checkpoint(tmp_path / "ckpt", tensors, quantization_config=BLOCK_FP8, shards=shards)
    with pytest.warns(UserWarning) as record:
        report = kvcore.load(model, ckpt)
    for i in range(LAYERS):
        assert any(repr(module(i)) in str(w.message) for w in record), [str(w.message) for w in record]
    check_load(model, ckpt, report, sources())
    assert report.plugins == ["fp8"]


def test_block_fp8_with_an_unquantized_cache_is_silent(tmp_path: Path) -> None:
    model = block_fp8_model("auto")
    ckpt = write_checkpoint(tmp_path / "ckpt", plain_weights(model), quantization_config=BLOCK_FP8)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        report = kvcore.load(model, ckpt)
    check_load(model, ckpt, report, sources())


@pytest.mark.parametrize("shards", [0, 2, 5], ids=["as shipped", "2 shards", "5 shards"])
def test_genuine_autofp8_checkpoint(tmp_path: Path, shards: int) -> None:
    folder = "autofp8/head_k_v_scale"
    ckpt = FIXTURES / folder if shards == 0 else reshard(folder, tmp_path / "ckpt", shards)
    model = model_for(scale_dtype=F32)
    report = kvcore.load(model, ckpt)
    check_load(model, ckpt, report, sources(k_scale="k_scale", v_scale="v_scale"))
    assert report.quant_method == "fp8" and report.plugins == ["fp8"]
