"""A progress bar over bytes and shards, drawn on stderr for large loads on a terminal.

``kvcore.load`` installs it when the caller passes no ``progress`` callback, stderr is a
terminal, and the load copies more than ``MIN_BYTES``; otherwise nothing is printed.
``KVCORE_PROGRESS=0`` turns it off (``KVCORE_PROGRESS=1`` forces it, terminal or not).
"""

from __future__ import annotations

import contextlib
import itertools
import operator
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, TextIO

if TYPE_CHECKING:
    from kvcore._loading.plan import Copy

__all__ = ["MIN_BYTES", "ProgressBar", "default_progress", "human_bytes"]

MIN_BYTES = 256 * 1024 * 1024
"""Below this a load takes well under a second: a bar would only flicker."""

Progress = Callable[[int], None]


class ProgressBar:
    """``[######......]  45.0%  1.2 GiB / 2.6 GiB  shard 2/3``, redrawn in place.

    Called with the byte count of each copied tensor (the ``progress`` callback of
    ``kvcore.load``); ``shard_bytes`` are the bytes to copy from each shard, in copy order.
    It redraws only when the shown tenth of a percent changes, so that a checkpoint of
    10^5 tiny tensors does not spend its time printing.
    """

    def __init__(self, shard_bytes: Sequence[int], stream: TextIO, width: int = 28) -> None:
        self.ends = list(itertools.accumulate(shard_bytes))
        self.total = self.ends[-1] if self.ends else 0
        self.stream = stream
        self.width = width
        self.done = 0
        self._shown = -1

    def __call__(self, nbytes: int) -> None:
        self.done += nbytes
        permille = self.done * 1000 // self.total if self.total else 1000
        if permille != self._shown:
            self._shown = permille
            self._draw()

    def line(self) -> str:
        """The bar as text, without the carriage return."""
        fraction = min(self.done / self.total, 1.0) if self.total else 1.0
        filled = round(fraction * self.width)
        finished = sum(1 for end in self.ends if end <= self.done)
        shard = min(finished + 1, len(self.ends)) if self.ends else 0
        return (
            f"[{'#' * filled}{'.' * (self.width - filled)}] {fraction * 100:5.1f}%  "
            f"{human_bytes(self.done)} / {human_bytes(self.total)}  shard {shard}/{len(self.ends)}"
        )

    def _draw(self) -> None:
        self.stream.write("\r" + self.line())
        self.stream.flush()

    def close(self) -> None:
        """End the bar's line so that what follows starts on a fresh one."""
        self._draw()
        self.stream.write("\n")
        self.stream.flush()


def human_bytes(count: float) -> str:
    """``1.5 GiB``-style sizes."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if count < 1024 or unit == "GiB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    raise AssertionError("unreachable")


_NBYTES = operator.attrgetter("info.nbytes")
"""Summing 10^5 copies' sizes through ``map`` rather than a generator."""


@contextlib.contextmanager
def default_progress(copies: Sequence[Copy], given: Progress | None) -> Iterator[Progress | None]:
    """``given`` if the caller passed one; else a bar when it is wanted; else ``None``."""
    if given is not None or not _wanted(sum(map(_NBYTES, copies))):
        yield given
        return
    sizes = [sum(c.info.nbytes for c in group) for _, group in itertools.groupby(copies, key=lambda c: c.info.path)]
    bar = ProgressBar(sizes, sys.stderr)
    try:
        yield bar
    finally:
        bar.close()


def _wanted(nbytes: int) -> bool:
    setting = os.environ.get("KVCORE_PROGRESS", "")
    if setting in ("0", "false", "no"):
        return False
    if setting in ("1", "true", "yes"):
        return True
    return nbytes > MIN_BYTES and sys.stderr is not None and sys.stderr.isatty()
