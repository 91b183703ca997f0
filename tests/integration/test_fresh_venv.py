"""Real pip installs, real entry points: kvcore, its plugins and a third-party plugin in a fresh venv.

Installed beside them: the ModelOpt example (a fourth format, no change to the core), a
plugin whose module imports a missing dependency, and two plugins that disagree. Every
job runs in one driver process (torch imports once), against checkpoints written here;
expected values are read from what was written, never copied from output.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
import torch
from fresh_venv_support import REPO, FreshVenv
from safetensors.torch import load_file

from kvcore.testing import tiny_llama, write_checkpoint

REAL = REPO / "tests" / "fixtures" / "real"
LAYERS = (0, 1)
GENUINE = {
    # folder: (tiny_llama kwargs, {scale: checkpoint leaf under self_attn}, plugin)
    "autofp8/head_k_v_scale": (
        {"fp8": True, "scale_shape": [], "scale_dtype": "float32"},
        {"k_scale": "k_scale", "v_scale": "v_scale"}, "fp8"),
    "llmcompressor/fp8_kv_tensor": (
        {"fp8": True, "scale_shape": [1], "scale_dtype": "bfloat16"},
        {"k_scale": "k_scale", "v_scale": "v_scale"}, "compressed-tensors"),
    "quark/fp8_kv_attn_fp8_eager": (
        {"fp8": True, "scale_shape": [], "scale_dtype": "bfloat16"},
        {"k_scale": "k_proj.output_scale", "v_scale": "v_proj.output_scale", "q_scale": "q_proj.output_scale",
         "prob_scale": "prob_output_scale"}, "quark"),
}
MODELOPT_MODEL = {"num_layers": 2, "fp8": True, "kv_cache_dtype": "fp8"}


def _expect(result: dict[str, Any], tensors: dict[str, torch.Tensor], leaves: dict[str, str], plugin: str) -> None:
    assert "error" not in result, result
    assert result["plugins"] == [plugin]
    assert result["dtypes"] == ["torch.float32"]
    for i in LAYERS:
        attn = f"model.layers.{i}.self_attn.attn"
        for scale in ("k_scale", "v_scale", "q_scale", "prob_scale"):
            source = f"model.layers.{i}.self_attn.{leaves[scale]}" if scale in leaves else "default"
            expected = float(tensors[source].float().reshape(())) if scale in leaves else 1.0
            assert result["kv_scale_sources"][attn][scale] == source
            assert result["kv_scales"][attn][scale] == expected, (attn, scale)


def _modelopt(directory: Path, *, style: str, shards: int = 1) -> dict[str, torch.Tensor]:
    torch.manual_seed(1)
    model = tiny_llama(num_layers=2, fp8=True)
    tensors = {n: t.detach().clone() for n, t in model.state_dict().items() if ".attn." not in n}
    for i in LAYERS:
        p = f"model.layers.{i}.self_attn"
        tensors[f"{p}.k_proj.k_scale"] = torch.tensor(1.0 + i / 8, dtype=torch.float32)
        tensors[f"{p}.v_proj.v_scale"] = torch.tensor(0.25 + i / 16, dtype=torch.float32)
    quant = {"quant_algo": "FP8", "kv_cache_quant_algo": "FP8"}
    if style == "config.json":
        config = {"quant_method": "modelopt", "quant_algo": "FP8", "kv_cache_scheme": {"num_bits": 8, "type": "float"}}
        write_checkpoint(directory, tensors, quantization_config=config, shards=shards)
    else:
        write_checkpoint(directory, tensors, hf_quant_config={"quantization": quant}, shards=shards)
    return tensors


def _rival(directory: Path) -> None:
    torch.manual_seed(2)
    model = tiny_llama(num_layers=1)
    tensors = {n: t.detach().clone() for n, t in model.state_dict().items() if ".attn." not in n}
    tensors["model.layers.0.self_attn.kv_rival"] = torch.tensor(0.5)
    write_checkpoint(directory, tensors, quantization_config={"quant_method": "rival"})


@pytest.fixture(scope="module")
def outcome(fresh_venv: FreshVenv, tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    """Every job's result by name, from one driver process in the fresh venv."""
    root = tmp_path_factory.mktemp("checkpoints")
    jobs: dict[str, dict[str, Any]] = {"plugins": {"kind": "plugins"}}
    for folder, (kwargs, _, _) in GENUINE.items():
        jobs[folder] = {"kind": "load", "checkpoint": str(REAL / folder), "model": kwargs}
    for style in ("config.json", "hf_quant_config"):
        for shards in (1, 3):
            path = root / f"modelopt-{style}-{shards}"
            _modelopt(path, style=style, shards=shards)
            jobs[f"modelopt/{style}/{shards}"] = {"kind": "load", "checkpoint": str(path), "model": MODELOPT_MODEL}
    jobs["strict"] = {**jobs["modelopt/config.json/1"], "kind": "strict-load"}
    _rival(root / "rival")
    jobs["rival"] = {"kind": "load", "checkpoint": str(root / "rival"), "model": {"num_layers": 1}}
    return dict(zip(jobs, fresh_venv.run(list(jobs.values())), strict=True))


