"""The session's fresh venv; the machinery is in ``fresh_venv_support``."""

from __future__ import annotations

import shutil
from collections.abc import Iterator

import pytest
from fresh_venv_support import FreshVenv, build


@pytest.fixture(scope="session")
def fresh_venv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FreshVenv]:
    """Built once per session (a few pip installs); every integration test reuses it."""
    base = tmp_path_factory.mktemp("fresh-venv")
    yield build(base)
    shutil.rmtree(base / "venv", ignore_errors=True)  # ~1 GB of torch; pytest keeps old tmp dirs
