"""Per-head scales under tensor parallelism: which KV heads a rank holds (vLLM's rules)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from kvcore._errors import WeightLoadError

if TYPE_CHECKING:  # the rule itself is plain arithmetic: kvcore inspect --tp-size asks it without torch
    import torch

__all__ = ["per_kv_head", "rank_heads", "rank_span"]


def per_kv_head(value: torch.Tensor, query_heads: int, kv_heads: int) -> torch.Tensor:
    """A per-query-head scale reduced to one per KV head: the max over each group of queries.

    Query head ``h`` belongs to KV head ``h // (query_heads / kv_heads)``.
    """
    return value.reshape(kv_heads, query_heads // kv_heads).amax(dim=1)


def rank_heads(value: torch.Tensor, heads: int, tp_rank: int, tp_size: int, where: str) -> torch.Tensor:
    """The part of a ``(heads,)`` scale rank ``tp_rank`` of ``tp_size`` holds (see :func:`rank_span`)."""
    return value[rank_span(heads, tp_rank, tp_size, where)]


def rank_span(heads: int, tp_rank: int, tp_size: int, where: str) -> slice:
    """Which of ``heads`` KV heads rank ``tp_rank`` of ``tp_size`` holds.

    ``tp_size`` dividing ``heads``: a contiguous block of ``heads / tp_size``; ``heads``
    dividing ``tp_size``: head ``tp_rank // (tp_size / heads)``, replicated over consecutive ranks.
    """
    if tp_size < 1 or not 0 <= tp_rank < tp_size:
        raise WeightLoadError(f"tp_rank={tp_rank} and tp_size={tp_size}: need 0 <= tp_rank < tp_size")
    if tp_size == 1:
        return slice(0, heads)
    if heads % tp_size == 0:
        per_rank = heads // tp_size
        return slice(tp_rank * per_rank, (tp_rank + 1) * per_rank)
    if tp_size % heads == 0:
        head = tp_rank // (tp_size // heads)
        return slice(head, head + 1)
    raise WeightLoadError(
        f"{where} has {heads} per-head values, which {tp_size} tensor-parallel ranks can neither "
        f"split evenly nor replicate. Serve it with a tensor-parallel size that divides {heads} "
        f"or is a multiple of it"
    )
