"""From a checkpoint name to the model's: the mapper, then attention anywhere, then packing.

A name the mapper already sends to a model tensor is final. Otherwise, in order:

1. a KV-cache scale (or zero point) mapped to ``<P>.attn.<leaf>`` where ``<P>.attn`` is not a
   ``kvcore.Attention`` goes to the one ``kvcore.Attention`` below ``<P>``, at any depth;
2. MoE experts: the root module's ``packed_experts_mapping`` (see ``_experts``);
3. packing: the mapper's ``orig_to_new_stacked`` rules (substrings, vLLM's form), then the
   root module's ``packed_modules_mapping`` (whole dotted components, nano-vllm's form). The
   first rule that matches names the fused parameter and the shard id it loads as.

Packing comes last, so a KV-cache scale name never becomes ``….qkv_proj.*``.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Mapping
from typing import Any

import torch

from kvcore._errors import WeightLoadError
from kvcore._loading.experts import ExpertPacking, ExpertShard
from kvcore._loading.targets import Target, attention_modules
from kvcore._mapper import ShardId, WeightsMapper
from kvcore._names import SCALE_NAMES, ZERO_POINT_NAMES

__all__ = [
    "AnyShard",
    "ADD_ATTENTION",
    "ATTENTION_LEAVES",
    "LoaderFailed",
    "Naming",
    "Packing",
    "ZERO_POINT_NAMES",
    "accepts_shard",
    "call_loader",
    "loader_args",
    "loader_name",
    "shard_loader_error",
]

ATTENTION_LEAVES = frozenset(SCALE_NAMES) | ZERO_POINT_NAMES
"""Leaves that belong to an attention module: redirected to the one below ``<P>``."""

ADD_ATTENTION = (
    "add one kvcore.Attention per attention layer (kvcore.Attention(num_heads, head_size, "
    "num_kv_heads) beside the projections, at <layer>.self_attn.attn)"
)
"""The fix for KV-cache scales in a model that has no ``kvcore.Attention`` to hold them."""

AnyShard = ShardId | ExpertShard
"""A packed component's shard id, or a fused expert parameter's (shard, expert)."""
Resolved = tuple[str | None, AnyShard | None]


class Packing:
    """Packing rules: ``(key, fused, shard id, whole component?)`` tried in order, first match wins.

    A stacked rule written with a plain target renames (shard id ``None``) or drops
    (fused name ``None``) at this step, as ``WeightsMapper.map_packed`` does.
    """

    def __init__(self, rules: list[tuple[str, str | None, ShardId | None, bool]]) -> None:
        self.rules = rules

    @classmethod
    def of(cls, mapper: WeightsMapper, model: torch.nn.Module) -> Packing:
        stacked = [(key, *_pair(target), False) for key, target in mapper.orig_to_new_stacked.items()]
        own = _packed_modules_mapping(model)
        return cls(stacked + [(key, fused, shard, True) for key, (fused, shard) in own.items()])

    def __bool__(self) -> bool:
        return bool(self.rules)

    def pack(self, name: str) -> Resolved | None:
        """``(fused parameter name, shard id)`` for ``name``, or ``None`` when no rule matches."""
        for key, fused, shard, component in self.rules:
            if not component:
                if key in name:
                    return (None if fused is None else name.replace(key, fused, 1)), shard
                continue
            assert fused is not None
            padded = f".{name}."
            at = padded.find(f".{key}.")
            if at >= 0:
                return (padded[: at + 1] + fused + padded[at + 1 + len(key) :])[1:-1], shard
        return None

    def shards_of(self, parameter: str) -> frozenset[ShardId]:
        """Every shard id the rules load into ``parameter`` (a fused parameter's full set)."""
        padded = f".{parameter}."
        found: set[ShardId] = set()
        for _, fused, shard, component in self.rules:
            if shard is None or fused is None:
                continue
            if (f".{fused}." in padded) if component else (fused in parameter):
                found.add(shard)
        return frozenset(found)


def _pair(target: tuple[str, ShardId] | str | None) -> tuple[str | None, ShardId | None]:
    return target if isinstance(target, tuple) else (target, None)


def _packed_modules_mapping(model: torch.nn.Module) -> Mapping[str, tuple[str, ShardId]]:
    mapping = getattr(model, "packed_modules_mapping", None)
    if mapping is None:
        return {}
    where = f"{type(model).__name__}.packed_modules_mapping"
    if not isinstance(mapping, Mapping):
        raise WeightLoadError(f"{where} must be a dict, not {type(mapping).__name__}")
    checked = {}
    for key, target in mapping.items():
        try:
            fused, shard = target
        except (TypeError, ValueError):
            fused, shard = None, None
        if not isinstance(key, str) or not isinstance(fused, str) or not isinstance(shard, int | str):
            raise WeightLoadError(
                f"{where}[{key!r}] = {target!r}: each entry maps a checkpoint module name to a "
                "(fused module name, shard id) pair, such as 'k_proj': ('qkv_proj', 'k')"
            )
        checked[key] = (fused, shard)
    return checked


class Naming:
    """Resolve checkpoint names against one model's tensors (``targets``)."""

    def __init__(self, mapper: WeightsMapper, model: torch.nn.Module, targets: Mapping[str, Target]) -> None:
        # A subclass may map names its own way: its map_name is then the name before packing.
        overridden = type(mapper).map_name is not WeightsMapper.map_name
        self.unpacked: Callable[[str], str | None] = mapper.map_name if overridden else mapper._map_unpacked
        self.packing = Packing.of(mapper, model)
        self.experts = ExpertPacking.of(model)
        self.targets = targets
        self._below: dict[str, list[str]] | None = None

    def resolve_unknown(self, mapped: str) -> Resolved:
        """The model name (``None``: dropped) and shard id (``None``: not packed) of a name the
        mapper produced (``self.unpacked``) that is no model tensor's."""
        redirected = self.redirect(mapped)
        if redirected is not None:
            return redirected, None
        packed = self.experts.pack(mapped) or self.packing.pack(mapped)
        return packed if packed is not None else (mapped, None)

    def redirect(self, mapped: str) -> str | None:
        """``<P>.attn.<leaf>`` -> ``<the Attention below P>.<leaf>``, when ``<P>.attn`` is none."""
        head, _, leaf = mapped.rpartition(".")
        block, _, attn = head.rpartition(".")
        if leaf not in ATTENTION_LEAVES or attn != "attn":
            return None
        owner = self.targets.get(f"{head}.k_scale")
        if owner is not None and owner.is_kv_scale:
            return None  # <P>.attn is an Attention: the name is already right
        found = self._attention_below().get(block, [])
        if len(found) > 1:
            raise WeightLoadError(
                f"{mapped!r} belongs to the attention of {block or 'the model'!r}, which holds "
                f"{len(found)} kvcore.Attention modules: {', '.join(map(repr, found))}. Keep one "
                "kvcore.Attention per attention block, or pass a mapper that names the right one"
            )
        return f"{found[0]}.{leaf}" if found else None

    def expected_shards(self, parameter: str, got: set[AnyShard]) -> set[AnyShard]:
        """Every shard a packed ``parameter`` needs, given the ones the checkpoint has (``got``)."""
        experts = {shard for shard in got if isinstance(shard, ExpertShard)}
        if experts:
            return set(self.experts.expected(parameter, experts))
        return set(self.packing.shards_of(parameter))

    def _attention_below(self) -> dict[str, list[str]]:
        """Every ancestor name (``''`` for the root) -> the Attention modules below it, once each."""
        if self._below is None:
            below: dict[str, dict[int, str]] = {}
            canonical = {id(module): name for name, module in attention_modules(self.targets).items()}
            for target in self.targets.values():
                if not target.is_kv_scale:
                    continue
                parts = target.module_name.split(".")
                for depth in range(len(parts)):
                    ancestor = ".".join(parts[:depth])
                    below.setdefault(ancestor, {})[id(target.module)] = canonical[id(target.module)]
            self._below = {key: sorted(set(found.values())) for key, found in below.items()}
        return self._below


def shard_loader_error(parameter: str, tensor: str, shard: Any) -> WeightLoadError:
    """The error for a packed target whose parameter cannot load a shard."""
    return WeightLoadError(
        f"checkpoint tensor {tensor!r} loads into the packed parameter {parameter!r} as shard "
        f"{shard!r}, but that parameter has no weight_loader(param, loaded_weight, shard_id) (for an "
        "expert: ..., shard_id, expert_id). Give "
        "the fused parameter a shard-id weight_loader (docs/engines.md shows one), or remove the "
        "packing rule"
    )


def accepts_shard(loader: Callable[..., object] | None, shard: AnyShard) -> bool:
    """Whether ``loader`` can be called as ``loader(param, loaded_weight, shard_id[, expert_id])``."""
    if loader is None:
        return False
    try:
        inspect.signature(loader).bind(None, None, *loader_args(shard))
    except TypeError:
        return False
    except ValueError:  # no signature to read (a builtin): let the call decide
        return True
    return True


def loader_args(shard: AnyShard) -> tuple[object, ...]:
    """What a packed parameter's loader receives after ``(param, tensor)``."""
    return tuple(shard) if isinstance(shard, ExpertShard) else (shard,)


class LoaderFailed(WeightLoadError):
    """A parameter's own ``weight_loader`` raised: the model's code failed, not the checkpoint."""


def call_loader(
    loader: Callable[..., object], param: torch.Tensor, tensor: torch.Tensor, shard: AnyShard | None, where: str
) -> None:
    """``loader(param, tensor[, shard id[, expert id]])``; what it raises becomes a ``LoaderFailed``.

    ``where`` names the checkpoint tensor and the parameter (``checkpoint tensor 'x' ...
    (loading into 'p')``); the loader's own exception is chained.
    """
    try:
        loader(param, tensor, *(() if shard is None else loader_args(shard)))
    except Exception as exc:
        as_shard = "" if shard is None else f" as shard {shard!r}"
        raise LoaderFailed(
            f"{where}{as_shard}: the parameter's weight_loader {loader_name(loader)} raised "
            f"{type(exc).__name__}: {exc}. The checkpoint tensor (shape {list(tensor.shape)}, "
            f"{tensor.dtype}) was read; the loader, which is the model's code, failed on it. Fix the "
            "loader, or build the model with the config the checkpoint was made for."
        ) from exc


def loader_name(loader: Callable[..., object]) -> str:
    """``module.qualified.name`` of a loader (of the function a ``functools.partial`` wraps)."""
    function = loader.func if isinstance(loader, functools.partial) else loader
    qualname = getattr(function, "__qualname__", None) or type(function).__qualname__
    return f"{getattr(function, '__module__', None) or type(function).__module__}.{qualname}"
