"""``FileTensor``: what a custom ``weight_loader`` receives, so that its ``copy_`` reads the file directly.

A loader gets the checkpoint tensor as a view of the shard's memory map, the way vLLM hands
out mmap-backed tensors: it can read, narrow, convert or keep it. Engines' loaders nearly
always end in ``param.data.narrow(...).copy_(loaded)`` (a fused ``qkv_proj``'s shard, a
tensor-parallel slice). Copying from a fresh map pays a page fault per page; ``os.preadv``
into the destination does not, and is what kvcore's own direct path uses (35 % faster on
``make bench`` (a)). So ``FileTensor`` intercepts exactly that one operation: ``dst.copy_(src)``
of a whole ``FileTensor`` (or a dim-0 ``narrow`` of one) into a contiguous CPU tensor of the
same dtype and shape is one ``preadv`` of the bytes into ``dst``. Every other operation sees
the plain mmap-backed view and returns plain tensors.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

__all__ = ["FileTensor"]

Reader = Callable[[int, int, int], bool]
"""``reader(address, file_offset, nbytes)``: read bytes of the shard into memory at ``address``;
``False`` when it cannot (the shard is closed), and nothing was written."""
PLAIN = (torch.Tensor, torch.nn.Parameter)


class FileTensor(torch.Tensor):
    """A view of a mapped checkpoint tensor that knows where its bytes are in the file."""

    _kvcore_source: tuple[Reader, int] | None

    @staticmethod
    def wrap(view: torch.Tensor, reader: Reader, offset: int) -> FileTensor:
        """``view`` (contiguous, of the bytes at file ``offset``) as a ``FileTensor``."""
        tensor = torch.Tensor._make_subclass(FileTensor, view)
        tensor._kvcore_source = (reader, offset)
        return tensor

    @classmethod
    def __torch_function__(
        cls, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: dict[str, Any] | None = None
    ) -> Any:
        kwargs = kwargs or {}
        if func is torch.Tensor.copy_ and len(args) == 2 and not kwargs and _read_into(args[0], args[1]):
            return args[0]
        if func in (torch.Tensor.narrow, torch.narrow) and not kwargs and len(args) == 4 and args[1] == 0:
            return _rows(*args)
        with torch._C.DisableTorchFunctionSubclass():
            return func(*args, **kwargs)


def _read_into(dst: Any, src: Any) -> bool:
    """Read ``src``'s bytes from the file straight into ``dst``, if both allow it."""
    source = getattr(src, "_kvcore_source", None) if type(src) is FileTensor else None
    if (
        source is None
        or type(dst) not in PLAIN
        or dst.dtype != src.dtype
        or dst.shape != src.shape
        or dst.device.type != "cpu"
        or dst.layout is not torch.strided
        or not dst.is_contiguous()
        or (dst.requires_grad and torch.is_grad_enabled())
        or dst.nbytes == 0
    ):
        return False
    reader, offset = source
    return bool(reader(dst.data_ptr(), offset, dst.nbytes))


def _rows(src: FileTensor, dim: int, start: int, length: int) -> torch.Tensor:
    """``src.narrow(0, start, length)``, still a ``FileTensor``: its rows are one byte range too."""
    with torch._C.DisableTorchFunctionSubclass():
        rows = src.narrow(dim, start, length)
    source = getattr(src, "_kvcore_source", None)
    if source is None or not rows.is_contiguous():
        return rows
    reader, offset = source
    return FileTensor.wrap(rows, reader, offset + (rows.data_ptr() - src.data_ptr()))
