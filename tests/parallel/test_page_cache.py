"""What a T = 2 rank brings into the page cache, counted with ``mincore``.

Row-parallel (``tp_dim = 1``) rows here are 6 KiB, so each rank's 3 KiB half shares pages with
the other rank's: through the page cache (the mapped path) rank 0 caches the whole tensor, with
O_DIRECT none of it. Column-parallel (``tp_dim = 0``) slices and whole tensors are read through
the page cache, exactly: nothing of the other rank's half comes in. The claims need a file
system that evicts on ``POSIX_FADV_DONTNEED`` (tmpfs cannot: its pages are the file) and, for
O_DIRECT, one that supports it; elsewhere the loads are only checked for their values.
"""

from __future__ import annotations

import mmap
from pathlib import Path
from typing import Any

import pytest
import torch
from pages_support import data_ranges, drop_cache, o_direct_works, resident_pages
from parallel_support import Holder, param, same_bits

import kvcore
from kvcore._loading import load as load_module
from kvcore._loading import odirect
from kvcore._loading.copy import copy_all
from kvcore.testing import write_checkpoint

PAGE = mmap.PAGESIZE


def tensors() -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return {
        "column.weight": torch.randn(1024, 2048, generator=gen).to(torch.bfloat16),  # 4 MiB, split by rows
        "norm.weight": torch.randn(300_000, generator=gen).to(torch.bfloat16),  # whole on every rank
        "row.weight": torch.randn(512, 3072, generator=gen).to(torch.bfloat16),  # 3 MiB, 6 KiB rows
    }


def model(source: dict[str, torch.Tensor]) -> Holder:
    column, norm, row = source["column.weight"], source["norm.weight"], source["row.weight"]
    return Holder(
        column=param(column.shape[0] // 2, column.shape[1], tp_dim=0),
        norm=param(*norm.shape),
        row=param(row.shape[0], row.shape[1] // 2, tp_dim=1),
    )


def load_cold(ckpt: Path, rank: int, monkeypatch: pytest.MonkeyPatch) -> tuple[Holder, set[int] | None]:
    """A load of ``rank``'s share whose copies start from a cold cache, and the file's pages
    cached after it (``None`` where the file system cannot drop the file from its cache).

    The cache is dropped after the header was read, right before the copies: the header read
    leaves pages marked for read-ahead, and Linux starts that read-ahead when a later read
    reaches them, even through a ``POSIX_FADV_RANDOM`` descriptor. On a file this small it
    would bring in everything; these tests are about what the copier reads.
    """
    file = ckpt / "model.safetensors"
    evicted = []

    def cold_copy_all(*args: Any, **kwargs: Any) -> set[str]:
        evicted.append(drop_cache(file))
        return copy_all(*args, **kwargs)

    monkeypatch.setattr(load_module, "copy_all", cold_copy_all)
    held = model(tensors())
    kvcore.load(held, ckpt, tp_rank=rank, tp_size=2)
    cached = {i for i, page in enumerate(resident_pages(file)) if page}
    return held, cached if evicted == [True] else None


def pages(start: int, end: int) -> set[int]:
    """The pages holding bytes ``start .. end``."""
    return set(range(start // PAGE, -(-end // PAGE)))


@pytest.fixture
def ckpt(tmp_path: Path) -> Path:
    return write_checkpoint(tmp_path, {name.replace(".weight", ""): t for name, t in tensors().items()})


def test_row_parallel_slices_leave_the_page_cache_alone(ckpt: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ranges = data_ranges(ckpt / "model.safetensors")
    supported = o_direct_works(ckpt / "model.safetensors")
    direct, direct_cached = load_cold(ckpt, 0, monkeypatch)
    monkeypatch.setattr(odirect.DirectFile, "open", classmethod(lambda *_: None))  # the mapped path
    mapped, mapped_cached = load_cold(ckpt, 0, monkeypatch)
    assert same_bits(direct.row, tensors()["row.weight"].chunk(2, 1)[0])
    assert same_bits(mapped.row, direct.row)
    if direct_cached is None or mapped_cached is None:
        return  # tmpfs and the like: the file is its page cache, nothing to count
    row = pages(*ranges["row"]) - pages(*ranges["norm"])  # the first page holds the norm's end too
    assert mapped_cached >= row  # every page holds some of rank 0's bytes
    assert direct_cached & row == (set() if supported else row)


@pytest.mark.parametrize("rank", [0, 1])
def test_column_slices_and_whole_tensors_page_in_only_their_bytes(
    ckpt: Path, monkeypatch: pytest.MonkeyPatch, rank: int
) -> None:
    ranges = data_ranges(ckpt / "model.safetensors")
    held, cached = load_cold(ckpt, rank, monkeypatch)
    assert same_bits(held.column, tensors()["column.weight"].chunk(2, 0)[rank])
    assert same_bits(held.norm, tensors()["norm.weight"])
    if cached is None:
        return  # tmpfs and the like: the file is its page cache, nothing to count
    start, end = ranges["column"]
    half = (end - start) // 2
    mine = pages(start + rank * half, start + (rank + 1) * half)
    # This rank's half and the norm, whole; not a page more (the row slice is read with O_DIRECT,
    # or, where refused, through the map: then its pages come in too).
    if o_direct_works(ckpt / "model.safetensors"):
        assert cached == mine | pages(*ranges["norm"])
    else:
        assert cached - pages(*ranges["row"]) == mine | pages(*ranges["norm"])
