"""Row-parallel slices (``tp_dim >= 1``) are read with O_DIRECT: bit-exact, aligned, refused cleanly.

Each test states what happens where the test directory's file system supports O_DIRECT (the
slice's pieces go through ``DirectFile.read``) and where it does not (the mapped file is
narrowed instead); the result must be the same bits either way. Every load here starts as if
from a cold page cache (``cold``): a file just written is cached, and a cached slice is copied
from the map, and so is a small tensor (tests/parallel/test_page_cache.py tests those choices).
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import json
import os
import struct
from pathlib import Path

import pytest
import torch
from pages_support import o_direct_works
from parallel_support import Holder, chunk, param, same_bits

import kvcore
from kvcore._loading import odirect, shard

DTYPES = (torch.bfloat16, torch.float32, torch.float16, torch.int8, torch.float8_e4m3fn, torch.int64)
# (checkpoint shape, tp_dim, parameter length along tp_dim at T): rows of 2 B to 48 KiB.
SHAPES = [((64, 96), 1), ((3, 8, 40), 1), ((5, 6, 64), 2), ((1, 4096), 1), ((300, 4), 1), ((17, 1024), 1)]


def random_tensor(shape: tuple[int, ...], dtype: torch.dtype, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    if dtype.is_floating_point:
        return torch.randn(shape, generator=gen).to(dtype)
    return torch.randint(-100, 100, shape, generator=gen).to(dtype)


def write_raw(path: Path, tensors: dict[str, torch.Tensor], data_start: int) -> Path:
    """A safetensors file whose data section starts at byte ``data_start`` (header padded with
    spaces) and whose tensors sit back to back, at whatever offsets their sizes give."""
    header: dict[str, object] = {}
    offset = 0
    blobs = []
    for name, tensor in tensors.items():
        blob = tensor.contiguous().view(torch.uint8).numpy().tobytes()
        dtype = {torch.bfloat16: "BF16", torch.float32: "F32", torch.float16: "F16", torch.int8: "I8",
                 torch.float8_e4m3fn: "F8_E4M3", torch.int64: "I64"}[tensor.dtype]  # fmt: skip
        header[name] = {"dtype": dtype, "shape": list(tensor.shape), "data_offsets": [offset, offset + len(blob)]}
        offset += len(blob)
        blobs.append(blob)
    raw = json.dumps(header).encode()
    assert 8 + len(raw) <= data_start
    raw += b" " * (data_start - 8 - len(raw))
    path.mkdir(parents=True, exist_ok=True)
    (path / "model.safetensors").write_bytes(struct.pack("<Q", len(raw)) + raw + b"".join(blobs))
    (path / "config.json").write_text("{}")
    return path


def sliced_model(tensors: dict[str, tuple[torch.Tensor, int]], parts: int) -> Holder:
    """A rank's parameters: each tensor cut into ``parts`` along its dim (fewer parts than ranks:
    replicated parts, as KV heads are)."""
    params = {}
    for name, (tensor, dim) in tensors.items():
        shape = list(tensor.shape)
        shape[dim] //= parts
        params[name] = param(*shape, tp_dim=dim, dtype=tensor.dtype)
    return Holder(**params)


@pytest.fixture(autouse=True)
def cold(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every slice taken for uncached and big enough, so that the O_DIRECT reader is what these
    tests run (their tensors are small: every shape and dtype in one file)."""
    monkeypatch.setattr(shard, "cached", lambda *_: False)
    monkeypatch.setattr(odirect, "SMALL_BYTES", 0)


