"""The command line's failures are one line on stderr and exit status 2, never a traceback."""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from kvcore._cli import main


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
