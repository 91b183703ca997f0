"""Which checkpoint tensor names can a mapper's rules touch at all? A cheap, conservative test.

The bridge checks every checkpoint tensor name with vLLM's own rules and with vLLM's rules
followed by the plugins' (two ``WeightsMapper.map_name`` calls: a dozen regex searches each,
~15 µs per name). A name that no rule of the combined mapper matches, taken by itself, is left
unchanged by both mappers: every stage of each sees the name as it came, and no rule fires on
it. So only names some rule *could* match need the two calls, and a test that never answers
"no" for a name a rule matches keeps the check exact.

Most rules are cheap to test: substring, prefix and suffix rules by ``in``, ``str.startswith``
and ``str.endswith``. A regex rule anchored at the end (``...\\.k_scale$``) can only match a name
that ends with its literal tail (``.k_scale``), or, because ``$`` also matches before a final
newline, a name ending in ``"\\n"``; any other regex (no anchor, a top-level ``|``, inline or
case-insensitive, multiline or verbose flags, ...) is searched as it is. This module imports
neither vLLM nor kvcore: it reads the rule fields vLLM's and kvcore's mappers share.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

__all__ = ["candidates", "literal_tail", "touchable"]

# IGNORECASE, MULTILINE, VERBOSE: the same values in ``re`` and in the ``regex`` module vLLM uses.
_UNSAFE_FLAGS = 2 | 8 | 64
_META = frozenset(".^$*+?{}[]()|\\")
# Groups whose syntax starts with "(?" and that leave the pattern's meaning plain: non-capturing,
# lookahead and lookbehind, named groups and references.
_PLAIN_GROUPS = (":", "=", "!", "<=", "<!", "P<", "P=")


def literal_tail(pattern: Any) -> str | None:
    """The literal text every match of ``pattern`` (a compiled ``re``/``regex`` pattern) ends the name with.

    ``None`` when that cannot be read off safely: the pattern is not anchored by a final ``$``,
    has a top-level ``|``, an inline flag or group syntax other than plain groups and lookarounds,
    or case-insensitive, multiline or verbose flags; or the text before ``$`` is not literal.
    A name it can match ends with the tail, or with the tail and ``"\\n"`` (see :func:`touchable`).
    """
    source = getattr(pattern, "pattern", None)
    if not isinstance(source, str) or int(getattr(pattern, "flags", 0)) & _UNSAFE_FLAGS:
        return None
    tokens = _tokens(source)
    if tokens is None or len(tokens) < 2 or tokens[-1] != "$":
        return None
    tail: list[str] = []
    for token in reversed(tokens[:-1]):
        if len(token) == 1 and token not in _META:
            tail.append(token)
        elif len(token) == 2 and token[0] == "\\" and not token[1].isalnum():
            tail.append(token[1])
        else:
            break
    return "".join(reversed(tail)) or None


def _tokens(source: str) -> list[str] | None:
    """``source`` as single characters, escapes (``\\x``) and whole character classes (``[...]``).

    ``None`` for what :func:`literal_tail` does not read: a top-level ``|``, unbalanced
    parentheses or brackets, an inline flag or a group syntax outside :data:`_PLAIN_GROUPS`.
    """
    tokens: list[str] = []
    depth, i, n = 0, 0, len(source)
    while i < n:
        c = source[i]
        if c == "\\":
            if i + 1 >= n:
                return None
            tokens.append(source[i : i + 2])
            i += 2
            continue
        if c == "[":
            j = i + 1
            if j < n and source[j] == "^":
                j += 1
            if j < n and source[j] == "]":
                j += 1
            while j < n and source[j] != "]":
                j += 2 if source[j] == "\\" else 1
            if j >= n:
                return None
            tokens.append(source[i : j + 1])
            i = j + 1
            continue
        if c == "(":
            if source.startswith("(?", i) and not source.startswith(_PLAIN_GROUPS, i + 2):
                return None
            depth += 1
        elif c == ")":
            depth -= 1
            if depth < 0:
                return None
        elif c == "|" and depth == 0:
            return None
        tokens.append(c)
        i += 1
    return tokens if depth == 0 else None


def touchable(mapper: Any) -> Callable[[str], bool] | None:
    """A test ``name -> bool`` that is true for every name some rule of ``mapper`` matches by itself.

    ``mapper`` is a vLLM or kvcore ``WeightsMapper``: regex, substring, prefix, suffix and
    stacked (substring) rules. ``None`` when no cheap test is possible (vLLM's
    ``orig_to_new_renaming`` rules, transformers' own renamings): every name must be checked.
    """
    if getattr(mapper, "orig_to_new_renaming", None):
        return None
    ends: list[str] = ["\n"]  # "$" also matches before a final newline
    searched: list[Any] = []
    for pattern in getattr(mapper, "orig_to_new_regex", {}):
        tail = literal_tail(pattern)
        if tail is None:
            searched.append(pattern)
        else:
            ends.append(tail)
    ends += getattr(mapper, "orig_to_new_suffix", {})
    substrings = [*getattr(mapper, "orig_to_new_substr", {}), *getattr(mapper, "orig_to_new_stacked", {})]
    starts = tuple(getattr(mapper, "orig_to_new_prefix", {}))
    suffixes = tuple(ends)
    has_starts, has_substrings, has_searched = bool(starts), bool(substrings), bool(searched)

    def test(name: str) -> bool:
        # Most names end in ".weight": one C-level endswith, then empty containers short-circuit.
        return (
            name.endswith(suffixes)
            or (has_starts and name.startswith(starts))
            or (has_substrings and any(s in name for s in substrings))
            or (has_searched and any(p.search(name) for p in searched))
        )

    return test


def candidates(names: Iterable[str], mapper: Any) -> list[str]:
    """The names of ``names`` that some rule of ``mapper`` can touch (all of them if that is not known)."""
    test = touchable(mapper)
    return list(names) if test is None else list(filter(test, names))
