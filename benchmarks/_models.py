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
