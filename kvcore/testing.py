"""Test helpers for kvcore and for plugin authors.

- :func:`write_checkpoint` writes a real safetensors checkpoint (one file or shards with an
  index) with any names, shapes and dtypes, plus ``config.json``.
- :func:`tiny_llama` builds a small Llama-shaped model whose attention modules are
  :class:`kvcore.Attention` at ``model.layers.N.self_attn.attn``, optionally with fp8
  linear layers that carry ``weight_scale`` / ``input_scale`` the way quantized
  checkpoints do.

For plugin authors (see docs/writing-a-plugin.md):

- :func:`registered_plugin` registers a plugin object for one ``with`` block on the manager
  that ``kvcore.load`` uses, and unregisters it afterwards;
- :func:`assert_maps` asserts a mapper's name -> target table, listing every difference;
- :func:`check_plugin` is the conformance check to run in a plugin's own CI: hook
  signatures, ``None`` for foreign formats, a mapper for its own, idempotent mapping over
  real-looking names (:data:`REAL_LOOKING_NAMES`), and kvcore errors only.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from kvcore._attention import Attention
from kvcore._plugins.conformance import REAL_LOOKING_NAMES, assert_maps, check_plugin, registered_plugin

__all__ = [
    "REAL_LOOKING_NAMES",
    "FP8Linear",
    "assert_maps",
    "check_plugin",
    "registered_plugin",
    "tiny_llama",
    "write_checkpoint",
]


def write_checkpoint(
    directory: str | Path,
    tensors: Mapping[str, torch.Tensor],
    *,
    quantization_config: Mapping[str, Any] | None = None,
    config: Mapping[str, Any] | None = None,
    hf_quant_config: Mapping[str, Any] | None = None,
    shards: int = 1,
) -> Path:
    """Write ``tensors`` as a safetensors checkpoint in ``directory`` and return the directory.

    ``shards > 1`` splits the tensors round-robin-free, in name order, into that many
    ``model-0000i-of-0000n.safetensors`` files with a ``model.safetensors.index.json``.
    ``quantization_config`` goes into ``config.json``; ``hf_quant_config`` is written as
    ModelOpt's ``hf_quant_config.json``.
    """
    path = Path(directory)
    path.mkdir(parents=True, exist_ok=True)
    full_config = dict(config or {"architectures": ["LlamaForCausalLM"], "model_type": "llama"})
    if quantization_config is not None:
        full_config["quantization_config"] = dict(quantization_config)
    (path / "config.json").write_text(json.dumps(full_config, indent=2))
    if hf_quant_config is not None:
        (path / "hf_quant_config.json").write_text(json.dumps(hf_quant_config, indent=2))
    contiguous = {name: t.detach().contiguous() for name, t in tensors.items()}
    if shards <= 1:
        save_file(contiguous, str(path / "model.safetensors"), metadata={"format": "pt"})
        return path
    _write_shards(path, contiguous, shards)
    return path


def _write_shards(path: Path, tensors: dict[str, torch.Tensor], shards: int) -> None:
    names = sorted(tensors)
    per_shard = -(-len(names) // shards)
    weight_map: dict[str, str] = {}
    total = 0
    for i in range(shards):
        part = names[i * per_shard : (i + 1) * per_shard]
        file_name = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
        save_file({n: tensors[n] for n in part}, str(path / file_name), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(part, file_name))
        total += sum(tensors[n].numel() * tensors[n].element_size() for n in part)
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (path / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))


class FP8Linear(torch.nn.Module):
    """A linear layer as fp8 checkpoints store it: fp8 ``weight``, ``weight_scale``, ``input_scale``."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        scale_shape: tuple[int, ...] = (),
        scale_dtype: torch.dtype = torch.float32,
    ) -> None:
        super().__init__()
        fp8 = torch.float8_e4m3fn
        self.weight = torch.nn.Parameter(torch.zeros(out_features, in_features, dtype=fp8), requires_grad=False)
        self.weight_scale = torch.nn.Parameter(torch.zeros(scale_shape, dtype=scale_dtype), requires_grad=False)
        self.input_scale = torch.nn.Parameter(torch.zeros(scale_shape, dtype=scale_dtype), requires_grad=False)


def _linear(in_f: int, out_f: int, fp8: bool, scale_shape: tuple[int, ...], scale_dtype: torch.dtype,
            dtype: torch.dtype) -> torch.nn.Module:
    if fp8:
        return FP8Linear(in_f, out_f, scale_shape=scale_shape, scale_dtype=scale_dtype)
    return torch.nn.Linear(in_f, out_f, bias=False, dtype=dtype)


class _RMSNorm(torch.nn.Module):
    def __init__(self, size: int, dtype: torch.dtype) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.ones(size, dtype=dtype))


def tiny_llama(
    *,
    num_layers: int = 2,
    hidden_size: int = 64,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    head_dim: int = 16,
    intermediate_size: int = 128,
    vocab_size: int = 256,
    dtype: torch.dtype = torch.bfloat16,
    kv_cache_dtype: str = "auto",
    fp8: bool = False,
    scale_shape: tuple[int, ...] = (),
    scale_dtype: torch.dtype = torch.float32,
) -> torch.nn.Module:
    """A Llama-shaped model matching the genuine fixtures' layout (defaults: their sizes).

    ``fp8=True`` makes every projection an :class:`FP8Linear` whose ``weight_scale`` and
    ``input_scale`` have ``scale_shape`` / ``scale_dtype`` (llm-compressor: ``(1,)`` bf16;
    Quark: ``()`` bf16; AutoFP8: ``()`` float32).
    """

    def linear(i: int, o: int) -> torch.nn.Module:
        return _linear(i, o, fp8, scale_shape, scale_dtype, dtype)

    layers = torch.nn.ModuleList()
    for _ in range(num_layers):
        attn = torch.nn.Module()
        attn.q_proj = linear(hidden_size, num_heads * head_dim)
        attn.k_proj = linear(hidden_size, num_kv_heads * head_dim)
        attn.v_proj = linear(hidden_size, num_kv_heads * head_dim)
        attn.o_proj = linear(num_heads * head_dim, hidden_size)
        attn.attn = Attention(num_heads, head_dim, num_kv_heads, kv_cache_dtype=kv_cache_dtype)
        mlp = torch.nn.Module()
        mlp.gate_proj = linear(hidden_size, intermediate_size)
        mlp.up_proj = linear(hidden_size, intermediate_size)
        mlp.down_proj = linear(intermediate_size, hidden_size)
        layer = torch.nn.Module()
        layer.self_attn, layer.mlp = attn, mlp
        layer.input_layernorm = _RMSNorm(hidden_size, dtype)
        layer.post_attention_layernorm = _RMSNorm(hidden_size, dtype)
        layers.append(layer)
    inner = torch.nn.Module()
    inner.embed_tokens = torch.nn.Embedding(vocab_size, hidden_size, dtype=dtype)
    inner.layers = layers
    inner.norm = _RMSNorm(hidden_size, dtype)
    model = torch.nn.Module()
    model.model = inner
    model.lm_head = torch.nn.Linear(hidden_size, vocab_size, bias=False, dtype=dtype)
    return model
