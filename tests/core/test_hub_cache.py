"""A Hugging Face hub cache snapshot: shards are symlinks into the repository's ``blobs`` folder."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch

import kvcore
from kvcore.testing import tiny_llama, write_checkpoint


def _hub_snapshot(tmp_path: Path, blobs_name: str = "blobs") -> tuple[Path, dict[str, torch.Tensor]]:
    """Lay a 2-shard checkpoint out the way huggingface_hub caches it; return the snapshot dir."""
    model = tiny_llama()
    tensors = {name: torch.randn(t.shape).to(t.dtype) for name, t in model.state_dict().items()
               if not name.endswith("_scale")}
    written = write_checkpoint(tmp_path / "written", tensors, shards=2)
    repo = tmp_path / "models--org--tiny"
    snapshot = repo / "snapshots" / "0123abcd"
    blobs = repo / blobs_name
    snapshot.mkdir(parents=True)
    blobs.mkdir()
    for i, file in enumerate(sorted(written.iterdir())):
        blob = blobs / f"sha{i}"
        shutil.copy(file, blob)
        os.symlink(os.path.relpath(blob, snapshot), snapshot / file.name)
    return snapshot, tensors


def test_sharded_snapshot_of_the_hub_cache_loads(tmp_path: Path) -> None:
    snapshot, tensors = _hub_snapshot(tmp_path)
    model = tiny_llama()
    kvcore.load(model, snapshot)
    assert torch.equal(model.lm_head.weight, tensors["lm_head.weight"])


def test_links_out_of_a_snapshot_to_anywhere_but_blobs_are_refused(tmp_path: Path) -> None:
    snapshot, _ = _hub_snapshot(tmp_path, blobs_name="elsewhere")
    model = tiny_llama()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(kvcore.CheckpointError, match="lies outside the checkpoint directory"):
        kvcore.load(model, snapshot)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
