"""``kvcore inspect``: scales of every format fixture and of a sharded checkpoint, anomalies, exit codes."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors import safe_open

TOP_KEYS = ["quant_method", "plugins", "layers", "anomalies", "verdict", "kv_cache", "summary"]
ENTRY_KEYS = ["tensor", "target", "shape", "dtype", "value", "amax"]
SAFETENSORS_DTYPES = {torch.float32: "F32", torch.bfloat16: "BF16", torch.float16: "F16"}

# docs/formats.md: the checkpoint name of each KV scale under model.layers.N.self_attn, per fixture.
FIXTURE_SCALES = {
    "autofp8/head_k_v_scale": ("fp8", "fp8", {"k_scale": "k_scale", "v_scale": "v_scale"}),
    "llmcompressor/fp8_kv_tensor": ("compressed-tensors", "compressed-tensors",
                                    {"k_scale": "k_scale", "v_scale": "v_scale"}),
    "quark/fp8_kv_attn_fp8_eager": ("quark", "quark", {
        "k_scale": "k_proj.output_scale", "v_scale": "v_proj.output_scale",
        "q_scale": "q_proj.output_scale", "prob_scale": "prob_output_scale"}),
}


def _read_all(directory: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a checkpoint, read with the safetensors library (independently of kvcore)."""
    tensors = {}
    for path in sorted(directory.glob("*.safetensors")):
        with safe_open(str(path), framework="pt") as f:
            tensors.update({name: f.get_tensor(name) for name in f.keys()})  # noqa: SIM118
    return tensors


def _expected_entry(name: str, tensor: torch.Tensor, target: str) -> dict[str, object]:
    flat = tensor.to(torch.float32).reshape(-1).tolist()
    amax = [v * 448 for v in flat]  # every fixture's producer wrote amax / 448 (e4m3)
    return {"tensor": name, "target": target, "shape": list(tensor.shape),
            "dtype": SAFETENSORS_DTYPES[tensor.dtype], "value": flat[0] if len(flat) == 1 else flat,
            "amax": amax[0] if len(amax) == 1 else amax}


def _levels(data: dict[str, object], level: str) -> list[str]:
    return [a["message"] for a in data["anomalies"] if a["level"] == level]


@pytest.mark.parametrize("fixture", sorted(FIXTURE_SCALES))
def test_every_format_fixture_shows_each_scale_as_written(run_script, cli: SimpleNamespace, fixture: str) -> None:
    method, plugin, names = FIXTURE_SCALES[fixture]
    directory = cli.FIXTURES / fixture
    result = run_script("inspect", directory, "--json")
    assert result.returncode == 0, result.stderr
    data = cli.as_json(result)
    assert list(data) == TOP_KEYS
    assert data["quant_method"] == method
    assert data["plugins"] == [plugin]
    written = _read_all(directory)
    expected = {}
    for layer in range(2):
        attn = f"model.layers.{layer}.self_attn.attn"
        expected[attn] = {
            scale: _expected_entry(f"model.layers.{layer}.self_attn.{suffix}",
                                   written[f"model.layers.{layer}.self_attn.{suffix}"], f"{attn}.{scale}")
            for scale, suffix in names.items()
        }
    assert data["layers"] == expected
    assert all(list(entry) == ENTRY_KEYS for scales in data["layers"].values() for entry in scales.values())
    assert _levels(data, "error") == []
    k_equals_v = all(written[f"model.layers.{n}.self_attn.{names['k_scale']}"].item()
                     == written[f"model.layers.{n}.self_attn.{names['v_scale']}"].item() for n in range(2))
    assert any("k_scale == v_scale" in m for m in _levels(data, "info")) == k_equals_v


def test_script_and_python_dash_m_both_print_the_table(run, cli: SimpleNamespace) -> None:
    result = run("inspect", cli.FIXTURES / "quark" / "fp8_kv_attn_fp8_eager")
    assert result.returncode == 0, result.stderr
    assert "model.layers.1.self_attn.prob_output_scale" in result.stdout


def test_human_table_names_each_layer_scale_tensor_and_plugin(run_script, cli: SimpleNamespace) -> None:
    directory = cli.FIXTURES / "quark" / "fp8_kv_attn_fp8_eager"
    data = cli.as_json(run_script("inspect", directory, "--json"))
    result = run_script("inspect", directory)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "quark" in next(line for line in out.splitlines() if line.startswith("quant method"))
    header = next(line for line in out.splitlines() if line.startswith("layer "))
    column = header.index("tensor")
    for layer, scales in data["layers"].items():
        assert layer in out
        for scale, entry in scales.items():
            row = next(line for line in out.splitlines() if f" {scale} " in line and entry["tensor"] in line)
            assert row[column:].startswith(entry["tensor"])  # aligned under its header
            assert f"{entry['value']:.6g}" in row
            assert row.rstrip().endswith("quark")


