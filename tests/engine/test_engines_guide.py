"""docs/engines.md works as written: its python blocks run in order, and their asserts hold.

The blocks share one namespace, as a reader running them one after another would, and run from
the repository root (the guide names the fixture by its path from there). Any warning is an
error: the guide's loads of a genuine checkpoint must be clean.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
GUIDE = ROOT / "docs" / "engines.md"


def _python_blocks() -> list[str]:
    return [body for lang, body in re.findall(r"```(\w*)\n(.*?)```", GUIDE.read_text(), re.S) if lang == "python"]


def test_guide_has_the_sections_it_promises() -> None:
    code = "".join(_python_blocks())
    for call in ("kvcore.load(model, CKPT)", "AutoWeightsLoader(model).load_weights(", "kvcore.read_kv_scales(CKPT)"):
        assert call in code


def test_guide_blocks_run_in_order(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)
    namespace: dict[str, object] = {"__name__": "engines_guide"}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for number, body in enumerate(_python_blocks(), 1):
            exec(compile(body, f"docs/engines.md python block {number}", "exec"), namespace)
