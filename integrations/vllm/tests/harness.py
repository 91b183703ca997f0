"""Run ``driver.py`` in a fresh process under a given environment, bounded by a timeout."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

DRIVER = Path(__file__).resolve().parent / "driver.py"
CONTROLS = ("KVCORE_VLLM", "VLLM_PLUGINS", "KVCORE_PLUGINS", "KVCORE_DISABLE_PLUGINS")
"""Switches a developer's shell may set; every run starts without them and sets its own."""


@dataclasses.dataclass
class Run:
    results: dict[str, dict[str, Any]]
    output: str

    def lines(self, needle: str) -> list[str]:
        return [line for line in self.output.splitlines() if needle in line]


def run(mode: str, checkpoints: list[Path], *, env: dict[str, str] | None = None, timeout: float = 600) -> Run:
    base = {k: v for k, v in os.environ.items() if k not in CONTROLS}
    full = {**base, "VLLM_TARGET_DEVICE": "cpu", "VLLM_CPU_KVCACHE_SPACE": "1",
            "VLLM_ALLOW_INSECURE_SERIALIZATION": "1", "HF_HUB_OFFLINE": "1", **(env or {})}
    proc = subprocess.run([sys.executable, str(DRIVER), mode, *map(str, checkpoints)], env=full,
                          capture_output=True, text=True, timeout=timeout, check=False)
    output = proc.stdout + proc.stderr
    results = {}
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            result = json.loads(line[len("RESULT "):])
            results[result["checkpoint"]] = result
    assert len(results) == len(checkpoints), f"driver exited {proc.returncode}:\n{output[-6000:]}"
    return Run(results, output)
