"""Copying: stream each shard once, in offset order, into the parameters.

Each tensor is copied exactly once into its parameter, by one of the reads in ``shard``:
``preadv`` straight into the parameter (``direct`` copies: adjacent tensors share one scatter
read, a big tensor is split among threads), ``O_DIRECT`` for a row-parallel slice, or a view
of the shard's memory map (conversions, loaders, other devices). Direct reads are queued on a
thread pool first; mapped copies run meanwhile.

A failure part-way raises ``CheckpointError`` whose ``written`` lists exactly what changed. A
model must not be mutated during a load: a changed target is a ``WeightLoadError`` naming the
parameter (``pinned``), never a write out of bounds.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future
from itertools import groupby

from kvcore._errors import CheckpointError, WeightLoadError
from kvcore._loading.naming import LoaderFailed
from kvcore._loading.pagecache import resident_share
from kvcore._loading.plan import Copy
from kvcore._loading.shard import Shard, Threads
from kvcore._show import shown

__all__ = ["copy_all"]

Progress = Callable[[int], None]

IOV_MAX = 1024
"""Buffers per ``preadv`` call (Linux's limit)."""
SPLIT_BYTES = 16 << 20
"""A direct tensor at least this big is read by several threads, in chunks of this size."""


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
        with Threads(cold=resident_share(dict.fromkeys(map(_path, copies))) < 0.5) as threads:
            for path, group in groupby(copies, key=_path):
                batch = list(group)
                log.current = batch[0]
                with Shard(path, batch[0].info, threads, sliced) as shard:
                    _copy_shard(shard, batch, log, progress, sliced)
    except Exception as exc:  # noqa: BLE001 - re-raised, chained
        # A failing weight_loader's message says it all: chain what the loader raised.
        raise _interrupted(exc, log) from (exc.__cause__ if isinstance(exc, LoaderFailed) else exc)
    return log.written


Pending = list[tuple[list[Copy], list[Future[object]]]]


def _copy_shard(shard: Shard, batch: list[Copy], log: _Log, progress: Progress | None, sliced: bool) -> None:
    pending: Pending = []
    mapped: list[list[Copy]] = []
    try:
        # Every direct read is queued first, so the pool never idles while this thread copies
        # through the map (a loader's copy_ reads the file too: see FileTensor).
        for run in _runs(batch, sliced):
            # Refuses a changed target before anything is queued; None: a slice goes through the map.
            reads = shard.submit(run, SPLIT_BYTES) if run[0].direct else None
            if reads is None:
                mapped.append(run)
                continue
            log.start(run)
            pending.append((run, reads))
        for run in mapped:
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
_DIRECT, _PART = operator.attrgetter("direct"), operator.attrgetter("part")
_TARGET_NAME = operator.attrgetter("target.name")


def _runs(batch: list[Copy], sliced: bool = False) -> Iterable[list[Copy]]:
    """Split a shard's copies into steps: runs of adjacent small direct copies, or one copy.

    ``sliced``: some copies may be slices (``part``), each read on its own.
    """
    return _quick_runs(batch, sliced) or _careful_runs(batch)


def _quick_runs(batch: list[Copy], sliced: bool) -> list[list[Copy]] | None:
    """``_careful_runs``'s answer for the usual shard (small direct copies back to back), or ``None``."""
    starts, ends = list(map(_START, batch)), list(map(_END, batch))
    whole = not sliced or not any(map(_PART, batch))
    small = max(map(operator.sub, ends, starts)) < SPLIT_BYTES
    if whole and all(map(_DIRECT, batch)) and starts[1:] == ends[:-1] and small:
        return [batch[at : at + IOV_MAX] for at in range(0, len(batch), IOV_MAX)]
    return None


def _careful_runs(batch: list[Copy]) -> Iterator[list[Copy]]:
    """The steps for any batch, copy by copy."""
    run: list[Copy] = []
    for copy in batch:
        info = copy.info
        if run and (len(run) == IOV_MAX or info.start != run[-1].info.end):
            yield run
            run = []
        if not copy.direct or copy.part is not None or info.end - info.start >= SPLIT_BYTES:
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
