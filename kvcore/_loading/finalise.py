"""Finalising KV-cache scales: defaults for missing ones, float32, per-head where loaded so."""

from __future__ import annotations

import dataclasses

import torch

from kvcore._loading.interpret import interpret
from kvcore._meaning import ScaleMeaning
from kvcore._names import SCALE_NAMES, ScaleValue
from kvcore._scale_param import DEFAULTED, NOT_LOADED, store_scale
from kvcore._show import shown
from kvcore._warn import warn

__all__ = [
    "DEFAULT",
    "Finalisation",
    "decide",
    "fill_k_v",
    "final_values",
    "finalise_all",
    "finalise_module",
    "loaded_scales",
    "write_all",
]

DEFAULT = "default"

Value = float | list[float]


@dataclasses.dataclass
class Finalisation:
    """What finalising the attention modules will write, and the warnings it owes, decided
    before anything is written (``kvcore.load`` warns before its first write)."""

    usable: dict[str, dict[str, ScaleValue]]
    warnings: list[str]


def decide(
    attention: dict[str, torch.nn.Module], scales: dict[str, dict[str, ScaleValue]], meaning: ScaleMeaning
) -> Finalisation:
    """The scales each attention module can use (``scales`` read as ``meaning`` says), and the warnings.

    One warning per quantized module with no k or v scale; one per reason, naming the layers,
    for scales set aside because they describe another cache (MLA); one for the plugin's
    caveat, naming the layers whose scales it concerns.
    """
    usable: dict[str, dict[str, ScaleValue]] = {}
    messages: list[str] = []
    set_aside: dict[str, list[str]] = {}
    for name, module in attention.items():
        usable[name], why = interpret(scales.get(name, {}), bool(getattr(module, "use_mla", False)), meaning)
        if why is not None:
            set_aside.setdefault(why, []).append(name)
        elif "k_scale" not in fill_k_v(usable[name]) and _is_quantized(module):
            messages.append(
                f"attention layer {name!r} has an fp8 KV cache but the checkpoint has no k or v "
                "scale for it; using 1.0, which may lose accuracy. Use a checkpoint calibrated for "
                "an fp8 KV cache"
            )
    for why, names in set_aside.items():
        messages.append(f"k and v scales of 1.0 for {_layers(names)}: {why}. Use a checkpoint calibrated for "
                        "this cache")
    concerned = [name for name in attention if "k_scale" in scales.get(name, {})]
    if meaning.caveat and concerned:
        messages.append(f"{meaning.caveat} ({_layers(concerned)})")
    return Finalisation(usable, messages)


def write_all(
    attention: dict[str, torch.nn.Module], decided: Finalisation
) -> tuple[dict[str, dict[str, Value]], dict[str, dict[str, str]]]:
    """Write every attention module's final scales as ``decided``; their values and sources."""
    values, sources = {}, {}
    for name, module in attention.items():
        values[name], sources[name] = finalise_module(module, decided.usable[name])
    return values, sources


def finalise_all(
    attention: dict[str, torch.nn.Module], scales: dict[str, dict[str, ScaleValue]], meaning: ScaleMeaning
) -> tuple[dict[str, dict[str, Value]], dict[str, dict[str, str]]]:
    """Finalise every attention module with the scales loaded into it, then warn.

    Every module is written before the first warning, so that under ``-W error`` (a warning
    raised) no module is left holding the ``-1.0`` sentinel.
    """
    decided = decide(attention, scales, meaning)
    written = write_all(attention, decided)
    for message in decided.warnings:
        warn(message)
    return written


def _layers(names: list[str]) -> str:
    return f"{len(names)} attention layer(s): {', '.join(map(shown, names))}"


def finalise_module(module: torch.nn.Module, loaded: dict[str, ScaleValue]) -> tuple[dict[str, Value], dict[str, str]]:
    """Write the final scales of one attention module; return their values and sources.

    Rules (vLLM's where sound): k and v both loaded are used; one of them serves for both
    (vLLM asserts on v-only, kvcore does not); neither gives 1.0 (``decide`` words the
    warning); q and prob default to 1.0.
    """
    chosen = fill_k_v(loaded)
    values: dict[str, Value] = {}
    sources: dict[str, str] = {}
    for attr, param in module.named_parameters(recurse=False):
        if attr not in SCALE_NAMES:
            continue
        scale = chosen.get(attr)
        tensor = scale.value if scale is not None else torch.ones(1, dtype=torch.float32)
        store_scale(param, _shaped(tensor))
        # A default (or k serving for v) is re-decided if the scale is loaded later.
        setattr(param, DEFAULTED, attr not in loaded)
        values[attr] = _plain(tensor)
        sources[attr] = scale.source if scale is not None else DEFAULT
    return values, sources


def fill_k_v(loaded: dict[str, ScaleValue]) -> dict[str, ScaleValue]:
    """``loaded`` with k serving for a missing v and v for a missing k."""
    chosen = dict(loaded)
    if "k_scale" in chosen and "v_scale" not in chosen:
        chosen["v_scale"] = chosen["k_scale"]
    elif "v_scale" in chosen and "k_scale" not in chosen:
        chosen["k_scale"] = chosen["v_scale"]
    return chosen


def final_values(loaded: dict[str, ScaleValue]) -> tuple[dict[str, Value], dict[str, str]]:
    """Every scale's final value and source, for a module that is not at hand (no warning)."""
    chosen = fill_k_v(loaded)
    values: dict[str, Value] = {}
    sources: dict[str, str] = {}
    for attr in SCALE_NAMES:
        scale = chosen.get(attr)
        values[attr] = _plain(scale.value) if scale is not None else 1.0
        sources[attr] = scale.source if scale is not None else DEFAULT
    return values, sources


def _plain(value: torch.Tensor) -> Value:
    return value.tolist() if value.numel() > 1 else float(value.reshape(-1)[0])


def loaded_scales(module: torch.nn.Module) -> dict[str, ScaleValue]:
    """The scales of ``module`` that a loader has written: not the ``-1.0`` sentinel, not a default."""
    found = {}
    for attr in SCALE_NAMES:
        param = module._parameters.get(attr)
        if param is None or getattr(param, DEFAULTED, False) or bool((param == NOT_LOADED).all()):
            continue
        found[attr] = ScaleValue(param.detach().to(torch.float32).reshape(-1).clone(), attr)
    return found


def _shaped(flat: torch.Tensor) -> torch.Tensor:
    return flat.reshape(()).clone() if flat.numel() == 1 else flat.clone()


def _is_quantized(module: torch.nn.Module) -> bool:
    return str(getattr(module, "kv_cache_dtype", "auto")) != "auto"
