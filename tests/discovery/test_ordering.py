"""Plugins are registered and called in entry-point-name order, whatever the filesystem says."""

from __future__ import annotations

import sys

import pytest
from discovery_support import Site, mapper_plugin

import kvcore
from kvcore._plugins.contributions import collect_mappers
from kvcore._plugins.manager import plugin_records


def test_records_and_calls_follow_entry_point_names_not_install_order(site: Site, tmp_path) -> None:
    later = tmp_path / "later"
    later.mkdir()
    sys.path.insert(0, str(later))  # the last plugin by name comes first on sys.path
    names = ["zeta", "alpha", "mu"]
    for name in names:
        module = site.module(name, mapper_plugin("fmt", {rf"\.{name}$": f".{name}_done"}))
        site.dist(f"kvcore-{name}", {name: module}, root=later if name == "zeta" else None)
    pm = kvcore.get_plugin_manager()
    assert list(plugin_records(pm)) == sorted(names)
    found = collect_mappers(pm, kvcore.QuantConfig("fmt", {"quant_method": "fmt"}))
    assert [c.plugin for c in found] == sorted(names)


def test_same_name_sorted_by_distribution_in_records(site: Site) -> None:
    site.dist("kvcore-b", {"dup": site.module("b", mapper_plugin("fmt", {}))})
    site.dist("kvcore-a", {"dup": site.module("a", mapper_plugin("fmt", {}))})
    with pytest.warns(RuntimeWarning, match="'dup'"):
        records = plugin_records(kvcore.get_plugin_manager())
    assert [r.distribution for r in records.values()] == ["kvcore-a", "kvcore-b"]
