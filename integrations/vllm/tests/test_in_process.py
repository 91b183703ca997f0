"""The bridge's pieces inside this process, against vLLM's own classes: registration, pickling, conflicts."""

from __future__ import annotations

import pickle
import subprocess
import sys
from pathlib import Path

import kvcore_vllm
import pytest
from checkpoints import GENUINE, write
from kvcore_vllm._bridge import CacheScaleMapper, local_directory
from vllm.model_executor.layers.quantization import QUANTIZATION_METHODS
from vllm.model_executor.layers.quantization.base_config import QuantizationConfig
from vllm.model_executor.layers.quantization.fp8 import Fp8Config
from vllm.model_executor.model_loader import weight_utils

import kvcore
from kvcore.testing import registered_plugin

pytestmark = pytest.mark.timeout(300)

P = "model.layers.0.self_attn"


def test_register_is_idempotent() -> None:
    kvcore_vllm.register()
    wrapped = weight_utils.get_quant_config
    kvcore_vllm._registered = False  # as if vLLM called it again in the same process
    kvcore_vllm.register()
    assert weight_utils.get_quant_config is wrapped
    assert not getattr(wrapped.__wrapped__, "__kvcore_vllm__", False)  # wrapped once, not twice


def test_register_kv_only_method_is_idempotent_and_keeps_vllm_methods() -> None:
    assert kvcore_vllm.register_kv_only_method("acme-kv") is True
    assert kvcore_vllm.register_kv_only_method("acme-kv") is True
    assert QUANTIZATION_METHODS.count("acme-kv") == 1
    with pytest.raises(ValueError, match="already vLLM's quantization method Fp8Config"):
        kvcore_vllm.register_kv_only_method("fp8")


def test_the_config_unpickles_where_no_plugin_ran(tmp_path: Path) -> None:
    """vLLM's processes unpickle the config before their plugins run: every name in it must import."""
    from vllm.engine.arg_utils import EngineArgs

    ckpt = write(tmp_path / "acme", "acme")
    config = EngineArgs(model=str(ckpt), skip_tokenizer_init=True, max_model_len=64, enforce_eager=True,
                        kv_cache_dtype="fp8", dtype="bfloat16").create_engine_config()
    child = (
        "import pickle, sys\n"
        "quant_config = pickle.loads(sys.stdin.buffer.read())\n"
        "from vllm.model_executor.layers.quantization import QUANTIZATION_METHODS\n"
        "import vllm.plugins\n"
        "assert not vllm.plugins.plugins_loaded and 'acme-kv' not in QUANTIZATION_METHODS\n"
        f"print(type(quant_config).__name__, quant_config.get_cache_scale_mapper().map_name('{P}.k_proj.kscale'))\n"
    )
    out = subprocess.run([sys.executable, "-c", child], input=pickle.dumps(config.quant_config), capture_output=True,
                         timeout=300, check=False, env={"VLLM_TARGET_DEVICE": "cpu", "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr.decode()[-3000:]
    assert out.stdout.decode().splitlines()[-1] == f"KvOnlyConfig {P}.attn.k_scale"


class Mover:
    """A plugin for fp8 whose rule moves what vLLM's rules already placed."""

    @kvcore.hookimpl
    def get_cache_scale_mapper(self, quant_config: kvcore.QuantConfig) -> kvcore.WeightsMapper | None:
        if quant_config.quant_method != "fp8":
            return None
        return kvcore.WeightsMapper(orig_to_new_regex={r"\.attn\.k_scale$": ".attn.key_scale"})


def test_a_plugin_that_moves_what_vllm_placed_is_a_conflict() -> None:
    bridge = CacheScaleMapper(Fp8Config.get_cache_scale_mapper(), "Fp8Config", str(GENUINE / "autofp8/head_k_v_scale"),
                              None, None)
    with (
        registered_plugin(Mover(), "mover", distribution="kvcore-mover", version="1"),
        pytest.raises(kvcore.MapperConflictError) as info,
    ):
        bridge()
    message = str(info.value)
    assert f"'{P}.k_scale'" in message and "Fp8Config" in message and "mover" in message
    assert f"'{P}.attn.k_scale'" in message and f"'{P}.attn.key_scale'" in message


def test_a_checkpoint_kvcore_cannot_read_is_left_to_vllm(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text('{"quantization_config": {"quant_method": "fp8"}}')
    (tmp_path / "pytorch_model.bin").write_bytes(b"")
    rules = QuantizationConfig.get_cache_scale_mapper()
    assert CacheScaleMapper(rules, "Fp8Config", str(tmp_path), None, None)() is rules


def test_a_hub_id_resolves_to_its_local_snapshot(tmp_path: Path) -> None:
    repo = tmp_path / "models--acme--tiny"
    snapshot = repo / "snapshots" / "0123abcd"
    write(snapshot, "acme")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0123abcd")
    assert local_directory("acme/tiny", None, str(tmp_path)) == snapshot
    assert local_directory("acme/other", None, str(tmp_path)) is None
