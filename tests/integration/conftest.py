"""The session's fresh venv; the machinery is in ``fresh_venv_support``.

pytest runs in importlib mode, where test modules cannot import their siblings; this
directory is put on ``sys.path`` under module names no other test directory uses.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from fresh_venv_support import FreshVenv, build


@pytest.fixture(scope="session")
def fresh_venv(tmp_path_factory: pytest.TempPathFactory) -> FreshVenv:
    """Built once per session (a few pip installs); every integration test reuses it."""
    return build(tmp_path_factory.mktemp("fresh-venv"))
