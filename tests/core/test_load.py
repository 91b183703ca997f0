"""kvcore.load: mapping, strictness, dtype rules and KV-scale finalisation (fp8 plugin via its entry point)."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch

import kvcore
from kvcore.testing import tiny_llama, write_checkpoint

FP8 = {"quant_method": "fp8", "activation_scheme": "static", "kv_cache_scheme": "static"}
P = "model.layers.{}.self_attn"


def plain_weights(model: torch.nn.Module, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random values for every non-scale tensor of ``model``, in its own dtypes."""
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for name, tensor in model.state_dict().items():
        if name.endswith(("k_scale", "v_scale", "q_scale", "prob_scale")):
            continue
        out[name] = torch.randn(tensor.shape, generator=gen).to(tensor.dtype)
    return out


def scales(layers: int = 2, **per_layer: float) -> dict[str, torch.Tensor]:
    return {
        f"{P.format(i)}.{name}": torch.tensor(value * (i + 1), dtype=torch.float32)
        for i in range(layers)
        for name, value in per_layer.items()
    }


def write(tmp_path: Path, tensors: dict[str, torch.Tensor], quant: dict | None = FP8, **kw: object) -> Path:
    return write_checkpoint(tmp_path / "ckpt", tensors, quantization_config=quant, **kw)  # type: ignore[arg-type]


def attn(model: torch.nn.Module, i: int) -> kvcore.Attention:
    return model.model.layers[i].self_attn.attn  # type: ignore[no-any-return]


def test_loads_every_weight_bit_exact_and_scales_as_float32(tmp_path: Path) -> None:
    model = tiny_llama(kv_cache_dtype="fp8")
    weights = plain_weights(model)
    k_value = 0.0123456789  # not representable in bf16: must survive as float32
    ckpt = write(tmp_path, {**weights, **scales(k_scale=k_value, v_scale=0.5)})
    report = kvcore.load(model, ckpt)
    for name, tensor in model.state_dict().items():
        if name in weights:
            assert torch.equal(tensor, weights[name]), name
    for i in range(2):
        a = attn(model, i)
        assert a.k_scale.dtype == torch.float32 and a.k_scale.shape == ()
        assert float(a.k_scale) == float(torch.tensor(k_value * (i + 1), dtype=torch.float32))
        assert float(a.v_scale) == float(torch.tensor(0.5 * (i + 1), dtype=torch.float32))
        sources = report.kv_scale_sources[f"{P.format(i)}.attn"]
        assert sources == {
            "k_scale": f"{P.format(i)}.k_scale",
            "v_scale": f"{P.format(i)}.v_scale",
            "q_scale": "default",
            "prob_scale": "default",
        }
    assert report.quant_method == "fp8" and report.plugins == ["fp8"]
    assert set(weights) | {f"{P.format(i)}.attn.{s}" for i in range(2) for s in ("k_scale", "v_scale")} == report.loaded
    assert report.unexpected == [] and report.missing == []


def test_missing_q_and_prob_are_one(tmp_path: Path) -> None:
    model = tiny_llama(kv_cache_dtype="fp8")
    report = kvcore.load(model, write(tmp_path, {**plain_weights(model), **scales(k_scale=0.1, v_scale=0.2)}))
    assert float(attn(model, 0).q_scale) == 1.0 and float(attn(model, 0).prob_scale) == 1.0
    assert report.kv_scales[f"{P.format(0)}.attn"]["q_scale"] == 1.0


@pytest.mark.parametrize(("present", "absent"), [("k_scale", "v_scale"), ("v_scale", "k_scale")])
def test_one_of_k_and_v_serves_for_both(tmp_path: Path, present: str, absent: str) -> None:
    model = tiny_llama(kv_cache_dtype="fp8")
    report = kvcore.load(model, write(tmp_path, {**plain_weights(model), **scales(**{present: 0.25})}))
    for i in range(2):
        assert float(getattr(attn(model, i), absent)) == float(getattr(attn(model, i), present)) == 0.25 * (i + 1)
        assert report.kv_scale_sources[f"{P.format(i)}.attn"][absent] == f"{P.format(i)}.{present}"


def test_legacy_kv_scale_serves_for_k_and_v(tmp_path: Path) -> None:
    model = tiny_llama(kv_cache_dtype="fp8")
    kvcore.load(model, write(tmp_path, {**plain_weights(model), **scales(kv_scale=0.75)}))
    assert float(attn(model, 1).k_scale) == float(attn(model, 1).v_scale) == 1.5


