"""``AutoWeightsLoader``: vLLM's recursive, per-parameter loader, with kvcore's errors."""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator

import torch

from kvcore._errors import WeightLoadError
from kvcore._mapper import WeightsMapper
from kvcore._plan import SKIP_SUBSTRS

__all__ = ["AutoWeightsLoader", "default_weight_loader"]

Weights = Iterable[tuple[str, torch.Tensor]]


def default_weight_loader(param: torch.Tensor, loaded_weight: torch.Tensor) -> None:
    """Copy ``loaded_weight`` into ``param``; one-element tensors fit any one-element shape."""
    with torch.no_grad():
        if param.numel() == 1 and loaded_weight.numel() == 1:
            param.data.copy_(loaded_weight.reshape(param.shape))
        elif param.shape != loaded_weight.shape:
            raise WeightLoadError(
                f"cannot load a tensor of shape {list(loaded_weight.shape)} into a parameter of "
                f"shape {list(param.shape)}"
            )
        else:
            param.data.copy_(loaded_weight)


class AutoWeightsLoader:
    """Load ``(name, tensor)`` pairs into ``module`` by walking its tree, like vLLM's loader.

    Each tensor goes to the parameter (or persistent buffer) of the same dotted name; a
    parameter's own ``weight_loader(param, tensor)`` is used when it has one, and a child
    module's own ``load_weights(weights)`` when it has one. Names starting with one of
    ``skip_prefixes`` or containing one of ``skip_substrs`` are skipped; unexpected names
    matching ``ignore_unexpected_prefixes`` / ``ignore_unexpected_suffixes`` are ignored;
    any other unexpected name raises ``WeightLoadError``.
    """

    def __init__(
        self,
        module: torch.nn.Module,
        *,
        skip_prefixes: Iterable[str] = (),
        skip_substrs: Iterable[str] = (),
        ignore_unexpected_prefixes: Iterable[str] = (),
        ignore_unexpected_suffixes: Iterable[str] = (),
    ) -> None:
        self.module = module
        self.skip_prefixes = list(skip_prefixes or ())
        self.skip_substrs = [*(skip_substrs or ()), *SKIP_SUBSTRS]
        self.ignore_unexpected_prefixes = list(ignore_unexpected_prefixes or ())
        self.ignore_unexpected_suffixes = list(ignore_unexpected_suffixes or ())

    def load_weights(self, weights: Weights, *, mapper: WeightsMapper | None = None) -> set[str]:
        """Load ``weights`` (renamed by ``mapper`` first); return the qualified names loaded."""
        if mapper is not None:
            weights = mapper.apply(weights)
        kept = ((name, w) for name, w in weights if not self._can_skip(name))
        return set(self._load_module("", self.module, kept))

    def _can_skip(self, qualname: str) -> bool:
        return any(qualname.startswith(p) for p in self.skip_prefixes) or any(
            s in qualname for s in self.skip_substrs
        )

    def _can_ignore_unexpected(self, qualname: str) -> bool:
        return any(qualname.startswith(p) for p in self.ignore_unexpected_prefixes) or any(
            qualname.endswith(s) for s in self.ignore_unexpected_suffixes
        )

    def _load_module(self, base_prefix: str, module: torch.nn.Module, weights: Weights) -> Iterator[str]:
        if module is not self.module:
            custom = getattr(module, "load_weights", None)
            if callable(custom):
                loaded = custom(weights)
                yield from (_qualname(base_prefix, name) for name in loaded or ())
                return
        children = dict(module.named_children())
        tensors = _loadable_tensors(module)
        for child_prefix, child_weights in _groupby_prefix(weights):
            prefix = _qualname(base_prefix, child_prefix)
            if child_prefix in children:
                if not self._can_skip(prefix + "."):
                    yield from self._load_module(prefix, children[child_prefix], child_weights)
            elif child_prefix in tensors:
                if not self._can_skip(prefix):
                    yield from self._load_param(prefix, tensors[child_prefix], child_weights)
            elif not self._skippable_unknown(prefix):
                raise WeightLoadError(
                    f"there is no module or parameter named {prefix!r} in "
                    f"{type(self.module).__name__}; pass a mapper that renames it, or "
                    "ignore_unexpected_prefixes/suffixes to ignore it"
                )

    def _skippable_unknown(self, prefix: str) -> bool:
        return any(
            check(name)
            for check in (self._can_skip, self._can_ignore_unexpected)
            for name in (prefix + ".", prefix)
        )

    def _load_param(self, base_prefix: str, param: torch.Tensor, weights: Weights) -> Iterator[str]:
        for weight_name, weight in weights:
            qualname = _qualname(base_prefix, weight_name)
            if self._can_skip(qualname):
                continue
            if weight_name:
                if self._can_ignore_unexpected(qualname):
                    continue
                raise WeightLoadError(
                    f"attempted to load nested weight {qualname!r} into the single parameter "
                    f"{base_prefix!r}"
                )
            loader = getattr(param, "weight_loader", default_weight_loader)
            loader(param, weight)
            yield qualname


def _qualname(prefix: str, rest: str) -> str:
    if not prefix:
        return rest
    if not rest:
        return prefix
    return f"{prefix}.{rest}"


def _loadable_tensors(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    tensors: dict[str, torch.Tensor] = {n: p for n, p in module._parameters.items() if p is not None}
    for name, buffer in module._buffers.items():
        if buffer is not None and name not in module._non_persistent_buffers_set:
            tensors[name] = buffer
    return tensors


def _groupby_prefix(weights: Weights) -> Iterator[tuple[str, Iterator[tuple[str, torch.Tensor]]]]:
    parts = ((name.split(".", 1), w) for name, w in weights)
    for prefix, group in itertools.groupby(parts, key=lambda item: item[0][0]):
        yield prefix, (("" if len(p) == 1 else p[1], w) for p, w in group)