@pytest.fixture
def direct_reads(monkeypatch: pytest.MonkeyPatch) -> list[odirect.Piece]:
    """Every piece kvcore reads with O_DIRECT."""
    seen: list[odirect.Piece] = []
    read = odirect.DirectFile.read

    def spy(self: odirect.DirectFile, piece: odirect.Piece, *args: object) -> None:
        seen.append(piece)
        read(self, piece, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(odirect.DirectFile, "read", spy)
    return seen


def load_and_check(ckpt: Path, tensors: dict[str, tuple[torch.Tensor, int]], size: int, parts: int) -> None:
    for rank in range(size):
        model = sliced_model(tensors, parts)
        kvcore.load(model, ckpt, tp_rank=rank, tp_size=size)
        for name, (tensor, dim) in tensors.items():
            mine = tensor.shape[dim] // parts
            assert same_bits(model.get_parameter(name), chunk(tensor, dim, rank, size, mine)), (name, rank)


@pytest.mark.parametrize(("size", "parts"), [(2, 2), (4, 4), (4, 2), (8, 8)])
@pytest.mark.parametrize("limits", ["default", "small chunks, read through", "small chunks, a read per row"])
def test_slices_are_their_chunks_bit_exactly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, direct_reads: list[odirect.Piece], size: int, parts: int,
    limits: str,
) -> None:  # fmt: skip
    if limits != "default":  # many pieces, rows split into column pieces, unaligned everything
        monkeypatch.setattr(odirect, "CHUNK_BYTES", 1000)
        monkeypatch.setattr(odirect, "REQUEST_BYTES", 1 << 30 if "through" in limits else 0)
    tensors = {}
    for i, ((shape, dim), dtype) in enumerate((s, d) for s in SHAPES for d in DTYPES):
        if shape[dim] % parts == 0:
            tensors[f"t{i}"] = (random_tensor(shape, dtype, i), dim)
    # 9192: the data starts unaligned (to 512 and 4096); tensors follow back to back.
    ckpt = write_raw(tmp_path / "ckpt", {name: t for name, (t, _) in tensors.items()}, data_start=9192)
    load_and_check(ckpt, tensors, size, parts)
    if o_direct_works(ckpt / "model.safetensors"):
        assert direct_reads
        assert all(piece.offset % 512 == 0 and piece.size % 512 == 0 for piece in direct_reads)
    else:
        assert not direct_reads  # narrowed from the mapped file instead


def test_piece_plans_cover_each_row_part_once() -> None:
    """``pieces`` over odd layouts and alignments: aligned reads, every byte of every row part
    copied exactly once, nothing asked past a read's end."""
    for start, count, stride, skip, length, align in [
        (1000, 64, 96, 48, 48, 512), (7, 3, 10_000_000, 5_000_000, 5_000_000, 4096),
        (4096, 1, 8192, 0, 8192, 512), (513, 500, 11264, 5632, 5632, 512), (0, 9, 300_000, 1, 299_999, 512),
    ]:  # fmt: skip
        rows = odirect.Rows(start, count, stride, skip, length)
        covered = torch.zeros(count, length, dtype=torch.int32)
        for p in odirect.pieces(rows, align):
            assert p.offset % align == 0 and p.size % align == 0 and p.needed <= p.size
            assert p.size <= odirect.CHUNK_BYTES + 2 * align
            first = start + p.row * stride + skip + p.col
            assert p.offset + p.first == first
            assert p.offset + p.needed == first + (p.rows - 1) * stride + p.width
            covered[p.row : p.row + p.rows, p.col : p.col + p.width] += 1
        assert bool((covered == 1).all()), rows


def test_a_tensor_ending_unaligned_at_the_end_of_the_file(tmp_path: Path, direct_reads: list[odirect.Piece]) -> None:
    """The last read's aligned end lies past the file's end: the short read is the end of the file."""
    tensor = random_tensor((33, 26), torch.bfloat16, 1)  # 1716 bytes from byte 1000: ends at 2716
    ckpt = write_raw(tmp_path / "ckpt", {"w": tensor}, data_start=1000)
    load_and_check(ckpt, {"w": (tensor, 1)}, 2, 2)
    if o_direct_works(ckpt / "model.safetensors"):
        assert direct_reads[-1].offset + direct_reads[-1].size > (ckpt / "model.safetensors").stat().st_size


