"""Finalising KV-cache scales: defaults for missing ones, float32, per-head where loaded so."""

from __future__ import annotations

import logging
import warnings

import torch

from kvcore._attention import SCALE_NAMES
from kvcore._plan import ScaleValue
from kvcore._scale_param import NOT_LOADED

__all__ = ["DEFAULT", "finalise_module", "loaded_scales"]

log = logging.getLogger("kvcore")
DEFAULT = "default"

Value = float | list[float]


def finalise_module(
    module_name: str,
    module: torch.nn.Module,
    loaded: dict[str, ScaleValue],
) -> tuple[dict[str, Value], dict[str, str]]:
    """Write the final scales of one attention module; return their values and sources.

    Rules (vLLM's where sound): k and v both loaded are used; one of them serves for both
    (vLLM asserts on v-only, kvcore does not); neither gives 1.0, with a warning when the KV
    cache is fp8; q and prob default to 1.0.
    """
    chosen = dict(loaded)
    if "k_scale" in chosen and "v_scale" not in chosen:
        chosen["v_scale"] = chosen["k_scale"]
    elif "v_scale" in chosen and "k_scale" not in chosen:
        chosen["k_scale"] = chosen["v_scale"]
    elif "k_scale" not in chosen and _is_fp8(module):
        message = (
            f"attention layer {module_name!r} has an fp8 KV cache but the checkpoint has no k or v "
            "scale for it; using 1.0, which may lose accuracy. Use a checkpoint calibrated for an "
            "fp8 KV cache"
        )
        log.warning(message)
        warnings.warn(message, UserWarning, stacklevel=4)
    values: dict[str, Value] = {}
    sources: dict[str, str] = {}
    for attr, param in module.named_parameters(recurse=False):
        if attr not in SCALE_NAMES:
            continue
        scale = chosen.get(attr)
        tensor = scale.value if scale is not None else torch.ones(1, dtype=torch.float32)
        param.data = _shaped(tensor).to(param.device)
        values[attr] = tensor.tolist() if tensor.numel() > 1 else float(tensor[0])
        sources[attr] = scale.source if scale is not None else DEFAULT
    return values, sources


def loaded_scales(module: torch.nn.Module) -> dict[str, ScaleValue]:
    """The scales of ``module`` that a loader has written (no longer the ``-1.0`` sentinel)."""
    found = {}
    for attr in SCALE_NAMES:
        param = module._parameters.get(attr)
        if param is not None and not bool((param == NOT_LOADED).all()):
            found[attr] = ScaleValue(param.detach().to(torch.float32).reshape(-1).clone(), attr)
    return found


def _shaped(flat: torch.Tensor) -> torch.Tensor:
    return flat.reshape(()).clone() if flat.numel() == 1 else flat.clone()


def _is_fp8(module: torch.nn.Module) -> bool:
    return str(getattr(module, "kv_cache_dtype", "auto")).startswith("fp8")
