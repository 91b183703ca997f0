"""``KVCacheScaleParameter``: a float32 scalar parameter with a strict weight loader."""

from __future__ import annotations

import torch

from kvcore._errors import WeightLoadError

__all__ = ["NOT_LOADED", "KVCacheScaleParameter"]

NOT_LOADED = -1.0
"""The sentinel a scale holds until a checkpoint value (or a default) is written."""


class KVCacheScaleParameter(torch.nn.Parameter):
    """A KV-cache scale: a 0-dim float32 parameter holding ``-1.0`` until loaded.

    ``requires_grad`` is always ``False``. :meth:`weight_loader` accepts any tensor with
    exactly one element and stores it as a 0-dim float32 value.
    """

    # ``requires_grad`` is accepted because torch's deepcopy calls ``type(p)(data, requires_grad)``.
    def __new__(cls, data: torch.Tensor | None = None, requires_grad: bool = False) -> KVCacheScaleParameter:  # noqa: ARG004
        if data is None:
            data = torch.tensor(NOT_LOADED, dtype=torch.float32)
        return super().__new__(cls, data, requires_grad=False)

    def __repr__(self) -> str:
        return f"KVCacheScaleParameter({self.data.tolist()!r})"

    @staticmethod
    def weight_loader(param: torch.nn.Parameter, loaded_weight: torch.Tensor) -> None:
        """Store a one-element ``loaded_weight`` in ``param`` as a 0-dim float32 value."""
        if loaded_weight.numel() != 1:
            raise WeightLoadError(
                f"a KV-cache scale takes a tensor with exactly one element, got shape "
                f"{tuple(loaded_weight.shape)}; per-head scales load through kvcore.load"
            )
        value = loaded_weight.detach().reshape(()).to(device=param.device, dtype=torch.float32)
        param.data = value.clone()
