"""kvcore: load quantized checkpoints' KV-cache scales through pip-installed format plugins.

``import kvcore`` loads no plugin; discovery happens on the first ``load`` or
``get_plugin_manager`` call.
"""

import logging

from kvcore._attention import Attention
from kvcore._auto_loader import AutoWeightsLoader
from kvcore._errors import (
    CheckpointError,
    KvcoreError,
    MapperConflictError,
    PluginError,
    QuantConfigError,
    WeightLoadError,
)
from kvcore._kv_quant import dequantize_kv, quantize_kv
from kvcore._load import load
from kvcore._mapper import WeightsMapper
from kvcore._meaning import ScaleMeaning
from kvcore._plugin_mappers import plugin_mappers_for
from kvcore._plugins import get_plugin_manager
from kvcore._quant_config import QuantConfig
from kvcore._read_scales import mapper_for, read_kv_scales
from kvcore._report import LoadReport
from kvcore._scale_param import KVCacheScaleParameter
from kvcore.hookspecs import hookimpl, hookspec

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
    "quantize_kv",
    "read_kv_scales",
]
