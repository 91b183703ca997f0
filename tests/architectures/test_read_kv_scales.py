"""``kvcore.read_kv_scales`` (no model) gives what a load gives, for the attention kind it is told
(``use_mla=``); without it, the kind ``config.json`` describes (MLA for DeepSeek-V3)."""

from __future__ import annotations

import arch_models as am
import arch_support as su
import pytest

import kvcore


@pytest.mark.parametrize(("case", "use_mla"), su.LOADS)
@pytest.mark.parametrize("packed", [False, True], ids=["generic", "packed"])
def test_read_kv_scales_equals_the_loads_report(case: su.Case, use_mla: bool, packed: bool) -> None:
    built = am.build(case.path, packed=packed, use_mla=use_mla)
    report, _ = su.load(built.model, case.path)
    assert kvcore.read_kv_scales(case.path, use_mla=use_mla) == su.as_read(report, built)


@pytest.mark.parametrize("case", su.CASES, ids=str)
def test_by_default_the_attention_config_json_describes(case: su.Case) -> None:
    assert kvcore.read_kv_scales(case.path) == kvcore.read_kv_scales(case.path, use_mla=case.mla)
