"""``Attention``: the module that owns a layer's KV-cache scales."""

from __future__ import annotations

import operator
from collections.abc import Callable

import torch

from kvcore._names import KV_CACHE_DTYPES, SCALE_NAMES
from kvcore._scale_param import KVCacheScaleParameter

__all__ = ["KV_CACHE_DTYPES", "SCALE_NAMES", "Attention"]



class Attention(torch.nn.Module):
    """Holds ``k_scale``, ``v_scale``, ``q_scale`` and ``prob_scale`` for one attention layer.

    Place it beside the projections (``...self_attn.attn``) so that checkpoint names such as
    ``...self_attn.k_proj.output_scale`` map onto ``...self_attn.attn.k_scale``. After
    ``kvcore.load`` each scale is a float32 scalar, or a ``(num_kv_heads,)`` tensor when the
    checkpoint is per-head. ``num_heads`` / ``num_kv_heads`` are this tensor-parallel rank's.

    ``kv_cache_dtype``: ``"auto"`` (not quantized), ``"fp8"`` (= ``"fp8_e4m3"``),
    ``"fp8_e5m2"`` or ``"nvfp4"``. ``use_mla=True`` marks an attention whose cache holds an MLA
    latent and rope key together (DeepSeek-V2/V3, Kimi): ``k_scale`` is that cache's one scale
    and ``v_scale`` equals it.
    """

    k_scale: KVCacheScaleParameter
    v_scale: KVCacheScaleParameter
    q_scale: KVCacheScaleParameter
    prob_scale: KVCacheScaleParameter

    def __init__(
        self,
        num_heads: int,
        head_size: int,
        num_kv_heads: int | None = None,
        *,
        kv_cache_dtype: str = "auto",
        use_mla: bool = False,
    ) -> None:
        super().__init__()
        if kv_cache_dtype not in KV_CACHE_DTYPES:
            raise ValueError(
                f"unknown kv_cache_dtype {kv_cache_dtype!r}; use one of {', '.join(KV_CACHE_DTYPES)}"
            )
        self.num_heads = _positive("num_heads", num_heads)
        self.head_size = _positive("head_size", head_size)
        self.num_kv_heads = self.num_heads if num_kv_heads is None else _positive("num_kv_heads", num_kv_heads)
        self.kv_cache_dtype = kv_cache_dtype
        self.use_mla = bool(use_mla)
        for name in SCALE_NAMES:
            self.register_parameter(name, KVCacheScaleParameter())

    def process_weights_after_loading(self) -> None:
        """Apply kvcore's rules for missing scales, after a loader other than ``kvcore.load``.

        ``kvcore.load`` does this itself. After ``AutoWeightsLoader`` (or any loader that
        wrote some scales through their ``weight_loader``), call it once per module: a scale
        still holding the ``-1.0`` sentinel counts as missing.
        """
        from kvcore._loading.finalise import finalise_all, loaded_scales
        from kvcore._meaning import ScaleMeaning

        finalise_all({type(self).__name__: self}, {type(self).__name__: loaded_scales(self)}, ScaleMeaning())

    def _apply(self, fn: Callable[[torch.Tensor], torch.Tensor], recurse: bool = True) -> Attention:
        """Move the scales with the module, but keep them float32 through ``.to(dtype)``/``.half()``.

        A kernel needs the calibrated value; rounding it through bf16 loses up to 0.4 %.
        """
        scales = {name: p for name, p in self._parameters.items() if name in SCALE_NAMES and p is not None}
        for name in scales:
            self._parameters[name] = None
        try:
            super()._apply(fn, recurse)  # type: ignore[no-untyped-call]  # torch leaves _apply untyped
        finally:
            self._parameters.update(scales)
        for param in scales.values():
            device = fn(param.data).device
            if device != param.device:
                param.data = param.data.to(device)
        return self

    def extra_repr(self) -> str:
        return (
            f"num_heads={self.num_heads}, head_size={self.head_size}, "
            f"num_kv_heads={self.num_kv_heads}, kv_cache_dtype={self.kv_cache_dtype!r}"
            + (", use_mla=True" if self.use_mla else "")
        )


def _positive(name: str, value: object) -> int:
    """``value`` as an int of at least 1, or ``ValueError``: a layer with no heads holds no cache."""
    try:
        number = operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        number = 0
    if isinstance(value, bool) or number < 1:
        raise ValueError(f"Attention({name}={value!r}): {name} must be a positive integer")
    return number
