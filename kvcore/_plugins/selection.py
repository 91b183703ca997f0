"""Which plugins to load: arguments of the Python API, else ``KVCORE_*`` environment variables."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterable

__all__ = ["ALLOW_ENV", "BLOCK_ENV", "STRICT_ENV", "PluginSelection"]

ALLOW_ENV = "KVCORE_PLUGINS"
BLOCK_ENV = "KVCORE_DISABLE_PLUGINS"
STRICT_ENV = "KVCORE_STRICT_PLUGINS"
_FALSE = ("", "0", "false", "no", "off")

Names = str | Iterable[str]


@dataclasses.dataclass(frozen=True)
class PluginSelection:
    """An allow-list (``None`` = every plugin), a block-list and strictness.

    ``from_args`` records whether each list came from an argument or the environment, so
    that a warning names what the user actually set.
    """

    allow: frozenset[str] | None = None
    block: frozenset[str] = frozenset()
    strict: bool = False
    from_args: tuple[bool, bool] = (False, False)

    @classmethod
    def resolve(cls, plugins: Names | None = None, disable_plugins: Names | None = None,
                strict: bool | None = None) -> PluginSelection:
        """Arguments win over ``KVCORE_PLUGINS`` / ``KVCORE_DISABLE_PLUGINS`` / ``KVCORE_STRICT_PLUGINS``.

        Lists are names or one comma-separated string; an empty string means "none".
        """
        allow = _names(plugins) if plugins is not None else _env_names(ALLOW_ENV)
        block = _names(disable_plugins) if disable_plugins is not None else _env_names(BLOCK_ENV)
        if strict is None:
            strict = os.environ.get(STRICT_ENV, "").strip().lower() not in _FALSE
        return cls(allow, block or frozenset(), bool(strict), (plugins is not None, disable_plugins is not None))

    def selects(self, name: str) -> bool:
        """Whether the plugin ``name`` is to be loaded."""
        return name not in self.block and (self.allow is None or name in self.allow)

    def why_blocked(self, name: str) -> str:
        """The sentence ``kvcore plugins`` shows for a plugin this selection leaves out."""
        if name in self.block:
            return f"disabled by {self.source('block')}"
        return f"not in the allow-list {self.source('allow')}"

    def source(self, kind: str) -> str:
        """``"KVCORE_PLUGINS"``-style name of where the allow- or block-list came from."""
        if kind == "allow":
            return "the plugins= argument" if self.from_args[0] else ALLOW_ENV
        return "the disable_plugins= argument" if self.from_args[1] else BLOCK_ENV


def _names(values: Names) -> frozenset[str]:
    items = values.split(",") if isinstance(values, str) else values
    return frozenset(v.strip() for v in items if v.strip())


def _env_names(variable: str) -> frozenset[str] | None:
    value = os.environ.get(variable)
    return None if value is None else _names(value)
