"""The test suite's engine-shaped model: nano-vllm / vLLM style, built from a checkpoint.

Shapes come from the checkpoint's ``config.json``, dtypes (and which linears are fp8) from its
safetensors headers. Attention projections are fused (``qkv_proj``: q‖k‖v rows), so are the
gated MLPs (``gate_up_proj``, or ``w13`` for ModelOpt's Mixtral ``w1``/``w3`` experts); their
parameters carry ``weight_loader(param, loaded, shard_id)`` writing the shard's row block, and
per-tensor fp8 scales live in float32 ``(num_shards,)`` parameters written at the shard's index.
Unfused linears hold their tensors exactly as the checkpoint stores them.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from shared_support import Headers, read_headers
from torch import nn

import kvcore

QKV = {"q_proj": ("qkv_proj", "q"), "k_proj": ("qkv_proj", "k"), "v_proj": ("qkv_proj", "v")}
GATE_UP = {"gate_proj": ("gate_up_proj", 0), "up_proj": ("gate_up_proj", 1)}
W13 = {"w1": ("w13", 0), "w3": ("w13", 1)}
DENSE = ("gate_up_proj", "gate_proj", "down_proj")
SCALE_LEAVES = ("weight_scale", "input_scale")
FILL = -7.0
"""Every parameter starts at this value, so that a block the load never wrote shows."""




def packed_mapping(checkpoint: Path) -> dict[str, tuple[str, int | str]]:
    """The ``packed_modules_mapping`` that fits the checkpoint's module names."""
    names = read_headers(checkpoint)
    w13 = any(".w1." in name for name in names)
    return {**QKV, **GATE_UP, **(W13 if w13 else {})}


def stacked_mapper(checkpoint: Path) -> kvcore.WeightsMapper:
    """vLLM's form of :func:`packed_mapping`: ``orig_to_new_stacked`` substring rules."""
    rules = {f".{k}": (f".{fused}", shard) for k, (fused, shard) in packed_mapping(checkpoint).items()}
    return kvcore.WeightsMapper(orig_to_new_stacked=rules)


def build(checkpoint: Path, *, packed: bool = True) -> nn.Module:
    """The engine model for ``checkpoint``; ``packed=False`` leaves out ``packed_modules_mapping``."""
    cfg = json.loads((Path(checkpoint) / "config.json").read_text())
    h = read_headers(checkpoint)
    hid = cfg["hidden_size"]
    inner = nn.Module()
    inner.embed_tokens = _Holder(weight=_param((cfg["vocab_size"], hid), h["model.embed_tokens.weight"][1]))
    inner.layers = nn.ModuleList(_layer(cfg, h, f"model.layers.{i}") for i in range(cfg["num_hidden_layers"]))
    inner.norm = _Holder(weight=_param((hid,), h["model.norm.weight"][1]))
    model = nn.Module()
    model.model = inner
    if not cfg.get("tie_word_embeddings", False):
        model.lm_head = _Holder(weight=_param((cfg["vocab_size"], hid), h["lm_head.weight"][1]))
    if packed:
        model.packed_modules_mapping = packed_mapping(checkpoint)
    return model


def _param(shape: Sequence[int], dtype: torch.dtype, loader: Any = None) -> nn.Parameter:
    param = nn.Parameter(torch.full(tuple(shape), FILL, dtype=dtype), requires_grad=False)
    if loader is not None:
        param.weight_loader = loader
    return param


class _Holder(nn.Module):
    def __init__(self, **params: nn.Parameter) -> None:
        super().__init__()
        for name, param in params.items():
            self.register_parameter(name, param)


class Linear(nn.Module):
    """An unfused projection: weight (and bias, fp8 scales) in the checkpoint's dtypes and scale shapes."""

    def __init__(self, in_features: int, out_features: int, h: Headers, prefix: str) -> None:
        super().__init__()
        self.weight = _param((out_features, in_features), h[f"{prefix}.weight"][1])
        if f"{prefix}.bias" in h:
            self.bias = _param((out_features,), h[f"{prefix}.bias"][1])
        for leaf in SCALE_LEAVES:
            if f"{prefix}.{leaf}" in h:
                self.register_parameter(leaf, _param(*h[f"{prefix}.{leaf}"]))


