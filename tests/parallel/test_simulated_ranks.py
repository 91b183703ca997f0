"""Every rank of T = 1, 2, 4 in one process: each parameter holds its chunk, scales split or replicated.

The checkpoint (written here) has 8 query heads and 4 or 2 KV heads, with compressed-tensors
KV-cache scales per KV head (``attn_head``: ``(H_kv, 1, 1)``, and a per-query-head ``q_scale``)
or per tensor. With T = 4 over 2 KV heads each rank holds one KV head, replicated over 2 ranks.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from parallel_support import (
    Q_HEADS,
    SCALES,
    as_list,
    chunk,
    config,
    heads,
    kv_per_rank,
    per_kv_head,
    read_all,
    same_bits,
    tp_model,
    write,
)

import kvcore

ATTN = "model.layers.{}.self_attn.attn"


def expected_scale(full: torch.Tensor, attr: str, kv_heads: int, rank: int, size: int) -> torch.Tensor:
    """This rank's float32 scale per API.md: per-tensor as is; per-head q reduced per KV head, then split."""
    values = full.float().reshape(-1)
    if values.numel() == 1:
        return values
    if attr == "q_scale":
        assert values.numel() == Q_HEADS
        values = per_kv_head(values, kv_heads)
    return heads(values, rank, size)


@pytest.mark.parametrize("per_head", [True, False], ids=["per-head", "per-tensor"])
@pytest.mark.parametrize("kv_heads", [4, 2])
@pytest.mark.parametrize("size", [1, 2, 4])
def test_every_rank_holds_its_chunk_and_its_scales(tmp_path: Path, size: int, kv_heads: int, per_head: bool) -> None:
    ckpt = write(tmp_path, kv_heads, per_head)
    tensors = read_all(ckpt)
    reports = []
    for rank in range(size):
        model = tp_model(config(kv_heads), rank, size)
        report = kvcore.load(model, ckpt, tp_rank=rank, tp_size=size)
        reports.append(report.kv_scales)
        checked = 0
        for name, param in model.named_parameters():
            if name.rpartition(".")[0].endswith(".attn"):
                continue
            full, dim = tensors[name], getattr(param, "tp_dim", None)
            want = full if dim is None else chunk(full, dim, rank, size, param.shape[dim])
            assert same_bits(param, want), f"rank {rank} of {size}: {name}"
            checked += 1
        assert checked == len(tensors) - 3 * 2  # every tensor but the k/v/q scales of 2 layers
        for layer in range(2):
            attn = model.model.layers[layer].self_attn.attn
            assert (attn.num_heads, attn.num_kv_heads) == (Q_HEADS // size, kv_per_rank(kv_heads, size))
            for attr in SCALES:
                full = tensors[f"model.layers.{layer}.self_attn.{attr}"]
                want = expected_scale(full, attr, kv_heads, rank, size)
                got = getattr(attn, attr)
                assert got.dtype == torch.float32
                assert torch.equal(got.reshape(-1), want), f"rank {rank} of {size}: layer {layer} {attr}"
                assert as_list(report.kv_scales[ATTN.format(layer)][attr]) == want.tolist()
                if not per_head:
                    assert isinstance(report.kv_scales[ATTN.format(layer)][attr], float)
        assert kvcore.read_kv_scales(ckpt, tp_rank=rank, tp_size=size) == report.kv_scales
    if not per_head:
        assert all(scales == reports[0] for scales in reports)  # per-tensor: the same on every rank


@pytest.mark.parametrize("kv_heads", [4, 2])
def test_the_ranks_together_hold_the_whole_model(tmp_path: Path, kv_heads: int) -> None:
    """Split KV heads cover the tensor once; replicated ones (T=4 over 2 heads) repeat on consecutive ranks."""
    ckpt = write(tmp_path, kv_heads, per_head=True)
    tensors = read_all(ckpt)
    size = 4
    models = [tp_model(config(kv_heads), rank, size) for rank in range(size)]
    for rank, model in enumerate(models):
        kvcore.load(model, ckpt, tp_rank=rank, tp_size=size)
    for name, param in models[0].named_parameters():
        dim = getattr(param, "tp_dim", None)
        if dim is None:
            continue
        parts = [dict(model.named_parameters())[name] for model in models]
        if param.shape[dim] * size == tensors[name].shape[dim]:
            assert same_bits(torch.cat(parts, dim), tensors[name]), name
        else:  # one KV head per rank, each held by size // kv_heads consecutive ranks
            replicas = size // kv_heads
            assert same_bits(torch.cat(parts[::replicas], dim), tensors[name]), name
            assert all(same_bits(p, parts[r - r % replicas]) for r, p in enumerate(parts)), name
    for attr in ("k_scale", "v_scale"):
        full = tensors[f"model.layers.1.self_attn.{attr}"].float().reshape(-1)
        got = torch.cat([getattr(m.model.layers[1].self_attn.attn, attr).reshape(-1) for m in models])
        assert torch.equal(got, full.repeat_interleave(size // kv_heads) if kv_heads < size else full)
