"""kvcore plugin for NVIDIA ModelOpt checkpoints: an example of a third-party format plugin.

ModelOpt stores a layer's FP8 KV-cache scales on the projections: ``P.k_proj.k_scale`` and
``P.v_proj.v_scale`` (0-dim float32, ``P = model.layers.N.self_attn``); this plugin maps
them to ``P.attn.k_scale`` / ``P.attn.v_scale``. Its config comes either from
``config.json`` (``quantization_config.quant_method == "modelopt"``, newer exports) or only
from ``hf_quant_config.json`` (kvcore presents that file's ``quantization`` section with
``quant_method == "modelopt"``).

Refused, with a message that says what to do, because kvcore cannot load them faithfully:

- an NVFP4 KV cache (``kv_cache_quant_algo: "NVFP4"`` or the string form
  ``kv_cache_scheme: "NVFP4"``): kvcore has no fp4 KV cache;
- an affine KV cache: named so in the config (``*_AFFINE``, ``symmetric: false``), or
  revealed by non-zero ``P.k_proj.k_bias`` / ``P.v_proj.v_bias`` tensors. A bias is an
  offset, as a zero point is; mapping it onto ``P.attn.k_zero_point`` lets the core do
  what it does with zero points: drop all-zero ones (no offset, so symmetric) and refuse
  any other, whatever ``strict`` says. It is never loaded as if symmetric.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

import kvcore

__all__ = ["KV_SCALE_MAPPER", "METHODS", "ModelOptConfig", "get_cache_scale_mapper", "kv_cache_algorithm"]

METHODS = ("modelopt", "modelopt_fp4")
"""``quant_method`` values ModelOpt writes (vLLM's name for NVFP4-weight checkpoints too)."""

SUPPORTED = ("FP8",)

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


class KVCacheScheme(BaseModel):
    """``kv_cache_scheme`` as newer ModelOpt exports write it in config.json (FP8: a dict)."""

    model_config = ConfigDict(extra="allow")

    num_bits: int = Field(8, description="Bits per KV element: 8 for FP8.")
    type: Literal["float", "int"] = Field("float", description="'float' for FP8.")
    dynamic: bool = Field(False, description="Static (calibrated) scales are what kvcore loads.")
    symmetric: bool = Field(True, description="False means affine: offsets kvcore cannot load.")

    def algorithm(self) -> str:
        """The ``kv_cache_quant_algo`` spelling of this scheme (``"FP8"``, ``"FP8_AFFINE"``, ...)."""
        base = "FP8" if (self.type, self.num_bits) == ("float", 8) else f"{self.type.upper()}{self.num_bits}"
        return base if self.symmetric else f"{base}_AFFINE"


class ModelOptConfig(BaseModel):
    """A ModelOpt quantization config: config.json's ``quantization_config`` or hf_quant_config's section."""

    model_config = ConfigDict(extra="allow")

    quant_method: Literal["modelopt", "modelopt_fp4"] = Field(
        "modelopt", description="'modelopt' (kvcore supplies it for hf_quant_config.json-only checkpoints)."
    )
    quant_algo: str | None = Field(None, description="Weight/activation algorithm ('FP8', 'NVFP4', ...); not used.")
    kv_cache_quant_algo: str | None = Field(None, description="KV-cache algorithm: 'FP8', 'NVFP4' or null (none).")
    kv_cache_scheme: KVCacheScheme | str | None = Field(
        None, description="config.json form: a dict for FP8, the plain string 'NVFP4' for NVFP4."
    )


def parse_config(raw: dict[str, Any]) -> ModelOptConfig:
    """Validate ``raw`` (a nested ``quantization`` section is read too) or raise ``QuantConfigError``."""
    nested = raw.get("quantization")
    fields = {**nested, "quant_method": raw.get("quant_method", "modelopt")} if isinstance(nested, dict) else raw
    try:
        return ModelOptConfig.model_validate(fields)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']} (got {err.get('input')!r})" for err in exc.errors()
        )
        raise kvcore.QuantConfigError(f"invalid ModelOpt quantization config: {problems}") from None


def kv_cache_algorithm(config: ModelOptConfig) -> str | None:
    """The KV-cache algorithm the config declares (upper case), or ``None`` when the KV cache is not quantized."""
    declared = {}
    if config.kv_cache_quant_algo is not None:
        declared["kv_cache_quant_algo"] = config.kv_cache_quant_algo.upper()
    scheme = config.kv_cache_scheme
    if scheme is not None:
        declared["kv_cache_scheme"] = scheme.upper() if isinstance(scheme, str) else scheme.algorithm()
    if len(set(declared.values())) > 1:
        raise kvcore.QuantConfigError(
            f"ModelOpt config declares two KV-cache algorithms: {declared}; re-export the checkpoint"
        )
    return next(iter(declared.values()), None)


def _refusal(algorithm: str) -> str:
    field = "kv_cache_quant_algo / kv_cache_scheme"
    if algorithm.endswith("_AFFINE"):
        why = "an affine KV cache adds k_bias/v_bias offsets, and kvcore loads symmetric KV caches only"
    elif "FP4" in algorithm:
        why = "kvcore has no fp4 KV cache (kvcore.Attention's kv_cache_dtype is 'auto' or fp8)"
    else:
        why = "kvcore loads KV-cache scales for fp8 KV caches only"
    return (
        f"ModelOpt {field} is {algorithm!r}: {why}. Supported: {', '.join(SUPPORTED)} (or no KV-cache "
        "quantization). Re-export with ModelOpt's FP8 KV cache (kv_cache_qformat='fp8')"
    )


@kvcore.hookimpl
def get_cache_scale_mapper(quant_config: kvcore.QuantConfig) -> kvcore.WeightsMapper | None:
    """The ModelOpt KV-scale mapper; ``None`` for other formats; refuses what kvcore cannot load."""
    config = kvcore.QuantConfig.coerce(quant_config)
    if config.quant_method not in METHODS:
        return None
    algorithm = kv_cache_algorithm(parse_config(dict(config.raw)))
    if algorithm is not None and algorithm not in SUPPORTED:
        raise kvcore.QuantConfigError(_refusal(algorithm))
    return KV_SCALE_MAPPER