class FusedLinear(nn.Module):
    """Shards' rows stacked in one weight (QKVParallelLinear / MergedColumnParallelLinear)."""

    def __init__(self, in_features: int, shards: Mapping[int | str, int], h: Headers, first: str) -> None:
        super().__init__()
        self.sizes = dict(shards)
        self.offsets = dict(zip(shards, itertools.accumulate([0, *shards.values()]), strict=False))
        rows = sum(self.sizes.values())
        self.weight = _param((rows, in_features), h[f"{first}.weight"][1], self.weight_loader)
        if f"{first}.bias" in h:
            self.bias = _param((rows,), h[f"{first}.bias"][1], self.weight_loader)
        for leaf in SCALE_LEAVES:
            if f"{first}.{leaf}" in h:
                self.register_parameter(leaf, _param((len(shards),), torch.float32, self.scale_loader))

    def weight_loader(self, param: nn.Parameter, loaded: torch.Tensor, shard_id: int | str) -> None:
        start, size = self.offsets[shard_id], self.sizes[shard_id]
        if tuple(loaded.shape) != (size, *param.shape[1:]):
            raise ValueError(f"shard {shard_id!r}: shape {list(loaded.shape)}, expected {[size, *param.shape[1:]]}")
        param.data[start : start + size].copy_(loaded)

    def scale_loader(self, param: nn.Parameter, loaded: torch.Tensor, shard_id: int | str) -> None:
        if loaded.numel() != 1:
            raise ValueError(f"shard {shard_id!r}: a per-tensor scale has one element, got {list(loaded.shape)}")
        param.data[list(self.sizes).index(shard_id)] = loaded.reshape(()).to(torch.float32)


def _gated(hid: int, inter: int, h: Headers, p: str, names: tuple[str, str, str] = DENSE) -> nn.Module:
    """``names``: the fused module, the checkpoint's first shard (for dtypes), the down projection."""
    fused, first, down = names
    mlp = nn.Module()
    mlp.add_module(fused, FusedLinear(hid, {0: inter, 1: inter}, h, f"{p}.{first}"))
    mlp.add_module(down, Linear(inter, hid, h, f"{p}.{down}"))
    return mlp


def _attention(cfg: Mapping[str, Any], h: Headers, p: str) -> nn.Module:
    hid, heads, kv_heads = cfg["hidden_size"], cfg["num_attention_heads"], cfg["num_key_value_heads"]
    dim = cfg.get("head_dim") or hid // heads
    attn = nn.Module()
    attn.qkv_proj = FusedLinear(hid, {"q": heads * dim, "k": kv_heads * dim, "v": kv_heads * dim}, h, f"{p}.q_proj")
    attn.o_proj = Linear(heads * dim, hid, h, f"{p}.o_proj")
    if cfg["model_type"].startswith("qwen3"):
        attn.q_norm = _Holder(weight=_param((dim,), h[f"{p}.q_norm.weight"][1]))
        attn.k_norm = _Holder(weight=_param((dim,), h[f"{p}.k_norm.weight"][1]))
    attn.attn = kvcore.Attention(heads, dim, kv_heads, kv_cache_dtype="fp8")
    return attn


def _moe(cfg: Mapping[str, Any], h: Headers, p: str) -> tuple[str, nn.Module]:
    """The sparse MoE block, laid out as the checkpoint names it; returns (attribute name, module)."""
    hid, count = cfg["hidden_size"], cfg.get("num_experts") or cfg["num_local_experts"]
    inter = cfg.get("moe_intermediate_size") or cfg["intermediate_size"]
    if f"{p}.block_sparse_moe.experts.0.w1.weight" in h:  # ModelOpt Mixtral: per-expert w1/w2/w3
        name, names = "block_sparse_moe", ("w13", "w1", "w2")
    else:
        name, names = "mlp", DENSE
    moe = nn.Module()
    moe.gate = Linear(hid, count, h, f"{p}.{name}.gate")
    if f"{p}.mlp.experts.gate_up_proj" in h:  # Quark Mixtral: experts fused in 3-D tensors
        moe.experts = _Holder(
            gate_up_proj=_param((count, 2 * inter, hid), h[f"{p}.mlp.experts.gate_up_proj"][1]),
            down_proj=_param((count, hid, inter), h[f"{p}.mlp.experts.down_proj"][1]),
        )
    else:
        moe.experts = nn.ModuleList(_gated(hid, inter, h, f"{p}.{name}.experts.{e}", names) for e in range(count))
    return name, moe


def _layer(cfg: Mapping[str, Any], h: Headers, p: str) -> nn.Module:
    hid = cfg["hidden_size"]
    layer = nn.Module()
    layer.self_attn = _attention(cfg, h, f"{p}.self_attn")
    if cfg.get("num_experts") or cfg.get("num_local_experts"):
        name, moe = _moe(cfg, h, p)
        layer.add_module(name, moe)
    else:
        layer.mlp = _gated(hid, cfg["intermediate_size"], h, f"{p}.mlp")
    for norm in ("input_layernorm", "post_attention_layernorm"):
        layer.add_module(norm, _Holder(weight=_param((hid,), h[f"{p}.{norm}.weight"][1])))
    return layer
