"""``WeightsMapper``: frozen, hashable name-rewriting rules with vLLM's semantics."""

from __future__ import annotations

import dataclasses
import functools
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, TypeVar

from kvcore._errors import MapperConflictError
from kvcore._meaning import ScaleMeaning

__all__ = ["ShardId", "WeightsMapper"]

V = TypeVar("V")
Target = str | None
Pattern = re.Pattern[str]
ShardId = int | str
Packed = tuple[str, ShardId]


def _identity(key: Any) -> Any:
    return key


def _compile(key: str | Pattern) -> Pattern:
    if isinstance(key, re.Pattern):
        return key
    if isinstance(key, str):
        return re.compile(key)
    raise TypeError(f"regex rule keys must be str or re.Pattern, not {type(key).__name__}")


class _Rules(Mapping[Any, Target]):
    """An immutable, hashable, insertion-ordered rule table.

    ``normalize`` turns a user-given key into the stored key, so that a regex table can be
    queried with the pattern string as well as with the compiled pattern.
    """

    __slots__ = ("_items", "_normalize")

    def __init__(
        self,
        rules: Mapping[Any, Any] | None,
        normalize: Callable[[Any], Any],
        check: Callable[[Any, Any], Any],
    ) -> None:
        items: dict[Any, Target] = {}
        for key, target in (rules or {}).items():
            items[normalize(key)] = check(key, target)
        self._items = items
        self._normalize = normalize

    def __getitem__(self, key: Any) -> Target:
        return self._items[self._normalize(key)]

    def __contains__(self, key: object) -> bool:
        try:
            return self._normalize(key) in self._items
        except TypeError:
            return False

    def __iter__(self) -> Iterator[Any]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __hash__(self) -> int:
        return hash(tuple(self._items.items()))

    def __eq__(self, other: object) -> bool:
        if isinstance(other, _Rules):
            return self._items == other._items
        if isinstance(other, Mapping):
            return self._items == {self._normalize(k): v for k, v in other.items()}
        return NotImplemented

    def __repr__(self) -> str:
        shown = {getattr(k, "pattern", k): v for k, v in self._items.items()}
        return repr(shown)


def _check_target(key: Any, target: Any) -> Target:
    if target is not None and not isinstance(target, str):
        raise TypeError(f"rule target for {key!r} must be str or None, not {target!r}")
    return target


def _check_packed(key: Any, target: Any) -> Packed | Target:
    """A stacked rule's target: ``(fused name, shard id)`` (a list is stored as a tuple).

    Like every rule kind, ``None`` drops the weight; a plain string renames at the packing
    step without a shard id.
    """
    if not isinstance(key, str):
        raise TypeError(f"stacked rule keys must be str, not {type(key).__name__}")
    if target is None or isinstance(target, str):
        return target
    if (
        not isinstance(target, tuple | list)
        or len(target) != 2
        or not isinstance(target[0], str)
        or not isinstance(target[1], int | str)
        or isinstance(target[1], bool)
    ):
        raise TypeError(
            f"stacked rule target for {key!r} must be a (fused name, shard id) pair such as "
            f"('.qkv_proj', 'k'), not {target!r}"
        )
    return (target[0], target[1])


_NORMALIZERS: dict[str, Callable[[Any], Any]] = {"orig_to_new_regex": _compile}
_CHECKS: dict[str, Callable[[Any, Any], Any]] = {"orig_to_new_stacked": _check_packed}


def _kind(field_name: str) -> str:
    return field_name.removeprefix("orig_to_new_")


# A pattern that refers to its own groups (\1, (?P=name)) or names them cannot be joined with
# others into one alternation without changing what it matches.
_GROUP_REFERENCE = re.compile(r"\\[1-9]|\(\?P[=<]|\\g<|\(\?\(")


def _any_of(patterns: tuple[Pattern, ...]) -> Pattern | None:
    """One pattern matching wherever any of ``patterns`` matches, or ``None`` if unsafe to build.

    ``a|b`` tried at each position matches iff ``a`` or ``b`` matches there, so the joined
    search finds a match exactly when some pattern's own search would.
    """
    if len(patterns) < 2 or len({p.flags for p in patterns}) != 1:
        return None
    if any(_GROUP_REFERENCE.search(p.pattern) for p in patterns):
        return None
    try:
        return re.compile("|".join(f"(?:{p.pattern})" for p in patterns), patterns[0].flags)
    except (re.error, TypeError):
        return None


_SPECIAL = frozenset(".^$*+?{}[]|()\\")


