"""The cheap scan finds exactly what ``importlib.metadata.entry_points`` finds."""

from __future__ import annotations

import importlib.metadata as md
import sys
import zipfile
from pathlib import Path

import pytest
from discovery_support import Site

from kvcore._plugins.entry_points import scan


def _key(eps: list[md.EntryPoint]) -> list[tuple[str, str, str, str]]:
    return sorted((ep.name, ep.value, ep.group, ep.dist.name if ep.dist else "") for ep in eps)


def _tricky_layout(site: Site, other: Path) -> None:
    site.dist("kvcore-alpha", {"alpha": "alpha_mod"})
    site.dist("kvcore-alpha", {"alpha": "alpha_old"}, version="0.9")  # same name twice: first listed wins
    site.dist("Kvcore.Beta", {"beta": "beta_second"}, version="2.0", root=other)  # later on sys.path
    site.dist("kvcore_beta", {"beta": "beta_first"}, version="1.0")  # same normalised name, earlier
    upper = site.dist("kvcore-upper", {"upper": "upper_mod"})
    upper.rename(upper.with_name("kvcore_upper-1.0.DIST-INFO"))
    weird = site.root / "kvcore_weird-1.0.dist-info"
    weird.mkdir()
    (weird / "METADATA").write_text("Metadata-Version: 2.1\nName: kvcore-weird\nVersion: 1.0\n\n")
    (weird / "entry_points.txt").write_text(
        "# kvcore comment only\n[console_scripts]\nkvcore-weird = kvcore_weird:main\n\n"
        "  [kvcore]  \n  weird =  weird_mod:plugin  \n# trailing comment\n[kvcore.extra]\nno = no_mod\n"
    )
    (site.root / "old_style-1.0.egg-info").write_text("Metadata-Version: 1.0\nName: old-style\n")
    archive = other.parent / "zipped.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("kvcore_zipped-1.0.dist-info/METADATA", "Metadata-Version: 2.1\nName: kvcore-zipped\nVersion: 1\n")
        zf.writestr("kvcore_zipped-1.0.dist-info/entry_points.txt", "[kvcore]\nzipped = zipped_mod\n")
    sys.path.extend([str(other), str(archive), str(other.parent / "missing")])


@pytest.mark.parametrize("group", ["kvcore", "console_scripts", "kvcore.extra"])
def test_scan_matches_importlib_metadata(site: Site, tmp_path: Path, group: str) -> None:
    other = tmp_path / "other"
    other.mkdir()
    _tricky_layout(site, other)
    expected = _key(list(md.entry_points(group=group)))
    assert expected, "the layout must exercise the group"
    assert _key(scan(group)) == expected


def test_scan_finds_the_layouts_entry_points(site: Site, tmp_path: Path) -> None:
    other = tmp_path / "other"
    other.mkdir()
    _tricky_layout(site, other)
    found = {(ep.name, ep.value) for ep in scan("kvcore")}
    assert {("weird", "weird_mod:plugin"), ("zipped", "zipped_mod"), ("upper", "upper_mod")} <= found
    assert ("beta", "beta_first") in found and ("beta", "beta_second") not in found  # first on sys.path wins


def test_scan_honours_a_monkeypatched_importlib_metadata(monkeypatch: pytest.MonkeyPatch) -> None:
    # pluggy's own tests fake installed plugins this way; so may a host's.
    class FakeDist(md.Distribution):
        def read_text(self, filename: str) -> str | None:
            if filename == "METADATA":
                return "Metadata-Version: 2.1\nName: kvcore-fake\nVersion: 3\n\n"
            return "[kvcore]\nfake = fake_mod\n" if filename == "entry_points.txt" else None

        def locate_file(self, path: object) -> Path:
            return Path(str(path))

    monkeypatch.setattr(md, "distributions", lambda **_: iter([FakeDist()]))
    assert [(ep.name, ep.value, ep.dist.name) for ep in scan("kvcore")] == [("fake", "fake_mod", "kvcore-fake")]
