"""Strict mode: ``KVCORE_STRICT_PLUGINS`` or ``strict=True`` turns plugin failures into errors."""

from __future__ import annotations

import pytest
from discovery_support import Site

import kvcore
from kvcore._plugins.manager import plugin_records

BROKEN = "import kvcore_dependency_that_is_not_installed\n"


@pytest.mark.parametrize("value", ["1", "true", "YES", "on"])
def test_environment_turns_failures_into_errors(site: Site, monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    site.plugin("broken", BROKEN, version="4.5")
    monkeypatch.setenv("KVCORE_STRICT_PLUGINS", value)
    with pytest.raises(kvcore.PluginError, match=r"'broken' \(kvcore-broken 4\.5\).*ModuleNotFoundError.*strict"):
        kvcore.get_plugin_manager()


@pytest.mark.parametrize("value", ["", "0", "false", "No", "off"])
def test_false_values_keep_failures_as_warnings(site: Site, monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    site.plugin("broken", BROKEN)
    monkeypatch.setenv("KVCORE_STRICT_PLUGINS", value)
    with pytest.warns(RuntimeWarning, match="broken"):
        pm = kvcore.get_plugin_manager()
    assert plugin_records(pm)["broken"].status == "failed"


def test_argument_overrides_environment(site: Site, monkeypatch: pytest.MonkeyPatch) -> None:
    site.plugin("broken", BROKEN)
    monkeypatch.setenv("KVCORE_STRICT_PLUGINS", "1")
    with pytest.warns(RuntimeWarning, match="broken"):
        kvcore.get_plugin_manager(strict=False)
    with pytest.raises(kvcore.PluginError):
        kvcore.get_plugin_manager(strict=True, plugins=["broken"])


def test_strict_mode_is_quiet_when_every_plugin_loads(site: Site) -> None:
    site.plugin("fine", "import kvcore\n")
    assert plugin_records(kvcore.get_plugin_manager(strict=True))["fine"].status == "loaded"
