"""Pydantic models of the parts of an AMD Quark ``quantization_config`` that concern KV scales.

Quark (0.13) writes the KV-cache spec twice: per group in ``kv_cache_quant_config`` and, as
older versions did (and vLLM still reads), in ``layer_quant_config``. Each group named in
``export.kv_cache_group`` must be quantized the way kvcore can load: a static, symmetric,
per-tensor fp8_e4m3 ``output_tensors`` spec. The same holds for ``softmax_quant_spec``
(the attention probabilities, whose scale is ``prob_output_scale``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, ValidationError, ValidationInfo, model_validator

import kvcore

__all__ = ["ExportConfig", "LayerSpec", "QuarkConfig", "TensorSpec", "parse_config"]

SUPPORTED = (
    "kvcore supports only a static, symmetric, per-tensor fp8_e4m3 spec "
    "(dtype 'fp8_e4m3', qscheme 'per_tensor', is_dynamic false, symmetric true). "
    "Re-export the model with Quark's fp8 KV-cache config (e.g. quantize_quark.py --kv_cache_dtype fp8)"
)


class TensorSpec(BaseModel):
    """One Quark ``QuantizationSpec`` (``input_tensors``, ``output_tensors``, ``weight``...)."""

    model_config = ConfigDict(extra="allow")

    dtype: str = Field(description="Quark data type, e.g. 'fp8_e4m3', 'fp8_e5m2', 'int8'.")
    qscheme: str | None = Field(None, description="'per_tensor', 'per_channel', 'per_group'...")
    is_dynamic: StrictBool | None = Field(None, description="True: scales computed at run time, none stored.")
    symmetric: StrictBool | None = Field(None, description="False: zero points change the arithmetic.")
    ch_axis: int | None = Field(None, description="Channel axis of per-channel specs.")
    group_size: int | None = Field(None, description="Group size of per-group specs.")

    def kv_problems(self) -> list[str]:
        """Why this spec cannot be loaded as a KV-cache / softmax scale (empty when it can)."""
        problems = []
        if self.dtype != "fp8_e4m3":
            problems.append(f"dtype is {self.dtype!r}")
        if self.qscheme != "per_tensor":
            problems.append(f"qscheme is {self.qscheme!r}")
        if self.is_dynamic:
            problems.append("is_dynamic is true (a dynamic spec stores no scale)")
        if self.symmetric is False:
            problems.append("symmetric is false (zero points change the arithmetic; never loaded as symmetric)")
        return problems


class LayerSpec(BaseModel):
    """A Quark per-layer config; only ``output_tensors`` matters for KV-cache scales."""

    model_config = ConfigDict(extra="allow")

    output_tensors: TensorSpec | None = Field(None, description="Spec of the layer's output (the K or V).")


class ExportConfig(BaseModel):
    """Quark's ``export`` section."""

    model_config = ConfigDict(extra="allow")

    kv_cache_group: list[str] = Field(
        default_factory=list, description="Layer patterns whose outputs form the KV cache, e.g. ['*k_proj', '*v_proj']."
    )
    min_kv_scale: float | None = Field(None, description="Lower bound Quark applied to KV scales.")


class QuarkConfig(BaseModel):
    """The ``quantization_config`` of a Quark checkpoint (``quant_method == "quark"``)."""

    model_config = ConfigDict(extra="allow")

    quant_method: Literal["quark"] = Field(description="Always 'quark'.")
    export: ExportConfig | None = Field(None, description="Export options; names the KV-cache groups.")
    kv_cache_quant_config: dict[str, LayerSpec] | None = Field(
        None, description="KV-cache spec per group (Quark >= 0.13)."
    )
    layer_quant_config: dict[str, LayerSpec] | None = Field(None, description="Per-layer-pattern specs.")
    kv_cache_post_rope: StrictBool | None = Field(
        None, description="True: K measured after RoPE, so k and v scales differ; false: Quark writes k == v."
    )
    softmax_quant_spec: TensorSpec | None = Field(None, description="Spec of the attention probabilities.")

    @property
    def kv_cache_group(self) -> list[str]:
        """The KV-cache layer patterns (empty when the KV cache is not quantized)."""
        return self.export.kv_cache_group if self.export is not None else []

    @model_validator(mode="after")
    def _loadable_specs(self, info: ValidationInfo) -> QuarkConfig:
        # One place for the cross-field rules, so every refusal names the exact field path
        # (prefixed with the config's key, ``quantization_config`` unless the context says otherwise).
        section = (info.context or {}).get("section", "quantization_config")
        specs = self._kv_specs(section)
        if self.softmax_quant_spec is not None:
            specs.append((f"{section}.softmax_quant_spec", self.softmax_quant_spec))
        found = [f"{path}.{problem}" for path, spec in specs for problem in spec.kv_problems()]
        if found:  # what kvcore accepts answers these, and only these
            raise ValueError(f"{'; '.join(found)}. {SUPPORTED}")
        return self

    def _kv_specs(self, section: str) -> list[tuple[str, TensorSpec]]:
        specs = [
            (f"{section}.kv_cache_quant_config.{group}.output_tensors", layer.output_tensors)
            for group, layer in (self.kv_cache_quant_config or {}).items()
            if layer.output_tensors is not None
        ]
        for group in self.kv_cache_group:
            path, spec = self._group_spec(group, section)
            if (path, spec) not in specs:
                specs.append((path, spec))
        return specs

    def _group_spec(self, group: str, section: str) -> tuple[str, TensorSpec]:
        for field in ("kv_cache_quant_config", "layer_quant_config"):
            layer = (getattr(self, field) or {}).get(group)
            if layer is not None and layer.output_tensors is not None:
                return f"{section}.{field}.{group}.output_tensors", layer.output_tensors
        raise ValueError(
            f"{section}.export.kv_cache_group names {group!r}, but neither kv_cache_quant_config nor "
            f"layer_quant_config gives {group!r} an output_tensors spec; the config is incomplete. "
            "Re-export the model with Quark, or remove the group from export.kv_cache_group"
        )


def parse_config(raw: Mapping[str, Any], source: str = "") -> QuarkConfig:
    """Validate ``raw`` or raise ``kvcore.QuantConfigError`` naming the file, each bad field and its value."""
    try:
        return QuarkConfig.model_validate(raw, context={"section": _section(source)})
    except ValidationError as exc:
        raise kvcore.quant_config_error(exc, source, format_name="Quark") from None


def _section(source: str) -> str:
    """The config key the source names (``.../config.json:quantization_config``), for field paths."""
    key = source.rpartition(":")[2]
    return key if key.isidentifier() else "quantization_config"
