"""``kvcore.quantize_kv`` / ``kvcore.dequantize_kv``: the scale convention of docs/formats.md."""

from __future__ import annotations

import pytest
import torch

import kvcore

E4M3 = torch.float8_e4m3fn
E5M2 = torch.float8_e5m2


def reference(x: torch.Tensor, scale: float, limit: float, fp8: torch.dtype) -> torch.Tensor:
    """The formula, written out: float32 division, clamp to ±max, one rounding to fp8."""
    return torch.clamp(x.to(torch.float32) / torch.tensor(scale, dtype=torch.float32), -limit, limit).to(fp8)


def bits(t: torch.Tensor) -> torch.Tensor:
    return t.view(torch.uint8)


def sample(shape: tuple[int, ...], amax: float, dtype: torch.dtype = torch.float32, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g) * amax / 3
    return x.to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("kind", ["float", "0-dim", "(1,)"])
def test_quantize_is_the_formula_bit_for_bit(dtype: torch.dtype, kind: str) -> None:
    x = sample((2, 4, 64, 16), amax=3.3, dtype=dtype)
    value = 3.3 / 448 * 1.37  # not a power of two: the division rounds
    scale = {"float": value, "0-dim": torch.tensor(value), "(1,)": torch.tensor([value], dtype=torch.bfloat16)}[kind]
    if kind == "(1,)":
        value = float(scale.to(torch.float32))  # a bf16 scale is used as its float32 value
    out = kvcore.quantize_kv(x, scale)
    assert out.dtype == E4M3 and out.shape == x.shape
    assert torch.equal(bits(out), bits(reference(x, value, 448.0, E4M3)))


def test_the_arithmetic_is_float32_not_the_input_dtype() -> None:
    """Dividing in bf16 rounds twice; some of these values land on the other fp8 neighbour."""
    x = sample((4096,), amax=5.0, dtype=torch.bfloat16, seed=3)
    scale = 0.0123
    in_bf16 = torch.clamp(x / torch.tensor(scale, dtype=torch.bfloat16), -448, 448).to(E4M3)
    expected = reference(x, scale, 448.0, E4M3)
    assert not torch.equal(bits(in_bf16), bits(expected))  # the check below can tell them apart
    assert torch.equal(bits(kvcore.quantize_kv(x, scale)), bits(expected))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_dequantize_is_the_formula(dtype: torch.dtype) -> None:
    x_q = kvcore.quantize_kv(sample((2, 2, 8, 16), amax=2.0), 0.01)
    scale = 0.0123456
    out = kvcore.dequantize_kv(x_q, scale, dtype)
    assert out.dtype == dtype
    assert torch.equal(out, (x_q.to(torch.float32) * torch.tensor(scale)).to(dtype))


def test_per_head_scale_broadcasts_along_the_head_axis() -> None:
    x = sample((2, 3, 5, 8), amax=4.0)
    scales = torch.tensor([0.004, 0.009, 0.02])
    out = kvcore.quantize_kv(x, scales)
    back = kvcore.dequantize_kv(out, scales, torch.float32)
    for h, s in enumerate(scales.tolist()):
        assert torch.equal(bits(out[:, h]), bits(reference(x[:, h], s, 448.0, E4M3)))
        assert torch.equal(back[:, h], out[:, h].to(torch.float32) * s)
    # The compressed-tensors layout (H_kv, 1, 1) is the same scale.
    assert torch.equal(bits(kvcore.quantize_kv(x, scales.reshape(3, 1, 1))), bits(out))


def test_head_dim_selects_another_layout() -> None:
    x = sample((2, 5, 3, 8), amax=4.0)  # [batch, tokens, heads, head_size]
    scales = torch.tensor([0.004, 0.009, 0.02])
    out = kvcore.quantize_kv(x, scales, head_dim=2)
    for h, s in enumerate(scales.tolist()):
        assert torch.equal(bits(out[:, :, h]), bits(reference(x[:, :, h], s, 448.0, E4M3)))
    back = kvcore.dequantize_kv(out, scales, torch.float32, head_dim=-2)
    assert torch.equal(back[:, :, 1], out[:, :, 1].to(torch.float32) * 0.009)


@pytest.mark.parametrize(("name", "fp8", "limit"), [("fp8", E4M3, 448.0), ("fp8_e4m3", E4M3, 448.0),
                                                      ("fp8_e5m2", E5M2, 57344.0)])
def test_clamping_and_non_finite_input(name: str, fp8: torch.dtype, limit: float) -> None:
    scale = 0.5
    x = torch.tensor([limit * scale * 1.01, -limit * scale * 3, float("inf"), float("-inf"), float("nan"), 1.0])
    out = kvcore.quantize_kv(x, scale, name, head_dim=0)
    assert out.dtype == fp8
    assert out.to(torch.float32).tolist() == [limit, -limit, limit, -limit, 0.0, 2.0]
    back = kvcore.dequantize_kv(out, scale, torch.bfloat16, head_dim=0)
    assert torch.isfinite(back).all()


