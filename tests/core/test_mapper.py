"""WeightsMapper: vLLM's matching semantics, immutability, and ``|``."""

from __future__ import annotations

import dataclasses
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st
from shared_support import vllm_map_name

import kvcore
from kvcore import MapperConflictError, WeightsMapper

KINDS = ("orig_to_new_regex", "orig_to_new_substr", "orig_to_new_prefix", "orig_to_new_suffix")


def test_regex_substitutes_every_match_with_groups() -> None:
    mapper = WeightsMapper(orig_to_new_regex={r"(\d+)\.x": r"\1.y"})
    assert mapper.map_name("a.1.x.b.2.x") == "a.1.y.b.2.y"


def test_substring_and_prefix_replace_first_occurrence_suffix_the_last() -> None:
    assert WeightsMapper(orig_to_new_substr={"ab": "X"}).map_name("ab.ab") == "X.ab"
    assert WeightsMapper(orig_to_new_prefix={"ab": "X"}).map_name("ab.ab") == "X.ab"
    assert WeightsMapper(orig_to_new_suffix={"ab": "X"}).map_name("ab.ab") == "ab.X"


def test_kinds_apply_in_order_each_to_the_name_rewritten_so_far() -> None:
    mapper = WeightsMapper(
        orig_to_new_suffix={".c": ".d"},
        orig_to_new_prefix={"b.": "c."},
        orig_to_new_substr={"a.": "b."},
        orig_to_new_regex={r"^z\.": "a."},
    )
    # regex z.->a., substr a.->b., prefix b.->c., suffix .c->.d: each sees the previous result.
    assert mapper.map_name("z.c") == "c.d"


def test_rules_of_one_kind_chain_in_insertion_order() -> None:
    mapper = WeightsMapper(orig_to_new_substr={"a": "b", "b": "c"})
    assert mapper.map_name("a") == "c"


def test_none_drops_at_once() -> None:
    mapper = WeightsMapper(orig_to_new_substr={"drop": None}, orig_to_new_suffix={"me": "kept"})
    assert mapper.map_name("drop.me") is None
    assert list(mapper.apply([("drop.me", 1), ("x.me", 2)])) == [("x.kept", 2)]
    assert mapper.apply_list(["drop.me", "a"]) == ["a"]
    assert mapper.apply_dict({"drop.me": 1, "b.me": 2}) == {"b.kept": 2}


names = st.text(alphabet="ab.1\n\\", max_size=8)
targets = st.one_of(st.none(), st.text(alphabet="abc.", max_size=4))
rule_tables = st.dictionaries(st.text(alphabet="ab.1", min_size=1, max_size=3), targets, max_size=3)


regex_tables = st.dictionaries(
    st.sampled_from([r"a", r"\.1", r"^b", r"a$", r"(a)b", r"\.1$", r"[ab]\.a$", r"(?<!b)a\.$", r"b*a$", r"\\$"]),
    st.one_of(st.none(), st.sampled_from(["x", r"\g<0>c", "."])),
    max_size=2,
)


@given(
    regex=regex_tables,
    substr=rule_tables,
    prefix=rule_tables,
    suffix=rule_tables,
    name=names,
)
def test_matches_vllm_semantics(regex, substr, prefix, suffix, name) -> None:  # type: ignore[no-untyped-def]
    mapper = WeightsMapper(orig_to_new_regex=regex, orig_to_new_substr=substr, orig_to_new_prefix=prefix,
                           orig_to_new_suffix=suffix)
    assert mapper.map_name(name) == vllm_map_name(mapper, name)


def test_frozen_and_hashable() -> None:
    mapper = WeightsMapper(orig_to_new_substr={"a": "b"})
    with pytest.raises(dataclasses.FrozenInstanceError):
        mapper.orig_to_new_substr = {}  # type: ignore[misc]
    with pytest.raises(TypeError):
        mapper.orig_to_new_substr["c"] = "d"  # type: ignore[index]
    assert hash(mapper) == hash(WeightsMapper(orig_to_new_substr={"a": "b"}))
    assert {mapper, WeightsMapper(orig_to_new_substr={"a": "b"})} == {mapper}


