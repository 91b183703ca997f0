"""``AutoWeightsLoader``: vLLM's recursive, per-parameter loader, with kvcore's naming and checks."""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator
from typing import NamedTuple

import torch

from kvcore._errors import WeightLoadError
from kvcore._loading.finalise import finalise_all, loaded_scales
from kvcore._loading.naming import (
    ADD_ATTENTION,
    ATTENTION_LEAVES,
    AnyShard,
    Naming,
    accepts_shard,
    call_loader,
    shard_loader_error,
)
from kvcore._loading.plan import SKIP_SUBSTRS
from kvcore._loading.targets import attention_modules, model_targets
from kvcore._mapper import WeightsMapper
from kvcore._meaning import ScaleMeaning
from kvcore._names import KV_BIAS_NAMES, ZERO_POINT_NAMES
from kvcore._scale_param import KVCacheScaleParameter, load_scale

__all__ = ["AutoWeightsLoader", "default_weight_loader"]

Weights = Iterable[tuple[str, torch.Tensor]]
OFFSETS = ZERO_POINT_NAMES | KV_BIAS_NAMES
"""Leaves of zero points and ModelOpt's affine biases: all-zero ones are dropped, others refused."""


class _Item(NamedTuple):
    """A weight on its way down the module tree: tensor, shard id, name before packing, name as given."""

    tensor: torch.Tensor
    shard: AnyShard | None
    unpacked: str
    source: str


Items = Iterable[tuple[str, _Item]]


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
    module's own ``load_weights(weights)`` when it has one. Names are resolved as
    ``kvcore.load`` resolves them: the mapper, then KV-cache scales to the one
    ``kvcore.Attention`` below ``<P>`` when ``<P>.attn`` is none, then packing (the module's
    ``packed_modules_mapping`` and the mapper's ``orig_to_new_stacked``; a packed tensor goes
    through ``weight_loader(param, tensor, shard_id)``). All-zero zero points and affine biases
    are dropped and non-zero ones refused. Names starting with one of ``skip_prefixes`` or
    containing one of ``skip_substrs`` are skipped; unexpected names matching
    ``ignore_unexpected_prefixes`` / ``ignore_unexpected_suffixes`` are ignored; any other
    unexpected name raises ``WeightLoadError``, as does a ``weight_loader`` that raises (naming
    the parameter and the loader, its exception chained). Afterwards every ``kvcore.Attention``
    below ``module`` is finalised (``Attention.process_weights_after_loading``), all of them
    before the first warning: under ``python -W error`` no attention keeps its ``-1.0`` sentinel.
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
        """Load ``weights`` (renamed by ``mapper`` first); return the names of the tensors written."""
        targets = model_targets(self.module)
        naming = Naming(mapper if mapper is not None else WeightsMapper(), self.module, targets)
        kept = ((name, item) for name, item in _resolved(weights, naming) if not self._can_skip(name))
        loaded = set(self._load_module("", self.module, kept))
        attention = attention_modules(targets)
        scales = {name: loaded_scales(module) for name, module in attention.items()}
        meaning = mapper.scale_meaning if mapper is not None else None
        finalise_all(attention, scales, meaning or ScaleMeaning())
        return loaded

    def _can_skip(self, qualname: str) -> bool:
        return any(qualname.startswith(p) for p in self.skip_prefixes) or any(
            s in qualname for s in self.skip_substrs
        )

    def _can_ignore_unexpected(self, qualname: str) -> bool:
        return any(qualname.startswith(p) for p in self.ignore_unexpected_prefixes) or any(
            qualname.endswith(s) for s in self.ignore_unexpected_suffixes
        )

    def _load_module(self, base_prefix: str, module: torch.nn.Module, weights: Items) -> Iterator[str]:
        if module is not self.module:
            custom = getattr(module, "load_weights", None)
            if callable(custom):
                loaded = custom(_as_pairs(base_prefix, weights))
                yield from (_qualname(base_prefix, name) for name in loaded or ())
                return
        children = {name: child for name, child in module._modules.items() if child is not None}  # aliases too
        tensors = _loadable_tensors(module)
        for child_prefix, child_weights in _groupby_prefix(weights):
            prefix = _qualname(base_prefix, child_prefix)
            if child_prefix in children:
                if not self._can_skip(prefix + "."):
                    yield from self._load_module(prefix, children[child_prefix], child_weights)
            elif child_prefix in tensors:
                if not self._can_skip(prefix):
                    yield from self._load_param(prefix, tensors[child_prefix], child_weights, module)
            elif not self._skippable_unknown(prefix):
                raise self._unknown(prefix, child_weights)

    def _unknown(self, prefix: str, weights: Items) -> WeightLoadError:
        """The error for weights under ``prefix``, which names no module or parameter."""
        rest, item = next(iter(weights))
        name = _qualname(prefix, rest)
        model = type(self.module).__name__
        where = f"there is no module or parameter named {prefix!r} in {model} (for {item.source!r})"
        has_attention = any(t.is_kv_scale for t in model_targets(self.module).values())
        if name.rpartition(".")[2] in ATTENTION_LEAVES and not has_attention:
            return WeightLoadError(
                f"{where}: it is a KV-cache scale (as {name!r}) but the model has no kvcore.Attention. "
                f"{ADD_ATTENTION[0].upper()}{ADD_ATTENTION[1:]}, or skip_substrs to leave the scales out"
            )
        return WeightLoadError(
            f"{where}; pass a mapper that renames it, or ignore_unexpected_prefixes/suffixes to ignore it"
        )

    def _skippable_unknown(self, prefix: str) -> bool:
        return any(
            check(name)
            for check in (self._can_skip, self._can_ignore_unexpected)
            for name in (prefix + ".", prefix)
        )

    def _load_param(
        self, base_prefix: str, param: torch.Tensor, weights: Items, owner: torch.nn.Module
    ) -> Iterator[str]:
        for weight_name, item in weights:
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
            loader = getattr(param, "weight_loader", None)
            where = f"tensor {item.source!r} (loading into {qualname!r})"
            if loader is KVCacheScaleParameter.weight_loader:  # kvcore's own: per-head too, errors named
                load_scale(param, item.tensor, getattr(owner, "num_kv_heads", None), where)
            elif item.shard is not None:
                if not accepts_shard(loader, item.shard):
                    raise shard_loader_error(qualname, item.unpacked, item.shard)
                call_loader(loader, param, item.tensor, item.shard, where)  # type: ignore[arg-type]
            elif loader is not None:
                call_loader(loader, param, item.tensor, None, where)
            else:
                _load_plain(param, item.tensor, where)
            yield qualname


