"""Tensor parallelism in a plan: which part of a checkpoint tensor this rank's parameter holds.

A parameter with an integer ``tp_dim`` attribute holds its rank's slice along that dim:
``tensor.chunk(tp_size, tp_dim)[tp_rank]``, or, when the checkpoint dim is only ``f`` times the
parameter's (``f`` dividing ``tp_size``: KV heads replicated over ranks),
``tensor.chunk(f, tp_dim)[tp_rank // (tp_size // f)]``. A ``tp_dim == 0`` slice is one byte
range of the file, read directly; any other is a byte range per row, read with ``O_DIRECT``
(``odirect``: none of it enters the page cache) where the file system allows, else narrowed
from the file's memory map. Per-head KV-cache scales follow vLLM's head split.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from kvcore._checkpoint.safetensors import TensorInfo
from kvcore._errors import WeightLoadError
from kvcore._loading.heads import per_kv_head, rank_heads
from kvcore._loading.targets import Target

__all__ = ["SINGLE", "Parallel", "Part", "rank_part", "rank_scale"]


class Parallel(NamedTuple):
    """This process's rank, the tensor-parallel size, and the checkpoint's KV heads (if known)."""

    rank: int = 0
    size: int = 1
    kv_heads: int | None = None


SINGLE = Parallel()
"""One process holds the whole model."""


class Part(NamedTuple):
    """A slice of the checkpoint tensor: ``narrow(dim, start, length)``."""

    dim: int
    start: int
    length: int


def rank_part(info: TensorInfo, target: Target, par: Parallel, where: str) -> tuple[TensorInfo, Part | None]:
    """``info`` narrowed to this rank's slice for a ``tp_dim`` parameter: a byte range for dim 0,
    else ``info`` and the :class:`Part` to narrow. Anything that does not fit raises, naming ``where``.
    """
    dim = getattr(target.tensor, "tp_dim", None)
    if dim is None or target.loader is not None:
        return info, None
    shape, mine = info.shape, tuple(target.tensor.shape)
    if not isinstance(dim, int) or isinstance(dim, bool) or not -len(shape) <= dim < len(shape):
        raise WeightLoadError(f"{where}: tp_dim={dim!r} is not a dimension of the checkpoint tensor {list(shape)}")
    dim %= len(shape)
    chunks = _chunks(shape, mine, dim, par.size)
    if chunks is None:
        raise WeightLoadError(
            f"{where} has shape {list(shape)}, and the parameter (tp_dim={dim}) has shape {list(mine)}: "
            f"rank {par.rank} of {par.size} holds 1/{par.size} of dim {dim} (or one of f replicated "
            "parts, f dividing the tensor-parallel size). Build the parameter with this rank's share "
            "of the checkpoint's size, or load with the tensor-parallel size the model was built for"
        )
    index = par.rank // (par.size // chunks)
    length = mine[dim]
    if dim == 0:
        row = info.nbytes // shape[0] if shape[0] else 0
        start = info.start + index * length * row
        return info._replace(shape=mine, start=start, end=start + length * row), None
    return info, Part(dim, index * length, length)


def _chunks(shape: tuple[int, ...], mine: tuple[int, ...], dim: int, size: int) -> int | None:
    """How many parts the checkpoint dim is cut into (dividing ``size``), or ``None`` if none fits."""
    if len(shape) != len(mine) or any(a != b for i, (a, b) in enumerate(zip(shape, mine, strict=True)) if i != dim):
        return None
    if mine[dim] == 0 or shape[dim] % mine[dim]:
        return None
    chunks = shape[dim] // mine[dim]
    return chunks if size % chunks == 0 else None


def rank_scale(value: torch.Tensor, shape: list[int], target: Target, par: Parallel, where: str) -> torch.Tensor:
    """This rank's part of a flat float32 scale of checkpoint ``shape``: per-tensor as is, per-head
    split by KV head. A per-query-head ``q_scale`` is first reduced to one value per KV head
    (the max over each group of query heads).
    """
    if value.numel() == 1:
        return value
    heads = getattr(target.module, "num_kv_heads", None)
    kv_heads = par.kv_heads or (heads or 0) * par.size
    if target.attr == "q_scale" and value.numel() != kv_heads and kv_heads and value.numel() % kv_heads == 0:
        value = per_kv_head(value, value.numel(), kv_heads)
    mine = rank_heads(value, value.numel(), par.rank, par.size, where)
    if mine.numel() == 1 or mine.numel() == heads:
        return mine
    rank = f"; rank {par.rank} of {par.size} gets {mine.numel()} of them" if par.size > 1 else ""
    raise WeightLoadError(
        f"{where} has shape {shape}: a KV-cache scale has one element (per-tensor) or one per KV "
        f"head (per-head){rank}, but the attention was built with num_kv_heads={heads}. Build "
        f"kvcore.Attention with this rank's KV heads ({value.numel()} in the checkpoint over "
        f"{par.size} rank(s)), or re-export the checkpoint"
    )
