"""Finalising KV-cache scales: defaults for missing ones, float32, per-head where loaded so."""

from __future__ import annotations

import logging

import torch

from kvcore._loading.interpret import interpret
from kvcore._meaning import ScaleMeaning
from kvcore._names import SCALE_NAMES, ScaleValue
from kvcore._scale_param import DEFAULTED, NOT_LOADED, store_scale
from kvcore._show import shown
from kvcore._warn import warn

__all__ = ["DEFAULT", "fill_k_v", "final_values", "finalise_all", "finalise_module", "loaded_scales"]

log = logging.getLogger("kvcore")
DEFAULT = "default"

Value = float | list[float]


def finalise_all(
    attention: dict[str, torch.nn.Module], scales: dict[str, dict[str, ScaleValue]], meaning: ScaleMeaning
) -> tuple[dict[str, dict[str, Value]], dict[str, dict[str, str]]]:
    """Finalise every attention module with the scales planned for it, read as ``meaning`` says.

    Warns once per reason, naming the layers: scales set aside because they describe another
    cache (MLA), and the plugin's caveat for the layers whose scales it concerns.
    """
    values, sources = {}, {}
    set_aside: dict[str, list[str]] = {}
    for name, module in attention.items():
        usable, why = interpret(scales.get(name, {}), bool(getattr(module, "use_mla", False)), meaning)
        if why is not None:
            set_aside.setdefault(why, []).append(name)
        values[name], sources[name] = finalise_module(name, module, usable, quiet=why is not None)
    for why, names in set_aside.items():
        warn(f"k and v scales of 1.0 for {_layers(names)}: {why}. Use a checkpoint calibrated for this cache")
    concerned = [name for name in attention if "k_scale" in scales.get(name, {})]
    if meaning.caveat and concerned:
        warn(f"{meaning.caveat} ({_layers(concerned)})")
    return values, sources


def _layers(names: list[str]) -> str:
    return f"{len(names)} attention layer(s): {', '.join(map(shown, names))}"


def finalise_module(
    module_name: str,
    module: torch.nn.Module,
    loaded: dict[str, ScaleValue],
    *,
    quiet: bool = False,
) -> tuple[dict[str, Value], dict[str, str]]:
    """Write the final scales of one attention module; return their values and sources.

    Rules (vLLM's where sound): k and v both loaded are used; one of them serves for both
    (vLLM asserts on v-only, kvcore does not); neither gives 1.0, with a warning when the KV
    cache is quantized (``quiet``: the caller explains it); q and prob default to 1.0.
    """
    chosen = fill_k_v(loaded)
    if "k_scale" not in chosen and _is_quantized(module) and not quiet:
        message = (
            f"attention layer {module_name!r} has an fp8 KV cache but the checkpoint has no k or v "
            "scale for it; using 1.0, which may lose accuracy. Use a checkpoint calibrated for an "
            "fp8 KV cache"
        )
        warn(message)
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
