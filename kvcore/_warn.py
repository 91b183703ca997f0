"""Warnings that point at the user's line: the first frame outside kvcore."""

from __future__ import annotations

import logging
import sys
import warnings

__all__ = ["first_caller_outside_kvcore", "warn"]

log = logging.getLogger("kvcore")


def warn(message: str, category: type[Warning] = UserWarning) -> None:
    """Log ``message`` and warn with it, attributed to the code that called kvcore."""
    log.warning(message)
    warnings.warn(message, category, stacklevel=first_caller_outside_kvcore())


def first_caller_outside_kvcore() -> int:
    """The ``stacklevel``, for a ``warnings.warn`` in the caller, of the first frame outside kvcore."""
    frame, level = sys._getframe(2), 2
    while frame is not None and frame.f_globals.get("__name__", "").startswith("kvcore."):
        frame, level = frame.f_back, level + 1
    return level
