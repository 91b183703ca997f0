"""Checks for the engine tests: what a packed model must hold after loading a genuine checkpoint.

The expectations are computed from the checkpoint alone (read with safetensors) and the
``packed_modules_mapping`` table: a fused row block is the shard's tensor at the offset the
preceding shards' row counts give; a per-shard scale is the shard's scale in float32.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from pathlib import Path

import torch
from shared_support import read_all

import kvcore
from kvcore.testing import write_checkpoint

ROOT = Path(__file__).resolve().parent.parent / "fixtures"
LLAMA_LIKE = (
    "real/llmcompressor/fp8_kv_tensor", "real/quark/fp8_kv_attn_fp8_eager", "real/autofp8/head_k_v_scale",
    "real2/llmcompressor/qwen3_fp8_kv_tensor", "real2/llmcompressor/qwen3_moe_fp8_kv_tensor",
    "real2/quark/qwen3_fp8_kv_fp8", "real2/quark/qwen3_fp8_kv_fp8_post_rope", "real2/quark/mixtral_fp8_kv_fp8",
    "real2/modelopt/qwen3_fp8_kv_fp8", "real2/modelopt/mixtral_fp8_kv_fp8",
)  # fmt: skip
"""Every genuine Llama-like fixture the first-party plugins and the example ModelOpt plugin load."""

KV_SOURCES = {
    "k_scale": ("k_scale", "k_proj.output_scale", "k_proj.k_scale"),
    "v_scale": ("v_scale", "v_proj.output_scale", "v_proj.v_scale"),
    "q_scale": ("q_proj.output_scale",),
    "prob_scale": ("prob_output_scale",),
}
"""Checkpoint leaves (after ``model.layers.N.self_attn.``) each attention scale comes from."""
KV_LEAVES = {leaf for leaves in KV_SOURCES.values() for leaf in leaves}


def fixture(name: str) -> Path:
    return ROOT / name




def weights(checkpoint: Path) -> Iterator[tuple[str, torch.Tensor]]:
    """The checkpoint as an engine's weight iterator."""
    yield from read_all(checkpoint).items()


def as_bytes(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.detach().contiguous().reshape(-1).view(torch.uint8)


def same(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Same dtype, shape and bytes."""
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(as_bytes(a), as_bytes(b))


def snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: t.detach().clone() for name, t in model.state_dict().items()}


def assert_unchanged(model: torch.nn.Module, before: Mapping[str, torch.Tensor]) -> None:
    after = model.state_dict()
    assert after.keys() == before.keys()
    for name, tensor in before.items():
        assert same(after[name], tensor), name


def without(checkpoint: Path, directory: Path, drop: str) -> Path:
    """A copy of ``checkpoint`` (config and ModelOpt file included) without the tensors ending in ``drop``."""
    tensors = {n: t for n, t in read_all(checkpoint).items() if not n.endswith(drop)}
    hf_quant = checkpoint / "hf_quant_config.json"
    return write_checkpoint(
        directory, tensors, config=json.loads((checkpoint / "config.json").read_text()),
        hf_quant_config=json.loads(hf_quant.read_text()) if hf_quant.exists() else None,
    )  # fmt: skip


def kv_leaf(name: str) -> bool:
    _, sep, leaf = name.partition(".self_attn.")
    return bool(sep) and leaf in KV_LEAVES


def check_weights(model: torch.nn.Module, tensors: Mapping[str, torch.Tensor],
                  mapping: Mapping[str, tuple[str, int | str]]) -> tuple[set[str], set[str]]:
    """Every non-KV checkpoint tensor is in the model bit-exact (in its fused block or per-shard scale slot),
    and every model parameter but the attentions' is one of them. Returns (parameters, fused ones)."""
    state = model.state_dict()
    covered: set[str] = set()
    fused_names: set[str] = set()
    for name, tensor in tensors.items():
        if kv_leaf(name):
            continue
        parts = name.split(".")
        hits = [i for i, part in enumerate(parts[:-1]) if part in mapping]
        if not hits:
            assert same(state[name], tensor), name
            covered.add(name)
            continue
        i = hits[0]
        fused, shard = mapping[parts[i]]
        target = ".".join([*parts[:i], fused, *parts[i + 1 :]])
        order = [(key, s) for key, (f, s) in mapping.items() if f == fused]
        param = state[target]
        if parts[-1] in ("weight_scale", "input_scale"):
            assert param.dtype == torch.float32 and param.shape == (len(order),), target
            index = [s for _, s in order].index(shard)
            assert same(param[index], tensor.to(torch.float32).reshape(())), f"{target}[{index}] <- {name}"
        else:
            sizes = {s: tensors[".".join([*parts[:i], key, *parts[i + 1 :]])].shape[0] for key, s in order}
            start = sum(sizes[s] for _, s in order[: [s for _, s in order].index(shard)])
            assert param.shape[0] == sum(sizes.values()), target
            assert same(param[start : start + sizes[shard]], tensor), f"{target}[{start}:] <- {name}"
        covered.add(target)
        fused_names.add(target)
    others = {n for n in state if ".attn." not in n}
    assert others == covered, sorted(others ^ covered)
    return covered, fused_names


def expected_kv(tensors: Mapping[str, torch.Tensor], layers: int) -> dict[str, dict[str, tuple[float, str]]]:
    """``{attention: {scale: (value, source)}}``: the checkpoint's value in float32, or 1.0 and "default"."""
    out = {}
    for i in range(layers):
        p = f"model.layers.{i}.self_attn"
        out[f"{p}.attn"] = {}
        for scale, leaves in KV_SOURCES.items():
            present = [f"{p}.{leaf}" for leaf in leaves if f"{p}.{leaf}" in tensors]
            assert len(present) <= 1, present
            value = float(tensors[present[0]].to(torch.float32).reshape(())) if present else 1.0
            out[f"{p}.attn"][scale] = (value, present[0] if present else "default")
    return out


def check_kv(model: torch.nn.Module, tensors: Mapping[str, torch.Tensor], layers: int) -> set[str]:
    """Every attention scale is float32 and equals its checkpoint tensor (or 1.0); returns the loaded ones."""
    loaded = set()
    for module, scales in expected_kv(tensors, layers).items():
        attention = model.get_submodule(module)
        assert isinstance(attention, kvcore.Attention)
        for scale, (value, source) in scales.items():
            param = getattr(attention, scale)
            assert param.dtype == torch.float32 and param.numel() == 1, f"{module}.{scale}"
            assert float(param) == value, (f"{module}.{scale}", float(param), value, source)
            if source != "default":
                loaded.add(f"{module}.{scale}")
    return loaded


def num_layers(checkpoint: Path) -> int:
    return json.loads((checkpoint / "config.json").read_text())["num_hidden_layers"]
