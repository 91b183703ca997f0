"""Calling ``get_cache_scale_mapper`` plugin by plugin, and ORing what they return.

pluggy would call every implementation in one go and let the first exception abort the
rest with no word of which plugin raised; kvcore calls each on its own, in plugin-name
order, so that every fault and every conflict names the plugin (distribution and version).
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Any

import pluggy

from kvcore._errors import KvcoreError, MapperConflictError, PluginError
from kvcore._mapper import WeightsMapper
from kvcore._meaning import ScaleMeaning
from kvcore._plugins import plugin_records
from kvcore._quant_config import QuantConfig

__all__ = ["Contribution", "collect_mappers", "combine", "meaning_of"]

HOOK = "get_cache_scale_mapper"
MEANING_HOOK = "get_cache_scale_meaning"


@dataclasses.dataclass(frozen=True)
class Contribution:
    """One plugin's mapper (and what its scales mean), with the label messages cite it by."""

    plugin: str
    label: str
    mapper: WeightsMapper
    meaning: ScaleMeaning | None = None


def collect_mappers(pm: pluggy.PluginManager, quant_config: QuantConfig) -> list[Contribution]:
    """Every plugin's mapper for ``quant_config``, in plugin-name order; faults become errors."""
    records = plugin_records(pm)
    impls = sorted(getattr(pm.hook, HOOK).get_hookimpls(), key=lambda impl: impl.plugin_name)
    meanings = {impl.plugin_name: impl for impl in getattr(pm.hook, MEANING_HOOK).get_hookimpls()}
    found = []
    for impl in impls:
        record = records.get(impl.plugin_name)
        label = record.label if record else repr(impl.plugin_name)
        result = _call(impl, label, quant_config, HOOK, WeightsMapper)
        if result is not None:
            explain = meanings.get(impl.plugin_name)
            meaning = _call(explain, label, quant_config, MEANING_HOOK, ScaleMeaning) if explain else None
            found.append(Contribution(impl.plugin_name, label, result, meaning))
    return found


def meaning_of(contributions: list[Contribution]) -> ScaleMeaning:
    """What the scales mean: the first contributing plugin that says, else plain K and V."""
    return next((c.meaning for c in contributions if c.meaning is not None), ScaleMeaning())


def _call(impl: pluggy.HookImpl, label: str, quant_config: QuantConfig, hook: str, kind: type) -> Any:
    # Every argument the spec names; pluggy guarantees an implementation names no others.
    kwargs: dict[str, Any] = {"quant_config": quant_config}
    where = quant_config.source or f"quant_method {quant_config.quant_method!r}"
    try:
        result = impl.function(*(kwargs[name] for name in impl.argnames))
    except KvcoreError as exc:
        # kvcore.load adds the file the config came from to a QuantConfigError.
        raise _cited(exc, f"plugin {label}: {exc}") from exc
    except Exception as exc:
        raise PluginError(
            f"plugin {label} raised {type(exc).__name__} in {hook} for {where}: {exc}. "
            f"Report this to the plugin's authors, or disable it with KVCORE_DISABLE_PLUGINS={impl.plugin_name}"
        ) from exc
    if result is not None and not isinstance(result, kind):
        raise PluginError(
            f"plugin {label} returned a {type(result).__name__} from {hook} for {where}; this hook "
            f"must return a kvcore.{kind.__name__} or None. Report this to the plugin's authors, or "
            f"disable it with KVCORE_DISABLE_PLUGINS={impl.plugin_name}"
        )
    return result


def _cited(exc: KvcoreError, message: str) -> KvcoreError:
    """``exc`` with ``message``, keeping its type and attributes (a conflict's pattern, say)."""
    try:
        cited = copy.copy(exc)
        cited.args = (message,)
    except Exception:  # noqa: BLE001 - an exotic subclass that cannot be copied
        return PluginError(message)
    return cited


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
    theirs = getattr(later.mapper, field)
    # The newcomer's own key (a compiled pattern for regex rules, flags included).
    keys = [k for k, target in theirs.items() if getattr(k, "pattern", k) == exc.pattern and target == exc.targets[1]]
    owner, first = "the model's own mapper", exc.targets[0]
    for name, mapper in [(f"plugin {c.label}", c.mapper) for c in earlier]:
        ours = getattr(mapper, field)
        disputed = [k for k in keys if k in ours and ours[k] != exc.targets[1]]
        if disputed:
            owner, first = name, ours[disputed[0]]
            break
    return MapperConflictError(
        f"{owner} maps {exc.kind} rule {exc.pattern!r} to {first!r}, but plugin {later.label} maps "
        f"it to {exc.targets[1]!r}; disable one of them (KVCORE_DISABLE_PLUGINS) or make them agree",
        kind=exc.kind,
        pattern=exc.pattern,
        targets=(first, exc.targets[1]),
    )
