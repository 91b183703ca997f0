"""How a name from a checkpoint reaches a person: the one rule for terminals, logs and messages.

Tensor names come from the checkpoint's header, which anyone can write: they may hold
escape sequences (``\\x1b[2J`` clears the operator's terminal), newlines (which forge extra
lines in a log or an error message), other control or invisible characters, and lone
surrogates (JSON's ``\\ud800``, which cannot even be encoded for printing). Every name kvcore
puts into text goes through :func:`shown` or :func:`quoted`, both repr-style escapes:

- :func:`quoted` is ``repr``: always quoted, every such character escaped. Messages name
  tensors, parameters and shard files this way (``f"{name!r}"`` is the same thing).
- :func:`shown` is for tables and lists, where quotes would be noise: a name made only of
  printable characters, without a backslash or a quote, is shown as it is; any other is
  shown quoted, so that an escaped name can never be mistaken for a plain one.

:func:`printable` is the command line's last line of defence for whole texts (table cells,
anomaly messages, log records, a plugin's error): line breaks stay, every other character
that is not printable is escaped as ``repr`` would.
"""

from __future__ import annotations

__all__ = ["printable", "quoted", "shown"]


def quoted(name: object) -> str:
    """``repr(name)`` for a string: quoted, with control characters, newlines and surrogates escaped."""
    return repr(str(name))


def shown(name: object) -> str:
    """``name`` as is when it is plain printable text, else :func:`quoted`."""
    text = str(name)
    if text.isprintable() and not any(char in text for char in "\\'\""):
        return text
    return quoted(text)


def printable(text: str) -> str:
    """``text`` with every non-printable character but the newline escaped (``\\x1b``, ``\\ud800``)."""
    if text.isprintable():
        return text
    return "\n".join(line if line.isprintable() else "".join(map(_char, line)) for line in text.split("\n"))


def _char(char: str) -> str:
    return char if char.isprintable() else repr(char)[1:-1]
