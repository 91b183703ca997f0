"""The bridge's pre-filter never drops a name some rule matches, and drops the plain weight names."""

from __future__ import annotations

import itertools
import re
from types import SimpleNamespace

import pytest
from kvcore_vllm._prefilter import candidates, literal_tail, touchable

# vLLM 0.32's QuantizationConfig.get_cache_scale_mapper rules, and the first-party plugins' kind.
VLLM_LIKE = [
    r"\.kv_scale$",
    r"\.self_attn\.[kv]_proj\.([kv])_scale$",
    r"\.self_attn\.qk(?:qk)?v_proj\.([kv])_scale$",
    r"\.mixer\.[kv]_proj\.([kv])_scale$",
    r"\.self_attn\.q\.scale$",
    r"\.self_attn\.([kv])_cache\.scale$",
    r"(?<!\.attn)\.([qkv])_scale$",
    r"(?<!\.attn)(?<!^attn)\.([kvq])_zero_point$",
    r"\.([kvq])_proj\.output_scale$",
]
# Patterns whose tail cannot be read safely; they are searched instead.
UNREADABLE = [
    r"\.k_scale",  # not anchored
    r"\.k_scale$|\.v_bias$",  # top-level alternation: "$" is only the second branch's
    r"\.k_scale\$",  # an escaped "$" is a literal
    r"k_scale+$",  # a quantifier on the last character
    r"[kv]$",  # a character class
    r"\.k_scal\w$",  # a class escape
    r"(k_scale)$",  # a group right before "$"
    r"(?i)\.k_scale$",  # case-insensitive
    r"(?m)\.k_scale$",  # "$" before every newline
    r"(?x)\.k_scale $",  # verbose: the space is not literal
    r"(?i:\.k)_scale$",  # scoped flags
    r"\.k_scale\Z",
    r"$",
    r"(\.k_scale$",  # unbalanced (not compilable; read off the string alone)
]
NAMES = [
    "model.layers.0.self_attn.k_proj.weight",
    "model.layers.0.self_attn.k_scale",
    "model.layers.0.self_attn.attn.k_scale",
    "model.layers.0.self_attn.k_proj.k_scale",
    "model.layers.0.self_attn.qkv_proj.v_scale",
    "model.layers.0.self_attn.k_proj.output_scale",
    "model.layers.0.self_attn.q.scale",
    "model.layers.0.self_attn.k_cache.scale",
    "model.layers.0.self_attn.k_zero_point",
    "model.layers.0.self_attn.kv_scale",
    "model.layers.0.mixer.k_proj.k_scale",
    "attn.k_scale",
    "attn.k_zero_point",
    "x.k_scale\n",  # "$" matches before a final newline
    "x.K_SCALE",
    "x.k_scale.weight",
    "x.k_scalee",
    "x.v_bias",
    "k_scale",
    "",
]


@pytest.mark.parametrize(
    ("pattern", "tail"),
    [
        (r"\.kv_scale$", ".kv_scale"),
        (r"\.self_attn\.[kv]_proj\.([kv])_scale$", "_scale"),
        (r"\.self_attn\.q\.scale$", ".self_attn.q.scale"),
        (r"(?<!\.attn)(?<!^attn)\.([kvq])_zero_point$", "_zero_point"),
        (r"\.([kvq])_proj\.output_scale$", "_proj.output_scale"),
        (r"(?:ab)?\\x$", "\\x"),
        (r"(?P<kind>[kv])_scale$", "_scale"),
    ],
)
def test_literal_tail(pattern: str, tail: str) -> None:
    assert literal_tail(re.compile(pattern)) == tail


@pytest.mark.parametrize("pattern", UNREADABLE)
def test_no_tail_where_it_cannot_be_read(pattern: str) -> None:
    compiled = re.compile(pattern) if pattern != r"(\.k_scale$" else SimpleNamespace(pattern=pattern, flags=0)
    assert literal_tail(compiled) is None


@pytest.mark.parametrize("flag", [re.IGNORECASE, re.MULTILINE, re.VERBOSE])
def test_no_tail_under_flags_that_change_literals_or_anchors(flag: re.RegexFlag) -> None:
    assert literal_tail(re.compile(r"\.k_scale$", flag)) is None


def mapper(**rules: object) -> SimpleNamespace:
    fields = ("orig_to_new_regex", "orig_to_new_substr", "orig_to_new_prefix", "orig_to_new_suffix",
              "orig_to_new_stacked")
    return SimpleNamespace(**{f: rules.get(f, {}) for f in fields})


def matched_by_some_rule(m: SimpleNamespace, name: str) -> bool:
    return (
        any(p.search(name) for p in m.orig_to_new_regex)
        or any(s in name for s in [*m.orig_to_new_substr, *m.orig_to_new_stacked])
        or any(name.startswith(p) for p in m.orig_to_new_prefix)
        or any(name.endswith(s) for s in m.orig_to_new_suffix)
    )


@pytest.mark.parametrize("patterns", [VLLM_LIKE, UNREADABLE[:-1], [*VLLM_LIKE, *UNREADABLE[:-1]]])
def test_every_name_a_regex_matches_is_a_candidate(patterns: list[str]) -> None:
    flags = {r"(?i)\.k_scale$", r"(?m)\.k_scale$"}
    m = mapper(orig_to_new_regex={re.compile(p): "x" for p in patterns})
    names = [*NAMES, *(a + b for a, b in itertools.product(NAMES[:6], ["\n", "X", ".attn.k_scale"]))]
    kept = set(candidates(names, m))
    for name in names:
        if matched_by_some_rule(m, name):
            assert name in kept, name
    if not flags & set(patterns) and r"\.k_scale" not in patterns:
        assert "model.layers.0.self_attn.k_proj.weight" not in kept  # the point of the filter


def test_substring_prefix_suffix_and_stacked_rules_are_candidates() -> None:
    m = mapper(orig_to_new_substr={".kscale": ".k_scale"}, orig_to_new_prefix={"transformer.": "model."},
               orig_to_new_suffix={".vscale": ".v_scale"}, orig_to_new_stacked={".k_proj": (".qkv_proj", "k")})
    names = ["a.kscale.b", "transformer.h.0.w", "a.b.vscale", "a.k_proj.weight", "model.norm.weight"]
    assert candidates(names, m) == names[:4]
    for name in names:
        assert touchable(m)(name) == matched_by_some_rule(m, name)


def test_renaming_rules_mean_every_name_is_checked() -> None:
    m = SimpleNamespace(orig_to_new_renaming=[object()], orig_to_new_regex={})
    assert touchable(m) is None
    assert candidates(["a.weight", "b.weight"], m) == ["a.weight", "b.weight"]


def test_a_mapper_with_no_rules_touches_nothing_but_newline_endings() -> None:
    assert candidates(["a.weight", "b\n"], mapper()) == ["b\n"]
