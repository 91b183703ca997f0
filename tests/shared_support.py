"""Helpers shared by the test directories: reading a checkpoint without kvcore, the ModelOpt example plugin."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType

import torch
from safetensors import safe_open

import kvcore
from kvcore.testing import registered_plugin

REPO = Path(__file__).resolve().parent.parent


def read_all(checkpoint: Path) -> dict[str, torch.Tensor]:
    """Every tensor of every shard, read with safetensors (independently of kvcore)."""
    tensors = {}
    for path in sorted(Path(checkpoint).glob("*.safetensors")):
        with safe_open(str(path), framework="pt") as f:
            tensors.update({name: f.get_tensor(name) for name in f.keys()})  # noqa: SIM118
    return tensors


def modelopt_module() -> ModuleType:
    """The example ModelOpt plugin's module, from the checkout when it is not installed."""
    try:
        import kvcore_modelopt
    except ImportError:
        sys.path.insert(0, str(REPO / "examples" / "kvcore-modelopt"))
        import kvcore_modelopt
    return kvcore_modelopt


@contextmanager
def modelopt_plugin() -> Iterator[ModuleType]:
    """The example ModelOpt plugin, registered unless it is installed; yields its module."""
    module = modelopt_module()
    if kvcore.get_plugin_manager().get_plugin("modelopt") is not None:
        yield module
        return
    with registered_plugin(module, "modelopt", distribution="kvcore-modelopt", version="0.1.0"):
        yield module
