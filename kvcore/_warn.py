"""Warnings that point at the user's line (the first frame outside kvcore), said once.

``warnings`` is the one channel: a warning is logged at DEBUG only, so an application that
configures logging does not see it twice. A command line that shows diagnostics through
its log handler instead (``kvcore``'s own) turns kvcore's warnings into WARNING records
with :func:`logged_instead`.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import warnings
from collections.abc import Iterator
from contextvars import ContextVar
from types import FrameType

__all__ = ["first_caller_outside_kvcore", "logged_instead", "warn"]

log = logging.getLogger("kvcore")
_TO_LOG: ContextVar[bool] = ContextVar("kvcore_warnings_logged_instead", default=False)


def warn(message: str, category: type[Warning] = UserWarning) -> None:
    """Warn with ``message``, attributed to the code that called kvcore (a WARNING record instead
    inside :func:`logged_instead`)."""
    if _TO_LOG.get():
        log.warning("%s", message)
        return
    log.debug("%s", message)
    warnings.warn(message, category, stacklevel=first_caller_outside_kvcore())


@contextlib.contextmanager
def logged_instead() -> Iterator[None]:
    """Within the block, kvcore's warnings are WARNING records of the ``kvcore`` logger, not warnings."""
    token = _TO_LOG.set(True)
    try:
        yield
    finally:
        _TO_LOG.reset(token)


def first_caller_outside_kvcore() -> int:
    """The ``stacklevel``, for a ``warnings.warn`` in the caller, of the first frame outside kvcore."""
    frame: FrameType | None = sys._getframe(2)
    level = 2
    while frame is not None and _in_kvcore(frame.f_globals.get("__name__", "")):
        frame, level = frame.f_back, level + 1
    return level


def _in_kvcore(module: str) -> bool:
    return module == "kvcore" or module.startswith("kvcore.")
