"""ModelOpt-style checkpoints as ModelOpt 0.47 writes them (docs/formats.md), for this plugin's tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from kvcore.testing import tiny_llama, write_checkpoint

LAYERS = 2
CONFIG_JSON = {
    "quant_method": "modelopt",
    "quant_algo": "FP8",
    "kv_cache_scheme": {"num_bits": 8, "type": "float", "dynamic": False},
    "producer": {"name": "modelopt", "version": "0.47.0"},
}
HF_QUANT_CONFIG = {
    "producer": {"name": "modelopt", "version": "0.47.0"},
    "quantization": {"quant_algo": "FP8", "kv_cache_quant_algo": "FP8", "exclude_modules": ["lm_head"]},
}


def k_value(layer: int) -> float:
    """Distinct, exactly representable scales per layer (ModelOpt writes 1.0 often: include it)."""
    return 1.0 if layer == 0 else 0.0625 * (layer + 1)


def v_value(layer: int) -> float:
    return 0.5 + 0.125 * layer


def tensors(*, bias: float | None = None) -> dict[str, torch.Tensor]:
    """Every tensor of an FP8 tiny Llama, plus ModelOpt's KV scales (and affine biases)."""
    torch.manual_seed(0)
    source = tiny_llama(num_layers=LAYERS, fp8=True)
    for name, param in source.named_parameters():
        if name.endswith(("weight_scale", "input_scale")):
            param.data.fill_(0.03125)
        else:  # random bf16 weights and fp8 projection weights, so a wrong copy shows
            param.data = torch.randn(param.shape).to(param.dtype)
    out = {n: t.detach().clone() for n, t in source.state_dict().items() if ".attn." not in n}
    for i in range(LAYERS):
        p = f"model.layers.{i}.self_attn"
        out[f"{p}.k_proj.k_scale"] = torch.tensor(k_value(i), dtype=torch.float32)
        out[f"{p}.v_proj.v_scale"] = torch.tensor(v_value(i), dtype=torch.float32)
        if bias is not None:
            out[f"{p}.k_proj.k_bias"] = torch.full((1, 2, 1, 16), bias, dtype=torch.float32)
            out[f"{p}.v_proj.v_bias"] = torch.full((1, 2, 1, 16), bias, dtype=torch.float32)
    return out


def write(directory: Path, *, style: str = "config.json", shards: int = 1, bias: float | None = None,
          quantization: dict[str, Any] | None = None) -> Path:
    """``style``: "config.json" (quant_method modelopt) or "hf_quant_config" (that file only)."""
    if style == "config.json":
        return write_checkpoint(directory, tensors(bias=bias), shards=shards,
                                quantization_config=quantization or CONFIG_JSON)
    hf = {**HF_QUANT_CONFIG, "quantization": quantization or HF_QUANT_CONFIG["quantization"]}
    return write_checkpoint(directory, tensors(bias=bias), shards=shards, hf_quant_config=hf)


def model(kv_cache_dtype: str = "fp8") -> torch.nn.Module:
    return tiny_llama(num_layers=LAYERS, fp8=True, kv_cache_dtype=kv_cache_dtype)
