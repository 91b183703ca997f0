"""The pydantic model of an fp8 ``quantization_config``.

Importing pydantic takes ~0.2 s and discovery imports every installed plugin, so the package
does not import this module: its hook does, once a checkpoint's method is ``fp8``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

import kvcore

__all__ = ["Fp8Config", "parse_config"]


class Fp8Config(BaseModel):
    """The ``quantization_config`` of an fp8 checkpoint, as the three producers write it."""

    model_config = ConfigDict(extra="allow")

    quant_method: Literal["fp8"] = Field(description="Always 'fp8'.")
    activation_scheme: Literal["static", "dynamic"] | None = Field(
        None, description="AutoFP8 / HF: how activations are scaled."
    )
    kv_cache_scheme: Literal["static"] | None = Field(
        None, description="'static' when the checkpoint carries calibrated KV-cache scales."
    )
    ignored_layers: list[str] = Field(default_factory=list, description="Layers left unquantized.")
    weight_block_size: list[int] | None = Field(
        None, description="Block fp8 (HF FineGrainedFP8, DeepSeek): [rows, cols] per weight scale."
    )
    export: dict[str, Any] | None = Field(None, description="Present in Quark's deprecated fp8 export.")

    @field_validator("weight_block_size")
    @classmethod
    def _two_positive_ints(cls, value: list[int] | None) -> list[int] | None:
        if value is not None and (len(value) != 2 or any(v <= 0 for v in value)):
            raise ValueError("must be two positive integers, e.g. [128, 128]")
        return value

    @property
    def is_block_fp8(self) -> bool:
        """Block fp8 checkpoints store weights only, no KV-cache scales."""
        return self.weight_block_size is not None and self.kv_cache_scheme is None


def parse_config(raw: Mapping[str, Any], source: str = "") -> Fp8Config:
    """Validate ``raw`` or raise ``kvcore.QuantConfigError`` naming the file, each bad field and its value."""
    try:
        return Fp8Config.model_validate(raw)
    except ValidationError as exc:
        raise kvcore.quant_config_error(exc, source, format_name="fp8") from None
