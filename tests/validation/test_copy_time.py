"""Errors that only copying can reveal: shards changing under the loader, loaders that fail.

A shard that changes after planning but before the first write is refused with the model
untouched. One that changes after other shards were copied, or a parameter's own
``weight_loader`` that raises, raises ``CheckpointError`` whose ``written`` (and message)
lists exactly what changed, so that an engine can discard the model.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from validation_support import SHARD_1, SHARD_2, changed, expect_refusal, snapshot

import kvcore
import kvcore._loading.load
from kvcore import CheckpointError


def _after_planning(monkeypatch: pytest.MonkeyPatch, action: Callable[[], None]) -> None:
    """Run ``action`` once the plan is complete, just before copying starts."""
    real = kvcore._loading.load.build_plan

    def build_plan_then_act(*args: Any, **kwargs: Any) -> Any:
        plan = real(*args, **kwargs)
        action()
        return plan

    monkeypatch.setattr(kvcore._loading.load, "build_plan", build_plan_then_act)


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:-100])


def _replace(path: Path) -> None:
    # Same size, different file: the way a re-download replaces a shard.
    shutil.copy(path, path.with_suffix(".new"))
    os.replace(path.with_suffix(".new"), path)


def _touch_later(path: Path) -> None:
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))


@pytest.mark.parametrize(
    ("change", "words"),
    [(_truncate, "was resized from"), (_replace, "was replaced by another file"), (_touch_later, "was modified")],
    ids=["truncated", "replaced", "rewritten"],
)
@pytest.mark.parametrize("shard", [SHARD_1, SHARD_2])
def test_shard_changed_between_plan_and_copy(
    model: torch.nn.Module,
    ckpt: Path,
    monkeypatch: pytest.MonkeyPatch,
    shard: str,
    change: Callable[[Path], None],
    words: str,
) -> None:
    _after_planning(monkeypatch, lambda: change(ckpt / shard))
    error = expect_refusal(model, ckpt, CheckpointError, str(ckpt / shard), words, "load again")
    assert error.written == frozenset()


def test_shard_changed_while_an_earlier_shard_is_copied(model: torch.nn.Module, ckpt: Path) -> None:
    shard = ckpt / SHARD_2

    def truncate_second_shard_once(_: int) -> None:
        if shard.stat().st_size > 200:
            _truncate(shard)

    before = snapshot(model)
    with pytest.raises(CheckpointError) as caught:
        kvcore.load(model, ckpt, progress=truncate_second_shard_once)
    error, message = caught.value, str(caught.value)
    assert error.written == changed(model, before)
    assert error.written  # the first shard was copied before the second was found changed
    assert f"after writing {len(error.written)} parameter(s)" in message
    for name in sorted(error.written)[:20]:
        assert name in message
    assert str(shard) in message and "was resized" in message and "discard it" in message


def test_weight_loader_raising_mid_way(model: torch.nn.Module, ckpt: Path) -> None:
    victim = "model.layers.1.mlp.up_proj.weight"
    param = model.get_parameter(victim)

    def half_then_fail(target: torch.Tensor, loaded: torch.Tensor) -> None:
        with torch.no_grad():
            target[:1].copy_(loaded[:1])  # the failure comes after a partial write
        raise RuntimeError("device out of memory")

    param.weight_loader = half_then_fail  # type: ignore[attr-defined]
    before = snapshot(model)
    with pytest.raises(kvcore.KvcoreError) as caught:
        kvcore.load(model, ckpt)
    error, message = caught.value, str(caught.value)
    # The model's loader failed, not the checkpoint: named as such, its exception chained.
    assert isinstance(error, kvcore.WeightLoadError) and not isinstance(error, CheckpointError)
    assert f"weight_loader {__name__}.{half_then_fail.__qualname__} raised" in message
    assert isinstance(error.__cause__, RuntimeError) and "checkpoint is readable" not in message
    assert error.written == changed(model, before)
    assert victim in error.written
    assert f"{victim!r} may be partly written" in message
    assert f"tensor {victim!r}" in message and f"loading into {victim!r}" in message
    assert "RuntimeError: device out of memory" in message and "discard it" in message
    for name in sorted(error.written - {victim})[:20]:
        assert name in message
