"""The first-party plugins keep pydantic out of discovery: their config models are a submodule, imported by the hook."""

from __future__ import annotations

import subprocess
import sys

PROBE = """
import sys, kvcore
pm = kvcore.get_plugin_manager()
assert {"fp8", "quark", "compressed-tensors"} <= {name for name, _ in pm.list_name_plugin()}
print("pydantic" in sys.modules)
for method in ("gptq", "fp8"):
    pm.hook.get_cache_scale_mapper(quant_config=kvcore.QuantConfig(method, {"quant_method": method}))
    configs = sorted(m for m in sys.modules if m.startswith("kvcore_") and m.endswith(".config"))
    print(method, "pydantic" in sys.modules, configs)
"""


def test_discovery_and_foreign_formats_import_no_pydantic_and_an_own_format_imports_only_its_config() -> None:
    done = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, check=True, timeout=120)
    assert done.stdout.splitlines() == ["False", "gptq False []", "fp8 True ['kvcore_fp8.config']"], done.stderr
