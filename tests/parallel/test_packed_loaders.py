"""A vLLM-style packed TP model: fused ``qkv_proj`` / ``gate_up_proj`` whose loaders narrow by rank.

vLLM's ``QKVParallelLinear.weight_loader(param, loaded, shard_id)`` receives the whole
checkpoint tensor and narrows it: rows ``[rank * size, (rank + 1) * size)`` for q, and for k/v
the KV-head block ``rank // replicas`` (one head replicated over ``T / H_kv`` ranks when there
are more ranks than KV heads). ``o_proj``'s loader narrows the columns (dim 1) likewise. Such
loaders work unchanged through ``kvcore.load(..., tp_rank, tp_size)``: kvcore hands them the
whole tensor even though the fused parameters carry ``tp_dim`` (vLLM's ``output_dim``).
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import torch
from parallel_support import (
    HEAD_DIM,
    HIDDEN,
    INTER,
    chunk,
    config,
    heads,
    kv_per_rank,
    param,
    per_kv_head,
    read_all,
    row,
    same_bits,
    tp_model,
    write,
)
from torch import nn

import kvcore

PACKED = {"q_proj": ("qkv_proj", "q"), "k_proj": ("qkv_proj", "k"), "v_proj": ("qkv_proj", "v"),
          "gate_proj": ("gate_up_proj", 0), "up_proj": ("gate_up_proj", 1)}  # fmt: skip


class MergedColumnParallel(nn.Module):
    """QKVParallelLinear / MergedColumnParallelLinear: this rank's rows of every shard, stacked."""

    def __init__(self, n_in: int, rows: Mapping[str | int, int], blocks: Mapping[str | int, int], bias: bool) -> None:
        super().__init__()
        self.rows, self.blocks = dict(rows), dict(blocks)  # shard id -> rows here, and which block of the shard
        self.offset = dict(zip(rows, itertools.accumulate([0, *rows.values()]), strict=False))
        self.weight = param(sum(rows.values()), n_in, tp_dim=0)
        self.weight.weight_loader = self.weight_loader  # type: ignore[attr-defined]
        if bias:
            self.bias = param(sum(rows.values()), tp_dim=0)
            self.bias.weight_loader = self.weight_loader  # type: ignore[attr-defined]

    def weight_loader(self, param: nn.Parameter, loaded: torch.Tensor, shard_id: str | int) -> None:
        size = self.rows[shard_id]
        shard = loaded.narrow(0, self.blocks[shard_id] * size, size)
        param.data[self.offset[shard_id] : self.offset[shard_id] + size].copy_(shard)


class RowParallel(nn.Module):
    """RowParallelLinear with vLLM's loader: this rank's columns, narrowed from the whole tensor."""

    def __init__(self, n_in: int, n_out: int, rank: int) -> None:
        super().__init__()
        self.rank = rank
        self.weight = param(n_out, n_in, tp_dim=1)
        self.weight.weight_loader = self.weight_loader  # type: ignore[attr-defined]

    def weight_loader(self, param: nn.Parameter, loaded: torch.Tensor) -> None:
        size = param.shape[1]
        param.data.copy_(loaded.narrow(1, self.rank * size, size))


