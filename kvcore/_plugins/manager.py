"""Plugin discovery: one sorted, isolated, cached scan of the ``kvcore`` entry-point group.

pluggy's ``load_setuptools_entrypoints`` aborts on the first broken plugin, leaves
half-registered plugins behind (pluggy #733), resolves a clashing name silently and follows
filesystem order; kvcore owns the loop instead:

- one scan per process (:func:`kvcore._plugins.entry_points.scan`), sorted by entry-point name then
  distribution; the same entry point seen twice is folded; one name declared by two
  distributions is a conflict and neither is used;
- each plugin is checked for compatibility, imported and registered on its own, and rolled
  back completely when anything fails; the failure is kept on its :class:`PluginRecord`;
- ``KVCORE_PLUGINS`` / ``KVCORE_DISABLE_PLUGINS`` / ``KVCORE_STRICT_PLUGINS`` (or the
  arguments of the same meaning) choose what is loaded and whether failures raise.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import sys
import threading
from typing import Any

import pluggy

from kvcore import hookspecs
from kvcore._errors import PluginError
from kvcore._plugins.compat import incompatibility
from kvcore._plugins.entry_points import normalize, scan
from kvcore._plugins.selection import Names, PluginSelection
from kvcore._warn import warn

__all__ = [
    "GROUP",
    "PluginRecord",
    "PluginSelection",
    "clear_cache",
    "get_plugin_manager",
    "hook_names",
    "plugin_records",
    "register_plugin",
]

log = logging.getLogger("kvcore")
GROUP = "kvcore"


@dataclasses.dataclass
class PluginRecord:
    """What ``kvcore plugins`` shows about one plugin.

    ``status`` is ``"loaded"``, ``"failed"``, ``"blocked"`` or ``"incompatible"``; ``error``
    says why a plugin is not loaded.
    """

    name: str
    distribution: str
    version: str
    module: str
    hooks: list[str] = dataclasses.field(default_factory=list)
    status: str = "loaded"
    error: str | None = None

    @property
    def label(self) -> str:
        """``'name' (distribution version)``, the way messages cite a plugin."""
        return f"{self.name!r} ({self.distribution} {self.version})"

    def as_dict(self) -> dict[str, object]:
        """The record as ``kvcore plugins --json`` prints it."""
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class _Entry:
    """One entry point of the group, with what its distribution declares."""

    name: str
    value: str
    distribution: str
    version: str
    requires: tuple[str, ...]
    entry_point: Any = dataclasses.field(compare=False, repr=False)

    def record(self) -> PluginRecord:
        return PluginRecord(self.name, self.distribution, self.version, self.value)

    def load(self) -> object:
        return self.entry_point.load()


class _Manager(pluggy.PluginManager):
    """A PluginManager that remembers what discovery found, for reports and messages."""

    def __init__(self) -> None:
        super().__init__(hookspecs.PROJECT_NAME)
        self.add_hookspecs(hookspecs)
        self.records: dict[str, PluginRecord] = {}


_lock = threading.RLock()
_scanned: tuple[_Entry, ...] | None = None
_managers: dict[PluginSelection, _Manager] = {}


def get_plugin_manager(
    *,
    plugins: Names | None = None,
    disable_plugins: Names | None = None,
    strict: bool | None = None,
) -> pluggy.PluginManager:
    """The manager with every installed plugin of the entry-point group ``kvcore`` loaded.

    ``plugins`` is an allow-list of entry-point names (``[]`` or ``""`` loads none) and
    ``disable_plugins`` a block-list; when omitted, the environment variables
    ``KVCORE_PLUGINS`` and ``KVCORE_DISABLE_PLUGINS`` (comma-separated) decide. A plugin that
    fails to load is skipped with a warning and kept as ``failed`` in the records
    (``strict=True`` or ``KVCORE_STRICT_PLUGINS=1``: raised as ``PluginError``). Installed
    distributions are scanned once per process; the manager is cached per selection.
    """
    selection = PluginSelection.resolve(plugins, disable_plugins, strict)
    with _lock:
        pm = _managers.get(selection)
        if pm is None:
            # What plugins print when imported goes to stderr: stdout may carry JSON (--json).
            with contextlib.redirect_stdout(sys.stderr):
                pm = _managers[selection] = _build(selection)
        return pm


def plugin_records(pm: pluggy.PluginManager) -> dict[str, PluginRecord]:
    """The records of ``pm``'s plugins (entry-point name, or ``name@distribution`` for a rival)."""
    return getattr(pm, "records", {})


def clear_cache() -> None:
    """Forget the scan and the managers (tests that install or fake plugins call this)."""
    global _scanned
    with _lock:
        _scanned = None
        _managers.clear()


def _entries() -> tuple[_Entry, ...]:
    global _scanned
    if _scanned is None:
        found: dict[tuple[str, str, str], _Entry] = {}
        for ep in scan(GROUP):
            entry = _entry(ep)
            # The same entry point of the same distribution seen twice is one plugin; the
            # first seen is the copy Python imports.
            found.setdefault((entry.name, entry.value, normalize(entry.distribution)), entry)
        # Sorted, so that the order mappers are ORed in never depends on the filesystem.
        _scanned = tuple(sorted(found.values(), key=lambda e: (e.name, normalize(e.distribution), e.value)))
    return _scanned


