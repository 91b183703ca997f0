"""The same entry point seen twice is one plugin, loaded once."""

from __future__ import annotations

import sys

from discovery_support import Site, mapper_plugin

import kvcore
from kvcore._plugins.manager import plugin_records


def test_one_distribution_on_two_sys_path_entries_is_folded(site: Site, tmp_path) -> None:
    module = site.module("twice", mapper_plugin("fmt", {r"\.x$": ".y"}))
    site.dist("kvcore-twice", {"twice": module})
    copy = tmp_path / "copy"
    copy.mkdir()
    site.dist("kvcore-twice", {"twice": module}, root=copy)
    sys.path.append(str(copy))
    pm = kvcore.get_plugin_manager()
    records = plugin_records(pm)
    assert list(records) == ["twice"]
    assert records["twice"].status == "loaded"
    assert [impl.plugin_name for impl in pm.hook.get_cache_scale_mapper.get_hookimpls()] == ["twice"]


def test_an_entry_point_listed_twice_in_one_distribution_is_folded(site: Site) -> None:
    module = site.module("listed", mapper_plugin("fmt", {}))
    folder = site.dist("kvcore-listed", {"listed": module})
    (folder / "entry_points.txt").write_text(f"[kvcore]\nlisted = {module}\nlisted = {module}\n")
    records = plugin_records(kvcore.get_plugin_manager())
    assert [(r.name, r.status) for r in records.values()] == [("listed", "loaded")]
