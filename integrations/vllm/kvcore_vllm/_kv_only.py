"""``KvOnlyConfig``: vLLM's quantization config for a method that quantizes only the KV cache.

Imports vLLM. The class exists as soon as this module is imported, because vLLM's engine and
worker processes unpickle the config (naming ``kvcore_vllm._kv_only.KvOnlyConfig``) before they
run any plugin; one class serves every registered method name.
"""

from __future__ import annotations

from typing import Any

import torch
from vllm.model_executor.layers.attention import Attention
from vllm.model_executor.layers.linear import LinearBase, UnquantizedLinearMethod
from vllm.model_executor.layers.quantization import (
    QUANTIZATION_METHODS,
    get_quantization_config,
    register_quantization_config,
)
from vllm.model_executor.layers.quantization.base_config import QuantizationConfig, QuantizeMethodBase
from vllm.model_executor.layers.quantization.kv_cache import BaseKVCacheMethod

import kvcore
from kvcore_vllm._gate import ENV

__all__ = ["KvOnlyCacheMethod", "KvOnlyConfig", "register_method"]

SCALES = ("q_scale", "k_scale", "v_scale", "prob_scale")


class KvOnlyCacheMethod(BaseKVCacheMethod):
    """vLLM's per-tensor KV-cache scale method, with float32 scales (never rounded through the model dtype)."""

    def create_weights(self, layer: torch.nn.Module) -> None:
        super().create_weights(layer)
        for name in SCALES:
            param = getattr(layer, name)
            param.data = param.data.to(torch.float32)


class KvOnlyConfig(QuantizationConfig):
    """Linear layers unquantized; attention layers load static per-tensor KV-cache scales.

    The scales' names are the format's kvcore plugin's business: the bridge maps them. vLLM uses
    them when the KV cache is fp8 (``--kv-cache-dtype fp8``); with ``auto`` it keeps 1.0.
    """

    def __init__(self, method: str) -> None:
        super().__init__()
        self.method = method

    def __repr__(self) -> str:
        return f"KvOnlyConfig(method={self.method!r})"

    def get_name(self) -> Any:
        return self.method

    def get_supported_act_dtypes(self) -> list[torch.dtype]:
        return [torch.bfloat16, torch.float16, torch.float32]

    @classmethod
    def get_min_capability(cls) -> int:
        return 0  # no kernel of its own

    @staticmethod
    def get_config_filenames() -> list[str]:
        return []  # the checkpoint's config.json quantization_config is all it reads

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> KvOnlyConfig:
        method = config.get("quant_method")
        if not isinstance(method, str) or not method:
            raise ValueError(f"a kv-only quantization_config needs a quant_method string, got {method!r}")
        return cls(method)

    def get_quant_method(self, layer: torch.nn.Module, prefix: str) -> QuantizeMethodBase | None:  # noqa: ARG002
        if isinstance(layer, LinearBase):
            return UnquantizedLinearMethod()
        if isinstance(layer, Attention):
            return KvOnlyCacheMethod(self)
        return None

    @staticmethod
    def vllm_cache_scale_mapper() -> Any:
        """vLLM's generic cache-scale rules, which the bridge puts before the plugins'."""
        return QuantizationConfig.get_cache_scale_mapper()

    @staticmethod
    def get_cache_scale_mapper() -> Any:
        """Only reached when the bridge did not build this config: the format's names cannot be mapped."""
        raise kvcore.PluginError(
            "this checkpoint's quantization method was registered by kvcore-vllm for a kvcore format plugin, "
            "but the kvcore bridge was not active when vLLM built its config, so the KV-cache scale names "
            "cannot be mapped. Let vLLM run the 'kvcore' plugin: add kvcore to VLLM_PLUGINS (or unset it), "
            f"and unset {ENV}=0"
        )


def register_method(name: str) -> None:
    """Register ``name`` with vLLM as a :class:`KvOnlyConfig` method; idempotent."""
    if name in QUANTIZATION_METHODS:
        existing = get_quantization_config(name)
        if existing is KvOnlyConfig:
            return
        raise ValueError(
            f"{name!r} is already vLLM's quantization method {existing.__name__}; a KV-only format "
            "needs a quant_method of its own"
        )
    register_quantization_config(name)(KvOnlyConfig)
