"""``KVCacheScaleParameter``: a float32 scalar parameter with a strict weight loader."""

from __future__ import annotations

import torch

from kvcore._errors import WeightLoadError
from kvcore._scale_rules import scale_problem

__all__ = ["DEFAULTED", "NOT_LOADED", "KVCacheScaleParameter", "check_scale_value", "load_scale", "store_scale"]

NOT_LOADED = -1.0
"""The sentinel a scale holds until a checkpoint value (or a default) is written."""
DEFAULTED = "_kvcore_defaulted"
"""Attribute finalisation sets on a scale it filled with a default, and a loader clears."""


class KVCacheScaleParameter(torch.nn.Parameter):
    """A KV-cache scale: a 0-dim float32 parameter holding ``-1.0`` until loaded.

    ``requires_grad`` is always ``False``. :meth:`weight_loader` accepts any tensor with
    exactly one element holding a finite positive value and stores it as a 0-dim float32
    value, in place (engines may hold on to the scale's memory).
    """

    # ``requires_grad`` is accepted because torch's deepcopy calls ``type(p)(data, requires_grad)``.
    def __new__(cls, data: torch.Tensor | None = None, requires_grad: bool = False) -> KVCacheScaleParameter:  # noqa: ARG004
        if data is None:
            data = torch.tensor(NOT_LOADED, dtype=torch.float32)
        return super().__new__(cls, data, requires_grad=False)

    def __repr__(self) -> str:  # type: ignore[override]  # the value alone, without torch's tensor_contents
        return f"KVCacheScaleParameter({self.data.tolist()!r})"

    @staticmethod
    def weight_loader(param: torch.nn.Parameter, loaded_weight: torch.Tensor) -> None:
        """Store a one-element ``loaded_weight`` in ``param`` as a 0-dim float32 value.

        Raises :class:`kvcore.WeightLoadError` for any other shape, and for a NaN, infinite,
        zero or negative value (a quantization tool's uninitialised scale).
        """
        if loaded_weight.numel() != 1:
            raise WeightLoadError(
                f"a KV-cache scale takes a tensor with exactly one element, got shape "
                f"{tuple(loaded_weight.shape)}; per-head scales load through kvcore.load or kvcore.AutoWeightsLoader"
            )
        value = loaded_weight.detach().reshape(()).to(dtype=torch.float32)
        check_scale_value(value, "the loaded KV-cache scale")
        store_scale(param, value)


def load_scale(param: torch.Tensor, loaded: torch.Tensor, heads: int | None, where: str) -> None:
    """Store a per-tensor (one element) or per-head (``heads`` elements) scale, checked, as float32."""
    if loaded.numel() != 1 and (loaded.numel() != heads or not heads):
        raise WeightLoadError(
            f"{where} has shape {list(loaded.shape)}: a KV-cache scale has one element (per-tensor) "
            f"or num_kv_heads={heads} elements (per-head). Build the attention with this rank's "
            "number of KV heads, or re-export the checkpoint"
        )
    value = loaded.detach().to(torch.float32).reshape(-1)
    check_scale_value(value, where)
    store_scale(param, value.reshape(()) if value.numel() == 1 else value)


UNINITIALISED = "The quantization tool probably saved an uninitialised scale: re-export the checkpoint"


def check_scale_value(value: torch.Tensor, what: str, *, advice: str = UNINITIALISED) -> None:
    """Raise ``WeightLoadError`` unless every element of float32 ``value`` is finite and positive.

    The message names ``what``, the problem and the values, then gives ``advice``.
    """
    problem = scale_problem(value.reshape(-1).tolist())  # the rule kvcore inspect applies too
    if problem is not None:
        raise WeightLoadError(f"{what} {problem}. {advice}")


def store_scale(param: torch.Tensor, value: torch.Tensor) -> None:
    """Write float32 ``value`` into ``param``: in place when the shape allows, so its memory stays."""
    with torch.no_grad():
        if param.shape == value.shape and param.dtype == torch.float32:
            param.data.copy_(value)
        else:
            param.data = value.to(device=param.device, dtype=torch.float32).clone()
    if getattr(param, DEFAULTED, False):
        setattr(param, DEFAULTED, False)
