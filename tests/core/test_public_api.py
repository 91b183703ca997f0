"""The public surface is deliberate: pin it so nothing leaks in or out silently."""

from __future__ import annotations

import subprocess
import sys

import kvcore

EXPECTED = {
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
}


def test_all_is_pinned() -> None:
    assert set(kvcore.__all__) == EXPECTED
    for name in kvcore.__all__:
        assert hasattr(kvcore, name)


def test_public_names_are_documented() -> None:
    for name in kvcore.__all__:
        obj = getattr(kvcore, name)
        if callable(obj) and not isinstance(obj, str):
            assert obj.__doc__, f"kvcore.{name} has no docstring"


def test_error_hierarchy() -> None:
    for name in ("CheckpointError", "QuantConfigError", "PluginError", "MapperConflictError", "WeightLoadError"):
        assert issubclass(getattr(kvcore, name), kvcore.KvcoreError)
    assert issubclass(kvcore.WeightLoadError, ValueError)


def test_import_loads_no_plugin() -> None:
    code = (
        "import sys, kvcore\n"
        "loaded = [m for m in sys.modules if m.startswith('kvcore_')]\n"
        "assert not loaded, loaded\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
