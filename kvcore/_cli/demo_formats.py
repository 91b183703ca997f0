"""The checkpoints ``kvcore demo`` writes: one per format, named as the real tools name them.

Names, shapes, dtypes and configs follow docs/formats.md (what llm-compressor, AMD Quark,
NVIDIA ModelOpt and AutoFP8 write); the values are made up but plausible (amax / 448).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

__all__ = ["FORMATS", "DemoFormat"]

_FP8 = {"num_bits": 8, "type": "float", "strategy": "tensor", "dynamic": False, "symmetric": True}


@dataclasses.dataclass(frozen=True)
class DemoFormat:
    """One format: its config, the checkpoint names of its KV scales, and the plugin for it."""

    name: str
    producer: str
    plugin: str
    distribution: str
    directory: str
    quant_method: str
    kv_names: dict[str, str]
    """scale parameter -> checkpoint name under ``model.layers.N.self_attn``."""
    kv_shape: tuple[int, ...]
    kv_dtype: torch.dtype
    weight_scale_shape: tuple[int, ...]
    weight_scale_dtype: torch.dtype
    quantization_config: dict[str, Any] | None = None
    hf_quant_config: dict[str, Any] | None = None

    @property
    def install(self) -> str:
        """From the kvcore checkout: the plugins are not published, and ModelOpt's is an example."""
        return f"pip install -e {CHECKOUT_FOLDERS[self.distribution]} (from the kvcore checkout)"


CHECKOUT_FOLDERS = {
    "kvcore-fp8": "plugins/fp8",
    "kvcore-quark": "plugins/quark",
    "kvcore-compressed-tensors": "plugins/compressed_tensors",
    "kvcore-modelopt": "examples/kvcore-modelopt",
}
"""Where each demonstrated format's plugin lives in the repository."""


def _compressed_tensors(strategy: str) -> dict[str, Any]:
    return {
        "quant_method": "compressed-tensors",
        "format": "float-quantized",
        "quantization_status": "compressed",
        "version": "0.19.0",
        "ignore": ["lm_head"],
        "config_groups": {
            "group_0": {"targets": ["Linear"], "format": "float-quantized", "weights": _FP8,
                        "input_activations": _FP8},
        },
        "kv_cache_scheme": {**_FP8, "strategy": strategy},
    }


def _quark_spec(dtype: str = "fp8_e4m3") -> dict[str, Any]:
    return {"dtype": dtype, "qscheme": "per_tensor", "is_dynamic": False, "symmetric": True}


def _quark() -> dict[str, Any]:
    layer = {"weight": _quark_spec(), "input_tensors": _quark_spec(), "output_tensors": _quark_spec()}
    return {
        "quant_method": "quark",
        "version": "0.13",
        "quant_mode": "eager_mode",
        "exclude": ["lm_head"],
        "export": {"kv_cache_group": ["*k_proj", "*v_proj"], "min_kv_scale": 0.0, "weight_format": "real_quantized",
                   "pack_method": "reorder"},
        "kv_cache_post_rope": True,
        "global_quant_config": {"weight": _quark_spec(), "input_tensors": _quark_spec()},
        "kv_cache_quant_config": {"*k_proj": layer, "*v_proj": layer},
        "layer_quant_config": {"*k_proj": layer, "*v_proj": layer, "*q_proj": layer},
        "softmax_quant_spec": _quark_spec(),
    }


FORMATS: tuple[DemoFormat, ...] = (
    DemoFormat(
        "compressed-tensors", "llm-compressor 0.14, kv_cache_scheme.strategy 'tensor'", "compressed-tensors",
        "kvcore-compressed-tensors", "llmcompressor-fp8-kv-tensor", "compressed-tensors",
        {"k_scale": "k_scale", "v_scale": "v_scale"}, (1,), torch.bfloat16, (1,), torch.bfloat16,
        quantization_config=_compressed_tensors("tensor"),
    ),
    DemoFormat(
        "compressed-tensors per-head", "llm-compressor 0.14, kv_cache_scheme.strategy 'attn_head'",
        "compressed-tensors", "kvcore-compressed-tensors", "llmcompressor-fp8-kv-attn-head", "compressed-tensors",
        {"k_scale": "k_scale", "v_scale": "v_scale"}, (2, 1, 1), torch.bfloat16, (1,), torch.bfloat16,
        quantization_config=_compressed_tensors("attn_head"),
    ),
    DemoFormat(
        "fp8", "AutoFP8", "fp8", "kvcore-fp8", "autofp8-fp8-kv", "fp8",
        {"k_scale": "k_scale", "v_scale": "v_scale"}, (), torch.float32, (), torch.float32,
        quantization_config={"quant_method": "fp8", "activation_scheme": "static", "kv_cache_scheme": "static",
                             "ignored_layers": ["lm_head"]},
    ),
    DemoFormat(
        "quark", "AMD Quark 0.13, fp8 KV and attention, eager", "quark", "kvcore-quark", "quark-fp8-kv-attn", "quark",
        {"k_scale": "k_proj.output_scale", "v_scale": "v_proj.output_scale", "q_scale": "q_proj.output_scale",
         "prob_scale": "prob_output_scale"},
        (), torch.bfloat16, (), torch.bfloat16,
        quantization_config=_quark(),
    ),
    DemoFormat(
        "modelopt", "NVIDIA ModelOpt 0.47, hf_quant_config.json only", "modelopt", "kvcore-modelopt",
        "modelopt-fp8-kv", "modelopt",
        {"k_scale": "k_proj.k_scale", "v_scale": "v_proj.v_scale"}, (), torch.float32, (), torch.float32,
        hf_quant_config={"producer": {"name": "modelopt", "version": "0.47.0"},
                         "quantization": {"quant_algo": "FP8", "kv_cache_quant_algo": "FP8"}},
    ),
)
"""Each installed format's plugin loads its checkpoint; the others are listed as skipped."""
