"""docs/api.md lists every public name, so a newcomer finds each one."""

from __future__ import annotations

from pathlib import Path

import kvcore

DOC = Path(__file__).resolve().parents[2] / "docs" / "api.md"


def test_every_public_name_is_in_the_api_page() -> None:
    text = DOC.read_text()
    missing = [name for name in kvcore.__all__ if name != "__version__" and name not in text]
    assert not missing, f"docs/api.md does not mention {missing}"
