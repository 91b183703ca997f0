"""End to end through ``kvcore.load``: compressed-tensors (llm-compressor) checkpoints per docs/formats.md.

Current ``P.{k,v}_scale`` (1,) bf16; per-head ``(H_kv, 1, 1)``; attention-quantized with
``P.q_scale`` and all-zero fp8 zero points; int8 asymmetric (refused); legacy
``P.{k,v}_proj.output_scale``; the very old ``compression_config`` key; single file and
sharded; and the genuine llm-compressor 0.14 checkpoint.
"""

from __future__ import annotations

import copy
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch
from formats_support import (
    FIXTURES,
    KV_HEADS,
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

BF16, F16, FP8 = torch.bfloat16, torch.float16, torch.float8_e4m3fn
FOLDER = "llmcompressor/fp8_kv_tensor"
GENUINE = genuine_config(FOLDER)["quantization_config"]
METHOD = "compressed-tensors"
SHARDS = pytest.mark.parametrize("shards", [1, 3], ids=["single", "sharded"])
KV = {"k_scale": "k_scale", "v_scale": "v_scale"}


def config(*, kv_cache_scheme: dict[str, Any] | None = None, attention: bool = False) -> dict[str, Any]:
    """The genuine config, with ``kv_cache_scheme`` fields overridden; ``None`` values delete the field."""
    raw = copy.deepcopy(GENUINE)
    for key, value in (kv_cache_scheme or {}).items():
        raw["kv_cache_scheme"][key] = value
    if attention:
        scheme = dict(GENUINE["kv_cache_scheme"])
        raw["config_groups"]["attention"] = {"targets": ["LlamaAttention"], "input_activations": scheme}
    return raw


def kv(shape: tuple[int, ...] = (1,), dtype: torch.dtype = BF16, seed: int = 1) -> dict[str, torch.Tensor]:
    return {**per_layer("k_scale", shape, dtype, seed), **per_layer("v_scale", shape, dtype, seed + 1)}


def zero_points(*letters: str, dtype: torch.dtype = FP8) -> dict[str, torch.Tensor]:
    return {f"{P.format(i)}.{x}_zero_point": torch.zeros(1, dtype=dtype) for i in range(LAYERS) for x in letters}


def write(
    tmp_path: Path, model: torch.nn.Module, tensors: dict[str, torch.Tensor], shards: int = 1, **options: Any
) -> Path:
    """A checkpoint of ``model``'s plain weights plus ``tensors``; ``options`` go to ``write_checkpoint``."""
    return write_checkpoint(tmp_path / "ckpt", {**plain_weights(model), **tensors}, shards=shards, **options)


def load_checked(
    tmp_path: Path, tensors: dict[str, torch.Tensor], quant: dict[str, Any], shards: int = 1, **leaves: str
) -> tuple[torch.nn.Module, kvcore.LoadReport]:
    model = model_for(scale_shape=(1,), scale_dtype=BF16)
    ckpt = write(tmp_path, model, tensors, shards, quantization_config=quant)
    report = kvcore.load(model, ckpt)
    check_load(model, ckpt, report, sources(**leaves))
    assert report.quant_method == METHOD and report.plugins == [METHOD]
    return model, report


@SHARDS
def test_current_per_tensor(tmp_path: Path, shards: int) -> None:
    load_checked(tmp_path, kv(), config(), shards, **KV)


@SHARDS
def test_per_head_scales_load_as_float32_vectors(tmp_path: Path, shards: int) -> None:
    quant = config(kv_cache_scheme={"strategy": "attn_head"})
    model, report = load_checked(tmp_path, kv((KV_HEADS, 1, 1)), quant, shards, **KV)
    for i in range(LAYERS):
        assert isinstance(report.kv_scales[module(i)]["k_scale"], list)
        assert model.get_submodule(module(i)).v_scale.shape == (KV_HEADS,)


@SHARDS
def test_attention_quantized_loads_q_and_drops_all_zero_zero_points(tmp_path: Path, shards: int) -> None:
    tensors = {**kv(), **per_layer("q_scale", (1,), BF16, seed=3), **zero_points("q", "k", "v")}
    _, report = load_checked(tmp_path, tensors, config(attention=True), shards, **KV, q_scale="q_scale")
    assert sorted(report.dropped) == sorted(zero_points("q", "k", "v"))


def test_attention_quantized_without_kv_cache_scheme_loads_q_only(tmp_path: Path) -> None:
    quant = config(attention=True)
    del quant["kv_cache_scheme"]
    model = model_for(scale_shape=(1,), scale_dtype=BF16, kv_cache_dtype="auto")
    tensors = {**per_layer("q_scale", (1,), BF16, seed=4), **zero_points("q")}
    ckpt = write(tmp_path, model, tensors, quantization_config=quant)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an unquantized KV cache needs no k/v scales
        report = kvcore.load(model, ckpt)
    check_load(model, ckpt, report, sources(q_scale="q_scale"))


def test_int8_asymmetric_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    model = model_for(scale_shape=(1,), scale_dtype=BF16)
    zps = {name: torch.tensor([3], dtype=torch.int8) for name in zero_points("k", "v")}
    quant = config(kv_cache_scheme={"type": "int", "symmetric": False})
    ckpt = write(tmp_path, model, {**kv(), **zps}, quantization_config=quant)
    before = snapshot(model)
    with pytest.raises(kvcore.QuantConfigError) as info:
        kvcore.load(model, ckpt)
    message = str(info.value)
    assert "'compressed-tensors'" in message and "kvcore-compressed-tensors" in message  # the plugin
    assert str(ckpt / "config.json") in message  # the file
    assert "quantization_config.kv_cache_scheme.symmetric" in message  # the field
    assert "never loads it as if it were symmetric" in message
    assert_unchanged(model, before)


def test_non_zero_zero_point_under_a_symmetric_config_is_refused(tmp_path: Path) -> None:
    model = model_for(scale_shape=(1,), scale_dtype=BF16)
    zps = zero_points("k", "v")
    zps[f"{P.format(1)}.v_zero_point"] = torch.tensor([0.5]).to(FP8)
    ckpt = write(tmp_path, model, {**kv(), **zps}, quantization_config=config())
    before = snapshot(model)
    with pytest.raises(kvcore.WeightLoadError, match=rf"{P.format(1)}\.v_zero_point.*symmetric"):
        kvcore.load(model, ckpt)
    assert_unchanged(model, before)


def test_uninitialised_q_scale_is_refused_naming_the_tensor(tmp_path: Path) -> None:
    model = model_for(scale_shape=(1,), scale_dtype=BF16)
    q = per_layer("q_scale", (1,), BF16, seed=5)
    q[f"{P.format(0)}.q_scale"] = torch.tensor([-1.6e17], dtype=BF16)  # what llm-compressor 0.14 can save
    ckpt = write(tmp_path, model, {**kv(), **q, **zero_points("q", "k", "v")}, quantization_config=config())
    before = snapshot(model)
    with pytest.raises(kvcore.WeightLoadError, match=rf"{P.format(0)}\.q_scale.*negative"):
        kvcore.load(model, ckpt)
    assert_unchanged(model, before)


LEGACY = {"k_scale": "k_proj.output_scale", "v_scale": "v_proj.output_scale"}


@pytest.mark.parametrize(("shape", "dtype"), [((1,), BF16), ((), BF16), ((1,), F16), ((), F16)])
@pytest.mark.parametrize("scheme", [True, False], ids=["with kv_cache_scheme", "without"])
def test_legacy_output_scale_names(tmp_path: Path, shape: tuple[int, ...], dtype: torch.dtype, scheme: bool) -> None:
    quant = config()
    if not scheme:
        del quant["kv_cache_scheme"]
    tensors = {
        **per_layer("k_proj.output_scale", shape, dtype, seed=6),
        **per_layer("v_proj.output_scale", shape, dtype, seed=7),
    }
    load_checked(tmp_path, tensors, quant, 1, **LEGACY)


@SHARDS
def test_old_compression_config_key(tmp_path: Path, shards: int) -> None:
    model = model_for(scale_shape=(1,), scale_dtype=BF16)
    full = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "compression_config": config()}
    ckpt = write(tmp_path, model, per_layer("v_proj.output_scale", (1,), BF16, seed=8), shards, config=full)
    report = kvcore.load(model, ckpt)
    check_load(model, ckpt, report, sources(k_scale=LEGACY["v_scale"], v_scale=LEGACY["v_scale"]))
    assert report.quant_method == METHOD and report.plugins == [METHOD]