def _literal_tail(pattern: Pattern) -> str:
    """The literal text every match of an end-anchored ``pattern`` ends with ('' if unknown).

    Read backwards from a final unescaped ``$``: plain characters and escaped punctuation
    (``\\.``) are literal; a special character (a class, a quantifier, a group) ends the tail.
    An escaped letter or digit makes the tail unknown (''): read backwards, the characters
    of a numeric escape (``\\x2e``, ``\\056``, ``\\u002e``) look like plain ones, so a tail
    read across one would be wrong and the rule would silently never apply. Patterns with
    ``|`` or flags that change ``$`` or case give ''.
    """
    text = pattern.pattern
    if not isinstance(text, str) or "|" in text or pattern.flags & (re.IGNORECASE | re.MULTILINE | re.VERBOSE):
        return ""
    if not text.endswith("$") or _escaped(text, len(text) - 1):
        return ""
    tail, i = [], len(text) - 2
    while i >= 0:
        char, escaped = text[i], _escaped(text, i)
        if escaped and (char.isalnum() or char == "_"):
            return ""  # \d, \1, \x2e, \056, \u002e ...: what precedes it may be part of the escape
        if not escaped and char in _SPECIAL:
            break
        tail.append(char)
        i -= 2 if escaped else 1
    return "".join(reversed(tail))


def _escaped(text: str, index: int) -> bool:
    """Whether ``text[index]`` follows an odd run of backslashes."""
    count = 0
    while index - count - 1 >= 0 and text[index - count - 1] == "\\":
        count += 1
    return count % 2 == 1


def _tails_of(patterns: tuple[Pattern, ...]) -> tuple[str, ...] | None:
    """Literal endings one of which every name a pattern matches must have, or ``None``.

    ``$`` also matches before a final newline, so each tail comes with and without one.
    """
    tails = [_literal_tail(p) for p in patterns]
    if not patterns or not all(tails):
        return None
    return tuple(tails) + tuple(t + "\n" for t in tails)


@dataclasses.dataclass(frozen=True)
class _QuickRules:
    """A mapper's rules as tuples, with the one-call pre-checks ``_quick_map_unpacked`` starts with."""

    regex: tuple[tuple[Pattern, Target], ...]
    regex_any: Pattern | None
    regex_tails: tuple[str, ...] | None
    substr: tuple[tuple[str, Target], ...]
    prefix: tuple[tuple[str, Target], ...]
    prefixes: tuple[str, ...]
    suffix: tuple[tuple[str, Target], ...]
    suffixes: tuple[str, ...]
    stacked: tuple[tuple[str, Packed | Target], ...]

    @classmethod
    def of(cls, mapper: WeightsMapper) -> _QuickRules:
        # Compiled already (the field normalizes its keys): re.compile returns each as it is.
        regex = tuple((re.compile(pattern), target) for pattern, target in mapper.orig_to_new_regex.items())
        prefix = tuple(mapper.orig_to_new_prefix.items())
        suffix = tuple(mapper.orig_to_new_suffix.items())
        return cls(
            regex,
            _any_of(tuple(p for p, _ in regex)),
            _tails_of(tuple(p for p, _ in regex)),
            tuple(mapper.orig_to_new_substr.items()),
            prefix,
            tuple(p for p, _ in prefix),
            suffix,
            tuple(s for s, _ in suffix),
            tuple(mapper.orig_to_new_stacked.items()),
        )


