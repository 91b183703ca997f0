"""Page-cache helpers: which pages of a file are cached (``mincore``), dropping and warming them, O_DIRECT support,
where each tensor's bytes are.

Shared by the O_DIRECT tests; the benchmark (``benchmarks/_tp.py``) counts pages the same way.
"""

from __future__ import annotations

import ctypes
import json
import mmap
import os
import struct
from pathlib import Path

from kvcore._loading.odirect import DirectFile

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
_libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
_libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]


def resident_pages(path: Path) -> list[bool]:
    """For each page of ``path``: is it in the page cache (``mincore`` over a fresh shared map)?"""
    size = path.stat().st_size
    fd = os.open(path, os.O_RDONLY)
    try:
        address = _libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
        if address in (None, ctypes.c_void_p(-1).value):
            raise OSError(ctypes.get_errno(), f"cannot map {path}")
        try:
            vec = (ctypes.c_ubyte * -(-size // mmap.PAGESIZE))()
            if _libc.mincore(ctypes.c_void_p(address), size, vec) != 0:
                raise OSError(ctypes.get_errno(), "mincore failed")
            return [bool(v & 1) for v in vec]
        finally:
            _libc.munmap(ctypes.c_void_p(address), size)
    finally:
        os.close(fd)


def data_ranges(path: Path) -> dict[str, tuple[int, int]]:
    """Each tensor's byte range in the safetensors file, from its header."""
    with path.open("rb") as f:
        (length,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(length))
    base = 8 + length
    return {name: (base + meta["data_offsets"][0], base + meta["data_offsets"][1])
            for name, meta in header.items() if name != "__metadata__"}  # fmt: skip


def drop_cache(path: Path) -> bool:
    """Write ``path`` back and evict it from the page cache; whether it is then out of it
    (tmpfs, for one, cannot evict: its pages are the file)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)  # dirty pages are not evicted
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)
    return not any(resident_pages(path))


def warm(path: Path, start: int = 0, end: int | None = None) -> None:
    """Bring bytes ``start .. end`` of ``path`` into the page cache, and no more (no read-ahead)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)
        os.pread(fd, (path.stat().st_size if end is None else end) - start, start)
    finally:
        os.close(fd)


def o_direct_works(path: Path) -> bool:
    """Whether kvcore's O_DIRECT reader accepts ``path``'s file system."""
    fd = os.open(path, os.O_RDONLY)
    try:
        direct = DirectFile.open(path, fd)
    finally:
        os.close(fd)
    if direct is None:
        return False
    direct.close()
    return True
