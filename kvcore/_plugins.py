"""Plugin discovery: one sorted, isolated, cached scan of the ``kvcore`` entry-point group.

pluggy's ``load_setuptools_entrypoints`` aborts on the first broken plugin, leaves
half-registered plugins behind and follows filesystem order; kvcore owns the loop instead.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.metadata as md
import logging
import os
import warnings
from collections.abc import Iterable

import pluggy

from kvcore import hookspecs
from kvcore._compat import incompatibility
from kvcore._errors import PluginError

__all__ = ["PluginRecord", "PluginSelection", "get_plugin_manager", "plugin_records"]

log = logging.getLogger("kvcore")
GROUP = "kvcore"


@dataclasses.dataclass
class PluginRecord:
    """What ``kvcore plugins`` shows about one plugin."""

    name: str
    distribution: str
    version: str
    module: str
    hooks: list[str] = dataclasses.field(default_factory=list)
    status: str = "loaded"
    error: str | None = None

    @property
    def label(self) -> str:
        """``name (distribution version)``, the way messages cite a plugin."""
        return f"{self.name!r} ({self.distribution} {self.version})"

    def as_dict(self) -> dict[str, object]:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class PluginSelection:
    """Which plugins to load: an allow-list (``None`` = all), a block-list, strictness."""

    allow: frozenset[str] | None = None
    block: frozenset[str] = frozenset()
    strict: bool = False

    @classmethod
    def resolve(
        cls,
        plugins: Iterable[str] | None = None,
        disable_plugins: Iterable[str] | None = None,
        strict: bool | None = None,
    ) -> PluginSelection:
        """Arguments win over ``KVCORE_PLUGINS`` / ``KVCORE_DISABLE_PLUGINS`` / ``KVCORE_STRICT_PLUGINS``."""
        allow = _names(plugins) if plugins is not None else _env_names("KVCORE_PLUGINS")
        block = _names(disable_plugins) if disable_plugins is not None else _env_names("KVCORE_DISABLE_PLUGINS")
        if strict is None:
            strict = os.environ.get("KVCORE_STRICT_PLUGINS", "") not in ("", "0", "false")
        return cls(allow, block or frozenset(), strict)


def _names(values: Iterable[str]) -> frozenset[str]:
    if isinstance(values, str):
        values = values.split(",")
    return frozenset(v.strip() for v in values if v.strip())


def _env_names(variable: str) -> frozenset[str] | None:
    value = os.environ.get(variable)
    return None if value is None else _names(value)


class _Manager(pluggy.PluginManager):
    """A PluginManager that remembers what discovery found, for reports and messages."""

    def __init__(self) -> None:
        super().__init__(hookspecs.PROJECT_NAME)
        self.add_hookspecs(hookspecs)
        self.records: dict[str, PluginRecord] = {}


def get_plugin_manager(
    *,
    plugins: Iterable[str] | None = None,
    disable_plugins: Iterable[str] | None = None,
    strict: bool | None = None,
) -> pluggy.PluginManager:
    """The manager with every installed plugin of the entry-point group ``kvcore`` loaded.

    ``plugins`` is an allow-list of entry-point names (``[]`` loads none) and
    ``disable_plugins`` a block-list; when omitted, the environment variables
    ``KVCORE_PLUGINS`` and ``KVCORE_DISABLE_PLUGINS`` decide. A plugin that fails to load is
    skipped with a warning (``strict=True`` or ``KVCORE_STRICT_PLUGINS=1``: raised as
    ``PluginError``). The result is cached per selection.
    """
    return _manager(PluginSelection.resolve(plugins, disable_plugins, strict))


def plugin_records(pm: pluggy.PluginManager) -> dict[str, PluginRecord]:
    """The records of ``pm``'s plugins, by entry-point name (empty for a foreign manager)."""
    return getattr(pm, "records", {})


def clear_cache() -> None:
    """Forget cached scans and managers (tests that install or fake plugins call this)."""
    _entry_points.cache_clear()
    _manager.cache_clear()


