"""Bad checkpoint directories: indexes, shards, config.json and hf_quant_config.json."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file, save_file
from validation_support import INDEX, SHARD_1, SHARD_2, changed, expect_refusal, snapshot

import kvcore
from kvcore import CheckpointError

OUTSIDE = "lies outside the checkpoint directory"


def _index(ckpt: Path) -> dict[str, Any]:
    return json.loads((ckpt / INDEX).read_text())


def _point(ckpt: Path, shard: str, where: str) -> str:
    """Make the index send every tensor of ``shard`` to ``where``; return one such tensor."""
    index = _index(ckpt)
    moved = sorted(name for name, file in index["weight_map"].items() if file == shard)
    index["weight_map"].update(dict.fromkeys(moved, where))
    (ckpt / INDEX).write_text(json.dumps(index))
    return moved[0]


def test_tensor_stored_in_two_shards(model: torch.nn.Module, ckpt: Path) -> None:
    first = load_file(ckpt / SHARD_1)
    twice = sorted(first)[0]
    save_file({**load_file(ckpt / SHARD_2), twice: first[twice]}, ckpt / SHARD_2)
    expect_refusal(
        model, ckpt, CheckpointError, repr(twice), str(ckpt / SHARD_1), str(ckpt / SHARD_2), "Remove one copy"
    )


def test_index_entry_with_dot_dot(model: torch.nn.Module, ckpt: Path) -> None:
    outside = ckpt.parent / "elsewhere"
    outside.mkdir()
    shutil.copy(ckpt / SHARD_2, outside / SHARD_2)
    where = f"../elsewhere/{SHARD_2}"
    culprit = _point(ckpt, SHARD_2, where)
    expect_refusal(model, ckpt, CheckpointError, str(ckpt / INDEX), repr(culprit), repr(where), OUTSIDE, "copy them")


def test_index_entry_with_absolute_path(model: torch.nn.Module, ckpt: Path) -> None:
    outside = ckpt.parent / SHARD_2
    shutil.copy(ckpt / SHARD_2, outside)
    culprit = _point(ckpt, SHARD_2, str(outside))
    expect_refusal(model, ckpt, CheckpointError, str(ckpt / INDEX), repr(culprit), repr(str(outside)), OUTSIDE)


def test_index_entry_that_is_a_symlink_escaping_the_directory(model: torch.nn.Module, ckpt: Path) -> None:
    outside = ckpt.parent / "secret.safetensors"
    shutil.move(ckpt / SHARD_2, outside)
    (ckpt / SHARD_2).symlink_to(outside)
    culprit = sorted(n for n, f in _index(ckpt)["weight_map"].items() if f == SHARD_2)[0]
    expect_refusal(model, ckpt, CheckpointError, str(ckpt / INDEX), repr(culprit), repr(SHARD_2), OUTSIDE, "symlinks")


def test_symlink_staying_inside_the_directory_is_fine(model: torch.nn.Module, ckpt: Path) -> None:
    # The containment check must not refuse what it should not: a link to a file inside.
    (ckpt / "blobs").mkdir()
    shutil.move(ckpt / SHARD_2, ckpt / "blobs" / "abc123")
    (ckpt / SHARD_2).symlink_to(ckpt / "blobs" / "abc123")
    before = snapshot(model)
    kvcore.load(model, ckpt)
    assert changed(model, before) == set(before)


def test_index_entry_naming_a_missing_shard(model: torch.nn.Module, ckpt: Path) -> None:
    (ckpt / SHARD_2).unlink()
    culprit = sorted(n for n, f in _index(ckpt)["weight_map"].items() if f == SHARD_2)[0]
    expect_refusal(
        model, ckpt, CheckpointError, str(ckpt / INDEX), repr(culprit), "missing", "download the missing shard"
    )


@pytest.mark.parametrize("where", ["bad\x00name.safetensors", "x" * 5000 + ".safetensors"], ids=["nul", "long"])
def test_index_entry_that_is_no_usable_file_name(model: torch.nn.Module, ckpt: Path, where: str) -> None:
    culprit = _point(ckpt, SHARD_2, where)
    expect_refusal(model, ckpt, CheckpointError, str(ckpt / INDEX), repr(culprit), "fix the index")


def test_index_not_matching_the_shards(model: torch.nn.Module, ckpt: Path) -> None:
    index = _index(ckpt)
    culprit = sorted(n for n, f in index["weight_map"].items() if f == SHARD_2)[0]
    index["weight_map"][culprit] = SHARD_1
    (ckpt / INDEX).write_text(json.dumps(index))
    expect_refusal(
        model, ckpt, CheckpointError, str(ckpt / INDEX), repr(culprit), "does not match the shards", "re-download"
    )


@pytest.mark.parametrize(
    "text",
    ["{", "[]", '{"weight_map": []}', '{"weight_map": {"a": 1}}', '{"weight_map": {}}', '{"metadata": {}}'],
)
def test_bad_index(model: torch.nn.Module, ckpt: Path, text: str) -> None:
    (ckpt / INDEX).write_text(text)
    expect_refusal(model, ckpt, CheckpointError, str(ckpt / INDEX), "re-download")


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("{", "is not valid JSON"),
        ("[1, 2]", "must hold a JSON object, not a list"),
        ('{"a": 1, "a": 2}', "key 'a' appears twice"),
        ('{"quantization_config": "fp8"}', "'quantization_config' must be an object"),
        ('{"quantization_config": {"kv_cache_scheme": "static"}}', "quantization_config.quant_method"),
        ('{"quantization_config": {"quant_method": ""}}', "quantization_config.quant_method"),
        ('{"compression_config": {"quant_method": 8}}', "compression_config.quant_method"),
    ],
)
def test_bad_config_json(model: torch.nn.Module, ckpt: Path, text: str, words: str) -> None:
    (ckpt / "config.json").write_text(text)
    expect_refusal(model, ckpt, CheckpointError, str(ckpt / "config.json"), words, "fix")


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("not json", "is not valid JSON"),
        ('{"producer": {"name": "modelopt"}}', "expected a 'quantization' object"),
        ('{"quantization": ["FP8"]}', "expected a 'quantization' object"),
    ],
)
def test_bad_hf_quant_config_json(model: torch.nn.Module, ckpt: Path, text: str, words: str) -> None:
    (ckpt / "config.json").write_text('{"model_type": "llama"}')
    (ckpt / "hf_quant_config.json").write_text(text)
    expect_refusal(model, ckpt, CheckpointError, str(ckpt / "hf_quant_config.json"), words, "fix")


def test_checkpoint_directory_that_does_not_exist(model: torch.nn.Module, tmp_path: Path) -> None:
    expect_refusal(model, tmp_path / "nowhere", CheckpointError, str(tmp_path / "nowhere"), "does not exist")


def test_directory_without_safetensors(model: torch.nn.Module, tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{}")
    expect_refusal(model, tmp_path, CheckpointError, str(tmp_path), "no model.safetensors", "point kvcore at")


@pytest.mark.parametrize("name", ["config.json", "hf_quant_config.json"])
def test_json_file_that_is_not_a_regular_file(model: torch.nn.Module, ckpt: Path, name: str) -> None:
    # A FIFO would block the read forever; a directory cannot be read at all.
    if name == "hf_quant_config.json":
        (ckpt / "config.json").write_text('{"model_type": "llama"}')
    else:
        (ckpt / name).unlink()
    os.mkfifo(ckpt / name)
    expect_refusal(model, ckpt, CheckpointError, str(ckpt / name), "not a regular file")


def test_json_file_above_the_size_cap(model: torch.nn.Module, ckpt: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cap = (ckpt / INDEX).stat().st_size - 1  # the real cap is 100 MiB; shrink it rather than write that much
    monkeypatch.setattr("kvcore._checkpoint.reader.MAX_JSON_BYTES", cap)
    expect_refusal(model, ckpt, CheckpointError, str(ckpt / INDEX), f"larger than {cap} bytes")
