"""The guide's plugin and tests, taken from docs/writing-a-plugin.md, work as written."""

from __future__ import annotations

import importlib
import re
import sys
from pathlib import Path

import pytest

GUIDE = Path(__file__).resolve().parents[2] / "docs" / "writing-a-plugin.md"


def _blocks(language: str) -> list[str]:
    return [body for lang, body in re.findall(r"```(\w*)\n(.*?)```", GUIDE.read_text(), re.S) if lang == language]


def test_guide_pyproject_declares_the_entry_point() -> None:
    [pyproject] = _blocks("toml")
    assert '[project.entry-points.kvcore]\nacme = "kvcore_acme"' in pyproject


def test_guide_plugin_passes_its_own_tests(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _signature, plugin, tests, _meaning_signature = _blocks("python")
    root = tmp_path / "src"
    (root / "kvcore_acme").mkdir(parents=True)
    (root / "kvcore_acme" / "__init__.py").write_text(plugin)
    (root / "guide_tests_acme.py").write_text(tests)
    monkeypatch.syspath_prepend(str(root))
    monkeypatch.delitem(sys.modules, "kvcore_acme", raising=False)
    module = importlib.import_module("guide_tests_acme")
    try:
        module.test_conformance()
        module.test_names()
        module.test_load(tmp_path / "checkpoint")
    finally:
        sys.modules.pop("guide_tests_acme", None)
        sys.modules.pop("kvcore_acme", None)
