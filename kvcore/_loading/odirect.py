"""A row-parallel slice read with ``O_DIRECT``: the rank's bytes reach its parameter, not the page cache.

A ``tp_dim >= 1`` slice is one byte range per row, half of a 4-11 KiB row at T = 2 on engine
models. Read through the page cache (a map, or ``preadv`` per row), every page holding any of
this rank's bytes is cached whole, with the other ranks' bytes beside them: at T = 2 a rank
caches the entire tensor. ``O_DIRECT`` reads go from the device into our own buffer and leave
the page cache alone, so runs of rows are read into a per-thread bounce buffer and the rank's
part of each row is copied out of it into the parameter.

Cost: ``O_DIRECT`` still reads from the device, in whole aligned blocks. Consecutive rows are
read in one request, the other ranks' bytes between them included, unless the gap between two
row parts is worth more than a request (``REQUEST_BYTES``); then each row part is a request of
its own. Either way the device reads more than the rank's bytes; the page cache holds none.

``O_DIRECT`` needs file offsets, lengths and memory aligned to the file system's direct-I/O
alignment: ``statx``'s ``STATX_DIOALIGN`` (Linux 6.1+), else the file system's block size. A
file system that refuses ``O_DIRECT`` (reported by ``statx``, or ``EINVAL`` at open or at a
first read: tmpfs on older kernels, some FUSE and network file systems) gets ``None`` from
:meth:`DirectFile.open`, and the copier narrows the mapped file instead.

``O_DIRECT`` is off (slices are narrowed from the mapped file, through the page cache) when
``KVCORE_DIRECT_IO=0``, or when it is unset and ``torchrun``'s ``LOCAL_WORLD_SIZE`` says several
ranks share this machine: ranks loading at the same time on one machine share the page cache,
which reads each row-parallel tensor from the device once, where ``O_DIRECT`` reads it once per
rank. ``KVCORE_DIRECT_IO=1`` keeps it on.

A slice whose pages are all in the page cache already (:func:`cached`: a warm restart, another
rank on the machine having read it) is narrowed from the mapped file too: ``O_DIRECT`` would
read the device again, three times slower than the cache on the benchmark machine, and the map
brings nothing new into the cache.
"""

from __future__ import annotations

import ctypes
import errno
import math
import mmap
import os
import threading
from pathlib import Path
from typing import NamedTuple

import torch

from kvcore._checkpoint.safetensors import TensorInfo
from kvcore._errors import CheckpointError
from kvcore._loading.pagecache import all_resident
from kvcore._loading.parallel import Part
from kvcore._loading.pinned import raw

__all__ = [
    "CHUNK_BYTES", "REQUEST_BYTES", "SMALL_BYTES", "DirectFile", "Piece", "Rows", "cached", "direct_io_enabled",
    "pieces", "rows_of", "wanted",
]  # fmt: skip

CHUNK_BYTES = 4 << 20
"""The most bytes one read asks for (the bounce buffer's size): 1-4 MiB reads reach full bandwidth."""
REQUEST_BYTES = 64 << 10
"""What one more read request costs, in bytes of bandwidth: ~50 µs for a small ``O_DIRECT`` read
against ~1.4 GB/s for 4 MiB ones on the benchmark machine. Gaps between row parts shorter than
this are read through; longer ones split the rows into one request each."""
SMALL_BYTES = REQUEST_BYTES
"""A row-parallel tensor smaller than this is narrowed from the mapped file: one ``O_DIRECT``
request would cost more than reading the whole tensor through the page cache, whose few pages
its neighbours mostly share anyway (a T = 2 MoE load of 12k tiny expert slices: 2.1-2.4 s with
``O_DIRECT``, 1.5 s through the map, the same pages cached either way)."""
_STATX_DIOALIGN, _AT_EMPTY_PATH, _STATX_SIZE = 0x2000, 0x1000, 256
_STATX_MASK, _STATX_MEM_ALIGN, _STATX_OFFSET_ALIGN = 0, 152, 156  # offsets in struct statx


