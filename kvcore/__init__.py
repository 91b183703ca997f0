"""kvcore: load quantized checkpoints' KV-cache scales through pip-installed format plugins.

``import kvcore`` loads no plugin; discovery happens on the first ``load`` or
``get_plugin_manager`` call.
"""

import importlib
import logging
from typing import TYPE_CHECKING, Any

from kvcore._checkpoint.quant_config import QuantConfig
from kvcore._errors import (
    CheckpointError,
    KvcoreError,
    MapperConflictError,
    PluginError,
    QuantConfigError,
    WeightLoadError,
)
from kvcore._mapper import WeightsMapper
from kvcore._meaning import ScaleMeaning
from kvcore._plugins.config_error import quant_config_error
from kvcore._plugins.manager import get_plugin_manager
from kvcore.hookspecs import hookimpl, hookspec

if TYPE_CHECKING:
    from kvcore._attention import Attention
    from kvcore._loading.auto_loader import AutoWeightsLoader
    from kvcore._loading.load import load
    from kvcore._loading.read_scales import mapper_for, read_kv_scales
    from kvcore._plugins.for_checkpoint import plugin_mappers_for
    from kvcore._report import LoadReport
    from kvcore._runtime.kv_quant import dequantize_kv, quantize_kv
    from kvcore._scale_param import KVCacheScaleParameter

_LAZY = {
    "Attention": "kvcore._attention",
    "AutoWeightsLoader": "kvcore._loading.auto_loader",
    "KVCacheScaleParameter": "kvcore._scale_param",
    "LoadReport": "kvcore._report",
    "dequantize_kv": "kvcore._runtime.kv_quant",
    "load": "kvcore._loading.load",
    "mapper_for": "kvcore._loading.read_scales",
    "plugin_mappers_for": "kvcore._plugins.for_checkpoint",
    "quantize_kv": "kvcore._runtime.kv_quant",
    "read_kv_scales": "kvcore._loading.read_scales",
}
"""Names whose modules import torch: imported on first use, so that a plugin (and ``kvcore
plugins``) can import kvcore in milliseconds."""


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'kvcore' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


__version__ = "0.1.0"

# A library's records reach the application's handlers only; without one, Python's last-resort
# handler would print every warning a second time beside ``warnings.warn``.
logging.getLogger("kvcore").addHandler(logging.NullHandler())

__all__ = [
    "Attention",
    "AutoWeightsLoader",
    "CheckpointError",
    "KVCacheScaleParameter",
    "KvcoreError",
    "LoadReport",
    "MapperConflictError",
    "PluginError",
    "QuantConfig",
    "QuantConfigError",
    "ScaleMeaning",
    "WeightLoadError",
    "WeightsMapper",
    "__version__",
    "dequantize_kv",
    "get_plugin_manager",
    "hookimpl",
    "hookspec",
    "load",
    "mapper_for",
    "plugin_mappers_for",
    "quant_config_error",
    "quantize_kv",
    "read_kv_scales",
]
