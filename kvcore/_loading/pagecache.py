"""What of a file the page cache holds (``mincore``), which decides how a load reads it.

A read from the page cache is a memory copy, bound by the machine's cores; a read from the
device waits on the device, which more reads in flight keep busy. The copier asks whether a
checkpoint is mostly cold (then it starts more reader threads than cores), and ``odirect``
whether a row-parallel slice is cached already (then it copies from the map). Asking maps the
file without touching it: nothing is read, nothing is faulted in.
"""

from __future__ import annotations

import ctypes
import mmap
import os
from collections.abc import Iterable
from pathlib import Path

__all__ = ["all_resident", "resident_share"]

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
_libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
_FAILED = ctypes.c_void_p(-1).value
_RESIDENT = bytes(range(1, 256, 2))
"""``mincore``'s bytes for a resident page: bit 0 set (the other bits are reserved)."""
PROBES = 16
"""Pages asked of each file, spread evenly: enough to tell a cold file from a warm one. Asking
for every page makes the kernel look each one up: 26 ms of a 140 ms warm (a) load."""


def _vector(address: int, size: int) -> bytes | None:
    """One byte per page of ``size`` bytes of mapped memory from page-aligned ``address``
    (``None``: the kernel cannot tell)."""
    vec = (ctypes.c_ubyte * -(-size // mmap.PAGESIZE))()
    if _libc.mincore(ctypes.c_void_p(address), size, vec) != 0:
        return None
    return bytes(vec)


def all_resident(address: int, size: int) -> bool:
    """Whether every page of ``size`` bytes of mapped memory from page-aligned ``address`` is in
    the page cache (``False`` when the kernel cannot tell)."""
    vec = _vector(address, size)
    return vec is not None and not vec.translate(None, _RESIDENT)


def resident_share(paths: Iterable[Path]) -> float:
    """About the share of ``paths``' bytes in the page cache, from ``PROBES`` pages of each
    (1.0 for files that cannot be asked: the caller then reads as from a warm cache, as it
    always did)."""
    total, resident = 0, 0.0
    for path in paths:
        size, cached = _resident_bytes(path)
        total, resident = total + size, resident + cached
    return resident / total if total else 1.0


def _resident_bytes(path: Path) -> tuple[int, float]:
    """(bytes, about the bytes in the page cache) of ``path``; all of them when it cannot be asked."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return 0, 0  # the copier's open says what is wrong
    try:
        size = os.fstat(fd).st_size
        address = _libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0) if size else None
        if address in (None, _FAILED):
            return size, size
        try:
            pages = -(-size // mmap.PAGESIZE)
            probes = [_vector(address + page * mmap.PAGESIZE, 1) for page in _spread(pages)]
        finally:
            _libc.munmap(ctypes.c_void_p(address), size)
        known = [vec for vec in probes if vec is not None]
        if len(known) < len(probes):
            return size, size
        return size, size * sum(not vec.translate(None, _RESIDENT) for vec in known) / len(known)
    finally:
        os.close(fd)


def _spread(pages: int) -> range:
    """Up to ``PROBES`` page numbers evenly spread over ``pages`` pages."""
    return range(0, pages, max(1, pages // PROBES))[:PROBES]
