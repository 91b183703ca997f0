"""Helpers shared by the test directories: reading a checkpoint without kvcore, the ModelOpt example plugin."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType

import torch
from safetensors import safe_open

import kvcore
from kvcore import WeightsMapper
from kvcore.testing import registered_plugin

REPO = Path(__file__).resolve().parent.parent
DTYPES = {"BF16": torch.bfloat16, "F16": torch.float16, "F32": torch.float32, "F8_E4M3": torch.float8_e4m3fn}
"""safetensors dtype names of the genuine fixtures -> torch dtypes."""
Headers = dict[str, tuple[tuple[int, ...], torch.dtype]]


def read_all(checkpoint: Path) -> dict[str, torch.Tensor]:
    """Every tensor of every shard, read with safetensors (independently of kvcore)."""
    tensors = {}
    for path in sorted(Path(checkpoint).glob("*.safetensors")):
        with safe_open(str(path), framework="pt") as f:
            tensors.update({name: f.get_tensor(name) for name in f.keys()})  # noqa: SIM118
    return tensors


def read_headers(checkpoint: Path) -> Headers:
    """``name -> (shape, dtype)`` of every tensor of every shard, read with safetensors."""
    out = {}
    for path in sorted(Path(checkpoint).glob("*.safetensors")):
        with safe_open(str(path), framework="pt") as f:
            for name in f.keys():  # noqa: SIM118 - safe_open has no __iter__
                view = f.get_slice(name)
                out[name] = (tuple(view.get_shape()), DTYPES[view.get_dtype()])
    return out


def modelopt_module() -> ModuleType:
    """The example ModelOpt plugin's module: installed, or from the checkout (pytest's ``pythonpath``)."""
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


def vllm_map_name(mapper: WeightsMapper, key: str) -> str | None:
    """vLLM's ``WeightsMapper._map_name`` (model_executor/models/utils.py), the oracle."""
    for pattern, new_key in mapper.orig_to_new_regex.items():
        if pattern.search(key):
            if new_key is None:
                return None
            key = pattern.sub(new_key, key)
    for substr, new_key in mapper.orig_to_new_substr.items():
        if substr in key:
            if new_key is None:
                return None
            key = key.replace(substr, new_key, 1)
    for prefix, new_key in mapper.orig_to_new_prefix.items():
        if key.startswith(prefix):
            if new_key is None:
                return None
            key = key.replace(prefix, new_key, 1)
    for suffix, new_key in mapper.orig_to_new_suffix.items():
        if key.endswith(suffix):
            if new_key is None:
                return None
            key = new_key.join(key.rsplit(suffix, 1))
    return key
