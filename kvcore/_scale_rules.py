"""What makes a KV-cache scale or a KV offset unusable: one set of rules, worded once.

``kvcore.load`` raises with these words (``kvcore._scale_param.check_scale_value``,
``kvcore._loading.plan_scales``) and ``kvcore inspect`` reports them as ``error`` anomalies, so
the two cannot drift apart. Pure Python on plain numbers: ``kvcore inspect`` never imports torch.
Each function returns ``None`` when the rule holds, else the problem, worded to follow the name
of the tensor (``f"{where} {problem}"``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

__all__ = ["MAX_SCALE_VALUES", "dtype_problem", "offset_problem", "scale_problem", "size_problem"]

MAX_SCALE_VALUES = 1 << 16
"""A scale has one value or one per head; a bigger tensor is refused before it is read."""

_BAD_VALUES = (
    ("NaN", math.isnan),
    ("an infinite value", math.isinf),
    ("zero", lambda v: v == 0),
    ("a negative value", lambda v: v < 0),
)


def _listed(values: Sequence[float]) -> str:
    """Up to eight values as a list, more as their count."""
    return str(list(values)) if len(values) <= 8 else f"{len(values)} values"


def scale_problem(values: Sequence[float]) -> str | None:
    """``holds NaN ([nan]); a KV-cache scale must be a finite positive number``, or ``None``.

    ``values``: the scale's elements as float32 reads them (a float64 scale rounded first: a
    value float32 rounds to 0 is zero for the kernel too).
    """
    for problem, bad in _BAD_VALUES:
        if any(map(bad, values)):
            return f"holds {problem} ({_listed(values)}); a KV-cache scale must be a finite positive number"
    return None


def dtype_problem(dtype: str, floating: bool) -> str | None:
    """A scale stored as an integer or bool type: ``has dtype I32; a scale must be floating point``."""
    return None if floating else f"has dtype {dtype}; a scale must be floating point"


def size_problem(shape: Sequence[int], heads: int | None) -> str | None:
    """No element at all, or more than any head count (``heads``: the KV heads expected, for the words)."""
    count = math.prod(shape)
    expected = f"one per KV head (num_kv_heads={heads})" if heads else "one per KV head"
    if count == 0:
        return f"has shape {list(shape)}, with no element: a KV-cache scale has one element (per-tensor) or {expected}"
    if count > MAX_SCALE_VALUES:
        return f"has shape {list(shape)}: a KV-cache scale has one element (per-tensor) or {expected}"
    return None


def offset_problem(tensor: str, values: Sequence[float]) -> str | None:
    """Non-zero zero points (or ModelOpt's affine ``k_bias`` / ``v_bias``): an asymmetric KV cache.

    All-zero ones are a symmetric scheme's and are dropped. ``tensor`` is the checkpoint name,
    which says which kind of offset it is.
    """
    if not any(v != 0 for v in values):  # NaN != 0: a NaN offset is not an all-zero one
        return None
    leaf = tensor.rpartition(".")[2]
    kind = f"affine offsets ({leaf}, ModelOpt's FP8_AFFINE)" if leaf in ("k_bias", "v_bias") else "zero points"
    return (
        f"holds non-zero {kind} ({_listed(values)}): the KV cache is asymmetric, and kvcore.Attention holds "
        "symmetric KV caches only (a load refuses them unless the model's attention has a parameter of "
        "that name). Quantize the KV cache symmetrically"
    )