class Rows(NamedTuple):
    """Where a part's bytes are: ``rows`` rows ``stride`` bytes apart from file offset ``start``,
    of which the part holds ``length`` bytes at ``skip`` in each row."""

    start: int
    rows: int
    stride: int
    skip: int
    length: int


def rows_of(info: TensorInfo, part: Part) -> Rows:
    """The rows of ``info``'s slice ``part``: everything before ``part.dim`` counts rows."""
    shape = info.shape
    inner = math.prod(shape[part.dim + 1 :]) * info.torch_dtype.itemsize
    outer = math.prod(shape[: part.dim])
    return Rows(info.start, outer, shape[part.dim] * inner, part.start * inner, part.length * inner)


class Piece(NamedTuple):
    """One aligned read: ``size`` bytes at file ``offset`` hold row parts ``row .. row + rows``,
    their bytes ``col .. col + width``, the first of them at ``first`` in the buffer. Past
    ``needed`` bytes the read may stop short (alignment past the end of the file)."""

    offset: int
    size: int
    needed: int
    first: int
    row: int
    rows: int
    col: int
    width: int


def wanted(info: TensorInfo) -> bool:
    """Whether a row-parallel slice of ``info`` is for ``O_DIRECT``: switched on, and not small."""
    return info.end - info.start >= SMALL_BYTES and direct_io_enabled()


def direct_io_enabled() -> bool:
    """Whether row-parallel slices may be read with ``O_DIRECT``: as ``KVCORE_DIRECT_IO`` says
    (``0`` or ``1``), else unless ``LOCAL_WORLD_SIZE`` (set by ``torchrun``) counts several ranks here."""
    chosen = os.environ.get("KVCORE_DIRECT_IO", "").strip()
    if chosen:
        return chosen != "0"
    local = os.environ.get("LOCAL_WORLD_SIZE", "").strip()
    return not (local.isdigit() and int(local) > 1)


def cached(mapped: torch.Tensor, rows: Rows) -> bool:
    """Whether every page holding ``rows`` is in the page cache, asked of ``mapped``, the shard's
    memory map (``False`` when the kernel cannot tell: ``O_DIRECT`` is right either way)."""
    first = rows.start - rows.start % mmap.PAGESIZE
    return all_resident(mapped.data_ptr() + first, rows.start + rows.rows * rows.stride - first)


