"""Copying: stream each shard once, in offset order, into the parameters.

Each tensor is copied exactly once, from the page cache into its parameter:

- ``direct`` copies (a contiguous CPU tensor of the checkpoint's dtype and size, no custom
  loader) are read with ``os.preadv`` straight into the parameter's memory. Adjacent
  tensors share one scatter read (one system call for up to ``IOV_MAX`` tensors), and a big
  tensor is split among threads, because one core cannot saturate memory bandwidth and
  ``preadv`` releases the GIL. Nothing is mapped, so no file page counts in the process's
  resident memory.
- every other copy (dtype conversion, a ``weight_loader``, a tensor on another device or
  not contiguous) reads a torch view of a private memory map of the shard, made once per
  shard when first needed.

A failure part-way raises ``CheckpointError`` whose ``written`` lists exactly what changed.

A model must not be mutated during a load. Direct reads write raw bytes at addresses taken
from the parameters, so each read first re-checks its targets (``_Pinned``): the same data
pointer, byte count, dtype and contiguity as planned, inside the same live storage, which
the read holds a reference to so that a replaced storage cannot be freed under it. A
changed target is a ``WeightLoadError`` naming the parameter, never a write out of bounds.
"""

from __future__ import annotations

import ctypes
import itertools
import mmap
import operator
import os
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from itertools import groupby
from pathlib import Path
from typing import NamedTuple

import torch

from kvcore._checkpoint.file_tensor import FileTensor
from kvcore._checkpoint.safetensors import DTYPES, TensorInfo, check_unchanged
from kvcore._errors import CheckpointError, WeightLoadError
from kvcore._loading.naming import LoaderFailed, call_loader
from kvcore._loading.plan import Copy
from kvcore._show import shown

__all__ = ["copy_all"]

Progress = Callable[[int], None]

IOV_MAX = 1024
"""Buffers per ``preadv`` call (Linux's limit)."""
MAX_THREADS = 8
"""The most reader threads a load starts."""
SPLIT_BYTES = 16 << 20
"""A direct tensor at least this big is read by several threads, in chunks of this size."""
LOADER_SPLIT_BYTES = 1 << 20
"""The smallest part of a tensor a loader's ``copy_`` reads on its own thread."""


def copy_all(copies: list[Copy], progress: Progress | None = None, *, sliced: bool = False) -> set[str]:
    """Execute ``copies`` (sorted by file and offset); return the parameter names written.

    ``sliced``: the copies read parts of tensors (a tensor-parallel rank), so the kernel is
    told not to read ahead on direct reads: what it would read ahead is other ranks' bytes.

    Direct reads are queued on a thread pool; copies through the memory map (which may call
    a custom loader) run meanwhile. A run counts as written once all its reads are done; on
    a failure every read in flight is waited for first, so the error knows what was written.
    """
    log = _Log()
    try:
        with _Threads() as threads:
            for path, group in groupby(copies, key=_path):
                batch = list(group)
                log.current = batch[0]
                with _Shard(path, batch[0].info, threads, sliced) as shard:
                    _copy_shard(shard, batch, log, progress)
    except Exception as exc:  # noqa: BLE001 - re-raised, chained
        # A failing weight_loader's message says it all: chain what the loader raised.
        raise _interrupted(exc, log) from (exc.__cause__ if isinstance(exc, LoaderFailed) else exc)
    return log.written


Pending = list[tuple[list[Copy], list[Future[int]]]]


def _copy_shard(shard: _Shard, batch: list[Copy], log: _Log, progress: Progress | None) -> None:
    pending: Pending = []
    runs = list(_runs(batch))
    try:
        # Every direct read is queued first, so the pool never idles while this thread copies
        # through the map (a loader's copy_ reads the file too: see FileTensor).
        for run in filter(_first_direct, runs):
            reads = shard.submit(run)  # refuses a changed target before anything is queued
            log.start(run)
            pending.append((run, reads))
        for run in itertools.filterfalse(_first_direct, runs):
            log.start(run)
            _drain(pending, log, progress, block=False)
            shard.copy_mapped(run[0])
            log.finish(run, progress)
        _drain(pending, log, progress)
    finally:
        # Never leave a read running into a parameter (or on a closed file) after an error;
        # the reads that succeeded count as written.
        for run, reads in pending:
            failures = [read.exception() for read in reads]
            if not any(failures):
                log.finish(run, None)
            elif all(isinstance(failure, WeightLoadError) for failure in failures):
                log.abandon(run)  # every read refused its changed target before writing


