"""Make ``arch_models`` / ``arch_support`` importable, and the example ModelOpt plugin available.

pytest runs in importlib mode, where test modules cannot import their siblings; this
directory is put on ``sys.path`` under module names no other test directory uses.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
try:
    import kvcore_modelopt
except ImportError:
    sys.path.insert(0, str(HERE.parent.parent / "examples" / "kvcore-modelopt"))
    import kvcore_modelopt

import kvcore  # noqa: E402
from kvcore.testing import registered_plugin  # noqa: E402


@pytest.fixture(autouse=True)
def modelopt_plugin() -> Iterator[None]:
    """The ModelOpt fixtures need the example plugin; registered here when it is not installed."""
    if kvcore.get_plugin_manager().get_plugin("modelopt") is not None:
        yield
        return
    with registered_plugin(kvcore_modelopt, "modelopt", distribution="kvcore-modelopt", version="0.1.0"):
        yield