def test_a_sharded_checkpoint_finds_scales_in_every_shard(
    run_script, cli: SimpleNamespace, checkpoint: Callable
) -> None:
    tensors = {**cli.kv_layers({"k_scale": 0.02, "v_scale": 0.03}, layers=4),
               **{f"model.layers.{n}.mlp.down_proj.weight": torch.ones(8, 8) for n in range(4)}}
    directory = checkpoint(tensors, quantization_config=cli.AUTOFP8, shards=3)
    index = json.loads((directory / "model.safetensors.index.json").read_text())["weight_map"]
    scale_shards = {index[f"model.layers.{n}.self_attn.k_scale"] for n in range(4)}
    assert len(scale_shards) > 1  # the test means something only if the scales are spread out
    result = run_script("inspect", directory, "--json")
    assert result.returncode == 0, result.stderr
    layers = cli.as_json(result)["layers"]
    assert sorted(layers) == [f"model.layers.{n}.self_attn.attn" for n in range(4)]
    for n in range(4):
        scales = layers[f"model.layers.{n}.self_attn.attn"]
        assert scales["k_scale"]["value"] == torch.tensor(0.02 * (n + 1)).item()
        assert scales["v_scale"]["value"] == torch.tensor(0.03 * (n + 1)).item()


@pytest.mark.parametrize(("bad", "words"), [
    (float("nan"), "NaN"), (0.0, "zero"), (-0.5, "negative"), (float("inf"), "infinite"),
])
def test_a_bad_scale_value_is_an_error_and_exit_1(run_script, cli: SimpleNamespace, checkpoint: Callable,
                                                  bad: float, words: str) -> None:
    tensors = cli.kv_layers({"k_scale": 0.02, "v_scale": 0.03})
    tensors["model.layers.1.self_attn.v_scale"] = torch.tensor(bad)
    result = run_script("inspect", checkpoint(tensors, quantization_config=cli.AUTOFP8), "--json")
    assert result.returncode == 1, result.stderr
    data = cli.as_json(result)
    errors = _levels(data, "error")
    assert len(errors) == 1
    assert "model.layers.1.self_attn.v_scale" in errors[0] and words in errors[0]
    shown = data["layers"]["model.layers.1.self_attn.attn"]["v_scale"]["value"]
    assert shown == bad or (math.isnan(bad) and math.isnan(shown))


def test_an_implausible_magnitude_is_a_warning_not_an_error(run_script, cli: SimpleNamespace,
                                                           checkpoint: Callable) -> None:
    # llm-compressor 0.14 can save an uninitialised q_scale such as 1e-19 (docs/formats.md)
    tensors = {**cli.kv_layers({"k_scale": 0.02, "v_scale": 0.03}),
               **{f"model.layers.{n}.self_attn.q_scale": torch.tensor([1e-19], dtype=torch.bfloat16)
                  for n in range(2)}}
    result = run_script("inspect", checkpoint(tensors, quantization_config=cli.compressed_tensors()), "--json")
    assert result.returncode == 0, result.stderr
    warnings = _levels(cli.as_json(result), "warning")
    assert [w for w in warnings if "q_scale" in w and "implausible" in w]


def test_k_without_v_is_a_warning_naming_the_layer(run_script, cli: SimpleNamespace, checkpoint: Callable) -> None:
    tensors = cli.kv_layers({"k_scale": 0.02, "v_scale": 0.03})
    del tensors["model.layers.1.self_attn.v_scale"]
    result = run_script("inspect", checkpoint(tensors, quantization_config=cli.AUTOFP8), "--json")
    assert result.returncode == 0
    warnings = _levels(cli.as_json(result), "warning")
    assert [w for w in warnings if "model.layers.1.self_attn.attn" in w and "without v_scale" in w]
    assert not [w for w in warnings if "model.layers.0" in w]


def test_scale_like_tensors_no_rule_maps_are_an_error(run_script, cli: SimpleNamespace,
                                                     checkpoint: Callable) -> None:
    # AutoFP8's plugin has no rule for Quark's output_scale names: a strict load refuses the tensor
    tensors = {**cli.kv_layers({"k_scale": 0.02, "v_scale": 0.03}),
               "model.layers.0.self_attn.k_proj.output_scale": torch.tensor(0.02),
               "model.layers.0.self_attn.k_proj.weight_scale": torch.tensor(0.01)}
    result = run_script("inspect", checkpoint(tensors, quantization_config=cli.AUTOFP8), "--json")
    assert result.returncode == 1
    data = cli.as_json(result)
    errors = _levels(data, "error")
    assert len(errors) == 1 and _levels(data, "warning") == []
    assert "model.layers.0.self_attn.k_proj.output_scale" in errors[0] and "unexpected" in errors[0]
    assert "weight_scale" not in errors[0]
    assert "model.layers.0.self_attn.k_proj.output_scale" in data["verdict"]["reason"]


