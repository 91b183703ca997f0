"""The model side of a load: every loadable tensor by name, and the attention modules."""

from __future__ import annotations

import dataclasses

import torch

from kvcore._attention import SCALE_NAMES
from kvcore._scale_param import KVCacheScaleParameter

__all__ = ["Target", "attention_modules", "model_targets"]


@dataclasses.dataclass(frozen=True, slots=True)
class Target:
    """A parameter or persistent buffer, with the module that owns it."""

    name: str
    tensor: torch.Tensor
    module_name: str
    module: torch.nn.Module
    attr: str

    @property
    def is_kv_scale(self) -> bool:
        return self.attr in SCALE_NAMES and isinstance(self.tensor, KVCacheScaleParameter)


def model_targets(model: torch.nn.Module) -> dict[str, Target]:
    """Parameters and persistent buffers by qualified name; tied tensors appear under each name."""
    targets: dict[str, Target] = {}
    for module_name, module in model.named_modules(remove_duplicate=False):
        prefix = f"{module_name}." if module_name else ""
        for attr, param in module._parameters.items():
            if param is not None:
                targets[prefix + attr] = Target(prefix + attr, param, module_name, module, attr)
        for attr, buffer in module._buffers.items():
            if buffer is not None and attr not in module._non_persistent_buffers_set:
                targets[prefix + attr] = Target(prefix + attr, buffer, module_name, module, attr)
    return targets


def attention_modules(model: torch.nn.Module) -> dict[str, torch.nn.Module]:
    """Modules that own at least one ``KVCacheScaleParameter`` named like a KV-cache scale."""
    return {
        name: module
        for name, module in model.named_modules()
        if any(isinstance(module._parameters.get(s), KVCacheScaleParameter) for s in SCALE_NAMES)
    }
