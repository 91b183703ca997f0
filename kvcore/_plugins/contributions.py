"""Calling ``get_cache_scale_mapper`` plugin by plugin, and ORing what they return.

pluggy would call every implementation in one go and let the first exception abort the
rest with no word of which plugin raised; kvcore calls each on its own, in plugin-name
order, so that every fault and every conflict names the plugin (distribution and version).

Plugins are contained: each call gets its own deep copy of the config (a plugin that edits
what it receives changes nothing for the next one, nor the checkpoint's config); anything a
hook raises (``SystemExit`` and other ``BaseException`` subclasses included, only
``KeyboardInterrupt`` excepted) becomes a ``PluginError`` naming the plugin; what it prints
goes to stderr; a returned mapper whose regex replacements are invalid, or whose own
``map_name`` raises (:func:`plugin_map_name`), is a ``PluginError`` naming the plugin too.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import re
import sys
from typing import Any

import pluggy

from kvcore._checkpoint.quant_config import QuantConfig
from kvcore._errors import KvcoreError, MapperConflictError, PluginError
from kvcore._mapper import ShardId, WeightsMapper
from kvcore._meaning import ScaleMeaning
from kvcore._plugins.manager import plugin_records

__all__ = ["Contribution", "OwnThenPlugins", "collect_mappers", "combine", "meaning_of", "plugin_map_name"]

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
    # Its own copy: what one plugin does to the dicts it receives, no other plugin sees.
    kwargs: dict[str, Any] = {"quant_config": copy.deepcopy(quant_config)}
    where = quant_config.source or f"quant_method {quant_config.quant_method!r}"
    try:
        with contextlib.redirect_stdout(sys.stderr):  # stdout carries --json output
            result = impl.function(*(kwargs[name] for name in impl.argnames))
    except KvcoreError as exc:
        # kvcore.load adds the file the config came from to a QuantConfigError.
        raise _cited(exc, f"plugin {label}: {exc}") from exc
    except KeyboardInterrupt:
        raise
    except BaseException as exc:  # SystemExit, GeneratorExit...: a plugin may not end the process
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
    if isinstance(result, WeightsMapper):
        _check_replacements(result, label, impl.plugin_name)
    return result


def _check_replacements(mapper: WeightsMapper, label: str, plugin: str) -> None:
    """Every regex rule's replacement is valid: ``re`` parses it before matching, even on ''."""
    for pattern, target in mapper.orig_to_new_regex.items():
        if target is None:
            continue
        try:
            compiled = re.compile(pattern)  # the mapper compiled it already: this returns it as is
            compiled.sub(target, "")
        except (re.error, IndexError) as exc:
            raise PluginError(
                f"plugin {label} returned a mapper whose regex rule {compiled.pattern!r} -> {target!r} has an "
                f"invalid replacement ({exc}). Report this to the plugin's authors, or disable it with "
                f"KVCORE_DISABLE_PLUGINS={plugin}"
            ) from None


def plugin_map_name(contribution: Contribution, name: str) -> str | None:
    """``contribution.mapper.map_name(name)``; whatever it raises is a ``PluginError`` naming the plugin."""
    try:
        return contribution.mapper.map_name(name)
    except KeyboardInterrupt:
        raise
    except BaseException as exc:  # a plugin's own map_name may fail in any way
        raise PluginError(
            f"plugin {contribution.label}'s mapper raised {type(exc).__name__} mapping checkpoint tensor "
            f"{name!r}: {exc}. Report this to the plugin's authors, or disable it with "
            f"KVCORE_DISABLE_PLUGINS={contribution.plugin}"
        ) from exc


def _cited(exc: KvcoreError, message: str) -> KvcoreError:
    """``exc`` with ``message``, keeping its type and attributes (a conflict's pattern, say)."""
    try:
        cited = copy.copy(exc)
        cited.args = (message,)
    except Exception:  # noqa: BLE001 - an exotic subclass that cannot be copied
        return PluginError(message)
    return cited


def combine(base: WeightsMapper, contributions: list[Contribution]) -> WeightsMapper:
    """``base | c1 | c2 | ...``; a conflict names both contributors.

    A ``base`` that maps names its own way (a ``WeightsMapper`` subclass overriding
    ``map_name``) keeps it: ``|`` builds a plain ``WeightsMapper`` of rules, which would drop
    it as soon as a plugin contributes. The result is then ``base.map_name`` first, and the
    plugins' ORed rules on what it returns (:class:`OwnThenPlugins`).
    """
    combined = base
    for i, contribution in enumerate(contributions):
        try:
            combined = combined | contribution.mapper
        except MapperConflictError as exc:
            raise _attributed(exc, contributions[:i], contribution) from None
    if contributions and type(base).map_name is not WeightsMapper.map_name:
        plugins = WeightsMapper()
        for contribution in contributions:
            plugins = plugins | contribution.mapper  # no conflict: the loop above checked them all
        return OwnThenPlugins(base, plugins)
    return combined


class OwnThenPlugins(WeightsMapper):
    """A model's own mapper with a custom ``map_name``, then the plugins' rules.

    Its rule fields are the plugins'; ``own`` (the model's mapper, whatever its class) renames
    each name first. ``None`` from ``own`` drops the weight.
    """

    own: WeightsMapper
    plugins: WeightsMapper

    def __init__(self, own: WeightsMapper, plugins: WeightsMapper) -> None:
        super().__init__(**{f.name: getattr(plugins, f.name) for f in dataclasses.fields(plugins)})
        object.__setattr__(self, "own", own)
        object.__setattr__(self, "plugins", plugins)  # a plain mapper: its methods do not call back here
        object.__setattr__(self, "_scale_meaning", plugins.scale_meaning)

    def map_name(self, name: str) -> str | None:
        mapped = self.own.map_name(name)
        return None if mapped is None else self.plugins.map_name(mapped)

    def map_packed(self, name: str) -> tuple[str | None, ShardId | None]:
        mapped = self.own.map_name(name)
        return (None, None) if mapped is None else self.plugins.map_packed(mapped)

    def _map_unpacked(self, name: str) -> str | None:
        mapped = self.own.map_name(name)
        return None if mapped is None else self.plugins._map_unpacked(mapped)


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
