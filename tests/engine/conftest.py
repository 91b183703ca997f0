"""Make ``engine_models`` / ``engine_support`` importable, and the example ModelOpt plugin available.

pytest runs in importlib mode, where test modules cannot import their siblings; this
directory is put on ``sys.path`` under module names no other test directory uses.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from shared_support import modelopt_module, modelopt_plugin

sys.path.insert(0, str(Path(__file__).resolve().parent))
modelopt_module()  # importable by the tests here, installed or not


@pytest.fixture(autouse=True)
def modelopt_registered() -> Iterator[None]:
    """The ModelOpt fixtures need the example plugin; registered here when it is not installed."""
    with modelopt_plugin():
        yield