def refuse_o_direct_at_open(monkeypatch: pytest.MonkeyPatch) -> None:
    real_open = os.open

    def open_(path: object, flags: int, *args: object) -> int:
        if flags & os.O_DIRECT:
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_open(path, flags, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(odirect.os, "open", open_)


def refuse_o_direct_reads(monkeypatch: pytest.MonkeyPatch) -> None:
    """The file system takes the flag at open and refuses the reads (as some FUSE ones do)."""
    real = os.preadv

    def preadv(fd: int, buffers: list, offset: int) -> int:
        if fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_DIRECT:
            raise OSError(errno.EINVAL, "Invalid argument")
        return real(fd, buffers, offset)

    monkeypatch.setattr(odirect.os, "preadv", preadv)


def refuse_by_alignment(monkeypatch: pytest.MonkeyPatch) -> None:
    """statx says: no O_DIRECT on this file system (an alignment of 0)."""
    monkeypatch.setattr(odirect, "_alignment", lambda _fd: 0)


@pytest.mark.parametrize("refuse", [refuse_o_direct_at_open, refuse_o_direct_reads, refuse_by_alignment])
def test_a_refusing_file_system_gets_the_mapped_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, direct_reads: list[odirect.Piece], refuse: object
) -> None:
    refuse(monkeypatch)  # type: ignore[operator]
    tensors = {"w": (random_tensor((64, 96), torch.bfloat16, 2), 1),
               "x": (random_tensor((4, 6, 32), torch.float32, 3), 2)}  # fmt: skip
    ckpt = write_raw(tmp_path / "ckpt", {name: t for name, (t, _) in tensors.items()}, data_start=4096)
    load_and_check(ckpt, tensors, 2, 2)
    assert not direct_reads


def short_direct_reads(monkeypatch: pytest.MonkeyPatch, limit: int | None) -> None:
    """O_DIRECT reads return at most one 512-byte block (``limit=None``), or end the file
    after ``limit`` bytes."""
    real = os.preadv
    given = [0]

    def preadv(fd: int, buffers: list, offset: int) -> int:
        if not fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_DIRECT or offset == 0:  # offset 0: the open's probe
            return real(fd, buffers, offset)
        if limit is not None:
            n = max(0, min(len(buffers[0]), limit - given[0]))
            given[0] += n
            return real(fd, [odirect.raw(ctypes.addressof(buffers[0]), n)], offset) if n else 0
        return real(fd, [odirect.raw(ctypes.addressof(buffers[0]), 512)], offset)

    monkeypatch.setattr(odirect.os, "preadv", preadv)


def test_short_reads_are_continued(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tensors = {"w": (random_tensor((40, 300), torch.bfloat16, 4), 1)}
    ckpt = write_raw(tmp_path / "ckpt", {"w": tensors["w"][0]}, data_start=1000)
    short_direct_reads(monkeypatch, None)
    load_and_check(ckpt, tensors, 2, 2)


def test_a_file_ending_early_is_a_checkpoint_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tensor = random_tensor((40, 300), torch.bfloat16, 5)
    ckpt = write_raw(tmp_path / "ckpt", {"w": tensor}, data_start=1000)
    short_direct_reads(monkeypatch, 4096)
    model = sliced_model({"w": (tensor, 1)}, 2)
    if o_direct_works(ckpt / "model.safetensors"):
        with pytest.raises(kvcore.CheckpointError, match=r"model\.safetensors ended .* the file shrank") as info:
            kvcore.load(model, ckpt, tp_rank=0, tp_size=2)
        assert "'w'" in str(info.value) and info.value.written == {"w"}  # partly written
    else:
        kvcore.load(model, ckpt, tp_rank=0, tp_size=2)  # the mapped path never asks O_DIRECT
        assert same_bits(model.get_parameter("w"), tensor.chunk(2, 1)[0])