def test_old_compression_config_key_is_validated_too(tmp_path: Path) -> None:
    model = model_for(scale_shape=(1,), scale_dtype=BF16)
    quant = config(kv_cache_scheme={"type": "int", "symmetric": False})
    full = {"architectures": ["LlamaForCausalLM"], "compression_config": quant}
    ckpt = write(tmp_path, model, kv(), config=full)
    with pytest.raises(kvcore.QuantConfigError, match=r"compression_config\.kv_cache_scheme\.symmetric"):
        kvcore.load(model, ckpt)


@pytest.mark.parametrize("present", ["k_scale", "v_scale"])
def test_one_of_k_and_v_serves_for_both(tmp_path: Path, present: str) -> None:
    load_checked(tmp_path, per_layer(present, (1,), BF16, seed=9), config(), 1, k_scale=present, v_scale=present)


@pytest.mark.parametrize("shards", [0, 2, 5], ids=["as shipped", "2 shards", "5 shards"])
def test_genuine_llmcompressor_checkpoint(tmp_path: Path, shards: int) -> None:
    ckpt = FIXTURES / FOLDER if shards == 0 else reshard(FOLDER, tmp_path / "ckpt", shards)
    model = model_for(scale_shape=(1,), scale_dtype=BF16)
    report = kvcore.load(model, ckpt)
    check_load(model, ckpt, report, sources(**KV))
    assert report.quant_method == METHOD and report.plugins == [METHOD]
