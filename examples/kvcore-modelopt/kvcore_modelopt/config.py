"""The pydantic models of a ModelOpt quantization config, with the rule of what kvcore can load.

Importing pydantic takes ~0.2 s and kvcore imports every installed plugin when it discovers
them, whatever the checkpoint's format: the package does not import this module; its hooks do,
once the method is ModelOpt's.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

import kvcore

__all__ = ["SUPPORTED", "KVCacheScheme", "ModelOptConfig", "parse_config"]

SUPPORTED = ("FP8", "NVFP4")
"""The KV-cache algorithms whose scales kvcore loads (NVFP4's are amax/448, as FP8's)."""


class KVCacheScheme(BaseModel):
    """``kv_cache_scheme`` as newer ModelOpt exports write it in config.json: a dict for FP8, "NVFP4" for NVFP4."""

    model_config = ConfigDict(extra="allow")

    name: str | None = Field(None, description="The string form's algorithm ('NVFP4'); None for the dict form.")
    num_bits: int = Field(8, description="Bits per KV element: 8 for FP8.")
    type: Literal["float", "int"] = Field("float", description="'float' for FP8.")
    dynamic: bool = Field(False, description="Static (calibrated) scales are what kvcore loads.")
    symmetric: bool = Field(True, description="False means affine: offsets kvcore cannot load.")

    def algorithm(self) -> str:
        """The ``kv_cache_quant_algo`` spelling of this scheme (``"FP8"``, ``"FP8_AFFINE"``, ``"NVFP4"``...)."""
        if self.name is not None:
            return self.name.upper()
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
    kv_cache_scheme: KVCacheScheme | None = Field(
        None, description="config.json form: a dict for FP8, the plain string 'NVFP4' for NVFP4."
    )

    @field_validator("kv_cache_scheme", mode="before")
    @classmethod
    def _string_form(cls, value: Any) -> Any:
        # One model for both forms: a union would report a wrong value twice, once per form.
        return {"name": value} if isinstance(value, str) else value

    @property
    def kv_cache_algorithm(self) -> str | None:
        """The KV-cache algorithm declared (upper case), or ``None`` when the KV cache is not quantized."""
        return next(iter(self._declared().values()), None)

    def _declared(self) -> dict[str, str]:
        declared = {}
        if self.kv_cache_quant_algo is not None:
            declared["kv_cache_quant_algo"] = self.kv_cache_quant_algo.upper()
        if self.kv_cache_scheme is not None:
            declared["kv_cache_scheme"] = self.kv_cache_scheme.algorithm()
        return declared

    @model_validator(mode="after")
    def _loadable(self) -> ModelOptConfig:
        # The cross-field rules in one place: one algorithm, and one kvcore can load faithfully.
        declared = self._declared()
        if len(set(declared.values())) > 1:
            raise ValueError(f"the config declares two KV-cache algorithms: {declared}; re-export the checkpoint")
        algorithm = self.kv_cache_algorithm
        if algorithm is not None and algorithm not in SUPPORTED:
            raise ValueError(_refusal(algorithm))
        return self


def _refusal(algorithm: str) -> str:
    if algorithm.endswith("_AFFINE"):
        why = "an affine KV cache adds k_bias/v_bias offsets, and kvcore loads symmetric KV caches only"
    else:
        why = "kvcore loads KV-cache scales for fp8 KV caches only"
    return (
        f"kv_cache_quant_algo / kv_cache_scheme is {algorithm!r}: {why}. Supported: "
        f"{', '.join(SUPPORTED)} (or no KV-cache quantization). Re-export with ModelOpt's FP8 KV cache "
        "(kv_cache_qformat='fp8')"
    )


def parse_config(raw: Mapping[str, Any], source: str = "") -> ModelOptConfig:
    """Validate ``raw`` (a nested ``quantization`` section is read too) or raise ``kvcore.QuantConfigError``."""
    nested = raw.get("quantization")
    if isinstance(nested, Mapping):
        raw = {**nested, "quant_method": raw.get("quant_method", "modelopt")}
        source = f"{source}.quantization" if source else source  # field paths start at the section read
    try:
        return ModelOptConfig.model_validate(raw)
    except ValidationError as exc:
        raise kvcore.quant_config_error(exc, source, format_name="ModelOpt") from None
