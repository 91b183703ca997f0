"""``kvcore inspect`` on every real2 fixture: each layer's scales and where they go, the pre-k_norm
caveat as a ``warning`` anomaly, what MLA and NVFP4 scales mean as ``info``; never an error.

ModelOpt's example plugin is registered in this process only (conftest), so every fixture is
inspected in-process; the console script runs on three whose plugins are installed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import arch_support as su
import pytest

from kvcore._cli.inspect import inspect_checkpoint

Run = subprocess.CompletedProcess[str]
SCRIPT = str(Path(sys.executable).with_name("kvcore"))
BY_SCRIPT = [su.case(f) for f in ("quark/qwen3_fp8_kv_fp8", "quark/phi3_fp8_kv_fp8",
                                   "llmcompressor/deepseek_v3_fp8_kv_tensor")]
"""A warning, a fused scale, an MLA note: the script's JSON is the in-process result (2 s a run, so three)."""


@pytest.mark.parametrize("case", su.CASES, ids=str)
def test_inspect_lists_every_layers_scales_and_what_they_mean(case: su.Case) -> None:
    result = inspect_checkpoint(case.path).as_dict()
    tensors = su.read_all(case.path)
    assert result["layers"].keys() == {f"model.layers.{i}.self_attn.attn" for i in range(2)}
    for layer in range(2):
        k, v = su.kv_sources(tensors, layer)
        entries = result["layers"][f"model.layers.{layer}.self_attn.attn"]
        assert {scale: (e["tensor"], e["value"]) for scale, e in entries.items()} == {
            "k_scale": (k, su.value(tensors, k)), **({"v_scale": (v, su.value(tensors, v))} if v != k else {})}
    levels = {a["level"] for a in result["anomalies"]}
    assert "error" not in levels
    k_norm = [a for a in result["anomalies"] if "k_norm" in a["message"]]
    assert [a["level"] for a in k_norm] == (["warning"] if case.caveat == "k_norm" else [])
    notes = [a["message"] for a in result["anomalies"] if a["level"] == "info"]
    assert any("use_mla=True" in n and "use_mla=False" in n for n in notes) == case.mla
    assert any("nvfp4" in n for n in notes) == (case.calibrated_for == "nvfp4")


@pytest.fixture(scope="module")
def script_runs() -> dict[str, Run]:
    """``kvcore inspect --json`` on each of ``BY_SCRIPT``, the processes started together."""
    started = {c.fixture: subprocess.Popen([SCRIPT, "inspect", str(c.path), "--json"], stdout=subprocess.PIPE,
                                           stderr=subprocess.PIPE, text=True) for c in BY_SCRIPT}
    done = {}
    for fixture, process in started.items():
        out, err = process.communicate(timeout=300)
        done[fixture] = subprocess.CompletedProcess(process.args, process.returncode, out, err)
    return done


@pytest.mark.parametrize("case", BY_SCRIPT, ids=str)
def test_the_console_script_says_the_same(case: su.Case, script_runs: dict[str, Run]) -> None:
    run = script_runs[case.fixture]
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout) == inspect_checkpoint(case.path).as_dict()