def test_mapper_does_not_alias_the_callers_dict() -> None:
    rules = {"a": "b"}
    mapper = WeightsMapper(orig_to_new_substr=rules)
    rules["a"] = "z"
    assert mapper.map_name("a") == "b"


def test_regex_rules_are_equal_when_pattern_and_flags_are() -> None:
    by_string = WeightsMapper(orig_to_new_regex={r"x\.y": "z"})
    by_pattern = WeightsMapper(orig_to_new_regex={re.compile(r"x\.y"): "z"})
    assert by_string == by_pattern
    assert by_string | by_pattern == by_string
    assert r"x\.y" in by_string.orig_to_new_regex
    other_flags = WeightsMapper(orig_to_new_regex={re.compile(r"x\.y", re.I): "other"})
    assert len((by_string | other_flags).orig_to_new_regex) == 2


TARGETS = {"orig_to_new_stacked": (".fused", 0)}
"""A target of each field's own kind, where a plain string is not the usual one."""


@pytest.mark.parametrize("field", [f.name for f in dataclasses.fields(WeightsMapper)])
def test_or_keeps_every_field(field: str) -> None:
    # Looping over the dataclass fields: a field added later can never be dropped by ``|``.
    left = WeightsMapper(**{field: {"left": TARGETS.get(field, "L")}})
    right = WeightsMapper(**{field: {"right": TARGETS.get(field, "R")}})
    merged = left | right
    assert dict(getattr(merged, field)) == {**getattr(left, field), **getattr(right, field)}
    for other in dataclasses.fields(WeightsMapper):
        if other.name != field:
            assert len(getattr(merged, other.name)) == 0


def test_or_keeps_all_fields_at_once() -> None:
    left = WeightsMapper(**{f.name: {f"l{i}": f"L{i}"} for i, f in enumerate(dataclasses.fields(WeightsMapper))})
    right = WeightsMapper(**{f.name: {f"r{i}": None} for i, f in enumerate(dataclasses.fields(WeightsMapper))})
    merged = left | right
    for f in dataclasses.fields(WeightsMapper):
        assert len(getattr(merged, f.name)) == 2


@pytest.mark.parametrize("field", KINDS)
def test_or_refuses_one_pattern_with_two_targets(field: str) -> None:
    with pytest.raises(MapperConflictError) as info:
        WeightsMapper(**{field: {"k": "one"}}) | WeightsMapper(**{field: {"k": "two"}})
    message = str(info.value)
    assert "'k'" in message and "'one'" in message and "'two'" in message
    assert info.value.targets == ("one", "two")
    assert isinstance(info.value, kvcore.KvcoreError)


def test_or_accepts_one_pattern_with_the_same_target() -> None:
    merged = WeightsMapper(orig_to_new_suffix={"k": "t"}) | WeightsMapper(orig_to_new_suffix={"k": "t"})
    assert dict(merged.orig_to_new_suffix) == {"k": "t"}


def test_or_with_a_drop_and_a_target_conflicts() -> None:
    with pytest.raises(MapperConflictError):
        WeightsMapper(orig_to_new_prefix={"p": None}) | WeightsMapper(orig_to_new_prefix={"p": "q"})


def _disjoint(tag: str) -> st.SearchStrategy[WeightsMapper]:
    keys = st.text(alphabet="xyz", min_size=1, max_size=3).map(lambda k: f"{tag}{k}")
    table = st.dictionaries(keys, st.one_of(st.none(), st.text(alphabet="abc", max_size=3)), max_size=3)
    return st.builds(WeightsMapper, orig_to_new_substr=table, orig_to_new_prefix=table, orig_to_new_suffix=table)


@given(_disjoint("1"), _disjoint("2"), _disjoint("3"), st.text(alphabet="123xyzabc.", max_size=10))
def test_or_is_associative_on_disjoint_rules(a: WeightsMapper, b: WeightsMapper, c: WeightsMapper, name: str) -> None:
    left, right = (a | b) | c, a | (b | c)
    assert left == right
    assert left.map_name(name) == right.map_name(name)


def test_bad_rules_are_refused() -> None:
    with pytest.raises(TypeError):
        WeightsMapper(orig_to_new_substr={"a": 3})  # type: ignore[dict-item]
    with pytest.raises(TypeError):
        WeightsMapper(orig_to_new_regex={3: "a"})  # type: ignore[dict-item]
