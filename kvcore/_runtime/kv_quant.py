"""Using the scales: quantize keys/values into an fp8 KV cache and back (``kvcore.quantize_kv``).

The convention is the one every format uses (``docs/formats.md``): ``scale = amax / 448`` is a
multiplier, ``x_q = clamp(x / scale, ±max)`` stored as fp8, ``x ≈ x_q * scale``. The arithmetic
is float32 whatever the input dtype, as a kernel's should be.
"""

from __future__ import annotations

import torch

from kvcore._errors import KvcoreError, WeightLoadError
from kvcore._scale_param import check_scale_value

__all__ = [
    "FP8_DTYPES",
    "KvCacheDtypeError",
    "cache_dtype",
    "dequantize_kv",
    "dequantize_shaped",
    "quantize_kv",
    "quantize_shaped",
    "shaped_scale",
]

FP8_DTYPES: dict[str, torch.dtype] = {
    "fp8": torch.float8_e4m3fn,
    "fp8_e4m3": torch.float8_e4m3fn,
    "fp8_e5m2": torch.float8_e5m2,
}
"""The ``kv_cache_dtype`` values that quantize, and the torch dtype each stores."""


class KvCacheDtypeError(KvcoreError, ValueError):
    """A ``kv_cache_dtype`` kvcore cannot quantize to (``"auto"``, or an unknown name)."""


def cache_dtype(kv_cache_dtype: str) -> torch.dtype:
    """The fp8 torch dtype of ``kv_cache_dtype``; ``KvCacheDtypeError`` for ``"auto"`` or an unknown one."""
    dtype = FP8_DTYPES.get(kv_cache_dtype) if isinstance(kv_cache_dtype, str) else None
    if dtype is not None:
        return dtype
    if kv_cache_dtype == "auto":
        raise KvCacheDtypeError(
            "kv_cache_dtype='auto' means an unquantized KV cache (the model's dtype): there is nothing "
            f"to quantize to. Use one of {', '.join(map(repr, FP8_DTYPES))}"
        )
    raise KvCacheDtypeError(f"unknown kv_cache_dtype {kv_cache_dtype!r}; use one of {', '.join(map(repr, FP8_DTYPES))}")


def quantize_kv(
    x: torch.Tensor,
    scale: torch.Tensor | float,
    kv_cache_dtype: str = "fp8",
    *,
    head_dim: int = -3,
) -> torch.Tensor:
    """Keys or values as an fp8 KV cache stores them: ``clamp(x / scale, ±max).to(fp8)``.

    ``kv_cache_dtype``: ``"fp8"`` or ``"fp8_e4m3"`` give ``torch.float8_e4m3fn`` (max 448),
    ``"fp8_e5m2"`` gives ``torch.float8_e5m2`` (max 57344); ``"auto"`` (no quantization) or
    any other name raises ``KvCacheDtypeError`` (a ``kvcore.KvcoreError`` and a ``ValueError``).

    ``scale``: a float, a one-element tensor, or one value per KV head (``(H_kv,)``, or any
    shape with ``H_kv`` elements such as compressed-tensors' ``(H_kv, 1, 1)``), broadcast along
    dimension ``head_dim`` of ``x`` (``-3`` fits ``[batch, heads, tokens, head_size]``). It
    must be finite and positive, else ``kvcore.WeightLoadError`` naming the value.

    The division and the clamp are float32. ``±inf`` in ``x`` clamps to ``±max``; ``NaN``
    (which the fp8 formats could store, and attention would spread) is stored as ``0``, so
    the cache never holds NaN or infinity.

    ``fp8_e5m2``: vLLM ignores the checkpoint's scales for an e5m2 cache; kvcore applies them
    the same way as for e4m3. The scales were calibrated as ``amax / 448`` (e4m3), so the
    calibrated range lands on ``[-448, 448]``, well inside e5m2's normal range: the relative
    error is e5m2's (2⁻³ at most) either way, ``dequantize_kv`` inverts it with the same
    scale, and values beyond the calibrated amax clip only past 128 times it. Pass
    ``scale=1.0`` for vLLM's unscaled e5m2 cache.
    """
    fp8 = cache_dtype(kv_cache_dtype)
    _check_input(x, "x", floating=True)
    if x.dtype in _FP8_SET:
        raise WeightLoadError(f"x is already {x.dtype}; quantize_kv takes unquantized keys or values")
    return quantize_shaped(x, shaped_scale(scale, x, head_dim, "quantize_kv"), fp8)