def test_neither_k_nor_v_with_fp8_cache_warns_naming_the_layer(tmp_path: Path) -> None:
    model = tiny_llama(kv_cache_dtype="fp8")
    ckpt = write(tmp_path, plain_weights(model))
    with pytest.warns(UserWarning) as record:
        report = kvcore.load(model, ckpt)
    messages = [str(w.message) for w in record]
    for i in range(2):
        assert any(f"'{P.format(i)}.attn'" in m for m in messages), messages
    assert float(attn(model, 0).k_scale) == float(attn(model, 0).v_scale) == 1.0
    assert set(report.kv_scale_sources[f"{P.format(1)}.attn"].values()) == {"default"}


def test_neither_k_nor_v_with_auto_cache_is_silent(tmp_path: Path) -> None:
    model = tiny_llama(kv_cache_dtype="auto")
    ckpt = write(tmp_path, plain_weights(model))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        kvcore.load(model, ckpt)
    assert float(attn(model, 0).k_scale) == 1.0


def test_scales_stay_float32_after_the_model_is_cast(tmp_path: Path) -> None:
    model = tiny_llama(kv_cache_dtype="fp8").to(torch.float16)
    weights = {k: v.to(torch.bfloat16) if v.is_floating_point() else v for k, v in plain_weights(model).items()}
    kvcore.load(model, write(tmp_path, {**weights, **scales(k_scale=0.0123456789, v_scale=0.5)}))
    assert attn(model, 0).k_scale.dtype == torch.float32
    assert float(attn(model, 0).k_scale) == float(torch.tensor(0.0123456789, dtype=torch.float32))


def test_per_head_scales_load_as_a_vector(tmp_path: Path) -> None:
    model = tiny_llama(kv_cache_dtype="fp8")
    per_head = {f"{P.format(i)}.k_scale": torch.tensor([[[0.5]], [[0.25]]], dtype=torch.bfloat16) for i in range(2)}
    report = kvcore.load(model, write(tmp_path, {**plain_weights(model), **per_head}))
    assert attn(model, 0).k_scale.shape == (2,) and attn(model, 0).k_scale.dtype == torch.float32
    assert report.kv_scales[f"{P.format(0)}.attn"]["k_scale"] == [0.5, 0.25]
    assert report.kv_scales[f"{P.format(0)}.attn"]["v_scale"] == [0.5, 0.25]


def test_scale_with_neither_one_nor_num_kv_heads_elements_is_refused(tmp_path: Path) -> None:
    model = tiny_llama(kv_cache_dtype="fp8")
    bad = {f"{P.format(0)}.k_scale": torch.ones(3)}
    with pytest.raises(kvcore.WeightLoadError, match=r"model\.layers\.0\.self_attn\.k_scale"):
        kvcore.load(model, write(tmp_path, {**plain_weights(model), **bad}))


def test_models_own_mapper_is_ored_with_the_plugins(tmp_path: Path) -> None:
    model = tiny_llama(kv_cache_dtype="fp8")
    weights = {f"transformer.{k.removeprefix('model.')}" if k.startswith("model.") else k: v
               for k, v in plain_weights(model).items()}
    scale = {f"transformer.layers.{i}.self_attn.k_scale": torch.tensor(0.5) for i in range(2)}
    mapper = kvcore.WeightsMapper(orig_to_new_prefix={"transformer.": "model."})
    report = kvcore.load(model, write(tmp_path, {**weights, **scale}), mapper=mapper)
    assert float(attn(model, 1).k_scale) == 0.5
    assert report.kv_scale_sources[f"{P.format(1)}.attn"]["k_scale"] == "transformer.layers.1.self_attn.k_scale"


def test_strict_lists_every_unexpected_and_missing_name(tmp_path: Path) -> None:
    model = tiny_llama()
    weights = plain_weights(model)
    del weights["model.norm.weight"], weights["lm_head.weight"]
    weights["model.layers.0.mlp.gate_prj.weight"] = torch.zeros(1)
    weights["extra.thing"] = torch.zeros(1)
    with pytest.raises(kvcore.WeightLoadError) as info:
        kvcore.load(model, write(tmp_path, weights, quant=None))
    message = str(info.value)
    for name in ("model.norm.weight", "lm_head.weight", "model.layers.0.mlp.gate_prj.weight", "extra.thing"):
        assert name in message
    assert "did you mean 'model.layers.0.mlp.gate_proj.weight'" in message
    assert message.index("extra.thing") < message.index("model.layers.0.mlp.gate_prj.weight")
    assert message.index("lm_head.weight") < message.index("model.norm.weight")


