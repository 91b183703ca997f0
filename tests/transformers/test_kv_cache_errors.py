"""``kvcore.transformers.kv_cache`` refuses what it cannot do well, saying why."""

from __future__ import annotations

import copy
import json
import warnings
from pathlib import Path

import pytest
import torch
from hf_support import LLAMA, QWEN3, build_model, fixture_config, write_per_head

import kvcore
import kvcore.testing
import kvcore.transformers
from kvcore._runtime.kv_quant import KvCacheDtypeError


@pytest.mark.parametrize(("overrides", "says"), [
    ({"num_hidden_layers": 3}, r"2 decoder layers .*model 3"),
    ({"num_key_value_heads": 4}, r"2 KV heads .*model 4"),
    ({"num_key_value_heads": 1}, r"2 KV heads .*model 1"),
])
def test_checkpoint_of_another_model(overrides: dict[str, int], says: str) -> None:
    model = build_model(LLAMA, **overrides)
    with pytest.raises(kvcore.WeightLoadError, match=says) as info:
        kvcore.transformers.kv_cache(model, LLAMA)
    message = str(info.value)
    assert str(LLAMA) in message and "LlamaForCausalLM" in message


def test_per_head_scales_for_another_head_count(tmp_path: Path) -> None:
    """A per-head checkpoint whose config.json does not say its head count: the scales' size decides."""
    checkpoint = write_per_head(tmp_path / "per_head")
    config = json.loads((checkpoint / "config.json").read_text())
    del config["num_key_value_heads"], config["num_attention_heads"]
    (checkpoint / "config.json").write_text(json.dumps(config))
    model = build_model(LLAMA, num_key_value_heads=4)
    with pytest.raises(kvcore.WeightLoadError, match=r"k_scale has 2 per-head values.* 4 KV heads"):
        kvcore.transformers.kv_cache(model, checkpoint)


def test_checkpoint_of_another_architecture_with_the_same_shape_is_accepted() -> None:
    """Layer count and KV heads are what the cache depends on: Qwen3's scales fit a Llama of that shape."""
    cache = kvcore.transformers.kv_cache(build_model(LLAMA), QWEN3)
    assert len(cache.layers) == 2


@pytest.mark.parametrize(("dtype", "says"), [("auto", "DynamicCache"), ("nvfp4", "block of 16"),
                                             ("int8", "zero points"), ("fp16", "unknown")])
def test_cache_dtype_the_checkpoint_was_not_calibrated_for(dtype: str, says: str) -> None:
    with pytest.raises(KvCacheDtypeError, match=says) as info:
        kvcore.transformers.kv_cache(build_model(LLAMA), LLAMA, kv_cache_dtype=dtype)
    assert isinstance(info.value, kvcore.KvcoreError) and isinstance(info.value, ValueError)


def test_checkpoint_without_kv_scales(tmp_path: Path) -> None:
    config = {k: v for k, v in fixture_config(LLAMA).items() if k != "quantization_config"}
    checkpoint = kvcore.testing.write_checkpoint(tmp_path / "plain", {"lm_head.weight": torch.zeros(2, 2)},
                                                 config=config)
    with pytest.raises(kvcore.QuantConfigError, match="not calibrated for an fp8 KV cache"):
        kvcore.transformers.kv_cache(build_model(LLAMA), checkpoint)


def test_checkpoint_calibrated_for_int8(tmp_path: Path) -> None:
    config = copy.deepcopy(fixture_config(LLAMA))
    config["quantization_config"]["kv_cache_scheme"].update(type="int", symmetric=True)
    names = [f"model.layers.{i}.self_attn.{n}" for i in range(2) for n in ("k_scale", "v_scale")]
    tensors = {name: torch.tensor([0.01]) for name in names}
    checkpoint = kvcore.testing.write_checkpoint(tmp_path / "int8", tensors, config=config)
    with pytest.raises(kvcore.QuantConfigError, match="int 8-bit"):
        kvcore.transformers.kv_cache(build_model(LLAMA), checkpoint)


def test_layer_without_scales_warns_and_uses_one(tmp_path: Path) -> None:
    tensors = {f"model.layers.0.self_attn.{n}": torch.tensor([0.002], dtype=torch.bfloat16)
               for n in ("k_scale", "v_scale")}
    checkpoint = kvcore.testing.write_checkpoint(tmp_path / "partial", tensors, config=fixture_config(LLAMA))
    with pytest.warns(UserWarning, match=r"model\.layers\.1\.self_attn\.attn.* 1\.0"):
        cache = kvcore.transformers.kv_cache(build_model(LLAMA), checkpoint)
    assert float(cache.layers[1].k_scale) == 1.0
    assert float(cache.layers[0].k_scale) == pytest.approx(0.002, rel=1e-2)


def test_mla_model_is_refused() -> None:
    class Config:
        kv_lora_rank = 32

        def get_text_config(self, decoder: bool = False) -> Config:  # noqa: ARG002
            return self

    class DeepseekV3ForCausalLM:
        config = Config()

    with pytest.raises(kvcore.WeightLoadError, match="latent"):
        kvcore.transformers.kv_cache(DeepseekV3ForCausalLM(), LLAMA)


def test_not_a_transformers_model() -> None:
    with pytest.raises(TypeError, match="transformers model"):
        kvcore.transformers.kv_cache(torch.nn.Linear(2, 2), LLAMA)


QUARK = QWEN3.parents[1] / "quark"


def test_scales_named_by_another_tool_and_its_caveat() -> None:
    """Quark names them k_proj.output_scale; measured before Qwen3's k_norm they clip: a warning says so."""
    model = build_model(QWEN3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cache = kvcore.transformers.kv_cache(model, QUARK / "qwen3_fp8_kv_fp8_post_rope")
    expected = kvcore.read_kv_scales(QUARK / "qwen3_fp8_kv_fp8_post_rope")
    for i, layer in enumerate(cache.layers):
        assert float(layer.k_scale) == expected[f"model.layers.{i}.self_attn.attn"]["k_scale"]
        assert float(layer.v_scale) == expected[f"model.layers.{i}.self_attn.attn"]["v_scale"]
    assert float(cache.layers[0].k_scale) != float(cache.layers[0].v_scale)
    with pytest.warns(UserWarning, match=r"before this model's k_norm.*model\.layers\.0\.self_attn\.attn"):
        kvcore.transformers.kv_cache(model, QUARK / "qwen3_fp8_kv_fp8")
