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
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from pages_support import data_ranges, drop_cache, o_direct_works, resident_pages, warm
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


def load_cold(
    ckpt: Path, rank: int, monkeypatch: pytest.MonkeyPatch, then: Callable[[], object] = lambda: None
) -> tuple[Holder, set[int] | None]:
    """A load of ``rank``'s share whose copies start from a cold cache (``then`` runs after the
    drop), and the file's pages cached after it (``None`` where the file system cannot drop the
    file from its cache).

    The cache is dropped after the header was read, right before the copies: the header read
    leaves pages marked for read-ahead, and Linux starts that read-ahead when a later read
    reaches them, even through a ``POSIX_FADV_RANDOM`` descriptor. On a file this small it
    would bring in everything; these tests are about what the copier reads.
    """
    file = ckpt / "model.safetensors"
    evicted = []

    def cold_copy_all(*args: Any, **kwargs: Any) -> set[str]:
        evicted.append(drop_cache(file))
        then()
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


def row_slice(ckpt: Path) -> odirect.Rows:
    """Where rank 0's slice of ``row`` lies in the file."""
    start, _ = data_ranges(ckpt / "model.safetensors")["row"]
    rows, columns = tensors()["row.weight"].shape
    return odirect.Rows(start, rows, columns * 2, 0, columns)


def test_cached_is_true_only_when_every_page_of_the_slice_is(ckpt: Path) -> None:
    file = ckpt / "model.safetensors"
    rows = row_slice(ckpt)
    with file.open("rb") as f:  # the map outlives the descriptor
        mapped = torch.frombuffer(mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY), dtype=torch.uint8)
    warm(file)
    assert odirect.cached(mapped, rows)
    if not drop_cache(file):
        return  # tmpfs and the like: always cached
    assert not odirect.cached(mapped, rows)
    end = rows.start + rows.rows * rows.stride
    warm(file, rows.start, end - PAGE)  # all but the last page
    assert not odirect.cached(mapped, rows)
    warm(file, end - 1, end)
    assert odirect.cached(mapped, rows)


@pytest.mark.parametrize("rank", [0, 1])
def test_a_cached_slice_is_copied_from_the_cache(ckpt: Path, monkeypatch: pytest.MonkeyPatch, rank: int) -> None:
    """A warm restart: the whole file is cached, so no slice is read from the device again."""
    direct_reads: list[object] = []
    monkeypatch.setattr(odirect.DirectFile, "read", lambda *args: direct_reads.append(args))
    warm(ckpt / "model.safetensors")
    held = model(tensors())
    kvcore.load(held, ckpt, tp_rank=rank, tp_size=2)
    assert same_bits(held.row, tensors()["row.weight"].chunk(2, 1)[rank])
    assert same_bits(held.column, tensors()["column.weight"].chunk(2, 0)[rank])
    assert direct_reads == []
    assert all(resident_pages(ckpt / "model.safetensors"))


def test_a_partly_cached_slice_is_read_with_o_direct(ckpt: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    file = ckpt / "model.safetensors"
    rows = row_slice(ckpt)
    direct_reads: list[odirect.Piece] = []
    read = odirect.DirectFile.read

    def spy(self: odirect.DirectFile, piece: odirect.Piece, *args: Any) -> None:
        direct_reads.append(piece)
        read(self, piece, *args)

    monkeypatch.setattr(odirect.DirectFile, "read", spy)
    half = rows.start + rows.stride * rows.rows // 2
    held, cached = load_cold(ckpt, 0, monkeypatch, lambda: warm(file, rows.start, half))
    assert same_bits(held.row, tensors()["row.weight"].chunk(2, 1)[0])
    # Where the file cannot leave the cache (tmpfs), the slice is always cached: no O_DIRECT.
    assert bool(direct_reads) == (cached is not None and o_direct_works(file))


@pytest.mark.parametrize("environment", [{"KVCORE_DIRECT_IO": "0"}, {"LOCAL_WORLD_SIZE": "2"}])
def test_direct_io_off_reads_row_slices_through_the_page_cache(
    ckpt: Path, monkeypatch: pytest.MonkeyPatch, environment: dict[str, str]
) -> None:
    """``KVCORE_DIRECT_IO=0``, or torchrun's several ranks on this machine (sharing its page
    cache): no O_DIRECT read, the row-parallel tensor's pages cached for the other ranks."""
    for variable, value in environment.items():
        monkeypatch.setenv(variable, value)
    direct_reads: list[object] = []
    monkeypatch.setattr(odirect.DirectFile, "read", lambda *args: direct_reads.append(args))
    held, cached = load_cold(ckpt, 1, monkeypatch)
    assert same_bits(held.row, tensors()["row.weight"].chunk(2, 1)[1])
    assert direct_reads == []
    if cached is not None:  # tmpfs and the like: the file is its page cache, nothing to count
        start, end = data_ranges(ckpt / "model.safetensors")["row"]
        assert pages(start, end) <= cached


@pytest.mark.parametrize(
    ("environment", "direct"),
    [({}, True), ({"LOCAL_WORLD_SIZE": "1"}, True), ({"LOCAL_WORLD_SIZE": "8"}, False),
     ({"KVCORE_DIRECT_IO": "1", "LOCAL_WORLD_SIZE": "8"}, True), ({"KVCORE_DIRECT_IO": "0"}, False),
     ({"LOCAL_WORLD_SIZE": "many"}, True)],
)  # fmt: skip
def test_who_chooses_o_direct(monkeypatch: pytest.MonkeyPatch, environment: dict[str, str], direct: bool) -> None:
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    for variable, value in environment.items():
        monkeypatch.setenv(variable, value)
    assert odirect.direct_io_enabled() is direct


def test_a_small_tensor_is_narrowed_from_the_map(ckpt: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A row-parallel tensor under ``SMALL_BYTES`` (here: the 3 MiB one, with the bound raised past
    it) costs less read whole through the cache than one O_DIRECT request: no O_DIRECT read."""
    file = ckpt / "model.safetensors"
    start, end = data_ranges(file)["row"]
    direct_reads: list[object] = []
    monkeypatch.setattr(odirect.DirectFile, "read", lambda *args: direct_reads.append(args))
    monkeypatch.setattr(odirect, "SMALL_BYTES", end - start + 1)
    held, _ = load_cold(ckpt, 0, monkeypatch)
    assert same_bits(held.row, tensors()["row.weight"].chunk(2, 1)[0])
    assert direct_reads == []
    monkeypatch.setattr(odirect, "SMALL_BYTES", end - start)  # just big enough: O_DIRECT where it works
    held, cached = load_cold(ckpt, 0, monkeypatch)
    assert bool(direct_reads) == (cached is not None and o_direct_works(file))
