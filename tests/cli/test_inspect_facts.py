"""``kvcore inspect``'s verdict, KV-cache facts and per-scale summary: what an operator reads before serving.

Run in process (``kvcore._cli.main.main``) on checkpoints written here and on the genuine
fixtures; every expected figure is computed from the tensors written or read back with the
safetensors library.
"""

from __future__ import annotations

import contextlib
import io
import json
import statistics
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file
from shared_support import modelopt_plugin

from kvcore._cli.main import main

REAL2 = Path(__file__).resolve().parents[1] / "fixtures" / "real2"


@pytest.fixture(autouse=True)
def modelopt_registered() -> Iterator[None]:
    with modelopt_plugin():
        yield


def _run(*args: object) -> tuple[int, str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
        status = main([str(a) for a in args])
    return status, out.getvalue()


def _json(*args: object) -> dict[str, object]:
    return json.loads(_run("inspect", *args, "--json")[1])


def _config(layers: int) -> dict[str, object]:
    return {"architectures": ["LlamaForCausalLM"], "num_attention_heads": 4, "num_key_value_heads": 2,
            "num_hidden_layers": layers}


def _f32(value: float) -> float:
    return torch.tensor(value, dtype=torch.float32).item()


def test_many_layers_get_a_summary_and_layers_expands_it(cli: SimpleNamespace, checkpoint: Callable) -> None:
    tensors = cli.kv_layers({"k_scale": 0.02, "v_scale": 0.03}, layers=6)
    directory = checkpoint(tensors, quantization_config=cli.compressed_tensors(), config=_config(6))
    data = _json(directory)
    k_values = [_f32(0.02 * (n + 1)) for n in range(6)]
    assert data["summary"]["k_scale"] == {
        "count": 6, "layers": list(range(6)), "tensor": "model.layers.N.self_attn.k_scale", "dtypes": ["F32"],
        "shapes": [[]], "min": min(k_values), "median": statistics.median(k_values), "max": max(k_values),
        "amax_max": max(k_values) * 448}
    assert list(data["summary"]) == ["k_scale", "v_scale"]
    status, summary = _run("inspect", directory)
    assert status == 0
    k_row = next(line for line in summary.splitlines() if line.startswith("k_scale "))
    assert k_row.split()[:3] == ["k_scale", "6", "(0-5)"] and f"{max(k_values) * 448:.6g}" in k_row
    assert not [line for line in summary.splitlines() if line.startswith("model.layers.")]
    assert "--layers" in summary
    _, every = _run("inspect", directory, "--layers")
    rows = [line for line in every.splitlines() if line.startswith("model.layers.")]
    assert [row.split()[0] for row in rows] == [f"model.layers.{n}.self_attn.attn" for n in range(6)]


def test_the_verdict_is_the_first_line_and_says_why(cli: SimpleNamespace, checkpoint: Callable) -> None:
    good = checkpoint(cli.kv_layers({"k_scale": 0.02, "v_scale": 0.03}), quantization_config=cli.AUTOFP8,
                      config=_config(2))
    status, out = _run("inspect", good)
    assert status == 0
    assert out.splitlines()[0] == ("verdict: loads into an fp8 KV cache: yes, per-tensor scales in 2 of 2 attention "
                                   "layers, calibrated for fp8 (amax = scale x 448)")
    tensors = cli.kv_layers({"k_scale": 0.02, "v_scale": 0.03})
    tensors["model.layers.1.self_attn.v_scale"] = torch.tensor(float("nan"))
    status, out = _run("inspect", checkpoint(tensors, quantization_config=cli.AUTOFP8, config=_config(2)))
    assert status == 1
    assert out.splitlines()[0] == ("verdict: loads into an fp8 KV cache: no, kvcore.load refuses it: "
                                   "model.layers.1.self_attn.v_scale holds NaN ([nan])")


def test_an_unquantized_checkpoint_loads_uncalibrated(checkpoint: Callable) -> None:
    data = _json(checkpoint({}, config=_config(2)))
    assert data["verdict"]["loads"] is True and data["verdict"]["reason"].startswith("but uncalibrated")
    assert data["kv_cache"]["granularity"] is None and data["summary"] == {}


def test_per_head_scales_name_the_kv_heads_an_engine_must_build(cli: SimpleNamespace, checkpoint: Callable) -> None:
    heads = {f"model.layers.{n}.self_attn.{s}": torch.tensor([0.01, 0.02]).reshape(2, 1, 1) * (n + 1)
             for n in range(2) for s in ("k_scale", "v_scale")}
    data = _json(checkpoint(heads, quantization_config=cli.compressed_tensors("attn_head"), config=_config(2)))
    facts = data["kv_cache"]
    assert (facts["granularity"], facts["num_kv_heads"], facts["calibrated_for"]) == ("per-head", 2, "fp8")
    assert facts["layers"] == {"total": 2, "with_scales": [0, 1], "missing": []}
    entry = data["layers"]["model.layers.1.self_attn.attn"]["k_scale"]
    assert entry["amax"] == [v * 448 for v in entry["value"]]
    assert data["summary"]["k_scale"]["shapes"] == [[2, 1, 1]]


@pytest.mark.parametrize(("fixture", "facts"), [
    ("modelopt/qwen3_fp8_kv_nvfp4", {"calibrated_for": "nvfp4", "describes": "kv", "rope": "post"}),
    ("llmcompressor/deepseek_v3_fp8_kv_tensor", {"calibrated_for": "fp8", "describes": "mla_latent", "rope": "post"}),
    ("quark/deepseek_v3_fp8_kv_fp8", {"calibrated_for": "fp8", "describes": "mla_per_head", "rope": "pre"}),
    ("quark/qwen3_fp8_kv_fp8_post_rope", {"calibrated_for": "fp8", "describes": "kv", "caveat": None, "rope": "post"}),
])
def test_what_the_plugins_say_the_scales_mean_is_a_fact(fixture: str, facts: dict[str, object]) -> None:
    data = _json(REAL2 / fixture)
    assert {key: data["kv_cache"][key] for key in facts} == facts
    assert data["verdict"]["loads"] is True
    assert ("use_mla=True" in data["verdict"]["reason"]) == (facts["describes"] == "mla_latent")
    assert ("use_mla=False" in data["verdict"]["reason"]) == (facts["describes"] == "mla_per_head")


def test_a_pre_k_norm_scale_is_a_caveat_in_the_facts_and_the_verdict() -> None:
    directory = REAL2 / "quark" / "qwen3_fp8_kv_fp8"
    data = _json(directory)
    assert "k_norm" in data["kv_cache"]["caveat"]
    assert "with a caveat" in data["verdict"]["reason"]
    written = load_file(directory / "model.safetensors")
    k = written["model.layers.0.self_attn.k_proj.output_scale"].float().item()
    assert data["layers"]["model.layers.0.self_attn.attn"]["k_scale"]["amax"] == k * 448


# What each tool's config says about RoPE (docs/formats.md): Quark's kv_cache_post_rope, llm-compressor
# and ModelOpt observe keys where attention receives them, AutoFP8's config does not say.
@pytest.mark.parametrize(("fixture", "rope", "words"), [
    (REAL2 / "quark" / "phi3_fp8_kv_fp8", "pre", "measured before RoPE"),
    (REAL2 / "quark" / "qwen3_fp8_kv_fp8_post_rope", "post", "measured after RoPE"),
    (REAL2 / "llmcompressor" / "qwen3_fp8_kv_tensor", "post", "measured after RoPE"),
    (REAL2 / "modelopt" / "mixtral_fp8_kv_fp8", "post", "measured after RoPE"),
    (REAL2.parent / "real" / "autofp8" / "head_k_v_scale", None, "the format does not say"),
])
def test_pre_or_post_rope_is_a_fact(fixture: Path, rope: str | None, words: str) -> None:
    assert _json(fixture)["kv_cache"]["rope"] == rope
    status, text = _run("inspect", fixture)
    measured = next(line for line in text.splitlines() if line.startswith("measured"))
    assert status == 0 and words in measured
