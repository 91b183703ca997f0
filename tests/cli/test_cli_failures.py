"""The command line's failures are one line on stderr and exit status 2, never a traceback."""

from __future__ import annotations

import errno
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from kvcore._cli.main import main


def test_demo_dir_naming_an_existing_file(run, tmp_path: Path) -> None:
    target = tmp_path / "a-file"
    target.write_text("not a directory")
    result = run("demo", "--dir", target)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert str(target) in result.stderr and "name a directory" in result.stderr
    assert target.read_text() == "not a directory"


def test_inspect_of_an_unreadable_checkpoint_exits_2(
    checkpoint: Callable[..., Path], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Permission denied inside the directory (simulated: the tests may run as root, who may read anything)."""
    ckpt = checkpoint({"model.layers.0.self_attn.k_scale": torch.tensor(0.5)})
    inside, real_stat, real_open = str(ckpt) + os.sep, os.stat, os.open

    def deny(real: Callable[..., Any]) -> Callable[..., Any]:
        def call(path: Any, *args: Any, **kwargs: Any) -> Any:
            if isinstance(path, str | os.PathLike) and os.fspath(path).startswith(inside):
                raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), os.fspath(path))
            return real(path, *args, **kwargs)
        return call

    monkeypatch.setattr(os, "stat", deny(real_stat))
    monkeypatch.setattr(os, "open", deny(real_open))
    status = main(["inspect", str(ckpt)])
    out, err = capsys.readouterr()
    assert status == 2 and out == ""
    assert "Traceback" not in err and "Permission denied" in err and "fix its permissions" in err


def _zero_element_2_63(ckpt: Path) -> str:
    raw = (ckpt / "model.safetensors").read_bytes()
    length = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + length])
    header["model.layers.0.self_attn.k_scale"] = {"dtype": "F32", "shape": [0, 2**63], "data_offsets": [0, 0]}
    body = json.dumps(header).encode()
    (ckpt / "model.safetensors").write_bytes(len(body).to_bytes(8, "little") + body + raw[8 + length :])
    return "'model.layers.0.self_attn.k_scale'"


def _index_loop(ckpt: Path) -> str:
    os.symlink("loop.safetensors", ckpt / "loop.safetensors")
    (ckpt / "model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {"model.embed_tokens.weight": "loop.safetensors"}})
    )
    return "loop"


@pytest.mark.parametrize("damage", [_zero_element_2_63, _index_loop], ids=["dim-2^63", "index-symlink-loop"])
def test_inspect_of_a_hostile_checkpoint_exits_2_without_traceback(
    checkpoint: Callable[..., Path], capsys: pytest.CaptureFixture[str], damage: Callable[[Path], str]
) -> None:
    ckpt = checkpoint({"model.layers.0.self_attn.k_scale": torch.tensor(0.5)})
    culprit = damage(ckpt)
    assert main(["inspect", str(ckpt)]) == 2
    out, err = capsys.readouterr()
    assert out == "" and "Traceback" not in err and culprit in err


def test_inspect_of_a_path_with_a_name_too_long(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["inspect", str(tmp_path / ("x" * 300))]) == 2
    _, err = capsys.readouterr()
    assert "Traceback" not in err and "longer than the file system allows" in err
