"""Helpers shared by the validation tests: a reference model, a valid checkpoint for it, and
the proof that a failed load left every parameter and buffer bit-identical."""

from __future__ import annotations

import json
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

import kvcore
from kvcore.testing import tiny_llama

FP8_CONFIG = {"quant_method": "fp8", "activation_scheme": "static", "kv_cache_scheme": "static"}
SHARD_1 = "model-00001-of-00002.safetensors"
SHARD_2 = "model-00002-of-00002.safetensors"
INDEX = "model.safetensors.index.json"

Snapshot = dict[str, torch.Tensor]


def reference_model() -> torch.nn.Module:
    """tiny_llama plus a persistent buffer, so that buffers are proven untouched as well."""
    model = tiny_llama(num_layers=2, kv_cache_dtype="fp8")
    model.model.register_buffer("rope_freqs", torch.full((8,), 0.5, dtype=torch.float32))
    return model


def checkpoint_tensors(model: torch.nn.Module, seed: int = 0) -> dict[str, torch.Tensor]:
    """Fresh values for every parameter and buffer of ``model``, and AutoFP8-style KV scales."""
    generator = torch.Generator().manual_seed(seed)
    tensors: dict[str, torch.Tensor] = {}
    for name, tensor in model.state_dict().items():
        if isinstance(tensor, kvcore.KVCacheScaleParameter) or name.endswith(("_scale",)):
            continue
        tensors[name] = torch.randn(tensor.shape, generator=generator).to(tensor.dtype)
    for layer in range(2):
        tensors[f"model.layers.{layer}.self_attn.k_scale"] = torch.tensor(0.0125 * (layer + 1))
        tensors[f"model.layers.{layer}.self_attn.v_scale"] = torch.tensor(0.025 * (layer + 1))
    return tensors


def snapshot(model: torch.nn.Module) -> Snapshot:
    """Clones of every parameter and persistent buffer, by name."""
    return {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}


def _raw(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.detach().contiguous().reshape(-1).view(torch.uint8)


def changed(model: torch.nn.Module, before: Snapshot) -> set[str]:
    """Names whose bytes, dtype or shape differ from ``before`` (new or vanished names too)."""
    now = model.state_dict()
    differ = set(now.keys() ^ before.keys())
    for name in now.keys() & before.keys():
        a, b = now[name], before[name]
        if a.dtype != b.dtype or a.shape != b.shape or not torch.equal(_raw(a), _raw(b)):
            differ.add(name)
    return differ


def assert_untouched(model: torch.nn.Module, before: Snapshot) -> None:
    """Every parameter and buffer is bit-identical to ``before``."""
    assert changed(model, before) == set()


def expect_refusal(
    model: torch.nn.Module,
    checkpoint: Path,
    error: type[kvcore.KvcoreError],
    *words: str,
    **load_kwargs: Any,
) -> kvcore.KvcoreError:
    """Load, expect ``error`` whose message holds every one of ``words``, and prove nothing changed."""
    before = snapshot(model)
    with pytest.raises(error) as caught:
        kvcore.load(model, checkpoint, **load_kwargs)
    message = str(caught.value)
    missing = [word for word in words if word not in message]
    assert not missing, f"{missing} not in: {message}"
    assert_untouched(model, before)
    return caught.value


def header_of(path: Path) -> tuple[dict[str, Any], bytes]:
    """The JSON header of a safetensors file and its data section."""
    raw = path.read_bytes()
    (length,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8 : 8 + length]), raw[8 + length :]


def rewrite_header(path: Path, edit: Callable[[dict[str, Any]], Any]) -> None:
    """Replace the header of ``path`` by ``edit(header)`` (a dict, or raw bytes), keeping the data."""
    header, data = header_of(path)
    new = edit(header)
    raw = new if isinstance(new, bytes) else json.dumps(new).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)


def last_tensor(path: Path) -> str:
    """The name of the tensor stored last in ``path``."""
    header, _ = header_of(path)
    entries = {k: v for k, v in header.items() if k != "__metadata__"}
    return max(entries, key=lambda name: entries[name]["data_offsets"][1])
