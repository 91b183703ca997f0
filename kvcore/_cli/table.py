"""Plain-text tables and colour for the command line.

Colour is applied after padding, so escape codes never upset the alignment; it is on only
when the stream is a terminal and ``NO_COLOR`` is unset (https://no-color.org).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TextIO

from kvcore._show import printable

__all__ = ["Style", "render_table", "spans"]

_CODES = {"red": "31", "yellow": "33", "green": "32", "cyan": "36", "dim": "2", "bold": "1"}


class Style:
    """Wraps text in ANSI colour codes, or returns it unchanged when colour is off."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled

    @classmethod
    def for_stream(cls, stream: TextIO) -> Style:
        """Colour on for a terminal, unless ``NO_COLOR`` is set (to anything) or TERM is dumb."""
        isatty = getattr(stream, "isatty", None)
        on = bool(isatty and isatty()) and "NO_COLOR" not in os.environ and os.environ.get("TERM") != "dumb"
        return cls(on)

    def __call__(self, text: str, colour: str | None) -> str:
        if not self.enabled or colour is None or not text:
            return text
        return f"\x1b[{_CODES[colour]}m{text}\x1b[0m"


def render_table(
    headers: Sequence[str],
    rows: Sequence[Sequence[str]],
    style: Style | None = None,
    colours: Sequence[Sequence[str | None]] | None = None,
) -> str:
    """Left-aligned columns two spaces apart; ``colours[i][j]`` colours cell ``rows[i][j]``."""
    style = style or Style(False)
    # No cell may carry a control character to the terminal (kvcore._show).
    rows = [[printable(cell) for cell in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in rows:
        widths = [max(w, len(cell)) for w, cell in zip(widths, row, strict=True)]
    widths[-1] = 0  # the last column is not padded: no trailing blanks
    lines = [_line(headers, widths, ["bold"] * len(headers), style)]
    for i, row in enumerate(rows):
        lines.append(_line(row, widths, colours[i] if colours else [None] * len(row), style))
    return "\n".join(lines)


def _line(cells: Sequence[str], widths: list[int], colours: Sequence[str | None], style: Style) -> str:
    return "  ".join(style(c.ljust(w), col) for c, w, col in zip(cells, widths, colours, strict=True))


def spans(numbers: Sequence[int]) -> str:
    """``[0, 1, 2, 5, 7, 8]`` -> ``0-2, 5, 7-8``."""
    runs: list[list[int]] = []
    for n in numbers:
        if runs and n == runs[-1][1] + 1:
            runs[-1][1] = n
        else:
            runs.append([n, n])
    return ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in runs)
