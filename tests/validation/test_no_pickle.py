"""Pickle checkpoints are refused with conversion advice and never unpickled.

The payload is a pickle whose unpickling creates a marker file: if anything in the load
unpickled it, the marker would appear.
"""

from __future__ import annotations

import json
import pickle
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from validation_support import expect_refusal

from kvcore import CheckpointError

ADVICE = ("never unpickles", "Convert the checkpoint to safetensors", "safetensors.torch.save_file")


class _CreatesFile:
    """Unpickling this object calls ``Path.touch(path)``."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Callable[..., None], tuple[Path]]:
        return Path.touch, (self.path,)


def _payload(marker: Path) -> bytes:
    return pickle.dumps({"model.norm.weight": _CreatesFile(marker)})


def _only_bin(directory: Path, payload: bytes) -> tuple[Path, str]:
    (directory / "pytorch_model.bin").write_bytes(payload)
    return directory, str(directory)


def _sharded_bin(directory: Path, payload: bytes) -> tuple[Path, str]:
    for i in (1, 2):
        (directory / f"pytorch_model-0000{i}-of-00002.bin").write_bytes(payload)
    weight_map = {"model.norm.weight": "pytorch_model-00001-of-00002.bin"}
    (directory / "pytorch_model.bin.index.json").write_text(json.dumps({"weight_map": weight_map}))
    return directory, "pytorch_model-00001-of-00002.bin"


def _pt_file(directory: Path, payload: bytes) -> tuple[Path, str]:
    (directory / "model.pt").write_bytes(payload)
    return directory / "model.pt", str(directory / "model.pt")


def _safetensors_index_naming_a_bin(directory: Path, payload: bytes) -> tuple[Path, str]:
    (directory / "pytorch_model.bin").write_bytes(payload)
    index = {"weight_map": {"model.norm.weight": "pytorch_model.bin"}}
    (directory / "model.safetensors.index.json").write_text(json.dumps(index))
    return directory, "'pytorch_model.bin'"


LAYOUTS = [_only_bin, _sharded_bin, _pt_file, _safetensors_index_naming_a_bin]


@pytest.fixture
def no_unpickling(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make every unpickling entry point fail loudly, in case a payload were harmless."""

    def forbidden(*_: object, **__: object) -> None:
        raise AssertionError("kvcore tried to unpickle")

    for owner, name in ((pickle, "load"), (pickle, "loads"), (pickle, "Unpickler"), (torch, "load")):
        monkeypatch.setattr(owner, name, forbidden)


def test_the_payload_really_creates_its_marker(tmp_path: Path) -> None:
    # Without this, "the marker did not appear" would prove nothing.
    probe = tmp_path / "probe"
    pickle.loads(_payload(probe))
    assert probe.exists()


@pytest.mark.usefixtures("no_unpickling")
@pytest.mark.parametrize("layout", LAYOUTS, ids=lambda f: f.__name__.strip("_"))
def test_pickle_checkpoint_is_refused_and_never_unpickled(
    model: torch.nn.Module, tmp_path: Path, layout: Callable[[Path, bytes], tuple[Path, str]]
) -> None:
    marker = tmp_path / "pwned"
    directory = tmp_path / "ckpt"
    directory.mkdir()
    (directory / "config.json").write_text('{"model_type": "llama"}')
    checkpoint, culprit = layout(directory, _payload(marker))
    expect_refusal(model, checkpoint, CheckpointError, culprit, *ADVICE)
    assert not marker.exists()


@pytest.mark.usefixtures("no_unpickling")
def test_pickle_disguised_as_safetensors_is_not_unpickled(model: torch.nn.Module, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    (tmp_path / "model.safetensors").write_bytes(_payload(marker))
    expect_refusal(model, tmp_path, CheckpointError, str(tmp_path / "model.safetensors"), "not a valid safetensors")
    assert not marker.exists()
