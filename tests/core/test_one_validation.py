"""One validation on every path: ``AutoWeightsLoader`` and ``KVCacheScaleParameter.weight_loader``
check what ``kvcore.load`` checks (API.md, "Engine-shaped models").

Bad scale values and non-zero zero points / ModelOpt biases are refused, all-zero ones
dropped, no ``-1.0`` sentinel survives a load, scales stay float32 through model casts, and a
second load writes into the scale's existing storage.
"""

from __future__ import annotations

import copy
import math
import re
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from core_support import (
    AUTOFP8,
    BF16,
    CT,
    F32,
    FP8,
    KV_HEADS,
    LAYERS,
    SCALES,
    P,
    ct_scales,
    model_for,
    modelopt_plugin,
    per_layer,
    plain_weights,
    quant_config,
    read_all,
    value,
    write,
)

import kvcore
from kvcore import AutoWeightsLoader, KVCacheScaleParameter
from kvcore.testing import tiny_llama, write_checkpoint

ODD = 0.0123456789
"""Not representable in bf16 or fp16: a scale rounded through the model dtype would differ."""


def attentions(model: torch.nn.Module) -> list[kvcore.Attention]:
    return [model.get_submodule(f"{P.format(i)}.attn") for i in range(LAYERS)]


def auto_load(model: torch.nn.Module, ckpt: Path) -> set[str]:
    """An engine's loop: every checkpoint tensor through ``AutoWeightsLoader`` with the plugins' mapper."""
    return AutoWeightsLoader(model).load_weights(read_all(ckpt).items(), mapper=kvcore.mapper_for(ckpt))


def ct_checkpoint(directory: Path, tensors: dict[str, torch.Tensor], *, attention: bool = False) -> Path:
    raw = quant_config(CT)
    if attention:  # llm-compressor's attention quantization: P.q_scale too
        raw["config_groups"]["attention"] = {"targets": ["LlamaAttention"],
                                             "input_activations": copy.deepcopy(raw["kv_cache_scheme"])}
    return write(directory, CT, {**plain_weights(model_for(CT)), **tensors}, quantization_config=raw)


@pytest.mark.parametrize(
    ("bad", "shown"),
    [(math.nan, r"(?i)nan"), (math.inf, r"(?i)inf"), (-math.inf, r"(?i)-inf"), (0.0, r"(?<![\w.])-?0(\.0*)?(?![\w.])"),
     (-0.5, r"-0\.5")],
    ids=["nan", "inf", "-inf", "zero", "negative"],
)
def test_weight_loader_refuses_a_bad_value_naming_it(bad: float, shown: str) -> None:
    param = KVCacheScaleParameter()
    with pytest.raises(kvcore.WeightLoadError) as info:
        param.weight_loader(param, torch.tensor([bad]))
    assert re.search(shown, str(info.value)), str(info.value)
    assert float(param) == -1.0  # nothing written


@pytest.mark.parametrize("letter", ["k", "v", "q"])
def test_auto_loader_drops_all_zero_zero_points_without_options(letter: str) -> None:
    model = tiny_llama()
    name = f"{P.format(0)}.attn.{letter}_zero_point"
    weights = [(f"{P.format(0)}.attn.k_scale", torch.tensor([0.25])), (name, torch.zeros(1, dtype=FP8))]
    loaded = AutoWeightsLoader(model).load_weights(weights)
    assert name not in loaded and f"{P.format(0)}.attn.k_scale" in loaded
    assert float(attentions(model)[0].k_scale) == 0.25


@pytest.mark.parametrize("letter", ["k", "v", "q"])
def test_auto_loader_refuses_non_zero_zero_points_without_options(letter: str) -> None:
    name = f"{P.format(0)}.attn.{letter}_zero_point"
    with pytest.raises(kvcore.WeightLoadError, match=rf"{letter}_zero_point"):
        AutoWeightsLoader(tiny_llama()).load_weights([(name, torch.tensor([0.5], dtype=FP8))])


