"""kvcore's shared vocabulary: the scale names, KV-cache dtypes and value types every stage uses.

A leaf module (no kvcore import), so that loading, inspection and the run time can share one
definition without importing one another.
"""

from __future__ import annotations

import dataclasses
import re
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

__all__ = [
    "KV_BIAS_NAMES",
    "KV_CACHE_DTYPES",
    "SCALE_NAMES",
    "ZERO_POINT_NAMES",
    "ScaleValue",
    "natural_key",
]

SCALE_NAMES = ("k_scale", "v_scale", "q_scale", "prob_scale")
"""The scales a ``kvcore.Attention`` holds, in the order messages list them."""

ZERO_POINT_NAMES = frozenset({"k_zero_point", "v_zero_point", "q_zero_point"})
"""Asymmetric-quantization tensors: kvcore loads symmetric scales only (all-zero ones are dropped)."""

KV_BIAS_NAMES = frozenset({"k_bias", "v_bias"})
"""ModelOpt's affine KV-cache biases: likewise accepted only when all zero."""

KV_CACHE_DTYPES = ("auto", "fp8", "fp8_e4m3", "fp8_e5m2", "nvfp4")
"""The ``kv_cache_dtype`` values ``kvcore.Attention`` accepts (vLLM's spelling)."""


@dataclasses.dataclass(frozen=True, slots=True)
class ScaleValue:
    """A validated KV-cache scale: float32, flat (one element, or one per KV head)."""

    value: torch.Tensor
    source: str


def natural_key(name: str) -> tuple[object, ...]:
    r"""Sort ``layers.2`` before ``layers.10``.

    ``\d`` matches exactly the characters ``str.isdecimal`` accepts, which ``int`` reads;
    ``isdigit`` would also accept ``'²'``, which ``int`` refuses.
    """
    return tuple(int(part) if part.isdecimal() else part for part in re.split(r"(\d+)", name))
