"""kvcore plugin for NVIDIA ModelOpt checkpoints: an example of a third-party format plugin.

ModelOpt stores a layer's FP8 KV-cache scales on the projections: ``P.k_proj.k_scale`` and
``P.v_proj.v_scale`` (0-dim float32, ``P = model.layers.N.self_attn``); this plugin maps
them to ``P.attn.k_scale`` / ``P.attn.v_scale``. Its config comes either from
``config.json`` (``quantization_config.quant_method == "modelopt"``, newer exports) or only
from ``hf_quant_config.json`` (kvcore presents that file's ``quantization`` section with
``quant_method == "modelopt"``).

An NVFP4 KV cache (``kv_cache_quant_algo: "NVFP4"`` or the string form ``kv_cache_scheme:
"NVFP4"``) has the same names and the same amax/448 scales: they load, and
``get_cache_scale_meaning`` says they were calibrated for ``"nvfp4"``. On an MLA model
(DeepSeek-V3) the names are phantoms (there is no ``k_proj``) and the values are the expanded
per-head keys and values (``ScaleMeaning("mla_per_head")``), not the latent cache.

Refused, with a message that says what to do, because kvcore cannot load it faithfully:

- an affine KV cache: named so in the config (``*_AFFINE``, ``symmetric: false``), or
  revealed by non-zero ``P.k_proj.k_bias`` / ``P.v_proj.v_bias`` tensors. A bias is an
  offset, as a zero point is; mapping it onto ``P.attn.k_zero_point`` lets the core do
  what it does with zero points: drop all-zero ones (no offset, so symmetric) and refuse
  any other, whatever ``strict`` says. It is never loaded as if symmetric.

The config's pydantic models, and the rule of what loads, are in :mod:`kvcore_modelopt.config`.
"""

from __future__ import annotations

import kvcore

__all__ = ["KV_SCALE_MAPPER", "METHODS", "get_cache_scale_mapper", "get_cache_scale_meaning"]

METHODS = ("modelopt", "modelopt_fp4")
"""``quant_method`` values ModelOpt writes (vLLM's name for NVFP4-weight checkpoints too)."""

KV_SCALE_MAPPER = kvcore.WeightsMapper(
    orig_to_new_regex={
        # Anchored on the projection, so an already-mapped ``P.attn.k_scale`` never matches again.
        r"\.k_proj\.k_scale$": ".attn.k_scale",
        r"\.v_proj\.v_scale$": ".attn.v_scale",
        r"\.k_proj\.k_bias$": ".attn.k_zero_point",
        r"\.v_proj\.v_bias$": ".attn.v_zero_point",
    }
)
"""ModelOpt's KV names -> kvcore's attention module (biases: see the module docstring)."""


@kvcore.hookimpl
def get_cache_scale_mapper(quant_config: kvcore.QuantConfig) -> kvcore.WeightsMapper | None:
    """The ModelOpt KV-scale mapper; ``None`` for other formats; refuses what kvcore cannot load."""
    if quant_config.quant_method not in METHODS:
        return None
    from kvcore_modelopt.config import parse_config  # pydantic (~0.2 s) only for ModelOpt checkpoints

    parse_config(quant_config.raw, quant_config.source)
    return KV_SCALE_MAPPER


@kvcore.hookimpl
def get_cache_scale_meaning(quant_config: kvcore.QuantConfig) -> kvcore.ScaleMeaning | None:
    """Per-head K/V on MLA models; the KV dtype the scales were calibrated for."""
    if quant_config.quant_method not in METHODS:
        return None
    from kvcore_modelopt.config import parse_config

    algorithm = parse_config(quant_config.raw, quant_config.source).kv_cache_algorithm
    mla = isinstance(quant_config.model_config.get("kv_lora_rank"), int)
    # ModelOpt's quantizers sit where attention receives K and V: after k_norm and RoPE.
    describes = "mla_per_head" if mla else "kv"
    return kvcore.ScaleMeaning(describes, calibrated_for=(algorithm or "FP8").lower(), rope="post")
