"""Discovery survives fakes and mangled installs: entry points are loaded as given, bad metadata is skipped."""

from __future__ import annotations

import importlib.metadata as md
import types

import pytest
from discovery_support import Site, mapper_plugin

import kvcore
from kvcore._plugins.manager import plugin_records


class _FakeEntryPoint:
    """An entry point whose ``load`` is its own (as test doubles and some hosts make them)."""

    def __init__(self, name: str, plugin: object) -> None:
        self.name, self.value, self.group, self.dist = name, f"fake:{name}", "kvcore", None
        self._plugin = plugin

    def load(self) -> object:
        return self._plugin


@pytest.mark.usefixtures("site")
def test_patched_entry_points_are_loaded_through_their_own_load(monkeypatch: pytest.MonkeyPatch) -> None:
    plugin = types.SimpleNamespace(
        get_cache_scale_mapper=kvcore.hookimpl(lambda quant_config: kvcore.WeightsMapper() if quant_config else None)
    )
    monkeypatch.setattr(md, "entry_points", lambda: {"kvcore": [_FakeEntryPoint("fake", plugin)]})
    pm = kvcore.get_plugin_manager()
    assert pm.get_plugin("fake") is plugin
    assert plugin_records(pm)["fake"].distribution == "<unknown distribution>"


def test_undecodable_metadata_skips_only_that_distribution(site: Site) -> None:
    site.plugin("good", mapper_plugin("fmt", {}))
    bad = site.dist("kvcore-mangled", {"mangled": "whatever"})
    (bad / "entry_points.txt").write_bytes(b"[kvcore]\nmangled = \xff\xfe\n")
    records = plugin_records(kvcore.get_plugin_manager())
    assert records["good"].status == "loaded"
    assert "mangled" not in records