@functools.lru_cache(maxsize=1)
def _entry_points() -> tuple[tuple[md.EntryPoint, str, str], ...]:
    found = {
        (ep.name, ep.value, _dist_name(ep), _dist_version(ep))
        for ep in md.entry_points(group=GROUP)
    }
    ordered = sorted(found, key=lambda item: (item[0], item[2]))
    return tuple((md.EntryPoint(name, value, GROUP), dist, version) for name, value, dist, version in ordered)


def _dist_name(ep: md.EntryPoint) -> str:
    dist = getattr(ep, "dist", None)
    return dist.metadata["Name"] if dist is not None else "<unknown>"


def _dist_version(ep: md.EntryPoint) -> str:
    dist = getattr(ep, "dist", None)
    return dist.version if dist is not None else "?"


@functools.lru_cache(maxsize=16)
def _manager(selection: PluginSelection) -> _Manager:
    pm = _Manager()
    groups: dict[str, list[tuple[md.EntryPoint, str, str]]] = {}
    for entry in _entry_points():
        groups.setdefault(entry[0].name, []).append(entry)
    if selection.allow is not None:
        for unknown in sorted(selection.allow - groups.keys()):
            _warn(f"KVCORE_PLUGINS names plugin {unknown!r}, which is not installed")
    for name, group in groups.items():
        records = [PluginRecord(name, dist, version, ep.value) for ep, dist, version in group]
        for i, record in enumerate(records):
            pm.records[name if i == 0 else f"{name}@{record.distribution}"] = record
        if len(group) > 1:
            _conflict(records, selection)
        elif not _selected(selection, name):
            records[0].status = "blocked"
        else:
            _register(pm, group[0][0], records[0], selection)
    return pm


def _selected(selection: PluginSelection, name: str) -> bool:
    if name in selection.block:
        return False
    return selection.allow is None or name in selection.allow


def _conflict(records: list[PluginRecord], selection: PluginSelection) -> None:
    rivals = ", ".join(f"{r.distribution} {r.version} ({r.module})" for r in records)
    message = (
        f"plugin name {records[0].name!r} is declared by several distributions: {rivals}; "
        "none of them is used. Uninstall all but one"
    )
    for record in records:
        record.status, record.error = "failed", message
    _fail(message, selection)


def _register(pm: _Manager, ep: md.EntryPoint, record: PluginRecord, selection: PluginSelection) -> None:
    problem = incompatibility(record.distribution)
    if problem is not None:
        record.status, record.error = "incompatible", problem
        _fail(f"plugin {record.label} is not used: {problem}", selection)
        return
    try:
        register_plugin(pm, ep.load(), ep.name)
    except Exception as exc:  # noqa: BLE001 - third-party code may fail in any way; report it
        record.status, record.error = "failed", f"{type(exc).__name__}: {exc}"
        _fail(f"plugin {record.label} failed to load and is skipped: {record.error}", selection)
        return
    record.hooks = hook_names(pm, ep.name)


def register_plugin(pm: pluggy.PluginManager, plugin: object, name: str) -> None:
    """Register ``plugin`` as ``name``, or leave ``pm`` exactly as it was and raise."""
    try:
        pm.register(plugin, name=name)
        unknown = [h for h in _callers(pm, name) if not h.has_spec()]
        if unknown:
            known = ", ".join(sorted(n for n in dir(pm.hook) if not n.startswith("_")))
            raise PluginError(
                f"plugin {name!r} implements unknown hook(s) {', '.join(h.name for h in unknown)}; "
                f"kvcore's hooks are: {known}"
            )
    except BaseException:
        if pm.get_plugin(name) is not None:
            pm.unregister(name=name)
        raise


def hook_names(pm: pluggy.PluginManager, name: str) -> list[str]:
    """The hooks the plugin registered as ``name`` implements."""
    return sorted(caller.name for caller in _callers(pm, name))


def _callers(pm: pluggy.PluginManager, name: str) -> list[pluggy.HookCaller]:
    plugin = pm.get_plugin(name)
    return list(pm.get_hookcallers(plugin) or []) if plugin is not None else []


def _fail(message: str, selection: PluginSelection) -> None:
    if selection.strict:
        raise PluginError(message + " (strict plugin loading is on: KVCORE_STRICT_PLUGINS)")
    _warn(message)


def _warn(message: str) -> None:
    log.warning(message)
    warnings.warn(message, RuntimeWarning, stacklevel=4)
