"""The example ModelOpt plugin, available to every architecture test (its fixtures need it)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from shared_support import modelopt_plugin


@pytest.fixture(autouse=True)
def modelopt_registered() -> Iterator[None]:
    """The ModelOpt fixtures need the example plugin; registered here when it is not installed."""
    with modelopt_plugin():
        yield
