"""Copying: stream each shard once, in offset order, from a memory map into the parameters."""

from __future__ import annotations

import mmap
from collections.abc import Callable
from itertools import groupby
from pathlib import Path

import torch

from kvcore._errors import CheckpointError
from kvcore._plan import Copy

__all__ = ["copy_all"]

Progress = Callable[[int], None]


def copy_all(copies: list[Copy], progress: Progress | None = None) -> set[str]:
    """Execute ``copies`` (sorted by file and offset); return the parameter names written.

    A failure part-way raises ``CheckpointError`` naming what was already written, so that
    the caller can discard the model.
    """
    written: set[str] = set()
    current: Copy | None = None
    try:
        for path, group in groupby(copies, key=lambda c: c.info.path):
            with _mapped(path) as base:
                for current in group:
                    _copy_one(base, current)
                    written.add(current.target.name)
                    if progress is not None:
                        progress(current.info.nbytes)
    except Exception as exc:
        raise _interrupted(exc, current, written) from exc
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

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file = None
        self._map: mmap.mmap | None = None

    def __enter__(self) -> torch.Tensor:
        try:
            self._file = open(self.path, "rb")
            self._map = mmap.mmap(self._file.fileno(), 0, access=mmap.ACCESS_COPY)
        except (OSError, ValueError) as exc:
            raise CheckpointError(f"cannot map {self.path}: {exc}") from exc
        return torch.frombuffer(self._map, dtype=torch.uint8)

    def __exit__(self, *exc: object) -> None:
        if self._file is not None:
            self._file.close()
        # The map closes when the last tensor viewing it is gone; closing it here would fail
        # (or crash) if a custom weight_loader kept a view.
        self._map = None


def _interrupted(exc: Exception, current: Copy | None, written: set[str]) -> CheckpointError:
    where = f"tensor {current.info.name!r} from {current.info.path}" if current else "the first tensor"
    done = ", ".join(sorted(written)[:20]) + (" ..." if len(written) > 20 else "")
    return CheckpointError(
        f"loading failed at {where} ({type(exc).__name__}: {exc}) after writing "
        f"{len(written)} parameter(s){': ' + done if written else ''}. The model is partially "
        "loaded: discard it and load again once the checkpoint is readable"
    )


