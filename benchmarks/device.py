"""What the storage under ``benchmarks/.data`` costs, and what it allows a tensor-parallel rank.

``python benchmarks/device.py [ROUNDS]`` (after ``make bench`` made the (a) checkpoint) reads
the (a) checkpoint's files from a cold page cache (``posix_fadvise(DONTNEED)`` before each
read) and prints, medians over rounds:

- the cost of one small ``O_DIRECT`` request (8 KiB every 11 KiB, a down_proj half-row at
  T = 2) at queue depths 1, 4 and 16, against the bandwidth of 4 MiB reads: their product is
  the gap worth skipping (``REQUEST_BYTES`` in ``kvcore/_loading/odirect.py``);
- the row-parallel tensors (o_proj, down_proj) read whole, four ways: ``O_DIRECT`` (kvcore's
  way), and through the page cache with the pages evicted after each read (no read-ahead,
  explicit ``WILLNEED``, the kernel's read-ahead);
- the floor of (f): exactly the bytes a T = 1 load and a T = 2 rank 0 read from the device,
  read with no model and no copy, and their ratio.
"""

from __future__ import annotations

import json
import mmap
import os
import statistics
import struct
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import _data
from _tp import COLUMN, ROW, _drop_cache

CHUNK = 4 << 20
SPLIT = 16 << 20
ALIGN = 4096
_local = threading.local()
Span = tuple[int, int]
"""(file offset, bytes)."""


def _buffer(size: int) -> memoryview:
    """This thread's page-aligned buffer (an anonymous map), at least ``size`` bytes."""
    buf = getattr(_local, "buf", None)
    if buf is None or len(buf) < size:
        buf = _local.buf = mmap.mmap(-1, max(size, SPLIT))
    return memoryview(buf)[:size]


def _tensors(file: Path) -> list[tuple[str, int, int]]:
    with file.open("rb") as f:
        (length,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(length))
    base = 8 + length
    return [(name, base + meta["data_offsets"][0], base + meta["data_offsets"][1])
            for name, meta in header.items() if name != "__metadata__"]  # fmt: skip


def _aligned(start: int, end: int, step: int) -> list[Span]:
    first, last = start - start % ALIGN, -(-end // ALIGN) * ALIGN
    return [(at, min(step, last - at)) for at in range(first, last, step)]


def _read_all(fd: int, spans: list[Span], threads: int, after: Callable[[int, int, int], object] | None = None) -> None:
    def one(span: Span) -> None:
        os.preadv(fd, [_buffer(span[1])], span[0])
        if after is not None:
            after(fd, *span)

    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(one, spans))


def small_requests(file: Path, depth: int, count: int = 3000) -> float:
    """Seconds per 8 KiB ``O_DIRECT`` read at queue depth ``depth``."""
    fd = os.open(file, os.O_RDONLY | os.O_DIRECT)
    try:
        start = time.perf_counter()
        _read_all(fd, [(i * 11264 - i * 11264 % ALIGN, 8192) for i in range(count)], depth)
        return (time.perf_counter() - start) / count
    finally:
        os.close(fd)


def row_parallel(files: list[Path], way: str) -> None:
    """Read every o_proj and down_proj whole, ``way``: direct, evict, willneed or readahead."""
    for file in files:
        spans = [s for name, a, b in _tensors(file) if name.split(".")[-2] in ROW for s in _aligned(a, b, CHUNK)]
        fd = os.open(file, os.O_RDONLY | (os.O_DIRECT if way == "direct" else 0))
        try:
            if way in ("evict", "willneed"):
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)
            if way == "willneed":
                for at, size in spans:
                    os.posix_fadvise(fd, at, size, os.POSIX_FADV_WILLNEED)
            _read_all(fd, spans, 2, None if way == "direct" else _evict)
        finally:
            os.close(fd)


def _evict(fd: int, at: int, size: int) -> None:
    os.posix_fadvise(fd, at, size, os.POSIX_FADV_DONTNEED)


def rank_spans(file: Path, size: int) -> tuple[list[Span], list[Span]]:
    """What rank 0 of ``size`` reads of ``file``: (buffered spans: dim-0 halves and whole tensors,
    in 16 MiB reads; ``O_DIRECT`` spans: the row-parallel tensors whole, aligned)."""
    buffered, direct = [], []
    for name, a, b in _tensors(file):
        leaf = name.split(".")[-2]
        if size > 1 and leaf in ROW:
            direct += _aligned(a, b, CHUNK)
            continue
        end = a + (b - a) // size if leaf in COLUMN else b
        buffered += [(at, min(SPLIT, end - at)) for at in range(a, end, SPLIT)]
    return buffered, direct


def rank_bytes(files: list[Path], size: int) -> None:
    """Read from the device what rank 0 of ``size`` reads, into scratch buffers, no copy."""
    for file in files:
        buffered, direct = rank_spans(file, size)
        fd, dfd = os.open(file, os.O_RDONLY), os.open(file, os.O_RDONLY | os.O_DIRECT)
        try:
            if size > 1:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)
            with ThreadPoolExecutor(2) as pool:
                reads = [pool.submit(os.preadv, dfd, [_buffer(n)], at) for at, n in direct]
                reads += [pool.submit(os.preadv, fd, [_buffer(n)], at) for at, n in buffered]
                for read in reads:
                    read.result()
        finally:
            os.close(fd)
            os.close(dfd)


def _timed(files: list[Path], action: Callable[[], object]) -> float:
    _drop_cache(files)
    start = time.perf_counter()
    action()
    return time.perf_counter() - start


def main(rounds: int) -> None:
    files = _data.shard_files(_data.checkpoint(_data.DENSE))
    runs: dict[str, list[float]] = {}

    def record(name: str, value: float) -> None:
        runs.setdefault(name, []).append(value)

    for _ in range(rounds):
        for depth in (1, 4, 16):
            _drop_cache(files)
            record(f"one 8 KiB O_DIRECT request, queue depth {depth} (us)", small_requests(files[1], depth) * 1e6)
        for way in ("direct", "evict", "willneed", "readahead"):
            record(f"row-parallel tensors whole, {way} (ms)", _timed(files, lambda w=way: row_parallel(files, w)) * 1e3)
        for size in (1, 2):
            record(f"T={size} rank 0's device bytes (ms)", _timed(files, lambda s=size: rank_bytes(files, s)) * 1e3)
    for name, values in runs.items():
        print(f"{name}: {statistics.median(values):.1f} (best {min(values):.1f})")
    one, two = (sum(n for file in files for spans in rank_spans(file, s) for _, n in spans) for s in (1, 2))
    print(f"T=2 rank 0 reads {two / one:.3f} of T=1's device bytes")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 5)
