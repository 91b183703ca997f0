"""`import kvcore`, `kvcore plugins` and `kvcore inspect` never import torch: the commands answer at once.

``python -X importtime`` lists every module a process imports, on stderr: the commands run as
an operator runs them (``python -m kvcore ...``), and torch must not be among the modules.
``inspect`` reads headers and decodes its scales in pure Python (kvcore/_checkpoint/decode.py).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from kvcore._checkpoint.reader import read_checkpoint
from kvcore._checkpoint.safetensors import read_tensor

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
COMMANDS = {
    "plugins": ["plugins", "--json"],
    "inspect": ["inspect", str(FIXTURES / "real" / "quark" / "fp8_kv_attn_fp8_eager"), "--json"],
    "inspect-tp": ["inspect", str(FIXTURES / "real2" / "quark" / "phi3_fp8_kv_fp8"), "--tp-size", "2", "--layers"],
    "inspect-refused": ["inspect", str(FIXTURES / "real2" / "modelopt" / "qwen3_fp8_kv_fp8")],
}


def _imported(args: list[str]) -> tuple[subprocess.CompletedProcess[str], set[str]]:
    done = subprocess.run([sys.executable, "-X", "importtime", "-m", "kvcore", *args], capture_output=True,
                          text=True, timeout=120, check=False)
    modules = set(re.findall(r"^import time:\s+\d+ \|\s+\d+ \| *(\S+)$", done.stderr, re.MULTILINE))
    return done, modules


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_the_command_never_imports_torch(command: str) -> None:
    done, modules = _imported(COMMANDS[command])
    assert done.returncode in (0, 1), done.stderr[-2000:]
    assert "kvcore._cli.main" in modules  # the probe sees the command's imports
    assert done.stdout.strip()
    assert not {m for m in modules if m == "torch" or m.startswith("torch.")}, sorted(modules)[:20]


def test_inspect_without_torch_says_what_it_says_with_it() -> None:
    """The pure decoder's values are the ones the loader's torch reader gives (bit for bit: test_decode.py)."""
    done, _ = _imported(COMMANDS["inspect"])
    data = json.loads(done.stdout)
    ckpt = read_checkpoint(FIXTURES / "real" / "quark" / "fp8_kv_attn_fp8_eager")
    for scales in data["layers"].values():
        for entry in scales.values():
            assert entry["value"] == read_tensor(ckpt.tensors[entry["tensor"]]).to(torch.float32).item()


def test_every_public_name_still_resolves() -> None:
    import kvcore

    assert all(getattr(kvcore, name) is not None for name in kvcore.__all__)
    assert set(kvcore.__all__) <= set(dir(kvcore))
