"""The model side of a load: every loadable tensor by name, and the attention modules.

One walk of the module tree, with a plain recursive function instead of ``named_modules``:
on a 37k-module MoE tree the generator chain of ``named_modules`` (and ``isinstance`` on
``Parameter`` subclasses, which runs a Python-level ``__instancecheck__``) cost more than
copying the weights. The attention modules are read off the resulting table.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import NamedTuple

import torch

from kvcore._names import SCALE_NAMES
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


_make_target = functools.partial(tuple.__new__, Target)
"""``Target`` from a tuple of its fields: a C-level call instead of ``Target._make``'s Python-level
one and its arity check (every caller passes all 7 fields): together with the other two such
builders, 3-4 % of the (b) load of 36,951 tensors (``make bench``);
tests/core/test_quick_careful.py checks it builds what ``_make`` builds."""


def model_targets(model: torch.nn.Module) -> dict[str, Target]:
    """Parameters and persistent buffers by qualified name; tied tensors appear under each name.

    The order is ``named_modules(remove_duplicate=False)``'s, each module's parameters
    before its buffers.
    """
    targets: dict[str, Target] = {}
    _visit(targets, "", model)
    return targets


def _visit(targets: dict[str, Target], module_name: str, module: torch.nn.Module) -> None:
    """Add ``module``'s tensors to ``targets``, then its children's, depth first."""
    # Through __dict__: nn.Module defines __getattr__, which slows every attribute read.
    own = module.__dict__
    prefix = f"{module_name}." if module_name else ""
    for attr, param in own["_parameters"].items():
        if param is not None:
            scale = attr in _SCALE_SET and _is_scale_param(param)
            loader = getattr(param, "weight_loader", None)
            name = prefix + attr
            targets[name] = _make_target((name, param, module_name, module, attr, loader, scale))
    if own["_buffers"]:
        skipped = own["_non_persistent_buffers_set"]
        for attr, buffer in own["_buffers"].items():
            if buffer is not None and attr not in skipped:
                scale = attr in _SCALE_SET and _is_scale_param(buffer)
                loader = getattr(buffer, "weight_loader", None)
                name = prefix + attr
                targets[name] = _make_target((name, buffer, module_name, module, attr, loader, scale))
    for child_name, child in own["_modules"].items():
        if child is not None:
            _visit(targets, prefix + child_name, child)


def attention_modules(targets: Mapping[str, Target]) -> dict[str, torch.nn.Module]:
    """Modules that own a ``KVCacheScaleParameter`` named like a KV-cache scale, from ``targets``.

    Each module appears once, under its first name (as in ``named_modules()``): deriving
    them from the table ``model_targets`` built spares a second walk of the model.
    """
    found: dict[int, tuple[str, torch.nn.Module]] = {}
    for target in [t for t in targets.values() if t.is_kv_scale]:
        module = target.module
        # A parameter, not a buffer, and the first name the module is reached under.
        if id(module) not in found and module._parameters.get(target.attr) is target.tensor:
            found[id(module)] = (target.module_name, module)
    return dict(found.values())
