"""Checkpoints in the real tools' layouts and models shaped like engines build them.

``P`` is the attention block of layer ``i`` as the tools name it. Configs are the genuine
fixtures' own ``config.json`` (sizes, ``num_key_value_heads``, ``quantization_config``), so a
checkpoint-only reader finds what a real checkpoint offers.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from shared_support import modelopt_plugin, read_all  # noqa: F401 - shared helpers, used through this module

import kvcore
from kvcore.testing import tiny_llama, write_checkpoint

P = "model.layers.{}.self_attn"
LAYERS = 2
KV_HEADS = 2
SCALES = ("k_scale", "v_scale", "q_scale", "prob_scale")
BF16, F32, FP8 = torch.bfloat16, torch.float32, torch.float8_e4m3fn
REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO / "tests" / "fixtures" / "real"
CT = "llmcompressor/fp8_kv_tensor"
QUARK = "quark/fp8_kv_attn_fp8_eager"
AUTOFP8 = "autofp8/head_k_v_scale"
GENUINE_SCALES = {CT: ((1,), BF16), QUARK: ((), BF16), AUTOFP8: ((), F32)}
"""Each genuine fixture's projection-scale shape and dtype (``tiny_llama(fp8=True, ...)``)."""


def full_config(folder: str) -> dict[str, Any]:
    """The genuine fixture's whole ``config.json``."""
    return json.loads((FIXTURES / folder / "config.json").read_text())


def quant_config(folder: str, **kv_cache_scheme: Any) -> dict[str, Any]:
    """The genuine fixture's ``quantization_config``; compressed-tensors ``kv_cache_scheme`` overrides."""
    raw = copy.deepcopy(full_config(folder)["quantization_config"])
    if kv_cache_scheme:
        raw["kv_cache_scheme"].update(kv_cache_scheme)
    return raw


def model_for(folder: str, *, kv_cache_dtype: str = "fp8") -> torch.nn.Module:
    """The tiny Llama whose projections look like ``folder``'s (fp8 weights, its scale layout)."""
    shape, dtype = GENUINE_SCALES[folder]
    return tiny_llama(fp8=True, scale_shape=shape, scale_dtype=dtype, kv_cache_dtype=kv_cache_dtype)


def plain_weights(model: torch.nn.Module, seed: int = 0) -> dict[str, torch.Tensor]:
    """Every tensor of ``model`` but its KV-cache scales, with positive values in its dtypes."""
    gen = torch.Generator().manual_seed(seed)
    kv = {name for name, p in model.named_parameters() if isinstance(p, kvcore.KVCacheScaleParameter)}
    return {
        name: (torch.rand(tensor.shape, generator=gen) * 0.01 + 1e-3).to(tensor.dtype)
        for name, tensor in model.state_dict().items()
        if name not in kv
    }


def per_layer(leaf: str, shape: tuple[int, ...], dtype: torch.dtype, seed: int) -> dict[str, torch.Tensor]:
    """``P.<leaf>`` for every layer, distinct positive scale-like values."""
    gen = torch.Generator().manual_seed(seed)
    return {f"{P.format(i)}.{leaf}": (torch.rand(shape, generator=gen) * 0.01 + 1e-4).to(dtype) for i in range(LAYERS)}


def ct_scales(seed: int = 1) -> dict[str, torch.Tensor]:
    """compressed-tensors: ``P.k_scale`` / ``P.v_scale``, ``(1,)`` bf16."""
    return {**per_layer("k_scale", (1,), BF16, seed), **per_layer("v_scale", (1,), BF16, seed + 1)}


def quark_scales(seed: int = 1) -> dict[str, torch.Tensor]:
    """Quark: ``P.{k,v,q}_proj.output_scale`` and ``P.prob_output_scale``, ``()`` bf16."""
    leaves = ("k_proj.output_scale", "v_proj.output_scale", "q_proj.output_scale", "prob_output_scale")
    return {name: t for n, leaf in enumerate(leaves) for name, t in per_layer(leaf, (), BF16, seed + n).items()}


QUARK_LEAVES = {
    "k_scale": "k_proj.output_scale", "v_scale": "v_proj.output_scale",
    "q_scale": "q_proj.output_scale", "prob_scale": "prob_output_scale",
}  # fmt: skip
CT_LEAVES = {"k_scale": "k_scale", "v_scale": "v_scale"}
LAYOUTS = {CT: (ct_scales, CT_LEAVES), QUARK: (quark_scales, QUARK_LEAVES)}
"""Per written format: its scale tensors and which checkpoint leaf each Attention scale comes from."""


def write(directory: Path, folder: str, tensors: Mapping[str, torch.Tensor], **options: Any) -> Path:
    """A checkpoint of ``folder``'s format (its genuine config) holding ``tensors``."""
    config = {k: v for k, v in full_config(folder).items() if k != "quantization_config"}
    options.setdefault("quantization_config", quant_config(folder))
    return write_checkpoint(directory, tensors, config=config, **options)



def as_float(tensor: torch.Tensor) -> float | list[float]:
    """A checkpoint scale as kvcore reports it: float32, a list when per-head."""
    flat = tensor.to(torch.float32).reshape(-1)
    return float(flat[0]) if flat.numel() == 1 else flat.tolist()


def value(tensor: torch.Tensor) -> float | list[float]:
    """A loaded ``Attention`` scale (float32), in the report's form."""
    assert tensor.dtype == torch.float32
    return float(tensor) if tensor.numel() == 1 else tensor.tolist()


def snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A copy of every parameter and buffer (aliases included), to prove nothing was written."""
    return {name: t.detach().clone() for name, t in model.state_dict(keep_vars=True).items()}


def assert_unchanged(model: torch.nn.Module, before: Mapping[str, torch.Tensor]) -> None:
    after = model.state_dict(keep_vars=True)
    assert after.keys() == before.keys()
    for name, tensor in before.items():
        a, b = after[name].detach(), tensor
        assert a.dtype == b.dtype and a.shape == b.shape, name
        assert torch.equal(a.reshape(-1).view(torch.uint8), b.reshape(-1).view(torch.uint8)), name


def attention_names(model: torch.nn.Module) -> set[str]:
    """Each ``kvcore.Attention``'s own (first) name."""
    return {name for name, m in model.named_modules() if isinstance(m, kvcore.Attention)}