@dataclasses.dataclass(frozen=True)
class WeightsMapper:
    """Rewrite checkpoint tensor names into model parameter names.

    Each field maps a key to a target (``None`` drops the weight). Rules apply in vLLM's
    order: every matching regex rule (``pattern.sub``, all matches, ``\\1`` groups allowed),
    then substring rules (first occurrence), then prefix rules, then suffix rules (last
    occurrence), each to the name as rewritten so far. Last, packing: the first
    ``orig_to_new_stacked`` key found in the name (``".k_proj": (".qkv_proj", "k")``) is
    replaced once, and the tensor loads as that shard of the fused parameter (see
    :meth:`map_packed`). ``a | b`` holds every rule of both and raises
    :class:`MapperConflictError` when they map one key to different targets.
    """

    orig_to_new_regex: Mapping[str | Pattern, Target] = dataclasses.field(default_factory=dict)
    orig_to_new_substr: Mapping[str, Target] = dataclasses.field(default_factory=dict)
    orig_to_new_prefix: Mapping[str, Target] = dataclasses.field(default_factory=dict)
    orig_to_new_suffix: Mapping[str, Target] = dataclasses.field(default_factory=dict)
    orig_to_new_stacked: Mapping[str, Packed | Target] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            check = _CHECKS.get(f.name, _check_target)
            rules = _Rules(getattr(self, f.name), _NORMALIZERS.get(f.name, _identity), check)
            object.__setattr__(self, f.name, rules)

    @functools.cached_property
    def _quick(self) -> _QuickRules:
        """The rules as plain tuples, and per kind one test that rejects names no rule of it touches.

        map_name runs once per checkpoint tensor (10^5 on big MoE checkpoints). Built on first
        use and kept in the instance's ``__dict__`` (a cached_property writes there, frozen or not).
        """
        return _QuickRules.of(self)

    @property
    def scale_meaning(self) -> ScaleMeaning | None:
        """What the KV-cache scales this mapper renames measure, when it came from ``kvcore.mapper_for``.

        Not a rule: it plays no part in equality, and ``|`` keeps the left side's (or else the
        right side's). ``AutoWeightsLoader`` reads it to finalise MLA attentions correctly.
        """
        return getattr(self, "_scale_meaning", None)  # set by with_scale_meaning, not a field

    def with_scale_meaning(self, meaning: ScaleMeaning | None) -> WeightsMapper:
        """This mapper, carrying ``meaning`` (see :attr:`scale_meaning`)."""
        copy = WeightsMapper(**{f.name: getattr(self, f.name) for f in dataclasses.fields(self)})
        object.__setattr__(copy, "_scale_meaning", meaning)
        return copy

    def __or__(self, other: object) -> WeightsMapper:
        if not isinstance(other, WeightsMapper):
            return NotImplemented
        merged: dict[str, dict[Any, Any]] = {}
        for f in dataclasses.fields(self):
            ours: Mapping[Any, Any] = getattr(self, f.name)
            theirs: Mapping[Any, Any] = getattr(other, f.name)
            for key, target in theirs.items():
                if key in ours and ours[key] != target:
                    shown = getattr(key, "pattern", key)
                    raise MapperConflictError(
                        f"{_kind(f.name)} rule {shown!r} maps to {ours[key]!r} on one side and "
                        f"to {target!r} on the other; make the two mappers agree or drop one rule",
                        kind=_kind(f.name),
                        pattern=shown,
                        targets=(ours[key], target),
                    )
            merged[f.name] = {**ours, **theirs}
        meaning = self.scale_meaning or other.scale_meaning
        combined = WeightsMapper(**merged)
        return combined if meaning is None else combined.with_scale_meaning(meaning)

    def map_name(self, name: str) -> str | None:
        """Return ``name`` rewritten by every matching rule (packing included), or ``None`` if dropped."""
        return self.map_packed(name)[0]

    def map_packed(self, name: str) -> tuple[str | None, ShardId | None]:
        """``(map_name(name), shard id)``: the shard id is ``None`` unless a stacked rule packed it."""
        key = self._map_unpacked(name)
        if key is not None:
            for substr, target in self._quick.stacked:
                if substr in key:
                    if target is None:
                        return None, None
                    if isinstance(target, str):
                        return key.replace(substr, target, 1), None
                    return key.replace(substr, target[0], 1), target[1]
        return key, None

    def _quick_map_unpacked(self, name: str) -> str | None:
        """vLLM's loop over every rule of each kind in turn, skipping with one test each kind no rule of
        which applies (tests/shared_support.py ``vllm_map_name`` is the loop, and the tests' reference)."""
        fast = self._quick
        key = name
        if (
            fast.regex
            and (fast.regex_tails is None or key.endswith(fast.regex_tails))
            and (fast.regex_any is None or fast.regex_any.search(key))
        ):
            for pattern, target in fast.regex:
                if pattern.search(key):
                    if target is None:
                        return None
                    key = pattern.sub(target, key)
        for substr, target in fast.substr:
            if substr in key:
                if target is None:
                    return None
                key = key.replace(substr, target, 1)
        if fast.prefix and key.startswith(fast.prefixes):
            for prefix, target in fast.prefix:
                if key.startswith(prefix):
                    if target is None:
                        return None
                    key = key.replace(prefix, target, 1)
        if fast.suffix and key.endswith(fast.suffixes):
            for suffix, target in fast.suffix:
                if key.endswith(suffix):
                    if target is None:
                        return None
                    key = target.join(key.rsplit(suffix, 1))
        return key

    _map_unpacked = _quick_map_unpacked
    """``name`` rewritten by every rule but the stacked ones (the name before packing).

    What ``map_packed`` and the loader call, and what a subclass overrides.
    """

    def apply(self, weights: Iterable[tuple[str, V]]) -> Iterator[tuple[str, V]]:
        """Yield ``(mapped_name, value)`` for every weight not dropped by a rule."""
        for name, value in weights:
            new_name = self.map_name(name)
            if new_name is not None:
                yield new_name, value

    def apply_list(self, names: Iterable[str]) -> list[str]:
        """Map a list of names, leaving dropped ones out."""
        return [new for new in map(self.map_name, names) if new is not None]

    def apply_dict(self, values: Mapping[str, V]) -> dict[str, V]:
        """Map the keys of a dict, leaving dropped ones out."""
        return dict(self.apply(values.items()))
