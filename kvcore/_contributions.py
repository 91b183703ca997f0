"""Calling ``get_cache_scale_mapper`` plugin by plugin, and ORing what they return."""

from __future__ import annotations

import dataclasses
from typing import Any

import pluggy

from kvcore._errors import KvcoreError, MapperConflictError, PluginError
from kvcore._mapper import WeightsMapper
from kvcore._plugins import plugin_records
from kvcore._quant_config import QuantConfig

__all__ = ["Contribution", "collect_mappers", "combine"]


@dataclasses.dataclass(frozen=True)
class Contribution:
    """One plugin's mapper, with the label messages cite it by."""

    plugin: str
    label: str
    mapper: WeightsMapper


def collect_mappers(pm: pluggy.PluginManager, quant_config: QuantConfig) -> list[Contribution]:
    """Every plugin's mapper for ``quant_config``, in plugin-name order; faults become errors."""
    records = plugin_records(pm)
    impls = sorted(pm.hook.get_cache_scale_mapper.get_hookimpls(), key=lambda impl: impl.plugin_name)
    found = []
    for impl in impls:
        record = records.get(impl.plugin_name)
        label = record.label if record else repr(impl.plugin_name)
        result = _call(impl, label, {"quant_config": quant_config})
        if result is not None:
            found.append(Contribution(impl.plugin_name, label, result))
    return found


def _call(impl: pluggy.HookImpl, label: str, kwargs: dict[str, Any]) -> WeightsMapper | None:
    try:
        result = impl.function(*(kwargs[name] for name in impl.argnames))
    except KvcoreError as exc:
        raise type(exc)(f"plugin {label}: {exc}") from exc
    except Exception as exc:
        raise PluginError(
            f"plugin {label} raised {type(exc).__name__} in get_cache_scale_mapper: {exc}. "
            "Report this to the plugin's authors, or disable it with KVCORE_DISABLE_PLUGINS"
        ) from exc
    if result is not None and not isinstance(result, WeightsMapper):
        raise PluginError(
            f"plugin {label} returned a {type(result).__name__} from get_cache_scale_mapper; "
            "a hook must return a kvcore.WeightsMapper or None"
        )
    return result


def combine(base: WeightsMapper, contributions: list[Contribution]) -> WeightsMapper:
    """``base | c1 | c2 | ...``; a conflict names both contributors."""
    combined = base
    for i, contribution in enumerate(contributions):
        try:
            combined = combined | contribution.mapper
        except MapperConflictError as exc:
            raise _attributed(exc, contributions[:i], contribution) from None
    return combined


def _attributed(
    exc: MapperConflictError,
    earlier: list[Contribution],
    later: Contribution,
) -> MapperConflictError:
    field = f"orig_to_new_{exc.kind}"
    owner = "the model's own mapper"
    for contribution in earlier:
        if exc.pattern in getattr(contribution.mapper, field):
            owner = f"plugin {contribution.label}"
            break
    first, second = exc.targets
    return MapperConflictError(
        f"{owner} maps {exc.kind} rule {exc.pattern!r} to {first!r}, but plugin {later.label} maps "
        f"it to {second!r}; disable one of them (KVCORE_DISABLE_PLUGINS) or make them agree",
        kind=exc.kind,
        pattern=exc.pattern,
        targets=exc.targets,
    )
