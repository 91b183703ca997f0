"""What each genuine ``tests/fixtures/real2`` checkpoint must load as, computed from its own tensors.

``CASES`` says per fixture what its KV scales describe (docs/formats.md, "What each scale
describes"): plain K and V, an MLA latent and rope key (llm-compressor on DeepSeek-V3), or an MLA
model's expanded per-head K and V (ModelOpt, Quark on DeepSeek-V3); and which caveat a load must
warn about. The expected kernel scales follow from that and the checkpoint's values alone.
"""

from __future__ import annotations

import dataclasses
import json
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import arch_models as am
import pytest
import torch
from shared_support import read_all  # noqa: F401 - shared helper, used through this module

import kvcore

REAL2 = Path(__file__).resolve().parent.parent / "fixtures" / "real2"
K_LEAVES = ("k_scale", "k_proj.output_scale", "k_proj.k_scale", "qkv_proj.output_scale", "kv_b_proj.output_scale")
V_LEAVES = ("v_scale", "v_proj.output_scale", "v_proj.v_scale")
ATTN_SCALES = ("k_scale", "v_scale", "q_scale", "prob_scale")


@dataclasses.dataclass(frozen=True)
class Case:
    fixture: str
    describes: str = "kv"
    """``kv``, ``mla_latent`` or ``mla_per_head`` (``kvcore.ScaleMeaning.describes``)."""
    caveat: str | None = None
    """A word the load's caveat warning must contain (and ``inspect``'s warning anomaly)."""
    calibrated_for: str = "fp8"

    @property
    def path(self) -> Path:
        return REAL2 / self.fixture

    @property
    def mla(self) -> bool:
        return self.describes != "kv"

    def __str__(self) -> str:
        return self.fixture


CASES = (
    Case("llmcompressor/qwen3_fp8_kv_tensor"),
    Case("llmcompressor/qwen3_moe_fp8_kv_tensor"),
    Case("llmcompressor/phi3_fp8_kv_tensor"),
    Case("llmcompressor/deepseek_v3_fp8_kv_tensor", describes="mla_latent"),
    Case("quark/qwen3_fp8_kv_fp8", caveat="k_norm"),
    Case("quark/qwen3_fp8_kv_fp8_post_rope"),
    Case("quark/phi3_fp8_kv_fp8"),
    Case("quark/deepseek_v3_fp8_kv_fp8", describes="mla_per_head"),
    Case("quark/mixtral_fp8_kv_fp8"),
    Case("modelopt/qwen3_fp8_kv_fp8"),
    Case("modelopt/qwen3_fp8_kv_nvfp4", calibrated_for="nvfp4"),
    Case("modelopt/mixtral_fp8_kv_fp8"),
    Case("modelopt/deepseek_v3_fp8_kv_fp8", describes="mla_per_head"),
)
BY_NAME = {case.fixture: case for case in CASES}
MLA_CASES = tuple(case for case in CASES if case.mla)
MOE_CASES = tuple(case for case in CASES if any(w in case.fixture for w in ("moe", "mixtral", "deepseek")))


def case(fixture: str) -> Case:
    return BY_NAME[fixture]


def config(case: Case) -> dict[str, Any]:
    return json.loads((case.path / "config.json").read_text())


def layers(case: Case) -> int:
    return config(case)["num_hidden_layers"]




def kv_leaf(name: str) -> bool:
    _, sep, leaf = name.partition(".self_attn.")
    return bool(sep) and leaf in K_LEAVES + V_LEAVES


def kv_sources(tensors: dict[str, torch.Tensor], layer: int) -> tuple[str, str]:
    """The checkpoint's k and v scale tensors of ``layer`` (one tensor serves both when v has none)."""
    p = f"model.layers.{layer}.self_attn"
    k = [f"{p}.{leaf}" for leaf in K_LEAVES if f"{p}.{leaf}" in tensors]
    v = [f"{p}.{leaf}" for leaf in V_LEAVES if f"{p}.{leaf}" in tensors]
    assert len(k) == 1 and len(v) <= 1, (k, v)
    return k[0], (v or k)[0]


def value(tensors: dict[str, torch.Tensor], name: str) -> float:
    return float(tensors[name].to(torch.float32).reshape(()))


def set_aside(case: Case, use_mla: bool) -> bool:
    """Whether the checkpoint's k/v scales describe another cache than this attention's."""
    return (case.describes == "mla_latent" and not use_mla) or (case.describes == "mla_per_head" and use_mla)


