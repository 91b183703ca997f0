"""Pausing Python's cyclic garbage collector while a load builds its plan.

A load allocates one small object per checkpoint tensor (parsed JSON, ``TensorInfo``,
``Copy``); on a 10^5-tensor checkpoint those allocations trigger many full collections,
each walking every object of the process, the model's modules included. Measured on a
37k-tensor checkpoint, collections took longer than copying the weights. Nothing a load
allocates is cyclic garbage, so collection can wait until the load returns.
"""

from __future__ import annotations

import functools
import gc
from collections.abc import Callable
from typing import ParamSpec, TypeVar

__all__ = ["paused_gc"]

P = ParamSpec("P")
R = TypeVar("R")


def paused_gc(function: Callable[P, R]) -> Callable[P, R]:
    """Run ``function`` with the cyclic collector off, restoring its previous state after."""

    @functools.wraps(function)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        was_enabled = gc.isenabled()
        gc.disable()
        try:
            return function(*args, **kwargs)
        finally:
            if was_enabled:
                gc.enable()

    return wrapper
