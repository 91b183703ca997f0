"""A plugin whose kvcore requirement excludes the running kvcore is reported and not used."""

from __future__ import annotations

import pytest
from discovery_support import Site, mapper_plugin

import kvcore
from kvcore._plugins.compat import incompatibility, kvcore_version
from kvcore._plugins.manager import plugin_records

SOURCE = mapper_plugin("fmt", {})


def test_incompatible_plugin_is_reported_with_the_versions_it_needs(site: Site) -> None:
    site.plugin("future", SOURCE, requires=("kvcore>=99", "pydantic>=2"), version="5.0")
    site.plugin("fits", SOURCE, requires=(f"kvcore=={kvcore_version()}",))
    with pytest.warns(RuntimeWarning, match=r"'future' \(kvcore-future 5\.0\) is not used.*requires kvcore>=99"):
        pm = kvcore.get_plugin_manager()
    records = plugin_records(pm)
    assert records["future"].status == "incompatible"
    assert f"kvcore {kvcore_version()} is running" in records["future"].error
    assert pm.get_plugin("future") is None
    assert records["fits"].status == "loaded"


def test_incompatible_plugin_raises_in_strict_mode(site: Site) -> None:
    site.plugin("old", SOURCE, requires=("kvcore<0.1",))
    with pytest.raises(kvcore.PluginError, match=r"requires kvcore<0\.1"):
        kvcore.get_plugin_manager(strict=True)


@pytest.mark.parametrize(
    "requires",
    [
        (),
        ("kvcore",),
        ("kvcore>=99; extra == 'dev'",),
        ("kvcore>=99; sys_platform == 'nonexistent'",),
        ("KVCore >=0.1",),
        ("not a requirement at all!!",),
    ],
)
def test_requirements_that_admit_or_do_not_apply(requires: tuple[str, ...]) -> None:
    assert incompatibility("kvcore-x", requires) is None


def test_import_of_an_incompatible_plugin_is_never_attempted(site: Site) -> None:
    site.plugin("future", "raise RuntimeError('imported')\n", requires=("kvcore>=99",))
    with pytest.warns(RuntimeWarning, match="requires kvcore>=99"):
        records = plugin_records(kvcore.get_plugin_manager())
    assert "imported" not in (records["future"].error or "")