def _entry(ep: object) -> _Entry:
    name, value = getattr(ep, "name", "?"), getattr(ep, "value", "?")
    dist = getattr(ep, "dist", None)
    try:
        meta = dist.metadata if dist is not None else None
        requires = meta.get_all("Requires-Dist") if meta is not None else None
        if requires is None and dist is not None:
            requires = dist.requires  # an egg-info keeps them in requires.txt
        dist_name = (meta["Name"] if meta is not None else None) or getattr(dist, "name", None)
        version = meta["Version"] if meta is not None else None
    except Exception:  # noqa: BLE001 - unreadable metadata: the plugin is still listed and tried
        requires, dist_name, version = None, None, None
    return _Entry(name, value, dist_name or "<unknown distribution>", version or "?", tuple(requires or ()), ep)


def _build(selection: PluginSelection) -> _Manager:
    pm = _Manager()
    groups: dict[str, list[_Entry]] = {}
    for entry in _entries():
        groups.setdefault(entry.name, []).append(entry)
    _warn_unknown(selection, set(groups))
    for name, group in groups.items():
        records = [entry.record() for entry in group]
        for i, record in enumerate(records):
            key = name if i == 0 else f"{name}@{record.distribution}"
            pm.records[key if key not in pm.records else f"{key}#{i}"] = record
        if not selection.selects(name):
            for record in records:
                record.status = "blocked"
                record.error = selection.why_blocked(name)
        elif len(group) > 1:
            _conflict(records, selection)
        else:
            _load(pm, group[0], records[0], selection)
    return pm


def _warn_unknown(selection: PluginSelection, known: set[str]) -> None:
    for kind, names in (("allow", selection.allow), ("block", selection.block)):
        for unknown in sorted((names or frozenset()) - known):
            _warn(
                f"{selection.source(kind)} names plugin {unknown!r}, which is not installed "
                f"(installed plugins: {', '.join(sorted(known)) or 'none'})"
            )


def _conflict(records: list[PluginRecord], selection: PluginSelection) -> None:
    rivals = "; ".join(f"{r.distribution} {r.version} ({r.module})" for r in records)
    message = (
        f"plugin name {records[0].name!r} is declared by several distributions or entry points: "
        f"{rivals}. None of them is used; uninstall all but one (pip uninstall <distribution>)"
    )
    for record in records:
        record.status, record.error = "failed", message
    _fail(message, selection)


def _load(pm: _Manager, entry: _Entry, record: PluginRecord, selection: PluginSelection) -> None:
    problem = incompatibility(entry.distribution, entry.requires)
    if problem is not None:
        record.status, record.error = "incompatible", problem
        _fail(f"plugin {record.label} is not used: {problem}", selection)
        return
    try:
        register_plugin(pm, entry.load(), entry.name)
    except KeyboardInterrupt:
        raise
    except BaseException as exc:  # noqa: BLE001 - third-party code may fail in any way, SystemExit included
        record.status, record.error = "failed", f"{type(exc).__name__}: {exc}"
        _fail(
            f"plugin {record.label} (module {record.module}) failed to load and is skipped: "
            f"{record.error}. Fix or reinstall it, or disable it with KVCORE_DISABLE_PLUGINS={record.name}",
            selection,
        )
        return
    record.hooks = hook_names(pm, entry.name)


def register_plugin(pm: pluggy.PluginManager, plugin: object, name: str) -> None:
    """Register ``plugin`` as ``name``, or leave ``pm`` exactly as it was and raise ``PluginError``.

    pluggy checks each implementation's signature against its spec; kvcore then refuses
    unknown hooks and wrappers. Whatever fails, nothing of ``plugin`` stays registered and
    no hook it invented stays behind (pluggy #733 leaves half-registered plugins).
    """
    before = set(vars(pm.hook))
    try:
        pm.register(plugin, name=name)
        _check_impls(pm, plugin, name)
    except BaseException as exc:
        if pm.get_plugin(name) is plugin:
            pm.unregister(name=name)
        for invented in set(vars(pm.hook)) - before:
            delattr(pm.hook, invented)
        if isinstance(exc, pluggy.PluginValidationError):
            raise PluginError(
                f"plugin {name!r} does not match kvcore's hook specification: {exc}. A hook takes "
                "only arguments that the spec names (see kvcore.hookspecs)"
            ) from exc
        raise


def _check_impls(pm: pluggy.PluginManager, plugin: object, name: str) -> None:
    for caller in pm.get_hookcallers(plugin) or []:
        if not caller.has_spec():
            known = sorted(n for n, c in vars(pm.hook).items() if c.has_spec())
            raise PluginError(
                f"plugin {name!r} implements unknown hook {caller.name!r}; kvcore's hooks are: "
                f"{', '.join(known)}. Rename the function or drop its @kvcore.hookimpl"
            )
        if any(impl.hookwrapper or impl.wrapper for impl in caller.get_hookimpls() if impl.plugin is plugin):
            raise PluginError(
                f"plugin {name!r} implements {caller.name!r} as a wrapper; kvcore calls each plugin's "
                "hook on its own, so declare it with a plain @kvcore.hookimpl"
            )


def hook_names(pm: pluggy.PluginManager, name: str) -> list[str]:
    """The hooks the plugin registered as ``name`` implements."""
    plugin = pm.get_plugin(name)
    callers = pm.get_hookcallers(plugin) if plugin is not None else None
    return sorted(caller.name for caller in callers or [])


def _fail(message: str, selection: PluginSelection) -> None:
    if selection.strict:
        raise PluginError(message + " (strict plugin loading is on: KVCORE_STRICT_PLUGINS / strict=True)")
    _warn(message)


def _warn(message: str) -> None:
    warn(message, RuntimeWarning)
