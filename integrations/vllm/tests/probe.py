"""Functions vLLM runs on a loaded model, in the driver or (pickled by name) in a spawned worker."""

from __future__ import annotations

import os
from typing import Any

import torch


def final_scales(model: torch.nn.Module) -> dict[str, list[float]]:
    """Each attention's ``[k, v]`` scales as its kernel uses them, after vLLM processed the weights."""
    return {
        name: [m._k_scale_float, m._v_scale_float] for name, m in model.named_modules() if hasattr(m, "_k_scale_float")
    }


def loaded_scales(model: torch.nn.Module) -> dict[str, list[float]]:
    """Each attention's ``[k, v]`` scale parameters as the weight loader left them (-1.0: not loaded)."""
    return {
        name: [float(m.k_scale.float().reshape(-1)[0]), float(m.v_scale.float().reshape(-1)[0])]
        for name, m in model.named_modules()
        if isinstance(getattr(m, "k_scale", None), torch.nn.Parameter)
    }


def in_worker(model: torch.nn.Module) -> dict[str, Any]:
    """``final_scales`` and the process that holds the model."""
    return {"pid": os.getpid(), "scales": final_scales(model)}
