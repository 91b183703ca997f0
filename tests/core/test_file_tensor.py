"""What a custom weight_loader receives: the checkpoint tensor, whose copy_ into a parameter reads the file."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

import kvcore
from kvcore._loading import shard as _shard
from kvcore.testing import write_checkpoint

Loader = Callable[[torch.Tensor, torch.Tensor], None]
SOURCE = torch.arange(4 * 3 * 1024, dtype=torch.float32).reshape(4, 3 * 1024).to(torch.bfloat16)


def holder(shape: tuple[int, ...], dtype: torch.dtype, loader: Loader) -> torch.nn.Module:
    module = torch.nn.Module()
    module.w = torch.nn.Parameter(torch.full(shape, -7.0, dtype=dtype), requires_grad=False)
    module.w.weight_loader = loader  # type: ignore[attr-defined]
    return module


@pytest.fixture
def reads(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Bytes of every ``os.preadv`` kvcore's copier makes."""
    seen: list[int] = []
    preadv = os.preadv

    def counting(fd: int, buffers: list, offset: int) -> int:
        seen.append(sum(len(b) for b in buffers))
        return preadv(fd, buffers, offset)

    monkeypatch.setattr(_shard.os, "preadv", counting)
    return seen


def load(tmp_path: Path, module: torch.nn.Module) -> None:
    kvcore.load(module, write_checkpoint(tmp_path, {"w": SOURCE}))


def test_a_whole_copy_reads_the_file_into_the_parameter(tmp_path: Path, reads: list[int]) -> None:
    module = holder((4, 3 * 1024), torch.bfloat16, lambda p, t: p.data.copy_(t))
    load(tmp_path, module)
    assert torch.equal(module.w, SOURCE)
    assert sum(reads) == SOURCE.nbytes  # read, not copied from a memory map


def test_a_dim0_slice_reads_only_its_rows(tmp_path: Path, reads: list[int]) -> None:
    module = holder((2, 3 * 1024), torch.bfloat16, lambda p, t: p.data.copy_(t.narrow(0, 2, 2)))
    load(tmp_path, module)
    assert torch.equal(module.w, SOURCE[2:])
    assert sum(reads) == SOURCE[2:].nbytes


@pytest.mark.parametrize(
    ("shape", "dtype", "loader", "expected"),
    [
        ((4, 1024), torch.bfloat16, lambda p, t: p.data.copy_(t.narrow(1, 1024, 1024)), SOURCE[:, 1024:2048]),
        ((4, 3 * 1024), torch.float32, lambda p, t: p.data.copy_(t), SOURCE.float()),
        ((3 * 1024, 4), torch.bfloat16, lambda p, t: p.data.copy_(t.t()), SOURCE.t()),
        ((4, 3 * 1024), torch.bfloat16, lambda p, t: p.data.copy_(t * 2), SOURCE * 2),
    ],
    ids=["dim1-slice", "conversion", "transpose", "arithmetic"],
)
def test_every_other_use_sees_the_plain_tensor(
    tmp_path: Path, shape: tuple[int, ...], dtype: torch.dtype, loader: Loader, expected: torch.Tensor
) -> None:
    module = holder(shape, dtype, loader)
    load(tmp_path, module)
    assert torch.equal(module.w, expected)


def test_results_of_other_operations_are_plain_tensors(tmp_path: Path) -> None:
    kinds: list[type] = []
    module = holder((4, 3 * 1024), torch.bfloat16, lambda p, t: (kinds.append(type(t[0] + 1)), p.data.copy_(t)))
    load(tmp_path, module)
    assert kinds == [torch.Tensor]


def test_a_tensor_kept_past_the_load_still_copies(tmp_path: Path) -> None:
    kept: list[torch.Tensor] = []
    module = holder((4, 3 * 1024), torch.bfloat16, lambda p, t: (kept.append(t), p.data.copy_(t)))
    load(tmp_path, module)
    later = torch.zeros_like(SOURCE)
    later.copy_(kept[0])  # the shard is closed: copied from the memory map instead
    assert torch.equal(later, SOURCE)
