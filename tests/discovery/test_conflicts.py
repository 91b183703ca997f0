"""One entry-point name from two distributions: reported, and neither is used."""

from __future__ import annotations

import pytest
from discovery_support import Site, mapper_plugin

import kvcore
from kvcore._plugins.manager import plugin_records


def _rivals(site: Site) -> None:
    site.dist("kvcore-one", {"same": site.module("one", mapper_plugin("fmt", {r"\.a$": ".b"}))}, version="1.1")
    site.dist("kvcore-two", {"same": site.module("two", mapper_plugin("fmt", {r"\.a$": ".c"}))}, version="2.2")
    site.plugin("other", mapper_plugin("fmt", {}))


def test_conflict_is_reported_and_neither_is_used(site: Site) -> None:
    _rivals(site)
    with pytest.warns(RuntimeWarning, match=r"'same'.*kvcore-one 1\.1.*kvcore-two 2\.2.*uninstall all but one"):
        pm = kvcore.get_plugin_manager()
    records = plugin_records(pm)
    rivals = [r for r in records.values() if r.name == "same"]
    assert [(r.distribution, r.status) for r in rivals] == [("kvcore-one", "failed"), ("kvcore-two", "failed")]
    assert all("kvcore-one" in r.error and "kvcore-two" in r.error for r in rivals)
    assert [impl.plugin_name for impl in pm.hook.get_cache_scale_mapper.get_hookimpls()] == ["other"]


def test_conflict_raises_in_strict_mode(site: Site) -> None:
    _rivals(site)
    with pytest.raises(kvcore.PluginError, match=r"kvcore-one.*kvcore-two.*strict"):
        kvcore.get_plugin_manager(strict=True)


def test_blocking_the_disputed_name_settles_it_silently(site: Site, recwarn: pytest.WarningsRecorder) -> None:
    _rivals(site)
    pm = kvcore.get_plugin_manager(disable_plugins=["same"], strict=True)
    assert {r.status for r in plugin_records(pm).values() if r.name == "same"} == {"blocked"}
    assert not [w for w in recwarn if issubclass(w.category, RuntimeWarning)]
