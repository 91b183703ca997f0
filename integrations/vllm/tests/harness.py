"""Run ``driver.py`` in a fresh process under a given environment, bounded by a timeout.

A driver that runs over its time, or a test stopped while one runs (pytest-timeout, Ctrl-C), is
killed with every process it started, so a hung vLLM never outlives its test.
"""

from __future__ import annotations

import contextlib
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
    proc = subprocess.Popen([sys.executable, str(DRIVER), mode, *map(str, checkpoints)], env=full,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        stdout, stderr = stop(proc)
        raise AssertionError(f"driver {mode} ran over {timeout:.0f} s, stopped:\n{(stdout + stderr)[-6000:]}") from None
    except BaseException:  # pytest-timeout's alarm, Ctrl-C: leave no vLLM process behind
        stop(proc)
        raise
    output = stdout + stderr
    results = {}
    for line in stdout.splitlines():
        if line.startswith("RESULT "):
            result = json.loads(line[len("RESULT "):])
            results[result["checkpoint"]] = result
    assert len(results) == len(checkpoints), f"driver exited {proc.returncode}:\n{output[-6000:]}"
    return Run(results, output)


def stop(proc: subprocess.Popen[str]) -> tuple[str, str]:
    """Kill a driver that ran over its time and every process it started (vLLM's engine core and
    workers), which would otherwise hold its pipes open and outlive the test; return its output."""
    import psutil  # a vLLM dependency

    try:
        family = psutil.Process(proc.pid).children(recursive=True)
    except psutil.Error:
        family = []
    proc.kill()
    for child in family:
        with contextlib.suppress(psutil.Error):
            child.kill()
    return proc.communicate()