def test_unclamped_conversion_would_not_be_finite() -> None:
    """Why the clamp matters: torch turns an e5m2 overflow into infinity."""
    assert torch.isinf(torch.tensor([70000.0]).to(E5M2).to(torch.float32)).all()
    assert kvcore.quantize_kv(torch.tensor([70000.0]), 1.0, "fp8_e5m2", head_dim=0).to(torch.float32).item() == 57344.0
    assert kvcore.quantize_kv(torch.tensor([500.0]), 1.0, head_dim=0).to(torch.float32).item() == 448.0


@pytest.mark.parametrize(("name", "mantissa", "min_exp", "limit"),
                         [("fp8", 3, -6, 448.0), ("fp8_e5m2", 2, -14, 57344.0)])
@pytest.mark.parametrize("scale", [3.3 / 448, 0.37, 1.0])
def test_round_trip_error_is_at_most_half_an_ulp(name: str, mantissa: int, min_exp: int, limit: float,
                                                 scale: float) -> None:
    x = sample((4, 2, 128, 16), amax=limit * scale * 1.5, seed=7)  # some values clip
    back = kvcore.dequantize_kv(kvcore.quantize_kv(x, scale, name), scale, torch.float32)
    clipped = x.clamp(-limit * scale, limit * scale)
    # Half an ulp relative for normal numbers; half the subnormal step below 2**min_exp.
    bound = torch.maximum(clipped.abs() * 2.0 ** -(mantissa + 1), torch.tensor(2.0 ** (min_exp - mantissa - 1) * scale))
    err = (back - clipped).abs()
    assert (err <= bound * (1 + 1e-6)).all(), float((err / bound).max())
    assert (x.abs() > limit * scale).any()
    top = torch.tensor(limit) * torch.tensor(scale)  # float32, as dequantize_kv computes it
    assert torch.equal(back[x > limit * scale], top.expand_as(back[x > limit * scale]))


def test_e5m2_applies_the_scale_and_scale_one_is_unscaled() -> None:
    x = sample((1, 2, 16, 16), amax=3.0)
    assert torch.equal(bits(kvcore.quantize_kv(x, 0.01, "fp8_e5m2")), bits(reference(x, 0.01, 57344.0, E5M2)))
    assert torch.equal(bits(kvcore.quantize_kv(x, 1.0, "fp8_e5m2")), bits(x.to(E5M2)))


@pytest.mark.parametrize("name", ["auto", "int8", "nvfp4", "fp16", "", None])
def test_kv_cache_dtype_that_does_not_quantize_is_refused(name: object) -> None:
    with pytest.raises(kvcore.KvcoreError, match="kv_cache_dtype") as info:
        kvcore.quantize_kv(torch.ones(1, 1, 1, 1), 1.0, name)  # type: ignore[arg-type]
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize(("scale", "problem"), [(0.0, "zero"), (-0.1, "negative"), (float("nan"), "NaN"),
                                                (float("inf"), "infinite"), (torch.tensor([0.1, 0.0]), "zero"),
                                                (torch.tensor([0.1, -2.0]), "negative")])
def test_bad_scale_is_refused_naming_it(scale: object, problem: str) -> None:
    x = torch.ones(1, 2, 3, 4)
    with pytest.raises(kvcore.WeightLoadError, match=problem):
        kvcore.quantize_kv(x, scale)  # type: ignore[arg-type]
    with pytest.raises(kvcore.WeightLoadError, match=problem):
        kvcore.dequantize_kv(x.to(E4M3), scale, torch.float32)  # type: ignore[arg-type]


def test_per_head_scale_of_the_wrong_size_names_both_sizes() -> None:
    x = torch.ones(1, 4, 3, 8)
    with pytest.raises(kvcore.WeightLoadError, match=r"3 values .* holds 4 KV heads"):
        kvcore.quantize_kv(x, torch.tensor([0.1, 0.2, 0.3]))
    with pytest.raises(kvcore.WeightLoadError, match="head_dim=5"):
        kvcore.quantize_kv(x, torch.tensor([0.1, 0.2, 0.3, 0.4]), head_dim=5)
    with pytest.raises(kvcore.WeightLoadError, match="scale must be"):
        kvcore.quantize_kv(x, "0.1")  # type: ignore[arg-type]


def test_wrong_tensor_dtypes_are_refused() -> None:
    with pytest.raises(kvcore.WeightLoadError, match="floating point"):
        kvcore.quantize_kv(torch.ones(2, 2, 2, dtype=torch.int32), 1.0)
    with pytest.raises(kvcore.WeightLoadError, match="already"):
        kvcore.quantize_kv(torch.ones(2, 2, 2).to(E4M3), 1.0)
    with pytest.raises(kvcore.WeightLoadError, match="fp8 tensor"):
        kvcore.dequantize_kv(torch.ones(2, 2, 2), 1.0, torch.float32)
    with pytest.raises(kvcore.WeightLoadError, match="dtype must be"):
        kvcore.dequantize_kv(torch.ones(2, 2, 2).to(E4M3), 1.0, torch.int8)


def test_input_is_left_alone() -> None:
    x = torch.tensor([[[1000.0, float("nan")]]])
    kvcore.quantize_kv(x, 1.0)
    assert x[0, 0, 0].item() == 1000.0 and torch.isnan(x[0, 0, 1])