def pieces(rows: Rows, align: int) -> list[Piece]:
    """The reads that cover ``rows``, each at most ``CHUNK_BYTES`` (plus alignment)."""
    per_read = max(1, CHUNK_BYTES // rows.stride) if rows.stride - rows.length < REQUEST_BYTES else 1
    width = min(rows.length, CHUNK_BYTES)  # a row part longer than a chunk is read in column pieces
    out = []
    for row in range(0, rows.rows, per_read):
        count = min(per_read, rows.rows - row)
        for col in range(0, rows.length, width):
            cols = min(width, rows.length - col)
            begin = rows.start + row * rows.stride + rows.skip + col
            end = begin + (count - 1) * rows.stride + cols
            offset = begin - begin % align
            size = -(-end // align) * align - offset
            out.append(Piece(offset, size, end - offset, begin - offset, row, count, col, cols))
    return out


class DirectFile:
    """A shard opened with ``O_DIRECT``, its alignment, and one bounce buffer per reader thread."""

    def __init__(self, path: Path, fd: int, align: int) -> None:
        self.path, self.fd, self.align = path, fd, align
        self._local = threading.local()

    @classmethod
    def open(cls, path: Path, same_as: int) -> DirectFile | None:
        """``path`` opened for ``O_DIRECT`` reads, or ``None`` if its file system refuses them.

        ``same_as``: the descriptor whose file was validated; ``path`` must still be that file.
        """
        flag = getattr(os, "O_DIRECT", 0)
        if not flag:
            return None
        try:
            fd = os.open(path, os.O_RDONLY | flag)
        except OSError as exc:
            if exc.errno == errno.EINVAL:
                return None
            raise CheckpointError(f"cannot open {path}: {exc}") from exc
        direct = None
        try:
            if not os.path.samestat(os.fstat(fd), os.fstat(same_as)):
                raise CheckpointError(f"{path} was replaced while kvcore was loading it; load again")
            align = _alignment(fd)
            direct = cls(path, fd, align) if align and direct_reads_work(fd, align) else None
            return direct
        finally:
            if direct is None:
                os.close(fd)

    def close(self) -> None:
        os.close(self.fd)

    def read(self, piece: Piece, rows: Rows, dest: torch.Tensor) -> None:
        """Read ``piece`` and copy its row parts into ``dest`` (the parameter as ``rows.rows``
        rows of ``rows.length`` bytes). Safe on any thread: each has its own bounce buffer."""
        buffer = self._bounce(piece.size)
        got = 0
        while got < piece.needed:
            n = os.preadv(self.fd, [raw(buffer.data_ptr() + got, piece.size - got)], piece.offset + got)
            if n <= 0 or (n % self.align and got + n < piece.needed):  # a short unaligned read: the end
                raise CheckpointError(
                    f"{self.path} ended {piece.needed - got - max(n, 0)} bytes early at byte "
                    f"{piece.offset + got + max(n, 0)}: the file shrank after its header was read"
                )
            got += n
        source = buffer.as_strided((piece.rows, piece.width), (rows.stride, 1), buffer.storage_offset() + piece.first)
        dest[piece.row : piece.row + piece.rows, piece.col : piece.col + piece.width].copy_(source)

    def _bounce(self, size: int) -> torch.Tensor:
        """This thread's buffer, page-aligned (any direct-I/O memory alignment divides a page)."""
        buffer: torch.Tensor | None = getattr(self._local, "buffer", None)
        if buffer is None or buffer.numel() < size:
            whole = torch.empty(max(size, CHUNK_BYTES + 2 * self.align) + mmap.PAGESIZE, dtype=torch.uint8)
            skip = -whole.data_ptr() % mmap.PAGESIZE
            buffer = self._local.buffer = whole[skip : skip + whole.numel() - mmap.PAGESIZE]
        return buffer


def _alignment(fd: int) -> int:
    """The offset and length alignment ``O_DIRECT`` needs on ``fd``'s file system (0: no O_DIRECT).

    ``statx`` answers exactly where the kernel knows (6.1+); otherwise the file system's block
    size, a multiple of the device's logical block size on the usual file systems, which the
    first read then tests.
    """
    try:
        statx = ctypes.CDLL(None, use_errno=True).statx
    except (AttributeError, OSError):
        statx = None
    if statx is not None:
        buffer = ctypes.create_string_buffer(_STATX_SIZE)
        if statx(fd, b"", _AT_EMPTY_PATH, _STATX_DIOALIGN, buffer) == 0:
            mask, memory, offset = (
                int.from_bytes(buffer.raw[at : at + 4], "little")
                for at in (_STATX_MASK, _STATX_MEM_ALIGN, _STATX_OFFSET_ALIGN)
            )
            if mask & _STATX_DIOALIGN:
                return 0 if not offset or memory > mmap.PAGESIZE else offset
    return os.fstatvfs(fd).f_bsize


def direct_reads_work(fd: int, align: int) -> bool:
    """Whether an aligned ``O_DIRECT`` read succeeds: some file systems accept the flag at open
    and refuse the reads (``EINVAL``)."""
    whole = torch.empty(align + mmap.PAGESIZE, dtype=torch.uint8)
    address = whole.data_ptr() + -whole.data_ptr() % mmap.PAGESIZE
    try:
        os.preadv(fd, [raw(address, align)], 0)
    except OSError as exc:
        if exc.errno == errno.EINVAL:
            return False
        raise
    return True
