"""kvcore plugin for ``quant_method == "fp8"`` checkpoints.

Three unrelated producers write that method, and this plugin handles all three:

- AutoFP8: ``self_attn.k_scale`` / ``self_attn.v_scale`` (0-dim float32), and in mid-2024
  checkpoints one ``self_attn.kv_scale`` that serves for both;
- AMD Quark's deprecated fp8 export (an ``export`` dict beside ``kv_cache_scheme: "static"``):
  ``self_attn.k_scale`` / ``self_attn.v_scale`` (0-dim bf16, equal);
- HF FineGrainedFP8 / DeepSeek-style block fp8 (``weight_block_size``): no KV scales at all,
  so the mapper is empty.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

import kvcore

__all__ = ["Fp8Config", "KV_SCALE_MAPPER", "get_cache_scale_mapper"]

KV_SCALE_MAPPER = kvcore.WeightsMapper(
    orig_to_new_regex={
        # The lookbehinds keep the rules idempotent: ``attn.k_scale`` / ``...attn.k_scale`` are already mapped.
        r"(?<!\.attn)(?<!^attn)\.([kv])_scale$": r".attn.\1_scale",
        r"\.kv_scale$": ".attn.k_scale",
    }
)
"""``P.k_scale`` / ``P.v_scale`` -> ``P.attn.k_scale`` / ``P.attn.v_scale``; legacy
``P.kv_scale`` -> ``P.attn.k_scale`` (the core then uses it for v as well)."""


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


def parse_config(raw: dict[str, Any], source: str = "") -> Fp8Config:
    """Validate ``raw`` or raise ``QuantConfigError`` naming the file and the offending field."""
    try:
        return Fp8Config.model_validate(raw)
    except ValidationError as exc:
        raise kvcore.QuantConfigError(_describe(exc, source)) from None


def _describe(exc: ValidationError, source: str) -> str:
    problems = "; ".join(
        f"quantization_config.{'.'.join(str(p) for p in err['loc'])}: {err['msg']} (got {err.get('input')!r})"
        for err in exc.errors()
    )
    where = f" in {source}" if source else ""
    return f"invalid fp8 quantization config{where}: {problems}"


@kvcore.hookimpl
def get_cache_scale_mapper(quant_config: Any) -> kvcore.WeightsMapper | None:
    """The fp8 KV-scale mapper; an empty one for block fp8; ``None`` for other methods."""
    config = kvcore.QuantConfig.coerce(quant_config)
    if config.quant_method != "fp8":
        return None
    parsed = parse_config(dict(config.raw), config.source)
    return kvcore.WeightsMapper() if parsed.is_block_fp8 else KV_SCALE_MAPPER
