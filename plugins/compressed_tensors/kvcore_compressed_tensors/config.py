"""Pydantic models of a compressed-tensors ``quantization_config`` (llm-compressor's output).

Only the parts that decide how KV-cache scales load are checked strictly: ``kv_cache_scheme``
must be a static, symmetric, 8-bit float scheme per tensor or per KV head. The defaults are
compressed-tensors' own (``QuantizationArgs``): an omitted ``type`` means ``"int"``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, ValidationError, field_validator

import kvcore

__all__ = ["ConfigGroup", "CompressedTensorsConfig", "KvCacheScheme", "parse_config"]

SUPPORTED = (
    "kvcore supports a static, symmetric fp8 KV cache "
    "(num_bits 8, type 'float', strategy 'tensor' or 'attn_head', dynamic false, symmetric true)"
)


class KvCacheScheme(BaseModel):
    """``kv_cache_scheme``: a compressed-tensors ``QuantizationArgs`` for the K and V outputs."""

    # Defaults are validated too: an omitted ``type`` is compressed-tensors' "int", refused.
    model_config = ConfigDict(extra="allow", validate_default=True)

    num_bits: int = Field(8, description="Bits per element; 8 for fp8.")
    type: str = Field("int", description="'float' (fp8) or 'int'; compressed-tensors defaults to 'int'.")
    strategy: str | None = Field(
        None, description="'tensor' (one scale per layer; also when omitted) or 'attn_head' (one per KV head)."
    )
    dynamic: bool | str = Field(False, description="False: calibrated scales are stored in the checkpoint.")
    symmetric: StrictBool = Field(True, description="False: int8 with zero points (asymmetric).")

    @field_validator("num_bits")
    @classmethod
    def _eight_bits(cls, value: int) -> int:
        if value != 8:
            raise ValueError(f"{value}-bit KV caches are not supported; use num_bits 8")
        return value

    @field_validator("type")
    @classmethod
    def _float(cls, value: str) -> str:
        if value != "float":
            raise ValueError(
                f"an integer KV cache (type {value!r}) is not supported; quantize it to fp8 (type 'float')"
            )
        return value

    @field_validator("strategy")
    @classmethod
    def _tensor_or_head(cls, value: str | None) -> str | None:
        if value not in (None, "tensor", "attn_head"):
            raise ValueError(f"strategy {value!r} is not supported; use 'tensor' or 'attn_head'")
        return value

    @field_validator("dynamic")
    @classmethod
    def _static(cls, value: bool | str) -> bool | str:
        if value is not False:
            raise ValueError(f"dynamic {value!r}: a dynamic KV cache stores no scales to load; calibrate it statically")
        return value

    @field_validator("symmetric")
    @classmethod
    def _symmetric(cls, value: bool) -> bool:
        if not value:
            raise ValueError(
                "an asymmetric KV cache has zero points that change the arithmetic, and kvcore never "
                "loads it as if it were symmetric; quantize the KV cache symmetrically"
            )
        return value


class ConfigGroup(BaseModel):
    """One entry of ``config_groups``: which modules it targets and how."""

    model_config = ConfigDict(extra="allow")

    targets: list[str] = Field(default_factory=list, description="Module class names or 're:' patterns.")


class CompressedTensorsConfig(BaseModel):
    """The ``quantization_config`` (or very old ``compression_config``) of a compressed-tensors checkpoint."""

    model_config = ConfigDict(extra="allow")

    quant_method: Literal["compressed-tensors"] = Field(description="Always 'compressed-tensors'.")
    kv_cache_scheme: KvCacheScheme | None = Field(
        None, description="How the KV cache is quantized; absent when it is not (q scales may still be stored)."
    )
    config_groups: dict[str, ConfigGroup] | None = Field(None, description="Weight / activation schemes by group.")
    ignore: list[str] | None = Field(None, description="Modules left unquantized.")

    @property
    def per_head(self) -> bool:
        """Whether KV scales have one value per KV head (``(H_kv, 1, 1)``)."""
        return self.kv_cache_scheme is not None and self.kv_cache_scheme.strategy == "attn_head"


def parse_config(raw: Mapping[str, Any], source: str = "") -> CompressedTensorsConfig:
    """Validate ``raw`` or raise ``kvcore.QuantConfigError`` naming the file, each bad field and its value."""
    try:
        return CompressedTensorsConfig.model_validate(raw)
    except ValidationError as exc:
        raise kvcore.quant_config_error(
            exc, source, format_name="compressed-tensors", accepted=SUPPORTED, accepted_for=("kv_cache_scheme",)
        ) from None
