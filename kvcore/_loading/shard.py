"""One open shard and the reads into parameters: ``preadv`` runs, row-parallel slices, mapped copies.

- ``direct`` copies (a contiguous CPU tensor of the checkpoint's dtype and size, no custom
  loader) are read with ``os.preadv`` straight into the parameter's memory. Adjacent
  tensors share one scatter read, and a big tensor is split among threads, because one core
  cannot saturate memory bandwidth and ``preadv`` releases the GIL. Nothing is mapped, so no
  file page counts in the process's resident memory.
- a ``direct`` copy of a row-parallel slice (``tp_dim >= 1``) is read with ``O_DIRECT``
  (``odirect``), so that the other ranks' halves of its pages stay out of the page cache,
  unless all its pages are cached already: then the map reads memory, not the device.
- every other copy (dtype conversion, a ``weight_loader``, a tensor on another device or
  not contiguous, a slice when the file system refuses ``O_DIRECT``) reads a torch view of a
  private memory map of the shard, made once per shard when first needed.
"""

from __future__ import annotations

import ctypes
import mmap
import os
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import BinaryIO

import torch

from kvcore._checkpoint.file_tensor import FileTensor
from kvcore._checkpoint.safetensors import TensorInfo, check_unchanged
from kvcore._errors import CheckpointError
from kvcore._loading.naming import call_loader
from kvcore._loading.odirect import DirectFile, Piece, Rows, cached, pieces, rows_of, wanted
from kvcore._loading.pinned import Pinned, changed_error, raw, raws
from kvcore._loading.plan import Copy

__all__ = ["Shard", "Threads"]

MAX_THREADS = 8
"""The most reader threads a load starts."""
COLD_THREADS = 4
"""The fewest reader threads for a checkpoint mostly not in the page cache. A read from the
device waits on it, and more reads in flight keep it busy: a cold (a) load on 2 cores took
1.43 s with 2 threads and 0.98 s with 4 (1.19 s with 8); from the page cache, where reads are
memory copies, threads beyond the cores cost ~5-9% (``make bench``, BENCHMARKS.md)."""
LOADER_SPLIT_BYTES = 1 << 20
"""The smallest part of a tensor a loader's ``copy_`` reads on its own thread."""


class Threads:
    """A thread pool for splitting big reads, started on first use and joined at the end."""

    def __init__(self, cold: bool = False) -> None:
        self._pool: ThreadPoolExecutor | None = None
        self._urgent: ThreadPoolExecutor | None = None
        # As many readers as torch uses threads, capped: a few saturate memory bandwidth.
        # ``cold``: at least COLD_THREADS, as the device, not memory, is what they wait on.
        self.workers = min(MAX_THREADS, max(COLD_THREADS if cold else 1, torch.get_num_threads()))

    def __enter__(self) -> Threads:
        return self

    def __exit__(self, *exc: object) -> None:
        for pool in (self._pool, self._urgent):
            if pool is not None:
                pool.shutdown()

    def submit(self, *args: object) -> Future[object]:
        """Queue a read behind the others."""
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.workers, "kvcore-copy")
        return self._pool.submit(*args)  # type: ignore[arg-type]

    def submit_now(self, *args: object) -> Future[object]:
        """Start a read someone is waiting for (a loader's ``copy_``), not behind the queued ones."""
        if self._urgent is None:
            self._urgent = ThreadPoolExecutor(max(1, self.workers - 1), "kvcore-loader-copy")
        return self._urgent.submit(*args)  # type: ignore[arg-type]


