"""The benchmark models: plain ``nn.Module`` trees that only need torch.

Every contender (kvcore, the raw safetensors loop, memcpy, vLLM in its own venv) builds the
same model from the same spec, so this module imports nothing but torch.
"""

from __future__ import annotations

from typing import Any

import torch

Spec = dict[str, Any]


def _param(shape: tuple[int, ...], dtype: torch.dtype) -> torch.nn.Parameter:
    # Filled, not empty: a real model is initialised before it is loaded, so its pages are
    # resident and the load measures copying, not first-touch page faults.
    return torch.nn.Parameter(torch.empty(shape, dtype=dtype).fill_(0), requires_grad=False)


def _holder(**params: torch.nn.Parameter) -> torch.nn.Module:
    module = torch.nn.Module()
    for name, value in params.items():
        module.register_parameter(name, value)
    return module


def _linear(rows: int, cols: int, dtype: torch.dtype) -> torch.nn.Module:
    return _holder(weight=_param((rows, cols), dtype))


def dense_model(spec: Spec) -> torch.nn.Module:
    """A Llama-shaped decoder of ``spec`` sizes (no forward: loading is all we measure)."""
    dtype = getattr(torch, spec.get("dtype", "bfloat16"))
    hidden, inter, kv = spec["hidden"], spec["intermediate"], spec["kv_heads"] * spec["head_dim"]
    layers = torch.nn.ModuleList()
    for _ in range(spec["layers"]):
        attn = torch.nn.Module()
        attn.q_proj, attn.k_proj = _linear(hidden, hidden, dtype), _linear(kv, hidden, dtype)
        attn.v_proj, attn.o_proj = _linear(kv, hidden, dtype), _linear(hidden, hidden, dtype)
        mlp = torch.nn.Module()
        if spec.get("experts"):
            mlp.gate = _linear(spec["experts"], hidden, dtype)
            mlp.experts = torch.nn.ModuleList(_expert(hidden, inter, dtype) for _ in range(spec["experts"]))
        else:
            mlp.gate_proj, mlp.up_proj = _linear(inter, hidden, dtype), _linear(inter, hidden, dtype)
            mlp.down_proj = _linear(hidden, inter, dtype)
        layer = torch.nn.Module()
        layer.self_attn, layer.mlp = attn, mlp
        layer.input_layernorm = _holder(weight=_param((hidden,), dtype))
        layer.post_attention_layernorm = _holder(weight=_param((hidden,), dtype))
        layers.append(layer)
    inner = torch.nn.Module()
    inner.embed_tokens = _holder(weight=_param((spec["vocab"], hidden), dtype))
    inner.layers = layers
    inner.norm = _holder(weight=_param((hidden,), dtype))
    model = torch.nn.Module()
    model.model = inner
    model.lm_head = _linear(spec["vocab"], hidden, dtype)
    return model


def _expert(hidden: int, inter: int, dtype: torch.dtype) -> torch.nn.Module:
    expert = torch.nn.Module()
    expert.gate_proj, expert.up_proj = _linear(inter, hidden, dtype), _linear(inter, hidden, dtype)
    expert.down_proj = _linear(hidden, inter, dtype)
    return expert


PACKED = {
    "q_proj": ("qkv_proj", "q"), "k_proj": ("qkv_proj", "k"), "v_proj": ("qkv_proj", "v"),
    "gate_proj": ("gate_up_proj", 0), "up_proj": ("gate_up_proj", 1),
}  # fmt: skip
"""nano-vllm's ``packed_modules_mapping`` for a Llama: checkpoint module -> (fused module, shard id)."""


def _fused(shards: dict[int | str, int], cols: int, dtype: torch.dtype) -> torch.nn.Module:
    """A fused linear whose ``weight_loader(param, loaded, shard_id)`` writes the shard's rows.

    The loader nano-vllm's ``QKVParallelLinear`` / ``MergedColumnParallelLinear`` have (one
    rank): ``param.data.narrow(0, offset, rows).copy_(loaded)``.
    """
    offsets, at = {}, 0
    for shard, rows in shards.items():
        offsets[shard], at = (at, rows), at + rows
    weight = _param((at, cols), dtype)

    def weight_loader(param: torch.Tensor, loaded: torch.Tensor, shard_id: int | str) -> None:
        offset, rows = offsets[shard_id]
        param.data.narrow(0, offset, rows).copy_(loaded)

    weight.weight_loader = weight_loader  # type: ignore[attr-defined]
    return _holder(weight=weight)


def packed_model(spec: Spec) -> torch.nn.Module:
    """``dense_model`` as engines build it: fused ``qkv_proj`` and ``gate_up_proj``, ``packed_modules_mapping``."""
    model = dense_model(spec)
    dtype = getattr(torch, spec.get("dtype", "bfloat16"))
    hidden, inter, kv = spec["hidden"], spec["intermediate"], spec["kv_heads"] * spec["head_dim"]
    for layer in model.model.layers:
        attn, mlp = layer.self_attn, layer.mlp
        del attn.q_proj, attn.k_proj, attn.v_proj, mlp.gate_proj, mlp.up_proj
        attn.qkv_proj = _fused({"q": hidden, "k": kv, "v": kv}, hidden, dtype)
        mlp.gate_up_proj = _fused({0: inter, 1: inter}, hidden, dtype)
    model.packed_modules_mapping = PACKED  # type: ignore[assignment]
    return model


def packed_target(name: str) -> tuple[str, int | str | None]:
    """The fused parameter a checkpoint name loads into under ``PACKED``, and its shard id."""
    parts = name.split(".")
    for i, part in enumerate(parts):
        if part in PACKED:
            fused, shard = PACKED[part]
            return ".".join([*parts[:i], fused, *parts[i + 1 :]]), shard
    return name, None