def _drain(pending: Pending, log: _Log, progress: Progress | None, *, block: bool = True) -> None:
    """Record the queued runs as written, in order, once all their reads are done.

    ``block=False`` stops at the first run still being read instead of waiting for it.
    """
    while pending:
        run, reads = pending[0]
        if not block and not all(read.done() for read in reads):
            return
        for read in reads:
            read.result()  # the first failure propagates
        pending.pop(0)
        log.finish(run, progress)


_path = operator.attrgetter("info.path")
_START, _END = operator.attrgetter("info.start"), operator.attrgetter("info.end")
_DIRECT, _TENSOR = operator.attrgetter("direct"), operator.attrgetter("target.tensor")
_TARGET_NAME = operator.attrgetter("target.name")


def _first_direct(run: list[Copy]) -> bool:
    return run[0].direct
_from_address = type(ctypes.c_char * 1).from_address
"""``from_address`` of ctypes array types, unbound: ``_from_address(array_type, address)``."""


def _runs(batch: list[Copy]) -> Iterable[list[Copy]]:
    """Split a shard's copies into steps: runs of adjacent small direct copies, or one copy."""
    starts, ends = list(map(_START, batch)), list(map(_END, batch))
    # The usual shard of small tensors, back to back, all direct: IOV_MAX at a time.
    if all(map(_DIRECT, batch)) and starts[1:] == ends[:-1] and max(map(operator.sub, ends, starts)) < SPLIT_BYTES:
        return [batch[at : at + IOV_MAX] for at in range(0, len(batch), IOV_MAX)]
    return _split(batch)


def _split(batch: list[Copy]) -> Iterator[list[Copy]]:
    """``_runs`` for any batch, copy by copy."""
    run: list[Copy] = []
    for copy in batch:
        info = copy.info
        if run and (len(run) == IOV_MAX or info.start != run[-1].info.end):
            yield run
            run = []
        if not copy.direct or info.end - info.start >= SPLIT_BYTES:
            if run:
                yield run
                run = []
            yield [copy]
        else:
            run.append(copy)
    if run:
        yield run


class _Log:
    """What has been written so far, for the error a failure raises."""

    def __init__(self) -> None:
        self.written: set[str] = set()
        self.current: Copy | None = None
        # Runs being written now (partly written if a step fails), by id, in start order.
        # Their names are listed only on failure, not for every run started.
        self._running: dict[int, list[Copy]] = {}

    @property
    def touched(self) -> dict[str, None]:
        """Names of the parameters being written now, in order."""
        return dict.fromkeys(copy.target.name for run in self._running.values() for copy in run)

    def start(self, run: list[Copy]) -> None:
        self.current = run[0]
        self._running[id(run)] = run

    def abandon(self, run: list[Copy]) -> None:
        """Forget ``run``: none of its reads wrote anything."""
        del self._running[id(run)]

    def finish(self, run: list[Copy], progress: Progress | None) -> None:
        del self._running[id(run)]
        self.written.update(map(_TARGET_NAME, run))
        if progress is not None:
            for copy in run:
                progress(copy.info.end - copy.info.start)


class _Threads:
    """A thread pool for splitting big reads, started on first use and joined at the end."""

    def __init__(self) -> None:
        self._pool: ThreadPoolExecutor | None = None
        self._urgent: ThreadPoolExecutor | None = None
        # As many readers as torch uses threads, capped: a few saturate memory bandwidth.
        self.workers = min(MAX_THREADS, max(1, torch.get_num_threads()))

    def __enter__(self) -> _Threads:
        return self

    def __exit__(self, *exc: object) -> None:
        for pool in (self._pool, self._urgent):
            if pool is not None:
                pool.shutdown()

    def submit(self, *args: object) -> Future[int]:
        """Queue a read behind the others."""
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.workers, "kvcore-copy")
        return self._pool.submit(*args)  # type: ignore[arg-type]

    def submit_now(self, *args: object) -> Future[int]:
        """Start a read someone is waiting for (a loader's ``copy_``), not behind the queued ones."""
        if self._urgent is None:
            self._urgent = ThreadPoolExecutor(max(1, self.workers - 1), "kvcore-loader-copy")
        return self._urgent.submit(*args)  # type: ignore[arg-type]


