"""Every real2 fixture into a generic model of its architecture: unfused modules named like the checkpoint,
``kvcore.Attention`` at ``P.attn``. Weights bit-exact; KV scales exact where their meaning fits this
attention, 1.0 with a warning saying why where it does not; caveats warned about, naming every layer."""

from __future__ import annotations

import arch_models as am
import arch_support as su
import pytest

import kvcore


@pytest.mark.parametrize(("case", "use_mla"), su.LOADS)
def test_every_tensor_lands_and_scales_mean_what_the_attention_caches(case: su.Case, use_mla: bool) -> None:
    built = am.build(case.path, use_mla=use_mla)
    report, warned = su.load(built.model, case.path)
    tensors = su.read_all(case.path)
    su.check_weights(built, tensors)
    su.check_kv(case, built, report, tensors, use_mla)
    su.check_warnings(case, built, warned, use_mla)
    assert report.unexpected == [] and report.missing == []
    assert report.calibrated_for == case.calibrated_for
    assert set(built.views) == {name for name in tensors if not su.kv_leaf(name)}


@pytest.mark.parametrize("case", su.CASES, ids=str)
def test_a_strict_load_refuses_a_model_without_an_attention(case: su.Case) -> None:
    # The KV scales have nowhere to go: they are never dropped silently.
    built = am.build(case.path)
    for layer in built.model.model.layers:
        del layer.self_attn.attn
    with pytest.raises(kvcore.KvcoreError, match=r"kvcore\.Attention"):
        kvcore.load(built.model, case.path)