def _load_plain(param: torch.Tensor, tensor: torch.Tensor, where: str) -> None:
    try:
        default_weight_loader(param, tensor)
    except WeightLoadError as exc:
        raise WeightLoadError(f"{where}: {exc}; the checkpoint was made for a different model config") from exc


def _resolved(weights: Weights, naming: Naming) -> Iterator[tuple[str, _Item]]:
    """Each weight under its model name, with its shard id; dropped ones and all-zero offsets left out."""
    for name, tensor in weights:
        unpacked = naming.unpacked(name)
        if unpacked is None:
            continue
        final, shard = (unpacked, None) if unpacked in naming.targets else naming.resolve_unknown(unpacked)
        if final is None:
            continue
        if final not in naming.targets and final.rpartition(".")[2] in OFFSETS:
            _check_offset(name, tensor)
            continue
        yield final, _Item(tensor, shard, unpacked, name)


def _check_offset(name: str, tensor: torch.Tensor) -> None:
    if tensor.numel() and bool((tensor.detach().to(torch.float32) != 0).any()):
        raise WeightLoadError(
            f"{name!r} holds non-zero values: the KV cache is asymmetric (zero points) or affine "
            "(biases), and kvcore loads symmetric KV caches only. Quantize the KV cache "
            "symmetrically, or load the checkpoint with an engine that supports this scheme"
        )


def _as_pairs(base_prefix: str, weights: Items) -> Iterator[tuple[str, torch.Tensor]]:
    """What a child's own ``load_weights`` receives: names relative to it, before packing."""
    cut = len(base_prefix) + 1 if base_prefix else 0
    for name, item in weights:
        yield (item.unpacked[cut:] if item.shard is not None else name), item.tensor


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


def _groupby_prefix(weights: Items) -> Iterator[tuple[str, Iterator[tuple[str, _Item]]]]:
    parts = ((name.split(".", 1), w) for name, w in weights)
    for prefix, group in itertools.groupby(parts, key=lambda item: item[0][0]):
        yield prefix, (("" if len(p) == 1 else p[1], w) for p, w in group)