class _Shard:
    """One open shard: a file descriptor for direct reads, a memory map made on demand."""

    def __init__(self, path: Path, first: TensorInfo, threads: _Threads, sliced: bool = False) -> None:
        self.path = path
        self.first = first
        self.threads = threads
        self.sliced = sliced
        self._file = None
        self._base: torch.Tensor | None = None

    def __enter__(self) -> _Shard:
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
        # The map closes when the last tensor viewing it is gone; closing it here would fail
        # (or crash) if a custom weight_loader kept a view.
        self._base = None

    def submit(self, run: list[Copy]) -> list[Future[int]]:
        """Queue the reads of a run of direct copies: one scatter read, or a big tensor's chunks.

        Each read re-checks the run's targets (``_Pinned``) just before it writes into them.
        """
        info = run[0].info
        pinned = _Pinned.of(run)
        if len(run) == 1 and info.end - info.start >= SPLIT_BYTES:
            size, address = info.end - info.start, pinned.addresses[0]
            spans = [(at, min(SPLIT_BYTES, size - at)) for at in range(0, size, SPLIT_BYTES)]
            return [
                self.threads.submit(self._read, [_raw(address + at, n)], info.start + at, n, pinned)
                for at, n in spans
            ]
        # C loops, no Python call per tensor: a run holds up to IOV_MAX tiny tensors.
        buffers = list(map(_from_address, map(ctypes.c_char.__mul__, pinned.sizes), pinned.addresses))
        return [self.threads.submit(self._read, buffers, info.start, run[-1].info.end - info.start, pinned)]

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
        reads = [self.threads.submit_now(self._read, [_raw(address + at, n)], offset + at, n) for at, n in spans[1:]]
        self._read([_raw(address, spans[0][1])], offset, spans[0][1])
        for read in reads:
            read.result()
        return True

    def _read(
        self, buffers: list[ctypes.Array[ctypes.c_char]], offset: int, expected: int, pinned: _Pinned | None = None
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


_DATA_PTR, _IS_CONTIGUOUS, _STORAGE = torch.Tensor.data_ptr, torch.Tensor.is_contiguous, torch.Tensor.untyped_storage
_STORAGE_PTR, _STORAGE_BYTES = torch.UntypedStorage.data_ptr, torch.UntypedStorage.nbytes
_NBYTES, _DTYPE_OF = operator.attrgetter("nbytes"), operator.attrgetter("dtype")
_INFO_DTYPE = operator.attrgetter("info.dtype")


class _Pinned(NamedTuple):
    """The memory a run of direct reads writes into, as it was when the reads were queued.

    ``storages`` holds a reference to each target's storage, so that a storage swapped out of
    a parameter (``param.data = ...``) stays allocated until the read is over. :meth:`check`
    runs on the reader thread right before ``preadv``: every target must still have the data
    pointer, byte count, dtype and contiguity planned, inside that storage, not resized.
    Column checks (C loops): a run holds up to ``IOV_MAX`` tensors.
    """

    copies: list[Copy]
    tensors: list[torch.Tensor]
    addresses: list[int]
    sizes: list[int]
    dtypes: list[torch.dtype]
    storages: list[torch.UntypedStorage]
    storage_starts: list[int]
    storage_bytes: list[int]

    @classmethod
    def of(cls, run: list[Copy]) -> _Pinned:
        tensors = list(map(_TENSOR, run))
        storages = list(map(_STORAGE, tensors))
        pinned = cls(
            run,
            tensors,
            list(map(_DATA_PTR, tensors)),
            list(map(operator.sub, map(_END, run), map(_START, run))),
            list(map(DTYPES.__getitem__, map(_INFO_DTYPE, run))),
            storages,
            list(map(_STORAGE_PTR, storages)),
            list(map(_STORAGE_BYTES, storages)),
        )
        ends = map(operator.add, pinned.addresses, pinned.sizes)
        storage_ends = map(operator.add, pinned.storage_starts, pinned.storage_bytes)
        if not (
            all(map(operator.le, pinned.storage_starts, pinned.addresses)) and all(map(operator.le, ends, storage_ends))
        ):
            pinned._refuse()
        return pinned  # the reader thread checks the rest (check) right before writing

    def check(self) -> None:
        """Raise ``WeightLoadError`` naming the first target that is no longer the planned memory."""
        tensors = self.tensors
        if (
            list(map(_DATA_PTR, tensors)) == self.addresses
            and list(map(_NBYTES, tensors)) == self.sizes
            and list(map(_DTYPE_OF, tensors)) == self.dtypes
            and all(map(_IS_CONTIGUOUS, tensors))
            and list(map(_STORAGE_PTR, self.storages)) == self.storage_starts
            and list(map(_STORAGE_BYTES, self.storages)) == self.storage_bytes
        ):
            return
        self._refuse()

    def _refuse(self) -> None:
        for i, copy in enumerate(self.copies):
            tensor, storage = self.tensors[i], self.storages[i]
            address, size = self.addresses[i], self.sizes[i]
            start, length = self.storage_starts[i], self.storage_bytes[i]
            problems = []
            if tensor.nbytes != size or tensor.dtype != self.dtypes[i]:
                problems.append(f"planned: {size} bytes of {self.dtypes[i]}; now: {tensor.nbytes} of {tensor.dtype}")
            if not tensor.is_contiguous():
                problems.append("no longer contiguous")
            if tensor.data_ptr() != address:
                problems.append("its memory was replaced")
            if (storage.data_ptr(), storage.nbytes()) != (start, length):
                problems.append(f"its storage was resized to {storage.nbytes()} bytes")
            elif not start <= address <= start + length - size:
                problems.append(f"its storage holds {length} bytes")
            if problems:
                raise WeightLoadError(
                    f"parameter {copy.target.name!r} changed while kvcore was loading into it "
                    f"({'; '.join(problems)}); nothing was read into it. A model must not be mutated "
                    "during a load: not by another thread, not by the progress callback"
                )


def _raw(address: int, size: int) -> ctypes.Array[ctypes.c_char]:
    return (ctypes.c_char * size).from_address(address)


def _view(base: torch.Tensor, info: TensorInfo) -> torch.Tensor:
    raw = base[info.start : info.end]
    dtype = info.torch_dtype
    if info.start % dtype.itemsize:
        raw = raw.clone()  # unaligned in the file: a dtype view needs aligned storage
    return raw.view(dtype).view(info.shape)


def _interrupted(exc: Exception, log: _Log) -> CheckpointError | WeightLoadError:
    current, written = log.current, log.written
    where = (
        f"tensor {current.info.name!r} from {current.info.path} (loading into {current.target.name!r})"
        if current
        else "the first tensor"
    )
    done = ", ".join(map(shown, sorted(written)[:20])) + (" ..." if len(written) > 20 else "")
    partly = "".join(f"; {name!r} may be partly written" for name in list(log.touched)[:20])
    changed = frozenset(written | set(log.touched))
    advice = (
        "The model is partially loaded (the error's .written lists what changed): discard it"
        if changed
        else "Nothing was written"
    )
    if isinstance(exc, LoaderFailed):  # the model's own weight_loader failed, not the checkpoint
        return WeightLoadError(
            f"{exc} {len(written)} parameter(s) were written before{': ' + done if written else ''}"
            f"{partly}. {advice}, and load again once the loader is fixed",
            written=changed,
        )
    if isinstance(exc, WeightLoadError):  # the model changed under the load (_Pinned)
        return WeightLoadError(
            f"{exc}. {len(written)} parameter(s) were written before{': ' + done if written else ''}"
            f"{partly}. {advice}, and load again into a model nothing else touches meanwhile",
            written=changed,
        )
    return CheckpointError(
        f"loading failed at {where} ({type(exc).__name__}: {exc}) after writing "
        f"{len(written)} parameter(s){': ' + done if written else ''}{partly}. {advice}, and load "
        "again once the checkpoint is readable",
        written=changed,
    )