class Shard:
    """One open shard: a file descriptor for direct reads, a memory map and an ``O_DIRECT``
    descriptor made on demand."""

    def __init__(self, path: Path, first: TensorInfo, threads: Threads, sliced: bool = False) -> None:
        self.path = path
        self.first = first
        self.threads = threads
        self.sliced = sliced
        self._file: BinaryIO | None = None
        self._base: torch.Tensor | None = None
        self._direct: DirectFile | bool | None = False  # False: not opened yet; None: refused

    def __enter__(self) -> Shard:
        try:
            self._file = open(self.path, "rb")
            if self.sliced:  # reads ahead would bring other ranks' slices into the page cache
                os.posix_fadvise(self._file.fileno(), 0, 0, os.POSIX_FADV_RANDOM)
            # The file must still be the one whose header was validated: a shrunk file
            # turns reads past its end into SIGBUS, a rewritten one into unchecked bytes.
            check_unchanged(self.first, self._file.fileno())
        except OSError as exc:
            self.__exit__()
            raise CheckpointError(f"cannot open {self.path}: {exc}") from exc
        except CheckpointError:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        if self._file is not None:
            self._file.close()
        if isinstance(self._direct, DirectFile):
            self._direct.close()
        self._direct = False
        # The map closes when the last tensor viewing it is gone; closing it here would fail
        # (or crash) if a custom weight_loader kept a view.
        self._base = None

    def submit(self, run: list[Copy], split_bytes: int) -> list[Future[object]] | None:
        """Queue the reads of a run of direct copies: one scatter read, a big tensor's chunks of
        ``split_bytes``, or a row-parallel slice's pieces (``None``: read it through the map).

        Each read re-checks its targets (``Pinned``) just before it writes into them.
        """
        info = run[0].info
        if run[0].part is not None:
            return self._submit_slice(run[0])
        pinned = Pinned.of(run)
        if len(run) == 1 and info.end - info.start >= split_bytes:
            size, address = info.end - info.start, pinned.addresses[0]
            spans = [(at, min(split_bytes, size - at)) for at in range(0, size, split_bytes)]
            return [
                self.threads.submit(self._read, [raw(address + at, n)], info.start + at, n, pinned)
                for at, n in spans
            ]
        # One buffer per tensor, built in C loops: a run holds up to IOV_MAX tiny tensors.
        buffers = raws(pinned.addresses, pinned.sizes)
        return [self.threads.submit(self._read, buffers, info.start, run[-1].info.end - info.start, pinned)]

    def _submit_slice(self, copy: Copy) -> list[Future[object]] | None:
        assert copy.part is not None
        rows = rows_of(copy.info, copy.part)
        if not wanted(copy.info) or cached(self._mapped(), rows):
            return None  # the map copies from memory and brings no page in; O_DIRECT reads the device
        if self._direct is False:
            assert self._file is not None
            self._direct = DirectFile.open(self.path, self._file.fileno())
        if not isinstance(self._direct, DirectFile):
            return None
        tensor = copy.target.tensor
        planned = (tensor.dtype, tuple(tensor.shape))
        return [
            self.threads.submit(self._read_slice, self._direct, piece, rows, copy, planned)
            for piece in pieces(rows, self._direct.align)
        ]

    @staticmethod
    def _read_slice(
        direct: DirectFile, piece: Piece, rows: Rows, copy: Copy, planned: tuple[torch.dtype, tuple[int, ...]]
    ) -> None:
        """Read one piece of a slice into its parameter, if it is still the one planned.

        The write is a torch copy into the parameter's current memory (bounds-checked), so a
        changed parameter can only be refused, never written out of bounds.
        """
        tensor = copy.target.tensor
        if (tensor.dtype, tuple(tensor.shape)) != planned or not tensor.is_contiguous() or not tensor.is_cpu:
            raise changed_error(copy.target.name, [f"planned: {planned[1]} of {planned[0]}"])
        with torch.no_grad():  # grad mode is per thread
            direct.read(piece, rows, tensor.detach().view(torch.uint8).view(rows.rows, rows.length))

    def copy_mapped(self, copy: Copy) -> None:
        """Copy through a torch view of the mapped file (conversions, loaders, other devices).

        A loader receives a ``FileTensor``: its ``copy_`` into a parameter reads the file directly.
        """
        source = _view(self._mapped(), copy.info)
        if copy.part is not None:
            source = source.narrow(*copy.part)
        if copy.loader is None:
            with torch.no_grad():
                copy.target.tensor.copy_(source.reshape(copy.target.tensor.shape))
            return
        if source.data_ptr() % source.dtype.itemsize == 0 and copy.info.start % source.dtype.itemsize == 0:
            source = FileTensor.wrap(source, self.read_into, copy.info.start)
        where = f"checkpoint tensor {copy.info.name!r} in {copy.info.path} (loading into {copy.target.name!r})"
        call_loader(copy.loader, copy.target.tensor, source, copy.shard, where)

    def read_into(self, address: int, offset: int, size: int) -> bool:
        """Read ``size`` bytes at file ``offset`` into memory at ``address``, on every reader thread.

        The caller (a loader's ``copy_``) waits anyway: it reads the first part itself while
        the pool reads the others, parts of at least ``LOADER_SPLIT_BYTES``.
        """
        if self._file is None or self._file.closed:
            return False  # a loader kept the tensor past the load: copy from the map instead
        parts = max(1, min(self.threads.workers, size // LOADER_SPLIT_BYTES))
        step = -(-size // parts)
        spans = [(at, min(step, size - at)) for at in range(0, size, step)]
        reads = [self.threads.submit_now(self._read, [raw(address + at, n)], offset + at, n) for at, n in spans[1:]]
        self._read([raw(address, spans[0][1])], offset, spans[0][1])
        for read in reads:
            read.result()
        return True

    def _read(
        self, buffers: list[ctypes.Array[ctypes.c_char]], offset: int, expected: int, pinned: Pinned | None = None
    ) -> int:
        assert self._file is not None
        if pinned is not None:
            pinned.check()  # right before the write: the targets must still be the planned memory
        got = os.preadv(self._file.fileno(), buffers, offset)
        if got != expected:
            raise CheckpointError(
                f"{self.path} ended {expected - got} bytes early at byte {offset + got}: the file "
                "shrank after its header was read"
            )
        return got

    def _mapped(self) -> torch.Tensor:
        if self._base is None:
            assert self._file is not None
            try:
                # ACCESS_COPY (MAP_PRIVATE) makes the buffer writable for torch.frombuffer
                # without ever writing the file; nobody writes to it anyway.
                view = mmap.mmap(self._file.fileno(), 0, access=mmap.ACCESS_COPY)
            except (OSError, ValueError) as exc:
                raise CheckpointError(f"cannot map {self.path}: {exc}") from exc
            self._base = torch.frombuffer(view, dtype=torch.uint8)
        return self._base


def _view(base: torch.Tensor, info: TensorInfo) -> torch.Tensor:
    raw_bytes = base[info.start : info.end]
    dtype = info.torch_dtype
    if info.start % dtype.itemsize:
        raw_bytes = raw_bytes.clone()  # unaligned in the file: a dtype view needs aligned storage
    return raw_bytes.view(dtype).view(info.shape)
