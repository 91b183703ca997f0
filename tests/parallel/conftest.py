"""Every tensor-parallel test starts with kvcore's default reads: an operator's
``KVCORE_DIRECT_IO=0`` (or a ``torchrun``'s ``LOCAL_WORLD_SIZE``) in the environment would turn
the O_DIRECT tests into mapped-path ones."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def default_reads(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KVCORE_DIRECT_IO", raising=False)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
