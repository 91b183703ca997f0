"""Errors that tell the truth: every misfit tensor listed (capped, the rest counted), and a model
without a ``kvcore.Attention`` told to add one."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from core_support import CT, FIXTURES, assert_unchanged, model_for, plain_weights, snapshot

import kvcore
from kvcore.testing import tiny_llama, write_checkpoint

FP8 = torch.float8_e4m3fn
LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def fp8_linears(model: torch.nn.Module) -> list[str]:
    """The name of every projection weight of ``model`` (tiny_llama's layout), sorted."""
    return sorted(n for n, _ in model.named_parameters() if n.rpartition(".")[0].rpartition(".")[2] in LINEARS)


def listed(message: str) -> list[str]:
    """The checkpoint tensors an error lists one per line."""
    return re.findall(r"^  checkpoint tensor '([^']+)'", message, flags=re.MULTILINE)


def test_a_bf16_model_hears_about_every_fp8_tensor_of_a_genuine_checkpoint() -> None:
    model = tiny_llama()  # bf16 linears; the llm-compressor fixture's 14 projections are fp8
    before = snapshot(model)
    with pytest.raises(kvcore.WeightLoadError) as caught:
        kvcore.load(model, FIXTURES / CT)
    message = str(caught.value)
    assert message.startswith("14 checkpoint tensors do not fit their parameters:"), message
    assert sorted(listed(message)) == fp8_linears(model), message
    assert all(line.endswith("has dtype F8_E4M3 but the parameter is torch.bfloat16")
               for line in message.splitlines()[1:15]), message
    assert "... and" not in message
    assert message.count("Build the model with the checkpoint's dtype") == 1, message  # the advice once
    assert_unchanged(model, before)


def test_past_twenty_offenders_the_rest_are_counted(tmp_path: Path) -> None:
    model = tiny_llama(num_layers=5)  # 35 projections
    weights = {n: t.to(FP8) if n in fp8_linears(model) else t for n, t in plain_weights(model).items()}
    with pytest.raises(kvcore.WeightLoadError) as caught:
        kvcore.load(model, write_checkpoint(tmp_path, weights))
    message = str(caught.value)
    assert message.startswith("35 checkpoint tensors do not fit their parameters:"), message
    assert listed(message) == fp8_linears(model)[:20], message
    assert "\n  ... and 15 more\n" in message, message


def test_shape_and_dtype_misfits_are_listed_together_each_advice_once(tmp_path: Path) -> None:
    model = tiny_llama()
    weights = plain_weights(model)
    weights["lm_head.weight"] = weights["lm_head.weight"][:-1]
    weights["model.norm.weight"] = weights["model.norm.weight"].to(torch.int32)
    with pytest.raises(kvcore.WeightLoadError) as caught:
        kvcore.load(model, write_checkpoint(tmp_path, weights))
    message = str(caught.value)
    assert sorted(listed(message)) == ["lm_head.weight", "model.norm.weight"], message
    assert "has shape [255, 64] but the parameter has shape [256, 64]" in message
    assert "has dtype I32 but the parameter is torch.bfloat16" in message
    advice = message.split("\nNothing was written: ")[1]
    for each in ("the checkpoint was made for a different model config",
                 "kvcore converts only between floating-point types of 16 bits or more. Build the model with "
                 "the checkpoint's dtypes"):
        assert advice.count(each) == 1, message


def test_one_misfit_reads_as_one_sentence(tmp_path: Path) -> None:
    model = tiny_llama()
    weights = plain_weights(model)
    weights["lm_head.weight"] = weights["lm_head.weight"][:-1]
    with pytest.raises(kvcore.WeightLoadError, match=r"^checkpoint tensor 'lm_head.weight' in .* has shape "
                       r"\[255, 64\] but the parameter has shape \[256, 64\]; the checkpoint was made for a "
                       r"different model config$"):
        kvcore.load(model, write_checkpoint(tmp_path, weights))


def without_attention(model: torch.nn.Module) -> torch.nn.Module:
    for layer in model.model.layers:
        del layer.self_attn.attn
    return model


ADD = ("add one kvcore.Attention per attention layer (kvcore.Attention(num_heads, head_size, num_kv_heads) "
       "beside the projections, at <layer>.self_attn.attn)")


def test_a_model_without_attention_is_told_to_add_one() -> None:
    model = without_attention(model_for(CT))  # the genuine llm-compressor checkpoint's projections
    before = snapshot(model)
    with pytest.raises(kvcore.WeightLoadError) as caught:
        kvcore.load(model, FIXTURES / CT)
    message = str(caught.value)
    assert "model.layers.0.self_attn.k_scale (mapped to model.layers.0.self_attn.attn.k_scale)" in message
    assert "but the model has no kvcore.Attention: " + ADD + ", or pass strict=False to load the rest" in message
    assert "Pass a mapper" not in message and "pass a mapper" not in message, message
    assert_unchanged(model, before)


def test_other_offenders_beside_the_scales_still_get_the_mapper_advice(tmp_path: Path) -> None:
    model = without_attention(tiny_llama())
    scale = {"model.layers.0.self_attn.attn.k_scale": torch.tensor(0.5)}
    weights = plain_weights(model) | scale | {"stray": torch.ones(1)}
    with pytest.raises(kvcore.WeightLoadError) as caught:
        kvcore.load(model, write_checkpoint(tmp_path, weights))
    message = str(caught.value)
    assert f"has no kvcore.Attention: {ADD}; for the 1 other tensor(s) and parameter(s), pass a mapper" in message


def test_without_strict_the_warning_says_the_scales_were_not_loaded() -> None:
    model = without_attention(model_for(CT))
    with pytest.warns(UserWarning) as caught:
        report = kvcore.load(model, FIXTURES / CT, strict=False)
    message = "\n".join(str(w.message) for w in caught)
    assert f"The model has no kvcore.Attention, so its 4 KV-cache scale(s) were not loaded: {ADD}" in message
    assert len(report.unexpected) == 4 and report.kv_scales == {}


def test_the_auto_loader_tells_a_model_without_attention_to_add_one() -> None:
    model = without_attention(tiny_llama())
    weights = plain_weights(model) | {"model.layers.0.self_attn.attn.k_scale": torch.tensor(0.5)}
    with pytest.raises(kvcore.WeightLoadError) as caught:
        kvcore.AutoWeightsLoader(model).load_weights(weights.items())
    message = str(caught.value)
    assert "(for 'model.layers.0.self_attn.attn.k_scale'): it is a KV-cache scale" in message, message
    assert "but the model has no kvcore.Attention. Add one kvcore.Attention per attention layer" in message


def test_the_auto_loader_keeps_the_mapper_advice_for_other_names() -> None:
    model = tiny_llama()
    with pytest.raises(kvcore.WeightLoadError) as caught:
        kvcore.AutoWeightsLoader(model).load_weights([("model.stray.k_scale", torch.tensor(0.5))])
    message = str(caught.value)
    assert "no module or parameter named 'model.stray'" in message and "pass a mapper that renames it" in message
    assert "kvcore.Attention" not in message  # the model has them: this is a naming problem