def test_a_method_no_plugin_handles_is_an_error(run_script, cli: SimpleNamespace) -> None:
    fixture = cli.FIXTURES / "quark" / "fp8_kv_attn_fp8_eager"
    result = run_script("inspect", fixture, "--json", env=cli.base_env(KVCORE_DISABLE_PLUGINS="quark"))
    assert result.returncode == 1
    data = cli.as_json(result)
    assert data["quant_method"] == "quark" and data["plugins"] == [] and data["layers"] == {}
    assert [e for e in _levels(data, "error") if "'quark'" in e and "pip install" in e]
    unmapped = " ".join(_levels(data, "warning"))
    assert "k_proj.output_scale" in unmapped and "prob_output_scale" in unmapped


def test_zero_points_all_zero_are_info_and_non_zero_an_error(run_script, cli: SimpleNamespace,
                                                            checkpoint: Callable) -> None:
    fp8 = torch.float8_e4m3fn
    tensors = {**cli.kv_layers({"k_scale": 0.02, "v_scale": 0.03}),
               "model.layers.0.self_attn.k_zero_point": torch.zeros(1, dtype=fp8),
               "model.layers.1.self_attn.k_zero_point": torch.tensor([2.0]).to(fp8)}
    result = run_script("inspect", checkpoint(tensors, quantization_config=cli.compressed_tensors()), "--json")
    data = cli.as_json(result)
    assert result.returncode == 1  # a load refuses them (tests/cli/test_inspect_agrees_with_load.py)
    assert [i for i in _levels(data, "info") if "model.layers.0.self_attn.k_zero_point" in i]
    assert [e for e in _levels(data, "error") if "model.layers.1.self_attn.k_zero_point" in e
            and "holds non-zero zero points ([2.0])" in e]
    assert data["verdict"]["loads"] is False and "k_zero_point" in data["verdict"]["reason"]


def test_modelopt_biases_are_flagged(run_script, cli: SimpleNamespace, checkpoint: Callable) -> None:
    tensors = {**cli.kv_layers({"k_proj.k_scale": 1.0, "v_proj.v_scale": 1.0}, layers=1),
               "model.layers.0.self_attn.k_proj.k_bias": torch.zeros(1, 2, 1, 16)}
    hf = {"quantization": {"quant_algo": "FP8", "kv_cache_quant_algo": "FP8"}}
    result = run_script("inspect", checkpoint(tensors, hf_quant_config=hf), "--json")
    data = cli.as_json(result)
    assert data["quant_method"] == "modelopt"
    assert [w for w in _levels(data, "warning") if "model.layers.0.self_attn.k_proj.k_bias" in w]


def test_per_head_scales_show_one_value_per_kv_head(run_script, cli: SimpleNamespace, checkpoint: Callable) -> None:
    heads = torch.tensor([0.01, 0.02], dtype=torch.bfloat16).reshape(2, 1, 1)
    tensors = {"model.layers.0.self_attn.k_scale": heads, "model.layers.0.self_attn.v_scale": heads * 2}
    ckpt = checkpoint(tensors, quantization_config=cli.compressed_tensors("attn_head"))
    result = run_script("inspect", ckpt, "--json")
    assert result.returncode == 0, result.stderr
    k = cli.as_json(result)["layers"]["model.layers.0.self_attn.attn"]["k_scale"]
    assert k["shape"] == [2, 1, 1]
    assert k["value"] == heads.float().reshape(-1).tolist()


def test_an_unquantized_checkpoint_is_clean(run_script, cli: SimpleNamespace, checkpoint: Callable) -> None:
    result = run_script("inspect", checkpoint({}), "--json")
    assert result.returncode == 0
    data = cli.as_json(result)
    assert (data["quant_method"], data["plugins"], data["layers"]) == (None, [], {})
    assert _levels(data, "error") == [] and _levels(data, "warning") == []


def test_an_unreadable_checkpoint_exits_2_with_the_reason_on_stderr(run, tmp_path: Path) -> None:
    missing = run("inspect", tmp_path / "nope")
    assert missing.returncode == 2
    assert missing.stdout == ""
    assert str(tmp_path / "nope") in missing.stderr
    truncated = tmp_path / "truncated"
    truncated.mkdir()
    (truncated / "model.safetensors").write_bytes(b"\x10\x00\x00")
    result = run("inspect", truncated, "--json")
    assert result.returncode == 2
    assert "model.safetensors" in result.stderr and "truncated" in result.stderr


@pytest.mark.parametrize("args", [[], ["inspect"], ["bogus"], ["plugins", "--bogus"], ["inspect", "a", "b"]])
def test_bad_usage_exits_2(run_script, args: list[str]) -> None:
    result = run_script(*args)
    assert result.returncode == 2
    assert "usage" in result.stderr
