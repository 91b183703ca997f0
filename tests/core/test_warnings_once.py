"""A load's warning is printed once, pointing at the caller's line, not at kvcore's frames."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

SCRIPT = """
import torch, kvcore
from kvcore.testing import tiny_llama, write_checkpoint
model = tiny_llama(kv_cache_dtype="fp8")
weights = {n: p.detach().clone() for n, p in model.named_parameters() if not n.endswith("_scale")}
kvcore.load(model, write_checkpoint(PATH, weights))  # the caller's line
"""


def test_a_missing_scale_warning_is_printed_once_at_the_callers_line(tmp_path: Path) -> None:
    script = tmp_path / "user.py"
    script.write_text(SCRIPT.replace("PATH", repr(str(tmp_path / "ckpt"))))
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, check=True, timeout=120)
    lines = [line for line in done.stderr.splitlines() if "has an fp8 KV cache but" in line]
    assert len(lines) == 2, done.stderr  # one warning per attention layer, each once
    assert all(line.startswith(f"{script}:6: UserWarning") for line in lines), done.stderr
