"""The model side of a load: every loadable tensor by name, and the attention modules.

Both walk the module tree with a plain recursive function instead of ``named_modules``:
on a 37k-module MoE tree the generator chain of ``named_modules`` (and ``isinstance`` on
``Parameter`` subclasses, which runs a Python-level ``__instancecheck__``) cost more than
copying the weights.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch

from kvcore._attention import SCALE_NAMES
from kvcore._scale_param import KVCacheScaleParameter

__all__ = ["Target", "attention_modules", "model_targets"]

Loader = Callable[[torch.Tensor, torch.Tensor], object]
_SCALE_SET = frozenset(SCALE_NAMES)


class Target(NamedTuple):
    """A parameter or persistent buffer, with the module that owns it.

    ``loader`` is the tensor's own ``weight_loader`` (``None`` for a plain copy) and
    ``is_kv_scale`` whether it is a :class:`KVCacheScaleParameter` named like a KV-cache
    scale; both are looked up once here rather than per checkpoint tensor.
    """

    name: str
    tensor: torch.Tensor
    module_name: str
    module: torch.nn.Module
    attr: str
    loader: Loader | None = None
    is_kv_scale: bool = False


def _is_scale_param(value: object) -> bool:
    # issubclass on the type skips Parameter's Python-level __instancecheck__.
    return issubclass(type(value), KVCacheScaleParameter)


def _walk(model: torch.nn.Module, *, unique: bool) -> list[tuple[str, torch.nn.Module]]:
    """``model.named_modules(remove_duplicate=unique)`` as a list, in the same order."""
    found: list[tuple[str, torch.nn.Module]] = []
    seen: set[int] = set()

    def visit(prefix: str, module: torch.nn.Module) -> None:
        if unique:
            if id(module) in seen:
                return
            seen.add(id(module))
        found.append((prefix, module))
        for name, child in module._modules.items():
            if child is not None:
                visit(f"{prefix}.{name}" if prefix else name, child)

    visit("", model)
    return found


def model_targets(model: torch.nn.Module) -> dict[str, Target]:
    """Parameters and persistent buffers by qualified name; tied tensors appear under each name."""
    targets: dict[str, Target] = {}
    for module_name, module in _walk(model, unique=False):
        prefix = f"{module_name}." if module_name else ""
        for attr, param in module._parameters.items():
            if param is not None:
                name = prefix + attr
                scale = attr in SCALE_NAMES and _is_scale_param(param)
                loader = getattr(param, "weight_loader", None)
                targets[name] = Target(name, param, module_name, module, attr, loader, scale)
        if not module._buffers:
            continue
        skipped = module._non_persistent_buffers_set
        for attr, buffer in module._buffers.items():
            if buffer is not None and attr not in skipped:
                name = prefix + attr
                scale = attr in SCALE_NAMES and _is_scale_param(buffer)
                loader = getattr(buffer, "weight_loader", None)
                targets[name] = Target(name, buffer, module_name, module, attr, loader, scale)
    return targets


def attention_modules(model: torch.nn.Module) -> dict[str, torch.nn.Module]:
    """Modules that own at least one ``KVCacheScaleParameter`` named like a KV-cache scale."""
    return {
        name: module
        for name, module in _walk(model, unique=True)
        # The set intersection (in C) rules out almost every module before any type check.
        if _SCALE_SET & module._parameters.keys()
        and any(_is_scale_param(module._parameters.get(s)) for s in SCALE_NAMES)
    }