def packed_attention(cfg: Mapping[str, Any], rank: int, size: int) -> nn.Module:
    hq, kv = cfg["num_attention_heads"] // size, kv_per_rank(cfg["num_key_value_heads"], size)
    replicas = max(1, size // cfg["num_key_value_heads"])
    rows = {"q": hq * HEAD_DIM, "k": kv * HEAD_DIM, "v": kv * HEAD_DIM}
    blocks = {"q": rank, "k": rank // replicas, "v": rank // replicas}
    attn = nn.Module()
    attn.qkv_proj = MergedColumnParallel(HIDDEN, rows, blocks, bias=True)
    attn.o_proj = RowParallel(hq * HEAD_DIM, HIDDEN, rank)
    attn.attn = kvcore.Attention(hq, HEAD_DIM, kv, kv_cache_dtype="fp8")
    return attn


def packed_model(cfg: Mapping[str, Any], rank: int, size: int) -> nn.Module:
    model = tp_model(cfg, rank, size, attn=packed_attention)
    for layer in model.model.layers:
        mlp = nn.Module()
        mlp.gate_up_proj = MergedColumnParallel(HIDDEN, {0: INTER // size, 1: INTER // size}, {0: rank, 1: rank}, False)
        mlp.down_proj = row(INTER // size, HIDDEN)  # kvcore slices this one (tp_dim = 1, no loader)
        layer.mlp = mlp
    model.packed_modules_mapping = PACKED
    return model


@pytest.mark.parametrize("kv_heads", [4, 2])
@pytest.mark.parametrize("size", [1, 2, 4])
def test_a_loader_narrowing_by_rank_works_unchanged(tmp_path: Path, size: int, kv_heads: int) -> None:
    ckpt = write(tmp_path, kv_heads, per_head=True)
    t = read_all(ckpt)
    kv_rows = kv_per_rank(kv_heads, size) * HEAD_DIM
    for rank in range(size):
        model = packed_model(config(kv_heads), rank, size)
        report = kvcore.load(model, ckpt, tp_rank=rank, tp_size=size)
        for i, layer in enumerate(model.model.layers):
            p = f"model.layers.{i}"
            for leaf in ("weight", "bias"):
                q, k, v = (t[f"{p}.self_attn.{s}_proj.{leaf}"] for s in "qkv")
                want = torch.cat([chunk(q, 0, rank, size, q.shape[0] // size), chunk(k, 0, rank, size, kv_rows),
                                  chunk(v, 0, rank, size, kv_rows)])  # fmt: skip
                assert same_bits(getattr(layer.self_attn.qkv_proj, leaf), want), f"rank {rank}: {p} qkv {leaf}"
            o = t[f"{p}.self_attn.o_proj.weight"]
            assert same_bits(layer.self_attn.o_proj.weight, chunk(o, 1, rank, size, o.shape[1] // size))
            gate, up = (chunk(t[f"{p}.mlp.{s}_proj.weight"], 0, rank, size, INTER // size) for s in ("gate", "up"))
            assert same_bits(layer.mlp.gate_up_proj.weight, torch.cat([gate, up]))
            down = t[f"{p}.mlp.down_proj.weight"]
            assert same_bits(layer.mlp.down_proj.weight, chunk(down, 1, rank, size, INTER // size))
            attn = layer.self_attn.attn
            k_scale = t[f"{p}.self_attn.k_scale"].float().reshape(-1)
            assert torch.equal(attn.k_scale.reshape(-1), heads(k_scale, rank, size))
            q_scale = per_kv_head(t[f"{p}.self_attn.q_scale"].float().reshape(-1), kv_heads)
            assert torch.equal(attn.q_scale.reshape(-1), heads(q_scale, rank, size))
        assert "model.layers.0.self_attn.qkv_proj.weight" in report.loaded


def test_the_packed_and_the_plain_model_hold_the_same_shares(tmp_path: Path) -> None:
    """The fused rows are the plain model's q, k, v (and gate, up) parameters, stacked: same bytes."""
    ckpt = write(tmp_path, 2, per_head=True)
    for rank in range(4):
        plain, packed = tp_model(config(2), rank, 4), packed_model(config(2), rank, 4)
        kvcore.load(plain, ckpt, tp_rank=rank, tp_size=4)
        kvcore.load(packed, ckpt, tp_rank=rank, tp_size=4)
        for a, b in zip(plain.model.layers, packed.model.layers, strict=True):
            qkv = torch.cat([getattr(a.self_attn, f"{s}_proj").weight for s in "qkv"])
            assert same_bits(b.self_attn.qkv_proj.weight, qkv)
            assert same_bits(b.mlp.gate_up_proj.weight, torch.cat([a.mlp.gate_proj.weight, a.mlp.up_proj.weight]))
            assert same_bits(b.self_attn.o_proj.weight, a.self_attn.o_proj.weight)
            assert torch.equal(b.self_attn.attn.v_scale, a.self_attn.attn.v_scale)

