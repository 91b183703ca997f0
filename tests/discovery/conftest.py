"""The ``site`` fixture; helpers live in ``discovery_support`` (on ``sys.path``: pyproject's pytest ``pythonpath``)."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from discovery_support import Site

import kvcore._plugins.manager


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Site]:
    root = tmp_path / "site"
    root.mkdir()
    kept = [p for p in sys.path if "site-packages" not in p and "dist-packages" not in p]
    monkeypatch.setattr(sys, "path", [str(root), *kept])
    for variable in ("KVCORE_PLUGINS", "KVCORE_DISABLE_PLUGINS", "KVCORE_STRICT_PLUGINS"):
        monkeypatch.delenv(variable, raising=False)
    kvcore._plugins.manager.clear_cache()
    yield Site(root)
    kvcore._plugins.manager.clear_cache()
