"""The pydantic models of a ModelOpt quantization config, imported only for ModelOpt checkpoints.

Importing pydantic takes ~0.2 s, and kvcore imports every installed plugin when it discovers
them, whatever the checkpoint's format: the package imports this module on first use (in the
hook, once the method is ModelOpt's, or through ``kvcore_modelopt.__getattr__``).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

import kvcore

__all__ = ["KVCacheScheme", "ModelOptConfig", "kv_cache_algorithm", "parse_config"]


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