def test_discovery_reports_every_installed_plugin(outcome: dict[str, dict[str, Any]], fresh_venv: FreshVenv) -> None:
    result = outcome["plugins"]
    records = {r["name"]: r for r in result["records"]}
    assert set(records) == {"fp8", "quark", "compressed-tensors", "modelopt", "broken", "rival-a", "rival-b"}
    assert {r["distribution"] for r in records.values()} >= {"kvcore-modelopt", "kvcore-broken", "kvcore-rival-b"}
    for name in ("fp8", "quark", "compressed-tensors", "modelopt", "rival-a", "rival-b"):
        assert records[name]["status"] == "loaded", name
        assert records[name]["hooks"][0] == "get_cache_scale_mapper", name
        assert set(records[name]["hooks"]) <= {"get_cache_scale_mapper", "get_cache_scale_meaning"}, name
    assert records["broken"]["status"] == "failed"
    assert "kvcore_dependency_that_is_not_installed" in records["broken"]["error"]
    assert any("kvcore-broken" in w and "failed to load" in w for w in result["warnings"])
    # Installed copies, not the work tree: the distributions really went through pip.
    for name, path in result["files"].items():
        assert path is None or (str(fresh_venv.root) in path and str(REPO) not in path), (name, path)


def test_console_script_lists_the_broken_plugin_as_failed(fresh_venv: FreshVenv) -> None:
    done = subprocess.run([str(fresh_venv.root / "bin" / "kvcore"), "plugins", "--json"], cwd=fresh_venv.work,
                          env=fresh_venv.env(), capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    statuses = {r["name"]: r["status"] for r in json.loads(done.stdout)}
    assert statuses["broken"] == "failed" and statuses["modelopt"] == "loaded"


@pytest.mark.parametrize("folder", list(GENUINE))
def test_first_party_formats_load_beside_a_broken_plugin(outcome: dict[str, dict[str, Any]], folder: str) -> None:
    _, leaves, plugin = GENUINE[folder]
    _expect(outcome[folder], load_file(str(REAL / folder / "model.safetensors")), leaves, plugin)


@pytest.mark.parametrize("shards", [1, 3])
@pytest.mark.parametrize("style", ["config.json", "hf_quant_config"])
def test_modelopt_checkpoints_load_through_the_example_plugin(outcome: dict[str, dict[str, Any]], tmp_path: Path,
                                                              style: str, shards: int) -> None:
    result = outcome[f"modelopt/{style}/{shards}"]
    assert result.get("quant_method") == "modelopt", result
    written = _modelopt(tmp_path / "again", style=style)  # seeded: the same tensors as the job's
    _expect(result, written, {"k_scale": "k_proj.k_scale", "v_scale": "v_proj.v_scale"}, "modelopt")


def test_strict_mode_turns_the_broken_plugin_into_an_error(outcome: dict[str, dict[str, Any]]) -> None:
    assert outcome["strict"]["error"] == "PluginError"
    assert "'broken' (kvcore-broken 0.0.1)" in outcome["strict"]["message"]


def test_disagreeing_plugins_raise_naming_both(outcome: dict[str, dict[str, Any]]) -> None:
    result = outcome["rival"]
    assert result.get("error") == "MapperConflictError", result
    for words in ("'rival-a' (kvcore-rival-a 1.0.0)", "'rival-b' (kvcore-rival-b 1.1.0)", r"'\\.kv_rival$'",
                  "'.attn.k_scale'", "'.attn.v_scale'"):
        assert words in result["message"], words