@pytest.mark.parametrize("zero", [0.0, 0.5], ids=["all_zero_dropped", "non_zero_refused"])
def test_compressed_tensors_zero_points_through_the_plugins_mapper(tmp_path: Path, zero: float) -> None:
    points = {f"{P.format(i)}.{x}_zero_point": torch.full((1,), zero, dtype=FP8) for i in range(LAYERS) for x in "kv"}
    scales = ct_scales()
    ckpt = ct_checkpoint(tmp_path / "ckpt", {**scales, **points})
    model = model_for(CT)
    if zero:
        with pytest.raises(kvcore.WeightLoadError, match=r"[kv]_zero_point"):
            auto_load(model, ckpt)
        return
    loaded = auto_load(model, ckpt)
    assert not [name for name in loaded if "zero_point" in name]
    for i, attn in enumerate(attentions(model)):
        assert float(attn.k_scale) == float(scales[f"{P.format(i)}.k_scale"].float())


@pytest.mark.parametrize("bias", [0.0, 0.25], ids=["all_zero_dropped", "non_zero_refused"])
def test_modelopt_biases_through_the_plugins_mapper(tmp_path: Path, bias: float) -> None:
    model = model_for(AUTOFP8)  # ModelOpt's projection scales are () float32 too
    tensors = plain_weights(model)
    for i in range(LAYERS):
        tensors[f"{P.format(i)}.k_proj.k_scale"] = torch.tensor(0.0625 * (i + 1))
        tensors[f"{P.format(i)}.v_proj.v_scale"] = torch.tensor(0.5 + i)
        tensors[f"{P.format(i)}.k_proj.k_bias"] = torch.full((1, KV_HEADS, 1, 16), bias)
        tensors[f"{P.format(i)}.v_proj.v_bias"] = torch.full((1, KV_HEADS, 1, 16), bias)
    hf = {"producer": {"name": "modelopt", "version": "0.47.0"},
          "quantization": {"quant_algo": "FP8", "kv_cache_quant_algo": "FP8", "exclude_modules": ["lm_head"]}}
    ckpt = write_checkpoint(tmp_path / "ckpt", tensors, hf_quant_config=hf)
    with modelopt_plugin():
        if bias:
            with pytest.raises(kvcore.WeightLoadError, match=r"[kv]_(bias|zero_point)"):
                auto_load(model, ckpt)
            return
        loaded = auto_load(model, ckpt)
    assert not [name for name in loaded if "bias" in name or "zero_point" in name]
    for i, attn in enumerate(attentions(model)):
        assert (float(attn.k_scale), float(attn.v_scale)) == (0.0625 * (i + 1), 0.5 + i)


@pytest.mark.parametrize("path", ["load", "auto_loader"])
def test_llm_compressors_uninitialised_q_scale_is_refused(tmp_path: Path, path: str) -> None:
    q = {f"{P.format(i)}.q_scale": torch.tensor([-1.6e17], dtype=BF16) for i in range(LAYERS)}
    ckpt = ct_checkpoint(tmp_path / "ckpt", {**ct_scales(), **q}, attention=True)
    with pytest.raises(kvcore.WeightLoadError, match=r"e\+17|q_scale"):
        if path == "load":
            kvcore.load(model_for(CT), ckpt)
        else:
            auto_load(model_for(CT), ckpt)


def test_no_sentinel_survives_the_auto_loader(tmp_path: Path) -> None:
    k = per_layer("k_scale", (1,), BF16, 3)
    ckpt = ct_checkpoint(tmp_path / "ckpt", {f"{P.format(0)}.k_scale": k[f"{P.format(0)}.k_scale"]})  # k only, layer 0
    model = model_for(CT, kv_cache_dtype="auto")
    auto_load(model, ckpt)
    first, second = attentions(model)
    k0 = float(k[f"{P.format(0)}.k_scale"].float())
    assert [value(getattr(first, a)) for a in SCALES] == [k0, k0, 1.0, 1.0]
    assert [value(getattr(second, a)) for a in SCALES] == [1.0, 1.0, 1.0, 1.0]
    assert not [n for n, p in model.named_parameters() if bool((p.detach().float() == -1.0).any())]
    before = {n: (p.detach().clone(), p.data_ptr()) for n, p in model.named_parameters()}
    for attn in attentions(model):
        attn.process_weights_after_loading()
    for name, param in model.named_parameters():
        assert torch.equal(param.detach(), before[name][0]) and param.dtype == before[name][0].dtype, name


