"""Whether the bridge may act in this process: vLLM present, recent enough, not switched off."""

from __future__ import annotations

import importlib
import importlib.util
import logging
import os
import re
import sys

__all__ = ["ENV", "MIN_VLLM", "blocked", "log"]

ENV = "KVCORE_VLLM"
OFF = frozenset({"0", "false", "no", "off"})
MIN_VLLM = (0, 32)
"""The oldest vLLM release the bridge supports (the hooks it uses are those of vLLM 0.32)."""

log = logging.getLogger("vllm.kvcore")
"""Under vLLM's own logger, so that lines appear where vLLM's do, formatted as vLLM formats them."""


def blocked() -> tuple[int, str] | None:
    """``(log level, why)`` when the bridge must do nothing in this process, else ``None``."""
    if os.environ.get(ENV, "").strip().lower() in OFF:
        why = f"{ENV}={os.environ[ENV]}: kvcore-vllm is switched off, vLLM's own rules map KV-cache scales"
        return logging.INFO, why
    vllm = sys.modules.get("vllm")
    if vllm is None:
        if importlib.util.find_spec("vllm") is None:
            return logging.INFO, "vLLM is not installed: kvcore-vllm does nothing"
        vllm = importlib.import_module("vllm")
    version = str(getattr(vllm, "__version__", ""))
    release = _release(version)
    if release is not None and release < MIN_VLLM:
        oldest = ".".join(map(str, MIN_VLLM))
        return logging.WARNING, (
            f"vLLM {version} is older than {oldest}, the oldest release kvcore-vllm supports: it does "
            f"nothing, and vLLM's own rules map KV-cache scales. Upgrade vLLM to {oldest} or later"
        )
    return None


def _release(version: str) -> tuple[int, int] | None:
    """``(major, minor)`` of a version string; ``None`` for a development build ("dev")."""
    match = re.match(r"(\d+)\.(\d+)", version)
    return (int(match[1]), int(match[2])) if match else None
