"""ModelOpt checkpoints loaded end to end through kvcore.load with the plugin registered."""

from __future__ import annotations

from collections.abc import Iterator

import kvcore_modelopt
import modelopt_checkpoints as ckpts
import pytest
import torch

import kvcore
from kvcore.testing import registered_plugin


@pytest.fixture(autouse=True)
def plugin() -> Iterator[None]:
    # Already discovered when the plugin is pip-installed; registered here when it is not.
    if kvcore.get_plugin_manager().get_plugin("modelopt") is not None:
        yield
        return
    with registered_plugin(kvcore_modelopt, "modelopt", distribution="kvcore-modelopt", version="0.1.0"):
        yield


@pytest.mark.parametrize(("style", "shards"), [("config.json", 1), ("config.json", 3), ("hf_quant_config", 1),
                                               ("hf_quant_config", 2)])
def test_scales_load_exactly(tmp_path, style: str, shards: int) -> None:
    path = ckpts.write(tmp_path / "ckpt", style=style, shards=shards)
    model = ckpts.model()
    report = kvcore.load(model, path)
    assert report.quant_method == "modelopt" and "modelopt" in report.plugins
    for i in range(ckpts.LAYERS):
        p = f"model.layers.{i}.self_attn"
        attn = model.model.layers[i].self_attn.attn
        assert (float(attn.k_scale), float(attn.v_scale)) == (ckpts.k_value(i), ckpts.v_value(i))
        assert attn.k_scale.dtype == torch.float32
        assert report.kv_scale_sources[f"{p}.attn"] == {
            "k_scale": f"{p}.k_proj.k_scale", "v_scale": f"{p}.v_proj.v_scale",
            "q_scale": "default", "prob_scale": "default",
        }
    written = ckpts.tensors()
    for name, param in model.named_parameters():
        if name in written:
            assert torch.equal(_bytes(param), _bytes(written[name])), name


def test_all_zero_affine_biases_are_symmetric_and_dropped(tmp_path) -> None:
    path = ckpts.write(tmp_path / "ckpt", bias=0.0)
    report = kvcore.load(ckpts.model(), path)
    assert "model.layers.0.self_attn.k_proj.k_bias" in report.dropped


@pytest.mark.parametrize("strict", [True, False])
def test_non_zero_affine_biases_are_refused_before_any_write(tmp_path, strict: bool) -> None:
    path = ckpts.write(tmp_path / "ckpt", bias=0.25)
    model = ckpts.model()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    with pytest.raises(kvcore.WeightLoadError, match=r"self_attn\.[kv]_proj\.[kv]_bias"):
        kvcore.load(model, path, strict=strict)
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())


@pytest.mark.parametrize("style", ["config.json", "hf_quant_config"])
def test_nvfp4_kv_cache_loads_and_says_what_it_was_calibrated_for(tmp_path, style: str) -> None:
    quantization = ({"quant_method": "modelopt", "quant_algo": "NVFP4", "kv_cache_scheme": "NVFP4"}
                    if style == "config.json" else {"quant_algo": "NVFP4", "kv_cache_quant_algo": "NVFP4"})
    path = ckpts.write(tmp_path / "ckpt", style=style, quantization=quantization)
    model = ckpts.model()
    report = kvcore.load(model, path)
    assert report.calibrated_for == "nvfp4"
    assert float(model.model.layers[0].self_attn.attn.k_scale) == ckpts.k_value(0)


def _bytes(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.detach().reshape(-1).view(torch.uint8)
