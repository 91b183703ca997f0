"""Real transformers Llama and Qwen3: logits through kvcore's cache are those of the fp8 formula."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch
from hf_support import (
    LLAMA,
    QWEN3,
    build_model,
    checkpoint_scales,
    formula,
    prefill_and_decode,
    prompt,
    reference_cache,
    write_per_head,
)
from transformers.cache_utils import DynamicCache

import kvcore.transformers

CASES = {
    "llama": (LLAMA, LLAMA, torch.float32),
    "llama-bf16": (LLAMA, LLAMA, torch.bfloat16),
    "qwen3": (QWEN3, QWEN3, torch.float32),
    "llama-per-head": (LLAMA, None, torch.float32),
}


@pytest.fixture(params=sorted(CASES))
def case(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[object, Path]:
    fixture, checkpoint, dtype = CASES[request.param]
    if checkpoint is None:
        checkpoint = write_per_head(tmp_path / "per_head", fixture)
    return build_model(fixture, dtype), checkpoint


def test_logits_equal_the_reference_at_prefill_and_decode(case: tuple[object, Path]) -> None:
    model, checkpoint = case
    scales = checkpoint_scales(checkpoint)
    ids = prompt()
    expected = prefill_and_decode(model, reference_cache(scales), ids)
    got = prefill_and_decode(model, kvcore.transformers.kv_cache(model, checkpoint), ids)
    for want, have in zip(expected, got, strict=True):
        assert torch.equal(have, want)
    # The scales matter: the same formula with other scales gives other logits, so a cache that
    # ignored the checkpoint's scales (or used 1.0) could not pass the check above.
    swapped = [(v, k) for k, v in scales]
    # Not a power of two: x / (2 * s) rounds like x / s, except where values clip or are subnormal.
    scaled = [(k * 1.5, v * 1.5) for k, v in scales]
    ones = [(torch.ones(1), torch.ones(1)) for _ in scales]
    for other in (swapped, scaled, ones):
        wrong = prefill_and_decode(model, reference_cache(other), ids)
        assert not torch.equal(wrong[0], got[0]) and not torch.equal(wrong[1], got[1])
    # Quantization error is there, and small: the scales fit the cached keys and values.
    with torch.no_grad():
        plain = model(ids, cache=DynamicCache(config=model.config), use_cache=True).logits
    assert not torch.equal(plain, got[0])
    assert (plain - got[0]).abs().max() < 0.05 * plain.abs().max()


def test_update_stores_fp8_and_returns_everything_dequantized(case: tuple[object, Path]) -> None:
    model, checkpoint = case
    cache = kvcore.transformers.kv_cache(model, checkpoint)
    (k0, v0), (k1, v1) = checkpoint_scales(checkpoint)[:2]
    dtype = next(model.parameters()).dtype
    g = torch.Generator().manual_seed(5)
    first = [torch.randn(2, 2, 3, 16, generator=g).to(dtype) * 0.3 for _ in range(2)]
    second = [torch.randn(2, 2, 1, 16, generator=g).to(dtype) * 0.3 for _ in range(2)]
    cache.update(*first, 1)
    keys, values = cache.update(*second, 1)
    assert keys.dtype == values.dtype == dtype and keys.shape == (2, 2, 4, 16)
    assert torch.equal(keys, formula(torch.cat([first[0], second[0]], dim=-2), k1))
    assert torch.equal(values, formula(torch.cat([first[1], second[1]], dim=-2), v1))
    layer = cache.layers[1]
    assert layer.keys.dtype == layer.values.dtype == torch.float8_e4m3fn and layer.keys.shape == (2, 2, 4, 16)
    assert cache.get_seq_length(1) == 4 and cache.get_seq_length(0) == 0
    assert torch.equal(layer.k_scale.reshape(-1), k1) and torch.equal(cache.layers[0].v_scale.reshape(-1), v0)
    assert k0.numel() == layer.k_scale.numel()


@pytest.mark.parametrize("fixture", [LLAMA, QWEN3], ids=["llama", "qwen3"])
def test_generate_runs_with_either_argument_name(fixture: Path) -> None:
    model = build_model(fixture, torch.bfloat16)
    ids = prompt(batch=1, length=6)
    outputs = []
    for argument in ("cache", "past_key_values"):
        cache = kvcore.transformers.kv_cache(model, fixture)
        # transformers 5.24 renamed past_key_values to cache; the old name warns, and works.
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            out = model.generate(ids, max_new_tokens=5, do_sample=False, **{argument: cache})
        assert out.shape == (1, 11)
        assert cache.get_seq_length() == 10 and cache.layers[0].keys.dtype == torch.float8_e4m3fn
        outputs.append(out)
    assert torch.equal(outputs[0], outputs[1])


def test_e5m2_cache_stores_e5m2() -> None:
    model = build_model(LLAMA)
    cache = kvcore.transformers.kv_cache(model, LLAMA, kv_cache_dtype="fp8_e5m2")
    prefill_and_decode(model, cache, prompt())
    assert cache.layers[0].keys.dtype == torch.float8_e5m2 and cache.get_seq_length() == 10


def test_sliding_window_layers_keep_their_window() -> None:
    """A model with sliding-window layers gets them (same window, same mask sizes), quantized."""
    model = build_model(QWEN3, layer_types=["sliding_attention", "full_attention"], sliding_window=4,
                        use_sliding_window=True)
    cache = kvcore.transformers.kv_cache(model, QWEN3)
    reference = DynamicCache(config=model.config)
    assert [type(layer).__name__ for layer in cache.layers] == ["Fp8SlidingWindowLayer", "Fp8Layer"]
    prefill_and_decode(model, cache, prompt())
    prefill_and_decode(model, reference, prompt())
    assert cache.layers[0].keys.shape == reference.layers[0].keys.shape == (2, 2, 3, 16)
    assert cache.layers[1].keys.shape == reference.layers[1].keys.shape == (2, 2, 10, 16)
    assert cache.get_mask_sizes(1, 0) == reference.get_mask_sizes(1, 0)

