"""Tensor names written by an attacker: Unicode digits, lone surrogates, escape sequences, newlines.

A name reaches the operator through ``kvcore inspect``, error messages and warnings. None of
these may crash (``int('²')``, a surrogate that cannot be encoded for printing), send an
escape sequence to the terminal, or forge a line of its own inside a message: every name is
shown repr-style escaped (``kvcore._show``).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from validation_support import FP8_CONFIG, checkpoint_tensors, expect_refusal, rewrite_header

import kvcore
from kvcore._cli.main import main
from kvcore._names import natural_key
from kvcore._show import printable, shown
from kvcore.testing import write_checkpoint

EMPTY = {"dtype": "F32", "shape": [0], "data_offsets": [0, 0]}
ESCAPE = "\x1b[2J\x1b]0;pwned\x07"
FORGED = "\nNothing is wrong: the load succeeded"


def _single(tmp_path: Path, model: torch.nn.Module) -> Path:
    return write_checkpoint(tmp_path / "ckpt", checkpoint_tensors(model), quantization_config=FP8_CONFIG)


def _rename(ckpt: Path, old: str, new: str) -> None:
    """Rename a tensor in the header, byte for byte as JSON can spell it (``\\ud800`` included)."""
    raw = (ckpt / "model.safetensors").read_bytes()
    length = int.from_bytes(raw[:8], "little")
    header = raw[8 : 8 + length].replace(json.dumps(old).encode(), json.dumps(new).encode())
    (ckpt / "model.safetensors").write_bytes(len(header).to_bytes(8, "little") + header + raw[8 + length :])


def _inspect(ckpt: Path, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    status = main(["inspect", str(ckpt), *args])
    out, err = capsys.readouterr()
    return status, out, err


def test_natural_key_takes_unicode_digits_as_text() -> None:
    arabic_12 = "\u0661\u0662"  # Arabic-Indic digits: decimal, int() reads them as 12
    names = ["x10", "x1²", "x2", f"x{arabic_12}", "²"]  # '²'.isdigit() is true but int('²') fails
    assert sorted(names, key=natural_key) == ["x1²", "x2", "x10", f"x{arabic_12}", "²"]


def test_inspect_sorts_names_with_unicode_digits(
    tmp_path: Path, model: torch.nn.Module, capsys: pytest.CaptureFixture[str]
) -> None:
    ckpt = _single(tmp_path, model)
    rewrite_header(ckpt / "model.safetensors", lambda h: {**h, "x1²": EMPTY, "²": EMPTY, "x1": EMPTY})
    status, out, err = _inspect(ckpt, capsys)
    assert status == 0 and "Traceback" not in err and "model.layers.1.self_attn.attn" in out
    expect_refusal(model, ckpt, kvcore.WeightLoadError, "x1²", "match no model parameter")


@pytest.mark.parametrize("bad", ["\ud800", ESCAPE, FORGED, "\u202e", "back\\slash"],
                         ids=["surrogate", "escape", "newline", "bidi", "backslash"])
def test_inspect_shows_a_hostile_name_escaped(
    tmp_path: Path, model: torch.nn.Module, capsys: pytest.CaptureFixture[str], bad: str
) -> None:
    ckpt = _single(tmp_path, model)
    name = f"model.layers.0.self_attn.{bad}.k_scale"
    _rename(ckpt, "model.layers.0.self_attn.k_scale", name)
    for args in ((), ("--json",)):
        status, out, err = _inspect(ckpt, capsys, *args)
        assert status in (0, 1) and "Traceback" not in err
        out.encode("utf-8")  # a lone surrogate would not encode
        assert "\x1b" not in out + err and "\u202e" not in out + err and FORGED not in out + err
    status, out, _ = _inspect(ckpt, capsys)
    assert repr(name)[1:-1] in out  # the name is there, escaped


@pytest.mark.parametrize("bad", ["\ud800", ESCAPE, FORGED], ids=["surrogate", "escape", "newline"])
def test_error_messages_show_a_hostile_name_escaped(tmp_path: Path, model: torch.nn.Module, bad: str) -> None:
    ckpt = _single(tmp_path, model)
    rewrite_header(ckpt / "model.safetensors", lambda h: {**h, f"extra{bad}tensor": EMPTY})
    error = expect_refusal(model, ckpt, kvcore.WeightLoadError, repr(f"extra{bad}tensor"))
    message = str(error)
    message.encode("utf-8")
    assert "\x1b" not in message and FORGED not in message
    assert not any(line.startswith("Nothing is wrong") for line in message.splitlines())


def test_a_warning_names_a_hostile_name_escaped(tmp_path: Path, model: torch.nn.Module) -> None:
    ckpt = _single(tmp_path, model)
    rewrite_header(ckpt / "model.safetensors", lambda h: {**h, f"extra{ESCAPE}{FORGED}": EMPTY})
    with pytest.warns(UserWarning) as caught:
        kvcore.load(model, ckpt, strict=False)
    text = "\n".join(str(w.message) for w in caught)
    assert "\x1b" not in text and FORGED not in text and "extra\\x1b[2J" in text


def test_the_cli_log_escapes_control_characters(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status = main(["inspect", str(tmp_path / f"no{ESCAPE}where")])
    _, err = capsys.readouterr()
    assert status == 2 and "\x1b" not in err and "no\\x1b[2J" in err


@pytest.mark.parametrize(
    ("name", "expected"),
    [("model.layers.0.attn", "model.layers.0.attn"), ("a\nb", "'a\\nb'"), ("\ud800", "'\\ud800'"),
     ("a\\nb", "'a\\\\nb'"), ("it's", '"it\'s"'), ("ümlaut", "ümlaut")],
)
def test_shown_is_the_name_itself_or_its_repr(name: str, expected: str) -> None:
    assert shown(name) == expected


def test_printable_keeps_line_breaks_and_escapes_the_rest() -> None:
    assert printable(f"a{ESCAPE}\nb\ud800") == "a\\x1b[2J\\x1b]0;pwned\\x07\nb\\ud800"
