"""The memory a direct read writes into, re-checked right before the write.

A model must not be mutated during a load. Direct reads write raw bytes at addresses taken
from the parameters, so each read first re-checks its targets (``Pinned``): the same data
pointer, byte count, dtype and contiguity as planned, inside the same live storage, which
the read holds a reference to so that a replaced storage cannot be freed under it. A
changed target is a ``WeightLoadError`` naming the parameter, never a write out of bounds.
"""

from __future__ import annotations

import ctypes
import operator
from collections.abc import Iterable
from typing import NamedTuple

import torch

from kvcore._checkpoint.safetensors import DTYPES
from kvcore._errors import WeightLoadError
from kvcore._loading.plan import Copy

__all__ = ["Pinned", "changed_error", "raw", "raws"]

_DATA_PTR, _IS_CONTIGUOUS, _STORAGE = torch.Tensor.data_ptr, torch.Tensor.is_contiguous, torch.Tensor.untyped_storage
_STORAGE_PTR, _STORAGE_BYTES = torch.UntypedStorage.data_ptr, torch.UntypedStorage.nbytes
_NBYTES, _DTYPE_OF = operator.attrgetter("nbytes"), operator.attrgetter("dtype")
_INFO_DTYPE, _TENSOR = operator.attrgetter("info.dtype"), operator.attrgetter("target.tensor")
_START, _END = operator.attrgetter("info.start"), operator.attrgetter("info.end")


def raw(address: int, size: int) -> ctypes.Array[ctypes.c_char]:
    """``size`` bytes of memory at ``address``, as a buffer ``os.preadv`` can fill."""
    return (ctypes.c_char * size).from_address(address)


_from_address = type(ctypes.c_char * 1).from_address
"""``from_address`` of ctypes array types, unbound: ``_from_address(array_type, address)``."""


def raws(addresses: Iterable[int], sizes: Iterable[int]) -> list[ctypes.Array[ctypes.c_char]]:
    """``[raw(a, n) for a, n in zip(addresses, sizes)]`` in C loops (``map`` over the unbound
    ``from_address`` and ``c_char.__mul__``): a run holds up to IOV_MAX tiny tensors, and a
    Python call per buffer was ~4 % of the (b) load of 36,951 tensors (``make bench``);
    tests/core/test_quick_careful.py checks it builds what ``raw`` builds."""
    return list(map(_from_address, map(ctypes.c_char.__mul__, sizes), addresses))


def changed_error(name: str, problems: list[str]) -> WeightLoadError:
    """The error for a parameter that changed between planning and writing."""
    return WeightLoadError(
        f"parameter {name!r} changed while kvcore was loading into it ({'; '.join(problems)}); "
        "nothing was read into it. A model must not be mutated during a load: not by another "
        "thread, not by the progress callback"
    )


class Pinned(NamedTuple):
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
    def of(cls, run: list[Copy]) -> Pinned:
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
                raise changed_error(copy.target.name, problems)