def cast_layouts(tmp_path: Path, layout: str) -> tuple[Path, str]:
    """A checkpoint whose k scales are ``ODD`` (per-tensor, float32) or per-head, and its format folder."""
    if layout == "per_tensor":
        scales = {f"{P.format(i)}.{s}": torch.tensor(ODD * (i + 1), dtype=F32) for i in range(LAYERS)
                  for s in ("k_scale", "v_scale")}
        return write(tmp_path / "ckpt", AUTOFP8, {**plain_weights(model_for(AUTOFP8)), **scales}), AUTOFP8
    heads = {**per_layer("k_scale", (KV_HEADS, 1, 1), BF16, 8), **per_layer("v_scale", (KV_HEADS, 1, 1), BF16, 9)}
    raw = quant_config(CT, strategy="attn_head")
    return write(tmp_path / "ckpt", CT, {**plain_weights(model_for(CT)), **heads}, quantization_config=raw), CT


CASTS: dict[str, Callable[[torch.nn.Module], torch.nn.Module]] = {
    "to_bfloat16": lambda m: m.to(torch.bfloat16),
    "to_float16": lambda m: m.to(torch.float16),
    "half": lambda m: m.half(),
    "bfloat16": lambda m: m.bfloat16(),
}


@pytest.mark.parametrize("layout", ["per_tensor", "per_head"])
@pytest.mark.parametrize("cast", list(CASTS))
def test_scales_stay_float32_through_model_casts(tmp_path: Path, cast: str, layout: str) -> None:
    ckpt, folder = cast_layouts(tmp_path, layout)
    model = model_for(folder)
    kvcore.load(model, ckpt)
    exact = {(i, a): getattr(attn, a).detach().clone() for i, attn in enumerate(attentions(model)) for a in SCALES}
    if layout == "per_tensor":
        assert float(exact[0, "k_scale"]) == float(torch.tensor(ODD, dtype=F32))
    model = CASTS[cast](model)
    assert model.model.layers[0].mlp.down_proj.weight.dtype in (torch.bfloat16, torch.float16)  # the cast happened
    for i, attn in enumerate(attentions(model)):
        for attr in SCALES:
            scale = getattr(attn, attr)
            assert scale.dtype == torch.float32 and isinstance(scale, KVCacheScaleParameter), (i, attr)
            assert torch.equal(scale.detach(), exact[i, attr]), (i, attr)


@pytest.mark.parametrize("cast", list(CASTS))
def test_an_unloaded_attention_stays_float32_through_casts(cast: str) -> None:
    attn = CASTS[cast](kvcore.Attention(4, 16, 2))
    assert all(getattr(attn, a).dtype == torch.float32 for a in SCALES)


def k_and_v(tmp_path: Path, name: str, factor: float) -> Path:
    scales = {f"{P.format(i)}.{s}": torch.tensor(ODD * factor * (i + 1 + j), dtype=F32)
              for i in range(LAYERS) for j, s in enumerate(("k_scale", "v_scale"))}
    return write(tmp_path / name, AUTOFP8, {**plain_weights(model_for(AUTOFP8)), **scales})


def load_via(path: str, model: torch.nn.Module, ckpt: Path) -> None:
    if path == "load":
        kvcore.load(model, ckpt)
    else:
        auto_load(model, ckpt)


@pytest.mark.parametrize("second", ["load", "auto_loader"])
@pytest.mark.parametrize("first", ["load", "auto_loader"])
def test_a_second_load_keeps_the_scales_storage(tmp_path: Path, first: str, second: str) -> None:
    model = model_for(AUTOFP8)
    load_via(first, model, k_and_v(tmp_path, "one", 1.0))
    held = {(i, s): (getattr(a, s), getattr(a, s).data_ptr()) for i, a in enumerate(attentions(model))
            for s in ("k_scale", "v_scale")}
    again = k_and_v(tmp_path, "two", 3.0)
    load_via(second, model, again)
    tensors = read_all(again)
    for (i, attr), (param, pointer) in held.items():
        now = getattr(attentions(model)[i], attr)
        assert now is param and now.data_ptr() == pointer, (i, attr)
        assert float(now) == float(tensors[f"{P.format(i)}.{attr}"]), (i, attr)
