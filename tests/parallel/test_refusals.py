"""Refused tensor-parallel loads: a named error, raised before anything is written.

T = 3 over 2 KV heads with per-head scales (neither split nor replicated), a ``tp_dim``
parameter whose size fits no share of the checkpoint tensor, and a bad rank or size. Every
parameter and buffer is compared bit for bit with its value before the load.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest
from parallel_support import (
    HEAD_DIM,
    HIDDEN,
    INTER,
    Holder,
    assert_untouched,
    attention,
    config,
    param,
    snapshot,
    tp_model,
    write,
)
from torch import nn

import kvcore


def replicated_kv_attention(cfg: Mapping[str, Any], rank: int, size: int) -> nn.Module:
    """k/v projections held whole on every rank, so that only the per-head scales can fail."""
    attn = attention(cfg, rank, size)
    rows = cfg["num_key_value_heads"] * HEAD_DIM
    attn.k_proj = Holder(weight=param(rows, HIDDEN), bias=param(rows))
    attn.v_proj = Holder(weight=param(rows, HIDDEN), bias=param(rows))
    return attn


@pytest.mark.parametrize("rank", [0, 1, 2])
def test_three_ranks_over_two_kv_heads_refuse_the_per_head_scales(tmp_path: Path, rank: int) -> None:
    ckpt = write(tmp_path, 2, per_head=True, q_heads=6)
    model = tp_model(config(2, q_heads=6), rank, 3, attn=replicated_kv_attention)
    before = snapshot(model)
    with pytest.raises(kvcore.WeightLoadError) as error:
        kvcore.load(model, ckpt, tp_rank=rank, tp_size=3)
    assert "'model.layers.0.self_attn.k_scale'" in str(error.value)
    assert "2 per-head values" in str(error.value) and "3 tensor-parallel ranks" in str(error.value)
    assert_untouched(model, before)
    with pytest.raises(kvcore.WeightLoadError, match=r"'model\.layers\.0\.self_attn\.k_scale'"):
        kvcore.read_kv_scales(ckpt, tp_rank=rank, tp_size=3)


def _narrow_gate(model: nn.Module) -> str:
    model.model.layers[1].mlp.gate_proj.weight = param(INTER // 4, HIDDEN, tp_dim=0)  # f = 4 does not divide T = 2
    return "model.layers.1.mlp.gate_proj.weight"


def _odd_down(model: nn.Module) -> str:
    model.model.layers[1].mlp.down_proj.weight = param(HIDDEN, INTER // 2 + 1, tp_dim=1)
    return "model.layers.1.mlp.down_proj.weight"


def _wrong_dim(model: nn.Module) -> str:
    model.model.layers[1].self_attn.o_proj.weight.tp_dim = 0  # its columns are split, not its rows
    return "model.layers.1.self_attn.o_proj.weight"


def _no_such_dim(model: nn.Module) -> str:
    model.model.layers[1].mlp.up_proj.weight.tp_dim = 2
    return "model.layers.1.mlp.up_proj.weight"


def _bias(model: nn.Module) -> str:
    model.model.layers[1].self_attn.v_proj.bias = param(HEAD_DIM + 1, tp_dim=0)
    return "model.layers.1.self_attn.v_proj.bias"


@pytest.mark.parametrize("break_it", [_narrow_gate, _odd_down, _wrong_dim, _no_such_dim, _bias])
def test_a_tp_dim_parameter_that_fits_no_share_is_refused(tmp_path: Path, break_it: Callable[[nn.Module], str]) -> None:
    ckpt = write(tmp_path, 2, per_head=True)
    model = tp_model(config(2), 1, 2)
    tensor = break_it(model)
    before = snapshot(model)
    with pytest.raises(kvcore.KvcoreError) as error:
        kvcore.load(model, ckpt, tp_rank=1, tp_size=2)
    assert f"{tensor!r}" in str(error.value)
    assert_untouched(model, before)


def test_one_kv_head_per_rank_cannot_be_shared_by_three_ranks(tmp_path: Path) -> None:
    """T = 3 over 2 KV heads, per-tensor scales: the k projection's single head fits no share."""
    ckpt = write(tmp_path, 2, per_head=False, q_heads=6)
    model = tp_model(config(2, q_heads=6), 2, 3)
    before = snapshot(model)
    with pytest.raises(kvcore.KvcoreError, match=r"'model\.layers\.0\.self_attn\.k_proj\.(weight|bias)'"):
        kvcore.load(model, ckpt, tp_rank=2, tp_size=3)
    assert_untouched(model, before)


@pytest.mark.parametrize(("rank", "size"), [(2, 2), (5, 2), (0, 0), (-1, 2), (0, -2), (True, 2), (0, 2.0)])
def test_a_bad_rank_or_size_is_refused(tmp_path: Path, rank: Any, size: Any) -> None:
    ckpt = write(tmp_path, 2, per_head=True)
    model = tp_model(config(2), 0, 2)
    before = snapshot(model)
    with pytest.raises(kvcore.WeightLoadError, match="tp_"):
        kvcore.load(model, ckpt, tp_rank=rank, tp_size=size)
    assert_untouched(model, before)


def test_an_attention_built_with_every_kv_head_is_refused_under_tp(tmp_path: Path) -> None:
    """The advice is true under TP: build kvcore.Attention with this rank's KV heads."""
    ckpt = write(tmp_path, 4, per_head=True)

    def global_heads(cfg: Mapping[str, Any], rank: int, size: int) -> nn.Module:
        attn = attention(cfg, rank, size)
        attn.attn = kvcore.Attention(cfg["num_attention_heads"], HEAD_DIM, cfg["num_key_value_heads"])
        return attn

    model = tp_model(config(4), 1, 2, attn=global_heads)
    before = snapshot(model)
    with pytest.raises(kvcore.WeightLoadError) as error:
        kvcore.load(model, ckpt, tp_rank=1, tp_size=2)
    assert "'model.layers.0.self_attn.k_scale'" in str(error.value)
    assert "rank 1 of 2 gets 2 of them" in str(error.value) and "this rank's KV heads" in str(error.value)
    assert_untouched(model, before)


@pytest.mark.parametrize(("rank", "size"), [(2, 2), (0, 0), (-1, 2), (0, -2)])
def test_read_kv_scales_refuses_a_bad_rank_of_per_head_scales(tmp_path: Path, rank: int, size: int) -> None:
    ckpt = write(tmp_path, 2, per_head=True)
    with pytest.raises(kvcore.WeightLoadError, match="tp_"):
        kvcore.read_kv_scales(ckpt, tp_rank=rank, tp_size=size)
