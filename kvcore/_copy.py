"""Copying: stream each shard once, in offset order, from a memory map into the parameters."""

from __future__ import annotations

import mmap
from collections.abc import Callable
from itertools import groupby
from pathlib import Path

import torch

from kvcore._errors import CheckpointError
from kvcore._plan import Copy
from kvcore._safetensors import TensorInfo, check_unchanged

__all__ = ["copy_all"]

Progress = Callable[[int], None]


def copy_all(copies: list[Copy], progress: Progress | None = None) -> set[str]:
    """Execute ``copies`` (sorted by file and offset); return the parameter names written.

    A failure part-way raises ``CheckpointError`` naming what was already written, so that
    the caller can discard the model.
    """
    written: set[str] = set()
    current: Copy | None = None
    touched: str | None = None  # the parameter being written: partly written if its loader fails
    try:
        for path, group in groupby(copies, key=lambda c: c.info.path):
            batch = list(group)
            current = batch[0]
            with _mapped(path, current.info) as base:
                for current in batch:
                    touched = current.target.name
                    _copy_one(base, current)
                    written.add(touched)
                    touched = None
                    if progress is not None:
                        progress(current.info.nbytes)
    except Exception as exc:
        raise _interrupted(exc, current, written, touched) from exc
    return written


def _copy_one(base: torch.Tensor, copy: Copy) -> None:
    source = _view(base, copy)
    if copy.loader is not None:
        copy.loader(copy.target.tensor, source)
    else:
        with torch.no_grad():
            copy.target.tensor.copy_(source.reshape(copy.target.tensor.shape))


def _view(base: torch.Tensor, copy: Copy) -> torch.Tensor:
    info = copy.info
    raw = base[info.start : info.end]
    dtype = info.torch_dtype
    if info.start % dtype.itemsize:
        raw = raw.clone()  # unaligned in the file: a dtype view needs aligned storage
    return raw.view(dtype).view(info.shape)


class _mapped:
    """A private, read-only-in-practice memory map of ``path`` as a flat uint8 tensor.

    MAP_PRIVATE makes the buffer writable for ``torch.frombuffer`` without ever writing the
    file; pages are shared with the page cache until someone writes, which nobody does.
    """

    def __init__(self, path: Path, first: TensorInfo | None = None) -> None:
        self.path = path
        self.first = first
        self._file = None
        self._map: mmap.mmap | None = None

    def __enter__(self) -> torch.Tensor:
        try:
            self._file = open(self.path, "rb")
            if self.first is not None:
                # The file must still be the one whose header was validated: a shrunk file
                # turns reads past its end into SIGBUS, a rewritten one into unchecked bytes.
                check_unchanged(self.first, self._file.fileno())
            self._map = mmap.mmap(self._file.fileno(), 0, access=mmap.ACCESS_COPY)
        except (OSError, ValueError, CheckpointError) as exc:
            self.__exit__()
            if isinstance(exc, CheckpointError):
                raise
            raise CheckpointError(f"cannot map {self.path}: {exc}") from exc
        return torch.frombuffer(self._map, dtype=torch.uint8)

    def __exit__(self, *exc: object) -> None:
        if self._file is not None:
            self._file.close()
        # The map closes when the last tensor viewing it is gone; closing it here would fail
        # (or crash) if a custom weight_loader kept a view.
        self._map = None


def _interrupted(exc: Exception, current: Copy | None, written: set[str], touched: str | None) -> CheckpointError:
    where = (
        f"tensor {current.info.name!r} from {current.info.path} (loading into {current.target.name!r})"
        if current
        else "the first tensor"
    )
    done = ", ".join(sorted(written)[:20]) + (" ..." if len(written) > 20 else "")
    partly = f"; {touched!r} may be partly written" if touched else ""
    changed = frozenset(written | ({touched} if touched else set()))
    advice = (
        "The model is partially loaded (the error's .written lists what changed): discard it"
        if changed
        else "Nothing was written"
    )
    return CheckpointError(
        f"loading failed at {where} ({type(exc).__name__}: {exc}) after writing "
        f"{len(written)} parameter(s){': ' + done if written else ''}{partly}. {advice}, and load "
        "again once the checkpoint is readable",
        written=changed,
    )