def expected(
    case: Case, tensors: dict[str, torch.Tensor], use_mla: bool = False
) -> dict[int, dict[str, tuple[float, str]]]:
    """``{layer: {scale: (kernel value, source)}}`` for an attention with this ``use_mla``."""
    out = {}
    for layer in range(layers(case)):
        k, v = kv_sources(tensors, layer)
        if set_aside(case, use_mla):
            k = v = None
        elif case.describes == "mla_latent":  # one MLA cache: the larger of latent and rope key
            k = v = max((k, v), key=lambda name: value(tensors, name))
        scales = {"k_scale": k, "v_scale": v, "q_scale": None, "prob_scale": None}
        out[layer] = {s: (value(tensors, n), n) if n else (1.0, "default") for s, n in scales.items()}
    return out


def load(model: torch.nn.Module, checkpoint: Path, **kwargs: Any) -> tuple[kvcore.LoadReport, list[str]]:
    """``kvcore.load`` and the messages of every warning it gave."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        report = kvcore.load(model, checkpoint, **kwargs)
    return report, [str(w.message) for w in caught]


def check_warnings(case: Case, built: am.Built, messages: list[str], use_mla: bool = False) -> None:
    """Exactly the warnings the case calls for, each naming every attention layer; none otherwise."""
    wanted: list[Callable[[str], bool]] = []
    if set_aside(case, use_mla):
        why = "MLA latent and rope key" if case.describes == "mla_latent" else "expanded per-head keys and values"
        flag = f"use_mla={use_mla}"  # the attention the scales do not describe
        wanted.append(lambda m: m.startswith("k and v scales of 1.0") and why in m and flag in m)
    elif case.caveat:
        wanted.append(lambda m: case.caveat in m)
    assert len(messages) == len(wanted), messages
    for message, matches in zip(messages, wanted, strict=True):
        assert matches(message), message
        for name in built.attention.values():
            assert name in message, (name, message)


def check_weights(built: am.Built, tensors: dict[str, torch.Tensor]) -> None:
    """Every non-KV checkpoint tensor is where ``built.views`` says, bit-exact (per-shard scales in
    float32), and those places cover every parameter of the model but the attentions' scales."""
    covered: dict[int, int] = {}
    for name, tensor in tensors.items():
        if kv_leaf(name):
            continue
        assert name in built.views, f"the model has no place for {name}"
        param, index = built.views[name]
        got = param.data[index]
        want = tensor.to(param.dtype) if tensor.dtype != param.dtype else tensor
        assert got.numel() == want.numel(), name
        assert got.dtype == want.dtype and torch.equal(_bytes(got), _bytes(want.reshape(got.shape))), name
        covered[id(param)] = covered.get(id(param), 0) + got.numel()
    for pname, param in built.model.named_parameters():
        if pname.rpartition(".")[2] in ATTN_SCALES:
            continue
        assert covered.get(id(param)) == param.numel(), f"{pname}: {covered.get(id(param))} of {param.numel()}"


def _bytes(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.detach().contiguous().reshape(-1).view(torch.uint8)


def check_kv(case: Case, built: am.Built, report: kvcore.LoadReport, tensors: dict[str, torch.Tensor],
             use_mla: bool = False) -> None:
    """Each attention holds the expected float32 scales, and the report says so with their sources."""
    want = expected(case, tensors, use_mla)
    assert report.kv_scales == {built.attention[i]: {s: v for s, (v, _) in sc.items()} for i, sc in want.items()}
    assert report.kv_scale_sources == {built.attention[i]: {s: src for s, (_, src) in sc.items()}
                                       for i, sc in want.items()}
    for layer, scales in want.items():
        attn = built.model.get_submodule(built.attention[layer])
        assert isinstance(attn, kvcore.Attention) and attn.use_mla == (use_mla and case.mla)
        for scale, (val, _) in scales.items():
            param = getattr(attn, scale)
            assert param.dtype == torch.float32 and param.numel() == 1 and float(param) == val, (layer, scale)


def as_read(report: kvcore.LoadReport, built: am.Built) -> dict[str, dict[str, Any]]:
    """``report.kv_scales`` under the names ``read_kv_scales`` uses (``model.layers.N.self_attn.attn``)."""
    names = {module: f"model.layers.{i}.self_attn.attn" for i, module in built.attention.items()}
    return {names[module]: scales for module, scales in report.kv_scales.items()}



def _load_param(c: Case, use_mla: bool) -> Any:
    suffix = ("-use_mla" if use_mla else "-expanded") if c.mla else ""
    return pytest.param(c, use_mla, id=f"{c.fixture}{suffix}")


LOADS = tuple(_load_param(c, use_mla) for c in CASES for use_mla in ((False, True) if c.mla else (False,)))
"""``(case, use_mla)``: every fixture into the attention an engine gives it; MLA fixtures into both kinds
(``-use_mla``: an MLA latent cache; ``-expanded``: per-head keys and values)."""
