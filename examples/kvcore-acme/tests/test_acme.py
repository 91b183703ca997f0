"""The ACME KV plugin in kvcore: conformance, a load, and a vLLM entry point that imports no vLLM.

Its end-to-end run inside real vLLM is in integrations/vllm/tests (``make test-vllm``).
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import kvcore_acme
import pytest
import torch

import kvcore
from kvcore.testing import check_plugin, registered_plugin, tiny_llama, write_checkpoint

P = "model.layers.{}.self_attn"


@pytest.fixture
def plugin() -> Iterator[None]:
    # Already discovered when the plugin is pip-installed; registered here when it is not.
    if kvcore.get_plugin_manager().get_plugin("acme") is not None:
        yield
        return
    with registered_plugin(kvcore_acme, "acme", distribution="kvcore-acme", version="0.1.0"):
        yield


def test_plugin_conforms() -> None:
    check_plugin(
        kvcore_acme,
        own_configs=[{"quant_method": "acme-kv", "kv_cache_dtype": "fp8_e4m3"}, {"quant_method": "acme-kv"}],
        bad_configs=[{"quant_method": "acme-kv", "kv_cache_dtype": "int8"}],
        names=[f"{P.format(0)}.k_proj.kscale", f"{P.format(0)}.v_proj.vscale"],
    )


@pytest.mark.usefixtures("plugin")
def test_a_checkpoint_loads(tmp_path: Path) -> None:
    model = tiny_llama(kv_cache_dtype="fp8")
    tensors = {name: torch.ones_like(p) for name, p in model.named_parameters() if not name.endswith("_scale")}
    for i in range(2):
        tensors[f"{P.format(i)}.k_proj.kscale"] = torch.tensor(0.0123 + i)
        tensors[f"{P.format(i)}.v_proj.vscale"] = torch.tensor(0.0456 + i)
    ckpt = write_checkpoint(tmp_path / "ckpt", tensors, quantization_config={"quant_method": "acme-kv"})
    report = kvcore.load(model, ckpt)
    assert report.plugins == ["acme"]
    for i in range(2):
        attn = model.model.layers[i].self_attn.attn
        assert float(attn.k_scale) == float(torch.tensor(0.0123 + i))
        assert float(attn.v_scale) == float(torch.tensor(0.0456 + i))


def test_a_wrong_kv_cache_dtype_is_refused() -> None:
    with pytest.raises(kvcore.QuantConfigError, match="int8"):
        kvcore_acme.get_cache_scale_mapper(kvcore.QuantConfig("acme-kv", {"kv_cache_dtype": "int8"}))


def test_the_vllm_entry_point_module_imports_without_vllm() -> None:
    code = "import sys, kvcore_acme.vllm; assert not [m for m in sys.modules if m.split('.')[0] == 'vllm']"
    root = str(Path(kvcore_acme.__file__).resolve().parents[1])
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120, env={"PYTHONPATH": root}, cwd=root)
