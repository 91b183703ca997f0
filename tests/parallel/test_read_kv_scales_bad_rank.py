"""read_kv_scales checks tp_rank / tp_size as kvcore.load does, per-tensor checkpoint or per-head."""

from __future__ import annotations

from pathlib import Path

import pytest
from parallel_support import write

import kvcore


@pytest.mark.parametrize("per_head", [False, True], ids=["per-tensor", "per-head"])
@pytest.mark.parametrize(("rank", "size"), [(2, 2), (0, 0), (-1, 2), (True, 2), (0, 2.0)])
def test_read_kv_scales_refuses_a_bad_rank_like_load(tmp_path: Path, rank: int, size: int, per_head: bool) -> None:
    ckpt = write(tmp_path, 2, per_head=per_head)
    with pytest.raises(kvcore.WeightLoadError, match="tp_"):
        kvcore.read_kv_scales(ckpt, tp_rank=rank, tp_size=size)
