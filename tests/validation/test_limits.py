"""Limits that used to be documented as open, now closed: caps with clear errors, bounded work.

- a shard rewritten in place at the same size with its mtime put back is still caught (the
  inode's change time cannot be put back);
- a header with more tensor entries than kvcore's cap is refused before its JSON is parsed, and
  a name longer than the cap is refused by name;
- a refused load with many near-miss names compares each with a bounded number of candidates.
"""

from __future__ import annotations

import difflib
import json
import os
from pathlib import Path
from typing import Any

import pytest
import torch
from validation_support import SHARD_1, SHARD_2, expect_refusal, rewrite_header

import kvcore
import kvcore._checkpoint.safetensors
import kvcore._loading.load
from kvcore import CheckpointError
from kvcore._loading.suggest import NEIGHBOURS, Suggester


def test_same_size_rewrite_with_the_mtime_put_back(
    model: torch.nn.Module, ckpt: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shard = ckpt / SHARD_2
    real = kvcore._loading.load.build_plan

    def plan_then_rewrite(*args: Any, **kwargs: Any) -> Any:
        plan = real(*args, **kwargs)
        before = shard.stat()
        raw = bytearray(shard.read_bytes())
        raw[-1] ^= 0xFF  # same size, one byte different
        shard.write_bytes(bytes(raw))
        os.utime(shard, ns=(before.st_atime_ns, before.st_mtime_ns))  # the mtime as it was
        assert shard.stat().st_mtime_ns == before.st_mtime_ns and shard.stat().st_size == before.st_size
        return plan

    monkeypatch.setattr(kvcore._loading.load, "build_plan", plan_then_rewrite)
    expect_refusal(model, ckpt, CheckpointError, str(shard), "was modified", "load again")


def test_more_entries_than_the_cap_are_refused_before_parsing(
    model: torch.nn.Module, ckpt: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(kvcore._checkpoint.safetensors, "MAX_TENSORS", 5)
    parsed: list[str] = []
    for step in ("_quick_entries", "_parse_json"):
        real = getattr(kvcore._checkpoint.safetensors, step)
        monkeypatch.setattr(kvcore._checkpoint.safetensors, step,
                            lambda *a, _real=real, _step=step: parsed.append(_step) or _real(*a))
    expect_refusal(model, ckpt, CheckpointError, str(ckpt / SHARD_1), "more than 5 tensor entries", "cap")
    assert parsed == []


def test_more_entries_than_the_cap_spelt_to_dodge_the_count(
    model: torch.nn.Module, ckpt: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A key spelt with a JSON escape escapes the byte count, not the check after parsing."""
    monkeypatch.setattr(kvcore._checkpoint.safetensors, "MAX_TENSORS", 5)
    path = ckpt / SHARD_1
    rewrite_header(path, lambda h: json.dumps(h).replace('"data_offsets"', '"data\\u005foffsets"').encode())
    expect_refusal(model, ckpt, CheckpointError, str(path), "more than kvcore's cap of 5")


def test_a_name_longer_than_the_cap(model: torch.nn.Module, ckpt: Path) -> None:
    path = ckpt / SHARD_2
    long = "model." + "x" * 2000
    rewrite_header(path, lambda h: {**h, long: {"dtype": "F32", "shape": [0], "data_offsets": [0, 0]}})
    expect_refusal(model, ckpt, CheckpointError, str(path), "2006 characters long", "cap is 1024", repr(long[:60]))


def test_suggestions_compare_each_name_with_a_bounded_number_of_candidates(monkeypatch: pytest.MonkeyPatch) -> None:
    compared: list[int] = []
    real = difflib.get_close_matches

    def counting(word: str, possibilities: list[str], *args: Any, **kwargs: Any) -> list[str]:
        compared.append(len(possibilities))
        return real(word, possibilities, *args, **kwargs)

    monkeypatch.setattr(difflib, "get_close_matches", counting)
    candidates = [f"model.layers.{i}.mlp.experts.{j}.down_proj.weight" for i in range(100) for j in range(200)]
    suggest = Suggester(candidates)
    assert suggest("model.layers.42.mlp.experts.7.down_proj.weigth") == (
        " (did you mean 'model.layers.42.mlp.experts.7.down_proj.weight'?)"
    )
    assert suggest("xmodel.layers.42.mlp.experts.7.down_proj.weight") == (  # a different first character
        " (did you mean 'model.layers.42.mlp.experts.7.down_proj.weight'?)"
    )
    assert suggest("something.else.entirely") == ""
    assert compared and max(compared) <= 4 * NEIGHBOURS


def test_a_refused_load_with_many_near_misses_does_bounded_work(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from kvcore.testing import write_checkpoint

    count = 3000
    model = torch.nn.Module()
    for i in range(count):
        model.register_buffer(f"layer_{i:05d}_weight", torch.zeros(1))
    ckpt = write_checkpoint(tmp_path / "ckpt", {f"layer_{i:05d}_weigth": torch.zeros(1) for i in range(count)})
    compared: list[int] = []
    real = difflib.get_close_matches
    monkeypatch.setattr(difflib, "get_close_matches",
                        lambda w, p, *a, **k: compared.append(len(p)) or real(w, p, *a, **k))
    with pytest.raises(kvcore.WeightLoadError) as caught:
        kvcore.load(model, ckpt)
    assert "layer_00000_weigth in model.safetensors (did you mean 'layer_00000_weight'?)" in str(caught.value)
    assert len(compared) <= 2 * kvcore._loading.load.SUGGESTIONS and max(compared) <= 4 * NEIGHBOURS
