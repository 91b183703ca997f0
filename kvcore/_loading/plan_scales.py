"""Planning a KV-cache scale: read it (it is small), check it, and take this rank's part."""

from __future__ import annotations

import torch

from kvcore._checkpoint.decode import FLOAT_DTYPES
from kvcore._checkpoint.safetensors import TensorInfo, read_tensor
from kvcore._errors import WeightLoadError
from kvcore._loading.parallel import Parallel, rank_scale
from kvcore._loading.targets import Target
from kvcore._names import ScaleValue
from kvcore._scale_param import check_scale_value
from kvcore._scale_rules import MAX_SCALE_VALUES, dtype_problem, offset_problem, size_problem

__all__ = ["MAX_SCALE_VALUES", "check_zero_point", "plan_scale", "read_scale", "where"]


def where(info: TensorInfo, target: str) -> str:
    """How messages name a checkpoint tensor and the parameter it loads into."""
    return f"checkpoint tensor {info.name!r} in {info.path} (loading into {target!r})"


def plan_scale(info: TensorInfo, target: Target, par: Parallel) -> ScaleValue:
    place = where(info, target.name)
    value = read_scale(info, place, getattr(target.module, "num_kv_heads", None))
    return ScaleValue(rank_scale(value, list(info.shape), target, par, place), info.name)


def read_scale(info: TensorInfo, place: str, heads: int | None) -> torch.Tensor:
    """A scale tensor's values, flat float32, once its size, dtype and values are checked.

    ``place`` names it in errors (see :func:`where`); ``heads`` (the KV heads expected) only
    words them. Too big a tensor is refused before it is read. The rules are
    ``kvcore._scale_rules``', which ``kvcore inspect`` applies too.
    """
    problem = size_problem(info.shape, heads)
    if problem is not None:
        raise WeightLoadError(f"{place} {problem}; re-export the checkpoint")
    problem = dtype_problem(info.dtype, info.dtype in FLOAT_DTYPES)
    if problem is not None:
        raise WeightLoadError(f"{place} {problem}. Re-export the checkpoint")
    value = read_tensor(info).to(torch.float32).reshape(-1)
    check_scale_value(value, place)
    return value


def check_zero_point(info: TensorInfo, target: str) -> None:
    problem = offset_problem(info.name, read_tensor(info).to(torch.float32).reshape(-1).tolist())
    if problem is not None:
        raise WeightLoadError(f"{where(info, target)} {problem}")