def dequantize_kv(
    x_q: torch.Tensor,
    scale: torch.Tensor | float,
    dtype: torch.dtype,
    *,
    head_dim: int = -3,
) -> torch.Tensor:
    """What attention reads from an fp8 KV cache: ``(x_q.to(float32) * scale).to(dtype)``.

    ``x_q`` is a ``torch.float8_e4m3fn`` or ``torch.float8_e5m2`` tensor (``quantize_kv``'s
    output); ``scale`` and ``head_dim`` as for :func:`quantize_kv` (the same values: the cache
    stores ``x / scale``). The product is float32, rounded once to ``dtype``.
    """
    _check_input(x_q, "x_q", floating=False)
    if x_q.dtype not in _FP8_SET:
        raise WeightLoadError(
            f"x_q has dtype {x_q.dtype}; dequantize_kv takes an fp8 tensor "
            "(torch.float8_e4m3fn or torch.float8_e5m2), as quantize_kv returns"
        )
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise WeightLoadError(f"dtype must be a floating-point torch.dtype, got {dtype!r}")
    return dequantize_shaped(x_q, shaped_scale(scale, x_q, head_dim, "dequantize_kv"), dtype)


def quantize_shaped(x: torch.Tensor, scale: torch.Tensor, fp8: torch.dtype) -> torch.Tensor:
    """``quantize_kv`` with a checked float32 ``scale`` that already broadcasts against ``x``."""
    limit = torch.finfo(fp8).max
    scaled = x.to(torch.float32) / scale
    scaled = torch.nan_to_num(scaled, nan=0.0, posinf=limit, neginf=-limit)
    return scaled.clamp_(-limit, limit).to(fp8)


def dequantize_shaped(x_q: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``dequantize_kv`` with a checked float32 ``scale`` that already broadcasts against ``x_q``."""
    return (x_q.to(torch.float32) * scale).to(dtype)


_FP8_SET = frozenset(FP8_DTYPES.values())


def _check_input(x: object, what: str, *, floating: bool) -> None:
    if not isinstance(x, torch.Tensor):
        raise WeightLoadError(f"{what} must be a torch.Tensor, got {type(x).__name__}")
    if floating and not x.dtype.is_floating_point:
        raise WeightLoadError(f"{what} has dtype {x.dtype}; keys and values must be floating point")


def shaped_scale(scale: torch.Tensor | float, x: torch.Tensor, head_dim: int, caller: str) -> torch.Tensor:
    """``scale`` as float32 on ``x``'s device, shaped to broadcast along ``head_dim``; checked."""
    if isinstance(scale, bool) or not isinstance(scale, (int, float, torch.Tensor)):
        raise WeightLoadError(f"{caller}: scale must be a float or a tensor, got {type(scale).__name__}")
    value = torch.as_tensor(scale).detach().to(device=x.device, dtype=torch.float32).reshape(-1)
    if value.numel() == 1:
        shaped = value.reshape(())
    else:
        if not -x.dim() <= head_dim < x.dim():
            raise WeightLoadError(
                f"{caller}: head_dim={head_dim} is not a dimension of a tensor of shape {list(x.shape)}"
            )
        heads = x.shape[head_dim]
        if value.numel() != heads:
            raise WeightLoadError(
                f"{caller}: a per-head scale has {value.numel()} values but dimension {head_dim} of the "
                f"tensor (shape {list(x.shape)}) holds {heads} KV heads; pass one value per KV head, "
                "or one value for all"
            )
        view = [1] * x.dim()
        view[head_dim] = heads
        shaped = value.reshape(view)
    check_scale_value(value, f"{caller}: the scale", advice="It is amax / 448 of what the cache holds")
    return shaped
