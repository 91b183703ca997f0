"""vLLM's ``get_model()`` on tiny Llamas, with the bridge, switched off, and not allowed by ``VLLM_PLUGINS``.

Each run is one fresh process (``driver.py``) that loads every checkpoint in turn; a test reads
the result of its checkpoint. The KV cache is fp8, so the scales the attention layers end with
are the checkpoint's (vLLM keeps 1.0 otherwise).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from checkpoints import EXPECTED, NAMES, write
from harness import Run, run

pytestmark = pytest.mark.timeout(900)


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("ckpts")
    return {kind: write(root / kind, kind) for kind in NAMES}


@pytest.fixture(scope="module")
def bridged(ckpts: dict[str, Path]) -> Run:
    return run("get_model", list(ckpts.values()))


@pytest.fixture(scope="module")
def switched_off(ckpts: dict[str, Path]) -> Run:
    return run("get_model", list(ckpts.values()), env={"KVCORE_VLLM": "0"})


@pytest.fixture(scope="module")
def not_allowed(ckpts: dict[str, Path]) -> Run:
    """``VLLM_PLUGINS`` names the format's plugin but not the bridge."""
    return run("get_model", [ckpts["acme"], ckpts["ct-legacy"]], env={"VLLM_PLUGINS": "acme"})


def bridge_line(result: Run, ckpt: Path) -> str:
    (line,) = result.lines(f"KV-cache scale names of {ckpt} ")
    return line


def test_an_invented_format_loads_through_its_kvcore_plugin(ckpts: dict[str, Path], bridged: Run) -> None:
    result = bridged.results[str(ckpts["acme"])]
    assert result["error"] is None
    assert result["scales"] == EXPECTED  # float32 values bf16 cannot hold: never rounded through the model dtype
    line = bridge_line(bridged, ckpts["acme"])
    assert "INFO" in line
    assert "kvcore plugin(s) acme after vLLM's KvOnlyConfig rules (4 tensor(s) renamed beyond vLLM's)" in line


def test_legacy_compressed_tensors_names_load(ckpts: dict[str, Path], bridged: Run) -> None:
    result = bridged.results[str(ckpts["ct-legacy"])]
    assert result["error"] is None
    assert result["scales"] == EXPECTED
    assert "plugin(s) compressed-tensors after vLLM's CompressedTensorsConfig rules (4 tensor(s)" in bridge_line(
        bridged, ckpts["ct-legacy"]
    )


def test_without_the_bridge_vllm_cannot_load_them(ckpts: dict[str, Path], switched_off: Run) -> None:
    assert "Unknown quantization method: acme-kv" in switched_off.results[str(ckpts["acme"])]["error"]
    legacy = switched_off.results[str(ckpts["ct-legacy"])]["error"]
    assert legacy == "AttributeError: 'QKVParallelLinear' object has no attribute 'data'"
    assert not switched_off.lines("KV-cache scale names of")


def test_a_checkpoint_vllm_loads_loads_the_same_either_way(
    ckpts: dict[str, Path], bridged: Run, switched_off: Run
) -> None:
    on, off = (r.results[str(ckpts["ct-current"])] for r in (bridged, switched_off))
    assert on["error"] is off["error"] is None
    assert on["scales"] == off["scales"] == EXPECTED
    assert "(0 tensor(s) renamed beyond vLLM's)" in bridge_line(bridged, ckpts["ct-current"])


def test_the_switch_says_so_in_one_line_per_call(switched_off: Run) -> None:
    off = switched_off.lines("KVCORE_VLLM=0: kvcore-vllm is switched off")
    assert len(off) == 2, off  # kvcore_vllm.register, and the acme plugin's register_kv_only_method
    assert sum(line.endswith("quantization method 'acme-kv' is not registered") for line in off) == 1


def test_vllm_plugins_without_kvcore_is_a_clear_error(ckpts: dict[str, Path], not_allowed: Run) -> None:
    error = not_allowed.results[str(ckpts["acme"])]["error"]
    assert error.startswith("PluginError: ")
    assert "add kvcore to VLLM_PLUGINS" in error
    # A format vLLM knows gets vLLM's behaviour, crash included: the bridge is simply absent.
    assert "QKVParallelLinear" in not_allowed.results[str(ckpts["ct-legacy"])]["error"]
