"""A full ``LLM()``: engine core and worker are spawned processes; the bridge works in the worker."""

from __future__ import annotations

from pathlib import Path

import pytest
from checkpoints import EXPECTED, VOCAB, write
from harness import run

pytestmark = pytest.mark.timeout(900)


def test_generate_with_an_invented_format(tmp_path: Path) -> None:
    ckpt = write(tmp_path / "acme", "acme")
    done = run("llm", [ckpt], env={"VLLM_PLUGINS": "kvcore,acme"})  # an allow-list that names both
    result = done.results[str(ckpt)]
    assert result["error"] is None, done.output[-4000:]
    assert len(result["tokens"]) == 4 and all(0 <= t < VOCAB for t in result["tokens"])
    assert result["pid"] != result["driver_pid"]
    assert result["scales"] == EXPECTED
    (line,) = done.lines(f"KV-cache scale names of {ckpt} ")
    assert f"pid={result['pid']})" in line  # logged by the worker that loaded the weights
