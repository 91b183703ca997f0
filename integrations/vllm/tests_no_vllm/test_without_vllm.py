"""kvcore-vllm where vLLM is missing, too old or switched off: nothing happens, and one log line says why.

Runs in ``make test`` (no vLLM installed); ``sys.modules`` stands in for the vLLM each case needs,
so the tests mean the same where vLLM is installed.
"""

from __future__ import annotations

import logging
import sys
import types

import kvcore_vllm
import pytest


@pytest.fixture(autouse=True)
def fresh(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(kvcore_vllm, "_registered", False)
    monkeypatch.delenv("KVCORE_VLLM", raising=False)
    caplog.set_level(logging.DEBUG, logger="vllm")


def vllm(monkeypatch: pytest.MonkeyPatch, version: str | None) -> None:
    """No vLLM (``None``: ``import vllm`` fails), or a bare one of that version."""
    monkeypatch.setitem(sys.modules, "vllm", None if version is None else types.SimpleNamespace(__version__=version))


def records(caplog: pytest.LogCaptureFixture) -> list[tuple[int, str]]:
    return [(r.levelno, r.getMessage()) for r in caplog.records if r.name.startswith("vllm")]


def test_without_vllm_register_does_nothing_and_says_so_once(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    vllm(monkeypatch, None)
    kvcore_vllm.register()
    kvcore_vllm.register()  # vLLM calls it in every process, maybe more than once
    assert records(caplog) == [(logging.INFO, "vLLM is not installed: kvcore-vllm does nothing")]
    assert not [name for name in sys.modules if name.startswith("vllm.") or name == "kvcore_vllm._bridge"]


def test_an_old_vllm_is_left_alone_with_a_warning(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    vllm(monkeypatch, "0.31.2")
    kvcore_vllm.register()
    assert kvcore_vllm.register_kv_only_method("acme-kv") is False
    (first, second) = records(caplog)
    assert first[0] == logging.WARNING and first[1].startswith("vLLM 0.31.2 is older than 0.32")
    assert second[1].endswith("quantization method 'acme-kv' is not registered")
    assert not [name for name in sys.modules if name.startswith("vllm.")]


@pytest.mark.parametrize("value", ["0", "off", "False"])
def test_the_switch_wins_even_over_a_supported_vllm(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, value: str
) -> None:
    vllm(monkeypatch, "0.32.0")
    monkeypatch.setenv("KVCORE_VLLM", value)
    kvcore_vllm.register()
    assert records(caplog) == [
        (logging.INFO, f"KVCORE_VLLM={value}: kvcore-vllm is switched off, vLLM's own rules map KV-cache scales")
    ]


def test_register_kv_only_method_without_vllm(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    vllm(monkeypatch, None)
    assert kvcore_vllm.register_kv_only_method("acme-kv") is False
    why = "vLLM is not installed: kvcore-vllm does nothing"
    assert records(caplog) == [(logging.INFO, f"{why}; quantization method 'acme-kv' is not registered")]