def test_non_strict_reports_and_warns(tmp_path: Path) -> None:
    model = tiny_llama()
    weights = plain_weights(model)
    del weights["model.norm.weight"]
    weights["extra.thing"] = torch.zeros(1)
    with pytest.warns(UserWarning, match="extra.thing"):
        report = kvcore.load(model, write(tmp_path, weights, quant=None), strict=False)
    assert report.unexpected == ["extra.thing"] and report.missing == ["model.norm.weight"]
    assert torch.equal(model.lm_head.weight, weights["lm_head.weight"])
    assert report.quant_method is None and report.plugins == []


def test_unhandled_method_is_refused_when_strict_and_loads_without_mappers_otherwise(tmp_path: Path) -> None:
    model = tiny_llama()
    ckpt = write(tmp_path, plain_weights(model), quant={"quant_method": "nosuchformat"})
    with pytest.raises(kvcore.QuantConfigError, match=r"nosuchformat.*pip install kvcore-nosuchformat"):
        kvcore.load(model, ckpt)
    with pytest.warns(UserWarning, match="nosuchformat"):
        report = kvcore.load(model, ckpt, strict=False)
    assert report.quant_method == "nosuchformat" and report.plugins == []


def test_float_dtypes_convert_but_fp8_must_match(tmp_path: Path) -> None:
    model = tiny_llama(dtype=torch.float32)
    weights = {k: v.to(torch.bfloat16) for k, v in plain_weights(model).items()}
    kvcore.load(model, write(tmp_path / "a", weights, quant=None))
    assert torch.equal(model.lm_head.weight, weights["lm_head.weight"].float())
    weights["lm_head.weight"] = weights["lm_head.weight"].to(torch.float8_e4m3fn)
    with pytest.raises(kvcore.WeightLoadError, match=r"lm_head\.weight.*F8_E4M3"):
        kvcore.load(model, write(tmp_path / "b", weights, quant=None))


def test_sharded_checkpoint_loads_like_a_single_file(tmp_path: Path) -> None:
    model, twin = tiny_llama(kv_cache_dtype="fp8"), tiny_llama(kv_cache_dtype="fp8")
    tensors = {**plain_weights(model), **scales(k_scale=0.1, v_scale=0.2)}
    kvcore.load(model, write(tmp_path / "one", tensors))
    kvcore.load(twin, write(tmp_path / "many", tensors, shards=3))
    for (name, a), (_, b) in zip(model.state_dict().items(), twin.state_dict().items(), strict=True):
        assert torch.equal(a.reshape(-1).view(torch.uint8), b.reshape(-1).view(torch.uint8)), name


def test_report_repr_names_method_and_parameters(tmp_path: Path) -> None:
    model = tiny_llama(kv_cache_dtype="fp8")
    report = kvcore.load(model, write(tmp_path, {**plain_weights(model), **scales(k_scale=0.1, v_scale=0.2)}))
    text = repr(report)
    assert "fp8" in text and "lm_head.weight" in text and "model.layers.0.self_attn.attn" in text


def test_close_matches_are_suggested_for_the_first_offenders_only(tmp_path: Path) -> None:
    # Each suggestion is a fuzzy match against every parameter name: bounded, so that a
    # checkpoint for the wrong model (10^5 offenders) still fails fast, with every name listed.
    from kvcore._loading.load import SUGGESTIONS

    model = torch.nn.Module()
    count = SUGGESTIONS + 5
    for i in range(count):
        model.register_parameter(f"p{i:03d}_weight", torch.nn.Parameter(torch.zeros(1)))
    tensors = {f"p{i:03d}_weigth": torch.zeros(1) for i in range(count)}
    with pytest.raises(kvcore.WeightLoadError) as info:
        kvcore.load(model, write(tmp_path, tensors, quant=None))
    for kind in ("_weigth in model.safetensors", "_weight"):  # unexpected tensors, then missing parameters
        listed = [line for line in str(info.value).splitlines() if line.split(" (")[0].endswith(kind)]
        hinted = [line for line in listed if "did you mean" in line]
        assert len(listed) == count and hinted == listed[:SUGGESTIONS]
