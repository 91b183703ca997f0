"""``kvcore.ScaleMeaning``: a plugin's answer is checked where it is made, and says RoPE when it knows."""

from __future__ import annotations

import pytest

import kvcore


@pytest.mark.parametrize(("field", "value"), [("describes", "latent"), ("rope", "after"), ("rope", "POST")])
def test_a_meaning_outside_the_vocabulary_is_refused_naming_the_field(field: str, value: str) -> None:
    with pytest.raises(ValueError, match=rf"ScaleMeaning\.{field} must be .*{value!r}"):
        kvcore.ScaleMeaning(**{field: value})


def test_rope_defaults_to_unknown_and_takes_pre_or_post() -> None:
    assert kvcore.ScaleMeaning().rope is None
    assert [kvcore.ScaleMeaning(rope=r).rope for r in ("pre", "post")] == ["pre", "post"]


@pytest.mark.parametrize(("raw", "model", "rope"), [
    ({"kv_cache_post_rope": False}, {"model_type": "llama"}, "pre"),
    ({"kv_cache_post_rope": True}, {"model_type": "qwen3"}, "post"),
    ({}, {"model_type": "qwen3"}, "pre"),  # Quark's default is pre-RoPE (and here pre-k_norm: a caveat too)
    ({"kv_cache_post_rope": True}, {"model_type": "deepseek_v3", "kv_lora_rank": 512}, "pre"),  # kv_b_proj
])
def test_quark_says_where_it_measured_the_keys(raw: dict, model: dict, rope: str) -> None:
    import kvcore_quark

    config = kvcore.QuantConfig("quark", raw, model_config=model)
    assert kvcore_quark.get_cache_scale_meaning(quant_config=config).rope == rope


def test_compressed_tensors_observes_keys_after_rope() -> None:
    import kvcore_compressed_tensors

    config = kvcore.QuantConfig("compressed-tensors", {}, model_config={"model_type": "llama"})
    assert kvcore_compressed_tensors.get_cache_scale_meaning(quant_config=config) == kvcore.ScaleMeaning(rope="post")
    other = kvcore.QuantConfig("fp8", {}, model_config={})
    assert kvcore_compressed_tensors.get_cache_scale_meaning(quant_config=other) is None
