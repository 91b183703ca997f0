"""OS-level failures on checkpoint paths are ``CheckpointError``s naming the path and what to do.

Permissions, names longer than the file system allows, symlink loops, dangling symlinks,
directories and FIFOs where a file should be: each is refused with the model untouched, and
none is mistaken for an absent file (a dangling ``config.json`` would load a quantized
checkpoint as unquantized), a truncated download or a missing index.
"""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path
from typing import Any

import pytest
import torch
from validation_support import INDEX, SHARD_1, SHARD_2, expect_refusal

from kvcore import CheckpointError


def _index(ckpt: Path) -> dict[str, Any]:
    return json.loads((ckpt / INDEX).read_text())


def _point(ckpt: Path, where: str) -> str:
    """Send every tensor of the second shard to ``where``; return one such tensor."""
    index = _index(ckpt)
    moved = sorted(name for name, file in index["weight_map"].items() if file == SHARD_2)
    index["weight_map"].update(dict.fromkeys(moved, where))
    (ckpt / INDEX).write_text(json.dumps(index))
    return moved[0]


def test_index_entry_that_is_a_symlink_loop(model: torch.nn.Module, ckpt: Path) -> None:
    os.symlink("loop.safetensors", ckpt / "loop.safetensors")
    culprit = _point(ckpt, "loop.safetensors")
    expect_refusal(model, ckpt, CheckpointError, str(ckpt / INDEX), repr(culprit), "symbolic link", "loop")


def test_index_entry_through_a_looping_directory_symlink(model: torch.nn.Module, ckpt: Path) -> None:
    os.symlink("a", ckpt / "b")
    os.symlink("b", ckpt / "a")
    culprit = _point(ckpt, f"a/{SHARD_2}")
    expect_refusal(model, ckpt, CheckpointError, str(ckpt / INDEX), repr(culprit), "loop")


def test_checkpoint_path_with_a_name_longer_than_the_file_system_allows(
    model: torch.nn.Module, ckpt: Path
) -> None:
    path = ckpt / ("x" * 300)
    expect_refusal(model, path, CheckpointError, "x" * 300, "longer than the file system allows")


def test_single_file_with_a_name_longer_than_the_file_system_allows(model: torch.nn.Module, ckpt: Path) -> None:
    path = ckpt / ("x" * 300 + ".safetensors")
    expect_refusal(model, path, CheckpointError, "longer than the file system allows")


def _deny(monkeypatch: pytest.MonkeyPatch, directory: Path) -> None:
    """Make everything inside ``directory`` unreadable, as for a user without permission (tests run as root)."""
    real_stat, real_open = os.stat, os.open
    inside = str(directory) + os.sep

    def denied(path: Any) -> bool:
        return isinstance(path, str | os.PathLike) and os.fspath(path).startswith(inside)

    def stat(path: Any, *args: Any, **kwargs: Any) -> os.stat_result:
        if denied(path):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), os.fspath(path))
        return real_stat(path, *args, **kwargs)

    def open_(path: Any, *args: Any, **kwargs: Any) -> int:
        if denied(path):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), os.fspath(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(os, "stat", stat)
    monkeypatch.setattr(os, "open", open_)


def test_unreadable_checkpoint_directory(model: torch.nn.Module, ckpt: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _deny(monkeypatch, ckpt)
    expect_refusal(model, ckpt, CheckpointError, str(ckpt), "Permission denied", "fix its permissions")


@pytest.mark.parametrize("name", ["config.json", "hf_quant_config.json"])
@pytest.mark.parametrize("kind", ["dangling", "loop"])
def test_config_that_is_a_dangling_or_looping_symlink(
    model: torch.nn.Module, ckpt: Path, name: str, kind: str
) -> None:
    """Not "absent": a quantized checkpoint would then load as unquantized with its scales dropped."""
    if name == "config.json":
        (ckpt / name).unlink()
    os.symlink("nowhere.json" if kind == "dangling" else name, ckpt / name)
    words = "dangling" if kind == "dangling" else "symbolic link loop"
    for strict in (True, False):
        expect_refusal(model, ckpt, CheckpointError, str(ckpt / name), words, "not a regular file", strict=strict)


@pytest.mark.parametrize("kind", ["directory", "fifo", "loop"])
def test_index_that_is_not_a_regular_file_is_not_called_absent(model: torch.nn.Module, ckpt: Path, kind: str) -> None:
    (ckpt / INDEX).unlink()
    if kind == "directory":
        (ckpt / INDEX).mkdir()
    elif kind == "fifo":
        os.mkfifo(ckpt / INDEX)
    else:
        os.symlink(INDEX, ckpt / INDEX)
    error = expect_refusal(model, ckpt, CheckpointError, str(ckpt / INDEX), "not a regular file")
    assert "no model.safetensors.index.json" not in str(error)


@pytest.mark.parametrize(
    ("where", "words"), [("config.json", "a JSON file (config.json)"), (INDEX, "the index itself")]
)
def test_index_entry_naming_a_json_file_is_not_called_truncated(
    model: torch.nn.Module, ckpt: Path, where: str, words: str
) -> None:
    culprit = _point(ckpt, where)
    error = expect_refusal(model, ckpt, CheckpointError, str(ckpt / INDEX), repr(culprit), words, "fix the index")
    assert "truncated" not in str(error) and "download" not in str(error)


@pytest.mark.parametrize(("kind", "words"), [("directory", "a directory"), ("fifo", "a FIFO")])
def test_index_entry_naming_a_directory_or_fifo_is_not_called_missing(
    model: torch.nn.Module, ckpt: Path, kind: str, words: str
) -> None:
    place = ckpt / "odd.safetensors"
    place.mkdir() if kind == "directory" else os.mkfifo(place)
    culprit = _point(ckpt, "odd.safetensors")
    error = expect_refusal(model, ckpt, CheckpointError, repr(culprit), words, "not a safetensors file")
    assert "download" not in str(error)


def test_one_shard_of_a_sharded_checkpoint_names_the_directory(model: torch.nn.Module, ckpt: Path) -> None:
    error = expect_refusal(
        model, ckpt / SHARD_1, CheckpointError, str(ckpt / SHARD_1), "one shard", f"load the directory {ckpt}"
    )
    assert "re-download" not in str(error)
