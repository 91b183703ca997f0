"""``(did you mean 'x'?)`` for a name no model tensor has, with bounded work per name.

A checkpoint for the wrong model can have 10^5 offenders and the model 10^5 tensors:
comparing each offender with every candidate (``difflib`` over the whole list) took tens of
seconds. A misspelt name nearly always shares a long prefix or a long suffix with the name
meant, so :class:`Suggester` sorts the candidates once, forwards and reversed, and compares a
name only with the ``NEIGHBOURS`` candidates on either side of where it would sort in each
order: ``O(log n)`` to find them, at most ``4 * NEIGHBOURS`` comparisons, whatever ``n``.
"""

from __future__ import annotations

import bisect
import difflib
from collections.abc import Iterable

__all__ = ["NEIGHBOURS", "Suggester"]

NEIGHBOURS = 32
"""Candidates compared on each side of a name's place, in prefix order and in suffix order."""


class Suggester:
    """Close matches among ``candidates`` (sorted once, lazily: most loads never ask)."""

    def __init__(self, candidates: Iterable[str]) -> None:
        self._candidates = candidates
        self._forward: list[str] | None = None
        self._backward: list[str] = []

    def nearest(self, name: str) -> str | None:
        """The closest candidate (``difflib`` ratio at least 0.8) among ``name``'s neighbours, or ``None``."""
        if self._forward is None:
            self._forward = sorted(set(self._candidates))
            self._backward = sorted(c[::-1] for c in self._forward)
        near = _around(self._forward, name) + [c[::-1] for c in _around(self._backward, name[::-1])]
        close = difflib.get_close_matches(name, list(dict.fromkeys(near)), n=1, cutoff=0.8)
        return close[0] if close else None

    def __call__(self, name: str) -> str:
        """`` (did you mean 'x'?)``, or an empty string."""
        found = self.nearest(name)
        return f" (did you mean {found!r}?)" if found is not None else ""


def _around(ordered: list[str], name: str) -> list[str]:
    at = bisect.bisect_left(ordered, name)
    return ordered[max(0, at - NEIGHBOURS) : at + NEIGHBOURS]
