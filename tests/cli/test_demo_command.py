"""``kvcore demo``: every format listed; loaded values match the checkpoints it wrote."""

from __future__ import annotations

import importlib.metadata as md
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors import safe_open

# docs/formats.md: how each tool names the KV scales under model.layers.N.self_attn.
TOOL_NAMES = {
    "compressed-tensors": {"k_scale": "k_scale", "v_scale": "v_scale"},
    "compressed-tensors per-head": {"k_scale": "k_scale", "v_scale": "v_scale"},
    "fp8": {"k_scale": "k_scale", "v_scale": "v_scale"},
    "quark": {"k_scale": "k_proj.output_scale", "v_scale": "v_proj.output_scale",
              "q_scale": "q_proj.output_scale", "prob_scale": "prob_output_scale"},
    "modelopt": {"k_scale": "k_proj.k_scale", "v_scale": "v_proj.v_scale"},
}
FIRST_PARTY = {"compressed-tensors", "compressed-tensors per-head", "fp8", "quark"}


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, object], int, Path]:
    """One ``kvcore demo --json --dir D`` run shared by the tests below (it loads five formats)."""
    import json
    import subprocess
    import sys

    directory = tmp_path_factory.mktemp("demo")
    script = Path(sys.executable).with_name("kvcore")
    result = subprocess.run([str(script), "demo", "--json", "--dir", str(directory)], capture_output=True,
                            text=True, timeout=300, check=False)
    return json.loads(result.stdout), result.returncode, directory


def _written(checkpoint: str, name: str) -> torch.Tensor:
    with safe_open(str(Path(checkpoint) / "model.safetensors"), framework="pt") as f:
        return f.get_tensor(name)


def _modelopt_installed() -> bool:
    return any(ep.name == "modelopt" for ep in md.entry_points(group="kvcore"))


def test_every_format_is_listed_and_the_first_party_ones_load(demo: tuple) -> None:
    data, code, directory = demo
    assert code == 0
    assert data["directory"] == str(directory) and data["kept"] is True
    formats = {f["format"]: f for f in data["formats"]}
    assert set(formats) == set(TOOL_NAMES)
    for name in FIRST_PARTY:
        assert formats[name]["status"] == "loaded", formats[name]["message"]
        assert formats[name]["plugins"] == [formats[name]["plugin"]]


def test_each_loaded_scale_is_the_value_written_under_the_tools_name(demo: tuple) -> None:
    data = demo[0]
    for entry in data["formats"]:
        if entry["status"] != "loaded":
            continue
        names = TOOL_NAMES[entry["format"]]
        assert len(entry["layers"]) == 2
        for layer, scales in entry["layers"].items():
            prefix = layer.removesuffix(".attn")
            assert set(scales) == {"k_scale", "v_scale", "q_scale", "prob_scale"}
            for scale, shown in scales.items():
                if scale not in names:
                    assert shown == {"value": 1.0, "source": "default", "plugin": None}
                    continue
                source = f"{prefix}.{names[scale]}"
                written = _written(entry["checkpoint"], source).to(torch.float32).reshape(-1).tolist()
                assert shown["source"] == source
                assert shown["value"] == (written[0] if len(written) == 1 else written)
                assert shown["plugin"] == entry["plugin"]


def test_per_head_values_are_lists(demo: tuple) -> None:
    entry = next(f for f in demo[0]["formats"] if f["format"] == "compressed-tensors per-head")
    k = entry["layers"]["model.layers.0.self_attn.attn"]["k_scale"]["value"]
    assert isinstance(k, list) and len(k) == 2


def test_a_format_without_its_plugin_is_skipped_with_the_pip_command(demo: tuple) -> None:
    entry = next(f for f in demo[0]["formats"] if f["format"] == "modelopt")
    if _modelopt_installed():
        assert entry["status"] == "loaded"
    else:
        assert entry["status"] == "skipped"
        # The ModelOpt plugin is an example in the repository, not a published distribution.
        assert entry["install"] == "pip install -e examples/kvcore-modelopt (from the kvcore checkout)"
        assert entry["install"] in entry["message"]
        assert entry["layers"] == {}


def test_a_disabled_plugin_is_skipped_and_the_rest_still_runs(run_script, cli: SimpleNamespace) -> None:
    result = run_script("demo", "--json", env=cli.base_env(KVCORE_DISABLE_PLUGINS="quark"))
    assert result.returncode == 0, result.stderr
    formats = {f["format"]: f for f in cli.as_json(result)["formats"]}
    assert formats["quark"]["status"] == "skipped"
    assert "disabled" in formats["quark"]["message"]
    assert formats["fp8"]["status"] == "loaded"


def test_human_output_lists_each_format_with_its_values(run, demo: tuple) -> None:
    data = demo[0]
    result = run("demo")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    for entry in data["formats"]:
        title = next(line for line in out.splitlines() if line.startswith(f"{entry['format']}: "))
        assert entry["status"] in title
        for layer, scales in entry["layers"].items():
            for scale, shown in scales.items():
                value = shown["value"]
                text = ("[" + ", ".join(f"{v:.6g}" for v in value) + "]") if isinstance(value, list) else f"{value:.6g}"
                assert any(scale in line and text in line and shown["source"] in line for line in out.splitlines())
            assert layer in out
    assert "(removed afterwards)" in out


def test_the_transformers_run_compares_a_bf16_and_kvcores_fp8_cache(demo: tuple[dict, int, Path]) -> None:
    run = demo[0]["transformers"]  # the extra is installed by make test, and this is a checkout
    assert run["model"] == "LlamaForCausalLM" and run["checkpoint"].endswith("llmcompressor/fp8_kv_tensor")
    assert run["bytes_per_token"]["fp8"] * 2 == run["bytes_per_token"]["bf16"]
    # the fp8 cache changes the logits, but by far less than their size
    assert 0 < run["max_logit_difference"] < run["max_logit"] / 4


def test_the_transformers_run_is_skipped_not_failed_without_its_plugin(run_script, cli: SimpleNamespace) -> None:
    result = run_script("demo", "--json", env=cli.base_env(KVCORE_DISABLE_PLUGINS="compressed-tensors"))
    assert result.returncode == 0, result.stderr
    assert cli.as_json(result)["transformers"] is None
    assert "transformers run was skipped" in result.stderr
