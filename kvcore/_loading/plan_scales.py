"""Planning a KV-cache scale: read it (it is small), check it, and take this rank's part."""

from __future__ import annotations

import torch

from kvcore._checkpoint.safetensors import TensorInfo, read_tensor
from kvcore._errors import WeightLoadError
from kvcore._loading.parallel import Parallel, rank_scale
from kvcore._loading.targets import Target
from kvcore._names import ScaleValue
from kvcore._scale_param import check_scale_value

__all__ = ["MAX_SCALE_VALUES", "check_zero_point", "plan_scale", "read_scale", "where"]


def where(info: TensorInfo, target: str) -> str:
    """How messages name a checkpoint tensor and the parameter it loads into."""
    return f"checkpoint tensor {info.name!r} in {info.path} (loading into {target!r})"


MAX_SCALE_VALUES = 1 << 16
"""A scale has one value or one per head; a bigger tensor is refused before it is read."""


def plan_scale(info: TensorInfo, target: Target, par: Parallel) -> ScaleValue:
    place = where(info, target.name)
    value = read_scale(info, place, getattr(target.module, "num_kv_heads", None))
    return ScaleValue(rank_scale(value, list(info.shape), target, par, place), info.name)


def read_scale(info: TensorInfo, place: str, heads: int | None) -> torch.Tensor:
    """A scale tensor's values, flat float32, once its size, dtype and values are checked.

    ``place`` names it in errors (see :func:`where`); ``heads`` (the KV heads expected) only
    words them. Too big a tensor is refused before it is read.
    """
    if info.numel == 0:  # not even a per-head scale, whatever the attention's head count says
        raise WeightLoadError(
            f"{place} has shape {list(info.shape)}, with no element: a KV-cache scale has one element "
            f"(per-tensor) or one per KV head (num_kv_heads={heads}); re-export the checkpoint"
        )
    if info.numel > MAX_SCALE_VALUES:
        raise WeightLoadError(
            f"{place} has shape {list(info.shape)}: a KV-cache scale has one element (per-tensor) "
            f"or one per KV head (this attention has num_kv_heads={heads}). Re-export the checkpoint"
        )
    if not info.torch_dtype.is_floating_point:
        raise WeightLoadError(
            f"{place} has dtype {info.dtype}; a scale must be floating point. Re-export the checkpoint"
        )
    value = read_tensor(info).to(torch.float32).reshape(-1)
    check_scale_value(value, place)
    return value


def check_zero_point(info: TensorInfo, target: str) -> None:
    value = read_tensor(info)
    if info.numel and bool((value.to(torch.float32) != 0).any()):
        raise WeightLoadError(
            f"{where(info, target)} holds non-zero zero points: the KV cache is asymmetric, "
            "and kvcore loads symmetric KV caches only. Quantize the KV cache symmetrically"
        )
